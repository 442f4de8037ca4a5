"""The MMDiT objective: text<->latent diffusion modes and the cycle-consistent VAE objective.

Modes (``loss.loss_type``):
- ``l2t``: clean latent as condition, masked text diffusion (MDLM ELBO) on the text;
- ``t2l``: clean text as condition, Gaussian diffusion on the latent;
- ``unconditional``: both noised, both losses;
- ``sequential``: the mode of ``training.sequential_schedule`` ({type, steps} blocks, cycled);
- ``random``: a mode drawn from ``training.mode_weights`` by (seed, step): the same on every rank;
- ``cycle_vae``: base L2T + latent_loss_weight x base T2L + ramped T2L2T (the latent x0 predicted
  from clean text becomes the condition of an L2T pass; ``cycle_stop_grad_latent`` detaches it)
  + ramped L2T2L (pseudo-tokens from the L2T logits by argmax or sampling, never differentiated,
  condition a T2L pass whose target is the true latent).

Which parameters train is fixed at build time: ``l2t`` freezes the latent head, ``t2l`` the text
head. Heads a step does not use enter its loss with weight 0, so DDP sees the same graph on every
step. The objective exists once; ``cycle_vae_impl/`` calls it.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from latentDLM_mmdit.metrics import roundtrip
from latentDLM_mmdit.models.multimodal_mmdit import get_model
from latentDLM_mmdit.sampling import l2t_decode
from latentDLM_mmdit.schema import BASE_MODES, L2TSampler, MMDiTRunConfig
from mmldlm.config import ConfigError
from mmldlm.data.collate import mean_latent
from mmldlm.diffusion.gaussian_latent import GaussianLatentDiffusion
from mmldlm.diffusion.masked_text import MaskedTextDiffusion
from mmldlm.diffusion.noise import position_normals, position_uniforms
from mmldlm.objective import Objective, register

CONFIGS = Path(__file__).resolve().parent / "configs"


class L2TOut(NamedTuple):
    """What an L2T pass returns."""

    loss: torch.Tensor
    acc: torch.Tensor
    pick: torch.Tensor | None  # [N] a token per masked position (the pass's ``pick``), or None
    noisy: torch.Tensor  # the corrupted ids [B, L]
    masked: torch.Tensor  # [B, L] bool
    latent_out: torch.Tensor  # the latent head's output (unused by L2T; anchors it for DDP)


class T2LOut(NamedTuple):
    loss: torch.Tensor
    x0_pred: torch.Tensor  # the clean latent predicted, in diffusion units

def ramp(base: float, step: int, warmup: int, ramp_steps: int) -> float:
    """0 before ``warmup``, then ``base * min(1, (step - warmup) / ramp_steps)``; base if ramp <= 0."""
    if step < warmup:
        return 0.0
    if ramp_steps <= 0:
        return base
    return base * min(1.0, (step - warmup) / ramp_steps)


class MMDiTObjective(Objective):
    def __init__(self, cfg: Any, tokenizer):
        super().__init__()
        m, self.lc, t = cfg.model, cfg.loss, cfg.training
        if tokenizer.mask_token_id is None:
            raise ConfigError(f"data.tokenizer_name: {tokenizer.name_or_path!r} has no mask token; masked "
                              "text diffusion needs one (bert-base-uncased has [MASK])")
        self.model = get_model(m, len(tokenizer))
        self.text = MaskedTextDiffusion(tokenizer.mask_token_id, m.t_eps)
        self.latent = GaussianLatentDiffusion(m.latent_timesteps, m.latent_beta_schedule,
                                              m.latent_parameterization, m.x0_clamp)
        self.loss_type, self.seed, self.sample_cfg = self.lc.loss_type.name, t.seed, cfg.sample
        self.latent_scale = float(m.latent_scale)
        self.register_buffer("special_ids", torch.tensor(tokenizer.all_special_ids), persistent=False)
        self.schedule = [(b.type, b.steps) for b in t.sequential_schedule]
        self.weights = {k: float(v) for k, v in t.mode_weights.items() if v > 0}
        if self.loss_type == "l2t":  # decided once, never toggled per step
            self.model.latent_head.requires_grad_(False)
        elif self.loss_type == "t2l":
            self.model.text_head.requires_grad_(False)

    def mode_at(self, step: int) -> str:
        if self.loss_type == "sequential":
            pos = step % sum(n for _, n in self.schedule)
            for mode, n in self.schedule:
                if pos < n:
                    return mode
                pos -= n
        if self.loss_type == "random":  # a function of (seed, step): every rank draws the same
            modes = sorted(self.weights)
            return random.Random(self.seed * 1_000_003 + step).choices(modes, [self.weights[k] for k in modes])[0]
        return self.loss_type

    # -- the passes ------------------------------------------------------------------------
    def null_latent(self, n: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        """The "no latent" condition: pure noise at the last latent timestep, (x [n, D], t [n])."""
        last = torch.full((n,), self.latent.timesteps - 1, device=device)
        return torch.randn(n, self.model.latent_head.out_features, device=device), self.latent.time_code(last)

    def l2t_pass(self, ids, mask, cond_latent, uncond_prob: float = 0.0, pick=None) -> L2TOut:
        """Masked text diffusion conditioned on a clean latent (a ``uncond_prob`` fraction of the
        rows on the null latent instead). The loss comes from the text head a chunk of masked
        tokens at a time (``MaskedTextDiffusion.head_loss``: no ``[N, V]`` logits); ``pick(logits)``
        chooses a token per masked position from p(x0 | x_t) on the way (the L2T2L pseudo-text)."""
        t = self.text.sample_t(ids.shape[0], ids.device)
        noisy, masked = self.text.corrupt(ids, mask, t)
        t_lat = torch.zeros_like(t)
        if uncond_prob > 0:
            drop = torch.rand(ids.shape[0], device=ids.device) < uncond_prob
            null, t_null = self.null_latent(ids.shape[0], ids.device)
            cond_latent = torch.where(drop.unsqueeze(1), null, cond_latent)
            t_lat = torch.where(drop, t_null, t_lat)
        text, lat_out = self.model(noisy, mask, cond_latent, t, t_lat, text_logits=self._text_loss(ids, masked, mask, t,
                                                                                                  pick=pick))
        return L2TOut(text.loss, text.acc, text.pick, noisy, masked, lat_out)

    def _text_loss(self, ids, masked, mask, t, pick=None):
        """The model's ``text_logits`` callable: the masked positions' loss through its text head."""
        return lambda stream, head: self.text.head_loss(stream[masked], head, ids, masked, mask, t, pick=pick)

    def nelbo(self, batch: dict, t: torch.Tensor, k: int):
        """L2T's likelihood bound: the NELBO of each text given its clean latent at noise level ``t``
        (MDLM's bound; masks keyed by grid point ``k``, record and position), for the loss CLI."""
        latent = mean_latent(batch).float() * self.latent_scale
        t = t.float()
        return self._text_nelbo(batch, batch["attention_mask"], latent, torch.zeros_like(t), t, k)

    def _text_nelbo(self, batch: dict, scored: torch.Tensor, latent, t_lat, t: torch.Tensor, k: int):
        """MDLM's NELBO of the ``scored`` tokens (the rest stay clean) given ``latent`` at ``t_lat``."""
        from mmldlm.eval.likelihood import Nelbo

        ids, mask = batch["input_ids"], batch["attention_mask"]
        u = position_uniforms(batch["index"], ids.shape[1], self.seed, -2 - k, 2)
        noisy, masked = self.text.corrupt(ids, scored, t, u)
        text, _ = self.model(noisy, mask, latent, t, t_lat, text_logits=self._text_loss(ids, masked, mask, t))
        weighted = text.token_loss  # each masked token's ELBO-weighted CE
        rows = masked.nonzero()[:, 0]
        nats = torch.zeros(ids.shape[0], device=ids.device).index_add_(0, rows, weighted)
        return Nelbo(nats, scored.sum(1), {})

    # -- the lm-eval harness: the text side alone, on the null latent ------------------------
    def keyed_null_latent(self, index: torch.Tensor, *key: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The null latent (:meth:`null_latent`) with its noise keyed by (seed, ``key``, record)."""
        D = self.model.latent_head.out_features
        x = position_normals(index, D, self.seed, *key)
        last = torch.full((index.shape[0],), self.latent.timesteps - 1, device=index.device)
        return x, self.latent.time_code(last)

    def conditional_nelbo(self, batch: dict, t: torch.Tensor, k: int):
        """The L2T NELBO of the target tokens given the clean context and the null latent (pure noise
        at the last latent step, keyed by grid point ``k`` and record): the text side alone.
        Meaningful for runs that trained it (``loss.l2t_uncond_prob`` > 0, the unconditional mode)."""
        latent, t_lat = self.keyed_null_latent(batch["index"], -2 - k, 6)
        return self._text_nelbo(batch, batch["target_mask"], latent, t_lat, t.float(), k)

    @torch.no_grad()
    def conditional_greedy(self, batch: dict) -> torch.Tensor:
        """Every target token is the argmax of p(x0 | context, targets all [MASK], null latent) at t = 1."""
        ids, mask, target = batch["input_ids"], batch["attention_mask"], batch["target_mask"]
        latent, t_lat = self.keyed_null_latent(batch["index"], -2, 7)
        hidden = torch.where(target, self.text.mask_id, ids)
        t = torch.ones(ids.shape[0], device=ids.device)
        logits, _ = self.model(hidden, mask, latent, t, t_lat, text_logits=target)
        hit = torch.ones_like(target).masked_scatter(target, self.text.subs(logits).argmax(-1) == ids[target])
        return hit.all(1)

    def sampler_name(self, requested: str) -> str:
        if requested == "confidence":
            return "l2t confidence (on the given latents)"
        return "mdlm ancestral (generate: on the given latents; lm-eval: on the null latent)"

    @torch.no_grad()
    def complete(self, context: torch.Tensor, length: int, *, steps: int, temperature: float = 0.0,
                 generator=None, stop=None) -> torch.Tensor:
        """``[1, length]`` ids after ``context [1, P]``: MDLM's ancestral sampler (``sampling``) on the
        null latent, the context kept clean."""
        from latentDLM_mmdit.sampling import _ancestral

        B, dev = context.shape[0], context.device
        where = generator.device if generator is not None else dev
        D = self.model.latent_head.out_features
        null = torch.randn(B, D, generator=generator, device=where).to(dev)
        t_null = self.latent.time_code(torch.full((B,), self.latent.timesteps - 1, device=dev))
        ids = torch.cat([context, torch.full((B, length), self.text.mask_id, device=dev)], 1)
        attention = torch.ones_like(ids, dtype=torch.bool)

        def logits_at(x, still, t):
            return self.text.subs(self.model(x, attention, null, t, t_null, text_logits=still)[0])

        return _ancestral(self, ids, attention, steps, logits_at, temperature, generator)[:, context.shape[1]:]

    def t2l_pass(self, ids, mask, x0, t_idx=None) -> T2LOut:
        """Latent diffusion conditioned on clean text. The text head is not evaluated (clean text
        has no targets): the pass costs no vocabulary projection."""
        if t_idx is None:
            t_idx = self.latent.sample_t(x0.shape[0], x0.device)
        noise = torch.randn_like(x0)
        x_t = self.latent.q_sample(x0, t_idx, noise)
        _, out = self.model(ids, mask, x_t, torch.zeros(ids.shape[0], device=ids.device), self.latent.time_code(t_idx),
                            text_logits=False)
        loss = F.mse_loss(out.float(), self.latent.target(x0, noise, t_idx))
        return T2LOut(loss, self.latent.predict_x0(out.float(), x_t, t_idx))

    def _graph_anchor(self) -> torch.Tensor:
        """0 x every trainable parameter: a T2L-only step (no text head, so the last block's text
        stream is unused too) still hands DDP a gradient (zero) for every parameter, so all
        ranks reduce the same set. A sum over the parameters: cheap next to the step. FSDP needs no
        anchor (and its sharded parameters cannot join a plain loss)."""
        from torch.distributed.tensor import DTensor

        params = [p for p in self.model.parameters() if p.requires_grad and not isinstance(p, DTensor)]
        return sum(0.0 * p.sum() for p in params) if params else 0.0

    def forward(self, batch: dict, step: int):
        ids, mask = batch["input_ids"], batch["attention_mask"]
        x0 = mean_latent(batch).float() * self.latent_scale  # diffusion space (see model.latent_scale)
        if not self.training and self.loss_type in ("sequential", "random"):
            return self._every_mode(ids, mask, x0, step)
        mode = self.mode_at(step)
        loss, metrics = self._mode_loss(mode, ids, mask, x0, step)
        if self.loss_type in ("sequential", "random"):  # rank-averaged: 0.5 would expose a desync
            metrics.update({f"mode_{m}": float(m == mode) for m in BASE_MODES})
        return loss * self.lc.loss_scale, metrics

    def trained_modes(self) -> list[str]:
        if self.loss_type == "sequential":
            return sorted({m for m, _ in self.schedule})
        if self.loss_type == "random":
            return sorted(self.weights)
        return [self.loss_type]

    def _every_mode(self, ids, mask, x0, step):
        """Eval of a run that alternates modes: every mode it trains, on every eval batch, under
        ``{mode}/...`` keys (one mode per eval would make the eval loss jump between objectives).
        The loss is their mean."""
        losses, metrics = [], {}
        for mode in self.trained_modes():
            loss, mode_metrics = self._mode_loss(mode, ids, mask, x0, step)
            losses.append(loss * self.lc.loss_scale)
            metrics[f"{mode}/loss"] = losses[-1].detach()
            metrics.update({f"{mode}/{k}": v for k, v in mode_metrics.items()})
        return torch.stack(losses).mean(), metrics

    def _mode_loss(self, mode: str, ids, mask, x0, step):
        """(loss before loss_scale, detached metrics) of one mode."""
        tw, lw = self.lc.text_loss_weight, self.lc.latent_loss_weight
        if mode == "l2t":
            out = self.l2t_pass(ids, mask, x0, self.lc.l2t_uncond_prob)
            loss = tw * out.loss + 0.0 * out.latent_out.sum()  # the latent head in the graph (DDP)
            metrics = {"text_loss": out.loss, "text_acc": out.acc}
        elif mode == "t2l":
            out = self.t2l_pass(ids, mask, x0)
            loss = lw * out.loss + self._graph_anchor()
            metrics = {"latent_loss": out.loss, "x0_pred_norm": out.x0_pred.norm(dim=-1).mean()}
        elif mode == "unconditional":
            loss, metrics = self._joint(ids, mask, x0, tw, lw)
        else:
            loss, metrics = self._cycle(ids, mask, x0, step, tw, lw)
        return loss, {k: v.detach() if torch.is_tensor(v) else v for k, v in metrics.items()}

    def _joint(self, ids, mask, x0, tw, lw):
        t = self.text.sample_t(ids.shape[0], ids.device)
        noisy, masked = self.text.corrupt(ids, mask, t)
        t_idx = self.latent.sample_t(x0.shape[0], x0.device)
        noise = torch.randn_like(x0)
        x_t = self.latent.q_sample(x0, t_idx, noise)
        text, out = self.model(noisy, mask, x_t, t, self.latent.time_code(t_idx),
                               text_logits=self._text_loss(ids, masked, mask, t))
        text_loss, acc = text.loss, text.acc
        latent_loss = F.mse_loss(out.float(), self.latent.target(x0, noise, t_idx))
        return tw * text_loss + lw * latent_loss, {"text_loss": text_loss, "text_acc": acc,
                                                   "latent_loss": latent_loss}

    def _cycle(self, ids, mask, x0, step, tw, lw):
        lc = self.lc
        w_text = ramp(lc.cycle_text_weight, step, lc.cycle_text_warmup_steps, lc.cycle_text_ramp_steps)
        w_lat = ramp(lc.cycle_latent_weight, step, lc.cycle_latent_warmup_steps, lc.cycle_latent_ramp_steps)
        l2t = self.l2t_pass(ids, mask, x0, lc.l2t_uncond_prob, pick=self._pseudo_token if w_lat > 0 else None)
        t2l = self.t2l_pass(ids, mask, x0)
        base_text, base_latent = l2t.loss, t2l.loss
        loss = tw * base_text + lw * base_latent
        metrics = {"text_loss": base_text, "text_acc": l2t.acc, "latent_loss": base_latent,
                   "base_l2t_text_loss": base_text, "base_t2l_latent_loss": base_latent,
                   "cycle_text_weight": w_text, "cycle_latent_weight": w_lat,
                   "x0_pred_norm": t2l.x0_pred.norm(dim=-1).mean()}
        zero = torch.zeros((), device=ids.device)
        cycle_text = cycle_latent = zero
        if w_text > 0:  # T2L2T: text -> latent x0 -> text
            T = self.latent.timesteps
            if lc.latent_t_mode.name == "full":
                t_idx = torch.full((x0.shape[0],), T - 1, device=x0.device)
            else:
                lo, hi = int(lc.cycle_latent_t_min * (T - 1)), int(lc.cycle_latent_t_max * (T - 1))
                t_idx = self.latent.sample_t(x0.shape[0], x0.device, lo, hi + 1)
            x0_hat = self.t2l_pass(ids, mask, x0, t_idx).x0_pred
            if lc.cycle_stop_grad_latent:
                x0_hat = x0_hat.detach()
            cycle_text = self.l2t_pass(ids, mask, x0_hat).loss
            loss = loss + w_text * cycle_text
        if w_lat > 0:  # L2T2L: latent -> pseudo-text (no gradient) -> latent
            with torch.no_grad():  # the pseudo-tokens the L2T pass picked, per masked position
                pseudo = l2t.noisy.masked_scatter(l2t.masked, l2t.pick)
            cycle_latent = self.t2l_pass(pseudo, mask, x0).loss
            loss = loss + w_lat * cycle_latent
        metrics.update(cycle_text_loss=cycle_text, cycle_latent_loss=cycle_latent)
        return loss, metrics

    def _pseudo_token(self, p_x0: torch.Tensor) -> torch.Tensor:
        """L2T2L's pseudo-token from p(x0 | x_t) logits (``[MASK]`` already excluded): argmax or a draw."""
        if self.lc.cycle_latent_sampling.name == "argmax":
            return p_x0.argmax(-1)
        return torch.distributions.Categorical(logits=p_x0).sample()

    @torch.no_grad()
    def eval_extra(self, batch: dict, index: int) -> dict:
        """Round-trip metrics on the first ``sample.eval_roundtrip_batches`` eval batches:
        ``t2l2t_acc`` (text -> T2L latent -> L2T text, token accuracy over real positions) and
        ``l2t2l_cos`` (latent -> L2T text -> T2L latent, cosine with the original)."""
        if index >= self.sample_cfg.eval_roundtrip_batches:
            return {}
        return roundtrip(self, batch["input_ids"], batch["attention_mask"], mean_latent(batch).float()).metrics

    @torch.no_grad()
    def generate(self, num_samples: int, length: int, steps: int, temperature: float = 1.0, sampler: str = "ddpm",
                 generator=None, latents=None, top_p: float = 1.0, min_p: float = 0.0, **_) -> torch.Tensor:
        """L2T (the generate CLI): ``length`` tokens from each latent of ``latents [N, D]`` (or
        ``[N, K, D]``, averaged as in training) through :func:`l2t_decode` (the run's guidance);
        ``sampler``: ancestral (``ddpm``, the CLI's default) or confidence."""
        D = self.model.latent_head.out_features
        if latents is None:
            raise ValueError(f"the MMDiT generates text from latents (L2T): pass latents=FILE.npy ([N, {D}], one "
                             "sample per row), e.g. from python -m latentDLM_mmdit.sample t2l")
        if top_p < 1 or min_p > 0:
            raise ValueError("top_p / min_p: the MMDiT's L2T samplers take temperature only")
        z = latents.float().mean(1) if latents.dim() == 3 else latents.float()
        if z.dim() != 2 or z.shape[1] != D:
            raise ValueError(f"latents: expected [N, {D}] (or [N, K, {D}]), got {list(latents.shape)}")
        mask = torch.ones(z.shape[0], length, dtype=torch.bool, device=z.device)
        if sampler == "ddpm":  # the CLI's name of MDLM's ancestral sampler, which L2T's ancestral is
            sampler = L2TSampler.ancestral.name
        if sampler not in L2TSampler.__members__:
            raise ValueError(f"sampler={sampler}: the MMDiT's L2T samplers are {', '.join(L2TSampler.__members__)}")
        return l2t_decode(self, z[:num_samples], mask[:num_samples], steps, None, sampler, temperature, generator)

    def shard_units(self) -> list[nn.Module]:
        """FSDP units: each transformer block, then the model around them (embeddings, heads):
        the samplers call ``self.model`` directly, which then gathers its own weights."""
        return [*self.model.backbone.blocks, self.model]


def build(cfg, sources) -> MMDiTObjective:
    return MMDiTObjective(cfg, sources.tokenizer)


# per-mode eval keys (l2t/..., t2l/...) of runs that alternate modes are drawn beside the plain ones
METRICS = {"loss": ("loss", "text_loss", "latent_loss"),
           "per mode": ("l2t/loss", "t2l/loss", "unconditional/loss"),
           "cycle": ("cycle_text_loss", "cycle_latent_loss"),
           "accuracy": ("text_acc", "l2t/text_acc", "t2l2t_acc", "t2l2t_f1"),
           "latent": ("l2t2l_cos", "x0_pred_norm", "t2l/latent_loss")}
register("mmdit", MMDiTRunConfig, build, CONFIGS, metrics=METRICS,
         clis=("python -m latentDLM_mmdit.sample", "python baseline/eval/generate_samples.py",
               "python baseline/eval/loss.py"))
