"""Loading a WeDLM checkpoint without its remote code.

WeDLM-8B is Qwen3-8B in architecture and tensor names; WeDLM-7B is Qwen2.5-7B. Its remote code
pins transformers 4.56, so by default (``model.trust_remote_code=false``) the checkpoint is
loaded into stock ``Qwen3ForCausalLM`` (``Qwen2ForCausalLM`` when the weights have no q/k norm)
with a config built from its ``config.json`` - WeDLM's own fields (``mask_token_id`` ...) are kept
on the config. ``trust_remote_code=true`` goes through ``AutoModelForCausalLM`` and the repo code.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from mmldlm.config import ConfigError
from mmldlm.nn import DTYPES

WEDLM_MASK_TOKEN_ID = 151665  # the engine's fallback when config.json says null
_DROP = ("model_type", "architectures", "auto_map", "transformers_version")


def _weight_names(d: Path) -> list[str]:
    idx = d / "model.safetensors.index.json"
    if idx.is_file():
        return list(json.loads(idx.read_text())["weight_map"])
    from safetensors import safe_open

    names = []
    for f in sorted(d.glob("*.safetensors")):
        with safe_open(str(f), "pt") as st:
            names += list(st.keys())
    return names


def _this_device():
    import torch

    return {"": torch.cuda.current_device()} if torch.cuda.is_available() else "cpu"


def backbone_family(d: Path, raw: dict) -> str:
    """qwen3 | qwen2: by model_type when it says so, else by the tensors (Qwen3 has q/k norms)."""
    if raw.get("model_type") in ("qwen3", "qwen2"):
        return raw["model_type"]
    names = _weight_names(d)
    if not names:
        raise FileNotFoundError(f"{d}: no *.safetensors weights")
    return "qwen3" if any(n.endswith("self_attn.q_norm.weight") for n in names) else "qwen2"


def stock_config(d: Path):
    """(family, a Qwen3Config / Qwen2Config carrying every field of the checkpoint's config.json,
    that config.json as read)."""
    from transformers import Qwen2Config, Qwen3Config

    raw = json.loads((d / "config.json").read_text())
    family = backbone_family(d, raw)
    cls = Qwen3Config if family == "qwen3" else Qwen2Config
    fields = {k: v for k, v in raw.items() if k not in _DROP}
    if raw.get("model_type") == "wedlm" and fields.get("mask_token_id") is None \
            and fields.get("vocab_size", 0) > WEDLM_MASK_TOKEN_ID:
        fields["mask_token_id"] = WEDLM_MASK_TOKEN_ID
    return family, cls(**fields), raw


def load_backbone(path: str, dtype: str = "bfloat16", trust_remote_code: bool = False,
                  local_files_only: bool = True, quantization_config=None):
    """A causal LM from a local directory (prefetched) or a hub name (``local_files_only`` honoured);
    ``quantization_config``: e.g. bitsandbytes' 4-bit (QLoRA), on CPU too."""
    from transformers import AutoModelForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM

    torch_dtype = DTYPES[dtype]
    from mmldlm.estimate.shapes import is_shape_only

    if is_shape_only():  # the estimator: the architecture on the meta device, no weights read
        return shape_model(path, torch_dtype)
    if trust_remote_code:
        return AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype, trust_remote_code=True,
                                                    local_files_only=local_files_only,
                                                    quantization_config=quantization_config)
    d = Path(path)
    if not d.is_dir():
        from huggingface_hub import snapshot_download

        d = Path(snapshot_download(path, local_files_only=local_files_only,
                                   allow_patterns=["*.json", "*.safetensors"]))
    family, cfg, raw = stock_config(d)
    cls = Qwen3ForCausalLM if family == "qwen3" else Qwen2ForCausalLM
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "model of type wedlm ..." is expected here: we checked the family
    try:
        # a quantized model is placed where it is built (it cannot be moved after): this rank's device
        quantized = {} if quantization_config is None else {"quantization_config": quantization_config,
                                                             "device_map": _this_device()}
        model, info = cls.from_pretrained(str(d), config=cfg, dtype=torch_dtype, local_files_only=True,
                                          output_loading_info=True, **quantized)
    finally:
        hf_logging.set_verbosity(level)
    missing = [k for k in info["missing_keys"] if "rotary" not in k]
    if missing or info["mismatched_keys"]:  # never train on silently re-initialised tensors
        raise RuntimeError(f"{d}: the weights do not fit {cls.__name__}: missing {missing[:5]}, "
                           f"mismatched {list(info['mismatched_keys'])[:5]}; is this a WeDLM/Qwen checkpoint?")
    model.source_config_json = raw  # export writes it back, so a merged model stays a WeDLM checkpoint
    return model


@dataclass
class BackboneConfig:
    """Where a family's WeDLM backbone comes from (the bridge's and the fine-tune's ``model``)."""

    pretrained_model_name_or_path: str = "tencent/WeDLM-8B-Base"
    trust_remote_code: bool = False
    pretrained_model_dtype: str = "bfloat16"  # bfloat16 | float16 | float32
    local_files_only: bool = True
    pretrained_local_dir: Optional[str] = "./local_models/wedlm-8b"
    download_pretrained_local_dir: bool = False  # prefetch into pretrained_local_dir when missing
    activation_checkpointing: bool = False

    def check(self) -> None:
        if self.pretrained_model_dtype not in DTYPES:
            raise ConfigError(f"model.pretrained_model_dtype: {self.pretrained_model_dtype!r} ({' | '.join(DTYPES)})")


