"""Evaluate a text model of any family with lm-evaluation-harness (the users' command):

    python -m mmldlm.eval.harness --checkpoint RUN_OR_EXPORT --tasks lambada_openai,piqa \\
        [--include-path DIR] [--num-fewshot N] [--limit N] [--batch-size N] --out FILE.json

(lm-eval's own spellings, ``--include_path``, ``--num_fewshot``, ``--batch_size``, ``--output_path``,
are accepted as the same flags.)

FILE.json holds the harness's ``results`` dict as it returns it (with its ``versions``, ``n-shot``,
``higher_is_better`` and ``n-samples``), the model's identity and the protocol: whether each
log-likelihood is exact (AR, the WeDLM fine-tune's causal path) or a bound (diffusion models: the
loss CLI's t-grid and keyed masks; the same number on every run), the rolling windows, the sampler.
Login node, once, before offline runs (then HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1):

    python -m mmldlm.eval.harness --download-only --tasks lambada_openai,wikitext,piqa,hellaswag,arc_easy

Local tasks (``dataset_path: json`` + ``data_files``, in --include-path) need no network. docs/eval.md.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from mmldlm.argtypes import at_least, nonneg_int, positive_float, positive_int
from mmldlm.flags import Parser, add_renamed

RESULT_KEYS = ("results", "groups", "versions", "n-shot", "higher_is_better", "n-samples")


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = Parser(prog="python -m mmldlm.eval.harness", description=__doc__,
                formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", help="a run directory (its latest checkpoint), a checkpoint_step_N path or an "
                                         "export")
    ap.add_argument("--tasks", required=True, help="comma-separated lm-eval task (or group) names")
    ap.add_argument("--include-path", default=None, help="a directory of more task YAMLs (e.g. local json tasks)")
    ap.add_argument("--num-fewshot", type=nonneg_int, default=None, help="few-shot examples per prompt (task default)")
    ap.add_argument("--limit", type=positive_float, default=None,
                    help="documents per task (< 1: a fraction); for tests")
    ap.add_argument("--batch-size", type=positive_int, default=16, help="requests per forward batch")
    add_renamed(ap, "--out", "--output-path", help="the JSON written (results, model identity, protocol)")
    ap.add_argument("--num-t", type=positive_int, default=16, help="diffusion models: t-grid points of the bound")
    ap.add_argument("--steps", type=positive_int, default=None,
                    help="diffusion models' generate_until: sampler steps (default one per generated token)")
    ap.add_argument("--max-length", type=at_least(2), default=None,
                    help="tokens per row (default data.max_seq_len)")
    ap.add_argument("--rolling-context", type=positive_int, default=1,
                    help="rolling perplexity: context tokens at least before each window (1: disjoint windows)")
    ap.add_argument("--seed", type=nonneg_int, default=0, help="generate_until draws and the harness's own seeds")
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda")
    ap.add_argument("--no-ema", dest="ema", action="store_false", help="the raw weights even if the run kept EMA")
    ap.add_argument("--backbone-dir", default=None,
                    help="WeDLM fine-tunes: the local directory of the backbone the run trained on")
    ap.add_argument("--trust-remote-code", action="store_true",
                    help="let the backbone directory's own Python code run (only if you trust it)")
    ap.add_argument("--download-only", action="store_true",
                    help="build the tasks (downloading their datasets into the datasets cache) and stop")
    args = ap.parse_args(argv)
    if not args.download_only and not (args.checkpoint and args.out):
        ap.error("--checkpoint and --out are required (unless --download-only)")
    return args


def tasks_of(spec: str, manager) -> list[str]:
    """The task names of ``spec``; an unknown one is an error naming it (and a close known name)."""
    import difflib

    names = [t.strip() for t in spec.split(",") if t.strip()]
    for name in names:
        if not Path(name).is_file() and not manager.match_tasks([name]):
            close = difflib.get_close_matches(name, manager.all_tasks, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise ValueError(f"--tasks: no task {name!r}{hint}; local tasks need --include-path DIR")
    return names


def main(argv: list[str] | None = None) -> dict | None:
    import logging

    try:
        import lm_eval
    except ImportError:
        raise SystemExit("error: lm-evaluation-harness is not installed: pip install 'mm-ldlm[eval]' (or "
                         "pip install 'lm-eval>=0.4.13,<0.5')") from None
    from lm_eval.tasks import TaskManager, get_task_dict

    from mmldlm.eval.harness_lm import MMLDLM
    from mmldlm.io import write_json_atomic

    args = parse(argv)
    logging.getLogger("lm_eval").setLevel(logging.WARNING)
    manager = TaskManager(include_path=args.include_path)
    tasks = tasks_of(args.tasks, manager)
    if args.download_only:
        built = get_task_dict(tasks, manager)
        print(f"built {len(built)} tasks; their datasets are in the datasets cache (HF_DATASETS_CACHE)")
        return None
    lm = MMLDLM(pretrained=args.checkpoint, device=args.device, batch_size=args.batch_size, num_t=args.num_t,
                steps=args.steps, seed=args.seed, max_length=args.max_length, rolling_context=args.rolling_context,
                ema=args.ema, backbone_dir=args.backbone_dir, trust_remote_code=args.trust_remote_code)
    limit = None if args.limit is None else (int(args.limit) if args.limit >= 1 else args.limit)
    out = lm_eval.simple_evaluate(model=lm, tasks=tasks, task_manager=manager, num_fewshot=args.num_fewshot,
                                  limit=limit, batch_size=args.batch_size, log_samples=False,
                                  random_seed=args.seed, numpy_random_seed=args.seed, torch_random_seed=args.seed,
                                  fewshot_random_seed=args.seed)
    payload = {**{k: out[k] for k in RESULT_KEYS if k in out}, "model": lm.identity(), "protocol": lm.protocol(),
               "tasks": tasks, "num_fewshot": args.num_fewshot, "limit": limit,
               "lm_eval_version": lm_eval.__version__}
    write_json_atomic(Path(args.out), json.loads(json.dumps(payload, default=str)), indent=2)
    print(json.dumps({"results": payload["results"], "loglikelihood": payload["protocol"]["loglikelihood"]},
                     default=str))
    print(f"wrote {args.out}")
    return payload


if __name__ == "__main__":
    from mmldlm.eval.cli import run_cli

    run_cli(main)
