"""THE loader: record index -> dataset -> step-chunk sampler -> resumable stream, for every family.

Sources (``data.dataset_name``): null / json, a JSON list or JSONL file of records; text, a text
file of one document per non-empty line (both named by ``data.data_files``, indexed by
``mmldlm.data.index``); any other name, a hub dataset (``mmldlm.data.hub``) read by position
from its Arrow files. Each becomes a map-style :class:`RecordDataset`, so the training order and
its exact resume are the same for all.

Records are read lazily through the record index (``mmldlm.data.index``), by position; workers
never raise: a bad record travels beside the batch and the main process raises its
:class:`DataError` (file, record, reason) or, under ``data.on_bad_record=skip``, counts it.

The training order is a function of (seed, epoch) only: each optimizer step consumes one
contiguous chunk of a per-epoch permutation, split over ranks and accumulation micro-steps, so a
run on 1 process and on W processes (same global batch) see the same samples per step, and the
stream's ``state_dict`` resumes mid-epoch exactly.
"""
from __future__ import annotations

import logging
import os
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader, Dataset, Sampler

from mmldlm.config import ConfigError
from mmldlm.data.collate import BatchInfo, Collator, settle
from mmldlm.data.hub import HubTexts, is_hub_name, open_hub
from mmldlm.data.index import NpyRows, RecordIndex, open_index, text_hash
from mmldlm.data.records import (
    DataError,
    LatentError,
    LatentShard,
    RecordFields,
    RecordRules,
    escape_problem,
    load_latent_file,
    non_finite_problem,
)

log = logging.getLogger(__name__)


class RecordDataset(Dataset):
    """The records at ``positions`` of a source (all of them when None, the first ``limit`` when
    set); an item is ``{index, record, file, text?, latent?, files?}`` (``file`` the data file,
    for a family collate's errors; ``latent`` float32 ``[K, D]`` when records carry one; ``files``
    the family's path fields resolved under the root), or the :class:`DataError` of a record that
    turned out to be bad when read.

    The source is a :class:`RecordIndex` (a JSON / JSONL / text file) or a :class:`HubTexts` (a
    split of a hub dataset): both are read by position, through their ``reader()``."""

    def __init__(self, index: RecordIndex | HubTexts, positions: NpyRows | None = None, limit: int | None = None):
        self.index, self.positions = index, positions
        total = len(index) if positions is None else len(positions)
        self.length = total if limit is None else min(total, limit)
        self.latent_dim = index.rules.latent_dim
        self.reader = index.reader()
        self.path_fields = index.rules.fields.paths
        # paths are confined to the root with symlinks followed (records.escapes_root); None: not checked
        confine = not index.rules.allow_outside and (self.latent_dim is not None or self.path_fields)
        self.real_root = os.path.realpath(index.root) if confine else None
        self._shards: dict[str, LatentShard | str] = {}  # per process; reopened by each worker

    def __len__(self) -> int:
        return self.length

    def _records(self, indices: list[int]) -> list[tuple[int, dict | DataError]]:
        """(record number, parsed record, or why it is bad) of each item."""
        where = np.asarray(indices, dtype=np.int64)
        return self.reader.read(where if self.positions is None else self.positions.take(where))

    def _item(self, number: int, obj: dict, latent: np.ndarray | None = None) -> dict[str, Any] | DataError:
        item = {"index": number, "record": obj, "file": self.index.json_path}
        if "text" in obj:
            item["text"] = obj["text"]
        if self.path_fields:  # only file sources have path fields (a hub dataset's records cannot)
            item["files"] = {k: os.path.join(self.index.root, obj[k]) for k in self.path_fields}
            for k, path in item["files"].items():
                why = self._escape(k, obj[k], path)
                if why:
                    return self._bad(number, why)
        if latent is not None:
            item["latent"] = latent
        return item

    def _escape(self, key: str, rel: str, path: str) -> str | None:
        return None if self.real_root is None else escape_problem(key, rel, path, self.real_root)

    def _bad(self, number: int, reason: str) -> DataError:
        return DataError(self.index.json_path, number, reason)

    def _shard(self, path: str, rel: str) -> LatentShard:
        """The shard at ``path`` (opened once per process); LatentError when it is unusable."""
        shard = self._shards.get(path)
        if shard is None:
            why = self._escape("latent_path", rel, path)
            try:
                shard = why or LatentShard(path, self.latent_dim)
            except LatentError as e:
                shard = str(e)
            self._shards[path] = shard
        if isinstance(shard, str):
            raise LatentError(shard)
        return shard

    def __getitem__(self, i: int) -> dict[str, Any] | DataError:
        return self.__getitems__([i])[0]

    def __getitems__(self, indices: list[int]) -> list:
        """A whole batch (the DataLoader calls this): shard rows in one pass per shard."""
        recs = self._records(indices)
        if self.latent_dim is None:
            return [obj if isinstance(obj, DataError) else self._item(n, obj) for n, obj in recs]
        out: list = [None] * len(recs)
        by_shard: dict[str, list[int]] = {}
        root = str(self.index.root)
        for k, (n, obj) in enumerate(recs):
            path = os.path.join(root, obj["latent_path"])
            if obj.get("latent_row") is not None:
                by_shard.setdefault(path, []).append(k)
                continue
            try:
                why = self._escape("latent_path", obj["latent_path"], path)
                if why:
                    raise LatentError(why)
                lat = load_latent_file(path, self.latent_dim)
            except LatentError as e:
                out[k] = self._bad(n, str(e))
                continue
            why = non_finite_problem(lat, path)
            out[k] = self._bad(n, why) if why else self._item(n, obj, lat)
        for path, ks in by_shard.items():
            rows = np.array([recs[k][1]["latent_row"] for k in ks], dtype=np.int64)
            try:
                block = self._shard(path, recs[ks[0]][1]["latent_path"]).read(rows)
            except LatentError as e:
                for k in ks:
                    out[k] = self._bad(recs[k][0], str(e))
                continue
            finite = np.isfinite(block).all(axis=1)
            for j, k in enumerate(ks):
                n, obj = recs[k]
                out[k] = (self._item(n, obj, block[j : j + 1]) if finite[j] else
                          self._bad(n, f"latent in {path} row {rows[j]} has non-finite values (NaN/Inf)"))
        return out


