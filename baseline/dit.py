"""The DiT of the text-diffusion baselines (MDLM's ``models/dit.py`` shapes, written afresh).

Token embedding ``[R, d]`` with ``R`` = the process's input vocabulary (tokens, HDLM's cluster
tokens) rounded up to a multiple of 128 (MDLM/GIDD: 50,304 rows at GPT-2's vocabulary); a
timestep embedder (sinusoid of the noise level, MLP to ``cond_dim``); blocks of adaLN-Zero
(six modulations from the conditioning vector), rotary bidirectional attention with key padding
and an MLP of ratio 4 (GELU-tanh); a final adaLN layer and a zero-initialised projection to the
``R`` logits. Presets (``model=tiny|small|base|1B``): 512/8/8, 768/12/12, 1024/24/16, 2048/24/32,
``cond_dim`` 128, head dim 64; at GPT-2's vocabulary small has 169.7M and base 424.6M parameters
(GIDD's README: 169.6M / 424.5M).

The time embedder sees ``sigma(t) = -log(1 - (1 - eps) t)`` (MDLM), not the raw t in [0, 1]
that the original fed through frequencies 1..1e-4 (most channels constant; refs/ defect 17);
``time_conditioning: false`` feeds 0 (MDLM's better-scoring default).

Latent conditioning (``mdlm_latent``): ``adaln`` adds an MLP of the latent to the conditioning
vector (any ``latent_dim`` / ``cond_dim`` / ``hidden_size``); ``cross_attention`` inserts a
cross-attention sublayer, zero-initialised, every ``cross_attention_frequency`` blocks, over K
latent tokens: the record's vectors, or ``latent_tokens`` slots expanded from one vector (with
one key, softmax attention is a constant: it would only add a per-sequence bias).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from mmldlm.attention import key_padding_mask


def sigma_of(t: torch.Tensor, eps: float) -> torch.Tensor:
    """MDLM's log-linear noise level ``-log(1 - (1 - eps) t)``: what the time embedder sees."""
    return -torch.log1p(-(1 - eps) * t)


class TimestepEmbedder(nn.Module):
    def __init__(self, cond_dim: int, freq_dim: int = 256, max_period: float = 10_000.0):
        super().__init__()
        self.freq_dim, self.max_period = freq_dim, max_period
        self.mlp = nn.Sequential(nn.Linear(freq_dim, cond_dim), nn.SiLU(), nn.Linear(cond_dim, cond_dim))

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        half = self.freq_dim // 2
        freqs = torch.exp(-math.log(self.max_period) * torch.arange(half, device=s.device, dtype=torch.float32) / half)
        args = s.float()[:, None] * freqs[None]
        return self.mlp(torch.cat([torch.cos(args), torch.sin(args)], dim=-1))


class Rotary(nn.Module):
    def __init__(self, head_dim: int, base: float = 10_000.0):
        super().__init__()
        self.register_buffer("inv_freq", 1.0 / base ** (torch.arange(0, head_dim, 2).float() / head_dim),
                             persistent=False)

    def forward(self, length: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = torch.outer(torch.arange(length, device=device, dtype=torch.float32), self.inv_freq.to(device))
        emb = torch.cat([freqs, freqs], dim=-1)
        return emb.cos()[None, None], emb.sin()[None, None]  # [1, 1, L, head_dim]


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return (x * cos + torch.cat([-x2, x1], dim=-1) * sin).to(x.dtype)


def _modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale[:, None]) + shift[:, None]


class LayerNorm(nn.Module):
    """LayerNorm with a weight and no bias, computed in float32 (MDLM's)."""

    def __init__(self, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x.float(), (x.shape[-1],), self.weight.float()).to(x.dtype)


class CrossAttention(nn.Module):
    """Text queries over latent tokens; the output projection starts at zero (identity block)."""

    def __init__(self, hidden: int, n_heads: int):
        super().__init__()
        self.n_heads = n_heads
        self.norm_q, self.norm_kv = LayerNorm(hidden), LayerNorm(hidden)
        self.q, self.kv, self.out = nn.Linear(hidden, hidden, bias=False), nn.Linear(hidden, 2 * hidden, bias=False), \
            nn.Linear(hidden, hidden, bias=False)
        nn.init.zeros_(self.out.weight)

    def forward(self, x: torch.Tensor, mem: torch.Tensor, mem_mask: torch.Tensor | None) -> torch.Tensor:
        B, L, d = x.shape
        q = self.q(self.norm_q(x)).view(B, L, self.n_heads, -1).transpose(1, 2)
        k, v = self.kv(self.norm_kv(mem)).view(B, mem.shape[1], 2, self.n_heads, -1).permute(2, 0, 3, 1, 4)
        mask = None if mem_mask is None else mem_mask[:, None, None, :]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return x + self.out(out.transpose(1, 2).reshape(B, L, d))


