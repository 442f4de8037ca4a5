"""The WeDLM latent bridge: latent -> prefix -> text (l2t) and text -> pooled hidden -> latent (t2l).

- ``latent_prefix``: latent ``[B, D]`` -> ``latent_prefix_len`` input embeddings (an MLP); with
  ``prefix_match_embedding_scale`` each embedding is RMS-normalised and scaled to the RMS of the
  backbone's token embeddings, so the prefix enters at the scale the backbone expects.
- l2t: ``[prefix; text]`` through the causal LM; ``text_loss`` is the next-token CE over text
  positions only (the last prefix position predicts the first token; pads are -100); an EOS is
  appended after the last real token so the model learns where to stop.
- ``t2l_head``: the last hidden layer pooled over real tokens (``last`` | ``mean``) -> MLP ->
  latent; ``latent_loss`` is MSE, ``latent_cos`` logged.
- Latents are multiplied by ``model.latent_scale`` where the heads meet them (the prefix MLP's
  input, the t2l head's target), and divided back out of what ``encode_text`` returns. Unit-norm
  latents (E5, Qwen, MiniLM) have per-dimension std 1/sqrt(D): unscaled, the latent MSE of
  ``task=joint`` was ~3e-4 of the text CE and trained nothing; sqrt(D) makes it ~1.
- Batches of a left-padding tokenizer are moved to right padding first (:func:`right_pad`): the
  backbone numbers positions from the first column, and the EOS goes after the last real token.
- What trains is decided once, at build: the heads of the task (t2l: t2l_head; l2t:
  latent_prefix; joint: both), LoRA adapters when ``model.lora_r > 0``, the backbone only when
  ``freeze_backbone=false`` (the LM head then follows ``freeze_lm_head``).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import nn

from mmldlm.config import ConfigError, RunConfig, TrainingConfig, require_fraction, require_min, require_positive
from mmldlm.data.collate import mean_latent
from mmldlm.heads import head_loss, token_ce
from mmldlm.nn import global_rms, pool
from mmldlm.objective import Objective, register
from mmldlm.sources import SourceError
from mmldlm.sources.cli import policy_of
from mmldlm.sources.weights import add_lora
from mmldlm.train.rebuild import rebuild_from_checkpoint
from wedlm_bridge.backbone import BackboneConfig, backbone_sources, build_backbone

CONFIGS = Path(__file__).resolve().parent / "configs"

log = logging.getLogger("mm_ldlm.bridge")


class Task(Enum):
    t2l = "t2l"
    l2t = "l2t"
    joint = "joint"


class Pooling(Enum):
    last = "last"
    mean = "mean"


@dataclass
class BridgeModelConfig(BackboneConfig):
    latent_dim: int = 1024
    latent_prefix_len: int = 8
    prefix_match_embedding_scale: bool = True
    latent_pooling: Pooling = Pooling.last
    max_seq_len: int = 1024  # text tokens per record (data.max_seq_len may not exceed it)
    latent_scale: float = 32.0  # sqrt(latent_dim) for unit-norm latents; 1.0 for SONAR
    freeze_backbone: bool = True
    freeze_lm_head: bool = True
    lora_r: int = 0  # > 0: LoRA adapters on the backbone (peft)
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    lora_target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])

    def check(self) -> None:
        super().check()
        for key in ("latent_dim", "latent_prefix_len", "max_seq_len"):
            if getattr(self, key) < 1:
                raise ConfigError(f"model.{key}: must be >= 1")
        if not self.latent_scale > 0:
            raise ConfigError("model.latent_scale: must be > 0 (sqrt(latent_dim) for L2-normalised latents)")
        if self.lora_r < 0:
            raise ConfigError("model.lora_r: must be >= 0 (0 = no adapters)")
        require_positive("model", self, "lora_alpha")
        require_fraction("model", self, "lora_dropout")
        if self.lora_r and not self.freeze_backbone:
            raise ConfigError("model.lora_r: adapters train on a frozen backbone; set model.freeze_backbone=true "
                              "or model.lora_r=0 for full fine-tuning")


@dataclass
class BridgeTrainingConfig(TrainingConfig):
    task: Task = Task.t2l
    text_loss_weight: float = 1.0
    latent_loss_weight: float = 1.0

    def check(self) -> None:
        super().check()
        require_min("training", self, text_loss_weight=0.0, latent_loss_weight=0.0)


@dataclass
class BridgeRunConfig(RunConfig):
    objective: str = "bridge"
    training: BridgeTrainingConfig = field(default_factory=BridgeTrainingConfig)
    model: BridgeModelConfig = field(default_factory=BridgeModelConfig)

    def check(self) -> None:
        if self.data.latent_dim != self.model.latent_dim:
            raise ConfigError(f"data.latent_dim ({self.data.latent_dim}) != model.latent_dim ({self.model.latent_dim})")


def right_pad(ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's real tokens moved to the front, in order, padding to the end (a no-op for
    right-padded batches). Left padding would shift the backbone's positions (they count from
    the first column) and put an appended EOS on a real token."""
    mask = mask.bool()
    if (mask[:, 1:] <= mask[:, :-1]).all():
        return ids, mask
    order = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)
    return ids.gather(1, order), mask.gather(1, order)


