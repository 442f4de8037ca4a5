"""Hierarchical diffusion (HDLM; Zhou et al., NeurIPS 2025, arXiv 2510.08632): token -> its cluster -> [MASK].

Each token x has a cluster c(x) in 0..n-1; cluster k is the input token ``vocab_size + k``, so the model
embeds ``num_states = V + n`` ids and predicts V token logits. Forward CTMC: token -> cluster at rate
``gamma / (1 - t)``, cluster -> [MASK] at rate ``1 / (1 - t)``, whose marginals are

    alpha_t = (1 - t)^gamma                                         the token itself
    c_t     = gamma (1 - t) (1 - (1 - t)^(gamma - 1)) / (gamma - 1)   its cluster  (-(1 - t) log(1 - t) at gamma = 1)
    m_t     = 1 - alpha_t - c_t                                     [MASK]       (t + (1 - t) log(1 - t) at gamma = 1)

Stochastic perturbation, ``xi = 1 - p_perturb``: the cluster state is c(x) with probability xi and each of the
other n - 1 clusters with (1 - xi) / (n - 1). With p(y) = softmax(logits) and p(k) its mass on cluster k, the
continuous-time NELBO per token is (clean tokens contribute 0)

    [MASK]:     w_mask    * -log p(c(x))        w_mask    = m_t' / m_t = c_t / ((1 - t) m_t)    (-log(1 - t) / m_t)
    cluster c:  w_cluster * -log p(x | c)       w_cluster = -alpha_t' / c_t = gamma (1 - t)^(gamma - 1) / c_t  (1 / c_t)

(``force_transitting_within`` = p renormalised to the observed cluster; without it the cluster term is the plain
cross-entropy, a looser bound). ``simplified`` is upstream's approximate ELBO, the one that handles xi < 1: with
``r = (1 - xi) / (xi (n - 1))`` and ``l = -log(p(c(x)) + r (1 - p(c(x))))``, [MASK] scores ``w_mask xi l``, the
true cluster ``w_cluster (-log p(x) - l)`` (exact) and a wrong cluster ``w_cluster (-log p(x))`` (drops a
non-negative term). At xi = 1 it equals the strict ELBO. Training weights are the ELBO weights clipped to
``[min_loss_weight, max_loss_weight]`` (upstream's "clip" = "dynamic"). With n = 1 the [MASK] term is 0 and the
cluster token acts as MDLM's mask (same expected ELBO per t, scored only at the c_t fraction of positions).

Source: jedguz/HDLM (fork of zhouc20/HDLM) ``hdlm/diffusion_process.py`` HierarchicalDiffusion and ``hdlm/loss.py``
HDLMLoss, read at 9d940b2 and 1760314 (line numbers: 1760314). Differences, on purpose: the [MASK] weight has the
``1 / (gamma - 1)`` that ``loss.py:164`` lacks (right there only for gamma in {1, 2}, negative for gamma < 1);
perturbed cluster probabilities sum to 1 (``diffusion_process.py:212-215`` loses ``c_t p / n``, which the sampler
gives to the last cluster); weights are exact float64 values (no ``m_t >= 1e-4`` clip); padding is never noised.
No second output head: upstream's auxiliary cluster head only feeds ``auxiliary_loss_weight``, 0 in every config.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch


def load_clusters(path: str, vocab_size: int) -> torch.LongTensor:
    """The cluster dict at ``path``: ``[vocab_size]`` int64 cluster ids 0..n-1 (``.pt``: a plain tensor, upstream's
    format, read with ``weights_only=True``; ``.npy``: read with ``allow_pickle=False``). ValueError otherwise."""
    p = Path(path)
    where = f"cluster dict {p}"
    if not p.is_file():
        raise ValueError(f"{where}: not found (build one with python -m baseline.build_clusters)")
    suffix = p.suffix.lower()
    if suffix not in (".pt", ".npy"):
        raise ValueError(f"{where}: unknown file type {suffix!r}; expected .pt or .npy")
    try:
        if suffix == ".npy":
            obj = np.load(p, allow_pickle=False)
        else:
            obj = torch.load(p, map_location="cpu", weights_only=True)
    except ValueError as e:
        if "allow_pickle" in str(e):  # an object array: refused, pickle can run code
            raise ValueError(f"{where}: refused: it holds Python objects (pickle), and .npy cluster dicts "
                             "are read with allow_pickle=False; save a plain integer array") from None
        raise ValueError(f"{where}: unreadable: {str(e).splitlines()[0]}") from None
    except Exception as e:  # noqa: BLE001 - torch.load raises many types (UnpicklingError, RuntimeError, ...)
        raise ValueError(f"{where}: unreadable as {suffix}: {type(e).__name__}: "
                         f"{(str(e).splitlines() or [''])[0]}") from None
    if isinstance(obj, np.ndarray):
        obj = torch.from_numpy(obj)
    if not isinstance(obj, torch.Tensor):
        raise ValueError(f"{where}: holds a {type(obj).__name__}, not a 1-D integer array")
    if obj.dim() != 1 or obj.is_floating_point() or obj.is_complex() or obj.dtype == torch.bool:
        raise ValueError(f"{where}: not a 1-D integer array (shape {tuple(obj.shape)}, dtype {obj.dtype})")
    if obj.numel() != vocab_size:
        raise ValueError(f"{where}: {obj.numel()} entries, but the tokenizer has {vocab_size} tokens: "
                         "the clusters were built for another tokenizer")
    ids = obj.long()
    if ids.min() < 0:
        raise ValueError(f"{where}: cluster ids must be 0..n-1, found {ids.min().item()}")
    empty = (torch.bincount(ids) == 0).nonzero().flatten().tolist()
    if empty:
        raise ValueError(f"{where}: cluster ids are not contiguous 0..{ids.max().item()}: "
                         f"{len(empty)} empty cluster(s), e.g. {empty[:8]}")
    return ids


class HierarchicalDiffusion:
    def __init__(self, vocab_size: int, mask_id: int, cluster_of: torch.LongTensor, gamma: float = 1.0,
                 p_perturb: float = 0.0, eps: float = 1e-4, simplified: bool = False,
                 force_transitting_within: bool = True, min_loss_weight: float = 0.0, max_loss_weight: float = 2.0,
                 excluded_ids: Sequence[int] = ()):
        if not gamma > 0:
            raise ValueError(f"model.gamma must be > 0, got {gamma}")
        if not 0 <= p_perturb < 1:
            raise ValueError(f"model.p_perturb must be in [0, 1) (xi = 1 - p_perturb), got {p_perturb}")
        # The strict ELBO's cluster-position term assumes a cluster token came from one of its own tokens; with
        # p_perturb > 0 it can come from any token, so upstream requires the approximate ("simplified") ELBO,
        # whose xi-correction covers in- and out-of-cluster positions (upstream asserts, loss.py:146-147).
        if p_perturb > 0 and not simplified:
            raise ValueError(f"model.p_perturb={p_perturb} (xi < 1) needs loss.simplified=True: the strict ELBO "
                             "has no term for a token perturbed into a wrong cluster")
        if not 0 < eps < 0.5:
            raise ValueError(f"model.t_eps must be in (0, 0.5), got {eps}")
        if not (0 <= min_loss_weight <= max_loss_weight and max_loss_weight > 0):
            raise ValueError(f"loss.min_loss_weight / loss.max_loss_weight must satisfy 0 <= min <= max, max > 0; "
                             f"got {min_loss_weight} / {max_loss_weight}")
        if not 0 <= mask_id < vocab_size:
            raise ValueError(f"mask_id {mask_id} is not a token id < vocab_size {vocab_size}")
        blocked = torch.zeros(vocab_size, dtype=torch.bool, device=cluster_of.device)  # beside the clusters (CPU)
        blocked[mask_id] = True
        for i in excluded_ids:
            if not 0 <= int(i) < vocab_size:
                raise ValueError(f"excluded id {i} is not a token id < vocab_size {vocab_size}")
            blocked[int(i)] = True
        cluster_of = torch.as_tensor(cluster_of, device=blocked.device)  # not moved by a default-device context
        if cluster_of.shape != (vocab_size,) or cluster_of.is_floating_point():
            raise ValueError(f"cluster_of must be an integer tensor [{vocab_size}], got {cluster_of.dtype} "
                             f"{tuple(cluster_of.shape)}")
        # mask / pad entries of the dict are ignored: those tokens are never noised and never predicted
        cluster_of = torch.where(blocked, torch.full_like(cluster_of, -1), cluster_of.long())
        live = cluster_of[~blocked]
        if live.numel() == 0 or live.min() < 0:
            raise ValueError("every token id except mask_id and excluded_ids needs a cluster id >= 0")
        self.n_clusters = int(live.max()) + 1
        empty = (torch.bincount(live, minlength=self.n_clusters) == 0).nonzero().flatten().tolist()
        if empty:
            raise ValueError(f"clusters {empty[:8]} have no token besides mask / excluded ids")
        # (1 - xi) spreads over the n - 1 wrong clusters: with one cluster there is none
        if p_perturb > 0 and self.n_clusters < 2:
            raise ValueError("model.p_perturb > 0 needs at least 2 clusters")
        # a combination upstream rejects (simplified + force_transitting_within, loss.py:203) is fine here: the
        # simplified objective renormalises within the true cluster itself (l above), so the flag has nothing
        # left to do in the loss and only matters to the sampler. That makes the xi < 1 config train.
        self.vocab_size, self.mask_id, self.gamma, self.p_perturb, self.eps = vocab_size, mask_id, gamma, p_perturb, eps
        self.simplified, self.force_transitting_within = simplified, force_transitting_within
        self.min_loss_weight, self.max_loss_weight = min_loss_weight, max_loss_weight
        self.num_states = vocab_size + self.n_clusters
        self.cluster_of = cluster_of  # [V], -1 for mask / excluded ids
        self.blocked = blocked  # [V], logits set to -inf

    def _to(self, device) -> None:
        if self.cluster_of.device != torch.device(device):
            self.cluster_of, self.blocked = self.cluster_of.to(device), self.blocked.to(device)

    def sample_t(self, batch_size: int, device, generator: torch.Generator | None = None) -> torch.Tensor:
        """Low-discrepancy t in [eps, 1 - eps]: ``(arange(B)/B + u) mod 1``, one uniform u per batch."""
        u = torch.rand((), device=device, generator=generator)
        t = (torch.arange(batch_size, device=device) / batch_size + u) % 1
        return t * (1 - 2 * self.eps) + self.eps

    def schedule(self, t: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """float64 ``(alpha_t, c_t, m_t, w_mask, w_cluster)`` at t clamped to [eps, 1 - eps]."""
        t = t.double().clamp(self.eps, 1 - self.eps)
        g = self.gamma
        log_s = torch.log1p(-t)  # log(1 - t)
        alpha = torch.exp(g * log_s)
        if g == 1:
            c = -(1 - t) * log_s
            m = t + (1 - t) * log_s
            dm = -log_s  # m_t' = c_t / (1 - t)
        else:
            k = -torch.expm1((g - 1) * log_s)  # 1 - (1 - t)^(gamma - 1), accurate near gamma = 1 and t = 0
            c = g * (1 - t) * k / (g - 1)
            m = (g * t + torch.expm1(g * log_s)) / (g - 1)  # = 1 - alpha - c without the cancellation at small t
            dm = g * k / (g - 1)
        w_cluster = g * torch.exp((g - 1) * log_s) / c
        return alpha, c, m, dm / m, w_cluster

    def cluster_token(self, ids: torch.Tensor) -> torch.Tensor:
        """The cluster input id ``V + c(x)`` of each token (mask / excluded ids unchanged)."""
        self._to(ids.device)
        c = self.cluster_of[ids]
        return torch.where(c >= 0, self.vocab_size + c, ids)

    def _t_like(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(t, device=x.device)
        return t.reshape(t.shape + (1,) * (x.dim() - t.dim()))  # [B] against [B, L]

    def marginal(self, x: torch.LongTensor, t: torch.Tensor) -> torch.Tensor:
        """``q_t(. | x)`` over ``num_states``: ``[..., num_states]`` float32 (mask / excluded ids stay put)."""
        self._to(x.device)
        alpha, c, m, _, _ = (v.expand(x.shape) for v in self.schedule(self._t_like(t, x)))
        cx = self.cluster_of[x]
        live = cx >= 0
        q = torch.zeros(*x.shape, self.num_states, dtype=torch.float64, device=x.device)
        q.scatter_(-1, x.unsqueeze(-1), torch.where(live, alpha, 1.0).unsqueeze(-1))
        true_c = c
        if self.p_perturb > 0:
            wrong = c * self.p_perturb / (self.n_clusters - 1)
            q[..., self.vocab_size:] += torch.where(live, wrong, 0.0).unsqueeze(-1)
            true_c = c * (1 - self.p_perturb) - wrong  # the true cluster already got `wrong` above
        cluster_state = (self.vocab_size + cx.clamp_min(0)).unsqueeze(-1)
        q.scatter_add_(-1, cluster_state, torch.where(live, true_c, 0.0).unsqueeze(-1))
        q[..., self.mask_id] += torch.where(live, m, 0.0)
        return q.float()

    def corrupt(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, t: torch.Tensor,
                generator: torch.Generator | None = None, u: tuple[torch.Tensor, ...] | None = None
                ) -> torch.Tensor:
        """``z_t`` ~ q_t(. | x) per real token (``t [B]``); padding and mask / excluded ids unchanged.
        ``u``: three ``[B, L]`` float64 uniform fields (the state, keep-the-cluster, the wrong
        cluster) instead of the RNG's draws (keyed noise, ``mmldlm.diffusion.noise``)."""
        dev = input_ids.device
        self._to(dev)
        alpha, c, _, _, _ = self.schedule(t.reshape(-1, 1))
        fields = u
        u = torch.rand(input_ids.shape, generator=generator, device=dev, dtype=torch.float64) if fields is None \
            else fields[0]
        cx = self.cluster_of[input_ids]
        live = attention_mask.bool() & (cx >= 0)
        cluster = cx
        if self.p_perturb > 0:  # a wrong cluster, uniform over the other n - 1
            if fields is None:
                keep = torch.rand(input_ids.shape, generator=generator, device=dev) >= self.p_perturb
                r = torch.randint(0, self.n_clusters - 1, input_ids.shape, generator=generator, device=dev)
            else:
                keep = fields[1] >= self.p_perturb
                r = (fields[2] * (self.n_clusters - 1)).long().clamp_max(self.n_clusters - 2)
            cluster = torch.where(keep, cx, r + (r >= cx).long())
        z = torch.where(u < alpha, input_ids, torch.where(u < alpha + c, self.vocab_size + cluster, self.mask_id))
        return torch.where(live, z, input_ids)

    # ---- loss (mmldlm.diffusion.terms: from a text head a chunk of tokens at a time, or from logits) ------
    def scored(self, input_ids, noisy_ids, attention_mask) -> torch.Tensor:
        """The noised positions ([MASK] or a cluster token): clean ones have no reverse transition."""
        self._to(input_ids.device)
        V, n = self.vocab_size, self.n_clusters
        live = attention_mask.bool() & (self.cluster_of[input_ids] >= 0)
        return live & ((noisy_ids == self.mask_id) | ((noisy_ids >= V) & (noisy_ids < V + n)))

    def token_terms(self, logits: torch.Tensor, x: torch.Tensor, z: torch.Tensor, t: torch.Tensor):
        """Per noised token (``logits [n, >= V]`` token logits, clean ids ``x``, noisy ids ``z``, levels
        ``t``): (training loss, {"elbo", "loss", "clusters", "tokens"}: the unweighted cluster and token terms)."""
        V, n = self.vocab_size, self.n_clusters
        self._to(x.device)
        rows = logits[:, :V].float().masked_fill(self.blocked, -torch.inf)
        tc = self.cluster_of[x]
        lse_all = rows.logsumexp(-1)
        lse_c = rows.masked_fill(self.cluster_of != tc.unsqueeze(1), -torch.inf).logsumexp(-1)  # true cluster only
        logit_x = rows.gather(1, x.unsqueeze(1)).squeeze(1)
        ce = lse_all - logit_x  # -log p(x)
        log_pc = lse_c - lse_all  # log p(c(x)), <= 0
        m_sel, c_sel = z == self.mask_id, (z >= V) & (z < V + n)
        zero = torch.zeros_like(ce)
        if self.simplified:
            xi = 1 - self.p_perturb
            if self.p_perturb > 0:
                r = self.p_perturb / (xi * (n - 1))
                ell = -torch.log(r + (1 - r) * log_pc.exp())  # -log(q(c(x) | p) / xi), p(c) pushed through q
            else:
                ell = -log_pc
            true_c = (z == V + tc) & c_sel
            cluster_term = torch.where(m_sel, xi * ell, zero)
            token_term = torch.where(true_c, ce - ell, torch.where(c_sel, ce, zero))
        else:
            cluster_term = torch.where(m_sel, -log_pc, zero)
            token_term = torch.where(c_sel, lse_c - logit_x if self.force_transitting_within else ce, zero)
        _, _, _, w_mask, w_cluster = (v.float() for v in self.schedule(t))
        lo, hi = self.min_loss_weight, self.max_loss_weight
        elbo = w_mask * cluster_term + w_cluster * token_term
        loss = w_mask.clamp(lo, hi) * cluster_term + w_cluster.clamp(lo, hi) * token_term
        return loss, {"elbo": elbo.detach(), "loss": loss.detach(), "clusters": cluster_term.detach(),
                      "tokens": token_term.detach()}

    def summarize(self, sums: dict, input_ids, noisy_ids, attention_mask) -> dict[str, torch.Tensor]:
        """Means over the real tokens (the terms; unweighted cluster / token terms, as upstream logs them)
        and fractions of the live ones (neither [MASK] nor excluded)."""
        self._to(input_ids.device)
        V, n = self.vocab_size, self.n_clusters
        att = attention_mask.bool()
        cx = self.cluster_of[input_ids]
        live = att & (cx >= 0)
        is_mask = live & (noisy_ids == self.mask_id)
        is_cluster = live & (noisy_ids >= V) & (noisy_ids < V + n)
        n_real, n_live = att.sum().clamp_min(1), live.sum().clamp_min(1)
        metrics = {"elbo": sums["elbo"] / n_real, "loss": sums["loss"] / n_real,
                   "loss_clusters": sums["clusters"] / n_real, "loss_tokens": sums["tokens"] / n_real,
                   "frac_mask": is_mask.sum() / n_live, "frac_cluster": is_cluster.sum() / n_live,
                   "frac_clean": (live & ~(is_mask | is_cluster)).sum() / n_live}
        if self.p_perturb > 0:
            metrics["frac_wrong_cluster"] = (is_cluster & (noisy_ids != V + cx)).sum() / n_live
        return metrics

    def terms(self, logits: torch.Tensor, input_ids: torch.Tensor, noisy_ids: torch.Tensor,
              attention_mask: torch.Tensor, t: torch.Tensor):
        """Per-token NELBO and training loss (``Terms``) from ``logits [B, L, >= V]`` (token logits;
        columns past V, the model's padded rows, are ignored), computed on the noised positions only."""
        from mmldlm.diffusion.terms import logit_terms

        if logits.shape[-1] < self.vocab_size:
            raise ValueError(f"logits have {logits.shape[-1]} columns, fewer than vocab_size {self.vocab_size}")
        return logit_terms(self, logits, input_ids, noisy_ids, attention_mask, t)
