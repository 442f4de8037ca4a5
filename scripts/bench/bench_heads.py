"""Chunked against whole-logits cross-entropy over a large vocabulary (mmldlm.heads), on the CPU.

    python scripts/bench/bench_heads.py [--tokens 2048] [--hidden 768] [--vocab 50304] [--repeats 5]

One forward + backward of ``sum_i CE(h_i W^T + b, y_i)`` over ``--tokens`` tokens (MDLM small's
hidden size and GPT-2's padded vocabulary by default), float32: ``whole`` materialises the
``[tokens, vocab]`` logits and lets autograd keep what it needs (what every family did before);
``chunked`` is ``head_loss`` at its default chunk (256 MiB of float32 logits). Time: the median of
``--repeats`` runs, the two alternating (a shared machine: compare the ratio of one run). Peak: the
PyTorch profiler's memory timeline of one run of each, above what was allocated before it.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def step(rows: int, h, w, b, y) -> None:
    from mmldlm.heads import head_loss, token_ce

    head_loss(h, w, b, token_ce, y, chunk_rows=rows).loss.backward()
    for x in (h, w, b):
        x.grad = None


def peak_bytes(fn) -> int:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True) as prof:
        fn()
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "timeline.json"
        prof.export_memory_timeline(str(out), device="cpu")
        sizes = np.array(json.loads(out.read_text())[1]).sum(1)
    return int(sizes.max() - sizes[0])


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--hidden", type=int, default=768)
    ap.add_argument("--vocab", type=int, default=50304)
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args(argv)
    from mmldlm.heads import chunk_rows_for

    g = torch.Generator().manual_seed(0)
    h = (torch.randn(a.tokens, a.hidden, generator=g) * 0.5).requires_grad_()
    w = (torch.randn(a.vocab, a.hidden, generator=g) * 0.02).requires_grad_()
    b = torch.zeros(a.vocab).requires_grad_()
    y = torch.randint(0, a.vocab, (a.tokens,), generator=g)
    modes = {"whole": 0, "chunked": chunk_rows_for(a.vocab)}
    for rows in modes.values():  # warm-up
        step(rows, h, w, b, y)
    times = {m: [] for m in modes}
    for _ in range(a.repeats):
        for m, rows in modes.items():
            t0 = time.perf_counter()
            step(rows, h, w, b, y)
            times[m].append(time.perf_counter() - t0)
    out = {"tokens": a.tokens, "hidden": a.hidden, "vocab": a.vocab, "chunk_rows": modes["chunked"]}
    for m, rows in modes.items():
        out[m] = {"s": statistics.median(times[m]), "peak_mib": peak_bytes(lambda rows=rows: step(rows, h, w, b, y))
                  / 2**20}
    out["time_chunked_over_whole"] = out["chunked"]["s"] / out["whole"]["s"]
    out["peak_chunked_over_whole"] = out["chunked"]["peak_mib"] / out["whole"]["peak_mib"]
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
