"""Test entrypoint: several configs trained one after another in one torchrun job (one process
group, one interpreter start), as ``train_many.py NAME [overrides] -- NAME [overrides] ...``.
Saves the process start-up per config in the every-config smoke test."""
import sys

import torch.distributed as dist

import mmldlm.train.distributed as D
from mmldlm.config import compose
from mmldlm.train import train


def main(argv: list[str]) -> None:
    runs, current = [], []
    for arg in [*argv, "--"]:
        if arg == "--":
            if current:
                runs.append(current)
            current = []
        else:
            current.append(arg)
    D.setup("cpu")  # the group every run shares
    teardown, D.teardown = D.teardown, lambda: None
    try:
        for name, *overrides in runs:
            train(compose(name, overrides))
            if dist.is_initialized():  # one process without torchrun has no group
                dist.barrier()
    finally:
        teardown()


if __name__ == "__main__":
    main(sys.argv[1:])
