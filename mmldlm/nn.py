"""Small tensor helpers every family needs: pooling over a padding mask, dtype names, the
sinusoidal time embedding + MLP of the diffusion transformers."""
from __future__ import annotations

import math

import torch
from torch import nn

# every spelling a config or CLI may use for a floating-point dtype
DTYPES = {"bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float32": torch.float32, "fp32": torch.float32,
          "float16": torch.float16, "fp16": torch.float16}


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``x [B, L, D]`` over the positions where ``mask [B, L]`` is True -> ``[B, D]``."""
    m = mask.unsqueeze(-1).to(x.dtype)
    return (x * m).sum(1) / m.sum(1).clamp_min(1)


def last_token(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``x`` at each row's last True position of ``mask``, under left or right padding -> ``[B, D]``."""
    last = mask.shape[1] - 1 - mask.long().flip(1).argmax(1)
    return x[torch.arange(x.shape[0], device=x.device), last]


def pool(x: torch.Tensor, mask: torch.Tensor, how: str) -> torch.Tensor:
    """``mean`` or ``last`` pooling over real positions."""
    if how == "mean":
        return masked_mean(x, mask)
    if how == "last":
        return last_token(x, mask)
    raise ValueError(f"unknown pooling {how!r} (mean | last)")


def rank_share(count: torch.Tensor) -> torch.Tensor:
    """``count`` summed over ranks / world size, while training under a process group (else as is).

    Dividing a rank's summed loss by it makes the ranks' mean (what DDP/FSDP gradient averaging
    computes) the global per-token mean, however the tokens fall on the ranks: W ranks then train
    exactly as 1 rank on the same global batch. A collective: every rank calls it at every step."""
    import torch.distributed as dist

    if not (torch.is_grad_enabled() and dist.is_initialized() and dist.get_world_size() > 1):
        return count
    total = count.detach().float().clone()
    dist.all_reduce(total)
    return total / dist.get_world_size()


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """Sinusoidal embedding of ``1000 * t`` for t in [0, 1]; ``[B] -> [B, dim]``."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = 1000.0 * t.float().unsqueeze(1) * freqs.unsqueeze(0)
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=1)
    return emb if dim % 2 == 0 else torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=1)


class TimeMLP(nn.Module):
    """A noise level t in [0, 1] -> the conditioning vector of a DiT's adaptive norms: the
    sinusoidal embedding, then a two-layer MLP."""

    def __init__(self, freq_dim: int, out_dim: int):
        super().__init__()
        self.freq_dim = freq_dim
        self.net = nn.Sequential(nn.Linear(freq_dim, out_dim), nn.SiLU(), nn.Linear(out_dim, out_dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.net(timestep_embedding(t, self.freq_dim))


def text_out(stream: torch.Tensor, head: nn.Linear, what):
    """What an MMDiT's text head returns for ``what`` (its ``text_logits`` argument): True = logits
    ``[B, L, V]``; False = None (no projection); a bool ``[B, L]`` tensor = logits at those positions
    ``[N, V]``; a callable ``(stream [B, L, h], head) -> out`` = ``out`` (a loss computed from the
    hidden states without the logits, :meth:`mmldlm.diffusion.masked_text.MaskedTextDiffusion.head_loss`)."""
    if isinstance(what, torch.Tensor):
        return head(stream[what])
    if callable(what):
        return what(stream, head)
    return head(stream) if what else None


@torch.no_grad()
def global_rms(weight: torch.Tensor) -> torch.Tensor:
    """The RMS of every element of ``weight`` (fp32), also of an FSDP-sharded one (DTensor)."""
    value = weight.float().pow(2).mean().sqrt()
    return value.full_tensor() if hasattr(value, "full_tensor") else value
