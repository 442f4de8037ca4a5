"""The estimate of one config: parameters, FLOPs, peak memory per rank, the verdict per GPU."""
from __future__ import annotations

from dataclasses import asdict, dataclass

from torch import nn

GIB = 1 << 30
# usable memory as nvidia-smi reports it (81,559 MiB; 143,771 MiB); the margin covers what a CPU
# trace cannot see: the CUDA context and cuBLAS workspaces, and the caching allocator's fragmentation
GPUS = {"80gb": ("H100 80 GB", 81559 * (1 << 20)), "141gb": ("H200 141 GB", 143771 * (1 << 20))}
CONTEXT_BYTES = int(1.5 * GIB)
FRAGMENTATION = 0.10
PEAK_FLOPS = {"bf16": 989e12, "fp32": 494e12}  # H100 / H200 SXM dense bf16; TF32 for fp32 runs


@dataclass
class Estimate:
    config: str
    objective: str
    world_size: int
    parallelism: str
    batch_per_rank: int
    tokens_per_step_per_rank: int
    params_total: int
    params_trainable: int
    flops_per_step: int  # per rank, forward + backward
    flops_per_token: float
    peak_bytes_per_rank: int
    params_bytes: int
    grads_bytes: int
    optimizer_bytes: int
    activations_bytes: int
    temporaries_bytes: int
    other_bytes: int
    fits_80gb: bool
    fits_141gb: bool
    assumed_mfu: float
    tokens_per_s_per_gpu_at_assumed_mfu: float
    notes: list

    def as_dict(self) -> dict:
        return asdict(self)


def needed_bytes(peak: int) -> int:
    """What a GPU must hold for a traced peak: + fragmentation + context."""
    return int(peak * (1 + FRAGMENTATION)) + CONTEXT_BYTES


def _unit_bytes(module: nn.Module, bf16: bool) -> int:
    """A unit's parameters as FSDP gathers them (bf16 under the loop's bf16 policy)."""
    return sum(p.numel() * (2 if bf16 else p.element_size()) for p in module.parameters())


def distribute(peak, obj: nn.Module, world: int, fsdp: bool, bf16: bool, notes: list):
    """Per-rank parts under the parallelism: FSDP divides params / grads / optimizer state by the
    world size and holds gathered copies of two units (the one computing, the one prefetched) and
    of the root unit; DDP keeps a full replica plus its gradient buckets (one more copy of the
    trainable gradients)."""
    from mmldlm.estimate.trace import Peak

    if not fsdp:
        if world == 1:  # the loop runs a single rank without the DDP wrapper
            return peak
        buckets = sum(p.numel() * 4 for p in obj.parameters() if p.requires_grad)
        notes.append("DDP: + one copy of the trainable gradients (the reduction buckets)")
        return Peak(peak.params, peak.grads, peak.optimizer, peak.activations, peak.temporaries + buckets,
                    peak.other)
    units = [_unit_bytes(u, bf16) for u in obj.shard_units()]
    gathered = 2 * max(units, default=0)
    root = max(0, _unit_bytes(obj, bf16) - sum(units))
    notes.append(f"FSDP over {world} ranks: params, grads and optimizer state / {world}; + 2 gathered units "
                 f"({gathered / GIB:.2f} GiB) and the root unit ({root / GIB:.2f} GiB) during the step")
    return Peak(peak.params // world, peak.grads // world, peak.optimizer // world, peak.activations,
                peak.temporaries + gathered + root, peak.other)
