"""The run directory's guarantees: one run at a time, resume follows the timeline, fresh logs when
nothing resumes, failed saves, changed data, checks before the expensive part (hardening issue)."""
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import time

import pytest
import yaml

from mmldlm.train import checkpointing as C
from mmldlm.train.run_log import read_jsonl

pytestmark = pytest.mark.slow


def steps(run_dir, name="training_log.jsonl"):
    return [r["step"] for r in read_jsonl(run_dir / name)]


def wait_for(path, proc, limit=180):
    end = time.monotonic() + limit
    while not path.exists():
        assert proc.poll() is None, "the background run ended early"
        assert time.monotonic() < end, f"{path} never appeared"
        time.sleep(0.05)


def test_a_second_run_on_a_held_directory_fails_naming_the_holder_and_a_killed_holder_frees_it(run_tiny, tmp_path):
    hold = tmp_path / "go"
    first = run_tiny("loss.hold_at_step=2", f"loss.hold_file={hold}", run_name="held", background=True)
    try:
        wait_for(tmp_path / "go.ready", first)
        second = run_tiny("training.resume=auto", run_name="held", expect_ok=False)
        out = second.stdout + second.stderr
        assert second.returncode == 1 and "in use by a running job" in out and "Traceback" not in out
        assert f"pid {first.pid}" in out and socket.gethostname() in out
        os.killpg(first.pid, signal.SIGKILL)  # a crash: the OS releases the lock
        first.wait(timeout=60)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    # killed in step 3, before the first checkpoint (step 4): the restart starts fresh, its log holds
    # every step once, and the dead run's log (steps 1, 2) is set aside, not appended to
    run_tiny("training.resume=auto", run_name="held")
    run_dir = run_tiny.run_dir("held")
    assert steps(run_dir) == list(range(1, 13))
    aside = list((run_dir / "set_aside").glob("*-no_checkpoint"))
    assert len(aside) == 1 and steps(aside[0]) == [1, 2]
    assert not list(run_dir.glob("config_resume_step_*.yaml")) and (run_dir / "config.yaml").exists()


def test_rollback_moves_the_abandoned_timeline_aside_and_auto_follows_latest(run_tiny):
    run_tiny(run_name="tl")  # checkpoints every 4 steps, keep_last=2: 8 and 12 remain
    run_dir = run_tiny.run_dir("tl")
    ref = read_jsonl(run_dir / "training_log.jsonl")
    run_tiny(f"training.resume={run_dir / 'checkpoint_step_8.pt'}", "training.num_train_steps=10", run_name="tl")
    assert [s for s, _ in C.list_checkpoints(run_dir)] == [8, 10]
    assert (run_dir / "latest").read_text().strip() == "checkpoint_step_10.pt"
    moved = list((run_dir / "set_aside").glob("*after_step_8/checkpoint_step_12.pt"))
    assert len(moved) == 1 and C.load_checkpoint(moved[0])["step"] == 12  # renamed, not deleted
    logs_aside = list((run_dir / "set_aside").glob("*logs_after_step_8/training_log.jsonl"))
    assert len(logs_aside) == 1 and steps(logs_aside[0].parent) == list(range(1, 13))  # the full history kept
    run_tiny("training.resume=auto", run_name="tl")  # continues from 10, not from the abandoned 12
    log = read_jsonl(run_dir / "training_log.jsonl")
    assert [r["step"] for r in log] == list(range(1, 13))
    assert [r["loss"] for r in log[:8]] == [r["loss"] for r in ref[:8]]


def test_a_changed_training_file_is_refused_on_resume_unless_allowed(run_tiny, tiny_data):
    run_tiny("training.num_train_steps=4", run_name="fp")
    records = json.loads(tiny_data.read_text())
    records[3]["text"] = "A different sentence, but the same number of records."
    tiny_data.write_text(json.dumps(records))
    p = run_tiny("training.resume=auto", run_name="fp", expect_ok=False)
    out = p.stdout + p.stderr
    assert p.returncode == 1 and "changed since the checkpoint" in out and "allow_data_change" in out
    assert "Traceback" not in out and steps(run_tiny.run_dir("fp")) == [1, 2, 3, 4]
    p = run_tiny("training.resume=auto", "training.allow_data_change=true", run_name="fp")
    assert "continuing on the new data" in p.stdout + p.stderr
    assert steps(run_tiny.run_dir("fp")) == list(range(1, 13))
    # the same records rewritten (new mtime, other formatting): not a change
    tiny_data.write_text(json.dumps(records, indent=2))
    run_tiny("training.resume=auto", "training.num_train_steps=14", run_name="fp")


