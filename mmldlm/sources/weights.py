"""Pretrained weights: built empty, placed, then read (torchtitan's order).

A family's ``build()`` makes a pretrained model's architecture with :func:`empty` (parameters on
the meta device, buffers such as rotary tables real and small); the framework then wraps the
objective (DDP, or FSDP2 ``fully_shard`` per unit) and only then calls :func:`materialize` and
:func:`load_into`. Under FSDP every rank allocates its own shards only and reads its own rows of
each tensor straight from the safetensors files (memory-mapped slices): no rank ever holds a full
copy of the pretrained model, nor does rank 0 broadcast one.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from mmldlm.sources.resolve import SourceError, weight_files

log = logging.getLogger("mm_ldlm.sources")


def empty(factory: Callable[[], nn.Module]) -> nn.Module:
    """``factory()`` with its parameters on the meta device (nothing allocated, nothing read);
    buffers are created for real, as they are not in checkpoints (rotary tables)."""
    from accelerate import init_empty_weights

    with init_empty_weights(include_buffers=False):
        return factory()


def _is_dtensor(t) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if _is_dtensor(t) else t


def has_meta(module: nn.Module) -> bool:
    return any(t.is_meta for t in [*module.parameters(), *module.buffers()])


def materialize(module: nn.Module, device: torch.device | str) -> None:
    """Give every meta parameter and buffer of ``module`` storage on ``device`` (values unset),
    keeping shared (tied) parameters shared. Under FSDP2 (DTensor parameters) through
    ``to_empty``, with the real tensors' local shards kept across it."""
    device = torch.device(device)
    tensors = [*module.named_parameters(), *module.named_buffers()]
    if any(_is_dtensor(t) for _, t in tensors):
        keep = {n: _local(t).detach().clone() for n, t in tensors if not t.is_meta}
        module.to_empty(device=device)
        with torch.no_grad():
            for n, t in [*module.named_parameters(), *module.named_buffers()]:
                if n in keep:
                    _local(t).copy_(keep[n])
        return
    memo: dict[int, torch.Tensor] = {}
    for sub in module.modules():
        for name, p in list(sub._parameters.items()):
            if p is not None and p.is_meta:
                if id(p) not in memo:
                    memo[id(p)] = nn.Parameter(torch.empty_like(p, device=device), requires_grad=p.requires_grad)
                sub._parameters[name] = memo[id(p)]
        for name, b in list(sub._buffers.items()):
            if b is not None and b.is_meta:
                sub._buffers[name] = torch.empty_like(b, device=device)


def place(module: nn.Module, device: torch.device | str) -> None:
    """``module.to(device)`` for every tensor that has storage (meta ones wait for their weights)."""
    device = torch.device(device)
    for sub in module.modules():
        for p in sub._parameters.values():
            if p is not None and not p.is_meta and p.device != device:
                p.data = p.data.to(device)
        for name, b in sub._buffers.items():
            if b is not None and not b.is_meta and b.device != device:
                sub._buffers[name] = b.to(device)


def canonical(name: str) -> str:
    """A parameter's name as a stock checkpoint spells it: peft's wrappers removed (also below a
    prefix: ``backbone.base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight`` is
    ``backbone.model.layers.0.self_attn.q_proj.weight``)."""
    return name.replace("base_model.model.", "").replace(".base_layer.", ".")


@dataclass
class LoadReport:
    tensors: int  # tensors filled
    elements_read: int  # elements read from the files by this rank (its shards only under FSDP)
    elements_total: int  # elements of the full tensors filled


def _weight_map(d: Path) -> dict[str, Path]:
    index = d / "model.safetensors.index.json"
    if index.is_file():
        return {k: d / v for k, v in json.loads(index.read_text())["weight_map"].items()}
    from safetensors import safe_open

    out = {}
    for f in weight_files(d):
        with safe_open(str(f), "pt") as st:
            out.update(dict.fromkeys(st.keys(), f))
    return out


