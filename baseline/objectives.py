"""The text-diffusion baselines as registered objectives: MDLM, GIDD(+), HDLM, AR (``baseline.ar``)
and the latent-conditioned MDLM (adaLN or cross-attention), all on the shared loop.

Every diffusion objective is the same recipe around a different forward process
(``mmldlm.diffusion``): draw t (low-discrepancy over the global batch), corrupt the real tokens,
run the DiT, and reduce the process's per-token terms over the batch's real tokens
(``loss`` = the training-weighted terms, ``elbo`` = the NELBO in nats/token, logged as such).
The model's logits beyond the tokenizer's vocabulary (the rows that round the embedding up to a
multiple of 128, HDLM's cluster tokens) never enter a softmax: they are sliced away.
"""
from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from baseline.ar import AutoregressiveLM
from baseline.dit import DiT
from baseline.schema import (
    ARRunConfig,
    GiddRunConfig,
    HdlmRunConfig,
    LatentRunConfig,
    LossWeighting,
    MDLMRunConfig,
)
from mmldlm.config import ConfigError
from mmldlm.data.collate import mean_latent
from mmldlm.diffusion.gidd import GiddDiffusion
from mmldlm.diffusion.masked_text import MaskedTextDiffusion
from mmldlm.diffusion.noise import keyed_uniform, position_uniforms
from mmldlm.diffusion.terms import Terms, head_terms, logit_terms
from mmldlm.eval.likelihood import Nelbo
from mmldlm.nn import masked_mean, rank_share
from mmldlm.objective import Objective, register
from mmldlm.sources import Kind, Source

CONFIGS = Path(__file__).resolve().parent / "configs"


def mask_token_id(tokenizer) -> int:
    """The tokenizer's [MASK], added when it has none (GPT-2: id 50257, as MDLM/GIDD do)."""
    if tokenizer.mask_token_id is None:
        tokenizer.add_special_tokens({"mask_token": "[MASK]"})
    return tokenizer.mask_token_id


def never_predicted(tokenizer) -> list[int]:
    """Ids a clean text never holds: the pad token, unless it doubles as BOS/EOS (GPT-2's pad is
    its EOS, a real token under packing)."""
    pad = tokenizer.pad_token_id
    return [] if pad is None or pad in (tokenizer.eos_token_id, tokenizer.bos_token_id) else [pad]


class MDLMProcess:
    """MDLM's absorbing process behind the calls GIDD and HDLM answer (``mmldlm.diffusion.terms``)."""

    def __init__(self, vocab_size: int, mask_id: int, eps: float, excluded: list[int]):
        self.text, self.num_states, self.excluded = MaskedTextDiffusion(mask_id, eps), vocab_size, excluded
        self.vocab_size = vocab_size

    def corrupt(self, ids, attention_mask, t, u=None):
        return self.text.corrupt(ids, attention_mask, t, u)[0]

    def scored(self, ids, noisy, attention_mask) -> torch.Tensor:
        return noisy == self.text.mask_id  # only masked tokens have a term (pads are never masked)

    def token_terms(self, logits, x, z, t):
        """Per masked token: (CE / t, {"elbo", "loss": the same, "correct": argmax == x})."""
        logits = self.text.subs(logits)
        logits[:, self.excluded] = -torch.inf
        ce = F.cross_entropy(logits, x, reduction="none") * self.text.loss_weight(t)
        return ce, {"elbo": ce.detach(), "loss": ce.detach(), "correct": (logits.argmax(-1) == x).float()}

    def summarize(self, sums, ids, noisy, attention_mask) -> dict:
        return {"masked_acc": sums["correct"] / (noisy == self.text.mask_id).sum().clamp_min(1)}

    def terms(self, logits, ids, noisy, attention_mask, t) -> Terms:
        """The terms from logits ``[B, L, >= V]`` (``mmldlm.diffusion.terms.logit_terms``)."""
        return logit_terms(self, logits, ids, noisy, attention_mask, t)


