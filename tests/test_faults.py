"""Every fault ends cleanly (issue 25): the audit's reproduction list, one test per item where a
run is cheap to share. A fault either ends every rank with one line naming what to fix, after
saving what was trained, or is survived with nothing lost."""
import json
from pathlib import Path

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
def test_a_bad_record_saves_the_last_step_and_resume_auto_passes_a_damaged_checkpoint(run_tiny, tiny_data):
    """Items 1 and 2 on 2 ranks, three runs. A record whose latent file is missing, met in step 6 on
    rank 0: both ranks end with one line, after checkpoint 5 (the last completed step; periodic ones
    are every 4). That checkpoint cut in half (a copy that stopped half way): resume=auto says so
    and takes step 4; a bad validation record (rank 1's eval share) met in the eval at step 5 saves
    step 5 again, whole, then ends both ranks in one line. With skip the run goes on from it to the
    end as an uninterrupted skip run, the bad record counted once."""
    records = json.loads(tiny_data.read_text())
    val = records[:24]
    val[9] = {"text": "a record on rank 1's eval share", "latent_path": "latents/gone.npy"}
    val_path = tiny_data.parent / "validation_data.json"
    val_path.write_text(json.dumps(val))
    records[83].pop("latent_row")
    records[83]["latent_path"] = "latents/gone.npy"  # checked when read, not when indexed
    tiny_data.write_text(json.dumps(records))
    common = ["data.shuffle=false", "data.val_split_ratio=0"]
    p = run_tiny(*common, "logging.eval_freq=0", nproc=2, run_name="cut", expect_ok=False)
    one_line_per_rank(p, 2, str(tiny_data), "record 83", "latent file not found")
    assert "Step 5 was saved first" in p.stdout + p.stderr
    cut = run_tiny.run_dir("cut")
    step5 = C.read_latest(cut)
    assert step5.name == "checkpoint_step_5.pt"
    assert C.load_checkpoint(step5)["data"]["micro_batches"] == 5  # before the failed step
    step5.write_bytes(step5.read_bytes()[: step5.stat().st_size // 2])
    p = run_tiny(*common, f"data.data_files.validation={val_path}", "logging.eval_freq=5", "training.resume=auto",
                 nproc=2, run_name="cut", expect_ok=False)
    assert "taking checkpoint_step_4.pt: skipped checkpoint_step_5.pt (it does not load" in p.stdout + p.stderr
    one_line_per_rank(p, 2, str(val_path), "record 9", "not found")
    assert C.load_checkpoint(step5)["step"] == 5  # saved again, whole
    run_tiny(*common, "logging.eval_freq=0", "training.resume=auto", "data.on_bad_record=skip", nproc=2,
             run_name="cut")
    assert sorted(losses(cut)) == list(range(1, 13))
    bad = {r["step"]: r["bad_records"] for r in read_jsonl(cut / "training_log.jsonl")}
    assert bad[5] == 0 and bad[6] == bad[12] == 1  # counted once, from the step that met it


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
    overrides = ["model.image_size=32", "model.patch_size=8", f"data.tokenizer_name={root / 'tokenizer'}"]
    rc = check_main([str(root / "train_data.json"), "--config-name", "image_shapes_cpu", *overrides])
    out = capsys.readouterr().out
    bad = [ln for ln in out.splitlines() if ln.startswith("BAD")]
    assert rc == 1 and len(bad) == 7, out
    for line, (name, words) in zip(bad, [c for c in cases.items() if c[1]]):
        assert f"record {8 + list(cases).index(name)}:" in line and words in line, (name, line)
    assert f"{len(records)} records, 7 bad, 9 good" in out
    # --run reads the config a run saved (the command the loop's bad-data message prints)
    from omegaconf import OmegaConf

    from mmldlm.config import compose

    run = tmp_path / "run"
    run.mkdir()
    OmegaConf.save(compose("image_shapes_cpu", [f"data.data_files.train={root / 'train_data.json'}", *overrides]),
                   run / "config.yaml", resolve=True)
    assert check_main([str(root / "train_data.json"), "--run", str(run)]) == 1
    assert capsys.readouterr().out.count("BAD ") == 7


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


def test_a_sharded_checkpoint_is_complete_only_with_every_file_and_resume_auto_passes_a_damaged_one(tmp_path,
                                                                                                    caplog):
    """Item 2: sharded checkpoints written as the loop writes them (one rank): a missing or
    truncated shard, a changed file, a cut .metadata (written before manifests), or a DDP file cut
    short is skipped by resume=auto, which says which and why and takes the complete one beside it
    (the loop's own resume=auto past a damaged checkpoint: the 2-rank test above)."""
    import shutil

    import torch.distributed as dist

    model = torch.nn.Linear(32, 32)
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.ones(2, 32)).sum().backward()
    optimizer.step()
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        for step in (8, 12):
            C.save_sharded(run_dir, step, model, optimizer, {"step": step}, keep_last=3, is_main=True,
                           keys=set(model.state_dict()))
    finally:
        dist.destroy_process_group()
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
    with caplog.at_level("WARNING"):
        path, state = C.resolve_resume(run_dir, "auto")
    assert path.name == "checkpoint_step_8" and state["step"] == 8
    assert "taking checkpoint_step_8: skipped checkpoint_step_12 (__0_0.distcp is missing)" in caplog.text
    with pytest.raises(C.CheckpointError, match="checkpoint_step_12 cannot be used: __0_0.distcp is missing"):
        C.resolve_resume(run_dir, str(step12))
    # a DDP checkpoint cut short (a copy that stopped half way): skipped for the one before it
    ddp = tmp_path / "ddp"
    ddp.mkdir()
    for step in (1, 2):
        C.save_checkpoint(ddp, step, {"w": torch.full((1000,), float(step))}, keep_last=3)
    cut = ddp / "checkpoint_step_2.pt"
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])
    caplog.clear()
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


