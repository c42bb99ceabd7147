"""What every benchmark module shares: the one result type, the entry a module gives the registry, and the helpers
the scorers have in common.

The result type follows vos-benchmark's evaluator: every object's J and F per frame are computed once
(`metrics.object_scores`) and kept as arrays (`ObjectScores`); a benchmark's rule is a reduction of those arrays into
its toolkit's table (`Scores.global_table`). The scorers return a `Scores`, the report pages show one
(reports.report.RunScores holds it with the folders its thumbnails read) and `evaluation.py --compare` reads it
back from scores.json.

A benchmark module (benchmarks/davis.py, ...) describes itself with one `Benchmark`: its --data keys (each a
`DataKey` that opens the module's `dataset.Layout` on a root folder), the root flag and what the root holds, and its
`Scoring`s (evaluation.py --benchmark NAME). `benchmarks.registry` lists the modules' entries.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import metrics
from utils import VOSInputError, atomic_write, read_mask, writable_dir

# ----------------------------------------------------------------------------------------------------------------
# The result
# ----------------------------------------------------------------------------------------------------------------


@dataclass(eq=False)
class ObjectScores:
    """One scored object: its J and F on every frame the benchmark reads, which of them its rules count, and the
    toolkit's own per-object values.

    j, f: float arrays, one entry per frame of `frames` (video order), in [0, 1] whatever scale the toolkit prints;
    NaN where a frame has no score (DAVIS's first and last frame). counted: bool array, the frames the rules count
    (vos-benchmark and SA-V read the frames before an object's first appearance but do not count them). jf: the
    object's headline J&F as the toolkit defines it (its scale: fractions for DAVIS, percentages for most
    others). values: the toolkit's per-object measures as it reports them (DAVIS: J, J-Recall, ..., F-Decay).
    """

    name: str  # as the toolkit names the object's row, e.g. "bear_1"
    sequence: str  # the video folder
    object_label: str  # id as written in the masks ("1"), or the SA-V object folder ("000")
    frames: list[str]  # frame names without extension, e.g. "00042"
    j: np.ndarray
    f: np.ndarray
    counted: np.ndarray
    jf: float
    values: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.frames = list(self.frames)
        self.j = np.asarray(self.j, dtype=np.float64)
        self.f = np.asarray(self.f, dtype=np.float64)
        self.counted = np.asarray(self.counted, dtype=bool)
        n = len(self.frames)
        if not (len(self.j) == len(self.f) == len(self.counted) == n):
            raise ValueError(
                f"object {self.name}: {n} frames but {len(self.j)} J, {len(self.f)} F and {len(self.counted)} "
                "counted entries; give one of each per frame"
            )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ObjectScores):
            return NotImplemented
        same = (self.name, self.sequence, self.object_label, self.frames, self.jf, self.values) == (
            other.name, other.sequence, other.object_label, other.frames, other.jf, other.values)
        return same and all(np.array_equal(a, b, equal_nan=True) for a, b in
                            ((self.j, other.j), (self.f, other.f), (self.counted, other.counted)))

    def frame_scores(self) -> np.ndarray:
        """(J + F) / 2 per frame, NaN on frames not counted: what the worst frames are chosen by."""
        return np.where(self.counted, (self.j + self.f) / 2, np.nan)

    def worst_frames(self, k: int) -> list[int]:
        """Indices of the k counted frames with the lowest (J + F) / 2, worst first (NaN frames never)."""
        scores = self.frame_scores()
        valid = np.flatnonzero(~np.isnan(scores))
        return [int(i) for i in valid[np.argsort(scores[valid], kind="stable")][:k]]

    def counted_mean(self, which: str) -> float:
        """Mean of J or F ("j" / "f") over the counted frames, NaN frames skipped (NaN if none)."""
        values = getattr(self, which)[self.counted]
        values = values[~np.isnan(values)]
        return float(values.mean()) if values.size else math.nan


@dataclass
class Scores:
    """A scored run: the toolkit's global table (ordered (column, value) pairs in its order and scale, NaN where it
    leaves a field empty), printed with `decimals` decimals (the benchmark module's constant), its objects, the
    files written and one-line notes (an empty seen/unseen group, videos without predictions).

    percent: the toolkit prints its measures as percentages (the table and each object's `jf` x100); False: as
    fractions in [0, 1]. The reports show every number in that unit (each benchmark module sets it).
    title: the benchmark's name as its papers write it ("DAVIS 2017"); "" shows `benchmark`."""

    benchmark: str  # the Scoring's name: "davis", "vos-benchmark", ...
    split: str
    global_table: list[tuple[str, float]]
    objects: list[ObjectScores]
    decimals: int
    files: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    percent: bool = False
    title: str = ""

    def __post_init__(self) -> None:
        self.global_table = [(str(c), float(v)) for c, v in self.global_table]

    def value(self, column: str) -> float:
        """The global table's value of `column` (e.g. "J&F-Mean")."""
        return dict(self.global_table)[column]

    @property
    def jf_mean(self) -> float:
        """The headline J&F: the first column of every toolkit's table (DAVIS's J&F-Mean, vos-benchmark's J&F, ...)."""
        return self.global_table[0][1]

    @property
    def scale(self) -> float:
        """What a fraction in [0, 1] (an `ObjectScores.j` or `f` entry) is multiplied by in the toolkit's unit."""
        return 100.0 if self.percent else 1.0

    @property
    def name(self) -> str:
        """"SA-V val", "DAVIS 2017 val", "vos-benchmark": the title and the split, for page titles."""
        return " ".join(p for p in (self.title or self.benchmark, self.split) if p)


def format_scores(result: Scores, empty: str = "nan") -> str:
    """The global table as a toolkit prints it, `result.decimals` decimals (`empty` where it leaves a field empty),
    then the notes."""
    width = max(len(c) for c, _ in result.global_table)
    lines = [f" {result.benchmark} {result.split} ".center(60, "-")]
    for c, v in result.global_table:
        lines.append(f"{c.ljust(width)}  {empty if math.isnan(v) else f'{v:.{result.decimals}f}'}")
    return "\n".join(lines + result.notes)


# ----------------------------------------------------------------------------------------------------------------
# What a module gives the registry
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DataKey:
    """One run.py --data key: the root it reads (a field of dataset.Roots, which is also run.py's flag) and how the
    module opens its layout there."""

    key: str  # "DAVIS17_val"
    root: str  # the dataset.Roots entry whose folder it reads
    open: Callable[[Path], Any]  # root folder -> the module's dataset.Layout (checked)
    flag: str | None = ""  # run.py's flag that fills that root, without '--' ("": `root`; None: no flag)
    unset: str = ""  # for a root without a flag: what it is and who sets it (the refusal when it is not set)

    @property
    def root_flag(self) -> str | None:
        return self.root if self.flag == "" else self.flag


@dataclass(frozen=True)
class ScoreRequest:
    """What evaluation.py --benchmark hands a scorer: the files (--gt, --results, --out), the workers, --split (None:
    the scorer's default), the scorer's own file options (`Scoring.options`, None when not given) and `on_checked`,
    which the scorer calls through `begin_writing` (see there)."""

    gt: Path | None
    results: Path
    out: Path | None = None
    workers: int = 2
    split: str | None = None
    options: Mapping[str, Path | None] = field(default_factory=dict)
    on_checked: Callable[[], object] | None = None


@dataclass(frozen=True)
class Scoring:
    """One toolkit's rules, as evaluation.py --benchmark NAME runs them.

    gt: what --gt is for it (for the help and the refusal). options: the file options it reads beyond --gt and
    --results, {name: what it is} (evaluation.py adds `--<name> PATH` for each). split: what --split means to it
    (None: it reads no split). report_folders(gt): (frames folder, ground-truth folder, report mask layout) of the
    report. format: its printed table. result_files: glob patterns of the files it writes into the output folder,
    whatever the split (evaluation.py removes every scoring's from --out, so that no other scoring's numbers stay
    beside a new report).
    """

    name: str
    toolkit: str  # the official code it reproduces, e.g. "hkchengrex/vos-benchmark"
    gt: str
    score: Callable[[ScoreRequest], Scores]
    report_folders: Callable[[Path], tuple[Path, Path, str]]
    options: Mapping[str, str] = field(default_factory=dict)
    split: str | None = None
    format: Callable[[Scores], str] = format_scores
    result_files: tuple[str, ...] = ()


@dataclass(frozen=True)
class Benchmark:
    """Everything run.py and evaluation.py know of one dataset module: its --data keys, what their root holds, the
    root flag that run.py generates for it, and its scorings.

    root: the dataset.Roots entry and run.py flag `--<root>` that run.py adds for this module, with run.py's
    `<ROOT>_ROOT` constant as its default when run.py has one; None when the keys read a root that run.py defines
    itself because training reads it too (--davis, --ytvos).
    """

    name: str
    keys: tuple[DataKey, ...]
    holds: str = ""  # what the root holds, e.g. "valid/" (help texts and the refusal of a missing root)
    root: str | None = None
    scorings: tuple[Scoring, ...] = ()
    training: Training | None = None  # its training split, a --stages preset of every method (core.methods)


@dataclass(frozen=True)
class Training:
    """A dataset module's training split, which every method trains on as `--stages <its name>` (read from its root).

    clips(root, val_sequences, output_size=, clip_len=, clips_per_epoch=) -> its clip sampler (training.samplers).
    holds_out: the --val-sequences videos are held out of training and validate it (a folder of one's own videos);
    else the stage is selected on DAVIS val, as the official stages are.
    """

    holds: str  # what the root holds for training (the refusal of a missing root)
    clips: Callable[..., Any]
    holds_out: bool = False


def wrote_files(result: Scores, key: str, fps: float) -> str:
    """The line run.py --test prints after a toolkit's table: the files it wrote."""
    return f"{key}: wrote {' and '.join(str(p) for p in result.files)}"


@dataclass
class TestScoring:
    """How run.py --test scores a split after segmentation: the result files an earlier run left (removed before any
    frame runs), the call of the scorer, its printed table, and the ground truth the report draws
    ((folder, report mask layout))."""

    stale: list[Path]
    score: Callable[[], Scores]
    format: Callable[[Scores], str]
    report_masks: tuple[Path, str]
    summary: Callable[[Scores, str, float], str] = wrote_files  # the line printed after the table (key, fps)


def report_folders_beside(gt: Path) -> tuple[Path, Path, str]:
    """(frames folder, ground-truth folder, "ids") of a data set that ships its frames beside its annotations:
    JPEGImages in place of Annotations in the path, or JPEGImages/ beside `gt`."""
    gt = Path(gt)
    if "Annotations" in gt.parts:
        return Path(*("JPEGImages" if p == "Annotations" else p for p in gt.parts)), gt, "ids"
    return gt.parent / "JPEGImages", gt, "ids"  # never gt itself, whose PNGs would pass for frames


# ----------------------------------------------------------------------------------------------------------------
# Shared scoring helpers
# ----------------------------------------------------------------------------------------------------------------


def parallel_map(fn: Callable, args: Sequence[tuple], workers: int) -> list:
    """[fn(*a) for a in args], in `workers` processes (1: in this process); the first error stops the rest."""
    if workers <= 1 or len(args) <= 1:
        return [fn(*a) for a in args]
    # No cv2.setNumThreads in the workers: in a process forked after OpenCV's thread pool started (any cv2 call in
    # the caller, e.g. run.py) it waits forever for threads that were not forked.
    with ProcessPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(fn, *a) for a in args]
        try:
            return [f.result() for f in futures]
        except BaseException:
            pool.shutdown(cancel_futures=True)  # stop at the first bad file instead of scoring everything
            raise


def remove_stale(paths: Iterable[Path]) -> None:
    """Delete result files of an earlier run: the official scripts reuse or keep them beside new predictions, and the
    numbers of other predictions must never be read as these."""
    for path in paths:
        Path(path).unlink(missing_ok=True)


def begin_writing(out: Path, flag: str, own: Iterable[Path], on_checked: Callable[[], object] | None) -> Path:
    """Where a scorer's checks of its flags, the ground truth and the results folder end, before it writes or removes
    anything and before it reads or requires any prediction PNG: `on_checked` (evaluation.py's checks of --out
    against the ground truth, and its removal of the files of earlier scorings), then `out` created and checked
    writable (flag names it), then the scorer's `own` result files of an earlier run removed. A refused command so
    deletes nothing; predictions changed since the last scoring (a PNG missing) leave no stale numbers. -> out."""
    if on_checked is not None:
        on_checked()
    out = writable_dir(Path(out), flag)
    remove_stale(own)
    return out


def write_text(path: Path, text: str) -> Path:
    return atomic_write(path, lambda f: f.write(text.encode()))


def object_ids(mask: np.ndarray) -> np.ndarray:
    """Sorted non-zero values of an id map (np.unique of its object pixels only, which are few)."""
    return np.unique(mask[mask != 0])


def read_pair(gt_path: Path, pred_path: Path, binary_per_object: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """GT and prediction id maps as the toolkits read them (`np.array(Image.open(p))`, values untouched).

    binary_per_object: one object per PNG (SA-V's layout), each with at most 2 values, binarised by > 0.
    """
    if not gt_path.is_file():
        raise VOSInputError(f"ground-truth mask {gt_path} does not exist; re-download or re-extract the dataset")
    if not pred_path.is_file():
        raise VOSInputError(
            f"missing prediction {pred_path} (for GT {gt_path}); write one PNG per annotated frame, named like the GT"
        )
    gt, pred = read_mask(gt_path, raw=True), read_mask(pred_path, raw=True)
    if gt.shape != pred.shape:
        raise VOSInputError(
            f"prediction {pred_path} is {pred.shape[1]}x{pred.shape[0]} but its GT {gt_path} is "
            f"{gt.shape[1]}x{gt.shape[0]} (WxH); save predictions at the annotation resolution"
        )
    if binary_per_object:
        for path, ids in ((gt_path, gt), (pred_path, pred)):
            if len(object_ids(ids)) + (not ids.all()) > 2:  # np.unique's count, 0 included
                raise VOSInputError(
                    f"{path} holds more than one object; SA-V stores one object per PNG (0 = background), one folder "
                    "per object (vos_inference.py --per_obj_png_file)"
                )
        gt, pred = (gt > 0).view(np.uint8), (pred > 0).view(np.uint8)
    return gt, pred


def score_fixed(pairs: list[tuple[Path, Path]], objects: tuple[int, ...], smooth: int = 0,
                radii: Callable[[np.ndarray], tuple[float, float]] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Scores of fixed objects on frames: ((len(objects), T, 3) of `metrics.object_scores` with `smooth` and
    `radii`, (len(objects), T) bool 'the object is in the GT frame')."""
    scores = np.zeros((len(objects), len(pairs), 3))
    in_gt = np.zeros((len(objects), len(pairs)), dtype=bool)
    for t, (gt_path, pred_path) in enumerate(pairs):
        gt, pred = read_pair(gt_path, pred_path)
        scores[:, t] = metrics.object_scores(gt, pred, objects, smooth, radii)
        in_gt[:, t] = [np.any(gt == k) for k in objects]
    return scores, in_gt


def score_from_appearance(
    pairs: list[tuple[Path, Path]], binary_per_object: bool = False
) -> list[tuple[int, int, np.ndarray]]:
    """vos-benchmark's Evaluator on one video's frames: [(object id, first counted frame, (T, 3) scores)].

    An object's frames count from the first frame where it is in the GT or in the prediction; before that both
    masks are empty, so J = F = 1 there, and those frames are returned as such but not counted. Objects reported
    are the ids seen in the GT, in the order the official code iterates its set of them (built the same way).
    """
    in_gt: set[int] = set()
    in_pred: set[int] = set()
    first: dict[int, int] = {}
    scores: dict[int, np.ndarray] = {}
    for t, (gt_path, pred_path) in enumerate(pairs):
        gt, pred = read_pair(gt_path, pred_path, binary_per_object)
        in_gt.update(set(object_ids(gt).tolist()))
        in_pred.update(set(object_ids(pred).tolist()))
        live = sorted(in_gt | in_pred)
        for k in live:
            if k not in first:
                first[k] = t
                scores[k] = np.ones((len(pairs), 3))  # both masks empty before t: J = F = 1
        scores_t = metrics.object_scores(gt, pred, live)
        for i, k in enumerate(live):
            scores[k][t] = scores_t[i]
    return [(k, first[k], scores[k]) for k in in_gt]


def require_gt(request: ScoreRequest, benchmark: str) -> Path:
    """--gt of an evaluation.py scoring that needs it, refused in one line when not given."""
    if request.gt is None:
        raise VOSInputError(f"--benchmark {benchmark} needs --gt PATH (what its official evaluator takes)")
    return request.gt


def subdirs(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))


def need_dir(path: Path | None, flag: str, what: str) -> Path:
    """`path` if it is a folder; else the one-line refusal naming `flag` and what to pass."""
    if path is None or not Path(path).is_dir():
        raise VOSInputError(f"{flag} {path} is not a folder; pass {what}")
    return Path(path)


def pngs(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.suffix == ".png" and not p.name.startswith("."))


def nan_mean(values: Sequence[float]) -> float:
    """np.mean as the toolkits call it: NaN for an empty list (no warning)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)
        return np.mean(values) if len(values) else np.float64("nan")
