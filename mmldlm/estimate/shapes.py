"""What the estimator builds models from: shapes, never weights or data.

``shapes_only()`` is on while the estimator builds an objective: a family that would load
pretrained weights builds the same architecture from its config values instead (on the meta
device, so nothing is allocated), and a tokenizer that is not on this machine is stood in for by
:class:`ShapeTokenizer` (vocabulary size and special ids: all a model's shapes depend on).
"""
from __future__ import annotations

import contextlib
from contextvars import ContextVar
from dataclasses import dataclass, field

_SHAPES_ONLY: ContextVar[str | None] = ContextVar("mmldlm_shapes_only", default=None)


def is_shape_only() -> bool:
    return _SHAPES_ONLY.get() is not None


def shape_device() -> str:
    """Where shape-only models are built: meta (the estimator), or a real device with random
    weights (``scripts/bench/gpu_check.py`` measuring a config at real size without its checkpoint)."""
    return _SHAPES_ONLY.get() or "meta"


@contextlib.contextmanager
def shapes_only(device: str = "meta"):
    token = _SHAPES_ONLY.set(device)
    try:
        yield
    finally:
        _SHAPES_ONLY.reset(token)


@dataclass
class ShapeTokenizer:
    """A tokenizer's sizes and special ids, for building a model's shapes (``len()`` = vocabulary)."""

    name_or_path: str
    vocab: int
    pad_token_id: int | None = None
    eos_token_id: int | None = None
    bos_token_id: int | None = None
    cls_token_id: int | None = None
    sep_token_id: int | None = None
    unk_token_id: int | None = None
    mask_token_id: int | None = None
    chat_template: str = "(shapes only)"
    extra: list = field(default_factory=list)

    def __len__(self) -> int:
        return self.vocab

    def __call__(self, texts, add_special_tokens: bool = False) -> dict:
        """Stand-in ids of the right length only: one token per 4 characters (about BPE's rate on
        English), id 0; for the few short strings a model's input layout depends on (an anchor)."""
        rows = [[0] * -(-len(t) // 4) for t in ([texts] if isinstance(texts, str) else texts)]
        return {"input_ids": rows[0] if isinstance(texts, str) else rows}

    def apply_chat_template(self, messages, tokenize: bool = False, add_generation_prompt: bool = False) -> str:
        """A ChatML-like rendering (a header's length is what a shape depends on)."""
        text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
        return text + ("<|im_start|>assistant\n" if add_generation_prompt else "")

    @property
    def all_special_ids(self) -> list[int]:
        ids = (self.pad_token_id, self.eos_token_id, self.bos_token_id, self.cls_token_id, self.sep_token_id,
               self.unk_token_id, self.mask_token_id)
        return sorted({i for i in ids if i is not None})

    def add_special_tokens(self, tokens: dict) -> int:
        if "mask_token" in tokens and self.mask_token_id is None:
            self.mask_token_id, self.vocab = self.vocab, self.vocab + 1
        return 1


# the tokenizers the shipped configs name; the Qwen entry is WeDLM's (Qwen3's 151,669 tokens)
KNOWN = {
    "bert-base-uncased": dict(vocab=30522, pad_token_id=0, unk_token_id=100, cls_token_id=101, sep_token_id=102,
                              mask_token_id=103),
    "gpt2": dict(vocab=50257, eos_token_id=50256, bos_token_id=50256, pad_token_id=50256),
    "qwen": dict(vocab=151669, eos_token_id=151645, pad_token_id=151643),
}


def stand_in(name: str) -> ShapeTokenizer:
    key = "bert-base-uncased" if "bert" in name.lower() else "gpt2" if "gpt2" in name.lower() else "qwen"
    return ShapeTokenizer(name_or_path=f"{name} (stand-in: {key} sizes)", **KNOWN[key])


def tokenizer_for(name: str):
    """The real tokenizer when it loads offline from this machine, else the stand-in of its kind."""
    from mmldlm.config import ConfigError
    from mmldlm.data.tokenizer import load_tokenizer

    try:
        return load_tokenizer(name, local_files_only=True)
    except (ConfigError, OSError, ValueError):
        return stand_in(name)
