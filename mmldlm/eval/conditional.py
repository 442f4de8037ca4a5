"""A continuation given a context, for every family: what the lm-eval harness asks a model.

A request is a pair of token lists (context, target). Its row is ``context + target``, right-padded
in a batch; ``target_mask`` marks the target. The objective's ``conditional_nelbo`` scores it:

* exact models (``nelbo_needs_t = False``: AR, the WeDLM fine-tune's causal path) once, -log p;
* diffusion models by the loss CLI's protocol (``mmldlm.eval.likelihood``): the mean over the
  ``num_t`` midpoints t_k of [eps, 1 - eps] of the NELBO of the target at t_k, the context never
  noised, the noise keyed by (run seed, grid point k, request, position). The request's key is a
  hash of its tokens, so a pair scores the same number in any batch, order, task or run; equal
  pairs are scored once. The result is an upper bound on -log p (up to the grid's quadrature),
  reported as a log-likelihood bound.

Rolling windows (:func:`rolling_pairs`) turn a document into such pairs; :func:`continue_text`
draws a continuation with the family's own sampler and cuts it at its stop sequences.
"""
from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np
import torch
from tqdm import tqdm

from mmldlm.eval.likelihood import t_grid


class Pair(NamedTuple):
    context: tuple[int, ...]  # at least one token (the document-start token stands in for none)
    target: tuple[int, ...]  # at least one token


class Score(NamedTuple):
    logprob: float  # log p (exact) or its lower bound -NELBO, nats
    greedy: bool  # every target token is the model's argmax (see the objective's hooks)
    tokens: int


def request_key(pair: Pair) -> int:
    """A 29-bit key of the pair's tokens (so that ``noise._position_counters`` never wraps)."""
    data = np.asarray([*pair.context, -1, *pair.target], dtype=np.int64).tobytes()
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little") >> 35


def fit(context: Sequence[int], target: Sequence[int], max_length: int) -> tuple[Pair, bool]:
    """(the pair within ``max_length`` tokens, whether the context lost its start). The target is
    never cut: one that leaves no room for a context token is an error."""
    if not target:
        raise ValueError("a request has an empty continuation: there is nothing to score")
    if not context:
        raise ValueError("a request has no context token (the caller puts the document-start token there)")
    if len(target) + 1 > max_length:
        raise ValueError(f"a continuation of {len(target)} tokens does not fit the model's {max_length}-token "
                         "window beside one context token; raise max_length= (if the model allows) or shorten it")
    keep = max_length - len(target)
    return Pair(tuple(context[-keep:]), tuple(target)), len(context) > keep


def rolling_pairs(ids: Sequence[int], start: int, max_length: int, min_context: int = 1) -> list[Pair]:
    """A document as pairs that predict each token once: the first ``max_length - 1`` tokens after
    the document-start token ``start``, then targets of up to ``max_length - min_context`` tokens,
    each after as many preceding tokens as fit in ``max_length``. ``min_context = 1`` gives
    disjoint windows (MDLM's zero-shot protocol, lm-eval's default); more context per window costs
    more windows."""
    if not 1 <= min_context < max_length:
        raise ValueError(f"rolling_context={min_context} must be in [1, max_length={max_length})")
    full = [start, *ids]
    pairs, done = [], 0
    while done < len(ids):
        n = min(max_length - (1 if done == 0 else min_context), len(ids) - done)
        end = done + 1 + n  # the target is full[done + 1 : end]
        pairs.append(Pair(tuple(full[max(0, end - max_length): done + 1]), tuple(full[done + 1: end])))
        done += n
    return pairs


