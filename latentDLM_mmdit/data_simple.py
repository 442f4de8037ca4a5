"""THE loader: JSON/JSONL records + ``.npy`` latents -> batches, for every entrypoint.

Batch: ``input_ids [B, L] long``, ``attention_mask [B, L] bool``, ``latent [B, D] float32`` (or
``[B, K, D]`` with ``latent_mask [B, K]`` when a record holds K > 1 vectors), ``index [B]``
(record numbers in the JSON file) and ``n_skipped`` (bad records dropped from this batch under
``data.on_bad_record=skip``). Records and latents are parsed and checked in ``data_records``;
workers never raise: a bad record travels in the batch and the main process raises its
:class:`DataError` (file, record, reason) or, in skip mode, counts it.

The training order is a function of (seed, epoch) only: each optimizer step consumes one
contiguous chunk of a per-epoch permutation, split over ranks and accumulation micro-steps, so a
run on 1 process and on W processes (same global batch) see the same samples per step, and the
stream's ``state_dict`` resumes mid-epoch exactly.

CLI: ``python -m latentDLM_mmdit.data_simple check PATH.json --latent-dim D`` lists every bad
record and exits 1 if there is one.
"""
from __future__ import annotations

import argparse
import hashlib
import logging
import os
import signal
import sys
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from latentDLM_mmdit.data_records import (DataError, LatentError, RecordTable, load_latent,
                                          load_shard_rows, read_records)

log = logging.getLogger(__name__)


class LatentTextDataset(Dataset):
    """Records of one JSON file; an item is ``{text, latent [K, D], index}``, or the
    :class:`DataError` of a record whose latent turned out to be bad."""

    def __init__(self, table: RecordTable, latent_dim: int):
        self.table, self.latent_dim = table, latent_dim
        self._shards: dict[str, np.ndarray] = {}  # per worker process (memmaps are fork-safe)

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, i: int) -> dict[str, Any] | DataError:
        t = self.table
        try:
            latent = load_latent(t.files[t.file_ids[i]], int(t.rows[i]), self.latent_dim, self._shards)
        except LatentError as e:
            return DataError(t.json_path, int(t.record_ids[i]), str(e))
        return {"text": t.texts[i], "latent": latent, "index": int(t.record_ids[i])}

    def __getitems__(self, indices: list[int]) -> list:
        """A whole batch (the DataLoader calls this): shard rows in one read per shard."""
        t, out = self.table, [None] * len(indices)
        idx = np.asarray(indices, dtype=np.int64)
        sharded = t.rows[idx] >= 0
        for pos in np.flatnonzero(~sharded):
            out[pos] = self[int(idx[pos])]
        for fid in np.unique(t.file_ids[idx[sharded]]):
            where = np.flatnonzero(sharded & (t.file_ids[idx] == fid))
            path = t.files[fid]
            try:
                block, bad = load_shard_rows(path, t.rows[idx[where]], self.latent_dim, self._shards)
            except LatentError as e:
                for pos in where:
                    out[pos] = DataError(t.json_path, int(t.record_ids[idx[pos]]), str(e))
                continue
            for j, pos in enumerate(where):
                i = int(idx[pos])
                out[pos] = (DataError(t.json_path, int(t.record_ids[i]), f"latent in {path} row "
                                      f"{t.rows[i]} has non-finite values (NaN/Inf)") if bad[j] else
                            {"text": t.texts[i], "latent": block[j : j + 1], "index": int(t.record_ids[i])})
        return out


