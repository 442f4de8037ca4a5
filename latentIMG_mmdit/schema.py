"""The image MMDiT's config schema: ``model``, ``loss``, ``sample`` and the image ``data`` keys.

Defaults are the original's full-size recipe (256 px, 16 px patches, widths 768 / 512, depth 12,
8 heads of 64, 4 residual streams, captions of 128 tokens); YAML files state what a recipe changes.
Two registered objectives share it: ``image_continuous`` and ``image_discrete``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Optional

from mmldlm.config import PATH, ConfigError, DataConfig, RunConfig

MODES = ("t2i", "i2t", "joint")


class Mode(Enum):
    t2i = "t2i"  # clean caption as condition; the image is diffused (its loss only)
    i2t = "i2t"  # clean image as condition; the caption is masked (MDLM's loss only)
    joint = "joint"  # both diffused at independent noise levels, both losses
    mixed = "mixed"  # each row draws one of the three from loss.mode_weights (keyed: the same on any rank)


class MaskSchedule(Enum):
    # how the mask level of a row is drawn (text, and the discrete variant's image codes). Each
    # carries its own ELBO weight m'(u) / m(u), so the loss is MDLM's bound under any of them.
    linear = "linear"  # m(u) = u: MDLM's log-linear schedule, weight 1 / t
    cosine = "cosine"  # m(u) = 1 - cos(pi u / 2): more rows lightly masked
    sigmoid = "sigmoid"  # m(u) = sigmoid(8 (u - 1/2)) rescaled to [0, 1]: more rows near half masked


@dataclass
class ImageModelConfig:
    image_size: int = 256
    patch_size: int = 16
    dim_text: int = 768  # width of the caption stream (any value: nothing pretrained is attached)
    dim_image: int = 512  # width of the image stream
    dim_cond: int = 256  # width of the time conditioning
    depth: int = 12
    heads: int = 8
    dim_head: int = 64
    num_residual_streams: int = 4  # > 1: mmdit's hyper-connections
    max_seq_len: int = 128  # caption positions
    dropout: float = 0.0
    flash_attn: bool = True  # torch's scaled_dot_product_attention
    # continuous variant: Gaussian diffusion of the patches (variance preserving)
    timesteps: int = 1000
    beta_schedule: str = "cosine"  # cosine | linear
    parameterization: str = "v_param"  # epsilon | x0 | v_param
    # discrete variant: k-means codes of the patches (python -m latentIMG_mmdit.build_codebook)
    codebook: Optional[str] = field(default=None, metadata=PATH)
    codebook_size: int = 512
    t_eps: float = 1e-4

    def check(self) -> None:
        if self.image_size < 1 or self.patch_size < 1 or self.image_size % self.patch_size:
            raise ConfigError(f"model.image_size ({self.image_size}) must be a positive multiple of "
                              f"model.patch_size ({self.patch_size})")
        for key in ("dim_text", "dim_image", "dim_cond", "depth", "heads", "dim_head", "num_residual_streams",
                    "max_seq_len", "timesteps", "codebook_size"):
            if getattr(self, key) < 1:
                raise ConfigError(f"model.{key}: must be >= 1, got {getattr(self, key)}")
        if self.beta_schedule not in ("cosine", "linear"):
            raise ConfigError(f"model.beta_schedule: {self.beta_schedule!r} (cosine | linear)")
        if self.parameterization not in ("epsilon", "x0", "v_param"):
            raise ConfigError(f"model.parameterization: {self.parameterization!r} (epsilon | x0 | v_param)")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"model.dropout: must be in [0, 1), got {self.dropout}")
        if not 0 < self.t_eps < 1:
            raise ConfigError("model.t_eps: must be in (0, 1)")


def num_patches(m) -> int:
    """Image tokens of a ``model`` section (a DictConfig or the dataclass)."""
    return (m.image_size // m.patch_size) ** 2


def patch_dim(m) -> int:
    """Pixels per patch: ``p * p * 3``."""
    return 3 * m.patch_size ** 2


def _default_weights() -> dict[str, float]:
    # caption -> image is the slow direction (on shapes, image -> caption reaches F1 0.9 in 250 steps
    # while caption -> image needs ~1000); joint rows train unconditional generation of both
    return {"t2i": 0.6, "i2t": 0.3, "joint": 0.1}


@dataclass
class ImageLossConfig:
    mode: Mode = Mode.mixed
    mode_weights: dict[str, float] = field(default_factory=_default_weights)  # mode=mixed: per-row odds
    text_weight: float = 1.0
    image_weight: float = 1.0  # the original's --image-loss-weight
    mask_schedule: MaskSchedule = MaskSchedule.linear
    # t2i rows whose caption is fully masked instead (the null caption classifier-free guidance
    # contrasts with, sample.guidance); no text loss on them: the caption is a dropped condition
    caption_drop: float = 0.1

    def check(self) -> None:
        for k, w in self.mode_weights.items():
            if k not in MODES or w < 0:
                raise ConfigError(f"loss.mode_weights.{k}: modes are {MODES}, weights >= 0")
        if self.mode is Mode.mixed and not any(self.mode_weights.values()):
            raise ConfigError(f"loss.mode_weights: mode=mixed needs a positive weight for one of {MODES}")
        if not 0 <= self.caption_drop < 1:
            raise ConfigError(f"loss.caption_drop: need 0 <= p < 1, got {self.caption_drop}")
        if self.text_weight < 0 or self.image_weight < 0:
            raise ConfigError("loss.text_weight / loss.image_weight: must be >= 0")


@dataclass
class ImageSampleConfig:
    t2i_steps: int = 50  # DDIM steps (continuous) / unmasking steps (discrete) of caption -> image
    i2t_steps: int = 0  # unmasking steps of image -> caption; 0 = one per caption position
    temperature: float = 1.0  # of every categorical draw (captions, image codes); 0 = argmax
    guidance: float = 0.0  # classifier-free guidance of caption -> image (needs loss.caption_drop > 0)
    eval_batches: int = 1  # eval batches that also get sampled metrics (probe, caption F1); 0 = off

    def check(self) -> None:
        if self.t2i_steps < 1 or self.i2t_steps < 0 or self.eval_batches < 0:
            raise ConfigError("sample: need t2i_steps >= 1, i2t_steps >= 0, eval_batches >= 0")
        if self.temperature < 0 or self.guidance < 0:
            raise ConfigError("sample.temperature / sample.guidance: must be >= 0")


@dataclass
class ImageDataConfig(DataConfig):
    latent_dim: Optional[int] = None  # records carry an image, not a latent
    # horizontal flips, keyed by (seed, step, record). Off by default: a flip turns "left of" into
    # "right of", so it is only for captions without left and right
    random_flip: bool = False


@dataclass
class ImageRunConfig(RunConfig):
    objective: str = "image_continuous"
    data: ImageDataConfig = field(default_factory=ImageDataConfig)
    model: ImageModelConfig = field(default_factory=ImageModelConfig)
    loss: ImageLossConfig = field(default_factory=ImageLossConfig)
    sample: ImageSampleConfig = field(default_factory=ImageSampleConfig)

    def check(self) -> None:
        super().check()
        if self.data.latent_dim is not None:
            raise ConfigError("data.latent_dim: image records carry no latent; leave it null")
        if self.data.wrap:
            raise ConfigError("data.wrap: image/caption rows are records; packing does not apply")
        if self.data.dataset_name not in (None, "json"):
            raise ConfigError("data.dataset_name: image records come from JSON files ({split}_data.json)")


@dataclass
class DiscreteImageRunConfig(ImageRunConfig):
    objective: str = "image_discrete"

    # model.codebook is a source (latentIMG_mmdit.objective.codebook_source): required to train,
    # carried by checkpoints, not needed to estimate
