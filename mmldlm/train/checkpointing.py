"""Atomic checkpoints with a ``latest`` pointer, pruning, and ``training.resume`` resolution.

Layout: ``{save_dir}/{run_name}/checkpoint_step_<N>.pt`` (DDP: one file written by rank 0) or
``checkpoint_step_<N>/`` (FSDP: a ``torch.distributed.checkpoint`` directory, each rank writing
its shards of the model and optimizer, plus ``extra.pt`` with the rest), and ``latest`` (the
name of the newest complete checkpoint). A checkpoint is written under a temporary name, fsynced
and renamed, the directory fsynced, and only then does ``latest`` move (same protocol), so a
process killed at any moment leaves ``latest`` naming a complete checkpoint. Loading uses
``torch.load(weights_only=True)``; a sharded checkpoint loads onto any number of ranks, with or
without FSDP (DCP reshards).

A checkpoint is complete only when every file it is made of is there with its size: a sharded
one lists its files in ``manifest.json`` (size each, and a blake2b of those small enough to hash
cheaply); one written before manifests is held to the files and bytes its DCP ``.metadata``
names. ``resume=auto`` takes the newest complete checkpoint (``latest`` first) and says which it
skipped and why (:func:`incomplete`).
"""
from __future__ import annotations

import hashlib
import json
import logging
import random
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch

from mmldlm.io import write_atomic, write_text_atomic

log = logging.getLogger(__name__)

_CKPT = re.compile(r"^checkpoint_step_(\d+)(\.pt)?$")
EXTRA = "extra.pt"  # a sharded checkpoint's unsharded part
MANIFEST = "manifest.json"  # a sharded checkpoint's files: name -> size (and blake2b when small)
HASH_LIMIT = 64 * 2**20  # files up to this size are hashed into the manifest (extra.pt, .metadata, small shards)


