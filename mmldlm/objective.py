"""The objective contract and the registry of families.

Every family's objective subclasses :class:`Objective` (an ``nn.Module``): ``forward(batch, step)
-> (loss, metrics)`` is required, the hooks below are optional and have working defaults, so the
loop calls them directly instead of probing with ``getattr``. A family registers its objective by
name with its config schema and factory (``register``); a checkpoint records that name, so any
CLI can rebuild any run (``lookup``). Families are found through the ``mmldlm.objectives`` entry
point group of the installed package: the framework imports no family by name.

Three hooks live on the registry entry rather than the instance, because they run before the
objective exists (the data is checked before anything expensive is built): ``collator(cfg,
sources)``, a family's own collate; ``records``, the extra record fields it needs; and
``sources(cfg)``, its external inputs (:mod:`mmldlm.sources`). ``build(cfg, sources)`` makes the
architecture only (no file I/O: pretrained parts come empty from ``sources.model``); the
framework loads their weights once the objective is wrapped, then calls ``sources_loaded()``.
The entry also declares ``metrics``, the groups of metrics worth drawing (``mmldlm.plot`` reads
them for any run from its recorded objective name; the console's eval line shows them).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

from mmldlm.data.records import RecordFields

ENTRY_POINT_GROUP = "mmldlm.objectives"

# The metrics worth drawing, by panel: title -> metric keys drawn together (training as lines, eval
# as dots; a key the run did not log is left out). Their order is also the console's eval line.
MetricGroups = dict[str, tuple[str, ...]]
DEFAULT_METRICS: MetricGroups = {"loss": ("loss",)}


class BatchCount(NamedTuple):
    samples: int | torch.Tensor
    tokens: int | torch.Tensor  # what throughput and MFU count


class Objective(nn.Module):
    """Base class of every objective. All ranks take the same branch at the same step."""

    def forward(self, batch: dict, step: int) -> tuple[torch.Tensor, dict[str, Any]]:
        """``(loss, metrics)``; metrics are numbers (0-d tensors or floats), rank-averaged by the loop."""
        raise NotImplementedError

    def count(self, batch: dict) -> BatchCount:
        """Samples and tokens in a batch, for throughput. The default reads the core batch
        (``input_ids`` / ``attention_mask``); a family with its own batch schema overrides it."""
        ids = batch["input_ids"]
        mask = batch.get("attention_mask")
        return BatchCount(ids.shape[0], mask.sum() if mask is not None else ids.numel())

    def flops_per_token(self) -> float | None:
        """Model FLOPs per counted token for MFU; None = 6 x trainable + 2 x frozen parameters."""
        return None

    def checkpoint_metadata(self) -> dict:
        """What a checkpoint records besides weights and sources (e.g. what the run derived from them)."""
        return {}

    def export_artifacts(self, out: Path, sources: dict[str, dict]) -> list[str]:
        """Write what this family adds to an export into directory ``out`` (e.g. a trained
        backbone as a stock model directory); ``sources``: the records of the sources it was
        rebuilt from (their ``path``). Returns the names written."""
        return []

    def sources_loaded(self) -> None:
        """Called once the pretrained weights of its sources are in place (after wrapping): compute
        what depends on them (e.g. the backbone's embedding RMS)."""

    def eval_extra(self, batch: dict, index: int) -> dict:
        """More eval metrics on eval batch ``index`` (e.g. sampled round trips)."""
        return {}

    def shard_units(self) -> list[nn.Module]:
        """The submodules FSDP shards one by one (transformer blocks); the root is sharded last."""
        return []

    def compile_units(self) -> list[nn.Module]:
        """The blocks ``training.compile_model`` compiles one by one (``mmldlm.train.compile``). The
        default: the shard units that hold no other unit (the transformer blocks), embeddings
        aside. Empty: the objective is compiled whole."""
        units, leaves = self.shard_units(), []
        for u in units:
            inside = {id(m) for m in u.modules() if m is not u}
            if not isinstance(u, nn.Embedding) and not any(id(o) in inside for o in units):
                leaves.append(u)
        return leaves

    nelbo_needs_t = True  # False: nelbo() is exact without a noise level (AR), scored once

    def nelbo(self, batch: dict, t: torch.Tensor | None, k: int):
        """The likelihood bound of each sequence at noise levels ``t [B]`` (grid point ``k``, which
        keys the masks so that two evaluations agree), as ``mmldlm.eval.likelihood.Nelbo`` (for the
        validation NELBO of the loss CLI)."""
        raise NotImplementedError(f"{type(self).__name__} defines no nelbo()")

    def example_batch(self, cfg, device="meta") -> dict:
        """A training batch's tensors at the configured size (values unset), for the estimator: the
        core schema (``training.train_batch_size`` x ``data.max_seq_len`` ids and mask, the latent
        when records carry one). A family with its own batch schema overrides it."""
        B, L = cfg.training.train_batch_size, cfg.data.max_seq_len
        batch = {"input_ids": torch.empty(B, L, dtype=torch.long, device=device),
                 "attention_mask": torch.empty(B, L, dtype=torch.bool, device=device),
                 "index": torch.empty(B, dtype=torch.long, device=device)}
        if cfg.data.get("latent_dim") is not None:
            batch["latent"] = torch.empty(B, cfg.data.latent_dim, device=device)
        return batch

    def generate(self, **kwargs) -> Any:
        """Samples for the generate CLI."""
        raise NotImplementedError(f"{type(self).__name__} defines no generate()")

    def sampler_name(self, requested: str) -> str:
        """The sampler that ``generate`` / ``complete`` run for the ``requested`` one, as outputs record it."""
        return requested

    # -- lm-evaluation-harness (mmldlm.eval.harness_lm); nelbo_needs_t says exact (False) or a bound

    def conditional_nelbo(self, batch: dict, t: torch.Tensor | None, k: int):
        """The likelihood of each row's target tokens given its other real tokens, as
        ``mmldlm.eval.likelihood.Nelbo``: ``batch`` is ``input_ids``, ``attention_mask``,
        ``target_mask [B, L] bool`` (the continuation, a subset of the real tokens) and ``index``
        (keys the noise). The context (real, not target) is never noised. Exact models
        (``nelbo_needs_t = False``, ``t`` None) give -log p and report ``extra["greedy"]`` ([B], 1.0
        where every target token is the argmax); diffusion models give the NELBO at noise levels
        ``t [B]`` with noise keyed by grid point ``k``, (record, position), as :meth:`nelbo`."""
        raise NotImplementedError(f"{type(self).__name__} scores no continuation given a context, so the "
                                  "lm-eval harness cannot evaluate it")

    def conditional_greedy(self, batch: dict) -> torch.Tensor:
        """``[B]`` bool, for models that give a bound: every target token is the argmax of the model's
        prediction with the whole target hidden (a diffusion model's one-step greedy decode)."""
        raise NotImplementedError(f"{type(self).__name__} defines no greedy check of a continuation")

    def complete(self, context: torch.Tensor, length: int, *, steps: int, temperature: float = 0.0,
                 generator: torch.Generator | None = None, stop=None) -> torch.Tensor:
        """``length`` token ids ``[1, length]`` continuing ``context [1, P]``, drawn by the family's own
        sampler (``steps``: diffusion steps). ``stop(ids drawn so far [1, n]) -> [1] bool``: a
        left-to-right sampler may end early once it holds (the caller cuts the text at its stop
        sequences anyway, so a sampler that draws every position at once ignores it)."""
        raise NotImplementedError(f"{type(self).__name__} generates no continuation of a context")


@dataclass(frozen=True)
class Entry:
    name: str
    schema: type
    build: Callable[[Any, Any], Objective]  # (cfg, mmldlm.sources.Sources) -> objective, architecture only
    config_dir: Path  # the family's Hydra configs
    collator: Callable[[Any, Any], Callable] | None = None  # (cfg, sources) -> collate(items) -> Collated
    records: RecordFields = field(default_factory=RecordFields)
    sources: Callable[[Any], list] | None = None  # cfg -> [mmldlm.sources.Source]; the tokenizer is implied
    metrics: MetricGroups = field(default_factory=lambda: dict(DEFAULT_METRICS))  # plots + the eval line
    # the commands that read this objective's runs (a CLI handed another family's checkpoint names them)
    clis: tuple[str, ...] = ()


_REGISTRY: dict[str, Entry] = {}


def register(name: str, schema: type, build: Callable, config_dir: str | Path, *,
             collator: Callable | None = None, records: RecordFields | None = None,
             sources: Callable | None = None, metrics: MetricGroups | None = None,
             clis: tuple[str, ...] = ()) -> None:
    """Make a family's objective known by ``name`` (its schema's ``objective`` default);
    ``metrics``: what its runs' plots draw and its eval line shows (default: the loss); ``clis``: the
    commands that read its runs."""
    _REGISTRY[name] = Entry(name, schema, build, Path(config_dir), collator, records or RecordFields(), sources,
                            dict(metrics or DEFAULT_METRICS), tuple(clis))


def readers(name: str | None) -> str:
    """Which commands read runs of objective ``name``, as a clause for an error message."""
    try:
        clis = lookup(name).clis if name else ()
    except KeyError:
        return f"no installed family registers objective {name!r}"
    return f"read it with {' or '.join(clis)}" if clis else "no command of this repository evaluates it"


def load_families() -> None:
    """Import every installed family (the ``mmldlm.objectives`` entry points); each registers itself."""
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name not in _REGISTRY:
            ep.load()


def lookup(name: str) -> Entry:
    if name not in _REGISTRY:
        load_families()
    if name not in _REGISTRY:
        known = ", ".join(sorted(_REGISTRY)) or "none"
        raise KeyError(f"no objective {name!r} is registered (known: {known}); is the package installed "
                       "(pip install -e .)?")
    return _REGISTRY[name]


def registered() -> dict[str, Entry]:
    load_families()
    return dict(_REGISTRY)
