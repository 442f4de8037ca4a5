"""Image/caption records through the shared loader, and their collate.

A record is the original's ``{"image_path": str, "caption": str, "image_id": int}`` in
``{data_root}/{split}_data.json``. ``image_path`` is relative to the JSON file's directory (or
``data.latent_data_root``) and may not leave it unless ``data.allow_paths_outside_root`` (the
original wrote absolute paths: ``prepare_coco`` writes relative ones). Fields are checked when the
file is indexed; the image itself when it is read: a missing, unreadable or truncated image is a
bad record (file, record, reason), raised or, with ``data.on_bad_record=skip``, skipped and
counted, never replaced by a grey picture as in the original.

Batch: ``input_ids [B, L]``, ``attention_mask [B, L]`` (the caption, tokenised like every text,
``data.max_seq_len`` tokens at most), ``pixels [B, 3, S, S]`` float32 in [-1, 1], ``index [B]``.
"""
from __future__ import annotations

import numpy as np
import torch

from latentIMG_mmdit.images import ImageError, load_image
from mmldlm.data.collate import Collated, Collator, partition
from mmldlm.data.records import DataError, RecordFields


def record_problem(obj: dict) -> str | None:
    caption = obj.get("caption")
    if not isinstance(caption, str):
        return f"caption is a {type(caption).__name__}, expected a string"
    if not caption.strip():
        return "caption is empty"
    image_id = obj.get("image_id")
    if image_id is not None and (isinstance(image_id, bool) or not isinstance(image_id, int | str)):
        return f"image_id must be an integer or a string, got {image_id!r}"
    return None


IMAGE_RECORDS = RecordFields(name="image_caption", version=1, required=("image_path", "caption"),
                             check=record_problem, needs_text=False, paths=("image_path",))


class ImageCollator:
    """Captions tokenised by the shared :class:`Collator`, images decoded to ``size x size``."""

    wrap = False  # rows are records: documents are never packed

    def __init__(self, tokenizer, max_seq_len: int, image_size: int, fixed_length: bool = False):
        self.text = Collator(tokenizer, max_seq_len, fixed_length)
        self.size = image_size

    def __call__(self, items: list) -> Collated:
        good, bad = partition(items)
        kept, pixels = [], []
        for it in good:
            try:
                pixels.append(load_image(it["files"]["image_path"], self.size))
                kept.append(it)
            except ImageError as e:
                bad.append(DataError(it["file"], it["index"], str(e)))
        tok = self.text.tokenize([it["record"]["caption"] for it in kept])
        stacked = np.stack(pixels) if pixels else np.zeros((0, 3, self.size, self.size), np.float32)
        batch = {"input_ids": tok.input_ids, "attention_mask": tok.attention_mask,
                 "pixels": torch.from_numpy(stacked),
                 "index": torch.tensor([it["index"] for it in kept], dtype=torch.long)}
        return Collated(batch, bad, int(tok.truncated.sum()), len(kept))


def collator(cfg, sources) -> ImageCollator:
    """The family's collate (the registry's ``collator`` hook)."""
    return ImageCollator(sources.tokenizer, cfg.data.max_seq_len, cfg.model.image_size,
                         cfg.data.padding.name == "max_length")


def read_records(data_json: str, root: str | None = None, allow_outside: bool = False, skip: bool = False):
    """Every good record of one image/caption file as a dataset (CLIs: codebook, samplers, report)."""
    from mmldlm.data.loader import RecordDataset, open_checked
    from mmldlm.data.records import RecordRules

    rules = RecordRules(latent_dim=None, latent_root=root, allow_outside=allow_outside, fields=IMAGE_RECORDS)
    return RecordDataset(open_checked(str(data_json), rules, skip, None))


def load_batch(ds, indices: list[int], tokenizer, max_seq_len: int, image_size: int) -> dict:
    """Records ``indices`` of ``ds`` as a batch; a bad image raises its DataError (CLIs never drop one)."""
    from mmldlm.data.collate import settle

    return settle(ImageCollator(tokenizer, max_seq_len, image_size)(ds.__getitems__(indices)), skip=False)[0]
