"""Collate: items -> a batch, with its bookkeeping beside it (never inside).

Core batch: ``input_ids [B, L] long``, ``attention_mask [B, L] bool``, ``latent [B, D] float32``
(or ``[B, K, D]`` + ``latent_mask [B, K]`` when a record holds K > 1 vectors; absent when
``data.latent_dim`` is null) and ``index [B]`` (record numbers). A collate function returns
:class:`Collated`: the batch, the bad records dropped from it and how many texts were cut. A family
with its own batch schema brings its own collate with the same return type.
"""
from __future__ import annotations

import logging
from typing import NamedTuple

import numpy as np
import torch

from mmldlm.data.records import DataError
from mmldlm.nn import masked_mean

log = logging.getLogger(__name__)


class Tokenized(NamedTuple):
    input_ids: torch.Tensor  # [B, L] long
    attention_mask: torch.Tensor  # [B, L] bool
    truncated: torch.Tensor  # [B] bool: the text was longer than max_seq_len tokens


class Collated(NamedTuple):
    batch: dict
    bad: list  # DataErrors of the records dropped from this batch
    truncated: int  # texts cut at max_seq_len
    samples: int  # records in the batch


class BatchInfo(NamedTuple):
    """What the loop learns about a batch besides its tensors."""

    skipped: int  # bad records dropped (data.on_bad_record=skip)
    truncated: int  # texts cut at data.max_seq_len
    texts: int  # samples in the batch


def partition(items: list) -> tuple[list, list[DataError]]:
    """(good items, bad records) of a list of dataset items."""
    good = [it for it in items if not isinstance(it, DataError)]
    return good, [it for it in items if isinstance(it, DataError)]


def settle(collated: Collated, skip: bool) -> tuple[dict, BatchInfo]:
    """Raise a batch's first bad record, or (skip mode) log and count them."""
    if collated.bad and not skip:
        raise collated.bad[0]
    for err in collated.bad:
        log.warning("skipping bad record: %s", err)
    return collated.batch, BatchInfo(len(collated.bad), collated.truncated, collated.samples)


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
            self.backend.no_padding()  # padded below, in numpy: half the Python list conversions

    def _padded_length(self, longest: int) -> int:
        if self.fixed_length:
            return self.max_seq_len
        return -(-longest // self.multiple) * self.multiple

    def tokenize(self, texts: list[str]) -> Tokenized:
        if not texts:
            return Tokenized(torch.zeros(0, 1, dtype=torch.long), torch.zeros(0, 1, dtype=torch.bool),
                             torch.zeros(0, dtype=torch.bool))
        if self.backend is not None:
            encode = getattr(self.backend, "encode_batch_fast", self.backend.encode_batch)  # no offsets
            encs = encode(texts)
            rows = [e.ids for e in encs]
            lengths = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
            L = self._padded_length(int(lengths.max()))
            ids = np.full((len(rows), L), self.tokenizer.pad_token_id, dtype=np.int64)
            left = self.tokenizer.padding_side == "left"
            for j, row in enumerate(rows):
                if left:
                    ids[j, L - len(row):] = row
                else:
                    ids[j, : len(row)] = row
            positions = np.arange(L)
            mask = positions >= (L - lengths[:, None]) if left else positions < lengths[:, None]
            return Tokenized(torch.from_numpy(ids), torch.from_numpy(mask),
                             torch.tensor([len(e.overflowing) > 0 for e in encs], dtype=torch.bool))
        split = {"split_special_tokens": self.split_special_tokens}
        enc = self.tokenizer(texts, truncation=True, max_length=self.max_seq_len,
                             padding="max_length" if self.fixed_length else "longest",
                             pad_to_multiple_of=None if self.fixed_length or self.multiple == 1 else self.multiple,
                             return_tensors="pt", **split)
        full = self.tokenizer(texts, truncation=False, **split)["input_ids"]
        return Tokenized(enc["input_ids"].long(), enc["attention_mask"].bool(),
                         torch.tensor([len(f) > self.max_seq_len for f in full], dtype=torch.bool))

    def __call__(self, items: list) -> Collated:
        good, bad = partition(items)
        tok = self.tokenize([it["text"] for it in good])
        batch = {"input_ids": tok.input_ids, "attention_mask": tok.attention_mask,
                 "index": torch.tensor([it["index"] for it in good], dtype=torch.long)}
        if good and "latent" in good[0]:
            batch.update(stack_latents([it["latent"] for it in good]))
        return Collated(batch, bad, int(tok.truncated.sum()), len(good))


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
    return lat if lat.dim() == 2 else masked_mean(lat, batch["latent_mask"])
