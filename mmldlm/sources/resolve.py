"""Where a source is on this machine: the resolution order, and what makes a directory complete.

Resolution (one order for training, every CLI, rebuild and the launchers):

1. the path the config names, when it exists: a model directory in the hub's own layout is
   complete when it holds ``config.json`` and its safetensors weights (every shard the index
   lists, none shorter than its header says). ``hf download --local-dir``, a copy, and the
   project's prefetch all qualify; the prefetch's completion marker is extra evidence only;
2. the hub cache (``HF_HOME``), read offline, for a hub name (``snapshot_download(...,
   local_files_only=True)``);
3. the hub, only when the source allows downloads (``local_files_only=false``) and the machine is
   not offline (``HF_HUB_OFFLINE``); a source with ``prefetch_into`` is prefetched there.

A prefetch lock whose holder is alive means "being downloaded now" (refused, naming the holder);
one left by a dead process is recovered (the OS released its lock; the files are removed).
"""
from __future__ import annotations

import json
import logging
import os
import struct
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from mmldlm.config import ConfigError

log = logging.getLogger("mm_ldlm.sources")


class Kind(Enum):
    model = "model"  # a pretrained model directory (config.json + safetensors)
    tokenizer = "tokenizer"  # a tokenizer directory or hub name
    file = "file"  # one file (a codebook, a cluster table)


class SourceError(ConfigError):
    """A source cannot be used; the message names its key, the real cause and the fix."""


@dataclass(frozen=True)
class Source:
    """One external input of a run, as its family declares it from the config.

    ``name`` is how checkpoints, exports and command lines refer to it (``backbone``,
    ``tokenizer``, ``llm.qwen``); ``key`` the config key the user sets; ``path`` what the config
    holds there (a local path or a hub name); ``hub_id`` a hub name to fall back on when ``path``
    is a local directory that is not there (the bridge: ``model.pretrained_model_name_or_path``).
    """

    name: str
    kind: Kind
    key: str
    path: str | None
    hub_id: str | None = None
    trust_remote_code: bool = False  # what the config asks; only honoured for paths named on this command line
    local_files_only: bool = True
    prefetch_into: str | None = None  # download into this directory when it is missing (and allowed)
    dtype: str = "bfloat16"  # model sources: the dtype their weights are held in
    # the content lives in checkpoints too (a codebook): a rebuild does not need the file
    carried: bool = False
    # estimates on a machine without the directory: (model_type, config values)
    shape: tuple[str, dict] | None = None
    optional: bool = False  # may be unset (path None)
    hint: str = ""  # how to make it (a file source), appended to "not found"
    option: str = ""  # the CLI option that names it when rebuilding (e.g. --backbone-dir)


@dataclass
class Resolved:
    """A source found on this machine (``path``), or, for estimates only, not (``path`` None)."""

    source: Source
    path: Path | None
    how: str  # "named path" | "hub cache" | "downloaded" | "not on this machine"
    trusted: bool = False  # remote code may run for it
    named_by: str = "the config"  # "the config" | "the command line" | "<checkpoint path>"
    meta: dict = field(default_factory=dict)  # revision / repo id when known

    @property
    def name(self) -> str:
        return self.source.name


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "vocab.txt", "vocab.json", "merges.txt", "tokenizer.model", "spiece.model",
                   "sentencepiece.bpe.model", "chat_template.jinja", "chat_template.json")
_TOKENIZER_CORE = ("tokenizer.json", "vocab.txt", "vocab.json", "tokenizer.model", "spiece.model",
                   "sentencepiece.bpe.model")


def looks_local(name: str) -> bool:
    """A name that can only be a local path (hub ids are ``name`` or ``org/name``)."""
    return name.startswith(("/", "./", "../", "~", ".\\")) or name.count("/") > 1 or "\\" in name