class Noise(NamedTuple):
    t: torch.Tensor  # [B]
    u: torch.Tensor  # [B, L] uniforms of the MDLM masks


class DiffusionLM(Objective):
    def __init__(self, cfg, tokenizer, process, num_states: int, latent_dim: int | None = None):
        super().__init__()
        m = cfg.model
        self.process, self.vocab = process, len(tokenizer)
        self.t_lo, self.t_hi = m.t_eps, (1.0 if isinstance(process, MDLMProcess) else 1 - m.t_eps)
        self.low_discrepancy = cfg.training.low_discrepancy_sampling
        self.seed = cfg.training.seed
        self.model = DiT(m, num_states, latent_dim)

    def noise(self, batch: dict, step: int) -> Noise:
        """t and the MDLM mask uniforms of a batch, from (seed, step, record, position) alone
        (``mmldlm.diffusion.noise``): W ranks see what 1 rank sees, a resumed run what the
        uninterrupted one saw. Low-discrepancy t is stratified over the ranks' global batch
        (sample j of rank r sits at r * B + j, where the step-chunk sampler put it). Eval noise
        is the same at every eval (step key -1)."""
        ids, index = batch["input_ids"], batch["index"]
        B, L = ids.shape
        key = (self.seed, step if self.training else -1)
        if self.low_discrepancy:
            rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
            shift = keyed_uniform(torch.zeros(1, dtype=torch.long, device=ids.device), *key, 0)
            where = rank * B + torch.arange(B, device=ids.device)
            frac = (where / (world * B) + shift) % 1
        else:
            frac = keyed_uniform(index, *key, 1)
        t = (self.t_lo + (self.t_hi - self.t_lo) * frac).float()
        return Noise(t, self.mask_uniforms(batch, key))

    @staticmethod
    def mask_uniforms(batch: dict, key: tuple) -> torch.Tensor:
        """[B, L] uniforms keyed by (key, record, position)."""
        return position_uniforms(batch["index"], batch["input_ids"].shape[1], *key, 2)

    def nelbo(self, batch: dict, t: torch.Tensor, k: int) -> Nelbo:
        """NELBO nats per sequence at ``t``, masks keyed by grid point ``k`` (GIDD/HDLM noise tokens
        from an RNG seeded by it): the same numbers at every call."""
        noise = Noise(t.float(), self.mask_uniforms(batch, (self.seed, -2 - k)))
        return self._nelbo_at(batch, noise, k)

    def _nelbo_at(self, batch: dict, noise: Noise, k: int, latent_batch: dict | None = None) -> Nelbo:
        mask = batch["attention_mask"]
        with torch.random.fork_rng(devices=[mask.device] if mask.device.type == "cuda" else []):
            torch.manual_seed(self.seed * 1_000_003 + k)
            terms, _ = self.run(batch, noise, latent_batch)
        return Nelbo(terms.elbo.sum(1), mask.sum(1), {})

    def conditioning(self, batch: dict) -> dict:
        return {}

    def run(self, batch: dict, noise: Noise, latent_batch: dict | None = None):
        """(terms, final features) of one noisy pass; ``latent_batch`` conditions it. The terms come
        from the output layer's input a chunk of scored tokens at a time: no ``[B, L, V]`` logits
        (``mmldlm.diffusion.terms.head_terms``); the rows past the tokenizer's vocabulary are left out."""
        ids, mask, t = batch["input_ids"], batch["attention_mask"], noise.t
        if isinstance(self.process, MDLMProcess):
            noisy = self.process.corrupt(ids, mask, t, noise.u)
        else:  # GIDD / HDLM draw their noise tokens from the (per-rank) global RNG
            noisy = self.process.corrupt(ids, mask, t)
        feats, head_in = self.model.hidden(noisy, mask, t, **self.conditioning(latent_batch or batch))
        head = self.model.output_layer.linear
        terms = head_terms(self.process, head_in, head.weight[: self.vocab], head.bias[: self.vocab], ids, noisy, mask,
                           t)
        return terms, feats

    def forward(self, batch: dict, step: int):
        mask = batch["attention_mask"]
        terms, feats = self.run(batch, self.noise(batch, step))
        n = rank_share(mask.sum()).clamp_min(1)  # the global batch's real tokens per rank
        loss, elbo = terms.loss_sum / n, terms.elbo.detach().sum() / n
        metrics = {"elbo": elbo, **{k: v.detach() for k, v in terms.metrics.items()}}
        extra, more = self.extra_loss(batch, feats)
        return loss + extra, {**metrics, **more}

    def extra_loss(self, batch: dict, feats: torch.Tensor):
        return 0.0, {}

    def shard_units(self) -> list[nn.Module]:
        return list(self.model.blocks)

    def sampler_name(self, requested: str) -> str:
        if isinstance(self.process, MDLMProcess):
            return requested
        return "gidd posterior" if isinstance(self.process, GiddDiffusion) else "hdlm two-stage (mdlm)"

    @torch.no_grad()
    def generate(self, num_samples: int, length: int, steps: int, temperature: float = 1.0, min_p: float = 0.0,
                 sampler: str = "ddpm", generator=None, latents=None, top_p: float = 1.0, **_) -> torch.Tensor:
        """``num_samples`` sequences of ``length`` tokens (``mmldlm.eval.samplers``)."""
        if top_p < 1:
            raise ValueError("top_p is a nucleus for AR sampling; the diffusion samplers take temperature (and GIDD "
                             "min_p)")

        if latents is not None:
            cond = self.conditioning({"latent": latents})
        else:
            cond = {}
            if self.model.conditioning is not None:
                raise ValueError("this model is conditioned on latents: pass latents=FILE.npy")
        return self._sample(cond, num_samples, length, steps, temperature, min_p, sampler, generator)

    def _sample(self, cond: dict, num_samples: int, length: int, steps: int, temperature: float, min_p: float,
                sampler: str, generator, init: torch.Tensor | None = None) -> torch.Tensor:
        """The family's own sampler from all-[MASK] (or from ``init``: a context kept, [MASK] drawn)."""
        from mmldlm.eval import samplers as S

        device = next(self.parameters()).device

        def denoise(ids, t):
            return self.model(ids, None, t, **cond)[..., : self.vocab]

        common = {"temperature": temperature, "generator": generator, "device": device, "init": init}
        if isinstance(self.process, MDLMProcess):
            if sampler not in ("ddpm", "ddpm_cache"):
                raise ValueError(f"sampler={sampler!r}: MDLM samples with ddpm | ddpm_cache")
            if sampler == "ddpm_cache" and self.model.time_conditioning:
                raise ValueError("sampler=ddpm_cache reuses p(x0 | x_t) across steps, exact only for a model trained "
                                 "without time conditioning (model.time_conditioning=false); use ddpm")
            return S.mdlm_sample(denoise, num_samples, length, steps, self.process.text.mask_id,
                                 self.process.excluded, cache=sampler == "ddpm_cache", eps=self.t_lo, **common)
        if isinstance(self.process, GiddDiffusion):
            return S.gidd_sample(denoise, self.process, num_samples, length, steps, min_p=min_p, **common)
        return S.hdlm_sample(denoise, self.process, num_samples, length, steps, **common)

    # -- the lm-eval harness (Objective.conditional_nelbo and co.) ----------------------------
    def mask_id(self) -> int:
        return self.process.text.mask_id if isinstance(self.process, MDLMProcess) else self.process.mask_id

    def _blocked(self, device) -> torch.Tensor:
        """``[V]`` bool: the ids no clean token is ([MASK], padding; GIDD / HDLM: their excluded ids)."""
        if isinstance(self.process, MDLMProcess):
            out = torch.zeros(self.vocab, dtype=torch.bool, device=device)
            out[[self.mask_id(), *self.process.excluded]] = True
            return out
        if isinstance(self.process, GiddDiffusion):
            return ~self.process.allowed.to(device)
        return self.process.blocked.to(device)

    def _harness_conditioning(self, batch: dict) -> dict:
        """The conditioning of a harness batch: none (a latent model overrides this to refuse)."""
        return self.conditioning(batch)

    def conditional_nelbo(self, batch: dict, t: torch.Tensor, k: int) -> Nelbo:
        """The NELBO of the target tokens given the clean context at ``t``: only targets are noised
        and scored. MDLM's masks are the loss CLI's (``nelbo``: the same uniforms of (seed, grid
        point, record, position)); GIDD's and HDLM's noise is keyed the same way."""
        ids, mask, target = batch["input_ids"], batch["attention_mask"], batch["target_mask"]
        key = (self.seed, -2 - k)
        t = t.float()
        if isinstance(self.process, MDLMProcess):
            noisy = self.process.corrupt(ids, target, t, self.mask_uniforms(batch, key))
        else:
            fields = 2 if isinstance(self.process, GiddDiffusion) else 3
            u = tuple(position_uniforms(batch["index"], ids.shape[1], *key, 3 + j, dtype=torch.float64)
                      for j in range(fields))
            noisy = self.process.corrupt(ids, target, t, u=u)
        logits = self.model(noisy, mask, t, **self._harness_conditioning(batch))
        terms = self.process.terms(logits[..., : self.vocab], ids, noisy, target, t)
        return Nelbo(terms.elbo.sum(1), target.sum(1), {})

    @torch.no_grad()
    def conditional_greedy(self, batch: dict) -> torch.Tensor:
        """Every target token is the argmax of p(x0 | context, all targets [MASK]) at the top noise level."""
        ids, mask, target = batch["input_ids"], batch["attention_mask"], batch["target_mask"]
        hidden = torch.where(target, self.mask_id(), ids)
        t = torch.full((ids.shape[0],), self.t_hi, device=ids.device)
        logits = self.model(hidden, mask, t, **self._harness_conditioning(batch))[..., : self.vocab].float()
        guess = logits.masked_fill(self._blocked(ids.device), -torch.inf).argmax(-1)
        return ((guess == ids) | ~target).all(1)

    @torch.no_grad()
    def complete(self, context: torch.Tensor, length: int, *, steps: int, temperature: float = 0.0,
                 generator=None, stop=None) -> torch.Tensor:
        """``[1, length]`` ids after ``context [1, P]``: the family's sampler (MDLM ancestral, GIDD's
        posterior, HDLM's two-stage) over [context, [MASK] x length], the context kept clean."""
        cond = self._harness_conditioning({})
        masks = torch.full((1, length), self.mask_id(), dtype=torch.long, device=context.device)
        init = torch.cat([context, masks], 1)
        out = self._sample(cond, 1, init.shape[1], steps, temperature, 0.0, "ddpm", generator, init)
        return out[:, context.shape[1]:]