def _batch(pairs: list[Pair], pad_id: int, device) -> dict[str, torch.Tensor]:
    L = max(len(p.context) + len(p.target) for p in pairs)
    ids = torch.full((len(pairs), L), pad_id, dtype=torch.long)
    mask = torch.zeros(len(pairs), L, dtype=torch.bool)
    target = torch.zeros(len(pairs), L, dtype=torch.bool)
    for i, (c, t) in enumerate(pairs):
        ids[i, : len(c) + len(t)] = torch.tensor([*c, *t])
        mask[i, : len(c) + len(t)] = True
        target[i, len(c): len(c) + len(t)] = True
    index = torch.tensor([request_key(p) for p in pairs], dtype=torch.long)
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device), "target_mask": target.to(device),
            "index": index.to(device)}


@torch.no_grad()
def score_pairs(objective, pairs: Sequence[Pair], *, batch_size: int, num_t: int, eps: float, pad_id: int,
                device, progress: bool = False) -> list[Score]:
    """The :class:`Score` of every pair, in order (equal pairs scored once, longest first)."""
    if batch_size < 1 or num_t < 1:
        raise ValueError(f"batch_size ({batch_size}) and num_t ({num_t}) must be >= 1")
    unique = list(dict.fromkeys(pairs))
    unique.sort(key=lambda p: -(len(p.context) + len(p.target)))
    exact = not objective.nelbo_needs_t
    grid = t_grid(num_t, eps).tolist()
    scores: dict[Pair, Score] = {}
    for start in tqdm(range(0, len(unique), batch_size), desc="scoring", unit="batch", disable=not progress):
        chunk = unique[start: start + batch_size]
        batch = _batch(chunk, pad_id, device)
        n = len(chunk)
        if exact:
            out = objective.conditional_nelbo(batch, None, 0)
            if "greedy" not in out.extra:
                raise TypeError(f"{type(objective).__name__}.conditional_nelbo is exact but reports no 'greedy'")
            nats, greedy = out.nats.double(), out.extra["greedy"].bool()
        else:
            nats = torch.zeros(n, dtype=torch.float64, device=device)
            for k, t in enumerate(grid):
                nats += objective.conditional_nelbo(batch, torch.full((n,), t, device=device), k).nats.double()
            nats /= len(grid)
            greedy = objective.conditional_greedy(batch)
        if not torch.isfinite(nats).all():
            raise FloatingPointError(f"{type(objective).__name__} scored a non-finite likelihood")
        for p, v, g in zip(chunk, nats.tolist(), greedy.tolist()):
            scores[p] = Score(-v, bool(g), len(p.target))
    return [scores[p] for p in pairs]


def first_stop(text: str, until: Sequence[str]) -> int | None:
    """Where the earliest stop sequence starts in ``text`` (None: none occurs)."""
    at = [i for i in (text.find(s) for s in until if s) if i >= 0]
    return min(at) if at else None


@torch.no_grad()
def continue_text(objective, decode: Callable[[list[int]], str], context: Sequence[int], *, max_new: int,
                  until: Sequence[str], end_id: int | None, max_length: int, steps: int, temperature: float,
                  seed: int, device) -> str:
    """The text the family's sampler writes after ``context`` (``max_new`` tokens, the context cut
    from the left to fit ``max_length``), up to its first end token and its first stop sequence.
    The draws are a function of (``seed``, the request's tokens) alone."""
    max_new = min(max_new, max_length - 1)
    ctx = list(context)[-(max_length - max_new):]
    gen = torch.Generator(device=device).manual_seed(seed * 1_000_003 + request_key(Pair(tuple(ctx), (max_new,))))

    def text_of(ids: list[int]) -> str:
        if end_id is not None and end_id in ids:
            ids = ids[: ids.index(end_id)]
        return decode(ids)

    def stop(ids: torch.Tensor) -> torch.Tensor:
        return torch.tensor([end_id in row or first_stop(text_of(row), until) is not None for row in ids.tolist()])

    out = objective.complete(torch.tensor([ctx], device=device), max_new, steps=steps, temperature=temperature,
                             generator=gen, stop=stop)
    text = text_of(out[0].tolist())
    cut = first_stop(text, until)
    return text if cut is None else text[:cut]