def shifted_text_ce(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Next-token CE and accuracy: position i predicts labels[i + 1]; -100 never counts."""
    pred, tgt = logits[:, :-1].float(), labels[:, 1:]
    valid = tgt != -100
    loss = F.cross_entropy(pred.reshape(-1, pred.shape[-1]), tgt.reshape(-1), ignore_index=-100)
    acc = (pred.argmax(-1) == tgt)[valid].float().mean() if valid.any() else torch.zeros((), device=logits.device)
    return loss, acc


def _shifted_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(next-token CE nats per row, scored tokens per row)."""
    pred, tgt = logits[:, :-1].float(), labels[:, 1:]
    nll = F.cross_entropy(pred.flatten(0, 1), tgt.flatten(), ignore_index=-100, reduction="none").view_as(tgt)
    return nll.sum(1), (tgt != -100).sum(1)


class TextCE(NamedTuple):
    loss: torch.Tensor  # the mean next-token CE over the text positions
    acc: torch.Tensor  # next-token accuracy there
    nats: torch.Tensor  # [B] the CE summed per row (detached on the head path)
    tokens: torch.Tensor  # [B] text positions scored per row


def _mlp(d_in: int, hidden: int, d_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, hidden), nn.SiLU(), nn.Linear(hidden, d_out))


NO_HARNESS = ("the bridge decodes a sentence latent into text, and lm-eval's requests carry no latent; its frozen "
              "backbone is a stock causal LM: evaluate that directly (lm-eval's hf model)")


