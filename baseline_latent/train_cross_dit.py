"""The latent-conditioned MDLM with cross-attention, the path users type (configs in baseline/).

    torchrun --nproc_per_node N baseline_latent/train_cross_dit.py --config-name mdlm_cross_attention \
        data.latent_data_root=DIR
"""
from pathlib import Path

from mmldlm.config import hydra_main

if __name__ == "__main__":
    hydra_main(Path(__file__).resolve().parents[1] / "baseline" / "configs", "mdlm_cross_attention")
