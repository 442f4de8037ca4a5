"""Tracing one training step of an objective without weights, data or a GPU (refs C.2).

- FLOPs: the objective built on the meta device, one forward + backward under ``FlopCounterMode``
  (SDPA decomposes to matmuls on meta, so attention is counted).
- Memory: the same objective made of fake CPU tensors (``FakeTensorMode``), its optimizer state
  created first (the steady state of step 2 onwards), then forward + backward + optimizer step
  under ``MemTracker``, which sorts the bytes alive at the peak into params / grads / optimizer
  state / activations / temporaries. Fake CPU tensors take the flash-like SDPA kernel (no S x S
  matrix kept), as flash / efficient SDPA on a GPU does; CUDA's 512-byte rounding, context and
  fragmentation are not modelled here (the verdict adds a margin for them).
- Data-dependent shapes (positions selected by a mask: the masked tokens an objective scores)
  are taken at their maximum, every position selected (:class:`SelectAll`): the peak a step
  reaches when nearly everything is masked, and an upper bound on the FLOPs of such objectives.
"""
from __future__ import annotations

import contextlib
from typing import NamedTuple

import torch
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten


def _selected(mask: torch.Tensor) -> list[torch.Tensor]:
    n = mask.numel()
    return [torch.zeros(n, dtype=torch.long, device=mask.device) for _ in range(mask.dim())]


class SelectAll(TorchDispatchMode):
    """Answers the ops whose output shape depends on values: a boolean mask selects everything,
    a tensor read as a Python number is true / 1."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is aten.nonzero.default:
            x = args[0]
            return torch.zeros(x.numel(), x.dim(), dtype=torch.long, device=x.device)
        if func is aten.masked_select.default:
            x, mask = args[0], args[1]
            return torch.zeros(torch.broadcast_shapes(x.shape, mask.shape).numel(), dtype=x.dtype, device=x.device)
        if func in (aten._local_scalar_dense.default, aten.is_nonzero.default):
            x = args[0]
            return True if x.dtype == torch.bool else (1.0 if x.is_floating_point() else 1)
        if func in (aten.index.Tensor, aten.index_put.default, aten.index_put_.default):
            indices = []
            for idx in args[1]:
                indices += _selected(idx) if idx is not None and idx.dtype == torch.bool else [idx]
            return func(args[0], indices, *args[2:], **kwargs)
        return func(*args, **kwargs)


def train_step(obj, batch: dict, step: int, autocast: bool, optimizer=None, device_type: str = "cpu") -> None:
    """Forward, backward and (with an optimizer) the update, as the loop runs them."""
    ctx = torch.autocast(device_type, dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
    with ctx:
        loss, _ = obj(batch, step)
    loss.backward()
    if optimizer is not None:
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def count_flops(obj, batch: dict, step: int, autocast: bool) -> int:
    """FLOPs of one forward + backward of an objective built on the meta device."""
    from torch.utils.flop_counter import FlopCounterMode

    obj.train()
    with FlopCounterMode(display=False) as counter, SelectAll():
        train_step(obj, batch, step, autocast)
    return int(counter.get_total_flops())


class Peak(NamedTuple):
    params: int  # parameters and buffers
    grads: int
    optimizer: int
    activations: int
    temporaries: int
    other: int

    @property
    def total(self) -> int:
        return sum(self)


def _frozen_aware_tracker():
    from torch.distributed._tools.mem_tracker import MemTracker
    from torch.distributed._tools.mem_tracker import _MemRefType as T

    class Tracker(MemTracker):
        # frozen weights take no gradient hooks (the stock tracker hooks every parameter and fails)
        def _track_module_params_and_buffers(self, module, install_grad_hooks=True):
            trains = all(p.requires_grad for p in module.parameters())
            return super()._track_module_params_and_buffers(module, install_grad_hooks and trains)

        # only the global peak, plus the moment activations and temporaries peak (under FSDP, whose
        # sharding shrinks the state, that moment can be the larger one); the stock update also
        # walks every module's statistics at every op (8B: ~1,100 modules x ~50,000 ops, 90% of the time)
        def _update_peak_stats(self, peak_state) -> None:
            for dev, snap in self._curr_mem_snap.items():
                if self._peak_mem.get(dev, 0) < snap["Total"]:
                    self._peak_mem[dev] = snap["Total"]
                    self._peak_mem_snap[dev] = dict(snap)
                transient = sum(snap.get(k, 0) for k in (T.ACT, T.TEMP, T.OTH))
                if transient > self.transient_peak[1]:
                    self.transient_peak = (dev, transient, dict(snap))

    tracker = Tracker()
    tracker.transient_peak = (None, -1, {})
    return tracker


class Peaks(NamedTuple):
    total: Peak  # the moment the most bytes are alive
    transient: Peak  # the moment activations + temporaries peak


def trace_memory(obj_meta, make_batch, step: int, autocast: bool, optimizer_cfg) -> Peaks:
    """The peaks of a steady-state training step of ``obj_meta`` (built on meta) made of fake CPU
    tensors. ``make_batch(device)`` gives the batch; the optimizer is torch's AdamW (8-bit ones are
    scaled by the caller)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from mmldlm.train.optim import build_optimizer

    with FakeTensorMode(allow_non_fake_inputs=True):
        obj = obj_meta.to_empty(device="cpu").train()
        batch = make_batch("cpu")
        params = [(n, p) for n, p in obj.named_parameters() if p.requires_grad]
        optimizer = None
        if params:
            optimizer = build_optimizer(params, _adamw(optimizer_cfg), torch.device("cpu"))
            for _, p in params:  # Adam's moments exist from the first step on: trace the steady state
                p.grad = torch.zeros_like(p)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        tracker = _frozen_aware_tracker()
        tracker.track_external(obj, *([optimizer] if optimizer else []))
        with tracker, SelectAll():
            train_step(obj, batch, step, autocast, optimizer)
        snap = next(iter(tracker.get_tracker_snapshot("peak").values()))
    return Peaks(_parts(snap), _parts(tracker.transient_peak[2]))


def _parts(snap: dict) -> Peak:
    from torch.distributed._tools.mem_tracker import _MemRefType as T

    def get(kind) -> int:
        return int(snap.get(kind, 0))

    return Peak(get(T.PARAM) + get(T.BUFFER), get(T.GRAD), get(T.OPT), get(T.ACT), get(T.TEMP), get(T.OTH))


def _adamw(optimizer_cfg):
    from omegaconf import OmegaConf

    cfg = OmegaConf.create(OmegaConf.to_container(optimizer_cfg, enum_to_str=True))
    cfg.name = "adamw"
    return cfg
