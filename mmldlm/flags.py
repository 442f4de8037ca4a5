"""One spelling per concept across the argparse CLIs: ``--out`` for what a command writes,
``--output-dir`` for a run directory, words joined by hyphens.

Two kinds of old spelling stay accepted, so the users' scripts keep working:

- the same flag with underscores (``--batch_size`` for ``--batch-size``): accepted silently by
  :class:`Parser`, as HF's argument parser does. Nothing to learn but a separator, and a note per
  flag would bury a command's output (LatentWire's documented command has a dozen of them);
- a renamed flag (``--codes`` for ``--codebook-size``, ``--save-dir`` for ``--output-dir``):
  :func:`add_renamed` accepts it and says once, on stderr, how the flag is spelled now.

Errors name the flag as the user typed it (:meth:`Parser.spelled` for a CLI's own messages).
"""
from __future__ import annotations

import argparse
import sys


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` that reads ``--a_b`` as ``--a-b`` where only the latter is a flag
    (``--help`` lists the hyphenated spelling only)."""

    def parse_known_args(self, args=None, namespace=None):
        args = list(sys.argv[1:] if args is None else args)
        self._typed: dict[str, str] = {}
        known = set(self._option_string_actions)
        for i, arg in enumerate(args):
            if arg == "--":
                break
            name, eq, value = arg.partition("=")
            hyphens = name.replace("_", "-")
            if name.startswith("--") and name not in known and hyphens in known:
                args[i] = hyphens + eq + value
                self._typed[hyphens] = name
        return super().parse_known_args(args, namespace)

    def spelled(self, flag: str) -> str:
        """``flag`` as the last command line spelled it."""
        return getattr(self, "_typed", {}).get(flag, flag)

    def error(self, message: str):
        for flag, typed in getattr(self, "_typed", {}).items():
            message = message.replace(f"argument {flag}:", f"argument {typed}:")
        super().error(message)


class _Renamed(argparse._StoreAction):
    """``store``, plus a note when the flag was given under one of its older spellings."""

    def __init__(self, *args, old: tuple[str, ...] = (), **kwargs):
        super().__init__(*args, **kwargs)
        self.old = old

    def __call__(self, parser, namespace, values, option_string=None):
        if option_string in self.old:
            typed = parser.spelled(option_string) if isinstance(parser, Parser) else option_string
            print(f"note: {typed} is now spelled {self.option_strings[0]} (the old spelling still works)",
                  file=sys.stderr)
        super().__call__(parser, namespace, values, option_string)


def add_renamed(parser, flag: str, *old: str, **kwargs) -> argparse.Action:
    """``parser.add_argument(flag, *old, ...)``: ``flag`` is the spelling, ``old`` its accepted
    aliases (hyphenated: under :class:`Parser` their underscore forms come with them)."""
    return parser.add_argument(flag, *old, action=_Renamed, old=old, **kwargs)
