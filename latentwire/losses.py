"""LatentWire's loss terms, on logits already aligned with their targets.

Alignment is done once, by the caller: ``logits[:, t]`` is the distribution the LLM gave for
answer token ``t`` - the output at the position *before* that token (the last anchor position for
t = 0). Nothing here shifts again; the original passed already-shifted labels to a HF
``*ForCausalLM``, which shifted them a second time (each position scored against the token two
ahead: 14.95 nats/token on a SmolLM2 QA prompt where the single shift gives 2.20).

Because the LLM is causal, the logits at the first K answer positions of one teacher-forced
forward equal those of K separate calls on ``[prefix, anchor, answer[:t]]`` (the original's
``k_token_ce_from_prefix`` and KD students, one LLM call per step): the first-token CE, the K-CE
and the KD read the same forward. ``tests/test_latentwire.py`` checks the equality.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F


class Counts(NamedTuple):
    """The denominators of the loss terms: the answer tokens and each step's rows, as their sum
    over ranks / world size (:func:`mmldlm.nn.rank_share`) while training under a process group.
    A rank's summed term divided by them makes the ranks' mean (DDP's gradient average) the global
    batch's mean: W ranks train exactly as 1 rank. Counted once per step from the answer masks,
    outside any activation checkpoint, so a recomputed forward issues no collective."""

    tokens: torch.Tensor  # [] real answer tokens
    steps: torch.Tensor  # [W] rows that have answer token t (W: the longest answer any rank can have)


def counts(mask: torch.Tensor, width: int) -> Counts:
    """The global shares of ``mask [B, T]``'s tokens and per-step rows (this rank's when alone),
    the steps padded to ``width`` >= T: ranks' batches have answers of different lengths, and a
    collective needs the same size on every rank."""
    from mmldlm.nn import rank_share

    steps = F.pad(mask.sum(0), (0, width - mask.shape[1]))
    both = rank_share(torch.cat([mask.sum().view(1), steps]).float())
    return Counts(both[0], both[1:])


class TokenCE(NamedTuple):
    ce: torch.Tensor  # [B, T] per-token CE, 0 where masked
    mask: torch.Tensor  # [B, T] bool
    n: Counts


def token_ce(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor, n: Counts | None = None) -> TokenCE:
    """Per-token CE of ``logits [B, T, V]`` against ``targets [B, T]`` (float32); ``n``: the
    denominators (None: this batch's own counts)."""
    ce = F.cross_entropy(logits.float().transpose(1, 2), targets, reduction="none")
    n = n if n is not None else Counts(mask.sum().float(), mask.sum(0).float())
    return TokenCE(ce * mask, mask, n)


def tf_loss(t: TokenCE) -> torch.Tensor:
    """Teacher-forced CE: the mean over every real answer token of the (global) batch."""
    return t.ce.sum() / t.n.tokens.clamp_min(1)


def _per_step_mean(values: torch.Tensor, steps: torch.Tensor, K: int) -> torch.Tensor:
    """``values [B, <= K]`` (0 where a row lacks the step) summed per step over the rows that
    have it, then the mean over those of the first ``K`` steps some row of the global batch has
    (this rank's answers may be shorter than another's: its missing steps add 0)."""
    K = min(K, steps.shape[0])
    sums = F.pad(values[:, :K].sum(0), (0, K - min(K, values.shape[1])))
    active = steps[:K]
    return (sums[active > 0] / active[active > 0]).mean()


def first_loss(t: TokenCE) -> torch.Tensor:
    """CE of the first answer token (never BOS: answers carry no special tokens)."""
    return _per_step_mean(t.ce, t.n.steps, 1)


def kce_loss(t: TokenCE, K: int) -> torch.Tensor:
    """The mean over the first ``K`` steps of each step's CE (the original's K-token CE)."""
    return _per_step_mean(t.ce, t.n.steps, K)


def kd_loss(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor, tau: float,
            n: Counts | None = None, K: int | None = None) -> torch.Tensor:
    """``KL(teacher || student) * tau^2`` at temperature ``tau``, batch-mean per step over the rows
    that have the step, then the mean over the first ``K`` steps (None: all given). ``student`` /
    ``teacher`` ``[B, k, V]`` logits for the same answer tokens, ``mask [B, k]``, ``n`` the
    denominators (None: this batch's)."""
    s = F.log_softmax(student.float() / tau, -1)
    p_t = F.log_softmax(teacher.float() / tau, -1)
    kl = (p_t.exp() * (p_t - s)).sum(-1) * mask  # [B, k]
    steps = n.steps if n is not None else mask.sum(0).float()
    return _per_step_mean(kl, steps, K or mask.shape[1]) * tau * tau


def state_loss(student: list[torch.Tensor], teacher: list[torch.Tensor], mask: torch.Tensor,
               n: Counts | None = None, K: int | None = None) -> torch.Tensor:
    """Mean over layers of the MSE between hidden states ``[B, k, H]`` at the same answer steps
    (the first ``K`` of the global batch; None: all given)."""
    m = mask.unsqueeze(-1).float()
    rows = (n.steps if n is not None else mask.sum(0).float())[: K or mask.shape[1]].sum()
    per = [((s.float() - t.float()).pow(2) * m).sum() / (rows * s.shape[-1]).clamp_min(1)
           for s, t in zip(student, teacher)]
    return torch.stack(per).mean()


def first_weight(step: int, total_steps: int, loss) -> float:
    """The first-token CE weight at ``step`` under ``loss.first_token_ce_schedule`` (the original's
    ``_first_token_weight_for_step``): none = the weight; warmup = linear from 0 over
    ``first_token_ce_warmup_steps``, then the weight; cosine = the peak (default max(8, 2 x weight))
    for ``warmup_frac`` of the run, then cosine down to the weight."""
    base, how = loss.first_token_ce_weight, loss.first_token_ce_schedule.name
    if how == "none":
        return base
    if how == "warmup":
        w = loss.first_token_ce_warmup_steps
        return base * step / w if step < w else base
    peak = loss.first_token_ce_peak if loss.first_token_ce_peak else max(8.0, 2.0 * base)
    hold = min(total_steps, round(total_steps * loss.first_token_ce_warmup_frac))
    if step < hold:
        return peak
    if step >= total_steps or total_steps == hold:
        return base
    frac = (step - hold) / max(1, total_steps - hold)
    return base + (peak - base) * 0.5 * (1 + math.cos(math.pi * frac))


def autoscale(weight: float, first: torch.Tensor, tf: torch.Tensor) -> torch.Tensor:
    """The original's first-token auto-scale: when the first-token CE exceeds the TF CE, the weight
    is multiplied by ``clip(first / tf, 1, 8)`` (a detached factor, computed on the device). Under
    a process group the ratio is the global batch's (every rank's term is its share of the global
    mean, so their mean over ranks is that mean): each rank scales by the same factor."""
    from mmldlm.nn import rank_share

    both = rank_share(torch.stack([first.detach(), tf.detach()]).float())
    ratio = both[0] / both[1].abs().clamp_min(1e-4)
    return weight * ratio.clamp(1.0, 8.0)
