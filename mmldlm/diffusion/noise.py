"""Counter-based noise: uniforms that are a function of (seed, step, record, position) only.

A diffusion objective that draws its t and masks from here sees the same noise for a record at a
step whatever the number of ranks, the batch split or the RNG state: 2 ranks train exactly as 1
rank with the same global batch, and a resumed run continues with the same noise without any
RNG state. SplitMix64's finaliser on int64 tensors (wrapping multiplication; logical shifts
emulated with a mask), 53 bits to a float64 in [0, 1).
"""
from __future__ import annotations

import torch


def _signed(c: int) -> int:
    return c - (1 << 64) if c >= 1 << 63 else c


_GOLDEN, _M1, _M2 = _signed(0x9E3779B97F4A7C15), _signed(0xBF58476D1CE4E5B9), _signed(0x94D049BB133111EB)


def _lsr(x: torch.Tensor, k: int) -> torch.Tensor:
    return (x >> k) & ((1 << (64 - k)) - 1)


def mix(x: torch.Tensor) -> torch.Tensor:
    """SplitMix64 of each int64 in ``x`` (a bijection of 64-bit words)."""
    x = x + _GOLDEN
    x = (x ^ _lsr(x, 30)) * _M1
    x = (x ^ _lsr(x, 27)) * _M2
    return x ^ _lsr(x, 31)


def keyed_uniform(counters: torch.Tensor, *key: int) -> torch.Tensor:
    """Uniforms in [0, 1) (float64), one per int64 ``counters`` entry, under the integer ``key``
    (e.g. seed, step, stream): equal counters and keys give equal numbers, on any device."""
    k = torch.zeros((), dtype=torch.int64, device=counters.device)
    for part in key:
        k = mix(k ^ int(part))
    return _lsr(mix(counters.long() ^ k), 11).double() * (1.0 / (1 << 53))


def _position_counters(index: torch.Tensor, length: int) -> torch.Tensor:
    """``[B, length]`` int64 counters of (record, position). Rows that share a record (packed rows
    starting in one document) are told apart by their order among those rows."""
    occurrence = (index[:, None] == index[None, :]).tril(-1).sum(1)  # 0 unless rows share a record
    row = index.long() * 1024 + occurrence
    return row[:, None] * (1 << 24) + torch.arange(length, device=index.device)


def position_uniforms(index: torch.Tensor, length: int, *key: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``[B, length]`` uniforms keyed by (key, record ``index [B]``, position): a record's masks
    whatever batch, rank or run it lands in. float32 by default; float64 keeps all 53 bits."""
    return keyed_uniform(_position_counters(index, length), *key).to(dtype)


def position_normals(index: torch.Tensor, length: int, *key: int) -> torch.Tensor:
    """``[B, length]`` float32 standard normals keyed like :func:`position_uniforms` (Box-Muller on
    two float64 streams, so the log never sees 0): the Gaussian noise of a record's image, the
    same on any number of ranks and after a resume. ``length`` < 2^24 per record."""
    counters = _position_counters(index, length)
    u1 = 1.0 - keyed_uniform(counters, *key, 0)  # (0, 1]
    u2 = keyed_uniform(counters, *key, 1)
    return (torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(2 * torch.pi * u2)).float()
