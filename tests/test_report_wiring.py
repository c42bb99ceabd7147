"""Every scored run writes scores.json and report.html from the scorer's own per-frame arrays: run.py --test on a
split with ground truth, evaluation.py for every --benchmark; --no-report turns it off; --compare reads two runs."""

from __future__ import annotations

import csv
import json
from datetime import datetime
from pathlib import Path

import pytest
import torch
from test_benchmarks import _make
from test_run import WEIGHTS, _small_sample

import dataset
import evaluation
import run
from benchmarks import davis, generic, lvos, mose, sav
from core import weights
from reports import report


def perturbed_weights(path: Path) -> Path:
    """The golden checkpoint with its decoder's last convolution halved: another model of the same layout."""
    state = torch.load(WEIGHTS, map_location="cpu", weights_only=True)
    key = [k for k in state if "weight" in k][-1]
    state[key] = state[key] * 0.5
    torch.save(state, path)
    return path


def test_run_test_writes_the_report_and_compare_reads_two_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture,
                                                               one_thread: object) -> None:
    """run.py --test on the (shrunk) sample writes scores.json and report.html beside the CSVs, recording the command
    line, the checkpoint's name and git blob id and the date; the per-frame J/F in scores.json average to the CSV's
    J-Mean / F-Mean; --no-report writes neither and leaves no earlier one; evaluation.py --compare on two runs writes
    compare.html. Fails when the hook is not called, a report records another file's id or another command, the
    per-frame arrays belong to other frames or objects, a stale page survives a --no-report run, or --compare cannot
    read what --test wrote."""
    monkeypatch.setattr(run, "SAMPLE_ROOT", _small_sample(tmp_path, frames=5, scale=8))
    monkeypatch.setattr(dataset, "TEST_SHORT_SIDE", 60)
    other = perturbed_weights(tmp_path / "other.pth")
    runs = {}
    for name, ckpt in (("a", WEIGHTS), ("b", other)):
        assert run.main(["--test", "--device", "cpu", "--weights", str(ckpt), "--data", "sample",
                         "--output", str(tmp_path / name)]) == 0
        runs[name] = tmp_path / name / "sample"
    out = runs["a"]
    scores = report.load_scores(out)
    assert (out / report.REPORT_NAME).is_file()
    assert scores.weights_name == WEIGHTS.name and scores.weights_id == weights.git_blob_id(WEIGHTS)
    assert report.load_scores(runs["b"]).weights_id == weights.git_blob_id(other) != scores.weights_id
    assert scores.command.startswith("run.py --test") and f"--output {tmp_path / 'a'}" in scores.command
    assert datetime.fromisoformat(scores.date).tzinfo is not None
    rows = {r[0]: r for r in list(csv.reader((out / "per-sequence_results-sample.csv").read_text().splitlines()))[1:]}
    assert sorted(o.name for o in scores.result.objects) == sorted(rows) == ["bear_1", "boat_1"]
    for obj in scores.result.objects:
        assert obj.frames == ["00000", "00001", "00002", "00003", "00004"]  # first and last listed, not counted
        assert obj.counted.tolist() == [False, True, True, True, False]
        assert davis._fmt(obj.counted_mean("j")) == rows[obj.name][1]
        assert davis._fmt(obj.counted_mean("f")) == rows[obj.name][2]
    glob = list(csv.reader((out / "global_results-sample.csv").read_text().splitlines()))
    assert [davis._fmt(v) for _, v in scores.result.global_table] == glob[1]
    page = (out / report.REPORT_NAME).read_text()
    assert weights.git_blob_id(WEIGHTS) in page and "bear_1" in page

    capsys.readouterr()
    assert evaluation.main(["--compare", str(runs["a"]), str(runs["b"])]) == 0
    assert (runs["a"] / report.COMPARE_NAME).is_file() and "bear_1" in capsys.readouterr().out

    assert run.main(["--test", "--device", "cpu", "--weights", str(WEIGHTS), "--data", "sample", "--no-report",
                     "--output", str(tmp_path / "a")]) == 0
    assert not (out / report.REPORT_NAME).exists() and not (out / report.SCORES_NAME).exists()
    assert (out / "global_results-sample.csv").is_file()


