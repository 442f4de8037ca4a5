"""Rebuilding a trained objective from a checkpoint, for the CLIs (sample, decode, encode, export).

The checkpoint records its objective's registered name, so any family's run rebuilds through the
registry. What the checkpoint's saved config may not decide is fixed by the user's
:class:`LoadPolicy`: remote code, downloads and where a pretrained backbone comes from.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from mmldlm.train.checkpointing import (
    load_checkpoint,
    load_trainable_state_dict,
    read_ema_weights,
    read_model_weights,
    resolve_checkpoint,
)


class CheckpointPolicyError(RuntimeError):
    """A checkpoint asks for something only its user may turn on (remote code, a model location)."""


@dataclass
class LoadPolicy:
    """What the person rebuilding a model from a checkpoint allows, from their own command line.
    Nothing read from the checkpoint file can turn on remote code, allow downloads or choose where
    a pretrained backbone is loaded from: these come from here (safe defaults), never the file."""

    trust_remote_code: bool = False
    local_files_only: bool = True
    backbone_dir: str | None = None  # families with a frozen backbone need it named (--backbone-dir)
    tokenizer: str | None = None  # default: the tokenizer the run used (loaded without code)


def _walk_keys(node, name: str):
    """(parent DictConfig, key) of every key called ``name`` in a config tree."""
    from omegaconf import DictConfig

    if isinstance(node, DictConfig):
        for k in node:
            if k == name:
                yield node, k
            else:
                yield from _walk_keys(node._get_node(k), name)


def apply_load_policy(cfg, policy: LoadPolicy, source: str) -> None:
    """Overwrite every ``trust_remote_code`` / ``local_files_only`` of a checkpoint's config with
    the policy's. A config that asks for remote code the user did not allow is refused."""
    for parent, key in _walk_keys(cfg, "trust_remote_code"):
        if parent[key] and not policy.trust_remote_code:
            raise CheckpointPolicyError(
                f"{source} was trained with {key}=true: remote code is never turned on from a checkpoint. "
                "If you trust the backbone directory's code, pass --trust-remote-code on the command line")
        parent[key] = policy.trust_remote_code
    for parent, key in _walk_keys(cfg, "local_files_only"):
        parent[key] = policy.local_files_only


def rebuild_from_checkpoint(checkpoint: str | Path, device: str = "cpu", policy: LoadPolicy | None = None,
                            expect: str | None = None, ema: bool = True, adjust=None):
    """(objective in eval mode, tokenizer, config) rebuilt from a checkpoint of the shared loop:
    the family its ``objective`` names, its saved config under the user's :class:`LoadPolicy`
    (plus the family's ``on_rebuild`` hook, e.g. the bridge's ``--backbone-dir``), the tokenizer,
    the family's factory, then the trained weights. Frozen parts absent from the file are rebuilt
    as at training time (same seed, same source). ``expect``: the family a CLI handles (a
    checkpoint of another family is refused; one written before checkpoints named their family is
    taken to be it). ``ema``: the EMA weights where the run kept them (``training.ema``), as the
    loop's eval used them; the objective's ``ema_weights`` says whether they were. ``adjust(cfg)``:
    a CLI's own change to the saved config before the build (e.g. the fine-tune export reloads the
    base in full precision); it may not touch what the policy decides."""
    from omegaconf import OmegaConf

    from mmldlm.data.tokenizer import load_tokenizer
    from mmldlm.objective import lookup

    policy = policy or LoadPolicy()
    path = resolve_checkpoint(checkpoint)
    state = load_checkpoint(path)
    name = state["config"].get("objective") or expect
    if name is None or (expect is not None and name != expect):
        from mmldlm.objective import readers

        raise CheckpointPolicyError(f"{path} is a checkpoint of objective {name!r}; this command reads {expect!r} "
                                    f"runs: {readers(name)}")
    entry = lookup(name)
    cfg = OmegaConf.merge(OmegaConf.structured(entry.schema), state["config"])
    apply_load_policy(cfg, policy, str(path))
    if entry.on_rebuild is not None:
        entry.on_rebuild(cfg, policy, str(path))
    if adjust is not None:
        adjust(cfg)
        apply_load_policy(cfg, policy, str(path))
    if policy.tokenizer:
        cfg.data.tokenizer_name = policy.tokenizer
    tok = load_tokenizer(cfg.data.tokenizer_name, policy.trust_remote_code, policy.local_files_only)
    torch.manual_seed(cfg.training.seed)
    obj = entry.build(cfg, tok)
    load_trainable_state_dict(obj, read_model_weights(path))
    averaged = read_ema_weights(path) if ema else {}
    if averaged:
        obj.load_state_dict(averaged, strict=False)
    obj.ema_weights = bool(averaged)
    return obj.to(device).eval(), tok, cfg
