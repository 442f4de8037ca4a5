"""Baselines on the shared loop; the objective is the one the config names (the registry dispatches).

    torchrun --nproc_per_node N baseline/train.py --config-name mdlm|gidd|ar|hdlm-small-cluster_64-gamma_1.0-xi_1.0|...
    torchrun --nproc_per_node N baseline/train.py --config-name t2l_regression [overrides]
"""
from pathlib import Path

from mmldlm.config import hydra_main

if __name__ == "__main__":
    hydra_main(Path(__file__).resolve().parent / "configs", "mdlm")
