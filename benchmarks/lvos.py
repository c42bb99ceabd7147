"""LVOS v1 / v2 (LingyiHongfd/LVOS): the layout on disk, run.py's --data keys (LVOS_val, LVOS_test, root --lvos),
and the scoring of lvos-evaluation (evaluation.py --benchmark lvos, and run.py --test on `valid`).

- Layout: `<split>/JPEGImages/<video>/00000001.jpg` (8-digit names in steps of 5), `<split>/Annotations/`,
  `<split>/<split>_meta.json`; each object is given at the first frame of its `frame_range`, so objects join late.
  `test` is zipped for its server as `Annotations/<video>/<frame>.png`.
- Scoring (`score_lvos`, lvos-evaluation's `evaluation_method.py`, semi-supervised, pure-Python boundary map): per
  object, the frames of its range at step 5 without its first and last; J and F as DAVIS (no void), V; the global
  table weighs the seen and the unseen objects half each (`reduce_lvos`, the toolkit's unseen list
  lvos_unseen_videos.txt beside this module). CSVs with 3 decimals (`DECIMALS`).
"""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
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
    TestScoring,
    Training,
    begin_writing,
    format_scores,
    nan_mean,
    need_dir,
    parallel_map,
    require_gt,
    score_fixed,
    write_text,
)
from dataset import Layout, StartingVideo, VideoReader, _select, need_part, plain_name, video_frames
from training.samplers import AnnotatedVideos
from utils import VOSInputError, read_mask

# lvos-evaluation's own unseen_videos.txt (51 ids), copied with a header naming its source.
LVOS_UNSEEN = Path(__file__).resolve().parent / "lvos_unseen_videos.txt"
LVOS_STEP = 5  # LVOS frames are every 5th index of the original video, named with 8 digits (00000001, 00000006, ...)
DECIMALS = 3  # the CSVs (pandas float_format='%.3f') and the printed table


