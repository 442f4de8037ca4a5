"""Losses over a large vocabulary without its ``[tokens, vocab]`` logits: the text heads of every family.

A text head projects hidden states ``[N, d]`` to logits ``[N, V]`` and reduces them to a
per-token loss (cross-entropy, MDLM's weighted CE, GIDD's KL). Done at once, the logits, their
float32 copy, the log-softmax kept for backward and its gradient are each ``N x V``: MDLM small at
batch 64 x 512 and GPT-2's 50,304 rows holds ~6 GiB per copy, more than the rest of the step.

:func:`head_loss` projects and reduces ``chunk_rows`` tokens at a time and computes their
gradients on the spot (the hidden states', the weight's, the bias'), so no more than one chunk of
logits is ever alive; backward only scales the stored gradients by the loss's incoming gradient.
The loss is therefore the *sum* over tokens of ``fn``'s per-token loss (fold any per-token weight
and any normalisation known in advance into ``fn``; divide the sum afterwards). The same tokens,
the same float32 arithmetic per token: loss and gradients equal the whole-logits computation's up
to summation order (tests/test_heads.py). ``chunk_rows=0`` runs that whole-logits computation,
plain autograd, for comparison (tests, ``scripts/bench/bench_heads.py``), and by default where it
is the leaner one (:func:`whole_is_leaner`: a trainable head scoring fewer tokens than its hidden
size, where the chunks' float32 weight gradient would outweigh the logits).

Fused kernels (Liger's fused linear cross-entropy) do the same on a GPU for plain CE; this one is
pure PyTorch, takes any per-token loss, and runs wherever the model runs.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F

CHUNK_BYTES = 256 * 2**20  # float32 logits per chunk: 1,334 tokens at GPT-2's 50,304 rows, 441 at Qwen's 151,936

# fn(logits [n, V] float32, *aux [n, ...]) -> (loss [n], {name: [n]}): the per-token loss and what to report
TokenLoss = Callable[..., tuple[torch.Tensor, dict[str, torch.Tensor]]]


class HeadLoss(NamedTuple):
    loss: torch.Tensor  # 0-d float32: the sum over tokens of fn's loss (differentiable)
    per_token: dict[str, torch.Tensor]  # fn's reports, [N] each, detached


def chunk_rows_for(vocab: int, chunk_bytes: int | None = None) -> int:
    """Tokens per chunk: ``chunk_bytes`` (default :data:`CHUNK_BYTES`) of float32 logits."""
    return max(1, (chunk_bytes or CHUNK_BYTES) // (4 * vocab))


def whole_is_leaner(hidden: torch.Tensor, weight: torch.Tensor, weight_trains: bool) -> bool:
    """Whether the whole logits cost less memory than the chunks: for a trainable head with fewer
    tokens than hidden units. The chunks hold the weight's float32 gradient ``[V, d]`` from the
    forward on, where the whole computation holds its float32 log-probabilities ``[N, V]`` (WeDLM-8B
    full fine-tuning, ~2,048 scored tokens against 4,096 hidden units: 2.3 GiB against 1.2)."""
    return weight_trains and hidden.shape[0] < weight.shape[1]


def _chunks(hidden, weight, bias, fn, rows, needs, aux):
    """(loss sum, reports per chunk, gradients of the loss sum w.r.t. (hidden, weight, bias) where ``needs``)."""
    n = hidden.shape[0]
    total = torch.zeros((), dtype=torch.float32, device=hidden.device)
    reports: list[dict[str, torch.Tensor]] = []
    grads = [torch.empty_like(hidden) if needs[0] else None, torch.zeros_like(weight) if needs[1] else None,
             torch.zeros_like(bias) if needs[2] else None]
    # one leaf for every chunk, in the dtype the chunks' matmuls read it: under autocast its
    # low-precision copy, made once (autocast caches the copy of a leaf that requires grad until its
    # region ends: a leaf per chunk kept a copy per chunk), and each chunk's weight gradient comes
    # in that dtype, added into the float32 sum in place (no float32 copy of it per chunk)
    w = weight.detach()
    kind = hidden.device.type
    if torch.amp.is_autocast_available(kind) and torch.is_autocast_enabled(kind) and w.is_floating_point():
        w = w.to(torch.get_autocast_dtype(kind))
    w.requires_grad_(needs[1])
    b = None if bias is None else bias.detach().requires_grad_(needs[2])
    for start in range(0, n, rows) if n else [0]:  # an empty selection: one empty chunk (the reports' names)
        end = min(start + rows, n)
        with torch.enable_grad():
            h = hidden[start:end].detach().requires_grad_(needs[0])
            loss, report = fn(F.linear(h, w, b).float(), *(a[start:end] for a in aux))
            total += loss.detach().sum()
            reports.append({k: v.detach() for k, v in report.items()})
            wanted = [x for x, need in zip((h, w, b), needs) if need]
            if wanted and end > start:
                got = iter(torch.autograd.grad(loss.sum(), wanted))
                if needs[0]:
                    grads[0][start:end] = next(got)
                for i in (1, 2):
                    if needs[i]:
                        grads[i] += next(got)
    return total, reports, grads


class _ChunkedHead(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, fn, rows, needs, names, *aux):
        total, reports, grads = _chunks(hidden, weight, bias, fn, rows, needs, aux)
        ctx.save_for_backward(*(g if g is not None else torch.empty(0) for g in grads))
        ctx.needs = needs
        names.extend(reports[0])
        outs = [torch.cat([r[k] for r in reports]) for k in names]
        ctx.mark_non_differentiable(*outs)
        return (total, *outs)

    @staticmethod
    def backward(ctx, grad_total, *_):
        grads = [g * grad_total if need else None for g, need in zip(ctx.saved_tensors, ctx.needs)]
        return (*grads, None, None, None, None, *[None] * (len(ctx.needs_input_grad) - 7))


def head_loss(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, fn: TokenLoss, *aux: torch.Tensor,
              chunk_rows: int | None = None) -> HeadLoss:
    """``sum_i fn(hidden[i] @ weight.T + bias, aux[i])`` over the ``N`` rows of ``hidden [N, d]``
    (module docstring); ``aux`` tensors have N rows too. ``chunk_rows``: tokens per chunk (default
    from :data:`CHUNK_BYTES`, or 0 where :func:`whole_is_leaner`), 0 = all logits at once through
    plain autograd."""
    needs = tuple(torch.is_grad_enabled() and t is not None and t.requires_grad for t in (hidden, weight, bias))
    rows = chunk_rows
    if rows is None:  # the default: chunks of CHUNK_BYTES, unless the whole logits are the leaner way
        rows = 0 if whole_is_leaner(hidden, weight, needs[1]) else chunk_rows_for(weight.shape[0])
    if rows == 0:
        loss, report = fn(F.linear(hidden, weight, bias).float(), *aux)
        return HeadLoss(loss.sum(), {k: v.detach() for k, v in report.items()})
    if not any(needs):
        total, reports, _ = _chunks(hidden, weight, bias, fn, rows, needs, aux)
        return HeadLoss(total, {k: torch.cat([r[k] for r in reports]) for k in reports[0]})
    names: list[str] = []
    total, *outs = _ChunkedHead.apply(hidden, weight, bias, fn, rows, needs, names, *aux)
    return HeadLoss(total, dict(zip(names, outs)))


def token_ce(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None):
    """Cross-entropy per token (times ``weight`` per token when given): the ``fn`` of a plain LM head,
    reporting {"loss": the same, detached; "correct": argmax == target}."""
    ce = F.cross_entropy(logits, target, reduction="none")
    if weight is not None:
        ce = ce * weight.to(ce.dtype)
    return ce, {"loss": ce.detach(), "correct": (logits.argmax(-1) == target).float()}
