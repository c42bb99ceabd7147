"""argparse types that check a flag's range, so that a bad value is one line and exit 2 before any work.

Each type raises `argparse.ArgumentTypeError` with the valid range; argparse prints it as
`error: argument --flag: <message>` and exits with status 2. Used by run.py (its flags, its table of stage
overrides among them) and bench.py; imports nothing of this repository.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line, exit 2: `run.py: error: argument --workers: ... (run.py --help
    lists every flag)`. argparse's own prints the whole usage first, dozens of lines that bury the one that matters."""

    def error(self, message: str) -> None:  # argparse's signature: it never returns
        self.exit(2, f"{self.prog}: error: {message} ({self.prog} --help lists every flag)\n")


SEED_MAX = 2**32 - 1  # numpy's seed range (np.random.seed); torch and random take more, the three are seeded together


def _number(text: str, kind: type, what: str) -> int | float:
    try:
        return kind(text)
    except (ValueError, OverflowError):
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None


def int_range(lo: int, hi: int | None = None) -> Callable[[str], int]:
    """An integer in [lo, hi] (no upper bound when hi is None)."""
    where = f"from {lo} to {hi}" if hi is not None else f"{lo} or more"

    def parse(text: str) -> int:
        value = _number(text, int, f"an integer ({where})")
        if value < lo or (hi is not None and value > hi):
            raise argparse.ArgumentTypeError(f"{value} is out of range: give an integer {where}")
        return value

    parse.__name__ = f"integer {where}"  # argparse names the type by __name__ in "invalid <name> value"
    return parse


def float_range(lo: float, hi: float = math.inf, lo_open: bool = False) -> Callable[[str], float]:
    """A finite float in [lo, hi] (or (lo, hi] with lo_open); NaN and infinities are refused."""
    where = (f"above {lo:g}" if lo_open else f"{lo:g} or more") if hi == math.inf else \
        f"from {lo:g} to {hi:g}" + (f" (not {lo:g})" if lo_open else "")

    def parse(text: str) -> float:
        value = _number(text, float, f"a number ({where})")
        if not math.isfinite(value) or value < lo or value > hi or (lo_open and value == lo):
            raise argparse.ArgumentTypeError(f"{text} is out of range: give a finite number {where}")
        return value

    parse.__name__ = f"number {where}"
    return parse


nonneg_int = int_range(0)
positive_int = int_range(1)
seed = int_range(0, SEED_MAX)
probability = float_range(0.0, 1.0)

_SCALE = {"k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}
_BYTES_RANGE = "a positive size such as 4G, 512M or 1e9 (bytes), or 'none' (no bound) or 'auto'"


def byte_size(text: str) -> int | str | None:
    """--max-memory: '4G', '512M', '1e9' -> bytes (at least 1); 'none' -> None (no bound); 'auto' stays 'auto'.

    0 is refused rather than read as "no bound": a bound of nothing is a mistake, and "no bound" is spelt 'none'.
    """
    word = text.strip().lower()
    if word in ("auto", "none"):
        return None if word == "none" else word
    number, scale = (word[:-1], _SCALE[word[-1]]) if word and word[-1] in _SCALE else (word, 1)
    try:
        value = float(number) * scale
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size: give {_BYTES_RANGE}") from None
    if not math.isfinite(value) or value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is out of range: give {_BYTES_RANGE}")
    return int(value)


byte_size.__name__ = "size"
