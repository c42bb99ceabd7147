"""Toolkit scoring (benchmarks/metrics.py, the benchmark modules, evaluation.py --benchmark): rules, then parity.

The parity numbers at the end were printed by the official evaluators on the data sets tests/bench_data.py writes
(regenerated here, deterministically), at the commits named below, each run single-process in a venv with
numpy 1.26.4 (the LVOS toolkit fails on numpy 2):
- LVOS: LingyiHongfd/lvos-evaluation @25cb02d, `python evaluation_method.py --lvos_path <lvos>/valid --set valid
  --results_path <lvos>/pred --mp_nums 1`, run in a folder holding unseen_videos.txt = "lv1" (and an empty
  unsupervised_videos.txt); full-precision values from `LVOSEvaluation(...).evaluate(...)` M_per_object.
- MOSE v2: henghuiding/MOSE-api @241977a, `python MOSEv2/sam2_rcms/tools/score.py --meta <mose>/meta.json
  --ann <mose>/Annotations --pred <mose>/pred --output OUT`; full precision from `merge_chunk_results`.
- vos-benchmark: hkchengrex/vos-benchmark @acb4733, `python benchmark.py -g <vb>/gt -m <vb>/pred -n 1`; full
  precision from `VideoEvaluator(gt, pred)(video)`.
- SA-V: facebookresearch/sam2 @2b90b9f, `python sav_dataset/sav_evaluator.py --gt_root <sav>/Annotations_6fps
  --pred_root <sav>/pred -n 1`; full precision from `utils.sav_benchmark.VideoEvaluator`.
Every value and every file byte matched (metrics.json up to its key order and total_time).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import bench_data
import numpy as np
import pytest

import evaluation
from benchmarks import davis, generic, lvos, metrics, mose, sav
from benchmarks.common import ObjectScores
from reports import report
from utils import VOSInputError

FRAME_480P = (480, 854)  # diagonal 979.65: DAVIS radius ceil(7.837) = 8


def _scores(sequence: str, values: dict) -> ObjectScores:
    one = np.ones(1)
    return ObjectScores(f"{sequence}_1", sequence, "1", ["x"], one, one, one > 0, 0.0, values)


# ----------------------------------------------------------------------------------------------------------------
# Per-frame measures: J's +1 smoothing, MOSE v2's radii
# ----------------------------------------------------------------------------------------------------------------


def test_jaccard_plus_one_smoothing() -> None:
    """Catches a MOSE v2 J without its +1 (a false positive on an empty GT would score 0, not 1/(k+1))."""
    gt = np.zeros((8, 8), bool)
    gt[0:2, 0:5] = True  # 10 px
    pred = np.zeros((8, 8), bool)
    pred[1:3, 0:5] = True  # 10 px, 5 shared: I = 5, U = 15
    assert metrics.jaccard(gt, pred) == pytest.approx(5 / 15)
    assert metrics.jaccard(gt, pred, smooth=1) == pytest.approx(6 / 16)
    fp = np.zeros((8, 8), bool)
    fp[5, 0:6] = True  # 6-px false positive on an empty GT
    empty = np.zeros((8, 8), bool)
    assert metrics.jaccard(empty, fp) == 0.0
    assert metrics.jaccard(empty, fp, smooth=1) == pytest.approx(1 / 7)
    assert metrics.jaccard(empty, empty, smooth=1) == 1.0


def test_mose_radii_small_large_and_empty_objects() -> None:
    """Catches F_new with DAVIS's radius, a ceiled classic radius for large objects, or a wrong 4900-px threshold."""
    diag = 0.008 * math.hypot(*FRAME_480P)  # 7.8372
    assert diag == pytest.approx(7.83721, abs=1e-5)

    def radii(area: int) -> tuple[float, float]:
        gt = np.zeros(FRAME_480P, bool)
        gt.flat[:area] = True  # only the pixel count matters
        return mose.mose_radii(gt)

    assert radii(400) == (8.0, 2.0)  # ceil(0.1 * 20) = 2 < 7.837: classic F is DAVIS's (radius 8)
    assert radii(4900) == (8.0, 7.0)  # ceil(0.1 * 70) = 7, the largest area radius
    assert radii(4901) == pytest.approx((diag, diag))  # ceil(7.0007) = 8 > 7.837: both use the float radius
    assert radii(0) == pytest.approx((diag, diag))  # empty GT: the diagonal fallback, capped
    # skimage's disk for the float radius is off-centre: 17x17 with 191 pixels against 197 for radius 8.
    assert metrics.disk(diag).shape == (17, 17) and metrics.disk(diag).sum() == 191
    assert metrics.disk(8.0).sum() == 197


