"""Why the latent path does (not) fit: collapse diagnostics of a LatentWire objective on QA records.

    python -m latentwire.diagnose [latentwire/train.py's flags] [--ckpt RUN_DIR] [--json OUT]

Builds the objective the flags describe (fresh, seeded as training) or every checkpoint of
``--ckpt RUN_DIR`` (one row per saved step: train with ``--save_every N logging.keep_last=K``),
and prints, per LLM, on the records the flags select:

- **geometry** of the encoder's latents ``z`` and of the calibrated prefixes across examples:
  the mean pairwise cosine of the flattened ``[M x d]`` rows, the *between-example share* (the
  energy of the rows minus their mean over the set, over their whole energy: 0 = every example
  sends the same prefix), the effective dimension (participation ratio of the centered rows'
  singular values, at most N - 1), and the mean cosine between the M slots of one example;
- **scale**: the prefix slots' norms against the receiver's token-embedding norms, and each
  slot's cosine to its nearest token embedding;
- **gradients** on one batch: the norm of each loss term's gradient at the calibrated prefix, at
  the adapter's raw output and at ``z`` (what the encoder receives), the *per-example share* of
  the gradient at ``z`` (its energy once the batch mean is removed: the part that can make one
  example's latent differ from another's), the share of the prefix gradient that calibration
  discards (radial), each term's cosine to the CE terms' gradient at ``z``, and the encoder's
  and adapter's parameter-gradient norms;
- **byte encoder stages** (``--encoder-type byte``): the share of the byte features' energy that
  varies along a source (0: every position holds one vector), the between-example share of their
  mean over the source and of the pooler's attention output, and that output's norm against the
  learned queries' norm;
- **first token**: the latent path's first-token CE and top-1 against the *prior*, the entropy
  of the gold first tokens over the records (the CE of the best input-independent guess, and its
  top-1: the share of the most common first token), the receiver reading no prefix at all, and
  the KD teacher (the receiver reading the text).

A latent path whose first-token CE sits at the prior with a between-example share near 0 carries
the answer *type*, not the answer (latentwire/README.md, "Why the latent path did not fit").
"""
from __future__ import annotations

import math
import sys
from collections import Counter
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F

from latentwire import losses as L

SIGN_STEPS = (1e-4, 1e-3)  # the lr of the one-update probe (:func:`sign_step`)


class Geometry(NamedTuple):
    cos: float  # mean pairwise cosine between examples' flattened rows
    between: float  # energy of the rows minus their mean / their energy (0: one prefix for all)
    eff_dim: float  # participation ratio of the centered rows' singular values (<= N - 1)
    slot_cos: float  # mean cosine between the slots of one example


def geometry(x: torch.Tensor) -> Geometry:
    """:class:`Geometry` of ``x [N, M, d]`` (N >= 2 examples)."""
    x = x.detach().double()
    N, M = x.shape[:2]
    if N < 2:
        raise ValueError("geometry: needs at least 2 examples")
    flat = x.flatten(1)
    unit = F.normalize(flat, dim=-1)
    cos = unit @ unit.T
    centered = flat - flat.mean(0)
    energy = flat.pow(2).sum().clamp_min(1e-300)
    s2 = torch.linalg.svdvals(centered).pow(2)
    eff = float(s2.sum() ** 2 / s2.pow(2).sum()) if float(s2.sum()) > 1e-12 * float(energy) else 0.0
    slots = F.normalize(x, dim=-1)
    sc = slots @ slots.transpose(1, 2)
    slot_cos = float((sc.sum((1, 2)) - sc.diagonal(dim1=1, dim2=2).sum(-1)).mean() / max(1, M * (M - 1))) \
        if M > 1 else 1.0
    return Geometry(float((cos.sum() - cos.diagonal().sum()) / (N * (N - 1))), float(centered.pow(2).sum() / energy),
                    eff, slot_cos)


@torch.no_grad()
def scale_stats(prefix: torch.Tensor, emb: torch.Tensor, chunk: int = 8192) -> dict:
    """The prefix slots' norms against the token embeddings' norms, and the mean cosine of each
    slot to its nearest token embedding (``emb [V, d]``)."""
    slots = prefix.detach().float().reshape(-1, prefix.shape[-1])
    norms = slots.norm(dim=-1)
    tok_norms, best = [], torch.full((slots.shape[0],), -1.0)
    unit = F.normalize(slots, dim=-1)
    for i in range(0, emb.shape[0], chunk):
        w = emb[i: i + chunk].detach().float()
        tok_norms.append(w.norm(dim=-1))
        best = torch.maximum(best, (unit @ F.normalize(w, dim=-1).T).amax(-1).cpu())
    tn = torch.cat(tok_norms)
    return {"slot_norm_mean": float(norms.mean()), "slot_norm_min": float(norms.min()),
            "slot_norm_max": float(norms.max()), "token_norm_mean": float(tn.mean()),
            "token_norm_std": float(tn.std()), "nearest_token_cos": float(best.mean())}


