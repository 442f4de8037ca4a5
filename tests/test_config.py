"""Configs: a wrong key or value fails before any work, naming the key; every key is read."""
import dataclasses
import re

import pytest
import yaml

from latentDLM_mmdit import config as C
from tests.conftest import REPO, run_entry

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


def _fields(cls, prefix=""):
    for f in dataclasses.fields(cls):
        t = f.type if isinstance(f.type, type) else None
        if f.default_factory is not dataclasses.MISSING and dataclasses.is_dataclass(f.default_factory):
            yield from _fields(f.default_factory, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", t


def _schemas():
    from baseline.text_to_latent import T2LRunConfig
    from latentDLM_mmdit.mmdit_objective import MMDiTRunConfig
    from wedlm_bridge.bridge import BridgeRunConfig

    return [T2LRunConfig, MMDiTRunConfig, BridgeRunConfig]


@pytest.mark.parametrize("schema", _schemas(), ids=lambda c: c.__name__)
def test_every_schema_key_is_read_by_the_code(schema):
    code = "\n".join(p.read_text() for d in ("latentDLM_mmdit", "baseline", "wedlm_bridge") for p in (REPO / d).rglob("*.py")
                     if p.name != "config.py")
    unread = [key for key, _ in _fields(schema)
              if not re.search(rf"(?<!self)\.{re.escape(key.split('.')[-1])}\b", code)]
    assert not unread, f"config keys no code reads: {unread}"


def test_shipped_yaml_keys_exist_in_the_schema():
    from baseline.text_to_latent import T2LRunConfig

    known = {k for k, _ in _fields(T2LRunConfig)}

    def leaves(d, prefix=""):
        for k, v in d.items():
            if isinstance(v, dict) and v:
                yield from leaves(v, f"{prefix}{k}.")
            else:
                yield f"{prefix}{k}"

    for group in ("optimizer", "logging", "data", "training"):
        for f in (REPO / "configs" / group).glob("*.yaml"):
            assert {f"{group}.{k}" for k in leaves(yaml.safe_load(f.read_text()))} <= known, f
    primary = yaml.safe_load((REPO / "baseline" / "configs" / "t2l_regression.yaml").read_text())
    primary.pop("defaults"), primary.pop("hydra")
    assert set(leaves(primary)) <= known


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
