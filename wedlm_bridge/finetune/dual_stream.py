"""WeDLM's dual-stream training input (refs/wedlm_finetune.md B.1), built on tensors.

A row of ``L`` tokens (one conversation, or several packed: ``segment`` is each token's
conversation ordinal in the row, -1 = pad) becomes ``2L``: the clean stream x0 (the tokens as they
are) and the prediction stream xt. In xt, per block of ``block_size`` tokens of a conversation
(blocks counted from the conversation's start), ``round(n * gamma)`` of the block's ``n`` response
tokens (``labels != -100``; the prompt is never masked), chosen uniformly, become [MASK], with
gamma ~ U(0, 1) clamped to >= ``eps`` (one per block, or with ``mask_per_block=false`` one per
conversation); then the block is reordered: observed tokens first, masked last, each keeping its
logical position (RoPE reads ``position_ids``). Attention (True = may attend):

- x0 -> x0: causal within the conversation;
- xt -> x0: the conversation's clean blocks before the query's block;
- xt -> xt: the earlier (reordered) tokens of the query's own block;
- nothing else: no conversation sees another, nobody attends a pad, and a pad attends only itself
  (an SDPA row without a key is NaN, whose gradient would poison the weights).

Randomness is keyed by (seed, step, record, block or position) (:mod:`mmldlm.diffusion.noise`):
2 ranks mask exactly as 1 with the same global batch, and a resumed run as the uninterrupted one.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from mmldlm.diffusion.noise import keyed_uniform

_POS = 1 << 24  # counters: record * _POS + position (or block)


class DualStream(NamedTuple):
    input_ids: torch.Tensor  # [R, 2L]: x0 then xt
    position_ids: torch.Tensor  # [R, 2L] logical positions
    attention_mask: torch.Tensor  # [R, 1, 2L, 2L] bool
    masked: torch.Tensor  # [R, L] bool, xt order: the slot holds [MASK]
    target: torch.Tensor  # [R, L] long, xt order: the token the slot had
    gamma: torch.Tensor  # [R, L] float64, xt order: the mask ratio of the slot's block
    source: torch.Tensor  # [R, L] long: xt slot j holds the row's token source[j]


def _same(seg_q: torch.Tensor, seg_k: torch.Tensor) -> torch.Tensor:
    """[R, Lq, Lk]: query and key are real tokens of one conversation."""
    return (seg_q[:, :, None] == seg_k[:, None, :]) & (seg_k >= 0)[:, None, :]


def _with_pad_diagonal(mask: torch.Tensor, segment_of_query: torch.Tensor) -> torch.Tensor:
    eye = torch.eye(mask.shape[-1], dtype=torch.bool, device=mask.device)
    return mask | (eye & (segment_of_query < 0)[:, :, None])


def causal_mask(segment: torch.Tensor) -> torch.Tensor:
    """``[R, 1, L, L]``: causal attention within each conversation of a row (padded or packed)."""
    L = segment.shape[1]
    idx = torch.arange(L, device=segment.device)
    mask = _same(segment, segment) & (idx[None, :] <= idx[:, None])
    return _with_pad_diagonal(mask, segment)[:, None]


def choose_masks(labels, segment, positions, records, block_size: int, mask_per_block: bool, eps: float,
                 key: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(masked [R, L] bool, gamma [R, L] float64, block [R, L] long), in the row's own order."""
    R, L = labels.shape
    device = labels.device
    block = torch.div(positions, block_size, rounding_mode="floor")
    maskable = (labels != -100) & (segment >= 0)
    rec = records.clamp_min(0).long()
    gamma = keyed_uniform(rec * _POS + (block if mask_per_block else 0), *key, 1).clamp_min(eps)
    score = keyed_uniform(rec * _POS + positions, *key, 2)
    # one id per (row, conversation, block); conversations are contiguous and ascending along a row
    per_row = (L + 1) * (L // block_size + 2)
    group = torch.where(segment >= 0, segment.clamp_min(0) * (L // block_size + 2) + block, per_row - 1)
    flat = (group + torch.arange(R, device=device)[:, None] * per_row).flatten()
    n = torch.zeros(R * per_row, dtype=torch.float64, device=device).index_add_(0, flat,
                                                                              maskable.flatten().double())
    k = torch.round(n[flat] * gamma.flatten())  # Python's round, as Tencent's: half to even
    # rank of each maskable token by score within its group (non-maskable ones sort after them)
    order = torch.argsort(flat.double() * 2 + torch.where(maskable.flatten(), score.flatten(), 1.5))
    sorted_group = flat[order]
    rank = torch.empty_like(flat)
    rank[order] = torch.arange(flat.numel(), device=device) - torch.searchsorted(sorted_group, sorted_group)
    masked = maskable & (rank.view(R, L) < k.view(R, L))
    return masked, gamma, block


def build_dual_stream(ids, labels, segment, positions, records, mask_id: int, block_size: int,
                      mask_per_block: bool, eps: float, key: tuple[int, ...]) -> DualStream:
    """The dual-stream input of a batch of rows (module docstring). ``records [R, L]``: the record
    number of each token's conversation (keys the masks); ``key``: (seed, step)."""
    R, L = ids.shape
    masked, gamma, block = choose_masks(labels, segment, positions, records, block_size, mask_per_block, eps, key)
    # within each block observed first, then masked, each in order; pads stay last
    group = torch.where(segment >= 0, segment.clamp_min(0) * (L // block_size + 2) + block, (L + 1) * (L + 2))
    perm = torch.sort(group * 2 + masked.long(), dim=1, stable=True).indices

    def take(t: torch.Tensor) -> torch.Tensor:
        return t.gather(1, perm)

    xt_masked, xt_seg, xt_block = take(masked), take(segment), take(block)
    xt_ids = take(ids).masked_fill(xt_masked, mask_id)
    idx = torch.arange(L, device=ids.device)
    earlier = idx[None, :] <= idx[:, None]
    x0_x0 = _same(segment, segment) & earlier
    xt_x0 = _same(xt_seg, segment) & (block[:, None, :] < xt_block[:, :, None])
    xt_xt = _same(xt_seg, xt_seg) & (xt_block[:, None, :] == xt_block[:, :, None]) & earlier
    top = torch.cat([x0_x0, torch.zeros_like(x0_x0)], 2)
    mask = torch.cat([top, torch.cat([xt_x0, xt_xt], 2)], 1)
    mask = _with_pad_diagonal(mask, torch.cat([segment, xt_seg], 1))
    return DualStream(torch.cat([ids, xt_ids], 1), torch.cat([positions, take(positions)], 1), mask[:, None],
                      xt_masked, take(ids), take(gamma), perm)
