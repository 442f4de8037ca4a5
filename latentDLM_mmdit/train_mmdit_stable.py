"""The stable MMDiT recipe: the same entrypoint with ``mmdit_stable`` as its default config (lower
lr, clip 0.5, latent weight 0.1; non-finite steps are skipped on all ranks by the shared loop).

    torchrun --standalone --nproc_per_node=1 latentDLM_mmdit/train_mmdit_stable.py \
        --config-name mmdit_cycle_vae loss.loss_type=cycle_vae
"""
from latentDLM_mmdit.mmdit_objective import CONFIGS
from mmldlm.config import hydra_main

if __name__ == "__main__":
    hydra_main(CONFIGS, "mmdit_stable")
