"""Scoring of LVOS, MOSE v2, vos-benchmark (Cutie/XMem generic folders) and SA-V, as their official toolkits do.

Every toolkit computes J and F per frame and per object, then reduces them with its own rules. Here the per-frame
values come from one place (`metrics.object_scores`); each toolkit is a reader that says which frames of which
object are read, plus one small reduction that turns the per-frame arrays into that toolkit's table and files:

- `score_lvos`: LingyiHongfd/lvos-evaluation (`evaluation_method.py`, semi-supervised, pure-Python boundary map).
- `score_mosev2`: henghuiding/MOSE-api `MOSEv2/sam2_rcms/tools/score.py`.
- `score_vos_benchmark`: hkchengrex/vos-benchmark `benchmark.py`.
- `score_sav`: facebookresearch/sam2 `sav_dataset/sav_evaluator.py`.

Each returns a `BenchmarkResult`: the global table as the toolkit writes it, every object's per-frame J and F with
the frames the toolkit reads and whether its rules count them, and the files written. Result files already in the
output folder are deleted before scoring and written atomically, so a failed run leaves none and a finished one
leaves only its own numbers.
"""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from benchmarks import metrics
from utils import VOSInputError, atomic_write, read_mask, writable_dir

ROOT = Path(__file__).resolve().parent  # benchmarks/: the LVOS unseen list lies beside this module
# lvos-evaluation's own unseen_videos.txt (51 ids), copied with a header naming its source.
LVOS_UNSEEN = ROOT / "lvos_unseen_videos.txt"
LVOS_STEP = 5  # LVOS frames are every 5th index of the original video, named with 8 digits (00000001, 00000006, ...)
MOSE_CHUNK = 15  # frames per worker task, as score.py's MAX_FRAMES_PER_CHUNK
BENCHMARKS = ("davis", "lvos", "mosev2", "vos-benchmark", "sav")
# decimals of the global table as each toolkit prints it (MOSE v2's values are already rounded to 2)
DECIMALS = {"davis": 3, "lvos": 3, "mosev2": 2, "vos-benchmark": 1, "sav": 1}


# ----------------------------------------------------------------------------------------------------------------
# Results
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class ObjectScores:
    """One object's per-frame scores and the toolkit's per-object values.

    frames: the frame names (no extension) the toolkit reads for this object, in order. j, f: J and the headline F
    (MOSE v2: F_new) on those frames. counted: whether the rules count the frame (vos-benchmark and SA-V read the
    frames before an object's first appearance but do not count them). values: the toolkit's per-object measures,
    as it reports them (fractions for LVOS, percentages for the others). jf: the headline J&F of the object.
    """

    sequence: str
    label: str
    name: str
    frames: list[str]
    j: np.ndarray
    f: np.ndarray
    counted: np.ndarray
    values: dict[str, float | None]
    jf: float

    def report_fields(self) -> dict:
        """The fields of report.ObjectFrames, as plain Python values."""
        return {
            "name": self.name,
            "sequence": self.sequence,
            "object_label": self.label,
            "frames": list(self.frames),
            "j": [float(x) for x in self.j],
            "f": [float(x) for x in self.f],
            "counted": [bool(x) for x in self.counted],
            "jf": float(self.jf),
        }


@dataclass
class BenchmarkResult:
    """A toolkit's global table (ordered (column, value) pairs, NaN where it leaves a field empty), its objects,
    the files written and one-line notes (an empty seen/unseen group, videos without predictions)."""

    benchmark: str
    split: str
    global_table: list[tuple[str, float]]
    objects: list[ObjectScores]
    files: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def report_fields(self) -> dict:
        """The fields of report.RunScores (objects as report.ObjectFrames fields)."""
        return {
            "benchmark": self.benchmark,
            "split": self.split,
            "decimals": DECIMALS[self.benchmark],
            "global_table": [(c, float(v)) for c, v in self.global_table],
            "objects": [o.report_fields() for o in self.objects],
        }


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
    """Delete result files of an earlier run: the official scripts reuse (LVOS) or keep them beside new
    predictions, and the numbers of other predictions must never be read as these."""
    for path in paths:
        Path(path).unlink(missing_ok=True)


def _write_text(path: Path, text: str) -> Path:
    return atomic_write(path, lambda f: f.write(text.encode()))


# ----------------------------------------------------------------------------------------------------------------
# Reading masks and scoring frames
# ----------------------------------------------------------------------------------------------------------------


