"""The entry points' command-line parts: the one-line parser, argparse types that check a flag's range, and the
model flags built from the methods' config dataclasses.

Each type raises `argparse.ArgumentTypeError` with the valid range; `OneLineParser` prints it as one line,
`error: argument --flag: <message>`, and exits with status 2 before any work. Imported only by the entry points
(run.py, evaluation.py, export.py, tools/); the libraries take dataclasses and dicts, never an argparse Namespace
(tests/test_layering.py).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Mapping
from dataclasses import MISSING, Field, fields
from typing import Any

from core import config_flags
from core.config_flags import OPTION, flag_name, range_error


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


# ---------------------------------------------------------------------------------------------------------------
# model flags from the methods' config dataclasses (config_flags.option)
# ---------------------------------------------------------------------------------------------------------------

def _scalar_kind(f: Field) -> type:
    kind = f.type if isinstance(f.type, type) else {"int": int, "float": float, "str": str, "bool": bool}.get(
        str(f.type), str)
    return kind


def _argparse_type(name: str, kind: type, specs: list[dict]) -> Callable[[str], Any]:
    """A type= that parses the value and checks it against every method's range (they agree where they share)."""
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") \
                from None
        for spec in specs:
            why = range_error(name, spec, value)
            if why is not None:
                raise argparse.ArgumentTypeError(f"{flag_name(name)} {why}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its own messages
    return parse


def add_model_flags(group: argparse._ArgumentGroup, configs: Mapping[str, type]) -> None:
    """One flag per declared field of every method's config (configs: method name -> config dataclass), default None
    (not given). A field name several methods share is one flag, its help one clause per method."""
    by_name: dict[str, list[tuple[str, Field]]] = {}
    for method, config in configs.items():
        for f in fields(config):
            if OPTION in f.metadata:
                by_name.setdefault(f.name, []).append((method, f))
    for name, owners in by_name.items():
        specs = [f.metadata[OPTION] for _, f in owners]

        def default(f: Field) -> Any:
            value = f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]
            return " ".join(value) if isinstance(value, tuple) else value

        help_text = "; ".join(f"{method}: {f.metadata[OPTION]['help']} (default {default(f)})" for method, f in owners)
        first = owners[0][1]
        kind = _scalar_kind(first)
        if kind is bool:
            group.add_argument(flag_name(name), action=argparse.BooleanOptionalAction, default=None, help=help_text)
        elif specs[0]["choices"] is not None:
            choices = list(dict.fromkeys(c for s in specs for c in s["choices"]))
            group.add_argument(flag_name(name), nargs="+" if specs[0]["subset"] else None, choices=choices,
                               default=None, help=help_text)
        else:
            # the ranges of methods that share a name are checked here only when they agree; check_config covers
            # each method's own once the method is known
            ranges = {tuple(s[k] for k in ("low", "high", "above", "odd_or_zero")) for s in specs}
            group.add_argument(flag_name(name), type=_argparse_type(name, kind, specs[:1] if len(ranges) == 1 else []),
                               default=None, help=help_text)


def model_overrides(args: argparse.Namespace, configs: Mapping[str, type]) -> dict[str, Any]:
    """The model flags given on the command line (config field -> value), of every method in configs."""
    return {n: getattr(args, n) for n in config_flags.model_flag_names(configs) if getattr(args, n, None) is not None}


def given_model_flags(args: argparse.Namespace, method: str, configs: Mapping[str, type],
                      why: str = "") -> dict[str, Any]:
    """field -> value of the model flags the command line set, for `method`; a flag that belongs only to other
    methods, or a value that is not one of this method's, is a VOSInputError (config_flags.check_model_flags; why:
    how the method was chosen)."""
    return config_flags.check_model_flags(model_overrides(args, configs), method, configs, why)
