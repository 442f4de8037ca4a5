"""Config schemas of the text-diffusion baselines: one per objective, each with only the keys its
objective reads. Defaults are MDLM/GIDD's small recipe; the YAML files state what a recipe changes.

``loss.loss_type`` is the original's key: it names the objective the config trains and must
agree with it (``--config-name`` chooses the objective; a mismatch is an error, not a silent pick).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Optional

from mmldlm.config import PATH, ConfigError, RunConfig, TrainingConfig, require_fraction, require_min


class LossType(Enum):
    mdlm = "mdlm"
    gidd = "gidd"
    ar = "ar"
    hdlm = "hdlm"
    mdlm_latent = "mdlm_latent"
    mdlm_cross_attention = "mdlm_cross_attention"


class LossWeighting(Enum):
    none = "none"  # the ELBO's own weights
    clip = "clip"  # ELBO weights clamped to [min_loss_weight, max_loss_weight]
    dynamic = "dynamic"  # GIDD+: 2 on masks, 1 on uniform noise, ~0 on clean tokens (clamped)


class ConditioningType(Enum):
    adaln = "adaln"
    cross_attention = "cross_attention"


@dataclass
class ARModelConfig:
    """A Llama of the DiT's sizes (``model=tiny|small|base|1B`` set the first three)."""

    hidden_size: int = 768
    n_blocks: int = 12
    n_heads: int = 12
    max_seq_len: int = 512
    dropout: float = 0.0

    def check(self) -> None:
        require_min("model", self, hidden_size=1, n_blocks=1, n_heads=1, max_seq_len=2)
        if self.hidden_size % self.n_heads or (self.hidden_size // self.n_heads) % 2:
            raise ConfigError(f"model.hidden_size ({self.hidden_size}) / model.n_heads ({self.n_heads}) must be an "
                              "even integer head dimension (rotary)")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"model.dropout: need 0 <= p < 1, got {self.dropout}")


@dataclass
class DiTModelConfig(ARModelConfig):
    cond_dim: int = 128
    time_conditioning: bool = True  # false: the time embedder sees 0 (MDLM's 23.05 vs 23.21 PPL)
    t_eps: float = 1e-4  # t is drawn in [t_eps, 1] (MDLM) or [t_eps, 1 - t_eps] (GIDD, HDLM)

    def check(self) -> None:
        super().check()
        require_min("model", self, cond_dim=1)
        if not 0 < self.t_eps < 0.5:
            raise ConfigError(f"model.t_eps: need 0 < eps < 0.5, got {self.t_eps}")


@dataclass
class GiddModelConfig(DiTModelConfig):
    p_uniform: float = 0.0  # share of uniform-noise tokens at t = 1/2 (0: mask-only)
    gamma: float = 1.0

    def check(self) -> None:
        super().check()
        require_fraction("model", self, "p_uniform")
        require_min("model", self, gamma=0.0)


@dataclass
class HdlmModelConfig(DiTModelConfig):
    cluster_size: int = 64  # n: clusters of the token vocabulary
    gamma: float = 1.0
    p_perturb: float = 0.0  # 1 - xi: mass of the cluster step moved to wrong clusters
    # the cluster dict: int64 [tokenizer vocab] of cluster ids 0..n-1 (.pt or .npy), e.g. from
    # python -m baseline.build_clusters
    cluster_dict_path: Optional[str] = field(default=None, metadata=PATH)

    def check(self) -> None:
        super().check()
        if self.cluster_size < 1:
            raise ConfigError(f"model.cluster_size: need >= 1, got {self.cluster_size}")
        require_min("model", self, gamma=0.0)
        require_fraction("model", self, "p_perturb")
        if self.cluster_dict_path is None:
            raise ConfigError("model.cluster_dict_path: HDLM needs a cluster dict for the tokenizer's vocabulary; "
                              "build one offline with python -m baseline.build_clusters --model DIR "
                              f"--n-clusters {self.cluster_size} --out FILE.pt")