def test_mose_float_radius_changes_classic_f_of_a_large_object() -> None:
    """Catches a classic F that ceils the radius for large objects (it would score 1, as DAVIS does, not 0).

    GT = columns >= 100, prediction = columns >= 108, full height, 480x854. Their boundary maps are the columns 99
    and 107 (the pixel left of each edge). DAVIS's disk(8) reaches 8 columns either way, so F = 1. The float
    disk(7.837) has no pixel at column offset -8 or +8 in any row (its grid is -7.837 .. 8.163, and only the centre
    row could reach -7.837 exactly, where the row value 0.163 adds to it), so nothing matches: F = F_new = 0.
    J = 746 / 754 columns, MOSE J = (746 * 480 + 1) / (754 * 480 + 1).
    """
    gt = np.zeros(FRAME_480P, np.uint8)
    gt[:, 100:] = 1
    pred = np.zeros(FRAME_480P, np.uint8)
    pred[:, 108:] = 1
    plain = metrics.object_scores(gt, pred, [1])[0]
    scored = metrics.object_scores(gt, pred, [1], 1, mose.mose_radii)[0]
    assert plain[metrics.J] == pytest.approx(746 / 754) and plain[metrics.F] == 1.0
    assert scored[metrics.J] == pytest.approx((746 * 480 + 1) / (754 * 480 + 1))
    assert scored[metrics.F] == 0.0 and scored[metrics.F_NEW] == 0.0


def test_mose_f_new_uses_the_area_radius_of_a_small_object() -> None:
    """Catches F_new computed with the diagonal radius (it would be 1 here, like the classic F).

    A 9x9 square (81 px: radius ceil(0.9) = 1) and its copy 3 px to the right, 480x854. Each boundary map is a
    36-px ring (column left of and row above the square outside it, last column and last row inside it). With the
    radius-1 disk (a plus) 18 of the 36 predicted ring pixels touch the GT ring (4 on its left column, 7 on its top
    row, 0 on its right column, 7 on its bottom row), and 18 of the GT ring touch the prediction's (0, 8, 3, 7):
    P = R = 0.5, F_new = 0.5. The classic F (radius 8 > 3 px) is 1.
    """
    gt = np.zeros(FRAME_480P, np.uint8)
    gt[100:109, 100:109] = 1
    pred = np.zeros(FRAME_480P, np.uint8)
    pred[100:109, 103:112] = 1
    assert mose.mose_radii(gt == 1) == (8.0, 1.0)
    scored = metrics.object_scores(gt, pred, [1], 1, mose.mose_radii)[0]
    assert scored[metrics.F_NEW] == pytest.approx(0.5)
    assert scored[metrics.F] == 1.0
    assert scored[metrics.J] == pytest.approx((54 + 1) / (108 + 1))  # I = 9 x 6, U = 81 + 81 - 54


# ----------------------------------------------------------------------------------------------------------------
# MOSE v2: disappearance and reappearance
# ----------------------------------------------------------------------------------------------------------------


