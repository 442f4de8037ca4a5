"""Baseline T2L regression: a small Transformer encoder reads the text and regresses its latent.

Loss = MSE between the mean-pooled encoder output (projected to ``latent_dim``) and the target
latent (averaged over vectors when a record holds K > 1). Metrics: ``latent_loss`` (MSE),
``latent_cos`` (mean cosine similarity). A yardstick for what any T2L model must beat.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from mmldlm.attention import padding_or_none
from mmldlm.config import ConfigError, RunConfig, require_fraction, require_min
from mmldlm.data.collate import mean_latent
from mmldlm.nn import masked_mean
from mmldlm.objective import Objective, register


@dataclass
class T2LModelConfig:
    hidden_size: int = 256
    n_blocks: int = 4
    n_heads: int = 4
    max_seq_len: int = 128
    dropout: float = 0.0
    latent_dim: int = 384

    def check(self) -> None:
        require_min("model", self, hidden_size=1, n_blocks=1, n_heads=1, max_seq_len=2, latent_dim=1)
        require_fraction("model", self, "dropout")
        if self.hidden_size % self.n_heads:
            raise ConfigError(f"model.hidden_size ({self.hidden_size}) must be divisible by "
                              f"model.n_heads ({self.n_heads})")


@dataclass
class T2LLossConfig:
    cosine_weight: float = 0.0  # adds cosine_weight * (1 - cos) to the MSE

    def check(self) -> None:
        require_min("loss", self, cosine_weight=0.0)


@dataclass
class T2LRunConfig(RunConfig):
    objective: str = "t2l_regression"
    model: T2LModelConfig = field(default_factory=T2LModelConfig)
    loss: T2LLossConfig = field(default_factory=T2LLossConfig)


class TextToLatentRegression(Objective):
    def __init__(self, model_cfg, loss_cfg, vocab_size: int, pad_id: int):
        super().__init__()
        m = model_cfg
        self.cosine_weight = loss_cfg.cosine_weight
        self.tok = nn.Embedding(vocab_size, m.hidden_size, padding_idx=pad_id)
        self.pos = nn.Embedding(m.max_seq_len, m.hidden_size)
        layer = nn.TransformerEncoderLayer(m.hidden_size, m.n_heads, 4 * m.hidden_size, m.dropout,
                                           activation="gelu", batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, m.n_blocks, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(m.hidden_size)
        self.head = nn.Linear(m.hidden_size, m.latent_dim)

    def predict(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(input_ids.shape[1], device=input_ids.device)
        pads = padding_or_none(attention_mask)  # none padded: no mask, so SDPA may take the flash kernel
        h = self.encoder(self.tok(input_ids) + self.pos(pos), src_key_padding_mask=None if pads is None else ~pads)
        return self.head(masked_mean(self.norm(h), attention_mask))

    def compile_units(self) -> list[nn.Module]:
        return list(self.encoder.layers)

    def forward(self, batch: dict, step: int):
        target = mean_latent(batch).float()
        pred = self.predict(batch["input_ids"], batch["attention_mask"]).float()
        mse = F.mse_loss(pred, target)
        cos = F.cosine_similarity(pred, target, dim=-1).mean()
        loss = mse + self.cosine_weight * (1 - cos)
        return loss, {"latent_loss": mse.detach(), "latent_cos": cos.detach()}


def build(cfg, sources) -> TextToLatentRegression:
    tokenizer = sources.tokenizer
    return TextToLatentRegression(cfg.model, cfg.loss, len(tokenizer), tokenizer.pad_token_id)


register("t2l_regression", T2LRunConfig, build, Path(__file__).resolve().parent / "configs",
         metrics={"loss": ("loss", "latent_loss"), "cosine": ("latent_cos",)})