def _share(g: torch.Tensor) -> float:
    """The per-example share of a batch gradient ``[B, ...]``: its energy once the batch mean is removed."""
    g = g.detach().double().flatten(1)
    total = float(g.pow(2).sum())
    return float((g - g.mean(0)).pow(2).sum()) / total if total > 0 else 0.0


def _radial(g: torch.Tensor, p: torch.Tensor) -> float:
    """The share of ``g``'s energy along each example's own ``p`` (what per-example calibration discards)."""
    g, p = g.detach().double().flatten(1), p.detach().double().flatten(1)
    along = (g * F.normalize(p, dim=-1)).sum(-1).pow(2).sum()
    total = float(g.pow(2).sum())
    return float(along) / total if total > 0 else 0.0


def gradient_flow(obj, n: str, batch: dict, teacher, step: int = 0) -> dict:
    """The gradients each loss term sends back from LLM ``n`` through the prefix, the calibration
    and the adapter to the encoder, on ``batch`` (module docstring)."""
    was = obj.training
    obj.train()
    z = obj.encoder(batch)[n]
    prefix, raw = obj.prefix(n, z, batch.get(f"{n}.answer_len"))
    counts = _counts(obj, n, batch)
    terms = obj.prefix_terms(n, prefix, raw, batch, counts, teacher)
    loss, w_first = obj.weighted(terms, step)
    lc = obj.lcfg
    weights = {"tf": lc.tf_weight, "first": float(w_first), "kce": lc.k_ce_weight, "kd": lc.kd_first_k_weight,
               "state": lc.state_kd_weight}
    names = [k for k in ("tf", "first", "kce", "kd", "state") if k in terms and weights[k] > 0]
    out: dict = {"terms": {}}
    g_z = {}
    for k in names:
        gp, gr, gz = torch.autograd.grad(weights[k] * terms[k], [prefix, raw, z], retain_graph=True)
        g_z[k] = gz.detach()
        out["terms"][k] = {"value": float(terms[k].detach()), "weight": weights[k], "grad_prefix": float(gp.norm()),
                           "grad_raw": float(gr.norm()), "grad_z": float(gz.norm()),
                           "z_per_example_share": _share(gz), "prefix_radial_share": _radial(gp, prefix)}
    ce = sum(g_z[k] for k in names if k in ("tf", "first", "kce"))
    for k in names:
        denom = float(g_z[k].norm() * ce.norm()) if torch.is_tensor(ce) else 0.0
        out["terms"][k]["cos_to_ce_at_z"] = float((g_z[k] * ce).sum()) / denom if denom > 0 else 0.0
    obj.zero_grad(set_to_none=True)
    loss.backward()
    enc = [p.grad for p in obj.encoder.parameters() if p.grad is not None]
    ada = [p.grad for p in obj.adapters[n].parameters() if p.grad is not None]
    out["param_grad_encoder"] = float(torch.cat([g.flatten() for g in enc]).norm()) if enc else 0.0
    out["param_grad_adapter"] = float(torch.cat([g.flatten() for g in ada]).norm()) if ada else 0.0
    obj.zero_grad(set_to_none=True)
    obj.train(was)
    return out


def sign_step(obj, n: str, batches: list[dict], lr: float, seed: int = 0, common: bool = False) -> Geometry:
    """The latents' :class:`Geometry` after ONE sign step of size ``lr`` on the encoder (Adam's
    first update is one) along a random gradient at ``z`` with no common part (zero mean over the
    examples; ``common``: with the random draw's own mean left in): how much per-example content a
    single update leaves, whatever the loss."""
    import copy

    enc = copy.deepcopy(obj.encoder).train()
    z = torch.cat([enc(b)[n] for b in batches])
    g = torch.randn(z.shape, generator=torch.Generator().manual_seed(seed)).to(z)
    (z * (g if common else g - g.mean(0))).sum().backward()
    with torch.no_grad():
        for p in enc.parameters():
            if p.grad is not None:
                p -= lr * p.grad.sign()
        enc.eval()
        return geometry(torch.cat([enc(b)[n] for b in batches]))


