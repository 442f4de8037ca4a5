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

import sys

from mmldlm.export import main as export_main


def main(argv=None) -> int:
    return export_main(argv, prog="python -m wedlm_bridge.export", doc=__doc__)


if __name__ == "__main__":
    sys.exit(main())
