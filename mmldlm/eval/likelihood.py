"""Deterministic validation NELBO: the same number twice, on any number of ranks.

A diffusion bound is an expectation over the noise level t; one random t per sequence (what the
original's eval did) gives a different number each time. Here every sequence is scored at the
same ``num_t`` midpoints of [eps, 1 - eps] (GIDD's ``compute_elbo`` uses a grid too) with masks
keyed by (grid point, record, position), and the bound is the mean over the grid:
``nelbo = sum over sequences and t of NELBO nats / (num_t x real tokens)``, ``ppl = exp(nelbo)``.
Sums are all-reduced over ranks. An objective without a noise level (AR) is scored once, exactly.
Objectives report through :meth:`Objective.nelbo` (:class:`Nelbo`); extra per-sequence terms
(e.g. ``latent_gain``) are averaged per token the same way.
"""
from __future__ import annotations

import contextlib
from typing import NamedTuple

import torch
from tqdm import tqdm

from mmldlm.data.collate import settle_later
from mmldlm.data.loader import shutdown_workers
from mmldlm.train import distributed as D


class Nelbo(NamedTuple):
    nats: torch.Tensor  # [B] the bound's nats per sequence at this t
    tokens: torch.Tensor  # [B] the tokens it covers (real tokens; AR: predicted ones)
    extra: dict  # name -> [B] more nats per sequence, averaged per token like ``nats``


def t_grid(num_t: int, eps: float) -> torch.Tensor:
    """``num_t`` midpoints of equal cells of [eps, 1 - eps] (float64)."""
    return eps + (1 - 2 * eps) * (torch.arange(num_t, dtype=torch.float64) + 0.5) / num_t


@torch.no_grad()
def validation_nelbo(objective, loader, device: torch.device, num_t: int = 16, eps: float = 1e-4,
                     skip_bad: bool = False, autocast=None, progress: bool = True) -> dict[str, float]:
    """``{nelbo, ppl, tokens, sequences, num_t, **extra}`` over every batch of ``loader``
    (this rank's share; totals all-reduced). Collective under a process group."""
    import torch.distributed as dist

    objective.eval()
    grid = t_grid(num_t, eps).tolist() if objective.nelbo_needs_t else [None]
    autocast = autocast or contextlib.nullcontext()
    sums: dict[str, torch.Tensor] = {}
    tokens = torch.zeros((), dtype=torch.float64, device=device)
    sequences = torch.zeros((), dtype=torch.float64, device=device)
    it, error = iter(loader), None
    try:
        for collated in tqdm(it, desc="nelbo", unit="batch", disable=not progress):
            batch, _, error = settle_later(collated, skip_bad, error)
            batch = {k: v.to(device) for k, v in batch.items()}
            n = batch["input_ids"].shape[0]
            for k, t in enumerate(grid):
                tt = None if t is None else torch.full((n,), t, device=device)
                with autocast:
                    out = objective.nelbo(batch, tt, k)
                for name, v in {"nelbo": out.nats, **out.extra}.items():
                    sums[name] = sums.get(name, torch.zeros((), dtype=torch.float64, device=device)) \
                        + v.double().sum() / len(grid)
            tokens += out.tokens.double().sum()
            sequences += n
    finally:
        shutdown_workers(it)
    names = sorted(sums)
    packed = torch.stack([sums[k] for k in names] + [tokens, sequences])
    if dist.is_initialized():
        dist.all_reduce(packed)
    error = D.first_error(error, device)  # a bad record on any rank: every rank raises it
    if error is not None:
        raise error
    totals = dict(zip(names, packed[:-2].tolist()))
    n_tok = packed[-2].item()
    result = {name: total / max(n_tok, 1.0) for name, total in totals.items()}
    result["ppl"] = float(torch.tensor(result["nelbo"]).exp())
    result.update(tokens=int(n_tok), sequences=int(packed[-1].item()), num_t=len(grid) if grid != [None] else 0)
    return result
