"""Warnings at start for settings that are valid but cannot do what the user likely meant.

Each is a value that passes validation (a long warmup, a slow EMA, many loader workers) yet
quietly sabotages the run it is in: a 60-step run with 1000 warmup steps never reaches its
learning rate; eval on a 0.9999 EMA of a 60-step run scores the initial weights. The loop logs
them once, on rank 0, before anything expensive starts.
"""
from __future__ import annotations

import os


def available_cores() -> int:
    """The CPU cores this process may run on (a SLURM or taskset allocation, not the machine's)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 1


def start_warnings(cfg, ranks_on_node: int, cores: int) -> list[str]:
    """The warnings ``cfg`` deserves on a node running ``ranks_on_node`` ranks on ``cores`` cores."""
    t, lg, d = cfg.training, cfg.logging, cfg.data
    steps, out = t.num_train_steps, []
    if t.warmup_steps >= steps:
        peak = cfg.optimizer.lr * steps / t.warmup_steps
        out.append(f"training.warmup_steps={t.warmup_steps} >= training.num_train_steps={steps}: the learning "
                   f"rate never leaves warmup (it reaches {peak:.2g}, not optimizer.lr={cfg.optimizer.lr:g}); "
                   "lower training.warmup_steps")
    if t.ema and 1.0 / (1.0 - t.ema) > steps:
        out.append(f"training.ema={t.ema:g} averages over ~{1.0 / (1.0 - t.ema):.0f} steps, longer than this "
                   f"{steps}-step run: eval runs on the EMA weights, which stay near the initial ones (eval "
                   "loss barely moves while the training loss falls); lower training.ema (e.g. "
                   f"{max(0.0, 1.0 - 10.0 / steps):.3g} averages over a tenth of the run) or set 0 (off)")
    if d.num_workers and d.num_workers * ranks_on_node > cores:
        out.append(f"data.num_workers={d.num_workers} loader workers x {ranks_on_node} rank(s) on this node exceed "
                   f"its {cores} CPU core(s): they compete with training for the cores; lower data.num_workers "
                   "(0 loads in the training process)")
    if lg.save_freq > steps:
        out.append(f"logging.save_freq={lg.save_freq} is longer than the run ({steps} steps): the only checkpoint "
                   "is the final one, so a run killed before its end keeps nothing; lower logging.save_freq")
    return out


_said: set[str] = set()


def warn_once(logger, message: str) -> None:
    """``logger.warning(message)`` the first time this process sees ``message`` (samplers run per batch)."""
    if message not in _said:
        _said.add(message)
        logger.warning("%s", message)


def guidance_warning(w: float, null_prob: float, null_key: str, flag: str) -> str | None:
    """Classifier-free guidance contrasts with the null condition, which a run trained only with
    ``null_key`` > 0: without it, guidance extrapolates towards an input the model never saw."""
    if w > 0 and null_prob == 0:
        return (f"guidance w={w:g} contrasts with the null condition, which this model never trained "
                f"({null_key}=0): the guided samples are not classifier-free guidance; sample with {flag} 0, "
                f"or train with {null_key} > 0")
    return None
