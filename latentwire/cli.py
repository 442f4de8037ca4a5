"""The users' training flags (the original ``train.py``'s, hyphenated; the underscore spellings
still work), mapped onto ``--config-name latentwire``; then the shared loop.

One config system: a flag given sets its config key, a flag not given keeps the config's value
(``latentwire/schema.py``, ``latentwire/configs/latentwire.yaml``: every default lives there), so
this command and ``python -m mmldlm.train --config-name latentwire`` train the same model unless a
flag says otherwise. Trailing ``key=value`` arguments set any other config key (e.g.
``model.encoder_layers=2``).

What differs from the original, on purpose: ``--output-dir`` (``--output_dir``, the seed README's
spelling, and ``--save_dir``, the original's) is the run directory; ``--batch-size`` is the global
batch (split over torchrun ranks); ``--epochs`` is ``training.num_train_epochs``, whose steps the
loop counts from the record index (without it: ``training.num_train_steps``); the QA file is read
once, by the loop's rank 0, into ``RUN_DIR/data/train.jsonl``; ``--sequential-models`` means one
LLM's activations at a time (activation checkpointing per model, same gradients); the
answer-length metadata is opt-in (``--adapter-metadata``). On a machine without CUDA the LLMs load
in float32 and the loop runs fp32 unless ``--llm-dtype`` / ``training.dtype=`` say otherwise.
Flags the original had and this trainer does not implement (``--load_4bit``, ``--use_lora``, ...)
are refused, never ignored.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

from latentwire.data import DATASETS, check_qa_source, load_qa, write_records
from latentwire.schema import DEFAULT_LLMS, ENCODERS
from mmldlm.argtypes import (
    all_or_at_least_one,
    fraction,
    nonneg_float,
    nonneg_int,
    positive_float,
    positive_int,
    probability,
)
from mmldlm.config import ConfigError, compose
from mmldlm.flags import Parser, add_renamed
from mmldlm.nn import DTYPES

# each flag's key: a flag given sets it; a flag not given leaves the config's value
FLAG_KEYS = {
    "sequential_models": "model.sequential_models", "trust_remote_code": "model.trust_remote_code",
    "encoder_type": "model.encoder_type", "latent_len": "model.latent_len",
    "latent_shared_len": "model.latent_shared_len", "latent_private_len": "model.latent_private_len",
    "d_z": "model.d_z", "max_bytes": "model.max_bytes", "adapter_hidden_mult": "model.adapter_hidden_mult",
    "adapter_dropout": "model.adapter_dropout", "adapter_colorize": "model.adapter_colorize",
    "adapter_metadata": "model.adapter_metadata", "max_answer_tokens": "model.max_answer_tokens",
    "warm_anchor_text": "model.anchor_text", "warm_anchor_mode": "model.anchor_mode",
    "max_anchor_tokens": "model.max_anchor_tokens", "use_chat_template": "model.use_chat_template",
    "train_append_bos_after_prefix": "model.bos_after_prefix",
    "first_token_ce_weight": "loss.first_token_ce_weight", "first_token_ce_schedule": "loss.first_token_ce_schedule",
    "first_token_ce_peak": "loss.first_token_ce_peak", "first_token_ce_warmup_frac": "loss.first_token_ce_warmup_frac",
    "first_token_autoscale": "loss.first_token_autoscale", "K": "loss.K", "k_ce_weight": "loss.k_ce_weight",
    "kd_first_k_weight": "loss.kd_first_k_weight", "kd_tau": "loss.kd_tau", "state_kd_weight": "loss.state_kd_weight",
    "state_kd_layers": "loss.state_kd_layers", "scale_l2": "loss.scale_l2",
    "epochs": "training.num_train_epochs", "grad_accum_steps": "training.gradient_accumulation_steps",
    "seed": "training.seed", "lr": "optimizer.lr", "max_grad_norm": "optimizer.grad_clip_norm",
    "save_every": "logging.save_freq",
}
RECORDS = "data/train.jsonl"  # the QA records, inside the run directory


def _yes(v: str) -> bool:
    if v.lower() not in ("yes", "no", "true", "false", "1", "0"):
        raise argparse.ArgumentTypeError(f"expected yes or no, got {v!r}")
    return v.lower() in ("yes", "true", "1")


def _layers(v: str) -> list[int]:
    try:
        return [int(x) for x in v.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {v!r}") from None


def train_parser() -> Parser:
    """Every flag defaults to unset (the config's value), but the QA source's, which no key holds."""
    ap = Parser(prog="python latentwire/train.py", description=__doc__,
                formatter_class=argparse.RawDescriptionHelpFormatter,
                epilog="python -m mmldlm.train --config-name latentwire --cfg job prints every default.")
    a = ap.add_argument_group("models (frozen; one adapter each; the loss is the mean over them)").add_argument
    a("--llama-id", help=f"local dir or cached hub id (model.llms; default {DEFAULT_LLMS['llama']})")
    a("--qwen-id", help=f"local dir or cached hub id (model.llms; default {DEFAULT_LLMS['qwen']})")
    a("--models", help="which of llama,qwen to train (default both; \"\" with --llm for others only)")
    a("--llm", action="append", metavar="NAME=PATH", help="another LLM (repeatable)")
    a("--llm-dtype", choices=("auto", *DTYPES),
      help="model.llm_dtype; auto: bfloat16 on CUDA, float32 on CPU (also the rule when not given)")
    a("--sequential-models", action="store_true", default=None,
      help="one LLM's activations alive at a time (activation checkpointing per model; same gradients)")
    a("--trust-remote-code", action="store_true", default=None, help="let the model directories' own code run")
    a("--allow-download", action="store_true", help="let models and tokenizers come from the hub")
    d = ap.add_argument_group("data (read by the loop into RUN_DIR/data/train.jsonl)").add_argument
    d("--dataset", default="hotpot", choices=DATASETS)
    d("--data-file", help="local SQuAD v1.1 / HotpotQA JSON (required unless synthetic)")
    d("--samples", type=all_or_at_least_one, default=5000, help="examples kept after a seeded shuffle (-1: all)")
    d("--data-seed", type=nonneg_int, default=0, help="seed of the subset")
    g = ap.add_argument_group("training")
    t = g.add_argument
    t("--epochs", type=positive_float, help="training.num_train_epochs (fractions allowed; the loop counts the steps)")
    t("--batch-size", type=positive_int, help="the global batch per micro-step (split over ranks)")
    t("--grad-accum-steps", type=positive_int)
    t("--lr", type=positive_float)
    t("--max-grad-norm", type=nonneg_float)
    t("--seed", type=nonneg_int)
    add_renamed(g, "--output-dir", "--save-dir", help="the run directory (logging.save_dir/logging.run_name)")
    t("--save-every", type=nonneg_int, help="checkpoint every N steps (0: at the end only)")
    t("--resume", help="auto | a checkpoint path (default: a fresh run)")
    t("--auto-resume", action="store_true", help="the same as --resume auto")
    t("--resume-from", help="the same as --resume PATH")
    e = ap.add_argument_group("encoder").add_argument
    e("--encoder-type", choices=ENCODERS)
    e("--latent-len", type=positive_int)
    e("--latent-shared-len", type=nonneg_int)
    e("--latent-private-len", type=nonneg_int)
    e("--d-z", type=positive_int)
    e("--max-bytes", type=positive_int, help="the source's bytes; the question is always kept")
    p = ap.add_argument_group("adapters and input").add_argument
    p("--adapter-hidden-mult", type=positive_int)
    p("--adapter-dropout", type=fraction)
    p("--adapter-colorize", action="store_true", default=None)
    p("--adapter-metadata", action="store_true", default=None,
      help="the original's default: the adapter reads the GOLD answer length (labelled in every report)")
    p("--no-adapter-metadata", dest="adapter_metadata", action="store_false", default=None,
      help="(the config's default)")
    p("--max-answer-tokens", type=positive_int)
    p("--warm-anchor-text", help='anchor after the prefix, e.g. "Answer: "')
    p("--warm-anchor-mode", choices=("auto", "text", "chat", "none"))
    p("--max-anchor-tokens", type=positive_int)
    p("--use-chat-template", action="store_true", default=None, help="anchor auto without text: the chat header")
    p("--train-append-bos-after-prefix", choices=("yes", "no", "auto"),
      help="BOS after the prefix (auto: only without an anchor); eval uses the same")
    lo = ap.add_argument_group("loss").add_argument
    lo("--first-token-ce-weight", type=nonneg_float)
    lo("--first-token-ce-schedule", choices=("none", "warmup", "cosine"))
    lo("--first-token-ce-peak", type=nonneg_float)
    lo("--first-token-ce-warmup-frac", type=probability)
    lo("--first-token-autoscale", type=_yes)
    lo("--K", type=positive_int)
    lo("--k-ce-weight", type=nonneg_float)
    lo("--kd-first-k-weight", type=nonneg_float)
    lo("--kd-tau", type=positive_float)
    lo("--state-kd-weight", type=nonneg_float)
    lo("--state-kd-layers", type=_layers, help="hidden_states indices, e.g. 0,1,2")
    lo("--scale-l2", type=nonneg_float)
    for action in ap._actions:  # each flag's help names the key it sets
        if action.dest in FLAG_KEYS:
            action.help = f"{action.help}: {FLAG_KEYS[action.dest]}" if action.help else FLAG_KEYS[action.dest]
    return ap


def _value(v) -> str:
    """``v`` as a Hydra override value: strings quoted (spaces, colons and quotes survive)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, list):
        return "[" + ",".join(_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ",".join(f"{k}:{_value(x)}" for k, x in v.items()) + "}"
    s = re.sub(r"(\\+)('|$)", lambda m: m.group(1) * 2 + m.group(2), str(v))  # a backslash before a quote
    return "'" + s.replace("'", "\\'") + "'"


def _abs(path: str) -> str:
    """A local path made absolute (the saved config is read from anywhere); hub ids unchanged."""
    return os.path.abspath(path) if Path(path).expanduser().exists() else path


def _llms(args) -> list[dict] | None:
    """``model.llms`` from the model flags; None when none was given (the config's LLMs)."""
    if args.llama_id is None and args.qwen_id is None and args.models is None and not args.llm:
        return None
    ids = {"llama": args.llama_id or DEFAULT_LLMS["llama"], "qwen": args.qwen_id or DEFAULT_LLMS["qwen"]}
    wanted = [n.strip() for n in ("llama,qwen" if args.models is None else args.models).split(",") if n.strip()]
    bad = [n for n in wanted if n not in ids]
    if bad:
        raise ConfigError(f"--models: {bad} (llama | qwen; other models: --llm NAME=PATH)")
    out = [{"name": n, "path": _abs(ids[n])} for n in wanted]
    for spec in args.llm or []:
        name, eq, path = spec.partition("=")
        if not eq:
            raise ConfigError(f"--llm: expected NAME=PATH, got {spec!r}")
        out.append({"name": name, "path": _abs(path)})
    return out


def overrides_from(args, extra: list[str], world: int = 1, cuda: bool = True, spelled=lambda f: f) -> list[str]:
    """The overrides of ``--config-name latentwire`` the flags given stand for (``spelled``: a
    flag as the user typed it, for the messages)."""
    bad = [o for o in extra if o.startswith("-") or "=" not in o]
    if bad:  # e.g. the original's --load_4bit / --use_lora, which this trainer does not implement
        raise ConfigError(f"unrecognised arguments: {' '.join(bad)} (flags: --help; other config keys: key=value)")
    o = [f"{key}={_value(getattr(args, dest))}" for dest, key in FLAG_KEYS.items() if getattr(args, dest) is not None]
    llms = _llms(args)
    if llms is not None:
        o.append(f"model.llms={_value(llms)}")
    if args.allow_download:
        o.append("model.local_files_only=false")
    if args.batch_size is not None:
        if args.batch_size % world:
            raise ConfigError(f"{spelled('--batch-size')} {args.batch_size} is not divisible by the {world} ranks")
        o.append(f"training.train_batch_size={args.batch_size // world}")
    resume = "auto" if args.auto_resume else (args.resume_from or args.resume)
    if resume is not None:
        o.append(f"training.resume={_value(resume)}")
    if args.output_dir is not None:
        out = Path(args.output_dir).expanduser().absolute()
        o += [f"logging.save_dir={_value(str(out.parent))}", f"logging.run_name={_value(out.name)}"]
    keys = {x.split("=", 1)[0].lstrip("+~") for x in extra}
    if args.llm_dtype not in (None, "auto"):
        o.append(f"model.llm_dtype={args.llm_dtype}")
    elif not cuda and "model.llm_dtype" not in keys:
        o.append("model.llm_dtype=float32")
    if not cuda and "training.dtype" not in keys:
        o.append("training.dtype=fp32")
    o.append(f"data.data_files.train='${{logging.save_dir}}/${{logging.run_name}}/{RECORDS}'")
    return o + extra


def train_config(args, extra: list[str], world: int = 1, cuda: bool | None = None, spelled=lambda f: f):
    """The validated config of a command line (nothing read but the config files)."""
    overrides = overrides_from(args, extra, world, _cuda() if cuda is None else cuda, spelled)
    check_qa_source(args.dataset, args.data_file, spelled)
    return compose("latentwire", overrides)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def train_main(argv: list[str] | None = None) -> dict:
    ap = train_parser()
    args, rest = ap.parse_known_args(sys.argv[1:] if argv is None else argv)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    try:
        cfg = train_config(args, rest, world, spelled=ap.spelled)
    except (ConfigError, ValueError) as e:
        print(f"config error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    from mmldlm.train import train

    def prepare(run_dir: Path) -> None:
        """Rank 0, once the loop holds the run directory's lock: the QA file into its records."""
        try:
            records = load_qa(args.dataset, args.data_file, args.samples, args.data_seed)
        except ValueError as e:  # a bad SQuAD / HotpotQA file: one line, every rank stops
            raise ConfigError(str(e)) from None
        write_records(records, cfg.data.data_files.train)

    result = train(cfg, prepare=prepare)
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
