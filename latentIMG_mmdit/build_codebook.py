"""Build the discrete variant's codebook: k-means over the training images' patches, once.

    python -m latentIMG_mmdit.build_codebook --data DIR/train_data.json --out codebook.npz \\
        [--image-size 256 --patch-size 16 --codes 512 --max-images 5000 --seed 0]

A seeded choice of ``--max-images`` records (all when fewer) is decoded exactly as training
decodes them; ``--max-patches`` of their patches (a seeded choice) are clustered
(``latentIMG_mmdit.codebook``). The same data, sizes and seed give the same codebook. A bad
image is an error naming the file, record and reason (``--skip-bad`` skips and counts it).
``train_image_discrete.py`` runs this on first use when no ``--codebook`` is given.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from latentIMG_mmdit import codebook as C
from latentIMG_mmdit.data import read_records
from latentIMG_mmdit.images import ImageError, load_image
from mmldlm.argtypes import at_least, nonneg_int, positive_int
from mmldlm.data.records import DataError
from mmldlm.flags import add_renamed

log = logging.getLogger(__name__)


def build_from_records(data_json: str | Path, out: str | Path, image_size: int, patch_size: int, codes: int,
                       seed: int = 0, max_images: int = 5000, max_patches: int = 200_000, skip_bad: bool = False,
                       root: str | None = None, allow_outside: bool = False) -> Path:
    """Decode a seeded choice of the records' images, cluster their patches, write ``out``."""
    ds = read_records(str(data_json), root, allow_outside, skip_bad)
    n = len(ds)
    if n == 0:
        raise C.CodebookError(f"{data_json} holds no (good) records to build a codebook from")
    chosen = np.sort(np.random.default_rng(seed).permutation(n)[: min(n, max_images)])
    images, bad = [], 0
    for i in tqdm(chosen.tolist(), desc="decoding images for the codebook", unit="img", mininterval=1.0,
                  disable=not sys.stderr.isatty()):
        item = ds[i]
        try:
            if isinstance(item, DataError):
                raise item
            try:
                images.append(load_image(item["files"]["image_path"], image_size))
            except ImageError as e:
                raise DataError(item["file"], item["index"], str(e)) from None
        except DataError as e:
            if not skip_bad:
                raise
            bad += 1
            log.warning("skipping bad record: %s", e)
    if bad:
        log.warning("%d bad records skipped", bad)
    cb = C.build(np.stack(images), patch_size, codes, seed, max_patches)
    return C.save(cb, out)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m latentIMG_mmdit.build_codebook", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="records file ({image_path, caption, image_id}), e.g. train_data.json")
    p.add_argument("--out", required=True, help="the codebook file to write (.npz)")
    p.add_argument("--image-size", type=positive_int, default=256)
    p.add_argument("--patch-size", type=positive_int, default=16)
    add_renamed(p, "--codebook-size", "--codes", type=at_least(2), default=512,
                help="codebook size K (model.codebook_size; the image trainer's --codebook-size)")
    p.add_argument("--max-images", type=positive_int, default=5000, help="records decoded (a seeded choice)")
    p.add_argument("--max-patches", type=positive_int, default=200_000, help="patches clustered (a seeded choice)")
    p.add_argument("--seed", type=nonneg_int, default=0)
    p.add_argument("--image-root", default=None, help="base of relative image paths (default: the file's directory)")
    p.add_argument("--allow-paths-outside-root", action="store_true", help="accept absolute image paths")
    p.add_argument("--skip-bad", action="store_true", help="skip and count bad records instead of stopping")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if a.image_size % a.patch_size:
        p.error(f"--image-size {a.image_size} is not a multiple of --patch-size {a.patch_size}")
    try:
        out = build_from_records(a.data, a.out, a.image_size, a.patch_size, a.codebook_size, a.seed, a.max_images,
                                 a.max_patches, a.skip_bad, a.image_root, a.allow_paths_outside_root)
    except (DataError, C.CodebookError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print(f"wrote a {a.codebook_size}-code codebook of {a.patch_size}x{a.patch_size} patches to {out}")


if __name__ == "__main__":
    main()
