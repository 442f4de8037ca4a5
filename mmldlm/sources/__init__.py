"""External inputs of a run (pretrained backbones, tokenizers, frozen LLMs, encoders, codebooks,
cluster tables): declared by families, resolved, trusted, fingerprinted and loaded here only.

A family declares its sources from its config (``register(..., sources=fn)``, ``fn(cfg) ->
[Source, ...]``); the run's tokenizer (``data.tokenizer_name``) is declared for every family.
:func:`open_sources` resolves them all (:mod:`.resolve`: the named path, a hub-layout directory,
the hub cache, the hub when allowed), decides which may run their own code, and loads the
tokenizer. The family's ``build(cfg, sources)`` then makes the architecture only: a pretrained
model comes from :meth:`Sources.model`, empty (meta parameters), so building reads no weights
and is safe on the meta device (the estimator builds every family this way, loading nothing).
The loop (and every CLI through the rebuild) wraps the objective and then calls
:meth:`Sources.load`, which fills those models from their files (:mod:`.weights`).

Trust: ``trust_remote_code`` covers only sources whose path was named on this command line (the
training config, or a CLI's ``--backbone-dir`` / ``--llm`` / ``--source``); a path that a
checkpoint or a saved config names is loaded with trust off, and refused if it needs code.
Identity: each source's fingerprint (:mod:`.fingerprint`) goes into checkpoints and exports;
resume and eval refuse a changed one unless told to accept it.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from torch import nn

from mmldlm.sources import fingerprint as F
from mmldlm.sources.resolve import Kind, Resolved, Source, SourceError, looks_local, resolve
from mmldlm.sources.weights import LoadReport, canonical, empty, load_into, materialize, retie

__all__ = ["Kind", "LoadPolicy", "Resolved", "Source", "SourceChangedError", "SourceError", "Sources",
           "check_unchanged", "looks_local", "open_sources"]

log = logging.getLogger("mm_ldlm.sources")

TOKENIZER = "tokenizer"


class SourceChangedError(SourceError):
    """A source differs from the one a checkpoint was trained with."""


@dataclass
class LoadPolicy:
    """What the person running a CLI allows, from their own command line: never from a file.

    ``paths``: source name -> a path they named (``--backbone-dir`` is ``{"backbone": DIR}``,
    ``--llm qwen=DIR`` is ``{"llm.qwen": DIR}``); a source that was saved with the same path as a
    renamed one follows it (the bridge's tokenizer, kept in its backbone's directory).
    ``trust_remote_code`` applies to those named paths only."""

    trust_remote_code: bool = False
    local_files_only: bool = True
    paths: dict[str, str] = field(default_factory=dict)
    allow_source_change: bool = False


@dataclass
class _Model:
    name: str
    module: nn.Module
    meta_names: list[str]


class Sources:
    """The resolved sources of one run: what a family's ``build(cfg, sources)`` reads."""

    def __init__(self, resolved: dict[str, Resolved], shapes_only: bool):
        self.resolved = resolved
        self.shapes_only = shapes_only
        self._tokenizers: dict[str, object] = {}
        self._models: list[_Model] = []

    @classmethod
    def of_tokenizer(cls, tokenizer) -> Sources:
        """Sources holding only an already-loaded tokenizer: what a family without other sources
        needs, for in-process uses (tests, benchmarks) that build an objective directly."""
        sources = cls({}, shapes_only=False)
        sources._tokenizers[TOKENIZER] = tokenizer
        return sources

    # -- what build() asks for -------------------------------------------------------------
    @property
    def tokenizer(self):
        """The run's tokenizer (``data.tokenizer_name``)."""
        return self.tokenizer_of(TOKENIZER)

    def path(self, name: str) -> Path | None:
        """Where a source is (None: not on this machine, only while estimating; or not needed: a
        source the checkpoint being rebuilt carries)."""
        r = self.resolved.get(name)
        return r.path if r is not None else None

    def raw_config(self, name: str) -> dict:
        """A model source's ``config.json`` as read (while estimating without it: its shape's values,
        with ``model_type``)."""
        import json

        r = self.resolved[name]
        if r.path is not None:
            return json.loads((r.path / "config.json").read_text())
        if r.source.shape is None:
            raise SourceError(f"{r.source.key}: {r.source.path!r} is not on this machine, and no shape is known for "
                              "an estimate without it: point it at a local directory (its config.json is enough)")
        model_type, values = r.source.shape
        return {"model_type": model_type, **values}

    def hf_config(self, name: str):
        """A model source's transformers config (``AutoConfig``; its own code only when trusted)."""
        from transformers import AutoConfig

        r = self.resolved[name]
        if r.path is None:
            raw = self.raw_config(name)
            return AutoConfig.for_model(raw.pop("model_type"), **raw)
        return self._guard(r, lambda: AutoConfig.from_pretrained(str(r.path), trust_remote_code=r.trusted))

    def model(self, name: str, factory: Callable[[], nn.Module]) -> nn.Module:
        """``factory()`` (the architecture of source ``name``, e.g. ``cls(config)``) with its
        parameters on the meta device; :meth:`load` fills them from the source's weights later."""
        module = empty(factory)
        self._models.append(_Model(name, module, [n for n, t in _tensors(module) if t.is_meta]))  # stock names
        path = self.resolved[name].path
        if path is not None and (path / "generation_config.json").is_file() and hasattr(module, "generation_config"):
            from transformers import GenerationConfig  # its end ids, as from_pretrained reads them

            module.generation_config = GenerationConfig.from_pretrained(str(path))
        return module

    def tokenizer_of(self, name: str):
        """The tokenizer in source ``name``'s directory (a model's, or a tokenizer source's);
        while estimating without it, a stand-in of its sizes."""
        if name not in self._tokenizers:
            self._tokenizers[name] = self._load_tokenizer(self.resolved[name])
        return self._tokenizers[name]

    def _load_tokenizer(self, r: Resolved):
        from mmldlm.data.tokenizer import load_tokenizer

        if r.path is None:
            from mmldlm.estimate.shapes import stand_in

            return stand_in(str(r.source.path))
        return self._guard(r, lambda: load_tokenizer(str(r.path), r.trusted, True, key=r.source.key))

    def _guard(self, r: Resolved, load):
        """``load()``, with a refusal of code the user did not allow said in one line."""
        try:
            return load()
        except (ValueError, OSError) as e:
            if "trust_remote_code" not in str(e) and "custom code" not in str(e):
                raise
            raise SourceError(code_refusal(r)) from None

    # -- after build: weights, identity ------------------------------------------------------
    def load(self, objective: nn.Module, device) -> dict[str, LoadReport]:
        """Fill every model :meth:`model` built from its source's weights (on ``device``; under
        FSDP each rank its own shards), then let the objective compute what depends on them
        (``sources_loaded``). Anything else left on the meta device is a family's bug: refused."""
        fills = {id(t) for m in self._models for n, t in _tensors(m.module) if canonical(n) in m.meta_names}
        stray = [n for n, t in _tensors(objective) if t.is_meta and id(t) not in fills]
        if stray:
            raise RuntimeError(f"{type(objective).__name__}: {', '.join(stray[:4])} are on the meta device but no "
                               "source fills them (build must make everything but its sources' weights for real)")
        materialize(objective, device)
        reports = self.load_models(device)
        objective.sources_loaded()
        return reports

    def load_models(self, device="cpu") -> dict[str, LoadReport]:
        """Fill the models :meth:`model` built (each materialized on ``device`` first, unless it
        was as part of an objective): a pretrained model on its own, as training loads it."""
        reports = {}
        for m in self._models:
            r = self.resolved[m.name]
            if r.path is None:
                raise SourceError(f"{r.source.key}: {r.source.path!r} is not on this machine")
            materialize(m.module, device)
            reports[m.name] = load_into(m.module, r.path, f"{r.source.key} ({m.name})", set(m.meta_names))
            retie(m.module)
        return reports

    def random_init(self, std: float = 0.02) -> None:
        """Random weights instead of a source's (benchmarks at real size without the checkpoint)."""
        import torch

        for m in self._models:
            with torch.no_grad():
                for n, t in _tensors(m.module):
                    if canonical(n) in m.meta_names and t.is_floating_point():
                        t.normal_(0.0, std)

    def records(self) -> dict[str, dict]:
        """Name -> {key, kind, path, how, fingerprint, parts} of every source found here."""
        return {n: F.record(r) for n, r in self.resolved.items() if r.path is not None}


