"""Metric accumulation (rank-averaged), the run's jsonl logs, and optional wandb."""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
from pathlib import Path

import torch

from mmldlm.io import write_text_atomic
from mmldlm.train import distributed as D

log = logging.getLogger(__name__)


class MetricWindow:
    """Sums of numeric metrics since the last report, kept on the device (no host sync per step).

    ``reduce`` all-reduces sums and counts over ranks and returns means. Its state goes into
    checkpoints, so a run resumed in the middle of a logging window logs what the uninterrupted
    run would have logged.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, float] = {}

    def add(self, metrics: dict, weight: float = 1.0) -> None:
        for k, v in metrics.items():
            if isinstance(v, torch.Tensor):
                if v.numel() != 1:
                    raise TypeError(f"metric {k!r} must be a scalar, got shape {list(v.shape)}")
                v = v.detach().reshape(())
            elif not isinstance(v, (int, float)) or isinstance(v, bool):
                raise TypeError(f"metric {k!r} is a {type(v).__name__}; metrics must be numbers "
                                "(put strings in run metadata)")
            v = torch.as_tensor(v, dtype=torch.float64, device=self.device) * weight
            self.sums[k] = self.sums[k] + v if k in self.sums else v
            self.counts[k] = self.counts.get(k, 0.0) + weight

    def merge(self, other: MetricWindow) -> None:
        for k, v in other.sums.items():
            self.sums[k] = self.sums[k] + v if k in self.sums else v
            self.counts[k] = self.counts.get(k, 0.0) + other.counts[k]

    def reduce(self) -> dict[str, float]:
        """Means over ranks (weighted by each rank's counts); resets the window. Collective."""
        keys = sorted(set().union(*D.all_gather_object(sorted(self.sums))))
        if not keys:
            return {}
        buf = torch.zeros(2 * len(keys), dtype=torch.float64, device=self.device)
        for i, k in enumerate(keys):
            if k in self.sums:
                buf[i], buf[len(keys) + i] = self.sums[k], self.counts[k]
        vals = D.all_reduce(buf).tolist()
        self.sums, self.counts = {}, {}
        return {k: vals[i] / vals[len(keys) + i] for i, k in enumerate(keys) if vals[len(keys) + i]}

    def state_dict(self) -> dict:
        return {k: [float(v), self.counts[k]] for k, v in self.sums.items()}

    def load_state_dict(self, state: dict) -> None:
        self.sums = {k: torch.tensor(s, dtype=torch.float64, device=self.device) for k, (s, _) in state.items()}
        self.counts = {k: c for k, (_, c) in state.items()}


class JsonlLog:
    """One JSON object per line, keyed by ``step``. On resume from step N, lines with a step
    greater than N (written after that checkpoint) are dropped, so every step appears once."""

    def __init__(self, path: Path, resume_step: int | None):
        self.path = path
        if resume_step is not None and path.exists():
            kept = []
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:  # torn last line of a killed run
                    continue
                if rec.get("step", 0) <= resume_step:
                    kept.append(line)
            write_text_atomic(path, "".join(k + "\n" for k in kept))
        self._f = open(path, "a", encoding="utf-8")  # noqa: SIM115 - open for the whole run, closed by close()

    def write(self, record: dict) -> None:
        clean = {k: (v if isinstance(v, int) or math.isfinite(v) else None) for k, v in record.items()}
        self._f.write(json.dumps(clean) + "\n")
        self._f.flush()

    def close(self) -> None:
        self._f.close()


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """The records of a jsonl log (a torn last line is ignored)."""
    out = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            out.append(json.loads(line))
    return out


class Wandb:
    """Thin wandb wrapper: off unless logging.use_wandb; honours WANDB_MODE (offline works)."""

    def __init__(self, logging_cfg, run_dir: Path, config: dict, run_id: str | None):
        import wandb

        self._wandb = wandb
        self.run = wandb.init(project=logging_cfg.wandb_project, entity=logging_cfg.wandb_entity,
                              dir=str(logging_cfg.wandb_dir or run_dir), name=logging_cfg.run_name,
                              id=run_id, resume="allow", config=config)
        self.id = self.run.id

    def log(self, record: dict, step: int) -> None:
        self.run.log(record, step=step)

    def finish(self) -> None:
        self.run.finish()