class FirstToken(NamedTuple):
    ce: float  # the latent path's mean first-token CE
    top1: float
    prior_ce: float  # entropy of the gold first tokens over the records (the best input-blind CE)
    prior_top1: float  # the share of the most common gold first token
    no_prefix_ce: float  # the receiver reading [BOS?][anchor] only
    teacher_ce: float | None  # the KD teacher (the receiver reading the text)
    teacher_top1: float | None


@torch.no_grad()
def first_token(obj, n: str, batches: list[dict], teachers: list | None = None) -> FirstToken:
    """The latent path's first-token CE and top-1 against the prior (module docstring)."""
    ces, hits, golds, blind, t_ces, t_hits = [], [], [], [], [], []
    for i, b in enumerate(batches):
        ans, mask = b[f"{n}.answer"], b[f"{n}.answer_mask"]
        z = obj.encoder(b)[n]
        prefix, _ = obj.prefix(n, z, b.get(f"{n}.answer_len"))
        logits = obj.answer_logits(n, obj.head(n, prefix), ans[:, :1], mask[:, :1])[0][:, 0].float()
        ces.append(F.cross_entropy(logits, ans[:, 0], reduction="none"))
        hits.append(logits.argmax(-1) == ans[:, 0])
        golds += ans[:, 0].tolist()
        empty = obj.head(n, prefix[:, :0])
        nl = obj.answer_logits(n, empty, ans[:, :1], mask[:, :1])[0][:, 0].float()
        blind.append(F.cross_entropy(nl, ans[:, 0], reduction="none"))
        t = teachers[i] if teachers is not None else obj.teacher_targets(n, b)
        if t is not None:
            tl = t[0][:, 0].float()
            t_ces.append(F.cross_entropy(tl, ans[:, 0], reduction="none"))
            t_hits.append(tl.argmax(-1) == ans[:, 0])
    counts = Counter(golds)
    total = len(golds)
    prior = -sum(c / total * math.log(c / total) for c in counts.values())
    return FirstToken(float(torch.cat(ces).mean()), float(torch.cat(hits).float().mean()), prior,
                      max(counts.values()) / total, float(torch.cat(blind).mean()),
                      float(torch.cat(t_ces).mean()) if t_ces else None,
                      float(torch.cat(t_hits).float().mean()) if t_hits else None)


