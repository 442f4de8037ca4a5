"""Every fault ends cleanly (issue 25): the audit's reproduction list, one test per item where a
run is cheap to share. A fault either ends every rank with one line naming what to fix, after
saving what was trained, or is survived with nothing lost."""
import json

import pytest
import torch

from mmldlm.train import checkpointing as C
from mmldlm.train.run_log import read_jsonl


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


@pytest.mark.slow
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


@pytest.mark.slow
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


def bomb_png(path, width: int, height: int) -> None:
    """A PNG whose header promises ``width x height`` pixels, a few bytes on disk (never decoded)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))


def test_the_checker_lists_every_record_an_image_run_would_refuse(shapes_data, tmp_path, capsys):
    """Items 1, 7, 9: corrupt, truncated, missing, FIFO, directory and decompression-bomb images and
    a symlink out of the root are listed by the checker with the image config (decoded as the
    collate decodes them), and each is a bad record of the run's own collate."""
    import os
    import shutil

    from mmldlm.data.check import check_main

    root = tmp_path / "set"
    shutil.copytree(shapes_data, root)
    images = root / "images"
    (images / "corrupt.png").write_bytes(os.urandom(300))
    good = (images / "000000.png").read_bytes()
    (images / "truncated.png").write_bytes(good[: len(good) // 2])
    os.mkfifo(images / "fifo.png")
    (images / "dir.png").mkdir()
    bomb_png(images / "bomb.png", 12_000, 12_000)  # 144 Mpx, as the audit's 140 KB PNG
    outside = tmp_path / "outside.png"
    outside.write_bytes(good)
    (images / "link.png").symlink_to(outside)
    (images / "inside_link.png").symlink_to(images / "000000.png")  # a link that stays inside is fine
    records = json.loads((root / "train_data.json").read_text())[:8]
    cases = {"corrupt.png": "cannot be decoded", "truncated.png": "cannot be decoded", "gone.png": "not found",
             "fifo.png": "is a FIFO", "dir.png": "is a directory", "bomb.png": "144.0 Mpx, above the cap",
             "link.png": "through a symlink", "inside_link.png": None}
    for name in cases:
        records.append({"image_path": f"images/{name}", "caption": "a red circle", "image_id": len(records)})
    (root / "train_data.json").write_text(json.dumps(records))
    rc = check_main([str(root / "train_data.json"), "--config-name", "image_shapes_cpu", "model.image_size=32",
                     "model.patch_size=8", f"data.tokenizer_name={root / 'tokenizer'}"])
    out = capsys.readouterr().out
    bad = [ln for ln in out.splitlines() if ln.startswith("BAD")]
    assert rc == 1 and len(bad) == 7, out
    for line, (name, words) in zip(bad, [c for c in cases.items() if c[1]]):
        assert f"record {8 + list(cases).index(name)}:" in line and words in line, (name, line)
    assert f"{len(records)} records, 7 bad, 9 good" in out


def test_the_checker_tokenises_sft_conversations_against_the_context(sft_jsonl, tiny_chat_wedlm_dir, tmp_path,
                                                                      capsys):
    """Item 1 (SFT): a conversation whose prompt alone fills the context is listed by the checker
    with the fine-tuning config, as its collate would refuse it."""
    from mmldlm.data.check import check_main

    lines = sft_jsonl.read_text().splitlines()[:6]
    long_prompt = [{"role": "user", "content": "word " * 300}, {"role": "assistant", "content": "short"}]
    path = tmp_path / "sft.jsonl"
    path.write_text("\n".join(lines[:3] + [json.dumps(long_prompt)] + lines[3:]) + "\n")
    rc = check_main([str(path), "--config-name", "wedlm8b_sft", "model=tiny",
                     f"model.pretrained_local_dir={tiny_chat_wedlm_dir}", "data.max_seq_len=128"])
    out = capsys.readouterr().out
    bad = [ln for ln in out.splitlines() if ln.startswith("BAD")]
    assert rc == 1 and len(bad) == 1 and "record 3:" in bad[0] and "the prompt alone is" in bad[0], out
    assert "7 records, 1 bad, 6 good" in out


@pytest.mark.slow
def test_resume_auto_takes_the_newest_complete_checkpoint_and_says_what_it_skipped(run_tiny, tmp_path, caplog):
    """Item 2: a sharded checkpoint with a missing or truncated shard, a changed file, a cut
    .metadata (written before manifests), or a DDP file cut short is skipped by resume=auto,
    which says which and why, and resumes from the complete one beside it."""
    import shutil

    run_tiny("training.parallelism=fsdp", run_name="fsdp")  # one process, sharded checkpoints 8 and 12
    run_dir = run_tiny.run_dir("fsdp")
    step12 = run_dir / "checkpoint_step_12"
    assert (step12 / C.MANIFEST).is_file() and C.incomplete(step12) is None

    def damaged(how):
        d = tmp_path / f"ck_{how}"
        shutil.copytree(step12, d)
        shard = d / "__0_0.distcp"
        if how == "missing_shard":
            shard.unlink()
        elif how == "truncated_shard":
            shard.write_bytes(shard.read_bytes()[:100])
        elif how == "changed_extra":
            raw = bytearray((d / "extra.pt").read_bytes())
            raw[len(raw) // 2] ^= 0xFF
            (d / "extra.pt").write_bytes(bytes(raw))
        elif how == "legacy_truncated":  # no manifest: the DCP metadata's byte ranges decide
            (d / C.MANIFEST).unlink()
            shard.write_bytes(shard.read_bytes()[:100])
        elif how == "legacy_cut_metadata":
            (d / C.MANIFEST).unlink()
            (d / ".metadata").write_bytes((d / ".metadata").read_bytes()[:20])
        return C.incomplete(d)

    assert damaged("missing_shard") == "__0_0.distcp is missing"
    assert damaged("truncated_shard").startswith("__0_0.distcp is 100 bytes, its manifest says")
    assert "extra.pt does not match its checksum" in damaged("changed_extra")
    assert "its .metadata needs" in damaged("legacy_truncated")
    assert "its .metadata does not read" in damaged("legacy_cut_metadata")
    (step12 / "__0_0.distcp").unlink()
    p = run_tiny("training.parallelism=fsdp", "training.resume=auto", run_name="fsdp")
    out = p.stdout + p.stderr
    assert "taking checkpoint_step_8: skipped checkpoint_step_12 (__0_0.distcp is missing)" in out
    assert "resumed from" in out and "checkpoint_step_8 at step 8" in out
    assert sorted(losses(run_dir)) == list(range(1, 13)) and C.incomplete(step12) is None  # step 12 again, whole
    # a DDP checkpoint cut short (a copy that stopped half way): skipped for the one before it
    ddp = tmp_path / "ddp"
    ddp.mkdir()
    for step in (1, 2):
        C.save_checkpoint(ddp, step, {"w": torch.full((1000,), float(step))}, keep_last=3)
    cut = ddp / "checkpoint_step_2.pt"
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])
    with caplog.at_level("WARNING"):
        path, state = C.resolve_resume(ddp, "auto")
    assert path.name == "checkpoint_step_1.pt" and state["w"][0] == 1.0
    assert "skipped checkpoint_step_2.pt (it does not load" in caplog.text
    with pytest.raises(C.CheckpointError, match="checkpoint_step_2.pt does not load"):
        C.resolve_resume(ddp, str(cut))


def test_a_damaged_or_foreign_record_index_is_rebuilt_and_an_unwritable_cache_falls_back(tmp_path, paragraphs,
                                                                                          caplog, monkeypatch):
    """Item 3: records.npy cut to half, a data file changed in place with its size and mtime kept,
    and another file's index copied over this one's are each rebuilt (never trained on); an
    unwritable cache directory falls back to a private one with a warning; when nothing can be
    written the error is one line naming the places."""
    import os
    import shutil

    from mmldlm.data import index as I
    from mmldlm.data.records import DataError, RecordRules
    from tests.helpers.common import make_dataset

    rules = RecordRules(latent_dim=4)
    path = make_dataset(tmp_path / "a", paragraphs[:40], dim=4)
    first = I.open_index(path, rules)
    records = first.dir / "records.npy"
    records.write_bytes(records.read_bytes()[: records.stat().st_size // 2])
    with caplog.at_level("WARNING"):
        assert len(I.open_index(path, rules)) == 40
    assert f"the record index {first.dir} cannot be used (records.npy holds 40 entries (cut short)" in caplog.text
    # the same size and mtime, one record's text changed in place: the edge hash tells
    st = path.stat()
    raw = path.read_bytes()
    old = json.loads(raw)[0]["text"]
    path.write_bytes(raw.replace(old.encode(), old.upper().encode(), 1))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    idx = I.open_index(path, rules)
    assert idx.reader().read([0])[0][1]["text"] == old.upper()
    # another file's index, copied into place with the data (same name, other records), or only its
    # records.npy copied over this one's (the same count: only the header's edge hash tells)
    other = make_dataset(tmp_path / "b", paragraphs[40:60], dim=4)
    shutil.copytree(path.parent / ".mmldlm_index", other.parent / ".mmldlm_index", dirs_exist_ok=True)
    assert len(I.open_index(other, rules)) == 20
    same_count = make_dataset(tmp_path / "c", paragraphs[60:100], dim=4)
    foreign = I.open_index(same_count, rules).dir / "records.npy"
    shutil.copy(foreign, idx.dir / "records.npy")
    caplog.clear()
    with caplog.at_level("WARNING"):
        assert I.open_index(path, rules).reader().read([0])[0][1]["text"] == old.upper()
    assert "records.npy is not the one indexed with this header" in caplog.text
    # an unwritable cache directory (under a regular file: even root cannot write there)
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    caplog.clear()
    with caplog.at_level("WARNING"):
        idx = I.open_index(path, rules, cache_dir=str(blocker / "cache"))
    assert len(idx) == 40 and idx.dir.is_relative_to(I.private_cache())
    assert f"the record index cache {blocker / 'cache'}" in caplog.text and "cannot be written" in caplog.text
    # nowhere to write (a full disk everywhere): one line naming each place tried
    monkeypatch.setattr(I, "_build", lambda *a: (_ for _ in ()).throw(OSError(28, "No space left on device")))
    with pytest.raises(DataError, match="its record index cannot be written anywhere: .*No space left on device"):
        I.open_index(path, RecordRules(latent_dim=4, allow_outside=True), cache_dir=str(tmp_path / "full"))
