"""Every fault ends cleanly (issue 25): the audit's reproduction list, one test per item where a
run is cheap to share. A fault either ends every rank with one line naming what to fix, after
saving what was trained, or is survived with nothing lost."""
import json

import pytest

from mmldlm.train import checkpointing as C
from mmldlm.train.run_log import read_jsonl

pytestmark = pytest.mark.slow


def losses(run_dir):
    return {r["step"]: r["loss"] for r in read_jsonl(run_dir / "training_log.jsonl")}


def no_rank_traceback(out: str) -> bool:
    """No traceback but torchrun's own (its launcher reports a failed child with one)."""
    return out.count("Traceback (most recent call last)") == out.count("ChildFailedError:")


def one_line_per_rank(p, nproc: int, *words) -> list[str]:
    """The ``bad data:`` lines of a failed run: one per rank, each naming ``words``; no traceback."""
    out = p.stdout + p.stderr
    lines = [ln for ln in out.splitlines() if "bad data:" in ln]
    assert p.returncode != 0 and no_rank_traceback(out), out[-4000:]
    assert len(lines) == nproc, out[-4000:]
    for ln in lines:
        assert all(w in ln for w in words), ln
    return lines


def test_a_bad_record_at_batch_time_saves_the_last_step_then_every_rank_ends_in_one_line(run_tiny, tiny_data):
    """Item 1: a record whose latent file is missing, met in step 6 on rank 0 of 2: both ranks end
    with one line, after checkpoint 5 (the last completed step; periodic ones are every 4). With
    skip the run continues from it exactly as an uninterrupted skip run."""
    records = json.loads(tiny_data.read_text())
    records[83].pop("latent_row")
    records[83]["latent_path"] = "latents/gone.npy"  # checked when read, not when indexed
    tiny_data.write_text(json.dumps(records))
    common = ["data.shuffle=false", "data.val_split_ratio=0", "logging.eval_freq=0"]
    p = run_tiny(*common, nproc=2, run_name="cut", expect_ok=False)
    one_line_per_rank(p, 2, str(tiny_data), "record 83", "latent file not found")
    assert "Step 5 was saved first" in p.stdout + p.stderr
    cut = run_tiny.run_dir("cut")
    assert C.read_latest(cut).name == "checkpoint_step_5.pt"
    assert C.load_checkpoint(C.read_latest(cut))["data"]["micro_batches"] == 5  # before the failed step
    run_tiny(*common, "training.resume=auto", "data.on_bad_record=skip", nproc=2, run_name="cut")
    assert sorted(losses(cut)) == list(range(1, 13))
    bad = {r["step"]: r["bad_records"] for r in read_jsonl(cut / "training_log.jsonl")}
    assert bad[5] == 0 and bad[6] == bad[12] == 1  # counted once, from the step that met it


def test_a_bad_validation_record_saves_the_step_then_every_rank_ends_in_one_line(run_tiny, tiny_data, tmp_path):
    records = json.loads(tiny_data.read_text())
    val = records[:24]
    val[9] = {"text": "a record on rank 1's eval share", "latent_path": "latents/gone.npy"}
    val_path = tiny_data.parent / "validation_data.json"
    val_path.write_text(json.dumps(val))
    p = run_tiny(f"data.data_files.validation={val_path}", "data.val_split_ratio=0", "logging.eval_freq=3",
                 nproc=2, run_name="evalcut", expect_ok=False)
    one_line_per_rank(p, 2, str(val_path), "record 9", "not found")
    assert C.read_latest(run_tiny.run_dir("evalcut")).name == "checkpoint_step_3.pt"
