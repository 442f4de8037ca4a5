"""WeDLM fine-tuning on the shared loop: WeDLM's own objective or plain causal-LM CE, full / LoRA / QLoRA.

``wedlm`` (refs/wedlm_finetune.md B.1; Tencent ``finetune/src``): the row goes in as the dual stream
[x0 | xt] (:mod:`.dual_stream`) through the stock Qwen3/Qwen2 forward, with logical position ids and
the 2-D mask as a boolean 4-D ``attention_mask`` (SDPA), so peft-wrapped projections, per-layer
activation checkpointing, DDP and FSDP all see an ordinary forward (Tencent's trainer runs its own
layer loop on the unwrapped model: no checkpointing, DDP bypassed). Losses:
- MLM: CE at the masked xt slots against the slot's own token (no shift); ``weighted``: each
  weighs 1/(gamma + eps) of its block, normalised to sum 1 over the global batch (Tencent
  normalises per rank: the same on one rank); ``uniform``: the mean;
- AR: next-token CE on x0 over answer tokens, within each conversation (Tencent's packed AR loss
  lets a conversation's last token predict the next conversation's first);
- total ``(mlm + w ar) / (1 + w)``.
``causal_lm``: the users' guide, next-token CE on the answer; it trains only WeDLM's AR half.
Only the hidden states that are scored go through the LM head (a 2 x 2048-token row at a 151k
vocabulary would otherwise hold 2.5 GB of fp32 logits).
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from mmldlm.config import ConfigError
from mmldlm.heads import head_loss, token_ce
from mmldlm.nn import rank_share
from mmldlm.objective import BatchCount, Objective, register
from mmldlm.sources.weights import add_lora
from wedlm_bridge.backbone import WEDLM_MASK_TOKEN_ID, backbone_sources, build_backbone, load_quantized
from wedlm_bridge.finetune.dual_stream import build_dual_stream, causal_mask
from wedlm_bridge.finetune.schema import FinetuneRunConfig
from wedlm_bridge.finetune.sft_data import SFT_RECORDS, SFTCollator

CONFIGS = Path(__file__).resolve().parent / "configs"


def causal_lm_of(lm: nn.Module) -> nn.Module:
    """The stock ``*ForCausalLM`` inside a peft model (its projections carry the adapters)."""
    return lm.get_base_model() if hasattr(lm, "get_base_model") else lm


def mask_token_id(config, vocab: int) -> int:
    """The backbone's ``mask_token_id`` (null in WeDLM's config.json: the engine's 151665)."""
    mask_id = getattr(config, "mask_token_id", None)
    if mask_id is None and vocab > WEDLM_MASK_TOKEN_ID:
        mask_id = WEDLM_MASK_TOKEN_ID
    if mask_id is None or not 0 <= mask_id < vocab:
        raise ConfigError(f"model.pretrained_local_dir: the backbone's config.json gives mask_token_id={mask_id}, "
                          f"not an id of its {vocab}-token vocabulary; WeDLM's objective needs its [MASK] id")
    return int(mask_id)


