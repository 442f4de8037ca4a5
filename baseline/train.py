"""Baselines on the shared loop: ``torchrun --nproc_per_node N baseline/train.py --config-name
t2l_regression [overrides]``. The objective is chosen by ``loss.loss_type``."""
from pathlib import Path

from baseline import text_to_latent
from latentDLM_mmdit.config import hydra_entry
from latentDLM_mmdit.trainer import train


@hydra_entry(text_to_latent.T2LRunConfig, "t2l_regression_schema", Path(__file__).parent / "configs",
             "t2l_regression")
def main(cfg) -> None:
    train(cfg, text_to_latent.build)


if __name__ == "__main__":
    main()
