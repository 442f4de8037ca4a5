"""Typed configuration shared by every entrypoint.

The dataclasses below are the one source of every default; a family's YAML states only what its
recipe changes (and the ``data`` group's interpolations). Each family subclasses
:class:`RunConfig` with its own ``model`` / ``loss`` (and, where needed, ``training``) sections,
sets ``objective`` to its registered name, and registers the schema (``mmldlm.objective``).
Composition merges the YAML into the schema, so an unknown key or a value of the wrong type fails
before any work starts, naming the key (with a suggestion for a near miss); range and
cross-field checks are each section's ``check()``, run by :func:`validate` on the typed object.
:func:`compose` gives the same validated config to tests, benches and the estimator without
Hydra's command line; :func:`hydra_main` is the body of every training entrypoint.
"""
from __future__ import annotations

import dataclasses
import difflib
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from mmldlm.sweep import prepare_job, sweep_args


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the key and what to do."""


class Dtype(Enum):
    fp32 = "fp32"
    bf16 = "bf16"


class LRSchedule(Enum):
    cosine = "cosine"
    linear = "linear"
    constant = "constant"


class Padding(Enum):
    dynamic = "dynamic"  # longest in batch, capped at data.max_seq_len
    max_length = "max_length"  # always data.max_seq_len


class OnBadRecord(Enum):
    error = "error"
    skip = "skip"


class OptimizerName(Enum):
    adamw = "adamw"
    adamw_8bit = "adamw_8bit"
    paged_adamw_8bit = "paged_adamw_8bit"


class Parallelism(Enum):
    ddp = "ddp"  # replicated weights, all-reduced gradients
    fsdp = "fsdp"  # FSDP2 fully_shard over the objective's shard units; sharded checkpoints (DCP)


# Field metadata for paths. Saved configs (config.yaml, checkpoints) hold absolute paths, so a run
# can be sampled or resumed from any working directory: PATH is always made absolute;
# PATH_OR_NAME (a hub name or a local path) only when it exists on disk.
PATH = {"path": "always"}
PATH_OR_NAME = {"path": "if_exists"}


def _require(cond: bool, key: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"{key}: {msg}")


def require_min(section: str, obj, **lows) -> None:
    """ConfigError naming the first of ``obj``'s keys below its lower bound (None passes)."""
    for key, low in lows.items():
        v = getattr(obj, key)
        _require(v is None or v >= low, f"{section}.{key}", f"must be >= {low}, got {v}")


def require_positive(section: str, obj, *keys: str) -> None:
    """ConfigError naming the first of ``obj``'s keys that is not > 0 (None passes)."""
    for key in keys:
        v = getattr(obj, key)
        _require(v is None or v > 0, f"{section}.{key}", f"must be > 0, got {v}")


def require_fraction(section: str, obj, *keys: str) -> None:
    """ConfigError naming the first of ``obj``'s keys outside [0, 1) (a dropout, a probability)."""
    for key in keys:
        v = getattr(obj, key)
        _require(0 <= v < 1, f"{section}.{key}", f"must be in [0, 1), got {v}")


