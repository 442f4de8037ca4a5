"""SFT records through the shared loader: conversations, tokenised with the chat template.

A record (one JSON value of a JSON list or JSONL file) is any of:
- Tencent's format: an array of ``{"role", "content"}`` messages;
- ``{"messages": [...]}`` (the chat format of most SFT sets);
- an Alpaca record ``{"instruction", "input", "output"}``: user = instruction (+ "\\n\\n" + input
  when non-empty), assistant = output (as Tencent's ``download_alpaca_sft.py``).
Roles are system / user / assistant; the last message is the assistant's answer, after at least
one other (a lone message has no prompt: Tencent's code gives it no loss; here it is a bad record).

Tokens: the conversation rendered by the tokenizer's chat template, tokenised per message: the
template's own markers are special tokens, and special-token strings inside a message's content
are plain text (a typed ``<|im_end|>`` never ends a turn inside the supervised answer); everything
up to the final assistant turn (the prompt: ``messages[:-1]`` with the generation prompt) has label
-100, so no loss in either of WeDLM's terms, and is never masked. ``num_learnable_im_end`` - 1 extra
``<|im_end|>`` follow the answer, supervised. A conversation longer than ``data.max_seq_len`` is cut
(counted as truncated); one whose prompt leaves no answer token is a bad record.

Rows: one conversation per row, right-padded (``segment`` -1 on pads: never masked, attended or
scored), or with ``packing`` the batch's conversations packed in order into rows of
``data.max_seq_len`` (a conversation that does not fit starts the next row: nothing is cut or
dropped, unlike Tencent's truncate-and-discard); positions restart per conversation and no
conversation attends another. Batch: ``input_ids``, ``labels``, ``segment``, ``positions``,
``records`` (all ``[R, L]``) and ``index [R]`` (the record of each row's first conversation).
"""
from __future__ import annotations

import re
from typing import NamedTuple

import torch

from mmldlm.config import ConfigError
from mmldlm.data.collate import Collated, cut_text, partition
from mmldlm.data.records import DataError, RecordFields

ROLES = ("system", "user", "assistant")
# a message's place in the rendered template: private-use characters no template writes itself
_SLOT = "\ue000{}\ue001"
_SLOT_RE = re.compile("\ue000(\\d+)\ue001")


def to_conversation(obj) -> dict:
    """``{"messages": [...]}`` from any accepted record form; ValueError with the reason otherwise."""
    if isinstance(obj, list):
        messages = obj
    elif isinstance(obj, dict) and "messages" in obj:
        messages = obj["messages"]
    elif isinstance(obj, dict) and ("instruction" in obj or "output" in obj):
        messages = _alpaca(obj)
    else:
        raise ValueError("record is neither an array of {role, content} messages, a {\"messages\": [...]} object "
                         "nor an Alpaca record (instruction / input / output)")
    if not isinstance(messages, list) or not messages:
        raise ValueError("messages must be a non-empty array of {role, content} objects")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            got = repr(m)[:200]
            raise ValueError(f"message {i} must be {{\"role\": {' | '.join(ROLES)}, \"content\": string}}, got {got}")
    if messages[-1]["role"] != "assistant" or not messages[-1]["content"].strip():
        raise ValueError("the last message must be a non-empty assistant turn: it is what is learned")
    if len(messages) < 2:
        raise ValueError("a lone assistant message has no prompt; a conversation needs a turn before the answer")
    return {"messages": [{"role": m["role"], "content": m["content"]} for m in messages]}


def _alpaca(obj: dict) -> list[dict]:
    instruction, extra, output = obj.get("instruction"), obj.get("input", ""), obj.get("output")
    for name, value in (("instruction", instruction), ("output", output)):
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"Alpaca record: {name} must be a non-empty string")
    if not isinstance(extra, str):
        raise ValueError("Alpaca record: input must be a string")
    user = instruction + ("\n\n" + extra if extra.strip() else "")
    return [{"role": "user", "content": user}, {"role": "assistant", "content": output}]


SFT_RECORDS = RecordFields(name="sft", version=1, needs_text=False, normalize=to_conversation)


class Encoded(NamedTuple):
    ids: list[int]
    prompt_len: int  # tokens with label -100
    truncated: bool