@dataclass
class LVOS(Layout):
    """LVOS v1 / v2 `valid` or `test` (the layouts are one): objects are given at the first frame of their
    `frame_range` in `<split>_meta.json`, as Cutie (`use_all_masks`) and SAM2
    (`--track_object_appearing_later_in_video`) run it. Frames before the first object's start are neither run nor
    written: no object exists there and the toolkit reads each object's range only. Val is scored by the
    lvos-evaluation rules (`score_lvos`); test gets the zip its server reads (`Annotations/<video>/...`)."""

    def __init__(self, root: str | Path, split: str = "valid") -> None:
        self.root = Path(root)
        self.split = split
        self.split_dir = self.root / split
        holds = f"{split}/JPEGImages, {split}/Annotations and {split}/{split}_meta.json (the LVOS download)"
        self.image_dir = need_part(self.split_dir / "JPEGImages", "--lvos", self.root, holds)
        self.mask_dir = need_part(self.split_dir / "Annotations", "--lvos", self.root, holds)
        self.meta_path = need_part(self.split_dir / f"{split}_meta.json", "--lvos", self.root, holds)
        self.has_annotations = split == "valid"  # test: the first mask of each object only
        self.submission_prefix = None if self.has_annotations else "Annotations/"
        try:
            videos = json.loads(self.meta_path.read_text())["videos"]
            self.starts = {
                plain_name(v, self.meta_path): {int(k): int(o["frame_range"]["start"]) for k, o in
                                                videos[v]["objects"].items()}
                for v in videos
            }
            # the last frame an object is scored on (lvos_frames: its range at step 5 without its last entry)
            self.last_scored = {v: {int(k): int(o["frame_range"]["end"]) - LVOS_STEP for k, o in
                                    videos[v]["objects"].items() if "end" in o["frame_range"]} for v in videos}
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise VOSInputError(f"LVOS meta {self.meta_path} has no videos/<video>/objects/<id>/frame_range/start "
                                f"and end ({err!r}); pass the split's meta json from the LVOS download") from err
        self.sequences = sorted(self.starts)  # the toolkit's order

    def videos(self, sequences: list[str] | None = None) -> Iterator[VideoReader]:
        for name in _select(sequences, self.sequences, f"LVOS {self.split} at '{self.root}'"):
            frames = video_frames(self.image_dir / name)
            index = {int(f.stem): i for i, f in enumerate(frames) if f.stem.isdigit()}
            starts = self.starts[name]
            missing = [s for s in starts.values() if s not in index]
            if missing or not starts:
                raise VOSInputError(f"{self.meta_path}: video {name} has objects starting at frame {missing[:1] or '-'}"
                                    f" but '{self.image_dir / name}' has no such .jpg; re-extract the video")
            offset = min(index[s] for s in starts.values())
            starting: dict[int, list[int]] = {}
            for obj, s in starts.items():
                starting.setdefault(index[s] - offset, []).append(obj)
            given = {i: self.mask_dir / name / f"{frames[i + offset].stem}.png" for i in starting}
            for i, path in given.items():
                if not path.is_file():
                    raise VOSInputError(f"mask '{path}' of LVOS object(s) {starting[i]} (their first frame in "
                                        f"{self.meta_path.name}) does not exist; re-extract the annotations")
                check_given(path, starting[i], name, self.meta_path)
            for obj, last in self.last_scored[name].items():
                if last > max(index):  # else its last scored frames would have no mask, found after the whole run
                    raise VOSInputError(
                        f"{self.meta_path}: video {name} object {obj} has frame_range end {last + LVOS_STEP}, so it is "
                        f"scored up to frame {last:08d}, but '{self.image_dir / name}' ends at {frames[-1].name}; "
                        "re-extract the video or fix the meta")
            frames = frames[offset:]
            yield StartingVideo(name, frames, dict(sorted(given.items())), [f.stem + ".png" for f in frames],
                            starting=starting)

    def scoring(self, key: str, out_dir: Path, videos: list[str]) -> TestScoring | None:
        """lvos-evaluation's rules on exactly `videos` of `valid`, its CSVs into out_dir; None for `test`, which has
        the first mask of each object only."""
        if not self.has_annotations:
            return None

        def score() -> Scores:
            # the toolkit scores every video of its meta file: give it the meta of the videos run
            meta = json.loads(self.meta_path.read_text())
            meta["videos"] = {v: meta["videos"][v] for v in videos}
            with tempfile.TemporaryDirectory(prefix=".lvos_meta_") as tmp:
                path = Path(tmp) / self.meta_path.name
                path.write_text(json.dumps(meta))
                return score_lvos(self.split_dir, out_dir, self.split, meta=path, out=out_dir)

        return TestScoring(list(lvos_files(out_dir, self.split)), score, format_lvos, (self.mask_dir, "ids"))


# ----------------------------------------------------------------------------------------------------------------
# Scoring (lvos-evaluation, semi-supervised)
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


def check_given(mask: Path, objects: list[int], video: str, meta: Path) -> None:
    """Refuse LVOS objects whose frame_range starts at a frame whose mask `mask` lacks them: such an object is never
    given, and scored on frames where the ground truth and the prediction both lack it, it would get J = F = 1."""
    present = set(np.unique(read_mask(mask, raw=True)).tolist())
    absent = [k for k in objects if k not in present]
    if absent:
        raise VOSInputError(
            f"{meta}: video {video} object(s) {', '.join(map(str, absent))} start at {mask.stem} (frame_range start), "
            f"but the mask '{mask}' does not hold them; fix the meta's start or re-extract the annotations")


def read_video_list(path: Path) -> set[str]:
    """Video ids of a list file, one per line; blank lines and '#' comments are skipped."""
    path = Path(path)
    if path.is_dir():
        raise VOSInputError(f"--unseen {path} is a folder; pass a text file with one LVOS video id per line")
    if not path.is_file():
        raise VOSInputError(f"--unseen {path} does not exist; pass a file with one LVOS video id per line")
    try:
        text = path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError) as err:
        raise VOSInputError(f"--unseen {path} is not a text file ({err}); pass a text file with one LVOS video id "
                            "per line") from err
    lines = [line.strip() for line in text.splitlines()]
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
    # pandas to_csv(float_format='%.3f'); NaN is an empty field
    return "" if math.isnan(value) else f"{value:.{DECIMALS}f}"