def test_mose_disappear_and_reappear_segments() -> None:
    """Catches segments cut at the wrong frame, a counted disappearance at the first frame, or a late first
    appearance not counted as a reappearance."""
    visible = np.array([1, 1, 0, 0, 1, 0, 1], bool)
    assert mose.mose_segments(visible) == ([(2, 4), (5, 6)], [(4, 5), (6, 7)])
    late = np.array([0, 0, 1, 1, 0], bool)  # absent at the first evaluated frame: that gap is not a disappearance
    assert mose.mose_segments(late) == ([(4, 5)], [(2, 4)])
    assert mose.mose_segments(np.ones(4, bool)) == ([], [])

    j = np.array([1.0, 0.5, 0.2, 0.4, 1.0, 0.0, 0.8])
    f = np.array([1.0, 0.5, 0.0, 0.2, 0.6, 0.0, 0.4])
    values = mose.mose_object_values(j, f, f, visible)
    # disappear: J (0.3 + 0.0) / 2 = 0.15, F_new (0.1 + 0) / 2 = 0.05 -> 10.0; reappear: J (1.0 + 0.8) / 2 = 0.9,
    # F_new (0.6 + 0.4) / 2 = 0.5 -> 70.0; J = 3.9 / 7, F_new = 2.7 / 7.
    assert values["disappear_J&F_new"] == 10.0 and values["reappear_J&F_new"] == 70.0
    assert values["J"] == round(3.9 / 7 * 100, 2) and values["F_new"] == round(2.7 / 7 * 100, 2)
    assert mose.mose_object_values(j, f, f, np.ones(7, bool))["disappear_J&F_new"] is None


def test_mose_global_means_skip_objects_without_segments_and_say_so() -> None:
    """Catches disappear/reappear averaged over all objects (None counted as 0) or a silent NaN."""
    a = {"_raw": (0.8, 0.6, 0.7, (0.2, 0.4), None)}
    b = {"_raw": (0.4, 0.2, 0.3, None, None)}
    table, notes = mose.reduce_mosev2([_scores("a", a), _scores("b", b)])
    table = dict(table)
    assert table["J"] == 60.0 and table["F_new"] == 40.0 and table["J&F_new"] == 50.0 and table["J&F"] == 55.0
    assert table["disappear_J&F_new"] == 30.0  # only object a: (0.2 + 0.4) / 2
    assert math.isnan(table["reappear_J&F_new"])
    assert notes == [
        "MOSE v2: no object reappears in the evaluated frames; reappear_J&F_new is nan, as score.py prints it"
    ]


# ----------------------------------------------------------------------------------------------------------------
# LVOS: frame range, V, seen/unseen
# ----------------------------------------------------------------------------------------------------------------


def test_lvos_frame_range_drops_first_and_last() -> None:
    """Catches scoring the range's first or last annotated frame, or a wrong step/name width."""
    frames = lvos.lvos_frames(1, 51, 11)  # 00000001 .. 00000051 at step 5: 11 annotated frames
    assert frames == [f"{i:08d}" for i in range(6, 47, 5)] and len(frames) == 9


def test_lvos_variance_rounded_before_the_square_root() -> None:
    """Catches V as the plain standard deviation (0.0355, 0.005) instead of sqrt(round(var, 4))."""
    j = f = np.array([0.5, 0.571])  # (J+F)/2 = 0.5, 0.571: var = 0.0355^2 = 0.00126025 -> 0.0013
    assert lvos.lvos_variance(j, f) == pytest.approx(math.sqrt(0.0013), abs=1e-15)
    j = f = np.array([1.0, 0.99])  # var = 2.5e-5 rounds to 0
    assert lvos.lvos_variance(j, f) == 0.0


def test_lvos_seen_and_unseen_groups_weigh_half_each() -> None:
    """Catches an object-weighted mean (J&F 0.825 here) instead of the toolkit's group average (0.65)."""
    seen = [_scores(f"s{i}", {"J": 1.0, "F": 1.0, "V": 0.0}) for i in range(3)]
    unseen = [_scores("u0", {"J": 0.2, "F": 0.4, "V": 0.1})]
    table, notes = lvos.reduce_lvos(seen + unseen, {"u0"})
    table = dict(table)
    assert table["J&F-Mean"] == pytest.approx(0.65)  # (1 + 1 + 0.2 + 0.4) / 4
    assert table["J-Mean"] == pytest.approx(0.6) and table["F-Mean"] == pytest.approx(0.7)
    assert table["V-Mean"] == pytest.approx(0.05) and table["J-unseen-Mean"] == pytest.approx(0.2)
    assert notes == []


