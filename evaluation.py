"""DAVIS semi-supervised evaluation: region similarity J, boundary accuracy F and J&F.

The numbers are those of the official toolkit (davisvideochallenge/davis2017-evaluation, semi-supervised protocol),
reimplemented so that they match it to the printed decimals while being faster (cropping to the objects, one pass
over each PNG, frames spread over worker processes) and safer (errors name the file and the fix; result CSVs are
always recomputed, never reused).

Usage:
    python evaluation.py --davis data/DAVIS2017 --year 2017 --split val --results output/val
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import sys
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from utils import VOSInputError, atomic_write, read_mask

BOUND_TH = 0.008  # boundary tolerance as a fraction of the image diagonal (8 px at 854x480)
VOID_LABEL = 255  # DAVIS 2017 marks uncertain pixels with 255; the semi-supervised protocol scores them as background
GLOBAL_COLUMNS = ("J&F-Mean", "J-Mean", "J-Recall", "J-Decay", "F-Mean", "F-Recall", "F-Decay")
SEQUENCE_COLUMNS = ("Sequence", "J-Mean", "F-Mean")
FRAMES_PER_TASK = 8  # frames per worker task: small enough to balance 2 cores even on a 3-sequence sample


class EvaluationError(Exception):
    """Bad evaluation input (missing folder or PNG, wrong size, too many objects); the message names the fix."""


# ----------------------------------------------------------------------------------------------------------------
# Per-frame measures (pure numpy)
# ----------------------------------------------------------------------------------------------------------------


def jaccard(gt: np.ndarray, pred: np.ndarray) -> float:
    """Region similarity J = |gt & pred| / |gt | pred| of two binary (H, W) masks; 1 when both are empty."""
    if gt.shape != pred.shape:
        raise ValueError(f"jaccard: shapes differ, gt {gt.shape} vs pred {pred.shape}")
    gt, pred = gt.astype(bool, copy=False), pred.astype(bool, copy=False)
    union = np.count_nonzero(gt | pred)
    if union == 0:
        return 1.0
    return np.count_nonzero(gt & pred) / union


def boundary_map(mask: np.ndarray) -> np.ndarray:
    """One-pixel boundary of a binary (H, W) mask, as the official `_seg2bmap`.

    A pixel is on the boundary when it differs from its right, lower or lower-right neighbour; neighbours outside
    the image are not compared (so the last row only looks right, the last column only down, the corner never).
    That is what `_seg2bmap`'s zero padding plus its overrides of the last row and column amount to.
    """
    seg = mask.astype(bool, copy=False)
    bmap = np.zeros(seg.shape, dtype=bool)
    bmap[:, :-1] |= seg[:, :-1] ^ seg[:, 1:]
    bmap[:-1, :] |= seg[:-1, :] ^ seg[1:, :]
    bmap[:-1, :-1] |= seg[:-1, :-1] ^ seg[1:, 1:]
    return bmap


def disk(radius: float) -> np.ndarray:
    """Structuring element x^2 + y^2 <= r^2 on the integer grid, as skimage.morphology.disk (uint8)."""
    grid = np.arange(-radius, radius + 1)
    x, y = np.meshgrid(grid, grid)
    return (x**2 + y**2 <= radius**2).astype(np.uint8)


def boundary_radius(shape: tuple[int, int], bound_th: float = BOUND_TH) -> float:
    """Dilation radius in pixels: `bound_th` itself when >= 1, else ceil(bound_th * image diagonal)."""
    # np.linalg.norm (not math.hypot) so that the rounding is the official one to the last bit.
    return bound_th if bound_th >= 1 else float(np.ceil(bound_th * np.linalg.norm(shape)))


def _crop_box(gt: np.ndarray, pred: np.ndarray) -> tuple[slice, slice] | None:
    """Rows/columns that hold every boundary pixel of both masks, or None when both masks are empty.

    Boundary pixels of a mask lie in its bounding box grown by one pixel up and left (a pixel left of the mask
    differs from its right neighbour); one more row and column at the bottom and right keep the crop's own last
    row and column all-background, so `boundary_map` on the crop equals the full-frame map cut to the crop.
    """
    rows = np.flatnonzero(np.any(gt, axis=1) | np.any(pred, axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(np.any(gt, axis=0) | np.any(pred, axis=0))
    return slice(max(rows[0] - 1, 0), rows[-1] + 2), slice(max(cols[0] - 1, 0), cols[-1] + 2)


def _boundary_f_radius(gt: np.ndarray, pred: np.ndarray, radius: float) -> float:
    """Boundary F of two boolean masks with a given dilation radius (see `boundary_f`)."""
    box = _crop_box(gt, pred)
    if box is None:
        return 1.0  # both empty: precision = recall = 1
    gt_b, pred_b = boundary_map(gt[box]), boundary_map(pred[box])
    n_gt, n_pred = np.count_nonzero(gt_b), np.count_nonzero(pred_b)
    # The official edge cases: an empty boundary gives P=1, R=0 (or P=0, R=1), hence F=0; both empty gives F=1.
    if n_gt == 0 or n_pred == 0:
        return 1.0 if n_gt == n_pred else 0.0
    # Cropping cannot change the counts: dilation only spreads boundary pixels, which all lie inside the crop, and
    # cv2.dilate's default border adds nothing. cv2.dilate with the same disk is what the official code runs.
    kernel = disk(radius)
    pred_dil = cv2.dilate(pred_b.view(np.uint8), kernel).view(bool)
    gt_dil = cv2.dilate(gt_b.view(np.uint8), kernel).view(bool)
    precision = np.count_nonzero(pred_b & gt_dil) / n_pred
    recall = np.count_nonzero(gt_b & pred_dil) / n_gt
    if precision + recall == 0:
        return 0.0
    return 2 * precision * recall / (precision + recall)


def boundary_f(gt: np.ndarray, pred: np.ndarray, bound_th: float = BOUND_TH) -> float:
    """Boundary accuracy F of two binary (H, W) masks.

    Precision is the share of predicted boundary pixels within `boundary_radius` of a GT boundary pixel (disk
    neighbourhood), recall the converse, F their harmonic mean. Empty prediction with non-empty GT: P=1, R=0, F=0;
    both empty: F=1.
    """
    if gt.shape != pred.shape:
        raise ValueError(f"boundary_f: shapes differ, gt {gt.shape} vs pred {pred.shape}")
    gt, pred = gt.astype(bool, copy=False), pred.astype(bool, copy=False)
    return _boundary_f_radius(gt, pred, boundary_radius(gt.shape, bound_th))


# ----------------------------------------------------------------------------------------------------------------
# Per-object statistics
# ----------------------------------------------------------------------------------------------------------------


def decay_edges(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Start and (exclusive) end indices of the four Decay quarters of an n-frame score sequence.

    The official code builds the edges as `round(linspace(1, n, 5) + 1e-10) - 1`, casts them to uint8 and slices
    `[ids[i]:ids[i+1]+1]` with uint8 arithmetic. The cast wraps modulo 256, so from n = 256 scored frames on the
    quarters are wrong (the last one is empty at n = 256, making Decay NaN). We reproduce that bug on purpose so
    that the numbers stay comparable with published ones; DAVIS sequences have at most 104 frames.
    """
    edges = (np.round(np.linspace(1, n, 5) + 1e-10) - 1).astype(np.int64) % 256
    return edges[:4], (edges[1:] + 1) % 256


