"""Text-only data: records without latents, text-file corpora, hub datasets by name (served from
local directories, as ``load_dataset`` resolves them offline), packed batches (``data.wrap``), and
exact resume over each source. Real prose (pydoc topics), the real MiniLM tokenizer."""
import json

import numpy as np
import pytest
import torch

from mmldlm.config import ConfigError, DataConfig
from mmldlm.data.collate import Collator, wrap_tokens
from mmldlm.data.index import NpyRows
from mmldlm.data.loader import build_data, read_dataset
from mmldlm.data.records import DataError
from tests.helpers.common import data_training_cfgs


@pytest.fixture(scope="module")
def documents() -> list[str]:
    """Whole pydoc topics, each on one line (whitespace-normalised): 30 to 3000 words of prose each."""
    from pydoc_data.topics import topics

    docs = [" ".join(topics[k].split()) for k in sorted(topics)]
    return [d for d in docs if 200 <= len(d) <= 6000][:60]


def cfgs(**data_kw):
    return data_training_cfgs(None, **data_kw)


def write_jsonl(path, records):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def texts_of(dataset):
    return [dataset[i]["text"] for i in range(len(dataset))], [dataset[i]["index"] for i in range(len(dataset))]


def hub_dir(tmp_path, name, splits: dict[str, list[str]], field="text"):
    """A local directory that load_dataset reads as a dataset: one ``<split>.jsonl`` per split."""
    d = tmp_path / name
    for split, docs in splits.items():
        write_jsonl(d / f"{split}.jsonl", [{field: t, "id": i} for i, t in enumerate(docs)])
    return d


# -- records without latents ------------------------------------------------------------------
def test_text_only_jsonl_records_load_and_a_record_without_text_is_bad(tmp_path, tokenizer, documents):
    path = write_jsonl(tmp_path / "train.jsonl", [{"text": t} for t in documents[:12]])
    data, training = cfgs(**{"data_files.train": str(path), "shuffle": False})
    bundle = build_data(data, training, tokenizer)
    batch, info = next(bundle.train)
    assert set(batch) == {"input_ids", "attention_mask", "index"} and batch["index"].tolist() == [0, 1, 2, 3]
    ref = tokenizer(documents[:4], truncation=True, max_length=64, padding="longest", return_tensors="pt")
    assert torch.equal(batch["input_ids"], ref["input_ids"]) and info.texts == 4
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"text": documents[0]}, {"text": documents[1]}, {"title": "no text"}])
    with pytest.raises(DataError) as e:
        read_dataset(bad, None)
    assert str(bad) in str(e.value) and "record 2 (line 3)" in str(e.value) and "no 'text' field" in str(e.value)
    data, _ = cfgs(**{"data_files.train": str(bad), "on_bad_record": "skip"})
    training.train_batch_size = 2
    assert build_data(data, training, tokenizer).bad_records == 1


# -- a text-file corpus -----------------------------------------------------------------------
def test_a_text_file_is_one_document_per_non_empty_line(tmp_path, tokenizer, documents):
    docs = documents[:9]
    raw = ("\ufeff" + docs[0] + "\n\n" + docs[1] + "\r\n   \n" + "\n".join(docs[2:]) + "\n\n").encode()
    path = tmp_path / "corpus.txt"
    path.write_bytes(raw)
    data, training = cfgs(**{"dataset_name": "text", "data_files.train": str(path), "shuffle": False})
    bundle = build_data(data, training, tokenizer)
    ds = bundle.train.loader.dataset
    assert isinstance(ds.index.records, NpyRows)  # indexed by byte offset, read by position
    assert texts_of(ds) == (docs, list(range(9))) and bundle.train_records == 9
    batch, _ = next(bundle.train)
    assert batch["index"].tolist() == [0, 1, 2, 3] and "latent" not in batch
    # the same file under JSON rules is another index (a cached one is never reused across formats)
    with pytest.raises(DataError, match="record 0 \\(line 1\\): unparseable JSON line"):
        read_dataset(path, None)
    # a line that is not UTF-8 is a bad record naming file, record and line
    path.write_bytes(raw + b"fine line\n" + b"caf\xe9 au lait\n")
    with pytest.raises(DataError) as e:
        build_data(data, training, tokenizer)
    assert str(path) in str(e.value) and "record 10 (line 14)" in str(e.value) and "not valid UTF-8" in str(e.value)
    # one rule picks the format: data.dataset_name (a .txt file read as JSON by default would be an error)
    with pytest.raises(ConfigError, match="data.data_files.train: .*corpus.txt is a .txt file: set data.dataset_name"):
        build_data(cfgs(**{"data_files.train": str(path)})[0], training, tokenizer)


