"""A fine-tuned WeDLM as a checkpoint the ``wedlm`` engine loads.

LoRA / QLoRA: the base is reloaded in full precision (float32, never 4-bit: peft's merge into a
4-bit model re-quantises and keeps ``Linear4bit``), the trained adapters loaded onto it and merged;
full fine-tunes (a DDP file or an FSDP checkpoint directory) load their weights as trained. Then
cast to bf16 and written by :func:`wedlm_bridge.backbone.save_for_engine`.
"""
from __future__ import annotations

from pathlib import Path

from wedlm_bridge.backbone import save_for_engine


def _full_precision(cfg) -> None:
    cfg.model.pretrained_model_dtype = "float32"
    if cfg.finetune.method.value == "qlora":  # the same adapter names on a plain Linear
        cfg.finetune.method = "lora"
    cfg.model.activation_checkpointing = False


def export_finetuned(checkpoint: str, out: str | Path, policy, dtype: str = "bfloat16") -> Path:
    """Write the merged model of a fine-tuning run (a run directory or a checkpoint) to ``out``."""
    from mmldlm.train.rebuild import rebuild_from_checkpoint
    from wedlm_bridge.finetune.objective import causal_lm_of

    obj, tok, cfg = rebuild_from_checkpoint(checkpoint, "cpu", policy, expect="wedlm_finetune", ema=True,
                                            adjust=_full_precision)
    lm = obj.lm.merge_and_unload() if hasattr(obj.lm, "merge_and_unload") else causal_lm_of(obj.lm)
    return save_for_engine(lm, cfg.model.pretrained_local_dir, out, dtype)
