"""Bridge training-step throughput per task: steps/s, tokens/s, MFU, peak memory.

Random init of the backbone shape (no download), random tokens and latents, AdamW on what
trains, the frozen backbone in bf16 on GPU.

    python scripts/bench/bench_bridge.py                                   # CPU: the tiny WeDLM
    python scripts/bench/bench_bridge.py --shape wedlm8b --batch 2 8 --seq 1024 --ckpt both   # GPU
"""
from __future__ import annotations

import argparse
import time

import torch

from mmldlm.config import compose
from mmldlm.train.loop import _peak_tflops
from wedlm_bridge.bridge import BridgeObjective

SHAPES = {  # Qwen3-8B = WeDLM-8B; tiny = wedlm_bridge.tiny
    "wedlm8b": dict(vocab_size=151936, hidden_size=4096, intermediate_size=12288, num_hidden_layers=36,
                    num_attention_heads=32, num_key_value_heads=8, head_dim=128, rope_theta=1e6,
                    max_position_embeddings=16384, tie_word_embeddings=False),
    "tiny": dict(vocab_size=30522, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=16, tie_word_embeddings=False),
}


class _Tok:
    eos_token_id = 2


def bench(shape, task, batch, seq, ckpt, steps, warmup, device) -> dict:
    from transformers import Qwen3Config, Qwen3ForCausalLM

    cuda = device.type == "cuda"
    dtype = torch.bfloat16 if cuda else torch.float32
    torch.manual_seed(0)
    with torch.device(device):
        backbone = Qwen3ForCausalLM(Qwen3Config(**SHAPES[shape])).to(dtype)
    cfg = compose("wedlm8b_ar_bridge", ["data.data_files.train=unused.json", f"training.task={task}",
                                        f"model.activation_checkpointing={ckpt}",
                                        f"model.latent_dim={1024 if shape == 'wedlm8b' else 384}",
                                        f"model.max_seq_len={min(1024, seq)}"])
    obj = BridgeObjective(cfg, _Tok(), backbone).to(device)
    obj.latent_prefix.float(), obj.t2l_head.float()
    params = [p for p in obj.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, fused=cuda)
    ids = torch.randint(100, SHAPES[shape]["vocab_size"], (batch, seq), device=device)
    b = {"input_ids": ids, "attention_mask": torch.ones_like(ids, dtype=torch.bool),
         "latent": torch.randn(batch, cfg.model.latent_dim, device=device)}
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    for i in range(warmup + steps):
        if i == warmup:
            sync()
            t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            loss, _ = obj(b, i)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    sync()
    dt = (time.perf_counter() - t0) / steps
    rec = {"shape": shape, "task": task, "batch": batch, "seq": seq, "act_ckpt": ckpt,
           "steps_per_s": round(1 / dt, 3), "tokens_per_s": round(batch * seq / dt)}
    peak = _peak_tflops(None, device)
    if peak:
        rec["mfu"] = round(batch * seq / dt * obj.flops_per_token() / (peak * 1e12), 3)
    if cuda:
        rec["peak_mem_GiB"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 1)
    return rec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=list(SHAPES), default="tiny")
    ap.add_argument("--tasks", nargs="+", default=["t2l", "l2t", "joint"])
    ap.add_argument("--batch", type=int, nargs="+", default=[8])
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--ckpt", choices=["on", "off", "both"], default="off")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    a = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print(f"device: {torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}")
    for ckpt in {"on": [True], "off": [False], "both": [False, True]}[a.ckpt]:
        for bs in a.batch:
            for task in a.tasks:
                try:
                    print(bench(a.shape, task, bs, a.seq, ckpt, a.steps, a.warmup, device), flush=True)
                except torch.OutOfMemoryError:
                    print({"shape": a.shape, "task": task, "batch": bs, "act_ckpt": ckpt, "result": "OOM"})
                    torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
