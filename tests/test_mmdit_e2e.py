"""The DESIGN.md MMDiT commands, tiny size, on MiniLM latents of pydoc prose."""
import json
import math
import signal
import time

import numpy as np
import pytest
import torch

from mmldlm.train.run_log import read_jsonl
from tests.helpers.common import REPO, ok, run_entry, tiny_judge

pytestmark = pytest.mark.slow
TRAIN = REPO / "latentDLM_mmdit" / "train_mmdit.py"
STABLE = REPO / "latentDLM_mmdit" / "train_mmdit_stable.py"


def args(tmp_path, data, tokenizer_path, config, *extra):
    return ["--config-name", config, "model=tiny", f"data.data_files.train={data}",
            f"data.tokenizer_name={tokenizer_path}", f"logging.save_dir={tmp_path}", "data.val_split_ratio=0.1",
            "training.train_batch_size=16", "training.dtype=fp32", "training.warmup_steps=5",
            "optimizer.lr=1e-3", "logging.log_freq=5", "logging.eval_freq=20", "logging.progress_bar=false",
            "data.num_workers=0", "sample.t2l_steps=10", "sample.l2t_steps=16", *extra]


def test_cycle_vae_command_trains_and_logs_every_metric(tmp_path, minilm_data, tokenizer_path):
    ok(run_entry(STABLE, args(tmp_path, minilm_data, tokenizer_path, "mmdit_cycle_vae", "loss.loss_type=cycle_vae",
                              "training.num_train_steps=24", "logging.eval_freq=12", "loss.cycle_text_warmup_steps=5",
                              "loss.cycle_latent_warmup_steps=5", "loss.cycle_text_ramp_steps=10",
                              # eval batches of 8: the round trips (two guided L2T decodes) of 8 records, not 32
                              "loss.cycle_latent_ramp_steps=10", "training.eval_batch_size=8",
                              "logging.run_name=cyc"), nproc=1))
    log = read_jsonl(tmp_path / "cyc" / "training_log.jsonl")
    keys = {"loss", "text_loss", "text_acc", "latent_loss", "base_l2t_text_loss", "base_t2l_latent_loss",
            "cycle_text_loss", "cycle_latent_loss", "cycle_text_weight", "cycle_latent_weight", "x0_pred_norm"}
    for r in log:
        assert keys <= r.keys() and all(math.isfinite(r[k]) for k in keys), r
    assert log[-1]["text_loss"] < log[0]["text_loss"] and log[-1]["latent_loss"] < log[0]["latent_loss"]
    assert log[-1]["x0_pred_norm"] < 100  # v_param: no blow-up near t = 1
    evals = read_jsonl(tmp_path / "cyc" / "eval_log.jsonl")
    assert [e["step"] for e in evals] == [12, 24]
    assert all(0 <= e["t2l2t_acc"] <= 1 and -1 <= e["l2t2l_cos"] <= 1 for e in evals)

    # the CLIs below run in-process (their bodies; the scripts' own start-up is exercised elsewhere)
    # the loss curves, through the module users type
    from latentDLM_mmdit.plot import main as plot_main
    from latentDLM_mmdit.sample import main as sample_main

    plot_main([str(tmp_path / "cyc")])
    assert (tmp_path / "cyc" / "curves.png").stat().st_size > 10_000
    from mmldlm.plot import panels  # the objective's declared panels, each with what the run logged

    drawn = panels([tmp_path / "cyc"])
    assert {"loss", "cycle", "accuracy", "latent"} <= drawn.keys() and "t2l2t_acc" in drawn["accuracy"], drawn

    # the sampling CLI on the trained run: text -> latents -> text
    texts = tmp_path / "in.txt"
    texts.write_text("The with statement wraps a block.\nA for loop iterates over items.\n")
    for d, i, o in (("t2l", texts, tmp_path / "z.npy"), ("l2t", tmp_path / "z.npy", tmp_path / "out.txt")):
        sample_main([d, "--checkpoint", str(tmp_path / "cyc"), "--input", str(i), "--output", str(o), "--steps", "8",
                     "--length", "12"])
    z = np.load(tmp_path / "z.npy")
    assert z.shape == (2, 384) and np.isfinite(z).all()
    lines = (tmp_path / "out.txt").read_text().splitlines()
    assert len(lines) == 2 and all(line.strip() and "[MASK]" not in line for line in lines)
    # the generate CLI serves the MMDiT too: L2T from those latents through its sampler
    from baseline.eval.generate_samples import main as generate_main

    common = [f"path={tmp_path / 'cyc'}", "num_samples=2", "num_denoising_steps=8", "length=12"]
    out = generate_main([*common, f"latents={tmp_path / 'z.npy'}", f"samples_path={tmp_path / 'gen.pt'}"])
    gen = torch.load(out, weights_only=True)
    assert gen["ids"].shape == (2, 12) and gen["header"]["objective"] == "mmdit" and len(gen["text"]) == 2
    with pytest.raises(ValueError, match="latents=FILE.npy"):
        generate_main([*common, f"samples_path={tmp_path / 'none.pt'}"])

    # generate -> gen PPL -> loss on the MMDiT: the l2t texts scored by a judge, the L2T NELBO by the loss CLI
    from baseline.eval.generative_ppl import main as gen_ppl

    ppl = gen_ppl([f"samples_path={tmp_path / 'out.txt'}", f"metrics_path={tmp_path / 'ppl.json'}"],
                  judge=tiny_judge(tokenizer_path))
    assert ppl["n_samples"] == 2 and math.isfinite(ppl["gen_ppl"]) and ppl["tokens"] > 0
    from baseline.eval.loss import main as loss_main

    loss_main([f"path={tmp_path / 'cyc'}", "num_t=2", "batch_size=8", f"metrics_path={tmp_path / 'loss.json'}"])
    loss = json.loads((tmp_path / "loss.json").read_text())
    assert loss["objective"] == "mmdit" and math.isfinite(loss["nelbo"]) and loss["num_t"] == 2 and loss["tokens"] > 0
    # the key loss.py's docs and its own error name (its parser once refused it), on 12 records
    import shutil

    val = tmp_path / "val"
    shutil.copytree(minilm_data.parent / "latents", val / "latents")
    (val / "val.json").write_text(json.dumps(json.loads(minilm_data.read_text())[:12]))
    loss_main([f"path={tmp_path / 'cyc'}", "num_t=2", "batch_size=8", f"data_files.validation={val / 'val.json'}",
               f"metrics_path={tmp_path / 'loss_val.json'}"])
    assert json.loads((tmp_path / "loss_val.json").read_text())["sequences"] == 12

    # faults that end in one line (issue 25): a latents file with a NaN row; this run handed to
    # commands of other families (each names the objective and the commands that read it)
    z_nan = np.load(tmp_path / "z.npy")
    z_nan[1, 5] = np.nan
    np.save(tmp_path / "z_nan.npy", z_nan)
    with pytest.raises(SystemExit, match=r"error: latents .*z_nan.npy: row 1 has non-finite values"):
        sample_main(["l2t", "--checkpoint", str(tmp_path / "cyc"), "--input", str(tmp_path / "z_nan.npy"),
                     "--output", str(tmp_path / "nan.txt")])
    assert not (tmp_path / "nan.txt").exists()
    from latentIMG_mmdit.sample import load as image_load

    readers = ("read it with python -m latentDLM_mmdit.sample or python baseline/eval/generate_samples.py "
               "or python baseline/eval/loss.py")
    with pytest.raises(SystemExit, match=f"objective 'mmdit', not of the image MMDiT: {readers}"):
        image_load(str(tmp_path / "cyc"))

    # the round-trip report, and a missing latent file named in a message rather than dropped
    roundtrip = lambda data: sample_main(["roundtrip", "--checkpoint", str(tmp_path / "cyc"),  # noqa: E731
                                          "--input", str(data), "--n", "8", "--output", str(tmp_path / "rt.json")])
    roundtrip(minilm_data)
    rep = json.loads((tmp_path / "rt.json").read_text())
    assert rep["records"] == 8 and 0 <= rep["t2l2t_acc"] <= 1 and len(rep["examples"]) == 6
    # the ancestral sampler (the default) repeats itself far less than the confidence heuristic
    assert rep["l2t_sampler"] == "ancestral" and rep["l2t_repeats"] < 0.5 * rep["l2t_other_repeats"], rep
    recs = json.loads(minilm_data.read_text())
    recs[1]["latent_path"] = "latents/missing.npy"
    bad = minilm_data.parent / "bad_roundtrip.json"
    bad.write_text(json.dumps(recs))
    with pytest.raises(SystemExit) as exit_:  # one message for the user, no traceback
        roundtrip(bad)
    assert str(exit_.value.code).startswith("bad data:") and "record 1" in str(exit_.value.code)


