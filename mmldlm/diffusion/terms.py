"""The per-token terms of a discrete forward process (MDLM, GIDD, HDLM), from a text head or from logits.

A process defines three things:

- ``scored(ids, noisy, attn) -> [B, L] bool``: the positions whose logits its terms read (MDLM:
  the masked ones; HDLM: the noised ones; GIDD: every real token);
- ``token_terms(logits [n, V], x [n], z [n], t [n]) -> (loss [n], report)``: the training loss of
  each scored token and what to report about it, ``report["elbo"]`` (its NELBO term) and
  ``report["loss"]`` (the loss, detached) among it; the rest is summed into the metrics;
- ``summarize(sums, ids, noisy, attn) -> metrics``: the batch metrics from the report's sums.

:func:`head_terms` runs them through :func:`mmldlm.heads.head_loss` (the hidden states of the
scored positions, a chunk at a time: the training path); :func:`logit_terms` on given logits.
Both return :class:`Terms`.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from mmldlm.heads import HeadLoss, head_loss


class Terms(NamedTuple):
    elbo: torch.Tensor  # [B, L] NELBO contribution per token, 0 where not scored (pads)
    loss: torch.Tensor  # [B, L] the training loss per token (detached on the head path), 0 where not scored
    loss_sum: torch.Tensor  # 0-d: the training loss summed over tokens (differentiable)
    metrics: dict  # 0-d, detached


def _terms(process, sel: torch.Tensor, out: HeadLoss, per_token_loss: torch.Tensor, ids, noisy, attn) -> Terms:
    def spread(v: torch.Tensor) -> torch.Tensor:
        return torch.zeros(sel.shape, dtype=v.dtype, device=v.device).masked_scatter(sel, v)

    sums = {k: v.sum() for k, v in out.per_token.items() if k not in ("elbo", "loss")}
    sums["elbo"], sums["loss"] = out.per_token["elbo"].sum(), out.per_token["loss"].sum()
    with torch.no_grad():
        metrics = process.summarize(sums, ids, noisy, attn)
    return Terms(spread(out.per_token["elbo"]), spread(per_token_loss), out.loss, metrics)


def _token_inputs(process, ids, noisy, attn, t):
    sel = process.scored(ids, noisy, attn)
    return sel, (ids[sel], noisy[sel], t.reshape(-1, 1).expand(sel.shape)[sel])


def head_terms(process, hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, ids, noisy, attn,
               t: torch.Tensor, chunk_rows: int | None = None) -> Terms:
    """``process``'s terms from the hidden states ``[B, L, d]`` before a ``weight [V, d]`` head, a
    chunk of scored tokens at a time (no ``[B, L, V]`` logits; ``chunk_rows``: see ``head_loss``)."""
    sel, aux = _token_inputs(process, ids, noisy, attn, t)
    out = head_loss(hidden[sel], weight, bias, process.token_terms, *aux, chunk_rows=chunk_rows)
    return _terms(process, sel, out, out.per_token["loss"], ids, noisy, attn)


def logit_terms(process, logits: torch.Tensor, ids, noisy, attn, t: torch.Tensor) -> Terms:
    """``process``'s terms from logits ``[B, L, >= V]`` (its columns past the process's vocabulary
    ignored); ``loss`` per token stays differentiable."""
    sel, aux = _token_inputs(process, ids, noisy, attn, t)
    loss, report = process.token_terms(logits[sel][:, : process.vocab_size].float(), *aux)
    out = HeadLoss(loss.sum(), {k: v.detach() for k, v in report.items()})
    return _terms(process, sel, out, loss, ids, noisy, attn)
