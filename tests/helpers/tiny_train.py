"""Test entrypoint: the shared loop with a tiny deterministic objective and fault hooks.

Hooks (test code only): ``loss.nan_at_step`` / ``loss.nan_rank`` make the loss NaN on one rank;
``loss.kill_at_step`` SIGKILLs the process (a crash); ``loss.sigterm_at_step`` sends SIGTERM to
itself (preemption); ``loss.hold_at_step`` + ``loss.hold_file`` park the run (writing
``hold_file.ready``) until ``hold_file`` exists. ``dump_params=DIR`` makes every rank save its final parameters there.
"""
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from mmldlm.config import RunConfig, hydra_main
from mmldlm.objective import Objective, register
from mmldlm.train import train

CONFIGS = Path(__file__).parent / "configs"


@dataclass
class TinyModel:
    hidden_size: int = 16
    latent_dim: int = 16
    max_seq_len: int = 32


@dataclass
class TinyLoss:
    nan_at_step: int = -1
    nan_rank: int = -1
    kill_at_step: int = -1
    sigterm_at_step: int = -1
    sigterm_group: bool = False  # signal the whole process group (DataLoader workers too), as SLURM does
    signal_name: str = "SIGTERM"  # or SIGUSR1
    noise: float = 0.0  # > 0: a random target perturbation (tests RNG restore on resume)
    hold_at_step: int = -1  # at this step, write {hold_file}.ready and wait until hold_file exists
    hold_file: str = ""


@dataclass
class TinyConfig(RunConfig):
    objective: str = "tiny"
    model: TinyModel = field(default_factory=TinyModel)
    loss: TinyLoss = field(default_factory=TinyLoss)
    dump_params: str = ""


class Tiny(Objective):
    def __init__(self, cfg, vocab: int):
        super().__init__()
        self.emb = nn.Embedding(vocab, cfg.model.hidden_size)
        self.mlp = nn.Sequential(nn.Linear(cfg.model.hidden_size, 32), nn.Tanh(),
                                 nn.Linear(32, cfg.model.latent_dim))
        self.h = cfg.loss
        self.rank = int(os.environ.get("RANK", 0))

    def forward(self, batch, step):
        if step == self.h.hold_at_step:  # a run that holds its run directory until the test says go
            Path(self.h.hold_file + ".ready").write_text(str(os.getpid()))
            while not Path(self.h.hold_file).exists():
                time.sleep(0.05)
        if step == self.h.kill_at_step:
            os.kill(os.getpid(), signal.SIGKILL)
        if step == self.h.sigterm_at_step and self.rank == 0:
            sig = getattr(signal, self.h.signal_name)
            if self.h.sigterm_group:
                os.killpg(os.getpgrp(), sig)
            else:
                os.kill(os.getpid(), sig)
        m = batch["attention_mask"].unsqueeze(-1).float()
        x = (self.emb(batch["input_ids"]) * m).sum(1) / m.sum(1)
        target = batch["latent"]
        if self.h.noise:
            target = target + self.h.noise * torch.randn_like(target)
        per_sample = ((self.mlp(x) - target) ** 2).mean(-1)
        loss = per_sample.mean()
        if step == self.h.nan_at_step and self.h.nan_rank in (-1, self.rank):
            loss = loss * float("nan")
        return loss, {"mse": loss.detach(), "batch_size": float(len(per_sample))}


BUILT = {}


def build(cfg, sources) -> Tiny:
    BUILT["m"] = Tiny(cfg, len(sources.tokenizer))
    return BUILT["m"]


register("tiny", TinyConfig, build, CONFIGS, metrics={"loss": ("loss", "mse")})


def run(cfg):
    out = train(cfg)
    if cfg.dump_params:
        torch.save({k: v.detach().clone() for k, v in BUILT["m"].state_dict().items()},
                   Path(cfg.dump_params) / f"rank{os.environ.get('RANK', 0)}.pt")
    if not out["step"]:
        sys.exit(1)  # (returning lets a multirun go on to its next job)


if __name__ == "__main__":
    hydra_main(CONFIGS, "tiny", run)
