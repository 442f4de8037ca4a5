"""The dataset checker: every record and every latent file, each bad one listed.

    python -m mmldlm.data.check PATH.json --latent-dim D [--tokenizer NAME --max-seq-len L]
    python -m latentDLM_mmdit.data_simple check PATH.json --latent-dim D      (the same)

Prints ``BAD FILE: record N: reason`` per bad record (a reason shared by more than 5 records: one
line with their count and first records) and ``NOTE`` lines about the texts (literal
special-token strings; with a tokenizer, how many texts ``--max-seq-len`` cuts); exit status 1 if
any record is bad.
"""
from __future__ import annotations

import argparse
import sys

from mmldlm.data.collate import Collator, partition
from mmldlm.data.loader import RecordDataset, read_dataset
from mmldlm.data.records import DataError

LITERAL_SPECIALS = ("[MASK]", "[PAD]", "[CLS]", "[SEP]", "[UNK]", "<|endoftext|>", "<s>", "</s>", "<pad>",
                    "<mask>", "<unk>", "<|im_start|>", "<|im_end|>")
BATCH = 256
FIRST = 5  # records named for a reason many records share


def _text_notes(ds: RecordDataset, tokenizer: str | None, max_seq_len: int) -> list[str]:
    """Literal special-token strings (tokenised as plain text) and, with a tokenizer, how many
    texts ``max_seq_len`` cuts."""
    from mmldlm.data.tokenizer import load_tokenizer

    specials, col = LITERAL_SPECIALS, None
    if tokenizer:
        tok = load_tokenizer(tokenizer, key="--tokenizer")
        specials = tuple(tok.all_special_tokens) or LITERAL_SPECIALS
        col = Collator(tok, max_seq_len)
    with_specials, first, cut = 0, None, 0
    for s in range(0, len(ds), BATCH):
        texts = []
        for number, obj in ds._records(list(range(s, min(len(ds), s + BATCH)))):
            text = obj.get("text", "")
            texts.append(text)
            if any(sp in text for sp in specials):
                with_specials += 1
                first = number if first is None else first
        if col is not None:
            cut += int(col.tokenize(texts).truncated.sum())
    lines = []
    if with_specials:
        lines.append(f"NOTE {with_specials} texts contain literal special-token strings ({', '.join(specials[:5])}"
                     f"...; first: record {first}); they are tokenised as plain text, never as special ids")
    if col is not None:
        lines.append(f"NOTE {cut} of {len(ds)} texts ({cut / max(1, len(ds)):.1%}) are longer than "
                     f"{max_seq_len} tokens and would be truncated (data.max_seq_len)")
    return lines


def grouped(problems: list[DataError], first: int = FIRST) -> list[str]:
    """A line per bad record, except that a reason shared by more than ``first`` records (a
    systematic error: every latent of the wrong dimension) is one line with its count and first records."""
    groups: dict[str, list[DataError]] = {}
    for e in problems:
        groups.setdefault(e.reason, []).append(e)
    lines = []
    for reason, errors in groups.items():
        if len(errors) <= first or errors[0].record is None:
            lines += [f"BAD {e}" for e in errors]
            continue
        shown = ", ".join(str(e.record) for e in errors[:first])
        lines.append(f"BAD {errors[0].json_path}: {len(errors)} records (first: {shown}, ...): {reason}")
    return lines


def check_main(argv: list[str] | None = None, prog: str = "python -m mmldlm.data.check") -> int:
    """Read every record and every latent; print each bad one; exit 1 if any."""
    from tqdm import tqdm

    p = argparse.ArgumentParser(
        prog=prog,
        description="Validate a dataset: every record and every latent file (existence, regular file, "
                    ".npy without pickles, shape, dimension, dtype, NaN/Inf, shard rows, paths inside the "
                    "root). Prints each bad record as 'BAD FILE: record N: reason'; exit status 1 if any.")
    p.add_argument("json_path", help="train/validation JSON list or JSONL file")
    p.add_argument("--latent-dim", type=int, default=None,
                   help="expected latent dimension D (omit for text-only records)")
    p.add_argument("--latent-data-root", default=None,
                   help="base directory of latent_path (default: the JSON file's directory)")
    p.add_argument("--allow-paths-outside-root", action="store_true",
                   help="accept absolute latent paths and paths with '..' (data.allow_paths_outside_root)")
    p.add_argument("--tokenizer", default=None,
                   help="also report how many texts exceed --max-seq-len tokens with this tokenizer")
    p.add_argument("--max-seq-len", type=int, default=512, help="token limit for the truncation report")
    args = p.parse_args(argv)
    try:
        ds = read_dataset(args.json_path, args.latent_dim, args.latent_data_root, args.allow_paths_outside_root,
                          skip=True)
    except DataError as e:  # the file as a whole is unreadable
        print(f"BAD {e}")
        return 1
    problems = list(ds.index.problems)
    for s in tqdm(range(0, len(ds), BATCH), desc="checking latents", unit="batch", disable=None):
        problems += partition(ds.__getitems__(list(range(s, min(len(ds), s + BATCH)))))[1]
    problems.sort(key=lambda e: -1 if e.record is None else e.record)
    for line in grouped(problems):
        print(line)
    for line in _text_notes(ds, args.tokenizer, args.max_seq_len):
        print(line)
    total = ds.index.total_records()
    print(f"{args.json_path}: {total} records, {len(problems)} bad, {total - len(problems)} good")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(check_main())
