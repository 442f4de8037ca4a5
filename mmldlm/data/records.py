"""Records and latent arrays: one place for every bad-input reason.

A dataset is a JSON list or a JSONL file of records (or a text file: one record ``{"text": line}``
per non-empty line, ``data.dataset_name: text``). Core fields: ``text`` (a non-empty string),
and, unless ``data.latent_dim`` is null, ``latent_path`` (relative to the JSON file's directory or
``data.latent_data_root``, never outside it, symlinks followed, unless
``data.allow_paths_outside_root``) with an
optional ``latent_row`` (a row of a 2-D shard ``[N, D]``). Without ``latent_row`` the file holds
one sample: ``[D]``, ``[1, D]`` or ``[K, D]``. A family may require more fields
(:class:`RecordFields`). Every problem is a :class:`DataError` naming the JSON file, the record
number and the reason. ``.npy`` files are read with ``allow_pickle=False`` and only when they are
regular files; shard rows by positioned reads (a rank's memory stays independent of the corpus).
"""
from __future__ import annotations

import os
import stat
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


class DataError(ValueError):
    """A bad record: the message names the JSON file, the record and the reason."""

    def __init__(self, json_path: str | os.PathLike, record: int | None, reason: str,
                 line: int | None = None):
        self.json_path, self.record, self.reason = str(json_path), record, reason
        where = "" if record is None else f": record {record}"
        if line is not None:
            where += f" (line {line})"
        super().__init__(f"{json_path}{where}: {reason}")
        self.line = line

    def __reduce__(self):  # crosses from DataLoader workers intact
        return DataError, (self.json_path, self.record, self.reason, self.line)


class LatentError(ValueError):
    """A latent file problem; the dataset wraps it into a DataError with the record."""


@dataclass(frozen=True)
class RecordFields:
    """Record fields a family needs besides the core ones. ``check(record) -> reason | None``
    validates one parsed record; ``name`` and ``version`` identify the rules (a cached record
    index is rebuilt when they change)."""

    name: str = "core"
    version: int = 1
    required: tuple[str, ...] = ()
    check: Callable[[dict], str | None] | None = None
    needs_text: bool = True  # records must carry a non-empty ``text``
    # the family's reading of a parsed JSON value into its record (e.g. an SFT line that is a bare
    # array of messages -> {"messages": [...]}); raises ValueError with the reason for a bad one.
    # Applied when the index is built and whenever a record is read, so both see the same record.
    normalize: Callable[[object], dict] | None = None
    # fields holding a file path (an image): a non-empty string relative to the records' root (the
    # JSON file's directory or data.latent_data_root), confined to it as latent_path is; the
    # dataset hands each item the resolved paths (``item["files"]``)
    paths: tuple[str, ...] = ()


@dataclass(frozen=True)
class RecordRules:
    """Everything that decides whether a record is good."""

    latent_dim: int | None = None  # None: records need no latent
    latent_root: str | None = None  # None: the JSON file's directory
    allow_outside: bool = False
    fields: RecordFields = RecordFields()
    format: str = "json"  # json: a JSON list or JSONL file; text: one document per non-empty line

    def key(self) -> dict:
        """What a cached index must have been built with to be reused."""
        key = {"latent_dim": self.latent_dim, "latent_root": self.latent_root, "allow_outside": self.allow_outside,
               "fields": [self.fields.name, self.fields.version, list(self.fields.required), self.fields.needs_text]}
        if self.fields.paths:  # absent without path fields: existing indexes stay valid
            key["fields"].append(list(self.fields.paths))
        if self.format != "json":  # absent for JSON: indexes built before text files existed stay valid
            key["format"] = self.format
        return key


def regular_file_problem(path: str | os.PathLike) -> str | None:
    """Why ``path`` cannot be opened as data (missing, or not a regular file: a FIFO would hang
    the reader, a device would stream forever), or None. ``stat`` never blocks."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "not found"
    except OSError as e:
        return f"cannot be read ({e.strerror or e})"
    if not stat.S_ISREG(mode):
        kind = "a directory" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) else "not a regular file"
        return f"is {kind}; only regular files are read"
    return None


def outside_root(path: str) -> bool:
    """True when a record's relative path (``latent_path``, a family's path field) is absolute or
    climbs out of its root with ``..``."""
    norm = os.path.normpath(path)
    return os.path.isabs(path) or norm == ".." or norm.startswith(".." + os.sep)


def escapes_root(path: str, real_root: str) -> str | None:
    """Where ``path`` really lies (symlinks followed) when that is outside ``real_root`` (itself a
    real path), else None: a link inside the root may not lead a record's file out of it."""
    real = os.path.realpath(path)
    inside = real == real_root or real.startswith(real_root.rstrip(os.sep) + os.sep)
    return None if inside else real


