"""QA data for LatentWire: SQuAD v1.1 and HotpotQA readers, a synthetic generator, QA records.

A QA record (JSON list or JSONL, through the shared loader) is ``{"source": str, "answers":
[str, ...]}`` plus optional ``id``. ``source`` is what the encoder reads and the text baseline
prompts with; ``answers`` keeps every gold reference (SQuAD's dev set has up to six), so F1 is
the max over references. Training targets the first reference, as the original did.

- SQuAD (``data[].paragraphs[].{context, qas[].{question, answers[].text}}``):
  ``source = "Context: {context}\\nQuestion: {question}\\n"`` (the original's ``load_squad_subset``).
- HotpotQA (a list of ``{question, answer, supporting_facts, context}``): ``source = "Question:
  {q}\\nContext: {ctx}\\n"``, the context built from the supporting facts with one neighbouring
  sentence each (at most 6), topped up with the first 4 sentences of the first 3 titles, clipped to
  2,000 characters (``load_hotpot_subset``); identical pieces are kept once.
- synthetic: templated facts, the answer span verbatim in the context, the question after it.

Every reader shuffles with ``random.Random(seed)`` and keeps the first ``samples`` (-1: all), like
the original. A malformed entry is a :class:`~mmldlm.data.records.DataError` naming the file, the
entry and the reason.
"""
from __future__ import annotations

import json
import random
import re
from pathlib import Path

from mmldlm.argtypes import all_or_at_least_one, nonneg_int
from mmldlm.data.records import DataError, RecordFields

DATASETS = ("squad", "hotpot", "synthetic")


def _squad_source(context: str, question: str) -> str:
    return f"Context: {context}\nQuestion: {question}\n"


def _read_json(path: Path, kind: str):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(path, None, f"not a readable {kind} JSON file ({e})") from None


def read_squad(path: str | Path) -> list[dict]:
    """Every question of a SQuAD v1.1-format JSON file, in file order, with all its answers."""
    path = Path(path)
    doc = _read_json(path, "SQuAD")
    if not isinstance(doc, dict) or not isinstance(doc.get("data"), list):
        raise DataError(path, None, "expected SQuAD format: an object with a 'data' list of articles")
    out: list[dict] = []
    for a, article in enumerate(doc["data"]):
        for p, para in enumerate(article.get("paragraphs", []) if isinstance(article, dict) else []):
            context = para.get("context") if isinstance(para, dict) else None
            for q, qa in enumerate(para.get("qas", []) if isinstance(para, dict) else []):
                n = len(out)
                where = f"data[{a}].paragraphs[{p}].qas[{q}]"
                if not isinstance(context, str) or not context.strip():
                    raise DataError(path, n, f"{where}: its paragraph has no context text")
                question = qa.get("question") if isinstance(qa, dict) else None
                if not isinstance(question, str) or not question.strip():
                    raise DataError(path, n, f"{where}: no question text")
                answers = [x.get("text") for x in qa.get("answers", []) if isinstance(x, dict)]
                answers = list(dict.fromkeys(t for t in answers if isinstance(t, str) and t.strip()))
                if not answers:
                    raise DataError(path, n, f"{where} (id {qa.get('id')}): no answer text (an unanswerable SQuAD "
                                             "v2 question? LatentWire trains on answered questions only)")
                out.append({"id": str(qa.get("id", n)), "source": _squad_source(context, question),
                            "answers": answers})
    if not out:
        raise DataError(path, None, "holds no questions")
    return out


def _space(s: str) -> str:
    return re.sub(r"\s+", " ", s).strip()


def hotpot_context(ex: dict, k_sent: int = 4, max_items: int = 3, neighbor: int = 1, max_sf: int = 6,
                   max_chars: int = 2000) -> str:
    """The original's ``build_context_text``: supporting facts with neighbours, then the first
    sentences of the first titles until ``max_items`` pieces, clipped to ``max_chars``."""
    sents = {str(t): [str(s) for s in ss] for t, ss in ex.get("context", [])}
    pieces: list[str] = []
    for title, i in ex.get("supporting_facts", [])[:]:
        ss = sents.get(str(title), [])
        lo, hi = max(0, int(i) - neighbor), min(len(ss), int(i) + neighbor + 1)
        if lo < hi:
            pieces.append(_space(" ".join(ss[lo:hi])))
        if len(pieces) >= max_sf:
            break
    if len(pieces) < max_items:
        pieces += [_space(" ".join(ss[:k_sent])) for ss in list(sents.values())[:max_items] if ss]
    return _space(" ".join(dict.fromkeys(p for p in pieces if p)))[:max_chars]


