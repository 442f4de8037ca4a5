"""The config of WeDLM fine-tuning (``--config-name wedlm8b_sft``): every default lives here.

``finetune.objective``: ``wedlm`` (WeDLM's dual-stream objective, refs/wedlm_finetune.md B.1) or
``causal_lm`` (the users' guide: plain next-token CE on the response; it trains only WeDLM's
auxiliary AR half). ``finetune.method``: ``full`` | ``lora`` | ``qlora`` (peft; bitsandbytes nf4).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Optional

from mmldlm.config import ConfigError, DataConfig, RunConfig, require_fraction, require_positive
from wedlm_bridge.backbone import BackboneConfig


class FinetuneObjectiveName(Enum):
    wedlm = "wedlm"
    causal_lm = "causal_lm"


class Method(Enum):
    full = "full"
    lora = "lora"
    qlora = "qlora"


class LossWeighting(Enum):
    weighted = "weighted"  # each masked token weighs 1/gamma of its block, normalised to sum 1 (Tencent's)
    uniform = "uniform"  # a plain mean over masked tokens


@dataclass
class FinetuneConfig:
    objective: FinetuneObjectiveName = FinetuneObjectiveName.wedlm
    method: Method = Method.lora
    block_size: int = 32  # WeDLM's block (paper §6.1)
    mask_per_block: bool = True  # one gamma per block (the paper); false: one per sequence
    mask_eps: float = 1e-8  # gamma is clamped to >= this
    loss_weighting: LossWeighting = LossWeighting.weighted
    enable_ar_loss: bool = True
    ar_loss_weight: float = 1.0  # loss = (mlm + w ar) / (1 + w)
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    qlora_quant_type: str = "nf4"  # nf4 | fp4
    qlora_double_quant: bool = True
    # SFT data: pack a batch's conversations into rows of data.max_seq_len (no attention across them)
    packing: bool = False
    # append this many - 1 extra <|im_end|> tokens, supervised (Tencent's dataclass: 8, its example: 0)
    num_learnable_im_end: int = 0

    def check(self) -> None:
        if self.block_size < 1:
            raise ConfigError("finetune.block_size: must be >= 1")
        if not 0 < self.mask_eps < 1:
            raise ConfigError("finetune.mask_eps: must be in (0, 1)")
        if self.ar_loss_weight < 0:
            raise ConfigError("finetune.ar_loss_weight: must be >= 0")
        require_positive("finetune", self, "lora_alpha")
        require_fraction("finetune", self, "lora_dropout")
        if self.method is not Method.full and self.lora_r < 1:
            raise ConfigError(f"finetune.lora_r: must be >= 1 for finetune.method={self.method.value}")
        if self.qlora_quant_type not in ("nf4", "fp4"):
            raise ConfigError(f"finetune.qlora_quant_type: {self.qlora_quant_type!r} (nf4 | fp4)")
        if self.num_learnable_im_end < 0:
            raise ConfigError("finetune.num_learnable_im_end: must be >= 0")


@dataclass
class FinetuneModelConfig(BackboneConfig):
    pretrained_model_name_or_path: str = "tencent/WeDLM-8B-Instruct"
    pretrained_local_dir: str = "./local_models/wedlm-8b-instruct"
    max_seq_len: int = 2048  # tokens per row (data.max_seq_len may not exceed it)


@dataclass
class FinetuneDataConfig(DataConfig):
    latent_dim: Optional[int] = None  # SFT records carry no latent
    max_seq_len: int = 2048


@dataclass
class FinetuneRunConfig(RunConfig):
    objective: str = "wedlm_finetune"
    model: FinetuneModelConfig = field(default_factory=FinetuneModelConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    data: FinetuneDataConfig = field(default_factory=FinetuneDataConfig)

    def check(self) -> None:
        super().check()
        f = self.finetune
        if self.data.latent_dim is not None:
            raise ConfigError("data.latent_dim: SFT records carry no latent; leave it null")
        if f.method is Method.full and self.model.pretrained_model_dtype != "float32" \
                and self.training.dtype.name == "bf16":
            raise ConfigError("model.pretrained_model_dtype: full fine-tuning trains fp32 master weights under bf16 "
                              "autocast (training.dtype=bf16); load the backbone in float32")
        if f.method is Method.qlora and self.training.parallelism.name == "fsdp":
            raise ConfigError("training.parallelism: QLoRA's 4-bit base is not sharded; use ddp (or finetune.method="
                              "lora / full with fsdp)")
