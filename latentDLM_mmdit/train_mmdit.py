"""MMDiT text<->latent diffusion on the shared loop.

    torchrun --nnodes 1 --nproc_per_node 1 latentDLM_mmdit/train_mmdit.py --config-name mmdit [overrides]
"""
from latentDLM_mmdit.mmdit_objective import CONFIGS
from mmldlm.config import hydra_main

if __name__ == "__main__":
    hydra_main(CONFIGS, "mmdit")
