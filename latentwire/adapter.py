"""Per-model adapters (``d_z`` -> the LLM's embedding space) and the prefix calibration.

Adapter, as the original's (``models.py`` Adapter): ``LN(z)`` -> Linear(d_z, h·d_z) -> GELU ->
Linear -> GELU -> (dropout) -> Linear(h·d_z, d_model), plus a skip ``Linear(d_z, d_model)`` of
``LN(z)``; FiLM ``x·σ(W_s z) + W_b z``; ``LayerNorm(d_model)``; a learned scalar ``scale``
(init 1, pulled to 1 by the ``scale_l2`` penalty); optionally a colorizer (per-dimension affine
initialised from the embedding table's mean and std). Xavier init.

Metadata (``model.adapter_metadata``, OFF by default; the original had it on): a learned per-slot
position embedding and ``tanh(Linear(answer_len / max_answer_tokens))``, where answer_len is the
GOLD answer's token length - at eval too. It leaks the label's length into the prefix, so runs
that turn it on say "uses gold answer length" in the training log and the eval report.

Calibration (:func:`calibrate`): each example's prefix is rescaled so its RMS over slots x dims
equals the target (the RMS of the LLM's input-embedding matrix for ``embed_rms``), then times
``prefix_gain``. Examples never share a scale.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Colorizer(nn.Module):
    def __init__(self, d_model: int, mean: torch.Tensor, std: torch.Tensor):
        super().__init__()
        self.gamma = nn.Parameter(std.float().clamp_min(1e-6).clone())
        self.beta = nn.Parameter(mean.float().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mu, sd = x.mean(-1, keepdim=True), x.std(-1, keepdim=True).clamp_min(1e-6)
        return (x - mu) / sd * self.gamma + self.beta


class Adapter(nn.Module):
    def __init__(self, d_z: int, d_model: int, latent_len: int, hidden_mult: int = 2, dropout: float = 0.0,
                 metadata: bool = False, length_norm: float = 32.0, color: tuple | None = None):
        super().__init__()
        h = d_z * hidden_mult
        self.metadata, self.length_norm = metadata, max(float(length_norm), 1.0)
        if metadata:
            self.position_emb = nn.Parameter(torch.randn(latent_len, d_z) * 0.02)
            self.length_proj = nn.Sequential(nn.Linear(1, d_z), nn.Tanh())
        self.input_norm = nn.LayerNorm(d_z)
        self.proj_in, self.mid, self.proj_out = nn.Linear(d_z, h), nn.Linear(h, h), nn.Linear(h, d_model)
        self.skip = nn.Linear(d_z, d_model)
        self.dropout = nn.Dropout(dropout)
        self.film_scale, self.film_shift = nn.Linear(d_z, d_model), nn.Linear(d_z, d_model)
        self.out_norm = nn.LayerNorm(d_model)
        self.scale = nn.Parameter(torch.ones(1))
        self.color = Colorizer(d_model, *color) if color is not None else None
        for lin in (self.proj_in, self.mid, self.proj_out, self.skip, self.film_scale, self.film_shift):
            nn.init.xavier_uniform_(lin.weight)
            nn.init.zeros_(lin.bias)

    def forward(self, z: torch.Tensor, answer_len: torch.Tensor | None = None) -> torch.Tensor:
        if self.metadata:
            if answer_len is None:
                raise ValueError("this adapter was trained with model.adapter_metadata=true: it needs the gold "
                                 "answer length")
            z = z + self.position_emb.unsqueeze(0).to(z.dtype)
            z = z + self.length_proj(answer_len.float().unsqueeze(-1) / self.length_norm).unsqueeze(1).to(z.dtype)
        zn = self.input_norm(z)
        x = self.proj_out(self.dropout(F.gelu(self.mid(F.gelu(self.proj_in(zn)))))) + self.skip(zn)
        x = x * torch.sigmoid(self.film_scale(z)) + self.film_shift(z)
        x = self.out_norm(x) * self.scale
        return self.color(x) if self.color is not None else x


def prefix_rms(prefix: torch.Tensor) -> torch.Tensor:
    """Each example's RMS over slots x dims: ``[B]``."""
    return prefix.float().pow(2).mean(dim=(1, 2)).sqrt()


def calibrate(prefix: torch.Tensor, target_rms: float | torch.Tensor | None, gain: float = 1.0) -> torch.Tensor:
    """``prefix [B, M, d] * target / rms(example)`` (``target_rms`` None: no rescaling), times ``gain``."""
    if target_rms is not None:
        prefix = prefix * (torch.as_tensor(target_rms, dtype=torch.float32, device=prefix.device)
                           / prefix_rms(prefix).clamp_min(1e-8))[:, None, None].to(prefix.dtype)
    return prefix * gain if gain != 1.0 else prefix


@torch.no_grad()
def embedding_stats(weight: torch.Tensor, chunk: int = 8192) -> tuple[float, torch.Tensor, torch.Tensor]:
    """(RMS over every entry, per-dimension mean, per-dimension std) of an embedding matrix, in
    float32 chunks (an 8B model's table would need 2 GiB more in one piece)."""
    n, d = weight.shape
    if weight.is_meta:  # the estimator: shapes only (the values never reach a FLOP or a byte count)
        return 1.0, torch.zeros(d), torch.ones(d)
    s1 = torch.zeros(d, dtype=torch.float64, device=weight.device)
    s2 = torch.zeros(d, dtype=torch.float64, device=weight.device)
    for i in range(0, n, chunk):
        w = weight[i: i + chunk].double()
        s1 += w.sum(0)
        s2 += w.pow(2).sum(0)
    mean = s1 / n
    std = (s2 / n - mean.pow(2)).clamp_min(0).sqrt()
    return float((s2.sum() / (n * d)).sqrt()), mean.float().cpu(), std.float().cpu()
