"""Samplers consistent with training; both take and return latents in data units
(``model.latent_scale`` is applied inside).

- :func:`t2l_encode`: text -> latent by deterministic DDIM (eta = 0) from pure noise at T - 1,
  reading the network output in the trained parameterisation (``predict_x0`` / ``predict_eps``).
- :func:`l2t_decode`: latent -> text from fully masked text. ``sample.l2t_sampler: ancestral``
  (the default) is MDLM's ancestral sampler: on a grid t = 1 -> 0 each still-masked position is
  revealed with probability (t - s) / t with a token drawn (float64, ``sample.l2t_temperature``)
  from p(x0 | x_t, z). ``confidence`` is a heuristic kept for comparison: at each step the most
  confident argmaxes among the still-masked positions are committed (the model sees the fraction
  still masked as t); on the quickstart checkpoint it repeated a token at 61 % of adjacent
  positions. With ``sample.l2t_guidance`` w > 0, classifier-free guidance:
  ``(1 + w) log p(x | z) - w log p(x | null)`` (the null latent: pure noise at the last timestep,
  trained by ``loss.l2t_uncond_prob``).
"""
from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING

import torch

from mmldlm.train.advice import guidance_warning, warn_once

if TYPE_CHECKING:
    from latentDLM_mmdit.mmdit_objective import MMDiTObjective

log = logging.getLogger("mm_ldlm")


@torch.no_grad()
def t2l_encode(obj: MMDiTObjective, input_ids: torch.Tensor, attention_mask: torch.Tensor, steps: int = 50,
               generator: torch.Generator | None = None) -> torch.Tensor:
    g, B = obj.latent, input_ids.shape[0]
    D = obj.model.latent_head.out_features
    x = torch.randn(B, D, generator=generator).to(input_ids.device)
    zeros = torch.zeros(B, device=input_ids.device)

    def net(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return obj.model(input_ids, attention_mask, x_t, zeros, g.time_code(t), text_logits=False)[1]

    x = g.ddim_sample(net, x, steps)
    return x / obj.latent_scale


@torch.no_grad()
def l2t_decode(obj: MMDiTObjective, latent: torch.Tensor, attention_mask: torch.Tensor,
               steps: int | None = None, guidance: float | None = None, sampler: str | None = None,
               temperature: float | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Token ids ``[B, L]``; positions where ``attention_mask`` is False stay 0 (padding).
    ``guidance``, ``sampler`` and ``temperature`` default to the run's ``sample.*`` keys."""
    sc = obj.sample_cfg
    sampler = sampler or sc.l2t_sampler.name
    temperature = sc.l2t_temperature if temperature is None else temperature
    B, L = attention_mask.shape
    ids = obj.text.fully_masked(attention_mask)
    steps = steps or L
    w = sc.l2t_guidance if guidance is None else guidance
    unguided = guidance_warning(w, obj.lc.l2t_uncond_prob, "loss.l2t_uncond_prob", "--guidance")
    if unguided:
        warn_once(log, unguided)
    logits_at = _guided_logits(obj, latent, attention_mask, w)
    if sampler == "ancestral":
        return _ancestral(obj, ids, attention_mask, steps, logits_at, temperature, generator)
    return _confidence(obj, ids, attention_mask, steps, logits_at)


def _guided_logits(obj: MMDiTObjective, latent: torch.Tensor, attention_mask: torch.Tensor, w: float):
    """``logits_at(ids, still, t) -> [N, V]``: p(x0 | x_t, z) (log-probabilities, [MASK] at -inf) at
    the N still-masked positions only (the vocabulary projection of the others would be thrown
    away), guided by the null latent when ``w`` > 0."""
    mask_id, B = obj.text.mask_id, attention_mask.shape[0]
    latent = latent.float() * obj.latent_scale
    t_lat = torch.zeros(B, device=latent.device)
    if w > 0:  # the conditional and the null-latent rows in one batch
        null, t_null = obj.null_latent(B, latent.device)
        latent, t_lat, mask2 = torch.cat([latent, null]), torch.cat([t_lat, t_null]), attention_mask.repeat(2, 1)

    def logits_at(ids: torch.Tensor, still: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if w > 0:
            out, _ = obj.model(ids.repeat(2, 1), mask2, latent, t.repeat(2), t_lat, text_logits=still.repeat(2, 1))
            cond, uncond = obj.text.subs(out).log_softmax(-1).chunk(2)  # p(x0 | x_t) excludes [MASK]
            logits = (1 + w) * cond - w * uncond
            logits[..., mask_id] = -math.inf  # (-inf) - (-inf) is nan: set it again
            return logits
        return obj.text.subs(obj.model(ids, attention_mask, latent, t, t_lat, text_logits=still)[0])

    return logits_at


def _ancestral(obj, ids, attention_mask, steps: int, logits_at, temperature: float, generator) -> torch.Tensor:
    """MDLM's ancestral sampler on t = 1 -> 0: reveal each still-masked position with probability
    (t - s) / t, its token drawn from p(x0 | x_t, z); the last step reveals the rest."""
    from mmldlm.eval.samplers import categorical

    B = ids.shape[0]
    grid = torch.linspace(1.0, 0.0, steps + 1).tolist()
    for t, s in zip(grid[:-1], grid[1:]):
        still = (ids == obj.text.mask_id) & attention_mask
        if not still.any():
            break
        logits = logits_at(ids, still, torch.full((B,), t, device=ids.device))
        draw = categorical(logits, temperature=temperature, generator=generator)
        where = generator.device if generator is not None else ids.device
        u = torch.rand(int(still.sum()), generator=generator, dtype=torch.float64, device=where).to(ids.device)
        reveal = u < (t - s) / t
        new = ids[still]
        new[reveal] = draw[reveal]
        ids = ids.clone()
        ids[still] = new
    return ids


def _confidence(obj, ids, attention_mask, steps: int, logits_at) -> torch.Tensor:
    """The heuristic: commit the most confident argmaxes, spread evenly over the steps."""
    mask_id, (B, L) = obj.text.mask_id, ids.shape
    n_real = attention_mask.sum(1)
    for s in range(steps):
        still = (ids == mask_id) & attention_mask
        if not still.any():
            break
        t = still.sum(1).float() / n_real.clamp_min(1)
        logits = logits_at(ids, still, t)
        top, pred_still = logits.max(-1)
        conf = torch.full((B, L), -1.0, device=ids.device)
        conf[still] = (top - logits.logsumexp(-1)).exp()  # the softmax probability of the argmax
        pred = torch.zeros_like(ids)
        pred[still] = pred_still
        left = steps - s
        k = torch.ceil(still.sum(1).float() / left).long()  # spread the remaining positions evenly
        order = conf.argsort(dim=1, descending=True)
        rank = torch.empty_like(order).scatter_(1, order, torch.arange(L, device=ids.device).expand(B, L))
        commit = still & (rank < k.unsqueeze(1))
        ids = torch.where(commit, pred, ids)
    return ids
