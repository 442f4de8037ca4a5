"""Writing datasets in the loader's format: records (a JSON list, streamed) and latent files.

Layouts: ``shard`` = 2-D ``latents/shard_<p>.npy`` files of ``shard_rows`` rows, addressed by
``latent_row`` (the fast layout); ``per-file`` = one ``latents/<i>.npy`` per record.
"""
from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from mmldlm.io import write_atomic

LAYOUTS = ("shard", "per-file")


def latent_ref(i: int, layout: str, shard_rows: int) -> dict:
    """The latent fields of record ``i``."""
    if layout == "shard":
        return {"latent_path": f"latents/shard_{i // shard_rows:05d}.npy", "latent_row": i % shard_rows}
    if layout == "per-file":
        return {"latent_path": f"latents/{i:08d}.npy"}
    raise ValueError(f"unknown layout {layout!r} ({' | '.join(LAYOUTS)})")


def write_latents(out_dir: Path, start: int, z: np.ndarray, layout: str, shard_rows: int) -> None:
    """Rows ``start .. start + len(z)`` (one whole shard in the shard layout), written atomically."""
    (Path(out_dir) / "latents").mkdir(parents=True, exist_ok=True)
    z = np.ascontiguousarray(z, dtype=np.float32)
    if layout == "shard":
        if start % shard_rows or len(z) > shard_rows:
            raise ValueError(f"a shard starts at a multiple of {shard_rows} and holds at most that many rows")
        target = Path(out_dir) / latent_ref(start, layout, shard_rows)["latent_path"]
        write_atomic(target, lambda f: np.save(f, z, allow_pickle=False), unique_tmp=True)
        return
    for i, row in enumerate(z, start):
        target = Path(out_dir) / latent_ref(i, layout, shard_rows)["latent_path"]
        write_atomic(target, lambda f, row=row: np.save(f, row, allow_pickle=False), unique_tmp=True)


def write_records(path: Path, records: Iterable[dict]) -> int:
    """A JSON list of ``records``, one per line, written atomically without building the whole
    text in memory; returns how many."""
    n = 0

    def write(f) -> None:
        nonlocal n
        f.write(b"[")
        for rec in records:
            f.write((",\n" if n else "\n").encode() + json.dumps(rec, ensure_ascii=False).encode("utf-8"))
            n += 1
        f.write(b"\n]\n")

    write_atomic(Path(path), write, unique_tmp=True)
    return n