# values a key legitimately takes at 0 or -1 (each says what it means); every other numeric key of
# every shipped schema refuses 0 and -1 (integers) or -1.0 (floats) with a one-line config error
MEANINGFUL = {
    "data.num_workers": {0},  # load in the main process
    "logging.eval_freq": {0}, "logging.save_freq": {0},  # 0 = off (final and preemption saves still happen)
    "logging.num_eval_batches": {0},  # 0 = the whole validation set
    "training.seed": {0}, "training.warmup_steps": {0},
    "optimizer.grad_clip_norm": {-1.0},  # <= 0: no clipping (the norm is still logged)
    "loss.cycle_text_ramp_steps": {0, -1}, "loss.cycle_latent_ramp_steps": {0, -1},  # <= 0: no ramp
    "loss.cycle_text_warmup_steps": {0}, "loss.cycle_latent_warmup_steps": {0},
    "loss.first_token_ce_warmup_steps": {0},
    "loss.kd_cache_topk": {0},  # 0 = every logit (exact)
    "model.latent_private_len": {0}, "model.lora_r": {0},  # no private slots; no adapters
    "finetune.num_learnable_im_end": {0},
    "sample.eval_batches": {0}, "sample.eval_roundtrip_batches": {0},  # 0 = off
    "sample.i2t_steps": {0}, "sample.l2t_steps": {0},  # 0 = one step per position
}


def _numeric_keys(cls, prefix=""):
    import dataclasses
    import typing

    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        sub = f.default_factory if f.default_factory is not dataclasses.MISSING else None
        if isinstance(sub, type) and dataclasses.is_dataclass(sub):
            yield from _numeric_keys(sub, f"{prefix}{f.name}.")
            continue
        t = hints[f.name]
        t = typing.get_args(t)[0] if typing.get_origin(t) is typing.Union else t
        if t in (int, float):
            yield f"{prefix}{f.name}", t


def _run_checks(node) -> None:
    """Every section's ``check()``, as ``mmldlm.config.validate`` runs them on the typed config."""
    import dataclasses

    if dataclasses.is_dataclass(node):
        if hasattr(node, "check"):
            node.check()
        for f in dataclasses.fields(node):
            _run_checks(getattr(node, f.name))


