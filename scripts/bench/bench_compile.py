"""Compiled against eager training steps of every family's tiny config, on the CPU, side by side.

    python scripts/bench/bench_compile.py [--only SUBSTRING ...] [--steps 10] [--json OUT.json]

The rows of scripts/bench/gpu_check.py at their dry-run size (tiny random backbones in a temporary
directory), fp32 as the CPU runs them. Per row: two copies of the objective with the same random
weights, one with ``training.compile_model`` (``mmldlm.train.compile``, inductor); AdamW steps on one
fixed batch, each seeded alike; 2 warm-up steps each, then ``--steps`` rounds alternating an eager
and a compiled step (a shared machine: compare the ratio of one run). Reported: the medians and
their ratio; the compiled copy's first step (the compile time, from a cold inductor cache unless
``TORCHINDUCTOR_CACHE_DIR`` is set); the first step's loss of each (equal where no dropout runs
inside a compiled block: inductor draws those numbers from its own generator). These are CPU
figures at toy sizes (kernel launch and Python overhead dominate): they decide nothing for a GPU,
where ``gpu_check.py`` measures the real sizes.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def one_step(obj, model, batch, opt, step: int) -> tuple[float, float]:
    """(seconds, loss) of one AdamW step, the global RNG seeded with ``step`` (both copies draw the same noise)."""
    torch.manual_seed(step)
    t0 = time.perf_counter()
    loss, _ = model(batch, step)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return time.perf_counter() - t0, float(loss)


def bench_row(row, assets: dict, steps: int) -> dict:
    from mmldlm.config import compose
    from mmldlm.estimate.measure import build_random, example
    from mmldlm.train.compile import compile_model
    from mmldlm.train.optim import build_optimizer
    from scripts.bench.gpu_check import overrides_of

    cfg = compose(row.config, [*overrides_of(row, assets), "data.data_files.train=x", "training.dtype=fp32"],
                  row.config_dir)
    torch._dynamo.reset()  # dynamo's cache is per code object: an earlier row's graphs of the same block class
    copies = {}  # would count against this row's recompile limit and make its compile time look free
    for mode in ("eager", "compiled"):
        obj, tok = build_random(cfg, "cpu")
        opt = build_optimizer([(n, p) for n, p in obj.named_parameters() if p.requires_grad], cfg.optimizer,
                              torch.device("cpu"))
        model = compile_model(obj, obj) if mode == "compiled" else obj
        copies[mode] = (obj, model, opt)
    batch = example(copies["eager"][0], cfg, len(tok) - 2, "cpu")
    first = {m: [one_step(*copies[m][:2], batch, copies[m][2], i) for i in range(2)] for m in copies}
    times = {m: [] for m in copies}
    for i in range(steps):
        for m in copies:
            times[m].append(one_step(*copies[m][:2], batch, copies[m][2], 2 + i)[0])
    eager, compiled = statistics.median(times["eager"]), statistics.median(times["compiled"])
    return {"row": row.label, "batch": f"{cfg.training.train_batch_size} x {cfg.data.max_seq_len}",
            "eager_s": eager, "compiled_s": compiled, "compiled_over_eager": compiled / eager,
            "compile_s": first["compiled"][0][0], "first_loss_eager": first["eager"][0][1],
            "first_loss_compiled": first["compiled"][0][1]}



def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="*", default=None)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    logging.disable(logging.WARNING)
    warnings.simplefilter("ignore")
    from scripts.bench.gpu_check import ROWS, tiny_assets

    results = []
    with tempfile.TemporaryDirectory(prefix="bench_compile_") as tmp:
        # a cold inductor cache, as on a fresh node: compile_s is the real compile time, not a cache hit
        os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(Path(tmp) / "inductor"))
        assets = tiny_assets(Path(tmp))
        for row in ROWS:
            if a.only and not any(s in row.label for s in a.only):
                continue
            results.append(bench_row(row, assets, a.steps))
            print(json.dumps(results[-1]), flush=True)
            if a.json:
                Path(a.json).write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
