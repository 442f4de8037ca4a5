"""THE loader: JSON/JSONL records + ``.npy`` latents -> batches, for every entrypoint.

Batch: ``input_ids [B, L] long``, ``attention_mask [B, L] bool``, ``latent [B, D] float32`` (or
``[B, K, D]`` with ``latent_mask [B, K]`` when a record holds K > 1 vectors), ``index [B]``
(record numbers in the JSON file); the stream yields it with a :class:`BatchInfo` (records
skipped under ``data.on_bad_record=skip``, texts truncated), which never enters the batch. Records and latents are parsed and checked in ``data_records``;
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
from pathlib import Path
from typing import Any, Iterator, NamedTuple

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


class Tokenized(NamedTuple):
    input_ids: torch.Tensor  # [B, L] long
    attention_mask: torch.Tensor  # [B, L] bool
    truncated: torch.Tensor  # [B] bool: the text was longer than max_seq_len tokens


class Collator:
    """Batch tokenisation and latent stacking.

    Fast tokenizers are driven through their Rust backend (a private copy with truncation and
    padding set): the same ids as ``tokenizer(texts, truncation=True, padding=...)``, at a
    third of the cost. Slow tokenizers go through the transformers call.

    Text is text: with ``split_special_tokens`` (the default) a literal "[MASK]" or "<|endoftext|>"
    in a record is tokenised as characters, never as the special id (a literal mask id in clean
    input would corrupt the masked-diffusion targets). Special tokens are still added around the
    text by the tokenizer's post-processor ([CLS] ... [SEP]).
    """

    def __init__(self, tokenizer, max_seq_len: int, fixed_length: bool = False,
                 pad_to_multiple_of: int = 1, split_special_tokens: bool = True):
        self.tokenizer, self.max_seq_len = tokenizer, max_seq_len
        self.fixed_length, self.multiple = fixed_length, pad_to_multiple_of
        self.split_special_tokens = split_special_tokens
        self.backend = None
        if getattr(tokenizer, "is_fast", False):
            from tokenizers import Tokenizer

            self.backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
            self.backend.encode_special_tokens = split_special_tokens
            self.backend.enable_truncation(max_seq_len, direction=tokenizer.truncation_side)
            self.backend.enable_padding(
                direction=tokenizer.padding_side, pad_id=tokenizer.pad_token_id,
                pad_token=tokenizer.pad_token, length=max_seq_len if fixed_length else None,
                pad_to_multiple_of=None if fixed_length or pad_to_multiple_of == 1 else pad_to_multiple_of)

    def tokenize(self, texts: list[str]) -> Tokenized:
        if not texts:
            return Tokenized(torch.zeros(0, 1, dtype=torch.long), torch.zeros(0, 1, dtype=torch.bool),
                             torch.zeros(0, dtype=torch.bool))
        if self.backend is not None:
            encode = getattr(self.backend, "encode_batch_fast", self.backend.encode_batch)  # no offsets
            encs = encode(texts)
            return Tokenized(torch.from_numpy(np.array([e.ids for e in encs], dtype=np.int64)),
                             torch.from_numpy(np.array([e.attention_mask for e in encs], dtype=bool)),
                             torch.tensor([len(e.overflowing) > 0 for e in encs], dtype=torch.bool))
        split = {"split_special_tokens": self.split_special_tokens}
        enc = self.tokenizer(texts, truncation=True, max_length=self.max_seq_len,
                             padding="max_length" if self.fixed_length else "longest",
                             pad_to_multiple_of=None if self.fixed_length or self.multiple == 1 else self.multiple,
                             return_tensors="pt", **split)
        full = self.tokenizer(texts, truncation=False, **split)["input_ids"]
        return Tokenized(enc["input_ids"].long(), enc["attention_mask"].bool(),
                         torch.tensor([len(f) > self.max_seq_len for f in full], dtype=torch.bool))

    def __call__(self, items: list) -> dict:
        good = [it for it in items if not isinstance(it, DataError)]
        tok = self.tokenize([it["text"] for it in good])
        batch = {"input_ids": tok.input_ids, "attention_mask": tok.attention_mask,
                 "index": torch.tensor([it["index"] for it in good], dtype=torch.long),
                 "bad_records": [it for it in items if isinstance(it, DataError)],
                 "n_truncated": int(tok.truncated.sum())}
        batch.update(stack_latents([it["latent"] for it in good]))
        return batch


class BatchInfo(NamedTuple):
    """Bookkeeping of one batch, kept out of the batch dict the objective sees."""

    skipped: int  # bad records dropped (data.on_bad_record=skip)
    truncated: int  # texts cut at data.max_seq_len
    texts: int  # texts in the batch


def split_batch(batch: dict, skip: bool) -> tuple[dict, BatchInfo]:
    """Take the bookkeeping out of a collated batch: raise its first bad record, or (skip mode)
    log and count them."""
    bad = batch.pop("bad_records")
    truncated = batch.pop("n_truncated")
    if bad and not skip:
        raise bad[0]
    for err in bad:
        log.warning("skipping bad record: %s", err)
    return batch, BatchInfo(len(bad), truncated, int(batch["input_ids"].shape[0]))


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

    def __next__(self) -> tuple[dict[str, torch.Tensor], BatchInfo]:
        if self._it is None:
            self.sampler.set_position(self.epoch, self.consumed)
            self._it = iter(self.loader)
        try:
            batch = next(self._it)
        except StopIteration:
            self.epoch, self.consumed, self._it = self.epoch + 1, 0, None
            return next(self)
        self.consumed += 1
        return split_batch(batch, self.skip_bad)

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


# The trainer's split hash is salted: the extractor's --create-validation uses the unsalted hash,
# so with one hash a ratio on an extracted train file would hold out nothing (every text there
# already hashed above the extractor's cut).
TRAIN_SPLIT_SALT = b"mmldlm.valsplit"


def held_out(texts: list[str], ratio: float, salt: bytes = b"") -> np.ndarray:
    """Boolean mask of validation records: a (salted) hash of the text, so the split is the same
    on every rank and run, and duplicate texts never straddle train and validation."""
    if ratio <= 0:
        return np.zeros(len(texts), dtype=bool)
    cut = int(ratio * 2**64)

    def h(t: str) -> int:
        return int.from_bytes(hashlib.blake2b(t.encode("utf-8"), digest_size=8, salt=salt).digest(), "little")

    return np.fromiter((h(t) < cut for t in texts), dtype=bool, count=len(texts))


def looks_local(name: str) -> bool:
    """A name that can only be a local path (hub ids are ``name`` or ``org/name``)."""
    return name.startswith(("/", "./", "../", "~", ".\\")) or name.count("/") > 1 or "\\" in name


def load_tokenizer(name_or_path: str, trust_remote_code: bool = False, local_files_only: bool | None = None,
                   key: str = "data.tokenizer_name"):
    """A tokenizer from a local directory or a hub name (the hub cache when offline). Problems are
    a :class:`ConfigError` naming ``key``: a local-looking path that does not exist is "not
    found", never a network error."""
    from transformers import AutoTokenizer

    from latentDLM_mmdit.config import ConfigError
    from latentDLM_mmdit.prefetch import check_if_prefetched

    local = Path(name_or_path).expanduser()
    if not local.exists() and looks_local(name_or_path):
        raise ConfigError(f"{key}: not found: {name_or_path} (relative paths are from {Path.cwd()})")
    check_if_prefetched(local)  # a half-prefetched directory is not a tokenizer
    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false")
    kw = {} if local_files_only is None else {"local_files_only": local_files_only}
    try:
        tok = AutoTokenizer.from_pretrained(str(local) if local.exists() else name_or_path,
                                            trust_remote_code=trust_remote_code, **kw)
    except (OSError, ValueError) as e:
        where = "" if local.exists() else (
            " It is no local directory, and it is not in the hub cache" + (" (offline)" if offline or
                                                                         local_files_only else "") + ".")
        raise ConfigError(f"{key}: could not load tokenizer {name_or_path!r}: {str(e).splitlines()[0].rstrip('.')}.{where} "
                          f"Point {key} at a local tokenizer directory, or prefetch it first "
                          "(python -m latentDLM_mmdit.prefetch --repo-id NAME --local-dir DIR)") from None
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
    fingerprint: dict  # of the training file (checked on resume)


