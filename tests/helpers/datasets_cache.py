"""The standard lm-eval tasks' datasets made locally, in the datasets cache's own layout, so that a
test can run the real task names offline (HF_DATASETS_OFFLINE=1) as a user does after
``python -m mmldlm.eval.harness --download-only`` on a login node. The records are real prose
arranged in each dataset's schema; only the download itself is left out (no network here)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

# task -> (hub repo, config, {split: the fields a record needs})
STANDARD = {
    "lambada_openai": ("EleutherAI/lambada_openai", "default", ["test"]),
    "wikitext": ("EleutherAI/wikitext_document_level", "wikitext-2-raw-v1", ["train", "validation", "test"]),
    "piqa": ("baber/piqa", "default", ["train", "validation"]),
    "hellaswag": ("Rowan/hellaswag", "default", ["train", "validation"]),
    "arc_easy": ("allenai/ai2_arc", "ARC-Easy", ["train", "validation", "test"]),
}


def record(task: str, text: str, other: str) -> dict:
    """One record of ``task``'s dataset built from two paragraphs."""
    words, alt = text.split(), other.split()
    head, tail = " ".join(words[:12]), " ".join(words[12:20])
    if task == "lambada_openai":
        return {"text": " ".join(words[:16])}
    if task == "wikitext":
        return {"page": text}
    if task == "piqa":
        return {"goal": head, "sol1": tail, "sol2": " ".join(alt[:8]), "label": 0}
    if task == "hellaswag":
        return {"ind": 0, "activity_label": words[0], "ctx_a": head, "ctx_b": words[12], "ctx": head,
                "endings": [tail, " ".join(alt[:8]), " ".join(alt[8:16]), " ".join(alt[16:24])],
                "source_id": "pydoc", "split": "val", "split_type": "indomain", "label": "0"}
    return {"id": "pydoc", "question": head + "?", "answerKey": "A",
            "choices": {"text": [tail, " ".join(alt[:8])], "label": ["A", "B"]}}


def make_cache(cache_dir: Path, paragraphs: list[str], work: Path, n: int = 8) -> None:
    """``n`` records per split of every STANDARD task, under ``cache_dir`` (HF_DATASETS_CACHE)."""
    from datasets.data_files import DataFilesDict
    from datasets.packaged_modules.json.json import Json

    texts = [p for p in paragraphs if len(p.split()) >= 24][: n + 1]
    for task, (repo, config, splits) in STANDARD.items():
        files = {}
        for split in splits:
            f = work / f"{task}_{split}.jsonl"
            f.write_text("\n".join(json.dumps(record(task, t, texts[i + 1])) for i, t in enumerate(texts[:n])))
            files[split] = [str(f)]
        name = repo.split("/")[-1]
        builder = Json(cache_dir=str(work / "build"), dataset_name=name, config_name=config,
                       data_files=DataFilesDict.from_patterns(files))
        builder.download_and_prepare()
        built = Path(builder.cache_dir)  # build/{name}/{config id}/{version}
        target = cache_dir / repo.replace("/", "___") / config / built.name / "local"  # {config}/{version}/{hash}
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(built, target)
        info = json.loads((target / "dataset_info.json").read_text())
        (target / "dataset_info.json").write_text(json.dumps({**info, "config_name": config}))
