"""Samplers for every family, written against a denoiser callable so the framework imports no family.

``Denoise(ids [B, L], t [B]) -> logits [B, L, V]``, V = the tokenizer's vocabulary (the caller slices the
model's padded / cluster rows away). All draws are inverse-CDF draws in float64 with one uniform per draw
(:func:`categorical`): float32 Gumbel-max truncates the noise's tail, which lowers the effective temperature
and flatters generative perplexity (Zheng et al., arXiv 2409.02908). Temperature T tempers the predicted
distribution as p^(1/T) (logits / T); T = 0 is argmax. Every sampler runs under ``torch.no_grad()`` and is a
function of its ``torch.Generator`` alone: the uniforms are drawn for every position at every step, whether
used or not, so the stream does not depend on which positions happen to need them.

* MDLM ``ddpm`` (kuleshov-group/mdlm ``diffusion.py:_ddpm_update``; Sahoo et al. 2024): grid t_i = i / steps
  from 1 to 0; from t to s a [MASK] stays with prob mp(s)/mp(t) (mp(t) = (1 - eps) t, the log-linear mask
  probability), else becomes x ~ p(x0 | x_t) with [MASK] and the excluded ids at -inf; clean tokens carry over.
  The last step has s = 0, so it reveals everything (noise removal, by a draw rather than upstream's argmax).
  ``cache=True`` is ``ddpm_cache``: p(x0 | x_t) is reused while no token changed, exact only when the
  denoiser ignores t (time_conditioning off); the caller checks that.
* GIDD (dvruette/gidd v1.1.0 ``gidd/sampling.py:GiddSampler``): from all-[MASK] on t_i = eps + (1 - 2 eps) i
  / steps, the posterior q(z_s = v | z_t, x_hat) ∝ q_{t|s}(z_t | v) q_s(v | x_hat), with
  q_{t|s}(z | v) = alpha_{t|s} [z = v] + (beta pi)_{t|s}(z), alpha_{t|s} = alpha_t / alpha_s,
  (beta pi)_{t|s} = beta_t pi_t - alpha_{t|s} beta_s pi_s and q_s(.|x_hat) = alpha_s x_hat + beta_s pi_s.
  ``min_p`` zeroes posterior entries below min_p (absolute, as upstream) but never the largest. The last step
  goes to s = 0, where q_0(.|x_hat) = x_hat, so no [MASK] is left (upstream's last step is t = s, a no-op).
* HDLM ``mdlm`` parameterisation (jedguz/HDLM ``hdlm/sampling.py:HDLMSampler``, Zhou et al. 2025): same grid
  as GIDD; from t to s a [MASK] becomes a cluster with prob (m_t - m_s) / m_t, the cluster drawn from x_hat
  summed per cluster; a cluster token becomes a word with prob (alpha_s - alpha_t) / c_t (clipped at 1;
  upstream's first-order rate), the word drawn from x_hat restricted to its cluster. In the last step every
  [MASK] draws a cluster and then, as every cluster token, a word (upstream takes the argmax there).
* AR: BOS (or a prefix of input embeddings: the bridge's latent), then x_i ~ p(x_i | x_<i) with or without the
  KV cache (same uniforms, same tokens); EOS after EOS; optionally from the top-p nucleus.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch

from mmldlm.diffusion.masked_text import MaskedTextDiffusion

Denoise = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

_CHUNK = 1 << 24  # float64 elements per row chunk (128 MiB): bounds the float64 copies of [B, L, V] logits


def _row_chunks(n: int, width: int):
    step = max(1, _CHUNK // max(width, 1))
    return (slice(i, i + step) for i in range(0, n, step))


def _uniform(shape, generator, device) -> torch.Tensor:
    return torch.rand(shape, dtype=torch.float64, generator=generator, device=device)


def _draw(weights: torch.Tensor, u: torch.Tensor) -> torch.LongTensor:
    """Inverse CDF: ``weights [n, K]`` >= 0 (unnormalised, float64), ``u [n]`` in [0, 1) -> ids ``[n]``.
    Zero-weight entries are never drawn: x < total picks the first index whose cumulative sum exceeds x."""
    cdf = weights.cumsum(-1)
    total = cdf[:, -1:]
    # u * total can round up to total; the largest double below it still lands on a positive entry
    x = torch.minimum(u[:, None] * total, torch.nextafter(total, torch.zeros_like(total)))
    return torch.searchsorted(cdf, x, right=True).squeeze(-1).clamp_max(weights.shape[-1] - 1)


def _pick(log_w: torch.Tensor, u: torch.Tensor, temperature: float) -> torch.LongTensor:
    """One id per row of the log-weights ``[n, K]`` (-inf = impossible) tempered by ``temperature``, chunked."""
    if temperature == 0:
        return log_w.argmax(-1)
    out = torch.empty(log_w.shape[0], dtype=torch.long, device=log_w.device)
    for sl in _row_chunks(log_w.shape[0], log_w.shape[-1]):
        lw = log_w[sl].double()
        w = ((lw - lw.amax(-1, keepdim=True)) / temperature).exp()
        out[sl] = _draw(w, u[sl])
    return out


def categorical(logits: torch.Tensor | None = None, *, probs: torch.Tensor | None = None,
                temperature: float = 1.0, generator: torch.Generator | None = None) -> torch.LongTensor:
    """One draw per row of ``logits [..., K]`` (softmax(logits / T)) or ``probs [..., K]`` (p^(1/T),
    unnormalised is fine) -> ids ``[...]``. Float64 inverse CDF, one uniform per row; T = 0 is argmax."""
    if (logits is None) == (probs is None):
        raise ValueError("categorical: pass exactly one of logits= and probs=")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    x = logits if logits is not None else probs.double().log()
    flat = x.reshape(-1, x.shape[-1])
    u = _uniform(flat.shape[0], generator, x.device) if temperature > 0 else None
    return _pick(flat, u, temperature).view(x.shape[:-1])


def _start(init: torch.Tensor | None, batch_size: int, length: int, mask_id: int, device) -> torch.LongTensor:
    """The sampler's first state: ``init`` (a copy; [MASK] where to draw), else all [MASK]."""
    if init is None:
        return torch.full((batch_size, length), mask_id, dtype=torch.long, device=device)
    if tuple(init.shape) != (batch_size, length):
        raise ValueError(f"init has shape {tuple(init.shape)}, expected {(batch_size, length)}")
    return init.to(device=device if device is not None else init.device, dtype=torch.long, copy=True)


