"""The record index: built once per data file in one streaming pass, shared by every rank.

A rank never holds the records in Python lists. The index keeps, per good record, where its JSON
text (in a text corpus: its line) lies in the file (byte offset, length) and its record number:
16 bytes, in ``records.npy``, which every rank of a node reads from one copy in the page cache.
A record is read when it is sampled (positioned reads of its index entry and its text, then
``json.loads``), so a rank's memory does not grow with the corpus. Beside it: ``split.npy`` (a
salted hash of each text, which decides the held-out split and the train/validation overlap
check), ``problems.json`` (every bad record: number, line, reason) and ``meta.json``, the header:
the index version, the data file's size, mtime, inode and a hash of its first and last 64 KiB,
the record and bad-record counts, the same edge hash of ``records.npy``, the rules it was checked
with, the fingerprint resume compares.

Where: ``<data dir>/.mmldlm_index/<file name>.<rules hash>/``, or under ``data.index_cache_dir``
(default ``$MMLDLM_CACHE`` or ``~/.cache/mmldlm/index``) when the data directory is not writable,
or, when that cannot be written either (read-only, full), under a private directory in the
temporary directory, with a warning. The first process to need it builds it under a file lock;
the others wait and read it. Every open checks the header against the data file and the files
beside it: a changed data file, a cut ``records.npy``, another file's index copied in place is
rebuilt (with a warning naming the index and why), never read.
"""
from __future__ import annotations

import codecs
import hashlib
import json
import logging
import os
import re
import shutil
import struct
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from filelock import FileLock

from mmldlm.data.records import (
    DataError,
    LatentError,
    LatentShard,
    RecordRules,
    escape_problem,
    normalized,
    record_problem,
    regular_file_problem,
)
from mmldlm.io import write_json_atomic

log = logging.getLogger(__name__)

INDEX_VERSION = 4  # 2: *.jsonl is always JSON Lines; 3: the latent shards the records read are listed;
# 4: the header (meta.json) holds counts and edge hashes
_EDGE = 1 << 16  # the bytes at each end of a data file that its header hashes
RECORD_DTYPE = np.dtype([("offset", "<u8"), ("length", "<u4"), ("record", "<u4")])
# The trainer's split hash is salted: the extractor's --create-validation uses the unsalted hash,
# so with one hash a ratio on an extracted train file would hold out nothing (every text there
# already hashed above the extractor's cut).
TRAIN_SPLIT_SALT = b"mmldlm.valsplit"
_CHUNK = 1 << 22
_WS = re.compile(r"\s*")


def text_hash(text: str | bytes, salt: bytes = b"") -> int:
    """The 64-bit hash that places a text in the train or the held-out split."""
    data = text.encode("utf-8") if isinstance(text, str) else text
    return int.from_bytes(hashlib.blake2b(data, digest_size=8, salt=salt).digest(), "little")


# -- reading the raw records of a file, streamed ----------------------------------------------
def _jsonl_records(f, json_path: Path):
    """(offset, length, line, obj | DataError) per non-blank line."""
    offset, line_no, record_no = 0, 0, 0
    for raw in f:
        line_no += 1
        start, offset = offset, offset + len(raw)
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            msg = e.msg if isinstance(e, json.JSONDecodeError) else "not valid UTF-8"
            col = f" at column {e.colno}" if isinstance(e, json.JSONDecodeError) else ""
            obj = DataError(json_path, record_no, f"unparseable JSON line: {msg}{col}", line=line_no)
        yield start, len(raw.rstrip(b"\r\n")), line_no, obj
        record_no += 1


