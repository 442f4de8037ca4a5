"""THE training loop, shared by every family.

``train(cfg)`` builds the objective registered under ``cfg.objective`` and runs it. Start-up
order (cheap checks first, so a mistake never costs the expensive part): the save directory is
writable; the run directory does not hold another run; the run directory is created and locked
(one run per directory; nothing is written into it before); the sources resolve (the tokenizer
loads); every record is checked (``mmldlm.data``); only then is the objective built (for the
bridge: 8B weights loaded), wrapped (DDP or FSDP2) and, if asked, resumed. A run that fails before
it starts leaves no empty run directory behind.

A step (``_train_step``): ``gradient_accumulation_steps`` micro-batches (gradient sync only on the
last), bf16 autocast over fp32 master weights, clipping, then one all-reduced flag tells every
rank whether to skip the update (non-finite loss or grad norm on any rank) or to stop
(SIGTERM/SIGUSR1 on any rank). What follows it (``_after_step``): logging, :func:`evaluate`,
checkpoints. The loop reads nothing from a batch but what the objective's ``count`` reports.
"""
from __future__ import annotations

import contextlib
import gc
import logging
import math
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from mmldlm.config import ConfigError
from mmldlm.data.loader import build_data
from mmldlm.data.records import DataError
from mmldlm.objective import lookup
from mmldlm.prefetch import PrefetchError
from mmldlm.sources import SourceError, open_sources
from mmldlm.sources.fingerprint import latents_record
from mmldlm.sources.weights import place
from mmldlm.train import checkpointing as C
from mmldlm.train import distributed as D
from mmldlm.train.advice import available_cores, start_warnings
from mmldlm.train.compile import compile_model
from mmldlm.train.ema import ema_weights, update_ema
from mmldlm.train.evaluate import evaluate
from mmldlm.train.guards import DataChangedError, bad_data_hint, check_resumable, check_run_dir
from mmldlm.train.optim import build_optimizer, build_scheduler
from mmldlm.train.report import RunReport
from mmldlm.train.run_dir import RunDirError, RunDirLock
from mmldlm.train.run_log import MetricWindow

log = logging.getLogger("mm_ldlm")

PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0}


# errors that end a run with one line (no traceback): the message says what to do
ONE_LINE_ERRORS = (PrefetchError, ConfigError, RunDirError, C.CheckpointWriteError, C.CheckpointError,
                   DataChangedError)


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


def _agree(fn, dist: D.DistInfo):
    """Run ``fn`` on rank 0 only; every rank gets its result, or raises its one-line error."""
    outcome = None
    if dist.is_main:
        try:
            outcome = ("ok", fn())
        except ONE_LINE_ERRORS as e:
            outcome = ("error", e)
    kind, value = D.broadcast_object(outcome)
    if kind == "error":
        raise value
    return value