def _t(value: float, batch_size: int, device) -> torch.Tensor:
    return torch.full((batch_size,), float(value), dtype=torch.float32, device=device)


def _check_logits(logits: torch.Tensor, batch_size: int, length: int, vocab: int) -> None:
    if logits.shape != (batch_size, length, vocab):
        raise ValueError(f"denoise returned logits of shape {tuple(logits.shape)}, expected "
                         f"{(batch_size, length, vocab)} (slice the model's extra rows to the vocabulary)")


@torch.no_grad()
def mdlm_sample(denoise: Denoise, batch_size: int, length: int, steps: int, mask_id: int, excluded: Sequence[int],
                *, temperature: float = 1.0, generator: torch.Generator | None = None, cache: bool = False,
                eps: float = 1e-4, device=None, init: torch.Tensor | None = None) -> torch.LongTensor:
    """MDLM ancestral sampling (``ddpm``, or ``ddpm_cache`` with ``cache=True``): ``[batch_size, length]`` ids,
    none of them [MASK] or excluded. ``cache=True`` is only valid for a denoiser that ignores t. ``init``
    (``[batch_size, length]``): where to start, [MASK] where to draw and a kept token elsewhere (a context)."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    process = MaskedTextDiffusion(mask_id, eps)
    blocked = sorted({mask_id, *excluded})
    ts = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
    z = _start(init, batch_size, length, mask_id, device)
    logits, changed = None, True
    for i in range(steps):
        t, s = ts[i], ts[i + 1]
        if logits is None or changed or not cache:
            logits = denoise(z, _t(t, batch_size, z.device)).to(torch.float32, copy=True)
            _check_logits(logits, batch_size, length, logits.shape[-1])
            logits[..., blocked] = -torch.inf  # SUBS: [MASK] and padding are never clean tokens
        u_reveal = _uniform(z.shape, generator, z.device)
        u_token = _uniform(z.shape, generator, z.device)
        masked = z == mask_id
        # P(revealed between t and s | masked at t) = (mp(t) - mp(s)) / mp(t); s = 0 gives 1 exactly
        mp_t, mp_s = process.mask_prob(t), process.mask_prob(s)
        p_reveal = 1.0 if i == steps - 1 else float((mp_t - mp_s) / mp_t)
        reveal = masked & (u_reveal < p_reveal)
        new = z.clone()
        new[reveal] = _pick(logits[reveal], u_token[reveal], temperature)
        changed = bool(reveal.any())
        z = new
    return z


def _grid(steps: int, eps: float) -> torch.Tensor:
    """Upstream GIDD / HDLM times: eps + (1 - 2 eps) i / steps, i = 0..steps (float64)."""
    return eps + (1 - 2 * eps) * torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64)


@torch.no_grad()
def gidd_sample(denoise: Denoise, process, batch_size: int, length: int, steps: int, *, temperature: float = 1.0,
                min_p: float = 0.0, generator: torch.Generator | None = None, device=None,
                init: torch.Tensor | None = None) -> torch.LongTensor:
    """GIDD ancestral posterior sampling for a :class:`mmldlm.diffusion.gidd.GiddDiffusion` ``process``:
    ``[batch_size, length]`` ids, none of them [MASK] or excluded. ``init``: as :func:`mdlm_sample`; its
    tokens are put back after every step (the posterior would otherwise noise a context too)."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    V, mask_id = process.vocab_size, process.mask_id
    ts = _grid(steps, process.eps)
    z = _start(init, batch_size, length, mask_id, device)
    kept = z != mask_id
    dev = z.device
    blocked = ~process.allowed.to(dev)
    no_probs = torch.zeros(V, dtype=torch.float64, device=dev)
    for i in range(steps, 0, -1):
        t = ts[i].to(dev)
        s = ts[i - 1].to(dev) if i > 1 else torch.zeros((), dtype=torch.float64, device=dev)
        # beta_t pi_t is q_t(.|x) without its alpha_t x part, and alpha_t is the mass it lacks
        beta_t, beta_s = process.marginal_of_probs(no_probs, t), process.marginal_of_probs(no_probs, s)
        alpha_ts = (1 - beta_t.sum()) / (1 - beta_s.sum())
        beta_ts = (beta_t - alpha_ts * beta_s).clamp_min(0)  # >= 0 up to rounding: q_{t|s} is a Markov kernel
        logits = denoise(z, _t(ts[i], batch_size, dev))
        _check_logits(logits, batch_size, length, V)
        flat_logits, flat_z = logits.reshape(-1, V), z.reshape(-1)
        u = _uniform(flat_z.shape, generator, dev)
        new = torch.empty_like(flat_z)
        for sl in _row_chunks(flat_z.shape[0], V):
            lg = flat_logits[sl].double().masked_fill(blocked, -torch.inf)
            if temperature == 0:
                x_hat = torch.zeros_like(lg).scatter_(-1, lg.argmax(-1, keepdim=True), 1.0)
            else:
                x_hat = (lg / temperature).softmax(-1)
            q_s = process.marginal_of_probs(x_hat, s)
            zc = flat_z[sl, None]
            post = beta_ts[zc] * q_s  # every v: the q_{t|s}(z_t | v) term that does not need v = z_t
            post.scatter_add_(-1, zc, alpha_ts * q_s.gather(-1, zc))
            if min_p > 0:
                p = post / post.sum(-1, keepdim=True)
                keep = (p >= min_p) | (p == p.amax(-1, keepdim=True))
                post = post * keep
            new[sl] = _draw(post, u[sl])
        z = torch.where(kept, z, new.view(batch_size, length))
    return z


