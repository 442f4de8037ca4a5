"""Configs: a wrong key or value fails before any work, naming the key; every key is read."""

import pytest

from mmldlm import config as C
from tests.helpers.common import REPO, run_entry

BASELINE = REPO / "baseline" / "train.py"


@pytest.mark.parametrize("override,words", [
    ("training.foo=1", ["training.foo"]),
    ("+training.foo=1", ["foo", "TrainingConfig"]),
    ("training.num_train_steps=abc", ["training.num_train_steps", "abc"]),
    ("training.lr_schedule=exp", ["training.lr_schedule", "cosine", "linear", "constant"]),
    ("training.dtype=fp16", ["training.dtype", "fp32", "bf16"]),
    ("training.gradient_accumulation_steps=0", ["training.gradient_accumulation_steps", ">= 1"]),
    ("optimizer.beta2=1.5", ["optimizer.beta2"]),
    ("data.on_bad_record=ignore", ["data.on_bad_record", "error", "skip"]),
    ("data.val_split_ratio=0.1", ["data.val_split_ratio", "not both"]),
    ("data.data_files.train=null", ["data.data_files.train", "required"]),
    ("training.resume=/nonexistent/ckpt.pt", ["training.resume", "does not exist"]),
    ("model.n_heads=3", ["model.hidden_size", "model.n_heads"]),
    ("training.num_train_step=3", ["training.num_train_step", "did you mean training.num_train_steps?"]),
    ("optimizer.weight_decy=0.1", ["did you mean optimizer.weight_decay?"]),
    ("data.max_seq_len=999", ["data.max_seq_len", "999 exceeds model.max_seq_len (128)"]),
])
def test_bad_config_fails_before_any_work_naming_the_key(tmp_path, tokenizer_path, override, words):
    p = run_entry(BASELINE, ["--config-name", "t2l_regression", "data.data_files.train=/x.json",
                             "data.data_files.validation=/v.json", f"data.tokenizer_name={tokenizer_path}",
                             f"logging.save_dir={tmp_path}", override])
    out = p.stdout + p.stderr
    assert p.returncode != 0
    for w in words:
        assert w in out, (w, out)
    assert "Traceback" not in out
    assert not list(tmp_path.iterdir()), "work started despite the config error"


def test_help_names_the_script_that_runs_and_the_loader_cli_explains_itself():
    import subprocess
    import sys

    stable = subprocess.run([sys.executable, str(REPO / "latentDLM_mmdit" / "train_mmdit_stable.py"), "--help"],
                            capture_output=True, text=True, cwd=REPO)
    assert stable.returncode == 0 and stable.stdout.startswith("latentDLM_mmdit/train_mmdit_stable.py:")
    loader = subprocess.run([sys.executable, "-m", "latentDLM_mmdit.data_simple", "--help"],
                            capture_output=True, text=True, cwd=REPO)
    assert loader.returncode == 0 and "check PATH.json --latent-dim D" in loader.stdout


def test_config_error_type_is_a_value_error():
    with pytest.raises(C.ConfigError, match="training.warmup_steps"):
        C.TrainingConfig(warmup_steps=-1).check()
