"""THE training loop, shared by every entrypoint.

An entrypoint hands :func:`train` its config and a factory ``build_objective(cfg, tokenizer)``
returning an ``nn.Module`` whose ``forward(batch, step)`` returns ``(loss, metrics)``. Optional
objective hooks: ``flops_per_token()`` (for MFU; default 6 x trainable + 2 x frozen parameters),
``checkpoint_metadata()`` (e.g. the frozen backbone's name and revision) and
``eval_extra(batch, index)`` (more eval metrics, e.g. sampled round trips).

Per optimizer step: ``gradient_accumulation_steps`` micro-batches (``no_sync`` on all but the
last), bf16 autocast over fp32 master weights, clipping, then one all-reduced flag tells every
rank whether to skip the update (non-finite loss or grad norm on any rank) or to stop
(SIGTERM/SIGUSR1 on any rank).
"""
from __future__ import annotations

import contextlib
import logging
import math
import signal
import time
from pathlib import Path
from typing import Callable

import torch
from omegaconf import DictConfig, OmegaConf
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from latentDLM_mmdit import checkpointing as C
from latentDLM_mmdit import distributed as D
from latentDLM_mmdit.config import ConfigError
from latentDLM_mmdit.data_records import DataError
from latentDLM_mmdit.data_simple import (build_data, load_tokenizer, shutdown_workers,
                                         take_bad_records)
from latentDLM_mmdit.optim import build_optimizer, build_scheduler
from latentDLM_mmdit.prefetch import PrefetchError
from latentDLM_mmdit.run_log import JsonlLog, MetricWindow, Wandb

log = logging.getLogger("mm_ldlm")

PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0}


def _peak_tflops(cfg_value, device: torch.device) -> float | None:
    if cfg_value:
        return float(cfg_value)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)
    return None


class _StopFlag:
    """SIGTERM / SIGUSR1 (SLURM preemption) -> finish the step, checkpoint, exit cleanly."""

    def __init__(self):
        self.signum = 0
        self._old = {s: signal.signal(s, self._handle) for s in (signal.SIGTERM, signal.SIGUSR1)}

    def _handle(self, signum, frame):
        self.signum = signum

    def restore(self):
        for s, h in self._old.items():
            signal.signal(s, h)


def _prepare_run_dir(run_dir: Path, resume, is_main: bool) -> None:
    # every rank checks (the same shared directory), so all stop together instead of waiting
    if resume is None and (C.list_checkpoints(run_dir) or (run_dir / "training_log.jsonl").exists()):
        raise SystemExit(f"run directory {run_dir} already holds a run; set training.resume=auto "
                         "to continue it, or choose another logging.run_name")
    if is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        C.remove_stale_temps(run_dir)
    D.barrier()