class CheckpointError(ValueError):
    """A checkpoint that cannot be used (incomplete, unreadable); the message names it and why."""


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written (disk full, quota, I/O error); the message names the
    directory, the free space and the size needed. Nothing partial is left behind."""


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


def _blake2b(path: Path) -> str:
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_manifest(directory: Path) -> None:
    """``manifest.json``: every file of a sharded checkpoint with its size (and blake2b when small)."""
    from mmldlm.io import write_json_atomic

    files = {}
    for f in sorted(p for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST):
        size = f.stat().st_size
        files[str(f.relative_to(directory))] = {"size": size, **({"blake2b": _blake2b(f)} if size <= HASH_LIMIT
                                                                  else {})}
    write_json_atomic(directory / MANIFEST, {"version": 1, "files": files})


def _dcp_problem(path: Path) -> str | None:
    """A sharded checkpoint without a manifest (written before them): the files and bytes its DCP
    ``.metadata`` names, and its extra.pt."""
    from torch.distributed.checkpoint import FileSystemReader

    if not (path / EXTRA).is_file():
        return f"{EXTRA} is missing"
    try:
        storage = FileSystemReader(str(path)).read_metadata().storage_data or {}
    except Exception as e:  # noqa: BLE001 - a missing or cut .metadata raises whatever unpickling raises
        return f"its .metadata does not read ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
    need: dict[str, int] = {}
    for info in storage.values():
        need[info.relative_path] = max(need.get(info.relative_path, 0), info.offset + info.length)
    for name, size in sorted(need.items()):
        f = path / name
        if not f.is_file():
            return f"{name} is missing"
        if f.stat().st_size < size:
            return f"{name} is {f.stat().st_size} bytes, its .metadata needs {size}"
    return None


def incomplete(path: Path) -> str | None:
    """Why a checkpoint is not complete (a file of its manifest missing, of another size or
    checksum), or None. A DDP checkpoint is one file, renamed into place whole: loading it is its
    check."""
    path = Path(path)
    if not path.exists():
        return "it does not exist"
    if not path.is_dir():
        return None if path.stat().st_size > 0 else "the file is empty"
    try:
        files = json.loads((path / MANIFEST).read_text())["files"]
    except FileNotFoundError:
        return _dcp_problem(path)
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"its {MANIFEST} does not read ({e})"
    for name, want in files.items():
        f = path / name
        if not f.is_file():
            return f"{name} is missing"
        size = f.stat().st_size
        if size != want["size"]:
            return f"{name} is {size} bytes, its manifest says {want['size']}"
        if "blake2b" in want and _blake2b(f) != want["blake2b"]:
            return f"{name} does not match its checksum (changed after it was written)"
    return None


def list_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """Checkpoints by name (files and sharded directories), oldest first; :func:`incomplete`
    tells whether one is whole."""
    if not run_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in run_dir.iterdir() if (m := _CKPT.match(p.name))]
    return sorted(found)


def is_sharded(path: Path) -> bool:
    return Path(path).is_dir()


def _write_failed(path: Path, e: BaseException, needed: int) -> CheckpointWriteError:
    free = shutil.disk_usage(path.parent).free
    reason = str(e).splitlines()[0] if str(e) else type(e).__name__
    return CheckpointWriteError(f"writing checkpoint {path} failed ({reason}); {_gib(free)} free in "
                                f"{path.parent}, about {_gib(needed)} needed. Nothing partial was left; "
                                "free space, then resume with training.resume=auto")


def _publish(run_dir: Path, path: Path, keep_last: int) -> None:
    """``latest`` names ``path``; checkpoints beyond the newest ``keep_last`` go."""
    write_text_atomic(run_dir / "latest", f"{path.name}\n")
    for _, old in list_checkpoints(run_dir)[:-keep_last]:
        if old != path:
            shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink(missing_ok=True)


def save_checkpoint(run_dir: Path, step: int, state: dict, keep_last: int) -> Path:
    """Rank 0 writes the whole state atomically, then moves ``latest``, then prunes. Raises
    :class:`CheckpointWriteError` (with the temp file removed) when the disk cannot take it."""
    path = run_dir / f"checkpoint_step_{step}.pt"
    needed = state_nbytes(state)
    check_free_space(run_dir, needed)
    try:
        write_atomic(path, lambda f: torch.save(state, f))
        _publish(run_dir, path, keep_last)
    except (OSError, RuntimeError) as e:  # torch.save reports a short write as RuntimeError
        raise _write_failed(path, e, needed) from None
    return path


def _sharded_state(model, optimizer, keys: set[str]):
    from torch.distributed.checkpoint.state_dict import get_state_dict

    msd, osd = get_state_dict(model, optimizer)  # shards (DTensors) by reference, no copy
    return {k: v for k, v in msd.items() if k in keys}, osd


def save_sharded(run_dir: Path, step: int, model, optimizer, extra: dict, keep_last: int, is_main: bool,
                 keys: set[str]) -> Path:
    """Every rank writes its shards of model (the ``keys`` a checkpoint keeps) and optimizer with
    ``torch.distributed.checkpoint`` into a temporary directory; rank 0 adds ``extra.pt``, renames
    the directory into place and moves ``latest``. Collective; a failure anywhere raises a
    :class:`CheckpointWriteError` on every rank and leaves no partial directory."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    from mmldlm.io import fsync_dir
    from mmldlm.train import distributed as D

    msd, osd = get_state_dict(model, optimizer, options=StateDictOptions(ignore_frozen_params=True))
    final, tmp = run_dir / f"checkpoint_step_{step}", run_dir / f"checkpoint_step_{step}.tmp"
    needed = (state_nbytes(msd) + state_nbytes(osd)) * max(1, torch.distributed.get_world_size())
    error = None
    try:
        if is_main:
            check_free_space(run_dir, needed)
            shutil.rmtree(tmp, ignore_errors=True)
    except CheckpointWriteError as e:
        error = e
    if D.broadcast_object(error is None):
        try:
            dcp.save({"model": msd, "optimizer": osd}, checkpoint_id=str(tmp))
            if is_main:  # dcp.save returns once every rank's shards and the .metadata are written
                write_atomic(tmp / EXTRA, lambda f: torch.save(extra, f))
                write_manifest(tmp)
                shutil.rmtree(final, ignore_errors=True)  # the same step saved again (a re-run)
                tmp.rename(final)
                fsync_dir(run_dir)
                _publish(run_dir, final, keep_last)
        except Exception as e:  # noqa: BLE001 - any rank's failure ends the save on every rank
            error = _write_failed(final, e, needed)
            shutil.rmtree(tmp, ignore_errors=True)
    failed = D.all_reduce(torch.tensor(float(error is not None)), op=torch.distributed.ReduceOp.MAX).item()
    if failed:
        if is_main:
            shutil.rmtree(tmp, ignore_errors=True)
        raise error or CheckpointWriteError(f"writing checkpoint {final} failed on another rank (see its log)")
    return final


