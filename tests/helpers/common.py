"""Helpers every test module shares (no test module imports another): paths, runners for the
entrypoints as users run them, datasets of real prose, configs and batches built in-process."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parents[2]


def shipped_families() -> dict:
    """The registry without a test's toy family (``tiny``, registered in this process as soon as
    a test file importing tests/helpers/tiny_train.py is collected)."""
    from mmldlm.objective import registered

    return {name: entry for name, entry in registered().items()
            if not Path(entry.config_dir).resolve().is_relative_to(REPO / "tests")}
TINY = REPO / "tests" / "helpers" / "tiny_train.py"


def tiny_args(data: Path, tokenizer_path: str, save_dir: Path, run_name: str) -> list[str]:
    """The overrides every tiny-entrypoint run starts from: its data, tokenizer and run directory."""
    return [f"data.data_files.train={data}", f"data.tokenizer_name={tokenizer_path}", f"logging.save_dir={save_dir}",
            f"logging.run_name={run_name}"]


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


def run_module(module: str, *args, timeout: float = 300, env: dict | None = None, cwd: Path = REPO):
    """``python -m module args`` (a CLI), output captured."""
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


def ok(p):
    """Assert a finished process succeeded, showing the end of its output if not."""
    assert p.returncode == 0, (p.stdout or "")[-3000:] + (p.stderr or "")[-5000:]
    return p


def wait_for(cond, what: str, timeout: float = 180, proc=None):
    """Poll ``cond()`` until true (a background run reached a state); fails after ``timeout``."""
    end = time.monotonic() + timeout
    while not cond():
        assert proc is None or proc.poll() is None, f"the background process ended before {what}"
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.05)


def make_dataset(out_dir: Path, texts: list[str], dim: int = 16, layout: str = "shard", seed: int = 0,
                 json_name: str = "train_data.json") -> Path:
    """Records of ``texts`` with random latents, in the loader's format."""
    from preprocessed_data.demo_corpus import write_dataset

    lat = np.random.default_rng(seed).standard_normal((len(texts), dim)).astype(np.float32) * 0.5
    return write_dataset(out_dir, texts, lat, layout=layout, json_name=json_name)


def make_cfg(schema: type, **overrides):
    """A structured config of ``schema`` with dotted-key ``overrides`` (in-process tests)."""
    cfg = OmegaConf.structured(schema)
    for k, v in {"data.data_files.train": "x", **overrides}.items():
        OmegaConf.update(cfg, k, v, force_add=False)
    return cfg


def make_batch(tokenizer, texts: list[str], dim: int, k: int = 1, b: int = 4, max_len: int = 48) -> dict:
    """A core batch of the first ``b`` texts, each with ``k`` random latents of ``dim``."""
    from mmldlm.data.collate import Collator, settle

    items = [{"text": t, "index": i, "latent": np.random.default_rng(i).standard_normal((k, dim)).astype(np.float32)}
             for i, t in enumerate(texts[:b])]
    return settle(Collator(tokenizer, max_len)(items), skip=False)[0]


def tiny_judge(tokenizer_path):
    """A tiny random causal LM over the bert vocabulary as a gen-PPL judge: for tests of the
    generate -> score chain (the real offline judge is tested in test_gen_ppl.py)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from mmldlm.eval.gen_ppl import Judge

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=30522, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64))
    tok = AutoTokenizer.from_pretrained(tokenizer_path)
    tok.bos_token = tok.cls_token  # a document starts with [CLS] in this vocabulary
    return Judge.from_model(model, tok, "tiny random judge")


def data_training_cfgs(latent_dim, train=None, **data_kw):
    """Structured ``data`` and ``training`` sections for loader tests: max_seq_len 64, no workers,
    batches of 4, ``data_kw`` dotted overrides of the data section."""
    from mmldlm.config import DataConfig, TrainingConfig

    data = OmegaConf.structured(DataConfig)
    if train is not None:
        data.data_files.train = str(train)
    data.latent_dim, data.max_seq_len, data.num_workers = latent_dim, 64, 0
    for k, v in data_kw.items():
        OmegaConf.update(data, k, v)
    training = OmegaConf.structured(TrainingConfig)
    training.train_batch_size, training.eval_batch_size = 4, 4
    return data, training
