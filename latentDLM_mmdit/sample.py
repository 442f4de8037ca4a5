"""Samplers consistent with training, round-trip metrics, and the sampling CLI.

Both take and return latents in data units (``model.latent_scale`` is applied inside).

- :func:`t2l_encode`: text -> latent by deterministic DDIM (eta = 0) from pure noise at T - 1,
  reading the network output in the trained parameterisation (``predict_x0`` / ``predict_eps``).
- :func:`l2t_decode`: latent -> text by iterative unmasking from fully masked text: at each step
  the most confident predictions among the still-masked positions are committed; the text
  timestep passed to the model is the fraction still masked (the MDLM mask rate). With
  ``sample.l2t_guidance`` w > 0, classifier-free guidance: ``(1 + w) log p(x | z) - w log p(x | null)``
  (the null latent: pure noise at the last timestep, trained by ``loss.l2t_uncond_prob``).
- :func:`roundtrip`: T2L2T token accuracy and bag-of-tokens F1, L2T2L cosine (the eval metrics).

CLI (a checkpoint file or a run directory, whose ``latest`` is used)::

    python -m latentDLM_mmdit.sample t2l --checkpoint RUN_DIR --input texts.txt --output latents.npy
    python -m latentDLM_mmdit.sample l2t --checkpoint RUN_DIR --input latents.npy --output texts.txt
    python -m latentDLM_mmdit.sample roundtrip --checkpoint RUN_DIR --input validation_data.json [--output r.json]
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from latentDLM_mmdit.mmdit_objective import MMDiTObjective


@torch.no_grad()
def t2l_encode(obj: MMDiTObjective, input_ids: torch.Tensor, attention_mask: torch.Tensor, steps: int = 50,
               generator: torch.Generator | None = None) -> torch.Tensor:
    g, B = obj.latent, input_ids.shape[0]
    D = obj.model.latent_head.out_features
    ts = torch.unique(torch.linspace(g.timesteps - 1, 0, steps).round().long(), sorted=True).flip(0).tolist()
    x = torch.randn(B, D, generator=generator).to(input_ids.device)
    zeros = torch.zeros(B, device=input_ids.device)
    for i, t in enumerate(ts):
        tt = torch.full((B,), t, device=input_ids.device)
        _, out = obj.model(input_ids, attention_mask, x, zeros, g.time_code(tt), text_logits=False)
        prev = ts[i + 1] if i + 1 < len(ts) else -1
        x = g.ddim_step(out.float(), x, tt, torch.full((B,), prev, device=input_ids.device))
    return x / obj.latent_scale


@torch.no_grad()
def l2t_decode(obj: MMDiTObjective, latent: torch.Tensor, attention_mask: torch.Tensor,
               steps: int | None = None, guidance: float | None = None) -> torch.Tensor:
    """Token ids ``[B, L]``; positions where ``attention_mask`` is False stay 0 (padding).
    ``guidance`` defaults to ``sample.l2t_guidance``."""
    mask_id, B, L = obj.text.mask_id, *attention_mask.shape
    ids = obj.text.fully_masked(attention_mask)
    latent = latent.float() * obj.latent_scale
    steps = steps or L
    w = obj.sample_cfg.l2t_guidance if guidance is None else guidance
    t_lat = torch.zeros(B, device=latent.device)
    if w > 0:  # the conditional and the null-latent rows in one batch
        null, t_null = obj.null_latent(B, latent.device)
        latent, t_lat, mask2 = torch.cat([latent, null]), torch.cat([t_lat, t_null]), attention_mask.repeat(2, 1)
    n_real = attention_mask.sum(1)
    for s in range(steps):
        still = (ids == mask_id) & attention_mask
        if not still.any():
            break
        t = still.sum(1).float() / n_real.clamp_min(1)
        if w > 0:
            out, _ = obj.model(ids.repeat(2, 1), mask2, latent, t.repeat(2), t_lat)
            cond, uncond = obj.text.subs(out).log_softmax(-1).chunk(2)  # p(x0 | x_t) excludes [MASK]
            logits = (1 + w) * cond - w * uncond
            logits[..., mask_id] = -math.inf  # (-inf) - (-inf) is nan: set it again
        else:
            logits = obj.text.subs(obj.model(ids, attention_mask, latent, t, t_lat)[0])
        top, pred = logits.max(-1)
        conf = (top - logits.logsumexp(-1)).exp()  # the softmax probability of the argmax
        conf = torch.where(still, conf, -1.0)
        left = steps - s
        k = torch.ceil(still.sum(1).float() / left).long()  # spread the remaining positions evenly
        order = conf.argsort(dim=1, descending=True)
        rank = torch.empty_like(order).scatter_(1, order, torch.arange(L, device=ids.device).expand(B, L))
        commit = still & (rank < k.unsqueeze(1))
        ids = torch.where(commit, pred, ids)
    return ids


def token_f1(pred: torch.Tensor, ref: torch.Tensor, pred_on: torch.Tensor, ref_on: torch.Tensor) -> torch.Tensor:
    """Per-row bag-of-tokens F1 ``[B]`` between ``pred`` and ``ref`` (``[B, L]`` ids), counting the
    positions where ``pred_on`` / ``ref_on`` is True, with multiplicity (SQuAD's token F1)."""
    V = int(max(pred.max(), ref.max())) + 1

    def bag(x, on):
        return torch.zeros(x.shape[0], V, device=x.device).scatter_add_(1, x, on.float())

    cp, cr = bag(pred, pred_on), bag(ref, ref_on)
    common = torch.minimum(cp, cr).sum(1)
    return 2 * common / (cp.sum(1) + cr.sum(1)).clamp_min(1)


@torch.no_grad()
def roundtrip(obj: MMDiTObjective, ids: torch.Tensor, mask: torch.Tensor, latent: torch.Tensor,
              guidance: float | None = None):
    """``({"t2l2t_acc", "t2l2t_f1", "l2t2l_cos"}, {"t2l2t_ids", "l2t_ids", "l2t2l_latent"})``. Accuracy (same
    token at the same position) and F1 (same tokens, any order) count real, non-special tokens
    only ([CLS]/[SEP] would flatter them); decoding uses the original lengths."""
    sc = obj.sample_cfg
    z = t2l_encode(obj, ids, mask, sc.roundtrip_t2l_steps)
    ids_hat = l2t_decode(obj, z, mask, sc.l2t_steps or None, guidance)
    scored = mask & ~torch.isin(ids, obj.special_ids.to(ids.device))
    acc = (ids_hat == ids)[scored].float().mean() if scored.any() else torch.zeros((), device=ids.device)
    f1 = token_f1(ids_hat, ids, scored, scored).mean()
    text_hat = l2t_decode(obj, latent, mask, sc.l2t_steps or None, guidance)
    z_hat = t2l_encode(obj, text_hat, mask, sc.roundtrip_t2l_steps)
    cos = F.cosine_similarity(z_hat.float(), latent.float(), dim=-1).mean()
    return ({"t2l2t_acc": acc, "t2l2t_f1": f1, "l2t2l_cos": cos},
            {"t2l2t_ids": ids_hat, "l2t_ids": text_hat, "l2t2l_latent": z_hat})


# -- loading a trained model ----------------------------------------------------------------
def load_objective(checkpoint: str | Path, device: str = "cpu"):
    """(objective in eval mode, tokenizer, config) from a checkpoint the MMDiT entrypoints wrote."""
    from latentDLM_mmdit.checkpointing import rebuild_from_checkpoint
    from latentDLM_mmdit.mmdit_objective import MMDiTRunConfig, build

    return rebuild_from_checkpoint(checkpoint, MMDiTRunConfig, build, device)


@torch.no_grad()
def roundtrip_report(checkpoint: str | Path, data_json: str | Path, n: int = 64, show: int = 6,
                     seed: int = 0, guidance: float | None = None, latent_root: str | None = None,
                     allow_outside: bool = False) -> dict:
    """T2L2T and L2T2L on the first ``n`` records of a (held-out) dataset, with chance levels:
    for accuracy, always predicting the most frequent token of these texts; for F1, each
    reconstruction scored against another record's text (what a decoder that ignores the latent
    gets); for cosines, each latent against another record's latent and against the mean of the
    other records' latents (what a T2L or L2T2L that ignores its input gets). Latent paths resolve
    under ``latent_root`` (default: the JSON file's directory), never a root read from the checkpoint."""
    from latentDLM_mmdit.data_records import read_records
    from latentDLM_mmdit.data_simple import Collator, LatentTextDataset, mean_latent, split_batch

    obj, tok, cfg = load_objective(checkpoint)
    table = read_records(data_json, latent_root, cfg.model.latent_dim, allow_outside=allow_outside)
    ds = LatentTextDataset(table, cfg.model.latent_dim)
    items = ds.__getitems__(list(range(min(n, len(ds)))))
    batch = Collator(tok, min(cfg.data.max_seq_len, cfg.model.max_seq_len))(items)
    batch, _ = split_batch(batch, skip=False)  # a bad latent file is an error naming it, never a silent drop
    ids, mask, z = batch["input_ids"], batch["attention_mask"], mean_latent(batch).float()
    torch.manual_seed(seed)
    metrics, out = roundtrip(obj, ids, mask, z, guidance)
    scored = mask & ~torch.isin(ids, obj.special_ids)
    top = torch.bincount(ids[scored]).argmax()
    zn = F.normalize(z, dim=-1)
    rows = [{"original": tok.decode(ids[i][mask[i]], skip_special_tokens=True),
             "t2l2t": tok.decode(out["t2l2t_ids"][i][mask[i]], skip_special_tokens=True)} for i in range(ids.shape[0])]
    z_enc = t2l_encode(obj, ids, mask, obj.sample_cfg.roundtrip_t2l_steps)

    def other(x):  # record i is scored against record i - 1
        return x.roll(1, 0)

    return {"records": ids.shape[0], "t2l2t_acc": metrics["t2l2t_acc"].item(),
            "t2l2t_acc_chance": (ids[scored] == top).float().mean().item(),
            "t2l2t_f1": metrics["t2l2t_f1"].item(),
            "t2l2t_f1_chance": token_f1(out["t2l2t_ids"], other(ids), scored, other(scored)).mean().item(),
            "l2t_f1": token_f1(out["l2t_ids"], ids, scored, scored).mean().item(),
            "l2t_f1_chance": token_f1(out["l2t_ids"], other(ids), scored, other(scored)).mean().item(),
            "t2l_cos": F.cosine_similarity(z_enc, z, dim=-1).mean().item(),
            "t2l_cos_mean_latent": F.cosine_similarity(z.sum(0, keepdim=True) - z, z, dim=-1).mean().item(),
            "l2t2l_cos": metrics["l2t2l_cos"].item(),
            "l2t2l_cos_chance": (zn * other(zn)).sum(-1).mean().item(), "examples": rows[:show]}


def format_report(rep: dict) -> str:
    lines = [f"held-out round trips on {rep['records']} records",
             f"  T2L2T token accuracy {rep['t2l2t_acc']:.3f}   (chance: most frequent token {rep['t2l2t_acc_chance']:.3f})",
             f"  T2L2T token F1       {rep['t2l2t_f1']:.3f}   (chance: scored against another record {rep['t2l2t_f1_chance']:.3f})",
             f"  L2T token F1         {rep['l2t_f1']:.3f}   (chance: scored against another record {rep['l2t_f1_chance']:.3f})",
             f"  T2L cosine           {rep['t2l_cos']:.3f}   (chance: another record's latent {rep['l2t2l_cos_chance']:.3f}; "
             f"the mean latent {rep['t2l_cos_mean_latent']:.3f})",
             f"  L2T2L cosine         {rep['l2t2l_cos']:.3f}   (chance: another record's latent {rep['l2t2l_cos_chance']:.3f}; "
             f"the mean latent {rep['t2l_cos_mean_latent']:.3f})",
             "  (accuracy: same token at the same position; F1: same tokens in any order; L2T: decoded from",
             "   the record's true latent; T2L2T: from the latent the model encodes from the text)",
             ""]
    for i, r in enumerate(rep["examples"], 1):
        lines += [f"[{i}] original: {r['original']}", f"    T2L2T:    {r['t2l2t']}", ""]
    return "\n".join(lines)


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
    ap.add_argument("--output", default=None, help="t2l: .npy to write; l2t: text file; roundtrip: .json (optional)")
    ap.add_argument("--n", type=int, default=64, help="roundtrip: records to score")
    ap.add_argument("--steps", type=int, default=None,
                    help="sampler steps (default: the run's sample.* keys); t2l --steps 1 = the posterior mean")
    ap.add_argument("--guidance", type=float, default=None,
                    help="l2t / roundtrip: classifier-free guidance w (default: the run's sample.l2t_guidance)")
    ap.add_argument("--length", type=int, default=32, help="l2t: tokens to decode per latent, with [CLS]/[SEP]")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0, help="t2l: seed of the DDIM start noise")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--latent-data-root", default=None,
                    help="roundtrip: base of the records' latent_path (default: the JSON file's directory)")
    ap.add_argument("--allow-paths-outside-root", action="store_true",
                    help="roundtrip: accept absolute latent paths and paths with '..'")
    a = ap.parse_args(argv)
    if a.guidance is not None and a.guidance < 0:
        ap.error(f"--guidance: need w >= 0, got {a.guidance}")
    if a.direction != "roundtrip" and a.output is None:
        ap.error("--output is required for t2l / l2t")
    from latentDLM_mmdit.checkpointing import CheckpointPolicyError
    from latentDLM_mmdit.config import ConfigError
    from latentDLM_mmdit.data_records import DataError

    try:
        _run(a)
    except DataError as e:
        raise SystemExit(f"bad data: {e}\n(list every bad record: python -m latentDLM_mmdit.data_simple "
                         f"check {e.json_path} --latent-dim D)") from None
    except (ConfigError, CheckpointPolicyError) as e:
        raise SystemExit(f"error: {e}") from None