def load_checkpoint(path: Path) -> dict:
    """The state of a checkpoint file, or the unsharded part of a sharded one (its config, step,
    data position, RNG ...); weights of a sharded one: :func:`read_model_weights` or
    :func:`load_sharded`."""
    path = Path(path)
    return torch.load(path / EXTRA if path.is_dir() else path, map_location="cpu", weights_only=True)


def checkpoint_objective(path: Path) -> str | None:
    """The objective a checkpoint names, read without loading its tensors (memory-mapped)."""
    path = Path(path)
    state = torch.load(path / EXTRA if path.is_dir() else path, map_location="cpu", weights_only=True, mmap=True)
    return (state.get("config") or {}).get("objective")


def load_sharded(path: Path, model, optimizer, keys: set[str]) -> None:
    """Model (``keys``) and optimizer state of a sharded checkpoint into ``model`` / ``optimizer``
    (FSDP or plain, any number of ranks). Collective under a process group."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    msd, osd = _sharded_state(model, optimizer, keys)
    state = {"model": msd, "optimizer": osd}
    dcp.load(state, checkpoint_id=str(path))
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"],
                   options=StateDictOptions(strict=False))


def read_model_weights(path: Path) -> dict[str, torch.Tensor]:
    """The trained weights of any checkpoint as full tensors (CLIs, ``training.init_from``)."""
    path = Path(path)
    if not path.is_dir():
        return load_checkpoint(path)["model"]
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    meta = FileSystemReader(str(path)).read_metadata().state_dict_metadata
    weights = {k[len("model."):]: torch.empty(m.size, dtype=m.properties.dtype) for k, m in meta.items()
               if k.startswith("model.") and isinstance(m, TensorStorageMetadata)}
    state = {"model": weights}
    with warnings.catch_warnings():  # "assuming the intent is to load in a single process": it is
        warnings.simplefilter("ignore", UserWarning)
        dcp.load(state, checkpoint_id=str(path), no_dist=not torch.distributed.is_initialized())
    return state["model"]


def read_ema_weights(path: Path) -> dict[str, torch.Tensor]:
    """The EMA of the trained weights (``training.ema``) as full tensors by parameter name, or {}
    when the run kept none. It lives in the optimizer state: a DDP file names the optimizer's
    parameters in ``optimizer_param_names``; a sharded checkpoint keys it by name already."""
    path = Path(path)
    if not path.is_dir():
        state = load_checkpoint(path)
        names = state.get("optimizer_param_names")
        per_param = state["optimizer"]["state"]
        if not names:
            return {}
        return {names[i]: s["ema"] for i, s in per_param.items() if "ema" in s}
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    meta = FileSystemReader(str(path)).read_metadata().state_dict_metadata
    prefix, suffix = "optimizer.state.", ".ema"
    emas = {k: torch.empty(m.size, dtype=m.properties.dtype) for k, m in meta.items()
            if k.startswith(prefix) and k.endswith(suffix) and isinstance(m, TensorStorageMetadata)}
    if not emas:
        return {}
    state = {"optimizer": {"state": {}}}
    for k, v in emas.items():
        state["optimizer"]["state"].setdefault(k[len(prefix):-len(suffix)], {})["ema"] = v
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        dcp.load(state, checkpoint_id=str(path), no_dist=not torch.distributed.is_initialized())
    return {name: s["ema"] for name, s in state["optimizer"]["state"].items()}


def resolve_checkpoint(path: str | Path) -> Path:
    """A complete checkpoint (file or sharded directory), or of a run directory the newest complete
    one (``latest`` first, saying what it skipped). For the CLIs: exits with one line naming why not."""
    p = Path(path)
    if p.is_dir() and not _CKPT.match(p.name):
        if not (p / "latest").is_file() and not list_checkpoints(p):
            raise SystemExit(f"error: {p} holds no checkpoint ('latest' or checkpoint_step_N); pass a run "
                             "directory or a checkpoint_step_N path")
        found = newest_complete(p, load=False)
        if found is None:
            raise SystemExit(f"error: {p} holds no complete checkpoint (the warnings above say why)")
        return found[0]
    why = incomplete(p)
    if why:
        raise SystemExit(f"error: checkpoint {p} cannot be used: {why}")
    return p


def newest_complete(run_dir: Path, load: bool = True) -> tuple[Path, dict | None] | None:
    """(path, state or None) of the newest complete checkpoint of a run, the one ``latest`` names
    first (the head of the run's timeline, also after a rollback), then the others newest first;
    each one skipped is logged with why. ``load``: also load it (one that does not load is skipped)."""
    head = read_latest(run_dir)
    others = [p for _, p in reversed(list_checkpoints(run_dir)) if p != head]
    skipped = []
    for p in ([head] if head is not None else []) + others:
        why, state = incomplete(p), None
        if why is None and load:
            try:
                state = load_checkpoint(p)
            except Exception as e:  # noqa: BLE001 - an unreadable file: skip it, saying why
                why = f"it does not load ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
        if why is None:
            if skipped:
                log.warning("taking %s: skipped %s", p.name, "; ".join(skipped))
            return p, state
        skipped.append(f"{p.name} ({why})")
    if skipped:
        log.warning("no complete checkpoint in %s: skipped %s", run_dir, "; ".join(skipped))
    return None


def remove_stale_temps(run_dir: Path) -> None:
    """Delete the temporaries (``*.tmp`` files and directories) a killed writer left behind."""
    for p in run_dir.glob("*.tmp"):
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)


def read_latest(run_dir: Path) -> Path | None:
    """The checkpoint ``latest`` names, or None when there is no readable pointer."""
    try:
        name = (run_dir / "latest").read_text().strip()
    except OSError:
        return None
    return run_dir / name if _CKPT.match(name) else None


def resolve_resume(run_dir: Path, resume: str | None) -> tuple[Path, dict] | None:
    """``null`` -> None; a path -> that checkpoint (:class:`CheckpointError` when it is incomplete
    or does not load); ``auto`` -> :func:`newest_complete` (``latest`` first, then the newest
    complete one that loads, saying what it skipped); None when there is none."""
    if resume is None:
        return None
    if resume != "auto":
        path = Path(resume)
        why = incomplete(path)
        if why:
            raise CheckpointError(f"training.resume: checkpoint {path} cannot be used: {why}; pass another, or "
                                  "training.resume=auto for the newest complete one")
        try:
            return path, load_checkpoint(path)
        except Exception as e:  # noqa: BLE001 - whatever torch.load raises on a damaged file
            raise CheckpointError(f"training.resume: checkpoint {path} does not load ({type(e).__name__}); pass "
                                  "another, or training.resume=auto for the newest complete one") from None
    return newest_complete(run_dir)


def abandon_newer(run_dir: Path, step: int) -> list[Path]:
    """Resuming at ``step`` from an explicit checkpoint abandons the run's later timeline: its
    checkpoints (step > ``step``) move aside, and ``latest`` names the newest one left (or is
    removed). Returns the checkpoints moved."""
    from mmldlm.train.run_dir import set_aside

    newer = [p for s, p in list_checkpoints(run_dir) if s > step]
    if not newer:
        return []
    dest = set_aside(run_dir, newer, f"after_step_{step}")
    left = list_checkpoints(run_dir)
    if left:
        write_text_atomic(run_dir / "latest", f"{left[-1][1].name}\n")
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


def _of_frozen(key: str, frozen: set[str]) -> bool:
    """``key`` is a frozen parameter or state attached to one (bitsandbytes' 4-bit weights carry
    their quantisation state as ``<param>.absmax``, ``<param>.quant_state...``)."""
    while True:
        if key in frozen:
            return True
        if "." not in key:
            return False
        key = key.rsplit(".", 1)[0]


def saved_keys(module: torch.nn.Module, carried: set[str] | frozenset = frozenset()) -> set[str]:
    """The state a checkpoint keeps: everything but frozen parameters (a pretrained backbone, which
    the objective records by name in ``checkpoint_metadata``) and their state, except frozen ones
    ``carried`` over from a previous stage (``training.init_from``), which no other place holds."""
    frozen = {n for n, p in module.named_parameters() if not p.requires_grad} - set(carried)
    return {k for k in module.state_dict() if not _of_frozen(k, frozen)}


def load_trainable_state_dict(module: torch.nn.Module, sd: dict[str, torch.Tensor]) -> None:
    frozen = {n for n, p in module.named_parameters() if not p.requires_grad}
    missing, unexpected = module.load_state_dict(sd, strict=False)
    missing = [k for k in missing if not _of_frozen(k, frozen)]
    if missing or unexpected:
        raise RuntimeError(f"checkpoint does not match the model: missing {missing[:5]}, "
                           f"unexpected {unexpected[:5]}")


def carry_over(module: torch.nn.Module, sd: dict[str, torch.Tensor], source: str) -> list[str]:
    """Load a previous stage's trained tensors ``sd`` into ``module`` (``training.init_from``),
    matching names as a stock checkpoint spells them (peft's wrappers seen through, so a fully
    fine-tuned backbone carries into a LoRA stage's base weights). Every tensor must find its
    place: one that has none (another architecture, a LoRA adapter into a run without adapters,
    another shape) is refused, never dropped. Works on a plain module and on an FSDP2-sharded one
    (each rank keeps its shards). Returns the module's names that were loaded."""
    from mmldlm.config import ConfigError
    from mmldlm.sources.weights import canonical

    own = module.state_dict()
    by_canonical = {canonical(k): k for k in own}
    take, homeless = {}, []
    for k, v in sd.items():
        target = k if k in own else by_canonical.get(canonical(k))
        if target is None or tuple(own[target].shape) != tuple(v.shape):
            homeless.append(k if target is None else f"{k} (shape {list(v.shape)} vs {list(own[target].shape)})")
        else:
            take[target] = v
    if not take:
        raise ConfigError(f"training.init_from: {source} shares no weights with this model")
    if homeless:
        lora = any("lora_" in k for k in homeless)
        hint = (" LoRA adapters carry into a run with the same adapters only: export the LoRA run "
                "(python -m mmldlm.export --checkpoint RUN --out DIR) and start from its merged backbone instead"
                if lora else " Start from a checkpoint of this architecture")
        raise ConfigError(f"training.init_from: {len(homeless)} trained tensors of {source} have no place in this "
                          f"model ({', '.join(homeless[:3])}{' ...' if len(homeless) > 3 else ''}); carrying the "
                          f"rest would silently drop them.{hint}")
    from torch.distributed.tensor import DTensor

    if any(isinstance(v, DTensor) for v in own.values()):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        set_model_state_dict(module, take, options=StateDictOptions(full_state_dict=True, strict=False))
    else:
        module.load_state_dict(take, strict=False)
    return sorted(take)
