"""Export a WeDLM fine-tune for the ``wedlm`` inference engine.

    python -m wedlm_bridge.export_finetuned --checkpoint RUN_DIR --backbone-dir BASE_DIR --out DIR [--dtype bfloat16]

LoRA / QLoRA adapters are merged into a full-precision reload of the base (never into the 4-bit
model), full fine-tunes (also FSDP's sharded checkpoints) are read as trained; the result is cast
to --dtype and saved with the stock Qwen tensor names (the engine refuses any other), WeDLM's
config.json fields (model_type wedlm, auto_map, mask_token_id, qk_norm / attention_bias, dtype;
no wedlm_window_size) and the base's tokenizer and config code. Then, on a GPU node with the engine:
    python -c "from wedlm import LLM; LLM(model='DIR', wedlm_window_size=16)"
"""
from __future__ import annotations

import argparse

from wedlm_bridge.bridge import add_load_policy_args


def main(argv=None) -> None:
    from mmldlm.config import ConfigError
    from mmldlm.prefetch import PrefetchError
    from mmldlm.train.rebuild import CheckpointPolicyError, LoadPolicy
    from wedlm_bridge.finetune.export import export_finetuned

    ap = argparse.ArgumentParser(prog="python -m wedlm_bridge.export_finetuned", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True, help="a fine-tuning run directory or checkpoint_step_N(.pt)")
    ap.add_argument("--out", required=True, help="the directory to write")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    add_load_policy_args(ap)
    a = ap.parse_args(argv)
    policy = LoadPolicy(trust_remote_code=a.trust_remote_code, local_files_only=not a.allow_download,
                        backbone_dir=a.backbone_dir)
    try:
        out = export_finetuned(a.checkpoint, a.out, policy, a.dtype)
    except (CheckpointPolicyError, ConfigError, PrefetchError) as e:
        raise SystemExit(f"error: {e}") from None
    print(f"exported to {out}")


if __name__ == "__main__":
    main()