def _run(a) -> None:
    if a.direction == "roundtrip":
        rep = roundtrip_report(a.checkpoint, a.input, a.n, guidance=a.guidance, latent_root=a.latent_data_root,
                               allow_outside=a.allow_paths_outside_root)
        print(format_report(rep))
        if a.output:
            Path(a.output).write_text(json.dumps(rep, indent=2))
        return
    obj, tok, cfg = load_objective(a.checkpoint, a.device)
    dev = torch.device(a.device)
    if a.direction == "t2l":
        texts = Path(a.input).read_text(encoding="utf-8").splitlines()
        if not texts:
            raise SystemExit(f"{a.input}: no lines to encode")
        from latentDLM_mmdit.data_simple import Collator

        collate = Collator(tok, min(cfg.data.max_seq_len, cfg.model.max_seq_len))  # tokenised as in training
        gen, out = torch.Generator().manual_seed(a.seed), []
        for sl in _batches(len(texts), a.batch_size):
            enc = collate.tokenize(texts[sl])
            out.append(t2l_encode(obj, enc.input_ids.to(dev), enc.attention_mask.to(dev),
                                  a.steps or cfg.sample.t2l_steps, generator=gen).cpu())
        np.save(a.output, torch.cat(out).numpy().astype(np.float32), allow_pickle=False)
    else:
        z = np.load(a.input, allow_pickle=False)
        z = z[None] if z.ndim == 1 else z
        D = cfg.model.latent_dim
        if z.ndim != 2 or z.shape[1] != D:
            raise SystemExit(f"{a.input}: expected latents of shape [N, {D}], got {list(z.shape)}")
        if not 3 <= a.length <= cfg.model.max_seq_len:
            raise SystemExit(f"--length must be in [3, model.max_seq_len={cfg.model.max_seq_len}]")
        lines = []
        for sl in _batches(len(z), a.batch_size):
            lat = torch.from_numpy(z[sl]).float().to(dev)
            mask = torch.ones(lat.shape[0], a.length, dtype=torch.bool, device=dev)
            ids = l2t_decode(obj, lat, mask, a.steps or cfg.sample.l2t_steps or None, a.guidance)
            lines += [" ".join(tok.decode(r, skip_special_tokens=True).split()) for r in ids.cpu().tolist()]
        Path(a.output).write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {a.output}", file=sys.stderr)


if __name__ == "__main__":
    main()