def _tensors(module: nn.Module):
    return [*module.named_parameters(), *module.named_buffers()]


def code_refusal(r: Resolved) -> str:
    s = r.source
    option = (s.option or f"--source {s.name}={{path}}").format(path=r.path)
    if r.named_by not in ("the config", "the command line"):
        return (f"{s.key}: {r.path} needs its own Python code (trust_remote_code), and it was named by "
                f"{r.named_by}, not by you: code runs only for directories named on this command line. If you "
                f"trust it, name it yourself: {option} --trust-remote-code (eval CLIs: "
                f"source.{s.name}={r.path} trust_remote_code=true)")
    return (f"{s.key}: {r.path} needs its own Python code (trust_remote_code). If you trust that directory's "
            "code, allow it on the command line (--trust-remote-code; Hydra configs: the family's "
            "trust_remote_code key)")


def declared(cfg, entry) -> list[Source]:
    """Every source of a run: the family's, and the run's tokenizer (unless the family declares it)."""
    own = list(entry.sources(cfg)) if entry.sources else []
    if not any(s.name == TOKENIZER for s in own):
        name = str(cfg.data.tokenizer_name)
        same = next((s for s in own if _same_path(s.path, name)), None)  # the tokenizer of a model directory
        own.append(Source(TOKENIZER, Kind.tokenizer, "data.tokenizer_name", name,
                          trust_remote_code=bool(same and same.trust_remote_code),
                          local_files_only=same.local_files_only if same else True))
    return own


