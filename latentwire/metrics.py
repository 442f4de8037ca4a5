"""SQuAD answer metrics and the wire size of a latent payload.

EM / F1 follow the official SQuAD v1.1 script: lowercase, strip punctuation, drop the articles
a / an / the, collapse whitespace; F1 is the token-overlap F1 (a Counter intersection); both take
the max over every gold reference. Predictions are cleaned first (:func:`clean_pred`: the first
line, without a leading "Answer:").

Payload: the encoder's ``[M, d_z]`` per example, sent as fp32, fp16 or quantised to ``bits`` with
one fp16 scale per group of 32 values (symmetric absmax), as the original's ``compute_wire_metrics``.
``byte_compression`` = the text prompt's UTF-8 bytes / the payload's bytes: below 1 the latent is
LARGER than the text it replaces (the original's best run: fp16 0.154, i.e. 6.5x larger).
"""
from __future__ import annotations

import math
import re
import string
from collections import Counter

import torch

GROUP = 32
SCALE_BITS = 16
_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCT = set(string.punctuation)


def normalize_answer(s: str) -> str:
    s = "".join(ch for ch in s.lower() if ch not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", s).split())


def clean_pred(s: str) -> str:
    s = s.strip().split("\n")[0].strip()
    return re.sub(r"^(answer\s*:\s*)", "", s, flags=re.IGNORECASE).strip()


def _f1(pred: str, gold: str) -> float:
    p, g = normalize_answer(pred).split(), normalize_answer(gold).split()
    common = sum((Counter(p) & Counter(g)).values())
    if not p or not g:
        return float(p == g)
    if common == 0:
        return 0.0
    precision, recall = common / len(p), common / len(g)
    return 2 * precision * recall / (precision + recall)


def exact_match(pred: str, golds: list[str]) -> float:
    return max(float(normalize_answer(pred) == normalize_answer(g)) for g in golds)


def f1_score(pred: str, golds: list[str]) -> float:
    return max(_f1(pred, g) for g in golds)


def em_f1(preds: list[str], golds: list[list[str]]) -> dict[str, float]:
    n = max(1, len(preds))
    return {"em": sum(exact_match(p, g) for p, g in zip(preds, golds)) / n,
            "f1": sum(f1_score(p, g) for p, g in zip(preds, golds)) / n}


def question_type(source: str, words: int = 4) -> str:
    """A question's type: the first ``words`` words of its ``Question:`` line once the capitalised
    words after the first (names) are dropped, normalised ("Where was Elena Novak born?" ->
    "where was born"; "What is the job of Hiro Tanaka?" -> "what is job of")."""
    line = next((x for x in source.splitlines() if x.startswith("Question:")), source)
    kept = [w for i, w in enumerate(line.removeprefix("Question:").split()) if i == 0 or not w[:1].isupper()]
    return " ".join(normalize_answer(" ".join(kept)).split()[:words])


def chance(records: list[dict], max_candidates: int = 200) -> dict[str, float]:
    """What reading the question type alone can score: per type (:func:`question_type`), the one
    answer (among the type's gold answers, its ``max_candidates`` most frequent) with the best
    mean F1 over that type's records, given to all of them. An upper bound of every predictor that
    sees the question's first words but no context (an answer-type prior)."""
    groups: dict[str, list[list[str]]] = {}
    for r in records:
        groups.setdefault(question_type(r["source"]), []).append(r["answers"])
    em = f1 = 0.0
    for golds in groups.values():
        counts = Counter(a for g in golds for a in dict.fromkeys(g))
        cands = [a for a, _ in counts.most_common(max_candidates)]
        best = max(cands, key=lambda c: (sum(f1_score(c, g) for g in golds), sum(exact_match(c, g) for g in golds)))
        em += sum(exact_match(best, g) for g in golds)
        f1 += sum(f1_score(best, g) for g in golds)
    n = max(1, len(records))
    return {"em": em / n, "f1": f1 / n, "types": len(groups)}


def payload_bytes(M: int, d_z: int) -> dict[str, int]:
    """Bytes of one example's latent per encoding."""
    n = M * d_z
    out = {"fp32": 4 * n, "fp16": 2 * n}
    for bits in (8, 6, 4):
        out[f"int{bits}"] = math.ceil(n * bits / 8) + math.ceil(n / GROUP) * SCALE_BITS // 8
    return out


def quantize(z: torch.Tensor, bits: int | None) -> torch.Tensor:
    """``z [B, M, d]`` as the receiver would see it after sending it with ``bits`` (None: fp32;
    16: fp16; 4..8: symmetric per-group integers with an fp16 scale per 32 values)."""
    if bits is None:
        return z
    if bits == 16:
        return z.half().float()
    if not 2 <= bits <= 8:
        raise ValueError(f"--latent-quant-bits: {bits} (16, 8, 6 or 4)")
    flat = z.float().reshape(z.shape[0], -1)
    pad = (-flat.shape[1]) % GROUP
    g = torch.nn.functional.pad(flat, (0, pad)).view(z.shape[0], -1, GROUP)
    qmax = 2 ** (bits - 1) - 1
    scale = (g.abs().amax(-1, keepdim=True) / qmax).half().float().clamp_min(1e-12)
    deq = (g / scale).round().clamp(-qmax, qmax) * scale
    return deq.view(z.shape[0], -1)[:, : flat.shape[1]].view_as(z).to(z.dtype)
