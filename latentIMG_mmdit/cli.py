"""The original's command-line flags, mapped onto the shared loop's config.

    python latentIMG_mmdit/train_image_continuous.py --data-root DIR --epochs 50 --batch-size 8 \\
        --dim-text 1024 --dim-image 512 --output-dir OUT
    python latentIMG_mmdit/train_image_discrete.py --data-root DIR --epochs 50 --batch-size 8 \\
        --dim-text 768 --dim-image 512 --output-dir OUT

Reads ``DIR/{--split}_data.json`` (and ``DIR/validation_data.json`` when present); the run lands in
``OUT`` (``training_log.jsonl``, ``eval_log.jsonl``, ``config.yaml``, ``checkpoint_step_N``), as the
Hydra form ``train_image.py --config-name image_continuous|image_discrete`` would put it. The flags
are the original's (``--split`` now chooses the training file; ``--dropout`` is now applied) plus
a few of ours, and they are one config system with the Hydra form: a flag given sets its keys, a
flag not given keeps the config's value (so the two commands train the same model unless a flag
says otherwise); ``--epochs`` becomes ``training.num_train_epochs``, whose steps the loop counts
from the record index. Trailing ``key=value`` arguments are Hydra overrides of anything else. The
discrete command builds its codebook into ``OUT/codebook.npz`` on first use unless ``--codebook``
names one.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mmldlm.argtypes import at_least, fraction, nonneg_float, nonneg_int, positive_float, positive_int
from mmldlm.flags import Parser, add_renamed

# each flag's keys: a flag given sets them; a flag not given leaves the config's value (one source
# of truth for every default: the schema and --config-name image_continuous|image_discrete)
FLAG_KEYS = {
    "epochs": ("training.num_train_epochs",), "batch_size": ("training.train_batch_size", "training.eval_batch_size"),
    "lr": ("optimizer.lr",), "weight_decay": ("optimizer.weight_decay",), "max_samples": ("data.max_samples",),
    "device": ("training.device",), "log_every": ("logging.log_freq",), "save_every": ("logging.save_freq",),
    "val_every": ("logging.eval_freq",), "seed": ("training.seed",), "dim_cond": ("model.dim_cond",),
    "dim_image": ("model.dim_image",), "dim_text": ("model.dim_text",), "patch_size": ("model.patch_size",),
    "image_size": ("model.image_size",), "mmdit_depth": ("model.depth",),
    "num_residual_streams": ("model.num_residual_streams",), "dropout": ("model.dropout",),
    "max_length": ("model.max_seq_len",), "noise_schedule": ("loss.mask_schedule",),
    "image_loss_weight": ("loss.image_weight",), "tokenizer": ("data.tokenizer_name",), "mode": ("loss.mode",),
    "heads": ("model.heads",), "dim_head": ("model.dim_head",), "num_workers": ("data.num_workers",),
    "dtype": ("training.dtype",), "resume": ("training.resume",), "codebook_size": ("model.codebook_size",),
    "codebook": ("model.codebook",),
}


def parser(variant: str) -> Parser:
    """The original's flags; every default is the config's (a flag not given sets nothing)."""
    p = Parser(  # the underscore spellings (--output_dir, --batch_size) are the same flags
        prog=f"python latentIMG_mmdit/train_image_{variant}.py", formatter_class=argparse.RawDescriptionHelpFormatter,
        description=f"Train the {variant} image<->caption MMDiT on {{data-root}}/{{split}}_data.json records "
                    "({image_path, caption, image_id}) on the shared loop. A flag not given keeps the value of "
                    f"--config-name image_{variant} (python latentIMG_mmdit/train_image.py --config-name "
                    f"image_{variant} --cfg job prints them). docs/image_mmdit.md has the details.",
        epilog="Trailing key=value arguments are Hydra overrides (e.g. loss.caption_drop=0.2 sample.guidance=2).")
    a = p.add_argument
    a("--data-root", required=True, help="directory holding {split}_data.json (and validation_data.json)")
    a("--split", default="train", help="the training file's prefix: {data-root}/{split}_data.json")
    a("--output-dir", help="the run directory: logs, config, checkpoints (logging.save_dir/logging.run_name)")
    a("--epochs", type=positive_int,
      help="passes over the training records (training.num_train_epochs: the loop counts the steps); default: "
           "the config's training.num_train_steps")
    a("--batch-size", type=positive_int, help="records per step and rank")
    a("--lr", type=positive_float)
    a("--weight-decay", type=nonneg_float)
    a("--max-samples", type=positive_int, help="use the first N training records (validation: min(1000, N))")
    a("--device", choices=["auto", "cuda", "cpu"])
    a("--log-every", type=positive_int, help="steps between training_log.jsonl lines")
    a("--save-every", type=nonneg_int, help="steps between checkpoints")
    a("--val-every", type=nonneg_int, help="steps between evaluations (when validation_data.json exists)")
    a("--seed", type=nonneg_int)
    a("--dim-cond", type=positive_int, help="width of the time conditioning")
    a("--dim-image", type=positive_int, help="width of the image stream (any value)")
    a("--dim-text", type=positive_int, help="width of the caption stream (any value)")
    a("--patch-size", type=positive_int)
    a("--image-size", type=positive_int)
    a("--mmdit-depth", type=positive_int)
    a("--num-residual-streams", type=positive_int)
    a("--dropout", type=fraction, help="dropout of the embeddings and feed-forward layers")
    a("--max-length", type=at_least(2), help="caption tokens at most")
    a("--noise-schedule", choices=["cosine", "linear", "sigmoid"],
      help="how masking levels are drawn (each with its own ELBO weight: the loss stays MDLM's bound)")
    a("--image-loss-weight", type=nonneg_float)
    g = p.add_argument_group("added here")
    g.add_argument("--tokenizer", help="caption tokenizer (hub name or local dir)")
    g.add_argument("--mode", choices=["t2i", "i2t", "joint", "mixed"],
                   help="what is diffused: mixed trains both directions (docs/image_mmdit.md)")
    g.add_argument("--heads", type=positive_int)
    g.add_argument("--dim-head", type=positive_int)
    g.add_argument("--num-workers", type=nonneg_int, help="data loader processes")
    g.add_argument("--dtype", choices=["bf16", "fp32"])
    g.add_argument("--resume", help="auto (continue the run in --output-dir) or a checkpoint path")
    g.add_argument("--allow-paths-outside-root", action="store_true",
                   help="accept image paths outside --data-root (the original's files hold absolute paths)")
    if variant == "discrete":
        g.add_argument("--codebook", default=None, help="codebook .npz (default: OUT/codebook.npz, built on first use)")
        add_renamed(g, "--codebook-size", "--codes", type=at_least(2), help="k-means codes K")
    return p


def overrides_from(variant: str, a: argparse.Namespace, extra: list[str]) -> list[str]:
    """The Hydra overrides of ``--config-name image_{variant}`` the flags given stand for."""
    root = Path(a.data_root)
    train, val = root / f"{a.split}_data.json", root / "validation_data.json"
    o = [f"data.data_files.train={train}"]
    for dest, keys in FLAG_KEYS.items():
        value = getattr(a, dest, None)
        if value is not None:
            o += [f"{key}={value}" for key in keys]
    if a.output_dir:
        out = Path(a.output_dir).resolve()
        o += [f"logging.save_dir={out.parent}", f"logging.run_name={out.name}"]
    if a.allow_paths_outside_root:
        o.append("data.allow_paths_outside_root=true")
    if val.is_file():
        o += [f"data.data_files.validation={val}", f"data.max_val_samples={min(1000, a.max_samples or 1000)}"]
    else:
        o.append("logging.eval_freq=0")
    return o + extra


def codebook_for(cfg, allow_outside: bool) -> Path:
    """``RUN_DIR/codebook.npz``, built from the training images of ``cfg`` on first use (once,
    under a lock, when several ranks start together)."""
    from filelock import FileLock

    from latentIMG_mmdit.build_codebook import build_from_records

    m, train, out = cfg.model, Path(cfg.data.data_files.train), Path(cfg.logging.save_dir) / cfg.logging.run_name
    path = out / "codebook.npz"
    out.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        if not path.is_file():
            print(f"building the codebook ({m.codebook_size} codes of {m.patch_size}x{m.patch_size} patches) from "
                  f"{train} into {path} (once)", file=sys.stderr)
            build_from_records(train, path, m.image_size, m.patch_size, m.codebook_size, cfg.training.seed,
                               allow_outside=allow_outside)
    return path


def main(variant: str, argv: list[str] | None = None) -> dict:
    from latentIMG_mmdit.codebook import CodebookError
    from mmldlm.config import ConfigError, compose
    from mmldlm.data.records import DataError
    from mmldlm.data.tokenizer import load_tokenizer
    from mmldlm.train import train

    argv = sys.argv[1:] if argv is None else argv
    extra = [x for x in argv if "=" in x and not x.startswith("-")]
    a = parser(variant).parse_args([x for x in argv if x not in extra])
    try:
        if a.tokenizer:
            load_tokenizer(a.tokenizer, key="--tokenizer")  # its errors name the flag typed, not data.tokenizer_name
        overrides = overrides_from(variant, a, extra)
        cfg = compose(f"image_{variant}", overrides)
        if variant == "discrete" and not cfg.model.codebook:  # built into the run directory the config names
            book = codebook_for(cfg, a.allow_paths_outside_root)
            cfg = compose(f"image_{variant}", [*overrides, f"model.codebook={book}"])
    except (ConfigError, DataError, CodebookError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    return train(cfg)
