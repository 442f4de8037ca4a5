"""GIDD hybrid (mask + uniform) text diffusion, as in von Rütte et al., ICML 2025 (dvruette/gidd v1.1.0).

Marginal (``gidd/diffusion_process.py:55-86`` at tag v1.1.0 = ceb7122), with ``m`` the ``[MASK]``
one-hot and ``u`` uniform over the ``N`` ids that are neither ``[MASK]`` nor excluded::

    B = 2^gamma p / (1 - p)         (p = max(p_uniform, e^-20), log B clipped below at -20)
    c_t = B t^(gamma/2) (1-t)^(gamma/2),   C_t = 1 + c_t
    q_t(.|x) = alpha_t x + beta_t pi_t,    alpha_t = (1-t) / C_t,   beta_t pi_t = (t m + c_t u) / C_t

so ``c_t / C_t`` (the uniform-noise mass) is ``p_uniform`` at t = 1/2 and 0 at both ends; ``p = 0``
is masking with ``alpha_t = 1 - t`` (c_t <= e^-20 is below float32 resolution next to 1), except
that, as upstream, clean tokens keep an ELBO term ~ e^-20 / (N t (1-t)^2 x_hat_x), not exactly 0.

Negative ELBO per token (weights ``gidd/loss.py:41-63``, KL and IS terms ``loss.py:80-96``),
``x_hat = softmax(logits)``::

    w_t(z, x) [KL(q_t(.|x) || q_t(.|x_hat)) + r - log r - 1],    r = q_t(z|x) / q_t(z|x_hat)
    c'_t = (gamma/2) (1-2t) / (t(1-t)) c_t
    w_mask = 1 / (t(1-t))                              z = [MASK]
    w_uniform = (c_t + (1-t) c'_t) / ((1-t) c_t)        z not in {x, [MASK]}
    w_clean = (c_t + (1-t) c'_t) / N / ((1-t)(1-t + c_t/N))   z = x

For ``p = 0`` and ``z = [MASK]`` this is MDLM's ``CE / t``. Training weights: ``none`` = the ELBO
weights, ``clip`` = them clamped to [min, max], ``dynamic`` (GIDD+) = 2 on ``[MASK]``, 1 on uniform
noise, ``B / V exp(gamma/2 sigmoid(-t))`` on clean tokens, clamped to [min, max] (``loss.py:65-72``;
V = the vocabulary size as upstream, not N).

Our choices where upstream has none: ``N`` counts the ids the model may predict (upstream ``V - 1``,
the same when nothing is excluded); the logits of ``[MASK]`` and the excluded ids are -inf (the model
never predicts them as clean tokens); padding is never noised and contributes 0. Reduction is the
caller's (upstream ``loss.sum() / attention_mask.numel()``, ``loss.py:24-25``).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from mmldlm.config import ConfigError

LOSS_WEIGHTINGS = ("none", "clip", "dynamic")


class GiddDiffusion:
    def __init__(self, vocab_size: int, mask_id: int, p_uniform: float = 0.0, gamma: float = 1.0,
                 eps: float = 1e-4, excluded_ids: Sequence[int] = (), loss_weighting: str = "dynamic",
                 min_loss_weight: float = 0.0, max_loss_weight: float = 2.0):
        if not 0 <= mask_id < vocab_size:
            raise ValueError(f"mask_id {mask_id} is outside the vocabulary [0, {vocab_size})")
        if any(not 0 <= i < vocab_size for i in excluded_ids):
            raise ValueError(f"excluded_ids {list(excluded_ids)} must lie in [0, {vocab_size})")
        if not 0.0 <= p_uniform < 1.0:
            raise ConfigError(f"model.p_uniform: must be in [0, 1), got {p_uniform}")
        if not (gamma > 0 and math.isfinite(gamma)):
            raise ConfigError(f"model.gamma: must be a finite number > 0, got {gamma}")
        if not 0 < eps < 0.5:
            raise ConfigError(f"model.t_eps: must be in (0, 0.5), got {eps}")
        if loss_weighting not in LOSS_WEIGHTINGS:
            raise ConfigError(f"loss.loss_weighting: must be one of {LOSS_WEIGHTINGS}, got {loss_weighting!r}")
        if not max_loss_weight > 0:
            raise ConfigError(f"loss.max_loss_weight: must be > 0, got {max_loss_weight}")
        if not min_loss_weight <= max_loss_weight:
            raise ConfigError(f"loss.min_loss_weight: must be <= loss.max_loss_weight ({max_loss_weight}), "
                              f"got {min_loss_weight}")
        self.vocab_size, self.mask_id, self.gamma, self.eps = vocab_size, mask_id, float(gamma), eps
        self.p_uniform, self.loss_weighting = p_uniform, loss_weighting
        self.min_loss_weight, self.max_loss_weight = min_loss_weight, max_loss_weight
        blocked = sorted({mask_id, *excluded_ids})
        self.allowed = torch.ones(vocab_size, dtype=torch.bool, device="cpu")  # CPU under any default device
        self.allowed[blocked] = False
        self.blocked_ids = torch.tensor(blocked, device="cpu")
        self.allowed_ids = self.allowed.nonzero().squeeze(1)
        self.num_allowed = len(self.allowed_ids)  # N
        if self.num_allowed == 0:
            raise ValueError("every id is [MASK] or excluded: nothing left to predict")
        # upstream floors p at e^-20 so log B stays finite (then clips log B at -20): p = 0 keeps a
        # uniform mass <= e^-20, so w_uniform is never 0/0 and r = q_t(z|x)/q_t(z|x_hat) never 1/0
        p = max(math.exp(-20), p_uniform)
        self.log_B = max(gamma * math.log(2) + math.log(p) - math.log1p(-p), -20.0)

    # ---- schedule -------------------------------------------------------------------------------
    def sample_t(self, batch_size: int, device, generator: torch.Generator | None = None,
                 low_discrepancy: bool = True) -> torch.Tensor:
        """t in [eps, 1 - eps] as upstream ``sample_t``: ``(1 - 2 eps) u + eps``, u low-discrepancy."""
        if low_discrepancy:
            u0 = torch.rand((), device=device, generator=generator)
            u = (torch.arange(batch_size, device=device) / batch_size + u0) % 1
        else:
            u = torch.rand(batch_size, device=device, generator=generator)
        return (1 - 2 * self.eps) * u + self.eps

    def clip_t(self, t: torch.Tensor) -> torch.Tensor:
        """Clamp to [eps, 1 - eps]: the weights have 1/t and 1/(1-t) poles."""
        return t.clamp(self.eps, 1 - self.eps)

    def _schedule(self, t: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-t scalars in float64 (upstream computes the weights in float64 too)."""
        t = t.double()
        log_c = self.log_B + self.gamma / 2 * (torch.log(t) + torch.log1p(-t))
        c = log_c.exp()
        C = 1 + c  # >= 1: upstream's clip of C_t at eps never binds
        N = self.num_allowed
        return {"t": t, "c": c, "alpha": (1 - t) / C, "mask": t / C, "unif": c / C, "u": c / C / N,
                "log_alpha_over_u": torch.log1p(-t) + math.log(N) - log_c}

    def _weights(self, s: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """ELBO weights on (clean, uniform, mask) tokens."""
        t, c, N = s["t"], s["c"], self.num_allowed
        c_prime = (self.gamma / 2) * (1 - 2 * t) / (t * (1 - t)) * c
        num = c + (1 - t) * c_prime
        return num / N / ((1 - t) * (1 - t + c / N)), num / ((1 - t) * c), 1 / ((1 - t) * t)

    def marginal(self, x: torch.Tensor, t: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """``q_t(.|x)``: ``[..., V]`` probabilities; ``t`` broadcastable to ``x``'s shape."""
        t = torch.as_tensor(t, device=x.device)
        shape = torch.broadcast_shapes(t.shape, x.shape)
        s = {k: v.to(dtype).expand(shape) for k, v in self._schedule(t).items()}
        out = self.allowed.to(x.device, dtype) * s["u"].unsqueeze(-1)
        out[..., self.mask_id] += s["mask"]
        return out.scatter_add_(-1, x.expand(shape).unsqueeze(-1), s["alpha"].unsqueeze(-1).contiguous())

    def marginal_of_probs(self, probs: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``q_t(.|x_hat)`` for a distribution ``probs [..., V]`` (mass on [MASK] / excluded ids passes
        through scaled by alpha_t); ``t`` broadcastable to ``probs.shape[:-1]``. float32 or wider."""
        if probs.shape[-1] != self.vocab_size:
            raise ValueError(f"probs have {probs.shape[-1]} classes, the vocabulary {self.vocab_size}")
        dtype = torch.promote_types(probs.dtype, torch.float32)
        s = {k: v.to(dtype).unsqueeze(-1) for k, v in self._schedule(torch.as_tensor(t, device=probs.device)).items()}
        out = s["alpha"] * probs.to(dtype) + s["u"] * self.allowed.to(probs.device, dtype)
        out[..., self.mask_id] += s["mask"][..., 0]
        return out

    # ---- forward process ------------------------------------------------------------------------
    def corrupt(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, t: torch.Tensor,
                generator: torch.Generator | None = None, u: tuple[torch.Tensor, torch.Tensor] | None = None
                ) -> torch.Tensor:
        """Draw ``z_t ~ q_t(.|x)`` per real token, ``t [B]``; padding stays as it is.

        One uniform r per token: r < t/C -> [MASK]; next c/C -> a uniform allowed id (possibly x
        itself, which is the uniform share on x); the remaining (1-t)/C -> x. No [B, L, V] tensor.
        ``u``: two ``[B, L]`` float64 uniform fields (r, then the noise id) instead of the RNG's
        draws (keyed noise, ``mmldlm.diffusion.noise``)."""
        dev = input_ids.device
        s = self._schedule(t.to(dev))
        p_mask, p_unif = s["mask"].unsqueeze(1), s["unif"].unsqueeze(1)
        if u is None:
            r = torch.rand(input_ids.shape, device=dev, generator=generator, dtype=torch.float64)
            pick = torch.randint(0, self.num_allowed, input_ids.shape, device=dev, generator=generator)
        else:
            r, pick = u[0], (u[1] * self.num_allowed).long().clamp_max(self.num_allowed - 1)
        draw = self.allowed_ids.to(dev)[pick]
        z = torch.where(r < p_mask + p_unif, draw, input_ids)
        z = torch.where(r < p_mask, self.mask_id, z)
        return torch.where(attention_mask.bool(), z, input_ids)

    # ---- loss ----------------------------------------------------------------------------------
    # (mmldlm.diffusion.terms: the terms from a text head a chunk of tokens at a time, or from logits)
    def scored(self, input_ids, noisy_ids, attention_mask) -> torch.Tensor:
        """Every real token has a term (clean ones too: GIDD's ELBO scores them)."""
        return attention_mask.bool()

    def token_terms(self, logits: torch.Tensor, x: torch.Tensor, z: torch.Tensor, t: torch.Tensor):
        """Per real token (``logits [n, >= V]``, clean ids ``x``, noisy ids ``z``, levels ``t``, ``[n]``
        each): (training loss, {"elbo", "loss", "kl", "is"})."""
        one = torch.ones(x.shape[0], 1, dtype=torch.bool, device=x.device)
        elbo, loss, kl, is_term = self._per_token(logits[:, None], x[:, None], z[:, None], one, t)
        return loss[:, 0], {"elbo": elbo[:, 0].detach(), "loss": loss[:, 0].detach(), "kl": kl[:, 0].detach(),
                            "is": is_term[:, 0].detach()}

    def summarize(self, sums: dict, input_ids, noisy_ids, attention_mask) -> dict[str, torch.Tensor]:
        """Means over the real tokens: the ELBO and its two parts, the fraction of each kind of token."""
        attn = attention_mask.bool()
        n = attn.sum().clamp_min(1)
        is_mask = noisy_ids == self.mask_id
        is_clean = (noisy_ids == input_ids) & ~is_mask
        is_unif = ~(is_mask | is_clean)
        return {"elbo": sums["elbo"] / n, "kl": sums["kl"] / n, "is": sums["is"] / n,  # kl + is = elbo
                "frac_mask": (is_mask & attn).sum() / n, "frac_uniform": (is_unif & attn).sum() / n,
                "frac_clean": (is_clean & attn).sum() / n}

    def terms(self, logits: torch.Tensor, input_ids: torch.Tensor, noisy_ids: torch.Tensor,
              attention_mask: torch.Tensor, t: torch.Tensor):
        """Per-token negative ELBO and training loss (``Terms``, 0 at padding) for ``logits [B, L, V]``
        (extra padded-vocab columns are dropped). ``input_ids`` at real positions must be allowed ids."""
        from mmldlm.diffusion.terms import logit_terms

        return logit_terms(self, logits, input_ids, noisy_ids, attention_mask, t)

    def _per_token(self, logits: torch.Tensor, input_ids: torch.Tensor, noisy_ids: torch.Tensor,
                   attention_mask: torch.Tensor, t: torch.Tensor):
        """(elbo, loss, weighted KL, weighted IS term) ``[B, L]`` each, for ``logits [B, L, >= V]``,
        float32 inside, 0 at padding."""
        V = self.vocab_size
        if logits.shape[-1] < V:
            raise ValueError(f"logits have {logits.shape[-1]} classes, fewer than the vocabulary {V}")
        dev, attn = logits.device, attention_mask.bool()
        # padding gets a harmless allowed id as both x and z (clean): everything stays finite, so
        # zeroing it with where() cannot leak NaN gradients
        fill = int(self.allowed_ids[0])
        x = torch.where(attn, input_ids, fill)
        z = torch.where(attn, noisy_ids, fill)

        s = self._schedule(t.to(dev))
        w_clean, w_unif, w_mask = (w.unsqueeze(1) for w in self._weights(s))
        f32 = {k: v.float().view(-1, 1) for k, v in s.items()}
        alpha, u, k = f32["alpha"], f32["u"], f32["log_alpha_over_u"]

        lg = logits[..., :V].to(torch.float32, copy=True)  # a copy: the caller's logits stay as they were
        lg.index_fill_(-1, self.blocked_ids.to(dev), -torch.inf)
        log_xhat = lg.log_softmax(-1)
        lx = log_xhat.gather(-1, x.unsqueeze(-1)).squeeze(-1)
        # For allowed v != x, q_t(v|x) = u and q_t(v|x_hat) = u (1 + w_v), w_v = (alpha/u) x_hat_v. x is
        # set to -inf here (w = log1p(w) = 0 there, as on blocked ids, whose q_t is 0 under x and x_hat)
        h = (log_xhat + k.unsqueeze(-1)).scatter_(-1, x.unsqueeze(-1), -torch.inf)
        w, sp = h.exp(), F.softplus(h)  # sp_v = log1p(w_v) = log(q_t(v|x_hat) / u)
        # KL = (alpha+u) L - alpha delta + u sum_{v != x} (w_v - log1p w_v), L = log(q_t(x|x) / q_t(x|x_hat)),
        # delta = 1 - x_hat_x: both parts >= 0, so float32 never turns a small KL negative (the plain
        # (alpha+u) L - u sum sp_v cancels to ~1e-3 relative near t = 1 or for confident predictions)
        others = (w - sp).clamp_min(0).sum(-1)
        sp_z = sp.gather(-1, z.unsqueeze(-1)).squeeze(-1)
        # summed from the other ids: 1 - exp(log x_hat_x) rounds a ~1e-9 deficit to 0
        delta = torch.exp(-k) * w.sum(-1)
        y = torch.sigmoid(k) * delta.clamp(max=0.5)  # alpha/(alpha+u) delta
        au = alpha + u
        near = delta < 0.5
        # near: L = -log1p(-y), (alpha+u) L - alpha delta = (alpha+u) (-log1p(-y) - y), series for small y;
        # far: L = log1p(alpha/u) - log1p(alpha x_hat_x/u) (-log1p(-y) -> inf once u/alpha < float32 eps)
        f_y = torch.where(y < 1e-2, y * y * (0.5 + y / 3 + y * y / 4), -torch.log1p(-y) - y)
        log_r_x = torch.where(near, -torch.log1p(-y), F.softplus(k) - F.softplus(k + lx))
        part_x = torch.where(near, au * f_y, au * log_r_x - alpha * delta).clamp_min(0)
        kl = part_x + u * others

        is_mask = z == self.mask_id
        is_clean = (z == x) & ~is_mask
        # r = 1 on [MASK] (both t/C); on a uniform-noise z, q(z|x) = u <= q(z|x_hat)
        log_r = torch.where(is_mask, 0.0, torch.where(is_clean, log_r_x, -sp_z))
        # r - log r - 1 >= 0, by its series where expm1(log r) - log r would cancel
        is_term = torch.where(log_r.abs() < 1e-2, log_r * log_r * (0.5 + log_r / 6 + log_r * log_r / 24),
                              torch.expm1(log_r) - log_r).clamp_min(0)
        kl_is = kl + is_term

        w_elbo = torch.where(is_mask, w_mask, torch.where(is_clean, w_clean, w_unif))
        if self.loss_weighting == "none":
            w_loss = w_elbo
        elif self.loss_weighting == "clip":
            w_loss = w_elbo.clamp(self.min_loss_weight, self.max_loss_weight)
        else:  # dynamic (GIDD+): upstream's sigmoid(-t) stands in for the log-SNR (loss.py:69)
            x_scale = math.exp(self.log_B) / V * torch.exp(self.gamma / 2 * torch.sigmoid(-s["t"])).unsqueeze(1)
            w_loss = torch.where(is_mask, 2.0, torch.where(is_clean, x_scale, 1.0))
            w_loss = w_loss.clamp(self.min_loss_weight, self.max_loss_weight)
        w_elbo = w_elbo.float()
        elbo = torch.where(attn, w_elbo * kl_is, 0.0)
        loss = torch.where(attn, w_loss.float() * kl_is, 0.0)
        return elbo, loss, torch.where(attn, w_elbo * kl, 0.0), torch.where(attn, w_elbo * is_term, 0.0)