@dataclass
class TrainingConfig:
    seed: int = 42
    train_batch_size: int = 32  # per rank and micro-step; global = this x world x accumulation
    eval_batch_size: int = 32
    num_train_steps: int = 1000
    # the run's length in passes over the training records instead (null: num_train_steps counts;
    # fractions allowed): the loop sets num_train_steps = round(epochs x (training records // global
    # batch)), at least 1, from the record index it builds
    num_train_epochs: Optional[float] = None
    dtype: Dtype = Dtype.bf16  # bf16 = autocast with fp32 master weights
    compile_model: bool = False
    lr_schedule: LRSchedule = LRSchedule.cosine
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0  # final lr of cosine/linear decay, as a fraction of optimizer.lr
    gradient_accumulation_steps: int = 1
    resume: Optional[str] = field(default=None, metadata=PATH)  # null | auto | a checkpoint_step_N(.pt)
    # a previous run's checkpoint (or run dir): every trainable tensor of it whose name and shape
    # exist here; optimizer and schedule start fresh (staged training). A resumed run's own wins.
    init_from: Optional[str] = field(default=None, metadata=PATH)
    parallelism: Parallelism = Parallelism.ddp
    # a training file whose record table changed since the checkpoint is an error on resume; true
    # continues anyway (the data stream then differs from the uninterrupted run), with a warning
    allow_data_change: bool = False
    # a source (backbone, tokenizer, frozen LLM, codebook ...) whose fingerprint changed since the
    # checkpoint is an error on resume; true continues with the new one, with a warning
    allow_source_change: bool = False
    device: str = "auto"  # auto | cpu | cuda
    ddp_find_unused_parameters: bool = False
    peak_tflops: Optional[float] = None  # per device, for MFU; null = known GPUs only
    # decay of an exponential moving average of the trainable weights (MDLM: 0.9999); eval runs on
    # it, checkpoints carry it (in the optimizer state, so resume is exact under DDP and FSDP); 0 = off
    ema: float = 0.0

    def check(self) -> None:
        for key in ("train_batch_size", "eval_batch_size", "num_train_steps",
                    "gradient_accumulation_steps"):
            _require(getattr(self, key) >= 1, f"training.{key}", f"must be >= 1, got {getattr(self, key)}")
        _require(self.warmup_steps >= 0, "training.warmup_steps", "must be >= 0")
        _require(self.num_train_epochs is None or self.num_train_epochs > 0, "training.num_train_epochs",
                 f"must be null or > 0, got {self.num_train_epochs}")
        _require(self.seed >= 0, "training.seed", f"must be >= 0, got {self.seed}")  # it keys the data order
        require_positive("training", self, "peak_tflops")
        _require(0.0 <= self.min_lr_ratio <= 1.0, "training.min_lr_ratio", "must be in [0, 1]")
        _require(0.0 <= self.ema < 1.0, "training.ema", f"must be in [0, 1) (0 = off), got {self.ema}")
        _require(self.device in ("auto", "cpu", "cuda"), "training.device",
                 f"must be auto, cpu or cuda, got {self.device!r}")
        if self.resume is not None and self.resume != "auto":
            _require(Path(self.resume).exists(), "training.resume",
                     f"checkpoint {self.resume!r} does not exist (use auto, null or a checkpoint path)")
        if self.init_from is not None:
            _require(Path(self.init_from).exists(), "training.init_from", f"{self.init_from!r} does not exist")


@dataclass
class OptimizerConfig:
    lr: float = 3e-4
    # 0.01: torch's AdamW default, and what every shipped recipe ran with (the YAML group used to
    # say 0.01 while this said 0.0, so in-process tests ran with other settings than users)
    weight_decay: float = 0.01
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    grad_clip_norm: float = 1.0  # <= 0 disables clipping (the norm is still logged)
    # adamw: torch's AdamW; adamw_8bit / paged_adamw_8bit: bitsandbytes' 8-bit AdamW (QLoRA's
    # optimizer; on CPU the paged one falls back to the non-paged one, with bitsandbytes' warning)
    name: OptimizerName = OptimizerName.adamw

    def check(self) -> None:
        _require(self.lr > 0, "optimizer.lr", f"must be > 0, got {self.lr}")
        _require(self.weight_decay >= 0, "optimizer.weight_decay", "must be >= 0")
        _require(0 <= self.beta1 < 1, "optimizer.beta1", f"must be in [0, 1), got {self.beta1}")
        _require(0 <= self.beta2 < 1, "optimizer.beta2", f"must be in [0, 1), got {self.beta2}")
        _require(self.eps > 0, "optimizer.eps", "must be > 0")


@dataclass
class LoggingConfig:
    run_name: str = "run"
    save_dir: str = field(default="outputs", metadata=PATH)
    log_freq: int = 10
    eval_freq: int = 500  # 0 disables periodic eval (the last step still evaluates when there is a validation set)
    save_freq: int = 1000  # 0 disables periodic checkpoints (final and preemption ones still happen)
    keep_last: int = 3
    num_eval_batches: int = 10  # 0 = the whole validation set
    progress_bar: bool = True
    use_wandb: bool = False
    wandb_project: str = "mm-ldlm"
    wandb_entity: Optional[str] = None
    wandb_dir: Optional[str] = field(default=None, metadata=PATH)

    def check(self) -> None:
        _require(self.log_freq >= 1, "logging.log_freq", "must be >= 1")
        for key in ("eval_freq", "save_freq", "num_eval_batches"):
            _require(getattr(self, key) >= 0, f"logging.{key}", "must be >= 0")
        _require(self.keep_last >= 1, "logging.keep_last", "must be >= 1")
        _require(bool(self.run_name) and "/" not in self.run_name, "logging.run_name",
                 f"must be a non-empty name without '/', got {self.run_name!r}")