def test_mmdit_command_resumes_exactly_after_sigterm(tmp_path, minilm_data, tokenizer_path):
    # no validation set, so no eval (the loop evaluates at the last step even with eval_freq=0): its
    # sampled round trips cost more than the 20 steps, and resume is about the training log
    a = args(tmp_path, minilm_data, tokenizer_path, "mmdit", "training.num_train_steps=20", "logging.save_freq=5",
             "logging.eval_freq=0", "data.val_split_ratio=0")
    ok(run_entry(TRAIN, a + ["logging.run_name=ref"]))
    proc = run_entry(TRAIN, a + ["logging.run_name=cut"], background=True)
    log = tmp_path / "cut" / "training_log.jsonl"
    end = time.monotonic() + 300
    while not (log.exists() and any(r["step"] >= 8 for r in read_jsonl(log))):
        assert proc.poll() is None and time.monotonic() < end
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 0
    assert not (tmp_path / "cut" / "checkpoint_step_20.pt").exists()  # stopped early: the resume has steps to do
    ok(run_entry(TRAIN, a + ["logging.run_name=cut", "training.resume=auto"]))
    ref, cut = read_jsonl(tmp_path / "ref" / "training_log.jsonl"), read_jsonl(log)
    assert [r["step"] for r in cut] == [5, 10, 15, 20]
    assert [r["loss"] for r in cut] == [r["loss"] for r in ref]