def _validation(data_cfg, train: RecordTable, read, need_val: bool) -> tuple[RecordTable, RecordTable | None]:
    """(train, validation or None) from a validation file or a held-out split. With ``need_val``
    (periodic eval is on) an empty validation set is an error naming its cause."""
    from latentDLM_mmdit.config import ConfigError

    if data_cfg.data_files.validation:
        val = read(data_cfg.data_files.validation)
        overlap = len(set(train.texts).intersection(val.texts))
        if overlap:
            log.warning("%d validation texts also occur in the training file", overlap)
        if need_val and not len(val):
            raise ConfigError(f"data.data_files.validation: {val.json_path} holds no (good) records, and "
                              "logging.eval_freq > 0 needs some; fix the file or set logging.eval_freq=0")
        return train, val
    if data_cfg.val_split_ratio > 0:
        mask = held_out(train.texts, data_cfg.val_split_ratio, TRAIN_SPLIT_SALT)
        if need_val and not mask.any():
            raise ConfigError(f"data.val_split_ratio: {data_cfg.val_split_ratio} of {len(train)} records held out "
                              "none, and logging.eval_freq > 0 needs a validation set; raise the ratio, pass "
                              "data.data_files.validation, or set logging.eval_freq=0")
        return train.subset(np.flatnonzero(~mask)), train.subset(np.flatnonzero(mask))
    if need_val:
        log.warning("no validation set (data.data_files.validation or data.val_split_ratio): periodic eval is off")
    return train, None


