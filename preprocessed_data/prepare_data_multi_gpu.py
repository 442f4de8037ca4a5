"""Latent extraction: a text corpus -> the JSON + .npy dataset every trainer reads.

    torchrun --nnodes=1 --nproc_per_node=N preprocessed_data/prepare_data_multi_gpu.py \\
        --datasets openwebtext --latent-model e5 --model-dir local_models/e5 \\
        --batch-size 256 --max-samples 10000000 --output-dir DIR [--create-validation --val-ratio 0.05]
    python preprocessed_data/prepare_data_multi_gpu.py --input-files a.txt b.jsonl --latent-model minilm \\
        --output-dir DIR

The corpus is cut into parts of --shard-rows texts; rank r encodes parts r, r + N, ... (no DDP:
each rank runs the encoder alone), longest texts first within a part, bf16 on GPU. A finished
part is a file under DIR/latents/ plus its `.part_*.json` marker, so a rerun after a crash skips
finished parts and yields the same output; the output does not depend on N. After every rank
is done, rank 0 writes train_data.json (and validation_data.json: the loader's hash split) and
dataset_stats.json. preprocessed_data/README.md has the layout and how to pick an encoder.
"""
from __future__ import annotations

import argparse

from mmldlm.argtypes import fraction, nonneg_int, positive_int
from preprocessed_data.encoders import DEFAULT_IDS


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_argument_group("input")
    src.add_argument("--datasets", nargs="+", default=[], help="HF dataset names (offline: from the local cache)")
    src.add_argument("--dataset-config", default=None, help="HF dataset configuration name")
    src.add_argument("--split", default="train", help="HF dataset split (default train)")
    src.add_argument("--input-files", nargs="+", default=[], help=".txt (one text per line) or .jsonl files")
    src.add_argument("--text-field", default="text", help="the text field of .jsonl records / dataset rows")
    src.add_argument("--max-samples", type=positive_int, default=None,
                     help="stop after this many texts (after cleaning)")
    src.add_argument("--min-chars", type=nonneg_int, default=1, help="skip (and count) texts shorter than this")
    src.add_argument("--chunk-chars", type=nonneg_int, default=0,
                     help="cut longer documents at sentence boundaries into chunks of at most this many chars "
                          "(0 = off: the encoder truncates at its token limit)")
    src.add_argument("--chunk-overlap", type=nonneg_int, default=0, help="chars of whole sentences shared by chunks")
    src.add_argument("--keep-duplicates", action="store_true", help="keep exact duplicate texts (default: once)")
    src.add_argument("--on-bad-text", choices=["error", "skip"], default="error",
                     help="a non-UTF-8 / non-JSON line: stop with its file and line (default) or skip and count")
    enc = p.add_argument_group("encoder")
    enc.add_argument("--latent-model", required=True, choices=list(DEFAULT_IDS),
                     help="minilm (offline, 384-d) | e5 | qwen | sonar (1024-d)")
    enc.add_argument("--model-dir", default=None,
                     help="local encoder weights (prefetched; e.g. by DOWNLOAD_ONLY=1 scripts/run_extract.sh)")
    enc.add_argument("--latent-dim", type=positive_int, default=None, help="truncate to this many dims (qwen only)")
    enc.add_argument("--prefix", default=None, help="text prepended to every input (e5 default: 'passage: ')")
    enc.add_argument("--sonar-lang", default="eng_Latn", help="SONAR source language")
    enc.add_argument("--max-length", type=positive_int, default=None, help="token limit (default: the encoder's)")
    enc.add_argument("--batch-size", type=positive_int, default=256, help="texts per encoder call, per rank")
    enc.add_argument("--dtype", choices=["auto", "fp32", "bf16", "fp16"], default="auto",
                     help="auto = bf16 on GPU, fp32 on CPU")
    enc.add_argument("--trust-remote-code", action="store_true", help="allow the model repo's own code")
    out = p.add_argument_group("output")
    out.add_argument("--output-dir", required=True)
    out.add_argument("--layout", choices=["shard", "per-file"], default="shard",
                     help="shard: 2-D latents/shard_*.npy rows (fast); per-file: latents/<i>.npy per text")
    out.add_argument("--shard-rows", type=positive_int, default=65536, help="texts per part (and per shard file)")
    out.add_argument("--create-validation", action="store_true", help="also write validation_data.json")
    out.add_argument("--val-ratio", type=fraction, default=0.05, help="held-out fraction (hash of the text)")
    out.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    if not a.datasets and not a.input_files:
        p.error("give --datasets and/or --input-files")
    if a.batch_size < 1 or a.shard_rows < 1 or not 0 < a.val_ratio < 1:
        p.error("--batch-size and --shard-rows must be >= 1, --val-ratio in (0, 1)")
    if a.chunk_chars and a.chunk_overlap >= a.chunk_chars:
        p.error("--chunk-overlap must be smaller than --chunk-chars")
    return a


def main(argv=None) -> None:
    from preprocessed_data.extract import run

    run(parse_args(argv))


if __name__ == "__main__":
    main()