@dataclass
class DataFilesConfig:
    train: Optional[str] = field(default=None, metadata=PATH)
    validation: Optional[str] = field(default=None, metadata=PATH)


@dataclass
class DataConfig:
    # Where the records come from (docs/data.md): null or json = data.data_files, JSON list / JSONL
    # files of records; text = data.data_files are text files, one document per non-empty line; any
    # other name = a hub dataset (or a local directory of data files) read with datasets.load_dataset
    # from data.cache_dir, whose held-out split is its validation (else test) split, or for names
    # containing "openwebtext" its last data.test_size training documents.
    dataset_name: Optional[str] = None
    dataset_subset: Optional[str] = None  # hub datasets: load_dataset's second argument (config name)
    cache_dir: Optional[str] = field(default=None, metadata=PATH)  # hub datasets: null = the datasets default
    test_size: int = 100000  # "openwebtext" names: validation = the last test_size documents of train
    text_field: str = "text"  # hub datasets: the column holding the text
    data_files: DataFilesConfig = field(default_factory=DataFilesConfig)
    latent_data_root: Optional[str] = field(default=None, metadata=PATH)  # base of latent_path; default: the JSON's dir
    # records whose latent_path is absolute or climbs out of the root with '..' are bad records
    allow_paths_outside_root: bool = False
    latent_dim: Optional[int] = 1024  # null: records carry no latent (text-only families)
    tokenizer_name: str = field(default="bert-base-uncased", metadata=PATH_OR_NAME)  # hub name or local path
    # where record indexes go when the data's own directory is not writable (default ~/.cache/mmldlm/index)
    index_cache_dir: Optional[str] = field(default=None, metadata=PATH)
    max_seq_len: int = 512
    padding: Padding = Padding.dynamic
    pad_to_multiple_of: int = 1
    # pack documents (MDLM's OpenWebText protocol): BOS + doc + EOS, the batch's documents concatenated
    # and cut into max_seq_len rows (only the last row padded); training.train_batch_size then counts
    # documents, and padding / pad_to_multiple_of do not apply (every row is max_seq_len long)
    wrap: bool = False
    num_workers: int = 2
    max_samples: Optional[int] = None
    max_val_samples: Optional[int] = None
    val_split_ratio: float = 0.0  # held out from train when there is no validation file
    on_bad_record: OnBadRecord = OnBadRecord.error
    shuffle: bool = True

    def check(self) -> None:
        name, files = self.dataset_name, self.data_files
        _require(name is None or bool(name.strip()), "data.dataset_name", "must be null, json, text or a dataset name")
        if name not in (None, "json", "text"):  # a hub dataset: the one source of data
            for key, value in (("train", files.train), ("validation", files.validation)):
                _require(value is None, f"data.data_files.{key}",
                         f"must be null when data.dataset_name names a hub dataset ({name!r}): one source of data "
                         "(data.dataset_name json | text reads data.data_files instead)")
            _require(self.val_split_ratio == 0, "data.val_split_ratio",
                     f"must be 0 with a hub dataset ({name!r}): its own held-out split is used (its validation or "
                     "test split; for openwebtext, its last data.test_size documents)")
            _require(self.latent_dim is None, "data.latent_dim",
                     f"must be null with a hub dataset ({name!r}): its records carry no latents")
            _require(bool(self.text_field), "data.text_field", "must name the column that holds the text")
        else:
            _require(files.train is not None, "data.data_files.train",
                     "is required: the path of a JSON/JSONL file of {text, latent_path} records (or of a text file "
                     "with data.dataset_name=text), unless data.dataset_name names a hub dataset")
            for key, default in (("dataset_subset", None), ("cache_dir", None), ("text_field", "text")):
                _require(getattr(self, key) == default, f"data.{key}",
                         f"is read only with a hub dataset (data.dataset_name), not with data.dataset_name={name}; "
                         f"leave it {'null' if default is None else repr(default)}")
            if name == "text":
                _require(self.latent_dim is None, "data.latent_dim",
                         "must be null with data.dataset_name=text: a text file's documents carry no latents")
            for key, value in (("train", files.train), ("validation", files.validation)):
                _require(name is not None or not (value or "").endswith(".txt"), f"data.data_files.{key}",
                         f"{value} is a .txt file: set data.dataset_name=text to read it as one document per "
                         "non-empty line (data.dataset_name=json reads it as JSON / JSONL)")
        _require(self.test_size >= 1, "data.test_size", f"must be >= 1, got {self.test_size}")
        _require(not self.wrap or self.latent_dim is None, "data.wrap",
                 "packs documents across rows, so records cannot bring latents: set data.latent_dim=null "
                 "(or data.wrap=false)")
        _require(self.latent_dim is None or self.latent_dim >= 1, "data.latent_dim", "must be null or >= 1")
        _require(self.max_seq_len >= 2, "data.max_seq_len", "must be >= 2")
        _require(self.pad_to_multiple_of >= 1, "data.pad_to_multiple_of", "must be >= 1")
        _require(self.num_workers >= 0, "data.num_workers", "must be >= 0")
        _require(0.0 <= self.val_split_ratio < 1.0, "data.val_split_ratio", "must be in [0, 1)")
        _require(not (files.validation and self.val_split_ratio > 0),
                 "data.val_split_ratio", "set it or data.data_files.validation, not both")
        for key in ("max_samples", "max_val_samples"):
            v = getattr(self, key)
            _require(v is None or v >= 1, f"data.{key}", f"must be null or >= 1, got {v}")