# WeDLM-8B's config.json values (Qwen3-8B), for estimates on a machine without the checkpoint
WEDLM_8B_SHAPE = dict(vocab_size=151936, hidden_size=4096, intermediate_size=12288, num_hidden_layers=36,
                      num_attention_heads=32, num_key_value_heads=8, head_dim=128, max_position_embeddings=16384,
                      rope_theta=1e6, rms_norm_eps=1e-6, tie_word_embeddings=False, mask_token_id=WEDLM_MASK_TOKEN_ID)


def shape_model(path: str, torch_dtype):
    """The backbone's architecture on the shape device (meta: nothing is allocated): from its
    config.json when the directory is here, else (any other name) WeDLM-8B's shape."""
    import torch
    from transformers import Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM

    d = Path(path)
    if (d / "config.json").is_file():
        family, cfg, _ = stock_config(d)
        cls = Qwen3ForCausalLM if family == "qwen3" else Qwen2ForCausalLM
    else:
        cfg, cls = Qwen3Config(**WEDLM_8B_SHAPE), Qwen3ForCausalLM
    cfg._attn_implementation = "sdpa"
    from mmldlm.estimate.shapes import shape_device

    with torch.device(shape_device()):
        return cls(cfg).to(torch_dtype)


def backbone_source(m: BackboneConfig) -> str:
    """The backbone's local directory (prefetched first when the config asks; a directory without
    the completion marker is refused) or, without one, its hub name."""
    from mmldlm.estimate.shapes import is_shape_only
    from mmldlm.prefetch import check_if_prefetched, prefetch

    if is_shape_only():
        return m.pretrained_local_dir or m.pretrained_model_name_or_path
    if m.pretrained_local_dir:
        if m.download_pretrained_local_dir and not Path(m.pretrained_local_dir).is_dir():
            prefetch(m.pretrained_model_name_or_path, m.pretrained_local_dir)
        check_if_prefetched(m.pretrained_local_dir)
    return m.pretrained_local_dir or m.pretrained_model_name_or_path


def locate_backbone(cfg, policy, source: str) -> None:
    """``on_rebuild`` of the families on a WeDLM backbone: a checkpoint does not hold the frozen
    backbone, and the user names a local copy (``--backbone-dir`` / ``backbone_dir=``), never the
    file. The tokenizer follows it when the run used the backbone's own."""
    from mmldlm.train.rebuild import CheckpointPolicyError

    m = cfg.model
    if not policy.backbone_dir:
        raise CheckpointPolicyError(
            f"{source} does not hold its backbone ({m.pretrained_model_name_or_path}, trained from "
            f"{m.pretrained_local_dir}); name a local copy on the command line: --backbone-dir DIR "
            "(the eval CLIs' key: backbone_dir=DIR)")
    if cfg.data.tokenizer_name == m.pretrained_local_dir:
        cfg.data.tokenizer_name = policy.backbone_dir
    m.pretrained_local_dir = policy.backbone_dir
    m.download_pretrained_local_dir = False


# bitsandbytes' quantisation state: a tensor named so cannot be loaded by the engine (it raises)
_QUANT_KEYS = (".absmax", ".quant_map", ".quant_state", ".nested_absmax", ".nested_quant_map", ".SCB", "weight_format")
# beside the weights, what a WeDLM directory holds: its tokenizer and the remote code of its config
_COPIED = ("tokenizer*", "vocab*", "merges.txt", "special_tokens_map.json", "added_tokens.json", "*.jinja", "*.model",
           "*.tiktoken", "*.py", "generation_config.json")


def save_for_engine(model, source: str | Path | None, out: str | Path, dtype: str = "bfloat16") -> Path:
    """A stock Qwen3/Qwen2 causal LM (adapters already merged) saved as a WeDLM checkpoint the
    ``wedlm`` engine loads (refs/wedlm_finetune.md B.2): safetensors with exactly the stock tensor
    names (the engine raises on any other: adapters, quantisation state), ``config.json`` = the
    source's own (``model_type: wedlm``, ``auto_map``, ``mask_token_id`` ...) with ``dtype``,
    ``qk_norm`` / ``attention_bias`` as the weights say (the engine builds q/k norms iff
    attention_bias is false) and no ``wedlm_window_size`` (an ``LLM()`` argument, overwritten at
    run time); the tokenizer and code files copied from ``source``."""
    import shutil

    out = Path(out)
    model = model.to(DTYPES[dtype])
    names = list(model.state_dict())
    foreign = [k for k in names if "lora_" in k or "base_layer" in k or k.endswith(_QUANT_KEYS)]
    if foreign:
        raise RuntimeError(f"not a plain model: {foreign[:3]}; merge adapters into a full-precision reload first")
    model.save_pretrained(out, safe_serialization=True)
    src = Path(source) if source else None
    raw = dict(getattr(model, "source_config_json", None) or json.loads((out / "config.json").read_text()))
    for key in ("wedlm_window_size", "torch_dtype", "transformers_version"):
        raw.pop(key, None)
    raw["dtype"] = dtype
    raw["qk_norm"] = any(k.endswith("self_attn.q_norm.weight") for k in names)
    raw["attention_bias"] = any(k.endswith("self_attn.q_proj.bias") for k in names)
    (out / "config.json").write_text(json.dumps(raw, indent=2))
    if src is not None and src.is_dir():
        for pattern in _COPIED:
            for f in src.glob(pattern):
                if f.is_file():
                    shutil.copy2(f, out / f.name)
    return out
