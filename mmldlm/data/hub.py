"""Hub datasets by name (``data.dataset_name: openwebtext``), read by position from their Arrow files.

``datasets.load_dataset(name, data.dataset_subset, cache_dir=data.cache_dir)`` loads every split,
memory-mapped; offline (``HF_HUB_OFFLINE=1`` / ``HF_DATASETS_OFFLINE=1``, as the launchers set
after prefetch) it loads from the datasets cache. A name may also be a local directory of data
files (``train.jsonl``, ``validation.jsonl`` ...), which ``load_dataset`` reads the same way.

Held-out split: when the name's last path component contains ``openwebtext`` (a train split
only), MDLM / GIDD's protocol: train = every document but the last ``data.test_size``,
validation = the last ``data.test_size``. Otherwise the dataset's ``validation`` split, else its
``test`` split. A split is wrapped as :class:`HubTexts`, a map-style source that
:class:`~mmldlm.data.loader.RecordDataset` reads like a record index: an item is
``{index, text}`` where ``index`` is the document's row in its split; no Python list of texts.

``python -m mmldlm.data.hub NAME [--subset S] [--cache-dir DIR]`` downloads a dataset into the
cache on a machine with internet (the same ``load_dataset`` call training makes).
"""
from __future__ import annotations

import argparse
import hashlib
import os
from pathlib import PurePath

import numpy as np

from mmldlm.config import ConfigError
from mmldlm.data.records import DataError, RecordRules

LOCAL_FORMATS = (None, "json", "text")  # data.dataset_name values that read data.data_files
TAIL_SPLIT_NAME = "openwebtext"


def is_hub_name(name: str | None) -> bool:
    """True when ``data.dataset_name`` names a hub dataset (or a local directory for load_dataset)."""
    return name not in LOCAL_FORMATS


def uses_tail_split(name: str) -> bool:
    """OpenWebText's protocol (the last ``test_size`` training documents are the validation set)
    applies to names whose last path component contains "openwebtext"."""
    return TAIL_SPLIT_NAME in PurePath(name.rstrip("/\\")).name.lower()


def download_command(name: str, subset: str | None, cache_dir: str | None) -> str:
    """The shell one-liner that puts a dataset in the cache training reads."""
    return (f'HF_HUB_OFFLINE=0 HF_DATASETS_OFFLINE=0 python -c "import datasets; '
            f'datasets.load_dataset({name!r}, {subset!r}, cache_dir={cache_dir!r})"')


