"""Smoke test of the cycle-VAE objective: a random batch through the real MMDiT (tiny size by
default), every metric finite, every metric key present. No network, no data files.

    python cycle_vae_impl/entrypoints/smoke_cycle_vae_forward.py [--size tiny|base] [--batch-size 4]
"""
import argparse
import math
import sys

import torch

from cycle_vae_impl.harness import compose_cycle_config, offline_tokenizer_path
from latentDLM_mmdit.mmdit_objective import MMDiTObjective
from mmldlm.argtypes import at_least, positive_int
from mmldlm.data.tokenizer import load_tokenizer

KEYS = ("text_loss", "text_acc", "latent_loss", "base_l2t_text_loss", "base_t2l_latent_loss", "cycle_text_loss",
        "cycle_latent_loss", "cycle_text_weight", "cycle_latent_weight", "x0_pred_norm")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=["tiny", "base"], default="tiny")
    p.add_argument("--batch-size", type=positive_int, default=4)
    p.add_argument("--seq-len", type=at_least(2), default=32)
    args = p.parse_args()
    tok = load_tokenizer(offline_tokenizer_path())
    cfg = compose_cycle_config("mmdit_cycle_vae", [f"model={args.size}", "data.data_files.train=unused.json",
                                                   "loss.cycle_text_warmup_steps=0",
                                                   "loss.cycle_latent_warmup_steps=0"])
    torch.manual_seed(0)
    obj = MMDiTObjective(cfg, tok)
    B, L, D = args.batch_size, args.seq_len, cfg.model.latent_dim
    batch = {"input_ids": torch.randint(1000, len(tok), (B, L)), "attention_mask": torch.ones(B, L, dtype=torch.bool),
             "latent": torch.nn.functional.normalize(torch.randn(B, D), dim=-1)}
    batch["attention_mask"][0, L // 2:] = False
    loss, metrics = obj(batch, step=10_000)
    loss.backward()
    bad = [k for k in KEYS if k not in metrics or not math.isfinite(float(metrics[k]))]
    print(f"cycle_vae smoke ({args.size}, batch {B}x{L}, latent {D}): loss {loss.item():.4f}")
    for k in KEYS:
        print(f"  {k:22s} {float(metrics.get(k, float('nan'))):.4f}")
    if bad or not torch.isfinite(loss):
        print(f"FAILED: missing or non-finite: {bad}", file=sys.stderr)
        return 1
    print("OK: finite losses, all metric keys present, backward ran")
    return 0


if __name__ == "__main__":
    sys.exit(main())