def _object_ids(mask: np.ndarray) -> np.ndarray:
    """Sorted non-zero values of an id map (np.unique of its object pixels only, which are few)."""
    return np.unique(mask[mask != 0])


def _read_pair(gt_path: Path, pred_path: Path, binary_sav: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """GT and prediction id maps as the toolkits read them (`np.array(Image.open(p))`, values untouched).

    binary_sav: SA-V's per-object PNGs, each with at most 2 values, binarised by > 0.
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
    if binary_sav:
        for path, ids in ((gt_path, gt), (pred_path, pred)):
            if len(_object_ids(ids)) + (not ids.all()) > 2:  # np.unique's count, 0 included
                raise VOSInputError(
                    f"{path} holds more than one object; SA-V stores one object per PNG (0 = background), one folder "
                    "per object (vos_inference.py --per_obj_png_file)"
                )
        gt, pred = (gt > 0).view(np.uint8), (pred > 0).view(np.uint8)
    return gt, pred


def _score_fixed(pairs: list[tuple[Path, Path]], objects: tuple[int, ...], mose: bool) -> tuple[np.ndarray, np.ndarray]:
    """Scores of fixed objects on frames: ((len(objects), T, 3) of `metrics.object_scores`, (len(objects), T) bool
    'the object is in the GT frame')."""
    scores = np.zeros((len(objects), len(pairs), 3))
    in_gt = np.zeros((len(objects), len(pairs)), dtype=bool)
    for t, (gt_path, pred_path) in enumerate(pairs):
        gt, pred = _read_pair(gt_path, pred_path)
        scores[:, t] = metrics.object_scores(gt, pred, objects, mose)
        in_gt[:, t] = [np.any(gt == k) for k in objects]
    return scores, in_gt


def _score_from_appearance(
    pairs: list[tuple[Path, Path]], binary_sav: bool = False
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
        gt, pred = _read_pair(gt_path, pred_path, binary_sav)
        in_gt.update(set(_object_ids(gt).tolist()))
        in_pred.update(set(_object_ids(pred).tolist()))
        live = sorted(in_gt | in_pred)
        for k in live:
            if k not in first:
                first[k] = t
                scores[k] = np.ones((len(pairs), 3))  # both masks empty before t: J = F = 1
        scores_t = metrics.object_scores(gt, pred, live)
        for i, k in enumerate(live):
            scores[k][t] = scores_t[i]
    return [(k, first[k], scores[k]) for k in in_gt]


def _subdirs(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))


def _need_dir(path: Path, flag: str, what: str) -> Path:
    path = Path(path)
    if not path.is_dir():
        raise VOSInputError(f"{flag} {path} is not a folder; pass {what}")
    return path


def _pngs(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.suffix == ".png" and not p.name.startswith("."))


def _mean(values: Sequence[float]) -> float:
    """np.mean as the toolkits call it: NaN for an empty list (no warning)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)
        return np.mean(values) if len(values) else np.float64("nan")


# ----------------------------------------------------------------------------------------------------------------
# LVOS (lvos-evaluation, semi-supervised)
# ----------------------------------------------------------------------------------------------------------------

LVOS_GLOBAL_COLUMNS = (
    "J&F-Mean",
    "J-Mean",
    "J-seen-Mean",
    "J-unseen-Mean",
    "F-Mean",
    "F-seen-Mean",
    "F-unseen-Mean",
    "V-Mean",
    "V-seen-Mean",
    "V-unseen-Mean",
)
LVOS_SEQUENCE_COLUMNS = ("Sequence", "J-Mean", "F-Mean", "V-Mean")


def read_video_list(path: Path) -> set[str]:
    """Video ids of a list file, one per line; blank lines and '#' comments are skipped."""
    path = Path(path)
    if not path.is_file():
        raise VOSInputError(f"--unseen {path} does not exist; pass a file with one LVOS video id per line")
    lines = [line.strip() for line in path.read_text().splitlines()]
    return {line for line in lines if line and not line.startswith("#")}


def lvos_frames(start: int, end: int, frame_nums: int) -> list[str]:
    """The frames lvos-evaluation scores for an object: range(start, end, 5) without its first entry and without
    the entry at index frame_nums - 1, so the object's first and last annotated frames are dropped."""
    names = [f"{i:08d}" for i in range(start, end, LVOS_STEP)]
    return names[1 : frame_nums - 1]


