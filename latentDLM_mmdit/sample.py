"""The MMDiT's sampling CLI and the held-out round-trip report (samplers: ``sampling.py``;
metrics: ``metrics.py``). A checkpoint file or a run directory (its ``latest``) is read::

    python -m latentDLM_mmdit.sample t2l --checkpoint RUN_DIR --input texts.txt --output latents.npy
    python -m latentDLM_mmdit.sample l2t --checkpoint RUN_DIR --input latents.npy --output texts.txt
    python -m latentDLM_mmdit.sample roundtrip --checkpoint RUN_DIR --input validation_data.json [--output r.json]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from latentDLM_mmdit.metrics import roundtrip
from latentDLM_mmdit.sampling import l2t_decode, t2l_encode
from mmldlm.argtypes import at_least, nonneg_float, nonneg_int, positive_int
from mmldlm.data.collate import Collator
from mmldlm.data.records import read_latent_input
from mmldlm.eval.text_metrics import adjacent_repeats, token_f1
from mmldlm.flags import add_renamed


# -- loading a trained model ----------------------------------------------------------------
def load_objective(checkpoint: str | Path, device: str = "cpu"):
    """(objective in eval mode, tokenizer, config) from a checkpoint the MMDiT entrypoints wrote."""
    from mmldlm.train.rebuild import rebuild_from_checkpoint

    return rebuild_from_checkpoint(checkpoint, device, expect="mmdit")


@torch.no_grad()
def roundtrip_report(checkpoint: str | Path, data_json: str | Path, n: int = 64, show: int = 6,
                     seed: int = 0, guidance: float | None = None, latent_root: str | None = None,
                     allow_outside: bool = False, sampler: str | None = None, temperature: float | None = None,
                     judge: str | None = None) -> dict:
    """T2L2T and L2T2L on the first ``n`` records of a (held-out) dataset, with chance levels:
    for accuracy, always predicting the most frequent token of these texts; for F1, each
    reconstruction scored against another record's text (what a decoder that ignores the latent
    gets); for cosines, each latent against another record's latent and against the mean of the
    other records' latents (what a T2L or L2T2L that ignores its input gets). Latent paths resolve
    under ``latent_root`` (default: the JSON file's directory), never a root read from the checkpoint.
    L2T is also decoded with the other sampler (ancestral / confidence) for comparison, with each
    one's rate of adjacent repeated tokens beside the reference texts'. ``judge`` (``smollm2`` = the
    offline SmolLM2-135M, or a local model / hub id) adds the generative perplexity of the L2T texts
    next to that of the held-out texts themselves, under the same judge."""
    from mmldlm.data.collate import mean_latent, settle
    from mmldlm.data.loader import read_dataset

    obj, tok, cfg = load_objective(checkpoint)
    ds = read_dataset(data_json, cfg.model.latent_dim, latent_root, allow_outside)
    items = ds.__getitems__(list(range(min(n, len(ds)))))
    collated = Collator(tok, min(cfg.data.max_seq_len, cfg.model.max_seq_len))(items)
    batch, _ = settle(collated, skip=False)  # a bad latent file is an error naming it, never a silent drop
    ids, mask, z = batch["input_ids"], batch["attention_mask"], mean_latent(batch).float()
    torch.manual_seed(seed)
    rt = roundtrip(obj, ids, mask, z, guidance, sampler, temperature)
    metrics = rt.metrics
    scored = mask & ~torch.isin(ids, obj.special_ids)
    used = sampler or obj.sample_cfg.l2t_sampler.name
    other_sampler = "confidence" if used == "ancestral" else "ancestral"
    alt = l2t_decode(obj, z, mask, obj.sample_cfg.l2t_steps or None, guidance, other_sampler, temperature)
    top = torch.bincount(ids[scored]).argmax()
    zn = F.normalize(z, dim=-1)
    rows = [{"original": tok.decode(ids[i][mask[i]], skip_special_tokens=True),
             "t2l2t": tok.decode(rt.t2l2t_ids[i][mask[i]], skip_special_tokens=True)} for i in range(ids.shape[0])]
    z_enc = t2l_encode(obj, ids, mask, obj.sample_cfg.roundtrip_t2l_steps)

    def other(x):  # record i is scored against record i - 1
        return x.roll(1, 0)

    return {"records": ids.shape[0], "t2l2t_acc": metrics["t2l2t_acc"].item(),
            "t2l2t_acc_chance": (ids[scored] == top).float().mean().item(),
            "t2l2t_f1": metrics["t2l2t_f1"].item(),
            "t2l2t_f1_chance": token_f1(rt.t2l2t_ids, other(ids), scored, other(scored)).mean().item(),
            "l2t_f1": token_f1(rt.l2t_ids, ids, scored, scored).mean().item(),
            "l2t_f1_chance": token_f1(rt.l2t_ids, other(ids), scored, other(scored)).mean().item(),
            "t2l_cos": F.cosine_similarity(z_enc, z, dim=-1).mean().item(),
            "t2l_cos_mean_latent": F.cosine_similarity(z.sum(0, keepdim=True) - z, z, dim=-1).mean().item(),
            "l2t2l_cos": metrics["l2t2l_cos"].item(),
            "l2t2l_cos_chance": (zn * other(zn)).sum(-1).mean().item(),
            "l2t_sampler": used, "l2t_repeats": adjacent_repeats(rt.l2t_ids, scored),
            "reference_repeats": adjacent_repeats(ids, scored), "l2t_other_sampler": other_sampler,
            "l2t_other_f1": token_f1(alt, ids, scored, scored).mean().item(),
            "l2t_other_repeats": adjacent_repeats(alt, scored), "examples": rows[:show],
            **({"gen_ppl": _gen_ppl(judge, tok, rt.l2t_ids, ids, mask)} if judge else {})}


def _gen_ppl(judge_name: str, tok, l2t_ids, ids, mask) -> dict:
    """The judge's perplexity of the L2T texts and of the held-out texts they were decoded for."""
    from mmldlm.eval.gen_ppl import load_judge, score

    judge = load_judge(None if judge_name == "smollm2" else judge_name)

    def texts(x):
        return [tok.decode(x[i][mask[i]], skip_special_tokens=True) for i in range(x.shape[0])]

    l2t, ref = score(judge, texts(l2t_ids)), score(judge, texts(ids))
    return {"judge": judge.name, "judge_sha256": judge.sha256, "l2t": l2t.gen_ppl, "reference": ref.gen_ppl,
            "l2t_distinct_2": l2t.distinct_2, "reference_distinct_2": ref.distinct_2, "tokens": l2t.tokens}


def format_report(rep: dict) -> str:
    other, mean = rep["l2t2l_cos_chance"], rep["t2l_cos_mean_latent"]
    lines = [f"held-out round trips on {rep['records']} records",
             f"  T2L2T token accuracy {rep['t2l2t_acc']:.3f}   "
             f"(chance: most frequent token {rep['t2l2t_acc_chance']:.3f})",
             f"  T2L2T token F1       {rep['t2l2t_f1']:.3f}   "
             f"(chance: scored against another record {rep['t2l2t_f1_chance']:.3f})",
             f"  L2T token F1         {rep['l2t_f1']:.3f}   "
             f"(chance: scored against another record {rep['l2t_f1_chance']:.3f})",
             f"  T2L cosine           {rep['t2l_cos']:.3f}   (chance: another record's latent {other:.3f}; "
             f"the mean latent {mean:.3f})",
             f"  L2T2L cosine         {rep['l2t2l_cos']:.3f}   (chance: another record's latent {other:.3f}; "
             f"the mean latent {mean:.3f})",
             f"  L2T sampler {rep['l2t_sampler']}: adjacent repeated tokens {rep['l2t_repeats']:.3f}   "
             f"(the reference texts {rep['reference_repeats']:.3f}); {rep['l2t_other_sampler']}: "
             f"F1 {rep['l2t_other_f1']:.3f}, repeats {rep['l2t_other_repeats']:.3f}",
             *(_gen_ppl_line(rep["gen_ppl"]) if "gen_ppl" in rep else []),
             "  (accuracy: same token at the same position; F1: same tokens in any order; L2T: decoded from",
             "   the record's true latent; T2L2T: from the latent the model encodes from the text)",
             ""]
    for i, r in enumerate(rep["examples"], 1):
        lines += [f"[{i}] original: {r['original']}", f"    T2L2T:    {r['t2l2t']}", ""]
    return "\n".join(lines)


def _gen_ppl_line(g: dict) -> list[str]:
    judge = g["judge"].split(" (")[0]
    return [f"  gen PPL ({judge} judge) L2T {g['l2t']:.1f}   (the held-out texts {g['reference']:.1f}; "
            f"distinct bigrams {g['l2t_distinct_2']:.2f} vs {g['reference_distinct_2']:.2f})"]


def _batches(n: int, size: int):
    for i in range(0, n, size):
        yield slice(i, min(n, i + size))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m latentDLM_mmdit.sample", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("direction", choices=["t2l", "l2t", "roundtrip"],
                    help="t2l: text -> latent .npy; l2t: latent .npy -> text; roundtrip: a dataset JSON -> report")
    ap.add_argument("--checkpoint", required=True, help="checkpoint_step_N.pt or a run directory")
    ap.add_argument("--input", required=True, help="t2l: a text file, one text per line; l2t: a [N, D] .npy")
    add_renamed(ap, "--out", "--output", default=None,
                help="t2l: .npy to write; l2t: text file; roundtrip: .json (optional)")
    ap.add_argument("--n", type=positive_int, default=64, help="roundtrip: records to score")
    ap.add_argument("--steps", type=positive_int, default=None,
                    help="sampler steps (default: the run's sample.* keys); t2l --steps 1 = the posterior mean")
    ap.add_argument("--guidance", type=nonneg_float, default=None,
                    help="l2t / roundtrip: classifier-free guidance w (default: the run's sample.l2t_guidance)")
    ap.add_argument("--sampler", choices=["ancestral", "confidence"], default=None,
                    help="l2t / roundtrip: MDLM ancestral sampling, or the confidence heuristic (default: the run's "
                         "sample.l2t_sampler)")
    ap.add_argument("--temperature", type=nonneg_float, default=None,
                    help="l2t / roundtrip, ancestral: sampling temperature (default: the run's sample.l2t_temperature)")
    ap.add_argument("--judge", default=None,
                    help="roundtrip: also score the L2T texts' generative perplexity with this judge (smollm2 = the "
                         "offline SmolLM2-135M-Instruct; not comparable with gpt2-large figures)")
    ap.add_argument("--length", type=at_least(3), default=32, help="l2t: tokens to decode per latent, with [CLS]/[SEP]")
    ap.add_argument("--batch-size", type=positive_int, default=32)
    ap.add_argument("--seed", type=nonneg_int, default=0, help="seed of the DDIM start noise (t2l) and the draws (l2t)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--latent-data-root", default=None,
                    help="roundtrip: base of the records' latent_path (default: the JSON file's directory)")
    ap.add_argument("--allow-paths-outside-root", action="store_true",
                    help="roundtrip: accept absolute latent paths and paths with '..'")
    a = ap.parse_args(argv)
    if a.direction != "roundtrip" and a.out is None:
        ap.error("--out is required for t2l / l2t")
    from mmldlm.config import ConfigError
    from mmldlm.data.records import DataError, LatentError
    from mmldlm.train.rebuild import CheckpointPolicyError

    try:
        _run(a)
    except DataError as e:
        raise SystemExit(f"bad data: {e}\n(list every bad record: python -m latentDLM_mmdit.data_simple "
                         f"check {e.json_path} --latent-dim D)") from None
    except (ConfigError, CheckpointPolicyError, LatentError) as e:
        raise SystemExit(f"error: {e}") from None


