"""Samplers in both directions, consistent with training.

- :func:`caption_to_image`: continuous, deterministic DDIM (eta = 0) from pure noise over
  ``sample.t2i_steps`` timesteps (``GaussianLatentDiffusion.ddim_sample``, the network read in its
  trained parameterisation); discrete, MDLM's ancestral unmasking of the image codes
  (``mmldlm.eval.samplers.mdlm_sample``, float64 draws) then the codebook's patches. With
  ``guidance`` w > 0, classifier-free guidance against the fully masked caption
  (``loss.caption_drop`` trains it): ``(1 + w) out(caption) - w out(null)`` (on v, or on the codes'
  log-probabilities).
- :func:`image_to_caption`: MDLM's ancestral sampler on the caption given the clean image, for
  captions of given lengths (the model scores real tokens only, so a length is chosen first:
  the report draws it from other records' captions, never the image's own).

Both are functions of their ``torch.Generator``.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import torch

from latentIMG_mmdit.schema import num_patches, patch_dim
from mmldlm.eval.samplers import mdlm_sample
from mmldlm.train.advice import guidance_warning, warn_once

if TYPE_CHECKING:
    from latentIMG_mmdit.objective import ImageObjective

log = logging.getLogger("mm_ldlm")


def null_caption(obj: ImageObjective, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The caption ``caption_drop`` trains as "no condition": every real token masked."""
    return torch.where(mask, obj.text.mask_id, ids)


@torch.no_grad()
def caption_to_image(obj: ImageObjective, ids: torch.Tensor, mask: torch.Tensor, steps: int | None = None,
                     guidance: float | None = None, temperature: float | None = None,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """Pixels ``[B, 3, S, S]`` in [-1, 1] for captions ``ids [B, L]`` / ``mask [B, L]``."""
    sc, m = obj.sample_cfg, obj.m
    steps = steps or sc.t2i_steps
    w = sc.guidance if guidance is None else guidance
    unguided = guidance_warning(w, obj.lc.caption_drop, "loss.caption_drop", "--guidance")
    if unguided:
        warn_once(log, unguided)
    temperature = sc.temperature if temperature is None else temperature
    B, dev = ids.shape[0], ids.device
    zeros = torch.zeros(B, device=dev)
    if w > 0:  # the captioned and the null-caption rows in one batch
        ids_in, mask_in, t_in = torch.cat([ids, null_caption(obj, ids, mask)]), mask.repeat(2, 1), torch.cat(
            [zeros, torch.ones(B, device=dev)])
    else:
        ids_in, mask_in, t_in = ids, mask, zeros

    def run(image, t_image):
        if w > 0:
            out = obj.model(ids_in, mask_in, image.repeat(2, *[1] * (image.dim() - 1)), t_in, t_image.repeat(2),
                            text_logits=False)[1].float()
            return out.chunk(2)
        return obj.model(ids_in, mask_in, image, t_in, t_image, text_logits=False)[1].float(), None

    if not obj.discrete:
        def net(x_t, t_idx):
            cond, uncond = run(x_t, obj.image.time_code(t_idx))
            return cond if uncond is None else (1 + w) * cond - w * uncond

        noise = torch.randn(B, num_patches(m), patch_dim(m), generator=generator).to(dev)
        return obj.decode_image(obj.image.ddim_sample(net, noise, steps))

    def denoise(z, t):
        cond, uncond = run(z, t)
        if uncond is None:
            return cond
        cond, uncond = obj.codes.subs(cond).log_softmax(-1), obj.codes.subs(uncond).log_softmax(-1)
        return torch.nan_to_num((1 + w) * cond - w * uncond, nan=-torch.inf)  # [MASK]: -inf - -inf

    codes = mdlm_sample(denoise, B, num_patches(m), steps, obj.codes.mask_id, (), temperature=temperature,
                        generator=generator, eps=obj.codes.eps, device=dev)
    return obj.decode_image(codes)


@torch.no_grad()
def image_to_caption(obj: ImageObjective, pixels: torch.Tensor, lengths: torch.Tensor, steps: int | None = None,
                     temperature: float | None = None,
                     generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(caption ids ``[B, L]``, attention mask) for images ``pixels [B, 3, S, S]``, row b holding
    ``lengths[b]`` real tokens (padding after them); [PAD] and [MASK] are never drawn."""
    sc = obj.sample_cfg
    temperature = sc.temperature if temperature is None else temperature
    B, dev = pixels.shape[0], pixels.device
    L = int(lengths.max())
    if obj.m.max_seq_len < L:
        raise ValueError(f"caption length {L} exceeds model.max_seq_len ({obj.m.max_seq_len})")
    mask = torch.arange(L, device=dev).unsqueeze(0) < lengths.to(dev).unsqueeze(1)
    image = obj.encode_image(pixels)
    zeros = torch.zeros(B, device=dev)

    def denoise(z, t):
        return obj.model(z, mask, image, t, zeros)[0]

    steps = steps or sc.i2t_steps or L
    ids = mdlm_sample(denoise, B, L, steps, obj.text.mask_id, [obj.pad_id], temperature=temperature,
                      generator=generator, eps=obj.text.eps, device=dev)
    return torch.where(mask, ids, obj.pad_id), mask