@torch.no_grad()
def hdlm_sample(denoise: Denoise, process, batch_size: int, length: int, steps: int, *, temperature: float = 1.0,
                generator: torch.Generator | None = None, device=None, init: torch.Tensor | None = None
                ) -> torch.LongTensor:
    """HDLM two-stage sampling (``mdlm`` parameterisation) for a :class:`mmldlm.diffusion.hdlm.HierarchicalDiffusion`
    ``process``: ``[batch_size, length]`` token ids, none of them [MASK], excluded or a cluster id (>= V).
    ``init``: as :func:`mdlm_sample` (words carry over: only [MASK] and cluster tokens move)."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    V, n, mask_id = process.vocab_size, process.n_clusters, process.mask_id
    ts = _grid(steps, process.eps)
    z = _start(init, batch_size, length, mask_id, device)
    dev = z.device
    cluster_of = process.cluster_of.to(dev)  # [V], -1 on [MASK] / excluded ids
    blocked = process.blocked.to(dev)
    live = ~blocked
    for i in range(steps, 0, -1):
        last = i == 1
        alpha_t, c_t, m_t, _, _ = process.schedule(ts[i])
        alpha_s, _, m_s, _, _ = process.schedule(ts[i - 1])
        p_cluster = 1.0 if last else float((m_t - m_s) / m_t)
        p_word = 1.0 if last else float(((alpha_s - alpha_t) / c_t).clamp(max=1))
        logits = denoise(z, _t(ts[i], batch_size, dev))
        _check_logits(logits, batch_size, length, V)
        u_cluster_move, u_cluster, u_word_move, u_word = (_uniform(z.shape, generator, dev) for _ in range(4))
        log_x = logits.float().masked_fill(blocked, -torch.inf)
        new = z.clone()

        # [MASK] -> cluster k ~ sum over the words of k of x_hat (tempered after the sum, as upstream)
        to_cluster = (z == mask_id) & (u_cluster_move < p_cluster)
        rows, u = log_x[to_cluster], u_cluster[to_cluster]
        k = torch.empty(rows.shape[0], dtype=torch.long, device=dev)
        for sl in _row_chunks(rows.shape[0], V):
            x_hat = rows[sl].double().softmax(-1)[:, live]
            mass = torch.zeros(x_hat.shape[0], n, dtype=torch.float64, device=dev)
            mass.index_add_(1, cluster_of[live], x_hat)
            k[sl] = _pick(mass.log(), u[sl], temperature)
        new[to_cluster] = V + k

        # cluster -> word ~ x_hat restricted to the cluster; in the last step the new clusters resolve too
        to_word = (new >= V) & (u_word_move < p_word)
        if not last:
            to_word &= z >= V  # a cluster revealed in this step waits for the next one
        rows = log_x[to_word]
        own = cluster_of[None, :] == (new[to_word] - V)[:, None]  # [rows, V]: the words of each row's cluster
        new[to_word] = _pick(rows.masked_fill(~own, -torch.inf), u_word[to_word], temperature)
        z = new
    return z


def nucleus(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """``logits [B, V]`` with every id outside the smallest set of probability >= ``top_p`` at -inf
    (the most likely id always stays); ``top_p >= 1`` returns them unchanged."""
    if top_p >= 1:
        return logits
    sorted_logits, order = logits.double().sort(-1, descending=True)
    probs = sorted_logits.softmax(-1)
    above = probs.cumsum(-1) - probs  # the mass of the ids ranked above each
    drop = torch.empty_like(above, dtype=torch.bool).scatter_(-1, order, above >= top_p)
    return logits.masked_fill(drop, -torch.inf)


@torch.no_grad()
@functools.cache
def cache_kwarg() -> str:
    """The forward's name of the KV cache: ``cache`` in current transformers, ``past_key_values``
    (deprecated there) in the older releases the pins allow."""
    from transformers.modeling_outputs import CausalLMOutputWithPast

    return "cache" if "cache" in {f.name for f in dataclasses.fields(CausalLMOutputWithPast)} else "past_key_values"


def ar_sample(model, batch_size: int, length: int, bos_id: int | None, eos_id: int, *, temperature: float = 1.0,
              top_p: float = 1.0, generator: torch.Generator | None = None, use_cache: bool = True,
              excluded: Sequence[int] = (), prefix: torch.Tensor | None = None, device=None,
              stop: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.LongTensor:
    """Ancestral sampling from a transformers causal LM: ``[batch_size, length]`` ids, EOS after a row's EOS.
    Without ``prefix`` the first id is ``bos_id``; ``prefix [B, P, H]`` (input embeddings, e.g. the bridge's
    latent prefix) comes before the first id instead, and every one of the ``length`` ids is drawn.
    ``use_cache=False`` runs the whole prefix per token (O(L^2)), the reference the cache must match.
    ``excluded`` ids (e.g. padding) are never drawn; ``top_p`` < 1 draws from the nucleus (:func:`nucleus`).
    ``stop(ids drawn so far [B, n]) -> [B] bool`` ends a row like EOS (e.g. a stop sequence in its text).
    The model runs in eval mode (restored afterwards)."""
    ids = torch.full((batch_size, length), eos_id, dtype=torch.long, device=device)
    first = 0 if prefix is not None else 1
    if prefix is None:
        ids[:, 0] = bos_id
    else:
        prefix = prefix.to(model.get_input_embeddings().weight.dtype)
    done = torch.zeros(batch_size, dtype=torch.bool, device=ids.device)
    was_training = model.training
    model.eval()

    def inputs(i: int) -> dict:
        """The model's input to predict ids[:, i]: everything so far, or with the cache the last id."""
        if use_cache and i > first:
            return {"input_ids": ids[:, i - 1:i]}
        if prefix is None:
            return {"input_ids": ids[:, :i]}
        return {"inputs_embeds": torch.cat([prefix, model.get_input_embeddings()(ids[:, :i])], 1)}

    try:
        from transformers import DynamicCache

        # the Cache API: one cache object the model fills in place (no legacy tuples handed back)
        cache = {cache_kwarg(): DynamicCache()} if use_cache else {}
        for i in range(first, length):
            out = model(**inputs(i), **cache, use_cache=use_cache)
            logits = out.logits[:, -1].float()
            logits[:, list(excluded)] = -torch.inf
            u = _uniform(batch_size, generator, ids.device)  # one per row and position, in both modes
            if temperature > 0:  # tempered before the nucleus is cut, as transformers' generate does
                logits = nucleus(logits / temperature, top_p)
            nxt = torch.where(done, eos_id, _pick(logits, u, 1.0 if temperature > 0 else 0.0))
            ids[:, i] = nxt
            done |= nxt == eos_id
            if stop is not None:
                done |= stop(ids[:, first: i + 1]).to(done.device)
            if bool(done.all()):
                break
    finally:
        model.train(was_training)
    return ids


