"""The command line of ``latentwire/eval.py`` (its docstring has the usage)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from latentwire.data import DATASETS, check_qa_source, load_qa
from latentwire.evaluate import EvalOptions, evaluate_qa
from latentwire.metrics import GROUP
from mmldlm.argtypes import all_or_at_least_one, nonneg_int, positive_float, positive_int
from mmldlm.flags import Parser


def eval_parser() -> Parser:
    """Hyphenated flags; the underscore spellings (``--data_file``) are the same flags."""
    ap = Parser(prog="python latentwire/eval.py", description=(
        "QA evaluation of a LatentWire run: per LLM, the text baseline, the latent path and the token-budget "
        "baseline (EM/F1 with SQuAD normalisation, max over references), first-token top-1/5, gold NLL; joint "
        "rescoring and oracle across LLMs; payload bytes and compression. Greedy decoding."))
    ap.add_argument("--ckpt", required=True, help="a run directory (its latest checkpoint) or a checkpoint file")
    ap.add_argument("--dataset", choices=DATASETS, required=True)
    ap.add_argument("--data-file", default=None, help="local SQuAD v1.1 / HotpotQA JSON (e.g. dev-v1.1.json)")
    ap.add_argument("--samples", type=all_or_at_least_one, default=-1, help="examples after a seeded shuffle (-1: all)")
    ap.add_argument("--seed", type=nonneg_int, default=0, help="seed of that shuffle (the training run's --data-seed "
                    "reproduces its training set)")
    ap.add_argument("--max-new-tokens", type=positive_int, default=12)
    ap.add_argument("--min-new-tokens", type=nonneg_int, default=1, help="stop ids are banned for this many steps")
    ap.add_argument("--chunk-size", type=positive_int, default=8)
    ap.add_argument("--token-budget-k", type=positive_int, default=None,
                    help="token budget (default: M, the latent length)")
    ap.add_argument("--calibration", choices=("embed_rms", "fixed", "train_stats", "none"), default=None,
                    help="prefix calibration (default: the run's)")
    ap.add_argument("--prefix-target-rms", type=positive_float, default=None,
                    help="calibration=fixed (default: the run's)")
    ap.add_argument("--prefix-gain", type=positive_float, default=None, help="default: the run's")
    ap.add_argument("--latent-quant-bits", type=int, choices=(16, 8, 6, 4), default=None,
                    help=f"decode from the latent sent with these bits (fp16, or ints with an fp16 scale per {GROUP})")
    ap.add_argument("--gold-length-cap", action="store_true",
                    help="the ORIGINAL's decode cap: the longest gold answer of each chunk (uses gold lengths; "
                         "labelled in the report)")
    ap.add_argument("--llm", action="append", default=[], metavar="NAME=DIR",
                    help="where an LLM of the run is on this machine (default: the path its training named)")
    ap.add_argument("--trust-remote-code", action="store_true",
                    help="let the code of the --llm directories named on this command line run")
    ap.add_argument("--allow-download", action="store_true")
    ap.add_argument("--allow-source-change", action="store_true",
                    help="accept an LLM whose fingerprint differs from the one the run trained with")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", default=None, help="default: RUN_DIR/eval/metrics.json")
    return ap


def _summary(m: dict) -> str:
    lines = [f"{m['samples']} examples; latent {m['latent_shape'][0]} x {m['latent_shape'][1]}"
             + ("; USES GOLD ANSWER LENGTH (adapter metadata)" if m["uses_gold_answer_length"] else "")
             + ("; decode cap from GOLD lengths (--gold-length-cap)" if m["gold_length_cap"] else ""),
             f"   chance: EM {m['chance']['em']:.3f} F1 {m['chance']['f1']:.3f} (the best answer per question type, "
             f"{m['chance']['types']} types: the question's first words, no context)"]
    for n, r in m["models"].items():
        lines.append(f"{n:>8}: text EM {r['text']['em']:.3f} F1 {r['text']['f1']:.3f} | latent EM "
                     f"{r['latent']['em']:.3f} F1 {r['latent']['f1']:.3f} (first-token top1 "
                     f"{r['latent']['first_token_top1']:.3f}) | token budget k={r['token_budget']['k']} F1 "
                     f"{r['token_budget']['f1']:.3f} | {r['token_compression']:.1f}x fewer positions")
        bc = r["byte_compression"]
        worse = [enc for enc, v in bc.items() if v < 1]
        lines.append(f"{'':>10}byte compression " + ", ".join(f"{enc} {v:.3f}" for enc, v in bc.items())
                     + (f" -- below 1 ({', '.join(worse)}): the latent is LARGER than the text" if worse else ""))
    if "joint" in m:
        lines.append(f"   joint: EM {m['joint']['em']:.3f} F1 {m['joint']['f1']:.3f} agreement "
                     f"{m['joint']['agreement']:.3f} | oracle F1 {m['oracle']['f1']:.3f}")
    return "\n".join(lines)


def eval_main(argv: list[str] | None = None) -> dict:
    from mmldlm.eval.cli import resolve_device, run_cli

    ap = eval_parser()
    args = ap.parse_args(sys.argv[1:] if argv is None else argv)
    result = {}

    def main():
        import torch

        from latentwire.collate import LatentWireCollator
        from latentwire.objective import policy_from_args
        from mmldlm.io import write_json_atomic, write_text_atomic
        from mmldlm.train.rebuild import open_saved, rebuild_from_checkpoint

        policy = policy_from_args(args)
        check_qa_source(args.dataset, args.data_file, ap.spelled)
        records = load_qa(args.dataset, args.data_file, args.samples, args.seed)
        saved = open_saved(args.ckpt)  # a run, a checkpoint or an export
        ckpt = saved.path
        obj, _, cfg = rebuild_from_checkpoint(ckpt, resolve_device(args.device), policy, expect="latentwire")
        if args.prefix_target_rms is not None:
            obj.target_fixed = args.prefix_target_rms
        opts = EvalOptions(args.max_new_tokens, args.min_new_tokens, args.chunk_size, args.token_budget_k,
                           args.calibration, args.prefix_gain, args.latent_quant_bits, args.gold_length_cap)
        batcher = LatentWireCollator(cfg.model, cfg.loss, obj.tokenizers, obj.infos, obj.st_tokenizer)
        with torch.inference_mode():
            metrics, examples = evaluate_qa(obj, obj.tokenizers, batcher, records, opts)
        metrics = {"checkpoint": str(ckpt), "dataset": args.dataset, "data_file": args.data_file,
                   "calibration": args.calibration or cfg.model.calibration.name,
                   "max_new_tokens": args.max_new_tokens, "latent_quant_bits": args.latent_quant_bits, **metrics}
        beside = Path.cwd() / f"eval_{ckpt.name}" if saved.export else ckpt.parent / "eval"  # never into an export
        out = Path(args.out) if args.out else beside / "metrics.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(out, metrics, indent=2)
        preds = out.with_name("predictions.jsonl" if out.name == "metrics.json" else f"{out.stem}.predictions.jsonl")
        write_text_atomic(preds, "".join(json.dumps(e) + "\n" for e in examples))
        print(_summary(metrics))
        print(f"wrote {out}")
        result.update(metrics)

    run_cli(main)
    return result
