"""torchrun environment -> process group and device; DDP or FSDP2 wrapping; small collectives;
the launcher watchdog (a rank whose torchrun is gone stops instead of running on as an orphan)."""
from __future__ import annotations

import logging
import os
import signal
import threading
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    rank: int
    local_rank: int
    world: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return dist.is_available() and dist.is_initialized()


def setup(device_pref: str = "auto", timeout_min: float = 30.0, need_group: bool = False) -> DistInfo:
    """Read RANK / LOCAL_RANK / WORLD_SIZE (set by torchrun); nccl on CUDA, gloo on CPU.

    Without WORLD_SIZE the run is a single process without a process group, unless
    ``need_group`` (FSDP needs one): then a one-rank group over an in-memory store.
    """
    rank, local_rank = int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0))
    world = int(os.environ.get("WORLD_SIZE", 1))
    use_cuda = torch.cuda.is_available() if device_pref == "auto" else device_pref == "cuda"
    if use_cuda and not torch.cuda.is_available():
        raise RuntimeError("training.device=cuda but CUDA is not available on this machine")
    device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    backend = "nccl" if use_cuda else "gloo"
    if "WORLD_SIZE" in os.environ and not dist.is_initialized():
        watch_launcher()
        dist.init_process_group(backend, timeout=timedelta(minutes=timeout_min), device_id=device if use_cuda else None)
    elif need_group and not dist.is_initialized():
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
    return DistInfo(rank, local_rank, world, device)


ORPHAN_GRACE_S = float(os.environ.get("MMLDLM_ORPHAN_GRACE_S", 60))  # then a rank exits whatever it is doing
_watchdog: threading.Thread | None = None


def watch_launcher(poll_s: float = 0.5) -> threading.Thread | None:
    """Under torchrun (``TORCHELASTIC_RUN_ID``): a daemon thread that notices when the launcher, this
    process's parent, is gone (killed alone, the ranks went on as orphans for minutes, holding the
    run lock and the devices) and stops this rank: SIGTERM to itself, so the loop finishes its
    step, checkpoints and exits as on preemption (every rank sees it within ``poll_s`` and they
    agree on the step), or, before the loop runs, the process ends at once; whatever still runs
    ``ORPHAN_GRACE_S`` seconds later (``$MMLDLM_ORPHAN_GRACE_S``) exits then. The OS releases the
    run lock with the process. Once per process."""
    global _watchdog
    if "TORCHELASTIC_RUN_ID" not in os.environ or _watchdog is not None:
        return None
    launcher = os.getppid()
    tick = threading.Event()

    def watch() -> None:
        while os.getppid() == launcher:
            tick.wait(poll_s)
        logging.getLogger("mm_ldlm").error("the launcher (pid %d) is gone: stopping this rank (checkpoint at the end "
                                           "of the step, then exit)", launcher)
        os.kill(os.getpid(), signal.SIGTERM)
        tick.wait(ORPHAN_GRACE_S)
        os._exit(1)

    _watchdog = threading.Thread(target=watch, name="launcher-watchdog", daemon=True)
    _watchdog.start()
    return _watchdog


def wrap(objective: torch.nn.Module, parallelism: str, info: DistInfo, bf16: bool,
         find_unused: bool = False) -> torch.nn.Module:
    """The module the loop calls. ``fsdp``: FSDP2 ``fully_shard`` on each of the objective's
    shard units, then on the objective itself, with bf16 compute over the fp32 sharded master
    weights (``bf16``) and fp32 gradient reduction; the objective becomes the FSDP root in place.
    ``ddp``: DistributedDataParallel when there is more than one rank, else the objective."""
    if parallelism == "fsdp":
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16 if bf16 else None, reduce_dtype=torch.float32)
        for unit in objective.shard_units():
            fully_shard(unit, mp_policy=mp)
        fully_shard(objective, mp_policy=mp)
        return objective
    if info.world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        return DDP(objective, device_ids=[info.device.index] if info.device.type == "cuda" else None,
                   find_unused_parameters=find_unused)
    return objective


def sync_grads(model: torch.nn.Module, sync: bool):
    """A context in which backward does (``sync``) or does not reduce gradients across ranks:
    DDP's ``no_sync``, FSDP2's ``set_requires_gradient_sync``; nothing on one plain rank."""
    import contextlib

    if hasattr(model, "set_requires_gradient_sync"):  # an FSDP2 module
        model.set_requires_gradient_sync(sync)
        return contextlib.nullcontext()
    if sync or not hasattr(model, "no_sync"):
        return contextlib.nullcontext()
    return model.no_sync()


def local_tensor(t: torch.Tensor) -> torch.Tensor:
    """A DTensor's full value (e.g. FSDP's total grad norm), or ``t`` itself."""
    from torch.distributed.tensor import DTensor

    return t.full_tensor() if isinstance(t, DTensor) else t


def teardown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce(t: torch.Tensor, op=dist.ReduceOp.SUM) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t, op=op)
    return t


def all_gather_object(obj) -> list:
    if dist.is_available() and dist.is_initialized():
        out = [None] * dist.get_world_size()
        dist.all_gather_object(out, obj)
        return out
    return [obj]


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def first_error(err: BaseException | None, device: torch.device) -> BaseException | None:
    """Whether any rank failed, agreed by all: the first failing rank's error on every rank (a
    DataError names the file, record and reason), else None. One flag all-reduce; the errors are
    gathered only when some rank failed. Collective."""
    if not (dist.is_available() and dist.is_initialized()):
        return err
    flag = torch.tensor([float(err is not None)], device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    if not flag.item():
        return None
    return next(e for e in all_gather_object(err) if e is not None)


def broadcast_object(obj, src: int = 0):
    """``obj`` of rank ``src`` on every rank (one decision, taken once, shared by all)."""
    if dist.is_available() and dist.is_initialized():
        box = [obj]
        dist.broadcast_object_list(box, src=src)
        return box[0]
    return obj
