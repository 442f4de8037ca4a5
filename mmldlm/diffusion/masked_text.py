"""Masked (absorbing-state) text diffusion as MDLM defines it (Sahoo et al., 2024).

Log-linear schedule ``sigma(t) = -log(1 - (1 - eps) t)``: each real token is masked with
probability ``1 - exp(-sigma(t)) = (1 - eps) t``. The continuous-time ELBO weights the
cross-entropy of masked tokens by ``sigma'(t) / expm1(sigma(t)) = 1 / t``; padding is never
masked and never a target. The loss is summed over masked tokens and divided by the number of
real tokens in the batch (MDLM's normalisation).

SUBS parameterisation (MDLM section 3.2): the model never predicts ``[MASK]`` as a clean token, so
its logit is -inf in the training loss, the accuracy and every sampler (:meth:`subs`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


class MaskedTextDiffusion:
    def __init__(self, mask_id: int, eps: float = 1e-4):
        self.mask_id, self.eps = mask_id, eps

    def sample_t(self, batch_size: int, device, generator: torch.Generator | None = None) -> torch.Tensor:
        """Low-discrepancy t in [eps, 1]: ``(arange(B)/B + u) mod 1``, one uniform u per batch."""
        u = torch.rand((), device=device, generator=generator)
        t = (torch.arange(batch_size, device=device) / batch_size + u) % 1
        return t * (1 - self.eps) + self.eps

    def mask_prob(self, t: torch.Tensor) -> torch.Tensor:
        return (1 - self.eps) * t

    def loss_weight(self, t: torch.Tensor) -> torch.Tensor:
        """``sigma'(t) / expm1(sigma(t))`` for the log-linear schedule, i.e. ``1 / t``."""
        sigma = -torch.log1p(-(1 - self.eps) * t)
        dsigma = (1 - self.eps) / (1 - (1 - self.eps) * t)
        return dsigma / torch.expm1(sigma)

    def corrupt(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, t: torch.Tensor,
                u: torch.Tensor | None = None):
        """Mask each real token with probability ``mask_prob(t)``: (noisy_ids, masked [B, L] bool).
        ``u`` ([B, L] uniforms) replaces the draw from the global RNG (``mmldlm.diffusion.noise``)."""
        p = self.mask_prob(t).unsqueeze(1)
        u = torch.rand(input_ids.shape, device=input_ids.device) if u is None else u
        masked = (u < p) & attention_mask
        return torch.where(masked, torch.full_like(input_ids, self.mask_id), input_ids), masked

    def fully_masked(self, attention_mask: torch.Tensor) -> torch.Tensor:
        return torch.where(attention_mask, self.mask_id, 0).long()

    def subs(self, logits: torch.Tensor) -> torch.Tensor:
        """``logits`` (float32, a copy) with the ``[MASK]`` logit at -inf: what p(x0 | x_t) means."""
        out = logits.float()
        if out is logits:  # already float32: copy, the caller's tensor stays as it was
            out = out.clone()
        out[..., self.mask_id] = -torch.inf
        return out

    def loss(self, logits: torch.Tensor, input_ids: torch.Tensor, masked: torch.Tensor,
             attention_mask: torch.Tensor, t: torch.Tensor, weight: torch.Tensor | None = None,
             denom: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(ELBO loss, accuracy on masked tokens). ``logits [B, L, V]``, or ``[N, V]`` for just the
        N masked positions in row-major order (what the model returns for ``text_logits=masked``).
        ``weight [B]`` replaces the ELBO weight ``loss_weight(t)`` (a t drawn from another
        schedule carries its own), ``denom`` the number of real tokens (e.g. the global batch's
        share per rank, ``mmldlm.nn.rank_share``)."""
        if logits.dim() == 3:
            logits = logits[masked]
        tgt = input_ids[masked]
        logits = self.subs(logits)
        ce = F.cross_entropy(logits, tgt, reduction="none")  # masked positions only
        w = (self.loss_weight(t) if weight is None else weight).unsqueeze(1).expand_as(masked)[masked]
        loss = (ce * w).sum() / (attention_mask.sum() if denom is None else denom).clamp_min(1)
        acc = (logits.argmax(-1) == tgt).sum() / masked.sum().clamp_min(1)
        return loss, acc
