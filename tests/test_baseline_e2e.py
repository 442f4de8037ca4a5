"""The baseline entrypoint end to end on real data: MiniLM latents of pydoc prose."""
import math
import signal
import time

import pytest

from mmldlm.train.run_log import read_jsonl
from tests.helpers.common import REPO, run_entry

pytestmark = pytest.mark.slow
ENTRY = REPO / "baseline" / "train.py"


def base_args(tmp_path, data, tokenizer_path):
    return ["--config-name", "t2l_regression", f"data.data_files.train={data}",
            f"data.tokenizer_name={tokenizer_path}", f"logging.save_dir={tmp_path}",
            "data.val_split_ratio=0.1", "model.hidden_size=64", "model.n_blocks=2",
            "model.max_seq_len=64", "training.train_batch_size=16", "logging.log_freq=5",
            "logging.eval_freq=20", "logging.progress_bar=false", "data.num_workers=1"]


def run(tmp_path, data, tokenizer_path, *overrides, nproc=1):
    p = run_entry(ENTRY, base_args(tmp_path, data, tokenizer_path) + list(overrides), nproc=nproc)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-4000:]
    return p


def test_trains_logs_and_resumes_exactly(tmp_path, minilm_data, tokenizer_path):
    run(tmp_path, minilm_data, tokenizer_path, "training.num_train_steps=60", "logging.run_name=full",
        "logging.save_freq=20")
    log = read_jsonl(tmp_path / "full" / "training_log.jsonl")
    assert [r["step"] for r in log] == list(range(5, 61, 5))
    for r in log:
        for key in ("loss", "latent_loss", "latent_cos", "grad_norm", "lr", "samples_per_s", "tokens_per_s"):
            assert isinstance(r[key], float) and math.isfinite(r[key]), (key, r)
    assert log[-1]["loss"] < 0.7 * log[0]["loss"]
    evals = read_jsonl(tmp_path / "full" / "eval_log.jsonl")
    assert [e["step"] for e in evals] == [20, 40, 60] and evals[-1]["latent_cos"] > evals[0]["latent_cos"]
    # preempted (SIGTERM) wherever it happens to be after step 25, then resumed: same numbers
    args = ["training.num_train_steps=60", "logging.run_name=cut", "logging.save_freq=20"]
    proc = run_entry(ENTRY, base_args(tmp_path, minilm_data, tokenizer_path) + args, background=True)
    cut_log = tmp_path / "cut" / "training_log.jsonl"
    deadline = time.monotonic() + 300
    while not (cut_log.exists() and any(r["step"] >= 25 for r in read_jsonl(cut_log))):
        assert proc.poll() is None and time.monotonic() < deadline, "run ended before the signal"
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 0
    stopped_at = int((tmp_path / "cut" / "latest").read_text().split("_")[-1].split(".")[0])
    assert 25 <= stopped_at < 60
    run(tmp_path, minilm_data, tokenizer_path, *args, "training.resume=auto")
    cut = read_jsonl(cut_log)
    assert [r["step"] for r in cut] == [r["step"] for r in log]
    assert [r["loss"] for r in cut] == [r["loss"] for r in log]


def test_torchrun_two_ranks_same_losses_as_one(tmp_path, minilm_data, tokenizer_path):
    run(tmp_path, minilm_data, tokenizer_path, "training.num_train_steps=10", "logging.run_name=one")
    run(tmp_path, minilm_data, tokenizer_path, "training.num_train_steps=10", "logging.run_name=two",
        "training.train_batch_size=8", nproc=2)
    one = read_jsonl(tmp_path / "one" / "training_log.jsonl")
    two = read_jsonl(tmp_path / "two" / "training_log.jsonl")
    assert [round(r["loss"], 5) for r in one] == [round(r["loss"], 5) for r in two]
