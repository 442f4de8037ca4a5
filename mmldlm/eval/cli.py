"""``key=value`` command lines for the eval CLIs (the original's Hydra-style keys, which users type:
``path=RUN samples_path=samples.pt ...``), checked against a dataclass: an unknown key or a value
of the wrong type is a one-line error listing the known keys; ``--help`` prints them."""
from __future__ import annotations

import dataclasses
import difflib
import sys
from dataclasses import dataclass, field
from typing import Any, Optional

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException


def parse_keys(spec: type, argv: list[str] | None, doc: str, aliases: dict[str, str] | None = None) -> Any:
    """An instance of the dataclass ``spec`` from ``key=value`` arguments. ``aliases`` maps an
    accepted old spelling to its key (e.g. ``samples_dir`` -> ``samples_path``). Exits 2 on a
    mistake, 0 after ``--help``."""
    argv = sys.argv[1:] if argv is None else argv
    fields = {f.name: f for f in dataclasses.fields(spec)}
    if any(a in ("-h", "--help") for a in argv):
        lines = [doc.strip(), "", "keys (key=value):"]
        for f in fields.values():
            if f.default is not dataclasses.MISSING:
                default = f"default {f.default!r}"
            elif f.default_factory is not dataclasses.MISSING:  # a section of keys (data_files.validation=...)
                default = "optional"
            else:
                default = "required"
            lines.append(f"  {f.name:<22} {f.metadata.get('help', '')} ({default})")
        print("\n".join(lines))
        raise SystemExit(0)
    pairs = []
    for arg in argv:
        key, eq, value = arg.partition("=")
        key = (aliases or {}).get(key, key)
        if not eq or not known_key(fields, key):
            close = difflib.get_close_matches(key, list(fields), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            _fail(f"{arg!r} is not key=value with a known key{hint}; keys: {', '.join(fields)}")
        pairs.append(f"{key}={value}")
    try:
        cfg = OmegaConf.merge(OmegaConf.structured(spec), OmegaConf.from_dotlist(pairs))
        obj = OmegaConf.to_object(cfg)
    except OmegaConfBaseException as e:
        _fail(str(e).splitlines()[0])
    _check_ranges(obj, fields)
    return obj


def known_key(fields: dict, key: str) -> bool:
    """``key`` is a field, or a key inside a section field (``data_files.validation``)."""
    section = key.split(".", 1)[0]
    return section in fields and ("." in key) == (fields[section].default_factory is not dataclasses.MISSING)


def _check_ranges(obj, fields: dict) -> None:
    """Each key's range from its ``min`` / ``above`` (strictly) / ``max`` metadata; a value out of it
    is one line and exit 2, before any work."""
    for name, f in fields.items():
        value = getattr(obj, name)
        if value is None or isinstance(value, bool) or not isinstance(value, int | float):
            continue
        low, above, high = f.metadata.get("min"), f.metadata.get("above"), f.metadata.get("max")
        if low is not None and value < low:
            _fail(f"{name}={value}: must be >= {low}")
        if above is not None and value <= above:
            _fail(f"{name}={value}: must be > {above}")
        if high is not None and value > high:
            _fail(f"{name}={value}: must be <= {high}")


def resolve_device(name: str) -> str:
    """``auto`` -> cuda when there is one, else cpu; anything else as given."""
    import torch

    if name != "auto":
        return name
    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass(kw_only=True)
class CheckpointKeys:
    """The keys of every eval CLI that rebuilds a model from a checkpoint. What a checkpoint may
    not decide (remote code, downloads, where a frozen backbone comes from) comes from these."""

    ema: bool = field(default=True, metadata={"help": "use the EMA weights when the run kept them"})
    device: str = field(default="auto", metadata={"help": "auto | cpu | cuda"})
    backbone_dir: Optional[str] = field(default=None, metadata={
        "help": "the bridge / fine-tune: its backbone's directory here (default: the one the run names, if unchanged)"})
    source: dict = field(default_factory=dict, metadata={
        "help": "source.NAME=PATH: where a source of the run is on this machine (source.backbone, source.tokenizer, "
                "source.llm.NAME ...)"})
    trust_remote_code: bool = field(default=False, metadata={
        "help": "let the code of the directories named on this command line run (only if you trust them)"})
    allow_source_change: bool = field(default=False, metadata={
        "help": "accept a source whose fingerprint differs from the one the run trained with"})

    def policy(self):
        from mmldlm.sources import LoadPolicy

        paths = dict(_flat(self.source))
        if self.backbone_dir:
            paths["backbone"] = self.backbone_dir
        return LoadPolicy(trust_remote_code=self.trust_remote_code, paths=paths,
                          allow_source_change=self.allow_source_change)

    def rebuild(self, checkpoint, device: str, cli: str | None = None, needs: str | None = None, what: str = ""):
        """(objective in eval mode, tokenizer, config) under this command line's load policy, of a
        run, checkpoint, export or :class:`~mmldlm.train.rebuild.Saved`. ``cli`` (this command, as
        families list their readers) and ``needs`` (the objective method it calls: generate |
        nelbo): a run of a family this command does not read is refused before anything is built,
        naming its objective, ``what`` the command needs, and the commands that do read it."""
        from mmldlm.objective import Objective, lookup, readers
        from mmldlm.train.rebuild import CheckpointPolicyError, Saved, open_saved, rebuild_from_checkpoint

        saved = checkpoint if isinstance(checkpoint, Saved) else open_saved(checkpoint)
        name = saved.objective
        try:
            declared = lookup(name).clis if name else ()
        except KeyError:
            declared = ()
        if cli and declared and cli not in declared:
            raise CheckpointPolicyError(f"{saved.path} is a run of objective {name!r}, which {cli} does not read"
                                        f"{f' ({what})' if what else ''}: {readers(name)}")
        built = rebuild_from_checkpoint(saved, device, self.policy(), ema=self.ema)
        if needs and getattr(type(built[0]), needs) is getattr(Objective, needs):
            raise CheckpointPolicyError(f"{saved.path} is a run of objective {name!r}, which defines no {needs}() "
                                        f"for {cli}: {readers(name)}")
        return built


def _flat(node: dict, prefix: str = ""):
    """(``a.b``, value) pairs of a nested dict (``source.llm.qwen=DIR`` arrives nested)."""
    for k, v in node.items():
        if isinstance(v, dict):
            yield from _flat(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", str(v)


def _fail(msg: str) -> None:
    print(f"error: {msg}", file=sys.stderr)
    raise SystemExit(2)


def run_cli(main) -> None:
    """Run an eval CLI's ``main()``: a bad value, file or checkpoint (ConfigError, DataError and
    other ValueErrors, a refused checkpoint) ends in one line on stderr and exit 2, no traceback."""
    from mmldlm.train.rebuild import CheckpointPolicyError

    try:
        main()
    except (ValueError, CheckpointPolicyError) as e:
        _fail(str(e))