def build_data(data_cfg, training_cfg, tokenizer, rank: int = 0, world: int = 1,
               pin_memory: bool = False, need_val: bool = False) -> DataBundle:
    """Train stream and validation loader from the ``data`` / ``training`` config sections.
    Every record table is read and checked here, before any model is built."""
    from latentDLM_mmdit.config import ConfigError

    skip = data_cfg.on_bad_record.name == "skip"

    def read(path):
        return read_records(path, data_cfg.latent_data_root, data_cfg.latent_dim, skip_bad=skip,
                            allow_outside=data_cfg.allow_paths_outside_root)

    train = read(data_cfg.data_files.train)
    fingerprint = train.fingerprint()
    train, val = _validation(data_cfg, train, read, need_val)
    problems = train.problems + (val.problems if val is not None and val.problems is not train.problems else [])
    if problems:
        log.warning("%d bad records skipped (data.on_bad_record=skip), e.g. %s", len(problems), problems[0])
    if data_cfg.max_samples:
        train = train.subset(np.arange(min(len(train), data_cfg.max_samples)))
    if val is not None and data_cfg.max_val_samples:
        val = val.subset(np.arange(min(len(val), data_cfg.max_val_samples)))
    if data_cfg.num_workers > 0:
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # fork-safety of fast tokenizers
    collate = Collator(tokenizer, data_cfg.max_seq_len, data_cfg.padding.name == "max_length",
                       data_cfg.pad_to_multiple_of)
    try:
        sampler = StepChunkSampler(len(train), training_cfg.train_batch_size, rank, world,
                                   training_cfg.gradient_accumulation_steps, training_cfg.seed,
                                   data_cfg.shuffle)
    except ValueError as e:
        raise ConfigError(f"training.train_batch_size: {e}") from None
    stream = TrainStream(LatentTextDataset(train, data_cfg.latent_dim), sampler, collate,
                         data_cfg.num_workers, pin_memory, skip)
    val_loader = None
    if val is not None and len(val):
        val_loader = DataLoader(LatentTextDataset(val, data_cfg.latent_dim),
                                batch_size=training_cfg.eval_batch_size,
                                sampler=list(range(rank, len(val), world)), collate_fn=collate,
                                num_workers=min(data_cfg.num_workers, 1), pin_memory=pin_memory,
                                generator=torch.Generator(), worker_init_fn=_worker_init)
    return DataBundle(stream, val_loader, len(train), len(val) if val is not None else 0, len(problems), skip,
                      fingerprint)


