"""argparse ``type=`` converters shared by every ``lddm-fast`` subcommand, so a bad
number is refused with the same message whichever command it was given to."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

__all__ = [
    "finite_float",
    "int_at_least",
    "non_negative_float",
    "positive_float",
    "positive_int",
]


def int_at_least(minimum: int, unit: str = "") -> Callable[[str], int]:
    """A converter for whole numbers of at least ``minimum`` (``unit`` in the message)."""
    suffix = f" {unit}" if unit else ""

    def convert(text: str) -> int:
        value = int(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}{suffix}, got {value}")
        return value

    return convert


positive_int = int_at_least(1)


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def non_negative_float(text: str) -> float:
    value = float(text)
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value