def object_statistics(scores: np.ndarray) -> tuple[float, float, float]:
    """Mean, Recall and Decay of one object's per-frame scores (J or F), as the official `db_statistics`.

    Mean = nanmean, Recall = share of frames scoring > 0.5, Decay = mean of the first quarter of the frames minus
    mean of the last quarter (quarters as in `decay_edges`).
    """
    scores = np.asarray(scores, dtype=np.float64)
    starts, ends = decay_edges(len(scores))
    with warnings.catch_warnings():  # empty slices give NaN, as in the official code
        warnings.simplefilter("ignore", category=RuntimeWarning)
        mean = float(np.nanmean(scores))
        recall = float(np.nanmean(scores > 0.5))
        decay = float(np.nanmean(scores[starts[0] : ends[0]]) - np.nanmean(scores[starts[3] : ends[3]]))
    return mean, recall, decay


# ----------------------------------------------------------------------------------------------------------------
# Reading masks and scoring sequences
# ----------------------------------------------------------------------------------------------------------------


def _read_gt(path: Path, binary: bool) -> np.ndarray:
    """GT object ids as the official toolkit reads them: the stored values, binarised for DAVIS 2016 (0/255
    masks), otherwise void (255) set to background (`masks[masks == 255] = 0`). Unlike the runner's reader there is
    no special case for 0/255 grayscale masks: the numbers must be the official ones."""
    if not path.is_file():
        raise EvaluationError(f"ground-truth mask {path} does not exist; re-download or re-extract DAVIS")
    gt = read_mask(path, binary, raw=True, error=EvaluationError)
    return gt if binary else np.where(gt == VOID_LABEL, 0, gt)


