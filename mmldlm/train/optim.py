"""AdamW with decoupled weight decay on matrices only, and warmup + cosine/linear/constant LR."""
from __future__ import annotations

import math

import torch


def build_optimizer(params: list[tuple[str, torch.nn.Parameter]], cfg, device: torch.device):
    """``optimizer.{name, lr, weight_decay, beta1, beta2, eps}``; biases, norms and embeddings' 1-D
    parameters get no weight decay. ``name``: torch's AdamW, or bitsandbytes' 8-bit (paged) AdamW."""
    decay = [p for _, p in params if p.dim() >= 2]
    no_decay = [p for _, p in params if p.dim() < 2]
    groups = [g for g in ({"params": decay, "weight_decay": cfg.weight_decay},
                          {"params": no_decay, "weight_decay": 0.0}) if g["params"]]
    name = getattr(cfg.name, "name", cfg.name)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps,
                                 fused=device.type == "cuda")
    import bitsandbytes as bnb

    cls = bnb.optim.PagedAdamW8bit if name == "paged_adamw_8bit" else bnb.optim.AdamW8bit
    return cls(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps)


def lr_factor(step: int, total: int, warmup: int, schedule: str, min_ratio: float = 0.0) -> float:
    """Multiplier of the base lr at ``step`` (0-based): linear warmup to 1 over ``warmup`` steps,
    then ``schedule`` down to ``min_ratio`` at ``total``."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if schedule == "cosine":
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    if schedule == "linear":
        return min_ratio + (1 - min_ratio) * (1 - progress)
    raise ValueError(f"unknown lr schedule {schedule!r}")


def build_scheduler(optimizer, training_cfg):
    t = training_cfg
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, t.num_train_steps, t.warmup_steps, t.lr_schedule.name,
                                       t.min_lr_ratio))
