"""Model config fields as command-line flags: one source for a field's default, help, range and role.

A method's config dataclass (model.ModelConfig, videomatch.VideoMatchConfig) declares each choice a user may make
with `option(...)` in the field's metadata: the help (naming the paper's symbol), the range, and whether the
weights fix it (`weights=True`: the encoder, the matching branches, the key width change or give meaning to the
weight tensors, so a checkpoint's value cannot be changed at test time). From that one declaration:

- `check_config` checks a config (the dataclasses call it in __post_init__, so a config dict read from a
  checkpoint is checked as a flag is);
- `add_model_flags` makes one --flag per field for every method (a field name two methods share, such as --topk, is
  one flag whose help gives each method's meaning), with argparse type= checks of the range;
- `given_model_flags` returns the fields a command line set, refusing a flag of another method.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Mapping
from dataclasses import MISSING, Field, fields
from typing import Any

from utils import VOSInputError

OPTION = "option"  # the metadata key under which `option` stores its declaration


def option(help: str, *, low: float | None = None, high: float | None = None, above: float | None = None,
           choices: tuple[str, ...] | None = None, subset: bool = False, odd_or_zero: bool = False,
           weights: bool = False, used: Callable[[Any], bool] | None = None,
           used_when: str = "") -> dict[str, dict]:
    """The metadata of a config field that is a command-line choice (pass as `field(metadata=option(...))`).

    low / high: inclusive bounds; above: exclusive lower bound; choices: the allowed strings (subset: a non-empty
    tuple of distinct ones); odd_or_zero: an odd integer or 0; weights: the weights' tensors depend on the value
    (refused as a test-time override); used(config): whether the field has any effect in that config (a flag that
    has none is refused), used_when says when in words for the message.
    """
    return {OPTION: {"help": help, "low": low, "high": high, "above": above, "choices": choices, "subset": subset,
                     "odd_or_zero": odd_or_zero, "weights": weights, "used": used, "used_when": used_when}}


def options(config: type) -> dict[str, dict]:
    """field name -> its `option` declaration, for the fields of a config dataclass that are flags."""
    return {f.name: f.metadata[OPTION] for f in fields(config) if OPTION in f.metadata}


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def range_error(name: str, spec: dict, value: Any) -> str | None:
    """Why `value` is not allowed for the field (a phrase), or None."""
    if spec["choices"] is not None:
        values = value if spec["subset"] else (value,)
        if spec["subset"] and not values:
            return f"must name at least one of {', '.join(spec['choices'])}"
        wrong = [v for v in values if v not in spec["choices"]]
        if wrong:
            return f"{'has' if spec['subset'] else 'is'} {', '.join(map(repr, wrong))}; choose from " \
                   f"{', '.join(spec['choices'])}"
        if spec["subset"] and len(set(values)) != len(values):
            return "names a choice twice"
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return f"must be a finite number, got {value}"
    if spec["low"] is not None and value < spec["low"]:
        return f"must be at least {spec['low']}, got {value}"
    if spec["high"] is not None and value > spec["high"]:
        return f"must be at most {spec['high']}, got {value}"
    if spec["above"] is not None and value <= spec["above"]:
        return f"must be above {spec['above']}, got {value}"
    if spec["odd_or_zero"] and value != 0 and value % 2 == 0:
        return f"must be odd, or 0 to turn it off; got {value}"
    return None


def check_config(config: Any) -> None:
    """ValueError naming the field when a config's value is out of its declared range."""
    for name, spec in options(type(config)).items():
        why = range_error(name, spec, getattr(config, name))
        if why is not None:
            raise ValueError(f"{name} {why}")


# ---------------------------------------------------------------------------------------------------------------
# argparse
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


def model_flag_names(configs: Mapping[str, type]) -> tuple[str, ...]:
    """The argparse dests of `add_model_flags` (field names), in order, each once."""
    return tuple(dict.fromkeys(n for config in configs.values() for n in options(config)))


def given_model_flags(args: argparse.Namespace, method: str, configs: Mapping[str, type],
                      why: str = "") -> dict[str, Any]:
    """field -> value of the model flags the command line set, for `method`; a flag that belongs only to other
    methods, or a value that is not one of this method's, is a VOSInputError (why: how the method was chosen)."""
    given = {n: getattr(args, n) for n in model_flag_names(configs) if getattr(args, n, None) is not None}
    own = options(configs[method])
    for name, value in given.items():
        if name not in own:
            owners = [m for m, c in configs.items() if name in options(c)]
            raise VOSInputError(f"{flag_name(name)} is a flag of {' and '.join(owners)}, not of {method}{why}; "
                                f"drop it, or pass --method {owners[0]}")
        spec = own[name]
        if spec["subset"] or spec["choices"] is not None:
            value = tuple(value) if spec["subset"] else value
            given[name] = value
        problem = range_error(name, spec, value)
        if problem is not None:
            raise VOSInputError(f"{flag_name(name)} {' '.join(map(str, value)) if spec['subset'] else value}: "
                                f"{method}'s {name} {problem}")
    return given


def unused_flags(config: Any, given: Mapping[str, Any]) -> str | None:
    """A message for the first given field that has no effect in `config` (e.g. K without the bijective branch)."""
    specs = options(type(config))
    for name in given:
        spec = specs.get(name)
        if spec is not None and spec["used"] is not None and not spec["used"](config):
            return f"{flag_name(name)} does nothing unless {spec['used_when']}"
    return None


def describe(config: Any) -> str:
    """The declared fields of a config in words, e.g. 'encoder densenet121, branches surjective equalized, ...'."""
    def shown(v: Any) -> str:
        return " ".join(v) if isinstance(v, tuple) else str(v)

    return ", ".join(f"{n} {shown(getattr(config, n))}" for n in options(type(config)))
