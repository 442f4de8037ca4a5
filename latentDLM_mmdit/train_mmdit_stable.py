"""The stable MMDiT recipe: the same entrypoint with ``mmdit_stable`` as its default config (lower
lr, clip 0.5, latent weight 0.1; non-finite steps are skipped on all ranks by the shared loop).

    torchrun --standalone --nproc_per_node=1 latentDLM_mmdit/train_mmdit_stable.py --config-name mmdit_cycle_vae loss.loss_type=cycle_vae
"""
from latentDLM_mmdit import mmdit_objective
from latentDLM_mmdit.config import hydra_entry
from latentDLM_mmdit.train_mmdit import CONFIGS
from latentDLM_mmdit.trainer import train


@hydra_entry(mmdit_objective.MMDiTRunConfig, "mmdit_schema", CONFIGS, "mmdit_stable")
def main(cfg) -> None:
    train(cfg, mmdit_objective.build)


if __name__ == "__main__":
    main()
