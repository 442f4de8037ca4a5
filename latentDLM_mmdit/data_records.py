"""Record files and latent arrays: parsing and validation, one place for every bad-input reason.

A dataset is a JSON list or a JSONL file of records ``{"text": str, "latent_path": str,
"latent_row": int (optional)}``. ``latent_path`` is relative to the JSON file's directory (or
``data.latent_data_root``). Without ``latent_row`` the file holds one sample: ``[D]``, ``[1, D]``
or ``[K, D]``; with it, the file is a 2-D shard ``[N, D]`` read memory-mapped. Every problem is a
:class:`DataError` naming the JSON file, the record number and the reason.
"""
from __future__ import annotations

import hashlib
import json
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

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


@dataclass
class RecordTable:
    """The good records of one JSON file, stored column-wise (cheap for millions of records)."""

    json_path: Path
    texts: list[str]
    files: list[str]  # distinct resolved latent paths
    file_ids: np.ndarray  # int64 [N] index into files
    rows: np.ndarray  # int64 [N], -1 = the file holds one sample
    record_ids: np.ndarray  # int64 [N] record number in the JSON file
    problems: list[DataError] = field(default_factory=list)  # bad records (skip mode / checker)
    root: Path | None = None  # what latent_path is relative to

    def __len__(self) -> int:
        return len(self.texts)

    def fingerprint(self) -> dict:
        """What resuming must find unchanged: the file's size and mtime (for the message) and a
        hash of the record table (texts and latent references in order) that decides."""
        h = hashlib.blake2b(digest_size=16)
        for i, text in enumerate(self.texts):
            h.update(text.encode("utf-8"))
            h.update(b"\x00%d\x00%d\x01" % (self.file_ids[i], self.rows[i]))
        for f in self.files:  # as the records name them: moving the dataset is not a change
            h.update((os.path.relpath(f, self.root) if self.root else f).encode("utf-8") + b"\x02")
        st = self.json_path.stat()
        return {"path": str(self.json_path), "size": st.st_size, "mtime": st.st_mtime,
                "records": len(self.texts), "table_hash": h.hexdigest()}

    def subset(self, keep: np.ndarray) -> "RecordTable":
        keep = np.asarray(keep, dtype=np.int64)
        return RecordTable(self.json_path, [self.texts[i] for i in keep], self.files,
                           self.file_ids[keep], self.rows[keep], self.record_ids[keep], self.problems, self.root)


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


