"""Token-level text metrics every family's reports share (scored positions given by a mask)."""
from __future__ import annotations

import torch


def token_f1(pred: torch.Tensor, ref: torch.Tensor, pred_on: torch.Tensor, ref_on: torch.Tensor) -> torch.Tensor:
    """Per-row bag-of-tokens F1 ``[B]`` between ``pred`` and ``ref`` (``[B, L]`` ids), counting the
    positions where ``pred_on`` / ``ref_on`` is True, with multiplicity (SQuAD's token F1)."""
    V = int(max(pred.max(), ref.max())) + 1

    def bag(x, on):
        return torch.zeros(x.shape[0], V, device=x.device).scatter_add_(1, x, on.float())

    cp, cr = bag(pred, pred_on), bag(ref, ref_on)
    common = torch.minimum(cp, cr).sum(1)
    return 2 * common / (cp.sum(1) + cr.sum(1)).clamp_min(1)


def adjacent_repeats(ids: torch.Tensor, on: torch.Tensor) -> float:
    """The fraction of adjacent scored token pairs that are the same token (a decoder that
    repeats itself; real English text: a few percent)."""
    pairs = on[:, 1:] & on[:, :-1]
    return ((ids[:, 1:] == ids[:, :-1]) & pairs).sum().item() / max(int(pairs.sum()), 1)