class Corrected(NamedTuple):
    ids: torch.LongTensor  # [B, L] the corrected samples
    init_acc: torch.Tensor  # [B] agreement of the input with the model's argmax at t0
    final_acc: torch.Tensor  # [B] the same after correction
    changes: torch.Tensor  # [B] tokens replaced
    converged: torch.Tensor  # [B] bool: a step proposed no change
    early_stopped: torch.Tensor  # [B] bool: agreement did not improve for max_patience steps


@torch.no_grad()
def gidd_self_correct(denoise: Denoise, ids: torch.LongTensor, t0: float, *, steps: int = 128, temperature: float = 0.1,
                      tokens_per_step: int = 1, max_patience: int = 32, excluded: Sequence[int] = (),
                      mask_id: int | None = None, generator: torch.Generator | None = None) -> Corrected:
    """GIDD's self-correction (von Rütte et al., 2025, section 5): a model trained with uniform
    noise (p_uniform > 0) can spot wrong tokens in a clean sample. At the fixed noise level ``t0``,
    each step proposes a token for every position from p(x0 | z, t0) at ``temperature``, and
    replaces the ``tokens_per_step`` changed positions the model is most confident of. A row stops
    when no position changes (converged) or when the agreement of the sample with the model's
    argmax has not improved for ``max_patience`` steps (early stop)."""
    B, L = ids.shape
    ids = ids.clone()
    t = torch.full((B,), float(t0), device=ids.device)
    blocked = list(excluded) + ([mask_id] if mask_id is not None else [])

    def predict(x):
        logits = denoise(x, t).float()  # float32 [B, L, V]; the draws themselves are float64
        if blocked:
            logits[..., blocked] = -math.inf
        return logits

    logits = predict(ids)
    init_acc = (logits.argmax(-1) == ids).double().mean(1)
    best, patience = init_acc.clone(), torch.zeros(B, dtype=torch.long, device=ids.device)
    changes = torch.zeros(B, dtype=torch.long, device=ids.device)
    converged = torch.zeros(B, dtype=torch.bool, device=ids.device)
    stopped = torch.zeros(B, dtype=torch.bool, device=ids.device)
    for _ in range(steps):
        active = ~(converged | stopped)
        if not active.any():
            break
        proposal = categorical(logits, temperature=temperature, generator=generator)
        conf = logits.log_softmax(-1).gather(-1, proposal.unsqueeze(-1)).squeeze(-1)
        changed = (proposal != ids) & active.unsqueeze(1)
        converged |= active & ~changed.any(1)
        conf = torch.where(changed, conf, -math.inf)
        k = min(tokens_per_step, L)
        top = conf.topk(k, dim=1)
        take = torch.zeros_like(changed).scatter_(1, top.indices, True) & changed
        ids = torch.where(take, proposal, ids)
        changes += take.sum(1)
        logits = predict(ids)
        acc = (logits.argmax(-1) == ids).double().mean(1)
        improved = acc > best
        best = torch.where(improved, acc, best)
        patience = torch.where(improved | ~active, torch.zeros_like(patience), patience + 1)
        stopped |= active & ~converged & (patience >= max_patience)
    final_acc = (logits.argmax(-1) == ids).double().mean(1)
    return Corrected(ids, init_acc, final_acc, changes, converged, stopped)