def test_lvos_empty_group_is_said_in_one_line_and_left_empty(tmp_path: Path) -> None:
    """Catches a silent NaN (or a made-up number) when no evaluated video is unseen."""
    bench_data.make_lvos(tmp_path, n_videos=1, n=7)
    none_unseen = tmp_path / "none.txt"
    none_unseen.write_text("# no unseen video here\nnot_a_video\n")
    result = lvos.score_lvos(tmp_path / "valid", tmp_path / "pred", unseen=none_unseen, workers=1)
    assert result.notes == [
        "LVOS: no evaluated object is unseen; J&F-Mean, J-Mean, F-Mean, V-Mean and the unseen columns are left "
        "empty, as the official toolkit leaves them"
    ]
    row = (tmp_path / "pred" / "global_results-valid.csv").read_text().splitlines()[1].split(",")
    assert row[0] == row[1] == row[3] == row[4] == row[6] == row[7] == row[9] == ""
    assert row[2] != "" and row[5] != "" and row[8] != ""
    assert "(empty)" in lvos.format_lvos(result) and "nan" not in lvos.format_lvos(result)


def test_lvos_default_unseen_list_is_the_toolkits() -> None:
    """Catches a truncated or V1-era (27 ids) unseen list."""
    ids = lvos.read_video_list(lvos.LVOS_UNSEEN)
    assert len(ids) == 51 and {"R3UJGYwy", "3bvEjhOT"} <= ids and "UtEnRpiP" not in ids


def test_lvos_inconsistent_meta_is_refused(tmp_path: Path) -> None:
    """Catches silently scoring unfilled frames as 0, as the toolkit does when frame_nums is too large."""
    bench_data.make_lvos(tmp_path, n_videos=1, n=7)
    meta = tmp_path / "valid" / "valid_meta.json"
    data = json.loads(meta.read_text())
    data["videos"]["lv0"]["objects"]["1"]["frame_range"]["frame_nums"] = 9
    meta.write_text(json.dumps(data))
    with pytest.raises(VOSInputError, match="frame_nums 9 but start 1..end 31 at step 5 holds 7 frames"):
        lvos.score_lvos(tmp_path / "valid", tmp_path / "pred", workers=1)


# ----------------------------------------------------------------------------------------------------------------
# vos-benchmark and SA-V
# ----------------------------------------------------------------------------------------------------------------


def _square(value: int, rows: slice, cols: slice, shape: tuple[int, int] = (20, 20)) -> np.ndarray:
    m = np.zeros(shape, np.uint8)
    m[rows, cols] = value
    return m


def test_vos_benchmark_counts_objects_from_first_appearance(tmp_path: Path) -> None:
    """Catches counting a late object's empty early frames (J would be 66.7, DAVIS-style) or reporting an id that
    is only in the prediction.

    5 GT frames, 1..3 evaluated. Object 1: perfect everywhere. Object 2: in the GT at frame 3 only, predicted
    there exactly, plus a false positive at frame 2: counted from frame 2, J = F = (0 + 1) / 2. Object 3: only
    in the prediction of frame 1, not reported.
    """
    one = _square(1, slice(2, 8), slice(2, 8))
    for t in range(5):
        gt = one.copy()
        pred = one.copy()
        if t == 3:
            gt[12:16, 12:16] = 2
            pred[12:16, 12:16] = 2
        if t == 2:
            pred[12:14, 2:4] = 2
        if t == 1:
            pred[16:18, 16:18] = 3
        bench_data.save_ids(tmp_path / "gt" / "v" / f"{t:05d}.png", gt)
        bench_data.save_ids(tmp_path / "pred" / "v" / f"{t:05d}.png", pred)
    result = generic.score_vos_benchmark(tmp_path / "gt", tmp_path / "pred", workers=1)
    assert result.global_table == [("J&F", 75.0), ("J", 75.0), ("F", 75.0)]
    late = result.objects[1]
    assert (late.object_label, late.frames) == ("002", ["00001", "00002", "00003"])
    assert late.counted.tolist() == [False, True, True]
    assert late.j.tolist() == [1.0, 0.0, 1.0] and late.values["J"] == 50.0
    assert (tmp_path / "pred" / "results.csv").read_text() == (
        "sequence    ,obj,  J&F,    J,    F\n"
        "Global score,   , 75.0, 75.0, 75.0\n"
        "v           ,001, 100.0, 100.0, 100.0\n"
        "v           ,002, 50.0, 50.0, 50.0\n"
    )


