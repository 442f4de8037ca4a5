"""Round-trip metrics: T2L2T token accuracy and bag-of-tokens F1, L2T2L cosine (eval and the report)."""
from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import torch
import torch.nn.functional as F

from latentDLM_mmdit.sampling import l2t_decode, t2l_encode
from mmldlm.eval.text_metrics import token_f1

if TYPE_CHECKING:
    from latentDLM_mmdit.mmdit_objective import MMDiTObjective


class RoundTrip(NamedTuple):
    metrics: dict  # t2l2t_acc, t2l2t_f1, l2t2l_cos
    t2l2t_ids: torch.Tensor  # text -> latent -> text
    l2t_ids: torch.Tensor  # the true latent -> text
    l2t2l_latent: torch.Tensor  # the true latent -> text -> latent


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
