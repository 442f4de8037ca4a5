"""A config's training step run for real, next to its estimate: ``scripts/bench/gpu_check.py`` at
real size on a GPU, its CPU dry run and the tests at tiny size.

- :func:`build_random`: the objective a config names, built at its size with random weights (a
  pretrained backbone from its config values, nothing read: the estimator's shape-only mode on a
  real device), trainable weights in float32 as the loop keeps them.
- :func:`example`: a batch of the family's own schema at a chosen (rows, length), optionally with
  padding in its first row.
- :class:`SdpaLog`: the kernel each ``scaled_dot_product_attention`` call would get on an sm80+
  GPU (``mmldlm.attention.sdpa_backend``), counted while it is active (eager calls only).
- :func:`compare_compiled`: losses and gradients of eager and compiled steps (``training.compile_model``:
  ``mmldlm.train.compile``) on the same weights, batches and random streams, and the compilations.
"""
from __future__ import annotations

import collections
import contextlib
from typing import NamedTuple

import torch


def build_random(cfg, device: str | torch.device):
    """(objective in train mode, tokenizer) at the config's size with random weights on ``device``:
    its sources resolved ``shapes_only`` (a pretrained model from its files' shapes or declared
    shape, never its weights), built, its source models' meta parameters drawn instead of loaded."""
    from mmldlm.objective import lookup
    from mmldlm.sources import open_sources
    from mmldlm.sources.weights import materialize

    entry = lookup(cfg.objective)
    sources = open_sources(cfg, entry, shapes_only=True)
    device = torch.device(device)
    with torch.device(device):
        torch.manual_seed(0)
        obj = entry.build(cfg, sources)
    materialize(obj, device)
    sources.random_init()
    obj = obj.to(device).train()
    with torch.no_grad():
        for p in obj.parameters():
            if p.requires_grad and p.dtype != torch.float32:
                p.data = p.data.float()  # fp32 masters, as the loop keeps them
            if p.is_floating_point():  # zero-initialised gates and heads would hide the blocks' work
                p.add_(torch.randn_like(p) * 0.02)
    obj.sources_loaded()
    return obj, sources.tokenizer


def fill(batch: dict, vocab: int, padded: bool = False) -> dict:
    """Values for an example batch, in place: random ids, every token real and an answer token;
    ``padded``: the second half of the first row is padding (masks False, segment -1)."""
    for k, v in batch.items():
        if v.dtype == torch.bool:
            v.fill_(True)
        elif k == "positions":
            v.copy_(torch.arange(v.shape[1], device=v.device).expand_as(v))
        elif k == "segment":
            v.zero_()
        elif k in ("records", "index"):
            v.copy_(torch.arange(v.shape[0], device=v.device).view(-1, *[1] * (v.dim() - 1)).expand_as(v))
        elif v.dtype == torch.long:
            v.random_(0, 256 if k == "bytes" else vocab)  # LatentWire's source is UTF-8 bytes
        else:
            v.normal_()
    if "labels" in batch:
        batch["labels"].copy_(batch["input_ids"])
    if padded:
        for k, v in batch.items():
            if v.dim() == 2 and v.shape[1] > 1 and (v.dtype == torch.bool or k == "segment"):
                v[0, v.shape[1] // 2:] = False if v.dtype == torch.bool else -1
        if "labels" in batch and "segment" in batch:
            batch["labels"].masked_fill_(batch["segment"] < 0, -100)
    return batch


def example(obj, cfg, vocab: int, device, rows: int | None = None, length: int | None = None,
            padded: bool = False) -> dict:
    """``obj.example_batch`` at ``rows`` x ``length`` (default: the config's), filled (:func:`fill`)."""
    from omegaconf import open_dict

    cfg = cfg.copy()
    with open_dict(cfg):
        if rows is not None:
            cfg.training.train_batch_size = rows
        if length is not None:
            cfg.data.max_seq_len = length
    return fill(obj.example_batch(cfg, device), vocab, padded)


class SdpaLog(contextlib.ContextDecorator):
    """Counts the SDPA kernel of every ``torch.nn.functional.scaled_dot_product_attention`` call made
    while active (``flash`` | ``efficient`` | ``math``: ``mmldlm.attention.sdpa_backend``)."""

    def __init__(self):
        self.counts: collections.Counter = collections.Counter()

    def __enter__(self):
        from mmldlm.attention import sdpa_backend

        self._orig = torch.nn.functional.scaled_dot_product_attention

        def recorded(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, *args, **kwargs):
            # under autocast (the CPU's in a dry run) the inputs run in its dtype, as CUDA autocast casts them
            kind = q.device.type
            dtype = torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else None
            self.counts[sdpa_backend(q, k, v, attn_mask, is_causal, dtype)] += 1
            return self._orig(q, k, v, attn_mask, dropout_p, is_causal, *args, **kwargs)

        torch.nn.functional.scaled_dot_product_attention = recorded
        return self

    def __exit__(self, *exc):
        torch.nn.functional.scaled_dot_product_attention = self._orig
        return False


def _autocast(device, bf16: bool):
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


def loss_and_grads(obj, model, batch: dict, step: int, seed: int, bf16: bool = False):
    """(loss, {name: grad}) of one forward + backward of ``model`` (``obj`` or its compiled self),
    the global RNG seeded with ``seed`` first (the noise an objective draws)."""
    obj.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    with _autocast(next(obj.parameters()).device, bf16):
        loss, _ = model(batch, step)
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in obj.named_parameters() if p.grad is not None}
    obj.zero_grad(set_to_none=True)
    return loss.detach().float(), grads


class Comparison(NamedTuple):
    eager: list  # [(loss, grads)] per batch
    compiled: list
    graphs: list  # dynamo's unique graphs after each compiled batch (no growth = no recompilation)


def compare_compiled(obj, batches: list[dict], backend: str = "inductor", step: int = 10) -> Comparison:
    """Each batch through ``obj`` eagerly, then through its compiled self, on the same weights and
    random streams (no optimizer step between). ``obj`` stays compiled afterwards."""
    import torch._dynamo.utils as dynamo_utils

    from mmldlm.train.compile import compile_model

    eager = [loss_and_grads(obj, obj, b, step, seed=i) for i, b in enumerate(batches)]
    torch._dynamo.reset()
    dynamo_utils.counters.clear()
    model = compile_model(obj, obj, backend=backend)
    compiled, graphs = [], []
    for i, b in enumerate(batches):
        compiled.append(loss_and_grads(obj, model, b, step, seed=i))
        graphs.append(int(dynamo_utils.counters["stats"]["unique_graphs"]))
    return Comparison(eager, compiled, graphs)
