"""``training.compile_model``: the objective's transformer blocks compiled one by one.

Each compile unit (``Objective.compile_units()``: the blocks) gets its ``forward`` replaced by a
``torch.compile(fullgraph=True)`` version of it, in place: parameter names, checkpoints, DDP and
FSDP2 (whose hooks stay outside, in eager) see the same modules. Blocks of one class share one
graph (dynamo lifts module parameters to graph inputs), so a 24-block model compiles one block.

Why per block, not the whole objective (what ``torch.compile(model)`` did): an objective draws its
noise (masking levels, masks, Gaussian noise) between the blocks. Under inductor, random ops in a
compiled graph draw from inductor's own generator, not eager's: the same seed gave the MMDiT a
different t and different masks (first-step L2T loss 9.988 instead of eager's 9.680, issue 29).
Outside the blocks the noise is drawn eagerly, so a compiled step computes the eager step's loss.
Dropout inside a block still draws from inductor's generator: the same distribution, other numbers.

Shapes that vary from batch to batch (rows, padded length) are marked dynamic before each call
(:func:`mark_varying`), so a new batch length never recompiles: features keep their last dimension
static (the hidden size, which the kernels specialise on), every other dimension may vary.
An objective without compile units is compiled whole, with eager's random numbers
(``fallback_random``), as before.
"""
from __future__ import annotations

import functools
import logging

import torch
from torch import nn

log = logging.getLogger("mm_ldlm")


def mark_varying(x) -> None:
    """Mark the dimensions of the tensors in ``x`` (nested tuples / lists / dicts) that vary with the
    batch as dynamic: every dimension of an integer or boolean tensor (ids, masks), every
    dimension but the last of a floating one (the last is a feature size)."""
    if isinstance(x, torch.Tensor):
        dims = range(x.dim()) if not x.is_floating_point() else range(x.dim() - 1)
        for d in dims:
            if x.shape[d] > 1:  # sizes 0 and 1 are specialised by dynamo anyway
                torch._dynamo.maybe_mark_dynamic(x, d)
    elif isinstance(x, (tuple, list)):
        for v in x:
            mark_varying(v)
    elif isinstance(x, dict):
        for v in x.values():
            mark_varying(v)


def compile_unit(unit: nn.Module, backend: str = "inductor") -> None:
    """Replace ``unit.forward`` by its compiled version (no graph break allowed), in place."""
    compiled = torch.compile(unit.forward, fullgraph=True, backend=backend)

    @functools.wraps(unit.forward)
    def forward(*args, **kwargs):
        mark_varying(args)
        mark_varying(kwargs)
        return compiled(*args, **kwargs)

    unit.forward = forward


def compile_model(objective: nn.Module, model: nn.Module, backend: str = "inductor") -> nn.Module:
    """Compile ``objective``'s units in place and return the module the loop calls (``model``: the
    objective, or its DDP / FSDP wrapper); without units, the whole ``model`` compiled.
    ``backend``: torch.compile's (``aot_eager`` traces and checks without generating kernels)."""
    units = objective.compile_units()
    if not units:
        log.info("compile_model: %s declares no compile units; compiling it whole", type(objective).__name__)
        options = {"fallback_random": True} if backend == "inductor" else None
        return torch.compile(model, backend=backend, options=options)
    for unit in units:
        compile_unit(unit, backend)
    kinds = sorted({type(u).__name__ for u in units})
    log.info("compile_model: %d units compiled per block (%s)", len(units), ", ".join(kinds))
    return model
