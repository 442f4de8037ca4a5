"""Validation NELBO of a baseline, MMDiT (L2T) or bridge checkpoint, the same number twice (the users' command):

    python baseline/eval/loss.py path=RUN_OR_CKPT batch_size=32 [num_t=16] [metrics_path=F.json]
    torchrun --nproc_per_node N baseline/eval/loss.py path=RUN ...   (sums all-reduced over ranks)

Every validation sequence is scored at num_t fixed noise levels with fixed masks (mmldlm.eval.likelihood);
AR models and the bridge's decoder (backbone_dir=DIR) report their exact NLL under the same names.
Prints and writes one JSON object: nelbo (nats/token), ppl = exp(nelbo), tokens, sequences, num_t,
latent_gain for latent models (the NELBO under another record's latent minus under its own).
The validation data is the run's own (data.data_files.validation or its held-out split) unless
data_files.validation=PATH names another file. EMA weights are used where the run kept them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from mmldlm.eval.cli import CheckpointKeys


@dataclass
class LossArgs(CheckpointKeys):
    path: str = field(metadata={"help": "a run directory (its latest checkpoint), a checkpoint_step_N path or an "
                                        "export (python -m mmldlm.export)"})
    batch_size: int = field(default=32, metadata={"min": 1, "help": "sequences per batch and rank"})
    num_t: int = field(default=16, metadata={"min": 1, "help": "noise levels of the t-grid"})
    metrics_path: Optional[str] = field(default=None, metadata={"help": "where the JSON goes (default: "
                                                                        "loss_step_N.json beside the checkpoint)"})
    data_files: dict = field(default_factory=dict, metadata={"help": "data_files.validation=PATH: another file"})


def main(argv: list[str] | None = None) -> dict:
    import json

    from mmldlm.data.loader import build_data
    from mmldlm.eval.cli import parse_keys
    from mmldlm.eval.likelihood import validation_nelbo
    from mmldlm.io import write_json_atomic
    from mmldlm.train import distributed as D
    from mmldlm.train.rebuild import open_saved

    args = parse_keys(LossArgs, argv, __doc__)
    dist = D.setup(args.device)
    try:
        saved = open_saved(args.path)  # a run, a checkpoint or an export
        ckpt = saved.path
        objective, tok, cfg = args.rebuild(saved, str(dist.device), "python baseline/eval/loss.py", needs="nelbo")
        if args.data_files.get("validation"):
            cfg.data.data_files.validation = str(Path(args.data_files["validation"]).resolve())
            cfg.data.val_split_ratio = 0.0
        cfg.training.eval_batch_size = args.batch_size
        data = build_data(cfg.data, cfg.training, tok, dist.rank, dist.world, need_val=True)
        if data.val is None:
            raise SystemExit(f"{ckpt}: the run has no validation set; pass data_files.validation=PATH")
        eps = cfg.model.get("t_eps", 1e-4)
        result = validation_nelbo(objective, data.val, dist.device, args.num_t, eps, data.skip_bad,
                                  progress=dist.is_main)
        step = saved.step
        out = {"checkpoint": str(ckpt), "step": step, "objective": cfg.objective, "ema": objective.ema_weights,
               **result}
        if dist.is_main:
            beside = Path.cwd() / f"loss_{ckpt.name}.json" if saved.export else ckpt.parent / f"loss_step_{step}.json"
            target = Path(args.metrics_path or beside)  # an export is never written into
            write_json_atomic(target, out, indent=2)
            print(json.dumps(out))
        return out
    finally:
        D.teardown()


if __name__ == "__main__":
    from mmldlm.eval.cli import run_cli

    run_cli(main)
