"""The one list of dataset modules. run.py builds its --data choices and its benchmark root flags from it,
evaluation.py its --benchmark choices and the options of their scorers, and run.py --test opens a --data key's layout
here (`open_layout`).

Adding a benchmark: a module in benchmarks/ that exports a `common.Benchmark` (its layout, --data keys, root and
scoring), and one line in `BENCHMARKS` below; or, from outside the repository (a test, a notebook), one
`register(entry)` call before run.py's or evaluation.py's parser is built.
"""

from __future__ import annotations

from pathlib import Path

from benchmarks import davis, generic, lvos, mose, sav, ytvos
from benchmarks.common import Benchmark, DataKey, Scoring
from dataset import Layout, Roots
from utils import VOSInputError

BENCHMARKS: list[Benchmark] = [davis.BENCHMARK, ytvos.BENCHMARK, lvos.BENCHMARK, mose.BENCHMARK, generic.BENCHMARK,
                               sav.BENCHMARK]


def register(entry: Benchmark) -> Benchmark:
    """Add a benchmark; its keys, root flag and scorings must not clash with those already listed."""
    taken = {k.key for b in BENCHMARKS for k in b.keys}, {s.name for b in BENCHMARKS for s in b.scorings}, \
        {b.root for b in BENCHMARKS if b.root} | {b.name for b in BENCHMARKS}
    new = {k.key for k in entry.keys}, {s.name for s in entry.scorings}, {r for r in (entry.root, entry.name) if r}
    clashes = sorted(set().union(*(a & b for a, b in zip(taken, new, strict=True))))
    if clashes:
        raise ValueError(f"benchmark {entry.name}: {', '.join(clashes)} already registered")
    BENCHMARKS.append(entry)
    return entry


def data_keys() -> dict[str, tuple[Benchmark, DataKey]]:
    """{--data key: (its benchmark, the key)}, in the list's order."""
    return {k.key: (b, k) for b in BENCHMARKS for k in b.keys}


def scorings() -> dict[str, Scoring]:
    """{evaluation.py --benchmark name: its scoring}, in the list's order."""
    return {s.name: s for b in BENCHMARKS for s in b.scorings}


def result_files(folder: Path) -> list[Path]:
    """The result files of every scoring (`Scoring.result_files`) that `folder` holds, sorted: what an earlier
    scoring into it left, which no new report may stand beside."""
    patterns = {p for s in scorings().values() for p in s.result_files}
    found = {f for p in patterns for f in Path(folder).glob(p) if f.is_file() and not f.name.startswith(".")}
    return sorted(found)


def root_flags() -> list[Benchmark]:
    """The benchmarks whose root flag (--<root>) run.py generates: those whose root training does not read."""
    return [b for b in BENCHMARKS if b.root]


def open_layout(key: str, roots: Roots) -> Layout:
    """The layout that a --data key names, read from its root (`roots.get(DataKey.root)`); a root not given is refused
    in one line naming the flag that fills it."""
    bench, data = data_keys()[key]
    root = roots.get(data.root)
    if root is None:
        if data.root_flag is None:
            raise VOSInputError(f"--data {key} reads Roots.{data.root}, which is not set; {data.unset}")
        raise VOSInputError(f"--data {key} needs --{data.root_flag} ROOT (the folder that holds {bench.holds})")
    return data.open(Path(root))
