"""The multimodal MMDiT: a text stream and a latent stream joined by joint attention.

Text: token embedding + learned positions. Latent: the sentence latent projected to
``num_latent_tokens`` tokens. Both timesteps (text t in [0, 1], latent t = index / T) are
embedded sinusoidally (scaled by 1000, so that [0, 1] is well resolved), passed through an MLP
each and summed into the conditioning vector of ``mmdit.mmdit_generalized_pytorch.MMDiT``
(heads = ``n_heads``, dim_head = hidden // n_heads). mmdit's joint attention projects to
``heads * dim_head`` and back, so hidden need not divide: the reference size 1024 / 24 heads has
dim_head 42 and an attention width of 1008. Heads: token logits from the text stream, a latent
vector from the mean of the latent tokens.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

try:
    from mmdit.mmdit_generalized_pytorch import MMDiT
except ImportError as e:  # pragma: no cover - exercised only without the dependency
    raise ImportError("the MMDiT model needs the `mmdit` package: pip install 'mmdit==0.3.0' "
                      "(or pip install -e . in this repository, which lists it)") from e

from mmldlm.attention import padding_or_none, sdpa_joint_attention
from mmldlm.config import ConfigError, require_fraction, require_positive
from mmldlm.nn import TimeMLP, text_out


@dataclass
class MMDiTModelConfig:
    type: str = "multimodal_mmdit"
    hidden_size: int = 1024
    n_blocks: int = 24
    n_heads: int = 24
    cond_dim: int = 1024
    max_seq_len: int = 512
    dropout: float = 0.0
    num_residual_streams: int = 1
    latent_dim: int = 1024
    num_latent_tokens: int = 1
    latent_timesteps: int = 1000
    latent_beta_schedule: str = "cosine"  # cosine | linear
    latent_parameterization: str = "v_param"  # epsilon | x0 | v_param
    x0_clamp: Optional[float] = None  # epsilon only: clamp of the x0 recovered from eps
    # Latents are multiplied by this before diffusion (and samplers divide it back out).
    # L2-normalised encoders (E5, Qwen, MiniLM) give per-dim std ~1/sqrt(D): sqrt(D) makes the
    # Gaussian diffusion see unit variance; without it the signal is invisible under the noise.
    latent_scale: float = 32.0  # sqrt(1024), for the default latent_dim
    t_eps: float = 1e-4
    flash_attn: bool = True

    def check(self) -> None:
        if self.type != "multimodal_mmdit":
            raise ConfigError(f"model.type: unknown model {self.type!r} (multimodal_mmdit)")
        if not 1 <= self.n_heads <= self.hidden_size:
            raise ConfigError(f"model.n_heads: must be in [1, hidden_size], got {self.n_heads}")
        if self.latent_beta_schedule not in ("cosine", "linear"):
            raise ConfigError(f"model.latent_beta_schedule: {self.latent_beta_schedule!r} (cosine | linear)")
        if self.latent_parameterization not in ("epsilon", "x0", "v_param"):
            raise ConfigError(f"model.latent_parameterization: {self.latent_parameterization!r} "
                              "(epsilon | x0 | v_param)")
        for key in ("n_blocks", "num_residual_streams", "num_latent_tokens", "latent_timesteps", "cond_dim"):
            if getattr(self, key) < 1:
                raise ConfigError(f"model.{key}: must be >= 1")
        from mmldlm.diffusion.gaussian_latent import make_alpha_bar

        try:
            make_alpha_bar(self.latent_beta_schedule, self.latent_timesteps)
        except ValueError as e:
            raise ConfigError(f"model.latent_beta_schedule: {e}") from None
        if not self.latent_scale > 0:
            raise ConfigError("model.latent_scale: must be > 0 (sqrt(latent_dim) for L2-normalised latents)")
        if not 0 < self.t_eps < 1:
            raise ConfigError("model.t_eps: must be in (0, 1)")
        require_fraction("model", self, "dropout")
        require_positive("model", self, "x0_clamp")


class MultimodalMMDiT(nn.Module):
    def __init__(self, m: MMDiTModelConfig, vocab_size: int):
        super().__init__()
        h, self.k = m.hidden_size, m.num_latent_tokens
        self.tok = nn.Embedding(vocab_size, h)
        self.pos = nn.Embedding(m.max_seq_len, h)
        self.latent_in = nn.Linear(m.latent_dim, h * self.k)
        self.latent_pos = nn.Parameter(torch.zeros(self.k, h))
        self.time_text, self.time_latent = TimeMLP(256, m.cond_dim), TimeMLP(256, m.cond_dim)
        self.drop = nn.Dropout(m.dropout)
        self.backbone = MMDiT(depth=m.n_blocks, dim_modalities=(h, h), dim_cond=m.cond_dim, heads=m.n_heads,
                              dim_head=h // m.n_heads, num_residual_streams=m.num_residual_streams,
                              flash_attn=m.flash_attn, ff_kwargs=dict(dropout=m.dropout))
        if m.flash_attn:  # SDPA without a mask where nothing is padded (mmldlm.attention)
            sdpa_joint_attention(self.backbone)
        self.text_head = nn.Linear(h, vocab_size)
        self.latent_head = nn.Linear(h, m.latent_dim)
        nn.init.normal_(self.tok.weight, std=0.02)
        nn.init.normal_(self.pos.weight, std=0.02)

    def forward(self, text_ids: torch.Tensor, text_mask: torch.Tensor, latent: torch.Tensor,
                t_text: torch.Tensor, t_latent: torch.Tensor, text_logits: bool | torch.Tensor | Callable = True):
        """``text_ids [B, L]``, ``text_mask [B, L]`` (True = real token), ``latent [B, D]``,
        ``t_text [B]`` and ``t_latent [B]`` in [0, 1] -> (logits ``[B, L, V]``, latent ``[B, D]``).
        ``text_logits=False`` skips the vocabulary projection (passes that only read the latent); a
        bool ``[B, L]`` tensor projects only those positions and returns ``[N, V]``; a callable
        ``(text stream [B, L, h], text head) -> out`` returns ``out`` (the loss, computed here, inside
        this module's forward, where FSDP has its weights gathered: ``MaskedTextDiffusion.head_loss``)."""
        pos = torch.arange(text_ids.shape[1], device=text_ids.device)
        x_text = self.drop(self.tok(text_ids) + self.pos(pos))
        x_lat = self.latent_in(latent).view(latent.shape[0], self.k, -1) + self.latent_pos
        cond = self.time_text(t_text) + self.time_latent(t_latent)
        out_text, out_lat = self.backbone(modality_tokens=(x_text, x_lat),
                                          modality_masks=(padding_or_none(text_mask), None),
                                          time_cond=cond)
        return text_out(out_text, self.text_head, text_logits), self.latent_head(out_lat.mean(1))


def get_model(m: MMDiTModelConfig, vocab_size: int) -> nn.Module:
    if m.type == "multimodal_mmdit":
        return MultimodalMMDiT(m, vocab_size)
    raise ConfigError(f"model.type: unknown model {m.type!r}")