def train(cfg: DictConfig, prepare: Callable[[Path], None] | None = None) -> dict:
    """Run training; returns ``{"step", "stopped_by_signal", "run_dir"}``. ``prepare(run_dir)``: a
    family's own writes into the run directory (LatentWire's records file), done by rank 0 once the
    run directory is locked, before any data is read."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    fsdp = cfg.training.parallelism.name == "fsdp"
    dist, loop, finished = D.setup(cfg.training.device, need_group=fsdp), None, False
    try:
        loop = _Loop(cfg, dist, prepare)
        with logging_redirect_tqdm():  # warnings print above the progress bar, not through it
            out = loop.run()
        finished = True
        return out
    except ONE_LINE_ERRORS as e:
        plain = isinstance(e, SourceError) or not isinstance(e, ConfigError)
        log.error("%s%s", "" if plain else "config error: ", e)
        raise SystemExit(1) from None
    except DataError as e:
        hint = bad_data_hint(e, cfg, None) if loop is None else bad_data_hint(
            e, cfg, loop.run_dir, loop.step, loop.last_saved, loop.rescued_step)
        log.error("bad data: %s%s", e, hint)
        raise SystemExit(1) from None
    finally:
        if loop is not None:
            loop.close()
        # The DDP reducer holds the gloo process group. Were its release the group's last, the group's
        # destructor would join gloo's threads holding the GIL while one of them waits for the GIL to
        # free a finished broadcast's tensors: a deadlock at exit (seen on loaded 2-core machines).
        # So the model goes first, while the group is still referenced, and a last collective (its
        # wait releases the GIL) lets gloo's threads finish before the group goes.
        loop = None
        gc.collect()
        if finished:
            D.barrier()
        D.teardown()


class _Loop:
    def __init__(self, cfg, dist: D.DistInfo, prepare: Callable[[Path], None] | None = None):
        self.cfg, self.dist, t = cfg, dist, cfg.training
        self.entry = lookup(cfg.objective)
        self.fsdp = t.parallelism.name == "fsdp"
        self.run_dir = Path(cfg.logging.save_dir) / cfg.logging.run_name
        self.lock, self.data, self.started = None, None, False
        _agree(lambda: check_run_dir(self.run_dir, t.resume), dist)
        # locked before anything is written into it or read from it: a second command on a running
        # run's directory is refused before it can touch that run's files
        if dist.is_main:
            self.lock = RunDirLock(self.run_dir)
        _agree(lambda: self.lock.acquire(), dist)
        try:
            self._start(prepare)
        except BaseException:
            self.close()  # failed before the run started: the lock goes, and an empty run directory
            raise
        self.started = True

    def _start(self, prepare) -> None:
        """Everything after the lock: the family's files, sources, data, objective, resume, logs."""
        cfg, dist, t = self.cfg, self.dist, self.cfg.training
        if prepare is not None:
            _agree(lambda: prepare(self.run_dir), dist)
        # every source resolved (and downloaded, where allowed) by rank 0 first, then by all
        self.source_records = _agree(lambda: open_sources(cfg, self.entry).records(), dist)
        self.sources = open_sources(cfg, self.entry)
        self.tokenizer = self.sources.tokenizer
        collate = self.entry.collator(cfg, self.sources) if self.entry.collator else None
        self.data = build_data(cfg.data, t, self.tokenizer, dist.rank, dist.world,
                               pin_memory=dist.device.type == "cuda", need_val=cfg.logging.eval_freq > 0,
                               fields=self.entry.records, collate=collate)
        if t.num_train_epochs:
            self._steps_from_epochs()
        if dist.is_main:
            ranks_on_node = int(os.environ.get("LOCAL_WORLD_SIZE", dist.world))
            for warning in start_warnings(cfg, ranks_on_node, available_cores()):
                log.warning("%s", warning)
        latents = _agree(lambda: latents_record(list(self.data.latent_shards), "data.latent_data_root"), dist)
        if latents:  # the latents the records read, as a source: rewritten in place is refused on resume
            self.source_records["latents"] = latents
        torch.manual_seed(t.seed)  # identical initial weights on every rank
        # the architecture first (pretrained parts empty, on meta); their weights once each rank
        # knows its part: under FSDP after sharding, so no rank ever holds a full pretrained copy
        self.objective = self.entry.build(cfg, self.sources)
        place(self.objective, dist.device)
        carried: set[str] = set()
        if not self.fsdp:
            self.sources.load(self.objective, dist.device)
            carried = self._init_from(t.init_from) if t.init_from else set()
        self.params = [(n, p) for n, p in self.objective.named_parameters() if p.requires_grad]
        for _, p in self.params:  # fp32 master weights for everything that trains
            if p.dtype != torch.float32:
                p.data = p.data.float()
        bf16 = t.dtype.name == "bf16"
        self.model = D.wrap(self.objective, t.parallelism.name, dist, bf16, t.ddp_find_unused_parameters)
        if self.fsdp:
            self.sources.load(self.objective, dist.device)
            carried = self._init_from(t.init_from) if t.init_from else set()
        self.saved_keys = C.saved_keys(self.objective, carried)
        self.params = [(n, p) for n, p in self.objective.named_parameters() if p.requires_grad]  # sharded now
        self.optimizer = build_optimizer(self.params, cfg.optimizer, dist.device)
        self.scheduler = build_scheduler(self.optimizer, t)
        self.window = MetricWindow(dist.device)
        self.step, self.skipped_steps = 0, 0
        self.batch_bad_records = 0  # this rank's records dropped at batch time (skip mode)
        self.wandb_id = None
        self.last_saved = None  # the step of the newest checkpoint of this timeline, once known
        self.rescued_step = None  # the step saved before a bad record ended the run
        resumed = C.resolve_resume(self.run_dir, t.resume)
        if resumed:
            self._load(*resumed)
        else:
            torch.manual_seed(t.seed + 1 + dist.rank)  # per-rank noise from here on
        if t.compile_model:  # per block, noise drawn eagerly between them (mmldlm.train.compile)
            self.model = compile_model(self.objective, self.model)
        self.autocast = torch.autocast(dist.device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        self.peak = _peak_tflops(t.peak_tflops, dist.device)
        n_train = sum(p.numel() for _, p in self.params)
        n_frozen = sum(p.numel() for p in self.objective.parameters() if not p.requires_grad)
        self.flops_per_token = self.objective.flops_per_token() or 6.0 * n_train + 2.0 * n_frozen
        if dist.is_main:
            self._open_logs(resumed, n_train, n_frozen)
        D.barrier()

    def close(self) -> None:
        if self.data is not None:
            self.data.train.close()
        if self.lock is not None:
            if self.started:
                self.lock.release()
            else:  # failed before the run started: leave no empty run directory behind
                self.lock.abandon()

    # -- set-up helpers ---------------------------------------------------------------------
    def _steps_from_epochs(self) -> None:
        """``training.num_train_epochs`` as steps, from the record index the loader built."""
        t = self.cfg.training
        per_step = t.train_batch_size * self.dist.world * t.gradient_accumulation_steps
        t.num_train_steps = max(1, round(t.num_train_epochs * max(1, self.data.train_records // per_step)))
        if self.dist.is_main:
            log.info("training.num_train_epochs=%g: %d steps (%d records, %d per step)", t.num_train_epochs,
                     t.num_train_steps, self.data.train_records, per_step)
    def _init_from(self, path: str) -> set[str]:
        """A previous stage's trained tensors (names and shapes that exist here); fresh optimizer.
        Returns their names: this run's checkpoints keep them even where they stay frozen."""
        src = C.resolve_checkpoint(path)
        taken = C.carry_over(self.objective, C.read_model_weights(src), str(src))
        if self.dist.is_main:
            groups = ", ".join(sorted({k.split(".")[0] for k in taken}))
            log.info("init_from %s: %d tensors (%s)", src, len(taken), groups)
        return set(taken)

    def _load(self, path: Path, state: dict) -> None:
        check_resumable(state, path, self.data.fingerprint, self.source_records, self.cfg.training)
        if self.cfg.training.resume not in (None, "auto") and self.dist.is_main:
            C.abandon_newer(self.run_dir, state["step"])  # a rollback: the later timeline moves aside
        if C.is_sharded(path):
            C.load_sharded(path, self.objective, self.optimizer, self.saved_keys)
        elif self.fsdp:
            raise ConfigError(f"training.resume: {path} is a DDP checkpoint; an FSDP run resumes from FSDP "
                              "checkpoints (start from its weights with training.init_from instead)")
        else:
            C.load_trainable_state_dict(self.objective, state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.data.train.load_state_dict(state["data"])
        self.step, self.skipped_steps = state["step"], state["skipped_steps"]
        self.last_saved = self.step  # this step's checkpoint exists: a failure now need not rewrite it
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
        self.report = RunReport(cfg, self.run_dir, self.step, bool(resumed), self.wandb_id)
        self.wandb_id = self.report.wandb_id
        g = t.train_batch_size * self.dist.world * t.gradient_accumulation_steps
        log.info("run dir %s | %s | %d ranks (%s) on %s | trainable %.2fM, frozen %.2fM params | global batch %d "
                 "| %d train / %d val records | %d bad records skipped", self.run_dir, cfg.objective, self.dist.world,
                 t.parallelism.name, self.dist.device, n_train / 1e6, n_frozen / 1e6, g, self.data.train_records,
                 self.data.val_records, self.data.bad_records)

    # -- the loop ---------------------------------------------------------------------------
    def run(self) -> dict:
        t, lg = self.cfg.training, self.cfg.logging
        stop = _StopFlag()
        bar = tqdm(total=t.num_train_steps, initial=self.step, unit="step", dynamic_ncols=True,
                   disable=not (self.dist.is_main and lg.progress_bar), mininterval=1.0)
        dev = self.dist.device
        self.samples = torch.zeros((), dtype=torch.float64, device=dev)
        self.tokens = torch.zeros((), dtype=torch.float64, device=dev)
        self.t_window, stopped = time.perf_counter(), False
        self.eval_on_ema = False
        while self.step < t.num_train_steps:
            stop_now = self._train_step(stop)
            bar.update(1)
            rec = self._after_step(stop_now)
            if rec and rec.get("loss") is not None:
                bar.set_postfix(loss=f"{rec['loss']:.4f}", lr=f"{rec['lr']:.2e}", refresh=False)
            if stop_now:
                stopped = True
                if self.dist.is_main:
                    log.info("signal received: checkpoint written at step %d, exiting", self.step)
                break
        bar.close()
        stop.restore()
        if self.dist.is_main:
            self.report.finish(self.step, stopped, self.eval_on_ema, C.read_latest(self.run_dir))
        return {"step": self.step, "stopped_by_signal": stopped, "run_dir": str(self.run_dir)}

    def _train_step(self, stop: _StopFlag) -> bool:
        """One optimizer step (micro-steps, clipping, the agreed skip/stop flags); returns stop."""
        t, dev = self.cfg.training, self.dist.device
        accum, clip = t.gradient_accumulation_steps, self.cfg.optimizer.grad_clip_norm
        step_metrics = MetricWindow(dev)
        loss_sum = torch.zeros((), device=dev)
        for micro, (batch, info) in enumerate(self._fetch_step(accum)):
            self.batch_bad_records += info.skipped
            batch = {k: v.to(dev, non_blocking=True) for k, v in batch.items()}
            with D.sync_grads(self.model, micro == accum - 1):
                with self.autocast:
                    loss, metrics = self.model(batch, self.step)
                (loss / accum).backward()
            loss_sum += loss.detach().float()
            step_metrics.add({"loss": loss.detach().float(), **metrics})
            if info.texts:
                step_metrics.add({"truncated_frac": info.truncated / info.texts}, weight=info.texts)
            count = self.objective.count(batch)
            self.samples += count.samples
            self.tokens += count.tokens
        gnorm = D.local_tensor(torch.nn.utils.clip_grad_norm_([p for _, p in self.params],
                                                              clip if clip > 0 else math.inf))
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
            if self.cfg.training.ema:
                update_ema(self.optimizer, [p for _, p in self.params], self.cfg.training.ema)
            step_metrics.add({"grad_norm": gnorm.detach()})
            self.window.merge(step_metrics)
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.step += 1
        return bool(stop_now)

    def _fetch_step(self, accum: int) -> list:
        """This step's micro-batches, fetched before any forward. A bad record on any rank
        (``data.on_bad_record=error``) ends every rank together, after a checkpoint of the last
        completed step at the data position before this one: no work is lost, and a resume after
        the fix (or with ``skip``) reads this step's batches again."""
        position = self.data.train.state_dict()
        batches, error = [], None
        try:
            for _ in range(accum):
                batches.append(next(self.data.train))
        except DataError as e:
            error = e
        error = D.first_error(error, self.dist.device)
        if error is not None:
            self._save_before_failing(position)
            raise error
        return batches

    def _save_before_failing(self, data_state: dict | None = None) -> None:
        """A checkpoint of the last completed step before a bad record ends the run (collective)."""
        if self.step > 0 and self.last_saved != self.step:
            self._save(data_state)
            self.last_saved = self.step
            self.rescued_step = self.step

    def _after_step(self, stop_now: bool) -> dict | None:
        """Log, evaluate and checkpoint as the step number asks; returns the logged record."""
        t, lg, rec = self.cfg.training, self.cfg.logging, None
        last = self.step == t.num_train_steps
        if self.step % lg.log_freq == 0 or last:
            rec = self._log_train(time.perf_counter() - self.t_window)
            self.samples.zero_(), self.tokens.zero_()
            self.t_window = time.perf_counter()
        t_side = time.perf_counter()  # eval and checkpoint time is not training throughput
        if self.data.val is not None and (lg.eval_freq and self.step % lg.eval_freq == 0 or last):
            try:
                self._evaluate()  # a bad validation record ends every rank together (evaluate agrees)
            except DataError:
                self._save_before_failing()
                raise
        if (lg.save_freq and self.step % lg.save_freq == 0 or last or stop_now) and self.last_saved != self.step:
            self._save()
            self.last_saved = self.step
        self.t_window += time.perf_counter() - t_side
        return rec

    def _log_train(self, elapsed: float) -> dict:
        bad = torch.tensor(float(self.batch_bad_records), dtype=torch.float64, device=self.samples.device)
        counts = D.all_reduce(torch.stack([self.samples, self.tokens, bad])).tolist()
        rec = {"step": self.step, **self.window.reduce(), "lr": self.scheduler.get_last_lr()[0],
               "samples_per_s": counts[0] / elapsed, "tokens_per_s": counts[1] / elapsed,
               "skipped_steps": self.skipped_steps, "bad_records": self.data.bad_records + int(counts[2]),
               "epoch": self.data.train.epoch}
        if self.peak:
            rec["mfu"] = rec["tokens_per_s"] / self.dist.world * self.flops_per_token / (self.peak * 1e12)
        if self.dist.is_main:
            self.report.train(rec, counts[1], elapsed)
        return rec

    def _evaluate(self) -> None:
        t, lg, t0 = self.cfg.training, self.cfg.logging, time.perf_counter()
        bar = f"eval step {self.step}" if self.dist.is_main and lg.progress_bar else None
        if self.dist.is_main and not lg.progress_bar:
            log.info("step %d: evaluating ...", self.step)  # the status line where no bar shows
        with ema_weights(self.optimizer, [p for _, p in self.params]) as self.eval_on_ema:
            result = evaluate(self.objective, self.data.val, self.dist.device, self.step, t.seed, self.dist.rank,
                              lg.num_eval_batches, self.data.skip_bad, self.autocast, progress=bar)
        if self.dist.is_main:
            self.report.eval({"step": self.step, **result}, self.entry.metrics, self.eval_on_ema,
                             time.perf_counter() - t0)

    def _save(self, data_state: dict | None = None) -> None:
        """A checkpoint of this step; ``data_state``: the data position to record (default: now)."""
        extra = {"scheduler": self.scheduler.state_dict(), "step": self.step,
                 "data": data_state or self.data.train.state_dict(), "data_fingerprint": self.data.fingerprint,
                 "rng": D.all_gather_object(C.rng_state(self.dist.device)),
                 "metric_window": D.all_gather_object(self.window.state_dict()),
                 "skipped_steps": self.skipped_steps, "batch_bad_records": D.all_gather_object(self.batch_bad_records),
                 "wandb_id": self.wandb_id, "objective": self.objective.checkpoint_metadata(),
                 "sources": self.source_records,
                 "config": OmegaConf.to_container(self.cfg, resolve=True, enum_to_str=True)}
        if self.fsdp:
            C.save_sharded(self.run_dir, self.step, self.objective, self.optimizer, extra,
                           self.cfg.logging.keep_last, self.dist.is_main, self.saved_keys)
            return

        def write() -> None:
            names = {id(p): n for n, p in self.params}
            state = {"model": {k: v for k, v in self.objective.state_dict().items() if k in self.saved_keys},
                     "optimizer": self.optimizer.state_dict(),
                     # the optimizer state's parameter numbers, named (its EMA is read by the CLIs)
                     "optimizer_param_names": [names[id(p)] for g in self.optimizer.param_groups for p in g["params"]],
                     **extra}
            C.save_checkpoint(self.run_dir, self.step, state, self.cfg.logging.keep_last)

        _agree(write, self.dist)  # a failed write ends every rank together, with its message