def _json_list_records(f, json_path: Path):
    """(offset, length, None, obj) per element of a top-level JSON list, decoded window by window
    (``raw_decode``), so the file is never held whole. A syntax error fails the whole file: a
    JSON list cannot be partly skipped."""
    decoder, utf8 = json.JSONDecoder(), codecs.getincrementaldecoder("utf-8")()
    buf, pos, byte_pos, line, eof = "", 0, 0, 1, False  # byte_pos: the file offset of buf[pos]

    def fail(msg: str):
        raise DataError(json_path, None, f"not valid JSON near line {line}: {msg} (a JSON list cannot be "
                                         "partly skipped)")

    def more() -> bool:
        nonlocal buf, pos, eof
        if eof:
            return False
        chunk = f.read(_CHUNK)
        try:
            text = utf8.decode(chunk, final=not chunk)
        except UnicodeDecodeError as e:
            fail(f"not valid UTF-8 ({e.reason})")
        eof = not chunk
        buf, pos = buf[pos:] + text, 0
        return True

    def advance(to: int) -> None:
        nonlocal pos, byte_pos, line
        skipped = buf[pos:to]
        byte_pos += len(skipped.encode("utf-8"))
        line += skipped.count("\n")
        pos = to

    def skip_ws() -> str:
        while True:
            advance(_WS.match(buf, pos).end())
            if pos < len(buf):
                return buf[pos]
            if not more():
                return ""

    if skip_ws() != "[":
        fail("expected a list '['")
    advance(pos + 1)
    first = True
    while True:
        c = skip_ws()
        if c == "]":
            return
        if not first:
            if c != ",":
                fail(f"expected ',' or ']', got {c!r}")
            advance(pos + 1)
            skip_ws()
        first = False
        while True:
            try:
                obj, end = decoder.raw_decode(buf, pos)
                if end < len(buf) or eof:  # a value cut by the window's end would parse short
                    break
            except json.JSONDecodeError as e:
                if eof:
                    fail(e.msg)
            more()
        start = byte_pos
        advance(end)
        yield start, byte_pos - start, None, obj


def _text_records(f, path: Path):
    """(offset, length, line, {"text": line} | DataError) per line holding more than whitespace: a
    text corpus, one document per non-empty line (HF's ``text`` builder, less its empty lines). The
    text is the line without its line break; a UTF-8 byte-order mark before the first line is not
    part of it."""
    offset, line_no, record_no = 0, 0, 0
    for raw in f:
        line_no += 1
        start, offset = offset, offset + len(raw)
        body = raw.rstrip(b"\r\n")
        if line_no == 1 and body.startswith(codecs.BOM_UTF8):
            start, body = start + len(codecs.BOM_UTF8), body[len(codecs.BOM_UTF8):]
        try:
            text = body.decode("utf-8")
            if not text.strip():
                continue
            obj: dict | DataError = {"text": text}
        except UnicodeDecodeError as e:
            if not body.strip():
                continue
            obj = DataError(path, record_no, f"not valid UTF-8 (byte {e.start} of the line: {e.reason})", line=line_no)
        yield start, len(body), line_no, obj
        record_no += 1


def _raw_records(json_path: Path, f, fmt: str = "json"):
    if fmt == "text":
        yield from _text_records(f, json_path)
        return
    head = f.read(4096)
    f.seek(0)
    # .jsonl is JSON Lines whatever its lines hold (an SFT line may be an array of messages);
    # any other name is a JSON list when it opens with '['
    if json_path.suffix.lower() not in (".jsonl", ".ndjson") and head.lstrip()[:1] == b"[":
        yield from _json_list_records(f, json_path)
    else:
        yield from _jsonl_records(f, json_path)


