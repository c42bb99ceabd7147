"""Model config fields as command-line flags: one source for a field's default, help, range and role.

A method's config dataclass (model.ModelConfig, videomatch.VideoMatchConfig) declares each choice a user may make
with `option(...)` in the field's metadata: the help (naming the paper's symbol), the range, and whether the
weights fix it (`weights=True`: the encoder, the matching branches, the key width change or give meaning to the
weight tensors, so a checkpoint's value cannot be changed at test time). From that one declaration:

- `check_config` checks a config (the dataclasses call it in __post_init__, so a config dict read from a
  checkpoint is checked as a flag is);
- `check_model_flags` checks the fields a command line set against one method, refusing a flag of another method;
- the entry points' command lines (core/flags.py: `add_model_flags`, `given_model_flags`) make one --flag per field
  for every method, with argparse type= checks of the range.

This module imports no argparse: the models' modules (model.py, videomatch.py) declare their configs with it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import fields
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


def model_flag_names(configs: Mapping[str, type]) -> tuple[str, ...]:
    """The model flags' names (argparse dests of flags.add_model_flags): every declared field, in order, once."""
    return tuple(dict.fromkeys(n for config in configs.values() for n in options(config)))


def check_model_flags(given: Mapping[str, Any], method: str, configs: Mapping[str, type],
                      why: str = "") -> dict[str, Any]:
    """The model flags a command line set (given: field -> value), checked for `method`: a flag that belongs only to
    other methods, or a value that is not one of this method's, is a VOSInputError (why: how the method was chosen).
    Returns them with the subsets as tuples."""
    checked = dict(given)
    own = options(configs[method])
    for name, value in given.items():
        if name not in own:
            owners = [m for m, c in configs.items() if name in options(c)]
            raise VOSInputError(f"{flag_name(name)} is a flag of {' and '.join(owners)}, not of {method}{why}; "
                                f"drop it, or pass --method {owners[0]}")
        spec = own[name]
        if spec["subset"]:
            value = checked[name] = tuple(value)
        problem = range_error(name, spec, value)
        if problem is not None:
            raise VOSInputError(f"{flag_name(name)} {' '.join(map(str, value)) if spec['subset'] else value}: "
                                f"{method}'s {name} {problem}")
    return checked


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