class DiTBlock(nn.Module):
    def __init__(self, hidden: int, n_heads: int, cond_dim: int, dropout: float, cross: bool = False):
        super().__init__()
        self.n_heads, self.dropout = n_heads, dropout
        self.norm1, self.norm2 = LayerNorm(hidden), LayerNorm(hidden)
        self.attn_qkv = nn.Linear(hidden, 3 * hidden, bias=False)
        self.attn_out = nn.Linear(hidden, hidden, bias=False)
        self.mlp = nn.Sequential(nn.Linear(hidden, 4 * hidden), nn.GELU(approximate="tanh"),
                                 nn.Linear(4 * hidden, hidden))
        self.adaLN_modulation = nn.Linear(cond_dim, 6 * hidden)
        nn.init.zeros_(self.adaLN_modulation.weight), nn.init.zeros_(self.adaLN_modulation.bias)  # adaLN-Zero
        self.cross = CrossAttention(hidden, n_heads) if cross else None

    def forward(self, x, c, rotary, attn_mask, mem=None, mem_mask=None):
        """``attn_mask``: the ``[B, 1, 1, L]`` key mask, None without padding (flash-eligible)."""
        B, L, d = x.shape
        shift1, scale1, gate1, shift2, scale2, gate2 = self.adaLN_modulation(c).chunk(6, dim=-1)
        q, k, v = self.attn_qkv(_modulate(self.norm1(x), shift1, scale1)).view(B, L, 3, self.n_heads, -1) \
            .permute(2, 0, 3, 1, 4)
        cos, sin = rotary
        q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
        p = self.dropout if self.training else 0.0
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=p)
        a = self.attn_out(a.transpose(1, 2).reshape(B, L, d))
        x = x + gate1[:, None] * F.dropout(a, p, self.training)
        if self.cross is not None:
            x = self.cross(x, mem, mem_mask)
        h = self.mlp(_modulate(self.norm2(x), shift2, scale2))
        return x + gate2[:, None] * F.dropout(h, p, self.training)


class FinalLayer(nn.Module):
    def __init__(self, hidden: int, out: int, cond_dim: int):
        super().__init__()
        self.norm = LayerNorm(hidden)
        self.linear = nn.Linear(hidden, out)
        self.adaLN_modulation = nn.Linear(cond_dim, 2 * hidden)
        for lin in (self.linear, self.adaLN_modulation):
            nn.init.zeros_(lin.weight), nn.init.zeros_(lin.bias)

    def features(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """What the vocabulary projection ``linear`` reads: the modulated, normalised hidden states."""
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=-1)
        return _modulate(self.norm(x), shift, scale)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return self.linear(self.features(x, c))


