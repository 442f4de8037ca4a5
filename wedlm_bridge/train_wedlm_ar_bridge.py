"""The WeDLM latent bridge on the shared loop.

    torchrun --nnodes 1 --nproc_per_node 8 wedlm_bridge/train_wedlm_ar_bridge.py --config-name wedlm8b_ar_bridge [overrides]
"""
from pathlib import Path

from latentDLM_mmdit.config import hydra_entry
from latentDLM_mmdit.trainer import train
from wedlm_bridge import bridge

CONFIGS = Path(__file__).resolve().parent / "configs"


@hydra_entry(bridge.BridgeRunConfig, "bridge_schema", CONFIGS, "wedlm8b_ar_bridge")
def main(cfg) -> None:
    train(cfg, bridge.build)


if __name__ == "__main__":
    main()