def test_two_fsdp_ranks_agree_on_the_random_mode_of_every_step(tmp_path, minilm_data, tokenizer_path):
    # FSDP: blocks and the model are shard units; the samplers of the eval round trips call the
    # model directly; a T2L-only step leaves the text head unused
    ok(run_entry(TRAIN, args(tmp_path, minilm_data, tokenizer_path, "mmdit", "loss.loss_type=random",
                             "training.num_train_steps=12", "logging.log_freq=1", "training.train_batch_size=8",
                             "training.eval_batch_size=4",  # round trips of 4 records a rank
                             "training.parallelism=fsdp", "logging.run_name=rnd"), nproc=2))
    log = read_jsonl(tmp_path / "rnd" / "training_log.jsonl")
    seen = set()
    for r in log:
        flags = [r[f"mode_{m}"] for m in ("l2t", "t2l", "unconditional")]
        assert sorted(flags) == [0.0, 0.0, 1.0], r  # a 0.5 would mean the ranks disagreed
        seen.add(flags.index(1.0))
    assert len(seen) > 1
    (ev,) = read_jsonl(tmp_path / "rnd" / "eval_log.jsonl")  # eval scores every mode, each under its own keys
    assert {"l2t/loss", "l2t/text_loss", "t2l/loss", "t2l/latent_loss", "unconditional/loss"} <= ev.keys()


def test_unknown_loss_type_is_a_config_error(tmp_path, minilm_data, tokenizer_path):
    p = run_entry(TRAIN, args(tmp_path, minilm_data, tokenizer_path, "mmdit", "loss.loss_type=l2t2l"))
    assert p.returncode != 0 and "loss.loss_type" in p.stdout + p.stderr and "cycle_vae" in p.stdout + p.stderr