class LatentDiffusionLM(DiffusionLM):
    """MDLM conditioned on the record's latent. Eval adds ``latent_gain``: the NELBO with another
    record's latent minus the NELBO with the true one (same t, same masks), nats/token."""

    def __init__(self, cfg, tokenizer, process, num_states: int):
        m = cfg.model
        super().__init__(cfg, tokenizer, process, num_states, m.latent_dim if m.use_latent_conditioning else None)
        self.cross = m.use_latent_conditioning and m.conditioning_type.name == "cross_attention"
        self.adaln = m.use_latent_conditioning and not self.cross
        self.pred_weight = cfg.loss.latent_prediction_weight
        self.latent_head = (nn.Sequential(nn.Linear(m.hidden_size, 2 * m.hidden_size), nn.SiLU(),
                                          nn.Linear(2 * m.hidden_size, m.latent_dim)) if m.predict_latents else None)

    def _harness_conditioning(self, batch: dict) -> dict:
        if self.adaln or self.cross:
            raise ValueError("this MDLM reads a latent per text (model.use_latent_conditioning=true) and lm-eval's "
                             "requests carry none; a run with use_latent_conditioning=false is a plain MDLM the "
                             "harness evaluates")
        return {}

    def conditioning(self, batch: dict) -> dict:
        if self.adaln:
            return {"latent": mean_latent(batch)}
        if self.cross:
            return {"latent": batch["latent"], "latent_mask": batch.get("latent_mask")}
        return {}

    def extra_loss(self, batch: dict, feats: torch.Tensor):
        if self.latent_head is None:
            return 0.0, {}
        pred = self.latent_head(masked_mean(feats, batch["attention_mask"])).float()
        target = mean_latent(batch).float()
        mse = F.mse_loss(pred, target)
        cos = F.cosine_similarity(pred, target, dim=-1).mean()
        return self.pred_weight * mse, {"latent_pred_loss": mse.detach(), "latent_pred_cos": cos.detach()}

    @staticmethod
    def shuffled(batch: dict) -> dict:
        """The batch with each record's latent replaced by the previous record's."""
        return {**batch, **{k: batch[k].roll(1, 0) for k in ("latent", "latent_mask") if k in batch}}

    def nelbo(self, batch: dict, t: torch.Tensor, k: int) -> Nelbo:
        noise = Noise(t.float(), self.mask_uniforms(batch, (self.seed, -2 - k)))
        true = self._nelbo_at(batch, noise, k)
        if batch["input_ids"].shape[0] < 2:
            return true
        other = self._nelbo_at(batch, noise, k, self.shuffled(batch))
        return Nelbo(true.nats, true.tokens, {"latent_gain": other.nats - true.nats})

    @torch.no_grad()
    def eval_extra(self, batch: dict, index: int) -> dict:
        mask = batch["attention_mask"]
        if mask.shape[0] < 2:
            return {}  # no other record to borrow a latent from
        nelbo = []
        for cond in (batch, self.shuffled(batch)):  # the same t and masks for both (keyed noise)
            terms, _ = self.run(batch, self.noise(batch, -1), cond)
            nelbo.append(terms.elbo.sum() / mask.sum().clamp_min(1))
        return {"nelbo_true_latent": nelbo[0], "nelbo_shuffled_latent": nelbo[1], "latent_gain": nelbo[1] - nelbo[0]}


