"""A benchmark is one module listed in one registry: a toy benchmark registered from tests/toy_benchmark.py with one
call runs through run.py --test and evaluation.py --benchmark, and the names of a benchmark with its own toolkit
stay in its module, run.py's root constant and the registry."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import test_readers
import toy_benchmark
from conftest import ROOT, save_mask, square_frame, write_jpeg
from propagate_run import SHORT_SIDE

import evaluation
import run
from benchmarks import registry
from benchmarks.common import Benchmark
from reports import report
from utils import read_mask

weights = test_readers.weights  # the fixture: test_extend's Propagate registered, its checkpoint


@pytest.fixture
def toy(monkeypatch: pytest.MonkeyPatch) -> None:
    """The toy benchmark registered, undone after the test (registry.BENCHMARKS is a copy while it runs)."""
    monkeypatch.setattr(registry, "BENCHMARKS", list(registry.BENCHMARKS))
    registry.register(toy_benchmark.BENCHMARK)  # the one call a new benchmark needs


def toy_tree(root: Path) -> Path:
    """Two videos of 3 frames, 36x48, with still squares (objects 1 and 2 in `a`, object 1 in `b`): Propagate carries
    the first mask on unchanged, so every predicted frame equals its truth."""
    for video, squares in (("a", [(1, (200, 40, 40)), (2, (40, 200, 40))]), ("b", [(1, (40, 40, 200))])):
        for t in range(3):
            rgb, ids = square_frame(SHORT_SIDE, 48, 0, squares)
            write_jpeg(root / "frames" / video / f"{t:05d}.jpg", rgb, full_chroma=True)
            save_mask(root / "truth" / video / f"{t:05d}.png", ids)
    return root


def test_toy_benchmark_runs_through_run_and_evaluation(toy: None, weights: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture) -> None:
    """run.py --test --data TOY_val --toy ROOT segments the toy videos and scores them by the toy rule (toy.txt,
    scores.json of benchmark toy); evaluation.py --benchmark toy scores the same masks to the same file, and its
    option --toy-videos reaches the scorer. A wrong prediction lowers the table by the rule's exact amount. Fails
    when run.py's --data choices or root flags, or evaluation.py's --benchmark choices or options, are not built from
    the registry after registration, or when the driver bypasses the layout's own scoring."""
    root = toy_tree(tmp_path / "toy")
    out = tmp_path / "out"
    base = ["--test", "--device", "cpu", "--weights", str(weights), "--output", str(out), "--data", "TOY_val"]
    assert run.main(base) == 2  # no --toy and no TOY_ROOT in run.py: refused, naming the flag
    assert "needs --toy ROOT (the folder that holds frames/ and truth/)" in capsys.readouterr().err
    assert run.main([*base, "--toy", str(root)]) == 0
    masks = out / "TOY_val"
    assert (masks / "toy.txt").read_text() == "toy-J 100.0\n"
    saved = json.loads((masks / report.SCORES_NAME).read_text())
    assert saved["benchmark"] == "toy" and saved["decimals"] == toy_benchmark.DECIMALS
    assert sorted(o["name"] for o in saved["objects"]) == ["a_1", "a_2", "b_1"]

    # Object 1 of video a lost at frame 2: its J is (1 + 0) / 2, the table the mean of 50, 100 and 100.
    results = tmp_path / "results"
    shutil.copytree(masks, results, ignore=shutil.ignore_patterns("*.txt", "*.json", "*.html"))
    wrong = read_mask(results / "a" / "00002.png", raw=True)
    save_mask(results / "a" / "00002.png", np.where(wrong == 1, 0, wrong))
    args = ["--benchmark", "toy", "--gt", str(root / "truth"), "--results", str(results), "--workers", "1"]
    assert evaluation.main(args) == 0
    assert (results / "toy.txt").read_text() == f"toy-J {(50 + 100 + 100) / 3:.1f}\n"
    assert (results / report.REPORT_NAME).is_file()
    (tmp_path / "only_a.txt").write_text("a\n")
    assert evaluation.main([*args, "--toy-videos", str(tmp_path / "only_a.txt")]) == 0
    assert (results / "toy.txt").read_text() == "toy-J 75.0\n"


def test_register_refuses_a_key_or_name_taken(toy: None) -> None:
    """A second benchmark reusing a --data key or a scoring name is refused: it would shadow the first one's."""
    with pytest.raises(ValueError, match="TOY_val"):
        registry.register(Benchmark("other", toy_benchmark.BENCHMARK.keys))
    with pytest.raises(ValueError, match="davis"):
        registry.register(Benchmark("other", (), scorings=(registry.scorings()["davis"],)))
    assert [b.name for b in registry.BENCHMARKS].count("other") == 0


def named_in(word: str) -> list[str]:
    """The repository's .py files outside tests/ whose text holds `word` in any case (code, docstrings, comments)."""
    found = []
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT).parts
        if parts[0] in {"tests", ".venv", "venv", "outputs", "docs"} or parts[0].startswith("."):
            continue
        if re.search(word, path.read_text(), re.IGNORECASE):
            found.append(path.relative_to(ROOT).as_posix())
    return found


@pytest.mark.parametrize("word", ["lvos", "mose"])
def test_a_benchmark_is_named_in_its_module_run_and_the_registry(word: str) -> None:
    """A benchmark with its own toolkit is named in 3 files only: its module, run.py (its editable root constant)
    and the registry. Fails when its reader, rule, keys or decimals leak into the driver, the scoring command line,
    the reports or a shared module (a docstring naming it counts too)."""
    assert named_in(word) == sorted(["run.py", f"benchmarks/{word}.py", "benchmarks/registry.py"])
