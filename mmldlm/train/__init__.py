"""The training loop and what it stands on: distributed set-up, optimizer, checkpoints, logs."""
from mmldlm.train.loop import train

__all__ = ["train"]
