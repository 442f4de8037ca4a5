"""An offline SFT set for tests, benchmarks and CPU demos: real English prose from CPython's
``pydoc_data.topics``, as conversations in every accepted record form (Tencent's message arrays,
``{"messages": ...}`` with a system turn, Alpaca records), one JSON value per line.

    python -m wedlm_bridge.finetune.demo_data --out sft.jsonl [--n 200] [--answer-words 60]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from mmldlm.argtypes import positive_int


def demo_conversations(n: int = 200, answer_words: int = 60) -> list:
    """Up to ``n`` records (pydoc has 79 topics): "Explain <topic>." -> the first ``answer_words`` words of
    its documentation."""
    from pydoc_data.topics import topics

    records = []
    for i, (name, text) in enumerate(sorted(topics.items())[:n]):
        question = f"Explain {name.replace('-', ' ')} in Python."
        answer = " ".join(text.split()[:answer_words])
        if i % 3 == 0:
            records.append([{"role": "user", "content": question}, {"role": "assistant", "content": answer}])
        elif i % 3 == 1:
            records.append({"messages": [{"role": "system", "content": "Answer from the Python reference."},
                                         {"role": "user", "content": question},
                                         {"role": "assistant", "content": answer}]})
        else:
            records.append({"instruction": question, "input": "", "output": answer})
    return records


def write_demo(out: str | Path, n: int = 200, answer_words: int = 60) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(r) + "\n" for r in demo_conversations(n, answer_words)), encoding="utf-8")
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--n", type=positive_int, default=200)
    ap.add_argument("--answer-words", type=positive_int, default=60)
    a = ap.parse_args()
    print(f"wrote {write_demo(a.out, a.n, a.answer_words)}")