def read_hotpot(path: str | Path) -> list[dict]:
    """Every question of a HotpotQA JSON file (a list of examples), in file order."""
    path = Path(path)
    doc = _read_json(path, "HotpotQA")
    if not isinstance(doc, list):
        raise DataError(path, None, "expected HotpotQA format: a list of {question, answer, context, ...}")
    out = []
    for n, ex in enumerate(doc):
        if not isinstance(ex, dict) or not isinstance(ex.get("question"), str) or not ex["question"].strip():
            raise DataError(path, n, "no question text")
        if not isinstance(ex.get("answer"), str) or not ex["answer"].strip():
            raise DataError(path, n, f"question {ex.get('_id', n)} has no answer text")
        try:
            ctx = hotpot_context(ex)
        except (TypeError, ValueError) as e:
            raise DataError(path, n, f"malformed context / supporting_facts ({e})") from None
        if not ctx:
            raise DataError(path, n, "its context is empty")
        out.append({"id": str(ex.get("_id", n)), "source": f"Question: {ex['question']}\nContext: {ctx}\n",
                    "answers": [ex["answer"]]})
    return out


# -- synthetic extractive QA -------------------------------------------------------------------
_NAMES = ["Alice Moreau", "Bruno Keller", "Chiara Rossi", "Dmitri Volkov", "Elena Novak", "Farid Haddad",
          "Greta Lund", "Hiro Tanaka", "Ines Duarte", "Jonas Berg", "Kira Sato", "Lars Holm", "Mira Patel",
          "Nico Brandt", "Olga Petrova", "Pablo Ortega"]
_CITIES = ["Lisbon", "Oslo", "Prague", "Kyoto", "Dublin", "Madrid", "Vienna", "Toronto", "Cairo", "Lima",
           "Seoul", "Warsaw", "Zurich", "Nairobi", "Quito", "Helsinki"]
_JOBS = ["pilot", "baker", "surgeon", "architect", "teacher", "chemist", "carpenter", "journalist", "violinist",
         "gardener", "lawyer", "painter"]
_COLORS = ["red", "blue", "green", "yellow", "purple", "orange", "black", "white"]
_THINGS = ["kite", "bicycle", "lamp", "umbrella", "teapot", "notebook", "guitar", "scarf"]
_PETS = ["cat", "dog", "parrot", "rabbit", "turtle", "hamster"]
_PET_NAMES = ["Biscuit", "Pepper", "Mango", "Shadow", "Clover", "Ziggy", "Nimbus", "Pickle"]

# (fact, question, answer slot): the answer appears verbatim in the fact
_TEMPLATES = [
    ("{name} was born in {city}.", "Where was {name} born?", "city"),
    ("{name} works as a {job}.", "What is the job of {name}?", "job"),
    ("{name} has a {color} {thing}.", "What color is the {thing} of {name}?", "color"),
    ("{name} owns a {pet} named {pet_name}.", "What is the name of the {pet} of {name}?", "pet_name"),
    ("{name} moved to {city} in {year}.", "In what year did {name} move to {city}?", "year"),
]


def synthetic_qa(n: int, seed: int = 0, distractors: int = 2) -> list[dict]:
    """``n`` deterministic extractive QA records: a context of ``1 + distractors`` templated facts
    about different people (shuffled), then a question about one of them, answered by a span of
    its fact."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        people = rng.sample(_NAMES, 1 + distractors)
        facts, target = [], None
        for j, name in enumerate(people):
            fact, question, slot = rng.choice(_TEMPLATES)
            v = {"name": name, "city": rng.choice(_CITIES), "job": rng.choice(_JOBS), "color": rng.choice(_COLORS),
                 "thing": rng.choice(_THINGS), "pet": rng.choice(_PETS), "pet_name": rng.choice(_PET_NAMES),
                 "year": str(rng.randrange(1950, 2021))}
            facts.append(fact.format(**v))
            if j == 0:
                target = (question.format(**v), v[slot])
        rng.shuffle(facts)
        question, answer = target
        out.append({"id": f"synthetic-{seed}-{i}", "source": _squad_source(" ".join(facts), question),
                    "answers": [answer]})
    return out


def subset(records: list[dict], samples: int, seed: int) -> list[dict]:
    """The original's subset: shuffle with ``random.Random(seed)``, keep the first ``samples`` (-1: all)."""
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    keep = order if samples is None or samples < 0 else order[:samples]
    return [records[i] for i in keep]


