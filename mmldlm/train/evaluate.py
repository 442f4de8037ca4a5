"""Validation: one function the loop calls at every eval and the loss CLI can call on its own."""
from __future__ import annotations

import contextlib

import torch
from tqdm import tqdm

from mmldlm.data.collate import settle_later
from mmldlm.data.loader import shutdown_workers
from mmldlm.train import distributed as D
from mmldlm.train.run_log import MetricWindow


def _n_eval_batches(loader, n_batches: int) -> int | None:
    try:
        size = len(loader)
    except TypeError:  # an iterable-style loader: unknown
        return n_batches or None
    return min(n_batches, size) if n_batches else size


@torch.no_grad()
def evaluate(objective, loader, device: torch.device, step: int, seed: int, rank: int = 0, n_batches: int = 0,
             skip_bad: bool = False, autocast=None, progress: str | None = None) -> dict[str, float]:
    """Rank-averaged means of ``loss``, the objective's metrics and its ``eval_extra`` over the
    first ``n_batches`` batches of ``loader`` (0 = all), each batch weighted by its samples.
    The eval noise is fixed by (seed, rank) on every call, and the caller's RNG state is left as
    it was. A bad record (``data.on_bad_record=error``) raises on every rank after the last batch, so the
    ranks' collectives stay matched. Collective: every rank calls it. ``progress``: a bar with this
    title (rank 0's caller passes it; the training bar would otherwise sit still through a long eval)."""
    window = MetricWindow(device)
    was_training = objective.training
    objective.eval()
    autocast = autocast or contextlib.nullcontext()
    devices = [device] if device.type == "cuda" else []
    it, error = iter(loader), None
    bar = tqdm(total=_n_eval_batches(loader, n_batches), desc=progress, unit="batch", leave=False,
               dynamic_ncols=True, disable=progress is None)
    with torch.random.fork_rng(devices=devices):  # fixed eval noise; the training RNG untouched
        torch.manual_seed(seed + 7919 * (rank + 1))
        try:
            for i, collated in enumerate(it):
                if n_batches and i >= n_batches:
                    break
                batch, info, error = settle_later(collated, skip_bad, error)
                batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
                with autocast:
                    loss, metrics = objective(batch, step)
                    extra = objective.eval_extra(batch, i)
                window.add({"loss": loss.float(), **metrics, **extra}, weight=info.texts)
                bar.update(1)
        finally:
            shutdown_workers(it)
            bar.close()
    objective.train(was_training)
    result = window.reduce()
    error = D.first_error(error, device)  # a bad record on any rank ends every rank's eval together
    if error is not None:
        raise error
    return result