def train(cfg: DictConfig, build_objective: Callable) -> dict:
    """Run training; returns ``{"step", "stopped_by_signal", "run_dir"}``."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    dist, loop = D.setup(cfg.training.device), None
    try:
        loop = _Loop(cfg, build_objective, dist)
        return loop.run()
    except (PrefetchError, ConfigError) as e:  # e.g. an objective finding its tokenizer unfit
        log.error("%s%s", "config error: " if isinstance(e, ConfigError) else "", e)
        raise SystemExit(1) from None
    except DataError as e:
        log.error("bad data: %s\nList every bad record with: python -m latentDLM_mmdit.data_simple "
                  "check %s --latent-dim %d (or set data.on_bad_record=skip to skip and count them)",
                  e, e.json_path, cfg.data.latent_dim)
        raise SystemExit(1) from None
    finally:
        if loop is not None:
            loop.data.train.close()
        D.teardown()


class _Loop:
    def __init__(self, cfg, build_objective, dist: D.DistInfo):
        self.cfg, self.dist, t = cfg, dist, cfg.training
        self.run_dir = Path(cfg.logging.save_dir) / cfg.logging.run_name
        _prepare_run_dir(self.run_dir, t.resume, dist.is_main)
        torch.manual_seed(t.seed)  # identical initial weights on every rank
        self.tokenizer = load_tokenizer(cfg.data.tokenizer_name)
        self.objective = build_objective(cfg, self.tokenizer).to(dist.device)
        self.params = [(n, p) for n, p in self.objective.named_parameters() if p.requires_grad]
        for n, p in self.params:  # fp32 master weights for everything that trains
            if p.dtype != torch.float32:
                p.data = p.data.float()
        self.data = build_data(cfg.data, t, self.tokenizer, dist.rank, dist.world,
                               pin_memory=dist.device.type == "cuda")
        self.optimizer = build_optimizer(self.params, cfg.optimizer, dist.device)
        self.scheduler = build_scheduler(self.optimizer, t)
        self.window = MetricWindow(dist.device)
        self.step, self.skipped_steps = 0, 0
        self.batch_bad_records = 0  # this rank's records dropped at batch time (skip mode)
        self.wandb_id = None
        resumed = C.resolve_resume(self.run_dir, t.resume)
        if resumed:
            self._load(*resumed)
        else:
            torch.manual_seed(t.seed + 1 + dist.rank)  # per-rank noise from here on
        self.ddp = None
        if dist.world > 1:
            self.ddp = DDP(self.objective, device_ids=[dist.device.index] if dist.device.type == "cuda" else None,
                           find_unused_parameters=t.ddp_find_unused_parameters)
        self.model = self.ddp or self.objective
        if t.compile_model:
            self.model = torch.compile(self.model)
        self.autocast = (torch.autocast(dist.device.type, dtype=torch.bfloat16) if t.dtype.name == "bf16"
                         else contextlib.nullcontext())
        self.peak = _peak_tflops(t.peak_tflops, dist.device)
        n_train = sum(p.numel() for _, p in self.params)
        n_frozen = sum(p.numel() for p in self.objective.parameters() if not p.requires_grad)
        hook = getattr(self.objective, "flops_per_token", None)
        self.flops_per_token = float(hook()) if hook else 6.0 * n_train + 2.0 * n_frozen
        if dist.is_main:
            self._open_logs(resumed, n_train, n_frozen)

    # -- set-up helpers ---------------------------------------------------------------------
    def _load(self, path: Path, state: dict) -> None:
        C.load_trainable_state_dict(self.objective, state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.data.train.load_state_dict(state["data"])
        self.step, self.skipped_steps = state["step"], state["skipped_steps"]
        self.wandb_id = state.get("wandb_id")
        rngs, bad, windows = state["rng"], state["batch_bad_records"], state["metric_window"]
        self.batch_bad_records = bad[self.dist.rank] if len(bad) == self.dist.world else (
            sum(bad) if self.dist.is_main else 0)
        if len(rngs) == self.dist.world:  # per-rank state: each rank takes its own
            C.set_rng_state(rngs[self.dist.rank], self.dist.device)
            self.window.load_state_dict(windows[self.dist.rank])
        else:
            log.warning("checkpoint was written by %d ranks, now %d: RNG streams are re-seeded, so "
                        "noise differs from the uninterrupted run", len(rngs), self.dist.world)
            torch.manual_seed(self.cfg.training.seed + 1 + self.dist.rank + self.step)
        if self.dist.is_main:
            log.info("resumed from %s at step %d", path, self.step)

    def _open_logs(self, resumed, n_train: int, n_frozen: int) -> None:
        cfg, t = self.cfg, self.cfg.training
        resume_step = self.step if resumed else None
        name = "config.yaml" if not (self.run_dir / "config.yaml").exists() else f"config_resume_step_{self.step}.yaml"
        OmegaConf.save(cfg, self.run_dir / name, resolve=True)
        self.train_log = JsonlLog(self.run_dir / "training_log.jsonl", resume_step)
        self.eval_log = JsonlLog(self.run_dir / "eval_log.jsonl", resume_step)
        self.wandb = (Wandb(cfg.logging, self.run_dir, OmegaConf.to_container(cfg, resolve=True),
                            self.wandb_id) if cfg.logging.use_wandb else None)
        if self.wandb:
            self.wandb_id = self.wandb.id
        g = t.train_batch_size * self.dist.world * t.gradient_accumulation_steps
        log.info("run dir %s | %d ranks on %s | trainable %.2fM, frozen %.2fM params | global batch %d "
                 "| %d train / %d val records | %d bad records skipped", self.run_dir, self.dist.world,
                 self.dist.device, n_train / 1e6, n_frozen / 1e6, g, self.data.train_records,
                 self.data.val_records, self.data.bad_records)

    # -- the loop ---------------------------------------------------------------------------
    def run(self) -> dict:
        cfg, t, lg = self.cfg, self.cfg.training, self.cfg.logging
        accum, dev = t.gradient_accumulation_steps, self.dist.device
        stop = _StopFlag()
        bar = tqdm(total=t.num_train_steps, initial=self.step, unit="step", dynamic_ncols=True,
                   disable=not (self.dist.is_main and lg.progress_bar), mininterval=1.0)
        clip = cfg.optimizer.grad_clip_norm
        samples = torch.zeros((), dtype=torch.float64, device=dev)
        tokens = torch.zeros((), dtype=torch.float64, device=dev)
        t_window, last_saved, stopped = time.perf_counter(), None, False
        while self.step < t.num_train_steps:
            step_metrics = MetricWindow(dev)
            loss_sum = torch.zeros((), device=dev)
            for micro in range(accum):
                batch = next(self.data.train)
                self.batch_bad_records += int(batch.pop("n_skipped"))
                batch = {k: v.to(dev, non_blocking=True) for k, v in batch.items()}
                sync = self.ddp is None or micro == accum - 1
                with (contextlib.nullcontext() if sync else self.ddp.no_sync()):
                    with self.autocast:
                        loss, metrics = self.model(batch, self.step)
                    (loss / accum).backward()
                loss_sum += loss.detach().float()
                step_metrics.add({"loss": loss.detach().float(), **metrics})
                samples += batch["input_ids"].shape[0]
                tokens += batch["attention_mask"].sum()
            params = [p for _, p in self.params]
            gnorm = torch.nn.utils.clip_grad_norm_(params, clip if clip > 0 else math.inf)
            flags = torch.stack([(~torch.isfinite(loss_sum)).float(), (~torch.isfinite(gnorm)).float(),
                                 torch.tensor(float(stop.signum != 0), device=dev)])
            bad_loss, bad_grad, stop_now = D.all_reduce(flags, op=torch.distributed.ReduceOp.MAX).tolist()
            if bad_loss or bad_grad:
                self.skipped_steps += 1
                if self.dist.is_main:
                    log.warning("step %d: non-finite %s on some rank; update skipped (%d so far)",
                                self.step + 1, "loss" if bad_loss else "grad norm", self.skipped_steps)
            else:
                self.optimizer.step()
                step_metrics.add({"grad_norm": gnorm.detach()})
                self.window.merge(step_metrics)
            self.optimizer.zero_grad(set_to_none=True)
            self.scheduler.step()
            self.step += 1
            bar.update(1)
            if self.step % lg.log_freq == 0 or self.step == t.num_train_steps:
                elapsed = time.perf_counter() - t_window
                rec = self._log_train(elapsed, samples, tokens)
                samples.zero_(), tokens.zero_()
                t_window = time.perf_counter()
                if rec.get("loss") is not None:
                    bar.set_postfix(loss=f"{rec['loss']:.4f}", lr=f"{rec['lr']:.2e}", refresh=False)
            t_side = time.perf_counter()  # eval and checkpoint time is not training throughput
            if lg.eval_freq and self.step % lg.eval_freq == 0 or self.step == t.num_train_steps:
                self._evaluate()
            if lg.save_freq and self.step % lg.save_freq == 0 or self.step == t.num_train_steps or stop_now:
                if last_saved != self.step:
                    self._save()
                    last_saved = self.step
            t_window += time.perf_counter() - t_side
            if stop_now:
                stopped = True
                if self.dist.is_main:
                    log.info("signal received: checkpoint written at step %d, exiting", self.step)
                break
        bar.close()
        stop.restore()
        if self.dist.is_main:
            self.train_log.close(), self.eval_log.close()
            if self.wandb:
                self.wandb.finish()
        return {"step": self.step, "stopped_by_signal": stopped, "run_dir": str(self.run_dir)}

    def _log_train(self, elapsed: float, samples, tokens) -> dict:
        bad = torch.tensor(float(self.batch_bad_records), dtype=torch.float64, device=samples.device)
        counts = D.all_reduce(torch.stack([samples, tokens, bad])).tolist()
        rec = {"step": self.step, **self.window.reduce(), "lr": self.scheduler.get_last_lr()[0],
               "samples_per_s": counts[0] / elapsed, "tokens_per_s": counts[1] / elapsed,
               "skipped_steps": self.skipped_steps, "bad_records": self.data.bad_records + int(counts[2]),
               "epoch": self.data.train.epoch}
        if self.peak:
            rec["mfu"] = rec["tokens_per_s"] / self.dist.world * self.flops_per_token / (self.peak * 1e12)
        if self.dist.is_main:
            self.train_log.write(rec)
            if self.wandb:
                self.wandb.log({f"train/{k}": v for k, v in rec.items() if k != "step"}, self.step)
        return rec

    @torch.no_grad()
    def _evaluate(self) -> None:
        loader, nb = self.data.val, self.cfg.logging.num_eval_batches
        if loader is None:
            return
        dev, window = self.dist.device, MetricWindow(self.dist.device)
        self.objective.eval()
        devices = [dev] if dev.type == "cuda" else []
        it = iter(loader)
        with torch.random.fork_rng(devices=devices):  # fixed eval noise; training RNG untouched
            torch.manual_seed(self.cfg.training.seed + 7919 * (self.dist.rank + 1))
            try:
                self._eval_batches(it, nb, window)
            finally:
                shutdown_workers(it)
        self.objective.train()
        rec = {"step": self.step, **window.reduce()}
        if self.dist.is_main:
            self.eval_log.write(rec)
            if self.wandb:
                self.wandb.log({f"eval/{k}": v for k, v in rec.items() if k != "step"}, self.step)

    def _eval_batches(self, it, nb: int, window: MetricWindow) -> None:
        dev = self.dist.device
        extra = getattr(self.objective, "eval_extra", None)  # optional: e.g. sampled round trips
        for i, batch in enumerate(it):
            if nb and i >= nb:
                break
            take_bad_records(batch, self.data.skip_bad)
            batch = {k: v.to(dev, non_blocking=True) for k, v in batch.items()}
            with self.autocast:
                loss, metrics = self.objective(batch, self.step)
            if extra:
                with self.autocast:
                    metrics = {**metrics, **extra(batch, i)}
            window.add({"loss": loss.float(), **metrics}, weight=batch["input_ids"].shape[0])

    def _save(self) -> None:
        rngs = D.all_gather_object(C.rng_state(self.dist.device))
        bad = D.all_gather_object(self.batch_bad_records)
        windows = D.all_gather_object(self.window.state_dict())
        if self.dist.is_main:
            meta = getattr(self.objective, "checkpoint_metadata", None)
            state = {"model": C.trainable_state_dict(self.objective), "optimizer": self.optimizer.state_dict(),
                     "scheduler": self.scheduler.state_dict(), "step": self.step,
                     "data": self.data.train.state_dict(), "rng": rngs, "metric_window": windows,
                     "skipped_steps": self.skipped_steps, "batch_bad_records": bad,
                     "wandb_id": self.wandb_id, "objective": meta() if meta else {},
                     "config": OmegaConf.to_container(self.cfg, resolve=True, enum_to_str=True)}
            C.save_checkpoint(self.run_dir, self.step, state, self.cfg.logging.keep_last)
        D.barrier()
