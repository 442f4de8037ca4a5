"""A fine-tuned WeDLM as the engine's checkpoint (``wedlm``) or a stock transformers one (``hf``).

LoRA / QLoRA: the base is reloaded in full precision (float32, never 4-bit: peft's merge into a
4-bit model re-quantises and keeps ``Linear4bit``), the trained adapters loaded onto it and merged;
full fine-tunes (a DDP file or an FSDP checkpoint directory) load their weights as trained. Then
cast to ``dtype`` and written by :mod:`wedlm_bridge.artifacts`; a LoRA run's directory also holds
``adapter/`` (peft's format). Never into an input: see :func:`mmldlm.export.write_dir`.
"""
from __future__ import annotations

from pathlib import Path

from wedlm_bridge import artifacts


def _full_precision(cfg) -> None:
    cfg.model.pretrained_model_dtype = "float32"
    if cfg.finetune.method.value == "qlora":  # the same adapter names on a plain Linear
        cfg.finetune.method = "lora"
    cfg.model.activation_checkpointing = False


def export_finetuned(checkpoint: str, out: str | Path, policy, dtype: str = "bfloat16", fmt: str = "wedlm",
                     overwrite: bool = False) -> Path:
    """Write the merged model of a fine-tuning run (a run directory or a checkpoint) to ``out``."""
    from mmldlm.export import guard_out, inputs_of, write_dir
    from mmldlm.train.rebuild import open_saved, rebuild_from_checkpoint
    from wedlm_bridge.finetune.objective import causal_lm_of

    if fmt not in artifacts.FORMATS:
        raise ValueError(f"--format: {fmt!r} is not one of {', '.join(artifacts.FORMATS)}")
    saved = open_saved(checkpoint)
    guard_out(Path(out).expanduser().absolute(), inputs_of(saved, saved.sources), True)  # inputs, before the rebuild
    obj, tok, cfg = rebuild_from_checkpoint(checkpoint, "cpu", policy, expect="wedlm_finetune", ema=True,
                                            adjust=_full_precision)
    source = obj.sources_used.get("backbone", {}).get("path")

    def fill(tmp: Path) -> None:
        lora = hasattr(obj.lm, "peft_config")
        if lora:
            artifacts.save_adapter(obj.lm, tmp / "adapter", cfg.model.pretrained_model_name_or_path)
        lm = obj.lm.merge_and_unload() if lora else causal_lm_of(obj.lm)
        artifacts.save(lm, source, tmp, fmt, dtype)

    return write_dir(out, inputs_of(saved, obj.sources_used), overwrite, fill)
