"""The shared DDP loop, run for real (subprocesses, torchrun with gloo on CPU)."""
import json
import subprocess
import sys
import textwrap

import pytest
import torch

from mmldlm.train import checkpointing as C
from mmldlm.train.run_log import read_jsonl
from tests.helpers.common import TINY, make_dataset, ok, run_entry, tiny_args

pytestmark = pytest.mark.slow


def final_params(run_dir):
    state = C.load_checkpoint(run_dir / (run_dir / "latest").read_text().strip())
    return state["model"]


def assert_params_close(a, b, atol=1e-6):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=atol, rtol=1e-5, msg=lambda m, k=k: f"{k}: {m}")


def losses(run_dir, name="training_log.jsonl", key="loss"):
    return {r["step"]: r[key] for r in read_jsonl(run_dir / name)}


def module_run(tmp_path_factory, paragraphs, tokenizer_path, name, *overrides):
    """A tiny run on the tiny_data set, for several tests of this module: its run directory."""
    d = tmp_path_factory.mktemp(name)
    data = make_dataset(d / "data", paragraphs[:160])
    ok(run_entry(TINY, [*tiny_args(data, tokenizer_path, d, name), *overrides]))
    return d / name


@pytest.fixture(scope="module")
def batch16(tmp_path_factory, paragraphs, tokenizer_path):
    """One rank, batches of 16: the reference of the 2-rank and the accumulation tests."""
    return module_run(tmp_path_factory, paragraphs, tokenizer_path, "batch16", "training.train_batch_size=16")


def test_two_ranks_equal_one_rank_on_the_same_global_batch(run_tiny, batch16):
    run_tiny("training.train_batch_size=8", nproc=2, run_name="two")
    one, two = batch16, run_tiny.run_dir("two")
    assert_params_close(final_params(one), final_params(two))
    l1, l2 = losses(one), losses(two)
    assert l1.keys() == l2.keys() == set(range(1, 13))
    assert all(abs(l1[s] - l2[s]) < 1e-5 for s in l1)
    t1, t2 = (losses(d, key="truncated_frac") for d in (one, two))  # texts cut at max_seq_len: rank-summed
    assert t1 == t2 and all(0 < v < 1 for v in t1.values())
    # eval is distributed too: same validation metrics
    e1, e2 = losses(one, "eval_log.jsonl"), losses(two, "eval_log.jsonl")
    assert e1.keys() == e2.keys() == {4, 8, 12}
    assert all(abs(e1[s] - e2[s]) < 1e-5 for s in e1)


def test_gradient_accumulation_4xB_equals_one_batch_of_4B(run_tiny, batch16):
    run_tiny("training.train_batch_size=4", "training.gradient_accumulation_steps=4", run_name="acc")
    assert_params_close(final_params(batch16), final_params(run_tiny.run_dir("acc")))


@pytest.mark.parametrize("nproc", [1, 2])
def test_resume_after_sigkill_continues_with_identical_losses(run_tiny, nproc):
    # noise > 0: the losses depend on the RNG streams, so a wrong restore would show
    common = ["loss.noise=0.3", "logging.log_freq=3", "training.num_train_steps=12"]
    run_tiny(*common, nproc=nproc, run_name="ref")
    p = run_tiny(*common, "loss.kill_at_step=6", nproc=nproc, run_name="cut", expect_ok=False)
    assert p.returncode != 0
    cut = run_tiny.run_dir("cut")
    assert (cut / "latest").read_text().strip() == "checkpoint_step_4.pt"
    steps_before = [r["step"] for r in read_jsonl(cut / "training_log.jsonl")]
    assert steps_before == [3, 6]  # step 6 was logged after the checkpoint at 4: must not duplicate
    run_tiny(*common, "training.resume=auto", nproc=nproc, run_name="cut")
    ref_log = read_jsonl(run_tiny.run_dir("ref") / "training_log.jsonl")
    cut_log = read_jsonl(cut / "training_log.jsonl")
    assert [r["step"] for r in cut_log] == [3, 6, 9, 12]
    for a, b in zip(ref_log, cut_log):
        assert a["loss"] == b["loss"] and a["grad_norm"] == b["grad_norm"], (a, b)
    assert [r["step"] for r in read_jsonl(cut / "eval_log.jsonl")] == [4, 8, 12]
    assert_params_close(final_params(run_tiny.run_dir("ref")), final_params(cut), atol=0)
    # keep_last=2: only the two newest checkpoints remain
    assert [s for s, _ in C.list_checkpoints(cut)] == [8, 12]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, paragraphs, tokenizer_path):
    """The losses of one uninterrupted tiny run (save_freq 0, the tiny_data set), once for the three
    SIGTERM variants: how the signal is sent and who loads the data do not change what is trained."""
    return losses(module_run(tmp_path_factory, paragraphs, tokenizer_path, "ref", "logging.save_freq=0"))


