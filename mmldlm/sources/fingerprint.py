"""What a source is, as a short hash: equal hashes = the same model, tokenizer or file.

- a model directory: its ``config.json`` and its weights as the safetensors headers describe them
  (every tensor's name, dtype, shape and byte range) together with each file's size; the index
  file when there is one. Cheap (headers only, no weight bytes), and any re-saved, re-sharded,
  re-cast or truncated checkpoint changes it;
- a tokenizer: the bytes of its tokenizer files (vocabulary, merges, special tokens, template);
- a file: its bytes.
Each part's hash is kept too, so a refusal can say what changed.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

from mmldlm.sources.resolve import TOKENIZER_FILES, Kind, Resolved, safetensors_header, weight_files

_CHUNK = 1 << 20


def _h(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=8).hexdigest()


def file_hash(path: Path) -> str:
    h = hashlib.blake2b(digest_size=8)
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def tokenizer_parts(d: Path) -> dict[str, str]:
    return {name: file_hash(d / name) for name in TOKENIZER_FILES if (d / name).is_file()}


def model_parts(d: Path) -> dict[str, str]:
    parts = {"config.json": file_hash(d / "config.json")}
    h = hashlib.blake2b(digest_size=8)
    for f in weight_files(d):
        raw, _ = safetensors_header(f)
        h.update(f"{f.name}\0{f.stat().st_size}\0".encode() + raw)
    parts["weights"] = h.hexdigest()
    return parts


def parts_of(r: Resolved) -> dict[str, str]:
    if r.path is None:
        return {}
    kind = r.source.kind
    if kind is Kind.file:
        return {r.path.name: file_hash(r.path)}
    if kind is Kind.tokenizer:
        return tokenizer_parts(r.path) if r.path.is_dir() else {}
    return model_parts(r.path)


def combine(parts: dict[str, str]) -> str:
    return _h("".join(f"{k}={v}\n" for k, v in sorted(parts.items())).encode())


def record(r: Resolved) -> dict:
    """The entry a checkpoint or an export keeps for a resolved source."""
    parts = parts_of(r)
    return {"key": r.source.key, "kind": r.source.kind.value, "path": str(r.path) if r.path else None,
            "how": r.how, "fingerprint": combine(parts) if parts else None, "parts": parts, **r.meta}


def changed_parts(saved: dict, now: dict) -> list[str]:
    """The parts (files) whose hash differs between two records, or were added / removed."""
    a, b = saved.get("parts") or {}, now.get("parts") or {}
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))


_BLOCK = 1 << 20
_STRIDE = 32  # one block in 32 beyond the first and last: ~3% of a shard read


def sampled_hash(path: Path) -> str:
    """A latent shard's content hash from its size, its first and last MiB and one MiB in every
    32 between: cheap for a corpus's 40 GB of latents, and any re-extraction or rewrite in place
    (which changes every block) changes it; a file under 34 MiB is hashed whole."""
    size = path.stat().st_size
    h = hashlib.blake2b(str(size).encode(), digest_size=8)
    with open(path, "rb") as f:
        if size <= (_STRIDE + 2) * _BLOCK:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
            return h.hexdigest()
        for offset in [*range(0, size - _BLOCK, _STRIDE * _BLOCK), size - _BLOCK]:
            f.seek(offset)
            h.update(f.read(_BLOCK))
    return h.hexdigest()


def latents_record(shards: list[str], key: str) -> dict | None:
    """The record of the latent shards a training file's records read (as its index lists them):
    each shard's sampled content hash, by its path under their common directory (moving the dataset
    is no change; rewriting a shard is)."""
    if not shards:
        return None
    import os

    root = Path(os.path.commonpath(shards)) if len(shards) > 1 else Path(shards[0]).parent
    parts = {str(Path(s).relative_to(root)): sampled_hash(Path(s)) for s in shards}
    return {"key": key, "kind": "latents", "path": str(root), "how": "the record index", "fingerprint": combine(parts),
            "parts": parts}