@dataclass
class RunConfig:
    """The sections every entrypoint has. Subclasses add their own ``model`` (and ``loss``,
    ``sample`` ...) sections and set ``objective`` (the registered name; checkpoints record it)."""

    objective: str = ""
    training: TrainingConfig = field(default_factory=TrainingConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    data: DataConfig = field(default_factory=DataConfig)

    def check(self) -> None:
        model_len = getattr(getattr(self, "model", None), "max_seq_len", None)
        _require(model_len is None or self.data.max_seq_len <= model_len, "data.max_seq_len",
                 f"{self.data.max_seq_len} exceeds model.max_seq_len ({model_len}): batches that long would "
                 "index past the model's positions; lower data.max_seq_len or raise model.max_seq_len")


def _schema_at(schema: type, dotted: str) -> type | None:
    """The dataclass holding the last key of ``dotted`` (``training.foo`` -> TrainingConfig)."""
    node: Any = schema
    for part in dotted.split(".")[:-1]:
        fields = {f.name: f for f in dataclasses.fields(node)} if dataclasses.is_dataclass(node) else {}
        f = fields.get(part)
        if f is None:
            return None
        node = f.default_factory if f.default_factory is not dataclasses.MISSING else f.type
        if not (isinstance(node, type) and dataclasses.is_dataclass(node)):
            return None
    return node if dataclasses.is_dataclass(node) else None


def unknown_override(schema: type, argv: list[str]) -> str | None:
    """The first command-line override ``a.b=v`` whose key the schema does not have, as a
    one-line message with a suggestion, or None. Runs before Hydra, whose own message for this
    case suggests ``+a.b=v`` (which would only fail later)."""
    for arg in argv:
        if arg.startswith("-") or "=" not in arg:
            continue
        key = arg.split("=", 1)[0].lstrip("+~")
        if key.startswith("hydra") or "." not in key:
            continue  # group choices (model=tiny) and top-level keys: Hydra's own checks
        parent = _schema_at(schema, key)
        if parent is None:
            continue  # below a free-form field (a dict, Any): not ours to check
        if key.split(".")[-1] not in {f.name for f in dataclasses.fields(parent)}:
            return f"{key}: no such key in {parent.__name__}{did_you_mean(schema, key)}"
    return None


def no_such_group(schema: type, argv: list[str], dirs: list[Path]) -> str | None:
    """``model=tiny`` where no config directory has a ``model/`` group (the section's keys are set
    one by one): one line that says so, instead of Hydra's error about its defaults list."""
    sections = {f.name: f for f in dataclasses.fields(schema) if dataclasses.is_dataclass(f.default_factory)}
    for arg in argv:
        key, eq, value = arg.partition("=")
        if arg.startswith("-") or not eq or "." in key or "/" in key or key not in sections:
            continue
        if not any((d / key).is_dir() for d in dirs):
            first = dataclasses.fields(sections[key].default_factory)[0].name
            return (f"{arg}: this config has no {key} presets (no {key}/ config group); set its keys one by one, "
                    f"e.g. {key}.{first}=...")
    return None


def did_you_mean(schema: type | None, full_key: str) -> str:
    """" (did you mean training.num_train_steps?)" for a near-miss key, else ""."""
    if schema is None or not full_key:
        return ""
    parent = _schema_at(schema, full_key)
    if parent is None:
        return ""
    leaf = full_key.split(".")[-1]
    close = difflib.get_close_matches(leaf, [f.name for f in dataclasses.fields(parent)], n=1, cutoff=0.6)
    prefix = full_key.rsplit(".", 1)[0] + "." if "." in full_key else ""
    return f" (did you mean {prefix}{close[0]}?)" if close else ""


def absolutize_paths(cfg: DictConfig, schema: type) -> None:
    """Make the path-valued keys of ``cfg`` absolute (see ``PATH`` / ``PATH_OR_NAME``)."""

    def walk(node: DictConfig, cls: type) -> None:
        for f in dataclasses.fields(cls):
            if f.name not in node:
                continue
            sub = f.default_factory if f.default_factory is not dataclasses.MISSING else None
            if isinstance(sub, type) and dataclasses.is_dataclass(sub) and isinstance(node[f.name], DictConfig):
                # the object's own type: a subclass may add path fields
                walk(node[f.name], OmegaConf.get_type(node[f.name]) or sub)
                continue
            how, value = f.metadata.get("path"), node[f.name]
            if not how or not isinstance(value, str) or not value or value == "auto":
                continue
            p = Path(value).expanduser()
            if how == "always" or p.exists():
                node[f.name] = os.path.abspath(p)

    walk(cfg, schema)


def validate(cfg: DictConfig, schema: type | None = None) -> Any:
    """Build the typed object and run every section's ``check()``. Raises ConfigError.

    With ``schema``, keys that Hydra let in with ``+key=value`` are rejected too.
    """
    try:
        if schema is not None:  # a plain copy: Hydra's node flags would let the extra key in
            OmegaConf.merge(OmegaConf.structured(schema), OmegaConf.to_container(cfg, resolve=False))
        obj = OmegaConf.to_object(cfg)
    except OmegaConfBaseException as e:  # an unknown key, an interpolation that does not resolve
        key = getattr(e, "full_key", None)
        msg = str(e).splitlines()[0]
        if key and "not in" in msg:
            msg += did_you_mean(schema, key)
        raise ConfigError(f"{key}: {msg}" if key else msg) from None

    def walk(node: Any) -> None:
        if dataclasses.is_dataclass(node):
            if hasattr(node, "check"):
                node.check()
            for f in dataclasses.fields(node):
                walk(getattr(node, f.name))

    walk(obj)
    return obj


SHARED_CONFIGS = Path(__file__).resolve().parents[1] / "configs"  # groups every family shares (data/)


_STORED: dict[str, type] = {}  # name -> the schema stored under it (storing converts it: not free)


def _store_schemas() -> dict:
    """Every registered family's schema in Hydra's ConfigStore as ``<name>_schema`` (the primary
    YAMLs list theirs first in their defaults); each once per process, unless it changed."""
    from hydra.core.config_store import ConfigStore

    from mmldlm.objective import registered

    entries = registered()
    for name, entry in entries.items():
        if _STORED.get(name) is not entry.schema:
            ConfigStore.instance().store(name=f"{name}_schema", node=entry.schema)
            _STORED[name] = entry.schema
    return entries


def objective_of(config_name: str, search: list[Path]) -> str | None:
    """The objective a primary config composes (its ``<name>_schema`` default, followed through
    parent configs), read from the YAML files without composing; None if not found."""
    import yaml

    for d in search:
        f = Path(d) / f"{config_name}.yaml"
        if not f.is_file():
            continue
        for item in (yaml.safe_load(f.read_text()) or {}).get("defaults", []):
            if isinstance(item, str) and item.endswith("_schema"):
                return item[: -len("_schema")]
            if isinstance(item, str) and item != "_self_":
                found = objective_of(item, search)
                if found:
                    return found
        return None
    return None


def _argv_config(argv: list[str], default: str | None) -> tuple[str | None, list[Path]]:
    """(--config-name, [--config-dir ...]) as Hydra will read them from the command line."""
    name, dirs = default, []
    for i, arg in enumerate(argv):
        for flag in ("--config-name", "-cn", "--config-dir", "-cd"):
            value = None
            if arg == flag and i + 1 < len(argv):
                value = argv[i + 1]
            elif arg.startswith(flag + "="):
                value = arg.split("=", 1)[1]
            if value is not None:
                if flag in ("--config-name", "-cn"):
                    name = value
                else:
                    dirs.append(Path(value))
    return name, dirs


def _finish(cfg: DictConfig, entries: dict) -> DictConfig:
    """Validate against the schema of ``cfg.objective`` and make its paths absolute."""
    entry = entries.get(cfg.get("objective"))
    if entry is None:
        raise ConfigError(f"objective: {cfg.get('objective')!r} is not a registered objective "
                          f"({', '.join(sorted(entries))})")
    validate(cfg, entry.schema)
    absolutize_paths(cfg, entry.schema)
    return cfg


def hydra_main(config_dir: str | Path, default_config: str | None, run: Callable[[DictConfig], Any] | None = None):
    """The body of a training entrypoint: compose ``--config-name`` (default ``default_config``)
    from ``config_dir`` with Hydra, validate it against the registered schema of its objective,
    then ``run(cfg)`` (default: the shared loop). A config error prints one line naming the key
    and exits 2 before any work starts."""
    import hydra

    entries = _store_schemas()
    name, extra_dirs = _argv_config(sys.argv[1:], default_config)
    obj = objective_of(name, [*extra_dirs, Path(config_dir), SHARED_CONFIGS]) if name else None
    unknown = unknown_override(entries[obj].schema, sys.argv[1:]) if obj in entries else None
    unknown = unknown or (no_such_group(entries[obj].schema, sys.argv[1:], [*extra_dirs, Path(config_dir),
                                                                            SHARED_CONFIGS])
                          if obj in entries else None)
    if unknown:
        print(f"config error: {unknown}", file=sys.stderr)
        sys.exit(2)

    def checked(cfg: DictConfig) -> Any:
        prepare_job(cfg)  # a multirun job: its own run directory (and on SLURM, its ranks)
        try:
            _finish(cfg, entries)
        except ConfigError as e:
            print(f"config error: {e}", file=sys.stderr)
            sys.exit(2)
        if run is not None:
            return run(cfg)
        from mmldlm.train import train

        return train(cfg)

    added = sweep_args(sys.argv[1:])
    if not any(a.startswith("hydra.job.name=") for a in sys.argv):  # named after the script, not this module
        added.append(f"hydra.job.name={Path(sys.argv[0]).stem}")
    # beside the user's overrides: Hydra parses them as one run of arguments (not after a trailing --cfg job)
    at = next((i for i, a in enumerate(sys.argv) if i and "=" in a and not a.startswith("-")), 1)
    sys.argv[at:at] = added
    return hydra.main(version_base="1.3", config_path=str(Path(config_dir).resolve()),
                      config_name=default_config)(checked)()


def compose(name: str, overrides: list[str] | tuple = (), config_dir: str | Path | None = None) -> DictConfig:
    """A validated config, as the entrypoint would build it for ``--config-name name overrides``,
    without a command line (tests, benches, the estimator). The config is found among the
    registered families' config directories unless ``config_dir`` is given."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    entries = _store_schemas()
    dirs = [Path(config_dir)] if config_dir else [e.config_dir for e in entries.values()]
    found = next((d for d in dirs if (d / f"{name}.yaml").is_file()), None)
    if found is None:
        raise ConfigError(f"no config {name!r} in {', '.join(dict.fromkeys(map(str, dirs)))}")
    all_dirs = [found, *(e.config_dir for e in entries.values())]
    obj = objective_of(name, [*all_dirs, SHARED_CONFIGS])
    if obj not in entries:
        raise ConfigError(f"config {name!r} names no registered objective schema in its defaults")
    schema = entries[obj].schema
    own_dirs = [found, entries[obj].config_dir, SHARED_CONFIGS]
    unknown = unknown_override(schema, list(overrides)) or no_such_group(schema, list(overrides), own_dirs)
    if unknown:
        raise ConfigError(unknown)
    family_dir = entries[obj].config_dir.resolve()
    # a config kept outside its family's directory (a cluster recipe) still finds its parents there
    search = [] if found.resolve() == family_dir else [f"hydra.searchpath=[file://{family_dir}]"]
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(found.resolve()), version_base="1.3"):
        cfg = hydra_compose(config_name=name, overrides=[*search, *overrides])
    return _finish(cfg, entries)