def test_sav_scores_each_object_folder(tmp_path: Path) -> None:
    """Catches reading SA-V's per-object folders as one id map (the overlapping objects could not both be
    scored), scoring the first/last annotated frame, or accepting a multi-object PNG.

    Objects 000 and 001 overlap; frames 00000, 00004, 00008, 00012, of which 00004 and 00008 are evaluated.
    000 is predicted exactly; 001 is missed at 00004 and exact at 00008: J = F = 50.
    """
    a = _square(1, slice(2, 10), slice(2, 10))
    b = _square(1, slice(6, 14), slice(6, 14))  # overlaps a
    for t in (0, 4, 8, 12):
        for obj, gt, pred in (("000", a, a), ("001", b, b if t != 4 else np.zeros_like(b))):
            bench_data.save_ids(tmp_path / "gt" / "v" / obj / f"{t:05d}.png", gt)
            bench_data.save_ids(tmp_path / "pred" / "v" / obj / f"{t:05d}.png", pred if t not in (0, 12) else 1 - gt)
    result = sav.score_sav(tmp_path / "gt", tmp_path / "pred", workers=1)
    assert [(o.object_label, o.frames, o.values["J"], o.values["F"]) for o in result.objects] == [
        ("000", ["00004", "00008"], 100.0, 100.0),
        ("001", ["00004", "00008"], 50.0, 50.0),
    ]
    assert result.global_table == [("J&F", 75.0), ("J", 75.0), ("F", 75.0)]
    bench_data.save_ids(tmp_path / "pred" / "v" / "001" / "00008.png", b * 2 + a)  # values 0, 1, 2, 3
    with pytest.raises(VOSInputError, match="001/00008.png holds more than one object"):
        sav.score_sav(tmp_path / "gt", tmp_path / "pred", workers=1)


def test_sav_object_absent_from_its_evaluated_frames_is_an_error(tmp_path: Path) -> None:
    """Catches a crash (the official assert) or a silent 0 for an object never present in its evaluated frames."""
    a = _square(1, slice(2, 10), slice(2, 10))
    for t in (0, 4, 8):
        bench_data.save_ids(tmp_path / "gt" / "v" / "000" / f"{t:05d}.png", a if t == 0 else 0 * a)
        bench_data.save_ids(tmp_path / "pred" / "v" / "000" / f"{t:05d}.png", a)
    with pytest.raises(VOSInputError, match="is empty in all its evaluated GT frames"):
        sav.score_sav(tmp_path / "gt", tmp_path / "pred", workers=1)


# ----------------------------------------------------------------------------------------------------------------
# DAVIS late object, stale files, command line
# ----------------------------------------------------------------------------------------------------------------


def test_davis_late_object_is_an_error_naming_vos_benchmark(tmp_path: Path) -> None:
    """Catches the official behaviour (exit 0, no CSV, no reason) or silently dropping the late object."""
    one = _square(1, slice(2, 8), slice(2, 8))
    late = one.copy()
    late[12:16, 12:16] = 2
    gt_paths = []
    for t, m in enumerate([one, one, late, late]):
        bench_data.save_ids(tmp_path / "gt" / "seq" / f"{t:05d}.png", m)
        bench_data.save_ids(tmp_path / "res" / "seq" / f"{t:05d}.png", m)
        gt_paths.append(tmp_path / "gt" / "seq" / f"{t:05d}.png")
    with pytest.raises(
        davis.EvaluationError,
        match=r"00002\.png has object id 2, absent from the first GT frame.*"
        "--benchmark vos-benchmark",
    ):
        davis.evaluate_sequences({"seq": gt_paths}, tmp_path / "res", binary=False, workers=1)
    # vos-benchmark scores the same folders.
    assert generic.score_vos_benchmark(tmp_path / "gt", tmp_path / "res", workers=1).global_table[0] == ("J&F", 100.0)


