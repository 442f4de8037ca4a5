"""Sampled metrics of both directions, each beside its chance level (eval and the report).

"Another record" is the next row of the batch (rolled by one): what a sampler that ignores its
condition would score.

- caption -> image: on shapes captions, the pixel probe's accuracy (``latentIMG_mmdit.shapes``:
  colours and shapes in the halves the caption names) against the caption (``t2i_probe_acc``) and
  against another record's caption (``t2i_probe_chance``), with the probe's reading of the true
  images as its ceiling (``probe_real_acc``); for any data, the MSE of each generated image to its
  record's image (``t2i_mse``), to another record's image (``t2i_mse_chance``), and of the batch's
  mean image to each image (``mean_image_mse``: the best an image that ignores the caption can do
  in MSE). The discrete variant adds the codebook's own reconstruction MSE (``codebook_mse``).
- image -> caption: bag-of-tokens F1 of the sampled caption with its record's caption
  (``i2t_f1``) and with another record's (``i2t_f1_chance``), real non-special tokens only, the
  caption's length drawn from another record; on shapes captions, the probe's reading of the
  *true* image scored against the sampled caption (``i2t_probe_acc``; an unparseable caption
  scores 0, ``i2t_parse_rate`` says how often) and against another record's image
  (``i2t_probe_chance``).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import torch

from latentIMG_mmdit import shapes
from latentIMG_mmdit.images import to_uint8
from latentIMG_mmdit.sampling import caption_to_image, image_to_caption
from mmldlm.eval.text_metrics import token_f1

if TYPE_CHECKING:
    from latentIMG_mmdit.objective import ImageObjective


class Sampled(NamedTuple):
    metrics: dict[str, float]
    images: torch.Tensor  # caption -> image samples [B, 3, S, S]
    captions: list[str]  # image -> caption samples
    references: list[str]  # the records' own captions


def _mean(xs: list[float | None]) -> float | None:
    xs = [x for x in xs if x is not None]
    return float(np.mean(xs)) if xs else None


def probe_scores(images: torch.Tensor, captions: list[str], null_unparsed: bool = False) -> list[float | None]:
    """The probe's score of each image against its caption (None, or 0 with ``null_unparsed``,
    where the caption is not a shapes caption)."""
    arr = to_uint8(images)
    out = [shapes.score(a, c) for a, c in zip(arr, captions)]
    return [0.0 if (s is None and null_unparsed) else s for s in out]


@torch.no_grad()
def sampled_metrics(obj: ImageObjective, batch: dict, t2i_steps: int | None = None, i2t_steps: int | None = None,
                    guidance: float | None = None, temperature: float | None = None,
                    generator: torch.Generator | None = None) -> Sampled:
    ids, mask, pixels = batch["input_ids"], batch["attention_mask"], batch["pixels"].float()
    tok = obj.tokenizer
    refs = tok.batch_decode(ids, skip_special_tokens=True)
    other = lambda x: x.roll(1, 0) if torch.is_tensor(x) else x[-1:] + x[:-1]  # noqa: E731
    images = caption_to_image(obj, ids, mask, t2i_steps, guidance, temperature, generator)
    lengths = other(mask.sum(1))
    cap_ids, cap_mask = image_to_caption(obj, pixels, lengths, i2t_steps, temperature, generator)
    captions = tok.batch_decode(cap_ids, skip_special_tokens=True)

    mse = lambda a, b: ((a - b) ** 2).mean((1, 2, 3))  # noqa: E731
    m: dict[str, float | None] = {
        "t2i_mse": mse(images, pixels).mean().item(),
        "t2i_mse_chance": mse(images, other(pixels)).mean().item(),
        "mean_image_mse": mse(pixels.mean(0, keepdim=True).expand_as(pixels), pixels).mean().item(),
    }
    if obj.discrete:
        m["codebook_mse"] = mse(obj.decode_image(obj.encode_image(pixels)), pixels).mean().item()
    special = obj.special_ids.to(ids.device)
    on_ref, on_hat = mask & ~torch.isin(ids, special), cap_mask & ~torch.isin(cap_ids, special)
    m["i2t_f1"] = token_f1(cap_ids, ids, on_hat, on_ref).mean().item()
    m["i2t_f1_chance"] = token_f1(cap_ids, other(ids), on_hat, other(on_ref)).mean().item()
    if any(shapes.parse(r) for r in refs):  # a shapes set: the probe applies
        m["t2i_probe_acc"] = _mean(probe_scores(images, refs))
        m["t2i_probe_chance"] = _mean(probe_scores(images, other(refs)))
        m["probe_real_acc"] = _mean(probe_scores(pixels, refs))
        m["i2t_probe_acc"] = _mean(probe_scores(pixels, captions, null_unparsed=True))
        m["i2t_probe_chance"] = _mean(probe_scores(other(pixels), captions, null_unparsed=True))
        m["i2t_parse_rate"] = float(np.mean([shapes.parse(c) is not None for c in captions]))
    metrics = {k: v for k, v in m.items() if v is not None}
    return Sampled(metrics, images, captions, refs)
