"""Latents -> text with a trained bridge (the l2t direction).

    python -m wedlm_bridge.decode --checkpoint RUN_DIR --backbone-dir BACKBONE_DIR --latents z.npy --output texts.txt \
        [--max-new-tokens 64] [--temperature 0 (greedy) | 0.8 --top-p 0.95] [--seed 0]

One line per latent row. The prefix the bridge computes from each latent is the prompt; the
backbone generates until EOS or --max-new-tokens.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from wedlm_bridge.bridge import (
    add_load_policy_args,
    default_device,
    load_bridge_for_cli,
)


@torch.no_grad()
def decode(obj, tok, latents: torch.Tensor, max_new_tokens: int = 64, temperature: float = 0.0,
           top_p: float = 1.0) -> list[str]:
    prefix = obj.prefix_embeds(latents)
    embeds = prefix.to(obj.backbone.get_input_embeddings().weight.dtype)
    mask = torch.ones(embeds.shape[:2], dtype=torch.long, device=embeds.device)
    sample = temperature > 0
    out = obj.backbone.generate(inputs_embeds=embeds, attention_mask=mask, max_new_tokens=max_new_tokens,
                                do_sample=sample, temperature=temperature if sample else None,
                                top_p=top_p if sample else None, top_k=None,
                                pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id or tok.sep_token_id)
    return [" ".join(tok.decode(r, skip_special_tokens=True).split()) for r in out.tolist()]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m wedlm_bridge.decode", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True, help="a bridge run directory or checkpoint_step_N.pt")
    ap.add_argument("--latents", required=True, help=".npy of shape [N, latent_dim] (or [latent_dim])")
    ap.add_argument("--output", required=True, help="text file to write, one line per latent")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    ap.add_argument("--top-p", type=float, default=1.0)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default=default_device())
    add_load_policy_args(ap)
    a = ap.parse_args(argv)
    obj, tok, cfg = load_bridge_for_cli(a, a.device)
    z = np.load(a.latents, allow_pickle=False)
    z = z[None] if z.ndim == 1 else z
    if z.ndim != 2 or z.shape[1] != cfg.model.latent_dim:
        raise SystemExit(f"{a.latents}: expected [N, {cfg.model.latent_dim}], got {list(z.shape)}")
    torch.manual_seed(a.seed)
    lines = []
    for i in range(0, len(z), a.batch_size):
        lat = torch.from_numpy(z[i : i + a.batch_size]).float().to(a.device)
        lines += decode(obj, tok, lat, a.max_new_tokens, a.temperature, a.top_p)
    Path(a.output).write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {len(lines)} texts to {a.output}")


if __name__ == "__main__":
    main()