@torch.no_grad()
def latents(obj, n: str, batches: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
    """(z [N, M, d_z], calibrated prefixes [N, M, d_model]) of every record, in eval mode."""
    was = obj.training
    obj.eval()
    zs, ps = [], []
    for b in batches:
        z = obj.encoder(b)[n]
        zs.append(z)
        ps.append(obj.prefix(n, z, b.get(f"{n}.answer_len"))[0])
    obj.train(was)
    return torch.cat(zs), torch.cat(ps)


@torch.no_grad()
def byte_stages(encoder, batches: list[dict]) -> dict | None:
    """Where a byte encoder's latents lose what makes sources differ (None for another encoder):
    ``position_share``, the energy of the byte features minus their mean over the source, over
    their energy; the :class:`Geometry` of those means (``pooled``) and of the shared pooler's
    attention output (``attention``); the mean norms of that output and of the queries."""
    from mmldlm.nn import masked_mean

    pooler = getattr(encoder, "shared_pooler", None)
    if pooler is None:
        return None
    pooled, attended, varying, energy = [], [], 0.0, 0.0
    for b in batches:
        ids, mask = b["bytes"], b["bytes_mask"]
        feats = encoder.backbone(ids, mask).float()
        mean = masked_mean(feats, mask)
        varying += float((feats - mean[:, None]).pow(2)[mask].sum())
        energy += float(feats.pow(2)[mask].sum())
        q = pooler.latent.unsqueeze(0).expand(ids.shape[0], -1, -1).to(feats.dtype)
        out, _ = pooler.cross_attn(q, feats, feats, key_padding_mask=~mask, need_weights=False)
        pooled.append(mean.unsqueeze(1))
        attended.append(out)
    attended = torch.cat(attended)
    return {"position_share": varying / energy, "pooled": geometry(torch.cat(pooled))._asdict(),
            "attention": geometry(attended)._asdict(), "attention_norm": float(attended.norm(dim=-1).mean()),
            "query_norm": float(pooler.latent.norm(dim=-1).mean())}


def diagnose(obj, batches: list[dict], step: int = 0, teachers: dict | None = None) -> dict:
    """Every diagnostic of the module docstring, per LLM of ``obj``; ``teachers``: per LLM, the
    batches' :meth:`~latentwire.objective.LatentWireObjective.teacher_targets` (None: computed)."""
    out = {}
    stages = byte_stages(obj.encoder, batches)
    for n in obj.names:
        tl = (teachers or {}).get(n) or [obj.teacher_targets(n, b) for b in batches]
        z, prefix = latents(obj, n, batches)
        out[n] = {"z": geometry(z)._asdict(), "prefix": geometry(prefix)._asdict(),
                  "scale": {"embed_rms": obj.emb_rms[n],
                            **scale_stats(prefix, obj.llms[n].get_input_embeddings().weight)},
                  "grad": gradient_flow(obj, n, batches[0], tl[0], step),
                  "z_after_one_sign_step": {f"{lr:g}{' +common' if c else ''}": sign_step(obj, n, batches, lr,
                                                                                      common=c)._asdict()
                                            for lr in SIGN_STEPS for c in (False, True)},
                  "first_token": first_token(obj, n, batches, tl)._asdict(), "byte_stages": stages}
    return out


def render(step: int, d: dict) -> str:
    """One block of text per LLM."""
    lines = []
    for n, r in d.items():
        z, p, s, f, g = r["z"], r["prefix"], r["scale"], r["first_token"], r["grad"]
        lines.append(f"[step {step}] {n}")
        rows = [("z", z), ("prefix", p)] + [(f"z, 1 step {lr}", x) for lr, x in r["z_after_one_sign_step"].items()]
        for name, x in rows:
            lines.append(f"  {name:<16} cos between examples {x['cos']:.4f} | between-example share {x['between']:.2e} "
                         f"| effective dim {x['eff_dim']:.2f} | slot cos {x['slot_cos']:.3f}")
        lines.append(f"  scale   slot norm {s['slot_norm_mean']:.3f} ({s['slot_norm_min']:.3f}-"
                     f"{s['slot_norm_max']:.3f}) vs token norm {s['token_norm_mean']:.3f} +- "
                     f"{s['token_norm_std']:.3f} | nearest token cos {s['nearest_token_cos']:.3f}")
        if (b := r["byte_stages"]) is not None:
            lines.append(f"  bytes   position share {b['position_share']:.3f} | mean over the source: between share "
                         f"{b['pooled']['between']:.2e} | pooler attention: between share "
                         f"{b['attention']['between']:.2e}, norm {b['attention_norm']:.2f} (queries "
                         f"{b['query_norm']:.2f})")
        teacher = (f" | teacher (text) CE {f['teacher_ce']:.2f} top1 {f['teacher_top1']:.3f}"
                   if f["teacher_ce"] is not None else "")
        lines.append(f"  first   latent CE {f['ce']:.2f} top1 {f['top1']:.3f} | prior CE {f['prior_ce']:.2f} top1 "
                     f"{f['prior_top1']:.3f} | no prefix CE {f['no_prefix_ce']:.2f}{teacher}")
        for k, t in g["terms"].items():
            lines.append(f"  grad {k:<5} (x{t['weight']:.2f} = {t['value'] * t['weight']:.3f}) prefix "
                         f"{t['grad_prefix']:.3e} raw {t['grad_raw']:.3e} z {t['grad_z']:.3e} | per-example share "
                         f"at z {t['z_per_example_share']:.3f} | radial {t['prefix_radial_share']:.3f} | cos to CE "
                         f"{t['cos_to_ce_at_z']:+.3f}")
        lines.append(f"  params  encoder grad {g['param_grad_encoder']:.3e} | adapter grad "
                     f"{g['param_grad_adapter']:.3e}")
    return "\n".join(lines)


def _counts(obj, n: str, batch: dict) -> L.Counts:
    return L.counts(batch[f"{n}.answer_mask"], obj.max_answer + 1)


def receiver_fit(obj, batches: list[dict], teachers: dict, steps: int, lr: float, every: int = 20,
                 seed: int = 0) -> list[dict]:
    """Can the receiver side fit at all? Every record gets a FIXED random latent (``N(0, 1)``, so
    the latents differ as much as latents can) and only the adapters train (AdamW at ``lr``, the
    objective's loss, the batches in a seeded order): rows of (step, loss terms, first-token top-1
    over every record). The objective's adapters are restored afterwards."""
    import copy

    state = copy.deepcopy(obj.adapters.state_dict())
    gen = torch.Generator().manual_seed(seed)
    table = [torch.randn(b["index"].shape[0], obj.M, obj.encoder_dim, generator=gen) for b in batches]
    opt = torch.optim.AdamW(obj.adapters.parameters(), lr=lr)
    rows, step = [], 0
    obj.train()
    while step < steps:
        for i in torch.randperm(len(batches), generator=gen).tolist():
            loss, terms = 0.0, {}
            for n in obj.names:
                terms = obj.model_terms(n, table[i], batches[i], _counts(obj, n, batches[i]), teachers[n][i])
                loss = loss + obj.weighted(terms, step)[0] / len(obj.names)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            if step % every == 0 or step == steps:
                with torch.no_grad():
                    hits = [float(obj.model_terms(n, table[j], b, _counts(obj, n, b))["first_acc"])
                            * b["index"].shape[0] for n in obj.names for j, b in enumerate(batches)]
                total = sum(b["index"].shape[0] for b in batches) * len(obj.names)
                rows.append({"step": step, "loss": float(loss.detach()), "first_top1": sum(hits) / total,
                             **{k: float(v.detach()) for k, v in terms.items() if k in ("tf", "first", "kd")}})
                print(f"  receiver fit, fixed latents, lr {lr:g}: step {step} loss {rows[-1]['loss']:.3f} first-token "
                      f"top1 {rows[-1]['first_top1']:.3f}", flush=True)
            if step >= steps:
                break
    obj.adapters.load_state_dict(state)
    return rows


def _batches(cfg, obj, records: list[dict]) -> list[dict]:
    from latentwire.objective import collator

    collate, B = collator(cfg, obj.sources), cfg.training.train_batch_size
    return [collate([{"index": i + j, "record": r} for j, r in enumerate(records[i: i + B])]).batch
            for i in range(0, len(records), B)]


def main(argv: list[str] | None = None) -> dict:
    from latentwire.cli import train_config, train_parser
    from latentwire.data import load_qa
    from mmldlm.argtypes import nonneg_int

    ap = train_parser()
    ap.prog, ap.description = "python -m latentwire.diagnose", __doc__
    g = ap.add_argument_group("diagnostics")
    g.add_argument("--ckpt", default=None, help="a run directory: every checkpoint it holds (default: a fresh "
                                                "objective built from the flags, seeded as training)")
    g.add_argument("--json", default=None, help="also write the figures here")
    g.add_argument("--receiver-fit", type=nonneg_int, default=0, metavar="STEPS",
                   help="also train the adapters alone on fixed random latents for STEPS steps (at the lr): can "
                        "the receiver side fit these records when the latents differ?")
    args, rest = ap.parse_known_args(sys.argv[1:] if argv is None else argv)
    cfg = train_config(args, rest)
    records = load_qa(args.dataset, args.data_file, args.samples, args.data_seed)
    out = {}
    if args.ckpt is None:
        from mmldlm.sources import build_loaded

        torch.manual_seed(cfg.training.seed)
        obj = build_loaded(cfg)
        states = [(0, obj)]
    else:
        from mmldlm.sources import LoadPolicy
        from mmldlm.train.checkpointing import list_checkpoints
        from mmldlm.train.rebuild import rebuild_from_checkpoint

        found = list_checkpoints(Path(args.ckpt))
        if not found:
            raise SystemExit(f"error: --ckpt {args.ckpt}: no checkpoints in it")
        policy = LoadPolicy(paths={f"llm.{s.name}": s.path for s in cfg.model.llms})
        states = ((step, rebuild_from_checkpoint(path, "cpu", policy, expect="latentwire", ema=False)[0])
                  for step, path in found)
    teachers = None
    for step, obj in states:
        batches = _batches(cfg, obj, records)
        if teachers is None:  # the receiver is frozen: its targets are the same for every checkpoint
            teachers = {n: [obj.teacher_targets(n, b) for b in batches] for n in obj.names}
        out[step] = diagnose(obj, batches, step, teachers)
        print(render(step, out[step]), flush=True)
        if args.receiver_fit and args.ckpt is None:
            out[step]["receiver_fit"] = receiver_fit(obj, batches, teachers, args.receiver_fit, cfg.optimizer.lr)
    if args.json:
        from mmldlm.io import write_json_atomic

        write_json_atomic(Path(args.json), out, indent=2)
    return out


if __name__ == "__main__":
    main()