def check_qa_source(dataset: str, data_file: str | None, spelled=lambda flag: flag) -> None:
    """The flags' QA source exists (nothing read); ``spelled``: a flag as the user typed it."""
    if dataset == "synthetic":
        return
    if dataset not in DATASETS:
        raise ValueError(f"--dataset: {dataset!r} is not one of {', '.join(DATASETS)}")
    if not data_file:
        example = "SQuAD's train-v1.1.json / dev-v1.1.json" if dataset == "squad" else \
            "hotpot_train_v1.1.json / hotpot_dev_distractor_v1.json"
        raise ValueError(f"--dataset {dataset} needs {spelled('--data-file')} PATH (a local {dataset} JSON file, "
                         f"e.g. {example}; nothing is downloaded)")
    if not Path(data_file).is_file():
        raise ValueError(f"{spelled('--data-file')}: not found: {data_file}")


def load_qa(dataset: str, data_file: str | None, samples: int, seed: int) -> list[dict]:
    """QA records of ``dataset`` (squad | hotpot | synthetic) from ``data_file``, subset as the original."""
    if dataset == "synthetic":
        return synthetic_qa(samples if samples and samples > 0 else 64, seed)
    check_qa_source(dataset, data_file)
    reader = read_squad if dataset == "squad" else read_hotpot
    return subset(reader(data_file), samples, seed)


def write_records(records: list[dict], path: str | Path) -> Path:
    """QA records as JSONL, written atomically; a file that already holds them is left alone (its
    index stays valid). Training writes them into the run directory from rank 0, under the run's
    lock (``mmldlm.train.train``'s ``prepare``); a unique temporary name keeps any two writers apart."""
    from mmldlm.io import write_text_atomic

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    if path.is_file() and path.read_bytes() == text.encode("utf-8"):
        return path
    write_text_atomic(path, text, unique_tmp=True)
    return path


def qa_problem(rec: dict) -> str | None:
    """Why a QA record is bad, or None (the loader's per-record check)."""
    if not isinstance(rec.get("source"), str) or not rec["source"].strip():
        return "source must be a non-empty string"
    answers = rec.get("answers")
    if not isinstance(answers, list) or not answers:
        return "answers must be a non-empty list of strings (the record is missing an answer)"
    if not all(isinstance(a, str) and a.strip() for a in answers):
        return "every entry of answers must be a non-empty string"
    return None


QA_FIELDS = RecordFields(name="latentwire_qa", version=1, required=("source", "answers"), check=qa_problem,
                         needs_text=False)


def check_records(path: str | Path) -> list[DataError]:
    """Every bad QA record of a JSON / JSONL file (the shared index's checks with :data:`QA_FIELDS`)."""
    from mmldlm.data.index import open_index
    from mmldlm.data.records import RecordRules

    return open_index(str(path), RecordRules(latent_dim=None, fields=QA_FIELDS)).problems


def main(argv: list[str] | None = None) -> int:
    from mmldlm.flags import Parser

    ap = Parser(prog="python -m latentwire.data", description=(
        "LatentWire QA records. 'convert' writes a SQuAD / HotpotQA file (or synthetic QA) as records "
        "{source, answers}; 'check' lists every bad record of a records file (exit 1 if any)."))
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("convert", help="SQuAD / HotpotQA JSON or synthetic QA -> records JSONL")
    c.add_argument("--dataset", choices=DATASETS, required=True)
    c.add_argument("--data-file", default=None, help="the local SQuAD v1.1 / HotpotQA JSON file")
    c.add_argument("--samples", type=all_or_at_least_one, default=-1,
                   help="keep this many after a seeded shuffle (-1: all)")
    c.add_argument("--seed", type=nonneg_int, default=0)
    c.add_argument("--out", required=True)
    k = sub.add_parser("check", help="list the bad records of a records file")
    k.add_argument("path")
    a = ap.parse_args(argv)
    try:
        if a.cmd == "convert":
            check_qa_source(a.dataset, a.data_file, ap.spelled)
            recs = load_qa(a.dataset, a.data_file, a.samples, a.seed)
            print(f"wrote {len(recs)} records to {write_records(recs, a.out)}")
            return 0
        bad = check_records(a.path)
    except (DataError, ValueError) as e:
        print(f"error: {e}")
        return 2
    for e in bad:
        print(f"BAD {e}")
    print(f"{len(bad)} bad records in {a.path}")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
