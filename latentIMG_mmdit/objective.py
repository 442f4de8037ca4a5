"""The image<->caption objectives: ``image_continuous`` and ``image_discrete``.

Both: the caption is MDLM masked diffusion (``mmldlm.diffusion.masked_text``): only real caption
tokens are ever masked or targets (the original's discrete loss was ~85 % padding), the ELBO
weight is the mask schedule's m'/m (1/t for MDLM's), the loss is summed over masked tokens over
the real tokens of the diffused captions. The image:
- continuous: variance-preserving Gaussian diffusion of the fixed patchify of the pixels
  (``mmldlm.diffusion.gaussian_latent``, cosine schedule, v-prediction; MSE on v). The original's
  ``x_t = (1 - t) x0 + sqrt(t) eps`` was not variance preserving, and its learnt patch encoder
  could make the loss vanish without modelling images; patchify has no parameters;
- discrete: masked diffusion of the patches' k-means codes (``latentIMG_mmdit.codebook``) with
  its own [MASK] = K, the same ELBO as the caption's, over the patches of the diffused images.

Modes (``loss.mode``): ``t2i`` (clean caption -> image), ``i2t`` (clean image -> caption),
``joint`` (both diffused at independent levels), ``mixed`` (each row draws one from
``loss.mode_weights``, so one model learns both directions). ``loss.caption_drop`` of the t2i rows
see a fully masked caption instead (the null condition of classifier-free guidance).

All noise (modes, levels, masks, Gaussian noise, flips) is keyed by (seed, step, record,
position) (``mmldlm.diffusion.noise``) and losses are normalised by the global batch's counts
(``rank_share``): W ranks train exactly as 1 rank, and a resumed run as the uninterrupted one.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

from latentIMG_mmdit import codebook as C
from latentIMG_mmdit.data import IMAGE_RECORDS, collator
from latentIMG_mmdit.images import patchify, unpatchify
from latentIMG_mmdit.model import ImageMMDiT
from latentIMG_mmdit.schema import DiscreteImageRunConfig, ImageRunConfig, num_patches, patch_dim
from mmldlm.config import ConfigError
from mmldlm.diffusion.gaussian_latent import GaussianLatentDiffusion
from mmldlm.diffusion.masked_text import MaskedTextDiffusion
from mmldlm.diffusion.noise import keyed_uniform, position_normals, position_uniforms
from mmldlm.nn import rank_share
from mmldlm.objective import BatchCount, Objective, register
from mmldlm.sources import Kind, Source

CONFIGS = Path(__file__).resolve().parent / "configs"
T2I, I2T, JOINT = 0, 1, 2
# key streams of the keyed noise: one per random choice, so no two choices share uniforms
MODE, TEXT_T, TEXT_U, IMAGE_T, IMAGE_NOISE, DROP, FLIP, IMAGE_U = range(1, 9)


class Rows(NamedTuple):
    """Which rows of a batch diffuse what."""

    text: torch.Tensor  # [B] bool: the caption is diffused and scored
    image: torch.Tensor  # [B] bool: the image is diffused and scored
    dropped: torch.Tensor  # [B] bool: a t2i row whose caption is fully masked (no text loss)


def mask_level(u: torch.Tensor, schedule: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(mask level t = m(u), ELBO weight m'(u) / m(u)) for u in (0, 1]: under any schedule the
    expected weighted loss is MDLM's continuous-time bound (a change of variable t = m(u))."""
    if schedule == "linear":
        return u, 1.0 / u
    if schedule == "cosine":
        t = 1 - torch.cos(math.pi * u / 2)
        return t, (math.pi / 2) * torch.sin(math.pi * u / 2) / t
    s, lo, hi = torch.sigmoid(8 * (u - 0.5)), torch.sigmoid(torch.tensor(-4.0)), torch.sigmoid(torch.tensor(4.0))
    t = (s - lo) / (hi - lo)
    return t, 8 * s * (1 - s) / (hi - lo) / t