def lvos_variance(j: np.ndarray, f: np.ndarray) -> float:
    """LVOS's V of one object: the population standard deviation of (J_t + F_t) / 2, with the variance rounded to
    4 decimals before the square root, as `db_statistics_var` (so V = 0 whenever the variance is below 5e-5)."""
    jf = (j + f) / 2
    var = np.nansum((np.nanmean(jf) - jf) ** 2) / len(jf)
    return math.sqrt(round(var, 4))


def lvos_files(out: Path, split: str) -> tuple[Path, Path]:
    """(global, per-sequence) CSVs of lvos-evaluation for `split`."""
    return out / f"global_results-{split}.csv", out / f"per-sequence_results-{split}.csv"


def _fmt3(value: float) -> str:
    return "" if math.isnan(value) else f"{value:.3f}"  # pandas to_csv(float_format='%.3f'); NaN is an empty field


def reduce_lvos(objects: list[ObjectScores], unseen: set[str]) -> tuple[list[tuple[str, float]], list[str]]:
    """lvos-evaluation's global table: each measure is the mean of its seen and unseen object means, so each group
    weighs half whatever its size; J&F-Mean = (J_seen + F_seen + J_unseen + F_unseen) / 4. Returns (table, notes):
    a note names an empty group, whose columns (and the averages over both groups) are NaN, as the toolkit leaves
    them."""
    groups = {
        "seen": [o for o in objects if o.sequence not in unseen],
        "unseen": [o for o in objects if o.sequence in unseen],
    }
    means = {(m, g): _mean([o.values[m] for o in objs]) for g, objs in groups.items() for m in ("J", "F", "V")}
    table = [
        # Grouped as the official sum, so that the last bit is the same.
        ("J&F-Mean", ((means["J", "seen"] + means["F", "seen"]) + (means["J", "unseen"] + means["F", "unseen"])) / 4.0)
    ]
    for m in ("J", "F", "V"):
        table += [
            (f"{m}-Mean", (means[m, "seen"] + means[m, "unseen"]) / 2),
            (f"{m}-seen-Mean", means[m, "seen"]),
            (f"{m}-unseen-Mean", means[m, "unseen"]),
        ]
    order = dict(table)  # in the toolkit's column order
    table = [(c, float(order[c])) for c in LVOS_GLOBAL_COLUMNS]
    notes = [
        f"LVOS: no evaluated object is {g}; J&F-Mean, J-Mean, F-Mean, V-Mean and the {g} columns are left empty, "
        "as the official toolkit leaves them"
        for g, objs in groups.items()
        if not objs
    ]
    return table, notes