def _mix(x: np.ndarray, key: int) -> np.ndarray:
    """A 64-bit integer hash (splitmix64's finaliser) of ``x`` under ``key``; uint64 arithmetic wraps."""
    with np.errstate(over="ignore"):
        z = x + np.uint64(key)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def permute(positions: np.ndarray, n: int, key: int, rounds: int = 4) -> np.ndarray:
    """``perm[positions]`` for a pseudo-random permutation ``perm`` of ``range(n)`` fixed by ``key``,
    computed for just these positions: a balanced Feistel network on the smallest even number of
    bits that covers ``n``, cycle-walking past values >= n. No array of length n is ever built, so
    a rank's memory does not grow with the corpus."""
    half = max(1, (max(n - 1, 1).bit_length() + 1) // 2)
    mask = np.uint64((1 << half) - 1)
    x = np.asarray(positions, dtype=np.uint64)
    todo = np.ones(len(x), dtype=bool)
    while todo.any():  # each walk step lands in range with probability > 1/4
        left, right = x[todo] >> np.uint64(half), x[todo] & mask
        for r in range(rounds):
            left, right = right, left ^ (_mix(right, key * 1_000_003 + r) & mask)
        x[todo] = (left << np.uint64(half)) | right
        todo = x >= np.uint64(n)
    return x.astype(np.int64)


class StepChunkSampler(Sampler[int]):
    """Rank ``rank``'s sample indices for one epoch, from micro-batch ``start`` on.

    Each optimizer step takes the next ``G = B * world * accum`` positions of the epoch's
    permutation (seed, epoch); micro-step m of rank r gets positions ``[(m*world + r)*B, +B)`` of
    that chunk. Incomplete last chunks are dropped (every rank gets the same number of batches).
    The permutation is computed a few micro-batches at a time (:func:`permute`), never held whole.
    """

    CHUNK = 32  # micro-batches whose indices are computed together

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

    def micro_batches(self, k0: int, k1: int) -> np.ndarray:
        """This rank's sample indices of micro-batches ``k0 .. k1 - 1`` of the epoch, in order."""
        ks = np.arange(k0, k1, dtype=np.int64)
        step, micro = np.divmod(ks, self.accum)
        first = ((step * self.accum + micro) * self.world + self.rank) * self.b
        positions = (first[:, None] + np.arange(self.b, dtype=np.int64)).reshape(-1)
        return permute(positions, self.n, self.seed * 100_003 + self.epoch) if self.shuffle else positions

    def indices(self) -> np.ndarray:
        """Every index this rank reads from ``start`` to the epoch's end (tests, benchmarks)."""
        return self.micro_batches(self.start, self.micro_batches_per_epoch())

    def __iter__(self) -> Iterator[int]:
        end = self.micro_batches_per_epoch()
        for k in range(self.start, end, self.CHUNK):  # a few micro-batches per call: numpy's overhead, amortised
            yield from self.micro_batches(k, min(end, k + self.CHUNK)).tolist()

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
    """Endless micro-batches with an exact, resumable position (epoch, micro-batches consumed).
    ``next(stream)`` gives ``(batch, BatchInfo)``."""

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
            collated = next(self._it)
        except StopIteration:
            self.epoch, self.consumed, self._it = self.epoch + 1, 0, None
            return next(self)
        self.consumed += 1
        return settle(collated, self.skip_bad)

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


def held_out(texts: list[str], ratio: float, salt: bytes = b"") -> np.ndarray:
    """Boolean mask of validation texts: a (salted) hash of the text, so the split is the same
    on every rank and run, and duplicate texts never straddle train and validation."""
    cut = int(ratio * 2**64)
    return np.fromiter((ratio > 0 and text_hash(t, salt) < cut for t in texts), dtype=bool, count=len(texts))


def eval_loader(dataset: Dataset, batch_size: int, rank: int, world: int, collate, num_workers: int,
                pin_memory: bool = False) -> DataLoader:
    """Validation batches of one rank (records r, r + W, ...): the same on every run."""
    return DataLoader(dataset, batch_size=batch_size, sampler=list(range(rank, len(dataset), world)),
                      collate_fn=collate, num_workers=min(num_workers, 1), pin_memory=pin_memory,
                      generator=torch.Generator(), worker_init_fn=_worker_init)


@dataclass
class DataBundle:
    train: TrainStream
    val: DataLoader | None
    train_records: int
    val_records: int
    bad_records: int  # dropped while indexing the files (skip mode)
    skip_bad: bool
    fingerprint: dict  # of the training file (checked on resume)
    latent_shards: tuple[str, ...] = ()  # the 2-D latent shards the training records read


def rules_from(data_cfg, fields: RecordFields | None = None, fmt: str = "json") -> RecordRules:
    return RecordRules(latent_dim=data_cfg.latent_dim, latent_root=data_cfg.latent_data_root,
                       allow_outside=data_cfg.allow_paths_outside_root, fields=fields or RecordFields(), format=fmt)


@dataclass(frozen=True)
class Source:
    """Where the records come from: ``kind`` json (a JSON list / JSONL file: ``data.dataset_name``
    null or json), text (one document per non-empty line: ``text``) or hub (any other name:
    ``datasets.load_dataset``, :mod:`mmldlm.data.hub`). Local kinds read ``data.data_files``."""

    kind: str
    name: str | None
    subset: str | None
    cache_dir: str | None
    test_size: int
    text_field: str


def source_of(data_cfg) -> Source:
    """The data source a config names (every source key is read, whichever the source)."""
    name = data_cfg.dataset_name
    kind = "hub" if is_hub_name(name) else (name or "json")
    return Source(kind, name, data_cfg.dataset_subset, data_cfg.cache_dir, data_cfg.test_size, data_cfg.text_field)


def _checked(data_cfg) -> None:
    """The data section's own checks (``DataConfig.check``), for configs built without
    :func:`mmldlm.config.compose` too (tests, benches): a wrong combination of sources fails here
    naming the key, not later."""
    obj = OmegaConf.to_object(data_cfg) if isinstance(data_cfg, DictConfig) else data_cfg
    if callable(getattr(obj, "check", None)):
        obj.check()


def open_checked(path: str, rules: RecordRules, skip: bool, cache_dir: str | None) -> RecordIndex:
    """The index of a data file; its first bad record raises unless ``skip``."""
    index = open_index(path, rules, cache_dir)
    if index.problems and not skip:
        raise index.problems[0]
    return index


def _split(data_cfg, train: RecordIndex, val: RecordIndex | None, need_val: bool):
    """(train positions, validation positions) from a validation file or a held-out split: None
    means every record of its file; False, no validation set. With ``need_val`` (periodic eval is
    on) an empty validation set is an error naming its cause."""
    if val is not None:
        overlap = np.intersect1d(train.split_hashes(), val.split_hashes()).size
        if overlap:
            log.warning("%d validation texts also occur in the training file", overlap)
        if need_val and not len(val):
            raise ConfigError(f"data.data_files.validation: {val.json_path} holds no (good) records, and "
                              "logging.eval_freq > 0 needs some; fix the file or set logging.eval_freq=0")
        return None, None
    if data_cfg.val_split_ratio > 0:
        train_pos, held = train.split_positions(data_cfg.val_split_ratio)
        if need_val and not len(held):
            raise ConfigError(f"data.val_split_ratio: {data_cfg.val_split_ratio} of {len(train)} records held out "
                              "none, and logging.eval_freq > 0 needs a validation set; raise the ratio, pass "
                              "data.data_files.validation, or set logging.eval_freq=0")
        return train_pos, held
    if need_val:
        log.warning("no validation set (data.data_files.validation or data.val_split_ratio): periodic eval is off")
    return None, False


def build_data(data_cfg, training_cfg, tokenizer, rank: int = 0, world: int = 1, pin_memory: bool = False,
               need_val: bool = False, fields: RecordFields | None = None,
               collate: Callable | None = None) -> DataBundle:
    """Train stream and validation loader from the ``data`` / ``training`` config sections.
    Every record of a file is checked here (once per file: the index is cached), before any model
    is built; a hub dataset's texts are checked when read. ``fields`` and ``collate`` are a
    family's own record fields and collate (default: core; ``data.wrap`` packs documents)."""
    _checked(data_cfg)
    skip = data_cfg.on_bad_record.name == "skip"
    src = source_of(data_cfg)
    if src.kind != "json" and fields is not None and fields.required:
        raise ConfigError(f"data.dataset_name: {src.name!r} gives records with a text only, and this objective's "
                          f"records need {list(fields.required)}; use a JSON / JSONL file of such records")
    if src.kind == "hub":
        train, val = open_hub(src.name, src.subset, src.cache_dir, src.test_size, src.text_field)
        if need_val and not len(val):
            raise ConfigError(f"data.dataset_name: the validation set ({val.json_path}) is empty, and "
                              "logging.eval_freq > 0 needs one; pick another dataset or set logging.eval_freq=0")
        train_pos, val_pos = None, None
    else:
        rules = rules_from(data_cfg, fields, src.kind)
        train = open_checked(data_cfg.data_files.train, rules, skip, data_cfg.index_cache_dir)
        val = (open_checked(data_cfg.data_files.validation, rules, skip, data_cfg.index_cache_dir)
               if data_cfg.data_files.validation else None)
        train_pos, val_pos = _split(data_cfg, train, val, need_val)
    bad = len(train.problems) + (len(val.problems) if val is not None else 0)
    if bad:
        first = (train.problems or val.problems)[0]
        log.warning("%d bad records skipped (data.on_bad_record=skip), e.g. %s", bad, first)
    train_set = RecordDataset(train, train_pos, data_cfg.max_samples)
    val_set = None if val_pos is False else RecordDataset(val if val is not None else train, val_pos,
                                                          data_cfg.max_val_samples)
    if data_cfg.num_workers > 0:
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # fork-safety of fast tokenizers
    if collate is None:
        collate = Collator(tokenizer, data_cfg.max_seq_len, data_cfg.padding.name == "max_length",
                           data_cfg.pad_to_multiple_of, wrap=data_cfg.wrap)
    elif data_cfg.wrap and not getattr(collate, "wrap", False):
        raise ConfigError("data.wrap: this objective brings its own collate (its own batch schema), which does "
                          "not pack documents; set data.wrap=false")
    try:
        sampler = StepChunkSampler(len(train_set), training_cfg.train_batch_size, rank, world,
                                   training_cfg.gradient_accumulation_steps, training_cfg.seed, data_cfg.shuffle)
    except ValueError as e:
        raise ConfigError(f"training.train_batch_size: {e}") from None
    stream = TrainStream(train_set, sampler, collate, data_cfg.num_workers, pin_memory, skip)
    val_loader = None
    if val_set is not None and len(val_set):
        val_loader = eval_loader(val_set, training_cfg.eval_batch_size, rank, world, collate, data_cfg.num_workers,
                                 pin_memory)
    return DataBundle(stream, val_loader, len(train_set), 0 if val_set is None else len(val_set), bad, skip,
                      train.fingerprint, getattr(train, "latent_shards", ()))


def read_dataset(path: str | Path, latent_dim: int | None, latent_root: str | None = None,
                 allow_outside: bool = False, skip: bool = False) -> RecordDataset:
    """Every good record of one file as a dataset (CLIs: the checker, the round-trip report)."""
    rules = RecordRules(latent_dim=latent_dim, latent_root=latent_root, allow_outside=allow_outside)
    return RecordDataset(open_checked(str(path), rules, skip, None))