def test_every_numeric_key_of_every_family_has_its_range_checked(tmp_path):
    """Item 9 (keys): 0 / -1 are refused at start by every schema, unless they mean something."""
    import functools

    from mmldlm.config import ConfigError, compose, objective_of, validate
    from tests.helpers.common import shipped_families

    stand_in = tmp_path / "stand_in"  # configs that name a file (HDLM's clusters, a codebook)
    stand_in.write_text("")
    accepted, families = {}, set()
    for name, entry in sorted(shipped_families().items()):
        config = next((y.stem for y in sorted(entry.config_dir.glob("*.yaml"))
                       if objective_of(y.stem, [entry.config_dir]) == name), None)
        if config is None:
            continue
        extra = {"hdlm": [f"model.cluster_dict_path={stand_in}"], "image_discrete": [f"model.codebook={stand_in}"]}
        cfg0 = compose(config, ["data.data_files.train=/x", *extra.get(name, [])])
        families.add(name)
        typed = validate(cfg0)
        for key, kind in _numeric_keys(type(typed)):
            *path, leaf = key.split(".")
            section = functools.reduce(getattr, path, typed)
            kept = getattr(section, leaf)
            for value in ((0, -1) if kind is int else (-1.0,)):
                setattr(section, leaf, value)  # the typed config, one key changed, every section's check() run
                try:
                    _run_checks(typed)
                except ConfigError as e:
                    assert key.split(".")[-1] in str(e), (key, str(e))  # (a key interpolated from it, too)
                    continue
                finally:
                    setattr(section, leaf, kept)
                accepted.setdefault(key, set()).add(value)
    assert families >= {"mdlm", "gidd", "hdlm", "ar", "mmdit", "bridge", "wedlm_finetune", "latentwire",
                        "image_continuous", "image_discrete", "t2l_regression", "mdlm_latent"}
    wrong = {k: v for k, v in accepted.items() if not v <= MEANINGFUL.get(k, set())}
    assert not wrong, f"accepted without a check: {wrong}"


def test_every_numeric_flag_has_a_ranged_type_and_out_of_range_values_end_in_one_line(capsys):
    """Item 9 (flags): no command parses a number with a bare int/float (a test over the sources),
    and the audit's --batch_size 0, --epochs 0, --world-size 0, num_t=0 end in one line each."""
    import ast
    import subprocess

    from tests.helpers.common import REPO

    bare = []
    tracked = subprocess.run(["git", "ls-files", "*.py"], cwd=REPO, capture_output=True, text=True).stdout.split()
    for rel in tracked:  # the commands users run: not the tests, not the benchmarks
        if rel.startswith(("tests/", "scripts/bench/", "scripts/estimate_table")):
            continue
        for node in ast.walk(ast.parse((REPO / rel).read_text())):
            if not (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
                    and str(node.args[0].value).startswith("--")):
                continue
            kw = {k.arg: k.value for k in node.keywords}
            t = kw.get("type")
            if isinstance(t, ast.Name) and t.id in ("int", "float") and "choices" not in kw:
                bare.append(f"{rel}:{node.lineno} {node.args[0].value}")
    assert not bare, bare

    from baseline.eval.loss import main as loss_main
    from latentIMG_mmdit.cli import parser as image_parser
    from latentwire.cli import train_parser
    from mmldlm.estimate.__main__ import main as estimate_main

    for run, words in [(lambda: train_parser().parse_args(["--batch_size", "0"]), "--batch_size: must be >= 1, got 0"),
                       (lambda: train_parser().parse_args(["--epochs", "0"]), "--epochs: must be > 0.0, got 0"),
                       (lambda: image_parser("continuous").parse_args(["--data-root", "d", "--epochs", "0"]),
                        "--epochs: must be >= 1, got 0"),
                       (lambda: estimate_main(["--config-name", "mmdit", "--world-size", "0"]),
                        "--world-size: must be >= 1, got 0"),
                       (lambda: loss_main(["path=x", "num_t=0"]), "num_t=0: must be >= 1")]:
        with pytest.raises(SystemExit) as e:
            run()
        err = capsys.readouterr().err
        assert e.value.code == 2 and words in err and "Traceback" not in err, err