def _renamed(sources: list[Source], policy: LoadPolicy) -> dict[str, str]:
    """Source name -> the path the user named; a source saved under a renamed source's old path
    follows it."""
    unknown = sorted(set(policy.paths) - {s.name for s in sources})
    if unknown:
        known = ", ".join(s.name for s in sources)
        raise SourceError(f"--source {unknown[0]}: this run has no source of that name (its sources: {known})")
    out = dict(policy.paths)
    for s in sources:
        follows = next((r for r in sources if r.name in policy.paths and _same_path(r.path, s.path)), None)
        if s.name not in out and follows is not None:
            out[s.name] = policy.paths[follows.name]
    return out


def _same_path(a: str | None, b: str | None) -> bool:
    if not a or not b:
        return False
    norm = (lambda p: os.path.abspath(os.path.expanduser(p))) if looks_local(a) or looks_local(b) else str
    return norm(a) == norm(b)


def open_sources(cfg, entry, policy: LoadPolicy | None = None, saved_by: str | None = None,
                 shapes_only: bool = False, inside: dict[str, str] | None = None) -> Sources:
    """Resolve every source of ``cfg``. Training: ``policy`` None, everything was named by the
    user's config. Rebuilding from a checkpoint or export (``saved_by`` names it): paths the
    ``policy`` names replace the saved ones and may run code if allowed; the rest load with
    trust off, from ``inside`` (name -> path: the copies an export holds) or their saved paths;
    sources the checkpoint carries are not needed. ``shapes_only``: the estimator."""
    sources = declared(cfg, entry)
    renamed = _renamed(sources, policy) if policy else {}
    resolved = {}
    for s in sources:
        named_by = "the config"
        if policy is not None:
            named_by = "the command line" if s.name in renamed else (saved_by or "a saved config")
            if s.carried and s.name not in renamed:
                continue
            path = renamed.get(s.name, (inside or {}).get(s.name, s.path))
            s = replace(s, path=path, local_files_only=policy.local_files_only,
                        prefetch_into=None, trust_remote_code=policy.trust_remote_code and s.name in renamed)
        try:
            r = resolve(s, shapes_only)
        except SourceError as e:
            if policy is None or s.name in renamed:
                raise
            option = (s.option or f"--source {s.name}={{path}}").format(path="DIR")
            raise SourceError(f"{e} (this path was recorded by {named_by}). Or name where it is on this machine: "
                              f"{option} (eval CLIs: source.{s.name}=DIR)") from None
        r.named_by, r.trusted = named_by, s.trust_remote_code
        resolved[s.name] = r
    return Sources(resolved, shapes_only)


def check_unchanged(saved: dict | None, now: dict[str, dict], allow: bool, where: str, override: str) -> list[str]:
    """Compare the sources a checkpoint recorded with those found now. A changed one raises
    :class:`SourceChangedError` (one line: which source, what changed, the override), or with
    ``allow`` is returned for a warning. A checkpoint without records (older) is not checked."""
    if not saved:
        return []
    notes = []
    for name, rec in saved.items():
        cur = now.get(name)
        if cur is None or rec.get("fingerprint") in (None, cur.get("fingerprint")):
            continue
        parts = F.changed_parts(rec, cur)
        what = (f"source {name} ({rec.get('key')}) changed since {where}: {rec.get('path')} -> {cur.get('path')}, "
                f"fingerprint {rec['fingerprint']} -> {cur['fingerprint']}"
                + (f" ({', '.join(parts[:4])} differ)" if parts else ""))
        if not allow:
            raise SourceChangedError(f"{what}. Restore it, or accept the change with {override}")
        notes.append(what)
    return notes


def is_local_path(name: str) -> bool:
    return looks_local(name) or Path(name).expanduser().exists()


def build_loaded(cfg, device="cpu"):
    """``cfg``'s objective built and its sources' weights loaded, unwrapped: the loop's steps
    without the loop, for in-process uses (tests, benchmarks)."""
    from mmldlm.objective import lookup
    from mmldlm.sources.weights import place

    entry = lookup(cfg.objective)
    sources = open_sources(cfg, entry)
    obj = entry.build(cfg, sources)
    place(obj, device)
    sources.load(obj, device)
    return obj
