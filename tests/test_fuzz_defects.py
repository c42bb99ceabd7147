"""The defects a hostile fuzz of the readers, the scorers and the reports found (issue 29), each pinned by a test that
fails on the code before its fix: silent wrong results and data loss, tracebacks instead of one line, checks that
came after the work, and reports that showed numbers in the wrong unit."""

from __future__ import annotations

import errno
import json
import math
import shutil
import subprocess
import warnings
from pathlib import Path

import bench_data
import numpy as np
import pytest
from conftest import save_mask, write_jpeg
from test_readers import BOX, H, W, frame, ids, make_lvos, make_mose, make_sav, test_run, weights  # noqa: F401
from test_report import chromium

import evaluation
import run
from benchmarks import davis, generic, lvos, mose, sav, ytvos
from benchmarks.common import ObjectScores, Scores
from core import inference
from reports import report
from utils import VOSInputError


def files_under(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


# ----------------------------------------------------------------------------------------------------------------
# 1. Duplicate frame stems, refused by every reader
# ----------------------------------------------------------------------------------------------------------------


def _davis17(root: Path) -> Path:
    for t in range(3):
        write_jpeg(root / "JPEGImages/480p/d1" / f"{t:05d}.jpg", frame(t))
        save_mask(root / "Annotations/480p/d1" / f"{t:05d}.png", ids(t, box=True))
    (root / "ImageSets/2017").mkdir(parents=True)
    (root / "ImageSets/2017/val.txt").write_text("d1\n")
    return root


def _ytvos(root: Path) -> Path:
    for t in range(3):
        for folder in ("valid/JPEGImages", "valid_all_frames/JPEGImages"):
            write_jpeg(root / folder / "y1" / f"{t:05d}.jpg", frame(t))
    save_mask(root / "valid/Annotations/y1/00000.png", ids(0, box=True))
    return root


def _generic(root: Path) -> Path:
    for t in range(3):
        write_jpeg(root / "JPEGImages/g1" / f"{t:05d}.jpg", frame(t))
    save_mask(root / "Annotations/g1/00000.png", ids(0, box=True))
    return root


READERS = {  # layout: (build the root, open the layout, the video folder of frames)
    "davis": (_davis17, lambda r: davis.DAVIS(r, "2017", "val"), "JPEGImages/480p/d1"),
    "ytvos": (_ytvos, lambda r: ytvos.YouTubeVOS(r), "valid_all_frames/JPEGImages/y1"),
    "mose": (lambda r: make_mose(r, {"m1": 3}), lambda r: mose.MOSE(r), "valid/JPEGImages/m1"),
    "lvos": (make_lvos, lambda r: lvos.LVOS(r), "valid/JPEGImages/lv1"),
    "sav": (make_sav, lambda r: sav.SAV(r), "sav_val/JPEGImages_24fps/s1"),
    "generic": (_generic, lambda r: generic.Generic(r), "JPEGImages/g1"),
}


@pytest.mark.parametrize("layout", list(READERS))
def test_two_frames_of_one_name_are_refused_by_every_reader(layout: str, tmp_path: Path) -> None:
    """Bug: 00001.jpg beside 00001.JPG (or 00002.jpg beside 00002.png) both ran and wrote one mask, the later
    overwriting the earlier (and the zip held the name twice); only --video refused it."""
    build, open_layout, folder = READERS[layout]
    root = build(tmp_path / layout)
    first = sorted((root / folder).iterdir())[1]
    twin = first.with_suffix(".png" if layout == "generic" else ".JPG")
    shutil.copy(first, twin)
    with pytest.raises(VOSInputError) as caught:
        list(open_layout(root).videos())
    message = str(caught.value)
    assert f"'{first}'" in message and f"'{twin}'" in message and "keep one of them" in message, message


def test_run_py_refuses_two_frames_of_one_name_in_one_line_before_any_mask(weights: Path, tmp_path: Path,  # noqa: F811
                                                                           capsys: pytest.CaptureFixture) -> None:
    """Bug: run.py --test ran both frames of one name; it must exit 2 with one line and write no mask."""
    root = make_mose(tmp_path / "MOSE", {"m1": 3})
    shutil.copy(root / "valid/JPEGImages/m1/00001.jpg", root / "valid/JPEGImages/m1/00001.JPG")
    assert test_run(weights, tmp_path / "out", "--data", "MOSE_val", "--mose", str(root)) == 2
    assert "00001.JPG" in one_error_line(capsys.readouterr().err)
    assert not list((tmp_path / "out").rglob("*.png"))


# ----------------------------------------------------------------------------------------------------------------
# 2, 3. evaluation.py: checks before it removes anything, nothing of another scoring left, nothing written into
# the ground truth
# ----------------------------------------------------------------------------------------------------------------


def _scored_generic(root: Path) -> tuple[Path, Path]:
    bench_data.make_generic(root, n_videos=2, n=5)
    assert evaluation.main(["--benchmark", "vos-benchmark", "--gt", str(root / "gt"), "--results",
                            str(root / "pred"), "--workers", "1"]) == 0
    return root / "gt", root / "pred"


def test_a_refused_scoring_deletes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Bug: evaluation.py removed report.html and scores.json before checking its flags, so `--benchmark lvos
    --results R` without --gt exited 2 with R's report already gone."""
    _, pred = _scored_generic(tmp_path)
    before = files_under(pred)
    assert {"report.html", "scores.json", "results.csv"} <= set(before)
    capsys.readouterr()
    assert evaluation.main(["--benchmark", "lvos", "--results", str(pred)]) == 2
    assert "needs --gt" in one_error_line(capsys.readouterr().err)
    assert evaluation.main(["--benchmark", "mosev2", "--gt", str(tmp_path / "gt"), "--results", str(pred)]) == 2
    assert "--meta" in one_error_line(capsys.readouterr().err)
    assert files_under(pred) == before


def test_scoring_another_benchmark_into_one_out_leaves_none_of_the_first(tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture) -> None:
    """Bug: scoring LVOS into an --out where vos-benchmark had been scored left its results.csv beside the new
    report (and the other way round), numbers the new report does not describe."""
    _scored_generic(tmp_path / "g")
    bench_data.make_lvos(tmp_path / "l", n_videos=2, n=7)
    out = tmp_path / "out"
    gen = ["--benchmark", "vos-benchmark", "--gt", str(tmp_path / "g/gt"), "--results", str(tmp_path / "g/pred")]
    lv = ["--benchmark", "lvos", "--gt", str(tmp_path / "l/valid"), "--results", str(tmp_path / "l/pred"),
          "--unseen", str(tmp_path / "l/unseen.txt")]
    assert evaluation.main([*gen, "--out", str(out), "--workers", "1"]) == 0
    assert evaluation.main([*lv, "--out", str(out), "--workers", "1"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["global_results-valid.csv", "per-sequence_results-valid.csv",
                                                     "report.html", "scores.json"]
    assert "removed results.csv" in capsys.readouterr().out
    assert evaluation.main([*gen, "--out", str(out), "--workers", "1"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["report.html", "results.csv", "scores.json"]


@pytest.mark.parametrize("case", ["out is gt", "out inside gt", "results is gt"])
def test_evaluation_never_writes_into_the_ground_truth(case: str, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture) -> None:
    """Bug: --out equal to --gt or inside it, and --results equal to --gt, were accepted: the CSVs, scores.json
    and report.html went into the ground-truth tree (and the GT was scored against itself)."""
    bench_data.make_generic(tmp_path, n_videos=2, n=5)
    gt = tmp_path / "gt"
    before = files_under(gt)
    args = ["--benchmark", "vos-benchmark", "--gt", str(gt), "--workers", "1"]
    args += {"out is gt": ["--results", str(tmp_path / "pred"), "--out", str(gt)],
             "out inside gt": ["--results", str(tmp_path / "pred"), "--out", str(gt / "vb0" / "scores")],
             "results is gt": ["--results", str(gt)]}[case]
    assert evaluation.main(args) == 2
    line = one_error_line(capsys.readouterr().err)
    assert ("is the --gt folder" in line) if case == "results is gt" else ("the input" in line and "--out" in line)
    assert files_under(gt) == before
    assert not (gt / "vb0" / "scores").exists()


# ----------------------------------------------------------------------------------------------------------------
# 4. LVOS: an object never given, a frame_range past the frames on disk
# ----------------------------------------------------------------------------------------------------------------


def _lvos_meta(root: Path, video: str, obj: str, **frame_range: int) -> None:
    path = root / "valid/valid_meta.json"
    meta = json.loads(path.read_text())
    meta["videos"][video]["objects"][obj]["frame_range"].update(frame_range)
    path.write_text(json.dumps(meta))


def test_lvos_object_absent_from_its_start_mask_is_refused_up_front(weights: Path, tmp_path: Path,  # noqa: F811
                                                                    capsys: pytest.CaptureFixture) -> None:
    """Bug: an object whose frame_range starts at a frame whose mask lacks it was never given, and scored J = F = 1
    on the frames where the ground truth lacks it too, inflating the means."""
    root = make_lvos(tmp_path / "LVOS")
    _lvos_meta(root, "lv1", "2", start=6, frame_nums=6)  # the box is in the masks from 00000011 on
    with pytest.raises(VOSInputError, match=r"video lv1 object\(s\) 2 start at 00000006"):
        list(lvos.LVOS(root).videos())
    assert test_run(weights, tmp_path / "out", "--data", "LVOS_val", "--lvos", str(root)) == 2
    assert "00000006.png" in one_error_line(capsys.readouterr().err)
    assert not list((tmp_path / "out").rglob("*.png"))


def test_lvos_frame_range_past_the_frames_is_refused_before_any_work(weights: Path, tmp_path: Path,  # noqa: F811
                                                                     capsys: pytest.CaptureFixture) -> None:
    """Bug: a frame_range ending past the frames on disk was told only after every video was segmented (run.py)
    or after the earlier results were removed (evaluation.py), by a message about a missing ground-truth PNG."""
    root = make_lvos(tmp_path / "LVOS")
    _lvos_meta(root, "lv1", "1", end=41, frame_nums=9)  # the frames end at 00000031
    assert test_run(weights, tmp_path / "out", "--data", "LVOS_val", "--lvos", str(root)) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "video lv1 object 1 has frame_range end 41" in line and "valid_meta.json" in line
    assert not list((tmp_path / "out").rglob("*.png"))

    bench_data.make_lvos(tmp_path / "scored", n_videos=1, n=7)
    args = ["--benchmark", "lvos", "--gt", str(tmp_path / "scored/valid"), "--results", str(tmp_path / "scored/pred"),
            "--unseen", str(tmp_path / "scored/unseen.txt"), "--workers", "1"]
    assert evaluation.main(args) == 0
    before = files_under(tmp_path / "scored/pred")
    meta = tmp_path / "scored/valid/valid_meta.json"
    meta.write_text(meta.read_text().replace('"end": 31, "frame_nums": 7', '"end": 41, "frame_nums": 9'))
    capsys.readouterr()
    assert evaluation.main(args) == 2
    assert "video lv0 object 1 has frame_range end 41" in one_error_line(capsys.readouterr().err)
    assert files_under(tmp_path / "scored/pred") == before


# ----------------------------------------------------------------------------------------------------------------
# 6, 7. --compare of different videos; rescoring keeps the checkpoint's name
# ----------------------------------------------------------------------------------------------------------------


def _run(names: list[str], jf: float, weights_name: str = "") -> report.RunScores:
    objects = [ObjectScores(n, n.rsplit("_", 1)[0], "1", ["0", "1", "2"], [math.nan, jf, math.nan],
                            [math.nan, jf, math.nan], [False, True, False], jf) for n in names]
    return report.RunScores(Scores("davis", "val", [("J&F-Mean", jf)], objects, 3), "f", "g", "p",
                            weights_name=weights_name, date="2025-01-01")


def test_compare_of_runs_on_different_videos_names_what_differs(tmp_path: Path) -> None:
    """Bug: two runs on different videos or subsets were compared with no note, their global means read as if
    over the same objects (and the page said '1 objects')."""
    runs = [_run(["bear_1", "dog_1", "dog_2"], 0.5), _run(["bear_1", "car_1"], 0.6)]
    path, table = report.compare(runs, tmp_path, ["A_dir", "B_dir"])
    notes = [line for line in table.splitlines() if line.startswith("note:")]
    assert len(notes) == 2
    assert "run A did not score 1 object" in notes[0] and "car_1" in notes[0] and "video: car" in notes[0]
    assert "run B did not score 2 objects" in notes[1] and "dog_1, dog_2" in notes[1] and "video: dog" in notes[1]
    page = path.read_text()
    assert "run B did not score 2 objects" in page
    assert "The 1 object that changed most" in page  # not '1 objects'
    _, same = report.compare([_run(["bear_1"], 0.5), _run(["bear_1"], 0.6)], tmp_path, ["A", "B"])
    assert "note:" not in same


def test_rescoring_a_run_keeps_the_checkpoint_name(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Bug: evaluation.py replaced run.py's scores.json without the weights' name, so --compare showed an empty
    weights cell and `A = ... (, <date>)`."""
    gt, pred = _scored_generic(tmp_path)
    scores = report.load_scores(pred)
    scores.weights_name, scores.weights_id = "emvos.pth", "abc123"  # as run.py --test records them
    report.save_scores(scores, pred / "scores.json")
    args = ["--benchmark", "vos-benchmark", "--gt", str(gt), "--results", str(pred), "--workers", "1"]
    assert evaluation.main(args) == 0
    again = report.load_scores(pred)
    assert (again.weights_name, again.weights_id) == ("emvos.pth", "abc123")
    capsys.readouterr()
    assert evaluation.main(["--compare", str(pred), str(pred), "--out", str(tmp_path / "cmp")]) == 0
    assert f"A = {pred} (emvos.pth, " in capsys.readouterr().out
    # without a scores.json: the name from run.py's run.json in the parent (its --output)
    (pred / "scores.json").unlink()
    (tmp_path / "run.json").write_text(json.dumps({"weights": "/ckpt/videomatch.pth"}))
    assert evaluation.main(args) == 0
    assert report.load_scores(pred).weights_name == "videomatch.pth"


# ----------------------------------------------------------------------------------------------------------------
# Tracebacks that are one line now
# ----------------------------------------------------------------------------------------------------------------


def test_sav_list_naming_a_video_twice_is_refused_up_front(weights: Path, tmp_path: Path,  # noqa: F811
                                                           capsys: pytest.CaptureFixture) -> None:
    """Bug: sav_val.txt naming a video twice ran it twice and ended in a FileExistsError traceback (a temporary
    symlink) after all the segmentation."""
    root = make_sav(tmp_path / "SAV")
    (root / "sav_val/sav_val.txt").write_text("s1\ns1\n")
    assert test_run(weights, tmp_path / "out", "--data", "SAV_val", "--sav", str(root)) == 2
    assert "names the video(s) s1 more than once" in one_error_line(capsys.readouterr().err)
    assert not list((tmp_path / "out").rglob("*.png"))


@pytest.mark.parametrize("kind", ["binary", "folder"])
def test_a_bad_unseen_list_is_one_line(kind: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Bugs: a binary --unseen file raised UnicodeDecodeError; a folder as --unseen was said not to exist."""
    bench_data.make_lvos(tmp_path, n_videos=1, n=7)
    unseen = tmp_path / "unseen.bin"
    if kind == "binary":
        unseen.write_bytes(bytes(range(128, 256)) * 4)
    else:
        unseen.mkdir()
    args = ["--benchmark", "lvos", "--gt", str(tmp_path / "valid"), "--results", str(tmp_path / "pred"),
            "--unseen", str(unseen), "--workers", "1"]
    assert evaluation.main(args) == 2
    line = one_error_line(capsys.readouterr().err)
    assert ("is not a text file" if kind == "binary" else "is a folder") in line and str(unseen) in line


def test_a_full_disk_while_writing_the_report_is_one_line_and_leaves_no_half_report(
        tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """Bug: a full disk during evaluation raised OSError [Errno 28] and left results.csv and scores.json without
    report.html."""
    bench_data.make_generic(tmp_path, n_videos=2, n=5)

    def full(scores: report.RunScores, path: Path) -> Path:
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(report, "write_report", full)
    args = ["--benchmark", "vos-benchmark", "--gt", str(tmp_path / "gt"), "--results", str(tmp_path / "pred"),
            "--workers", "1"]
    assert evaluation.main(args) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "could not write" in line and "report.html" in line and "No space left on device" in line
    assert (tmp_path / "pred/results.csv").is_file()
    assert not (tmp_path / "pred/scores.json").exists() and not (tmp_path / "pred/report.html").exists()


def test_a_read_only_out_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Bug: a read-only --out holding an earlier report raised OSError [Errno 30] (removing it) with a traceback."""
    gt, pred = _scored_generic(tmp_path)
    unlink = Path.unlink

    def read_only(self: Path, missing_ok: bool = False) -> None:
        if self.parent == pred and self.exists():
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", read_only)
    capsys.readouterr()
    assert evaluation.main(["--benchmark", "vos-benchmark", "--gt", str(gt), "--results", str(pred)]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "Read-only file system" in line and str(pred) in line


# ----------------------------------------------------------------------------------------------------------------
# Late or unclear
# ----------------------------------------------------------------------------------------------------------------


def test_sav_object_empty_in_every_evaluated_frame_is_told_before_any_frame(tmp_path: Path) -> None:
    """Bug: an SA-V object empty in all its evaluated frames was reported after the segmentation, naming a deleted
    temporary folder instead of the user's Annotations_6fps/<video>/<obj>."""
    root = make_sav(tmp_path / "SAV")
    folder = root / "sav_val/Annotations_6fps/s1/001"
    save_mask(folder / "00004.png", np.zeros((H, W), np.uint8))  # the one evaluated frame (first, last excluded)
    layout = sav.SAV(root)
    with pytest.raises(VOSInputError, match=f"SA-V object {folder} is empty in all its evaluated GT frames"):
        layout.scoring("SAV_val", tmp_path / "out", layout.sequences)


def test_an_orphan_mask_says_the_fix_and_an_empty_gt_folder_is_an_error(tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture) -> None:
    """Bugs: a mask without its frame was refused without a fix; a ground-truth video folder without PNGs was
    skipped silently (its objects missing from the table)."""
    root = _generic(tmp_path / "G")
    save_mask(root / "Annotations/g1/00007.png", ids(0, box=True))
    with pytest.raises(VOSInputError, match="rename the mask after the frame it was drawn on, or remove it"):
        list(generic.Generic(root).videos())
    bench_data.make_generic(tmp_path / "B", n_videos=2, n=5)
    for png in (tmp_path / "B/gt/vb1").iterdir():
        png.unlink()
    args = ["--benchmark", "vos-benchmark", "--gt", str(tmp_path / "B/gt"), "--results", str(tmp_path / "B/pred")]
    assert evaluation.main(args) == 2
    assert f"ground-truth folder {tmp_path / 'B/gt/vb1'} holds no .png mask" in one_error_line(capsys.readouterr().err)


def test_a_video_asked_for_twice_is_refused(tmp_path: Path) -> None:
    """Bug: `--sequences bear bear` ran bear twice (its masks written twice, its objects scored twice)."""
    root = make_mose(tmp_path / "MOSE", {"m1": 2, "m2": 2})
    with pytest.raises(VOSInputError, match="m1 of MOSE valid .* are asked for more than once"):
        list(mose.MOSE(root).videos(["m1", "m2", "m1"]))


def test_vis_frame_past_the_end_is_told_before_the_model_loads(tmp_path: Path, frame_folder: tuple[Path, Path],
                                                                monkeypatch: pytest.MonkeyPatch,
                                                                capsys: pytest.CaptureFixture) -> None:
    """Bug: --vis-frame past a video's last frame was refused only after the model had loaded (7 s)."""
    def no_model(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model was loaded before --vis-frame was checked")

    monkeypatch.setattr(inference, "open_model", no_model)
    folder, mask = frame_folder
    code = run.main(["--test", "--device", "cpu", "--video", str(folder), "--mask", str(mask), "--visualize",
                     "--vis-frame", "9", "--output", str(tmp_path / "out")])
    assert code == 2
    assert "--vis-frame 9 is past the last frame of frames (frames 0..3)" in one_error_line(capsys.readouterr().err)


@pytest.mark.parametrize("workers", ["0", "-3"])
def test_evaluation_refuses_no_workers(workers: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Bug: evaluation.py --workers 0 and --workers -3 were accepted."""
    with pytest.raises(SystemExit) as caught:
        evaluation.main(["--results", str(tmp_path), "--workers", workers])
    assert caught.value.code == 2
    assert "--workers" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------------------------
# Reports: each number in its toolkit's unit, on a chart that fits it
# ----------------------------------------------------------------------------------------------------------------


def _object(name: str, j: float, f: float, jf: float) -> ObjectScores:
    return ObjectScores(name, name.rsplit("_", 1)[0], "1", ["0", "1", "2"], [1.0, j, 1.0], [1.0, f, 1.0],
                        [False, True, False], jf)


def _charts(scores: report.RunScores, monkeypatch: pytest.MonkeyPatch) -> tuple[str, list]:
    """The report's text and, per bar chart drawn, (x limits, bar ends, mean line x or None)."""
    charts = []
    png_uri = report._png_uri

    def capture(fig: object) -> str:
        ax = fig.axes[0]
        means = [line.get_xdata()[0] for line in ax.get_lines() if line.get_linestyle() == "--"]
        charts.append((ax.get_xlim(), [p.get_width() for p in ax.patches], means[0] if means else None))
        return png_uri(fig)

    monkeypatch.setattr(report, "_png_uri", capture)
    return report.render_report(scores), charts


@pytest.mark.parametrize("percent", [True, False])
def test_report_shows_the_toolkits_unit_on_an_axis_that_fits(percent: bool, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Bug: the per-object chart's axis was fixed at 0-1 while SA-V's and vos-benchmark's J&F are percentages
    (4.5-10.2): every bar was full and the mean line fell off the chart; the table mixed units (J&F 10.183 beside
    J 0.105); the title read 'sav : evaluation report' and the text '1 objects'."""
    scale = 100 if percent else 1
    objs = [_object("s1_000", 0.045, 0.046, 4.55 * scale / 100), _object("s2_000", 0.10, 0.104, 10.2 * scale / 100)]
    result = Scores("sav" if percent else "lvos", "val" if percent else "valid", [("J&F", 7.4 * scale / 100)], objs,
                    1 if percent else 3, percent=percent, title="SA-V" if percent else "LVOS")
    text, charts = _charts(report.RunScores(result, "f", "g", "p"), monkeypatch)
    (lo, hi), bars, mean = charts[0]
    assert (lo, hi) == (0.0, float(scale))
    assert all(lo <= b <= hi for b in bars) and lo <= mean <= hi and bars == pytest.approx([o.jf for o in objs])
    title = "SA-V val: evaluation report" if percent else "LVOS valid: evaluation report"
    assert f"<title>{title}</title>" in text
    tree = text.split('<table id="objects">')[1].split("</table>")[0]
    if percent:  # J&F, J and F of the first object, all in percent with the toolkit's 1 decimal
        assert 'data-value="4.5"' in tree and 'data-value="4.6"' in tree and "J (%)" in tree
    else:
        assert 'data-value="0.045"' in tree and 'data-value="0.046"' in tree
    one = report.render_report(report.RunScores(Scores("sav", "val", [("J&F", 4.5)], objs[:1], 1, percent=True),
                                                "f", "g", "p"))
    assert "1 object," in one and "1 objects" not in one


def test_compare_keeps_long_names_on_screen_without_matplotlib_warnings(tmp_path: Path) -> None:
    """Bugs: a long object name pushed the A/B/delta columns of compare.html off screen, and the chart's layout
    collapsed with a matplotlib UserWarning on stderr."""
    long = "x" * 160 + "_1"
    runs = [_run([long, "bear_1"], 0.5), _run([long, "bear_1"], 0.7)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        path, _ = report.compare(runs, tmp_path, ["A", "B"])
    # measure the laid-out page in Chromium at 1300 px: a copy without the no-script policy, whose script writes
    # the document's width into the DOM
    text = path.read_text()
    text = text.split('<meta http-equiv="Content-Security-Policy"')[0] + text.split("style-src 'unsafe-inline'\">")[1]
    text = text.replace("</body>", "<script>document.body.setAttribute('data-width', "
                                   "document.documentElement.scrollWidth)</script></body>")
    probe = tmp_path / "probe.html"
    probe.write_text(text)
    dom = subprocess.run(
        [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--window-size=1300,900",
         f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", probe.resolve().as_uri()],
        capture_output=True, text=True, timeout=60, check=True).stdout
    width = int(dom.split('data-width="')[1].split('"')[0])
    assert width <= 1300, width


@pytest.mark.parametrize(("rank", "says"), [(None, True), ("0", True), ("1", False)])
def test_an_interrupted_torchrun_job_says_so_once(rank: str | None, says: bool, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture) -> None:
    """Bug: SIGTERM to a torchrun job printed "interrupted" once per rank. Process 0 (or a plain run) says it; every
    process still exits 143, which torchrun reports (its own SignalException traceback is the launcher's)."""
    if rank is None:
        monkeypatch.delenv("RANK", raising=False)
    else:
        monkeypatch.setenv("RANK", rank)

    def stopped(*_: object) -> None:
        raise run.Terminated

    monkeypatch.setattr(run, "_run_mode", stopped)
    assert run.main(["--test", "--device", "cpu"]) == 143
    assert ("interrupted" in capsys.readouterr().err) == says