# -- hub datasets by name ---------------------------------------------------------------------
def test_local_hub_directory_with_the_openwebtext_split_rule(tmp_path, tokenizer, documents):
    docs = documents[:40]
    d = hub_dir(tmp_path, "tiny_openwebtext", {"train": docs})  # a train split only, like openwebtext
    data, training = cfgs(dataset_name=str(d), cache_dir=str(tmp_path / "hf"), test_size=7)
    bundle = build_data(data, training, tokenizer, need_val=True)
    assert (bundle.train_records, bundle.val_records) == (33, 7)
    train_ds, val_ds = bundle.train.loader.dataset, bundle.val.dataset
    assert texts_of(train_ds) == (docs[:33], list(range(33)))
    assert texts_of(val_ds) == (docs[33:], list(range(33, 40)))  # the last test_size documents, by row
    assert train_ds.index.table.cache_files  # memory-mapped Arrow, not a list of texts
    seen = {i for _ in range(bundle.train.sampler.steps_per_epoch) for i in next(bundle.train)[0]["index"].tolist()}
    val_seen = [i for c in bundle.val for i in c.batch["index"].tolist()]
    assert seen <= set(range(33)) and sorted(val_seen) == list(range(33, 40)) and not seen & set(val_seen)
    batch, _ = next(bundle.train)
    ref = tokenizer([docs[i] for i in batch["index"].tolist()], truncation=True, max_length=64, padding="longest",
                    return_tensors="pt")
    assert torch.equal(batch["input_ids"], ref["input_ids"])
    # a dataset with its own validation split uses it; the split rule is only for openwebtext names
    two = hub_dir(tmp_path, "two_splits", {"train": docs[:20], "validation": docs[20:25]})
    bundle = build_data(cfgs(dataset_name=str(two), cache_dir=str(tmp_path / "hf"))[0], training, tokenizer)
    assert (bundle.train_records, bundle.val_records) == (20, 5) and texts_of(bundle.val.dataset)[0] == docs[20:25]


