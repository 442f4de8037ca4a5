"""LatentWire's QA evaluation of a trained run: text, latent and token-budget paths per LLM.

    python latentwire/eval.py --ckpt RUN_DIR --dataset squad --data-file dev-v1.1.json [--samples N] [--out FILE]

Writes ``RUN_DIR/eval/metrics.json`` (per LLM: ``text``, ``latent``, ``token_budget`` with ``em``
and ``f1``; first-token top-1/5; gold NLL per token; token and byte compression; ``joint`` and
``oracle`` across LLMs) and ``RUN_DIR/eval/predictions.jsonl`` (or ``--out FILE`` and the predictions beside it;
the underscore spellings, ``--data_file``, are the same flags). latentwire/evaluate.py has the protocol.
"""
from latentwire.eval_cli import eval_main

if __name__ == "__main__":
    eval_main()
