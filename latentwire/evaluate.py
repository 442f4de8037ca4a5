"""LatentWire's QA evaluation, per LLM (greedy decoding throughout):

- ``text``: the LLM reads the source in its chat template (the original's system prompt, the
  source as the user turn, the anchor as the assistant's prefill; a tokenizer without a chat
  template gets ``[BOS] source + anchor``, the KD teacher's scaffold);
- ``latent``: ``[calibrated adapter(z)][BOS?][anchor]``, exactly the training input;
- ``token_budget``: the text path on k = M tokens (default): ``content_only`` = the source's
  first k tokens in the chat template, ``chat_full`` = the first k tokens of the full text prompt;
- per path: EM / F1 (max over references), first-token top-1 / top-5 against the first gold
  token, and the gold answer's NLL per token (shifted once);
- across LLMs: ``joint`` (each example's latent answers rescored by the sum of every LLM's
  log-probability from its own prefix; the best kept) with ``agreement``, and ``oracle`` (the
  better LLM per example).

Decoding stops at the LLM's EOS / end-of-turn ids or after ``max_new_tokens``; stop ids are banned
for the first ``min_new_tokens`` steps. The cap never looks at the gold answer unless
``gold_length_cap`` asks for the original's behaviour (the longest gold answer of each chunk of
8, in tokens); the report says so when it does.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from tqdm import tqdm

from latentwire import metrics as Mx
from latentwire.collate import _pad, answer_ids, prompt_then_answer, text_prompt
from latentwire.metrics import clean_pred, em_f1, exact_match, f1_score, normalize_answer, payload_bytes, quantize
from latentwire.objective import LatentWireObjective, positions
from mmldlm.eval.samplers import cache_kwarg


@dataclass
class EvalOptions:
    max_new_tokens: int = 12
    min_new_tokens: int = 1
    chunk_size: int = 8
    token_budget_k: int | None = None  # None: M
    calibration: str | None = None  # None: the run's (embed_rms | fixed | train_stats | none)
    prefix_gain: float | None = None  # None: the run's
    latent_quant_bits: int | None = None
    gold_length_cap: bool = False  # the original's decode cap: the chunk's longest gold answer


class Decoded(NamedTuple):
    texts: list[str]
    first_logits: torch.Tensor  # [B, V] the first step's logits (before any ban)


@torch.no_grad()
def greedy(llm, embeds: torch.Tensor, mask: torch.Tensor, tok, stop_ids, max_new: int, min_new: int = 1,
           caps: torch.Tensor | None = None) -> Decoded:
    """Greedy continuations of left-padded ``embeds [B, L, H]`` with the KV cache."""
    B, dev = embeds.shape[0], embeds.device
    stops = torch.tensor(list(stop_ids), device=dev)
    pos = positions(mask)
    from transformers import DynamicCache

    cache = {cache_kwarg(): DynamicCache()}  # the Cache API: filled in place, no legacy kwarg handed back
    out = llm(inputs_embeds=embeds, attention_mask=mask.long(), position_ids=pos, use_cache=True, **cache)
    logits, first = out.logits[:, -1].float(), out.logits[:, -1].float().cpu()
    nxt_pos, done, rows = pos[:, -1:] + 1, torch.zeros(B, dtype=torch.bool, device=dev), []
    for i in range(max_new):
        if i < min_new:
            logits[:, stops] = -torch.inf
        nxt = logits.argmax(-1)
        rows.append(torch.where(done, stops[0], nxt))
        done |= torch.isin(nxt, stops) | (caps is not None and (caps <= i + 1).to(dev))
        if bool(done.all()) or i == max_new - 1:
            break
        mask = torch.cat([mask, mask.new_ones(B, 1)], 1)
        out = llm(input_ids=rows[-1][:, None], attention_mask=mask.long(), position_ids=nxt_pos,
                  use_cache=True, **cache)
        logits, nxt_pos = out.logits[:, -1].float(), nxt_pos + 1
    ids = torch.stack(rows, 1).tolist()
    texts = []
    for r in ids:
        cut = next((j for j, t in enumerate(r) if t in set(stop_ids)), len(r))
        texts.append(clean_pred(tok.decode(r[:cut], skip_special_tokens=True)))
    return Decoded(texts, first)


def budget_prompts(tok, info, sources: list[str], full: list[list[int]], k: int) -> dict[str, list[list[int]]]:
    content = [tok.decode(tok(s, add_special_tokens=False)["input_ids"][:k]) for s in sources]
    return {"content_only": [text_prompt(tok, info, c) for c in content], "chat_full": [p[:k] for p in full]}


class PathStats:
    """Predictions, first-token hits and gold NLL of one path over the dataset."""

    def __init__(self):
        self.preds, self.top1, self.top5, self.nats, self.tokens = [], 0.0, 0.0, 0.0, 0

    def add(self, dec: Decoded, first_gold: torch.Tensor, nll: tuple[float, int] | None = None):
        self.preds += dec.texts
        top5 = dec.first_logits.topk(5, -1).indices
        self.top1 += float((top5[:, 0] == first_gold).sum())
        self.top5 += float((top5 == first_gold[:, None]).any(-1).sum())
        if nll is not None:
            self.nats, self.tokens = self.nats + nll[0], self.tokens + nll[1]

    def report(self, golds) -> dict:
        n = max(1, len(self.preds))
        out = {**em_f1(self.preds, golds), "first_token_top1": self.top1 / n, "first_token_top5": self.top5 / n}
        if self.tokens:
            out["gold_nll_per_token"] = self.nats / self.tokens
        return out


def _nll(logits: torch.Tensor, ans: torch.Tensor, mask: torch.Tensor) -> tuple[float, int]:
    from latentwire.losses import token_ce

    ce = token_ce(logits, ans, mask)
    return float(ce.ce.sum()), int(mask.sum())


@torch.no_grad()
def _model_chunk(obj, n: str, tok, sources: list[str], refs: list[str], z: torch.Tensor, paths: dict,
                 prompts: dict, opts: EvalOptions, k: int) -> tuple[list[str], torch.Tensor]:
    """Every path of LLM ``n`` on one chunk; returns (latent predictions, the latent path's input)."""
    info, llm, dev = obj.infos[n], obj.llms[n], z.device
    emb = llm.get_input_embeddings()
    rows, lens = answer_ids(tok, info, refs, 10_000)
    ans, amask = (t.to(dev) for t in _pad([r[:ln] for r, ln in zip(rows, lens)], info.pad_id))
    first_gold = ans[:, 0].cpu()
    caps = torch.full((len(sources),), max(lens)) if opts.gold_length_cap else None

    def run(embeds, mask):
        return greedy(llm, embeds, mask, tok, info.stop_ids, opts.max_new_tokens, opts.min_new_tokens, caps)

    full = [text_prompt(tok, info, src) for src in sources]
    prompts["tokens"] += [len(p) for p in full]
    prompts["bytes"] += [len(tok.decode(p).encode("utf-8")) for p in full]
    ids, mask = (t.to(dev) for t in _pad(full, info.pad_id, left=True))
    t_ids, t_mask = (t.to(dev) for t in prompt_then_answer(full, ans.cpu(), amask.cpu(), info.pad_id))
    paths["text"].add(run(emb(ids), mask), first_gold,
                      _nll(obj.text_logits(n, t_ids, t_mask, ans.shape[1])[0], ans, amask))
    for mode, budget in budget_prompts(tok, info, sources, full, k).items():
        ids, mask = (t.to(dev) for t in _pad(budget, info.pad_id, left=True))
        paths[mode].add(run(emb(ids), mask), first_gold)
    prefix, _ = obj.prefix(n, quantize(z, opts.latent_quant_bits), torch.tensor(lens, device=dev),
                           opts.calibration, opts.prefix_gain)
    head = obj.head(n, prefix)
    dec = run(head, torch.ones(head.shape[:2], dtype=torch.bool, device=dev))
    paths["latent"].add(dec, first_gold, _nll(obj.answer_logits(n, head, ans, amask)[0], ans, amask))
    return dec.texts, head


@torch.no_grad()
def evaluate_qa(obj: LatentWireObjective, tokenizers: dict, batcher, records: list[dict],
                opts: EvalOptions) -> tuple[dict, list[dict]]:
    """(metrics per model + joint + oracle + wire sizes, per-example predictions)."""
    dev = next(obj.adapters.parameters()).device
    k = opts.token_budget_k or obj.M
    golds = [r["answers"] for r in records]
    paths = {n: {p: PathStats() for p in ("text", "latent", "content_only", "chat_full")} for n in obj.names}
    prompts = {n: {"tokens": [], "bytes": []} for n in obj.names}
    joint_scores = []
    for s in tqdm(range(0, len(records), opts.chunk_size), desc="eval", unit="chunk", mininterval=1.0):
        chunk = records[s: s + opts.chunk_size]
        sources, refs = [r["source"] for r in chunk], [r["answers"][0] for r in chunk]
        batch, _ = batcher.encoder_inputs(sources)
        z_all = obj.encoder({key: v.to(dev) for key, v in batch.items()})
        out = {n: _model_chunk(obj, n, tokenizers[n], sources, refs, z_all[n], paths[n], prompts[n], opts, k)
               for n in obj.names}
        if len(obj.names) > 1:  # every model's latent answer scored by every model, from its own prefix
            scores = torch.zeros(len(chunk), len(obj.names))  # [example, candidate model]
            for c, cand in enumerate(obj.names):
                for scorer in obj.names:
                    tok, info = tokenizers[scorer], obj.infos[scorer]
                    cand_ids = [tok(info.answer_prefix + t, add_special_tokens=False)["input_ids"] or [info.eos_id]
                                for t in out[cand][0]]
                    ans, amask = (t.to(dev) for t in _pad(cand_ids, info.pad_id))
                    logits = obj.answer_logits(scorer, out[scorer][1], ans, amask)[0]
                    scores[:, c] -= _per_row_nll(logits, ans, amask).cpu()
            joint_scores.append(scores)
    return _report(obj, paths, golds, prompts, joint_scores, records, k, opts)


def _per_row_nll(logits, ans, mask) -> torch.Tensor:
    from latentwire.losses import token_ce

    return token_ce(logits, ans, mask).ce.sum(1)


def _report(obj, paths, golds, prompts, joint_scores, records, k, opts):
    wire = payload_bytes(obj.M, obj.encoder_dim)
    out = {"samples": len(records), "chance": Mx.chance(records), "uses_gold_answer_length": bool(obj.metadata),
           "gold_length_cap": opts.gold_length_cap, "latent_shape": [obj.M, obj.encoder_dim],
           "payload_bytes": wire, "models": {}}
    for n in obj.names:
        P = {p: s.report(golds) for p, s in paths[n].items()}
        count = max(1, len(prompts[n]["tokens"]))
        mean_bytes, mean_tokens = sum(prompts[n]["bytes"]) / count, sum(prompts[n]["tokens"]) / count
        out["models"][n] = {
            "text": P["text"], "latent": P["latent"],
            "token_budget": {"k": k, "em": P["content_only"]["em"], "f1": P["content_only"]["f1"],
                             "content_only": P["content_only"], "chat_full": P["chat_full"]},
            "prompt_tokens_mean": mean_tokens, "prompt_bytes_mean": mean_bytes,
            "token_compression": mean_tokens / obj.M,
            "byte_compression": {enc: mean_bytes / b for enc, b in wire.items()}}
    preds = {n: paths[n]["latent"].preds for n in obj.names}
    if len(obj.names) > 1:
        best = torch.cat(joint_scores).argmax(-1).tolist()
        joint = [preds[obj.names[b]][i] for i, b in enumerate(best)]
        agree = sum(len({normalize_answer(preds[n][i]) for n in obj.names}) == 1 for i in range(len(golds)))
        out["joint"] = {**em_f1(joint, golds), "agreement": agree / max(1, len(golds))}
        out["oracle"] = {"em": sum(max(exact_match(preds[n][i], g) for n in obj.names)
                                   for i, g in enumerate(golds)) / max(1, len(golds)),
                         "f1": sum(max(f1_score(preds[n][i], g) for n in obj.names)
                                   for i, g in enumerate(golds)) / max(1, len(golds))}
    examples = [{"id": r.get("id"), "answers": r["answers"],
                 **{f"{n}.{p}": paths[n][p].preds[i] for n in obj.names for p in paths[n]}}
                for i, r in enumerate(records)]
    return out, examples
