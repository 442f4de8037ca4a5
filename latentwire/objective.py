"""The LatentWire objective: one interlingua, read by every frozen LLM through its own adapter.

Per LLM ``n`` (``model.llms``), per batch:

    prefix_n = calibrate(adapter_n(z_n))                              z_n = encoder(source)[n]
    student  = LLM_n([prefix_n][BOS if the policy says][anchor_n][answer tokens + EOS])
    teacher  = LLM_n([source + anchor_n as text][answer tokens])      (no_grad; only for kd / state)

``logits[:, t]`` (the output one position before answer token t) is scored against token t: the
single shift the original got wrong (``latentwire/losses.py``). Terms (each logged as
``{term}/{n}``, and their mean over models as ``{term}``):

- ``tf``: teacher-forced CE over the answer and its EOS (``loss.tf_weight``);
- ``first``: CE of the first answer token, weight ``first_weight`` (schedule) x the auto-scale;
- ``kce``: the mean CE over the first ``loss.K`` steps (``loss.k_ce_weight``);
- ``kd``: ``KL(teacher || student) tau^2`` over the first K steps (``loss.kd_first_k_weight``);
- ``state``: hidden-state MSE at those steps, layers ``loss.state_kd_layers`` (``loss.state_kd_weight``, 0 = off);
- ``scale_pen``: ``(adapter.scale - 1)^2`` summed over adapters, times ``loss.scale_l2``.

loss = mean over models of their weighted terms + ``scale_l2`` x scale_pen. Only the encoder and
the adapters train; the LLMs are frozen and stay out of checkpoints (recorded by path).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from latentwire import losses as L
from latentwire.adapter import Adapter, calibrate, embedding_stats, prefix_rms
from latentwire.collate import LatentWireCollator
from latentwire.data import QA_FIELDS
from latentwire.encoder import build_encoder
from latentwire.llm import build_llm, llm_sources, token_info
from latentwire.schema import ST_ENCODERS, LatentWireRunConfig, total_latent_len
from mmldlm.config import ConfigError
from mmldlm.objective import BatchCount, Objective, register
from mmldlm.sources import LoadPolicy

CONFIGS = Path(__file__).resolve().parent / "configs"
GOLD_LENGTH_WARNING = "uses gold answer length (model.adapter_metadata=true): the adapter reads the label's length"
log = logging.getLogger("mm_ldlm.latentwire")


class Teacher(NamedTuple):
    logits: torch.Tensor  # [B, k, V] at the first k <= K answer steps
    hidden: list | None  # the state term's hidden states at those steps (None: off)


def positions(mask: torch.Tensor) -> torch.Tensor:
    """Position ids that count real tokens only (left padding leaves positions unshifted)."""
    return (mask.long().cumsum(-1) - 1).clamp_min(0)


class LatentWireObjective(Objective):
    def __init__(self, cfg, sources, tokenizers: dict, llms: dict[str, nn.Module]):
        super().__init__()
        m, self.lcfg = cfg.model, cfg.loss
        self.names = [s.name for s in m.llms]
        self.colorize = m.adapter_colorize
        self.total_steps = cfg.training.num_train_steps
        self.sequential, self.metadata = m.sequential_models, m.adapter_metadata
        self.calibration, self.target_fixed, self.gain = m.calibration.name, m.prefix_target_rms, m.prefix_gain
        self.llms = nn.ModuleDict(llms)
        self.tokenizers = tokenizers  # per LLM (the eval reads them too)
        self.infos = {n: token_info(tokenizers[n], m, getattr(llms[n].generation_config, "eos_token_id", None))
                      for n in self.names}
        self.M, self.encoder_dim = total_latent_len(m), m.d_z
        self.max_answer = m.max_answer_tokens
        self.sources = sources  # the KD cache keys its entries by each LLM's fingerprint
        self.kd_cache_root = None if sources.shapes_only else kd_cache_root(cfg)
        self._kd_caches: dict = {}
        self.encoder = build_encoder(m, self.names, sources)
        self.st_tokenizer = sources.tokenizer_of("st_model") if m.encoder_type in ST_ENCODERS else None
        self.adapters = nn.ModuleDict()
        # each LLM's embedding RMS, set once its weights are loaded (sources_loaded); 1.0 until then
        # (the estimator never loads them, and no FLOP or byte count depends on the value)
        self.emb_rms: dict[str, float] = dict.fromkeys(self.names, 1.0)
        for n in self.names:
            d = llms[n].get_input_embeddings().weight.shape[1]
            # the colorizer starts at the embeddings' per-dimension statistics (sources_loaded)
            self.adapters[n] = Adapter(m.d_z, d, self.M, m.adapter_hidden_mult, m.adapter_dropout,
                                       m.adapter_metadata, m.max_answer_tokens,
                                       (torch.zeros(d), torch.ones(d)) if m.adapter_colorize else None)
            # running (sum, count) of the adapter's raw output RMS: eval's calibration=train_stats
            self.register_buffer(f"raw_rms_{n}", torch.zeros(2, dtype=torch.float64))
            self.register_buffer(f"anchor_{n}", torch.tensor(self.infos[n].anchor_ids, dtype=torch.long),
                                 persistent=False)
        if self.metadata:
            log.warning("LatentWire %s", GOLD_LENGTH_WARNING)

    # -- the input ------------------------------------------------------------------------------
    def target_rms(self, n: str, mode: str | None = None) -> float | None:
        mode = mode or self.calibration
        if mode == "embed_rms":
            return self.emb_rms[n]
        if mode == "fixed":
            return self.target_fixed
        if mode == "train_stats":
            total, count = getattr(self, f"raw_rms_{n}").tolist()
            if not count:
                raise ValueError("calibration=train_stats: this checkpoint holds no training statistics")
            return total / count
        return None

    def prefix(self, n: str, z: torch.Tensor, answer_len=None, mode: str | None = None, gain: float | None = None):
        """(calibrated prefix [B, M, d_model], raw adapter output) for LLM ``n``."""
        raw = self.adapters[n](z, answer_len if self.metadata else None)
        return calibrate(raw, self.target_rms(n, mode), self.gain if gain is None else gain), raw

    def head(self, n: str, prefix: torch.Tensor) -> torch.Tensor:
        """``[prefix][BOS?][anchor]`` input embeddings: what precedes the answer, at train and eval."""
        info, emb = self.infos[n], self.llms[n].get_input_embeddings()
        ids = getattr(self, f"anchor_{n}")
        if info.append_bos:
            ids = torch.cat([ids.new_tensor([info.bos_id]), ids])
        tail = emb(ids).unsqueeze(0).expand(prefix.shape[0], -1, -1)
        return torch.cat([prefix.to(tail.dtype), tail], 1)

    def answer_logits(self, n: str, head: torch.Tensor, ans: torch.Tensor, mask: torch.Tensor,
                      hidden_layers=None):
        """(logits [B, T, V] where [:, t] predicts ans[:, t], hidden states at those positions or None)."""
        T, P = ans.shape[1], head.shape[1]
        embeds = torch.cat([head, self.llms[n].get_input_embeddings()(ans)], 1)
        full = torch.cat([mask.new_ones(mask.shape[0], P), mask], 1)
        out = self.llms[n](inputs_embeds=embeds, attention_mask=full.long(), use_cache=False, logits_to_keep=T + 1,
                           output_hidden_states=hidden_layers is not None)
        hidden = None if hidden_layers is None else [out.hidden_states[i][:, P - 1: P - 1 + T] for i in hidden_layers]
        return out.logits[:, :T], hidden

    def text_logits(self, n: str, ids: torch.Tensor, mask: torch.Tensor, T: int, hidden_layers=None):
        """The same for ``[left-padded text prompt][T answer tokens]`` rows (the teacher / text path)."""
        out = self.llms[n](input_ids=ids, attention_mask=mask.long(), position_ids=positions(mask), use_cache=False,
                           logits_to_keep=T + 1, output_hidden_states=hidden_layers is not None)
        S = ids.shape[1] - T
        hidden = None if hidden_layers is None else [out.hidden_states[i][:, S - 1: S - 1 + T] for i in hidden_layers]
        return out.logits[:, :T], hidden

    # -- training -------------------------------------------------------------------------------
    @torch.no_grad()
    def teacher_targets(self, n: str, batch: dict) -> Teacher | None:
        """The KD / state targets of LLM ``n`` (the same frozen LLM reading the source as text),
        first K answer steps only; None when both terms are off. Computed outside the per-model
        activation checkpoint, so ``sequential_models`` recomputes the student's forward only,
        never this longer one. With ``loss.kd_cache`` (and no state term) the logits come from the
        on-disk cache (``latentwire/kd_cache.py``), computed only for records it does not hold."""
        lc = self.lcfg
        layers = list(lc.state_kd_layers) if lc.state_kd_weight > 0 else None
        if not (lc.kd_first_k_weight > 0 or layers):
            return None
        T = batch[f"{n}.answer"].shape[1]
        cache = None if layers else self.kd_cache(n)
        if cache is not None:
            return Teacher(self._cached_teacher(n, cache, batch), None)
        logits, hidden = self.text_logits(n, batch[f"{n}.teacher"], batch[f"{n}.teacher_mask"], T, layers)
        k = min(lc.K, T)
        return Teacher(logits[:, :k], None if hidden is None else [h[:, :k] for h in hidden])

    def kd_cache(self, n: str):
        """LLM ``n``'s :class:`~latentwire.kd_cache.KDCache` (opened on first use; None when off)."""
        if self.kd_cache_root is None:
            return None
        if n not in self._kd_caches:
            from latentwire.kd_cache import KDCache, receiver_fingerprint

            lc = self.lcfg
            vocab = self.llms[n].get_output_embeddings().weight.shape[0]
            dtype = str(next(self.llms[n].parameters()).dtype).removeprefix("torch.")
            self._kd_caches[n] = KDCache(self.kd_cache_root, n, receiver_fingerprint(self.sources, f"llm.{n}"),
                                         vocab, lc.K, lc.kd_cache_topk, lc.kd_tau, dtype)
        return self._kd_caches[n]

    def _cached_teacher(self, n: str, cache, batch: dict) -> torch.Tensor:
        """The teacher's logits ``[B, k, V]`` read from ``cache``; the rows it lacks are computed
        (one forward over them) and stored first, so every epoch reads the same stored targets.
        Steps past a row's answer are zeros (masked in the KD)."""
        ids, tmask = batch[f"{n}.teacher"], batch[f"{n}.teacher_mask"]
        ans, amask = batch[f"{n}.answer"], batch[f"{n}.answer_mask"]
        T = ans.shape[1]
        S, k = ids.shape[1] - T, min(self.lcfg.K, T)
        keys = [cache.key(ids[i, :S][tmask[i, :S]].tolist(), ans[i][amask[i]].tolist()) for i in range(ids.shape[0])]
        rows = [cache.get(key) for key in keys]
        miss = [i for i, r in enumerate(rows) if r is None]
        if miss:
            sub, sub_mask = ids[miss], tmask[miss]
            lead = int((~sub_mask[:, :S]).all(0).long().cumprod(0).sum())  # columns of padding in every row
            live, _ = self.text_logits(n, sub[:, lead:], sub_mask[:, lead:], T)
            for j, i in enumerate(miss):
                rows[i] = cache.put(keys[i], live[j, : min(k, int(amask[i].sum()))])
        cache.hits, cache.misses = cache.hits + ids.shape[0] - len(miss), cache.misses + len(miss)
        out = torch.zeros(ids.shape[0], k, cache.vocab, device=ids.device)
        for i, r in enumerate(rows):
            out[i, : r.shape[0]] = r.to(out.device)
        return out

    def model_terms(self, n: str, z: torch.Tensor, batch: dict, counts: L.Counts,
                    teacher: Teacher | None = None) -> dict[str, torch.Tensor]:
        """LLM ``n``'s unweighted loss terms on the batch (and two detached statistics);
        ``teacher``: :meth:`teacher_targets`."""
        prefix, raw = self.prefix(n, z, batch.get(f"{n}.answer_len"))
        return self.prefix_terms(n, prefix, raw, batch, counts, teacher)

    def prefix_terms(self, n: str, prefix: torch.Tensor, raw: torch.Tensor, batch: dict, counts: L.Counts,
                     teacher: Teacher | None = None) -> dict[str, torch.Tensor]:
        """:meth:`model_terms` from the calibrated prefix on (``latentwire.diagnose`` reads the
        gradients that reach the prefix and the adapter's raw output)."""
        lc, K = self.lcfg, self.lcfg.K
        ans, mask = batch[f"{n}.answer"], batch[f"{n}.answer_mask"]
        layers = list(lc.state_kd_layers) if lc.state_kd_weight > 0 else None
        logits, hidden = self.answer_logits(n, self.head(n, prefix), ans, mask, layers)
        ce = L.token_ce(logits, ans, mask, counts)
        t = {"tf": L.tf_loss(ce), "first": L.first_loss(ce), "kce": L.kce_loss(ce, K)}
        if teacher is not None:
            t_logits, t_hidden = teacher.logits, teacher.hidden
            k = t_logits.shape[1]
            if lc.kd_first_k_weight > 0:
                rows = mask[:, :k] & (t_logits.argmax(-1) == ans[:, :k]) if lc.kd_gate else mask[:, :k]
                t["kd"] = L.kd_loss(logits[:, :k], t_logits, rows, lc.kd_tau, counts, K)
            if layers:
                t["state"] = L.state_loss([h[:, :k] for h in hidden], t_hidden, mask[:, :k], counts, K)
        with torch.no_grad():
            top1 = (logits[:, 0].argmax(-1) == ans[:, 0]).float().mean()
        return {**t, "first_acc": top1, "raw_rms": prefix_rms(raw.detach()).mean()}

    def weighted(self, t: dict[str, torch.Tensor], step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(one LLM's loss: its terms under their weights, the first-token weight used)."""
        lc = self.lcfg
        w_first = L.first_weight(step, self.total_steps, lc)
        if lc.first_token_autoscale:
            w_first = L.autoscale(w_first, t["first"], t["tf"])
        loss = lc.tf_weight * t["tf"] + w_first * t["first"] + lc.k_ce_weight * t["kce"]
        if "kd" in t:
            loss = loss + lc.kd_first_k_weight * t["kd"]
        if "state" in t:
            loss = loss + lc.state_kd_weight * t["state"]
        return loss, torch.as_tensor(w_first, dtype=torch.float32)

    def forward(self, batch: dict, step: int):
        z = self.encoder(batch)
        per: dict[str, dict[str, torch.Tensor]] = {}
        losses = []
        for n in self.names:
            # the global denominators, counted here: a checkpointed forward recomputed in backward
            # must not issue collectives of its own
            counts = L.counts(batch[f"{n}.answer_mask"], self.max_answer + 1)
            teacher = self.teacher_targets(n, batch)
            if self.sequential and torch.is_grad_enabled():  # this model's activations: recomputed in backward
                per[n] = checkpoint(self.model_terms, n, z[n], batch, counts, teacher, use_reentrant=False)
            else:
                per[n] = self.model_terms(n, z[n], batch, counts, teacher)
            loss_n, per[n]["first_weight"] = self.weighted(per[n], step)
            losses.append(loss_n)
            if self.training:
                stats = getattr(self, f"raw_rms_{n}")
                stats += torch.stack([per[n]["raw_rms"].double(), stats.new_ones(())])
        scale_pen = sum((a.scale - 1).pow(2).sum() for a in self.adapters.values())
        loss = torch.stack(losses).mean() + self.lcfg.scale_l2 * scale_pen
        metrics = {"scale_pen": scale_pen.detach()}
        for key in per[self.names[0]]:
            vals = [per[n][key].detach().float() for n in self.names]
            metrics.update({f"{key}/{n}": v for n, v in zip(self.names, vals)})
            metrics[key] = torch.stack(vals).mean()
        return loss, metrics

    def example_batch(self, cfg, device="meta") -> dict:
        """The batch at the configured size, for the estimator: ``max_bytes`` source bytes (or
        MiniLM's 256 tokens), ``max_answer_tokens`` + EOS answer tokens, and KD teacher rows of
        ``max_bytes / 4`` source tokens (about 4 bytes per BPE token of English) + the anchor + the answer."""
        m, B = cfg.model, cfg.training.train_batch_size

        def ids(*shape, dtype=torch.long):
            return torch.empty(*shape, dtype=dtype, device=device)

        if m.encoder_type in ST_ENCODERS:
            batch = {"st_ids": ids(B, 256), "st_mask": ids(B, 256, dtype=torch.bool)}
        else:
            batch = {"bytes": ids(B, m.max_bytes), "bytes_mask": ids(B, m.max_bytes, dtype=torch.bool)}
        batch["index"] = ids(B)
        T = m.max_answer_tokens + 1
        for n in self.names:
            batch.update({f"{n}.answer": ids(B, T), f"{n}.answer_mask": ids(B, T, dtype=torch.bool),
                          f"{n}.answer_len": ids(B)})
            if self.lcfg.kd_first_k_weight > 0 or self.lcfg.state_kd_weight > 0:
                S = m.max_bytes // 4 + len(self.infos[n].anchor_ids) + T
                batch.update({f"{n}.teacher": ids(B, S), f"{n}.teacher_mask": ids(B, S, dtype=torch.bool)})
        return batch

    def count(self, batch: dict) -> BatchCount:
        """Samples, and the LLM positions of the batch (student + teacher, every model)."""
        tokens = 0
        for n in self.names:
            ans = batch[f"{n}.answer_mask"]
            tokens = tokens + ans.shape[0] * (self.M + len(self.infos[n].anchor_ids) + 1) + ans.sum()
            if f"{n}.teacher_mask" in batch:
                tokens = tokens + batch[f"{n}.teacher_mask"].sum()
        return BatchCount(batch["index"].shape[0], tokens)

    def flops_per_token(self) -> float:
        """4 x the mean LLM size per position (forward + backward through activations): exact for
        student positions, twice the teacher's forward-only cost (an upper bound for MFU)."""
        return 4.0 * sum(sum(p.numel() for p in m.parameters()) for m in self.llms.values()) / len(self.llms)

    def compile_units(self) -> list[nn.Module]:
        """The LLMs' decoder layers and the byte encoder's layers (no FSDP units here: DDP only)."""
        return [m for m in self.modules() if type(m).__name__.endswith("DecoderLayer")
                or isinstance(m, nn.TransformerEncoderLayer)]

    def sources_loaded(self) -> None:
        """Each LLM's embedding statistics: the calibration's target RMS, the colorizer's start."""
        for n in self.names:
            rms, mean, std = embedding_stats(self.llms[n].get_input_embeddings().weight)
            self.emb_rms[n] = rms
            color = self.adapters[n].color
            if color is not None:
                with torch.no_grad():
                    color.gamma.copy_(std.clamp_min(1e-6))
                    color.beta.copy_(mean)

    def checkpoint_metadata(self) -> dict:
        out = {"uses_gold_answer_length": self.metadata, "llms": {}}
        for n in self.names:
            total, count = getattr(self, f"raw_rms_{n}").tolist()
            i = self.infos[n]
            out["llms"][n] = {"embed_rms": self.emb_rms[n], "raw_prefix_rms_mean": total / count if count else None,
                              "anchor_text": i.anchor_text, "anchor_ids": list(i.anchor_ids),
                              "bos_after_prefix": i.append_bos, "bos_id": i.bos_id, "eos_id": i.eos_id}
        return out


def kd_cache_root(cfg) -> Path | None:
    """Where the KD teacher's logits are cached (``loss.kd_cache_dir``, null: ``RUN_DIR/kd_cache``);
    None when ``loss.kd_cache`` is off."""
    lc = cfg.loss
    if not lc.kd_cache or lc.kd_first_k_weight <= 0:
        return None
    if lc.kd_cache_dir:
        return Path(lc.kd_cache_dir)
    return Path(cfg.logging.save_dir) / cfg.logging.run_name / "kd_cache"


def build(cfg, sources) -> LatentWireObjective:
    m = cfg.model
    if cfg.training.parallelism.name == "fsdp":
        raise ConfigError("training.parallelism: LatentWire runs under ddp (its trainable part is small; the "
                          "frozen LLMs are replicated), fsdp is not supported")
    llms = {s.name: build_llm(sources, s.name, m.llm_dtype) for s in m.llms}
    tokenizers = {s.name: sources.tokenizer_of(f"llm.{s.name}") for s in m.llms}
    return LatentWireObjective(cfg, sources, tokenizers, llms)


def collator(cfg, sources) -> LatentWireCollator:
    m = cfg.model
    toks = {s.name: sources.tokenizer_of(f"llm.{s.name}") for s in m.llms}
    infos = {s.name: token_info(toks[s.name], m) for s in m.llms}  # generation end ids are not needed here
    st = sources.tokenizer_of("st_model") if m.encoder_type in ST_ENCODERS else None
    return LatentWireCollator(m, cfg.loss, toks, infos, st)


def policy_from_args(args) -> LoadPolicy:
    """The eval CLI's load policy: ``--llm NAME=DIR`` names where each LLM is on this machine."""
    paths = {}
    for spec in args.llm:
        name, eq, path = spec.partition("=")
        if not eq:
            raise ValueError(f"--llm: expected NAME=DIR, got {spec!r}")
        paths[f"llm.{name}"] = path
    return LoadPolicy(trust_remote_code=args.trust_remote_code, local_files_only=not args.allow_download,
                      paths=paths, allow_source_change=getattr(args, "allow_source_change", False))


# the means over the LLMs (per LLM: tf/NAME ...); the eval CLI's EM / F1 are in its own report
METRICS = {"loss": ("loss", "tf", "kd", "kce", "state"), "first token": ("first", "first_acc"),
           "prefix": ("raw_rms", "scale_pen")}
register("latentwire", LatentWireRunConfig, build, CONFIGS, collator=collator, records=QA_FIELDS,
         sources=llm_sources, metrics=METRICS, clis=("python latentwire/eval.py",))
