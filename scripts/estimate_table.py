"""The table of docs/estimates.md: every shipped config at its real size, through the estimator.

    python scripts/estimate_table.py [bridge] [finetune] [others] > /tmp/rows.md   (all: ~5 min on 2 cores)

Each row is ``python -m mmldlm.estimate --config-name NAME [--world-size N] OVERRIDES``; the
columns are its per-rank peak, the verdict for an 80 GB H100 and a 141 GB H200, and FLOPs.
"""
from __future__ import annotations

import logging
import warnings

from mmldlm.estimate.__main__ import estimate
from mmldlm.estimate.estimate import GIB, needed_bytes

BRIDGE = [(f"bridge 8B {task}, batch {b} x 1024{', act. ckpt' if ckpt == 'true' else ''}", "wedlm8b_ar_bridge", 1,
           [f"training.task={task}", f"training.train_batch_size={b}", f"model.activation_checkpointing={ckpt}"])
          for task in ("t2l", "l2t", "joint") for b in (2, 8) for ckpt in ("false", "true")]
SFT = "training.train_batch_size=1"  # one packed 2,048-token row per rank: Tencent's per-device batch
FINETUNE = [
    ("WeDLM-8B SFT full, FSDP x 8, wedlm objective, act. ckpt", "wedlm8b_sft", 8,
     [SFT, "finetune.method=full", "model.pretrained_model_dtype=float32", "training.parallelism=fsdp",
      "model.activation_checkpointing=true"]),
    ("WeDLM-8B SFT full, FSDP x 8, wedlm objective", "wedlm8b_sft", 8,
     [SFT, "finetune.method=full", "model.pretrained_model_dtype=float32", "training.parallelism=fsdp"]),
    ("WeDLM-8B SFT full, FSDP x 8, causal_lm (the guide)", "wedlm8b_sft", 8,
     [SFT, "finetune.method=full", "model.pretrained_model_dtype=float32", "training.parallelism=fsdp",
      "finetune.objective=causal_lm"]),
    ("WeDLM-8B SFT LoRA r16, wedlm objective", "wedlm8b_sft", 1, [SFT]),
    ("WeDLM-8B SFT LoRA r16, wedlm objective, act. ckpt", "wedlm8b_sft", 1,
     [SFT, "model.activation_checkpointing=true"]),
    ("WeDLM-8B SFT LoRA r16, causal_lm (the guide)", "wedlm8b_sft", 1, [SFT, "finetune.objective=causal_lm"]),
    ("WeDLM-8B SFT QLoRA nf4, wedlm objective", "wedlm8b_sft", 1,
     [SFT, "finetune.method=qlora", "optimizer.name=paged_adamw_8bit"]),
    ("WeDLM-8B SFT QLoRA nf4, wedlm objective, act. ckpt", "wedlm8b_sft", 1,
     [SFT, "finetune.method=qlora", "optimizer.name=paged_adamw_8bit", "model.activation_checkpointing=true"]),
    ("WeDLM-8B SFT QLoRA nf4, causal_lm (the guide)", "wedlm8b_sft", 1,
     [SFT, "finetune.method=qlora", "optimizer.name=paged_adamw_8bit", "finetune.objective=causal_lm"]),
]
OTHERS = [
    ("MMDiT base 1024 x 24, cycle-VAE cluster recipe (batch 4 x 512)", "mmdit_cycle_vae_cluster", 8, [],
     "cycle_vae_impl/configs"),
    ("MDLM small, OWT recipe (batch 64 x 512 per rank)", "mdlm", 8, ["model=small"], None),
    ("MDLM base, OWT recipe (batch 64 x 512 per rank)", "mdlm", 8, ["model=base"], None),
    ("MDLM base, OWT recipe, batch 16 x 512 per rank", "mdlm", 8, ["model=base", "training.train_batch_size=16"],
     None),
    *[(f"LatentWire 8B + 7B, the users' command (batch 64, M 32){', --sequential_models' if seq else ''}", "latentwire",
       1, ["training.train_batch_size=64", "model.latent_len=32", "model.anchor_text='Answer: '",
           "model.encoder_type=byte", f"model.sequential_models={str(seq).lower()}"], None) for seq in (True, False)],
    ("image MMDiT continuous, model=base (batch 32, 256 px)", "image_continuous", 8, [], None),
    ("image MMDiT discrete, model=base (batch 32, 256 px, 512 codes)", "image_discrete", 8, [], None),
]


def row(label: str, name: str, world: int, overrides: list[str], config_dir: str | None = None) -> str:
    e = estimate(name, overrides, world, config_dir=config_dir)
    need = needed_bytes(e.peak_bytes_per_rank) / GIB
    parts = "/".join(f"{getattr(e, k) / GIB:.1f}" for k in ("params_bytes", "grads_bytes", "optimizer_bytes",
                                                             "activations_bytes", "temporaries_bytes"))
    yes = lambda b: "yes" if b else "**no**"  # noqa: E731
    return (f"| {label} | {e.peak_bytes_per_rank / GIB:.1f} | {parts} | {need:.1f} | {yes(e.fits_80gb)} | "
            f"{yes(e.fits_141gb)} | {e.flops_per_step / 1e12:.1f} |")


def main() -> None:
    import sys

    groups = set(sys.argv[1:]) or {"bridge", "finetune", "others"}
    logging.disable(logging.WARNING)
    warnings.simplefilter("ignore")
    print("| config (per rank) | peak GiB | params/grads/optim/act/temp GiB | needs GiB | 80 GB H100 | "
          "141 GB H200 | TFLOP/step |")
    print("|---|---|---|---|---|---|---|")
    for group, rows in (("bridge", BRIDGE), ("finetune", FINETUNE)):
        for label, name, world, overrides in rows if group in groups else []:
            print(row(label, name, world, overrides), flush=True)
    for label, name, world, overrides, config_dir in OTHERS if "others" in groups else []:
        print(row(label, name, world, overrides, config_dir), flush=True)


if __name__ == "__main__":
    main()
