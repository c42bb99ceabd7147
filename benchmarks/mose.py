"""MOSE v1 / v2 (henghuiding/MOSE-api): the layout on disk, run.py's --data key (MOSE_val, root --mose), and the
scoring of MOSE v2's score.py (evaluation.py --benchmark mosev2; the validation masks on disk are the first
frame's only, so run.py --test scores nothing and zips the masks for the server, video folders at the zip's root).

Scoring (`score_mosev2`, MOSE-api `MOSEv2/sam2_rcms/tools/score.py` + `metricsv2.py`): frames at positions
1..length-2 of the sorted prediction listing; J with +1 smoothing; F_new with a radius that grows with the object's
area and the classic F of `mose_radii`; disappear/reappear segments; global means over objects, x100, rounded to 2
decimals (`DECIMALS`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np

from benchmarks import metrics
from benchmarks.common import (
    Benchmark,
    DataKey,
    ObjectScores,
    ScoreRequest,
    Scores,
    Scoring,
    Training,
    begin_writing,
    nan_mean,
    need_dir,
    parallel_map,
    pngs,
    report_folders_beside,
    require_gt,
    score_fixed,
    subdirs,
    write_text,
)
from dataset import Layout, VideoReader, _list_folders, _select, need_part, plain_name, video_frames
from training.samplers import AnnotatedVideos
from utils import VOSInputError

MOSE_CHUNK = 15  # frames per worker task, as score.py's MAX_FRAMES_PER_CHUNK
MOSE_AREA_TH = 0.1  # F_new: radius ceil(0.1 * sqrt(GT area)), capped at 0.008 * diagonal
DECIMALS = 2  # score.py rounds every value to 2 decimals


# ----------------------------------------------------------------------------------------------------------------
# The layout
# ----------------------------------------------------------------------------------------------------------------


class MOSE(Layout):
    """MOSE v1 / v2 validation (the layouts are one): the first frame's mask is the given one, every frame is
    written, and the server's zip holds `<video>/<frame>.png` at its root. The validation masks on disk are the first
    frame's only, so nothing is scored here."""

    has_annotations = False
    submission_prefix = ""  # the MOSE servers read the video folders at the root of the zip

    def __init__(self, root: str | Path, split: str = "valid") -> None:
        self.root = Path(root)
        self.split = split
        holds = f"{split}/JPEGImages and {split}/Annotations (the MOSE download)"
        self.image_dir = need_part(self.root / split / "JPEGImages", "--mose", self.root, holds)
        self.mask_dir = need_part(self.root / split / "Annotations", "--mose", self.root, holds)
        # The official loaders list the annotation folders.
        self.sequences = [plain_name(n, self.mask_dir) for n in _list_folders(self.mask_dir)]

    def videos(self, sequences: list[str] | None = None) -> Iterator[VideoReader]:
        for name in _select(sequences, self.sequences, f"MOSE {self.split} at '{self.root}'"):
            frames = video_frames(self.image_dir / name)
            first = self.mask_dir / name / f"{frames[0].stem}.png"
            if not first.is_file():
                raise VOSInputError(f"first-frame mask '{first}' of MOSE video '{name}' does not exist; re-extract "
                                    "the annotations")
            yield VideoReader(name, frames, {0: first}, [f.stem + ".png" for f in frames])


# ----------------------------------------------------------------------------------------------------------------
# Scoring (MOSE v2's score.py)
# ----------------------------------------------------------------------------------------------------------------


def mose_radii(gt: np.ndarray) -> tuple[float, float]:
    """Dilation radii (classic F, F_new) of MOSE v2's `f_measure_adaptive(bound_th=0.1, mode='area')` for a GT mask.

    r_new = min(0.008 * diagonal, ceil(0.1 * sqrt(GT area))), or 0.008 * diagonal for an empty GT. When r_new is
    below 0.008 * diagonal (GT area <= 4900 px at 854x480) the classic F is DAVIS's, radius ceil(0.008 * diagonal);
    otherwise both use the un-ceiled 0.008 * diagonal (7.837 at 854x480), so the classic F of a large object is
    not DAVIS's F (`metrics.disk` of a non-integer radius).
    """
    diag_radius = metrics.BOUND_TH * np.linalg.norm(gt.shape)
    area = np.count_nonzero(gt)
    # An empty GT falls back to the image diagonal, which the cap then replaces by 0.008 * diagonal.
    new = min(diag_radius, np.ceil(MOSE_AREA_TH * (np.sqrt(area) if area else np.linalg.norm(gt.shape))))
    if new < diag_radius:
        return float(np.ceil(diag_radius)), float(new)
    return float(diag_radius), float(diag_radius)


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