def _excluded_and_mask(tokenizer) -> tuple[int, list[int]]:
    return mask_token_id(tokenizer), never_predicted(tokenizer)


def build_mdlm(cfg, tokenizer) -> DiffusionLM:
    mask_id, excluded = _excluded_and_mask(tokenizer)
    return DiffusionLM(cfg, tokenizer, MDLMProcess(len(tokenizer), mask_id, cfg.model.t_eps, excluded), len(tokenizer))


def build_gidd(cfg, tokenizer) -> DiffusionLM:
    mask_id, excluded = _excluded_and_mask(tokenizer)
    m, lo = cfg.model, cfg.loss
    process = _config_errors(GiddDiffusion, len(tokenizer), mask_id, p_uniform=m.p_uniform, gamma=m.gamma,
                             eps=m.t_eps, excluded_ids=excluded, loss_weighting=lo.loss_weighting.value,
                             min_loss_weight=lo.min_loss_weight, max_loss_weight=lo.max_loss_weight)
    return DiffusionLM(cfg, tokenizer, process, len(tokenizer))


def build_hdlm(cfg, tokenizer, clusters_file: Path | None = None) -> DiffusionLM:
    from mmldlm.diffusion.hdlm import HierarchicalDiffusion, load_clusters

    mask_id, excluded = _excluded_and_mask(tokenizer)
    m, lo = cfg.model, cfg.loss
    if lo.loss_weighting is LossWeighting.dynamic:
        raise ConfigError("loss.loss_weighting: HDLM's training weights are its ELBO weights, clipped (clip) or not "
                          "(none); dynamic is GIDD's")
    if clusters_file is None:  # the estimator without the file: its sizes are all it needs
        clusters = torch.arange(len(tokenizer), device="cpu") % m.cluster_size
    else:
        clusters = _config_errors(load_clusters, str(clusters_file), len(tokenizer), key="model.cluster_dict_path")
    n = int(clusters.max()) + 1
    if n != m.cluster_size:
        raise ConfigError(f"model.cluster_size={m.cluster_size} but {m.cluster_dict_path} holds {n} clusters")
    clip = lo.loss_weighting is LossWeighting.clip
    process = _config_errors(HierarchicalDiffusion, len(tokenizer), mask_id, clusters, gamma=m.gamma,
                             p_perturb=m.p_perturb, eps=m.t_eps, simplified=lo.simplified,
                             force_transitting_within=lo.force_transitting_within,
                             min_loss_weight=lo.min_loss_weight if clip else 0.0,
                             max_loss_weight=lo.max_loss_weight if clip else float("inf"), excluded_ids=excluded)
    return DiffusionLM(cfg, tokenizer, process, process.num_states)