def _slice_of(t: torch.Tensor) -> tuple[slice, ...] | None:
    """The part of the full tensor that this rank holds (None: all of it)."""
    if not _is_dtensor(t):
        return None
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    shape, offset = compute_local_shape_and_global_offset(t.shape, t.device_mesh, t.placements)
    return tuple(slice(o, o + s) for o, s in zip(offset, shape))


def load_into(module: nn.Module, d: Path, what: str, only: set[str] | None = None) -> LoadReport:
    """Fill ``module``'s parameters and persistent buffers (``only`` these stock names, when given:
    the ones its source provides, not adapters added on top) from the safetensors of directory ``d``
    (stock names; peft's wrappers are seen through), cast to each tensor's dtype. A tensor the
    module needs and the files lack is an error (never a silent random init); tensors the files
    have and the module lacks are ignored. ``what`` names the source in errors."""
    from safetensors import safe_open

    targets: dict[str, torch.Tensor] = {}
    persistent = set(module.state_dict(keep_vars=True))
    for n, t in [*module.named_parameters(), *((n, b) for n, b in module.named_buffers() if n in persistent)]:
        if only is None or canonical(n) in only:
            targets.setdefault(canonical(n), t)
    wmap = _weight_map(d)
    missing = sorted(k for k in targets if k not in wmap and not _tied_elsewhere(module, k))
    if missing:
        raise SourceError(f"{what}: {d} lacks {len(missing)} tensors the model needs ({', '.join(missing[:4])}"
                          f"{' ...' if len(missing) > 4 else ''}): is it the architecture the config says?")
    by_file: dict[Path, list[str]] = {}
    for k in targets:
        if k in wmap:
            by_file.setdefault(wmap[k], []).append(k)
    read = total = 0
    with torch.no_grad():
        for f, keys in by_file.items():
            with safe_open(str(f), "pt", device="cpu") as st:
                for k in keys:
                    t = targets[k]
                    sl = _slice_of(t)
                    src = st.get_slice(k)
                    full_shape = tuple(src.get_shape())
                    if full_shape != tuple(t.shape):
                        raise SourceError(f"{what}: {f.name} holds {k} with shape {list(full_shape)}, the model "
                                          f"needs {list(t.shape)}: is it the architecture the config says?")
                    value = src[sl] if sl is not None else st.get_tensor(k)
                    local = _local(t)
                    local.copy_(value.to(local.dtype))
                    read += value.numel()
                    total += t.numel()
    return LoadReport(len(targets), read, total)


def _tied_elsewhere(module: nn.Module, key: str) -> bool:
    """``key`` is an output embedding tied to the input embedding (absent from tied checkpoints)."""
    config = getattr(module, "config", None)
    return key.endswith("lm_head.weight") and bool(getattr(config, "tie_word_embeddings", False))


def retie(module: nn.Module) -> None:
    """Re-tie input and output embeddings where the model ties them (materializing broke the tie
    only if it was not one shared parameter; transformers models re-tie themselves)."""
    for sub in module.modules():
        if hasattr(sub, "tie_weights") and getattr(getattr(sub, "config", None), "tie_word_embeddings", False):
            sub.tie_weights()


def add_lora(model: nn.Module, config) -> nn.Module:
    """peft's LoRA adapters on ``model`` (``get_peft_model``). On a meta-built model peft makes
    them on meta too; they are not in the source's files, so they are made and initialised for
    real here with peft's own init (A Kaiming-uniform, B zero), as on a loaded model."""
    from peft import get_peft_model

    wrapped = get_peft_model(model, config)
    for module in wrapped.modules():
        if not (hasattr(module, "reset_lora_parameters") and hasattr(module, "lora_A")):
            continue
        for adapter in list(module.lora_A):
            parts = (module.lora_A[adapter], module.lora_B[adapter])
            if any(p.is_meta for part in parts for p in part.parameters()):
                for part in parts:
                    materialize(part, "cpu")
                module.reset_lora_parameters(adapter, config.init_lora_weights)
    return wrapped
