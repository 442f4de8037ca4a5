"""Atomic checkpoints with a ``latest`` pointer, pruning, and ``training.resume`` resolution.

Layout: ``{save_dir}/{run_name}/checkpoint_step_<N>.pt`` and ``latest`` (the file name of the
newest complete checkpoint). A checkpoint is written to ``<name>.tmp``, fsynced, renamed, the
directory fsynced, and only then does ``latest`` move (same protocol), so a process killed at any
moment leaves ``latest`` naming a complete file. Loading uses ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import logging
import os
import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger(__name__)

_CKPT = re.compile(r"^checkpoint_step_(\d+)\.pt$")


def _fsync_dir(d: Path) -> None:
    fd = os.open(d, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written (disk full, quota, I/O error); the message names the
    directory, the free space and the size needed. Nothing partial is left behind."""


def _write_atomic(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # never leave a partial file behind
        raise
    _fsync_dir(path.parent)


def state_nbytes(obj) -> int:
    """Bytes of the tensors in a (nested) state: what ``torch.save`` will write, give or take headers."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(state_nbytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(state_nbytes(v) for v in obj)
    return 64


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**28 else f"{n / 2**20:.1f} MiB"


def check_free_space(directory: Path, needed: int) -> None:
    """Raise :class:`CheckpointWriteError` before writing when ``directory`` has less than
    ``needed`` bytes (plus 5% and 16 MiB of slack) free."""
    free = shutil.disk_usage(directory).free
    if free < needed * 1.05 + 16 * 2**20:
        raise CheckpointWriteError(f"not enough space for a checkpoint in {directory}: {_gib(free)} free, "
                                   f"about {_gib(needed)} needed; free space (or point logging.save_dir "
                                   "elsewhere and copy the run directory there), then resume with "
                                   "training.resume=auto")


def list_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints, oldest first."""
    if not run_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in run_dir.iterdir() if (m := _CKPT.match(p.name))]
    return sorted(found)


def save_checkpoint(run_dir: Path, step: int, state: dict, keep_last: int) -> Path:
    """Write atomically, then move ``latest``, then prune. Raises :class:`CheckpointWriteError`
    (with the temp file removed) when the disk cannot take it."""
    path = run_dir / f"checkpoint_step_{step}.pt"
    needed = state_nbytes(state)
    check_free_space(run_dir, needed)
    try:
        _write_atomic(path, lambda f: torch.save(state, f))
        _write_atomic(run_dir / "latest", lambda f: f.write(f"{path.name}\n".encode()))
    except (OSError, RuntimeError) as e:  # torch.save reports a short write as RuntimeError
        free = shutil.disk_usage(run_dir).free
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointWriteError(f"writing checkpoint {path} failed ({reason}); {_gib(free)} free in "
                                   f"{run_dir}, about {_gib(needed)} needed. Nothing partial was left; "
                                   "free space, then resume with training.resume=auto") from None
    for _, old in list_checkpoints(run_dir)[:-keep_last]:
        if old != path:
            old.unlink(missing_ok=True)
    return path


