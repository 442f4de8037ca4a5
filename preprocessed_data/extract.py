"""The extraction run behind ``prepare_data_multi_gpu.py``: parts, ranks, resume, outputs."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from mmldlm.data.loader import held_out
from mmldlm.data.write import latent_ref, write_latents, write_records
from mmldlm.io import write_json_atomic
from mmldlm.nn import DTYPES
from preprocessed_data.corpus import CorpusError, read_corpus
from preprocessed_data.encoders import build_encoder

log = logging.getLogger("mm_ldlm.extract")


def encode_part(enc, texts: list[str], batch_size: int, bar) -> tuple[np.ndarray, int]:
    """Rows in input order; batches of similar length, longest first (an OOM shows at once)."""
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
    out = np.empty((len(texts), enc.dim), dtype=np.float32)
    truncated = 0
    for s in range(0, len(order), batch_size):
        idx = order[s : s + batch_size]
        out[idx], at_limit = enc.encode_with_stats([texts[i] for i in idx])
        truncated += at_limit
        bar.update(len(idx))
    return out, truncated


def _fingerprint(a, texts: list[str]) -> str:
    h = hashlib.blake2b(digest_size=16)
    h.update(json.dumps([a.latent_model, Path(a.model_dir).name if a.model_dir else None, a.latent_dim,
                         a.prefix, a.max_length, a.sonar_lang, a.layout]).encode())
    for t in texts:
        h.update(t.encode("utf-8") + b"\0")
    return h.hexdigest()


def _part_done(meta_path: Path, fp: str) -> bool:
    if not meta_path.is_file():
        return False
    meta = json.loads(meta_path.read_text())
    if meta.get("fingerprint") != fp:
        raise SystemExit(f"{meta_path.parent.parent} holds a different extraction (another corpus, encoder or "
                         "settings); choose a new --output-dir, or delete it to start over")
    return True


def run(a) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    local = int(os.environ.get("LOCAL_RANK", 0))
    if world > 1 and not dist.is_initialized():  # only barriers: gloo, with room for slow ranks
        dist.init_process_group("gloo", timeout=timedelta(hours=72))
    try:
        _run(a, rank, world, local)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _run(a, rank: int, world: int, local: int) -> None:
    t_start = time.perf_counter()
    out = Path(a.output_dir)
    (out / "latents").mkdir(parents=True, exist_ok=True)
    try:
        corpus = read_corpus(a.input_files, a.datasets, text_field=a.text_field, dataset_config=a.dataset_config,
                             split=a.split, min_chars=a.min_chars, chunk_chars=a.chunk_chars,
                             chunk_overlap=a.chunk_overlap, keep_duplicates=a.keep_duplicates,
                             on_bad_text=a.on_bad_text, max_samples=a.max_samples)
    except CorpusError as e:
        raise SystemExit(f"bad input: {e}") from None
    texts, n = corpus.texts, len(corpus.texts)
    if n == 0:
        raise SystemExit(f"no texts left to encode (skipped: {dict(corpus.skipped)})")
    parts = [(p, s, min(n, s + a.shard_rows)) for p, s in enumerate(range(0, n, a.shard_rows))]
    mine = [pt for pt in parts if pt[0] % world == rank]
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", local) if cuda else torch.device("cpu")
    dtype = DTYPES["bf16" if cuda else "fp32"] if a.dtype == "auto" else DTYPES[a.dtype]
    enc = build_encoder(a.latent_model, a.model_dir, device, dtype, a.latent_dim, a.prefix, a.sonar_lang,
                        a.max_length, a.trust_remote_code)
    todo = []
    for p, s, e in mine:
        fp = _fingerprint(a, texts[s:e])
        if not _part_done(out / "latents" / f".part_{p:05d}.json", fp):
            todo.append((p, s, e, fp))
    if rank == 0:
        log.info("%d texts in %d parts over %d ranks; this rank: %d parts to encode, %d already done",
                 n, len(parts), world, len(todo), len(mine) - len(todo))
    bar = tqdm(total=sum(e - s for _, s, e, _ in todo), unit="text", desc=f"encode (rank 0 of {world})",
               disable=rank != 0 or a.no_progress, dynamic_ncols=True, mininterval=1.0)
    for p, s, e, fp in todo:
        t0 = time.perf_counter()
        z, truncated = encode_part(enc, texts[s:e], a.batch_size, bar)
        if not np.isfinite(z).all():
            raise SystemExit(f"encoder produced non-finite vectors in part {p} (texts {s}..{e - 1}); "
                             "try --dtype fp32")
        write_latents(out, s, z, a.layout, a.shard_rows)
        write_json_atomic(out / "latents" / f".part_{p:05d}.json",  # written last: the part's done marker
                          {"part": p, "start": s, "n": e - s, "seconds": time.perf_counter() - t0,
                           "truncated": truncated, "fingerprint": fp}, unique_tmp=True)
    bar.close()
    if dist.is_initialized():
        dist.barrier()
    if rank == 0:
        _write_index(a, out, corpus, parts, enc, time.perf_counter() - t_start, world)


def _write_index(a, out: Path, corpus, parts, enc, wall: float, world: int) -> None:
    metas = []
    for p, _, _ in parts:
        mp = out / "latents" / f".part_{p:05d}.json"
        if not mp.is_file():
            raise SystemExit(f"part {p} has no output ({mp}); a rank failed - rerun to finish it")
        metas.append(json.loads(mp.read_text()))
    val = held_out(corpus.texts, a.val_ratio) if a.create_validation else np.zeros(len(corpus.texts), bool)

    def records(held: bool):
        for i in np.flatnonzero(val == held):
            yield {"text": corpus.texts[i], "dataset": corpus.datasets[i], "id": corpus.ids[i],
                   **latent_ref(int(i), a.layout, a.shard_rows)}

    n_train = write_records(out / "train_data.json", records(False))
    n_valid = write_records(out / "validation_data.json", records(True)) if a.create_validation else 0
    enc_secs = sum(m["seconds"] for m in metas)
    stats = {"total_samples": len(corpus.texts), "train_samples": n_train, "validation_samples": n_valid,
             "encoder": a.latent_model, "model_dir": a.model_dir, "latent_dim": enc.dim, "prefix": a.prefix
             if a.prefix is not None else getattr(enc, "prefix", ""), "max_tokens": enc.max_length,
             "layout": a.layout, "shard_rows": a.shard_rows, "world_size": world,
             "truncated": sum(m["truncated"] for m in metas), "skipped": dict(corpus.skipped),
             "samples_per_s": round(len(corpus.texts) * world / enc_secs, 1) if enc_secs else None,
             "samples_per_s_per_rank": round(len(corpus.texts) / enc_secs, 1) if enc_secs else None,
             "wall_seconds_last_run": round(wall, 1)}
    write_json_atomic(out / "dataset_stats.json", stats, unique_tmp=True)
    log.info("wrote %s (%d train, %d validation records); stats in %s", out / "train_data.json", n_train,
             n_valid, out / "dataset_stats.json")
