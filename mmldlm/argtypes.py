"""Ranged ``type=`` functions for argparse flags: a value out of range is argparse's own one-line
usage error (exit 2) naming the flag, before any work starts (``--batch_size 0`` once divided by
zero, ``--epochs 0`` trained one step). Every numeric flag of the repository's commands uses one
(a test holds them to it); seeds are non-negative (numpy's generators refuse others).
"""
from __future__ import annotations

import argparse
import math
from collections.abc import Callable


def _ranged(kind: type, check: Callable[[float], bool], want: str) -> Callable[[str], int | float]:
    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, "
                                             f"got {text!r}") from None
        if isinstance(value, float) and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
        if not check(value):
            raise argparse.ArgumentTypeError(f"must be {want}, got {text}")
        return value

    parse.__name__ = f"{kind.__name__} {want}"
    parse.ranged = True  # what the flag test looks for
    return parse


def at_least(low: int | float, kind: type = int) -> Callable[[str], int | float]:
    return _ranged(kind, lambda v: v >= low, f">= {low}")


def above(low: float, kind: type = float) -> Callable[[str], int | float]:
    return _ranged(kind, lambda v: v > low, f"> {low}")


def between(low: float, high: float, kind: type = float, open_high: bool = False) -> Callable[[str], float]:
    want = f"in [{low}, {high}{')' if open_high else ']'}"
    return _ranged(kind, (lambda v: low <= v < high) if open_high else (lambda v: low <= v <= high), want)


def all_or_at_least_one(text: str) -> int:
    """A count where -1 means all (``--samples``)."""
    return _ALL_OR_ONE(text)


_ALL_OR_ONE = _ranged(int, lambda v: v == -1 or v >= 1, "-1 (all) or >= 1")
all_or_at_least_one.ranged = True

positive_int = at_least(1)
nonneg_int = at_least(0)
positive_float = above(0.0)
nonneg_float = at_least(0.0, float)
fraction = between(0.0, 1.0, open_high=True)  # dropout, held-out share
probability = between(0.0, 1.0)
unit = _ranged(float, lambda v: 0 < v <= 1, "in (0, 1]")  # top-p, an assumed MFU
