"""Reading a text corpus for extraction: local files or HF datasets, cleaning, chunking, dedup.

Every rank builds the same ordered list of texts, so work can be split by position alone.

- ``.txt``: one text per line. ``.jsonl``: one JSON object per line, text in ``text_field``.
- Empty lines / texts are skipped and counted (``empty``); texts shorter than ``min_chars``
  likewise (``too_short``); exact duplicates (after stripping) are kept once (``duplicate``)
  unless ``keep_duplicates``.
- A line that is not valid UTF-8, not valid JSON, or lacks the text field is an error naming the
  file, line and reason; with ``on_bad_text="skip"`` it is skipped and counted instead.
- Long documents: with ``chunk_chars > 0`` they are cut at sentence boundaries into chunks of at
  most ``chunk_chars`` characters (a longer sentence is cut at whitespace), consecutive chunks
  sharing up to ``chunk_overlap`` characters of whole sentences; ids get ``#cK``. Without
  chunking the encoder truncates them to its token limit (counted as ``truncated``).
"""
from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


class CorpusError(ValueError):
    pass


@dataclass
class Corpus:
    texts: list[str] = field(default_factory=list)
    datasets: list[str] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)
    skipped: Counter = field(default_factory=Counter)


def _cut_long(sentence: str, n: int) -> list[str]:
    out, cur = [], ""
    for word in sentence.split():
        while len(word) > n:  # a "word" longer than a chunk (URLs, base64...)
            if cur:
                out.append(cur)
                cur = ""
            out.append(word[:n])
            word = word[n:]
        if cur and len(cur) + 1 + len(word) > n:
            out.append(cur)
            cur = word
        else:
            cur = f"{cur} {word}" if cur else word
    return out + ([cur] if cur else [])


def chunk_text(text: str, max_chars: int, overlap: int = 0) -> list[str]:
    """Sentence-packed chunks of at most ``max_chars``; ``overlap`` chars of trailing whole
    sentences repeat at the start of the next chunk."""
    if len(text) <= max_chars:
        return [text]
    sents = [p for s in _SENTENCE_END.split(text) if s.strip() for p in _cut_long(s.strip(), max_chars)]
    chunks, cur = [], []
    for s in sents:
        if cur and len(" ".join(cur + [s])) > max_chars:
            chunks.append(" ".join(cur))
            keep = []
            for prev in reversed(cur):  # carry whole trailing sentences within the overlap budget
                if len(" ".join([prev] + keep + [s])) > max_chars or len(" ".join([prev] + keep)) > overlap:
                    break
                keep.insert(0, prev)
            cur = keep
        cur.append(s)
    if cur:
        chunks.append(" ".join(cur))
    return chunks


def _local_records(path: Path, text_field: str, on_bad: str, skipped: Counter) -> Iterator[tuple[str, str]]:
    is_jsonl = path.suffix == ".jsonl"
    try:
        fh = open(path, "rb")  # noqa: SIM115 - the with below owns it; open's own error is the one to report
    except OSError as e:
        raise CorpusError(f"{path}: cannot open ({e.strerror})") from None
    with fh:
        for line_no, raw in enumerate(fh, start=1):
            reason = None
            try:
                line = raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as e:
                reason, key = f"not valid UTF-8 (byte 0x{raw[e.start]:02x} at column {e.start + 1})", "bad_utf8"
            if reason is None and is_jsonl and line.strip():
                try:
                    obj = json.loads(line)
                    line = obj[text_field]
                    if not isinstance(line, str):
                        reason, key = f"field {text_field!r} is a {type(line).__name__}, not a string", "bad_record"
                except json.JSONDecodeError as e:
                    reason, key = f"not valid JSON ({e.msg} at column {e.colno})", "bad_record"
                except (KeyError, TypeError):
                    reason, key = f"no {text_field!r} field (set --text-field)", "bad_record"
            if reason is not None:
                if on_bad != "skip":
                    raise CorpusError(f"{path}: line {line_no}: {reason}; fix the file or pass --on-bad-text skip "
                                      "to skip and count such lines")
                skipped[key] += 1
                continue
            yield f"{path.name}:{line_no}", line


def _hf_records(name: str, config: Optional[str], split: str, text_field: str) -> Iterator[tuple[str, str]]:
    try:
        import datasets
    except ImportError:
        raise CorpusError(f"--datasets {name}: reading hub datasets needs the `datasets` package "
                          "(pip install datasets); local files work without it (--input-files)") from None
    try:
        ds = datasets.load_dataset(name, config, split=split)
    except Exception as e:  # noqa: BLE001 - offline cache misses surface here with the library's text
        raise CorpusError(f"--datasets {name}: cannot load ({str(e).splitlines()[0]}). Offline, the dataset "
                          "must be in the HF datasets cache: load it once on a node with internet") from None
    if text_field not in ds.column_names:
        raise CorpusError(f"--datasets {name}: no column {text_field!r} (columns: {ds.column_names}); "
                          "set --text-field")
    for i, row in enumerate(ds):
        yield f"{name}:{i}", row[text_field]


def read_corpus(input_files: list[str], datasets: list[str], *, text_field: str = "text",
                dataset_config: Optional[str] = None, split: str = "train", min_chars: int = 1,
                chunk_chars: int = 0, chunk_overlap: int = 0, keep_duplicates: bool = False,
                on_bad_text: str = "error", max_samples: Optional[int] = None) -> Corpus:
    c, seen = Corpus(), set()
    sources = [(Path(f).name, _local_records(Path(f), text_field, on_bad_text, c.skipped)) for f in input_files]
    sources += [(d, _hf_records(d, dataset_config, split, text_field)) for d in datasets]
    for ds_name, records in sources:
        for rid, raw in records:
            text = raw.strip()
            if not text:
                c.skipped["empty"] += 1
                continue
            parts = chunk_text(text, chunk_chars, chunk_overlap) if chunk_chars > 0 else [text]
            for k, part in enumerate(parts):
                if len(part) < min_chars:
                    c.skipped["too_short"] += 1
                    continue
                if not keep_duplicates:
                    if part in seen:
                        c.skipped["duplicate"] += 1
                        continue
                    seen.add(part)
                c.texts.append(part)
                c.datasets.append(ds_name)
                c.ids.append(rid if len(parts) == 1 else f"{rid}#c{k}")
                if max_samples is not None and len(c.texts) >= max_samples:
                    return c
    return c
