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

from typing import NamedTuple

import torch
import torch.nn.functional as F


class HeadOut(NamedTuple):
    loss: torch.Tensor  # the ELBO loss over the real tokens (or the given denominator)
    acc: torch.Tensor  # accuracy on the masked tokens
    token_loss: torch.Tensor  # [N] each masked token's weighted CE, detached
    pick: torch.Tensor | None  # [N] what ``pick`` chose at each masked token


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

    def token_loss(self, logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor, pick=None):
        """Per masked token: (ELBO-weighted CE, {"loss": the same, detached; "correct": argmax == target;
        "pick": ``pick(p(x0 | x_t) logits)`` when given}). ``logits [n, V]``, ``target [n]``,
        ``weight [n]``: the per-token ``fn`` of :func:`mmldlm.heads.head_loss`."""
        logits = self.subs(logits)
        loss = F.cross_entropy(logits, target, reduction="none") * weight
        report = {"loss": loss.detach(), "correct": (logits.argmax(-1) == target).float()}
        if pick is not None:
            with torch.no_grad():
                report["pick"] = pick(logits.detach())
        return loss, report

    def token_weights(self, masked: torch.Tensor, t: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        """The ELBO weight of each masked position (row-major), ``weight [B]`` replacing ``loss_weight(t)``."""
        return (self.loss_weight(t) if weight is None else weight).unsqueeze(1).expand_as(masked)[masked]

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
        loss, report = self.token_loss(logits, input_ids[masked], self.token_weights(masked, t, weight))
        return self.reduce(loss.sum(), report["correct"].sum(), masked, attention_mask, denom)

    def head_loss(self, hidden: torch.Tensor, head: torch.nn.Linear, input_ids: torch.Tensor, masked: torch.Tensor,
                  attention_mask: torch.Tensor, t: torch.Tensor, weight: torch.Tensor | None = None,
                  denom: torch.Tensor | None = None, pick=None) -> HeadOut:
        """:meth:`loss` from the hidden states of the masked positions (``hidden [N, d]``, row-major)
        through the text ``head``, a chunk of tokens at a time (:func:`mmldlm.heads.head_loss`: no
        ``[N, V]`` logits); ``pick``: see :meth:`token_loss`."""
        from mmldlm.heads import head_loss

        out = head_loss(hidden, head.weight, head.bias, lambda lg, tg, w: self.token_loss(lg, tg, w, pick),
                        input_ids[masked], self.token_weights(masked, t, weight))
        loss, acc = self.reduce(out.loss, out.per_token["correct"].sum(), masked, attention_mask, denom)
        return HeadOut(loss, acc, out.per_token["loss"], out.per_token.get("pick"))

    @staticmethod
    def reduce(loss_sum, correct, masked, attention_mask, denom=None) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss over the real tokens (or ``denom``), accuracy over the masked ones)."""
        loss = loss_sum / (attention_mask.sum() if denom is None else denom).clamp_min(1)
        return loss, correct / masked.sum().clamp_min(1)
