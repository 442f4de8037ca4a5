"""Optimizer settings and LR schedules against their formulas."""
import math

import pytest
import torch
from omegaconf import OmegaConf

from mmldlm.config import OptimizerConfig, TrainingConfig
from mmldlm.train.optim import build_optimizer, build_scheduler, lr_factor


def test_every_optimizer_key_reaches_adamw_and_1d_params_get_no_decay():
    cfg = OmegaConf.structured(OptimizerConfig(lr=2e-3, weight_decay=0.1, beta1=0.8, beta2=0.95, eps=1e-6))
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    opt = build_optimizer(list(model.named_parameters()), cfg, torch.device("cpu"))
    decay, no_decay = opt.param_groups
    assert isinstance(opt, torch.optim.AdamW)
    assert [p.dim() for p in decay["params"]] == [2] and decay["weight_decay"] == 0.1
    assert all(p.dim() == 1 for p in no_decay["params"]) and no_decay["weight_decay"] == 0.0
    for g in opt.param_groups:
        assert g["lr"] == 2e-3 and g["betas"] == (0.8, 0.95) and g["eps"] == 1e-6


@pytest.mark.parametrize("schedule", ["cosine", "linear", "constant"])
def test_warmup_then_schedule(schedule):
    total, warm, floor = 100, 10, 0.1
    f = [lr_factor(s, total, warm, schedule, floor) for s in range(total)]
    assert f[:warm] == pytest.approx([(s + 1) / warm for s in range(warm)])
    for s in range(warm, total):
        prog = (s - warm) / (total - warm)
        want = {"cosine": floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * prog)),
                "linear": floor + (1 - floor) * (1 - prog), "constant": 1.0}[schedule]
        assert f[s] == pytest.approx(want)


def test_scheduler_drives_the_optimizer_lr():
    t = OmegaConf.structured(TrainingConfig(num_train_steps=20, warmup_steps=4))
    p = torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.AdamW([p], lr=1.0)
    sched = build_scheduler(opt, t)
    seen = []
    for _ in range(20):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0]) and seen[-1] < 0.01
