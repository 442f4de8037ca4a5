"""Samplers consistent with training (the CLI and round-trip eval metrics come next).

- :func:`t2l_encode`: text -> latent by deterministic DDIM (eta = 0) from pure noise at T - 1,
  reading the network output in the trained parameterisation (``predict_x0`` / ``predict_eps``).
- :func:`l2t_decode`: latent -> text by iterative unmasking from fully masked text: at each step
  the most confident predictions among the still-masked positions are committed; the text
  timestep passed to the model is the fraction still masked (the MDLM mask rate).
"""
from __future__ import annotations

import math

import torch

from latentDLM_mmdit.mmdit_objective import MMDiTObjective


@torch.no_grad()
def t2l_encode(obj: MMDiTObjective, input_ids: torch.Tensor, attention_mask: torch.Tensor, steps: int = 50,
               generator: torch.Generator | None = None) -> torch.Tensor:
    g, B = obj.latent, input_ids.shape[0]
    D = obj.model.latent_head.out_features
    ts = torch.unique(torch.linspace(g.timesteps - 1, 0, steps).round().long(), sorted=True).flip(0).tolist()
    x = torch.randn(B, D, generator=generator).to(input_ids.device)
    zeros = torch.zeros(B, device=input_ids.device)
    for i, t in enumerate(ts):
        tt = torch.full((B,), t, device=input_ids.device)
        _, out = obj.model(input_ids, attention_mask, x, zeros, tt.float() / g.timesteps)
        prev = ts[i + 1] if i + 1 < len(ts) else -1
        x = g.ddim_step(out.float(), x, tt, torch.full((B,), prev, device=input_ids.device))
    return x


@torch.no_grad()
def l2t_decode(obj: MMDiTObjective, latent: torch.Tensor, attention_mask: torch.Tensor,
               steps: int | None = None) -> torch.Tensor:
    """Token ids ``[B, L]``; positions where ``attention_mask`` is False stay 0 (padding)."""
    mask_id, B, L = obj.text.mask_id, *attention_mask.shape
    ids = obj.text.fully_masked(attention_mask)
    steps = steps or L
    zeros = torch.zeros(B, device=latent.device)
    n_real = attention_mask.sum(1)
    for s in range(steps):
        still = (ids == mask_id) & attention_mask
        if not still.any():
            break
        t = still.sum(1).float() / n_real.clamp_min(1)
        logits, _ = obj.model(ids, attention_mask, latent, t, zeros)
        logits[..., mask_id] = -math.inf  # never predict the mask token itself
        conf, pred = logits.float().softmax(-1).max(-1)
        conf = torch.where(still, conf, -1.0)
        left = steps - s
        k = torch.ceil(still.sum(1).float() / left).long()  # spread the remaining positions evenly
        order = conf.argsort(dim=1, descending=True)
        rank = torch.empty_like(order).scatter_(1, order, torch.arange(L, device=ids.device).expand(B, L))
        commit = still & (rank < k.unsqueeze(1))
        ids = torch.where(commit, pred, ids)
    return ids
