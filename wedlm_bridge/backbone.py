"""Loading a WeDLM checkpoint without its remote code.

WeDLM-8B is Qwen3-8B in architecture and tensor names; WeDLM-7B is Qwen2.5-7B. Its remote code
pins transformers 4.56, so by default (``model.trust_remote_code=false``) the checkpoint is
loaded into stock ``Qwen3ForCausalLM`` (``Qwen2ForCausalLM`` when the weights have no q/k norm)
with a config built from its ``config.json`` - WeDLM's own fields (``mask_token_id`` ...) are kept
on the config. ``trust_remote_code=true`` (for a directory named on this command line only: see
:mod:`mmldlm.sources`) builds the class the repo's code names instead. The backbone is a source
(:func:`backbone_source`): built empty here, its weights loaded by the framework after wrapping.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from mmldlm.config import ConfigError
from mmldlm.nn import DTYPES
from mmldlm.sources import Kind, Source

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


def backbone_family(raw: dict, weight_names) -> str:
    """qwen3 | qwen2: by model_type when it says so, else by the tensors (Qwen3 has q/k norms)."""
    if raw.get("model_type") in ("qwen3", "qwen2"):
        return raw["model_type"]
    names = weight_names()
    if not names:
        raise FileNotFoundError("no *.safetensors weights")
    return "qwen3" if any(n.endswith("self_attn.q_norm.weight") for n in names) else "qwen2"


def stock_config(raw: dict, weight_names=lambda: []):
    """(family, a Qwen3Config / Qwen2Config carrying every field of a checkpoint's config.json)."""
    from transformers import Qwen2Config, Qwen3Config

    family = backbone_family(raw, weight_names)
    cls = Qwen3Config if family == "qwen3" else Qwen2Config
    fields = {k: v for k, v in raw.items() if k not in _DROP}
    if raw.get("model_type") == "wedlm" and fields.get("mask_token_id") is None \
            and fields.get("vocab_size", 0) > WEDLM_MASK_TOKEN_ID:
        fields["mask_token_id"] = WEDLM_MASK_TOKEN_ID
    return family, cls(**fields)


def build_backbone(sources, dtype: str, name: str = "backbone"):
    """The backbone's architecture (parameters empty until the framework loads the source): a
    stock ``Qwen3ForCausalLM`` / ``Qwen2ForCausalLM`` from its config.json, or, when the user
    trusted this directory on the command line and it brings code, the class its code names."""
    from transformers import AutoModelForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM

    torch_dtype = DTYPES[dtype]
    r, raw = sources.resolved[name], sources.raw_config(name)
    if r.trusted and raw.get("auto_map"):
        config = sources.hf_config(name)
        model = sources.model(name, lambda: AutoModelForCausalLM.from_config(config, trust_remote_code=True,
                                                                             dtype=torch_dtype))
    else:
        family, config = stock_config(raw, lambda: _weight_names(r.path) if r.path else [])
        cls = Qwen3ForCausalLM if family == "qwen3" else Qwen2ForCausalLM
        config._attn_implementation = "sdpa"
        model = sources.model(name, lambda: cls._from_config(config, dtype=torch_dtype))
    model.source_config_json = raw  # export writes it back, so a merged model stays a WeDLM checkpoint
    return model


def load_backbone(path: str | Path, dtype: str = "bfloat16"):
    """A WeDLM / Qwen checkpoint directory as its stock causal LM, loaded the way training loads
    it (no remote code): for scripts and tests that want the plain model."""
    from mmldlm.sources import Sources, resolve

    source = Source("backbone", Kind.model, "path", str(path), dtype=dtype)
    sources = Sources({"backbone": resolve(source)}, shapes_only=False)
    model = build_backbone(sources, dtype)
    sources.load_models("cpu")
    return model


def load_quantized(sources, dtype: str, quantization_config, name: str = "backbone"):
    """QLoRA's base: 4-bit weights are quantised as they are read, so this base is read here,
    at build, by transformers (FSDP is refused for QLoRA; while estimating, the empty
    architecture: the estimator counts 4 bits itself)."""
    from transformers import Qwen2ForCausalLM, Qwen3ForCausalLM
    from transformers.utils import logging as hf_logging

    if sources.shapes_only:
        return build_backbone(sources, dtype, name)
    r, raw = sources.resolved[name], sources.raw_config(name)
    family, config = stock_config(raw, lambda: _weight_names(r.path))
    cls = Qwen3ForCausalLM if family == "qwen3" else Qwen2ForCausalLM
    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "model of type wedlm ..." is expected here: we checked the family
    try:  # a quantized model is placed where it is built (it cannot be moved after): this rank's device
        model, info = cls.from_pretrained(str(r.path), config=config, dtype=DTYPES[dtype], local_files_only=True,
                                          output_loading_info=True, quantization_config=quantization_config,
                                          device_map=_this_device())
    finally:
        hf_logging.set_verbosity(level)
    missing = [k for k in info["missing_keys"] if "rotary" not in k]
    if missing or info["mismatched_keys"]:  # never train on silently re-initialised tensors
        raise RuntimeError(f"{r.path}: the weights do not fit {cls.__name__}: missing {missing[:5]}, "
                           f"mismatched {list(info['mismatched_keys'])[:5]}; is this a WeDLM/Qwen checkpoint?")
    model.source_config_json = raw
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


def backbone_source(m: BackboneConfig) -> Source:
    """The backbone as a source: ``model.pretrained_local_dir`` when set (prefetched into when
    missing and ``download_pretrained_local_dir``), else ``model.pretrained_model_name_or_path``
    (a directory, or a hub name found in the hub cache); the hub name is the fallback either way."""
    local = m.pretrained_local_dir
    key = "model.pretrained_local_dir" if local else "model.pretrained_model_name_or_path"
    return Source("backbone", Kind.model, key, local or m.pretrained_model_name_or_path,
                  hub_id=m.pretrained_model_name_or_path, trust_remote_code=m.trust_remote_code,
                  local_files_only=m.local_files_only,
                  prefetch_into=local if m.download_pretrained_local_dir else None, dtype=m.pretrained_model_dtype,
                  shape=("qwen3", WEDLM_8B_SHAPE), option="--backbone-dir {path}")


def backbone_sources(cfg) -> list[Source]:
    return [backbone_source(cfg.model)]