@pytest.mark.parametrize("benchmark", ["lvos", "mosev2", "vos-benchmark", "sav"])
def test_stale_result_files_are_removed_before_scoring(tmp_path: Path, benchmark: str) -> None:
    """Catches an old results file surviving a failed run beside changed predictions."""
    args, pred = _make(benchmark, tmp_path)
    names = {
        "lvos": ["global_results-valid.csv", "per-sequence_results-valid.csv"],
        "mosev2": ["scores.txt", "metrics.json"],
        "vos-benchmark": ["results.csv"],
        "sav": ["results.csv"],
    }
    assert evaluation.main(args) == 0
    assert all((pred / n).is_file() for n in names[benchmark])
    sorted(pred.rglob("*.png"))[2].unlink()  # a scored frame of the first video: this time scoring fails
    assert evaluation.main(args) == 2
    assert not any((pred / n).exists() for n in names[benchmark])


def _make(benchmark: str, root: Path) -> tuple[list[str], Path]:
    """A small data set of `benchmark` under root, and the evaluation.py arguments that score it."""
    common = ["--benchmark", benchmark, "--workers", "1", "--results"]
    if benchmark == "lvos":
        bench_data.make_lvos(root, n_videos=2, n=7)
        extra = ["--gt", str(root / "valid"), "--unseen", str(root / "unseen.txt")]
    elif benchmark == "mosev2":
        bench_data.make_mose(root, n_videos=2, n=5)
        extra = ["--gt", str(root / "Annotations"), "--meta", str(root / "meta.json")]
    elif benchmark == "vos-benchmark":
        bench_data.make_generic(root, n_videos=2, n=5)
        extra = ["--gt", str(root / "gt")]
    else:
        bench_data.make_sav(root, n_videos=1, n=20)
        extra = ["--gt", str(root / "Annotations_6fps")]
    return [*common, str(root / "pred"), *extra], root / "pred"


