"""Stand-ins for tokenizers that are not on this machine, for estimates.

The estimator resolves a config's sources with ``shapes_only`` (:func:`mmldlm.sources.open_sources`):
a pretrained model that is not here is built from its declared shape, and a tokenizer that is not
here is stood in for by :class:`ShapeTokenizer` (vocabulary size and special ids: all a model's
shapes depend on).
"""
from __future__ import annotations

from dataclasses import dataclass, field


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