class Collator:
    """Batch tokenisation and latent stacking.

    Fast tokenizers are driven through their Rust backend (a private copy with truncation and
    padding set): the same ids as ``tokenizer(texts, truncation=True, padding=...)``, at a
    third of the cost. Slow tokenizers go through the transformers call.
    """

    def __init__(self, tokenizer, max_seq_len: int, fixed_length: bool = False,
                 pad_to_multiple_of: int = 1):
        self.tokenizer, self.max_seq_len = tokenizer, max_seq_len
        self.fixed_length, self.multiple = fixed_length, pad_to_multiple_of
        self.backend = None
        if getattr(tokenizer, "is_fast", False):
            from tokenizers import Tokenizer

            self.backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
            self.backend.enable_truncation(max_seq_len, direction=tokenizer.truncation_side)
            self.backend.enable_padding(
                direction=tokenizer.padding_side, pad_id=tokenizer.pad_token_id,
                pad_token=tokenizer.pad_token, length=max_seq_len if fixed_length else None,
                pad_to_multiple_of=None if fixed_length or pad_to_multiple_of == 1 else pad_to_multiple_of)

    def tokenize(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """``input_ids [B, L] long`` and ``attention_mask [B, L] bool``."""
        if not texts:
            return torch.zeros(0, 1, dtype=torch.long), torch.zeros(0, 1, dtype=torch.bool)
        if self.backend is not None:
            encode = getattr(self.backend, "encode_batch_fast", self.backend.encode_batch)  # no offsets
            encs = encode(texts)
            return (torch.from_numpy(np.array([e.ids for e in encs], dtype=np.int64)),
                    torch.from_numpy(np.array([e.attention_mask for e in encs], dtype=bool)))
        enc = self.tokenizer(texts, truncation=True, max_length=self.max_seq_len,
                             padding="max_length" if self.fixed_length else "longest",
                             pad_to_multiple_of=None if self.fixed_length or self.multiple == 1 else self.multiple,
                             return_tensors="pt")
        return enc["input_ids"].long(), enc["attention_mask"].bool()

    def __call__(self, items: list) -> dict[str, torch.Tensor]:
        good = [it for it in items if not isinstance(it, DataError)]
        input_ids, attention_mask = self.tokenize([it["text"] for it in good])
        batch = {"input_ids": input_ids, "attention_mask": attention_mask,
                 "index": torch.tensor([it["index"] for it in good], dtype=torch.long),
                 "bad_records": [it for it in items if isinstance(it, DataError)]}
        batch.update(stack_latents([it["latent"] for it in good]))
        return batch


def take_bad_records(batch: dict, skip: bool) -> int:
    """Raise the first bad record of a batch, or (skip mode) log and count them."""
    bad = batch.pop("bad_records")
    if bad and not skip:
        raise bad[0]
    for err in bad:
        log.warning("skipping bad record: %s", err)
    return len(bad)


def stack_latents(latents: list[np.ndarray]) -> dict[str, torch.Tensor]:
    """``[B, D]`` when every record holds one vector, else ``[B, K, D]`` + ``latent_mask``."""
    if not latents:
        return {"latent": torch.zeros(0, 0)}
    k = max(a.shape[0] for a in latents)
    if k == 1:
        return {"latent": torch.from_numpy(np.concatenate(latents, axis=0))}
    out = np.zeros((len(latents), k, latents[0].shape[1]), dtype=np.float32)
    mask = np.zeros((len(latents), k), dtype=bool)
    for i, a in enumerate(latents):
        out[i, : a.shape[0]], mask[i, : a.shape[0]] = a, True
    return {"latent": torch.from_numpy(out), "latent_mask": torch.from_numpy(mask)}


def mean_latent(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """One vector per record ``[B, D]``: the mean over the real vectors when K > 1."""
    lat = batch["latent"]
    if lat.dim() == 2:
        return lat
    m = batch["latent_mask"].to(lat.dtype).unsqueeze(-1)
    return (lat * m).sum(1) / m.sum(1).clamp_min(1)


class StepChunkSampler(Sampler[int]):
    """Rank ``rank``'s sample indices for one epoch, from micro-batch ``start`` on.

    Each optimizer step takes the next ``G = B * world * accum`` positions of the epoch's
    permutation (seed, epoch); micro-step m of rank r gets positions ``[(m*world + r)*B, +B)`` of
    that chunk. Incomplete last chunks are dropped (every rank gets the same number of batches).
    """

    def __init__(self, n: int, batch_size: int, rank: int, world: int, accum: int, seed: int,
                 shuffle: bool = True):
        self.n, self.b, self.rank, self.world, self.accum = n, batch_size, rank, world, accum
        self.seed, self.shuffle = seed, shuffle
        self.epoch, self.start = 0, 0
        if self.steps_per_epoch == 0:
            raise ValueError(f"the training set has {n} records, fewer than one global batch of "
                             f"{self.global_batch} (train_batch_size {batch_size} x world {world} x "
                             f"accumulation {accum}); lower the batch size or add data")

    @property
    def global_batch(self) -> int:
        return self.b * self.world * self.accum

    @property
    def steps_per_epoch(self) -> int:
        return self.n // self.global_batch

    def micro_batches_per_epoch(self) -> int:
        return self.steps_per_epoch * self.accum

    def set_position(self, epoch: int, start: int) -> None:
        self.epoch, self.start = epoch, start

    def indices(self) -> np.ndarray:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            perm = torch.randperm(self.n, generator=g).numpy()
        else:
            perm = np.arange(self.n)
        s, a, w, b = self.steps_per_epoch, self.accum, self.world, self.b
        mine = perm[: s * a * w * b].reshape(s, a, w, b)[:, :, self.rank, :].reshape(-1)
        return mine[self.start * b :]

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices().tolist())

    def __len__(self) -> int:
        return (self.micro_batches_per_epoch() - self.start) * self.b


def _worker_init(_: int) -> None:
    """Workers ignore preemption signals: the main process handles them (checkpoint, then exit)
    and shuts its workers down (:func:`shutdown_workers`, on every exit path); a worker killed
    by SIGTERM would crash the main process mid-step. Should the main process die, workers see
    their parent gone and exit by themselves."""
    for sig in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)


