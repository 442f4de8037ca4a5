"""The KD teacher's logits, cached on disk per record and receiver.

The KD teacher is the frozen receiver reading ``source + anchor`` (about 80 % of a step's FLOPs
in the users' 8B + 7B command, docs/estimates.md); its logits at the first K answer steps never
change while the receiver does not, so each record's are computed once and read back in every
later epoch (and by a resumed run). ``loss.kd_cache`` (default on) turns it on,
``loss.kd_cache_dir`` places it (null: ``RUN_DIR/kd_cache``).

Layout: ``DIR/{llm name}/receiver.json`` (the receiver's fingerprint, its vocabulary, what the
entries hold) and one ``.npz`` per record, named by the SHA-256 of what the teacher read (the
scaffold's token ids and the first K answer ids) and of how it is stored (K, top-k, tau, the
LLM's dtype). A directory filled by another receiver (its :func:`receiver_fingerprint` differs) is
refused with an error, never read.

Storage (``loss.kd_cache_topk``): 0 keeps every logit (exact; V floats per step); k > 0 keeps
the k largest logits per step plus the teacher's probability mass outside them at ``kd_tau``,
and reads back a row whose other V - k logits share that mass equally (the KD then differs from
the live teacher's by the tail's shape only; ``scripts/bench/bench_latentwire_kd_cache.py``
reports that difference as a KL).
"""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger("mm_ldlm.latentwire")


class KDCacheError(RuntimeError):
    """A cache directory that belongs to another receiver or another storage layout."""


def receiver_fingerprint(sources, name: str, sample: int = 1 << 16) -> str:
    """The receiver's identity for its cached logits: source ``name``'s fingerprint (``config.json``
    and the safetensors headers, :mod:`mmldlm.sources.fingerprint`) plus the first and last
    ``sample`` bytes of each weight file's tensor data. The headers alone do not change when
    weights are re-trained at the same shapes; the logits do, so the cache hashes some values too."""
    from mmldlm.sources.resolve import safetensors_header, weight_files

    rec = sources.records().get(name)
    if rec is None or not rec.get("fingerprint"):
        raise KDCacheError(f"{name}: no local files to fingerprint the receiver with (turn loss.kd_cache off)")
    h = hashlib.sha256(rec["fingerprint"].encode())
    for f in weight_files(Path(rec["path"])):
        raw, end = safetensors_header(f)
        with open(f, "rb") as fh:
            fh.seek(8 + len(raw))
            h.update(fh.read(sample))
            fh.seek(max(8 + len(raw), end - sample))
            h.update(fh.read(sample))
    return h.hexdigest()


class KDCache:
    """One LLM's cached teacher logits (module docstring)."""

    def __init__(self, root: str | Path, name: str, fingerprint: str, vocab: int, K: int, topk: int, tau: float,
                 dtype: str):
        self.dir = Path(root) / name
        self.vocab, self.K, self.topk, self.tau = vocab, K, topk if 0 < topk < vocab else 0, tau
        self.layout = {"K": K, "topk": self.topk, "tau": tau if self.topk else None, "dtype": dtype}
        meta = self.dir / "receiver.json"
        want = {"fingerprint": fingerprint, "vocab": vocab}
        if meta.is_file():
            have = json.loads(meta.read_text())
            if have.get("fingerprint") != fingerprint or have.get("vocab") != vocab:
                raise KDCacheError(
                    f"{self.dir}: this KD cache was filled by another receiver (fingerprint "
                    f"{str(have.get('fingerprint'))[:12]}, this run's {name} is {fingerprint[:12]}): its logits are "
                    "not this model's. Delete the directory or set loss.kd_cache_dir elsewhere")
        else:
            from mmldlm.io import write_json_atomic

            self.dir.mkdir(parents=True, exist_ok=True)
            write_json_atomic(meta, {**want, "note": "LatentWire KD teacher logits (latentwire/kd_cache.py)"},
                              unique_tmp=True)
        self.hits = self.misses = 0

    def key(self, prompt: list[int], answer: list[int]) -> str:
        h = hashlib.sha256(json.dumps(self.layout, sort_keys=True).encode())
        h.update(np.asarray(prompt, dtype=np.int64).tobytes() + b"|" + np.asarray(answer[: self.K], np.int64).tobytes())
        return h.hexdigest()

    def _path(self, key: str) -> Path:
        return self.dir / key[:2] / f"{key}.npz"

    def get(self, key: str) -> torch.Tensor | None:
        """The entry's logits ``[k, V]`` (float32), or None when absent."""
        path = self._path(key)
        if not path.is_file():
            return None
        with np.load(path, allow_pickle=False) as z:
            values = torch.from_numpy(z["values"])
            if not self.topk:
                return values
            index, tail = torch.from_numpy(z["index"]).long(), torch.from_numpy(z["tail"])
        return _dense(values, index, tail, self.vocab, self.tau)

    def put(self, key: str, logits: torch.Tensor) -> torch.Tensor:
        """Store ``logits [k, V]`` (this record's first k <= K answer steps); returns them as
        :meth:`get` will read them back."""
        from mmldlm.io import write_atomic

        logits = logits.detach().float().cpu()
        if self.topk:
            values, index = logits.topk(self.topk, -1)
            p = torch.softmax(logits / self.tau, -1)
            tail = (1 - p.gather(-1, index).sum(-1)).clamp_min(0)
            arrays = {"values": values.numpy(), "index": index.int().numpy(), "tail": tail.numpy()}
        else:
            arrays = {"values": logits.numpy()}
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, lambda f: np.savez(f, **arrays), unique_tmp=True)
        return _dense(values, index, tail, self.vocab, self.tau) if self.topk else logits


def _dense(values: torch.Tensor, index: torch.Tensor, tail: torch.Tensor, vocab: int, tau: float) -> torch.Tensor:
    """A full logit row from the top-k ``values`` / ``index`` and the tail mass at ``tau``: the
    other V - k logits share that mass equally (softmax at ``tau`` gives back the stored top-k
    probabilities and tail mass)."""
    k = values.shape[-1]
    top = torch.logsumexp(values / tau, -1)
    tail = tail.clamp(1e-12, 1 - 1e-7)
    fill = tau * (torch.log(tail) - torch.log1p(-tail) + top - np.log(vocab - k))
    out = fill[:, None].expand(-1, vocab).clone()
    out.scatter_(-1, index, values)
    return out
