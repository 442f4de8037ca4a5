"""Round-trip metrics: T2L2T token accuracy and bag-of-tokens F1, L2T2L cosine (eval and the report)."""
from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import torch
import torch.nn.functional as F

from latentDLM_mmdit.sampling import l2t_decode, t2l_encode

if TYPE_CHECKING:
    from latentDLM_mmdit.mmdit_objective import MMDiTObjective


class RoundTrip(NamedTuple):
    metrics: dict  # t2l2t_acc, t2l2t_f1, l2t2l_cos
    t2l2t_ids: torch.Tensor  # text -> latent -> text
    l2t_ids: torch.Tensor  # the true latent -> text
    l2t2l_latent: torch.Tensor  # the true latent -> text -> latent


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


@torch.no_grad()
def roundtrip(obj: MMDiTObjective, ids: torch.Tensor, mask: torch.Tensor, latent: torch.Tensor,
              guidance: float | None = None, sampler: str | None = None, temperature: float | None = None) -> RoundTrip:
    """Both round trips of a batch. Accuracy (same token at the same position) and F1 (same
    tokens, any order) count real, non-special tokens only ([CLS]/[SEP] would flatter them);
    decoding uses the original lengths."""
    sc = obj.sample_cfg
    z = t2l_encode(obj, ids, mask, sc.roundtrip_t2l_steps)
    ids_hat = l2t_decode(obj, z, mask, sc.l2t_steps or None, guidance, sampler, temperature)
    scored = mask & ~torch.isin(ids, obj.special_ids.to(ids.device))
    acc = (ids_hat == ids)[scored].float().mean() if scored.any() else torch.zeros((), device=ids.device)
    f1 = token_f1(ids_hat, ids, scored, scored).mean()
    text_hat = l2t_decode(obj, latent, mask, sc.l2t_steps or None, guidance, sampler, temperature)
    z_hat = t2l_encode(obj, text_hat, mask, sc.roundtrip_t2l_steps)
    cos = F.cosine_similarity(z_hat.float(), latent.float(), dim=-1).mean()
    return RoundTrip({"t2l2t_acc": acc, "t2l2t_f1": f1, "l2t2l_cos": cos}, ids_hat, text_hat, z_hat)