def score_lvos(
    gt: Path,
    results: Path,
    split: str = "valid",
    meta: Path | None = None,
    unseen: Path | None = None,
    out: Path | None = None,
    workers: int = 2,
) -> BenchmarkResult:
    """Score `results/<video>/<8-digit frame>.png` on an LVOS split folder `gt` (lvos-evaluation's --lvos_path).

    Per object (json order), the frames of its range at step 5 without its first and last; J and F as DAVIS (no
    void), V as `lvos_variance`; seen/unseen by `unseen` (default: the toolkit's list). Writes
    global_results-<split>.csv and per-sequence_results-<split>.csv into `out` (default `results`).
    """
    gt, results = (
        _need_dir(gt, "--gt", "the LVOS split folder (holding Annotations/ and <split>_meta.json)"),
        Path(results),
    )
    meta = Path(meta) if meta else gt / f"{split}_meta.json"
    if not meta.is_file():
        raise VOSInputError(f"LVOS meta {meta} does not exist; pass --meta FILE or --split valid|test")
    unseen_ids = read_video_list(unseen or LVOS_UNSEEN)
    _need_dir(results, "--results", "the folder with one sub-folder of PNGs per video")
    out = writable_dir(Path(out or results), "--out" if out else "--results")
    paths = lvos_files(out, split)
    remove_stale(paths)
    try:
        videos = json.loads(meta.read_text())["videos"]
    except (ValueError, KeyError, TypeError) as err:
        raise VOSInputError(
            f"LVOS meta {meta} is not {{'videos': {{...}}}} ({err}); pass the split's meta json"
        ) from err

    tasks, keys = [], []
    for video in sorted(videos):
        try:
            ranges = [
                (
                    label,
                    int(o["frame_range"]["start"]),
                    int(o["frame_range"]["end"]),
                    int(o["frame_range"]["frame_nums"]),
                )
                for label, o in videos[video]["objects"].items()
            ]
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise VOSInputError(
                f"{meta}: video {video} has no objects/<id>/frame_range/start,end,frame_nums ({err!r}); fix the meta"
            ) from err
        for k, (label, start, end, n) in enumerate(ranges, start=1):
            if n < 3 or (end - start) % LVOS_STEP or n != (end - start) // LVOS_STEP + 1:
                raise VOSInputError(
                    f"{meta}: video {video} object {label} has frame_nums {n} but start {start}..end {end} at step "
                    f"{LVOS_STEP} holds {(end - start) // LVOS_STEP + 1} frames (at least 3 are needed); fix the meta"
                )
            frames = lvos_frames(start, end, n)
            if not (results / video).is_dir():
                raise VOSInputError(f"no results folder {results / video} for LVOS video {video}; predict every video")
            pairs = [(gt / "Annotations" / video / f"{x}.png", results / video / f"{x}.png") for x in frames]
            tasks.append((pairs, (int(label),), False))
            keys.append((video, label, f"{video}_{k}", frames))

    objects = []
    for (video, label, name, frames), (scores, _) in zip(keys, parallel_map(_score_fixed, tasks, workers), strict=True):
        j, f = scores[0, :, metrics.J].copy(), scores[0, :, metrics.F].copy()
        values = {"J": float(np.nanmean(j)), "F": float(np.nanmean(f)), "V": lvos_variance(j, f)}
        counted = np.ones(len(frames), dtype=bool)
        objects.append(ObjectScores(video, label, name, frames, j, f, counted, values, (values["J"] + values["F"]) / 2))

    table, notes = reduce_lvos(objects, unseen_ids)
    seq_rows = [f"{o.name},{_fmt3(o.values['J'])},{_fmt3(o.values['F'])},{_fmt3(o.values['V'])}" for o in objects]
    _write_text(paths[1], "\n".join([",".join(LVOS_SEQUENCE_COLUMNS), *seq_rows]) + "\n")
    global_text = ",".join(LVOS_GLOBAL_COLUMNS) + "\n" + ",".join(_fmt3(v) for _, v in table) + "\n"
    _write_text(paths[0], global_text)  # last, so that its presence means both are complete
    return BenchmarkResult("lvos", split, table, objects, list(paths), notes)


# ----------------------------------------------------------------------------------------------------------------
# MOSE v2 (MOSE-api MOSEv2/sam2_rcms/tools/score.py)
# ----------------------------------------------------------------------------------------------------------------

MOSE_MEASURES = ("J&F_new", "J", "F_new", "disappear_J&F_new", "reappear_J&F_new", "F", "J&F")


def mose_segments(in_gt: np.ndarray) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """Disappear and reappear segments [start, end) of an object over its evaluated frames, as score.py.

    A disappearance starts where the GT becomes empty after a non-empty frame and runs to the next reappearance
    (or the end); one at the first evaluated frame is not counted. A reappearance starts wherever the GT becomes
    non-empty after an empty frame (a late first appearance included) and runs to the next disappearance.
    """
    empty = ~np.asarray(in_gt, dtype=bool)
    disappear = list(np.flatnonzero(~empty[:-1] & empty[1:]) + 1)
    if empty.size and empty[0]:
        disappear.insert(0, 0)
    reappear = list(np.flatnonzero(empty[:-1] & ~empty[1:]) + 1)
    n = len(empty)
    dis = [(int(s), int(reappear[i]) if i < len(reappear) else n) for i, s in enumerate(disappear) if s > 0]
    re = [(int(s), int(disappear[i + 1]) if i + 1 < len(disappear) else n) for i, s in enumerate(reappear)]
    return dis, re


def _segment_mean(j: np.ndarray, f: np.ndarray, segments: list[tuple[int, int]]) -> tuple[float, float] | None:
    if not segments:
        return None
    return np.mean([j[s:e].mean() for s, e in segments]), np.mean([f[s:e].mean() for s, e in segments])


def _r2(x: float | None) -> float | None:
    return None if x is None else round(x * 100, 2)