def reduce_lvos(objects: list[ObjectScores], unseen: set[str]) -> tuple[list[tuple[str, float]], list[str]]:
    """lvos-evaluation's global table: each measure is the mean of its seen and unseen object means, so each group
    weighs half whatever its size; J&F-Mean = (J_seen + F_seen + J_unseen + F_unseen) / 4. Returns (table, notes):
    a note names an empty group, whose columns (and the averages over both groups) are NaN, as the toolkit leaves
    them."""
    groups = {
        "seen": [o for o in objects if o.sequence not in unseen],
        "unseen": [o for o in objects if o.sequence in unseen],
    }
    means = {(m, g): nan_mean([o.values[m] for o in objs]) for g, objs in groups.items() for m in ("J", "F", "V")}
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
    on_checked: Callable[[], object] | None = None,
) -> Scores:
    """Score `results/<video>/<8-digit frame>.png` on an LVOS split folder `gt` (lvos-evaluation's --lvos_path).

    Per object (json order), the frames of its range at step 5 without its first and last; J and F as DAVIS (no
    void), V as `lvos_variance`; seen/unseen by `unseen` (default: the toolkit's list). Writes
    global_results-<split>.csv and per-sequence_results-<split>.csv into `out` (default `results`), the last ones
    removed once the meta, the unseen list and every GT frame scored are checked (`common.begin_writing`, which calls
    `on_checked`): a frame_range that ends past the frames on disk is told before anything is removed or scored.
    """
    gt, results = (
        need_dir(gt, "--gt", "the LVOS split folder (holding Annotations/ and <split>_meta.json)"),
        Path(results),
    )
    meta = Path(meta) if meta else gt / f"{split}_meta.json"
    if not meta.is_file():
        raise VOSInputError(f"LVOS meta {meta} does not exist; pass --meta FILE or --split valid|test")
    unseen_ids = read_video_list(unseen or LVOS_UNSEEN)
    need_dir(results, "--results", "the folder with one sub-folder of PNGs per video")
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
            # An object absent from its start mask is scored as the toolkit scores it (from the frame after its
            # start); run.py --test refuses it (LVOS.videos), since it could never be given to the model.
            pairs = [(gt / "Annotations" / video / f"{x}.png", results / video / f"{x}.png") for x in frames]
            _check_pairs(pairs, meta, video, label, end)
            tasks.append((pairs, (int(label),)))
            keys.append((video, label, f"{video}_{k}", frames))
    target = Path(out or results)
    out = begin_writing(target, "--out" if out else "--results", lvos_files(target, split), on_checked)
    paths = lvos_files(out, split)
    for video in sorted(videos):
        if not (results / video).is_dir():
            raise VOSInputError(f"no results folder {results / video} for LVOS video {video}; predict every video")

    objects = []
    for (video, label, name, frames), (scores, _) in zip(keys, parallel_map(score_fixed, tasks, workers), strict=True):
        j, f = scores[0, :, metrics.J].copy(), scores[0, :, metrics.F].copy()
        values = {"J": float(np.nanmean(j)), "F": float(np.nanmean(f)), "V": lvos_variance(j, f)}
        counted = np.ones(len(frames), dtype=bool)
        objects.append(ObjectScores(name, video, label, frames, j, f, counted, (values["J"] + values["F"]) / 2, values))

    table, notes = reduce_lvos(objects, unseen_ids)
    seq_rows = [f"{o.name},{_fmt3(o.values['J'])},{_fmt3(o.values['F'])},{_fmt3(o.values['V'])}" for o in objects]
    write_text(paths[1], "\n".join([",".join(LVOS_SEQUENCE_COLUMNS), *seq_rows]) + "\n")
    global_text = ",".join(LVOS_GLOBAL_COLUMNS) + "\n" + ",".join(_fmt3(v) for _, v in table) + "\n"
    write_text(paths[0], global_text)  # last, so that its presence means both are complete
    return Scores("lvos", split, table, objects, DECIMALS, list(paths), notes, title="LVOS")


def _check_pairs(pairs: list[tuple[Path, Path]], meta: Path, video: str, label: str, end: int) -> None:
    """Every GT PNG an object is scored on exists: a frame_range that ends past the frames on disk is told before
    any scoring, naming the meta (a missing prediction is told by the scoring, once the stale results are gone)."""
    for gt_path, _ in pairs:
        if not gt_path.is_file():
            raise VOSInputError(f"{meta}: video {video} object {label} has frame_range end {end}, but its scored frame "
                                f"{gt_path} does not exist; fix the meta's end or re-extract the annotations")


