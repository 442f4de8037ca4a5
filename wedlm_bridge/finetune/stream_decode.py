"""WeDLM's streaming parallel decoding on a stock Qwen3 / Qwen2, on CPU: a reference to sample a
fine-tune without the CUDA-only ``wedlm`` engine (refs/wedlm_finetune.md B.2; the engine's
``sampler.py`` / ``wedlm_decoder.py``). Not fast: every step re-runs the whole sequence.

    python -m wedlm_bridge.finetune.stream_decode --model EXPORT_DIR --prompt "..." [--window 16]
        [--entropy-threshold 0.4] [--pos-penalty 0.02] [--max-new-tokens 64] [--temperature 0]

A window of ``window`` slots follows the committed text. Each step runs [committed | the window's
filled tokens | its [MASK]s] with logical positions under causal attention (what training's
prediction stream teaches: a block sees the clean text before it and its own earlier tokens,
filled ones first), and reads the distribution at every [MASK]. A mask whose entropy + pos_penalty x
(its distance to the leftmost mask) is below the threshold is filled, or when none is, the one
with the lowest such score; filled with the argmax at temperature 0, else a float64 draw. The
window's leftmost contiguous filled tokens are committed and the window refilled with masks.
With ``window=1`` it is greedy decoding one [MASK] slot at a time.
"""
from __future__ import annotations

import argparse
from typing import NamedTuple

import torch

from mmldlm.argtypes import nonneg_float, nonneg_int, positive_int


class Decoded(NamedTuple):
    ids: list[int]  # the generated tokens (stop token included when reached)
    forwards: int  # model calls: tokens per forward = len(ids) / forwards


@torch.no_grad()
def stream_decode(model, prompt: list[int], mask_id: int, stop_ids: set[int], window: int = 16,
                  max_new_tokens: int = 64, entropy_threshold: float = 0.4, pos_penalty: float = 0.02,
                  temperature: float = 0.0, generator: torch.Generator | None = None) -> Decoded:
    from mmldlm.eval.samplers import categorical

    device = next(model.parameters()).device
    committed, out = list(prompt), []
    slots: list[int | None] = [None] * min(window, max_new_tokens)  # None = [MASK], by logical position
    forwards = 0
    while slots:
        filled = [j for j, t in enumerate(slots) if t is not None]
        masks = [j for j, t in enumerate(slots) if t is None]
        order = filled + masks  # physical order of the window: filled first, masks last
        n = len(committed)
        ids = torch.tensor([committed + [slots[j] for j in filled] + [mask_id] * len(masks)], device=device)
        pos = torch.tensor([list(range(n)) + [n + j for j in order]], device=device)
        logits = model(input_ids=ids, position_ids=pos, use_cache=False).logits[0, n + len(filled):].double()
        forwards += 1
        logp = torch.log_softmax(logits / temperature if temperature > 0 else logits, -1)
        entropy = -(logp.exp() * logp).sum(-1)
        score = entropy + pos_penalty * (torch.tensor(masks, dtype=torch.float64, device=device) - masks[0])
        chosen = (score < entropy_threshold).nonzero().flatten().tolist() or [int(score.argmin())]
        tokens = categorical(logits[chosen], temperature=temperature, generator=generator).tolist()
        for c, tok in zip(chosen, tokens):
            slots[masks[c]] = tok
        while slots and slots[0] is not None:  # commit the leftmost contiguous filled tokens
            tok = slots.pop(0)
            committed.append(tok)
            out.append(tok)
            if tok in stop_ids:
                return Decoded(out, forwards)
            if len(out) + len(slots) < max_new_tokens:
                slots.append(None)
    return Decoded(out, forwards)


def main(argv=None) -> None:
    from mmldlm.data.tokenizer import load_tokenizer
    from wedlm_bridge.backbone import load_backbone
    from wedlm_bridge.finetune.objective import mask_token_id

    ap = argparse.ArgumentParser(prog="python -m wedlm_bridge.finetune.stream_decode", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="a WeDLM / exported fine-tune directory (local)")
    ap.add_argument("--prompt", required=True, help="the user turn (rendered with the chat template)")
    ap.add_argument("--window", type=positive_int, default=16)
    ap.add_argument("--entropy-threshold", type=nonneg_float, default=0.4)
    ap.add_argument("--pos-penalty", type=nonneg_float, default=0.02)
    ap.add_argument("--max-new-tokens", type=positive_int, default=64)
    ap.add_argument("--temperature", type=nonneg_float, default=0.0)
    ap.add_argument("--seed", type=nonneg_int, default=0)
    a = ap.parse_args(argv)
    tok = load_tokenizer(a.model, local_files_only=True, key="--model")
    model = load_backbone(a.model, "float32").eval()
    text = tok.apply_chat_template([{"role": "user", "content": a.prompt}], tokenize=False, add_generation_prompt=True)
    candidates = (tok.eos_token_id, tok.convert_tokens_to_ids("<|im_end|>"))
    stops = {t for t in candidates if t not in (None, tok.unk_token_id)}
    out = stream_decode(model, tok.encode(text, add_special_tokens=False), mask_token_id(model.config, len(tok)),
                        stops, a.window, a.max_new_tokens, a.entropy_threshold, a.pos_penalty, a.temperature,
                        torch.Generator().manual_seed(a.seed))
    print(tok.decode(out.ids, skip_special_tokens=True))
    rate = len(out.ids) / max(out.forwards, 1)
    print(f"[{len(out.ids)} tokens in {out.forwards} forwards: {rate:.2f} tokens/forward]")


if __name__ == "__main__":
    main()