def load_checkpoint(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file, or a run directory (the file its ``latest`` names)."""
    p = Path(path)
    if p.is_dir():
        if not (p / "latest").is_file():
            raise SystemExit(f"{p} holds no 'latest' checkpoint pointer; pass a checkpoint_step_N.pt file")
        p = p / (p / "latest").read_text().strip()
    if not p.is_file():
        raise SystemExit(f"checkpoint {p} does not exist")
    return p


def remove_stale_temps(run_dir: Path) -> None:
    """Delete ``*.tmp`` files that a killed writer left behind."""
    for p in run_dir.glob("*.tmp"):
        p.unlink(missing_ok=True)


def read_latest(run_dir: Path) -> Path | None:
    """The checkpoint ``latest`` names, or None when there is no readable pointer."""
    try:
        name = (run_dir / "latest").read_text().strip()
    except OSError:
        return None
    return run_dir / name if _CKPT.match(name) else None


def resolve_resume(run_dir: Path, resume: str | None) -> tuple[Path, dict] | None:
    """``null`` -> None; a path -> that checkpoint; ``auto`` -> the checkpoint ``latest`` names
    (the head of the run's timeline, also after a rollback), falling back to the newest checkpoint
    that loads only when ``latest`` is missing or does not load; None when there is none."""
    if resume is None:
        return None
    if resume != "auto":
        return Path(resume), load_checkpoint(Path(resume))
    head = read_latest(run_dir)
    if head is not None:
        try:
            return head, load_checkpoint(head)
        except Exception as e:  # noqa: BLE001 - fall back to a scan below
            log.warning("latest names %s, which does not load (%s); scanning for the newest that does", head, e)
    for _, p in reversed(list_checkpoints(run_dir)):
        try:
            return p, load_checkpoint(p)
        except Exception as e:  # noqa: BLE001 - an unreadable file: try the next older one
            log.warning("checkpoint %s does not load (%s); trying an older one", p, e)
    return None


def abandon_newer(run_dir: Path, step: int) -> list[Path]:
    """Resuming at ``step`` from an explicit checkpoint abandons the run's later timeline: its
    checkpoints (step > ``step``) move aside, and ``latest`` names the newest one left (or is
    removed). Returns the checkpoints moved."""
    from latentDLM_mmdit.run_dir import set_aside

    newer = [p for s, p in list_checkpoints(run_dir) if s > step]
    if not newer:
        return []
    dest = set_aside(run_dir, newer, f"after_step_{step}")
    left = list_checkpoints(run_dir)
    if left:
        _write_atomic(run_dir / "latest", lambda f: f.write(f"{left[-1][1].name}\n".encode()))
    else:
        (run_dir / "latest").unlink(missing_ok=True)
    log.warning("resuming at step %d: %d later checkpoint(s) of the abandoned timeline moved to %s",
                step, len(newer), dest)
    return newer


def rng_state(device: torch.device) -> dict:
    """This process's RNG states in types that ``weights_only`` loading accepts."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    state = {"torch": torch.get_rng_state(),
             "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
             "python": [py_state[0], list(py_state[1]), py_state[2]]}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    random.setstate((state["python"][0], tuple(state["python"][1]), state["python"][2]))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def trainable_state_dict(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Parameters that train plus buffers; frozen parameters (a pretrained backbone) are left
    out - the objective records their origin in its ``checkpoint_metadata``."""
    frozen = {n for n, p in module.named_parameters() if not p.requires_grad}
    return {k: v for k, v in module.state_dict().items() if k not in frozen}


def load_trainable_state_dict(module: torch.nn.Module, sd: dict[str, torch.Tensor]) -> None:
    frozen = {n for n, p in module.named_parameters() if not p.requires_grad}
    missing, unexpected = module.load_state_dict(sd, strict=False)
    missing = [k for k in missing if k not in frozen]
    if missing or unexpected:
        raise RuntimeError(f"checkpoint does not match the model: missing {missing[:5]}, "
                           f"unexpected {unexpected[:5]}")


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
        for k in node.keys():
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


def rebuild_from_checkpoint(checkpoint: str | Path, schema_cls, build_objective, device: str = "cpu",
                            policy: LoadPolicy | None = None, locate=None):
    """(objective in eval mode, tokenizer, config) rebuilt from a checkpoint of the shared loop:
    its saved config under the user's :class:`LoadPolicy`, the tokenizer, the objective's factory,
    then the trained weights. ``locate(cfg, policy, source)`` lets a family with a pretrained
    backbone put the user's ``--backbone-dir`` into the config (or refuse without one). Frozen
    parts absent from the file are rebuilt as at training time (same seed, same source)."""
    from omegaconf import OmegaConf

    from latentDLM_mmdit.data_simple import load_tokenizer

    policy = policy or LoadPolicy()
    path = resolve_checkpoint(checkpoint)
    state = load_checkpoint(path)
    cfg = OmegaConf.merge(OmegaConf.structured(schema_cls), state["config"])
    apply_load_policy(cfg, policy, str(path))
    if locate is not None:
        locate(cfg, policy, str(path))
    if policy.tokenizer:
        cfg.data.tokenizer_name = policy.tokenizer
    tok = load_tokenizer(cfg.data.tokenizer_name, policy.trust_remote_code, policy.local_files_only)
    torch.manual_seed(cfg.training.seed)
    obj = build_objective(cfg, tok)
    load_trainable_state_dict(obj, state["model"])
    return obj.to(device).eval(), tok, cfg
