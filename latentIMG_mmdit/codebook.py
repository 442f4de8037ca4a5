"""Discrete image codes: a k-means codebook over pixel patches, built once on the training images.

An image's tokens are the indices of its patches' nearest centroids; decoding puts each
centroid back in place (``unpatchify``). The codebook is fixed before training, so the discrete
objective predicts codes of the image, never "its own input plus noise" (the original's
identity map). Built deterministically: a seeded choice of images and patches, k-means++
seeding from a seeded generator, Lloyd iterations in float64 on the CPU (equal inputs and seed
give an equal codebook on a given machine and library build; the test checks it). The file is a
``.npz`` read with ``allow_pickle=False``: ``centroids [K, p*p*3]`` float32, ``patch_size``,
``image_size``, ``seed``.
"""
from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch


class CodebookError(ValueError):
    """A codebook file that cannot be used (missing, malformed, another patch size)."""


class Codebook(NamedTuple):
    centroids: np.ndarray  # [K, p*p*3] float32, pixels in [-1, 1]
    patch_size: int
    image_size: int
    seed: int


def _sq_dist(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    return (x * x).sum(1, keepdim=True) - 2 * x @ c.T + (c * c).sum(1)


def nearest(x: torch.Tensor, centroids: torch.Tensor, chunk: int = 1 << 16) -> torch.Tensor:
    """Index of the nearest centroid of each row of ``x [N, D]`` (chunked: N can be large)."""
    out = torch.empty(x.shape[0], dtype=torch.long, device=x.device)
    for s in range(0, x.shape[0], chunk):
        out[s:s + chunk] = _sq_dist(x[s:s + chunk], centroids).argmin(1)
    return out


def kmeans(x: np.ndarray, k: int, seed: int, iters: int = 25) -> np.ndarray:
    """``k`` centroids of the rows of ``x [N, D]``: k-means++ seeding, then Lloyd iterations. An
    emptied cluster is moved to the point farthest from its centroid (deterministic)."""
    if len(x) < k:
        raise CodebookError(f"{len(x)} patches are fewer than the {k} codes asked for; use more images or fewer codes")
    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64))
    g = torch.Generator().manual_seed(seed)
    centroids = xt[torch.randint(len(xt), (1,), generator=g)]
    d2 = _sq_dist(xt, centroids).squeeze(1).clamp_min(0)
    for _ in range(1, k):  # k-means++: the next centroid drawn with probability ~ squared distance
        probs = d2 / d2.sum() if d2.sum() > 0 else torch.full_like(d2, 1.0 / len(d2))
        nxt = xt[torch.multinomial(probs, 1, generator=g)]
        centroids = torch.cat([centroids, nxt])
        d2 = torch.minimum(d2, _sq_dist(xt, nxt).squeeze(1).clamp_min(0))
    for _ in range(iters):
        assign = nearest(xt, centroids)
        sums = torch.zeros_like(centroids).index_add_(0, assign, xt)
        counts = torch.bincount(assign, minlength=k)
        new = sums / counts.clamp_min(1).unsqueeze(1).to(sums.dtype)
        empty = (counts == 0).nonzero().flatten().tolist()
        if empty:
            far = _sq_dist(xt, new).gather(1, assign.unsqueeze(1)).squeeze(1).argsort(descending=True)
            for j, e in enumerate(empty):
                new[e] = xt[far[j]]
        if torch.equal(new, centroids):
            break
        centroids = new
    return centroids.float().numpy()


def build(images: np.ndarray, patch_size: int, codes: int, seed: int, max_patches: int = 200_000) -> Codebook:
    """A codebook of ``codes`` centroids from ``images [N, 3, S, S]`` in [-1, 1] (at most
    ``max_patches`` patches, a seeded choice)."""
    from latentIMG_mmdit.images import patchify

    patches = patchify(torch.from_numpy(images), patch_size).reshape(-1, 3 * patch_size ** 2).numpy()
    if len(patches) > max_patches:
        patches = patches[np.random.default_rng(seed).choice(len(patches), max_patches, replace=False)]
    return Codebook(kmeans(patches, codes, seed), patch_size, images.shape[-1], seed)


def save(cb: Codebook, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, centroids=cb.centroids.astype(np.float32), patch_size=np.int64(cb.patch_size),
             image_size=np.int64(cb.image_size), seed=np.int64(cb.seed))
    tmp.replace(path)  # atomic: a reader never sees half a codebook
    return path


def load(path: str | Path, patch_size: int | None = None, codes: int | None = None) -> Codebook:
    """A codebook file, checked against the model's patch size and code count when given."""
    path = Path(path)
    if not path.is_file():
        raise CodebookError(f"codebook {path} not found (build one with python -m latentIMG_mmdit.build_codebook)")
    try:
        with np.load(path, allow_pickle=False) as f:
            cb = Codebook(np.asarray(f["centroids"], dtype=np.float32), int(f["patch_size"]), int(f["image_size"]),
                          int(f["seed"]))
    except (OSError, ValueError, KeyError) as e:
        raise CodebookError(f"codebook {path} is not a codebook .npz ({e})") from None
    p = cb.patch_size
    if cb.centroids.ndim != 2 or cb.centroids.shape[1] != 3 * p * p or not np.isfinite(cb.centroids).all():
        raise CodebookError(f"codebook {path}: centroids of shape {list(cb.centroids.shape)} do not fit "
                            f"{p}x{p}x3 patches (or are not finite)")
    if patch_size is not None and p != patch_size:
        raise CodebookError(f"codebook {path} is for {p}x{p} patches; the model uses {patch_size}x{patch_size}")
    if codes is not None and len(cb.centroids) != codes:
        raise CodebookError(f"codebook {path} has {len(cb.centroids)} codes; the model expects {codes} "
                            "(model.codebook_size)")
    return cb
