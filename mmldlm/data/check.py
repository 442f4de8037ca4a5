"""The dataset checker: every record and every file it names, each bad one listed.

    python -m mmldlm.data.check PATH.json --latent-dim D [--tokenizer NAME --max-seq-len L]
    python -m mmldlm.data.check PATH.json --config-name NAME [key=value ...]   (any family's records)
    python -m mmldlm.data.check PATH.json --run RUN_DIR                        (as that run reads them)
    python -m latentDLM_mmdit.data_simple check PATH.json --latent-dim D      (the same)

With a config (``--config-name`` and its overrides, as the training command has them, or the one a
run saved), records are read under that config's rules and family fields, and every good record
goes through the family's own collate, exactly as training would read it: images are decoded,
conversations tokenised against the context length. So the list holds every record a run would
refuse, before the run starts. Prints ``BAD FILE: record N: reason`` per bad record (a reason shared
by more than 5 records: one line with their count and first records) and ``NOTE`` lines about the
texts (literal special-token strings; with a tokenizer, how many texts the context cuts); exit
status 1 if any record is bad.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mmldlm.argtypes import at_least, positive_int
from mmldlm.data.collate import Collator, partition
from mmldlm.data.loader import RecordDataset
from mmldlm.data.records import DataError

LITERAL_SPECIALS = ("[MASK]", "[PAD]", "[CLS]", "[SEP]", "[UNK]", "<|endoftext|>", "<s>", "</s>", "<pad>",
                    "<mask>", "<unk>", "<|im_start|>", "<|im_end|>")
BATCH = 256
FIRST = 5  # records named for a reason many records share


def _special_note(ds: RecordDataset, specials: tuple[str, ...]) -> list[str]:
    """How many texts hold literal special-token strings (tokenised as plain text)."""
    with_specials, first = 0, None
    for s in range(0, len(ds), BATCH):
        for number, obj in ds._records(list(range(s, min(len(ds), s + BATCH)))):
            if any(sp in obj.get("text", "") for sp in specials):
                with_specials += 1
                first = number if first is None else first
    if not with_specials:
        return []
    return [f"NOTE {with_specials} texts contain literal special-token strings ({', '.join(specials[:5])}...; "
            f"first: record {first}); they are tokenised as plain text, never as special ids"]


def _family(args, overrides: list[str]):
    """(config, registry entry) from ``--config-name`` + overrides or ``--run``."""
    from omegaconf import OmegaConf

    from mmldlm.config import ConfigError, compose, validate
    from mmldlm.objective import lookup

    if args.run:
        saved = Path(args.run) / "config.yaml"
        if not saved.is_file():
            raise ConfigError(f"--run: {saved} not found (a run directory holds the config it trained with)")
        raw = OmegaConf.load(saved)
        entry = lookup(raw.objective)
        cfg = OmegaConf.merge(OmegaConf.structured(entry.schema), raw, OmegaConf.from_dotlist(overrides))
        validate(cfg, entry.schema)
        return cfg, entry
    if not any(o.split("=", 1)[0] == "data.data_files.train" for o in overrides):
        overrides = [*overrides, f"data.data_files.train={Path(args.json_path).absolute()}"]
    cfg = compose(args.config_name, overrides)
    return cfg, lookup(cfg.objective)


def _reader(args, overrides: list[str]):
    """(dataset of the file's good records, collate or None, tokenizer or None, note specials?)."""
    from mmldlm.data.index import open_index
    from mmldlm.data.loader import rules_from, source_of
    from mmldlm.data.records import RecordRules
    from mmldlm.data.tokenizer import load_tokenizer
    from mmldlm.sources import open_sources

    if not (args.config_name or args.run):
        rules = RecordRules(latent_dim=args.latent_dim, latent_root=args.latent_data_root,
                            allow_outside=args.allow_paths_outside_root)
        tok = load_tokenizer(args.tokenizer, key="--tokenizer") if args.tokenizer else None
        collate = Collator(tok, args.max_seq_len) if tok is not None else None
        return RecordDataset(open_index(args.json_path, rules)), collate, tok, True
    cfg, entry = _family(args, overrides)
    src = source_of(cfg.data)
    rules = rules_from(cfg.data, entry.records, "text" if src.kind == "text" else "json")
    sources = open_sources(cfg, entry)  # resolved as the run resolves them; no weights are loaded
    tok = sources.tokenizer
    if entry.collator is not None:
        collate = entry.collator(cfg, sources)
    else:
        collate = Collator(tok, cfg.data.max_seq_len, cfg.data.padding.name == "max_length",
                           cfg.data.pad_to_multiple_of, wrap=cfg.data.wrap)
    ds = RecordDataset(open_index(args.json_path, rules, cfg.data.index_cache_dir))
    return ds, collate, tok, entry.records.needs_text and entry.collator is None


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
    """Read every record (and, with a config, collate it); print each bad one; exit 1 if any."""
    from tqdm import tqdm

    from mmldlm.config import ConfigError
    from mmldlm.sources import SourceError

    p = argparse.ArgumentParser(
        prog=prog, formatter_class=argparse.RawDescriptionHelpFormatter, description=__doc__,
        epilog="Trailing key=value arguments are overrides of --config-name (or of the --run config).")
    p.add_argument("json_path", help="train/validation JSON list or JSONL file")
    core = p.add_argument_group("core records ({text, latent_path, latent_row}), without a config")
    core.add_argument("--latent-dim", type=positive_int, default=None,
                      help="expected latent dimension D (omit for text-only records)")
    core.add_argument("--latent-data-root", default=None,
                      help="base directory of latent_path (default: the JSON file's directory)")
    core.add_argument("--allow-paths-outside-root", action="store_true",
                      help="accept absolute latent paths and paths with '..' (data.allow_paths_outside_root)")
    core.add_argument("--tokenizer", default=None,
                      help="also report how many texts exceed --max-seq-len tokens with this tokenizer")
    core.add_argument("--max-seq-len", type=at_least(2), default=512, help="token limit for the truncation report")
    fam = p.add_argument_group("any family's records, read and collated as its training run would")
    fam.add_argument("--config-name", default=None, help="the training config (e.g. image_continuous, wedlm8b_sft)")
    fam.add_argument("--run", default=None, help="a run directory: the config it trained with (RUN/config.yaml)")
    args, overrides = p.parse_known_args(argv)
    stray = [o for o in overrides if o.startswith("-") or "=" not in o]
    if stray or (overrides and not (args.config_name or args.run)):
        p.error(f"unrecognised arguments: {' '.join(stray or overrides)} (key=value overrides need --config-name "
                "or --run)")
    if args.config_name and args.run:
        p.error("--config-name and --run both name a config; pass one")
    try:
        ds, collate, tok, texts = _reader(args, overrides)
    except DataError as e:  # the file as a whole is unreadable
        print(f"BAD {e}")
        return 1
    except (ConfigError, SourceError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    problems, cut = list(ds.index.problems), 0
    what = "reading and collating records" if collate is not None else "checking latents"
    for s in tqdm(range(0, len(ds), BATCH), desc=what, unit="batch", disable=None):
        items = ds.__getitems__(list(range(s, min(len(ds), s + BATCH))))
        if collate is None:
            problems += partition(items)[1]
            continue
        collated = collate(items)
        problems += collated.bad
        cut += collated.truncated
    problems.sort(key=lambda e: -1 if e.record is None else e.record)
    for line in grouped(problems):
        print(line)
    if texts:
        specials = tuple(tok.all_special_tokens) if tok is not None and tok.all_special_tokens else LITERAL_SPECIALS
        for line in _special_note(ds, specials):
            print(line)
    if collate is not None:
        limit = getattr(collate, "max_seq_len", None) or getattr(collate, "max_len", None)
        noun = "texts" if texts else "records"
        print(f"NOTE {cut} of {len(ds)} {noun} ({cut / max(1, len(ds)):.1%}) are longer than "
              f"{f'{limit} tokens' if limit else 'the context'} and would be truncated (data.max_seq_len)")
    total = ds.index.total_records()
    print(f"{args.json_path}: {total} records, {len(problems)} bad, {total - len(problems)} good")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(check_main())
