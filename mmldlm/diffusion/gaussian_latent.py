"""Gaussian diffusion of the sentence latent (DDPM, discrete timesteps ``0 .. T-1``).

Schedules: ``cosine`` (Nichol & Dhariwal, s = 0.008, betas clipped at 0.999) and ``linear``
(betas 1e-4 .. 0.02 at T = 1000, scaled by 1000 / T otherwise, as Improved DDPM does: unscaled,
T = 100 would end with 36% of the signal left while the samplers start from pure noise). A
schedule whose last alpha_bar exceeds 1e-3 is refused. Parameterisations of the network output:
``epsilon``, ``x0``, ``v_param``
(v = sqrt(a) eps - sqrt(1 - a) x0, Salimans & Ho). With epsilon at the last timestep,
x0 = (x_t - sqrt(1 - a) eps) / sqrt(a) divides by a tiny sqrt(a) (cosine) and amplifies the
network's error 1e4-6e4-fold (sqrt(a) ~ 5e-5 here); x0 and v give x0 without that division.
``predict_x0`` therefore clamps the epsilon route to ``x0_clamp`` (when set) and says so once.
"""
from __future__ import annotations

import logging
import math

import torch

log = logging.getLogger(__name__)
PARAMETERIZATIONS = ("epsilon", "x0", "v_param")
MAX_FINAL_ALPHA_BAR = 1e-3


def make_alpha_bar(schedule: str, timesteps: int) -> torch.Tensor:
    """On the CPU whatever the default device (a model built on meta still gets its schedule checked)."""
    if schedule == "cosine":
        s = 0.008
        steps = torch.arange(timesteps + 1, dtype=torch.float64, device="cpu") / timesteps
        f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
        betas = (1 - f[1:] / f[:-1]).clamp(max=0.999)
    elif schedule == "linear":
        scale = 1000 / timesteps
        betas = torch.linspace(1e-4 * scale, 0.02 * scale, timesteps, dtype=torch.float64, device="cpu")
        betas = betas.clamp(max=0.999)
    else:
        raise ValueError(f"unknown latent beta schedule {schedule!r} (cosine | linear)")
    alpha_bar = torch.cumprod(1 - betas, 0)
    if alpha_bar[-1] > MAX_FINAL_ALPHA_BAR:
        raise ValueError(f"{schedule} schedule with {timesteps} steps ends at alpha_bar {alpha_bar[-1]:.3g} > "
                         f"{MAX_FINAL_ALPHA_BAR}: the last step is not pure noise, which the samplers assume")
    return alpha_bar.float()


class GaussianLatentDiffusion(torch.nn.Module):
    def __init__(self, timesteps: int = 1000, schedule: str = "cosine", parameterization: str = "v_param",
                 x0_clamp: float | None = None):
        super().__init__()
        if parameterization not in PARAMETERIZATIONS:
            raise ValueError(f"unknown parameterization {parameterization!r} {PARAMETERIZATIONS}")
        self.timesteps, self.parameterization, self.x0_clamp = timesteps, parameterization, x0_clamp
        self.register_buffer("alpha_bar", make_alpha_bar(schedule, timesteps), persistent=False)
        self._warned = False

    def _a(self, t: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a = self.alpha_bar[t].to(like.dtype).view(-1, *([1] * (like.dim() - 1)))
        return a.sqrt(), (1 - a).sqrt()

    def sample_t(self, batch_size: int, device, low: int = 0, high: int | None = None) -> torch.Tensor:
        return torch.randint(low, self.timesteps if high is None else high, (batch_size,), device=device)

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        sa, s1a = self._a(t, x0)
        return sa * x0 + s1a * noise

    # conversions (each the inverse of another; tested)
    def v_from(self, x0, eps, t):
        sa, s1a = self._a(t, x0)
        return sa * eps - s1a * x0

    def x0_from_eps(self, x_t, eps, t):
        sa, s1a = self._a(t, x_t)
        return (x_t - s1a * eps) / sa

    def eps_from_x0(self, x_t, x0, t):
        sa, s1a = self._a(t, x_t)
        return (x_t - sa * x0) / s1a

    def x0_from_v(self, x_t, v, t):
        sa, s1a = self._a(t, x_t)
        return sa * x_t - s1a * v

    def eps_from_v(self, x_t, v, t):
        sa, s1a = self._a(t, x_t)
        return s1a * x_t + sa * v

    def target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if self.parameterization == "epsilon":
            return noise
        if self.parameterization == "x0":
            return x0
        return self.v_from(x0, noise, t)

    def predict_x0(self, out: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if self.parameterization == "x0":
            return out
        if self.parameterization == "v_param":
            return self.x0_from_v(x_t, out, t)
        x0 = self.x0_from_eps(x_t, out, t)
        if self.x0_clamp is not None:
            if not self._warned:
                log.warning("epsilon parameterisation: x0 recovered from eps is clamped to +-%g "
                            "(it explodes near the last timestep); v_param or x0 avoid this", self.x0_clamp)
                self._warned = True
            x0 = x0.clamp(-self.x0_clamp, self.x0_clamp)
        return x0

    def predict_eps(self, out: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if self.parameterization == "epsilon":
            return out
        if self.parameterization == "v_param":
            return self.eps_from_v(x_t, out, t)
        return self.eps_from_x0(x_t, out, t)

    def ddim_step(self, out: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, t_prev: torch.Tensor):
        """Deterministic DDIM (eta = 0) from t to t_prev, per row; a row with t_prev < 0 gets its
        clean latent x0."""
        x0, eps = self.predict_x0(out, x_t, t), self.predict_eps(out, x_t, t)
        sa, s1a = self._a(t_prev.clamp_min(0), x_t)
        done = (t_prev < 0).view(-1, *([1] * (x_t.dim() - 1)))
        return torch.where(done, x0, sa * x0 + s1a * eps)

    @torch.no_grad()
    def ddim_sample(self, net, x: torch.Tensor, steps: int) -> torch.Tensor:
        """Deterministic DDIM (eta = 0) from ``x`` (pure noise at T - 1) to the clean sample, on
        ``steps`` evenly spaced timesteps; ``net(x_t, t [B]) -> out`` in the trained parameterisation."""
        grid = torch.linspace(self.timesteps - 1, 0, steps).round().long()
        ts = torch.unique(grid, sorted=True).flip(0).tolist()
        B = x.shape[0]
        for i, t in enumerate(ts):
            tt = torch.full((B,), t, device=x.device)
            prev = ts[i + 1] if i + 1 < len(ts) else -1
            x = self.ddim_step(net(x, tt).float(), x, tt, torch.full((B,), prev, device=x.device))
        return x

    def time_code(self, t: torch.Tensor) -> torch.Tensor:
        """The model's time input for latent index t in [0, T-1]: (t + 1) / T in (0, 1]. 0 is kept
        for the clean latent (a condition), so index 0, still noisy, never looks clean."""
        return (t.float() + 1) / self.timesteps