class SFTCollator:
    """Conversations -> rows (module docstring). Returns :class:`~mmldlm.data.collate.Collated`."""

    def __init__(self, tokenizer, max_seq_len: int, packing: bool = False, num_learnable_im_end: int = 0):
        if not getattr(tokenizer, "chat_template", None):
            raise ConfigError(f"data.tokenizer_name: {tokenizer.name_or_path!r} has no chat template; SFT renders "
                              "conversations with it (use the backbone's own tokenizer)")
        self.tok, self.max_len, self.packing = tokenizer, max_seq_len, packing
        self.extra: list[int] = []
        if num_learnable_im_end > 1:
            im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
            if im_end is None or im_end == tokenizer.unk_token_id:
                raise ConfigError("finetune.num_learnable_im_end: the tokenizer has no <|im_end|> token")
            self.extra = [im_end] * (num_learnable_im_end - 1)
        pad = tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else tokenizer.eos_token_id or 0  # pads are never read

    def render_ids(self, messages: list[dict], generation_prompt: bool = False) -> list[int]:
        """The conversation as the chat template renders it, tokenised piece by piece: the template's
        own text with its special tokens, each message's content with special-token strings split
        into plain text. A literal ``<|im_end|>`` typed in a message is characters, never the end of
        a turn (tokenising the whole rendering made it one). ValueError when the template rewrites
        message content, so that its markers cannot be told from the content."""
        render = self.tok.apply_chat_template
        slotted = render([{**m, "content": _SLOT.format(i)} for i, m in enumerate(messages)], tokenize=False,
                         add_generation_prompt=generation_prompt)
        parts = _SLOT_RE.split(slotted)  # template, message number, template, ..., template
        order = [int(i) for i in parts[1::2]]
        template = parts[0::2]
        contents = [messages[i]["content"] for i in order]
        plain = render(messages, tokenize=False, add_generation_prompt=generation_prompt)
        if order != list(range(len(messages))) or \
                "".join(t + c for t, c in zip(template, contents)) + template[-1] != plain:
            raise ValueError("the chat template rewrites message content, so its own markers cannot be told from "
                             "the content; use a template that renders each message's content as it is")
        template_ids = self.tok(template, add_special_tokens=False)["input_ids"]
        ids = list(template_ids[0])
        for content, after in zip(self._content_ids(contents), template_ids[1:]):
            ids += content + after
        return ids

    def _content_ids(self, contents: list[str]) -> list[list[int]]:
        """Each content's ids, special-token strings as text; a content far longer than the row is
        cut first (``cut_text``: one 5 MB message must not cost gigabytes to keep a row's tokens)."""
        cut = [cut_text(c, self.max_len) for c in contents]
        ids = self.tok(cut, add_special_tokens=False, split_special_tokens=True)["input_ids"]
        for j, (c, full) in enumerate(zip(cut, contents)):
            if c is not full and len(ids[j]) <= self.max_len:  # the cut held too few tokens: all of it after all
                ids[j] = self.tok(full, add_special_tokens=False, split_special_tokens=True)["input_ids"]
        return ids

    def encode(self, messages: list[dict]) -> Encoded:
        """Token ids, prompt length, whether cut; ValueError when no answer token fits."""
        full = self.render_ids(messages)
        prompt = self.render_ids(messages[:-1], generation_prompt=True)
        if full[: len(prompt)] != prompt:
            raise ValueError("the chat template renders the prompt differently inside the conversation; cannot "
                             "tell where the answer starts")
        room = self.max_len - len(self.extra)
        if len(prompt) >= room:
            raise ValueError(f"the prompt alone is {len(prompt)} tokens: data.max_seq_len={self.max_len} leaves no "
                             "answer token to learn")
        return Encoded(full[:room] + self.extra, len(prompt), len(full) > room)

    def __call__(self, items: list) -> Collated:
        good, bad = partition(items)
        convs = []
        for it in good:
            try:
                convs.append((it["index"], self.encode(it["record"]["messages"])))
            except ValueError as e:
                bad.append(DataError(it["file"], it["index"], str(e)))
        rows: list[list[tuple[int, Encoded]]] = []
        for number, enc in convs:  # packing: in order, a conversation that does not fit opens a row
            if self.packing and rows and sum(len(e.ids) for _, e in rows[-1]) + len(enc.ids) <= self.max_len:
                rows[-1].append((number, enc))
            else:
                rows.append([(number, enc)])
        width = max((sum(len(e.ids) for _, e in row) for row in rows), default=1)
        shape = (len(rows), width)
        ids = torch.full(shape, self.pad_id, dtype=torch.long)
        labels = torch.full(shape, -100, dtype=torch.long)
        segment = torch.full(shape, -1, dtype=torch.long)
        positions = torch.zeros(shape, dtype=torch.long)
        records = torch.full(shape, -1, dtype=torch.long)
        for r, row in enumerate(rows):
            start = 0
            for s, (number, enc) in enumerate(row):
                end = start + len(enc.ids)
                ids[r, start:end] = torch.tensor(enc.ids)
                labels[r, start + enc.prompt_len:end] = ids[r, start + enc.prompt_len:end]
                segment[r, start:end] = s
                positions[r, start:end] = torch.arange(len(enc.ids))
                records[r, start:end] = number
                start = end
        batch = {"input_ids": ids, "labels": labels, "segment": segment, "positions": positions, "records": records,
                 "index": torch.tensor([row[0][0] for row in rows], dtype=torch.long)}
        return Collated(batch, bad, sum(e.truncated for _, e in convs), len(convs))