def _limit_file_size(max_bytes):
    def preexec():
        os.setsid()
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_bytes, max_bytes))
    return preexec


def test_a_failed_checkpoint_write_leaves_nothing_partial_and_says_so_in_one_line(tmp_path, tiny_data, tokenizer_path):
    from tests.helpers.common import REPO, TINY

    # the file-size limit makes the first checkpoint write fail half way, as a full disk does
    cmd = [sys.executable, str(TINY), f"data.data_files.train={tiny_data}", f"data.tokenizer_name={tokenizer_path}",
           f"logging.save_dir={tmp_path / 'runs'}", "logging.run_name=full", "training.num_train_steps=4"]
    p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300,
                       preexec_fn=_limit_file_size(1_000_000), env={**os.environ, "OMP_NUM_THREADS": "1"})
    out = p.stdout + p.stderr
    run_dir = tmp_path / "runs" / "full"
    assert p.returncode == 1, out
    assert "writing checkpoint" in out and "failed" in out and "free in" in out and "needed" in out
    assert "Traceback" not in out
    assert not list(run_dir.glob("*.tmp")) and not list(run_dir.glob("checkpoint_step_*"))


def test_free_space_is_checked_before_writing(tmp_path):
    with pytest.raises(C.CheckpointWriteError, match="not enough space .* free, about .* needed"):
        C.check_free_space(tmp_path, 2**62)
    C.check_free_space(tmp_path, 1024)


@pytest.mark.parametrize("case", ["unwritable_save_dir", "read_only_save_dir", "bad_record", "one_record",
                                  "tokenizer_missing",
                                  "tokenizer_not_local"])
def test_errors_end_the_run_in_one_line_before_any_work(run_tiny, tmp_path, tiny_data, case):
    records = json.loads(tiny_data.read_text())
    over = {"unwritable_save_dir": [f"logging.save_dir={tiny_data}/runs"],  # under a regular file
            "read_only_save_dir": ["logging.save_dir=/sys/mmldlm_runs"],  # sysfs: no one may write, root neither
            "one_record": ["training.train_batch_size=8"],
            "tokenizer_missing": ["data.tokenizer_name=no-such-tokenizer-xyz"],
            "tokenizer_not_local": ["data.tokenizer_name=./no/such/dir"]}.get(case, [])
    words = {"unwritable_save_dir": ["logging.save_dir", "not writable"],
             "read_only_save_dir": ["logging.save_dir /sys/mmldlm_runs is not writable"],
             "bad_record": ["record 2", "text is empty"],
             "one_record": ["training.train_batch_size", "1 records"],
             "tokenizer_missing": ["data.tokenizer_name", "no-such-tokenizer-xyz", "hub cache"],
             "tokenizer_not_local": ["data.tokenizer_name", "not found: ./no/such/dir"]}[case]
    if case == "bad_record":
        records[2]["text"] = ""
    if case == "one_record":
        records = records[:1]
    tiny_data.write_text(json.dumps(records))
    p = run_tiny(*over, "data.val_split_ratio=0", "logging.eval_freq=0", run_name=case, expect_ok=False)
    out = p.stdout + p.stderr
    assert p.returncode != 0 and "Traceback" not in out, out
    for w in words:
        assert w in out, (w, out)
    assert not run_tiny.run_dir(case).exists()  # nothing was created: the checks came first


def test_saved_configs_hold_absolute_paths(run_tiny, tmp_path, tiny_data, tokenizer_path):
    from tests.helpers.common import TINY, run_entry

    rel = os.path.relpath(tiny_data, tmp_path)
    p = run_entry(TINY, [f"data.data_files.train={rel}", f"data.tokenizer_name={tokenizer_path}",
                         "logging.save_dir=runs", "logging.run_name=rel", "training.num_train_steps=4"], cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    saved = yaml.safe_load((tmp_path / "runs" / "rel" / "config.yaml").read_text())
    assert saved["data"]["data_files"]["train"] == str(tiny_data)
    assert saved["logging"]["save_dir"] == str(tmp_path / "runs")
    ckpt = C.load_checkpoint(tmp_path / "runs" / "rel" / "checkpoint_step_4.pt")
    assert ckpt["config"]["data"]["data_files"]["train"] == str(tiny_data)
