"""Pixels in and out: decoding (PIL + numpy, no torchvision), the fixed patchify, PNG grids.

Decoding follows the original's transform without torchvision: resize the shorter side to
``size`` (bicubic), centre-crop to ``size x size``, scale to [-1, 1]. An image already
``size x size`` is not resampled (generated data round-trips exactly). A file that is missing,
not a regular file, not an image, truncated or larger than :data:`MAX_PIXELS` (read from its header,
before decoding) raises :class:`ImageError` with the reason; the collate turns it into a bad
record (file, record, reason), never a grey picture.

Patchify is a reshape: ``[B, 3, H, W] -> [B, N, p * p * 3]`` with N = (H / p) (W / p) patches in
row-major order, each patch (row, column, channel) flattened. It has no parameters, so image
tokens cannot collapse (the original's learnt patch encoder could shrink them to nothing), and
``unpatchify`` inverts it exactly.
"""
from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import torch

from mmldlm.data.records import regular_file_problem

# The most pixels an image may decode to. PIL only warns up to twice its MAX_IMAGE_PIXELS (89.5 Mpx):
# a 140 KB PNG that decodes to 144 Mpx cost ~700 MB per decode, in every loader worker. 8K UHD is
# 33.2 Mpx; the model sees image_size x image_size. Above the cap an image is a bad record.
MAX_PIXELS = 40_000_000


class ImageError(ValueError):
    """An image file that cannot be used; the collate wraps it into a DataError with the record."""


def load_image(path: str | Path, size: int, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """``path`` as float32 ``[3, size, size]`` in [-1, 1]. The pixel count is read from the header
    and checked before anything is decoded."""
    import warnings

    from PIL import Image, UnidentifiedImageError

    problem = regular_file_problem(path)
    if problem:
        raise ImageError(f"image {path} {problem}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the cap below is stricter
            with Image.open(path) as im:
                w, h = im.size
                if w * h > max_pixels:
                    raise ImageError(f"image {path} is {w} x {h} = {w * h / 1e6:.1f} Mpx, above the cap of "
                                     f"{max_pixels / 1e6:.0f} Mpx (a decompression bomb?); resize it before training")
                im.load()  # decode now: a truncated file raises here, not as a half-grey array later
                rgb = im.convert("RGB")
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError, SyntaxError) as e:
        if isinstance(e, ImageError):
            raise
        raise ImageError(f"image {path} cannot be decoded ({type(e).__name__}: {e})") from None
    return to_array(resize_crop(rgb, size))


def resize_crop(im, size: int):
    """Shorter side to ``size`` (bicubic), then the centre ``size x size`` crop."""
    from PIL import Image

    w, h = im.size
    if (w, h) == (size, size):
        return im
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    im = im.resize((nw, nh), Image.Resampling.BICUBIC)
    left, top = (nw - size) // 2, (nh - size) // 2
    return im.crop((left, top, left + size, top + size))


def to_array(im) -> np.ndarray:
    """A PIL RGB image -> float32 ``[3, H, W]`` in [-1, 1]."""
    return (np.asarray(im, dtype=np.float32).transpose(2, 0, 1) / 127.5 - 1.0).astype(np.float32)


def to_uint8(x: torch.Tensor | np.ndarray) -> np.ndarray:
    """``[..., 3, H, W]`` in [-1, 1] -> uint8 ``[..., H, W, 3]`` (values outside are clipped)."""
    x = x.detach().float().cpu().numpy() if torch.is_tensor(x) else np.asarray(x, dtype=np.float32)
    x = np.clip((x + 1.0) * 127.5, 0, 255).round().astype(np.uint8)
    return np.moveaxis(x, -3, -1)


def patchify(x: torch.Tensor, p: int) -> torch.Tensor:
    """``[B, C, H, W] -> [B, (H/p)(W/p), p*p*C]``."""
    B, C, H, W = x.shape
    if H % p or W % p:
        raise ValueError(f"image {H}x{W} is not divisible into {p}x{p} patches")
    x = x.reshape(B, C, H // p, p, W // p, p).permute(0, 2, 4, 3, 5, 1)
    return x.reshape(B, (H // p) * (W // p), p * p * C)


def unpatchify(tokens: torch.Tensor, p: int, size: int, channels: int = 3) -> torch.Tensor:
    """The inverse of :func:`patchify` for ``size x size`` images."""
    B, g = tokens.shape[0], size // p
    x = tokens.reshape(B, g, g, p, p, channels).permute(0, 5, 1, 3, 2, 4)
    return x.reshape(B, channels, size, size)


def save_grid(images: torch.Tensor | np.ndarray, path: str | Path, captions: list[str] | None = None,
              cols: int = 8, cell: int = 96) -> Path:
    """A PNG of ``images [B, 3, H, W]`` in [-1, 1], each upscaled (nearest) to ``cell`` pixels, with
    its caption wrapped below it when given."""
    from PIL import Image, ImageDraw, ImageFont

    arr = to_uint8(images)
    n = arr.shape[0]
    cols = max(1, min(cols, n))
    rows = -(-n // cols)
    font = ImageFont.load_default()
    width = max(8, cell // 6)  # characters per caption line
    lines = [textwrap.wrap(c, width)[:4] for c in captions] if captions else [[] for _ in range(n)]
    text_h = 12 * max((len(t) for t in lines), default=0)
    pad = 4
    sheet = Image.new("RGB", (cols * (cell + pad) + pad, rows * (cell + text_h + pad) + pad), "white")
    draw = ImageDraw.Draw(sheet)
    for i in range(n):
        r, c = divmod(i, cols)
        x, y = pad + c * (cell + pad), pad + r * (cell + text_h + pad)
        sheet.paste(Image.fromarray(arr[i]).resize((cell, cell), Image.Resampling.NEAREST), (x, y))
        for k, line in enumerate(lines[i]):
            draw.text((x, y + cell + 1 + 12 * k), line, fill="black", font=font)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return path
