"""The latent-conditioned MDLM (adaLN), the path users type; the same loop and configs as baseline/.

    torchrun --nproc_per_node N baseline_latent/train_latent_dit.py --config-name mdlm_latent data.latent_data_root=DIR
"""
from pathlib import Path

from mmldlm.config import hydra_main

if __name__ == "__main__":
    hydra_main(Path(__file__).resolve().parents[1] / "baseline" / "configs", "mdlm_latent")
