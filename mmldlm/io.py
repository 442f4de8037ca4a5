"""Atomic file writes: the one implementation (checkpoints, logs, the record index, extraction);
and :func:`load_tensors`, the one reader of the tensor files users hand the CLIs.

A file is written to a temporary name in the same directory, flushed, fsynced and renamed over
the target, then the directory is fsynced: a reader sees the old file or the new one, never half
of one, whenever the writer dies. A failed write removes its temporary file.
"""
from __future__ import annotations

import json
import os
import re
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO


def fsync_dir(d: Path) -> None:
    fd = os.open(d, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, write: Callable[[BinaryIO], Any], unique_tmp: bool = False) -> None:
    """``write(f)`` into ``path`` atomically. ``unique_tmp`` gives the temporary file a unique name
    (several processes may write the same target; the last rename wins)."""
    path = Path(path)
    suffix = f".tmp{os.getpid()}.{uuid.uuid4().hex[:8]}" if unique_tmp else ".tmp"
    tmp = path.with_name(path.name + suffix)
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # never leave a partial file behind
        raise
    fsync_dir(path.parent)


def write_json_atomic(path: Path, obj: Any, unique_tmp: bool = False, indent: int | None = None) -> None:
    write_atomic(path, lambda f: f.write(json.dumps(obj, ensure_ascii=False, indent=indent).encode("utf-8")),
                 unique_tmp)


def write_text_atomic(path: Path, text: str, unique_tmp: bool = False) -> None:
    write_atomic(path, lambda f: f.write(text.encode("utf-8")), unique_tmp)


def load_tensors(path: str | os.PathLike, what: str = "file"):
    """``torch.load(weights_only=True)`` of a file a user hands a CLI (a samples file). Whatever
    goes wrong is a ValueError naming the file in one line: missing, not a torch.save file, cut
    short, or a payload weights-only loading refuses (pickled Python objects, which it never runs)."""
    import pickle

    import torch

    if not Path(path).is_file():
        raise ValueError(f"{what} {path}: not found (or not a regular file)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(e))
        if found is None:  # not a pickle torch wrote (random bytes, another format)
            raise ValueError(f"{what} {path}: not a torch.save file, or cut short (UnpicklingError)") from None
        raise ValueError(f"{what} {path}: refused, it holds pickled Python objects ({found.group(1)}) that "
                         "weights-only loading does not run; save plain tensors, lists, dicts, strings and "
                         "numbers") from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise ValueError(f"{what} {path}: not a torch.save file, or cut short ({type(e).__name__})") from None
