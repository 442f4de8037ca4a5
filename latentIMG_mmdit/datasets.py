"""Offline image/caption sets for tests and the demo, written as the loader reads them.

    python -m latentIMG_mmdit.datasets shapes --out DIR [--n 4000 --val 256 --size 32 --objects 2 --seed 0]
    python -m latentIMG_mmdit.datasets digits --out DIR [--size 32]

``shapes``: the procedural captioned-shapes set (``latentIMG_mmdit/shapes.py``: "a red circle above
a blue square"), which the pixel probe can check. ``digits``: scikit-learn's 1,797 8x8
handwritten digits upscaled (bicubic) with template captions ("a handwritten digit seven").
Each writes ``DIR/images/*.png``, ``DIR/train_data.json`` and ``DIR/validation_data.json``
(``{image_path, caption, image_id}``, paths relative to DIR) and ``DIR/tokenizer/``, a bert-style
tokenizer of the captions' few dozen words, each whole (``--tokenizer DIR/tokenizer``: bert's
30,522-token vocabulary would be most of a CPU-sized model; the same captions always give the
same ids).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from latentIMG_mmdit import shapes
from mmldlm.argtypes import at_least, nonneg_int, positive_int

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
DIGIT_TEMPLATES = ("a handwritten digit {}", "the number {} written by hand", "a small picture of the digit {}")


def digits(size: int, seed: int) -> tuple[list[np.ndarray], list[str]]:
    """scikit-learn's digits as uint8 ``[size, size, 3]`` (white on black), with template captions."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:  # pragma: no cover - scikit-learn is a dependency
        raise SystemExit("the digits set needs scikit-learn: pip install scikit-learn") from e
    from PIL import Image

    d = load_digits()
    rng = np.random.default_rng(seed)
    images, captions = [], []
    for img, label in zip(d.images, d.target):
        grey = Image.fromarray((img * (255 / 16)).astype(np.uint8)).resize((size, size), Image.Resampling.BICUBIC)
        images.append(np.repeat(np.asarray(grey)[..., None], 3, axis=-1))
        captions.append(DIGIT_TEMPLATES[rng.integers(len(DIGIT_TEMPLATES))].format(DIGIT_WORDS[label]))
    return images, captions


def write(out: str | Path, images: list[np.ndarray], captions: list[str], n_val: int, tokenizer: bool = True) -> Path:
    """PNGs + ``train_data.json`` (all but the last ``n_val``) + ``validation_data.json`` + tokenizer."""
    from PIL import Image

    from mmldlm.data.tokenizer import word_tokenizer

    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    records = []
    for i, (img, cap) in enumerate(zip(images, captions)):
        rel = f"images/{i:06d}.png"
        Image.fromarray(img).save(out / rel)
        records.append({"image_path": rel, "caption": cap, "image_id": i})
    n_train = len(records) - n_val
    if n_train < 1:
        raise SystemExit(f"--val {n_val} leaves no training records out of {len(records)}")
    (out / "train_data.json").write_text(json.dumps(records[:n_train], indent=0))
    (out / "validation_data.json").write_text(json.dumps(records[n_train:], indent=0))
    if tokenizer:
        word_tokenizer(captions, out / "tokenizer")
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m latentIMG_mmdit.datasets", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("kind", choices=["shapes", "digits"])
    p.add_argument("--out", required=True, help="directory to write images/, *_data.json and tokenizer/ into")
    p.add_argument("--n", type=positive_int, default=4000, help="shapes: number of images (digits: always 1,797)")
    p.add_argument("--val", type=nonneg_int, default=256, help="held out as validation_data.json")
    p.add_argument("--size", type=at_least(2), default=32, help="image side in pixels")
    p.add_argument("--objects", type=int, default=2, choices=[1, 2], help="shapes: objects per image")
    p.add_argument("--seed", type=nonneg_int, default=0)
    p.add_argument("--no-tokenizer", action="store_true", help="do not write the captions' tokenizer")
    a = p.parse_args(argv)
    images, captions = shapes.generate(a.n, a.size, a.seed, a.objects) if a.kind == "shapes" else digits(a.size, a.seed)
    out = write(a.out, images, captions, a.val, not a.no_tokenizer)
    print(f"wrote {len(images) - a.val} training and {a.val} validation records ({a.size}x{a.size}) to {out}")


if __name__ == "__main__":
    main()