def _iter_raw_records(json_path: Path):
    """Yield (record_no, line_no | None, obj | DataError) in file order."""
    problem = regular_file_problem(json_path)
    if problem == "not found":
        raise DataError(json_path, None, "file not found")
    if problem:
        raise DataError(json_path, None, f"the dataset file {problem}")
    try:
        raw = json_path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(json_path, None, "file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(json_path, None, f"cannot read file: {e}") from None
    if raw.lstrip().startswith("["):
        try:
            records = json.loads(raw)
        except json.JSONDecodeError as e:
            raise DataError(json_path, None, f"not valid JSON at line {e.lineno} column {e.colno}: "
                                             f"{e.msg} (a JSON list cannot be partly skipped)") from None
        for i, obj in enumerate(records):
            yield i, None, obj
        return
    record_no = 0
    for line_no, line in enumerate(raw.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            obj = DataError(json_path, record_no, f"unparseable JSON line: {e.msg} at column {e.colno}",
                            line=line_no)
        yield record_no, line_no, obj
        record_no += 1


def _check_fields(obj) -> str | None:
    if not isinstance(obj, dict):
        return f"record is a {type(obj).__name__}, expected an object with text and latent_path"
    for key in ("text", "latent_path"):
        if key not in obj:
            return f"record has no {key!r} field"
    if not isinstance(obj["text"], str):
        return f"text is a {type(obj['text']).__name__}, expected a string"
    if not obj["text"].strip():
        return "text is empty"
    if not isinstance(obj["latent_path"], str) or not obj["latent_path"]:
        return "latent_path must be a non-empty string"
    row = obj.get("latent_row")
    if row is not None and (isinstance(row, bool) or not isinstance(row, int) or row < 0):
        return f"latent_row must be a non-negative integer, got {row!r}"
    return None


def outside_root(latent_path: str) -> bool:
    """True when a record's ``latent_path`` is absolute or climbs out of its root with ``..``."""
    norm = os.path.normpath(latent_path)
    return os.path.isabs(latent_path) or norm == ".." or norm.startswith(".." + os.sep)


def read_records(json_path: str | os.PathLike, latent_root: str | os.PathLike | None = None,
                 latent_dim: int | None = None, skip_bad: bool = False,
                 allow_outside: bool = False) -> RecordTable:
    """Parse and check every record; shard headers and row ranges are checked here too (cheap).

    ``latent_path`` resolves under ``latent_root`` (default: the JSON file's directory); an
    absolute path or one climbing out with ``..`` is a bad record unless ``allow_outside``
    (``data.allow_paths_outside_root``). Per-sample ``.npy`` files are only read when the sample
    is (see :func:`load_latent`); the checker CLI reads them all. With ``skip_bad`` bad records
    go to ``problems``; else the first one raises.
    """
    json_path = Path(json_path)
    base = Path(latent_root) if latent_root else json_path.parent
    texts, file_ids, rows, record_ids, problems = [], [], [], [], []
    files: dict[str, int] = {}

    def bad(err: DataError) -> None:
        if not skip_bad:
            raise err
        problems.append(err)

    lines: dict[int, int | None] = {}
    for record_no, line_no, obj in _iter_raw_records(json_path):
        if isinstance(obj, DataError):
            bad(obj)
            continue
        reason = _check_fields(obj)
        if reason:
            bad(DataError(json_path, record_no, reason, line=line_no))
            continue
        if not allow_outside and outside_root(obj["latent_path"]):
            bad(DataError(json_path, record_no, f"latent_path {obj['latent_path']!r} points outside {base} "
                                                "(absolute, or climbing out with '..'); set "
                                                "data.allow_paths_outside_root=true to allow it", line=line_no))
            continue
        path = str(base / obj["latent_path"])
        texts.append(obj["text"])
        file_ids.append(files.setdefault(path, len(files)))
        rows.append(-1 if obj.get("latent_row") is None else obj["latent_row"])
        record_ids.append(record_no)
        lines[record_no] = line_no
    table = RecordTable(json_path, texts, list(files), np.asarray(file_ids, dtype=np.int64),
                        np.asarray(rows, dtype=np.int64), np.asarray(record_ids, dtype=np.int64),
                        problems, base)
    return _check_shards(table, latent_dim, bad, lines)


def _check_shards(table: RecordTable, latent_dim: int | None, bad, lines) -> RecordTable:
    sharded = np.flatnonzero(table.rows >= 0)
    if len(sharded) == 0:
        return table
    keep = np.ones(len(table), dtype=bool)
    for fid in np.unique(table.file_ids[sharded]):
        members = sharded[table.file_ids[sharded] == fid]
        path = table.files[fid]
        try:
            shard = open_shard(path, latent_dim)
            n_rows, reason = shard.shape[0], None
        except LatentError as e:
            n_rows, reason = 0, str(e)
        for i in members:
            why = reason or (f"latent_row {table.rows[i]} out of range for shard {path} with "
                             f"{n_rows} rows" if table.rows[i] >= n_rows else None)
            if why:
                rec = int(table.record_ids[i])
                bad(DataError(table.json_path, rec, why, line=lines.get(rec)))
                keep[i] = False
    return table if keep.all() else table.subset(np.flatnonzero(keep))


class LatentError(ValueError):
    """A latent file problem; the dataset wraps it into a DataError with the record."""


def _check_array_meta(path: str, arr: np.ndarray, latent_dim: int | None) -> None:
    if arr.dtype.hasobject:
        raise LatentError(f"latent file {path} holds an object array; refusing to unpickle it")
    if not np.issubdtype(arr.dtype, np.floating):
        raise LatentError(f"latent file {path} has dtype {arr.dtype}, expected floating point "
                          "(float16/32/64)")
    if latent_dim is not None and arr.shape[-1] != latent_dim:
        raise LatentError(f"latent file {path} has dim {arr.shape[-1]} (shape {list(arr.shape)}), "
                          f"expected {latent_dim} (data.latent_dim)")


def _np_load(path: str, mmap: bool) -> np.ndarray:
    problem = regular_file_problem(path)
    if problem:
        raise LatentError(f"latent file {path} {problem}" if problem != "not found" else
                          f"latent file not found: {path}")
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except FileNotFoundError:
        raise LatentError(f"latent file not found: {path}") from None
    except ValueError as e:
        if "Object arrays" in str(e):
            raise LatentError(f"latent file {path} holds a pickled object array; refusing to load "
                              "it (allow_pickle=False) - re-save it as a float array") from None
        if "pickled data" in str(e):  # no .npy magic: numpy would fall back to unpickling
            raise LatentError(f"latent file {path} is not a .npy array (it would have to be "
                              "unpickled; refusing: allow_pickle=False)") from None
        raise LatentError(f"latent file {path} is truncated or not a .npy array ({e})") from None
    except (EOFError, OSError) as e:
        raise LatentError(f"latent file {path} is truncated or unreadable ({e})") from None


def open_shard(path: str, latent_dim: int | None) -> np.ndarray:
    """Memory-map a 2-D shard ``[N, D]`` after checking its header."""
    arr = _np_load(path, mmap=True)
    if arr.ndim != 2:
        raise LatentError(f"shard {path} has shape {list(arr.shape)}; a file addressed with "
                          "latent_row must be 2-D [N, D]")
    _check_array_meta(path, arr, latent_dim)
    return arr


def load_shard_rows(path: str, rows: np.ndarray, latent_dim: int | None,
                    shard_cache: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Rows of one shard as float32 ``[n, D]`` (one sorted read) and a mask of rows with
    non-finite values. Row ranges were checked by :func:`read_records`."""
    shard = shard_cache.get(path)
    if shard is None:
        shard = shard_cache[path] = open_shard(path, latent_dim)
    order = np.argsort(rows, kind="stable")
    block = np.empty((len(rows), shard.shape[1]), dtype=np.float32)
    block[order] = shard[rows[order]]
    return block, ~np.isfinite(block).all(axis=1)


def load_latent(path: str, row: int, latent_dim: int | None,
                shard_cache: dict[str, np.ndarray] | None = None) -> np.ndarray:
    """The latent of one record as float32 ``[K, D]`` (K = 1 for ``[D]``, ``[1, D]`` and shard rows)."""
    if row >= 0:
        shard = shard_cache.get(path) if shard_cache is not None else None
        if shard is None:
            shard = open_shard(path, latent_dim)
            if shard_cache is not None:
                shard_cache[path] = shard
        if row >= shard.shape[0]:
            raise LatentError(f"latent_row {row} out of range for shard {path} with {shard.shape[0]} rows")
        arr = np.asarray(shard[row : row + 1], dtype=np.float32)
    else:
        arr = _np_load(path, mmap=False)
        if arr.ndim not in (1, 2) or arr.size == 0:
            raise LatentError(f"latent file {path} has shape {list(arr.shape)}, expected [D], [1, D] "
                              "or [K, D]")
        _check_array_meta(path, arr, latent_dim)
        arr = np.asarray(arr, dtype=np.float32).reshape(-1, arr.shape[-1])
    n_bad = arr.size - int(np.isfinite(arr).sum())
    if n_bad:
        raise LatentError(f"latent in {path}{'' if row < 0 else f' row {row}'} has {n_bad} "
                          "non-finite values (NaN/Inf)")
    return arr