def padded_vocab(n: int, multiple: int = 128) -> int:
    return -(-n // multiple) * multiple


class DiT(nn.Module):
    """``forward(ids [B, L], key_mask [B, L] bool | None, t [B]) -> logits [B, L, R]`` (float32).

    ``latent`` (``[B, D]`` or ``[B, K, D]`` + ``latent_mask``) conditions the adaLN or
    cross-attention variant; :meth:`hidden` gives the final hidden states and the head's input."""

    def __init__(self, m, num_states: int, latent_dim: int | None = None):
        super().__init__()
        self.t_eps, self.time_conditioning, self.max_seq_len = m.t_eps, m.time_conditioning, m.max_seq_len
        self.rows = padded_vocab(num_states)
        self.vocab_embed = nn.Embedding(self.rows, m.hidden_size)
        nn.init.kaiming_uniform_(self.vocab_embed.weight, a=math.sqrt(5))
        self.sigma_map = TimestepEmbedder(m.cond_dim)
        self.rotary = Rotary(m.hidden_size // m.n_heads)
        kind = getattr(m, "conditioning_type", None) if latent_dim else None
        self.conditioning = kind.name if kind is not None else None
        every = getattr(m, "cross_attention_frequency", 1)
        self.blocks = nn.ModuleList(
            DiTBlock(m.hidden_size, m.n_heads, m.cond_dim, m.dropout,
                     cross=self.conditioning == "cross_attention" and i % every == 0)
            for i in range(m.n_blocks))
        self.output_layer = FinalLayer(m.hidden_size, self.rows, m.cond_dim)
        if self.conditioning == "adaln":
            self.latent_encoder = nn.Sequential(nn.Linear(latent_dim, 4 * m.cond_dim), nn.SiLU(),
                                                nn.Linear(4 * m.cond_dim, m.cond_dim))
        elif self.conditioning == "cross_attention":
            self.latent_tokens = m.latent_tokens
            self.latent_projection = nn.Sequential(nn.Linear(latent_dim, 2 * m.hidden_size), nn.SiLU(),
                                                   nn.Linear(2 * m.hidden_size, m.latent_tokens * m.hidden_size))
            self.latent_slots = nn.Parameter(torch.randn(m.latent_tokens, m.hidden_size) * 0.02)

    def _memory(self, latent: torch.Tensor, latent_mask: torch.Tensor | None):
        """Latent tokens ``[B, K * latent_tokens, d]`` and their key mask for cross-attention."""
        if latent.dim() == 2:
            latent = latent[:, None]
        B, K, _ = latent.shape
        mem = self.latent_projection(latent.float()).view(B, K, self.latent_tokens, -1) + self.latent_slots
        mem = mem.reshape(B, K * self.latent_tokens, -1)
        mask = None if latent_mask is None else latent_mask.repeat_interleave(self.latent_tokens, dim=1)
        return mem, mask

    def hidden(self, ids: torch.Tensor, key_mask: torch.Tensor | None, t: torch.Tensor,
               latent: torch.Tensor | None = None, latent_mask: torch.Tensor | None = None):
        """(the last block's output ``[B, L, d]``, the output layer's input: what its vocabulary
        projection reads). A key mask without padding is dropped: the blocks' SDPA gets no mask and
        may take the flash kernel (packed rows, fixed-length batches)."""
        if ids.shape[1] > self.max_seq_len:  # rotary would run on, but past the trained context
            raise ValueError(f"{ids.shape[1]} tokens exceed model.max_seq_len={self.max_seq_len}")
        s = sigma_of(t, self.t_eps) if self.time_conditioning else torch.zeros_like(t)
        c = self.sigma_map(s)
        mem = mem_mask = None
        if self.conditioning == "adaln":
            c = c + self.latent_encoder(latent.float())  # [B, D]: the caller pools K > 1 vectors
        elif self.conditioning == "cross_attention":
            mem, mem_mask = self._memory(latent, latent_mask)
        c = F.silu(c)
        x = self.vocab_embed(ids)
        rotary = self.rotary(ids.shape[1], ids.device)
        attn_mask = key_padding_mask(key_mask)
        for block in self.blocks:
            x = block(x, c, rotary, attn_mask, mem=mem, mem_mask=mem_mask)
        return x, self.output_layer.features(x, c)

    def forward(self, ids: torch.Tensor, key_mask: torch.Tensor | None, t: torch.Tensor,
                latent: torch.Tensor | None = None, latent_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Logits ``[B, L, R]`` float32 (the samplers'; training reads :meth:`hidden`)."""
        _, head_in = self.hidden(ids, key_mask, t, latent, latent_mask)
        return self.output_layer.linear(head_in).float()


def dit_parameter_count(vocab: int, hidden: int, n_blocks: int, cond_dim: int = 128, freq_dim: int = 256) -> int:
    """The DiT's parameter count in closed form (the test checks the module against it and it
    against GIDD's published 169.6M / 424.5M at GPT-2's vocabulary)."""
    rows = padded_vocab(vocab)
    block = 2 * hidden + 3 * hidden * hidden + hidden * hidden + (8 * hidden * hidden + 5 * hidden) \
        + (cond_dim * 6 * hidden + 6 * hidden)
    final = hidden + hidden * rows + rows + cond_dim * 2 * hidden + 2 * hidden
    time = freq_dim * cond_dim + cond_dim + cond_dim * cond_dim + cond_dim
    return rows * hidden + time + n_blocks * block + final
