"""Flag values out of range are refused by argparse (exit 2) with the valid range in the message, before any work."""

from __future__ import annotations

import argparse

import pytest

import run
from core import flags, methods
from training import trainer

# (argv, what the message must say): each value was accepted before (or crashed with a traceback)
BAD = [
    (["--test", "--max-memory", ""], "positive size"),
    (["--test", "--max-memory", " "], "positive size"),
    (["--test", "--max-memory", "inf"], "positive size"),  # int(float('inf')): OverflowError traceback
    (["--test", "--max-memory", "1e400"], "positive size"),
    (["--test", "--max-memory", "0"], "positive size"),  # was read as "no bound"
    (["--test", "--max-memory", "-1"], "positive size"),
    (["--test", "--max-memory=-5G"], "positive size"),
    (["--test", "--vis-frame", "0"], "1 or more"),  # frame 0 is the given mask: no probabilities to draw
    (["--train", "--workers", "-1"], "0 or more"),
    (["--train", "--seed", "-1"], f"from 0 to {2**32 - 1}"),
    (["--train", "--seed", str(2**32)], f"from 0 to {2**32 - 1}"),  # np.random.seed refuses it mid-start-up
    (["--train", "--lr", "nan"], "from 0 to 1 (not 0)"),
    (["--train", "--lr=-1e-4"], "from 0 to 1 (not 0)"),
    (["--train", "--lr", "0"], "from 0 to 1 (not 0)"),
    (["--train", "--lr", "1e39"], "from 0 to 1 (not 0)"),  # torch's Adam step: RuntimeError, float32 overflow
    (["--train", "--weight-decay=-5e-4"], "from 0 to 1"),
    (["--train", "--weight-decay", "inf"], "from 0 to 1"),
    (["--train", "--swap-above", "nan"], "from 0 to 1"),  # random() > nan is never true: silently no swaps
    (["--train", "--swap-above", "1.5"], "from 0 to 1"),
    (["--train", "--crop", "0", "64"], "1 or more"),
]


@pytest.mark.parametrize(("argv", "says"), BAD, ids=[" ".join(a) for a, _ in BAD])
def test_out_of_range_flags_exit_2_naming_the_range(argv: list[str], says: str,
                                                    capsys: pytest.CaptureFixture) -> None:
    """Catches a flag typed with plain int/float (or utils' old --max-memory parser), which takes these values."""
    with pytest.raises(SystemExit) as e:
        run.main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    flag = argv[1].split("=")[0]
    assert f"argument {flag}:" in err and says in err and "Traceback" not in err


@pytest.mark.parametrize("argv", [["--test", "--workers", "-3"], ["--test", "--no-such-flag"], ["--test", "--train"]])
def test_a_flag_error_is_one_line_pointing_to_help(argv: list[str], capsys: pytest.CaptureFixture) -> None:
    """Bug: argparse printed the whole usage (dozens of lines) before the one line that says what is wrong."""
    with pytest.raises(SystemExit) as e:
        run.main(argv)
    assert e.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "error:" in lines[0] and "--help" in lines[0], lines


@pytest.mark.parametrize(("text", "value"), [("4G", 4 * 2**30), ("512m", 512 * 2**20), ("1e9", 10**9), ("none", None),
                                             (" NONE ", None), ("auto", "auto"), ("1", 1)])
def test_byte_size_reads_the_sizes_it_names(text: str, value: object) -> None:
    """Catches a range check that also refuses good sizes, or 'none' no longer meaning no bound."""
    assert flags.byte_size(text) == value


@pytest.mark.parametrize(("parse", "good", "bad"), [
    (flags.nonneg_int, ["0", "7"], ["-1", "1.5", "x"]),
    (flags.positive_int, ["1"], ["0"]),
    (flags.seed, ["0", str(2**32 - 1)], [str(2**32), "-3"]),
    (flags.float_range(0.0, lo_open=True), ["1e-9", "3e300"], ["0", "-1", "nan", "inf", "1e400"]),
    (flags.float_range(0.0, 1.0), ["0", "5e-4", "1"], ["-0.1", "nan", "-inf", "1.5"]),
    (flags.probability, ["0", "0.8", "1"], ["1.01", "-0.5", "nan"]),
])
def test_each_type_takes_its_range_and_refuses_the_rest(parse: object, good: list[str], bad: list[str]) -> None:
    """Catches an off-by-one bound (0 in or out) or NaN slipping through a comparison (every comparison with NaN is
    False, so `value < lo` alone lets it pass)."""
    for text in good:
        parse(text)
    for text in bad:
        with pytest.raises(argparse.ArgumentTypeError):
            parse(text)


def test_every_float_override_is_range_checked() -> None:
    """Catches a float stage field given a flag in run.STAGE_FLAGS with plain float as its type (it would take NaN)."""
    kinds = {f.name: f.type for m in methods.METHODS.values() for s in m.stages.values()
             for f in s.__dataclass_fields__.values()}
    floats = [name for name in run.STAGE_FLAGS if kinds[name] in ("float", float)]
    assert floats and all(run.STAGE_FLAGS[name][1] is not float for name in floats)


def test_workers_default_is_at_most_the_cpus(monkeypatch: pytest.MonkeyPatch) -> None:
    """Catches the fixed default of 4 workers, which on a 2-core machine makes torch warn on every run."""
    monkeypatch.setattr(trainer.os, "cpu_count", lambda: 2)
    options = run.train_options(run.build_parser().parse_args(["--train"]))
    assert trainer.resolve_options(options, methods.get("emvos")).workers == 2
    monkeypatch.setattr(trainer.os, "cpu_count", lambda: 64)
    assert trainer.resolve_options(options, methods.get("emvos")).workers == 4  # the official count on big machines