def count_objects(first_gt: Path, binary: bool) -> int:
    """Number of objects scored in a sequence: the largest id in its first GT frame (void excluded)."""
    return int(_read_gt(first_gt, binary).max())


def _score_frames(gt_paths: list[Path], pred_dir: Path, binary: bool, n_objects: int) -> np.ndarray:
    """J and F of objects 1..n_objects on the given frames: array (2, n_objects, len(gt_paths)).

    The prediction of each frame is `pred_dir / <GT file name>`; objects absent from it score as empty masks.
    """
    scores = np.zeros((2, n_objects, len(gt_paths)))
    for t, gt_path in enumerate(gt_paths):
        pred_path = pred_dir / gt_path.name
        gt = _read_gt(gt_path, binary)
        if not pred_path.is_file():
            raise EvaluationError(
                f"missing prediction {pred_path} (for GT {gt_path}); write one PNG per frame into {pred_dir}, "
                "named like the GT annotation"
            )
        # Raw values, as the official results reader: a prediction's 255 is object 255, not void.
        pred = read_mask(pred_path, raw=True, error=EvaluationError)
        if pred.shape != gt.shape:
            raise EvaluationError(
                f"prediction {pred_path} is {pred.shape[1]}x{pred.shape[0]} but its GT {gt_path} is "
                f"{gt.shape[1]}x{gt.shape[0]} (WxH); save predictions at the annotation resolution"
            )
        if binary:
            pred = pred != 0
        elif pred.max(initial=0) > n_objects:
            # The official toolkit stops here too ("an index higher than the number of objects").
            raise EvaluationError(
                f"prediction {pred_path} has object id {int(pred.max())} but the sequence has {n_objects} "
                f"object(s) in its first GT frame {gt_paths[0].parent}; ids must be 1..{n_objects}"
            )
        radius = boundary_radius(gt.shape)
        for k in range(1, n_objects + 1):
            gt_k, pred_k = gt == k, pred == k
            scores[0, k - 1, t] = jaccard(gt_k, pred_k)
            scores[1, k - 1, t] = _boundary_f_radius(gt_k, pred_k, radius)
    return scores


def _check_sequence(gt_paths: list[Path], pred_dir: Path) -> None:
    """Refuse a sequence too short to score or without its results folder, before any work starts."""
    if len(gt_paths) < 3:
        raise EvaluationError(
            f"sequence {pred_dir.name} has {len(gt_paths)} annotated frame(s); the semi-supervised protocol scores "
            "all frames but the first and the last, so it needs at least 3"
        )
    if not pred_dir.is_dir():
        raise EvaluationError(
            f"no results folder {pred_dir}; the results folder needs one sub-folder per sequence holding one PNG "
            "per frame"
        )


@dataclass(frozen=True)
class ObjectResult:
    """Statistics of one object of one sequence (a row of the per-sequence CSV is `name`, j_mean, f_mean)."""

    sequence: str
    object_id: int
    j_mean: float
    j_recall: float
    j_decay: float
    f_mean: float
    f_recall: float
    f_decay: float

    @property
    def name(self) -> str:
        return f"{self.sequence}_{self.object_id}"


