"""GIDD self-correction of samples (the users' command, the original's keys):

    python baseline/eval/self_correction.py path=RUN_OR_CKPT samples_path=samples.pt \\
        [corrected_samples_path=corrected.pt] [temp=0.1] [t0=0.01] [max_patience=32] [tokens_per_step=1] \\
        [num_denoising_steps=128] [batch_size=16] [metrics_path=self_correction.json]

Only for GIDD checkpoints trained with uniform noise (model.p_uniform > 0): a mask-only model
cannot tell a wrong token from a right one, and other families are refused. At the noise level
t0 each step proposes tokens at temperature temp and replaces the tokens_per_step changed
positions the model is most confident of, until nothing changes or the agreement with the model's
argmax stops improving for max_patience steps. Writes the corrected samples (same format as
generate_samples.py, header extended) and one JSON object of per-sample and mean metrics.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from mmldlm.eval.cli import CheckpointKeys

NEEDS = ("a GIDD model trained with uniform noise (model.p_uniform > 0), which learned to tell wrong tokens from "
         "right ones")


@dataclass
class CorrectionArgs(CheckpointKeys):
    path: str = field(metadata={"help": "a GIDD run directory or checkpoint (p_uniform > 0)"})
    samples_path: str = field(metadata={"help": "samples written by generate_samples.py"})
    corrected_samples_path: Optional[str] = field(default=None, metadata={"help": "default: <samples>_corrected.pt"})
    temp: float = field(default=0.1, metadata={"above": 0.0, "help": "proposal temperature"})
    t0: float = field(default=0.01, metadata={"above": 0.0, "max": 1.0, "help": "the fixed noise level"})
    max_patience: int = field(default=32, metadata={"min": 1, "help": "steps without improvement before stopping"})
    tokens_per_step: int = field(default=1, metadata={"min": 1, "help": "tokens replaced per step"})
    num_denoising_steps: int = field(default=128, metadata={"min": 1, "help": "the most correction steps"})
    batch_size: int = field(default=16, metadata={"min": 1, "help": "samples per batch"})
    seed: int = field(default=0, metadata={"help": "seed of the proposals"})
    metrics_path: Optional[str] = field(default=None, metadata={"help": "default: <samples>_correction.json"})


def main(argv: list[str] | None = None) -> dict:
    import json

    import torch

    from mmldlm.eval.cli import parse_keys, resolve_device
    from mmldlm.eval.samplers import gidd_self_correct
    from mmldlm.io import load_tensors, write_atomic, write_json_atomic

    args = parse_keys(CorrectionArgs, argv, __doc__)
    device = resolve_device(args.device)
    objective, tok, cfg = args.rebuild(args.path, device, "python baseline/eval/self_correction.py", needs="forward",
                                       what=f"it needs {NEEDS}")
    if cfg.objective != "gidd" or not cfg.model.p_uniform > 0:
        what = f"a {cfg.objective} checkpoint" if cfg.objective != "gidd" else "a mask-only GIDD (p_uniform=0)"
        raise SystemExit(f"error: {args.path} is {what}; self-correction needs {NEEDS}")
    samples = load_tensors(args.samples_path, "samples_path")
    if not isinstance(samples, dict) or not isinstance(samples.get("ids"), torch.Tensor):
        raise ValueError(f"samples_path {args.samples_path}: not a samples file (a dict with 'ids' [N, L], as "
                         "generate_samples.py writes)")
    ids_all = samples["ids"].long()
    if ((ids_all < 0) | (ids_all >= objective.vocab)).any():
        raise SystemExit(f"error: {args.samples_path} holds ids outside this model's vocabulary ({objective.vocab})")
    gen = torch.Generator(device=device).manual_seed(args.seed)
    out, rows = [], []
    for start in range(0, len(ids_all), args.batch_size):
        ids = ids_all[start: start + args.batch_size].to(device)

        def denoise(x, t):
            return objective.model(x, None, t)[..., : objective.vocab]

        c = gidd_self_correct(denoise, ids, args.t0, steps=args.num_denoising_steps, temperature=args.temp,
                              tokens_per_step=args.tokens_per_step, max_patience=args.max_patience,
                              excluded=objective.process.blocked_ids.tolist(), mask_id=objective.process.mask_id,
                              generator=gen)
        out.append(c.ids.cpu())
        rows += [{"init_acc": a, "final_acc": f, "num_changes": n, "converged": cv, "early_stopped": es,
                  "improvement": f - a} for a, f, n, cv, es in zip(c.init_acc.tolist(), c.final_acc.tolist(),
                                                                   c.changes.tolist(), c.converged.tolist(),
                                                                   c.early_stopped.tolist())]
    ids = torch.cat(out)
    stem = Path(args.samples_path).with_suffix("")
    target = Path(args.corrected_samples_path or f"{stem}_corrected.pt")
    settings = {k: getattr(args, k) for k in ("temp", "t0", "max_patience", "tokens_per_step", "num_denoising_steps",
                                              "seed")}
    header = {**samples.get("header", {}), "self_correction": json.dumps(settings), "corrected_by": str(args.path)}
    text = tok.batch_decode(ids.tolist(), skip_special_tokens=False)
    write_atomic(target, lambda f: torch.save({"ids": ids, "text": text, "header": header}, f))
    mean = {k: sum(float(r[k]) for r in rows) / len(rows) for k in rows[0]} if rows else {}
    result = {"samples_path": str(args.samples_path), "corrected_samples_path": str(target), "n_samples": len(rows),
              "mean": mean, "per_sample": rows}
    write_json_atomic(Path(args.metrics_path or f"{stem}_correction.json"), result, indent=2)
    print(json.dumps({k: v for k, v in result.items() if k != "per_sample"}))
    return result


if __name__ == "__main__":
    from mmldlm.eval.cli import run_cli

    run_cli(main)
