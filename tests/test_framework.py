"""The house rules of the framework package, and its streamed record index."""
import ast
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from mmldlm.data.index import RECORD_DTYPE, open_index
from mmldlm.data.records import DataError, RecordRules
from tests.helpers.common import REPO, make_dataset

FAMILIES = ("latentDLM_mmdit", "wedlm_bridge", "baseline", "baseline_latent", "latentwire", "latentIMG_mmdit",
            "cycle_vae_impl", "preprocessed_data")


def test_the_framework_imports_no_family():
    """Every import statement under mmldlm/ (also inside functions) names only mmldlm, the
    standard library or third-party packages: the framework works without any family."""
    offenders = []
    for path in (REPO / "mmldlm").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            offenders += [f"{path.relative_to(REPO)}: {n}" for n in names if n.split(".")[0] in FAMILIES]
    assert not offenders, offenders
    # and it imports, builds a config schema and a loop without any family module loaded
    code = ("import sys, mmldlm.train, mmldlm.data.loader, mmldlm.config, mmldlm.objective; "
            f"print(sorted(m for m in sys.modules if m.split('.')[0] in {FAMILIES!r}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stdout + out.stderr


def _records(n, texts):
    return [{"text": texts[i % len(texts)] + f" ({i})", "latent_path": "latents/shard_00000.npy", "latent_row": i}
            for i in range(n)]


@pytest.mark.parametrize("layout", ["json_list", "jsonl"])
def test_the_index_streams_big_files_in_windows_and_reads_records_back(tmp_path, paragraphs, layout, monkeypatch):
    import mmldlm.data.index as index_module

    monkeypatch.setattr(index_module, "_CHUNK", 1000)  # many windows: records straddle their ends
    records = _records(300, [p + " ünïcödé ✓" for p in paragraphs[:50]])
    np.save(tmp_path / "latents_shard.npy", np.zeros((300, 4), np.float32))
    (tmp_path / "latents").mkdir()
    os.replace(tmp_path / "latents_shard.npy", tmp_path / "latents" / "shard_00000.npy")
    path = tmp_path / ("d.json" if layout == "json_list" else "d.jsonl")
    text = (json.dumps(records, indent=1, ensure_ascii=False) if layout == "json_list" else
            "\n".join(json.dumps(r, ensure_ascii=False) for r in records) + "\n")
    path.write_text(text, encoding="utf-8")
    idx = open_index(path, RecordRules(latent_dim=4))
    assert len(idx) == 300 and idx.records.dtype == RECORD_DTYPE
    raw = path.read_bytes()
    entries = idx.records.take([0, 1, 137, 299])
    for i, r in zip((0, 1, 137, 299), entries):  # each entry's bytes are exactly that record's JSON
        assert json.loads(raw[r["offset"]: r["offset"] + r["length"]]) == records[i] and r["record"] == i


def test_the_index_is_built_once_shared_and_rebuilt_when_the_file_changes(tmp_path, paragraphs):
    path = make_dataset(tmp_path, paragraphs[:40], dim=4)
    rules = RecordRules(latent_dim=4)
    first = open_index(path, rules)
    meta = first.dir / "meta.json"
    built = meta.stat().st_mtime_ns
    again = open_index(path, rules)
    assert again.dir == first.dir and meta.stat().st_mtime_ns == built  # reused, not rebuilt
    # two processes asking at once: one builds, the other waits for it and maps the same index
    other = path.with_name("other.json")
    other.write_bytes(path.read_bytes())
    code = (f"from mmldlm.data.index import open_index; from mmldlm.data.records import RecordRules; "
            f"print(len(open_index({str(other)!r}, RecordRules(latent_dim=4))))")
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=REPO)
             for _ in range(2)]
    assert [p.communicate(timeout=120)[0].strip() for p in procs] == ["40", "40"]
    records = json.loads(path.read_text())
    records[5]["text"] = ""  # the file changes: its index is rebuilt, and the bad record is found
    path.write_text(json.dumps(records))
    with pytest.raises(DataError, match="record 5: text is empty"):
        idx = open_index(path, rules)
        raise idx.problems[0]
    assert open_index(path, RecordRules(latent_dim=4, allow_outside=True)).dir != first.dir  # other rules


def test_indexes_go_to_the_cache_dir_when_asked_or_when_the_data_directory_is_read_only(tmp_path, paragraphs,
                                                                                         monkeypatch):
    path = make_dataset(tmp_path / "ro", paragraphs[:20], dim=4)
    asked = open_index(path, RecordRules(latent_dim=4), cache_dir=str(tmp_path / "asked"))
    assert str(asked.dir).startswith(str(tmp_path / "asked")) and len(asked) == 20
    # root may write anywhere, so the data directory's refusal is simulated at the permission check
    monkeypatch.setenv("MMLDLM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(os, "access", lambda p, mode: not str(p).startswith(str(tmp_path / "ro")))
    idx = open_index(path, RecordRules(latent_dim=4))
    assert str(idx.dir).startswith(str(tmp_path / "cache")) and len(idx) == 20
