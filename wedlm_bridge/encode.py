"""Text -> latents with a trained bridge (the t2l direction).

    python -m wedlm_bridge.encode --checkpoint RUN_DIR --backbone-dir BACKBONE_DIR --input texts.txt --output z.npy

One text per input line; writes float32 [N, latent_dim].
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from mmldlm.argtypes import positive_int
from mmldlm.data.collate import Collator
from mmldlm.flags import add_renamed
from mmldlm.sources.cli import add_policy_args
from wedlm_bridge.bridge import default_device, load_bridge_for_cli


@torch.no_grad()
def encode(obj, collate: Collator, texts: list[str], device) -> np.ndarray:
    enc = collate.tokenize(texts)  # tokenised as in training
    return obj.encode_text(enc.input_ids.to(device), enc.attention_mask.to(device)).float().cpu().numpy()


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m wedlm_bridge.encode", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True, help="a bridge run directory or checkpoint_step_N.pt")
    ap.add_argument("--input", required=True, help="text file, one text per line")
    add_renamed(ap, "--out", "--output", required=True, help=".npy to write")
    ap.add_argument("--batch-size", type=positive_int, default=16)
    ap.add_argument("--device", default=default_device())
    add_policy_args(ap)
    a = ap.parse_args(argv)
    obj, tok, cfg = load_bridge_for_cli(a, a.device)
    texts = Path(a.input).read_text(encoding="utf-8").splitlines()
    if not texts:
        raise SystemExit(f"{a.input}: no lines to encode")
    collate = Collator(tok, cfg.data.max_seq_len)
    z = np.concatenate([encode(obj, collate, texts[i : i + a.batch_size], a.device)
                        for i in range(0, len(texts), a.batch_size)])
    np.save(a.out, z.astype(np.float32), allow_pickle=False)
    print(f"wrote {z.shape[0]} x {z.shape[1]} latents to {a.out}")


if __name__ == "__main__":
    main()
