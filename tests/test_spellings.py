"""One config system and one spelling per concept: an argparse CLI and its Hydra config train the same
model; the old spellings still work (with a note); errors name what the user typed."""
import argparse

import pytest

from mmldlm.config import ConfigError, compose
from mmldlm.flags import add_renamed


def test_an_old_flag_spelling_is_accepted_with_a_note(capsys):
    ap = argparse.ArgumentParser()
    add_renamed(ap, "--out", "--output", required=True)
    assert ap.parse_args(["--out", "a"]).out == "a" and capsys.readouterr().err == ""
    assert ap.parse_args(["--output", "b"]).out == "b"
    assert "note: --output is now spelled --out" in capsys.readouterr().err


def test_the_image_cli_names_its_tokenizer_flag(tmp_path, capsys):
    from latentIMG_mmdit import cli

    with pytest.raises(SystemExit) as e:
        cli.main("continuous", ["--data-root", str(tmp_path), "--tokenizer", "./no/such/tok",
                                "--output-dir", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "--tokenizer: not found: ./no/such/tok" in err and "data.tokenizer_name" not in err


def test_model_presets_reach_every_baseline_and_a_config_without_them_says_so():
    assert compose("t2l_regression", ["model=tiny", "data.data_files.train=x.json"]).model.hidden_size == 512
    with pytest.raises(ConfigError, match="model=tiny: this config has no model presets"):
        compose("latentwire", ["model=tiny"])


def test_the_image_cli_and_its_hydra_config_resolve_to_the_same_config(tmp_path):
    from omegaconf import OmegaConf

    from latentIMG_mmdit import cli

    train = tmp_path / "train_data.json"
    flags = cli.parser("continuous").parse_args(["--data-root", str(tmp_path)])
    as_cli = compose("image_continuous", cli.overrides_from("continuous", flags, []))
    as_hydra = compose("image_continuous", [f"data.data_files.train={train}", "logging.eval_freq=0"])
    assert OmegaConf.to_container(as_cli) == OmegaConf.to_container(as_hydra)  # no flag: the config's values
    flags = cli.parser("continuous").parse_args(["--data-root", str(tmp_path), "--batch-size", "4", "--epochs", "3"])
    given = compose("image_continuous", cli.overrides_from("continuous", flags, []))
    t = given.training
    assert (t.train_batch_size, t.eval_batch_size, t.num_train_epochs) == (4, 4, 3)
    assert given.model == as_hydra.model and given.optimizer == as_hydra.optimizer  # only what a flag says
