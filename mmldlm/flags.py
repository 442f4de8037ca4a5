"""One spelling per concept across the argparse CLIs: ``--out`` for what a command writes,
``--output-dir`` for a run directory, words joined by hyphens. An older spelling stays accepted
and says once, on stderr, how the flag is spelled now (scripts keep working; people learn)."""
from __future__ import annotations

import argparse
import sys


class _Renamed(argparse._StoreAction):
    """``store``, plus a note when the flag was given under one of its older spellings."""

    def __init__(self, *args, old: tuple[str, ...] = (), **kwargs):
        super().__init__(*args, **kwargs)
        self.old = old

    def __call__(self, parser, namespace, values, option_string=None):
        if option_string in self.old:
            print(f"note: {option_string} is now spelled {self.option_strings[0]} (the old spelling still works)",
                  file=sys.stderr)
        super().__call__(parser, namespace, values, option_string)


def add_renamed(parser, flag: str, *old: str, **kwargs) -> argparse.Action:
    """``parser.add_argument(flag, *old, ...)``: ``flag`` is the spelling, ``old`` its accepted aliases."""
    return parser.add_argument(flag, *old, action=_Renamed, old=old, **kwargs)
