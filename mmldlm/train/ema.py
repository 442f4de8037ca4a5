"""An exponential moving average of the trainable weights, kept in the optimizer state.

Living in ``optimizer.state[p]["ema"]`` it is saved, sharded (FSDP) and restored with the
optimizer, so a resumed run continues the same average; AdamW ignores the extra key. The
average starts from the weights after the first update (MDLM: decay 0.9999).
"""
from __future__ import annotations

import contextlib

import torch


@torch.no_grad()
def update_ema(optimizer: torch.optim.Optimizer, params: list[torch.Tensor], decay: float) -> None:
    for p in params:
        state = optimizer.state[p]
        if "ema" in state:
            state["ema"].lerp_(p.detach(), 1.0 - decay)
        else:
            state["ema"] = p.detach().clone()


@contextlib.contextmanager
def ema_weights(optimizer: torch.optim.Optimizer, params: list[torch.Tensor]):
    """The EMA weights in place of the trained ones for the duration (eval); restored after.
    Without an EMA (off, or before the first update) the weights stay as they are. Yields
    whether the EMA is in place."""
    pairs = [(p, optimizer.state[p]["ema"]) for p in params if "ema" in optimizer.state.get(p, {})]
    backup = [p.detach().clone() for p, _ in pairs]
    with torch.no_grad():
        for p, ema in pairs:
            p.copy_(ema)
    try:
        yield bool(pairs)
    finally:
        with torch.no_grad():
            for (p, _), b in zip(pairs, backup):
                p.copy_(b)
