"""Loading a WeDLM checkpoint without its remote code.

WeDLM-8B is Qwen3-8B in architecture and tensor names; WeDLM-7B is Qwen2.5-7B. Its remote code
pins transformers 4.56, so by default (``model.trust_remote_code=false``) the checkpoint is
loaded into stock ``Qwen3ForCausalLM`` (``Qwen2ForCausalLM`` when the weights have no q/k norm)
with a config built from its ``config.json`` - WeDLM's own fields (``mask_token_id`` ...) are kept
on the config. ``trust_remote_code=true`` goes through ``AutoModelForCausalLM`` and the repo code.
"""
from __future__ import annotations

import json
from pathlib import Path

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
                  local_files_only: bool = True):
    """A causal LM from a local directory (prefetched) or a hub name (``local_files_only`` honoured)."""
    from transformers import AutoModelForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM

    torch_dtype = DTYPES[dtype]
    if trust_remote_code:
        return AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype, trust_remote_code=True,
                                                    local_files_only=local_files_only)
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
        model, info = cls.from_pretrained(str(d), config=cfg, dtype=torch_dtype, local_files_only=True,
                                          output_loading_info=True)
    finally:
        hf_logging.set_verbosity(level)
    missing = [k for k in info["missing_keys"] if "rotary" not in k]
    if missing or info["mismatched_keys"]:  # never train on silently re-initialised tensors
        raise RuntimeError(f"{d}: the weights do not fit {cls.__name__}: missing {missing[:5]}, "
                           f"mismatched {list(info['mismatched_keys'])[:5]}; is this a WeDLM/Qwen checkpoint?")
    model.source_config_json = raw  # export writes it back, so a merged model stays a WeDLM checkpoint
    return model
