"""What a run tells its user and writes down: the jsonl logs (and wandb), one console line per
eval, and a summary when it ends.

``RunReport`` is rank 0's: train records to ``training_log.jsonl``, eval records to
``eval_log.jsonl``, the summary to ``summary.json``; the console lines go through the ``mm_ldlm``
logger, so Hydra's job log (where configured) holds them too.
"""
from __future__ import annotations

import logging
import math
import time
from pathlib import Path

from omegaconf import OmegaConf

from mmldlm.io import write_json_atomic
from mmldlm.objective import MetricGroups
from mmldlm.train.run_dir import set_aside
from mmldlm.train.run_log import JsonlLog, Wandb, read_jsonl

log = logging.getLogger("mm_ldlm")

LOGS = ("training_log.jsonl", "eval_log.jsonl")

EVAL_LINE_METRICS = 6  # more would wrap on a laptop terminal


def main_metrics(groups: MetricGroups, record: dict, limit: int = EVAL_LINE_METRICS) -> list[str]:
    """The declared metrics present in ``record``, in declaration order, ``loss`` first."""
    keys = dict.fromkeys(["loss", *(k for ks in groups.values() for k in ks)])
    return [k for k in keys if isinstance(record.get(k), (int, float))][:limit]


def _fmt(v: float) -> str:
    return f"{v:.4g}" if math.isfinite(v) else str(v)


def eval_line(step: int, record: dict, groups: MetricGroups, on_ema: bool, seconds: float) -> str:
    shown = " | ".join(f"{k} {_fmt(record[k])}" for k in main_metrics(groups, record))
    return f"eval step {step}{' (EMA)' if on_ema else ''}: {shown} ({seconds:.1f} s)"


def _hms(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


class RunSummary:
    """Counts this session's training tokens and time (eval and checkpoints excluded), then says
    what the run did."""

    def __init__(self, start_step: int):
        self.start_step = start_step
        self.t0 = time.perf_counter()
        self.tokens = 0.0
        self.train_seconds = 0.0

    def add_window(self, tokens: float, seconds: float) -> None:
        self.tokens += tokens
        self.train_seconds += seconds

    def finish(self, run_dir: Path, step: int, stopped: bool, on_ema: bool, checkpoint: Path | None) -> dict:
        """Writes ``run_dir/summary.json`` and returns its content."""
        evals = read_jsonl(run_dir / "eval_log.jsonl") if (run_dir / "eval_log.jsonl").exists() else []
        scored = [r for r in evals if isinstance(r.get("loss"), (int, float))]
        best = min(scored, key=lambda r: r["loss"]) if scored else None
        summary = {
            "steps": [self.start_step, step],
            "stopped_by_signal": stopped,
            "wall_seconds": time.perf_counter() - self.t0,
            "train_tokens_per_s": self.tokens / self.train_seconds if self.train_seconds > 0 else None,
            "best_eval": {"step": best["step"], "loss": best["loss"]} if best else None,
            "last_eval": {"step": scored[-1]["step"], "loss": scored[-1]["loss"]} if scored else None,
            "eval_on_ema": on_ema,
            "checkpoint": str(checkpoint) if checkpoint else None,
            "curves": f"python -m mmldlm.plot {run_dir}",
        }
        write_json_atomic(run_dir / "summary.json", summary)
        return summary


def summary_line(s: dict) -> str:
    first, last = s["steps"]
    parts = [f"{'stopped by signal' if s['stopped_by_signal'] else 'done'}: steps {first} -> {last} in "
             f"{_hms(s['wall_seconds'])}"]
    if s["train_tokens_per_s"]:
        parts.append(f"{s['train_tokens_per_s']:,.0f} tokens/s")
    if s["last_eval"]:
        ema = " (EMA)" if s["eval_on_ema"] else ""
        best, last_e = s["best_eval"], s["last_eval"]
        parts.append(f"eval loss{ema} best {_fmt(best['loss'])} at step {best['step']}, "
                     f"last {_fmt(last_e['loss'])} at step {last_e['step']}")
    lines = [" | ".join(parts)]
    if s["checkpoint"]:
        lines.append(f"checkpoint: {s['checkpoint']}")
    lines.append(f"curves: {s['curves']}")
    return "\n".join(lines)


class RunReport:
    """Rank 0's record of a run. Opening it starts the logs: resumed at step N, they are cut back to
    N (their full history kept aside); a fresh start moves an earlier unresumable run's logs aside.
    ``wandb_id``: the run's wandb id (the checkpoint's on resume, else the new one)."""

    def __init__(self, cfg, run_dir: Path, step: int, resumed: bool, wandb_id: str | None):
        self.cfg, self.run_dir = cfg, run_dir
        logs = [run_dir / n for n in LOGS]
        if resumed:
            if any(p.exists() and any(r.get("step", 0) > step for r in read_jsonl(p)) for p in logs):
                set_aside(run_dir, logs, f"logs_after_step_{step}", copy=True)
            OmegaConf.save(cfg, run_dir / f"config_resume_step_{step}.yaml", resolve=True)
        else:
            # nothing resumed (e.g. resume=auto after a kill before the first checkpoint): start fresh
            moved = set_aside(run_dir, logs + [run_dir / "config.yaml"], "no_checkpoint")
            if moved:
                log.warning("nothing to resume in %s: the earlier run's logs moved to %s", run_dir, moved)
            OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
        resume_step = step if resumed else None
        self.train_log = JsonlLog(logs[0], resume_step)
        self.eval_log = JsonlLog(logs[1], resume_step)
        self.wandb = (Wandb(cfg.logging, run_dir, OmegaConf.to_container(cfg, resolve=True), wandb_id)
                      if cfg.logging.use_wandb else None)
        self.wandb_id = self.wandb.id if self.wandb else wandb_id
        self.summary = RunSummary(step)
        self.warned_truncation = False

    def train(self, rec: dict, tokens: float, seconds: float) -> None:
        """A train record, covering ``tokens`` trained in ``seconds``."""
        self.summary.add_window(tokens, seconds)
        if rec.get("truncated_frac", 0) > 0 and not self.warned_truncation:
            log.warning("%.1f%% of the texts are longer than data.max_seq_len=%d tokens and are truncated "
                        "(truncated_frac in training_log.jsonl)", 100 * rec["truncated_frac"],
                        self.cfg.data.max_seq_len)
            self.warned_truncation = True
        self.train_log.write(rec)
        if self.wandb:
            self.wandb.log({f"train/{k}": v for k, v in rec.items() if k != "step"}, rec["step"])

    def eval(self, rec: dict, groups: MetricGroups, on_ema: bool, seconds: float) -> None:
        log.info("%s", eval_line(rec["step"], rec, groups, on_ema, seconds))
        self.eval_log.write(rec)
        if self.wandb:
            self.wandb.log({f"eval/{k}": v for k, v in rec.items() if k != "step"}, rec["step"])

    def finish(self, step: int, stopped: bool, on_ema: bool, checkpoint: Path | None) -> None:
        """Closes the logs and says what the run did (``summary.json`` and the console)."""
        self.train_log.close(), self.eval_log.close()
        if self.wandb:
            self.wandb.finish()
        log.info("%s", summary_line(self.summary.finish(self.run_dir, step, stopped, on_ema, checkpoint)))