def _segmentnan_mean(j: np.ndarray, f: np.ndarray, segments: list[tuple[int, int]]) -> tuple[float, float] | None:
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
    d, r = _segmentnan_mean(j, f_new, dis), _segmentnan_mean(j, f_new, re)
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
    j, f, f_ = nan_mean([x[0] for x in raw]), nan_mean([x[1] for x in raw]), nan_mean([x[2] for x in raw])
    d = [x[3] for x in raw if x[3] is not None]
    r = [x[4] for x in raw if x[4] is not None]
    table = [
        ("J&F_new", round((j + f) / 2 * 100, 2)),
        ("J", round(j * 100, 2)),
        ("F_new", round(f * 100, 2)),
        ("disappear_J&F_new", round((nan_mean([x[0] for x in d]) + nan_mean([x[1] for x in d])) / 2 * 100, 2)),
        ("reappear_J&F_new", round((nan_mean([x[0] for x in r]) + nan_mean([x[1] for x in r])) / 2 * 100, 2)),
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


def _mose_video_gt(gt: Path, meta: Path, videos_meta: dict, video: str) -> tuple[list, tuple[int, ...], int]:
    """One MOSE v2 video checked against its meta entry and its GT folder: (its object ids as the meta lists them,
    the same as ints, its length). Raises VOSInputError when the meta and the GT do not fit together."""
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
    return objs, ids, length


def _mose_video_frames(gt: Path, results: Path, video: str, length: int) -> list[str]:
    """The frames score.py scores of one MOSE v2 video (checked by `_mose_video_gt`): positions 1..length-2 of the
    sorted prediction listing, without '.png'. Raises VOSInputError when the predictions do not fit the GT."""
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
    gt_names = sorted(pngs(gt / video), key=lambda x: int(x.split(".")[0]))
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
    return [x[: -len(".png")] for x in names[1 : length - 1]]


def _mose_objects(
    chunk_scores: Iterable[tuple[np.ndarray, np.ndarray]], keys: list[tuple[str, list, list[str], int]]
) -> list[ObjectScores]:
    """The ObjectScores of every object of every video: `chunk_scores` are `score_fixed`'s results in task order,
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
            obj = ObjectScores(f"{video}_{label}", video, str(label), frames, j, f_new, counted, values["J&F_new"],
                               values)
            objects.append(obj)
    return objects


def score_mosev2(
    gt: Path, results: Path, meta: Path | None, out: Path | None = None, workers: int = 2,
    on_checked: Callable[[], object] | None = None,
) -> Scores:
    """Score `results/<video>/<frame>.png` on the MOSE v2 annotations folder `gt` (score.py --ann) with its meta
    json (--meta), as score.py: frames at positions 1..length-2 of the sorted prediction listing, J with +1
    smoothing, F_new and the classic F of `mose_radii`, disappear/reappear segments. Writes scores.txt and
    metrics.json into `out` (default `results`), the last ones removed once every video's GT is checked against the
    meta (`common.begin_writing`, which calls `on_checked`) and before the predictions are.
    """
    gt = need_dir(gt, "--gt", "the MOSE v2 Annotations folder (score.py --ann)")
    if meta is None:
        raise VOSInputError("MOSE v2 needs its meta json (score.py --meta): pass --meta meta.json")
    if not Path(meta).is_file():
        raise VOSInputError(f"--meta {meta} is not a file; pass --meta meta.json, the meta of these annotations")
    results = need_dir(results, "--results", "the folder with one sub-folder of PNGs per video")
    start_time = time.perf_counter()
    try:
        videos_meta = json.loads(Path(meta).read_text())["videos"]
    except (ValueError, KeyError, TypeError) as err:
        raise VOSInputError(f"MOSE meta {meta} is not {{'videos': {{...}}}} ({err}); pass the meta json") from err
    videos = subdirs(gt)
    # score.py descends into the upload's single top folder (a zip of one folder); not when that folder is a video.
    top = subdirs(results)
    if len(top) == 1 and top[0] not in videos and not pngs(results):
        results = results / top[0]

    checked = [_mose_video_gt(gt, meta, videos_meta, video) for video in videos]
    target = Path(out or results)
    out = begin_writing(target, "--out" if out else "--results", mose_files(target), on_checked)
    paths = mose_files(out)
    tasks, keys = [], []
    for video, (objs, ids, length) in zip(videos, checked, strict=True):
        frames = _mose_video_frames(gt, results, video, length)
        pairs = [(gt / video / f"{x}.png", results / video / f"{x}.png") for x in frames]
        for c in range(0, len(pairs), MOSE_CHUNK):
            tasks.append((pairs[c : c + MOSE_CHUNK], ids, 1, mose_radii))
        keys.append((video, objs, frames, len(range(0, len(pairs), MOSE_CHUNK))))
    objects = _mose_objects(parallel_map(score_fixed, tasks, workers), keys)

    table, notes = reduce_mosev2(objects)
    per_object = {o.name: {m: o.values[m] for m in MOSE_MEASURES} for o in objects}
    per_object["total_time"] = time.perf_counter() - start_time
    write_text(paths[1], json.dumps(per_object, indent=4))
    write_text(paths[0], mose_scores_text(table))
    return Scores("mosev2", "", table, objects, DECIMALS, list(paths), notes, percent=True, title="MOSE v2")


def format_mose(result: Scores) -> str:
    """The table as score.py prints it: each value as Python writes the 2-dp float (81.5, not 81.50)."""
    width = max(len(c) for c, _ in result.global_table)
    lines = [f" {result.benchmark} {result.split} ".center(60, "-")]
    lines += [f"{c.ljust(width)}  {v}" for c, v in result.global_table]
    return "\n".join(lines + result.notes)


def _score(request: ScoreRequest) -> Scores:
    return score_mosev2(require_gt(request, "mosev2"), request.results, request.options.get("meta"), request.out,
                        request.workers, request.on_checked)


BENCHMARK = Benchmark(
    name="mose",
    keys=(DataKey("MOSE_val", "mose", lambda root: MOSE(root, "valid")),),
    holds="valid/ (and train/ for --train)",
    root="mose",
    training=Training("train/JPEGImages and train/Annotations (MOSE v1 or v2)",
                      lambda root, held_out, **clips: train_clips(root, **clips)),
    scorings=(Scoring("mosev2", "MOSE-api score.py", "the MOSE v2 Annotations folder (--ann)", _score,
                      lambda request: report_folders_beside(require_gt(request, "mosev2")),
                      options={"meta": "its meta.json (score.py --meta, required)"}, format=format_mose,
                      result_files=("scores.txt", "metrics.json")),),
)


# ----------------------------------------------------------------------------------------------------------------
# Training videos (run.py --train --stages mose)
# ----------------------------------------------------------------------------------------------------------------


def train_clips(root: str | Path, output_size: tuple[int, int] = (384, 384), clip_len: int = 10,
                clips_per_epoch: int = 128) -> AnnotatedVideos:
    """Clips of MOSE v1 or v2 train, `train/JPEGImages/<video>/00000.jpg` with `train/Annotations/<video>/00000.png`
    (palette PNGs, every frame of the training set annotated: MOSE-api README.md, "File Structure"; MOSE v2 is
    distributed in the same layout). Videos are the annotation folders, as the official loaders list them; clips are
    drawn as YouTube-VOS clips are (samplers.AnnotatedVideos), so every frame being annotated makes them consecutive
    video frames."""
    root = Path(root)
    holds = "train/JPEGImages and train/Annotations (MOSE's train.tar.gz, v1 or v2)"
    image_dir = need_part(root / "train" / "JPEGImages", "--mose", root, holds)
    mask_dir = need_part(root / "train" / "Annotations", "--mose", root, holds)
    return AnnotatedVideos(image_dir, mask_dir, _list_folders(mask_dir), f"MOSE train at '{root}'", output_size,
                           clip_len, clips_per_epoch, fix="re-extract MOSE's train.tar.gz")
