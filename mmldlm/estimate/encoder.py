"""Latent extraction's encoder at real size: one inference batch (no gradients, no optimizer).

Extraction is a forward pass of a sentence encoder, not a registered objective; its shapes are
the encoder's published config values. ``e5`` is multilingual-e5-large (XLM-RoBERTa large: 24
layers, hidden 1024, 16 heads, FFN 4096, 250,002 tokens), read in bf16 on a GPU as
``preprocessed_data/encoders.py`` loads it, at its 512-token cap.
"""
from __future__ import annotations

import torch

ENCODERS = {
    "e5": dict(vocab_size=250002, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
               intermediate_size=4096, max_position_embeddings=514, type_vocab_size=1, pad_token_id=1),
}


def estimate_encoder(name: str, batch: int, seq: int, bf16: bool = True) -> dict:
    """{params, flops_per_batch, peak (Peak), texts per forward} of one inference batch."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import XLMRobertaConfig, XLMRobertaModel

    from mmldlm.estimate.trace import SelectAll, _frozen_aware_tracker, _parts

    cfg = XLMRobertaConfig(**ENCODERS[name])
    cfg._attn_implementation = "sdpa"
    dtype = torch.bfloat16 if bf16 else torch.float32
    with torch.device("meta"):
        model = XLMRobertaModel(cfg, add_pooling_layer=False).to(dtype).eval().requires_grad_(False)
    ids = torch.zeros(batch, seq, dtype=torch.long, device="meta")
    with torch.no_grad(), FlopCounterMode(display=False) as counter, SelectAll():
        model(input_ids=ids, attention_mask=torch.ones_like(ids))
    with FakeTensorMode(allow_non_fake_inputs=True):
        fake = model.to_empty(device="cpu")
        ids = torch.zeros(batch, seq, dtype=torch.long)
        tracker = _frozen_aware_tracker()
        tracker.track_external(fake)
        with torch.no_grad(), tracker, SelectAll():
            fake(input_ids=ids, attention_mask=torch.ones_like(ids))
        peak = _parts(next(iter(tracker.get_tracker_snapshot("peak").values())))
    return {"params": sum(p.numel() for p in model.parameters()), "flops_per_batch": counter.get_total_flops(),
            "peak": peak}
