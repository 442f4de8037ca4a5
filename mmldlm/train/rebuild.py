"""Rebuilding a trained objective from a checkpoint or an export, for every CLI (sample, decode,
encode, export, the eval CLIs, the harness) and ``mmldlm.from_pretrained``.

A checkpoint and an export both record their family's registered name, the resolved config and
the fingerprints of their sources, so any run rebuilds through the registry: the family's
sources are resolved under the user's :class:`~mmldlm.sources.LoadPolicy` (paths named on this
command line replace the saved ones; only they may run code), compared with the recorded
fingerprints, the architecture built, the sources' weights loaded, then the trained weights.
"""
from __future__ import annotations

from pathlib import Path

import torch

from mmldlm.sources import LoadPolicy, SourceError, check_unchanged, open_sources
from mmldlm.sources.weights import place
from mmldlm.train.checkpointing import (
    load_checkpoint,
    load_trainable_state_dict,
    read_ema_weights,
    read_model_weights,
    resolve_checkpoint,
)

__all__ = ["CheckpointPolicyError", "LoadPolicy", "Saved", "apply_load_policy", "open_saved", "rebuild_from_checkpoint"]

EXPORT_CONFIG = "config.json"
EXPORT_WEIGHTS = "model.safetensors"
EXPORT_KEY = "mmldlm"  # config.json's section that marks an export of this framework


class CheckpointPolicyError(SourceError):
    """A checkpoint or export asks for something only its user may decide, or is of another family."""


class Saved:
    """What a checkpoint or an export holds: config, objective name, source records, step, weights."""

    def __init__(self, path: str | Path):
        p = Path(path)
        self.export = p.is_dir() and _export_meta(p) is not None
        self.inside: dict[str, str] = {}  # source name -> the copy an export holds
        if self.export:
            meta = _export_meta(p)
            self.path, self.config, self.step = p.resolve(), meta["config"], meta.get("step")
            self.sources, self.ema = meta.get("sources") or {}, bool(meta.get("ema"))
            self.inside = {k: str(self.path / v) for k, v in (meta.get("inside") or {}).items()}
        else:
            self.path = resolve_checkpoint(p)
            state = load_checkpoint(self.path)
            self._model = None if self.path.is_dir() else state["model"]  # a DDP file: read once
            self.config, self.step = state["config"], state.get("step")
            self.sources, self.ema = state.get("sources") or {}, None
        self.objective = self.config.get("objective")

    def weights(self) -> dict[str, torch.Tensor]:
        if self.export:
            from safetensors.torch import load_file

            weights = load_file(str(self.path / EXPORT_WEIGHTS))
        else:
            weights = self._model if self._model is not None else read_model_weights(self.path)
        self.weights_keys = list(weights)
        return weights

    def ema_weights(self) -> dict[str, torch.Tensor]:
        return {} if self.export else read_ema_weights(self.path)


def _export_meta(d: Path) -> dict | None:
    import json

    try:
        meta = json.loads((d / EXPORT_CONFIG).read_text()).get(EXPORT_KEY)
    except (OSError, ValueError, AttributeError):
        return None
    return meta if isinstance(meta, dict) and "config" in meta else None


def open_saved(path: str | Path) -> Saved:
    return Saved(path)


def _walk_keys(node, name: str):
    """(parent DictConfig, key) of every key called ``name`` in a config tree."""
    from omegaconf import DictConfig

    if isinstance(node, DictConfig):
        for k in node:
            if k == name:
                yield node, k
            else:
                yield from _walk_keys(node._get_node(k), name)


def apply_load_policy(cfg, policy: LoadPolicy) -> None:
    """Every ``trust_remote_code`` / ``local_files_only`` of a saved config takes the policy's
    value: a file never decides them (the sources decide trust per path, :mod:`mmldlm.sources`)."""
    for parent, key in _walk_keys(cfg, "trust_remote_code"):
        parent[key] = policy.trust_remote_code
    for parent, key in _walk_keys(cfg, "local_files_only"):
        parent[key] = policy.local_files_only


def rebuild_from_checkpoint(checkpoint: str | Path | Saved, device: str = "cpu", policy: LoadPolicy | None = None,
                            expect: str | None = None, ema: bool = True, adjust=None):
    """(objective in eval mode, tokenizer, config) of a checkpoint, run directory or export (or
    one a CLI opened already, a :class:`Saved`):
    the family its config names, its sources under ``policy`` (fingerprints compared with the
    recorded ones), the architecture, the sources' weights, the trained weights. ``expect``:
    the family a CLI handles (another is refused, naming it). ``ema``: the EMA weights where the
    run kept them, as the loop's eval used them (``objective.ema_weights`` says whether).
    ``adjust(cfg)``: a CLI's change to the saved config before the build (the fine-tune export
    reloads the base in full precision); the policy still decides what it decides."""
    from omegaconf import OmegaConf

    from mmldlm.objective import lookup, readers

    policy = policy or LoadPolicy()
    saved = checkpoint if isinstance(checkpoint, Saved) else Saved(checkpoint)
    name = saved.objective or expect
    if name is None or (expect is not None and name != expect):
        raise CheckpointPolicyError(f"{saved.path} is a run of objective {name!r}; this command reads {expect!r} "
                                    f"runs: {readers(name)}")
    entry = lookup(name)
    cfg = OmegaConf.merge(OmegaConf.structured(entry.schema), saved.config)
    apply_load_policy(cfg, policy)
    if adjust is not None:
        adjust(cfg)
        apply_load_policy(cfg, policy)
    sources = open_sources(cfg, entry, policy, saved_by=str(saved.path), inside=saved.inside)
    check_unchanged(saved.sources, sources.records(), policy.allow_source_change, str(saved.path),
                    "--allow-source-change (eval CLIs: allow_source_change=true)")
    torch.manual_seed(cfg.training.seed)
    obj = entry.build(cfg, sources)
    place(obj, device)
    sources.load(obj, device)
    load_trainable_state_dict(obj, saved.weights())
    averaged = saved.ema_weights() if ema else {}
    if averaged:
        obj.load_state_dict(averaged, strict=False)
    obj.ema_weights = bool(averaged) or bool(saved.ema)
    obj.sources_used = sources.records()  # what was loaded, for exports and reports
    obj.trained_keys = set(saved.weights_keys)
    return obj.to(device).eval(), sources.tokenizer, cfg
