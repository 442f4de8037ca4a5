"""Attention on the fast path: which SDPA kernel a call gets on a GPU, and the MMDiTs' joint attention.

``torch.nn.functional.scaled_dot_product_attention`` picks its CUDA kernel per call
(``aten/src/ATen/native/transformers/cuda/sdp_utils.cpp``): flash attention only without an
``attn_mask`` (``is_causal`` is fine), in fp16 / bf16, with q, k, v of one head size <= 256; the
memory-efficient kernel takes a mask and fp32 too, but only head sizes divisible by 8 (fp16 /
bf16; 4 for fp32) and aligned storage; anything else runs the math path, which materialises the
``[B, H, L, L]`` scores. So a boolean mask where no position is padded costs the flash kernel, and
a head size such as the MMDiT base's 1024 / 24 = 42 costs the memory-efficient one as well.

- :func:`key_padding_mask`: a ``[B, 1, 1, L]`` key mask, or None when no row has padding (packed
  rows, fixed-length batches).
- :class:`SDPAJointAttention`: mmdit's joint attention (text + latent / image tokens in one
  softmax) straight through SDPA: no mask without padding, else the key mask with the head size
  zero-padded to a multiple of 8 (the scores are unchanged: the padded q / k columns are 0, and
  the padded v columns are sliced off).
- :func:`sdpa_backend`: the selection rules above as a function of a call's arguments, for the
  tests and benchmarks that record what each family's step would run on a GPU (cuDNN attention,
  which recent wheels try first on H100 / H200, aside).
"""
from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import nn

HALF = (torch.float16, torch.bfloat16)


def padding_or_none(mask: torch.Tensor | None) -> torch.Tensor | None:
    """``mask [B, L]`` (True = real), or None when every position is real (one host sync: the
    flash kernel is worth it)."""
    return None if mask is None or bool(mask.all()) else mask


def key_padding_mask(mask: torch.Tensor | None) -> torch.Tensor | None:
    """``mask [B, L]`` as an SDPA key mask ``[B, 1, 1, L]``, or None when no position is padded."""
    mask = padding_or_none(mask)
    return None if mask is None else mask[:, None, None, :]


def sdpa_backend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor | None = None,
                 is_causal: bool = False, dtype: torch.dtype | None = None) -> str:
    """``flash`` | ``efficient`` | ``math``: the kernel CUDA SDPA selects for these arguments on an
    sm80+ GPU (A100, H100, H200), by the checks of torch's ``sdp_utils.cpp`` (dense inputs).
    ``dtype``: the inputs' dtype when it differs from ``q``'s (CUDA autocast casts SDPA's inputs to
    its dtype: a float32 q under bf16 autocast runs in bf16)."""
    dtype = dtype or q.dtype
    d_q, d_k, d_v = q.shape[-1], k.shape[-1], v.shape[-1]
    strides_ok = all(t.stride(-1) == 1 for t in (q, k, v))
    square = q.shape[-2] == k.shape[-2]
    if (attn_mask is None and dtype in HALF and d_q == d_k == d_v <= 256 and strides_ok
            and (square or not is_causal)):
        return "flash"
    align = 8 if dtype in HALF else 4
    aligned = all(t.storage_offset() % align == 0 for t in (q, k, v))
    if (dtype in (*HALF, torch.float32) and d_q == d_k and d_q % align == 0 and d_v % align == 0 and strides_ok
            and aligned):
        return "efficient"
    return "math"


def joint_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
    """Bidirectional attention ``[B, H, N, d]``; with a key mask, the head size is zero-padded to a
    multiple of 8 so the memory-efficient kernel takes it (the scale stays ``d ** -0.5``)."""
    d = q.shape[-1]
    pad = -d % 8 if key_mask is not None else 0
    if pad:
        q, k, v = (F.pad(t, (0, pad)) for t in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask, scale=1 / math.sqrt(d))
    return out[..., :d] if pad else out


class SDPAJointAttention(nn.Module):
    """Replaces the ``forward`` of ``mmdit.mmdit_pytorch.JointAttention`` (the class is swapped in
    place by :func:`sdpa_joint_attention`: the same parameters, names and initialisation):
    per-modality q / k / v projections, one softmax over every modality's tokens, per-modality
    output projections. ``masks``: a ``[B, n_i]`` key mask per modality, or None for all real."""

    def forward(self, inputs: tuple[torch.Tensor, ...], masks: tuple[torch.Tensor | None, ...] | None = None):
        masks = masks if masks is not None else (None,) * len(inputs)
        qkvs = []
        for i, (x, to_qkv) in enumerate(zip(inputs, self.to_qkv)):
            q, k, v = self.split_heads(to_qkv(x))  # [B, H, n_i, d] each
            if self.qk_rmsnorm:
                q, k = self.q_rmsnorms[i](q), self.k_rmsnorms[i](k)
            qkvs.append((q, k, v))
        q, k, v = (torch.cat(parts, dim=2) for parts in zip(*qkvs))
        key_mask = None
        if any(m is not None for m in masks):
            full = [m if m is not None else torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
                    for m, x in zip(masks, inputs)]
            key_mask = torch.cat(full, dim=1)[:, None, None, :]
        out = self.merge_heads(joint_sdpa(q, k, v, key_mask))
        parts = out.split([x.shape[1] for x in inputs], dim=1)
        return tuple(to_out(o) for o, to_out in zip(parts, self.to_out))


@functools.cache
def _fast_joint_attention() -> type:
    from mmdit.mmdit_pytorch import JointAttention

    return type("SDPAJointAttention", (SDPAJointAttention, JointAttention), {})


def sdpa_joint_attention(backbone: nn.Module) -> nn.Module:
    """Every joint attention of an ``mmdit`` backbone through :class:`SDPAJointAttention`."""
    from mmdit.mmdit_pytorch import JointAttention

    for m in backbone.modules():
        if type(m) is JointAttention:
            m.__class__ = _fast_joint_attention()
    return backbone
