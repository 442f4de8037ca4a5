"""Image/caption records from COCO's own annotation files (the original shipped no such script).

    python -m latentIMG_mmdit.prepare_coco --images coco/train2014 --captions annotations/captions_train2014.json \\
        --out data/coco2014 [--split train]
    python -m latentIMG_mmdit.prepare_coco --images coco/val2014 --captions annotations/captions_val2014.json \\
        --out data/coco2014 --split validation

Writes ``OUT/{split}_data.json``: one record ``{image_path, caption, image_id}`` per caption (COCO
has about five per image; ``--captions-per-image`` keeps the first N by annotation id), in
image-id order. Image paths stay relative to OUT, as the loader requires: they go through a
link ``OUT/images/{split}`` to ``--images`` (made here; ``--copy`` copies the files instead).
Record paths are confined to their root with symlinks followed, so a run on linked records names
``--allow-paths-outside-root`` (``data.allow_paths_outside_root=true``); copied ones need nothing.
Every image an annotation names must exist: missing ones are an error listing them
(``--skip-missing`` leaves their captions out and says how many).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from collections import defaultdict
from pathlib import Path

from mmldlm.argtypes import positive_int


class CocoError(ValueError):
    """The annotation file or the image directory does not match COCO's layout."""


def read_annotations(path: str | Path) -> tuple[dict[int, str], dict[int, list[tuple[int, str]]]]:
    """(image id -> file name, image id -> [(annotation id, caption)]) of a COCO captions file."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise CocoError(f"{path}: cannot read a COCO captions file ({e})") from None
    if not isinstance(data, dict) or not {"images", "annotations"} <= data.keys():
        raise CocoError(f"{path}: expected COCO's {{'images': [...], 'annotations': [...]}} (captions_*.json)")
    files = {}
    for im in data["images"]:
        if not isinstance(im, dict) or "id" not in im or "file_name" not in im:
            raise CocoError(f"{path}: an image entry without id / file_name: {str(im)[:200]}")
        files[im["id"]] = im["file_name"]
    captions: dict[int, list[tuple[int, str]]] = defaultdict(list)
    for k, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict) or not isinstance(ann.get("caption"), str) or ann.get("image_id") not in files:
            raise CocoError(f"{path}: annotation {k} has no caption or names an unknown image_id: {str(ann)[:200]}")
        if ann["caption"].strip():
            captions[ann["image_id"]].append((ann.get("id", k), " ".join(ann["caption"].split())))
    return files, captions


def prepare(images: str | Path, captions_file: str | Path, out: str | Path, split: str = "train",
            per_image: int | None = None, copy: bool = False, skip_missing: bool = False) -> dict:
    """Write ``out/{split}_data.json``; returns counts."""
    images, out = Path(images).resolve(), Path(out)
    if not images.is_dir():
        raise CocoError(f"--images {images}: not a directory")
    files, captions = read_annotations(captions_file)
    missing = sorted(i for i in captions if not (images / files[i]).is_file())
    if missing and not skip_missing:
        names = ", ".join(files[i] for i in missing[:5])
        raise CocoError(f"{len(missing)} images named in {captions_file} are not in {images} (e.g. {names}); "
                        "point --images at the right directory, or --skip-missing to leave their captions out")
    out.mkdir(parents=True, exist_ok=True)
    link = out / "images" / split
    link.parent.mkdir(exist_ok=True)
    if copy:
        link.mkdir(exist_ok=True)
    elif link.is_symlink() or link.exists():
        if not (link.is_symlink() and link.resolve() == images):
            raise CocoError(f"{link} exists and is not a link to {images}; remove it or choose another --out")
    else:
        os.symlink(images, link, target_is_directory=True)
    records, skip = [], set(missing)
    for image_id in sorted(captions):
        if image_id in skip:
            continue
        name = files[image_id]
        if copy:
            shutil.copy2(images / name, link / name)
        for _, caption in sorted(captions[image_id])[:per_image]:
            records.append({"image_path": f"images/{split}/{name}", "caption": caption, "image_id": image_id})
    target = out / f"{split}_data.json"
    tmp = target.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(records, ensure_ascii=False, indent=0))
    tmp.replace(target)
    return {"records": len(records), "images": len(captions) - len(skip), "missing_images": len(missing),
            "file": str(target)}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m latentIMG_mmdit.prepare_coco", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", required=True, help="COCO image directory (e.g. train2014/)")
    p.add_argument("--captions", required=True, help="COCO captions annotation file (captions_train2014.json)")
    p.add_argument("--out", required=True, help="data root to write {split}_data.json into (--data-root)")
    p.add_argument("--split", default="train", help="train | validation (the file name's prefix)")
    p.add_argument("--captions-per-image", type=positive_int, default=None,
                   help="keep the first N captions of each image")
    p.add_argument("--copy", action="store_true", help="copy the images under OUT instead of linking their directory")
    p.add_argument("--skip-missing", action="store_true", help="leave out captions whose image file is missing")
    a = p.parse_args(argv)
    try:
        n = prepare(a.images, a.captions, a.out, a.split, a.captions_per_image, a.copy, a.skip_missing)
    except CocoError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    extra = f" ({n['missing_images']} images missing, their captions left out)" if n["missing_images"] else ""
    print(f"wrote {n['records']} records of {n['images']} images to {n['file']}{extra}")
    if not a.copy:
        print(f"the records reach {a.images} through a link: train with --allow-paths-outside-root "
              "(data.allow_paths_outside_root=true), or prepare with --copy")


if __name__ == "__main__":
    main()