def escape_problem(key: str, rel: str, path: str, real_root: str) -> str | None:
    """The bad-record reason of a record path that a symlink leads out of its root, or None."""
    real = escapes_root(path, real_root)
    if real is None:
        return None
    return (f"{key} {rel!r} leads out of its root {real_root} through a symlink (to {real}); set "
            "data.allow_paths_outside_root=true to allow it")


def normalized(obj, fields: RecordFields):
    """``(record, None)``, or ``(None, reason)`` when the family's ``normalize`` rejects ``obj``."""
    if fields.normalize is None:
        return obj, None
    try:
        return fields.normalize(obj), None
    except ValueError as e:
        return None, str(e)


def record_problem(obj, rules: RecordRules) -> str | None:
    """Why a parsed record is bad (fields and types only; files are checked elsewhere), or None."""
    f = rules.fields
    if not isinstance(obj, dict):
        return f"record is a {type(obj).__name__}, expected an object"
    if f.needs_text:
        if "text" not in obj:
            return "record has no 'text' field"
        if not isinstance(obj["text"], str):
            return f"text is a {type(obj['text']).__name__}, expected a string"
        if not obj["text"].strip():
            return "text is empty"
    if rules.latent_dim is not None:
        if "latent_path" not in obj:
            return "record has no 'latent_path' field"
        if not isinstance(obj["latent_path"], str) or not obj["latent_path"]:
            return "latent_path must be a non-empty string"
        row = obj.get("latent_row")
        if row is not None and (isinstance(row, bool) or not isinstance(row, int) or row < 0):
            return f"latent_row must be a non-negative integer, got {row!r}"
        if not rules.allow_outside and outside_root(obj["latent_path"]):
            return (f"latent_path {obj['latent_path']!r} points outside its root (absolute, or climbing out "
                    "with '..'); set data.allow_paths_outside_root=true to allow it")
    for key in f.required:
        if key not in obj:
            return f"record has no {key!r} field"
    for key in f.paths:
        if not isinstance(obj.get(key), str) or not obj[key]:
            return f"{key} must be a non-empty string"
        if not rules.allow_outside and outside_root(obj[key]):
            return (f"{key} {obj[key]!r} points outside its root (absolute, or climbing out with '..'); set "
                    "data.allow_paths_outside_root=true to allow it")
    return f.check(obj) if f.check else None


# -- latent arrays ---------------------------------------------------------------------------
def _check_array_meta(path: str, dtype: np.dtype, shape: tuple, latent_dim: int | None) -> None:
    if dtype.hasobject:
        raise LatentError(f"latent file {path} holds a pickled object array; refusing to load it "
                          "(allow_pickle=False) - re-save it as a float array")
    if not np.issubdtype(dtype, np.floating):
        raise LatentError(f"latent file {path} has dtype {dtype}, expected floating point (float16/32/64)")
    if latent_dim is not None and shape[-1] != latent_dim:
        raise LatentError(f"latent file {path} has dim {shape[-1]} (shape {list(shape)}), "
                          f"expected {latent_dim} (data.latent_dim)")


def _file_ok(path: str) -> None:
    problem = regular_file_problem(path)
    if problem == "not found":
        raise LatentError(f"latent file not found: {path}")
    if problem:
        raise LatentError(f"latent file {path} {problem}")


def _read_header(f, path: str) -> tuple[tuple, bool, np.dtype]:
    try:
        version = np.lib.format.read_magic(f)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        return read(f)
    except ValueError as e:
        if "pickle" in str(e) or "Object arrays" in str(e):
            raise LatentError(f"latent file {path} holds a pickled object array; refusing to load it "
                              "(allow_pickle=False) - re-save it as a float array") from None
        raise LatentError(f"latent file {path} is not a .npy array ({e})") from None
    except (EOFError, OSError) as e:
        raise LatentError(f"latent file {path} is truncated or unreadable ({e})") from None


