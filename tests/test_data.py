"""The shared loader: formats, batches, splits, sampling order, bad input, the checker CLI."""
import json
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch

from mmldlm.data.collate import Collator, mean_latent
from mmldlm.data.loader import StepChunkSampler, build_data, held_out, read_dataset
from mmldlm.data.records import DataError
from tests.helpers.common import data_training_cfgs, make_dataset

D = 16


def cfgs(train, **data_kw):
    return data_training_cfgs(D, train, **data_kw)


def write_json(path, records, jsonl=False):
    path.write_text("\n".join(json.dumps(r) for r in records) if jsonl else json.dumps(records))
    return path


def batches_of(bundle, n):
    return [next(bundle.train)[0] for _ in range(n)]


# -- formats and batches ----------------------------------------------------------------------
def test_per_file_shapes_jsonl_and_relative_paths(tmp_path, tokenizer, paragraphs):
    lat = tmp_path / "data" / "lat"
    lat.mkdir(parents=True)
    rng = np.random.default_rng(0)
    vecs = [rng.standard_normal(D), rng.standard_normal((1, D)), rng.standard_normal((3, D))]
    records = []
    for i, v in enumerate(vecs):
        np.save(lat / f"{i}.npy", v.astype(np.float32))
        records.append({"text": paragraphs[i], "latent_path": f"lat/{i}.npy"})
    path = write_json(tmp_path / "data" / "train.jsonl", records, jsonl=True)
    ds = read_dataset(path, D)
    batch = Collator(tokenizer, 64)([ds[i] for i in range(3)]).batch
    assert batch["latent"].shape == (3, 3, D) and batch["latent_mask"].tolist() == [
        [True, False, False], [True, False, False], [True, True, True]]
    np.testing.assert_allclose(batch["latent"][2].numpy(), vecs[2], rtol=1e-6)
    np.testing.assert_allclose(mean_latent(batch)[2].numpy(), vecs[2].mean(0), rtol=1e-5)
    np.testing.assert_allclose(mean_latent(batch)[0].numpy(), vecs[0], rtol=1e-6)
    assert batch["index"].tolist() == [0, 1, 2]
    # the same files found through data.latent_data_root from a JSON elsewhere
    elsewhere = write_json(tmp_path / "train.json", records)
    assert len(read_dataset(elsewhere, D, latent_root=str(tmp_path / "data"))) == 3


def test_shard_rows_batch_contract_and_dynamic_padding(tmp_path, tokenizer, paragraphs):
    path = make_dataset(tmp_path, paragraphs[:40], dim=D)
    shard = np.load(tmp_path / "latents" / "shard_00000.npy")
    data, training = cfgs(path, shuffle=False, max_seq_len=24)
    b = batches_of(build_data(data, training, tokenizer), 1)[0]
    assert b["input_ids"].dtype == torch.long and b["attention_mask"].dtype == torch.bool
    assert b["latent"].dtype == torch.float32 and b["latent"].shape == (4, D)
    np.testing.assert_array_equal(b["latent"].numpy(), shard[b["index"].numpy()])
    lengths = b["attention_mask"].sum(1)
    assert b["input_ids"].shape[1] == lengths.max() <= 24  # longest in batch, capped
    full = tokenizer(paragraphs[int(b["index"][0])])["input_ids"]
    assert b["input_ids"][0, : lengths[0]].tolist() == full[: int(lengths[0])]
    pad = b["input_ids"][~b["attention_mask"]]
    assert (pad == tokenizer.pad_token_id).all()
    data.padding = "max_length"
    assert next(build_data(data, training, tokenizer).train)[0]["input_ids"].shape == (4, 24)


def test_held_out_split_is_disjoint_deterministic_and_keeps_duplicates_together(paragraphs):
    texts = paragraphs[:300] + paragraphs[:50]  # 50 duplicates
    m1, m2 = held_out(texts, 0.2), held_out(list(texts), 0.2)
    assert (m1 == m2).all() and 30 < m1.sum() < 110
    val, train = {t for t, v in zip(texts, m1) if v}, {t for t, v in zip(texts, m1) if not v}
    assert not val & train


