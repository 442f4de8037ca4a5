"""The image<->caption MMDiT: a caption stream and an image stream joined by joint attention.

Caption: token embedding + learned positions, width ``dim_text``. Image: the patches (continuous:
a linear map of the ``p*p*3`` pixels; discrete: an embedding of the ``K`` codes plus [MASK] = K),
plus learned positions, width ``dim_image``. The two widths are free: mmdit's joint attention
projects both to ``heads * dim_head`` (the original fixed the caption width to BERT's 768, so its
README's ``--dim-text 1024`` crashed). Each stream's noise level (caption t in [0, 1]; image t
in [0, 1], 0 = clean) is embedded (:class:`mmldlm.nn.TimeMLP`) and the two are summed into the
conditioning of ``mmdit.mmdit_generalized_pytorch.MMDiT``. Heads: caption logits; the image's
v (continuous) or code logits over K + 1 (the [MASK] logit is removed by SUBS).
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

try:
    from mmdit.mmdit_generalized_pytorch import MMDiT
except ImportError as e:  # pragma: no cover - exercised only without the dependency
    raise ImportError("the image MMDiT needs the `mmdit` package: pip install 'mmdit==0.3.0'") from e

from latentIMG_mmdit.schema import patch_dim
from mmldlm.attention import padding_or_none, sdpa_joint_attention
from mmldlm.nn import TimeMLP, text_out


def sincos_2d(grid: int, dim: int) -> torch.Tensor:
    """``[grid * grid, dim]`` fixed 2-D sine-cosine position codes (row-major patches, as patchify
    orders them): half the channels encode the row, half the column."""
    quarter = max(1, dim // 4)
    freqs = 1.0 / (100.0 ** (torch.arange(quarter, dtype=torch.float32) / quarter))
    pos = torch.arange(grid, dtype=torch.float32)
    enc = torch.cat([torch.sin(pos[:, None] * freqs), torch.cos(pos[:, None] * freqs)], 1)  # [grid, 2 quarter]
    rows, cols = enc.repeat_interleave(grid, 0), enc.repeat(grid, 1)
    out = torch.cat([rows, cols], 1)
    return torch.nn.functional.pad(out, (0, max(0, dim - out.shape[1])))[:, :dim].contiguous()


class ImageMMDiT(nn.Module):
    def __init__(self, m, vocab_size: int, discrete: bool):
        super().__init__()
        self.discrete = discrete
        self.tok = nn.Embedding(vocab_size, m.dim_text)
        self.pos = nn.Embedding(m.max_seq_len, m.dim_text)
        if discrete:
            self.image_in = nn.Embedding(m.codebook_size + 1, m.dim_image)
            out = m.codebook_size + 1
        else:
            self.image_in = nn.Linear(patch_dim(m), m.dim_image)
            out = patch_dim(m)
        # 2-D sine-cosine positions (learnable from there), at the scale of the patch projection: at
        # high noise an image token's content is noise, and where it sits is all it knows; a 0.02-scale
        # random start left that unreadable for hundreds of steps
        self.image_pos = nn.Parameter(sincos_2d(m.image_size // m.patch_size, m.dim_image))
        self.time_text, self.time_image = TimeMLP(256, m.dim_cond), TimeMLP(256, m.dim_cond)
        self.drop = nn.Dropout(m.dropout)
        self.backbone = MMDiT(depth=m.depth, dim_modalities=(m.dim_text, m.dim_image), dim_cond=m.dim_cond,
                              heads=m.heads, dim_head=m.dim_head, num_residual_streams=m.num_residual_streams,
                              flash_attn=m.flash_attn, ff_kwargs=dict(dropout=m.dropout))
        if m.flash_attn:  # SDPA without a mask where nothing is padded (mmldlm.attention)
            sdpa_joint_attention(self.backbone)
        self.text_head = nn.Linear(m.dim_text, vocab_size)
        self.image_head = nn.Linear(m.dim_image, out)
        nn.init.zeros_(self.image_head.weight)  # DiT's zero-initialised output: training starts at "predict 0"
        nn.init.zeros_(self.image_head.bias)
        nn.init.normal_(self.tok.weight, std=0.02)
        nn.init.normal_(self.pos.weight, std=0.02)

    def forward(self, text_ids: torch.Tensor, text_mask: torch.Tensor, image: torch.Tensor, t_text: torch.Tensor,
                t_image: torch.Tensor, text_logits: torch.Tensor | bool | Callable = True):
        """``text_ids [B, L]``, ``text_mask [B, L]`` (True = real token), ``image`` ``[B, N, p*p*3]``
        (continuous) or ``[B, N]`` codes (discrete), ``t_text [B]``, ``t_image [B]`` ->
        (caption logits, image output ``[B, N, p*p*3 | K+1]``). ``text_logits``: a bool ``[B, L]``
        tensor projects only those positions (``[n, V]``); False skips the projection; a callable
        ``(caption stream, text head) -> out`` returns ``out`` (``mmldlm.nn.text_out``)."""
        pos = torch.arange(text_ids.shape[1], device=text_ids.device)
        x_text = self.drop(self.tok(text_ids) + self.pos(pos))
        x_img = self.drop(self.image_in(image) + self.image_pos)
        cond = self.time_text(t_text) + self.time_image(t_image)
        out_text, out_img = self.backbone(modality_tokens=(x_text, x_img),
                                          modality_masks=(padding_or_none(text_mask), None),
                                          time_cond=cond)
        return text_out(out_text, self.text_head, text_logits), self.image_head(out_img)