def test_evaluation_help_lists_compare_and_no_report(capsys: pytest.CaptureFixture) -> None:
    """Fails when --compare works only as a hidden first argument, or --no-report is missing from the help."""
    with pytest.raises(SystemExit):
        evaluation.main(["--help"])
    text = capsys.readouterr().out
    assert "--compare" in text and "--no-report" in text


def test_evaluation_compare_refuses_scoring_flags(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """--compare with --results is one line and exit 2. Fails when the scoring flags are silently ignored."""
    assert evaluation.main(["--compare", str(tmp_path), "--results", str(tmp_path)]) == 2
    assert "drop --results" in capsys.readouterr().err


@pytest.mark.parametrize("benchmark", ["davis", "lvos", "mosev2", "vos-benchmark", "sav"])
def test_every_benchmark_writes_a_report_from_its_scores(tmp_path: Path, benchmark: str) -> None:
    """evaluation.py --benchmark X writes scores.json whose global table and per-object per-frame J/F are the
    scorer's (scored again here through the library), with the benchmark's mask layout, and a report.html naming
    every object; --no-report removes them and writes none. Fails when a benchmark's report is not wired, holds
    another scorer's arrays or decimals, or the SA-V layout is taken for id masks."""
    if benchmark == "davis":
        root = tmp_path / "DAVIS"
        for sub in ("JPEGImages/480p", "Annotations/480p"):
            (root / sub).mkdir(parents=True)
            for seq in ("bear", "boat"):
                (root / sub / seq).symlink_to(run.SAMPLE_ROOT / sub / seq)
        (root / "ImageSets" / "2016").mkdir(parents=True)
        (root / "ImageSets" / "2016" / "val.txt").write_text("bear\nboat\n")
        pred = root / "Annotations" / "480p"  # the ground truth as predictions: J = F = 1
        args = ["--davis", str(root), "--year", "2016", "--results", str(pred), "--out", str(tmp_path / "out"),
                "--workers", "1"]
        out = tmp_path / "out"
        ds = davis.DAVIS(root, "2016", "val")
        direct = davis.evaluate_sequences(ds.ground_truth(), pred, True, workers=1, split="val")
        layout = "binary"
    else:
        args, pred = _make(benchmark, tmp_path)
        out = pred
        scorer = {"lvos": lambda: lvos.score_lvos(tmp_path / "valid", pred, unseen=tmp_path / "unseen.txt",
                                                        out=tmp_path / "direct", workers=1),
                  "mosev2": lambda: mose.score_mosev2(tmp_path / "Annotations", pred, tmp_path / "meta.json",
                                                            tmp_path / "direct", workers=1),
                  "vos-benchmark": lambda: generic.score_vos_benchmark(tmp_path / "gt", pred, tmp_path / "direct",
                                                                          workers=1),
                  "sav": lambda: sav.score_sav(tmp_path / "Annotations_6fps", pred, tmp_path / "direct",
                                                      workers=1)}[benchmark]
        (tmp_path / "direct").mkdir()
        direct = scorer()
        layout = "per-object" if benchmark == "sav" else "ids"
    assert evaluation.main(args) == 0
    saved = json.loads((out / report.SCORES_NAME).read_text())
    assert saved["benchmark"] == benchmark and saved["mask_layout"] == layout
    decimals = {"davis": davis.DECIMALS, "lvos": lvos.DECIMALS, "mosev2": mose.DECIMALS,
                "vos-benchmark": generic.DECIMALS, "sav": generic.DECIMALS}
    assert saved["decimals"] == decimals[benchmark]
    scores = report.load_scores(out)
    assert [c for c, _ in scores.result.global_table] == [c for c, _ in direct.global_table]
    assert [v for _, v in scores.result.global_table] == pytest.approx([v for _, v in direct.global_table], nan_ok=True)
    assert [(o.name, o.frames, o.counted.tolist()) for o in scores.result.objects] == [
        (o.name, o.frames, o.counted.tolist()) for o in direct.objects]
    for got, want in zip(scores.result.objects, direct.objects, strict=True):
        assert got.j == pytest.approx(want.j, nan_ok=True) and got.f == pytest.approx(want.f, nan_ok=True)
    page = (out / report.REPORT_NAME).read_text()
    assert all(o.name in page for o in direct.objects)

    assert evaluation.main([*args, "--no-report"]) == 0
    assert not (out / report.REPORT_NAME).exists() and not (out / report.SCORES_NAME).exists()