def test_hub_dataset_config_errors_name_the_key(tmp_path, tokenizer, documents):
    _, training = cfgs()
    hf = str(tmp_path / "hf")
    only_train = hub_dir(tmp_path, "plain", {"train": documents[:10]})
    with pytest.raises(ConfigError, match=r"data.dataset_name: .*plain' has no validation or test split \(splits: "
                                          r"\['train'\]\)"):
        build_data(cfgs(dataset_name=str(only_train), cache_dir=hf)[0], training, tokenizer)
    owt = hub_dir(tmp_path, "openwebtext-10", {"train": documents[:10]}, field="body")
    with pytest.raises(ConfigError, match=r"data.text_field: .* has no column 'text' \(columns: \['body', 'id'\]\)"):
        build_data(cfgs(dataset_name=str(owt), cache_dir=hf)[0], training, tokenizer)
    with pytest.raises(ConfigError, match="data.test_size: 100000 is not below the 10 documents"):
        build_data(cfgs(dataset_name=str(owt), cache_dir=hf, text_field="body")[0], training, tokenizer)
    assert build_data(cfgs(dataset_name=str(owt), cache_dir=hf, text_field="body", test_size=2)[0], training,
                      tokenizer).train_records == 8
    ok = {"dataset_name": "openwebtext", "latent_dim": None}
    DataConfig(**ok).check()
    for kw, words in [({"train": "/x.jsonl"}, "data.data_files.train: must be null"),
                      ({"validation": "/v.jsonl"}, "data.data_files.validation: must be null"),
                      ({"val_split_ratio": 0.1}, "data.val_split_ratio: must be 0 with a hub dataset"),
                      ({"latent_dim": 16}, "data.latent_dim: must be null with a hub dataset"),
                      ({"test_size": 0}, "data.test_size: must be >= 1")]:
        cfg = DataConfig(**{**ok, **{k: v for k, v in kw.items() if k not in ("train", "validation")}})
        cfg.data_files.train, cfg.data_files.validation = kw.get("train"), kw.get("validation")
        with pytest.raises(ConfigError, match=words):
            cfg.check()
    for kw, words in [({"dataset_subset": "en"}, "data.dataset_subset: is read only with a hub dataset"),
                      ({"cache_dir": "/c"}, "data.cache_dir: is read only with a hub dataset"),
                      ({"wrap": True, "latent_dim": 16}, "data.wrap: packs documents across rows"),
                      ({"dataset_name": "text", "latent_dim": 16}, "data.latent_dim: must be null with data.dataset"),
                      ({"latent_dim": None}, None)]:
        cfg = DataConfig(**kw)
        cfg.data_files.train = "/x.jsonl"
        if words is None:
            cfg.check()
            continue
        with pytest.raises(ConfigError, match=words):
            cfg.check()
    with pytest.raises(ConfigError, match="data.data_files.train: is required"):
        DataConfig(latent_dim=None).check()


