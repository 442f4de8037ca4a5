"""The original's command-line flags, mapped onto the shared loop's config.

    python latentIMG_mmdit/train_image_continuous.py --data-root DIR --epochs 50 --batch-size 8 \\
        --dim-text 1024 --dim-image 512 --output-dir OUT
    python latentIMG_mmdit/train_image_discrete.py --data-root DIR --epochs 50 --batch-size 8 \\
        --dim-text 768 --dim-image 512 --output-dir OUT

Reads ``DIR/{--split}_data.json`` (and ``DIR/validation_data.json`` when present); the run lands in
``OUT`` (``training_log.jsonl``, ``eval_log.jsonl``, ``config.yaml``, ``checkpoint_step_N``), as the
Hydra form ``train_image.py --config-name image_continuous|image_discrete`` would put it. The flags
are the original's (``--split`` now chooses the training file; ``--dropout`` is now applied) plus
a few of ours; trailing ``key=value`` arguments are Hydra overrides of anything else. The
discrete command builds its codebook into ``OUT/codebook.npz`` on first use unless ``--codebook``
names one.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from mmldlm.argtypes import at_least, fraction, nonneg_float, nonneg_int, positive_float, positive_int

ORIGINAL_DEFAULTS = {"continuous": {"output_dir": "outputs", "max_length": 77, "noise_schedule": "linear"},
                     "discrete": {"output_dir": "outputs_masked", "max_length": 128, "noise_schedule": "cosine"}}


def parser(variant: str) -> argparse.ArgumentParser:
    d = ORIGINAL_DEFAULTS[variant]
    p = argparse.ArgumentParser(
        prog=f"python latentIMG_mmdit/train_image_{variant}.py", formatter_class=argparse.RawDescriptionHelpFormatter,
        description=f"Train the {variant} image<->caption MMDiT on {{data-root}}/{{split}}_data.json records "
                    "({image_path, caption, image_id}) on the shared loop. docs/image_mmdit.md has the details.",
        epilog="Trailing key=value arguments are Hydra overrides (e.g. loss.caption_drop=0.2 sample.guidance=2).")
    a = p.add_argument
    a("--data-root", required=True, help="directory holding {split}_data.json (and validation_data.json)")
    a("--split", default="train", help="the training file's prefix: {data-root}/{split}_data.json")
    a("--output-dir", default=d["output_dir"], help="the run directory: logs, config, checkpoints")
    a("--epochs", type=positive_int, default=100, help="passes over the training records (sets the step count)")
    a("--batch-size", type=positive_int, default=8, help="records per step and rank")
    a("--lr", type=positive_float, default=1e-4)
    a("--weight-decay", type=nonneg_float, default=0.05)
    a("--max-samples", type=positive_int, default=None,
      help="use the first N training records (validation: min(1000, N))")
    a("--device", default="auto", choices=["auto", "cuda", "cpu"])
    a("--log-every", type=positive_int, default=100, help="steps between training_log.jsonl lines")
    a("--save-every", type=nonneg_int, default=5000, help="steps between checkpoints")
    a("--val-every", type=nonneg_int, default=1000, help="steps between evaluations (when validation_data.json exists)")
    a("--seed", type=nonneg_int, default=1337)
    a("--dim-cond", type=positive_int, default=256, help="width of the time conditioning")
    a("--dim-image", type=positive_int, default=512, help="width of the image stream (any value)")
    a("--dim-text", type=positive_int, default=768, help="width of the caption stream (any value)")
    a("--patch-size", type=positive_int, default=16)
    a("--image-size", type=positive_int, default=256)
    a("--mmdit-depth", type=positive_int, default=12)
    a("--num-residual-streams", type=positive_int, default=4)
    a("--dropout", type=fraction, default=0.1, help="dropout of the embeddings and feed-forward layers")
    a("--max-length", type=at_least(2), default=d["max_length"], help="caption tokens at most")
    a("--noise-schedule", default=d["noise_schedule"], choices=["cosine", "linear", "sigmoid"],
      help="how masking levels are drawn (each with its own ELBO weight: the loss stays MDLM's bound)")
    a("--image-loss-weight", type=nonneg_float, default=1.0)
    g = p.add_argument_group("added here")
    g.add_argument("--tokenizer", default="bert-base-uncased", help="caption tokenizer (hub name or local dir)")
    g.add_argument("--mode", default="mixed", choices=["t2i", "i2t", "joint", "mixed"],
                   help="what is diffused: mixed trains both directions (docs/image_mmdit.md)")
    g.add_argument("--heads", type=positive_int, default=8)
    g.add_argument("--dim-head", type=positive_int, default=64)
    g.add_argument("--num-workers", type=nonneg_int, default=4, help="data loader processes")
    g.add_argument("--dtype", default="auto", choices=["auto", "bf16", "fp32"], help="auto: bf16 on CUDA, else fp32")
    g.add_argument("--resume", default=None, help="auto (continue the run in --output-dir) or a checkpoint path")
    g.add_argument("--allow-paths-outside-root", action="store_true",
                   help="accept image paths outside --data-root (the original's files hold absolute paths)")
    if variant == "discrete":
        g.add_argument("--codebook", default=None, help="codebook .npz (default: OUT/codebook.npz, built on first use)")
        g.add_argument("--codebook-size", type=at_least(2), default=512, help="k-means codes K")
    return p


def _count_records(path: Path, allow_outside: bool) -> int:
    """Good records of the training file (bad ones are the loop's to report, or skip)."""
    from latentIMG_mmdit.data import read_records

    return len(read_records(str(path), allow_outside=allow_outside, skip=True))


def overrides_from(variant: str, a: argparse.Namespace, extra: list[str]) -> list[str]:
    """The Hydra overrides of ``--config-name image_{variant}`` the flags stand for."""
    import torch

    root, out = Path(a.data_root), Path(a.output_dir).resolve()
    train, val = root / f"{a.split}_data.json", root / "validation_data.json"
    world = int(os.environ.get("WORLD_SIZE", "1"))
    n = _count_records(train, a.allow_paths_outside_root)
    n = min(n, a.max_samples) if a.max_samples else n
    steps = a.epochs * max(1, n // (a.batch_size * world))
    cuda = a.device == "cuda" or (a.device == "auto" and torch.cuda.is_available())
    dtype = a.dtype if a.dtype != "auto" else ("bf16" if cuda else "fp32")
    o = [f"data.data_files.train={train}", f"data.tokenizer_name={a.tokenizer}", f"data.max_seq_len={a.max_length}",
         f"data.num_workers={a.num_workers}", f"training.train_batch_size={a.batch_size}",
         f"training.eval_batch_size={a.batch_size}", f"training.num_train_steps={steps}", f"training.seed={a.seed}",
         f"training.device={a.device}", f"training.dtype={dtype}",
         f"training.warmup_steps={min(1000, steps // 10)}",  # the original's warmup
         f"optimizer.lr={a.lr}", f"optimizer.weight_decay={a.weight_decay}",
         f"logging.save_dir={out.parent}", f"logging.run_name={out.name}", f"logging.log_freq={a.log_every}",
         f"logging.save_freq={a.save_every}", f"model.image_size={a.image_size}", f"model.patch_size={a.patch_size}",
         f"model.dim_text={a.dim_text}", f"model.dim_image={a.dim_image}", f"model.dim_cond={a.dim_cond}",
         f"model.depth={a.mmdit_depth}", f"model.heads={a.heads}", f"model.dim_head={a.dim_head}",
         f"model.num_residual_streams={a.num_residual_streams}", f"model.max_seq_len={a.max_length}",
         f"model.dropout={a.dropout}", f"loss.mode={a.mode}", f"loss.mask_schedule={a.noise_schedule}",
         f"loss.image_weight={a.image_loss_weight}"]
    if a.max_samples:
        o.append(f"data.max_samples={a.max_samples}")
    if a.allow_paths_outside_root:
        o.append("data.allow_paths_outside_root=true")
    if val.is_file():
        o += [f"data.data_files.validation={val}", f"logging.eval_freq={a.val_every}",
              f"data.max_val_samples={min(1000, a.max_samples or 1000)}"]
    else:
        o.append("logging.eval_freq=0")
    if a.resume:
        o.append(f"training.resume={a.resume}")
    if variant == "discrete":
        o += [f"model.codebook={codebook_for(a, train, out)}", f"model.codebook_size={a.codebook_size}"]
    return o + extra


def codebook_for(a: argparse.Namespace, train: Path, out: Path) -> Path:
    """``--codebook``, or ``OUT/codebook.npz`` built from the training images on first use (once,
    under a lock, when several ranks start together)."""
    if a.codebook:
        return Path(a.codebook).resolve()
    from filelock import FileLock

    from latentIMG_mmdit.build_codebook import build_from_records

    path = out / "codebook.npz"
    out.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        if not path.is_file():
            print(f"building the codebook ({a.codebook_size} codes of {a.patch_size}x{a.patch_size} patches) from "
                  f"{train} into {path} (once)", file=sys.stderr)
            build_from_records(train, path, a.image_size, a.patch_size, a.codebook_size, a.seed,
                               allow_outside=a.allow_paths_outside_root)
    return path


def main(variant: str, argv: list[str] | None = None) -> dict:
    from latentIMG_mmdit.codebook import CodebookError
    from mmldlm.config import ConfigError, compose
    from mmldlm.data.records import DataError
    from mmldlm.train import train

    argv = sys.argv[1:] if argv is None else argv
    extra = [x for x in argv if "=" in x and not x.startswith("-")]
    a = parser(variant).parse_args([x for x in argv if x not in extra])
    try:
        cfg = compose(f"image_{variant}", overrides_from(variant, a, extra))
    except (ConfigError, DataError, CodebookError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    return train(cfg)