def test_eval_clis_accept_every_key_their_docs_and_errors_name_and_help_marks_only_required_keys(capsys):
    """Item 4: loss.py's data_files.validation=PATH (its docs and its own error name it) parses;
    every key=value in an eval CLI's docstring, its hint messages and docs/baselines.md is known;
    --help calls only keys without any default required."""
    import ast
    import dataclasses
    import importlib
    import re

    from baseline.eval.loss import LossArgs
    from mmldlm.eval.cli import known_key, parse_keys
    from tests.helpers.common import REPO

    args = parse_keys(LossArgs, ["path=RUN", "data_files.validation=/data/val.json"], "")
    assert args.data_files == {"validation": "/data/val.json"}
    key = re.compile(r"(?<![\w.\-/$(])([a-z_][a-z0-9_]*(?:\.[a-z_]+)*)=(?!=)")  # not f(x=...): a call
    docs = (REPO / "docs" / "baselines.md").read_text() + (REPO / "README.md").read_text()
    for module, spec, aliases in [("loss", "LossArgs", {}), ("generate_samples", "GenerateArgs",
                                                              {"samples_dir": "samples_path"}),
                                  ("generative_ppl", "GenPPLArgs", {}), ("self_correction", "CorrectionArgs", {})]:
        mod = importlib.import_module(f"baseline.eval.{module}")
        fields = {f.name: f for f in dataclasses.fields(getattr(mod, spec))}
        source = Path(mod.__file__).read_text()
        named = set(key.findall(mod.__doc__))
        for node in ast.walk(ast.parse(source)):  # the hints of its messages ("pass data_files.validation=PATH")
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and "pass " in node.value:
                named |= set(key.findall(node.value))
        for line in docs.splitlines():
            if f"{module}.py " in line:
                named |= set(key.findall(line[line.index(f"{module}.py"):]))
        unknown = [k for k in named - {"key"} if not known_key(fields, aliases.get(k, k))]
        assert not unknown, (module, unknown)
        with pytest.raises(SystemExit):
            mod.main(["--help"])
        required = [ln.split()[0] for ln in capsys.readouterr().out.splitlines() if ln.endswith("(required)")]
        assert required == [n for n, f in fields.items() if f.default is dataclasses.MISSING
                            and f.default_factory is dataclasses.MISSING], (module, required)


def test_a_samples_file_with_a_pickled_payload_is_refused_in_one_line(tmp_path, capsys):
    """Item 9: weights-only loading refuses a samples file holding pickled Python objects; the CLI
    says so in one line, as it does for a file that is not a torch.save file at all."""
    import argparse

    from baseline.eval.generative_ppl import main as gen_ppl

    payload = tmp_path / "samples.pt"
    torch.save({"ids": torch.zeros(2, 4, dtype=torch.long), "header": argparse.Namespace(a=1)}, payload)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a torch file at all")
    for path, words in [(payload, "refused, it holds pickled Python objects (argparse.Namespace)"),
                        (junk, "not a torch.save file, or cut short")]:
        with pytest.raises(SystemExit) as e:
            gen_ppl([f"samples_path={path}"])
        assert str(e.value.code).startswith(f"error: samples_path {path}: {words}"), e.value.code
        assert "\n" not in str(e.value.code)


def test_latentwire_takes_the_run_lock_before_writing_into_the_run_directory(tmp_path, caplog):
    """Item 5: a second LatentWire command on a running run's directory is refused before it
    writes anything there (it used to replace the running run's data/train.jsonl first)."""
    from latentwire.cli import train_main
    from mmldlm.train.run_dir import RunDirLock

    run_dir = tmp_path / "runs" / "qa"
    held = RunDirLock(run_dir)
    held.acquire()  # the running run
    records = run_dir / "data" / "train.jsonl"
    records.parent.mkdir(parents=True)
    records.write_text('{"source": "the running run\'s own records", "answers": ["x"]}\n')
    before = records.read_bytes()
    try:
        with caplog.at_level("ERROR"), pytest.raises(SystemExit) as e:
            train_main(["--dataset", "synthetic", "--samples", "16", "--batch_size", "4", "--epochs", "1",
                        "--llama_id", "none/llama", "--qwen_id", "none/qwen", "--output_dir", str(run_dir)])
    finally:
        held.release()
    assert e.value.code == 1 and "is in use by a running job" in caplog.text
    assert records.read_bytes() == before and sorted(p.name for p in (run_dir / "data").iterdir()) == ["train.jsonl"]