def build_latent(cfg, tokenizer) -> LatentDiffusionLM:
    mask_id, excluded = _excluded_and_mask(tokenizer)
    return LatentDiffusionLM(cfg, tokenizer, MDLMProcess(len(tokenizer), mask_id, cfg.model.t_eps, excluded),
                             len(tokenizer))


def build_ar(cfg, tokenizer) -> AutoregressiveLM:
    return AutoregressiveLM(cfg, tokenizer)


def _config_errors(fn, *args, key: str | None = None, **kwargs):
    """A process's ValueError (it names the config key) as the ConfigError the loop prints."""
    try:
        return fn(*args, **kwargs)
    except ValueError as e:
        raise ConfigError(f"{key}: {e}" if key else str(e)) from None


BUILDERS = {"mdlm": build_mdlm, "gidd": build_gidd, "hdlm": build_hdlm, "ar": build_ar, "mdlm_latent": build_latent,
            "mdlm_cross_attention": build_latent}


def build(cfg, sources) -> Objective:
    """The objective ``loss.loss_type`` names (the schema made sure it is the config's objective)."""
    kind = cfg.loss.loss_type.name
    if kind == "hdlm":
        return build_hdlm(cfg, sources.tokenizer, sources.path("clusters"))
    return BUILDERS[kind](cfg, sources.tokenizer)