def mose_object_values(j: np.ndarray, f_new: np.ndarray, f: np.ndarray, in_gt: np.ndarray) -> dict:
    """score.py's per-object measures (percentages, 2 dp, None where none apply) and the unrounded fractions
    behind them (keys with a '_raw' suffix) that the global means use."""
    jm, fm, fm_ = j.mean(), f_new.mean(), f.mean()
    dis, re = mose_segments(in_gt)
    d, r = _segment_mean(j, f_new, dis), _segment_mean(j, f_new, re)
    values = {
        "J&F_new": _r2((jm + fm) / 2),
        "J": _r2(jm),
        "F_new": _r2(fm),
        "disappear_J&F_new": None if d is None else _r2((d[0] + d[1]) / 2),
        "reappear_J&F_new": None if r is None else _r2((r[0] + r[1]) / 2),
        "F": _r2(fm_),
        "J&F": _r2((jm + fm_) / 2),
    }
    values["_raw"] = (jm, fm, fm_, d, r)
    return values


def reduce_mosev2(objects: list[ObjectScores]) -> tuple[list[tuple[str, float]], list[str]]:
    """score.py's global table: plain means over all objects (videos pooled), x100, 2 dp; the disappear/reappear
    ones over the objects that have such segments (NaN, and a note, when none has)."""
    raw = [o.values["_raw"] for o in objects]
    j, f, f_ = _mean([x[0] for x in raw]), _mean([x[1] for x in raw]), _mean([x[2] for x in raw])
    d = [x[3] for x in raw if x[3] is not None]
    r = [x[4] for x in raw if x[4] is not None]
    table = [
        ("J&F_new", round((j + f) / 2 * 100, 2)),
        ("J", round(j * 100, 2)),
        ("F_new", round(f * 100, 2)),
        ("disappear_J&F_new", round((_mean([x[0] for x in d]) + _mean([x[1] for x in d])) / 2 * 100, 2)),
        ("reappear_J&F_new", round((_mean([x[0] for x in r]) + _mean([x[1] for x in r])) / 2 * 100, 2)),
        ("F", round(f_ * 100, 2)),
        ("J&F", round((j + f_) / 2 * 100, 2)),
    ]
    notes = [
        f"MOSE v2: no object {w}s in the evaluated frames; {w}_J&F_new is nan, as score.py prints it"
        for w, segs in (("disappear", d), ("reappear", r))
        if not segs
    ]
    return table, notes


def mose_files(out: Path) -> tuple[Path, Path]:
    return out / "scores.txt", out / "metrics.json"


def mose_scores_text(table: list[tuple[str, float]]) -> str:
    """scores.txt as score.py writes it: `name: value` lines (Python's repr of the 2-dp value), then Copy-Paste."""
    lines = [f"{c}: {v}" for c, v in table]
    lines.append("Copy-Paste: " + ",".join(f"{v:.1f}" for _, v in table))
    return "\n".join(lines) + "\n"


def _mose_video_frames(
    gt: Path, results: Path, meta: Path, videos_meta: dict, video: str
) -> tuple[list, tuple[int, ...], list[str]]:
    """One MOSE v2 video checked against its meta entry and its GT folder: (its object ids as the meta lists them,
    the same as ints, the frames score.py scores: positions 1..length-2 of the sorted prediction listing, without
    '.png'). Raises VOSInputError when the meta, the GT or the predictions do not fit together."""
    if video not in videos_meta:
        raise VOSInputError(f"video {video} of {gt} is not in {meta}; pass the meta json of these annotations")
    try:
        length = int(videos_meta[video]["length"])
        objs = list(videos_meta[video]["objects"])
        ids = tuple(int(o) for o in objs)
    except (KeyError, TypeError, ValueError) as err:
        raise VOSInputError(f"{meta}: video {video} needs 'length' and integer 'objects' ids ({err!r})") from err
    n_gt = len([p for p in (gt / video).iterdir()])
    if n_gt != length or length < 3:
        raise VOSInputError(
            f"{gt / video} holds {n_gt} files but {meta} says length {length} (at least 3); score.py needs every "
            "frame annotated and the meta of these annotations"
        )
    if not (results / video).is_dir():
        # score.py would score the video 0 silently; a missing folder is almost always a mistake.
        raise VOSInputError(f"no results folder {results / video} for MOSE video {video}; predict every video")
    names = [p.name for p in (results / video).iterdir() if p.suffix == ".png" and not p.name.startswith(".")]
    try:
        names.sort(key=lambda x: int(x.split(".")[0]))
    except ValueError as err:
        raise VOSInputError(f"{results / video} has a PNG whose name is not a frame number ({err})") from err
    # score.py takes the frame names from the prediction listing; a missing prediction would shift every later
    # frame onto the wrong GT without an error, so the listing must start with the GT's own frames.
    gt_names = sorted(_pngs(gt / video), key=lambda x: int(x.split(".")[0]))
    missing = [x for x in gt_names if x not in set(names)]
    if missing:
        raise VOSInputError(
            f"missing prediction {results / video / missing[0]} ({len(missing)} frame(s) of {gt / video} have "
            "none); write one PNG per frame, named like the GT"
        )
    if names[:length] != gt_names:
        raise VOSInputError(
            f"{results / video} holds PNGs that are not frames of {gt / video} among its first {length}; "
            "score.py would pair them with the wrong GT frames: remove them"
        )
    return objs, ids, [x[: -len(".png")] for x in names[1 : length - 1]]


