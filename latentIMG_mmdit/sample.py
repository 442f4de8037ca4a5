"""Sample a trained image<->caption MMDiT in both directions, and its report with chance levels.

    python -m latentIMG_mmdit.sample t2i --checkpoint RUN --captions captions.txt --out DIR
    python -m latentIMG_mmdit.sample t2i --checkpoint RUN --data validation_data.json --n 32 --out DIR
    python -m latentIMG_mmdit.sample i2t --checkpoint RUN --data validation_data.json --n 32 --out DIR
    python -m latentIMG_mmdit.sample i2t --checkpoint RUN --images a.png b.jpg --length 12 --out DIR
    python -m latentIMG_mmdit.sample report --checkpoint RUN --data validation_data.json --n 128 --out DIR

``t2i`` writes ``DIR/t2i_grid.png`` (each image over its caption), ``DIR/t2i/NNNN.png`` and
``DIR/t2i_captions.txt`` (the captions, in image order). ``i2t`` writes ``DIR/i2t_captions.txt``
(one "image path<TAB>caption" per line) and ``DIR/i2t_grid.png``. A caption's length is chosen
first (the model scores real tokens only): ``--length``, or with ``--data`` another record's
caption length. ``report`` writes both grids, ``DIR/report.json`` and prints the metrics of
``latentIMG_mmdit.metrics`` beside their chance levels. RUN is a run directory (its latest
checkpoint) or a checkpoint.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from tqdm import tqdm

from latentIMG_mmdit.images import ImageError, load_image, save_grid
from latentIMG_mmdit.metrics import sampled_metrics
from latentIMG_mmdit.sampling import caption_to_image, image_to_caption
from mmldlm.argtypes import at_least, nonneg_float, nonneg_int, positive_int
from mmldlm.data.records import DataError


def load(checkpoint: str, device: str = "cpu"):
    """(objective in eval mode, tokenizer, config, step) of a run of either variant."""
    from mmldlm.train.rebuild import open_saved, rebuild_from_checkpoint

    saved = open_saved(checkpoint)  # a run, a checkpoint or an export
    name = saved.objective
    if name not in ("image_continuous", "image_discrete"):
        from mmldlm.objective import readers

        raise SystemExit(f"error: {checkpoint} is a checkpoint of objective {name!r}, not of the image MMDiT: "
                         f"{readers(name)}")
    return (*rebuild_from_checkpoint(saved, device, expect=name), int(saved.step or 0))


def _records(obj, tok, cfg, data: str, n: int, batch_size: int):
    """Batches of the first ``n`` records of ``data`` (a bad image stops with its file, record, reason)."""
    from latentIMG_mmdit.data import load_batch, read_records

    ds = read_records(data)
    n = min(n, len(ds))
    for s in range(0, n, batch_size):
        yield load_batch(ds, list(range(s, min(n, s + batch_size))), tok, cfg.model.max_seq_len, cfg.model.image_size)


def t2i(obj, tok, cfg, a) -> Path:
    if a.captions:
        captions = [c.strip() for c in Path(a.captions).read_text().splitlines() if c.strip()][: a.n]
    else:
        captions = [c for b in _records(obj, tok, cfg, a.data, a.n, a.batch_size)
                    for c in tok.batch_decode(b["input_ids"], skip_special_tokens=True)]
    g = torch.Generator().manual_seed(a.seed)
    images = []
    for s in tqdm(range(0, len(captions), a.batch_size), desc="caption -> image", disable=not sys.stderr.isatty()):
        enc = tok(captions[s:s + a.batch_size], padding=True, truncation=True, max_length=cfg.model.max_seq_len,
                  return_tensors="pt")
        images.append(caption_to_image(obj, enc["input_ids"], enc["attention_mask"].bool(), a.steps, a.guidance,
                                       a.temperature, g))
    images = torch.cat(images)
    out = Path(a.out)
    from PIL import Image

    from latentIMG_mmdit.images import to_uint8

    (out / "t2i").mkdir(parents=True, exist_ok=True)
    for i, arr in enumerate(to_uint8(images)):
        Image.fromarray(arr).save(out / "t2i" / f"{i:04d}.png")
    (out / "t2i_captions.txt").write_text("".join(c + "\n" for c in captions))
    return save_grid(images, out / "t2i_grid.png", captions)


def i2t(obj, tok, cfg, a) -> Path:
    g = torch.Generator().manual_seed(a.seed)
    names, pixels, lengths = [], [], []
    if a.images:
        if not a.length:
            raise SystemExit("error: --images needs --length (caption tokens, [CLS] and [SEP] included)")
        for path in a.images[: a.n]:
            try:
                pixels.append(torch.from_numpy(load_image(path, cfg.model.image_size)))
            except ImageError as e:
                raise SystemExit(f"error: {e}") from None
            names.append(str(path))
        pixels = torch.stack(pixels)
        lengths = torch.full((len(names),), a.length)
    else:
        batches = list(_records(obj, tok, cfg, a.data, a.n, a.batch_size))
        pixels = torch.cat([b["pixels"] for b in batches])
        own = torch.cat([b["attention_mask"].sum(1) for b in batches])
        lengths = torch.full_like(own, a.length) if a.length else own.roll(1)  # another record's length
        names = [f"{a.data}#{i}" for b in batches for i in b["index"].tolist()]
    captions = []
    for s in tqdm(range(0, len(names), a.batch_size), desc="image -> caption", disable=not sys.stderr.isatty()):
        ids, _ = image_to_caption(obj, pixels[s:s + a.batch_size], lengths[s:s + a.batch_size], a.steps,
                                  a.temperature, g)
        captions += tok.batch_decode(ids, skip_special_tokens=True)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "i2t_captions.txt").write_text("".join(f"{n}\t{c}\n" for n, c in zip(names, captions)))
    return save_grid(pixels, out / "i2t_grid.png", captions)


CHANCE = (("t2i_probe_acc", "t2i_probe_chance", "caption -> image: probe accuracy (another caption)"),
          ("t2i_mse", "t2i_mse_chance", "caption -> image: MSE to the image (another image)"),
          ("i2t_f1", "i2t_f1_chance", "image -> caption: token F1 (another caption)"),
          ("i2t_probe_acc", "i2t_probe_chance", "image -> caption: probe accuracy (another image)"))


def report(obj, tok, cfg, a, step: int) -> dict:
    g = torch.Generator().manual_seed(a.seed)
    sums, weight, images, captions, refs, pixels = {}, 0, [], [], [], []
    for b in tqdm(list(_records(obj, tok, cfg, a.data, a.n, a.batch_size)), desc="report",
                  disable=not sys.stderr.isatty()):
        s = sampled_metrics(obj, b, a.steps, a.steps, a.guidance, a.temperature, g)
        k = b["input_ids"].shape[0]
        for key, v in s.metrics.items():
            sums[key] = sums.get(key, 0.0) + v * k
        weight += k
        images.append(s.images)
        pixels.append(b["pixels"])
        captions += s.captions
        refs += s.references
    metrics = {k: v / weight for k, v in sums.items()}
    rep = {"checkpoint": str(a.checkpoint), "step": step, "objective": cfg.objective, "data": str(a.data),
           "records": weight, "t2i_steps": a.steps or cfg.sample.t2i_steps, "i2t_steps": a.steps or "one per position",
           "guidance": cfg.sample.guidance if a.guidance is None else a.guidance,
           "temperature": cfg.sample.temperature if a.temperature is None else a.temperature, "seed": a.seed,
           **metrics, "examples": [{"caption": r, "image_to_caption": c} for r, c in zip(refs[:8], captions[:8])]}
    out = Path(a.out)
    save_grid(torch.cat(images)[:32], out / "t2i_grid.png", refs[:32])
    save_grid(torch.cat(pixels)[:32], out / "i2t_grid.png", captions[:32])
    (out / "report.json").write_text(json.dumps(rep, indent=1))
    return rep


def format_report(rep: dict) -> str:
    lines = [f"{rep['objective']} step {rep['step']}, {rep['records']} records of {rep['data']}",
             f"{'metric':<58} {'model':>8} {'chance':>8}"]
    for key, chance, label in CHANCE:
        if key in rep:
            lines.append(f"{label:<58} {rep[key]:>8.3f} {rep[chance]:>8.3f}")
    for key, label in (("probe_real_acc", "probe accuracy on the true images (its ceiling)"),
                       ("mean_image_mse", "MSE of the mean image (ignores the caption)"),
                       ("codebook_mse", "MSE of the codebook's own reconstruction"),
                       ("i2t_parse_rate", "sampled captions that parse as shapes captions")):
        if key in rep:
            lines.append(f"{label:<58} {rep[key]:>8.3f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict | None:
    p = argparse.ArgumentParser(prog="python -m latentIMG_mmdit.sample", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=["t2i", "i2t", "report"])
    p.add_argument("--checkpoint", required=True, help="a run directory (its latest checkpoint) or a checkpoint")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", help="records file ({image_path, caption, image_id})")
    src.add_argument("--captions", help="t2i: a text file, one caption per line")
    src.add_argument("--images", nargs="+", help="i2t: image files")
    p.add_argument("--out", required=True, help="directory for the grids, images, captions and report")
    p.add_argument("--n", type=positive_int, default=32, help="records / captions / images to use (the first n)")
    p.add_argument("--steps", type=positive_int, default=None, help="sampling steps (default: the run's sample.* keys)")
    p.add_argument("--guidance", type=nonneg_float, default=None, help="classifier-free guidance of caption -> image")
    p.add_argument("--temperature", type=nonneg_float, default=None)
    p.add_argument("--length", type=at_least(3), default=None, help="i2t: caption tokens ([CLS] and [SEP] included)")
    p.add_argument("--batch-size", type=positive_int, default=32)
    p.add_argument("--seed", type=nonneg_int, default=0)
    p.add_argument("--device", default="cpu")
    a = p.parse_args(argv)
    if a.command == "report" and not a.data:
        p.error("report needs --data")
    if (a.command == "t2i" and a.images) or (a.command == "i2t" and a.captions):
        p.error(f"{a.command} reads --data or {'--captions' if a.command == 't2i' else '--images'}")
    obj, tok, cfg, step = load(a.checkpoint, a.device)
    torch.manual_seed(a.seed)
    try:
        if a.command == "t2i":
            print(f"wrote {t2i(obj, tok, cfg, a)}")
        elif a.command == "i2t":
            print(f"wrote {i2t(obj, tok, cfg, a)} and {Path(a.out) / 'i2t_captions.txt'}")
        else:
            rep = report(obj, tok, cfg, a, step)
            print(format_report(rep))
            print(f"wrote {Path(a.out) / 'report.json'}, t2i_grid.png, i2t_grid.png")
            return rep
    except DataError as e:
        print(f"bad data: {e}", file=sys.stderr)
        sys.exit(2)
    return None


if __name__ == "__main__":
    main()