LITERAL_SPECIALS = ("[MASK]", "[PAD]", "[CLS]", "[SEP]", "[UNK]", "<|endoftext|>", "<s>", "</s>", "<pad>",
                    "<mask>", "<unk>", "<|im_start|>", "<|im_end|>")


def _text_report(table: RecordTable, tokenizer: str | None, max_seq_len: int) -> list[str]:
    """Lines about the texts themselves: literal special-token strings (tokenised as plain text)
    and, with a tokenizer, how many texts ``max_seq_len`` cuts."""
    lines = []
    specials = LITERAL_SPECIALS
    col = None
    if tokenizer:
        tok = load_tokenizer(tokenizer)
        specials = tuple(tok.all_special_tokens) or LITERAL_SPECIALS
        col = Collator(tok, max_seq_len)
    with_specials = [i for i, t in enumerate(table.texts) if any(sp in t for sp in specials)]
    if with_specials:
        first = int(table.record_ids[with_specials[0]])
        lines.append(f"NOTE {len(with_specials)} texts contain literal special-token strings ({', '.join(specials[:5])}"
                     f"...; first: record {first}); they are tokenised as plain text, never as special ids")
    if col is not None:
        cut = sum(int(col.tokenize(table.texts[i:i + 256]).truncated.sum()) for i in range(0, len(table), 256))
        lines.append(f"NOTE {cut} of {len(table)} texts ({cut / max(1, len(table)):.1%}) are longer than "
                     f"{max_seq_len} tokens and would be truncated (data.max_seq_len)")
    return lines


def check_main(argv: list[str] | None = None) -> int:
    """Read every record and every latent; print each bad one; exit 1 if any."""
    from tqdm import tqdm

    p = argparse.ArgumentParser(
        prog="python -m latentDLM_mmdit.data_simple check",
        description="Validate a dataset: every record and every latent file (existence, regular file, "
                    ".npy without pickles, shape, dimension, dtype, NaN/Inf, shard rows, paths inside the "
                    "root). Prints each bad record as 'BAD FILE: record N: reason'; exit status 1 if any.")
    p.add_argument("json_path", help="train/validation JSON list or JSONL file")
    p.add_argument("--latent-dim", type=int, required=True, help="expected latent dimension D")
    p.add_argument("--latent-data-root", default=None,
                   help="base directory of latent_path (default: the JSON file's directory)")
    p.add_argument("--allow-paths-outside-root", action="store_true",
                   help="accept absolute latent paths and paths with '..' (data.allow_paths_outside_root)")
    p.add_argument("--tokenizer", default=None,
                   help="also report how many texts exceed --max-seq-len tokens with this tokenizer")
    p.add_argument("--max-seq-len", type=int, default=512, help="token limit for the truncation report")
    args = p.parse_args(argv)
    try:
        table = read_records(args.json_path, args.latent_data_root, args.latent_dim, skip_bad=True,
                             allow_outside=args.allow_paths_outside_root)
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
    for line in _text_report(table, args.tokenizer, args.max_seq_len):
        print(line)
    total = len(table) + len(table.problems)
    print(f"{args.json_path}: {total} records, {len(problems)} bad, {total - len(problems)} good")
    return 1 if problems else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m latentDLM_mmdit.data_simple",
                                description="The shared loader's command line. Subcommands:\n"
                                            "  check PATH.json --latent-dim D   list every bad record of a dataset",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=["check"], help="check: validate a dataset (check --help for its options)")
    p.add_argument("args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    return check_main(a.args)


if __name__ == "__main__":
    sys.exit(main())
