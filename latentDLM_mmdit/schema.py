"""The MMDiT family's config schema: ``model``, ``loss``, ``training`` (mode schedule) and ``sample``.

Defaults here are the full-size recipe; YAML files state only what a recipe changes.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from latentDLM_mmdit.models.multimodal_mmdit import MMDiTModelConfig
from mmldlm.config import ConfigError, RunConfig, TrainingConfig, require_min, require_positive

BASE_MODES = ("l2t", "t2l", "unconditional")


class LossType(Enum):
    unconditional = "unconditional"
    l2t = "l2t"
    t2l = "t2l"
    sequential = "sequential"
    random = "random"
    cycle_vae = "cycle_vae"


class CycleSampling(Enum):
    argmax = "argmax"
    categorical = "categorical"


class L2TSampler(Enum):
    ancestral = "ancestral"  # MDLM's: reveal with probability (t - s) / t, tokens drawn from p(x0 | x_t, z)
    confidence = "confidence"  # a heuristic: commit the most confident argmaxes (repeats tokens)


class LatentTMode(Enum):
    full = "full"  # the cycle's T2L starts from pure noise (t = T - 1)
    random = "random"  # t drawn in [cycle_latent_t_min, cycle_latent_t_max] x T


@dataclass
class MMDiTLossConfig:
    loss_type: LossType = LossType.unconditional
    latent_loss_weight: float = 1.0
    text_loss_weight: float = 1.0
    loss_scale: float = 1.0
    cycle_text_weight: float = 0.1
    cycle_text_warmup_steps: int = 0
    cycle_text_ramp_steps: int = 0
    cycle_latent_weight: float = 0.1
    cycle_latent_warmup_steps: int = 0
    cycle_latent_ramp_steps: int = 0
    cycle_latent_sampling: CycleSampling = CycleSampling.argmax
    latent_t_mode: LatentTMode = LatentTMode.full
    cycle_latent_t_min: float = 0.0
    cycle_latent_t_max: float = 1.0
    cycle_stop_grad_latent: bool = True
    # fraction of rows in the base L2T pass conditioned on the null latent (pure noise at the last
    # latent timestep, the unconditional mode's view) instead of the clean one: trains the
    # unconditional text model that classifier-free guidance (sample.l2t_guidance) contrasts with
    l2t_uncond_prob: float = 0.0

    def check(self) -> None:
        require_min("loss", self, latent_loss_weight=0.0, text_loss_weight=0.0, cycle_text_weight=0.0,
                    cycle_latent_weight=0.0, cycle_text_warmup_steps=0, cycle_latent_warmup_steps=0)
        require_positive("loss", self, "loss_scale")  # ramps <= 0 mean no ramp (the weight at once)
        if not 0 <= self.cycle_latent_t_min <= self.cycle_latent_t_max <= 1:
            raise ConfigError("loss.cycle_latent_t_min / cycle_latent_t_max: need 0 <= min <= max <= 1")
        if not 0 <= self.l2t_uncond_prob < 1:
            raise ConfigError(f"loss.l2t_uncond_prob: need 0 <= p < 1, got {self.l2t_uncond_prob}")


@dataclass
class ScheduleBlock:
    type: str = "l2t"
    steps: int = 1000


@dataclass
class MMDiTTrainingConfig(TrainingConfig):
    sequential_schedule: list[ScheduleBlock] = field(default_factory=list)
    mode_weights: dict[str, float] = field(default_factory=dict)

    def check(self) -> None:
        super().check()
        for i, b in enumerate(self.sequential_schedule):
            if b.type not in BASE_MODES or b.steps < 1:
                raise ConfigError(f"training.sequential_schedule[{i}]: type must be one of {BASE_MODES} "
                                  f"and steps >= 1, got {b.type!r} x {b.steps}")
        for k, w in self.mode_weights.items():
            if k not in BASE_MODES or w < 0:
                raise ConfigError(f"training.mode_weights.{k}: modes are {BASE_MODES}, weights >= 0")


@dataclass
class MMDiTSampleConfig:
    t2l_steps: int = 50  # DDIM steps of T2L sampling (the CLI's default)
    # DDIM steps of the round trips' T2L: 1 = the posterior mean E[x0 | text] read at t = T - 1,
    # the encoder the cycle objective trains; more steps sample a latent instead (less faithful)
    roundtrip_t2l_steps: int = 1
    l2t_steps: int = 0  # unmasking steps of L2T decoding; 0 = one per text position
    eval_roundtrip_batches: int = 1  # eval batches that also get T2L2T / L2T2L round trips; 0 = off
    # classifier-free guidance of L2T decoding: log p = (1 + w) log p(x | z) - w log p(x | null);
    # 0 = off. Needs a model trained with loss.l2t_uncond_prob > 0
    l2t_guidance: float = 0.0
    l2t_sampler: L2TSampler = L2TSampler.ancestral
    l2t_temperature: float = 1.0  # ancestral: draws from p^(1/T); 0 = argmax

    def check(self) -> None:
        if min(self.t2l_steps, self.roundtrip_t2l_steps) < 1 or self.l2t_steps < 0 or self.eval_roundtrip_batches < 0:
            raise ConfigError("sample: need t2l_steps, roundtrip_t2l_steps >= 1, l2t_steps >= 0, "
                              "eval_roundtrip_batches >= 0")
        if self.l2t_guidance < 0:
            raise ConfigError(f"sample.l2t_guidance: need w >= 0, got {self.l2t_guidance}")
        if self.l2t_temperature < 0:
            raise ConfigError(f"sample.l2t_temperature: need T >= 0, got {self.l2t_temperature}")


@dataclass
class MMDiTRunConfig(RunConfig):
    objective: str = "mmdit"
    training: MMDiTTrainingConfig = field(default_factory=MMDiTTrainingConfig)
    model: MMDiTModelConfig = field(default_factory=MMDiTModelConfig)
    loss: MMDiTLossConfig = field(default_factory=MMDiTLossConfig)
    sample: MMDiTSampleConfig = field(default_factory=MMDiTSampleConfig)

    def check(self) -> None:
        super().check()
        lt = self.loss.loss_type.name
        if lt == "sequential" and not self.training.sequential_schedule:
            raise ConfigError("training.sequential_schedule: loss_type=sequential needs a non-empty list "
                              "of {type, steps}")
        if lt == "random" and not any(self.training.mode_weights.values()):
            raise ConfigError("training.mode_weights: loss_type=random needs a positive weight for at "
                              f"least one of {BASE_MODES}")
        if self.data.latent_dim != self.model.latent_dim:
            raise ConfigError(f"data.latent_dim ({self.data.latent_dim}) != model.latent_dim "
                              f"({self.model.latent_dim})")