def offline() -> bool:
    return any(os.environ.get(k, "0").strip().lower() not in ("", "0", "false", "no", "off")
               for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def safetensors_header(path: Path) -> tuple[bytes, int]:
    """(the raw JSON header, the file size it implies) of a safetensors file."""
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ValueError("shorter than a safetensors header")
        (n,) = struct.unpack("<Q", head)
        if n > 100 * 2**20:
            raise ValueError("not a safetensors file (header length out of range)")
        raw = f.read(n)
    if len(raw) < n:
        raise ValueError("truncated inside its header")
    header = json.loads(raw)
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    return raw, 8 + n + end


def weight_files(d: Path) -> list[Path]:
    """The safetensors files of a model directory (the index's shards, else every *.safetensors)."""
    index = d / "model.safetensors.index.json"
    if index.is_file():
        return [d / f for f in sorted(set(json.loads(index.read_text())["weight_map"].values()))]
    return sorted(p for p in d.glob("*.safetensors") if not p.name.startswith("adapter_model"))


def weights_problem(d: Path) -> str | None:
    try:
        files = weight_files(d)
    except (OSError, ValueError, KeyError) as e:
        return f"model.safetensors.index.json does not read ({e})"
    if not files:
        if list(d.glob("pytorch_model*.bin")):
            return ("its weights are pytorch_model*.bin only (pickle): convert them to safetensors "
                    "(transformers: model.save_pretrained(DIR, safe_serialization=True))")
        return "no *.safetensors weights"
    for f in files:
        if not f.is_file():
            return f"{f.name} is missing (listed by model.safetensors.index.json)"
        try:
            _, expected = safetensors_header(f)
        except (OSError, ValueError) as e:
            return f"{f.name} does not read as safetensors ({e})"
        size = f.stat().st_size
        if size < expected:
            return f"{f.name} is truncated ({size:,} of {expected:,} bytes): an interrupted download?"
    return None


def model_dir_problem(d: Path) -> str | None:
    """Why ``d`` is not a complete model directory, or None."""
    if not (d / "config.json").is_file():
        hint = " (a GGUF file: convert it to a model directory first)" if list(d.glob("*.gguf")) else ""
        return f"no config.json{hint}"
    return weights_problem(d)


def tokenizer_dir_problem(d: Path) -> str | None:
    if any((d / f).is_file() for f in _TOKENIZER_CORE) or list(d.glob("*.tiktoken")):
        return None
    return "no tokenizer files (tokenizer.json, vocab.txt, vocab.json + merges.txt, *.model)"


def problem(kind: Kind, p: Path) -> str | None:
    if kind is Kind.file:
        return None if p.is_file() else "not a file"
    if not p.is_dir():
        return "not a directory"
    return model_dir_problem(p) if kind is Kind.model else tokenizer_dir_problem(p)


def prefetch_holder(d: Path) -> str | None:
    """Who is prefetching into ``d`` right now, or None. A lock left by a dead process (the OS
    released it) is recovered: its files are removed."""
    from filelock import FileLock, Timeout

    from mmldlm.prefetch import LOCK, OWNER

    lock_file = d / LOCK
    if not lock_file.exists():
        return None
    lock = FileLock(str(lock_file))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        try:
            return (d / OWNER).read_text().strip() or "another process"
        except OSError:
            return "another process"
    except OSError:  # a read-only directory: nobody can be writing there
        return None
    try:
        (d / OWNER).unlink(missing_ok=True)
        lock_file.unlink(missing_ok=True)
        log.info("%s: recovered a prefetch lock left by a process that is gone", d)
    finally:
        lock.release()
    return None


def _layout(d: Path) -> str:
    from mmldlm.prefetch import read_marker

    if read_marker(d):
        return "prefetched directory"
    if (d / ".cache" / "huggingface").is_dir():
        return "hf download --local-dir"
    return "named path"


def _revision(d: Path) -> dict:
    """The hub repository and commit a directory holds, when the prefetch marker or
    ``hf download``'s metadata says."""
    from mmldlm.prefetch import read_marker

    marker = read_marker(d) if d.is_dir() else None
    if marker:
        return {"repo_id": marker.get("repo_id"), "revision": marker.get("commit")}
    meta = sorted((d / ".cache" / "huggingface" / "download").glob("*.metadata")) if d.is_dir() else []
    if meta:
        try:
            return {"revision": meta[0].read_text().splitlines()[0].strip()}
        except (OSError, IndexError):
            pass
    return {}


def _fix(s: Source) -> str:
    repo = s.hub_id or (s.path if s.path and not looks_local(s.path) else None)
    if s.kind is Kind.file:
        return s.hint or f"point {s.key} at the file"
    target = s.prefetch_into or (s.path if s.path and looks_local(s.path) else "DIR")
    if repo:
        return (f"on a machine with internet: python -m mmldlm.prefetch --repo-id {repo} --local-dir {target} "
                f"(or: hf download {repo} --local-dir {target}), then point {s.key} at it")
    return f"point {s.key} at a complete local copy"


def _from_hub(s: Source, repo: str, download: bool) -> Resolved | None:
    """The repo's snapshot from the hub cache (offline), or downloaded when allowed; None if neither."""
    from huggingface_hub import snapshot_download

    patterns = None if s.kind is Kind.model else ["*.json", "*.txt", "*.model", "*.tiktoken", "*.jinja"]
    try:
        d = Path(snapshot_download(repo, local_files_only=True, allow_patterns=patterns))
        if problem(s.kind, d) is None:
            return Resolved(s, d, "hub cache", meta={"repo_id": repo, "revision": d.name})
    except Exception:  # noqa: BLE001 - not in the cache (LocalEntryNotFoundError, a bad name ...)
        pass
    if not download:
        return None
    d = Path(snapshot_download(repo, allow_patterns=patterns))
    return Resolved(s, d, "downloaded", meta={"repo_id": repo, "revision": d.name})


def resolve(s: Source, shapes_only: bool = False) -> Resolved:
    """``s`` on this machine, in the module's order; a :class:`SourceError` naming the key, the
    cause and the fix otherwise. ``shapes_only`` (the estimator): a missing source is no error."""
    download = not s.local_files_only and not offline()
    if not s.path and not s.hub_id:
        if shapes_only or s.optional:
            return Resolved(s, None, "not set")
        raise SourceError(f"{s.key}: not set. Fix: {_fix(s)}")
    p = Path(s.path).expanduser() if s.path else None
    if p is not None and p.exists():
        holder = prefetch_holder(p) if p.is_dir() else None
        if holder and not shapes_only:
            raise SourceError(f"{s.key}: {p} is being prefetched right now ({holder}); wait for it to finish")
        why = problem(s.kind, p)
        if why is None:
            return Resolved(s, p.resolve(), _layout(p) if p.is_dir() else "named path", meta=_revision(p))
        if s.prefetch_into and download and s.hub_id:
            return _prefetch(s)
        if shapes_only:
            return Resolved(s, None, "not on this machine")
        raise SourceError(f"{s.key}: {p} is not a complete {s.kind.value}: {why}. Fix: {_fix(s)}")
    if p is not None and s.prefetch_into and download and s.hub_id:
        return _prefetch(s)
    repo = s.hub_id if s.hub_id else (s.path if s.path and not looks_local(s.path) else None)
    if repo and s.kind is not Kind.file:
        found = _from_hub(s, repo, download and not shapes_only)
        if found is not None:
            return found
    if shapes_only:
        return Resolved(s, None, "not on this machine")
    # Echo the path as the user typed it: that is the string they will search their command for.
    where = [f"not found: {s.path}" if p is not None and looks_local(s.path) else None,
             f"{repo!r} is not in the hub cache ({hub_cache_dir()})" if repo and s.kind is not Kind.file else None,
             None if download else ("downloads are off (offline: HF_HUB_OFFLINE)" if offline()
                                    else "downloads are off (local_files_only)")]
    if p is not None and not looks_local(s.path) and not repo:
        where[0] = f"not found: {s.path}"
    if s.kind is Kind.file and p is not None:
        where = [f"not found: {s.path}"]
    raise SourceError(f"{s.key}: " + "; ".join(w for w in where if w) + f". Fix: {_fix(s)}")


def _prefetch(s: Source) -> Resolved:
    from mmldlm.prefetch import prefetch

    d = prefetch(s.hub_id, s.prefetch_into or s.path)
    why = problem(s.kind, Path(d))
    if why:
        raise SourceError(f"{s.key}: the prefetched {d} is not a complete {s.kind.value}: {why}")
    return Resolved(s, Path(d).resolve(), "prefetched directory", meta=_revision(Path(d)))


def hub_cache_dir() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)