@dataclass(frozen=True)
class EvaluationResult:
    """Global DAVIS numbers (means over all objects, not sequences) and the per-object rows behind them."""

    jf_mean: float
    j_mean: float
    j_recall: float
    j_decay: float
    f_mean: float
    f_recall: float
    f_decay: float
    objects: list[ObjectResult]

    @classmethod
    def from_objects(cls, objects: list[ObjectResult]) -> EvaluationResult:
        def mean(field: str) -> float:
            with warnings.catch_warnings():  # NaN when there are no objects, like the official np.mean
                warnings.simplefilter("ignore", category=RuntimeWarning)
                return float(np.mean([getattr(o, field) for o in objects]))

        j_mean, f_mean = mean("j_mean"), mean("f_mean")
        return cls(
            jf_mean=(j_mean + f_mean) / 2,
            j_mean=j_mean,
            j_recall=mean("j_recall"),
            j_decay=mean("j_decay"),
            f_mean=f_mean,
            f_recall=mean("f_recall"),
            f_decay=mean("f_decay"),
            objects=objects,
        )

    def global_row(self) -> tuple[float, ...]:
        """Values in the order of GLOBAL_COLUMNS."""
        return (self.jf_mean, self.j_mean, self.j_recall, self.j_decay, self.f_mean, self.f_recall, self.f_decay)


def evaluate_sequences(
    gt: dict[str, list[Path]], results_dir: Path, binary: bool, workers: int = 2
) -> EvaluationResult:
    """Score every sequence of `gt` ({sequence: sorted GT PNG paths}) against `results_dir/<sequence>/*.png`.

    binary: True for DAVIS 2016 (masks binarised). workers: processes; 1 runs in this process (no pool).
    Frames are split into small tasks so that both cores stay busy whatever the sequence lengths.
    """
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise EvaluationError(f"results folder {results_dir} does not exist; pass --results DIR with the predictions")
    n_objects, tasks = {}, []
    for seq, paths in gt.items():
        paths = [Path(p) for p in paths]
        _check_sequence(paths, results_dir / seq)
        n_objects[seq] = count_objects(paths[0], binary)
        scored = paths[1:-1]
        for start in range(0, len(scored), FRAMES_PER_TASK):
            tasks.append((seq, scored[start : start + FRAMES_PER_TASK]))

    args = [(paths, results_dir / seq, binary, n_objects[seq]) for seq, paths in tasks]
    if workers <= 1:
        chunks = [_score_frames(*a) for a in args]
    else:
        # No cv2.setNumThreads in the workers: in a process forked after OpenCV's thread pool started (any cv2 call in
        # the caller, e.g. run.py) it waits forever for threads that were not forked.
        with ProcessPoolExecutor(max_workers=workers) as pool:
            futures = [pool.submit(_score_frames, *a) for a in args]
            try:
                chunks = [f.result() for f in futures]
            except BaseException:
                pool.shutdown(cancel_futures=True)  # stop at the first bad file instead of scoring everything
                raise

    per_seq: dict[str, list[np.ndarray]] = {seq: [] for seq in gt}
    for (seq, _), chunk in zip(tasks, chunks, strict=True):
        per_seq[seq].append(chunk)
    objects = []
    for seq, parts in per_seq.items():
        scores = np.concatenate(parts, axis=2)  # (2, n_objects, frames)
        for k in range(n_objects[seq]):
            objects.append(ObjectResult(seq, k + 1, *object_statistics(scores[0, k]), *object_statistics(scores[1, k])))
    return EvaluationResult.from_objects(objects)


# ----------------------------------------------------------------------------------------------------------------
# Output
# ----------------------------------------------------------------------------------------------------------------


def _fmt(value: float) -> str:
    return "" if math.isnan(value) else f"{value:.3f}"  # pandas writes NaN as an empty field


def csv_paths(out_dir: str | Path, split: str) -> tuple[Path, Path]:
    """The official toolkit's result files for `split` in out_dir: (global, per-sequence)."""
    out_dir = Path(out_dir)
    return out_dir / f"global_results-{split}.csv", out_dir / f"per-sequence_results-{split}.csv"