def _mose_objects(
    chunk_scores: Iterable[tuple[np.ndarray, np.ndarray]], keys: list[tuple[str, list, list[str], int]]
) -> list[ObjectScores]:
    """The ObjectScores of every object of every video: `chunk_scores` are `_score_fixed`'s results in task order,
    `keys` (video, object ids, frames, number of chunks) say which consecutive chunks make one video."""
    chunks = iter(chunk_scores)
    objects = []
    for video, objs, frames, n_chunks in keys:
        parts = [next(chunks) for _ in range(n_chunks)]
        scores = np.concatenate([p[0] for p in parts], axis=1)  # (objects, T, 3)
        in_gt = np.concatenate([p[1] for p in parts], axis=1)
        for i, label in enumerate(objs):
            # Contiguous copies: numpy's pairwise sums then run as on the official 1-D lists, to the last bit.
            j, f, f_new = (scores[i, :, c].copy() for c in (metrics.J, metrics.F, metrics.F_NEW))
            values = mose_object_values(j, f_new, f, in_gt[i])
            counted = np.ones(len(frames), dtype=bool)
            obj = ObjectScores(
                video, str(label), f"{video}_{label}", frames, j, f_new, counted, values, values["J&F_new"]
            )
            objects.append(obj)
    return objects


def score_mosev2(
    gt: Path, results: Path, meta: Path | None, out: Path | None = None, workers: int = 2
) -> BenchmarkResult:
    """Score `results/<video>/<frame>.png` on the MOSE v2 annotations folder `gt` (score.py --ann) with its meta
    json (--meta), as score.py: frames at positions 1..length-2 of the sorted prediction listing, J with +1
    smoothing, F_new and the classic F of `metrics.mose_radii`, disappear/reappear segments. Writes scores.txt and
    metrics.json into `out` (default `results`).
    """
    gt = _need_dir(gt, "--gt", "the MOSE v2 Annotations folder (score.py --ann)")
    if meta is None:
        raise VOSInputError("MOSE v2 needs its meta json (score.py --meta): pass --meta meta.json")
    if not Path(meta).is_file():
        raise VOSInputError(f"--meta {meta} is not a file; pass --meta meta.json, the meta of these annotations")
    results = _need_dir(results, "--results", "the folder with one sub-folder of PNGs per video")
    out = writable_dir(Path(out or results), "--out" if out else "--results")
    paths = mose_files(out)
    remove_stale(paths)
    start_time = time.perf_counter()
    try:
        videos_meta = json.loads(Path(meta).read_text())["videos"]
    except (ValueError, KeyError, TypeError) as err:
        raise VOSInputError(f"MOSE meta {meta} is not {{'videos': {{...}}}} ({err}); pass the meta json") from err
    videos = _subdirs(gt)
    # score.py descends into the upload's single top folder (a zip of one folder); not when that folder is a video.
    top = _subdirs(results)
    if len(top) == 1 and top[0] not in videos and not _pngs(results):
        results = results / top[0]

    tasks, keys = [], []
    for video in videos:
        objs, ids, frames = _mose_video_frames(gt, results, meta, videos_meta, video)
        pairs = [(gt / video / f"{x}.png", results / video / f"{x}.png") for x in frames]
        for c in range(0, len(pairs), MOSE_CHUNK):
            tasks.append((pairs[c : c + MOSE_CHUNK], ids, True))
        keys.append((video, objs, frames, len(range(0, len(pairs), MOSE_CHUNK))))
    objects = _mose_objects(parallel_map(_score_fixed, tasks, workers), keys)

    table, notes = reduce_mosev2(objects)
    per_object = {o.name: {m: o.values[m] for m in MOSE_MEASURES} for o in objects}
    per_object["total_time"] = time.perf_counter() - start_time
    _write_text(paths[1], json.dumps(per_object, indent=4))
    _write_text(paths[0], mose_scores_text(table))
    return BenchmarkResult("mosev2", "", table, objects, list(paths), notes)