def _offline() -> bool:
    if any(os.environ.get(k, "0").strip().lower() not in ("", "0", "false", "no", "off")
           for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")):
        return True
    try:
        import datasets

        return bool(getattr(datasets.config, "HF_HUB_OFFLINE", False))
    except ImportError:
        return False


class HubTexts:
    """Rows ``start .. stop - 1`` of one split of a loaded dataset, read by position from its
    memory-mapped Arrow table. It offers what :class:`RecordDataset` reads of a record index:
    ``len``, ``rules``, ``json_path`` (the name errors give), ``problems``, ``fingerprint`` and
    ``reader()`` (itself: ``read(positions)``). A record's number is its row in the split; a text
    that is null, not a string or blank is a bad record (:class:`DataError`), found when read."""

    def __init__(self, table, label: str, text_field: str, start: int = 0, stop: int | None = None):
        self.table = table.select_columns([text_field])
        self.field, self.json_path = text_field, label
        self.start, self.stop = start, len(table) if stop is None else stop
        self.rules = RecordRules(latent_dim=None)
        self.problems: list[DataError] = []
        files = [f["filename"] for f in getattr(table, "cache_files", [])]
        size = sum(os.path.getsize(f) for f in files if os.path.isfile(f))
        key = f"{getattr(table, '_fingerprint', '')}|{len(table)}|{size}|{self.start}|{self.stop}|{text_field}"
        self.fingerprint = {"path": label, "size": size, "mtime": 0.0, "records": len(self),
                            "table_hash": hashlib.blake2b(key.encode(), digest_size=16).hexdigest()}

    def __len__(self) -> int:
        return self.stop - self.start

    def reader(self) -> HubTexts:
        return self

    def read(self, positions: np.ndarray) -> list[tuple[int, dict | DataError]]:
        rows = (np.asarray(positions, dtype=np.int64) + self.start).tolist()
        texts = self.table[rows][self.field] if rows else []
        out: list[tuple[int, dict | DataError]] = []
        for n, text in zip(rows, texts):
            if not isinstance(text, str):
                what = "null" if text is None else f"a {type(text).__name__}"
                out.append((n, DataError(self.json_path, n, f"{self.field} is {what}, expected a string")))
            elif not text.strip():
                out.append((n, DataError(self.json_path, n, "text is empty")))
            else:
                out.append((n, {"text": text}))
        return out


def _label(name: str, subset: str | None, split: str) -> str:
    return f"{name}" + (f" (subset {subset})" if subset else "") + f" split {split}"


def _load_failure(name: str, subset: str | None, cache_dir: str | None, e: Exception) -> str:
    first = (str(e).strip().splitlines() or [type(e).__name__])[0]
    if not (_offline() or isinstance(e, ConnectionError)):
        return f"data.dataset_name: cannot load dataset {name!r} (data.dataset_subset {subset!r}): {first}"
    where = cache_dir or "the datasets default cache (~/.cache/huggingface/datasets, or $HF_DATASETS_CACHE)"
    cli = " ".join(["python -m mmldlm.data.hub", name, *(["--subset", subset] if subset else []),
                    *(["--cache-dir", cache_dir] if cache_dir else [])])
    launcher = " ".join(["DOWNLOAD_ONLY=1", f"DATASET_NAME={name}", *([f"DATASET_SUBSET={subset}"] if subset else []),
                         *([f"CACHE_DIR={cache_dir}"] if cache_dir else []), "bash scripts/run_baseline.sh"])
    return (f"data.dataset_name: cannot load dataset {name!r} (data.dataset_subset {subset!r}): it is not in "
            f"{where}, and the hub cannot be reached (offline: HF_HUB_OFFLINE / HF_DATASETS_OFFLINE) "
            f"[{type(e).__name__}: {first}]. Download it once on a machine with internet, into the same "
            f"data.cache_dir:\n  {download_command(name, subset, cache_dir)}\n(or: {cli}; or the launcher's "
            f"step: {launcher})")


def open_hub(name: str, subset: str | None, cache_dir: str | None, test_size: int,
             text_field: str) -> tuple[HubTexts, HubTexts]:
    """(train, validation) of a hub dataset, as the module docstring describes. Raises ConfigError."""
    try:
        import datasets
    except ImportError:
        raise ConfigError(f"data.dataset_name: reading the hub dataset {name!r} needs the `datasets` package "
                          "(pip install datasets); JSON / JSONL / text files work without it "
                          "(data.dataset_name: null | json | text with data.data_files.train)") from None
    try:
        splits = datasets.load_dataset(name, subset, cache_dir=cache_dir)
    except Exception as e:  # noqa: BLE001 - a cache miss offline, a wrong subset ...: the library's text, and what to do
        raise ConfigError(_load_failure(name, subset, cache_dir, e)) from None
    if not hasattr(splits, "keys"):
        raise ConfigError(f"data.dataset_name: load_dataset({name!r}, {subset!r}) gave a {type(splits).__name__}, "
                          "expected a dataset with splits")
    names = list(splits.keys())
    if "train" not in splits:
        raise ConfigError(f"data.dataset_name: {name!r} has no train split (splits: {names})")
    train = splits["train"]
    if text_field not in train.column_names:
        raise ConfigError(f"data.text_field: {name!r} has no column {text_field!r} (columns: "
                          f"{train.column_names}); set data.text_field to the column that holds the text")
    if uses_tail_split(name):
        n = len(train)
        if test_size >= n:
            raise ConfigError(f"data.test_size: {test_size} is not below the {n} documents of {name!r}'s train "
                              "split (the last data.test_size documents are the validation set); lower it")
        label = _label(name, subset, "train")
        cut = n - test_size
        return HubTexts(train, label, text_field, 0, cut), HubTexts(train, label, text_field, cut, n)
    held = next((s for s in ("validation", "test") if s in splits), None)
    if held is None:
        raise ConfigError(f"data.dataset_name: {name!r} has no validation or test split (splits: {names}), and "
                          f"only names containing {TAIL_SPLIT_NAME!r} hold out their last data.test_size training "
                          "documents; pick a dataset with a held-out split")
    if text_field not in splits[held].column_names:
        raise ConfigError(f"data.text_field: {name!r} split {held} has no column {text_field!r} (columns: "
                          f"{splits[held].column_names})")
    return (HubTexts(train, _label(name, subset, "train"), text_field),
            HubTexts(splits[held], _label(name, subset, held), text_field))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m mmldlm.data.hub",
                                 description="Download a hub dataset into the datasets cache (on a machine with "
                                             "internet), so that training loads it offline: the call training "
                                             "makes, datasets.load_dataset(name, subset, cache_dir=...).")
    ap.add_argument("name", help="data.dataset_name")
    ap.add_argument("--subset", default=None, help="data.dataset_subset")
    ap.add_argument("--cache-dir", default=None, help="data.cache_dir (default: the datasets default cache)")
    a = ap.parse_args(argv)
    for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):  # read when datasets is imported: before it
        os.environ[k] = "0"
    import datasets

    cache_dir = os.path.abspath(os.path.expanduser(a.cache_dir)) if a.cache_dir else None
    print(datasets.load_dataset(a.name, a.subset, cache_dir=cache_dir))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