class FinetuneObjective(Objective):
    def __init__(self, cfg, lm: nn.Module):
        super().__init__()
        f = cfg.finetune
        self.kind = f.objective.value
        self.lm = lm
        base = causal_lm_of(lm)
        base.config._attn_implementation = "sdpa"  # the 2-D mask goes in as a boolean 4-D SDPA mask
        self.mask_id = mask_token_id(base.config, base.config.vocab_size)
        self.block_size, self.per_block, self.eps = f.block_size, f.mask_per_block, f.mask_eps
        self.weighted = f.loss_weighting.value == "weighted"
        self.ar_weight = f.ar_loss_weight if f.enable_ar_loss else 0.0
        self.seed = cfg.training.seed
        self.dtype, self.hub_id = cfg.model.pretrained_model_dtype, cfg.model.pretrained_model_name_or_path

    # -- the forward pieces --------------------------------------------------------------------
    def _hidden(self, ids, positions, mask) -> torch.Tensor:
        """Last hidden states of the base model (before the LM head) under a 4-D boolean mask."""
        out = causal_lm_of(self.lm).model(input_ids=ids, position_ids=positions, attention_mask=mask, use_cache=False)
        return out.last_hidden_state

    def _ce(self, hidden: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        """The CE (times ``weight`` per token) summed over the scored positions only (``hidden [N, H]``),
        through the LM head a chunk of tokens at a time (``mmldlm.heads``: no ``[N, V]`` logits)."""
        head = causal_lm_of(self.lm).lm_head
        return head_loss(hidden, head.weight, head.bias, token_ce, targets,
                         *([] if weight is None else [weight])).loss

    def _ar(self, hidden, ids, labels, segment) -> tuple[torch.Tensor, torch.Tensor]:
        """(next-token CE summed over answer tokens, their count), never across conversations."""
        valid = (labels[:, 1:] != -100) & (segment[:, 1:] == segment[:, :-1])
        return self._ce(hidden[:, :-1][valid], ids[:, 1:][valid]), valid.sum()

    def forward(self, batch: dict, step: int):
        ids, labels, segment = batch["input_ids"], batch["labels"], batch["segment"]
        positions = batch["positions"]
        if self.kind == "causal_lm":
            # one whole conversation per row (nothing packed, nothing padded): the plain causal mask,
            # which the backbone hands SDPA as is_causal (the flash kernel), not as a 4-D boolean mask
            one = bool((segment == 0).all())
            hidden = self._hidden(ids, positions, None if one else causal_mask(segment))
            total, n = self._ar(hidden, ids, labels, segment)
            loss = total / rank_share(n).clamp_min(1)
            return loss, {"ar_loss": loss.detach(), "answer_tokens": n.float()}
        key = (self.seed, step if self.training else -1)  # eval: the same masks at every eval
        ds = build_dual_stream(ids, labels, segment, positions, batch["records"], self.mask_id, self.block_size,
                               self.per_block, self.eps, key)
        hidden = self._hidden(ds.input_ids, ds.position_ids, ds.attention_mask)
        L = ids.shape[1]
        scored, target = hidden[:, L:][ds.masked], ds.target[ds.masked]
        if self.weighted:
            w = 1.0 / (ds.gamma[ds.masked] + self.eps)
            mlm = self._ce(scored, target, w.float()) / rank_share(w.sum().float()).clamp_min(1e-12)
        else:
            mlm = self._ce(scored, target) / rank_share(ds.masked.sum()).clamp_min(1)
        metrics = {"mlm_loss": mlm.detach(), "masked_tokens": ds.masked.sum().float()}
        loss = mlm
        if self.ar_weight > 0:
            total, n = self._ar(hidden[:, :L], ids, labels, segment)
            ar = total / rank_share(n).clamp_min(1)
            loss = (mlm + self.ar_weight * ar) / (1 + self.ar_weight)
            metrics["ar_loss"] = ar.detach()
        return loss, metrics

    # -- the lm-eval harness: the causal path (what causal_lm trains, WeDLM's AR half) ----------
    nelbo_needs_t = False  # scored by the causal forward: exact

    def conditional_nelbo(self, batch: dict, t, k: int):
        """-log p of the target tokens under the stock causal forward (exact), and ``greedy``: each is
        its position's argmax. Only the scored positions go through the LM head."""
        from mmldlm.eval.likelihood import Nelbo

        ids, mask, target = batch["input_ids"], batch["attention_mask"], batch["target_mask"]
        base = causal_lm_of(self.lm)
        hidden = base.model(input_ids=ids, attention_mask=mask.long(), use_cache=False).last_hidden_state
        scored = target[:, 1:]
        logits = base.lm_head(hidden[:, :-1][scored]).float()
        tgt = ids[:, 1:][scored]
        nll = F.cross_entropy(logits, tgt, reduction="none")
        rows = scored.nonzero()[:, 0]
        nats = torch.zeros(ids.shape[0], dtype=nll.dtype, device=ids.device).index_add_(0, rows, nll)
        wrong = torch.zeros(ids.shape[0], device=ids.device).index_add_(0, rows, (logits.argmax(-1) != tgt).float())
        return Nelbo(nats, scored.sum(1), {"greedy": (wrong == 0).double()})

    def sampler_name(self, requested: str) -> str:
        return "ar, causal path (kv cache)"

    @torch.no_grad()
    def complete(self, context: torch.Tensor, length: int, *, steps: int, temperature: float = 0.0,
                 generator=None, stop=None) -> torch.Tensor:
        """``[1, length]`` ids after ``context [1, P]``: the causal LM, ancestral with the KV cache
        (WeDLM's parallel decoding is its ``wedlm`` engine's, on an export)."""
        from mmldlm.eval.samplers import ar_sample

        base = causal_lm_of(self.lm)
        cfg = base.config
        eos = cfg.eos_token_id[0] if isinstance(cfg.eos_token_id, list) else cfg.eos_token_id
        if eos is None:
            raise ValueError(f"{self.backbone_dir}: the backbone's config.json names no eos_token_id to stop at")
        excluded = [] if cfg.pad_token_id in (None, eos) else [cfg.pad_token_id]
        prefix = base.get_input_embeddings()(context)
        return ar_sample(base, context.shape[0], length, None, eos, temperature=temperature, generator=generator,
                         excluded=excluded, prefix=prefix, device=context.device, stop=stop)

    # -- hooks -----------------------------------------------------------------------------------
    def count(self, batch: dict) -> BatchCount:
        segment = batch["segment"]
        convs = sum(len(torch.unique(row[row >= 0])) for row in segment)
        return BatchCount(convs, (segment >= 0).sum())

    def example_batch(self, cfg, device="meta") -> dict:
        B, L = cfg.training.train_batch_size, cfg.data.max_seq_len
        batch = {k: torch.empty(B, L, dtype=torch.long, device=device)
                 for k in ("input_ids", "labels", "segment", "positions", "records")}
        return {**batch, "index": torch.empty(B, dtype=torch.long, device=device)}

    def flops_per_token(self) -> float:
        """Per real token: forward 2N, backward 2N through the whole backbone (to the adapters or
        weights below) + 2N for the weights that train; the dual stream doubles it (2L positions).
        Attention's own FLOPs are left out."""
        n = sum(p.numel() for p in causal_lm_of(self.lm).parameters())
        n_train = sum(p.numel() for p in self.parameters() if p.requires_grad)
        return (4 * n + 2 * n_train) * (2 if self.kind == "wedlm" else 1)

    def export_artifacts(self, out: Path, sources: dict[str, dict]) -> list[str]:
        """The fine-tuned LM as a stock model directory ``model/`` (+ ``adapter/`` for LoRA)."""
        from wedlm_bridge.artifacts import export_lm

        trained = [k[len("lm."):] for k in self.trained_keys if k.startswith("lm.")]
        return export_lm(self.lm, trained, sources.get("backbone"), out, "model", self.dtype, self.hub_id)

    def shard_units(self) -> list[nn.Module]:
        """FSDP units: the decoder layers. Embeddings, final norm and LM head stay in the root unit,
        unsharded for the whole step, because the objective calls the base model and the head
        apart (the head scores only the selected positions)."""
        return [m for m in causal_lm_of(self.lm).modules() if type(m).__name__.endswith("DecoderLayer")]


def backbone_for_method(cfg, sources):
    """The backbone as ``finetune.method`` trains it: full (every weight), LoRA adapters on the
    frozen base, or QLoRA (adapters on the nf4-quantised base, read at build: see
    :func:`wedlm_bridge.backbone.load_quantized`)."""
    m, f = cfg.model, cfg.finetune
    method = f.method.value
    quant = None
    if method == "qlora":
        from transformers import BitsAndBytesConfig

        quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=f.qlora_quant_type,
                                   bnb_4bit_use_double_quant=f.qlora_double_quant,
                                   bnb_4bit_compute_dtype=torch.bfloat16)
    if quant is not None:
        lm = load_quantized(sources, m.pretrained_model_dtype, quant)
    else:
        lm = build_backbone(sources, m.pretrained_model_dtype)
    ckpt = {"use_reentrant": False}
    if method == "full":
        lm.requires_grad_(True)
    elif method == "qlora" and sources.shapes_only:  # the estimator counts the Linear weights at 4 bits itself
        lm.requires_grad_(False)
        lm.quantized_bits = 4.127 if f.qlora_double_quant else 4.5  # nf4 + absmax (8-bit with double quant)
    elif method == "qlora":
        from peft import prepare_model_for_kbit_training

        lm = prepare_model_for_kbit_training(lm, use_gradient_checkpointing=m.activation_checkpointing,
                                             gradient_checkpointing_kwargs=ckpt)
    else:
        lm.requires_grad_(False)
    if m.activation_checkpointing:
        lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs=ckpt)
        lm.config.use_cache = False
    if method != "full":
        from peft import LoraConfig

        lm = add_lora(lm, LoraConfig(r=f.lora_r, lora_alpha=f.lora_alpha, lora_dropout=f.lora_dropout,
                                     target_modules=list(f.lora_target_modules), task_type="CAUSAL_LM"))
    return lm


def build(cfg, sources) -> FinetuneObjective:
    return FinetuneObjective(cfg, backbone_for_method(cfg, sources))


def collator(cfg, sources) -> SFTCollator:
    return SFTCollator(sources.tokenizer, cfg.data.max_seq_len, cfg.finetune.packing, cfg.finetune.num_learnable_im_end)


register("wedlm_finetune", FinetuneRunConfig, build, CONFIGS, collator=collator, records=SFT_RECORDS,
         sources=backbone_sources, metrics={"loss": ("loss", "mlm_loss", "ar_loss")},
         clis=("python -m wedlm_bridge.export_finetuned", "python -m mmldlm.eval.harness"))