@pytest.mark.parametrize("how", ["process", "group_with_workers", "sigusr1"])
def test_sigterm_checkpoints_and_exits_cleanly_then_resumes(run_tiny, how, uninterrupted):
    extra = {"process": [], "group_with_workers": ["data.num_workers=2", "loss.sigterm_group=true"],
             "sigusr1": ["loss.signal_name=SIGUSR1"]}[how]
    p = run_tiny("logging.save_freq=0", "loss.sigterm_at_step=6", *extra, run_name="pre")
    assert p.returncode == 0, p.stderr[-2000:]
    pre = run_tiny.run_dir("pre")
    assert (pre / "latest").read_text().strip() == "checkpoint_step_7.pt"  # the step in flight finishes
    assert "signal received" in p.stdout + p.stderr
    run_tiny("logging.save_freq=0", "training.resume=auto", *extra, run_name="pre")
    assert losses(pre) == uninterrupted


def test_nonfinite_loss_on_one_rank_skips_the_step_on_both(run_tiny, tmp_path):
    dump = tmp_path / "dump"
    dump.mkdir()
    run_tiny("loss.nan_at_step=3", "loss.nan_rank=1", f"dump_params={dump}", nproc=2, run_name="nan")
    log = read_jsonl(run_tiny.run_dir("nan") / "training_log.jsonl")
    assert [r["skipped_steps"] for r in log] == [0, 0, 0] + [1] * 9
    assert log[3].get("loss") is None  # no finite metrics on the skipped step: nothing averaged in
    assert all(r.get("loss") is not None for r in log[4:])
    assert_params_close(torch.load(dump / "rank0.pt"), torch.load(dump / "rank1.pt"), atol=0)


def test_run_dir_is_never_silently_overwritten(run_tiny):
    run_tiny("training.num_train_steps=2", run_name="once")
    p = run_tiny("training.num_train_steps=2", run_name="once", expect_ok=False)
    assert p.returncode != 0 and "already holds a run" in p.stderr + p.stdout


def test_wandb_offline_needs_no_network(run_tiny):
    run_tiny("logging.use_wandb=true", "training.num_train_steps=2", env={"WANDB_MODE": "offline"},
             run_name="wb")
    runs = list((run_tiny.run_dir("wb") / "wandb").glob("offline-run-*"))
    assert runs, "no offline wandb run directory"


KILL_DURING_SAVE = textwrap.dedent("""
    import os, signal, sys, torch
    from pathlib import Path
    from mmldlm.train import checkpointing as C
    run_dir, stage = Path(sys.argv[1]), sys.argv[2]
    C.save_checkpoint(run_dir, 1, {"w": torch.ones(1000)}, keep_last=3)   # a complete one first
    real_save, real_replace = torch.save, os.replace
    def die(): os.kill(os.getpid(), signal.SIGKILL)
    def partial_save(obj, f):          # half the bytes reach the disk, then the process dies
        import io; buf = io.BytesIO(); real_save(obj, buf)
        f.write(buf.getvalue()[:len(buf.getvalue()) // 2]); f.flush(); die()
    def replace(src, dst):
        if stage == "before_rename" or (stage == "before_latest" and str(dst).endswith("latest")):
            die()
        real_replace(src, dst)
    if stage == "mid_write":
        torch.save = partial_save
    os.replace = replace  # the one os module: every atomic write goes through it
    C.save_checkpoint(run_dir, 2, {"w": torch.full((1000,), 2.0)}, keep_last=3)
""")


