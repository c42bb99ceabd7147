"""DAVIS semi-supervised evaluation: region similarity J, boundary accuracy F and J&F.

The numbers are those of the official toolkit (davisvideochallenge/davis2017-evaluation, semi-supervised protocol),
reimplemented so that they match it to the printed decimals while being faster (cropping to the objects, one pass
over each PNG, frames spread over worker processes) and safer (errors name the file and the fix; result CSVs are
always recomputed, never reused).

The command line also scores LVOS, MOSE v2, vos-benchmark folders and SA-V with their toolkits' rules
(benchmarks.py). Every scoring also writes scores.json and report.html beside the result files (report.py), unless
--no-report.

Usage:
    python evaluation.py --davis data/DAVIS2017 --year 2017 --split val --results output/val
    python evaluation.py --benchmark lvos --gt data/LVOS/valid --results output/lvos_val
    python evaluation.py --compare output/val output/val_ablation  # two scored runs: compare.html
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import shlex
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmarks import metrics
from benchmarks import scoring as benchmarks
from benchmarks.metrics import BOUND_TH, boundary_f, boundary_map, boundary_radius, disk, jaccard  # noqa: F401 (re-exported)
from utils import VOSInputError, atomic_write, read_mask, writable_dir

VOID_LABEL = 255  # DAVIS 2017 marks uncertain pixels with 255; the semi-supervised protocol scores them as background
GLOBAL_COLUMNS = ("J&F-Mean", "J-Mean", "J-Recall", "J-Decay", "F-Mean", "F-Recall", "F-Decay")
SEQUENCE_COLUMNS = ("Sequence", "J-Mean", "F-Mean")
FRAMES_PER_TASK = 8  # frames per worker task: small enough to balance 2 cores even on a 3-sequence sample


class EvaluationError(VOSInputError):
    """Bad evaluation input (missing folder or PNG, wrong size, too many objects); the message names the fix."""


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
        if not binary and gt.max(initial=0) > n_objects:
            # DAVIS counts the objects of the first GT frame only; the official script then stops (exit code 0, no
            # CSV) as soon as a prediction tracks the late object. vos-benchmark scores it from its first appearance.
            raise EvaluationError(
                f"GT {gt_path} has object id {int(gt.max())}, absent from the first GT frame of "
                f"{gt_path.parent.name} ({n_objects} object(s)); the DAVIS rules cannot score an object that "
                "appears late: score this data with --benchmark vos-benchmark"
            )
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
        scores[:, :, t] = metrics.object_scores(gt, pred, range(1, n_objects + 1))[:, : metrics.F + 1].T
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
    frames: tuple[str, ...] = ()  # the scored frames (all but the first and the last) and J, F on each
    j: tuple[float, ...] = ()
    f: tuple[float, ...] = ()
    ends: tuple[str, ...] = ()  # the sequence's first and last frame, which the toolkit never scores

    @property
    def name(self) -> str:
        return f"{self.sequence}_{self.object_id}"

    def report_fields(self) -> dict:
        """The fields of report.ObjectFrames: the sequence's first and last frame are listed as not counted (the
        toolkit drops them, so they have no J or F), every frame between them is counted."""
        first, last = ([self.ends[0]], [self.ends[1]]) if len(self.ends) == 2 else ([], [])
        nan = [math.nan] * len(first)
        return {
            "name": self.name,
            "sequence": self.sequence,
            "object_label": str(self.object_id),
            "frames": [*first, *self.frames, *last],
            "j": [*nan, *self.j, *nan],
            "f": [*nan, *self.f, *nan],
            "counted": [False] * len(first) + [True] * len(self.frames) + [False] * len(last),
            "jf": (self.j_mean + self.f_mean) / 2,
        }


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

    def report_fields(self, split: str = "") -> dict:
        """The fields of report.RunScores (objects as report.ObjectFrames fields)."""
        return {
            "benchmark": "davis",
            "split": split,
            "decimals": 3,  # as the toolkit prints the global table (%.3f)
            "global_table": list(zip(GLOBAL_COLUMNS, self.global_row(), strict=True)),
            "objects": [o.report_fields() for o in self.objects],
        }


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
    chunks = benchmarks.parallel_map(_score_frames, args, workers)

    per_seq: dict[str, list[np.ndarray]] = {seq: [] for seq in gt}
    for (seq, _), chunk in zip(tasks, chunks, strict=True):
        per_seq[seq].append(chunk)
    objects = []
    for seq, parts in per_seq.items():
        scores = np.concatenate(parts, axis=2)  # (2, n_objects, frames)
        frames = tuple(Path(p).stem for p in gt[seq][1:-1])
        ends = (Path(gt[seq][0]).stem, Path(gt[seq][-1]).stem) if len(gt[seq]) > 1 else ()
        for k in range(n_objects[seq]):
            stats = (*object_statistics(scores[0, k]), *object_statistics(scores[1, k]))
            per_frame = (tuple(scores[0, k].tolist()), tuple(scores[1, k].tolist()))
            objects.append(ObjectResult(seq, k + 1, *stats, frames, *per_frame, ends))
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
    gt: dict[str, list[Path]],
    results_dir: str | Path,
    split: str,
    binary: bool,
    workers: int = 2,
    out_dir: str | Path | None = None,
) -> tuple[EvaluationResult, Path, Path]:
    """Score `results_dir` (see `evaluate_sequences`) and write its CSVs into out_dir (default results_dir):
    (result, global CSV, sequence CSV).

    The CSVs of `split` already in out_dir are deleted first (`remove_csvs`), so a failed evaluation leaves none.
    """
    out_dir = results_dir if out_dir is None else out_dir
    remove_csvs(out_dir, split)
    result = evaluate_sequences(gt, Path(results_dir), binary, workers)
    return (result, *write_csvs(result, out_dir, split))


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
    parser = argparse.ArgumentParser(
        description="Semi-supervised VOS scoring as the official toolkits do it (J, F, J&F and each benchmark's own "
        "measures); bad input exits with code 2."
    )
    parser.add_argument(
        "--benchmark",
        choices=benchmarks.BENCHMARKS,
        default="davis",
        help="whose rules and files: davis (davis2017-evaluation), lvos (lvos-evaluation), mosev2 "
        "(MOSE-api score.py), vos-benchmark (hkchengrex/vos-benchmark), sav (sam2 sav_evaluator.py)",
    )
    parser.add_argument(
        "--gt",
        type=Path,
        help="what the official evaluator takes: the LVOS split folder "
        "(--lvos_path), the MOSE v2 Annotations folder (--ann), the vos-benchmark GT folder (-g), "
        "SA-V's Annotations_6fps (--gt_root); for davis, the DAVIS root (as --davis)",
    )
    parser.add_argument("--davis", type=Path, help="DAVIS root (DAVIS 2016 or 2017 layout), for --benchmark davis")
    parser.add_argument("--year", choices=["2016", "2017"], default="2017", help="2016: single object, binary masks")
    parser.add_argument(
        "--split",
        help="davis: image set (default val); lvos: valid or test (default valid), "
        "which names <split>_meta.json and the CSVs",
    )
    parser.add_argument("--results", type=Path, help="folder with one sub-folder of PNGs per video")
    parser.add_argument(
        "--meta",
        type=Path,
        help="mosev2: its meta.json (score.py --meta, required); lvos: overrides <gt>/<split>_meta.json",
    )
    parser.add_argument(
        "--unseen",
        type=Path,
        help=f"lvos: file of unseen video ids, one per line (default "
        f"{benchmarks.LVOS_UNSEEN.name}, the toolkit's list)",
    )
    parser.add_argument("--out", type=Path, help="folder for the result files (default: the --results folder)")
    parser.add_argument("--workers", type=int, default=2, help="processes; 1 evaluates in this process")
    parser.add_argument("--no-report", action="store_true",
                        help="write only the toolkit's files, not report.html and scores.json beside them")
    parser.add_argument("--compare", nargs="+", metavar="RESULTS", default=None,
                        help="compare scored runs instead of scoring: results folders holding scores.json (the first "
                        "is the base); writes compare.html into --out (default: the first folder)")
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    command = shlex.join(["evaluation.py", *argv])  # what report.html records
    if args.compare is not None:
        return _compare(args)

    start = time.perf_counter()
    try:
        if args.results is None:
            raise VOSInputError("pass --results DIR, the folder with one sub-folder of PNGs per video (or --compare)")
        if (args.out or args.results).is_dir():
            from reports import report

            report.remove_outputs(args.out or args.results)  # no page of an earlier scoring beside the new files
        if args.benchmark == "davis":
            _score_davis(args, command, start)
        else:
            _score_benchmark(args, command, start)
    except VOSInputError as err:  # EvaluationError included
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


def _compare(args: argparse.Namespace) -> int:
    """--compare: report.py's comparison of scored runs (compare.html), refused with exit 2 when a flag that scores
    (--results, --gt, --davis) is given too."""
    given = [f for f, v in (("--results", args.results), ("--gt", args.gt), ("--davis", args.davis)) if v]
    if given:
        print(f"error: --compare reads scored runs and scores nothing; drop {', '.join(given)}", file=sys.stderr)
        return 2
    from reports.report import compare_main  # matplotlib and the page code only when comparing

    return compare_main([*args.compare, *(["--out", str(args.out)] if args.out is not None else [])])


def _score_davis(args: argparse.Namespace, command: str, start: float) -> None:
    """--benchmark davis: score --results on the DAVIS root's --split as davis2017-evaluation does, print the table,
    write the CSVs and (unless --no-report) the report; `start` is when the scoring began (the time printed)."""
    if (args.davis or args.gt) is None:
        raise VOSInputError("--benchmark davis needs the DAVIS root: pass --davis PATH (or --gt PATH)")
    # Imported here, not at the top, so that the metric functions (and the worker processes) need no
    # dataset code.
    from dataset import DAVIS

    split = args.split or "val"
    if args.out is not None:
        writable_dir(args.out, "--out")
    ds = DAVIS(args.davis or args.gt, year=args.year, split=split)
    gt = ds.ground_truth()
    result, global_path, seq_path = evaluate_and_write(gt, args.results, split, ds.binary, args.workers, args.out)
    print(format_table(result, split))
    print(f"\nwrote {global_path} and {seq_path} ({time.perf_counter() - start:.1f} s)")
    if not args.no_report and gt:
        first = next(iter(gt))
        write_report(result.report_fields(split), global_path.parent, ds.frames(first)[0].parent.parent,
                     gt[first][0].parent.parent, args.results, "binary" if ds.binary else "ids", command)


def _score_benchmark(args: argparse.Namespace, command: str, start: float) -> None:
    """--benchmark lvos, mosev2, vos-benchmark or sav: score --results on --gt with that benchmark's scorer in
    benchmarks.py, print its table and the files written, and (unless --no-report) write the report; `start` is when
    the scoring began (the time printed)."""
    if args.gt is None:
        raise VOSInputError(f"--benchmark {args.benchmark} needs --gt PATH (what its official evaluator takes)")
    scorers: dict[str, Callable[[], benchmarks.BenchmarkResult]] = {
        "lvos": lambda: benchmarks.score_lvos(
            args.gt, args.results, args.split or "valid", args.meta, args.unseen, args.out, args.workers
        ),
        "mosev2": lambda: benchmarks.score_mosev2(args.gt, args.results, args.meta, args.out, args.workers),
        "vos-benchmark": lambda: benchmarks.score_vos_benchmark(args.gt, args.results, args.out, args.workers),
        "sav": lambda: benchmarks.score_sav(args.gt, args.results, args.out, args.workers),
    }
    scored = scorers[args.benchmark]()
    print(benchmarks.format_result(scored))
    print(f"\nwrote {' and '.join(str(p) for p in scored.files)} ({time.perf_counter() - start:.1f} s)")
    if not args.no_report:
        frames, masks, layout = benchmarks.report_folders(args.benchmark, args.gt)
        write_report(scored.report_fields(), scored.files[0].parent, frames, masks, args.results, layout, command)


def write_report(fields: dict, out_dir: Path, frames_dir: Path, gt_dir: Path, pred_dir: Path, layout: str,
                 command: str) -> None:
    """scores.json and report.html beside the result files, recording the command line and the date."""
    from reports import report  # matplotlib and the page code only when a report is written

    start = time.perf_counter()
    scores = report.run_scores(fields, frames_dir=frames_dir, gt_dir=gt_dir, pred_dir=pred_dir, mask_layout=layout,
                               command=command)
    paths = report.publish(scores, out_dir)
    print(f"wrote {' and '.join(str(p) for p in paths)} ({time.perf_counter() - start:.1f} s)")


if __name__ == "__main__":
    sys.exit(main())
