"""Latents -> text with a trained bridge (the l2t direction).

    python -m wedlm_bridge.decode --checkpoint RUN_DIR --backbone-dir BACKBONE_DIR --latents z.npy --output texts.txt \
        [--max-new-tokens 64] [--temperature 0 (greedy) | 0.8 --top-p 0.95] [--seed 0]

One line per latent row. The prefix the bridge computes from each latent is the prompt; the
backbone generates until EOS or --max-new-tokens, with the shared AR sampler (mmldlm.eval.samplers:
KV cache, float64 draws, a function of --seed alone). ``baseline/eval/generate_samples.py
path=RUN backbone_dir=DIR latents=z.npy`` draws with the same sampler and writes ids + a header for the
gen-PPL CLI (with the same seed, temperature and top_p: the same tokens).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch
from tqdm import tqdm

from mmldlm.argtypes import nonneg_float, nonneg_int, positive_int, unit
from mmldlm.data.records import LatentError, read_latent_input
from mmldlm.flags import add_renamed
from mmldlm.sources.cli import add_policy_args
from wedlm_bridge.bridge import default_device, load_bridge_for_cli


@torch.no_grad()
def decode(obj, tok, latents: torch.Tensor, max_new_tokens: int = 64, temperature: float = 0.0,
           top_p: float = 1.0, generator: torch.Generator | None = None) -> list[str]:
    """One text per latent row: the objective's sampler (``generate``), cut at the stop token."""
    ids = obj.generate(num_samples=latents.shape[0], length=max_new_tokens, temperature=temperature, top_p=top_p,
                       generator=generator, latents=latents)
    texts = []
    for row in ids.tolist():
        end = row.index(obj.stop_id) if obj.stop_id in row else len(row)
        texts.append(" ".join(tok.decode(row[:end], skip_special_tokens=True).split()))
    return texts


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m wedlm_bridge.decode", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True, help="a bridge run directory or checkpoint_step_N.pt")
    ap.add_argument("--latents", required=True, help=".npy of shape [N, latent_dim] (or [latent_dim])")
    add_renamed(ap, "--out", "--output", required=True, help="text file to write, one line per latent")
    ap.add_argument("--max-new-tokens", type=positive_int, default=64)
    ap.add_argument("--temperature", type=nonneg_float, default=0.0, help="0 = greedy")
    ap.add_argument("--top-p", type=unit, default=1.0)
    ap.add_argument("--batch-size", type=positive_int, default=16)
    ap.add_argument("--seed", type=nonneg_int, default=0)
    ap.add_argument("--device", default=default_device())
    add_policy_args(ap)
    a = ap.parse_args(argv)
    obj, tok, cfg = load_bridge_for_cli(a, a.device)
    try:
        z = read_latent_input(a.latents, cfg.model.latent_dim)  # NaN/Inf rows refused, naming the first
    except LatentError as e:
        raise SystemExit(f"error: {e}") from None
    gen = torch.Generator(device=a.device).manual_seed(a.seed)
    lines = []
    for i in tqdm(range(0, len(z), a.batch_size), desc="decode", unit="batch", disable=len(z) <= a.batch_size):
        lat = torch.from_numpy(z[i : i + a.batch_size]).float().to(a.device)
        try:
            lines += decode(obj, tok, lat, a.max_new_tokens, a.temperature, a.top_p, gen)
        except ValueError as e:  # a t2l run (no trained decoder), a tokenizer without a stop token
            raise SystemExit(f"error: {e}") from None
    Path(a.out).write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {len(lines)} texts to {a.out}")


if __name__ == "__main__":
    main()