def shutdown_workers(iterator) -> None:
    """Stop a DataLoader iterator's workers now, not when it is garbage-collected (a traceback
    can keep it alive until interpreter exit, where SIGTERM-ignoring workers would block)."""
    if iterator is not None and hasattr(iterator, "_shutdown_workers"):
        iterator._shutdown_workers()


class TrainStream:
    """Endless micro-batches with an exact, resumable position (epoch, micro-batches consumed)."""

    def __init__(self, dataset: Dataset, sampler: StepChunkSampler, collate, num_workers: int,
                 pin_memory: bool = False, skip_bad: bool = False):
        self.sampler, self.epoch, self.consumed, self.skip_bad = sampler, 0, 0, skip_bad
        # Its own generator: a new iterator (epoch start, resume) must not draw from the global
        # RNG, whose stream the objective's noise uses and checkpoints restore.
        gen = torch.Generator().manual_seed(sampler.seed * 1009 + sampler.rank)
        self.loader = DataLoader(dataset, batch_size=sampler.b, sampler=sampler, collate_fn=collate,
                                 num_workers=num_workers, pin_memory=pin_memory, drop_last=False,
                                 persistent_workers=num_workers > 0, generator=gen,
                                 worker_init_fn=_worker_init,
                                 prefetch_factor=4 if num_workers > 0 else None)
        self._it = None

    def __next__(self) -> dict[str, torch.Tensor]:
        if self._it is None:
            self.sampler.set_position(self.epoch, self.consumed)
            self._it = iter(self.loader)
        try:
            batch = next(self._it)
        except StopIteration:
            self.epoch, self.consumed, self._it = self.epoch + 1, 0, None
            return next(self)
        self.consumed += 1
        batch["n_skipped"] = take_bad_records(batch, self.skip_bad)
        return batch

    def close(self) -> None:
        shutdown_workers(self._it)
        self._it = None

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "micro_batches": self.consumed,
                "global_batch": self.sampler.global_batch, "num_records": self.sampler.n}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if (state["global_batch"], state["num_records"]) != (self.sampler.global_batch, self.sampler.n):
            log.warning("data position saved with global batch %s over %s records; now %s over %s: "
                        "continuing from the same epoch/micro-batch, but batches will differ from "
                        "the uninterrupted run", state["global_batch"], state["num_records"],
                        self.sampler.global_batch, self.sampler.n)
        self.epoch, self.consumed, self._it = state["epoch"], state["micro_batches"], None


def held_out(texts: list[str], ratio: float) -> np.ndarray:
    """Boolean mask of validation records: a hash of the text, so the split is the same on every
    rank and run, and duplicate texts never straddle train and validation."""
    if ratio <= 0:
        return np.zeros(len(texts), dtype=bool)
    cut = int(ratio * 2**64)
    return np.fromiter((int.from_bytes(hashlib.blake2b(t.encode("utf-8"), digest_size=8).digest(),
                                       "little") < cut for t in texts), dtype=bool, count=len(texts))


