"""What a run tells its user: one console line per eval, and a summary when it ends.

The same facts go to the run directory: eval records to ``eval_log.jsonl`` (by the loop), the
summary to ``summary.json``; the console lines go through the ``mm_ldlm`` logger, so Hydra's job
log (where configured) holds them too.
"""
from __future__ import annotations

import math
import time
from pathlib import Path

from mmldlm.io import write_json_atomic
from mmldlm.objective import MetricGroups
from mmldlm.train.run_log import read_jsonl

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