def _run(a) -> None:
    if a.direction == "roundtrip":
        rep = roundtrip_report(a.checkpoint, a.input, a.n, guidance=a.guidance, latent_root=a.latent_data_root,
                               sampler=a.sampler, temperature=a.temperature, judge=a.judge,
                               allow_outside=a.allow_paths_outside_root)
        print(format_report(rep))
        if a.out:
            Path(a.out).write_text(json.dumps(rep, indent=2))
        return
    obj, tok, cfg = load_objective(a.checkpoint, a.device)
    dev = torch.device(a.device)
    if a.direction == "t2l":
        texts = Path(a.input).read_text(encoding="utf-8").splitlines()
        if not texts:
            raise SystemExit(f"{a.input}: no lines to encode")
        collate = Collator(tok, min(cfg.data.max_seq_len, cfg.model.max_seq_len))  # tokenised as in training
        gen, out = torch.Generator().manual_seed(a.seed), []
        for sl in _batches(len(texts), a.batch_size):
            enc = collate.tokenize(texts[sl])
            out.append(t2l_encode(obj, enc.input_ids.to(dev), enc.attention_mask.to(dev),
                                  a.steps or cfg.sample.t2l_steps, generator=gen).cpu())
        np.save(a.out, torch.cat(out).numpy().astype(np.float32), allow_pickle=False)
    else:
        z = read_latent_input(a.input, cfg.model.latent_dim)  # NaN/Inf rows refused, naming the first
        if not 3 <= a.length <= cfg.model.max_seq_len:
            raise SystemExit(f"--length must be in [3, model.max_seq_len={cfg.model.max_seq_len}]")
        lines, gen = [], torch.Generator(device=dev).manual_seed(a.seed)
        for sl in _batches(len(z), a.batch_size):
            lat = torch.from_numpy(z[sl]).float().to(dev)
            mask = torch.ones(lat.shape[0], a.length, dtype=torch.bool, device=dev)
            ids = l2t_decode(obj, lat, mask, a.steps or cfg.sample.l2t_steps or None, a.guidance, a.sampler,
                             a.temperature, gen)
            lines += [" ".join(tok.decode(r, skip_special_tokens=True).split()) for r in ids.cpu().tolist()]
        Path(a.out).write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {a.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