# ----------------------------------------------------------------------------------------------------------------
# vos-benchmark and SA-V (sav_evaluator.py is vos-benchmark with one folder per object)
# ----------------------------------------------------------------------------------------------------------------


def vos_benchmark_text(table: list[tuple[str, float]], objects: list[ObjectScores]) -> str:
    """results.csv as vos-benchmark writes it: a header, the Global score line, one line per object, 1 dp."""
    ml = max([len(o.sequence) for o in objects] + [len("Global score")])
    jf, j, f = (v for _, v in table)
    lines = [f"{'sequence':<{ml}},{'obj':>3}, {'J&F':>4}, {'J':>4}, {'F':>4}"]
    lines.append(f"{'Global score':<{ml}},{'':>3}, {jf:.1f}, {j:.1f}, {f:.1f}")
    for o in objects:
        oj, of = o.values["J"], o.values["F"]
        lines.append(f"{o.sequence:<{ml}},{o.label:03}, {(oj + of) / 2:>4.1f}, {oj:>4.1f}, {of:>4.1f}")
    return "\n".join(lines) + "\n"


def reduce_vos_benchmark(objects: list[ObjectScores]) -> list[tuple[str, float]]:
    """vos-benchmark's global table: J and F = plain means over all objects of their per-object means (x100),
    J&F = (J + F) / 2."""
    j = float(np.array([o.values["J"] for o in objects]).mean())
    f = float(np.array([o.values["F"] for o in objects]).mean())
    return [("J&F", (j + f) / 2), ("J", j), ("F", f)]


def _appearance_objects(
    video: str, results: list[tuple[int, int, np.ndarray]], frames: list[str], label: str | None = None
) -> list[ObjectScores]:
    objects = []
    for k, first, scores in results:
        counted = np.arange(len(frames)) >= first
        j, f = scores[:, metrics.J].copy(), scores[:, metrics.F].copy()
        values = {"J": float(np.mean(j[counted]) * 100), "F": float(np.mean(f[counted]) * 100)}
        name = label if label is not None else f"{k:03}"
        objects.append(
            ObjectScores(video, name, f"{video}_{name}", frames, j, f, counted, values, (values["J"] + values["F"]) / 2)
        )
    return objects


def _common_videos(gt: Path, results: Path, what: str) -> tuple[list[str], list[str]]:
    """Videos in both folders (the toolkits' default, non-strict), and a note naming the GT videos left out."""
    gt_videos, pred_videos = _subdirs(gt), set(_subdirs(results))
    videos = [v for v in gt_videos if v in pred_videos]
    if not videos:
        raise VOSInputError(f"no video folder of {gt} is in --results {results}; pass {what}")
    missing = [v for v in gt_videos if v not in pred_videos]
    notes = []
    if missing:
        notes.append(
            f"{len(missing)} GT video(s) have no results folder and are not scored, as the official "
            f"evaluator does without -s: {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}"
        )
    return videos, notes


def _finish_vos(benchmark: str, objects: list[ObjectScores], out: Path, notes: list[str]) -> BenchmarkResult:
    if not objects:
        raise VOSInputError("no object appears in the evaluated GT frames; nothing to score")
    table = reduce_vos_benchmark(objects)
    path = out / "results.csv"
    _write_text(path, vos_benchmark_text(table, objects))
    return BenchmarkResult(benchmark, "", table, objects, [path], notes)


def _open_results_csv(gt: Path, results: Path, out: Path | None, gt_holds: str,
                      results_hold: str) -> tuple[Path, Path, Path, list[str], list[str]]:
    """The checked folders of a scoring that writes vos-benchmark's results.csv (vos-benchmark, SA-V), the stale
    results.csv removed, and the videos in both trees with the notes about the others."""
    gt = _need_dir(gt, "--gt", gt_holds)
    results = _need_dir(results, "--results", results_hold)
    out = writable_dir(Path(out or results), "--out" if out else "--results")
    remove_stale([out / "results.csv"])
    videos, notes = _common_videos(gt, results, "the predictions of these videos")
    return gt, results, out, videos, notes


