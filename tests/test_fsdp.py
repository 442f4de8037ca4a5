"""FSDP2 for real on 2 gloo ranks: the same training as 1 rank, sharded checkpoints that resume
exactly after SIGKILL, and a checkpoint of 2 FSDP ranks resumed on 1 plain rank."""
import shutil

import pytest
import torch

from mmldlm.train import checkpointing as C
from mmldlm.train.run_log import read_jsonl

pytestmark = pytest.mark.slow
FSDP = ["training.parallelism=fsdp", "training.train_batch_size=4"]


def log_of(run_dir):
    return {r["step"]: r for r in read_jsonl(run_dir / "training_log.jsonl")}


def weights(run_dir):
    return C.read_model_weights(C.resolve_checkpoint(run_dir))


def test_two_fsdp_ranks_train_as_one_rank_and_their_checkpoint_resumes_on_one(run_tiny):
    run_tiny("training.train_batch_size=8", run_name="one")
    run_tiny(*FSDP, nproc=2, run_name="fsdp")
    one, fsdp = run_tiny.run_dir("one"), run_tiny.run_dir("fsdp")
    assert C.is_sharded(C.resolve_checkpoint(fsdp)) and (C.resolve_checkpoint(fsdp) / "extra.pt").is_file()
    a, b = log_of(one), log_of(fsdp)
    assert a.keys() == b.keys() == set(range(1, 13))
    for s in a:
        assert a[s]["loss"] == pytest.approx(b[s]["loss"], rel=1e-5, abs=1e-6), s
    wa, wb = weights(one), weights(fsdp)
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], atol=1e-5, rtol=1e-4, msg=lambda m, k=k: f"{k}: {m}")
    # the 2-rank sharded checkpoint of step 8, resumed by one plain process on the same global batch
    later = run_tiny.run_dir("later")
    shutil.copytree(fsdp, later)
    shutil.rmtree(later / "checkpoint_step_12")
    (later / "latest").write_text("checkpoint_step_8\n")
    run_tiny("training.train_batch_size=8", "training.resume=auto", run_name="later")
    c = log_of(later)
    assert sorted(c) == list(range(1, 13))
    for s in range(9, 13):
        assert c[s]["loss"] == pytest.approx(b[s]["loss"], rel=1e-5, abs=1e-6), s


def test_fsdp_resumes_exactly_after_sigkill(run_tiny):
    common = [*FSDP, "loss.noise=0.3", "logging.log_freq=3"]  # noise: the losses depend on every rank's RNG
    run_tiny(*common, nproc=2, run_name="ref")
    p = run_tiny(*common, "loss.kill_at_step=6", nproc=2, run_name="cut", expect_ok=False)
    assert p.returncode != 0
    cut = run_tiny.run_dir("cut")
    assert (cut / "latest").read_text().strip() == "checkpoint_step_4"
    run_tiny(*common, "training.resume=auto", nproc=2, run_name="cut")
    ref, got = read_jsonl(run_tiny.run_dir("ref") / "training_log.jsonl"), read_jsonl(cut / "training_log.jsonl")
    assert [r["step"] for r in got] == [3, 6, 9, 12]
    assert [(r["loss"], r["grad_norm"]) for r in got] == [(r["loss"], r["grad_norm"]) for r in ref]
    assert [s for s, _ in C.list_checkpoints(cut)] == [8, 12]  # keep_last=2 prunes directories too
    wr, wc = weights(run_tiny.run_dir("ref")), weights(cut)
    assert all(torch.equal(wr[k], wc[k]) for k in wr)
