"""A WeDLM (or any Qwen3 / Qwen2) causal LM as the directories people load next.

- ``wedlm``: the engine's form (refs/wedlm_finetune.md B.2): stock tensor names only (the engine
  raises on any other: adapters, quantisation state), the source's own ``config.json``
  (``model_type: wedlm``, ``auto_map``, ``mask_token_id`` ...) with ``dtype`` and ``qk_norm`` /
  ``attention_bias`` as the weights say, no ``wedlm_window_size`` (an ``LLM()`` argument), the
  tokenizer and code files of the source;
- ``hf``: stock transformers: ``model_type`` of the base architecture and no ``auto_map``, so
  ``AutoModelForCausalLM.from_pretrained(DIR)`` and ``AutoTokenizer.from_pretrained(DIR)`` load it
  with no remote code and no prompt (the tokenizer config loses its ``auto_map`` too);
- a LoRA adapter in peft's own format (``adapter_config.json`` + ``adapter_model.safetensors``),
  which ``PeftModel.from_pretrained(base, DIR)`` loads onto the stock base.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from mmldlm.nn import DTYPES

FORMATS = ("wedlm", "hf")
# bitsandbytes' quantisation state: a tensor named so cannot be loaded by the engine (it raises)
_QUANT_KEYS = (".absmax", ".quant_map", ".quant_state", ".nested_absmax", ".nested_quant_map", ".SCB", "weight_format")
_TOKENIZER = ("tokenizer*", "vocab*", "merges.txt", "special_tokens_map.json", "added_tokens.json", "*.jinja",
              "*.model", "*.tiktoken", "generation_config.json")


def _plain(model, dtype: str):
    model = model.to(DTYPES[dtype])
    names = list(model.state_dict())
    foreign = [k for k in names if "lora_" in k or "base_layer" in k or k.endswith(_QUANT_KEYS)]
    if foreign:
        raise RuntimeError(f"not a plain model: {foreign[:3]}; merge adapters into a full-precision reload first")
    return model, names


def _copy(src: Path | None, out: Path, patterns) -> None:
    if src is None or not src.is_dir():
        return
    for pattern in patterns:
        for f in src.glob(pattern):
            if f.is_file():
                shutil.copy2(f, out / f.name)


def save_for_engine(model, source: str | Path | None, out: str | Path, dtype: str = "bfloat16") -> Path:
    """A stock causal LM (adapters merged) as a checkpoint the ``wedlm`` engine loads."""
    out = Path(out)
    model, names = _plain(model, dtype)
    model.save_pretrained(out, safe_serialization=True)
    raw = dict(getattr(model, "source_config_json", None) or json.loads((out / "config.json").read_text()))
    for key in ("wedlm_window_size", "torch_dtype", "transformers_version"):
        raw.pop(key, None)
    raw["dtype"] = dtype
    raw["qk_norm"] = any(k.endswith("self_attn.q_norm.weight") for k in names)
    raw["attention_bias"] = any(k.endswith("self_attn.q_proj.bias") for k in names)
    (out / "config.json").write_text(json.dumps(raw, indent=2))
    _copy(Path(source) if source else None, out, (*_TOKENIZER, "*.py"))
    return out


def save_stock(model, source: str | Path | None, out: str | Path, dtype: str = "bfloat16") -> Path:
    """A stock causal LM (adapters merged) as a plain transformers directory: its own class's
    config (no ``auto_map``; WeDLM's extra fields such as ``mask_token_id`` kept as attributes),
    the source's tokenizer files without remote code."""
    out = Path(out)
    model, _ = _plain(model, dtype)
    config = model.config
    for key in ("auto_map", "wedlm_window_size"):
        if hasattr(config, key):
            delattr(config, key)
    config.architectures = [type(model).__name__]
    model.save_pretrained(out, safe_serialization=True)
    _copy(Path(source) if source else None, out, _TOKENIZER)
    tok_cfg = out / "tokenizer_config.json"
    if tok_cfg.is_file():
        data = json.loads(tok_cfg.read_text())
        if data.pop("auto_map", None) is not None:
            tok_cfg.write_text(json.dumps(data, indent=2, ensure_ascii=False))
    return out


def save(model, source, out, fmt: str, dtype: str = "bfloat16") -> Path:
    """``model`` in the form ``fmt`` (:data:`FORMATS`)."""
    if fmt not in FORMATS:
        raise ValueError(f"--format: {fmt!r} is not one of {', '.join(FORMATS)}")
    return (save_for_engine if fmt == "wedlm" else save_stock)(model, source, out, dtype)


def save_adapter(peft_model, out: str | Path, base_name: str | None = None) -> Path:
    """The LoRA adapter of ``peft_model`` in peft's format (``base_name``: the base it goes on,
    recorded in adapter_config.json as ``base_model_name_or_path``)."""
    out = Path(out)
    if base_name:
        for cfg in peft_model.peft_config.values():
            cfg.base_model_name_or_path = base_name
    peft_model.save_pretrained(str(out), safe_serialization=True)
    return out


def export_lm(lm, trained: list[str], source: dict | None, out: Path, name: str, dtype: str,
              base_name: str | None) -> list[str]:
    """An export's artifacts for a WeDLM LM that trained (``trained``: its trained tensor names
    in the checkpoint, relative to ``lm``): ``<name>/``, the trained LM as a stock model
    directory (adapters merged), and, when LoRA adapters are all that trained, ``adapter/`` in
    peft's format. Nothing when the LM did not train. A quantised base (QLoRA) gets the adapter
    only: merging needs a full-precision reload (``python -m wedlm_bridge.export_finetuned``)."""
    if not trained:
        return []
    written = []
    lora = hasattr(lm, "peft_config")
    only_adapters = lora and all("lora_" in k for k in trained)
    if only_adapters:
        save_adapter(lm, out / "adapter", base_name)
        written.append("adapter")
    quantized = any(k.endswith(_QUANT_KEYS) for k in lm.state_dict())
    if quantized:
        return written
    plain = lm.merge_and_unload() if lora else lm
    save_stock(plain, Path(source["path"]) if source and source.get("path") else None, out / name, dtype)
    return [*written, name]