def hdlm_sources(cfg) -> list[Source]:
    """HDLM's cluster table (``model.cluster_dict_path``), made offline by baseline.build_clusters."""
    m = cfg.model
    hint = (f"build it offline: python -m baseline.build_clusters --model DIR_WITH_TOKEN_EMBEDDINGS --n-clusters "
            f"{m.cluster_size} --out {m.cluster_dict_path}")
    return [Source("clusters", Kind.file, "model.cluster_dict_path", m.cluster_dict_path, hint=hint)]


# every baseline's panels (a run draws those it logged): GIDD's and HDLM's terms, the latent ones' gain
METRICS = {"loss": ("loss", "elbo"), "terms": ("kl", "is", "loss_clusters", "loss_tokens"),
           "noise": ("frac_mask", "frac_uniform", "frac_cluster", "frac_clean", "frac_wrong_cluster"),
           "latent": ("latent_pred_loss", "nelbo_true_latent", "nelbo_shuffled_latent"),
           "latent gain": ("latent_gain", "latent_pred_cos")}
for _name, _schema in [("mdlm", MDLMRunConfig), ("gidd", GiddRunConfig), ("hdlm", HdlmRunConfig), ("ar", ARRunConfig),
                       ("mdlm_latent", LatentRunConfig), ("mdlm_cross_attention", LatentRunConfig)]:
    register(_name, _schema, build, CONFIGS, sources=hdlm_sources if _name == "hdlm" else None, metrics=METRICS,
             clis=("python baseline/eval/generate_samples.py", "python baseline/eval/loss.py",
                   *(("python baseline/eval/self_correction.py",) if _name == "gidd" else ())))
