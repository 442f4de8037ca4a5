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


def test_the_latentwire_cli_and_its_hydra_config_resolve_to_the_same_config(tmp_path):
    """No optional flag: the CLI's config is ``--config-name latentwire`` with the same data and LLM
    keys; a flag given (either spelling) sets exactly its key."""
    from omegaconf import OmegaConf

    from latentwire import cli

    def resolved(cfg) -> dict:
        return OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)

    def config(*argv, cuda=True):
        ap = cli.train_parser()
        args, rest = ap.parse_known_args(["--dataset", "synthetic", *argv])
        return resolved(cli.train_config(args, rest, cuda=cuda, spelled=ap.spelled))

    records = f"data.data_files.train={tmp_path / 'run' / 'data' / 'train.jsonl'}"
    run = [f"logging.save_dir={tmp_path}", "logging.run_name=run"]
    as_hydra = resolved(compose("latentwire", [*run, records]))
    assert config("--output-dir", str(tmp_path / "run")) == as_hydra  # the schema's defaults, not argparse's
    epochs = config("--output_dir", str(tmp_path / "run"), "--epochs", "0.5")  # the users' underscore spelling
    assert epochs["training"].pop("num_train_epochs") == 0.5 and as_hydra["training"].pop("num_train_epochs") is None
    assert epochs == as_hydra  # exactly its key
    given = config("--output-dir", str(tmp_path / "run"), "--batch_size", "8", "--warm-anchor-text", "Answer: ",
                   "--sequential_models", "--state-kd-layers", "1,2", "--models", "", "--llm", f"smol={tmp_path}")
    assert (given["training"]["train_batch_size"], given["model"]["anchor_text"]) == (8, "Answer: ")
    assert given["model"]["sequential_models"] and given["loss"]["state_kd_layers"] == [1, 2]
    assert given["model"]["llms"] == [{"name": "smol", "path": str(tmp_path)}]
    given["training"].pop("num_train_epochs")
    for section, keys in {"model": ("llms", "anchor_text", "sequential_models"), "loss": ("state_kd_layers",),
                          "training": ("train_batch_size",), "data": ("tokenizer_name",)}.items():  # (the LLM's)
        for k in keys:
            given[section].pop(k), as_hydra[section].pop(k)
    assert given == as_hydra  # nothing else moved
    # without CUDA the LLMs and the loop run fp32 unless said otherwise (the CLI's one device rule)
    cpu = config("--output-dir", str(tmp_path / "run"), cuda=False)
    assert (cpu["model"]["llm_dtype"], cpu["training"]["dtype"]) == ("float32", "fp32")
    cpu = config("--output-dir", str(tmp_path / "run"), "--llm_dtype", "bfloat16", "training.dtype=bf16", cuda=False)
    assert (cpu["model"]["llm_dtype"], cpu["training"]["dtype"]) == ("bfloat16", "bf16")


def test_underscore_spellings_are_the_same_flags_and_errors_name_what_was_typed(capsys):
    from latentwire.cli import train_main, train_parser

    ap = train_parser()
    a = ap.parse_args(["--data_file", "f.json", "--batch-size", "4", "--save_dir", "r", "--first_token_ce_weight", "2"])
    assert (a.data_file, a.batch_size, a.output_dir, a.first_token_ce_weight) == ("f.json", 4, "r", 2.0)
    err = capsys.readouterr().err
    assert err.count("note:") == 1 and "note: --save_dir is now spelled --output-dir" in err  # a rename only
    assert "--batch-size" in ap.format_help() and "--batch_size" not in ap.format_help()
    for argv, words in [(["--batch_size", "0"], "argument --batch_size: must be >= 1, got 0"),
                        (["--d-z", "x"], "argument --d-z: expected an integer, got 'x'"),
                        (["--dataset", "squad", "--data_file", "/no/such.json"], "--data_file: not found"),
                        (["--dataset", "squad"], "needs --data-file PATH"),
                        (["--dataset", "synthetic", "--load_4bit"], "unrecognised arguments: --load_4bit")]:
        with pytest.raises(SystemExit) as e:
            train_main(argv)
        assert e.value.code == 2 and words in capsys.readouterr().err, argv