# -- the index ---------------------------------------------------------------------------------
class NpyRows:
    """A 1-D ``.npy`` read item by item with positioned reads. Not a memory map: the kernel maps 16
    pages around every page a map touches, so over an epoch of random reads a rank's resident
    memory would grow to the whole file; releasing them after every batch costs 6 us a sample,
    positioned reads under 1 us."""

    def __init__(self, path: Path):
        self.path = Path(path)
        with open(self.path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _, self.dtype = read(f)
            self.offset = f.tell()
        self.n = shape[0]
        self._fd, self._pid = None, -1

    def __len__(self) -> int:
        return self.n

    def take(self, indices) -> np.ndarray:
        """The items at ``indices`` (in that order)."""
        if self._fd is None or self._pid != os.getpid():  # one descriptor per process (workers fork)
            self._fd, self._pid = os.open(self.path, os.O_RDONLY), os.getpid()
        size = self.dtype.itemsize
        raw = b"".join(os.pread(self._fd, size, self.offset + i * size) for i in np.asarray(indices).tolist())
        return np.frombuffer(raw, dtype=self.dtype)

    def read_all(self) -> np.ndarray:
        """Every item, at once (building a split: once per file)."""
        return np.load(self.path, mmap_mode="r")


@dataclass
class RecordIndex:
    """The good records of one data file (read by position) and its bad ones."""

    json_path: Path
    rules: RecordRules
    records: NpyRows  # RECORD_DTYPE [N]
    problems: list[DataError]
    fingerprint: dict
    dir: Path
    latent_shards: tuple[str, ...] = ()  # the 2-D shards its records read (latent_row), for their fingerprint

    def __len__(self) -> int:
        return len(self.records)

    @property
    def root(self) -> Path:
        return Path(self.rules.latent_root) if self.rules.latent_root else self.json_path.parent

    def split_hashes(self) -> np.ndarray:
        """The salted text hash of every good record (memory-mapped, read once, when splitting)."""
        return np.load(self.dir / "split.npy", mmap_mode="r")

    def split_positions(self, ratio: float) -> tuple[NpyRows, NpyRows]:
        """(training, held-out) positions of a salted-hash split at ``ratio``: computed once, in
        chunks, into files beside the index (read by position, like the index)."""
        cut = np.uint64(int(ratio * 2**64))
        stem = f"split_{hashlib.blake2b(repr(ratio).encode(), digest_size=4).hexdigest()}"
        files = self.dir / f"{stem}_train.npy", self.dir / f"{stem}_held_out.npy"
        if not all(f.is_file() for f in files):
            with FileLock(str(self.dir) + ".lock"):
                if not all(f.is_file() for f in files):
                    self._write_split(cut, files)
        return tuple(NpyRows(f) for f in files)

    def _write_split(self, cut: np.uint64, files: tuple[Path, Path]) -> None:
        hashes = self.split_hashes()
        dtype = np.dtype("<i4") if len(hashes) < 2**31 else np.dtype("<i8")
        raws = [f.with_suffix(f".raw{os.getpid()}") for f in files]
        with open(raws[0], "wb") as train, open(raws[1], "wb") as held:
            for s in range(0, len(hashes), 1 << 20):
                chunk = np.asarray(hashes[s : s + (1 << 20)])
                positions = np.arange(s, s + len(chunk), dtype=dtype)
                train.write(positions[chunk >= cut].tobytes())
                held.write(positions[chunk < cut].tobytes())
        for raw, f in zip(raws, files):
            _raw_to_npy(raw, f.with_suffix(f".tmp{os.getpid()}.npy"), dtype)
            os.replace(f.with_suffix(f".tmp{os.getpid()}.npy"), f)


    def total_records(self) -> int:
        return len(self.records) + len(self.problems)

    def reader(self) -> RecordReader:
        """Reads this file's records by position (one per dataset: it keeps a descriptor per process)."""
        return RecordReader(self)


class RecordReader:
    """Reads records of an index by position; one file descriptor per process (workers fork)."""

    def __init__(self, index: RecordIndex):
        self.index = index
        self.text = index.rules.format == "text"
        self._fd, self._pid = None, -1

    def read(self, positions: np.ndarray) -> list[tuple[int, dict]]:
        """(record number, parsed record) of the good records at ``positions``: the index rows in one gather."""
        rows = self.index.records.take(positions).tolist()
        return [(number, self.read_at(offset, length, number)) for offset, length, number in rows]

    def read_at(self, offset: int, length: int, number: int) -> dict:
        if self._fd is None or self._pid != os.getpid():
            self._fd, self._pid = os.open(self.index.json_path, os.O_RDONLY), os.getpid()
        raw = os.pread(self._fd, length, offset)
        if len(raw) != length:
            raise DataError(self.index.json_path, number, "the file changed while training (shorter than its "
                                                          "index); restart to re-index it")
        if self.text:
            return {"text": raw.decode("utf-8")}
        obj = json.loads(raw.decode("utf-8"))  # a str skips json's encoding detection
        normalize = self.index.rules.fields.normalize
        return obj if normalize is None else normalize(obj)  # checked when indexed: cannot fail here


def _edges(path: Path, size: int) -> str:
    """A hash of a file's first and last 64 KiB: cheap, and different for another file's bytes."""
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        h.update(f.read(_EDGE))
        if size > _EDGE:
            f.seek(max(_EDGE, size - _EDGE))
            h.update(f.read(_EDGE))
    return h.hexdigest()


def _source_key(path: Path) -> dict:
    """What identifies a data file's bytes cheaply: size, mtime, inode and its edge hash (a file
    rewritten within the mtime's resolution differs there)."""
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "inode": st.st_ino, "edges": _edges(path, st.st_size)}


