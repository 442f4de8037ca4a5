"""Collate: items -> a batch, with its bookkeeping beside it (never inside).

Core batch: ``input_ids [B, L] long``, ``attention_mask [B, L] bool``, ``latent [B, D] float32``
(or ``[B, K, D]`` + ``latent_mask [B, K]`` when a record holds K > 1 vectors; absent when
``data.latent_dim`` is null) and ``index [B]`` (record numbers). A collate function returns
:class:`Collated`: the batch, the bad records dropped from it and how many texts were cut. A family
with its own batch schema brings its own collate with the same return type.

Packed batches (``data.wrap: true``, MDLM's OpenWebText protocol): each document is tokenised
whole (no truncation, none of the tokenizer's own special tokens) and wrapped as
``BOS + tokens + EOS``; the batch's documents are concatenated in order and cut into rows of
``data.max_seq_len``: every full row, then the remainder as one last row, right-padded
(``attention_mask`` False). No token is dropped and only the last row has padding. Rows:
``input_ids [R, max_seq_len]``, ``attention_mask [R, max_seq_len]``, ``index [R]`` = the record
number of the document the row's first token belongs to; R follows the documents' lengths.
"""
from __future__ import annotations

import itertools
import logging
from typing import NamedTuple

import numpy as np
import torch

from mmldlm.config import ConfigError
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


# A text is cut to this many characters per token a model can use before it is tokenised: one 5 MB
# record cost ~590 MB of encodings to keep 512 tokens. Only a cut that then yields no more than the
# tokens wanted (a text of very long tokens) is tokenised whole after all, so the ids never differ.
CHARS_PER_TOKEN = 16


def cut_text(text: str, max_tokens: int, keep_end: bool = False) -> str:
    """The part of ``text`` that can hold its first (``keep_end``: last) ``max_tokens`` tokens: at
    most ``max_tokens x CHARS_PER_TOKEN`` characters, cut at whitespace near that point (a word cut
    in two would tokenise differently); ``text`` itself (the same object) when it is shorter."""
    cap = max_tokens * CHARS_PER_TOKEN
    if len(text) <= cap:
        return text
    part = text[-cap:] if keep_end else text[:cap]
    edge = part[:1024] if keep_end else part[-1024:]
    spaces = [i for i in (edge.find(c) if keep_end else edge.rfind(c) for c in " \n\t") if i >= 0]
    if not spaces:
        return part
    at = min(spaces) if keep_end else max(spaces)
    return part[at:] if keep_end else part[: len(part) - len(edge) + at]


def settle_later(collated: Collated, skip: bool, noted: DataError | None) -> tuple[dict, BatchInfo, DataError | None]:
    """:func:`settle` for loops whose every batch is a collective step (evaluation): under
    ``error`` a bad record is noted, not raised, and the batch's good records go on, so every rank
    runs the same collectives; the caller raises the first noted error once the ranks agree
    (``mmldlm.train.distributed.first_error``). Returns (batch, info, the first error noted)."""
    if collated.bad and not skip:
        noted = noted or collated.bad[0]
        collated = collated._replace(bad=[])
    batch, info = settle(collated, skip)
    return batch, info, noted