def _peak_growth_mib(fn) -> float:
    """How far this process's peak resident memory rises above its current size while ``fn()``
    runs (the kernel's high-water mark, reset first through /proc/self/clear_refs)."""
    def status(key: str) -> float:
        line = next(ln for ln in Path("/proc/self/status").read_text().splitlines() if ln.startswith(key))
        return int(line.split()[1]) / 1024

    try:
        Path("/proc/self/clear_refs").write_text("5")  # 5: reset the peak RSS to the current RSS
    except OSError as e:
        pytest.skip(f"the peak RSS cannot be reset here ({e})")
    before = status("VmRSS:")
    fn()
    return status("VmHWM:") - before


def test_an_over_long_text_record_is_cut_before_tokenising_with_the_same_ids(tokenizer, paragraphs):
    """Item 9: one 5 MB text record cost ~590 MB of tokenizer encodings (~1 GB here) to keep 512
    tokens; now the peak memory grows by a few MB, and the ids are those of the whole text."""
    from mmldlm.data.collate import Collator

    texts = [" ".join(paragraphs[i: i + 40]) for i in range(0, 200, 40)] + ["y" * 200 + " " + "z" * 20_000,
                                                                          "word " * 20_000]
    for L in (8, 128):
        want = tokenizer(texts, truncation=True, max_length=L, padding="longest", return_tensors="pt",
                         split_special_tokens=True)["input_ids"]
        assert torch.equal(Collator(tokenizer, L).tokenize(texts).input_ids, want)
    collate = Collator(tokenizer, 512)
    text = ("A long record of prose, many times over. " * 130_000)[:5_000_000]
    collate.tokenize(["warm up the tokenizer"])
    out = {}
    grew = _peak_growth_mib(lambda: out.update(batch=collate.tokenize([text, "a short one"])))
    assert grew < 100 and out["batch"].input_ids.shape[1] == 512, grew
    assert out["batch"].truncated.tolist() == [True, False]


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _gone(pid: int) -> bool:
    """Exited (a zombie waiting for its new parent to reap it counts as exited)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


@pytest.mark.slow
def test_ranks_whose_launcher_is_killed_checkpoint_and_exit_and_free_the_run_lock(run_tiny, tmp_path):
    """Item 8: SIGKILL torchrun alone (its 2 ranks parked mid-run): both ranks notice within a
    second, finish the step, checkpoint and exit; the run lock is free within 30 s, and the
    checkpoint holds every step they trained."""
    import os
    import signal
    import time

    from filelock import FileLock

    from tests.helpers.common import wait_for

    hold, ranks = tmp_path / "go", []
    p = run_tiny("loss.hold_at_step=3", f"loss.hold_file={hold}", "training.num_train_steps=100000",
                 "logging.save_freq=0", "logging.eval_freq=0", nproc=2, run_name="orphans", background=True)
    try:
        wait_for(lambda: Path(f"{hold}.ready").exists(), "the ranks to reach step 3", proc=p)
        ranks = _children(p.pid)
        assert len(ranks) == 2, ranks
        os.kill(p.pid, signal.SIGKILL)  # the launcher alone
        p.wait(timeout=30)
        hold.touch()  # the ranks go on from step 3, now orphans
        lock = FileLock(str(run_tiny.run_dir("orphans") / ".run.lock"), timeout=0)
        deadline = time.monotonic() + 30

        def stopped() -> bool:
            if not all(_gone(r) for r in ranks):
                return False
            lock.acquire()  # raises Timeout while a rank holds it
            lock.release()
            return True

        while True:
            try:
                if stopped():
                    break
            except TimeoutError:
                pass
            assert time.monotonic() < deadline, "ranks or their lock outlived the launcher by 30 s"
            time.sleep(0.1)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
        for r in ranks:
            if not _gone(r):
                os.kill(r, signal.SIGKILL)
    run_dir = run_tiny.run_dir("orphans")
    state = C.load_checkpoint(C.read_latest(run_dir))
    assert state["step"] >= 3 and sorted(losses(run_dir)) == list(range(1, state["step"] + 1))