def _candidate_dirs(json_path: Path, rules: RecordRules, cache_dir: str | None) -> list[tuple[Path, bool]]:
    """Where the index may live, in order, each with whether to warn when it cannot be written:
    beside the data (unless ``cache_dir`` is set), the cache directory (``data.index_cache_dir``, else
    ``$MMLDLM_CACHE`` or ``~/.cache/mmldlm/index``), then a private one under the temporary directory."""
    key = hashlib.blake2b(json.dumps(rules.key(), sort_keys=True).encode(), digest_size=6).hexdigest()
    name = f"{json_path.name}.{key}"
    where = hashlib.blake2b(str(json_path).encode(), digest_size=8).hexdigest()
    out = [] if cache_dir else [(json_path.parent / ".mmldlm_index" / name, False)]
    cache = cache_dir or os.environ.get("MMLDLM_CACHE", str(Path.home() / ".cache" / "mmldlm" / "index"))
    out.append((Path(cache).expanduser() / where / name, True))
    out.append((private_cache() / where / name, True))
    return out


def private_cache() -> Path:
    """This user's own index cache under the temporary directory (mode 0700): the last resort."""
    return Path(tempfile.gettempdir()) / f"mmldlm-index-{os.getuid()}"


def _writable(d: Path) -> str | None:
    """Why the index directory ``d`` cannot be created and written (a real write: root passes
    ``os.access`` on a read-only mount), or None."""
    try:
        if d.parent.parent == private_cache():
            private_cache().mkdir(mode=0o700, exist_ok=True)
        d.parent.mkdir(parents=True, exist_ok=True)
        if not os.access(d.parent, os.W_OK):
            return "not writable"
        probe = d.parent / f".probe.{os.getpid()}.{uuid.uuid4().hex[:8]}"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as e:
        return e.strerror or str(e)
    return None


def _npy_count(path: Path) -> tuple[int, bool] | None:
    """(items its header promises, whether the file holds that many bytes), or None if unreadable."""
    try:
        rows = NpyRows(path)
        return rows.n, path.stat().st_size == rows.offset + rows.n * rows.dtype.itemsize
    except (OSError, ValueError, EOFError):
        return None


def _check(d: Path, json_path: Path, rules: RecordRules, source: dict) -> tuple[dict | None, str | None]:
    """(header, None) when the index at ``d`` is whole and of this data file under these rules;
    (None, None) when there is none; (None, why it cannot be used) otherwise."""
    try:
        meta = json.loads((d / "meta.json").read_text())
    except FileNotFoundError:
        return None, None
    except (OSError, ValueError) as e:
        return None, f"its meta.json does not read ({e})"
    if meta.get("version") != INDEX_VERSION:
        return None, f"it was built by index version {meta.get('version')}, this is {INDEX_VERSION}"
    if meta.get("rules") != rules.key():
        return None, "it was built under other record rules"
    built = meta.get("data", {})
    changed = [k for k in ("size", "mtime_ns", "inode", "edges") if built.get(k) != source[k]]
    if changed:
        return None, f"the data file changed since it was indexed ({', '.join(changed)})"
    n = meta.get("records")
    for name in ("records.npy", "split.npy"):
        count = _npy_count(d / name)
        if count is None:
            return None, f"{name} does not read"
        if count[0] != n or not count[1]:
            return None, f"{name} holds {count[0]} entries{'' if count[1] else ' (cut short)'}, the header says {n}"
    records = d / "records.npy"
    if _edges(records, records.stat().st_size) != meta.get("records_edges"):
        return None, "records.npy is not the one indexed with this header (another file's?)"
    try:
        problems = json.loads((d / "problems.json").read_text())
    except (OSError, ValueError) as e:
        return None, f"problems.json does not read ({e})"
    if len(problems) != meta.get("problems"):
        return None, f"problems.json lists {len(problems)} bad records, the header says {meta.get('problems')}"
    return meta, None


