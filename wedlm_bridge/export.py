"""Export a trained bridge for use outside this repository.

    python -m wedlm_bridge.export --checkpoint RUN_DIR --backbone-dir BACKBONE_DIR --output DIR

Writes ``DIR/bridge_heads.safetensors`` (latent_prefix.*, t2l_head.*) and ``DIR/bridge_config.json``
(model settings, task, the backbone's id and revision). With LoRA adapters, also
``DIR/merged_model/``: the backbone with the adapters merged, saved with WeDLM's own config.json
(model_type, auto_map, mask_token_id ... kept) and its tokenizer and code files, so it loads like
the original checkpoint (through this repository's no-remote-code path or with remote code).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from omegaconf import OmegaConf
from safetensors.torch import save_file

from wedlm_bridge.backbone import save_for_engine
from wedlm_bridge.bridge import add_load_policy_args, load_bridge_for_cli


def export(obj, tok, cfg, out: str | Path) -> Path:
    """Write the heads, their config and (with LoRA) the merged backbone of a loaded bridge."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    heads = {k: v.contiguous() for k, v in obj.state_dict().items() if k.startswith(("latent_prefix.", "t2l_head."))}
    save_file(heads, str(out / "bridge_heads.safetensors"))
    meta = {"model": OmegaConf.to_container(cfg.model, resolve=True, enum_to_str=True),
            "task": cfg.training.task.name, **obj.checkpoint_metadata()}
    (out / "bridge_config.json").write_text(json.dumps(meta, indent=2))
    if cfg.model.lora_r:  # the backbone with the adapters merged, as a WeDLM checkpoint
        save_for_engine(obj.backbone.merge_and_unload(), cfg.model.pretrained_local_dir, out / "merged_model",
                        cfg.model.pretrained_model_dtype)
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m wedlm_bridge.export", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True, help="a bridge run directory or checkpoint_step_N.pt")
    ap.add_argument("--output", required=True)
    add_load_policy_args(ap)
    a = ap.parse_args(argv)
    obj, tok, cfg = load_bridge_for_cli(a, "cpu")
    print(f"exported to {export(obj, tok, cfg, a.output)}")


if __name__ == "__main__":
    main()