def load_tokenizer(name_or_path: str, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    from latentDLM_mmdit.prefetch import check_if_prefetched

    check_if_prefetched(name_or_path)  # a half-prefetched directory is not a tokenizer
    try:
        tok = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise RuntimeError(f"could not load tokenizer {name_or_path!r} (data.tokenizer_name): "
                           f"{str(e).splitlines()[0]}. Point it at a local directory or prefetch it "
                           "first; offline runs cannot download.") from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


@dataclass
class DataBundle:
    train: TrainStream
    val: DataLoader | None
    train_records: int
    val_records: int
    bad_records: int  # dropped while reading the JSON files (skip mode)
    skip_bad: bool


def build_data(data_cfg, training_cfg, tokenizer, rank: int = 0, world: int = 1,
               pin_memory: bool = False) -> DataBundle:
    """Train stream and validation loader from the ``data`` / ``training`` config sections."""
    skip = data_cfg.on_bad_record.name == "skip"
    read = lambda p: read_records(p, data_cfg.latent_data_root, data_cfg.latent_dim, skip_bad=skip)  # noqa: E731
    train = read(data_cfg.data_files.train)
    bad = len(train.problems)
    if data_cfg.data_files.validation:
        val = read(data_cfg.data_files.validation)
        bad += len(val.problems)
        overlap = len(set(train.texts).intersection(val.texts))
        if overlap:
            log.warning("%d validation texts also occur in the training file", overlap)
    else:
        mask = held_out(train.texts, data_cfg.val_split_ratio)
        val = train.subset(np.flatnonzero(mask)) if mask.any() else None
        train = train.subset(np.flatnonzero(~mask))
    if bad:
        log.warning("%d bad records skipped (data.on_bad_record=skip), e.g. %s", bad,
                    (train.problems or val.problems)[0])
    if data_cfg.max_samples:
        train = train.subset(np.arange(min(len(train), data_cfg.max_samples)))
    if val is not None and data_cfg.max_val_samples:
        val = val.subset(np.arange(min(len(val), data_cfg.max_val_samples)))
    if data_cfg.num_workers > 0:
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # fork-safety of fast tokenizers
    collate = Collator(tokenizer, data_cfg.max_seq_len, data_cfg.padding.name == "max_length",
                       data_cfg.pad_to_multiple_of)
    sampler = StepChunkSampler(len(train), training_cfg.train_batch_size, rank, world,
                               training_cfg.gradient_accumulation_steps, training_cfg.seed,
                               data_cfg.shuffle)
    stream = TrainStream(LatentTextDataset(train, data_cfg.latent_dim), sampler, collate,
                         data_cfg.num_workers, pin_memory, skip)
    val_loader = None
    if val is not None and len(val):
        val_loader = DataLoader(LatentTextDataset(val, data_cfg.latent_dim),
                                batch_size=training_cfg.eval_batch_size,
                                sampler=list(range(rank, len(val), world)), collate_fn=collate,
                                num_workers=min(data_cfg.num_workers, 1), pin_memory=pin_memory,
                                generator=torch.Generator(), worker_init_fn=_worker_init)
    return DataBundle(stream, val_loader, len(train), len(val) if val is not None else 0, bad, skip)


def check_main(argv: list[str] | None = None) -> int:
    """Read every record and every latent; print each bad one; exit 1 if any."""
    from tqdm import tqdm

    p = argparse.ArgumentParser(prog="python -m latentDLM_mmdit.data_simple check",
                                description="Validate a dataset: every record and every latent "
                                            "file. Lists each bad record; exit status 1 if any.")
    p.add_argument("json_path", help="train/validation JSON list or JSONL file")
    p.add_argument("--latent-dim", type=int, required=True, help="expected latent dimension D")
    p.add_argument("--latent-data-root", default=None,
                   help="base directory of latent_path (default: the JSON file's directory)")
    args = p.parse_args(argv)
    try:
        table = read_records(args.json_path, args.latent_data_root, args.latent_dim, skip_bad=True)
    except DataError as e:  # the file as a whole is unreadable
        print(f"BAD {e}")
        return 1
    problems = list(table.problems)
    ds = LatentTextDataset(table, args.latent_dim)
    for i in tqdm(range(len(ds)), desc="checking latents", unit="rec", disable=None):
        item = ds[i]
        if isinstance(item, DataError):
            problems.append(item)
    problems.sort(key=lambda e: -1 if e.record is None else e.record)
    for e in problems:
        print(f"BAD {e}")
    total = len(table) + len(table.problems)
    print(f"{args.json_path}: {total} records, {len(problems)} bad, {total - len(problems)} good")
    return 1 if problems else 0


if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] != "check":
        print("usage: python -m latentDLM_mmdit.data_simple check PATH.json --latent-dim D",
              file=sys.stderr)
        sys.exit(2)
    sys.exit(check_main(sys.argv[2:]))