def test_validation_file_max_samples_and_split(tmp_path, tokenizer, paragraphs):
    train = make_dataset(tmp_path / "a", paragraphs[:100], dim=D)
    val = make_dataset(tmp_path / "b", paragraphs[100:130], dim=D, json_name="validation_data.json")
    data, training = cfgs(train, **{"data_files.validation": str(val), "max_samples": 40,
                                    "max_val_samples": 9})
    bundle = build_data(data, training, tokenizer)
    assert (bundle.train_records, bundle.val_records) == (40, 9)
    seen = {i for b in batches_of(bundle, 10) for i in b["index"].tolist()}
    assert seen <= set(range(40))
    data, _ = cfgs(train, val_split_ratio=0.2)
    split = build_data(data, training, tokenizer)
    assert split.train_records + split.val_records == 100 and split.val_records > 5
    val_idx = {i for c in split.val for i in c.batch["index"].tolist()}
    train_idx = {i for b in batches_of(split, 2 * split.train.sampler.steps_per_epoch) for i in b["index"].tolist()}
    assert val_idx and not val_idx & train_idx


# -- sampling order -------------------------------------------------------------------------
@pytest.mark.parametrize("world,accum", [(2, 1), (1, 4), (2, 2)])
def test_each_step_takes_the_same_samples_whatever_the_ranks_and_accumulation(world, accum):
    n, global_batch = 103, 8
    b = global_batch // (world * accum)
    ref = StepChunkSampler(n, global_batch, 0, 1, 1, seed=3).indices().reshape(-1, global_batch)
    parts = [StepChunkSampler(n, b, r, world, accum, seed=3).indices().reshape(-1, accum, b)
             for r in range(world)]
    for step in range(len(ref)):
        got = np.concatenate([p[step].reshape(-1) for p in parts])
        assert sorted(got) == sorted(ref[step])


def test_the_lazy_permutation_is_a_seeded_bijection():
    from mmldlm.data.loader import permute

    for n in (1, 2, 3, 31, 1000, 4099):
        p = permute(np.arange(n), n, key=7)
        assert sorted(p.tolist()) == list(range(n))
    a, b = permute(np.arange(500), 500, key=1), permute(np.arange(500), 500, key=2)
    assert np.array_equal(a, permute(np.arange(500), 500, key=1)) and (a == b).mean() < 0.05
    assert np.array_equal(permute(np.array([17, 3]), 500, key=1), a[[17, 3]])  # any slice, on its own


def test_stream_resumes_mid_epoch_and_across_epochs(tmp_path, tokenizer, paragraphs):
    path = make_dataset(tmp_path, paragraphs[:30], dim=D)  # 7 steps per epoch at batch 4
    data, training = cfgs(path)
    whole = [b["index"].tolist() for b in batches_of(build_data(data, training, tokenizer), 12)]
    assert whole[:7] != whole[7:14][:5]  # epoch 2 is reshuffled
    first = build_data(data, training, tokenizer)
    head = [b["index"].tolist() for b in batches_of(first, 9)]
    second = build_data(data, training, tokenizer)
    second.train.load_state_dict(first.train.state_dict())
    assert head + [b["index"].tolist() for b in batches_of(second, 3)] == whole