_RECORD = struct.Struct("<QII")  # RECORD_DTYPE, packed
_SPLIT = struct.Struct("<Q")


def _raw_to_npy(raw: Path, npy: Path, dtype: np.dtype) -> int:
    """A file of packed ``dtype`` items -> a 1-D ``.npy`` (header, then the bytes, streamed)."""
    n = raw.stat().st_size // dtype.itemsize
    with open(npy, "wb") as out, open(raw, "rb") as src:
        np.lib.format.write_array_header_1_0(out, {"descr": np.lib.format.dtype_to_descr(dtype),
                                                   "fortran_order": False, "shape": (n,)})
        shutil.copyfileobj(src, out, 1 << 20)
    raw.unlink()
    return n


def _build(json_path: Path, rules: RecordRules, dest: Path) -> None:
    """One streaming pass: check every record, write the arrays, the problems and the meta. The
    arrays go to disk as they grow, so building costs no memory that grows with the corpus."""
    root = Path(rules.latent_root) if rules.latent_root else json_path.parent
    real_root = None if rules.allow_outside else os.path.realpath(root)
    problems: list[dict] = []
    shards: dict[str, int | str] = {}  # resolved shard path -> rows, or why it is unusable
    fp = hashlib.blake2b(digest_size=16)
    source_before = _source_key(json_path)
    tmp = dest.with_name(dest.name + f".tmp{os.getpid()}.{uuid.uuid4().hex[:6]}")
    tmp.mkdir(parents=True)
    try:
        with open(json_path, "rb") as f, open(tmp / "records.raw", "wb") as rec_out, \
                open(tmp / "split.raw", "wb") as split_out:
            for record_no, (offset, length, line, obj) in enumerate(_raw_records(json_path, f, rules.format)):
                reason = obj.reason if isinstance(obj, DataError) else None
                if reason is None:
                    obj, reason = normalized(obj, rules.fields)
                reason = reason or record_problem(obj, rules)
                if reason is None and rules.latent_dim is not None and obj.get("latent_row") is not None:
                    reason = _shard_problem(str(root / obj["latent_path"]), obj["latent_path"], obj["latent_row"],
                                            rules, real_root, shards)
                if reason:
                    problems.append({"record": record_no, "line": line, "reason": reason})
                    continue
                key = obj.get("text") if isinstance(obj.get("text"), str) else json.dumps(obj, sort_keys=True)
                rec_out.write(_RECORD.pack(offset, length, record_no))
                split_out.write(_SPLIT.pack(text_hash(key, TRAIN_SPLIT_SALT)))
                fp.update(key.encode("utf-8") + b"\x00")
                if rules.latent_dim is not None:
                    fp.update(f"{obj['latent_path']}\x00{obj.get('latent_row')}\x01".encode())
                for k in rules.fields.required:
                    fp.update(json.dumps(obj[k], sort_keys=True).encode() + b"\x02")
        if _source_key(json_path) != source_before:
            raise DataError(json_path, None, "the file changed while it was being indexed; retry once it is complete")
        n = _raw_to_npy(tmp / "records.raw", tmp / "records.npy", RECORD_DTYPE)
        _raw_to_npy(tmp / "split.raw", tmp / "split.npy", np.dtype("<u8"))
        write_json_atomic(tmp / "problems.json", problems)
        fingerprint = {"path": str(json_path), "size": source_before["size"],
                       "mtime": source_before["mtime_ns"] / 1e9, "records": n, "table_hash": fp.hexdigest()}
        used = sorted(p for p, rows in shards.items() if isinstance(rows, int))
        # the header, checked on every open (_check)
        records_edges = _edges(tmp / "records.npy", (tmp / "records.npy").stat().st_size)
        write_json_atomic(tmp / "meta.json", {"version": INDEX_VERSION, "data": source_before, "records": n,
                                              "records_edges": records_edges, "problems": len(problems),
                                              "rules": rules.key(), "fingerprint": fingerprint,
                                              "latent_shards": used})
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(tmp, dest)