class BridgeObjective(Objective):
    def __init__(self, cfg, tokenizer, backbone: nn.Module):
        super().__init__()
        m, t = cfg.model, cfg.training
        self.task, self.pooling = t.task.name, m.latent_pooling.name
        self.tw, self.lw, self.P = t.text_loss_weight, t.latent_loss_weight, m.latent_prefix_len
        self.latent_scale = float(m.latent_scale)
        self.eos_id = tokenizer.eos_token_id
        # where sampling stops: the EOS the decoder learns (with_eos), else a BERT vocabulary's closing [SEP]
        self.stop_id = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
        self.dtype, self.hub_id = m.pretrained_model_dtype, m.pretrained_model_name_or_path  # for exports
        h = backbone.config.hidden_size
        positions = m.max_seq_len + m.latent_prefix_len + 1  # [prefix; text; EOS]
        limit = getattr(backbone.config, "max_position_embeddings", None)
        if limit is not None and positions > limit:
            raise ConfigError(f"model.max_seq_len: {m.max_seq_len} text tokens + {m.latent_prefix_len} prefix + EOS "
                              f"exceed the backbone's {limit} positions")
        backbone.requires_grad_(not m.freeze_backbone)
        if not m.freeze_backbone:
            backbone.get_output_embeddings().requires_grad_(not m.freeze_lm_head)
        if m.activation_checkpointing:
            backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            backbone.config.use_cache = False
            if m.freeze_backbone and not m.lora_r:
                # transformers makes the input embeddings require grad with checkpointing (for adapters);
                # nothing in a frozen backbone needs it (the prefix brings its own), and the t2l pass
                # would send backward through the whole backbone for nothing (the estimator: 85
                # instead of 32 TFLOP per step at 8B, t2l batch 2 x 1024)
                backbone.disable_input_require_grads()
        if m.lora_r:
            from peft import LoraConfig

            backbone = add_lora(backbone, LoraConfig(r=m.lora_r, lora_alpha=m.lora_alpha, lora_dropout=m.lora_dropout,
                                                     target_modules=list(m.lora_target_modules)))
        self.backbone = backbone
        self.register_buffer("emb_rms", torch.ones(()), persistent=False)  # the embeddings' RMS, once loaded
        self.match_scale = m.prefix_match_embedding_scale
        self.latent_prefix = _mlp(m.latent_dim, h, self.P * h)
        self.t2l_head = _mlp(h, h, m.latent_dim)
        self.latent_prefix.requires_grad_(self.task in ("l2t", "joint"))
        self.t2l_head.requires_grad_(self.task in ("t2l", "joint"))

    # -- pieces shared by training and the CLIs --------------------------------------------
    def prefix_embeds(self, latent: torch.Tensor) -> torch.Tensor:
        """``latent [B, D]`` in data units -> ``[B, P, hidden]`` input embeddings."""
        p = self.latent_prefix(latent.float() * self.latent_scale).view(latent.shape[0], self.P, -1)
        if self.match_scale:
            p = p * torch.rsqrt(p.pow(2).mean(-1, keepdim=True) + 1e-6) * self.emb_rms
        return p

    def _lm_inputs(self, prefix: Optional[torch.Tensor], ids: torch.Tensor, mask: torch.Tensor):
        """(input embeddings of [prefix; text], its mask, labels with -100 on the prefix and pads)."""
        embeds = self.backbone.get_input_embeddings()(ids)
        labels = ids.masked_fill(~mask.bool(), -100)
        if prefix is not None:
            embeds = torch.cat([prefix.to(embeds.dtype), embeds], 1)
            B, P = prefix.shape[:2]
            mask = torch.cat([torch.ones(B, P, dtype=mask.dtype, device=mask.device), mask], 1)
            labels = torch.cat([torch.full((B, P), -100, dtype=labels.dtype, device=labels.device), labels], 1)
        return embeds, mask, labels

    def lm_logits(self, prefix: Optional[torch.Tensor], ids: torch.Tensor, mask: torch.Tensor):
        """(logits over [prefix; text], labels with -100 on the prefix and pads)."""
        embeds, mask, labels = self._lm_inputs(prefix, ids, mask)
        out = self.backbone(inputs_embeds=embeds, attention_mask=mask.long(), use_cache=False)
        return out.logits, labels

    def text_ce(self, prefix: Optional[torch.Tensor], ids: torch.Tensor, mask: torch.Tensor) -> TextCE:
        """The next-token CE over the text positions (module docstring) through the LM head a chunk
        of tokens at a time (``mmldlm.heads``: no ``[B, L, V]`` logits: 5 GiB in float32 at
        8 x 1,041 positions and Qwen's 151,936 rows). Under FSDP the head is sharded outside the
        backbone's forward: there it takes the logits (:func:`shifted_text_ce`)."""
        from torch.distributed.tensor import DTensor

        head = self.backbone.get_output_embeddings()
        if isinstance(head.weight, DTensor):
            logits, labels = self.lm_logits(prefix, ids, mask)
            return TextCE(*shifted_text_ce(logits, labels), *_shifted_nll(logits, labels))
        embeds, mask, labels = self._lm_inputs(prefix, ids, mask)
        hidden = self._final_hidden(inputs_embeds=embeds, attention_mask=mask.long())
        tgt = labels[:, 1:]
        valid = tgt != -100
        res = head_loss(hidden[:, :-1][valid], head.weight, head.bias, token_ce, tgt[valid])
        n = valid.sum()
        nll = torch.zeros(valid.shape, device=valid.device).masked_scatter(valid, res.per_token["loss"])
        return TextCE(res.loss / n.clamp_min(1), res.per_token["correct"].sum() / n.clamp_min(1), nll.sum(1),
                      valid.sum(1))

    def _final_hidden(self, **inputs) -> torch.Tensor:
        """The backbone's last hidden states (after its final norm: what the LM head reads), from its
        own forward (an FSDP unit gathers as usual) computing the logits of one position only. The
        final norm's output is caught by a hook: ``output_hidden_states`` would put a context-variable
        read inside every decoder layer, a graph break under ``training.compile_model``."""
        causal = self.backbone.get_base_model() if hasattr(self.backbone, "get_base_model") else self.backbone
        caught = []
        hook = causal.model.norm.register_forward_hook(lambda module, args, out: caught.append(out))
        try:
            self.backbone(**inputs, use_cache=False, logits_to_keep=1)
        finally:
            hook.remove()
        return caught[-1]

    def _encode_scaled(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        ids, mask = right_pad(ids, mask)
        hidden = self._final_hidden(input_ids=ids, attention_mask=mask.long())
        return self.t2l_head(pool(hidden, mask, self.pooling).float())

    def encode_text(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Text -> latent ``[B, D]`` in data units."""
        return self._encode_scaled(ids, mask) / self.latent_scale

    def with_eos(self, ids: torch.Tensor, mask: torch.Tensor):
        """Append EOS after each text's last real token (the decoder must learn to stop); no-op
        without an EOS token. Expects right padding (:func:`right_pad`)."""
        if self.eos_id is None:
            return ids, mask
        B = ids.shape[0]
        ids = torch.cat([ids, ids.new_zeros(B, 1)], 1)
        mask = torch.cat([mask, mask.new_zeros(B, 1)], 1)
        end = mask.long().sum(1)
        ids[torch.arange(B), end] = self.eos_id
        mask[torch.arange(B), end] = True
        return ids, mask

    # -- training --------------------------------------------------------------------------
    def forward(self, batch: dict, step: int):
        ids, mask = right_pad(batch["input_ids"], batch["attention_mask"])
        z = mean_latent(batch).float()
        loss, metrics = torch.zeros((), device=ids.device), {}
        if self.task in ("l2t", "joint"):
            i2, m2 = self.with_eos(ids, mask)
            text = self.text_ce(self.prefix_embeds(z), i2, m2)
            loss = loss + self.tw * text.loss
            metrics.update(text_loss=text.loss.detach(), text_acc=text.acc.detach())
        if self.task in ("t2l", "joint"):
            pred = self._encode_scaled(ids, mask)
            latent_loss = F.mse_loss(pred, z * self.latent_scale)  # in scaled units: ~1 for a blind guess
            loss = loss + self.lw * latent_loss
            metrics.update(latent_loss=latent_loss.detach(),
                           latent_cos=F.cosine_similarity(pred.detach(), z, dim=-1).mean())
        return loss, metrics

    # -- evaluation (mmldlm.eval: the loss and generate CLIs) --------------------------------
    nelbo_needs_t = False  # the decoder is autoregressive: its NLL is exact

    def _decoder_trained(self) -> None:
        if self.task == "t2l":
            raise ValueError("this is a t2l bridge: its latent prefix (the text decoder's input) never trained; "
                             "score or sample l2t and joint runs")

    def _text_nll(self, ids, mask, latent):
        """(nats [B], tokens [B]) of each text and its EOS given the latent's prefix."""
        i2, m2 = self.with_eos(ids, mask)
        text = self.text_ce(self.prefix_embeds(latent), i2, m2)
        return text.nats, text.tokens

    def nelbo(self, batch: dict, t, k: int):
        """The exact NLL of each text (with its EOS) given its latent, and ``latent_gain``: the NLL
        under the previous record's latent minus under its own, nats per token (how much the
        decoder reads the latent)."""
        from mmldlm.eval.likelihood import Nelbo

        self._decoder_trained()
        ids, mask = right_pad(batch["input_ids"], batch["attention_mask"])
        z = mean_latent(batch).float()
        nats, tokens = self._text_nll(ids, mask, z)
        if ids.shape[0] < 2:
            return Nelbo(nats, tokens, {})
        other, _ = self._text_nll(ids, mask, z.roll(1, 0))
        return Nelbo(nats, tokens, {"latent_gain": other - nats})

    def sampler_name(self, requested: str) -> str:
        return "ar from the latent prefix (kv cache)"

    def conditional_nelbo(self, batch: dict, t, k: int):
        raise ValueError(NO_HARNESS)

    def complete(self, context, length, **_):
        raise ValueError(NO_HARNESS)

    @torch.no_grad()
    def generate(self, num_samples: int, length: int, temperature: float = 1.0, top_p: float = 1.0,
                 generator=None, latents=None, **_) -> torch.Tensor:
        """``[num_samples, length]`` ids decoded from ``latents [num_samples, D]`` (data units):
        the prefix, then ancestral draws with the KV cache until EOS (EOS after it)."""
        from mmldlm.eval.samplers import ar_sample

        self._decoder_trained()
        if latents is None:
            raise ValueError("the bridge decodes latents: pass latents=FILE.npy ([N, latent_dim])")
        if latents.ndim == 3:  # [N, K, D] chunk latents: their mean, as in training (mean_latent)
            latents = latents.mean(1)
        if self.stop_id is None:
            raise ValueError("the tokenizer has neither an EOS nor a SEP token to stop sampling at")
        pad = self.backbone.config.pad_token_id
        excluded = [] if pad in (None, self.stop_id) else [pad]
        return ar_sample(self.backbone, num_samples, length, None, self.stop_id, temperature=temperature, top_p=top_p,
                         generator=generator, excluded=excluded, prefix=self.prefix_embeds(latents[:num_samples]),
                         device=latents.device)

    def flops_per_token(self) -> float:
        """Model FLOPs per text token: forward 2N everywhere; backward 2N through the backbone
        whenever something before its output trains (the prefix, adapters), + 2N for weights that train."""
        n_bb = sum(p.numel() for p in self.backbone.parameters())
        n_train_bb = sum(p.numel() for p in self.backbone.parameters() if p.requires_grad)
        total = 0.0
        if self.task in ("l2t", "joint"):
            total += 4 * n_bb + 2 * n_train_bb
        if self.task in ("t2l", "joint"):
            total += 2 * n_bb + (2 * n_bb + 2 * n_train_bb if n_train_bb else 0)
        return total

    def shard_units(self) -> list[nn.Module]:
        """FSDP units: the input embeddings (called directly, to splice the prefix in; they gather
        their own weights then), the backbone's decoder layers (LoRA-wrapped or not), the backbone."""
        emb, head = self.backbone.get_input_embeddings(), self.backbone.get_output_embeddings()
        tied = head is not None and head.weight is emb.weight  # a tied pair must stay in one unit
        layers = [m for m in self.backbone.modules() if type(m).__name__.endswith("DecoderLayer")]
        return [*([] if tied else [emb]), *layers, self.backbone]

    def sources_loaded(self) -> None:
        self.emb_rms.copy_(global_rms(self.backbone.get_input_embeddings().weight))

    def export_artifacts(self, out: Path, sources: dict[str, dict]) -> list[str]:
        """A backbone that trained (fully, LoRA, or carried from an earlier stage) as a stock model
        directory ``backbone/`` (+ ``adapter/`` for LoRA): the heads alone would lose it."""
        from wedlm_bridge.artifacts import export_lm

        trained = [k[len("backbone."):] for k in self.trained_keys if k.startswith("backbone.")]
        return export_lm(self.backbone, trained, sources.get("backbone"), out, "backbone", self.dtype, self.hub_id)


def build(cfg, sources) -> BridgeObjective:
    return BridgeObjective(cfg, sources.tokenizer, build_backbone(sources, cfg.model.pretrained_model_dtype))


def load_bridge(checkpoint: str, device: str = "cpu", policy=None):
    """(objective in eval mode, tokenizer, config) from a bridge run directory or checkpoint,
    under the user's :class:`~mmldlm.train.checkpointing.LoadPolicy` (backbone location,
    remote code, downloads: from the command line, never from the file)."""
    return rebuild_from_checkpoint(checkpoint, device, policy, expect="bridge")


def load_bridge_for_cli(args, device: str):
    """``load_bridge`` with the flags of :func:`mmldlm.sources.cli.add_policy_args`; refusals end in one line."""
    from mmldlm.prefetch import PrefetchError

    try:
        return load_bridge(args.checkpoint, device, policy_of(args))
    except (SourceError, ConfigError, PrefetchError) as e:
        raise SystemExit(f"error: {e}") from None


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


register("bridge", BridgeRunConfig, build, CONFIGS, sources=backbone_sources,
         metrics={"loss": ("loss", "text_loss", "latent_loss"), "accuracy": ("text_acc",), "cosine": ("latent_cos",)},
         clis=("python -m wedlm_bridge.decode|encode|export", "python baseline/eval/generate_samples.py",
               "python baseline/eval/loss.py"))
