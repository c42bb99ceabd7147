"""DAVIS measure (benchmarks/davis.py): hand-computed J and F, the official edge cases, CSVs, and the official numbers.

The golden numbers in `test_real_sample_matches_official_toolkit` come from davisvideochallenge/davis2017-evaluation
(evaluation_method.py, semi-supervised) run on a 2017-layout copy of the DAVIS 2016 sample with the same perturbed
predictions; ours agreed bit for bit.
"""

from __future__ import annotations

import math
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import DAVIS2016_ANNOTATIONS
from PIL import Image

import evaluation
from benchmarks import davis as ev
from benchmarks import metrics
from benchmarks.common import ObjectScores, Scores

ROOT = Path(__file__).resolve().parents[1]

# ----------------------------------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------------------------------


def save_png(path: Path, ids: np.ndarray, mode: str = "P") -> Path:
    """Save an id map as a palette (P, DAVIS 2017 style) or grayscale (L, DAVIS 2016 style) PNG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(ids.astype(np.uint8))  # mode L, values kept
    if mode == "P":
        image.putpalette([v for i in range(256) for v in (i, 255 - i, (7 * i) % 256)])  # L -> P, indices unchanged
    image.save(path)
    return path


def square(shape: tuple[int, int], rows: slice, cols: slice, value: int = 1) -> np.ndarray:
    mask = np.zeros(shape, np.uint8)
    mask[rows, cols] = value
    return mask


def make_sequence(tmp_path: Path, gt: list[np.ndarray], pred: dict[int, np.ndarray], mode: str = "P"):
    """GT PNGs 00000.png.. in tmp/gt/seq and predictions (frame index -> ids) in tmp/res/seq."""
    gt_paths = [save_png(tmp_path / "gt" / "seq" / f"{t:05d}.png", m, mode) for t, m in enumerate(gt)]
    for t, m in pred.items():
        save_png(tmp_path / "res" / "seq" / f"{t:05d}.png", m, mode)
    return gt_paths, tmp_path / "res" / "seq"


# ----------------------------------------------------------------------------------------------------------------------
# J
# ----------------------------------------------------------------------------------------------------------------------


def test_jaccard_shifted_squares() -> None:
    gt = square((30, 30), slice(5, 15), slice(5, 15))  # 10x10 = 100 px
    down2 = square((30, 30), slice(7, 17), slice(5, 15))
    # overlap rows 7..14 x cols 5..14 = 8x10 = 80; union = 100 + 100 - 80 = 120
    assert metrics.jaccard(gt, down2) == pytest.approx(80 / 120)
    down2_right3 = square((30, 30), slice(7, 17), slice(8, 18))
    # overlap 8x7 = 56; union = 200 - 56 = 144
    assert metrics.jaccard(gt, down2_right3) == pytest.approx(56 / 144)


def test_jaccard_empty_cases() -> None:
    empty, gt = np.zeros((8, 8), bool), square((8, 8), slice(2, 4), slice(2, 4))
    assert metrics.jaccard(empty, empty) == 1.0  # both empty: 1 by definition
    assert metrics.jaccard(gt, empty) == 0.0
    assert metrics.jaccard(empty, gt) == 0.0


# ----------------------------------------------------------------------------------------------------------------------
# F
# ----------------------------------------------------------------------------------------------------------------------


def test_boundary_radius_and_disk() -> None:
    assert metrics.boundary_radius((480, 854)) == 8  # ceil(0.008 * 979.6) = ceil(7.84)
    assert metrics.boundary_radius((10, 10)) == 1  # ceil(0.008 * 14.1) = ceil(0.11)
    assert metrics.boundary_radius((10, 10), bound_th=3) == 3  # >= 1 means pixels
    np.testing.assert_array_equal(metrics.disk(1), [[0, 1, 0], [1, 1, 1], [0, 1, 0]])  # x^2 + y^2 <= 1
    np.testing.assert_array_equal(
        metrics.disk(2),
        [[0, 0, 1, 0, 0], [0, 1, 1, 1, 0], [1, 1, 1, 1, 1], [0, 1, 1, 1, 0], [0, 0, 1, 0, 0]],
    )
    assert metrics.disk(8).shape == (17, 17) and metrics.disk(8).dtype == np.uint8


def test_boundary_map_square_is_ring_half_a_pixel_up_left() -> None:
    # A 3x3 square at rows/cols 2..4: the pixels differing from a right/lower/lower-right neighbour form the ring of
    # the 4x4 square at rows/cols 1..4 (12 px).
    b = metrics.boundary_map(square((10, 10), slice(2, 5), slice(2, 5)))
    ring = square((10, 10), slice(1, 5), slice(1, 5)) - square((10, 10), slice(2, 4), slice(2, 4))
    np.testing.assert_array_equal(b, ring.astype(bool))


def test_boundary_map_image_edges_follow_official_seg2bmap() -> None:
    # Neighbours outside the image are not compared: the last row only looks right, the last column only down,
    # the bottom-right corner is never a boundary.
    seg = np.array([[0, 0, 0], [0, 0, 0], [0, 1, 1]])
    expected = np.array([[0, 0, 0], [1, 1, 1], [1, 0, 0]], bool)
    # (1,0): lower-right is 1; (1,1), (1,2): lower is 1; (2,0): right is 1; (2,1): right equal; (2,2): corner.
    np.testing.assert_array_equal(metrics.boundary_map(seg), expected)
    assert not metrics.boundary_map(np.ones((4, 5))).any()  # a full frame has no boundary


def test_boundary_f_hand_computed_radius_1() -> None:
    # 10x10 frame: radius ceil(0.008 * 14.1) = 1, the dilation is the 4-neighbour cross.
    gt = square((10, 10), slice(2, 5), slice(2, 5))  # boundary: 4x4 ring rows/cols 1..4, 12 px
    pred = square((10, 10), slice(2, 4), slice(2, 4))  # boundary: 3x3 ring rows/cols 1..3, 8 px
    # Precision: every pred ring pixel is on the GT ring ((1,1..3), (2,1), (3,1)) or 4-adjacent to it ((2,3)-(2,4),
    # (3,3)-(3,4), (3,2)-(4,2)): 8/8 = 1.
    # Recall: GT ring pixels on the pred ring or 4-adjacent to it: all but the corner (4,4), whose neighbours (3,4),
    # (4,3), (4,5), (5,4) are not on the pred ring: 11/12.
    # F = 2 * 1 * 11/12 / (1 + 11/12) = 22/23.
    assert metrics.boundary_f(gt, pred) == pytest.approx(22 / 23)
    # Same square moved right by 2: ring cols 3..6. Unmatched pred pixels: (1,6), (4,6), (2,6), (3,6) -> P = 8/12;
    # unmatched GT pixels: (1,1), (4,1), (2,1), (3,1) -> R = 8/12; F = 2/3.
    right2 = square((10, 10), slice(2, 5), slice(4, 7))
    assert metrics.boundary_f(gt, right2) == pytest.approx(2 / 3)
    # With a radius of 2 px the 2-px shift is fully tolerated.
    assert metrics.boundary_f(gt, right2, bound_th=2) == 1.0


def test_boundary_f_edge_cases() -> None:
    empty, gt = np.zeros((10, 10), bool), square((10, 10), slice(2, 5), slice(2, 5))
    assert metrics.boundary_f(empty, empty) == 1.0  # both empty: P = R = 1
    assert metrics.boundary_f(gt, empty) == 0.0  # empty prediction: P = 1, R = 0
    assert metrics.boundary_f(empty, gt) == 0.0  # empty GT: P = 0, R = 1
    full = np.ones((10, 10), bool)
    assert metrics.boundary_f(full, full) == 1.0  # no boundary on either side


def test_boundary_f_crop_matches_full_frame_at_854x480() -> None:
    # The crop to the objects must not change F: objects near every border, 8-px disk.
    rng = np.random.default_rng(0)
    gt, pred = np.zeros((480, 854), bool), np.zeros((480, 854), bool)
    gt[470:, 840:] = gt[:30, :40] = True
    pred[465:, 845:] = pred[3:33, 2:44] = True
    pred[200:210, 400:410] = rng.random((10, 10)) < 0.5
    # Full-frame reference with the same definitions.
    k = metrics.disk(8)
    import cv2

    gb, pb = metrics.boundary_map(gt), metrics.boundary_map(pred)
    p = (pb & cv2.dilate(gb.astype(np.uint8), k).astype(bool)).sum() / pb.sum()
    r = (gb & cv2.dilate(pb.astype(np.uint8), k).astype(bool)).sum() / gb.sum()
    assert metrics.boundary_f(gt, pred) == 2 * p * r / (p + r)


# ----------------------------------------------------------------------------------------------------------------------
# Mean, Recall, Decay
# ----------------------------------------------------------------------------------------------------------------------


def test_object_statistics_known_sequence() -> None:
    scores = 1 - np.arange(10) / 10  # 1.0, 0.9, ..., 0.1
    mean, recall, decay = ev.object_statistics(scores)
    assert mean == pytest.approx(0.55)
    assert recall == pytest.approx(0.5)  # 1.0 .. 0.6 are > 0.5; 0.5 itself is not
    # edges round(linspace(1, 10, 5) + 1e-10) - 1 = round([1, 3.25, 5.5, 7.75, 10]) - 1 = [0, 2, 5, 7, 9];
    # first quarter [0:3] = 1, .9, .8 (mean .9); last [7:10] = .3, .2, .1 (mean .2); Decay = .7
    assert decay == pytest.approx(0.7)
    starts, ends = ev.decay_edges(10)
    assert starts.tolist() == [0, 2, 5, 7] and ends.tolist() == [3, 6, 8, 10]


def test_object_statistics_ignores_nan_in_mean() -> None:
    mean, recall, _ = ev.object_statistics(np.array([1.0, np.nan, 0.0, 0.2]))
    assert mean == pytest.approx(0.4)
    assert recall == pytest.approx(0.25)  # NaN > 0.5 is False and still counts in the denominator, as officially


def test_decay_reproduces_official_uint8_bug() -> None:
    # 255 scored frames: edges [0, 64, 127, 191, 254] all fit in uint8, quarters are right.
    scores = np.linspace(1, 0, 255)
    assert ev.object_statistics(scores)[2] == pytest.approx(scores[0:65].mean() - scores[191:255].mean())
    # 300 frames: last edge 299 wraps to 43, the last quarter [224:44] is empty, Decay is NaN.
    assert math.isnan(ev.object_statistics(np.linspace(1, 0, 300))[2])
    # 256 frames: last edge 255, its end 255 + 1 wraps to 0: NaN as well.
    assert math.isnan(ev.object_statistics(np.linspace(1, 0, 256))[2])
    # 700 frames: edges [0, 175, 350, 524, 699] become [0, 175, 94, 12, 187]: quarters [0:176] and [12:188].
    scores = np.linspace(1, 0, 700)
    assert ev.object_statistics(scores)[2] == pytest.approx(scores[0:176].mean() - scores[12:188].mean())


# ----------------------------------------------------------------------------------------------------------------------
# Sequences from PNGs
# ----------------------------------------------------------------------------------------------------------------------


def test_void_missing_object_and_unscored_frames(tmp_path: Path) -> None:
    shape = (12, 16)
    gt = []
    for t in range(5):
        ids = square(shape, slice(2, 6), slice(1 + t, 5 + t), 1) + square(shape, slice(8, 11), slice(8, 12), 2)
        ids[0, :] = 255  # void band: background for the measure, and not an object id
        gt.append(ids)
    # Predictions only for the scored frames 1..3 (the first and last are never read) and only object 1.
    pred = {t: (gt[t] == 1).astype(np.uint8) for t in (1, 2, 3)}
    pred[2][0, 0:4] = 1  # frame 2 labels 4 void pixels as object 1: they count as false positives
    gt_paths, pred_dir = make_sequence(tmp_path, gt, pred)
    result = ev.evaluate_sequences({"seq": gt_paths}, pred_dir.parent, binary=False, workers=1)
    one, two = result.objects  # two objects: max id of the first frame once void is removed
    assert (one.name, two.name) == ("seq_1", "seq_2")
    # J per frame: 1, 16/20 (4x4 object, 4 extra pixels), 1; F: 1, F of frame 2, 1.
    f2 = metrics.boundary_f(gt[2] == 1, pred[2] == 1)
    assert f2 < 1.0
    assert (one.values["J"], one.values["J-Recall"]) == (pytest.approx((1 + 16 / 20 + 1) / 3), 1.0)
    assert (one.values["F"], one.values["F-Recall"]) == (pytest.approx((1 + f2 + 1) / 3), 1.0)
    # Object 2, never predicted: scored as an empty mask in every frame.
    assert (two.values["J"], two.values["J-Recall"], two.values["F"], two.values["F-Recall"]) == (0.0, 0.0, 0.0, 0.0)


def test_more_objects_than_gt_is_an_error(tmp_path: Path) -> None:
    gt = [square((8, 8), slice(2, 5), slice(2, 5))] * 4
    pred = {1: gt[1], 2: gt[2] + square((8, 8), slice(6, 8), slice(6, 8), 2)}
    gt_paths, pred_dir = make_sequence(tmp_path, gt, pred)
    with pytest.raises(ev.EvaluationError, match=r"00002\.png has object id 2 .* 1 object"):
        ev.evaluate_sequences({"seq": gt_paths}, pred_dir.parent, binary=False, workers=1)


def test_binary_mode_binarises_davis2016_masks(tmp_path: Path) -> None:
    gt = [square((10, 10), slice(2, 5), slice(2, 5), 255)] * 3  # DAVIS 2016: mode L, 0/255
    pred = {1: square((10, 10), slice(2, 4), slice(2, 4), 255) + square((10, 10), slice(8, 9), slice(8, 9), 3)}
    gt_paths, pred_dir = make_sequence(tmp_path, gt, pred, mode="L")
    obj, *rest = ev.evaluate_sequences({"seq": gt_paths}, pred_dir.parent, binary=True, workers=1).objects
    assert not rest  # 255 is the object, not void; id 3 merges into it
    assert obj.values["J"] == pytest.approx(4 / 10)  # one scored frame: 2x2 square + 1 stray pixel vs 3x3: 4 / (9 + 1)


def test_masks_are_read_as_the_official_toolkit_reads_them(tmp_path: Path) -> None:
    # One reader (utils.read_mask) serves the runner and the evaluator; the evaluator's protocol differs on purpose.
    bw = save_png(tmp_path / "bw.png", square((10, 10), slice(2, 5), slice(2, 5), 255), mode="L")
    assert ev.count_objects(bw, binary=False) == 0  # a 0/255 grayscale GT: 255 is void, as officially
    assert ev.count_objects(bw, binary=True) == 1
    # A prediction's 255 is object 255 (raw values), not void: more objects than the GT is an error.
    gt = [square((10, 10), slice(2, 5), slice(2, 5))] * 3
    gt_paths, pred_dir = make_sequence(tmp_path / "a", gt, {1: gt[1] + square((10, 10), slice(8, 9), slice(8, 9), 255)})
    with pytest.raises(ev.EvaluationError, match=r"00001\.png has object id 255"):
        ev.evaluate_sequences({"seq": gt_paths}, pred_dir.parent, binary=False, workers=1)
    # An LA prediction: the alpha channel is dropped, the ids are scored.
    gt_paths, pred_dir = make_sequence(tmp_path / "b", gt, {})
    pred_dir.mkdir(parents=True)
    Image.fromarray(np.stack([gt[1], np.full_like(gt[1], 255)], axis=-1), "LA").save(pred_dir / "00001.png")
    assert ev.evaluate_sequences({"seq": gt_paths}, pred_dir.parent, binary=False, workers=1).value("J-Mean") == 1.0


@pytest.mark.parametrize(
    ("problem", "match"),
    [
        ("missing_png", r"missing prediction .*seq/00002\.png.*named like the GT"),
        ("size", r"00001\.png is 9x10 but its GT .* is 10x10"),
        ("rgb", r"00001\.png' is a RGB image; save masks as palette"),
        ("no_folder", r"no results folder .*res/seq"),
        ("too_short", r"2 annotated frame\(s\).*at least 3"),
    ],
)
def test_bad_input_errors_name_the_file(tmp_path: Path, problem: str, match: str) -> None:
    gt = [square((10, 10), slice(2, 5), slice(2, 5))] * (2 if problem == "too_short" else 4)
    pred = {1: gt[1]} if problem in ("missing_png", "too_short") else {1: gt[1], 2: gt[2]}
    if problem == "size":
        pred[1] = gt[1][:, :9]
    gt_paths, pred_dir = make_sequence(tmp_path, gt, {} if problem == "no_folder" else pred)
    if problem == "no_folder":
        pred_dir.parent.mkdir()  # the results folder exists, the sequence's sub-folder does not
    if problem == "rgb":
        Image.new("RGB", (10, 10)).save(pred_dir / "00001.png")
    with pytest.raises(ev.EvaluationError, match=match):
        ev.evaluate_sequences({"seq": gt_paths}, pred_dir.parent, binary=False, workers=1)


def test_evaluate_sequences_two_workers_match_one(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    gt, results = {}, tmp_path / "res"
    for seq, n in (("a", 12), ("b", 21)):  # 30 scored frames: several tasks per worker
        first = square((24, 32), slice(4, 14), slice(1, 11), 1) + square((24, 32), slice(16, 22), slice(2, 9), 2)
        masks = [np.roll(first, t, axis=1) for t in range(n)]
        gt[seq] = [save_png(tmp_path / "gt" / seq / f"{t:05d}.png", m) for t, m in enumerate(masks)]
        for t in range(1, n - 1):
            save_png(results / seq / f"{t:05d}.png", np.where(rng.random((24, 32)) < 0.1, 0, masks[t]))
    one = ev.evaluate_sequences(gt, results, binary=False, workers=1)
    two = ev.evaluate_sequences(gt, results, binary=False, workers=2)
    assert one == two
    # Regression: workers forked after the caller used OpenCV's thread pool once hung (cv2.setNumThreads in them).
    listed = {seq: [str(path) for path in paths] for seq, paths in gt.items()}
    code = (
        "import cv2, numpy as np, pathlib\nfrom benchmarks import davis as ev\n"
        "cv2.dilate(np.ones((2000, 2000), np.uint8), np.ones((17, 17), np.uint8))\n"
        f"gt = {{s: [pathlib.Path(p) for p in ps] for s, ps in {listed!r}.items()}}\n"
        f"print(ev.evaluate_sequences(gt, pathlib.Path({str(results)!r}), binary=False, workers=2).jf_mean)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert float(out.stdout) == pytest.approx(one.jf_mean), out.stderr
    assert [o.name for o in one.objects] == ["a_1", "a_2", "b_1", "b_2"]
    assert 0 < one.value("J-Mean") < 1
    # Global numbers are means over objects, not sequences.
    assert one.value("J-Mean") == pytest.approx(np.mean([o.values["J"] for o in one.objects]))
    assert one.jf_mean == pytest.approx((one.value("J-Mean") + one.value("F-Mean")) / 2)


def test_evaluate_sequences_missing_results_folder(tmp_path: Path) -> None:
    with pytest.raises(ev.EvaluationError, match=r"results folder .*nowhere does not exist; pass --results"):
        ev.evaluate_sequences({"seq": []}, tmp_path / "nowhere", binary=False, workers=1)


# ----------------------------------------------------------------------------------------------------------------------
# CSVs and printing
# ----------------------------------------------------------------------------------------------------------------------


def test_write_csvs_format_and_overwrite(tmp_path: Path) -> None:
    objects = [
        _object("bear", 1, 0.91234, 1.0, 0.0204, 0.8, 0.9, -0.01),
        _object("dogs-jump", 3, 0.5, 0.4, float("nan"), 0.6, 0.7, 0.11),
    ]
    result = ev.scores_of(objects)
    stale_global = tmp_path / "global_results-val.csv"
    stale_global.write_text("J&F-Mean\n0.999\n")  # the official script would print these stale numbers
    (tmp_path / "per-sequence_results-val.csv").write_text("stale\n")
    global_path, seq_path = ev.write_csvs(result, tmp_path, "val")
    assert global_path == stale_global
    # J-Decay mean is NaN (one object's Decay is NaN): written as an empty field, as pandas does.
    assert global_path.read_text() == (
        "J&F-Mean,J-Mean,J-Recall,J-Decay,F-Mean,F-Recall,F-Decay\n0.703,0.706,0.700,,0.700,0.800,0.050\n"
    )
    assert seq_path.read_text() == "Sequence,J-Mean,F-Mean\nbear_1,0.912,0.800\ndogs-jump_3,0.500,0.600\n"
    table = ev.format_table(result, "val")
    assert "J&F-Mean" in table and "dogs-jump_3" in table and "0.912" in table


def _object(seq: str, k: int, *stats: float) -> ObjectScores:
    """An object with the toolkit's per-object statistics (J Mean, Recall, Decay, then F's) and no frames."""
    values = dict(zip(("J", "J-Recall", "J-Decay", "F", "F-Recall", "F-Decay"), stats, strict=True))
    return ObjectScores(f"{seq}_{k}", seq, str(k), [], [], [], [], (values["J"] + values["F"]) / 2, values)


def _sample_result() -> Scores:
    return ev.scores_of([_object("bear", 1, 0.91234, 1.0, 0.0204, 0.8, 0.9, -0.01)])


def test_write_csvs_on_a_full_disk_leaves_no_partial_file(tmp_path: Path) -> None:
    resource = pytest.importorskip("resource")  # RLIMIT_FSIZE: POSIX only
    # A real short write: with RLIMIT_FSIZE the kernel stops every file at 30 bytes (EFBIG), as a full disk would
    # mid-write. Each CSV is longer than that.
    old = {"global_results-val.csv": "J&F-Mean\n0.5\n", "per-sequence_results-val.csv": "Sequence\nx_1\n"}
    for name, text in old.items():
        (tmp_path / name).write_text(text)
    limits = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a failed write, not a killed process
    resource.setrlimit(resource.RLIMIT_FSIZE, (30, limits[1]))
    try:
        with pytest.raises(OSError):
            ev.write_csvs(_sample_result(), tmp_path, "val")
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limits)
        signal.signal(signal.SIGXFSZ, handler)
    # Every CSV is the old, complete one, and no temporary file is left.
    assert {p.name: p.read_text() for p in tmp_path.iterdir()} == old


def test_failed_evaluation_leaves_no_old_csv(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    gt = [square((10, 10), slice(2, 5), slice(2, 5))] * 4
    gt_paths, pred_dir = make_sequence(tmp_path, gt, {1: gt[1], 2: gt[2]})
    results = pred_dir.parent
    ev.evaluate_and_write({"seq": gt_paths}, results, "val", binary=False, workers=1)
    global_path, seq_path = ev.csv_paths(results, "val")
    assert global_path.read_text().splitlines()[1].startswith("1.000,")
    (pred_dir / "00002.png").unlink()  # the predictions change, and this time scoring fails
    with pytest.raises(ev.EvaluationError, match="missing prediction"):
        ev.evaluate_and_write({"seq": gt_paths}, results, "val", binary=False, workers=1)
    assert not global_path.exists() and not seq_path.exists()
    ev.write_csvs(_sample_result(), results, "val")
    ev.write_csvs(_sample_result(), results, "test-dev")
    ev.remove_csvs(results, "val")  # what a runner calls before it overwrites the predictions
    assert not global_path.exists() and not seq_path.exists()
    assert all(p.is_file() for p in ev.csv_paths(results, "test-dev"))  # another split's CSVs stay
    # The command line too: exit code 2 (bad input) and no CSV of the last run beside the changed results.
    davis = tmp_path / "DAVIS"
    for t, path in enumerate(gt_paths):
        (davis / "JPEGImages" / "480p" / "seq").mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (10, 10)).save(davis / "JPEGImages" / "480p" / "seq" / f"{t:05d}.jpg")
        save_png(davis / "Annotations" / "480p" / "seq" / path.name, gt[t])
    (davis / "ImageSets" / "2017").mkdir(parents=True)
    (davis / "ImageSets" / "2017" / "val.txt").write_text("seq\n")
    global_path.write_text("J&F-Mean\n0.999\n")
    assert evaluation.main(["--davis", str(davis), "--results", str(results), "--workers", "1"]) == 2
    assert "missing prediction" in capsys.readouterr().err
    assert not global_path.exists()


# ----------------------------------------------------------------------------------------------------------------------
# The real DAVIS 2016 sample
# ----------------------------------------------------------------------------------------------------------------------

# Per object: (J mean, recall, decay), (F mean, recall, decay), from the official toolkit (see module docstring).
OFFICIAL = {
    "bear_1": (
        (0.7648331950674774, 0.8625, 0.008028563176840309),
        (0.7174711485511276, 0.8, -0.00046836785880000065),
    ),
    "boat_1": (
        (0.6579040599416239, 0.863013698630137, 0.04406610064490435),
        (0.8122636527818782, 0.863013698630137, 0.04907190144151008),
    ),
    "hockey_1": (
        (0.6002965726541017, 0.7123287671232876, 0.029422467154091803),
        (0.684223884347404, 0.6438356164383562, 0.041390991485984796),
    ),
}
OFFICIAL_GLOBAL_CSV = (
    "J&F-Mean,J-Mean,J-Recall,J-Decay,F-Mean,F-Recall,F-Decay\n0.706,0.674,0.813,0.027,0.738,0.769,0.030\n"
)
OFFICIAL_SEQUENCE_CSV = "Sequence,J-Mean,F-Mean\nbear_1,0.765,0.717\nboat_1,0.658,0.812\nhockey_1,0.600,0.684\n"


def _sample_gt(root: Path) -> dict[str, list[Path]]:
    return {s: sorted((root / "Annotations" / "480p" / s).glob("*.png")) for s in ("bear", "boat", "hockey")}


def test_real_sample_matches_official_toolkit(tmp_path: Path) -> None:
    gt = _sample_gt(DAVIS2016_ANNOTATIONS)  # whole sequences: bear 82 frames, boat 75, hockey 75
    for seq, paths in gt.items():
        for t, path in enumerate(paths[1:-1], 1):
            mask = np.asarray(Image.open(path).convert("L")) != 0  # bear/00077.png is LA
            # Perturbation: empty every 7th frame, else shifted by (t % 3 - 1, 4 * (t % 5)) px, saved 0/255.
            pred = np.zeros_like(mask) if t % 7 == 0 else np.roll(mask, (t % 3 - 1, 4 * (t % 5)), axis=(0, 1))
            save_png(tmp_path / seq / path.name, pred * 255, mode="L")
    result = ev.evaluate_sequences(gt, tmp_path, binary=True, workers=2)
    for obj in result.objects:
        (jm, jr, jd), (fm, fr, fd) = OFFICIAL[obj.name]
        j_stats = (obj.values["J"], obj.values["J-Recall"], obj.values["J-Decay"])
        f_stats = (obj.values["F"], obj.values["F-Recall"], obj.values["F-Decay"])
        assert j_stats == pytest.approx((jm, jr, jd), abs=1e-12)
        assert f_stats == pytest.approx((fm, fr, fd), abs=1e-12)
    global_path, seq_path = ev.write_csvs(result, tmp_path, "val")
    assert global_path.read_text() == OFFICIAL_GLOBAL_CSV
    assert seq_path.read_text() == OFFICIAL_SEQUENCE_CSV


def test_cli_recomputes_csvs_on_real_sample(davis2016_root: Path, tmp_path: Path, capsys) -> None:
    results = tmp_path / "results"
    results.mkdir()
    for seq in ("bear", "boat", "hockey"):  # the GT as prediction: every score is 1
        (results / seq).symlink_to(davis2016_root / "Annotations" / "480p" / seq)
    (results / "global_results-train.csv").write_text("J&F-Mean\n0.123\n")
    args = ["--davis", str(davis2016_root), "--year", "2016", "--split", "train", "--results"]
    assert evaluation.main([*args, str(results)]) == 0
    rows = (results / "global_results-train.csv").read_text().splitlines()
    assert rows[1] == "1.000,1.000,1.000,0.000,1.000,1.000,0.000"
    assert "hockey_1" in capsys.readouterr().out
    # A missing results folder is a one-line error and exit code 2, not a traceback.
    assert evaluation.main([*args, "/nope"]) == 2  # bad input: exit code 2, as run.py
    assert "results folder /nope does not exist" in capsys.readouterr().err