class Collator:
    """Batch tokenisation and latent stacking.

    Fast tokenizers are driven through their Rust backend (a private copy with truncation and
    padding set): the same ids as ``tokenizer(texts, truncation=True, padding=...)``, at a
    third of the cost. Slow tokenizers go through the transformers call.

    Text is text: with ``split_special_tokens`` (the default) a literal "[MASK]" or "<|endoftext|>"
    in a record is tokenised as characters, never as the special id (a literal mask id in clean
    input would corrupt the masked-diffusion targets). Special tokens are still added around the
    text by the tokenizer's post-processor ([CLS] ... [SEP]).

    ``wrap=True`` packs the batch's documents into full rows instead (module docstring): BOS and
    EOS are the tokenizer's ``bos_token_id`` / ``eos_token_id``, else its ``cls_token_id`` /
    ``sep_token_id``; ``fixed_length`` and ``pad_to_multiple_of`` do not apply (every row is
    ``max_seq_len`` long) and nothing is truncated.
    """

    def __init__(self, tokenizer, max_seq_len: int, fixed_length: bool = False,
                 pad_to_multiple_of: int = 1, split_special_tokens: bool = True, wrap: bool = False):
        self.tokenizer, self.max_seq_len = tokenizer, max_seq_len
        self.fixed_length, self.multiple = fixed_length, pad_to_multiple_of
        self.split_special_tokens, self.wrap = split_special_tokens, wrap
        self.bos, self.eos = wrap_tokens(tokenizer) if wrap else (None, None)
        self.backend = self.doc_backend = None
        if getattr(tokenizer, "is_fast", False):
            from tokenizers import Tokenizer

            self.backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
            self.backend.encode_special_tokens = split_special_tokens
            self.backend.enable_truncation(max_seq_len, direction=tokenizer.truncation_side)
            self.backend.no_padding()  # padded below, in numpy: half the Python list conversions
            if wrap:  # documents whole: packing cuts them, nothing is dropped
                self.doc_backend = Tokenizer.from_str(self.backend.to_str())
                self.doc_backend.encode_special_tokens = split_special_tokens
                self.doc_backend.no_truncation()

    def _padded_length(self, longest: int) -> int:
        if self.fixed_length:
            return self.max_seq_len
        return -(-longest // self.multiple) * self.multiple

    def tokenize(self, texts: list[str]) -> Tokenized:
        if not texts:
            return Tokenized(torch.zeros(0, 1, dtype=torch.long), torch.zeros(0, 1, dtype=torch.bool),
                             torch.zeros(0, dtype=torch.bool))
        keep_end = self.tokenizer.truncation_side == "left"
        cut = [cut_text(t, self.max_seq_len, keep_end) for t in texts]
        if self.backend is not None:
            encode = getattr(self.backend, "encode_batch_fast", self.backend.encode_batch)  # no offsets
            encs = encode(cut)
            # a cut text that turned out to fit (rare: very long tokens) is encoded whole after all
            redo = [j for j, (c, t, e) in enumerate(zip(cut, texts, encs)) if c is not t and not e.overflowing]
            for j, e in zip(redo, encode([texts[j] for j in redo]) if redo else []):
                encs[j] = e
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
        full = self.tokenizer(cut, truncation=False, **split)["input_ids"]
        if any(c is not t and len(f) <= self.max_seq_len for c, t, f in zip(cut, texts, full)):
            cut = [t if c is not t and len(f) <= self.max_seq_len else c for c, t, f in zip(cut, texts, full)]
            full = self.tokenizer(cut, truncation=False, **split)["input_ids"]
        texts = cut
        enc = self.tokenizer(texts, truncation=True, max_length=self.max_seq_len,
                             padding="max_length" if self.fixed_length else "longest",
                             pad_to_multiple_of=None if self.fixed_length or self.multiple == 1 else self.multiple,
                             return_tensors="pt", **split)
        return Tokenized(enc["input_ids"].long(), enc["attention_mask"].bool(),
                         torch.tensor([len(f) > self.max_seq_len for f in full], dtype=torch.bool))

    def tokenize_documents(self, texts: list[str]) -> list[list[int]]:
        """Each text's ids, whole: no truncation, none of the tokenizer's special tokens."""
        if not texts:
            return []
        if self.doc_backend is not None:
            encode = getattr(self.doc_backend, "encode_batch_fast", self.doc_backend.encode_batch)  # no offsets
            return [e.ids for e in encode(texts, add_special_tokens=False)]
        return self.tokenizer(texts, add_special_tokens=False, truncation=False,
                              split_special_tokens=self.split_special_tokens)["input_ids"]

    def pack(self, docs: list[list[int]], numbers: list[int]) -> dict[str, torch.Tensor]:
        """``BOS + doc + EOS`` of every document, concatenated and cut into ``max_seq_len`` rows (the
        last one right-padded); ``index`` is the record of the document holding each row's first token."""
        L = self.max_seq_len
        lengths = np.fromiter((len(d) + 2 for d in docs), dtype=np.int64, count=len(docs))
        total = int(lengths.sum())
        rows = -(-total // L)
        ids = np.full(rows * L, self.tokenizer.pad_token_id, dtype=np.int64)
        starts = np.cumsum(lengths) - lengths
        special = np.zeros(total, dtype=bool)
        special[starts], special[starts + lengths - 1] = True, True
        body = ids[:total]
        body[starts], body[starts + lengths - 1] = self.bos, self.eos
        body[~special] = np.fromiter(itertools.chain.from_iterable(docs), dtype=np.int64, count=total - 2 * len(docs))
        mask = np.arange(rows * L) < total
        owner = np.searchsorted(starts, np.arange(rows, dtype=np.int64) * L, side="right") - 1
        return {"input_ids": torch.from_numpy(ids.reshape(rows, L)),
                "attention_mask": torch.from_numpy(mask.reshape(rows, L)),
                "index": torch.from_numpy(np.asarray(numbers, dtype=np.int64)[owner])}

    def __call__(self, items: list) -> Collated:
        good, bad = partition(items)
        if self.wrap:
            if good and "latent" in good[0]:
                raise ConfigError("data.wrap: packed rows mix documents, so records cannot bring latents; "
                                  "set data.latent_dim=null (or data.wrap=false)")
            docs = self.tokenize_documents([it["text"] for it in good])
            return Collated(self.pack(docs, [it["index"] for it in good]), bad, 0, len(good))
        tok = self.tokenize([it["text"] for it in good])
        batch = {"input_ids": tok.input_ids, "attention_mask": tok.attention_mask,
                 "index": torch.tensor([it["index"] for it in good], dtype=torch.long)}
        if good and "latent" in good[0]:
            batch.update(stack_latents([it["latent"] for it in good]))
        return Collated(batch, bad, int(tok.truncated.sum()), len(good))


def wrap_tokens(tokenizer) -> tuple[int, int]:
    """(BOS, EOS) that packing puts around each document: the tokenizer's BOS / EOS, else its
    CLS / SEP (a BERT vocabulary); a ConfigError when it has neither."""
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.cls_token_id
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
    if bos is None or eos is None:
        wanted = (("a BOS (or CLS) token", bos), ("an EOS (or SEP) token", eos))
        missing = " and ".join(w for w, t in wanted if t is None)
        raise ConfigError(f"data.wrap: the tokenizer {getattr(tokenizer, 'name_or_path', '')!r} "
                          f"(data.tokenizer_name) "
                          f"has no {missing} to put around each packed document; use a tokenizer that has them "
                          "or set data.wrap=false")
    return int(bos), int(eos)


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
