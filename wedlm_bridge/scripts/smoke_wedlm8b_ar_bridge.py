"""Smoke test of the bridge on the real WeDLM-8B weights (GPU node, after prefetch).

    python wedlm_bridge/scripts/smoke_wedlm8b_ar_bridge.py [--model-dir ./local_models/wedlm-8b]

Skips with a message (exit 0) when the weights are absent. Otherwise loads the backbone without
remote code, builds the bridge for task=joint and checks l2t / t2l shapes and finite losses on
two sentences with random latents. The model directory also comes from LOCAL_MODEL_DIR.
"""
import argparse
import os
import sys
from pathlib import Path

import torch

from mmldlm.argtypes import positive_int


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", default=os.environ.get("LOCAL_MODEL_DIR", "./local_models/wedlm-8b"))
    ap.add_argument("--latent-dim", type=positive_int, default=1024)
    a = ap.parse_args()
    d = Path(a.model_dir)
    if not (d / "config.json").is_file() or not list(d.glob("*.safetensors")):
        print(f"SKIP: no WeDLM weights in {d} "
              "(fetch them with DOWNLOAD_ONLY=1 bash wedlm_bridge/run_wedlm8b_ar_bridge.sh)")
        return 0
    from mmldlm.config import compose
    from mmldlm.data.tokenizer import load_tokenizer
    from wedlm_bridge.backbone import load_backbone
    from wedlm_bridge.bridge import BridgeObjective

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    cfg = compose("wedlm8b_ar_bridge", [f"model.pretrained_local_dir={d}", f"model.latent_dim={a.latent_dim}",
                                        "training.task=joint", "data.data_files.train=unused.json"])
    tok = load_tokenizer(str(d))
    backbone = load_backbone(str(d), "bfloat16" if dev == "cuda" else "float32")
    positions = backbone.config.max_position_embeddings - cfg.model.latent_prefix_len - 1
    cfg.model.max_seq_len = min(cfg.model.max_seq_len, positions)  # a smaller stand-in backbone
    print(f"backbone {type(backbone).__name__}: {sum(p.numel() for p in backbone.parameters()) / 1e9:.2f}B params")
    obj = BridgeObjective(cfg, tok, backbone).to(dev)
    enc = tok(["The cat sat on the mat.", "Latent diffusion models generate text."], padding=True, return_tensors="pt")
    batch = {"input_ids": enc["input_ids"].to(dev), "attention_mask": enc["attention_mask"].bool().to(dev),
             "latent": torch.randn(2, a.latent_dim, device=dev)}
    with torch.no_grad(), torch.autocast(dev, dtype=torch.bfloat16, enabled=dev == "cuda"):
        prefix = obj.prefix_embeds(batch["latent"])
        logits, labels = obj.lm_logits(prefix, batch["input_ids"], batch["attention_mask"])
        z = obj.encode_text(batch["input_ids"], batch["attention_mask"])
        loss, metrics = obj(batch, 0)
    L, H, V = batch["input_ids"].shape[1], backbone.config.hidden_size, backbone.config.vocab_size
    assert prefix.shape == (2, cfg.model.latent_prefix_len, H), prefix.shape
    assert logits.shape == (2, cfg.model.latent_prefix_len + L, V), logits.shape
    assert z.shape == (2, a.latent_dim) and torch.isfinite(loss), (z.shape, loss)
    print(f"OK: l2t logits {list(logits.shape)}, t2l latent {list(z.shape)}, "
          + ", ".join(f"{k} {float(v):.4f}" for k, v in metrics.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