def format_lvos(result: Scores) -> str:
    """The table as the toolkit's CSV holds it: 3 decimals, '(empty)' where it leaves a field empty."""
    return format_scores(result, empty="(empty)")


def _score(request: ScoreRequest) -> Scores:
    return score_lvos(require_gt(request, "lvos"), request.results, request.split or "valid",
                      request.options.get("meta"), request.options.get("unseen"), request.out, request.workers,
                      request.on_checked)


def _report_folders(request: ScoreRequest) -> tuple[Path, Path, str]:
    """The frames lie in JPEGImages/ of the split folder, beside its Annotations/."""
    gt = require_gt(request, "lvos")
    return gt / "JPEGImages", gt / "Annotations", "ids"


BENCHMARK = Benchmark(
    name="lvos",
    keys=(DataKey("LVOS_val", "lvos", lambda root: LVOS(root, "valid")),
          DataKey("LVOS_test", "lvos", lambda root: LVOS(root, "test"))),
    holds="valid/ and test/ (and train/ for --train)",
    root="lvos",
    training=Training("train/JPEGImages, train/Annotations and train/train_meta.json (LVOS v1 or v2)",
                      lambda root, held_out, **clips: train_clips(root, **clips)),
    scorings=(Scoring("lvos", "lvos-evaluation", "the LVOS split folder (--lvos_path)", _score, _report_folders,
                      options={"meta": "overrides <gt>/<split>_meta.json",
                               "unseen": f"file of unseen video ids, one per line (default {LVOS_UNSEEN.name}, the "
                                         "toolkit's list)"},
                      split="valid or test (default valid), which names <split>_meta.json and the CSVs",
                      format=format_lvos,
                      result_files=("global_results-*.csv", "per-sequence_results-*.csv")),),
)


# ----------------------------------------------------------------------------------------------------------------
# Training videos (run.py --train --stages lvos)
# ----------------------------------------------------------------------------------------------------------------


def train_clips(root: str | Path, output_size: tuple[int, int] = (384, 384), clip_len: int = 10,
                clips_per_epoch: int = 128) -> AnnotatedVideos:
    """Clips of LVOS v1 or v2 train: `train/JPEGImages/<video>/00000001.jpg`, `train/Annotations/<video>/...png` and
    `train/train_meta.json` (LingyiHongfd/LVOS README.md, "Organize as follows", both versions; the meta jsons are a
    separate download put into the split folder). Images and masks are at 6 fps, named by the 30 fps index, so in
    steps of 5 (lvos.github.io dataset.html; lvos-evaluation reads `range(start, end, 5)`). The videos are those of
    the meta's `videos`; objects join and leave within their `frame_range`, which needs no special case here: a
    clip's target is chosen among the objects of its first frame. Clips are made of the annotated frames
    (samplers.AnnotatedVideos), so consecutive clip frames are 5 video frames apart, as on YouTube-VOS."""
    root = Path(root)
    holds = "train/JPEGImages, train/Annotations and train/train_meta.json (the LVOS train download and its meta json)"
    image_dir = need_part(root / "train" / "JPEGImages", "--lvos", root, holds)
    mask_dir = need_part(root / "train" / "Annotations", "--lvos", root, holds)
    meta = need_part(root / "train" / "train_meta.json", "--lvos", root, holds)
    try:
        videos = sorted(plain_name(v, meta) for v in json.loads(meta.read_text())["videos"])
    except (ValueError, KeyError, TypeError) as err:
        raise VOSInputError(f"LVOS meta {meta} is not {{'videos': {{...}}}} ({err}); put the train_meta.json of the "
                            f"LVOS download there") from err
    return AnnotatedVideos(image_dir, mask_dir, videos, f"LVOS train at '{root}'", output_size, clip_len,
                           clips_per_epoch, fix="re-extract the LVOS train download (its JPEGImages/ and Annotations/ "
                           "folders of the videos train_meta.json lists)")
