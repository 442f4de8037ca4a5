"""Export a WeDLM fine-tune for the ``wedlm`` inference engine or for stock transformers.

    python -m wedlm_bridge.export_finetuned --checkpoint RUN_DIR --out DIR [--format wedlm|hf] [--dtype bfloat16]
        [--backbone-dir BASE_DIR]

LoRA / QLoRA adapters are merged into a full-precision reload of the base (never into the 4-bit
model), full fine-tunes (also FSDP's sharded checkpoints) are read as trained; the result is cast
to --dtype and saved with the stock Qwen tensor names.
  --format wedlm (default): WeDLM's config.json fields (model_type wedlm, auto_map, mask_token_id,
      qk_norm / attention_bias, dtype; no wedlm_window_size) and the base's tokenizer and config
      code. On a GPU node with the engine: python -c "from wedlm import LLM; LLM(model='DIR', wedlm_window_size=16)"
  --format hf: a stock Qwen3 / Qwen2 directory (no auto_map, no remote code): loads with
      AutoModelForCausalLM.from_pretrained(DIR) and AutoTokenizer.from_pretrained(DIR).
A LoRA run's DIR also holds adapter/ (peft's format: PeftModel.from_pretrained(base, DIR/adapter)).
The base comes from the run's recorded backbone directory if it is here and unchanged
(--backbone-dir names another copy). DIR must not be, or lie inside, the run or the base: an
export never writes into its inputs.
"""
from __future__ import annotations

import argparse


def main(argv=None) -> None:
    from mmldlm.prefetch import PrefetchError
    from mmldlm.sources import SourceError
    from mmldlm.sources.cli import add_policy_args, policy_of
    from wedlm_bridge.artifacts import FORMATS
    from wedlm_bridge.finetune.export import export_finetuned

    ap = argparse.ArgumentParser(prog="python -m wedlm_bridge.export_finetuned", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True, help="a fine-tuning run directory or checkpoint_step_N(.pt)")
    ap.add_argument("--out", required=True, help="the directory to write")
    ap.add_argument("--format", default="wedlm", choices=FORMATS, help="wedlm (the engine) | hf (stock transformers)")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    ap.add_argument("--overwrite", action="store_true", help="replace an existing --out once the export is complete")
    add_policy_args(ap)
    a = ap.parse_args(argv)
    try:
        out = export_finetuned(a.checkpoint, a.out, policy_of(a), a.dtype, a.format, a.overwrite)
    except (SourceError, PrefetchError, ValueError) as e:
        raise SystemExit(f"error: {e}") from None
    print(f"exported to {out}")


if __name__ == "__main__":
    main()