@dataclass
class LatentModelConfig(DiTModelConfig):
    use_latent_conditioning: bool = True  # false: the same MDLM on the same records, blind to the latent
    conditioning_type: ConditioningType = ConditioningType.adaln
    latent_dim: int = 768
    latent_tokens: int = 1  # cross-attention: key slots expanded from each latent vector
    cross_attention_frequency: int = 2  # a cross-attention sublayer in blocks 0, f, 2f, ...
    predict_latents: bool = False  # a head regresses the latent from the text's final features

    def check(self) -> None:
        super().check()
        if self.latent_tokens < 1 or self.cross_attention_frequency < 1:
            raise ConfigError("model.latent_tokens and model.cross_attention_frequency must be >= 1")


@dataclass
class LossConfig:
    loss_type: LossType = LossType.mdlm


@dataclass
class WeightedLossConfig(LossConfig):
    loss_weighting: LossWeighting = LossWeighting.dynamic
    min_loss_weight: float = 0.0
    max_loss_weight: float = 2.0

    def check(self) -> None:
        if not 0 <= self.min_loss_weight <= self.max_loss_weight:
            raise ConfigError("loss.min_loss_weight / loss.max_loss_weight: need 0 <= min <= max")


@dataclass
class HdlmLossConfig(WeightedLossConfig):
    loss_weighting: LossWeighting = LossWeighting.clip
    simplified: bool = False  # MDLM-like bound with the xi-corrected cluster term (needed for p_perturb > 0)
    force_transitting_within: bool = True  # a cluster token's word is predicted within its cluster


@dataclass
class LatentLossConfig(LossConfig):
    latent_prediction_weight: float = 0.1  # MSE of the latent head (model.predict_latents)


@dataclass
class BaselineTrainingConfig(TrainingConfig):
    low_discrepancy_sampling: bool = True  # t_i = (i / B + u) mod 1 within each rank's batch


def _agree(cfg) -> None:
    if cfg.loss.loss_type.value != cfg.objective:
        raise ConfigError(f"loss.loss_type: {cfg.loss.loss_type.value!r} but this config trains {cfg.objective!r}; "
                          f"choose the objective with --config-name {cfg.loss.loss_type.value} (or its variants)")


@dataclass
class MDLMRunConfig(RunConfig):
    objective: str = "mdlm"
    training: BaselineTrainingConfig = field(default_factory=BaselineTrainingConfig)
    model: DiTModelConfig = field(default_factory=DiTModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)

    def check(self) -> None:
        super().check()
        _agree(self)
        if self.data.latent_dim is not None:
            raise ConfigError(f"data.latent_dim: {self.objective} reads no latents; set it to null")


@dataclass
class GiddRunConfig(MDLMRunConfig):
    objective: str = "gidd"
    model: GiddModelConfig = field(default_factory=GiddModelConfig)
    loss: WeightedLossConfig = field(default_factory=lambda: WeightedLossConfig(LossType.gidd))


@dataclass
class HdlmRunConfig(MDLMRunConfig):
    objective: str = "hdlm"
    model: HdlmModelConfig = field(default_factory=HdlmModelConfig)
    loss: HdlmLossConfig = field(default_factory=lambda: HdlmLossConfig(LossType.hdlm))

    def check(self) -> None:
        super().check()
        if self.model.p_perturb > 0 and not self.loss.simplified:
            raise ConfigError(f"model.p_perturb={self.model.p_perturb} (xi < 1) needs loss.simplified=true: the strict "
                              "ELBO is defined for xi = 1 only")


@dataclass
class ARRunConfig(MDLMRunConfig):
    objective: str = "ar"
    training: TrainingConfig = field(default_factory=TrainingConfig)  # no t to sample
    model: ARModelConfig = field(default_factory=ARModelConfig)
    loss: LossConfig = field(default_factory=lambda: LossConfig(LossType.ar))


@dataclass
class LatentRunConfig(MDLMRunConfig):
    objective: str = "mdlm_latent"
    model: LatentModelConfig = field(default_factory=LatentModelConfig)
    loss: LatentLossConfig = field(default_factory=lambda: LatentLossConfig(LossType.mdlm_latent))

    def check(self) -> None:
        RunConfig.check(self)
        _agree(self)
        if self.data.latent_dim != self.model.latent_dim:
            raise ConfigError(f"data.latent_dim ({self.data.latent_dim}) != model.latent_dim ({self.model.latent_dim})")
