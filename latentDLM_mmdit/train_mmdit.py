"""MMDiT text<->latent diffusion on the shared loop.

    torchrun --nnodes 1 --nproc_per_node 1 latentDLM_mmdit/train_mmdit.py --config-name mmdit [overrides]
"""
from pathlib import Path

from latentDLM_mmdit import mmdit_objective
from latentDLM_mmdit.config import hydra_entry
from latentDLM_mmdit.trainer import train

CONFIGS = Path(__file__).resolve().parent / "configs"


@hydra_entry(mmdit_objective.MMDiTRunConfig, "mmdit_schema", CONFIGS, "mmdit")
def main(cfg) -> None:
    train(cfg, mmdit_objective.build)


if __name__ == "__main__":
    main()
