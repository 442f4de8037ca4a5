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


def _write_atomic(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def list_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints, oldest first."""
    if not run_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in run_dir.iterdir() if (m := _CKPT.match(p.name))]
    return sorted(found)


def save_checkpoint(run_dir: Path, step: int, state: dict, keep_last: int) -> Path:
    path = run_dir / f"checkpoint_step_{step}.pt"
    _write_atomic(path, lambda f: torch.save(state, f))
    _write_atomic(run_dir / "latest", lambda f: f.write(f"{path.name}\n".encode()))
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


def resolve_resume(run_dir: Path, resume: str | None) -> tuple[Path, dict] | None:
    """``null`` -> None; a path -> that checkpoint; ``auto`` -> the newest checkpoint that loads,
    or None when the run directory holds none."""
    if resume is None:
        return None
    if resume != "auto":
        return Path(resume), load_checkpoint(Path(resume))
    # A file only gets its final name once complete, so the highest step is the newest complete
    # one even where a kill left ``latest`` one behind.
    for _, p in reversed(list_checkpoints(run_dir)):
        try:
            return p, load_checkpoint(p)
        except Exception as e:  # noqa: BLE001 - an unreadable file: try the next older one
            log.warning("checkpoint %s does not load (%s); trying an older one", p, e)
    return None


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


def rebuild_from_checkpoint(checkpoint: str | Path, schema_cls, build_objective, device: str = "cpu"):
    """(objective in eval mode, tokenizer, config) rebuilt from a checkpoint of the shared loop:
    its saved config, the tokenizer it names, the objective's factory, then the trained weights.
    Frozen parts absent from the file are rebuilt as at training time (same seed, same source)."""
    from omegaconf import OmegaConf

    from latentDLM_mmdit.data_simple import load_tokenizer

    state = load_checkpoint(resolve_checkpoint(checkpoint))
    cfg = OmegaConf.merge(OmegaConf.structured(schema_cls), state["config"])
    tok = load_tokenizer(cfg.data.tokenizer_name)
    torch.manual_seed(cfg.training.seed)
    obj = build_objective(cfg, tok)
    load_trainable_state_dict(obj, state["model"])
    return obj.to(device).eval(), tok, cfg
