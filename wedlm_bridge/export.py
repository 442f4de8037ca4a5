"""Export a trained bridge for use outside this repository (the framework's export, under the
bridge's own flags):

    python -m wedlm_bridge.export --checkpoint RUN_DIR --output DIR [--backbone-dir BACKBONE_DIR]

DIR is ``python -m mmldlm.export``'s model directory (``model.safetensors``: the latent prefix, the
t2l head and whatever else trained; ``config.json``: the resolved config and the sources by name and
fingerprint; the tokenizer), and, when the run trained its backbone (``freeze_backbone=false``,
LoRA, or weights carried from an earlier stage), ``backbone/``: the trained backbone as a stock
model directory (``AutoModelForCausalLM.from_pretrained(DIR/backbone)``, adapters merged), plus
``adapter/`` (peft's format) for a LoRA run. ``mmldlm.from_pretrained(DIR)`` rebuilds the bridge.
The backbone comes from the run's recorded directory if it is here and unchanged (--backbone-dir
names another copy). DIR must not be, or lie inside, the run or the backbone.
"""
from __future__ import annotations

import argparse
import sys


def main(argv=None) -> int:
    from mmldlm.export import add_policy_args, export, policy_of
    from mmldlm.sources import SourceError

    ap = argparse.ArgumentParser(prog="python -m wedlm_bridge.export", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True, help="a bridge run directory or checkpoint_step_N.pt")
    ap.add_argument("--output", "--out", dest="out", required=True, help="the directory to write")
    ap.add_argument("--overwrite", action="store_true", help="replace an existing --output once the export is complete")
    add_policy_args(ap)
    a = ap.parse_args(argv)
    try:
        out = export(a.checkpoint, a.out, policy_of(a), overwrite=a.overwrite)
    except (SourceError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"exported to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