class LatentShard:
    """A 2-D ``[N, D]`` shard (its header checked once) read row by row with positioned reads
    straight into the output: no memory map, whose touched pages would count against a rank's
    memory until they covered every latent of the corpus."""

    def __init__(self, path: str, latent_dim: int | None):
        _file_ok(path)
        self.path = path
        with open(path, "rb") as f:
            shape, fortran, dtype = _read_header(f, path)
            self.data_offset = f.tell()
        if len(shape) != 2:
            raise LatentError(f"shard {path} has shape {list(shape)}; a file addressed with latent_row must "
                              "be 2-D [N, D]")
        _check_array_meta(path, dtype, shape, latent_dim)
        if fortran:
            raise LatentError(f"shard {path} is stored in Fortran order; re-save it C-contiguous "
                              "(np.save(path, np.ascontiguousarray(a)))")
        self.rows, self.dim, self.dtype = shape[0], shape[1], dtype
        need = self.data_offset + self.rows * self.dim * dtype.itemsize
        if os.path.getsize(path) < need:
            raise LatentError(f"latent file {path} is truncated ({os.path.getsize(path)} bytes, the header "
                              f"promises {need})")
        self._fd: int | None = None
        self._pid = -1

    def read(self, rows: np.ndarray) -> np.ndarray:
        """``rows`` as float32 ``[n, D]``, in the order given."""
        if self._fd is None or self._pid != os.getpid():  # one descriptor per process (workers fork)
            self._fd, self._pid = os.open(self.path, os.O_RDONLY), os.getpid()
        row_bytes = self.dim * self.dtype.itemsize
        raw = np.empty((len(rows), self.dim), dtype=self.dtype)
        buf = memoryview(raw).cast("B")
        for j, r in enumerate(np.asarray(rows, dtype=np.int64).tolist()):
            os.preadv(self._fd, [buf[j * row_bytes: (j + 1) * row_bytes]], self.data_offset + r * row_bytes)
        return raw if raw.dtype == np.float32 else raw.astype(np.float32)


def _load_npy(path: str) -> np.ndarray:
    """A regular ``.npy`` file, never unpickled; LatentError naming the file otherwise."""
    _file_ok(path)
    try:
        return np.load(path, allow_pickle=False)
    except ValueError as e:
        if "Object arrays" in str(e):
            raise LatentError(f"latent file {path} holds a pickled object array; refusing to load it "
                              "(allow_pickle=False) - re-save it as a float array") from None
        if "pickled data" in str(e):  # no .npy magic: numpy would fall back to unpickling
            raise LatentError(f"latent file {path} is not a .npy array (it would have to be "
                              "unpickled; refusing: allow_pickle=False)") from None
        raise LatentError(f"latent file {path} is truncated or not a .npy array ({e})") from None
    except (EOFError, OSError) as e:
        raise LatentError(f"latent file {path} is truncated or unreadable ({e})") from None


def load_latent_file(path: str, latent_dim: int | None) -> np.ndarray:
    """A per-record latent file as float32 ``[K, D]`` (``[D]`` and ``[1, D]`` give K = 1)."""
    arr = _load_npy(path)
    if arr.ndim not in (1, 2) or arr.size == 0:
        raise LatentError(f"latent file {path} has shape {list(arr.shape)}, expected [D], [1, D] or [K, D]")
    _check_array_meta(path, arr.dtype, arr.shape, latent_dim)
    return np.asarray(arr, dtype=np.float32).reshape(-1, arr.shape[-1])


def non_finite_problem(arr: np.ndarray, where: str) -> str | None:
    n_bad = arr.size - int(np.isfinite(arr).sum())
    return f"latent in {where} has {n_bad} non-finite values (NaN/Inf)" if n_bad else None


def read_latent_input(path: str, latent_dim: int, multi: bool = False) -> np.ndarray:
    """Latents handed to a sampling CLI, one sample per row: ``[N, D]`` (``[D]`` is one row; with
    ``multi`` also ``[N, K, D]``) as float32, refused as training refuses them (pickles, non-float
    dtypes, another dimension) and with the first row holding NaN/Inf named (such a row decodes to
    garbage text). Raises :class:`LatentError` (a ValueError) naming the file."""
    arr = _load_npy(str(path))
    arr = arr[None] if arr.ndim == 1 else arr
    shapes = "[N, D] or [N, K, D]" if multi else "[N, D]"
    if arr.ndim not in ((2, 3) if multi else (2,)) or arr.size == 0:
        raise LatentError(f"latents {path} have shape {list(arr.shape)}, expected {shapes} with D = {latent_dim}")
    _check_array_meta(str(path), arr.dtype, arr.shape, latent_dim)
    finite = np.isfinite(arr).reshape(arr.shape[0], -1).all(axis=1)
    if not finite.all():
        rows = np.flatnonzero(~finite)
        raise LatentError(f"latents {path}: row {rows[0]} has non-finite values (NaN/Inf); {len(rows)} of "
                          f"{arr.shape[0]} rows do. Fix or drop them")
    return np.asarray(arr, dtype=np.float32)