def score_vos_benchmark(gt: Path, results: Path, out: Path | None = None, workers: int = 2) -> BenchmarkResult:
    """Score `results/<video>/<frame>.png` on a GT folder of `<video>/<frame>.png` id maps (vos-benchmark -g), as
    vos-benchmark: frames = sorted GT files without the first and the last, each object counted from its first
    appearance in GT or prediction, DAVIS J and F. Writes results.csv into `out` (default `results`)."""
    gt, results, out, videos, notes = _open_results_csv(
        gt, results, out, "the folder of GT video folders (vos-benchmark -g)",
        "the folder with one sub-folder of PNGs per video")
    tasks, frames_of = [], []
    for video in videos:
        names = _pngs(gt / video)[1:-1]
        tasks.append(([(gt / video / x, results / video / x) for x in names],))
        frames_of.append([x[: -len(".png")] for x in names])
    objects = []
    for video, frames, res in zip(videos, frames_of, parallel_map(_score_from_appearance, tasks, workers), strict=True):
        objects += _appearance_objects(video, res, frames)
    return _finish_vos("vos-benchmark", objects, out, notes)


def score_sav(gt: Path, results: Path, out: Path | None = None, workers: int = 2) -> BenchmarkResult:
    """Score SA-V predictions (`results/<video>/<object folder>/<frame>.png`, binary) on Annotations_6fps `gt`
    (sav_evaluator.py --gt_root), as sav_evaluator.py: per object folder, its sorted GT frames without the first and
    the last, the object counted from its first appearance. A video whose GT folder holds only PNGs is scored as
    vos-benchmark does. Writes results.csv into `out` (default `results`)."""
    gt, results, out, videos, notes = _open_results_csv(
        gt, results, out, "SA-V's Annotations_6fps folder (sav_evaluator.py --gt_root)",
        "the folder with one sub-folder per video")
    tasks, keys = [], []
    for video in videos:
        entries = sorted(p.name for p in (gt / video).iterdir() if not p.name.startswith("."))
        if all(x.endswith(".png") for x in entries):  # DAVIS-like video: vos-benchmark's rules
            names = entries[1:-1]
            tasks.append(([(gt / video / x, results / video / x) for x in names], False))
            keys.append((video, None, [x[:-4] for x in names]))
            continue
        for obj in entries:
            names = sorted(os.listdir(gt / video / obj))[1:-1]
            pairs = [(gt / video / obj / x, results / video / obj / x) for x in names]
            tasks.append((pairs, True))
            keys.append((video, obj, [x[:-4] for x in names]))
    objects = []
    for (video, obj, frames), res in zip(keys, parallel_map(_score_from_appearance, tasks, workers), strict=True):
        if obj is not None and not res:
            raise VOSInputError(
                f"SA-V object {gt / video / obj} is empty in all its evaluated GT frames (first and last excluded); "
                "the official evaluator stops here too"
            )
        objects += _appearance_objects(video, res, frames, obj)
    return _finish_vos("sav", objects, out, notes)


def report_folders(benchmark: str, gt: Path) -> tuple[Path, Path, str]:
    """(frames folder, ground-truth folder, report.MASK_LAYOUTS name) of a benchmark whose evaluator took `gt`: the
    frames lie where each data set ships them, beside its annotations (LVOS JPEGImages/ in the split folder; SA-V
    JPEGImages_24fps/ beside Annotations_6fps/; otherwise JPEGImages in place of Annotations in the path, or
    JPEGImages/ beside `gt`)."""
    gt = Path(gt)
    if benchmark == "lvos":
        return gt / "JPEGImages", gt / "Annotations", "ids"
    if benchmark == "sav":
        return gt.parent / "JPEGImages_24fps", gt, "per-object"
    if "Annotations" in gt.parts:
        return Path(*("JPEGImages" if p == "Annotations" else p for p in gt.parts)), gt, "ids"
    return gt.parent / "JPEGImages", gt, "ids"  # never gt itself, whose PNGs would pass for frames


def format_result(result: BenchmarkResult) -> str:
    """The global table as the toolkit prints it (LVOS 3 decimals, MOSE v2 its 2-dp values, vos-benchmark and SA-V
    1 decimal; '(empty)' where the toolkit leaves a field empty), then the notes."""
    digits = {"lvos": ".3f", "mosev2": "", "vos-benchmark": ".1f", "sav": ".1f"}[result.benchmark]
    width = max(len(c) for c, _ in result.global_table)
    lines = [f" {result.benchmark} {result.split} ".center(60, "-")]
    for c, v in result.global_table:
        value = "(empty)" if result.benchmark == "lvos" and math.isnan(v) else format(v, digits)
        lines.append(f"{c.ljust(width)}  {value}")
    return "\n".join(lines + result.notes)
