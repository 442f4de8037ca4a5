"""``key=value`` command lines for the eval CLIs (the original's Hydra-style keys, which users type:
``path=RUN samples_path=samples.pt ...``), checked against a dataclass: an unknown key or a value
of the wrong type is a one-line error listing the known keys; ``--help`` prints them."""
from __future__ import annotations

import dataclasses
import difflib
import sys
from typing import Any

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
        if not eq or key not in fields:
            close = difflib.get_close_matches(key, list(fields), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            _fail(f"{arg!r} is not key=value with a known key{hint}; keys: {', '.join(fields)}")
        pairs.append(f"{key}={value}")
    try:
        cfg = OmegaConf.merge(OmegaConf.structured(spec), OmegaConf.from_dotlist(pairs))
        return OmegaConf.to_object(cfg)
    except OmegaConfBaseException as e:
        _fail(str(e).splitlines()[0])


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