@pytest.mark.parametrize("stage", ["mid_write", "before_rename", "before_latest"])
def test_killed_while_writing_a_checkpoint_leaves_a_loadable_latest(tmp_path, stage):
    p = subprocess.run([sys.executable, "-c", KILL_DURING_SAVE, str(tmp_path), stage], capture_output=True)
    assert p.returncode == -9, p.stderr.decode()
    latest = (tmp_path / "latest").read_text().strip()
    assert C.load_checkpoint(tmp_path / latest)["w"][0] == 1.0  # latest still names step 1
    path, state = C.resolve_resume(tmp_path, "auto")
    assert state["w"].numel() == 1000
    C.remove_stale_temps(tmp_path)
    assert not list(tmp_path.glob("*.tmp"))
    # auto follows latest, the head of the timeline (also when a kill left a complete step 2 behind it:
    # only latest tells a newer checkpoint of this timeline from one of an abandoned timeline)
    assert path.name == "checkpoint_step_1.pt"


def test_checkpoint_holds_what_resume_needs_and_loads_weights_only(run_tiny):
    run_tiny("training.num_train_steps=4", run_name="ck")
    state = C.load_checkpoint(run_tiny.run_dir("ck") / "checkpoint_step_4.pt")
    assert {"model", "optimizer", "scheduler", "step", "data", "rng", "metric_window", "config"} <= state.keys()
    assert state["step"] == 4 and state["data"]["micro_batches"] == 4
    assert state["config"]["training"]["num_train_steps"] == 4
    json.dumps(state["config"])  # plain data, no custom classes


def test_compiled_model_with_accumulation_on_two_ranks_matches_eager(run_tiny):
    common = ["training.train_batch_size=4", "training.gradient_accumulation_steps=2", "training.num_train_steps=6"]
    run_tiny(*common, nproc=2, run_name="eager")
    run_tiny(*common, "training.compile_model=true", nproc=2, run_name="compiled")
    assert_params_close(final_params(run_tiny.run_dir("eager")), final_params(run_tiny.run_dir("compiled")),
                        atol=1e-5)


def test_bf16_autocast_keeps_fp32_master_weights_and_trains_like_fp32(run_tiny):
    run_tiny("training.dtype=bf16", run_name="bf16")
    run_tiny("training.dtype=fp32", run_name="fp32")
    params = final_params(run_tiny.run_dir("bf16"))
    assert all(v.dtype == torch.float32 for v in params.values())
    bf16, fp32 = losses(run_tiny.run_dir("bf16")), losses(run_tiny.run_dir("fp32"))
    assert bf16.keys() == fp32.keys() and all(abs(bf16[s] - fp32[s]) < 0.02 * fp32[s] for s in fp32), (bf16, fp32)
    assert bf16 != fp32  # autocast did compute in bf16


def test_grad_clip_norm_is_applied_and_the_norm_before_clipping_is_logged(run_tiny):
    short = ["training.num_train_steps=3", "logging.eval_freq=0", "optimizer.weight_decay=0"]
    run_tiny(*short, "optimizer.lr=1e-30", run_name="init")  # the initial weights, in effect
    run_tiny(*short, "optimizer.grad_clip_norm=0", run_name="free")
    run_tiny(*short, "optimizer.grad_clip_norm=1e-12", run_name="clipped")
    free, clipped = read_jsonl(run_tiny.run_dir("free") / "training_log.jsonl"), read_jsonl(
        run_tiny.run_dir("clipped") / "training_log.jsonl")
    assert free[0]["grad_norm"] == clipped[0]["grad_norm"] > 1e-6  # logged before clipping
    init = final_params(run_tiny.run_dir("init"))
    moved = {name: sum((final_params(run_tiny.run_dir(name))[k] - init[k]).norm() for k in init)
             for name in ("free", "clipped")}
    # Adam divides by sqrt(v) + eps (1e-8): a gradient clipped far below eps barely moves weights
    assert moved["clipped"] < 0.01 * moved["free"], moved


def test_resume_from_an_explicit_checkpoint_path(run_tiny):
    run_tiny(run_name="ref")
    ckpt = run_tiny.run_dir("ref") / "checkpoint_step_8.pt"
    run_tiny(f"training.resume={ckpt}", run_name="branch")
    assert losses(run_tiny.run_dir("branch")) == {s: v for s, v in losses(run_tiny.run_dir("ref")).items() if s > 8}