def remove_csvs(out_dir: str | Path, split: str) -> None:
    """Delete the CSVs of `split` in out_dir, if any. The official script silently reuses them, which reports stale
    numbers after a new run; and once the predictions change (a new run, or a failed evaluation), the last run's
    numbers must not stay beside them."""
    for path in csv_paths(out_dir, split):
        path.unlink(missing_ok=True)


def _csv_bytes(header: tuple[str, ...], rows: list[list[str]]) -> bytes:
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return text.getvalue().encode()


def write_csvs(result: EvaluationResult, out_dir: str | Path, split: str) -> tuple[Path, Path]:
    """Write `global_results-<split>.csv` and `per-sequence_results-<split>.csv` into out_dir, as the official
    toolkit lays them out (pandas `to_csv(index=False, float_format='%.3f')`).

    Each file is written with `utils.atomic_write`: a full disk or a kill leaves the previous file or the new one,
    never a truncated CSV. The global file goes last, so that its presence means both are complete.
    """
    global_path, seq_path = csv_paths(out_dir, split)
    seq_rows = [[obj.name, _fmt(obj.j_mean), _fmt(obj.f_mean)] for obj in result.objects]
    atomic_write(seq_path, lambda f: f.write(_csv_bytes(SEQUENCE_COLUMNS, seq_rows)))
    global_row = [[_fmt(v) for v in result.global_row()]]
    atomic_write(global_path, lambda f: f.write(_csv_bytes(GLOBAL_COLUMNS, global_row)))
    return global_path, seq_path


def evaluate_and_write(
    gt: dict[str, list[Path]], results_dir: str | Path, split: str, binary: bool, workers: int = 2
) -> tuple[EvaluationResult, Path, Path]:
    """Score `results_dir` (see `evaluate_sequences`) and write its CSVs there: (result, global CSV, sequence CSV).

    The CSVs of `split` already in results_dir are deleted first (`remove_csvs`), so a failed evaluation leaves none.
    """
    remove_csvs(results_dir, split)
    result = evaluate_sequences(gt, Path(results_dir), binary, workers)
    return (result, *write_csvs(result, results_dir, split))


def format_table(result: EvaluationResult, split: str = "") -> str:
    """Global and per-object results as aligned text, like the official script's printout."""
    width = max([len(c) for c in GLOBAL_COLUMNS])
    lines = [f" Global results {split} ".center(78, "-")]
    lines.append(" ".join(c.rjust(width) for c in GLOBAL_COLUMNS))
    lines.append(" ".join(_fmt(v).rjust(width) for v in result.global_row()))
    name_w = max([len("Sequence")] + [len(o.name) for o in result.objects])
    lines += ["", f" Per sequence results {split} ".center(50, "-")]
    lines.append(f"{'Sequence'.ljust(name_w)} {'J-Mean':>8} {'F-Mean':>8}")
    for obj in result.objects:
        lines.append(f"{obj.name.ljust(name_w)} {_fmt(obj.j_mean):>8} {_fmt(obj.f_mean):>8}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--compare"]:  # compare scored runs (report.py); nothing is scored
        from report import compare_main

        return compare_main(argv[1:])
    parser = argparse.ArgumentParser(description="DAVIS semi-supervised evaluation (J, F, J&F).")
    parser.add_argument("--davis", required=True, help="DAVIS root (DAVIS 2016 or 2017 layout)")
    parser.add_argument("--year", choices=["2016", "2017"], default="2017", help="2016: single object, binary masks")
    parser.add_argument("--split", default="val", help="image set, e.g. val")
    parser.add_argument("--results", required=True, type=Path, help="folder with one sub-folder of PNGs per sequence")
    parser.add_argument("--workers", type=int, default=2, help="processes; 1 evaluates in this process")
    args = parser.parse_args(argv)

    # Imported here, not at the top, so that the metric functions (and the worker processes) need no dataset code.
    from dataset import DAVIS

    start = time.perf_counter()
    try:
        ds = DAVIS(args.davis, year=args.year, split=args.split)
        result, global_path, seq_path = evaluate_and_write(
            ds.ground_truth(), args.results, args.split, ds.binary, args.workers
        )
    except (EvaluationError, VOSInputError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(format_table(result, args.split))
    print(f"\nwrote {global_path} and {seq_path} ({time.perf_counter() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
