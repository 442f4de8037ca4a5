"""Kept for the paths users already type; the loader lives in ``mmldlm.data``.

    python -m latentDLM_mmdit.data_simple check PATH.json --latent-dim D
    from latentDLM_mmdit.data_simple import build_data, Collator, mean_latent, load_tokenizer, ...
"""
import argparse
import sys

from mmldlm.data.check import check_main
from mmldlm.data.collate import BatchInfo, Collated, Collator, Tokenized, mean_latent, settle, stack_latents
from mmldlm.data.loader import (
    DataBundle,
    RecordDataset,
    StepChunkSampler,
    TrainStream,
    build_data,
    held_out,
    read_dataset,
    shutdown_workers,
)
from mmldlm.data.records import DataError, LatentError
from mmldlm.data.tokenizer import load_tokenizer

__all__ = ["BatchInfo", "Collated", "Collator", "DataBundle", "DataError", "LatentError", "RecordDataset",
           "StepChunkSampler", "Tokenized", "TrainStream", "build_data", "check_main", "held_out", "load_tokenizer",
           "mean_latent", "read_dataset", "settle", "shutdown_workers", "stack_latents"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m latentDLM_mmdit.data_simple",
                                description="The shared loader's command line. Subcommands:\n"
                                            "  check PATH.json --latent-dim D   list every bad record of a dataset",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=["check"], help="check: validate a dataset (check --help for its options)")
    p.add_argument("args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    return check_main(a.args, prog="python -m latentDLM_mmdit.data_simple check")


if __name__ == "__main__":
    sys.exit(main())
