"""The WeDLM latent bridge on the shared loop.

    torchrun --nnodes 1 --nproc_per_node 8 wedlm_bridge/train_wedlm_ar_bridge.py \
        --config-name wedlm8b_ar_bridge [overrides]
"""
from mmldlm.config import hydra_main
from wedlm_bridge.bridge import CONFIGS

if __name__ == "__main__":
    hydra_main(CONFIGS, "wedlm8b_ar_bridge")
