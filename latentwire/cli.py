"""The users' training flags (the original ``train.py``'s spellings and defaults), mapped onto the
shared config; then the shared loop.

What differs from the original, on purpose: ``--output_dir`` (the seed README's spelling) and
``--save_dir`` (the original's) name the same run directory; ``--batch_size`` is the global batch
(split over torchrun ranks); epochs become steps (``epochs x samples // global batch``);
``--max_bytes`` defaults to 2048 (512 cut the question off); ``--sequential_models`` means one
LLM's activations at a time (activation checkpointing per model, same gradients); the answer-length
metadata is opt-in (``--adapter_metadata``). Flags the original had and this trainer does not
implement (``--load_4bit``, ``--use_lora``, ...) are rejected by argparse, never ignored.
Trailing ``key=value`` arguments set any other config key (e.g. ``model.encoder_layers=2``).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from omegaconf import OmegaConf

from latentwire.data import DATASETS, load_qa, write_records
from latentwire.schema import DEFAULT_LLMS, ENCODERS, LatentWireRunConfig
from mmldlm.argtypes import (
    all_or_at_least_one,
    fraction,
    nonneg_float,
    nonneg_int,
    positive_float,
    positive_int,
    probability,
)
from mmldlm.config import ConfigError, absolutize_paths, unknown_override, validate

RECIPE = Path(__file__).resolve().parent / "configs" / "latentwire.yaml"


def _yes(v: str) -> bool:
    if v.lower() not in ("yes", "no", "true", "false", "1", "0"):
        raise argparse.ArgumentTypeError(f"expected yes or no, got {v!r}")
    return v.lower() in ("yes", "true", "1")


def train_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python latentwire/train.py", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    a = ap.add_argument_group("models (frozen; one adapter each; the loss is the mean over them)")
    a.add_argument("--llama_id", default=DEFAULT_LLMS["llama"], help="local dir or cached hub id (model.llms)")
    a.add_argument("--qwen_id", default=DEFAULT_LLMS["qwen"], help="local dir or cached hub id (model.llms)")
    a.add_argument("--models", default="llama,qwen", help="which of llama,qwen to train (e.g. llama)")
    a.add_argument("--llm", action="append", default=[], metavar="NAME=PATH", help="another LLM (repeatable)")
    a.add_argument("--llm_dtype", default="auto", help="auto (bfloat16 on CUDA, float32 on CPU) | bfloat16 | float32")
    a.add_argument("--sequential_models", action="store_true",
                   help="one LLM's activations alive at a time (activation checkpointing per model; same gradients)")
    a.add_argument("--trust_remote_code", action="store_true", help="let the model directories' own code run")
    a.add_argument("--allow_download", action="store_true", help="let models and tokenizers come from the hub")
    d = ap.add_argument_group("data")
    d.add_argument("--dataset", default="hotpot", choices=DATASETS)
    d.add_argument("--data_file", default=None, help="local SQuAD v1.1 / HotpotQA JSON (required unless synthetic)")
    d.add_argument("--samples", type=all_or_at_least_one, default=5000,
                   help="examples kept after a seeded shuffle (-1: all)")
    d.add_argument("--data_seed", type=nonneg_int, default=0, help="seed of the subset")
    t = ap.add_argument_group("training")
    t.add_argument("--epochs", type=positive_float, default=8)
    t.add_argument("--batch_size", type=positive_int, default=1, help="global batch per micro-step (split over ranks)")
    t.add_argument("--grad_accum_steps", type=positive_int, default=1)
    t.add_argument("--lr", type=positive_float, default=1e-4)
    t.add_argument("--max_grad_norm", type=nonneg_float, default=1.0)
    t.add_argument("--seed", type=nonneg_int, default=42)
    t.add_argument("--output_dir", "--save_dir", dest="output_dir", default="./ckpt", help="the run directory")
    t.add_argument("--save_every", type=nonneg_int, default=0, help="checkpoint every N steps (0: at the end)")
    t.add_argument("--resume", default=None, help="auto | a checkpoint path (default: a fresh run)")
    t.add_argument("--auto_resume", action="store_true", help="the same as --resume auto")
    t.add_argument("--resume_from", default=None, help="the same as --resume PATH")
    e = ap.add_argument_group("encoder")
    e.add_argument("--encoder_type", default="byte", choices=ENCODERS)
    e.add_argument("--latent_len", type=positive_int, default=8)
    e.add_argument("--latent_shared_len", type=nonneg_int, default=None)
    e.add_argument("--latent_private_len", type=nonneg_int, default=0)
    e.add_argument("--d_z", type=positive_int, default=256)
    e.add_argument("--max_bytes", type=positive_int, default=2048,
                   help="the source's bytes; the question is always kept")
    p = ap.add_argument_group("adapters and input")
    p.add_argument("--adapter_hidden_mult", type=positive_int, default=2)
    p.add_argument("--adapter_dropout", type=fraction, default=0.0)
    p.add_argument("--adapter_colorize", action="store_true")
    p.add_argument("--adapter_metadata", action="store_true",
                   help="the original's default: the adapter reads the GOLD answer length (labelled in every report)")
    p.add_argument("--no_adapter_metadata", dest="adapter_metadata", action="store_false", help="(the default)")
    p.add_argument("--max_answer_tokens", type=positive_int, default=32)
    p.add_argument("--warm_anchor_text", default="", help='anchor after the prefix, e.g. "Answer: "')
    p.add_argument("--warm_anchor_mode", default="auto", choices=("auto", "text", "chat", "none"))
    p.add_argument("--max_anchor_tokens", type=positive_int, default=32)
    p.add_argument("--use_chat_template", action="store_true", help="anchor auto without text: the chat header")
    p.add_argument("--train_append_bos_after_prefix", default="no", choices=("yes", "no", "auto"),
                   help="BOS after the prefix (auto: only without an anchor); eval uses the same")
    lo = ap.add_argument_group("loss")
    lo.add_argument("--first_token_ce_weight", type=nonneg_float, default=0.5)
    lo.add_argument("--first_token_ce_schedule", default="none", choices=("none", "warmup", "cosine"))
    lo.add_argument("--first_token_ce_peak", type=nonneg_float, default=None)
    lo.add_argument("--first_token_ce_warmup_frac", type=probability, default=0.4)
    lo.add_argument("--first_token_autoscale", type=_yes, default=True)
    lo.add_argument("--K", type=positive_int, default=4)
    lo.add_argument("--k_ce_weight", type=nonneg_float, default=0.5)
    lo.add_argument("--kd_first_k_weight", type=nonneg_float, default=1.0)
    lo.add_argument("--kd_tau", type=positive_float, default=2.0)
    lo.add_argument("--state_kd_weight", type=nonneg_float, default=0.0)
    lo.add_argument("--state_kd_layers", default="0,1,2")
    lo.add_argument("--scale_l2", type=nonneg_float, default=0.05)
    return ap


def _llms(args) -> list[dict]:
    ids = {"llama": args.llama_id, "qwen": args.qwen_id}
    wanted = [n.strip() for n in args.models.split(",") if n.strip()]
    bad = [n for n in wanted if n not in ids]
    if bad:
        raise ConfigError(f"--models: {bad} (llama | qwen; other models: --llm NAME=PATH)")
    out = [{"name": n, "path": _abs(ids[n])} for n in wanted]
    for spec in args.llm:
        name, eq, path = spec.partition("=")
        if not eq:
            raise ConfigError(f"--llm: expected NAME=PATH, got {spec!r}")
        out.append({"name": name, "path": _abs(path)})
    return out


def _abs(path: str) -> str:
    """A local path made absolute (the saved config is read from anywhere); hub ids unchanged."""
    return os.path.abspath(path) if Path(path).expanduser().exists() else path


def train_config(args, overrides: list[str], world: int = 1):
    """(validated config, the QA records) of a command line."""
    bad = [o for o in overrides if o.startswith("-") or "=" not in o]
    if bad:  # e.g. the original's --load_4bit / --use_lora, which this trainer does not implement
        raise ConfigError(f"unrecognised arguments: {' '.join(bad)} (flags: --help; other config keys: key=value)")
    unknown = unknown_override(LatentWireRunConfig, overrides)
    if unknown:
        raise ConfigError(unknown)
    cuda = _cuda()
    if args.batch_size % world:
        raise ConfigError(f"--batch_size {args.batch_size} is not divisible by the {world} ranks")
    records = load_qa(args.dataset, args.data_file, args.samples, args.data_seed)
    global_batch = args.batch_size * args.grad_accum_steps
    per_epoch = len(records) // global_batch
    if per_epoch < 1:
        raise ConfigError(f"--samples: {len(records)} examples make no global batch of {global_batch}")
    out = Path(args.output_dir).expanduser().absolute()
    resume = "auto" if args.auto_resume else (args.resume_from or args.resume)
    values = {
        "model": {"llms": _llms(args), "sequential_models": args.sequential_models,
                  "llm_dtype": ("bfloat16" if cuda else "float32") if args.llm_dtype == "auto" else args.llm_dtype,
                  "trust_remote_code": args.trust_remote_code, "local_files_only": not args.allow_download,
                  "encoder_type": args.encoder_type, "latent_len": args.latent_len,
                  "latent_shared_len": args.latent_shared_len, "latent_private_len": args.latent_private_len,
                  "d_z": args.d_z, "max_bytes": args.max_bytes, "adapter_hidden_mult": args.adapter_hidden_mult,
                  "adapter_dropout": args.adapter_dropout, "adapter_colorize": args.adapter_colorize,
                  "adapter_metadata": args.adapter_metadata, "max_answer_tokens": args.max_answer_tokens,
                  "anchor_mode": args.warm_anchor_mode, "anchor_text": args.warm_anchor_text,
                  "max_anchor_tokens": args.max_anchor_tokens, "use_chat_template": args.use_chat_template,
                  "bos_after_prefix": args.train_append_bos_after_prefix},
        "loss": {"first_token_ce_weight": args.first_token_ce_weight,
                 "first_token_ce_schedule": args.first_token_ce_schedule,
                 "first_token_ce_peak": args.first_token_ce_peak,
                 "first_token_ce_warmup_frac": args.first_token_ce_warmup_frac,
                 "first_token_autoscale": args.first_token_autoscale, "K": args.K, "k_ce_weight": args.k_ce_weight,
                 "kd_first_k_weight": args.kd_first_k_weight, "kd_tau": args.kd_tau,
                 "state_kd_weight": args.state_kd_weight,
                 "state_kd_layers": [int(x) for x in args.state_kd_layers.split(",") if x.strip()],
                 "scale_l2": args.scale_l2},
        "training": {"seed": args.seed, "train_batch_size": args.batch_size // world,
                     "gradient_accumulation_steps": args.grad_accum_steps,
                     "num_train_steps": max(1, round(args.epochs * per_epoch)), "dtype": "bf16" if cuda else "fp32",
                     "resume": resume},
        "optimizer": {"lr": args.lr, "grad_clip_norm": args.max_grad_norm},
        "logging": {"save_dir": str(out.parent), "run_name": out.name, "save_freq": args.save_every},
        "data": {"data_files": {"train": str(out / "data" / "train.jsonl")}},
    }
    schema = LatentWireRunConfig
    body = {k: v for k, v in OmegaConf.to_container(OmegaConf.load(RECIPE)).items() if k not in ("defaults", "hydra")}
    cfg = OmegaConf.merge(OmegaConf.structured(schema), body, values, OmegaConf.from_dotlist(overrides))
    validate(cfg, schema)
    absolutize_paths(cfg, schema)
    return cfg, records


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def train_main(argv: list[str] | None = None) -> dict:
    args, rest = train_parser().parse_known_args(sys.argv[1:] if argv is None else argv)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    try:
        cfg, records = train_config(args, rest, world)
    except (ConfigError, ValueError) as e:
        print(f"config error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    from mmldlm.train import train

    # the records go into the run directory only once the loop holds its lock (rank 0 writes them)
    result = train(cfg, prepare=lambda run_dir: write_records(records, cfg.data.data_files.train))
    if int(os.environ.get("RANK", "0")) == 0:
        write_training_stats(Path(result["run_dir"]))
    return result


def write_training_stats(run_dir: Path) -> Path:
    """``RUN_DIR/training_stats.json``: per LLM, the embedding RMS the prefix is calibrated to and
    the running mean of the adapter's raw output RMS (eval's ``--calibration train_stats``), plus
    the input each LLM was trained on (anchor, BOS), from the latest checkpoint."""
    from mmldlm.io import write_json_atomic
    from mmldlm.train.checkpointing import load_checkpoint, resolve_checkpoint

    path = resolve_checkpoint(run_dir)
    meta = load_checkpoint(path).get("objective", {})
    out = run_dir / "training_stats.json"
    write_json_atomic(out, {"checkpoint": path.name, **meta}, indent=2)
    return out
