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


class TokenCE(NamedTuple):
    ce: torch.Tensor  # [B, T] per-token CE, 0 where masked
    mask: torch.Tensor  # [B, T] bool


def token_ce(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> TokenCE:
    """Per-token CE of ``logits [B, T, V]`` against ``targets [B, T]`` (float32)."""
    ce = F.cross_entropy(logits.float().transpose(1, 2), targets, reduction="none")
    return TokenCE(ce * mask, mask)


def tf_loss(t: TokenCE) -> torch.Tensor:
    """Teacher-forced CE: the mean over every real answer token of the batch."""
    return t.ce.sum() / t.mask.sum().clamp_min(1)


def step_means(t: TokenCE, K: int) -> torch.Tensor:
    """CE of each of the first ``K`` steps, averaged over the rows that have that token ``[k]``."""
    ce, mask = t.ce[:, :K], t.mask[:, :K]
    active = mask.sum(0)
    return ce.sum(0)[active > 0] / active[active > 0]


def first_loss(t: TokenCE) -> torch.Tensor:
    """CE of the first answer token (never BOS: answers carry no special tokens)."""
    return step_means(t, 1)[0]


def kce_loss(t: TokenCE, K: int) -> torch.Tensor:
    """The mean over the first ``K`` steps of each step's CE (the original's K-token CE)."""
    return step_means(t, K).mean()


def kd_loss(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor, tau: float) -> torch.Tensor:
    """``KL(teacher || student) * tau^2`` at temperature ``tau``, batch-mean per step over the rows
    that have the step, then the mean over steps. ``student``/``teacher`` ``[B, K, V]`` logits for
    the same answer tokens, ``mask [B, K]``."""
    s = F.log_softmax(student.float() / tau, -1)
    p_t = F.log_softmax(teacher.float() / tau, -1)
    kl = (p_t.exp() * (p_t - s)).sum(-1) * mask  # [B, K]
    active = mask.sum(0)
    return (kl.sum(0)[active > 0] / active[active > 0]).mean() * tau * tau


def state_loss(student: list[torch.Tensor], teacher: list[torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
    """Mean over layers of the MSE between hidden states ``[B, K, H]`` at the same answer steps."""
    m = mask.unsqueeze(-1).float()
    per = [((s.float() - t.float()).pow(2) * m).sum() / (m.sum() * s.shape[-1]).clamp_min(1)
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
    is multiplied by ``clip(first / tf, 1, 8)`` (a detached factor, computed on the device)."""
    ratio = first.detach() / tf.detach().abs().clamp_min(1e-4)
    return weight * ratio.clamp(1.0, 8.0)