def test_an_empty_cache_offline_says_how_to_download(tmp_path, tokenizer, monkeypatch):
    import datasets
    import huggingface_hub

    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.setenv(var, "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True, raising=False)
    cache = tmp_path / "empty_cache"
    cache.mkdir()
    data, training = cfgs(dataset_name="Skylion007/openwebtext", cache_dir=str(cache), test_size=5)
    with pytest.raises(ConfigError) as e:
        build_data(data, training, tokenizer)
    msg = str(e.value)
    assert msg.startswith("data.dataset_name: cannot load dataset 'Skylion007/openwebtext'") and str(cache) in msg
    assert (f'HF_HUB_OFFLINE=0 HF_DATASETS_OFFLINE=0 python -c "import datasets; datasets.load_dataset('
            f"'Skylion007/openwebtext', None, cache_dir='{cache}')\"") in msg
    assert f"python -m mmldlm.data.hub Skylion007/openwebtext --cache-dir {cache}" in msg
    assert not list(cache.rglob("*.arrow"))


# -- packed batches ---------------------------------------------------------------------------
def _reference_stream(tokenizer, docs):
    """BOS + doc + EOS of each document, with the tokenizer's Python API."""
    bos, eos = tokenizer.cls_token_id, tokenizer.sep_token_id
    out, starts = [], []
    for d in docs:
        starts.append(len(out))
        out += [bos, *tokenizer(d, add_special_tokens=False, split_special_tokens=True)["input_ids"], eos]
    return out, starts


def test_packed_batches_keep_every_token_and_pad_only_the_last_row(tmp_path, tokenizer, documents):
    docs = documents[:24]
    path = write_jsonl(tmp_path / "train.jsonl", [{"text": t} for t in docs])
    data, training = cfgs(**{"data_files.train": str(path), "shuffle": False, "wrap": True, "max_seq_len": 64,
                             "padding": "max_length", "pad_to_multiple_of": 8})
    training.train_batch_size = 8
    stream = build_data(data, training, tokenizer).train
    for step in range(3):
        batch, info = next(stream)
        ids, mask, index = batch["input_ids"], batch["attention_mask"], batch["index"]
        want, starts = _reference_stream(tokenizer, docs[8 * step: 8 * step + 8])
        rows = -(-len(want) // 64)
        assert ids.shape == mask.shape == (rows, 64) and index.shape == (rows,) and len(want) > 64 * 2
        assert ids.dtype == torch.long and mask.dtype == torch.bool
        assert mask[:-1].all() and mask[-1].sum() == len(want) - 64 * (rows - 1)  # only the last row pads
        assert mask[-1, : int(mask[-1].sum())].all() and (ids[~mask] == tokenizer.pad_token_id).all()
        assert ids[mask].tolist() == want  # every token of every document, in order, none dropped
        owners = [8 * step + int(np.searchsorted(starts, r * 64, side="right")) - 1 for r in range(rows)]
        assert index.tolist() == owners and index[0] == 8 * step
        assert info.truncated == 0 and info.texts == 8
    # the Python-API path (slow tokenizers) packs the same rows as the Rust fast path
    items = [{"text": t, "index": i} for i, t in enumerate(docs[:8])]
    fast = Collator(tokenizer, 64, wrap=True)
    slow = Collator(tokenizer, 64, wrap=True)
    slow.backend = slow.doc_backend = None
    assert fast.doc_backend is not None
    a, b = fast(items).batch, slow(items).batch
    assert all(torch.equal(a[k], b[k]) for k in a)
    # an exact multiple of max_seq_len: no padding row at all
    n = len(_reference_stream(tokenizer, docs[:1])[0])
    exact = Collator(tokenizer, n, wrap=True)([{"text": docs[0], "index": 5}]).batch
    assert exact["attention_mask"].all() and exact["input_ids"].shape == (1, n) and exact["index"].tolist() == [5]


def test_wrap_needs_bos_and_eos_and_the_default_collate(tmp_path, tokenizer, documents):
    class NoSpecials:
        bos_token_id = cls_token_id = None
        eos_token_id, sep_token_id, name_or_path = 3, None, "toy"

    with pytest.raises(ConfigError, match="data.wrap: the tokenizer 'toy' .* has no a BOS"):
        wrap_tokens(NoSpecials())
    assert wrap_tokens(tokenizer) == (tokenizer.cls_token_id, tokenizer.sep_token_id)
    path = write_jsonl(tmp_path / "train.jsonl", [{"text": t} for t in documents[:8]])
    data, training = cfgs(**{"data_files.train": str(path), "wrap": True})
    with pytest.raises(ConfigError, match="data.wrap: this objective brings its own collate"):
        build_data(data, training, tokenizer, collate=Collator(tokenizer, 64))


# -- exact resume over every source --------------------------------------------------------------
@pytest.mark.parametrize("source", ["jsonl", "text", "hub"])
def test_a_restored_stream_continues_exactly(tmp_path, tokenizer, documents, source):
    docs = documents[:30]
    if source == "jsonl":
        kw = {"data_files.train": str(write_jsonl(tmp_path / "t.jsonl", [{"text": t} for t in docs]))}
    elif source == "text":
        (tmp_path / "t.txt").write_text("\n".join(docs) + "\n")
        kw = {"dataset_name": "text", "data_files.train": str(tmp_path / "t.txt")}
    else:
        kw = {"dataset_name": str(hub_dir(tmp_path, "resume_openwebtext", {"train": docs})),
              "cache_dir": str(tmp_path / "hf"), "test_size": 4}
    data, training = cfgs(**kw, wrap=True)  # 26 or 30 documents, 4 a step: 6 or 7 steps an epoch
    whole = build_data(data, training, tokenizer)
    ref = [next(whole.train)[0] for _ in range(10)]  # into the second epoch
    first = build_data(data, training, tokenizer)
    for _ in range(4):
        next(first.train)
    second = build_data(data, training, tokenizer)
    second.train.load_state_dict(first.train.state_dict())
    for want in ref[4:]:
        got = next(second.train)[0]
        assert all(torch.equal(got[k], want[k]) for k in want)
    assert first.fingerprint == second.fingerprint and first.fingerprint["records"] == whole.train_records
