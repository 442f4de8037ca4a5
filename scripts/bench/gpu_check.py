"""The estimator against a real GPU, where one is lent: each config at its real size with random
weights (no checkpoint needed: the backbone from its config values), a random batch of the
configured shape, and steady-state training steps (AdamW state present, bf16 autocast over fp32
masters, fused AdamW), measuring the allocator's peak (torch.cuda.max_memory_allocated), the step
time (median of --steps, CUDA-synchronised) and MFU from the estimator's FLOP count.

    python scripts/bench/gpu_check.py [--steps 5] [--json OUT.json] [--only SUBSTRING]

The same rows as docs/estimates.md where they fit one GPU.
"""
from __future__ import annotations

import argparse
import gc
import json
import logging
import statistics
import time
import warnings

import torch

ROWS = [
    ("bridge 8B l2t, batch 2 x 1024", "wedlm8b_ar_bridge", ["training.task=l2t", "training.train_batch_size=2"]),
    ("bridge 8B l2t, batch 8 x 1024, act. ckpt", "wedlm8b_ar_bridge",
     ["training.task=l2t", "training.train_batch_size=8", "model.activation_checkpointing=true"]),
    ("bridge 8B t2l, batch 8 x 1024", "wedlm8b_ar_bridge", ["training.task=t2l", "training.train_batch_size=8"]),
    ("bridge 8B joint, batch 2 x 1024", "wedlm8b_ar_bridge", ["training.task=joint", "training.train_batch_size=2"]),
    ("WeDLM-8B SFT LoRA r16, wedlm, act. ckpt", "wedlm8b_sft",
     ["training.train_batch_size=1", "model.activation_checkpointing=true"]),
    ("WeDLM-8B SFT LoRA r16, wedlm", "wedlm8b_sft", ["training.train_batch_size=1"]),
    ("WeDLM-8B SFT LoRA r16, causal_lm", "wedlm8b_sft",
     ["training.train_batch_size=1", "finetune.objective=causal_lm"]),
    ("MDLM small, batch 64 x 1024", "mdlm", ["model=small"]),
    ("MDLM base, batch 16 x 1024", "mdlm", ["model=base", "training.train_batch_size=16"]),
    # the same model without autocast: separates the autocast policy (CPU's vs CUDA's) from the rest
    ("MDLM small, batch 16 x 1024", "mdlm", ["model=small", "training.train_batch_size=16"]),
    ("MDLM small, batch 16 x 1024, fp32", "mdlm",
     ["model=small", "training.train_batch_size=16", "training.dtype=fp32"]),
]


def fill(batch: dict, vocab: int) -> dict:
    """Values for an example batch: random ids, full masks, every token an answer token."""
    for k, v in batch.items():
        if v.dtype == torch.bool:
            v.fill_(True)
        elif k == "positions":
            v.copy_(torch.arange(v.shape[1], device=v.device).expand_as(v))
        elif k == "segment":
            v.zero_()
        elif k in ("records", "index"):
            v.copy_(torch.arange(v.shape[0], device=v.device).view(-1, *[1] * (v.dim() - 1)).expand_as(v))
        elif v.dtype == torch.long:
            v.random_(0, vocab)
        else:
            v.normal_()
    if "labels" in batch:
        batch["labels"].copy_(batch["input_ids"])
    return batch


def measure(label: str, name: str, overrides: list[str], steps: int) -> dict:
    from mmldlm.config import compose
    from mmldlm.estimate.__main__ import estimate
    from mmldlm.estimate.trace import train_step
    from mmldlm.objective import lookup
    from mmldlm.sources import open_sources
    from mmldlm.sources.weights import materialize
    from mmldlm.train.optim import build_optimizer

    est = estimate(name, overrides)
    cfg = compose(name, [*overrides, "data.data_files.train=x"])
    sources = open_sources(cfg, lookup(cfg.objective), shapes_only=True)  # real size, no checkpoint needed
    tok = sources.tokenizer
    with torch.device("cuda"):
        torch.manual_seed(0)
        obj = lookup(cfg.objective).build(cfg, sources)
    materialize(obj, "cuda")
    obj = obj.cuda().train()
    with torch.no_grad():
        for p in obj.parameters():
            if p.is_floating_point():
                p.normal_(0, 0.02)
    batch = fill(obj.example_batch(cfg, "cuda"), len(tok) - 2)
    params = [(n, p) for n, p in obj.named_parameters() if p.requires_grad]
    opt = build_optimizer(params, cfg.optimizer, torch.device("cuda"))
    bf16 = cfg.training.dtype.name == "bf16"
    times = []
    for i in range(2 + steps):
        if i == 2:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        train_step(obj, batch, 1000 + i, bf16, opt, "cuda")
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    peak, reserved = torch.cuda.max_memory_allocated(), torch.cuda.max_memory_reserved()
    step_s = statistics.median(times[2:])
    del obj, opt, batch, params
    gc.collect()
    torch.cuda.empty_cache()
    return {"row": label, "estimate_gib": est.peak_bytes_per_rank / 2**30, "measured_gib": peak / 2**30,
            "reserved_gib": reserved / 2**30, "ratio": est.peak_bytes_per_rank / peak, "step_s": step_s,
            "tokens_per_s": est.tokens_per_step_per_rank / step_s,
            "mfu": est.flops_per_step / step_s / 989e12, "tflop_per_step": est.flops_per_step / 1e12}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--json", default=None)
    ap.add_argument("--only", default=None)
    a = ap.parse_args()
    logging.disable(logging.WARNING)
    warnings.simplefilter("ignore")
    print(torch.cuda.get_device_name(), flush=True)
    results = []
    for label, name, overrides in ROWS:
        if a.only and a.only not in label:
            continue
        try:
            r = measure(label, name, overrides, a.steps)
        except torch.OutOfMemoryError as e:
            r = {"row": label, "error": f"OOM: {str(e)[:200]}"}
            gc.collect()
            torch.cuda.empty_cache()
        results.append(r)
        print(json.dumps(r), flush=True)
        if a.json:
            with open(a.json, "w") as f:
                json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