def test_cli_bad_input_is_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Catches a traceback or exit code 1 (run.py's convention is 2) on a missing flag or folder."""
    assert evaluation.main(["--benchmark", "mosev2", "--results", str(tmp_path), "--gt", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pass --meta meta.json" in err
    assert evaluation.main(["--benchmark", "lvos", "--results", str(tmp_path)]) == 2
    assert "needs --gt PATH" in capsys.readouterr().err
    assert evaluation.main(["--benchmark", "sav", "--results", str(tmp_path / "x"), "--gt", str(tmp_path / "y")]) == 2
    assert capsys.readouterr().err.startswith("error: --gt ")


def test_report_fields(tmp_path: Path) -> None:
    """Catches result classes that lose the per-frame arrays or the counted flags a report needs."""
    _make("vos-benchmark", tmp_path)
    result = generic.score_vos_benchmark(tmp_path / "gt", tmp_path / "pred", workers=1)
    fields = json.loads(report.scores_to_json(report.run_scores(result, frames_dir="f", gt_dir="g", pred_dir="p")))
    assert fields["benchmark"] == "vos-benchmark" and [c for c, _ in fields["global_table"]] == ["J&F", "J", "F"]
    obj = fields["objects"][0]
    assert set(obj) == {"name", "sequence", "object_label", "frames", "j", "f", "counted", "jf"}
    assert len(obj["frames"]) == len(obj["j"]) == len(obj["f"]) == len(obj["counted"]) == 3
    assert obj["jf"] == pytest.approx((np.mean(obj["j"]) + np.mean(obj["f"])) * 50)


# ----------------------------------------------------------------------------------------------------------------
# Parity with the official evaluators (numbers obtained as the module docstring says)
# ----------------------------------------------------------------------------------------------------------------

LVOS_OFFICIAL = {  # lv<v>_<k>: (J, F, V)
    "lv0_1": (0.9136615937716348, 1.0, 0.01),
    "lv0_2": (0.21992303324711374, 0.3303030303030303, 0.38923000912057126),
    "lv1_1": (0.8782168076819119, 0.8024243389570836, 0.06),
    "lv1_2": (0.19244663382594418, 0.33171521035598706, 0.37067505985701277),
    "lv2_1": (0.8146659283703108, 0.6228187362825294, 0.03162277660168379),
    "lv2_2": (0.22377401664891308, 0.3318318318318318, 0.39293765408777004),
}
LVOS_OFFICIAL_GLOBAL_CSV = (
    "J&F-Mean,J-Mean,J-seen-Mean,J-unseen-Mean,F-Mean,F-seen-Mean,F-unseen-Mean,V-Mean,V-seen-Mean,V-unseen-Mean\n"
    "0.554,0.539,0.543,0.535,0.569,0.571,0.567,0.211,0.206,0.215\n"
)
LVOS_OFFICIAL_SEQUENCE_CSV = (
    "Sequence,J-Mean,F-Mean,V-Mean\nlv0_1,0.914,1.000,0.010\nlv0_2,0.220,0.330,0.389\nlv1_1,0.878,0.802,0.060\n"
    "lv1_2,0.192,0.332,0.371\nlv2_1,0.815,0.623,0.032\nlv2_2,0.224,0.332,0.393\n"
)
MOSE_OFFICIAL = {  # merge_chunk_results: j, f (F_new), f_ (F), disappear (j, f), reappear (j, f)
    "mo0_1": (0.9136915327888282, 0.7757510460775224, 0.7757510460775224, None, None),
    "mo0_2": (
        0.4614462021939184,
        0.5083464215915331,
        0.5963636363636364,
        (0.14285714285714285, 0.0),
        (0.6694071866203014, 0.8171158308576834),
    ),
    "mo1_1": (0.8782573189659673, 0.6707983260179742, 0.6707983260179742, None, None),
    "mo1_2": (
        0.31282241548948175,
        0.24668484500574048,
        0.39242833116734194,
        (0.14285714285714285, 0.0),
        (0.5747310437151611, 0.6739619211634137),
    ),
    "mo2_1": (0.8147240307886197, 0.5119116246530983, 0.5119116246530983, None, None),
    "mo2_2": (
        0.46749173251548004,
        0.5219276342475585,
        0.5981981981981981,
        (0.14285714285714285, 0.0),
        (0.689098388631099, 0.853858024691358),
    ),
}
MOSE_OFFICIAL_SCORES = (
    "J&F_new: 59.03\nJ: 64.14\nF_new: 53.92\ndisappear_J&F_new: 7.14\nreappear_J&F_new: 71.3\nF: 59.09\nJ&F: 61.62\n"
    "Copy-Paste: 59.0,64.1,53.9,7.1,71.3,59.1,61.6\n"
)
MOSE_OFFICIAL_JSON = {  # metrics.json without total_time
    "mo0_1": [84.47, 91.37, 77.58, None, None, 77.58, 84.47],
    "mo0_2": [48.49, 46.14, 50.83, 7.14, 74.33, 59.64, 52.89],
    "mo1_1": [77.45, 87.83, 67.08, None, None, 67.08, 77.45],
    "mo1_2": [27.98, 31.28, 24.67, 7.14, 62.43, 39.24, 35.26],
    "mo2_1": [66.33, 81.47, 51.19, None, None, 51.19, 66.33],
    "mo2_2": [49.47, 46.75, 52.19, 7.14, 77.15, 59.82, 53.28],
}
VB_OFFICIAL = {  # (video, id): (J, F), percentages
    ("vb0", "001"): (91.36615937716348, 100.0),
    ("vb0", "002"): (40.274409755652364, 59.63636363636364),
    ("vb1", "001"): (87.82168076819119, 80.24243389570836),
    ("vb1", "002"): (22.581245851238513, 39.2428331167342),
    ("vb2", "001"): (79.97821561698214, 58.09688161354336),
    ("vb2", "002"): (34.03361344537815, 50.0),
}
VB_OFFICIAL_CSV = (
    "sequence    ,obj,  J&F,    J,    F\nGlobal score,   , 61.9, 59.3, 64.5\nvb0         ,001, 95.7, 91.4, 100.0\n"
    "vb0         ,002, 50.0, 40.3, 59.6\nvb1         ,001, 84.0, 87.8, 80.2\nvb1         ,002, 30.9, 22.6, 39.2\n"
    "vb2         ,001, 69.0, 80.0, 58.1\nvb2         ,002, 42.0, 34.0, 50.0\n"
)
SAV_OFFICIAL = {
    ("sa0", "000"): (91.36615937716348, 100.0),
    ("sa0", "001"): (34.70911441499677, 50.0),
    ("sa1", "000"): (88.10048111786837, 80.88888499994177),
    ("sa1", "001"): (12.943262411347517, 23.59251968503937),
}
SAV_OFFICIAL_CSV = (
    "sequence    ,obj,  J&F,    J,    F\nGlobal score,   , 60.2, 56.8, 63.6\nsa0         ,000, 95.7, 91.4, 100.0\n"
    "sa0         ,001, 42.4, 34.7, 50.0\nsa1         ,000, 84.5, 88.1, 80.9\nsa1         ,001, 18.3, 12.9, 23.6\n"
)


def test_lvos_matches_official_toolkit(tmp_path: Path) -> None:
    """Catches any departure from lvos-evaluation: frames, J/F, V's rounding, group means, CSV layout."""
    bench_data.make_lvos(tmp_path)
    result = lvos.score_lvos(tmp_path / "valid", tmp_path / "pred", unseen=tmp_path / "unseen.txt", workers=2)
    assert {o.name: (o.values["J"], o.values["F"], o.values["V"]) for o in result.objects} == LVOS_OFFICIAL
    assert (tmp_path / "pred" / "global_results-valid.csv").read_text() == LVOS_OFFICIAL_GLOBAL_CSV
    assert (tmp_path / "pred" / "per-sequence_results-valid.csv").read_text() == LVOS_OFFICIAL_SEQUENCE_CSV


def test_mosev2_matches_official_scorer(tmp_path: Path) -> None:
    """Catches any departure from MOSE v2's score.py: smoothing, radii, segments, rounding, file layout."""
    bench_data.make_mose(tmp_path)
    out = tmp_path / "out"
    result = mose.score_mosev2(tmp_path / "Annotations", tmp_path / "pred", tmp_path / "meta.json", out, workers=2)
    assert {o.name: o.values["_raw"] for o in result.objects} == MOSE_OFFICIAL
    assert (out / "scores.txt").read_text() == MOSE_OFFICIAL_SCORES
    written = json.loads((out / "metrics.json").read_text())
    assert written.pop("total_time") >= 0
    assert {k: list(v.values()) for k, v in written.items()} == MOSE_OFFICIAL_JSON
    assert all(list(v) == list(mose.MOSE_MEASURES) for v in written.values())


def test_vos_benchmark_matches_official(tmp_path: Path) -> None:
    """Catches any departure from vos-benchmark: sparse GT frames, first appearance, output layout."""
    bench_data.make_generic(tmp_path)
    result = generic.score_vos_benchmark(tmp_path / "gt", tmp_path / "pred", workers=2)
    assert {(o.sequence, o.object_label): (o.values["J"], o.values["F"]) for o in result.objects} == VB_OFFICIAL
    assert (tmp_path / "pred" / "results.csv").read_text() == VB_OFFICIAL_CSV


def test_sav_matches_official(tmp_path: Path) -> None:
    """Catches any departure from sav_evaluator.py: per-object folders, first/last per object, output layout."""
    bench_data.make_sav(tmp_path)
    result = sav.score_sav(tmp_path / "Annotations_6fps", tmp_path / "pred", workers=2)
    assert {(o.sequence, o.object_label): (o.values["J"], o.values["F"]) for o in result.objects} == SAV_OFFICIAL
    assert (tmp_path / "pred" / "results.csv").read_text() == SAV_OFFICIAL_CSV