class ImageObjective(Objective):
    discrete = False

    def __init__(self, cfg, tokenizer):
        super().__init__()
        m, self.lc, self.sample_cfg = cfg.model, cfg.loss, cfg.sample
        if tokenizer.mask_token_id is None:
            raise ConfigError(f"data.tokenizer_name: {tokenizer.name_or_path!r} has no mask token; masked caption "
                              "diffusion needs one (bert-base-uncased has [MASK])")
        self.m = m
        self.model = ImageMMDiT(m, len(tokenizer), self.discrete)
        self.text = MaskedTextDiffusion(tokenizer.mask_token_id, m.t_eps)
        self.seed, self.flip = cfg.training.seed, bool(cfg.data.random_flip)
        self.pad_id = tokenizer.pad_token_id
        self.tokenizer = tokenizer  # the samplers' reports decode captions (not a module: not saved)
        self.register_buffer("special_ids", torch.tensor(tokenizer.all_special_ids), persistent=False)
        weights = [float(self.lc.mode_weights.get(k, 0.0)) for k in ("t2i", "i2t", "joint")]
        self.mode_cdf = [sum(weights[: i + 1]) for i in range(3)]

    # -- the image's tokens, per variant ------------------------------------------------------
    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def decode_image(self, tokens: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def image_loss(self, batch, x0, rows: Rows, key) -> tuple[torch.Tensor, torch.Tensor, dict, Callable]:
        """(model input, image time code [B], metrics, loss_of(out) -> loss) for the image stream."""
        raise NotImplementedError

    # -- the keyed choices ----------------------------------------------------------------------
    def key(self, step: int) -> tuple[int, int]:
        return self.seed, step if self.training else -1  # eval: the same noise at every eval

    def rows(self, index: torch.Tensor, key) -> Rows:
        mode = self.lc.mode.name
        if mode == "mixed":
            u = keyed_uniform(index, *key, MODE) * self.mode_cdf[-1]
            cdf = torch.tensor(self.mode_cdf, dtype=u.dtype, device=u.device)
            which = torch.searchsorted(cdf, u, right=True).clamp_max(2)
        else:
            which = torch.full_like(index, {"t2i": T2I, "i2t": I2T, "joint": JOINT}[mode])
        drop = (which == T2I) & (keyed_uniform(index, *key, DROP) < self.lc.caption_drop)
        return Rows(text=which != T2I, image=which != I2T, dropped=drop)

    def level(self, index: torch.Tensor, key, stream: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(mask level t in [eps, 1], ELBO weight) per row, under ``loss.mask_schedule``."""
        u = self.text.eps + (1 - self.text.eps) * keyed_uniform(index, *key, stream).float()
        return mask_level(u, self.lc.mask_schedule.name)

    def augment(self, pixels: torch.Tensor, index: torch.Tensor, key) -> torch.Tensor:
        if not (self.flip and self.training):
            return pixels
        flip = (keyed_uniform(index, *key, FLIP) < 0.5).view(-1, 1, 1, 1)
        return torch.where(flip, pixels.flip(-1), pixels)

    # -- the step ---------------------------------------------------------------------------------
    def forward(self, batch: dict, step: int):
        ids, mask, index = batch["input_ids"], batch["attention_mask"], batch["index"]
        key = self.key(step)
        rows = self.rows(index, key)
        x0 = self.encode_image(self.augment(batch["pixels"], index, key))
        t_text, w_text = self.level(index, key, TEXT_T)
        t_text = torch.where(rows.dropped, 1.0, torch.where(rows.text, t_text, 0.0))
        u = position_uniforms(index, ids.shape[1], *key, TEXT_U)
        u = torch.where(rows.dropped.unsqueeze(1), -1.0, u)  # a dropped caption: every real token masked
        noisy, masked = self.text.corrupt(ids, mask, t_text, u)
        scored = masked & rows.text.unsqueeze(1)
        image_in, t_image, metrics, image_loss_of = self.image_loss(batch, x0, rows, key)
        denom = rank_share((mask & rows.text.unsqueeze(1)).sum())

        def caption_loss(stream, head):  # in the model's forward: a chunk of tokens at a time, no [n, V] logits
            return self.text.head_loss(stream[scored], head, ids, scored, mask, t_text, weight=w_text, denom=denom)

        text, image_out = self.model(noisy, mask, image_in, t_text, t_image, text_logits=caption_loss)
        text_loss, text_acc = text.loss, text.acc
        image_loss = image_loss_of(image_out)
        loss = self.lc.text_weight * text_loss + self.lc.image_weight * image_loss
        metrics.update(text_loss=text_loss.detach(), text_acc=text_acc.detach(), image_loss=image_loss.detach())
        return loss, metrics

    def example_batch(self, cfg, device="meta") -> dict:
        S = self.m.image_size
        pixels = torch.empty(cfg.training.train_batch_size, 3, S, S, device=device)
        return {**super().example_batch(cfg, device), "pixels": pixels}

    def count(self, batch: dict) -> BatchCount:
        n = batch["input_ids"].shape[0]
        return BatchCount(n, batch["attention_mask"].sum() + n * num_patches(self.m))

    @torch.no_grad()
    def eval_extra(self, batch: dict, index: int) -> dict:
        """Sampled metrics with their chance levels on the first ``sample.eval_batches`` eval
        batches (``latentIMG_mmdit.metrics``)."""
        if index >= self.sample_cfg.eval_batches:
            return {}
        from latentIMG_mmdit.metrics import sampled_metrics

        g = torch.Generator().manual_seed(self.seed * 7919 + index)
        return sampled_metrics(self, batch, generator=g).metrics

    def shard_units(self) -> list[nn.Module]:
        return [*self.model.backbone.blocks, self.model]


class ContinuousImageObjective(ImageObjective):
    def __init__(self, cfg, tokenizer):
        super().__init__(cfg, tokenizer)
        m = cfg.model
        self.image = GaussianLatentDiffusion(m.timesteps, m.beta_schedule, m.parameterization)

    def encode_image(self, pixels):
        return patchify(pixels.float(), self.m.patch_size)

    def decode_image(self, tokens):
        return unpatchify(tokens.float(), self.m.patch_size, self.m.image_size).clamp(-1, 1)

    def image_loss(self, batch, x0, rows, key):
        index = batch["index"]
        t_idx = (keyed_uniform(index, *key, IMAGE_T) * self.image.timesteps).long().clamp_max(self.image.timesteps - 1)
        noise = position_normals(index, x0.shape[1] * x0.shape[2], *key, IMAGE_NOISE).view_as(x0)
        on = rows.image.view(-1, 1, 1)
        x_t = torch.where(on, self.image.q_sample(x0, t_idx, noise), x0)
        code = torch.where(rows.image, self.image.time_code(t_idx), 0.0)  # 0 = a clean image (a condition)
        target = self.image.target(x0, noise, t_idx)

        def loss_of(out):
            per_row = ((out.float() - target) ** 2).mean((1, 2))
            return (per_row * rows.image).sum() / rank_share(rows.image.sum()).clamp_min(1)

        return x_t, code, {}, loss_of


class DiscreteImageObjective(ImageObjective):
    discrete = True

    def __init__(self, cfg, tokenizer, codebook: Path | None = None):
        super().__init__(cfg, tokenizer)
        m = cfg.model
        # a rebuild: the checkpoint's weights bring the codebook; the estimator: its size is enough
        if codebook is None:
            centroids = torch.full((m.codebook_size, patch_dim(m)), math.nan)
        else:
            try:
                centroids = torch.from_numpy(C.load(str(codebook), m.patch_size, m.codebook_size).centroids)
            except C.CodebookError as e:
                raise ConfigError(f"model.codebook: {e}") from None
        self.register_buffer("centroids", centroids)  # persistent: checkpoints carry the codebook
        self.codes = MaskedTextDiffusion(m.codebook_size, m.t_eps)  # [MASK] = K

    def encode_image(self, pixels):
        p = patchify(pixels.float(), self.m.patch_size)
        return C.nearest(p.reshape(-1, p.shape[-1]), self.centroids.float()).view(p.shape[:2])

    def decode_image(self, tokens):
        return unpatchify(self.centroids[tokens.clamp_max(self.m.codebook_size - 1)], self.m.patch_size,
                          self.m.image_size)

    def image_loss(self, batch, x0, rows, key):
        index = batch["index"]
        t, w = self.level(index, key, IMAGE_T)
        t = torch.where(rows.image, t, 0.0)
        u = position_uniforms(index, x0.shape[1], *key, IMAGE_U)
        every = torch.ones_like(x0, dtype=torch.bool)
        noisy, masked = self.codes.corrupt(x0, every, t, u)
        scored = masked & rows.image.unsqueeze(1)
        metrics = {}

        def loss_of(out):
            denom = rank_share(rows.image.sum() * x0.shape[1])
            loss, acc = self.codes.loss(out, x0, scored, every, t, weight=w, denom=denom)
            metrics["image_acc"] = acc.detach()
            return loss

        return noisy, t, metrics, loss_of


def codebook_source(cfg) -> list[Source]:
    """The discrete variant's k-means codebook: needed to train; a checkpoint carries it (a
    rebuild takes it from the weights, never from the file the saved config names)."""
    hint = ("build one with python -m latentIMG_mmdit.build_codebook --data TRAIN.json --out FILE.npz and set "
            "model.codebook (train_image_discrete.py builds it on first use)")
    return [Source("codebook", Kind.file, "model.codebook", cfg.model.codebook, carried=True, hint=hint)]


def build_continuous(cfg, sources) -> ContinuousImageObjective:
    return ContinuousImageObjective(cfg, sources.tokenizer)


def build_discrete(cfg, sources) -> DiscreteImageObjective:
    return DiscreteImageObjective(cfg, sources.tokenizer, sources.path("codebook"))


# sampled metrics beside their chance levels (latentIMG_mmdit.metrics)
METRICS = {"loss": ("loss", "text_loss", "image_loss"), "accuracy": ("text_acc", "image_acc"),
           "caption -> image": ("t2i_mse", "t2i_mse_chance", "mean_image_mse", "codebook_mse"),
           "image -> caption": ("i2t_f1", "i2t_f1_chance")}
register("image_continuous", ImageRunConfig, build_continuous, CONFIGS, collator=collator, records=IMAGE_RECORDS,
         metrics=METRICS, clis=("python -m latentIMG_mmdit.sample",))
register("image_discrete", DiscreteImageRunConfig, build_discrete, CONFIGS, collator=collator,
         records=IMAGE_RECORDS, sources=codebook_source, metrics=METRICS, clis=("python -m latentIMG_mmdit.sample",))
