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
            default = "required" if f.default is dataclasses.MISSING else f"default {f.default!r}"
            lines.append(f"  {f.name:<22} {f.metadata.get('help', '')} ({default})")
        print("\n".join(lines))
        raise SystemExit(0)
    pairs = []
    for arg in argv:
        key, eq, value = arg.partition("=")
        key = (aliases or {}).get(key, key)
        if not eq or key.split(".")[0] not in fields:
            close = difflib.get_close_matches(key, list(fields), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            _fail(f"{arg!r} is not key=value with a known key{hint}; keys: {', '.join(fields)}")
        pairs.append(f"{key}={value}")
    try:
        cfg = OmegaConf.merge(OmegaConf.structured(spec), OmegaConf.from_dotlist(pairs))
        return OmegaConf.to_object(cfg)
    except OmegaConfBaseException as e:
        _fail(str(e).splitlines()[0])


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

    def rebuild(self, checkpoint, device: str):
        """(objective in eval mode, tokenizer, config) under this command line's load policy."""
        from mmldlm.train.rebuild import rebuild_from_checkpoint

        return rebuild_from_checkpoint(checkpoint, device, self.policy(), ema=self.ema)


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