# -- bad input ------------------------------------------------------------------------------
def _bad_cases(d):
    """(name, records-or-raw-text, expected words in the message, record number)."""
    np.save(d / "ok.npy", np.zeros(D, np.float32))
    np.save(d / "nan.npy", np.full(D, np.nan, np.float32))
    np.save(d / "inf.npy", np.array([np.inf] + [0.0] * (D - 1), np.float32))
    np.save(d / "dim.npy", np.zeros(D + 1, np.float32))
    np.save(d / "3d.npy", np.zeros((1, 1, D), np.float32))
    np.save(d / "int.npy", np.zeros(D, np.int32))
    np.save(d / "shard.npy", np.zeros((5, D), np.float32))
    np.save(d / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    (d / "trunc.npy").write_bytes((d / "ok.npy").read_bytes()[:-10])
    (d / "junk.npy").write_bytes(pickle.dumps([1, 2, 3]))
    os.mkfifo(d / "fifo.npy")  # opening it would hang the reader
    (d / "adir.npy").mkdir()
    (d.parent / f"{d.name}_outside.npy").write_bytes((d / "shard.npy").read_bytes())
    (d / "link.npy").symlink_to(d.parent / f"{d.name}_outside.npy")  # a link that leads out of the root
    ok = {"text": "fine", "latent_path": "ok.npy"}
    return [
        ("no_text", {"latent_path": "ok.npy"}, "no 'text' field"),
        ("no_path", {"text": "x"}, "no 'latent_path' field"),
        ("text_not_str", {"text": 5, "latent_path": "ok.npy"}, "text is a int"),
        ("empty_text", {"text": "  ", "latent_path": "ok.npy"}, "text is empty"),
        ("missing_file", {"text": "x", "latent_path": "nope.npy"}, "not found"),
        ("truncated", {"text": "x", "latent_path": "trunc.npy"}, "truncated"),
        ("not_npy", {"text": "x", "latent_path": "junk.npy"}, "not a .npy"),
        ("pickled", {"text": "x", "latent_path": "obj.npy"}, "pickled object array"),
        ("wrong_ndim", {"text": "x", "latent_path": "3d.npy"}, "shape [1, 1, 16]"),
        ("wrong_dim", {"text": "x", "latent_path": "dim.npy"}, "dim 17"),
        ("int_dtype", {"text": "x", "latent_path": "int.npy"}, "dtype int32"),
        ("nan", {"text": "x", "latent_path": "nan.npy"}, "16 non-finite"),
        ("inf", {"text": "x", "latent_path": "inf.npy"}, "1 non-finite"),
        ("row_out_of_range", {"text": "x", "latent_path": "shard.npy", "latent_row": 5}, "out of range"),
        ("row_not_int", {"text": "x", "latent_path": "shard.npy", "latent_row": "2"}, "latent_row must be"),
        ("shard_not_2d", {"text": "x", "latent_path": "ok.npy", "latent_row": 0}, "must be 2-D"),
        ("absolute_path", {"text": "x", "latent_path": str(d / "ok.npy")}, "points outside"),
        ("climbs_out", {"text": "x", "latent_path": "sub/../../ok.npy"}, "points outside"),
        ("fifo", {"text": "x", "latent_path": "fifo.npy"}, "is a FIFO"),
        ("fifo_shard", {"text": "x", "latent_path": "fifo.npy", "latent_row": 0}, "is a FIFO"),
        ("directory", {"text": "x", "latent_path": "adir.npy"}, "is a directory"),
        ("symlink_out", {"text": "x", "latent_path": "link.npy"}, "through a symlink"),
        ("symlink_out_shard", {"text": "x", "latent_path": "link.npy", "latent_row": 0}, "through a symlink"),
    ], ok


def _first_error(path):
    ds = read_dataset(path, D)
    for i in range(len(ds)):
        if isinstance(ds[i], DataError):
            raise ds[i]


def test_every_bad_record_case_names_file_record_and_reason(tmp_path):
    cases, ok = _bad_cases(tmp_path)
    for name, bad, words in cases:
        path = write_json(tmp_path / f"{name}.json", [ok, ok, bad])
        with pytest.raises(DataError) as e:
            _first_error(path)
        msg = str(e.value)
        assert str(path) in msg and "record 2" in msg and words in msg, (name, msg)


def test_unparseable_json_line_and_json_list(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"text": "a", "latent_path": "x.npy"}\n\n{"text": "b", oops}\n')
    with pytest.raises(DataError, match=r"t\.jsonl: record 1 \(line 3\): unparseable JSON line"):
        read_dataset(path, None)
    path = tmp_path / "t.json"
    path.write_text('[{"text": "a", "latent_path": "x.npy"},]')
    with pytest.raises(DataError, match=r"t\.json: not valid JSON near line 1"):
        read_dataset(path, None)


def test_skip_mode_counts_instead_of_raising(tmp_path, tokenizer):
    cases, ok = _bad_cases(tmp_path)
    path = write_json(tmp_path / "mixed.json", [ok] * 8 + [bad for _, bad, _ in cases])
    data, training = cfgs(path, on_bad_record="skip", shuffle=False)
    training.train_batch_size = 20  # 31 records, 11 dropped while reading
    bundle = build_data(data, training, tokenizer)
    # field and shard problems are found while reading; per-file latents when loaded
    assert bundle.bad_records == 11
    batch, info = next(bundle.train)
    assert info.skipped == 12 and batch["input_ids"].shape[0] == 8 and info.texts == 8
    assert set(batch) == {"input_ids", "attention_mask", "index", "latent"}  # no bookkeeping inside
    assert (batch["latent"] == 0).all()  # what remains is the good data, nothing filled in


def test_skipped_records_are_counted_in_the_training_log(run_tiny, tiny_data):
    records = json.loads(tiny_data.read_text())
    records[5]["latent_path"] = "latents/missing.npy"
    records[6]["latent_row"] = 10**6
    records[7]["text"] = ""
    tiny_data.write_text(json.dumps(records))
    run_tiny("data.on_bad_record=skip", "training.num_train_steps=3")
    from mmldlm.train.run_log import read_jsonl
    log = read_jsonl(run_tiny.run_dir() / "training_log.jsonl")
    assert [r["bad_records"] for r in log] == [3, 3, 3]
    # a latent that turns out bad inside a DataLoader worker reaches the user intact
    records[7]["text"], records[5]["latent_path"], records[6]["latent_row"] = "ok", "latents/x.npy", 6
    records[5].pop("latent_row")
    tiny_data.write_text(json.dumps(records))
    p = run_tiny("training.num_train_steps=3", "data.num_workers=1", "data.shuffle=false",
                 run_name="strict", expect_ok=False)
    out = p.stdout + p.stderr
    assert p.returncode == 1 and "record 5: latent file" in out and "not found" in out
    assert "latentDLM_mmdit.data_simple check" in out and "Traceback" not in out
    records[5]["latent_path"], records[5]["latent_row"] = "latents/shard_00000.npy", 5
    records[7]["text"] = ""
    tiny_data.write_text(json.dumps(records))
    p = run_tiny("training.num_train_steps=3", run_name="strict2", expect_ok=False)
    out = p.stdout + p.stderr
    assert p.returncode == 1 and "record 7: text is empty" in out
    assert "latentDLM_mmdit.data_simple check" in out and "Traceback" not in out


def test_checker_cli_lists_every_bad_record(tmp_path, capsys):
    from mmldlm.data.check import check_main

    cases, ok = _bad_cases(tmp_path)
    bad_path = write_json(tmp_path / "all.json", [ok] + [bad for _, bad, _ in cases])
    good_path = write_json(tmp_path / "good.json", [ok, ok])
    run = lambda p: subprocess.run([sys.executable, "-m", "latentDLM_mmdit.data_simple", "check", str(p),  # noqa: E731
                                    "--latent-dim", str(D)], capture_output=True, text=True, timeout=120)
    out = run(bad_path)
    assert out.returncode == 1
    bad_lines = [ln for ln in out.stdout.splitlines() if ln.startswith("BAD")]
    assert len(bad_lines) == len(cases)
    for i, (name, _, words) in enumerate(cases):
        assert f"record {i + 1}:" in bad_lines[i] and words in bad_lines[i], (name, bad_lines[i])
    assert f"{len(cases) + 1} records, {len(cases)} bad, 1 good" in out.stdout
    good = run(good_path)
    assert good.returncode == 0 and "0 bad" in good.stdout
    wrong_dim = next(bad for name, bad, _ in cases if name == "wrong_dim")  # a systematic error: one line
    assert check_main([str(write_json(tmp_path / "many.json", [ok] + [wrong_dim] * 8)), "--latent-dim", str(D)]) == 1
    many = capsys.readouterr().out
    (line,) = [ln for ln in many.splitlines() if ln.startswith("BAD")]
    assert "8 records (first: 1, 2, 3, 4, 5, ...)" in line and "dim 17" in line, line
    assert "9 records, 8 bad, 1 good" in many


@pytest.mark.parametrize("fixed,multiple,side", [(False, 1, "right"), (False, 8, "right"), (True, 1, "right"),
                                                (False, 8, "left")])
def test_fast_collator_matches_the_transformers_tokenizer_call(tokenizer_path, paragraphs, fixed, multiple, side):
    from mmldlm.data.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(tokenizer_path)  # its own copy: the padding side changes
    tokenizer.padding_side = side
    texts = paragraphs[:13] + ["short", "x " * 400]  # one truncated
    col = Collator(tokenizer, 48, fixed_length=fixed, pad_to_multiple_of=multiple)
    assert col.backend is not None
    ids, mask, truncated = col.tokenize(texts)
    ref = tokenizer(texts, truncation=True, max_length=48, return_tensors="pt",
                    padding="max_length" if fixed else "longest", split_special_tokens=True,
                    pad_to_multiple_of=None if fixed or multiple == 1 else multiple)
    assert torch.equal(ids, ref["input_ids"]) and torch.equal(mask, ref["attention_mask"].bool())
    assert truncated.tolist() == [len(tokenizer(t)["input_ids"]) > 48 for t in texts] and truncated[-1]


def test_batched_shard_reads_equal_per_item_reads(tmp_path, paragraphs):
    lat = np.random.default_rng(2).standard_normal((30, D)).astype(np.float32)
    lat[7, 3] = np.nan
    from preprocessed_data.demo_corpus import write_dataset
    path = write_dataset(tmp_path, paragraphs[:30], lat, shard_rows=12)  # 3 shards
    records = json.loads(path.read_text())
    np.save(tmp_path / "single.npy", lat[0])
    records[4] = {"text": "per-file record", "latent_path": "single.npy"}
    write_json(path, records)
    ds = read_dataset(path, D)
    idx = [29, 7, 4, 0, 13, 12, 11, 25]
    batched, single = ds.__getitems__(idx), [ds[i] for i in idx]
    for b, s in zip(batched, single):
        if isinstance(s, DataError):
            assert isinstance(b, DataError) and b.record == s.record == 7 and "non-finite" in str(b)
        else:
            assert b["index"] == s["index"] and b["text"] == s["text"]
            np.testing.assert_array_equal(b["latent"], s["latent"])


def test_demo_tokenizer_is_bert_shaped_and_the_fast_path_gives_its_ids(tmp_path, paragraphs):
    from mmldlm.data.tokenizer import load_tokenizer, train_wordpiece

    tok = load_tokenizer(str(train_wordpiece(paragraphs[:300], tmp_path / "tok", vocab_size=1000)))
    assert len(tok) == 1000 and tok.mask_token == "[MASK]" and tok.pad_token_id is not None
    texts = paragraphs[300:340]
    ids, mask, _ = Collator(tok, 48).tokenize(texts)
    ref = tok(texts, truncation=True, max_length=48, padding="longest", return_tensors="pt")
    assert torch.equal(ids, ref["input_ids"]) and torch.equal(mask, ref["attention_mask"].bool())
    row = ids[0][mask[0]].tolist()
    assert row[0] == tok.cls_token_id and row[-1] == tok.sep_token_id
    assert tok.decode(row, skip_special_tokens=True) == " ".join(tok.decode(row[1:-1]).split())


# -- hardening: paths, splits, special tokens, truncation --------------------------------------
def test_paths_outside_the_root_are_allowed_only_when_the_config_says_so(tmp_path):
    inside, outside = tmp_path / "data", tmp_path / "elsewhere"
    inside.mkdir(), outside.mkdir()
    np.save(outside / "z.npy", np.ones(D, np.float32))
    path = write_json(inside / "train.json", [{"text": "a", "latent_path": "../elsewhere/z.npy"},
                                              {"text": "b", "latent_path": str(outside / "z.npy")}])
    ds = read_dataset(path, D, skip=True)
    assert len(ds) == 0 and [e.record for e in ds.index.problems] == [0, 1]
    assert all("data.allow_paths_outside_root=true" in str(e) for e in ds.index.problems)
    allowed = read_dataset(path, D, allow_outside=True)
    assert [float(allowed[i]["latent"].sum()) for i in range(2)] == [D, D]


def test_a_fifo_dataset_file_is_refused_without_opening_it(tmp_path):
    os.mkfifo(tmp_path / "train.json")
    with pytest.raises(DataError, match="is a FIFO; only regular files are read"):
        read_dataset(tmp_path / "train.json", D)


def test_the_trainers_split_holds_out_records_of_an_extracted_train_file(tmp_path, tokenizer, paragraphs):
    from mmldlm.config import ConfigError
    from mmldlm.data.index import TRAIN_SPLIT_SALT

    texts = paragraphs[:600]
    extractor_val = held_out(texts, 0.05)  # what --create-validation held out
    train_texts = [t for t, v in zip(texts, extractor_val) if not v]
    assert held_out(train_texts, 0.05).sum() == 0  # one unsalted hash: nothing left to hold out
    assert held_out(train_texts, 0.05, TRAIN_SPLIT_SALT).sum() > 10
    path = make_dataset(tmp_path / "a", train_texts, dim=D)
    data, training = cfgs(path, val_split_ratio=0.05)
    assert build_data(data, training, tokenizer, need_val=True).val_records > 10
    # an empty validation set is an error when eval is on, naming its cause
    tiny = make_dataset(tmp_path / "b", train_texts[:8], dim=D)
    with pytest.raises(ConfigError, match="data.val_split_ratio: 0.05 of 8 records held out none"):
        build_data(cfgs(tiny, val_split_ratio=0.05)[0], training, tokenizer, need_val=True)
    empty = write_json(tmp_path / "empty.json", [])
    data, _ = cfgs(path, **{"data_files.validation": str(empty)})
    with pytest.raises(ConfigError, match="data.data_files.validation: .*empty.json holds no"):
        build_data(data, training, tokenizer, need_val=True)
    assert build_data(data, training, tokenizer, need_val=False).val is None


def test_literal_special_tokens_in_text_never_become_special_ids(tmp_path, tokenizer, paragraphs):
    texts = ["[MASK] [PAD] [CLS] literally, and [SEP] too", "x [MASK]"] + paragraphs[:6]
    path = make_dataset(tmp_path, texts, dim=D)
    data, training = cfgs(path, shuffle=False)
    training.train_batch_size = 8
    batch, _ = next(build_data(data, training, tokenizer).train)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    inner = mask.clone()
    inner[:, 0] = False  # [CLS]
    inner[torch.arange(len(ids)), mask.sum(1) - 1] = False  # [SEP]
    for special in (tokenizer.mask_token_id, tokenizer.pad_token_id, tokenizer.cls_token_id, tokenizer.sep_token_id):
        assert not (ids[inner] == special).any()
    assert tokenizer.decode(ids[0][inner[0]]) == "[ mask ] [ pad ] [ cls ] literally, and [ sep ] too"
    out = subprocess.run([sys.executable, "-m", "latentDLM_mmdit.data_simple", "check", str(path), "--latent-dim",
                          str(D), "--tokenizer", tokenizer.name_or_path, "--max-seq-len", "16"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "NOTE 2 texts contain literal special-token strings" in out.stdout and "first: record 0" in out.stdout
    n_long = sum(len(tokenizer(t, split_special_tokens=True)["input_ids"]) > 16 for t in texts)
    assert f"NOTE {n_long} of 8 texts" in out.stdout and n_long > 0


def test_the_stream_counts_truncated_texts(tmp_path, tokenizer, paragraphs):
    path = make_dataset(tmp_path, paragraphs[:16], dim=D)
    data, training = cfgs(path, shuffle=False, max_seq_len=20)
    batch, info = next(build_data(data, training, tokenizer).train)
    want = sum(len(tokenizer(paragraphs[i])["input_ids"]) > 20 for i in batch["index"].tolist())
    assert info.truncated == want and info.texts == 4
