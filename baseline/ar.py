"""The autoregressive baseline: a Llama of the DiT presets' sizes, next-token cross-entropy over
real tokens (``elbo`` = the exact NLL), sampled with the KV cache; registered in ``objectives``."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mmldlm.eval.likelihood import Nelbo
from mmldlm.heads import HeadLoss, head_loss, token_ce
from mmldlm.nn import rank_share
from mmldlm.objective import Objective


class AutoregressiveLM(Objective):
    """A Llama of the preset's sizes; next-token cross-entropy over real tokens (``elbo`` = NLL)."""

    def __init__(self, cfg, tokenizer):
        super().__init__()
        from transformers import LlamaConfig, LlamaForCausalLM

        m = cfg.model
        config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=m.hidden_size, intermediate_size=4 * m.hidden_size,
                             num_hidden_layers=m.n_blocks, num_attention_heads=m.n_heads,
                             num_key_value_heads=m.n_heads, max_position_embeddings=m.max_seq_len,
                             attention_dropout=m.dropout, pad_token_id=tokenizer.pad_token_id,
                             # a BERT vocabulary's documents run [CLS] ... [SEP]
                             bos_token_id=_first(tokenizer.bos_token_id, tokenizer.cls_token_id),
                             eos_token_id=_first(tokenizer.eos_token_id, tokenizer.sep_token_id))
        config._attn_implementation = "sdpa"
        self.model = LlamaForCausalLM(config)

    def forward(self, batch: dict, step: int):
        out, real = self._nll(batch)
        loss = out.loss / rank_share(real.sum()).clamp_min(1)
        return loss, {"elbo": loss.detach()}

    def _nll(self, batch: dict) -> tuple[HeadLoss, torch.Tensor]:
        """(next-token CE of the real predicted tokens through the LM head, a chunk of tokens at a
        time (``mmldlm.heads``: no ``[B, L, V]`` logits), which tokens those are ``[B, L - 1]``)."""
        ids, mask = batch["input_ids"], batch["attention_mask"]
        hidden = self.model.model(input_ids=ids, attention_mask=mask.long()).last_hidden_state[:, :-1]
        real = mask[:, 1:] & mask[:, :-1]
        head = self.model.lm_head
        return head_loss(hidden[real], head.weight, head.bias, token_ce, ids[:, 1:][real]), real

    nelbo_needs_t = False  # the NLL is exact

    def nelbo(self, batch: dict, t, k: int) -> Nelbo:
        """Next-token NLL nats per sequence over real predicted tokens."""
        out, real = self._nll(batch)
        nll = torch.zeros(real.shape, device=real.device).masked_scatter(real, out.per_token["loss"])
        return Nelbo(nll.sum(1), real.sum(1), {})

    def conditional_nelbo(self, batch: dict, t, k: int) -> Nelbo:
        """-log p of the target tokens given the tokens before them (exact), and ``greedy``: each
        target token is the argmax of its next-token distribution (teacher forced)."""
        ids, mask, target = batch["input_ids"], batch["attention_mask"], batch["target_mask"]
        logits = self.model(input_ids=ids, attention_mask=mask.long()).logits[:, :-1].float()
        scored = target[:, 1:]
        nll = F.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten(), reduction="none").view_as(scored)
        greedy = ((logits.argmax(-1) == ids[:, 1:]) | ~scored).all(1)
        return Nelbo((nll * scored).sum(1), scored.sum(1), {"greedy": greedy.double()})

    @torch.no_grad()
    def complete(self, context: torch.Tensor, length: int, *, steps: int, temperature: float = 0.0,
                 generator=None, stop=None) -> torch.Tensor:
        """``[1, length]`` ids after ``context [1, P]``: ancestral with the KV cache, EOS after EOS."""
        from mmldlm.eval.samplers import ar_sample

        cfg = self.model.config
        excluded = [] if cfg.pad_token_id in (None, cfg.eos_token_id, cfg.bos_token_id) else [cfg.pad_token_id]
        prefix = self.model.get_input_embeddings()(context)
        return ar_sample(self.model, context.shape[0], length, None, cfg.eos_token_id, temperature=temperature,
                         generator=generator, excluded=excluded, prefix=prefix, device=context.device, stop=stop)

    def shard_units(self) -> list[nn.Module]:
        return list(self.model.model.layers)

    def sampler_name(self, requested: str) -> str:
        return "ar (kv cache)"

    @torch.no_grad()
    def generate(self, num_samples: int, length: int, temperature: float = 1.0, top_p: float = 1.0, generator=None,
                 **_) -> torch.Tensor:
        from mmldlm.eval.samplers import ar_sample

        cfg = self.model.config
        bos = _first(cfg.bos_token_id, cfg.eos_token_id)
        excluded = [] if cfg.pad_token_id in (None, cfg.eos_token_id, cfg.bos_token_id) else [cfg.pad_token_id]
        return ar_sample(self.model, num_samples, length, bos, cfg.eos_token_id, temperature=temperature,
                         top_p=top_p, generator=generator, excluded=excluded, device=next(self.parameters()).device)


def _first(*ids):
    return next((i for i in ids if i is not None), None)
