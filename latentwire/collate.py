"""QA records -> a LatentWire batch (the family's own collate; the shared loader calls it).

Batch (every value a tensor; ``{name}`` is each LLM's name):

- ``bytes [B, Lb] long`` + ``bytes_mask [B, Lb] bool`` (encoder_type byte): the source's UTF-8
  bytes within ``model.max_bytes`` (:func:`~latentwire.encoder.fit_bytes` keeps the question), right-padded;
  or ``st_ids`` / ``st_mask``: the source in the MiniLM tokenizer (simple-st, st-tokens);
- ``{name}.answer [B, T]`` + ``{name}.answer_mask``: the first gold answer's tokens (no special
  tokens, so BOS is never a target; led by the anchor's trailing space, see ``TokenInfo``), at
  most ``model.max_answer_tokens``, then EOS when the answer
  fitted (the original appended none, so its models never learned to stop);
- ``{name}.answer_len [B]``: the answer's tokens without EOS (read only by adapters with metadata);
- ``{name}.teacher [B, S + T]`` + ``{name}.teacher_mask`` (only when the KD or state terms are
  on): the text path's prompt (:func:`text_prompt`; ``loss.kd_teacher_prompt=raw``: the
  original's ``source + anchor`` without special tokens) LEFT-padded to S, then the same
  answer tokens right-padded to T. Every row's answer starts at column S, so the teacher's
  logits at columns S - 1 + t predict answer token t in every row, as the student's do (the
  objective numbers positions from the mask);
- ``index [B]``.

Truncated sources are counted in ``Collated.truncated`` (the loop logs ``truncated_frac`` and warns).
"""
from __future__ import annotations

import numpy as np
import torch

from latentwire.encoder import fit_bytes
from latentwire.llm import SYSTEM_PROMPT, TokenInfo
from latentwire.schema import ST_ENCODERS
from mmldlm.data.collate import Collated, Collator, partition


def _pad(rows: list[list[int]], pad: int, left: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    L = max(1, max(map(len, rows)) if rows else 1)
    ids = np.full((len(rows), L), pad, dtype=np.int64)
    mask = np.zeros((len(rows), L), dtype=bool)
    for i, r in enumerate(rows):
        at = slice(L - len(r), L) if left else slice(0, len(r))
        ids[i, at], mask[i, at] = r, True
    return torch.from_numpy(ids), torch.from_numpy(mask)


def prompt_then_answer(prompts: list[list[int]], answers: torch.Tensor, answer_mask: torch.Tensor,
                       pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``[left-padded prompts][answers]``: every row's answer starts at the same column."""
    ids, mask = _pad(prompts, pad, left=True)
    return torch.cat([ids, answers], 1), torch.cat([mask, answer_mask], 1)


def text_prompt(tok, info, source: str) -> list[int]:
    """The text path's prompt ids: the chat template with the original's system prompt, the source
    as the user turn and the anchor as the assistant's prefill; a tokenizer without a chat template
    gets ``[BOS] source + anchor``. The text baseline reads it, and the KD teacher by default."""
    if info.chat:
        msgs = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": source}]
        prompt = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        prefill = info.anchor_text if not prompt.endswith(info.anchor_text) else ""
        return tok(prompt + prefill, add_special_tokens=False)["input_ids"]
    bos = [info.bos_id] if info.bos_id is not None else []
    return bos + tok(source + info.anchor_text, add_special_tokens=False)["input_ids"]


def answer_ids(tok, info: TokenInfo, answers: list[str], max_tokens: int) -> tuple[list[list[int]], list[int]]:
    """(each answer's target ids: content + EOS when it fitted, content lengths)."""
    content = tok([info.answer_prefix + a for a in answers], add_special_tokens=False)["input_ids"]
    rows = [c[:max_tokens] + ([info.eos_id] if len(c) <= max_tokens else []) for c in content]
    return rows, [min(len(c), max_tokens) for c in content]


class LatentWireCollator:
    def __init__(self, m, loss, tokenizers: dict, infos: dict[str, TokenInfo], st_tokenizer=None):
        self.m, self.tokenizers, self.infos = m, tokenizers, infos
        self.teacher = loss.kd_first_k_weight > 0 or loss.state_kd_weight > 0
        self.chat_teacher = loss.kd_teacher_prompt.name == "chat"
        self.st = None
        if m.encoder_type in ST_ENCODERS:
            # the loader's tokenisation (truncation at MiniLM's 256 tokens is counted)
            self.st = Collator(st_tokenizer, 256)

    def encoder_inputs(self, sources: list[str]) -> tuple[dict, int]:
        """(the encoder's batch entries, how many sources were cut)."""
        if self.st is not None:
            tok = self.st.tokenize(sources)
            return {"st_ids": tok.input_ids, "st_mask": tok.attention_mask}, int(tok.truncated.sum())
        fitted = [fit_bytes(s, self.m.max_bytes) for s in sources]
        ids, mask = _pad([list(b) for b, _ in fitted], 0)
        return {"bytes": ids, "bytes_mask": mask}, sum(cut for _, cut in fitted)

    def batch(self, sources: list[str], answers: list[str]) -> tuple[dict, int]:
        out, cut = self.encoder_inputs(sources)
        for name, tok in self.tokenizers.items():
            info = self.infos[name]
            rows, lens = answer_ids(tok, info, answers, self.m.max_answer_tokens)
            ans, ans_mask = _pad(rows, info.pad_id)
            out[f"{name}.answer"], out[f"{name}.answer_mask"] = ans, ans_mask
            out[f"{name}.answer_len"] = torch.tensor(lens, dtype=torch.long)
            if self.teacher:
                scaffold = ([text_prompt(tok, info, s) for s in sources] if self.chat_teacher else
                            tok([s + info.anchor_text for s in sources], add_special_tokens=False)["input_ids"])
                out[f"{name}.teacher"], out[f"{name}.teacher_mask"] = prompt_then_answer(scaffold, ans, ans_mask,
                                                                                        info.pad_id)
        return out, cut

    def __call__(self, items: list) -> Collated:
        good, bad = partition(items)
        recs = [it["record"] for it in good]
        out, cut = self.batch([r["source"] for r in recs], [r["answers"][0] for r in recs])
        out["index"] = torch.tensor([it["index"] for it in good], dtype=torch.long)
        return Collated(out, bad, cut, len(good))