def _shard_problem(path: str, rel: str, row: int, rules: RecordRules, real_root: str | None,
                   shards: dict) -> str | None:
    """Why a shard row is unusable (the shard checked once: header, size, confinement), or None."""
    if path not in shards:
        try:
            shards[path] = (real_root and escape_problem("latent_path", rel, path, real_root)) or \
                LatentShard(path, rules.latent_dim).rows
        except LatentError as e:
            shards[path] = str(e)
    rows = shards[path]
    if isinstance(rows, str):
        return rows
    return f"latent_row {row} out of range for shard {path} with {rows} rows" if row >= rows else None


def _build_locked(d: Path, json_path: Path, rules: RecordRules, source: dict) -> dict:
    """Build the index at ``d`` under its file lock, unless another process built it meanwhile;
    returns its header."""
    with FileLock(str(d) + ".lock"):
        meta, why = _check(d, json_path, rules, source)
        if meta is not None:
            return meta
        if why and not why.startswith(("the data file changed", "it was built by index version")):
            log.warning("the record index %s cannot be used (%s); rebuilding it", d, why)
        log.info("indexing %s (once; cached in %s)", json_path, d)
        _build(json_path, rules, d)
        meta, why = _check(d, json_path, rules, _source_key(json_path))
        if meta is None:
            raise DataError(json_path, None, f"the file changed while it was being indexed ({why}); retry")
        return meta


def open_index(json_path: str | os.PathLike, rules: RecordRules, cache_dir: str | None = None) -> RecordIndex:
    """The index of ``json_path`` under ``rules``, built now if missing or stale. Raises a
    DataError when the file itself cannot be read."""
    json_path = Path(json_path).absolute()
    problem = regular_file_problem(json_path)
    if problem == "not found":
        raise DataError(json_path, None, "file not found")
    if problem:
        raise DataError(json_path, None, f"the dataset file {problem}")
    try:
        source = _source_key(json_path)
    except OSError as e:
        raise DataError(json_path, None, f"the dataset file cannot be read ({e.strerror or e})") from None
    tried = []
    for d, warn in _candidate_dirs(json_path, rules, cache_dir):
        meta, _ = _check(d, json_path, rules, source)
        if meta is not None:
            break
        unwritable = _writable(d)
        if unwritable:
            tried.append(f"{d.parent} ({unwritable})")
            if warn:
                log.warning("the record index cache %s cannot be written (%s); trying the next place", d.parent,
                            unwritable)
            continue
        try:
            meta = _build_locked(d, json_path, rules, source)
            break
        except OSError as e:  # a full disk, a quota
            tried.append(f"{d} ({e.strerror or e})")
            log.warning("writing the record index %s failed (%s); trying the next place", d, e.strerror or e)
    else:
        raise DataError(json_path, None, f"its record index cannot be written anywhere: {'; '.join(tried)}; set "
                                         "data.index_cache_dir to a writable directory with space")
    records = NpyRows(d / "records.npy")
    problems = [DataError(json_path, p["record"], p["reason"], line=p["line"])
                for p in json.loads((d / "problems.json").read_text())]
    return RecordIndex(json_path, rules, records, problems, meta["fingerprint"], d, tuple(meta["latent_shards"]))
