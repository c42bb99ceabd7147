"""A generic folder of videos (Cutie's, XMem's and vos-benchmark's layout), run.py's --data generic, and its scoring
by hkchengrex/vos-benchmark's rules (evaluation.py --benchmark vos-benchmark).

- Layout: `JPEGImages/<video>/*.jpg|png` and `Annotations/<video>/*.png`; every mask on disk is given; the root is
  run.py's --generic (no default).
- Scoring (`score_vos_benchmark`, vos-benchmark's `benchmark.py`): per video, the sorted GT frames without the first
  and the last; each object counted from its first appearance in the GT or the prediction; DAVIS J and F; the global
  J, F and J&F are plain means over objects, x100. results.csv is written with 1 decimal (`DECIMALS`); the reduction
  and the file are shared with the data sets scored by the same evaluator (`finish_vos`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
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
    need_dir,
    parallel_map,
    pngs,
    report_folders_beside,
    require_gt,
    score_from_appearance,
    subdirs,
    write_text,
)
from dataset import (
    _IMAGE_EXTS,
    Layout,
    StartingVideo,
    VideoReader,
    _list_files,
    _list_folders,
    _select,
    need_part,
    plain_name,
    video_frames,
)
from training.samplers import AnnotatedVideos
from utils import VOSInputError, read_mask, save_mask

DECIMALS = 1  # results.csv and the printed table, as vos-benchmark writes them


# ---------------------------------------------------------------------------------------------------------------------
# The layout
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class GenericVideo(VideoReader):
    """A generic video whose first mask is not on its first frame: the frames before it hold no object yet, and
    their (empty) masks are written with the first given frame's, so that every frame has a mask."""

    blank: list[str] = field(default_factory=list)  # output names of the frames before the first mask

    def write(self, out_dir: Path, index: int, labels: np.ndarray) -> list[Path]:
        written = []
        if index == 0:
            for name in self.blank:
                save_mask(out_dir / name, np.zeros_like(labels))
                written.append(out_dir / name)
        return written + super().write(out_dir, index, labels)


class Generic(Layout):
    """A folder of videos as Cutie's and XMem's generic readers take it: `JPEGImages/<video>/*.jpg|png` and
    `Annotations/<video>/*.png` (palette or grayscale). Frames are ordered by the number in their names. Every mask
    on disk is given: an object starts at its first mask, and a later mask of a tracked object corrects that frame
    (Cutie's `use_all_masks`). Every frame is written, under its own name."""

    has_annotations = False

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        holds = "JPEGImages/<video>/ and Annotations/<video>/"
        self.image_dir = need_part(self.root / "JPEGImages", "--generic", self.root, holds)
        self.mask_dir = need_part(self.root / "Annotations", "--generic", self.root, holds)
        self.sequences = [plain_name(n, self.image_dir) for n in _list_folders(self.image_dir)]

    def videos(self, sequences: list[str] | None = None) -> Iterator[VideoReader]:
        for name in _select(sequences, self.sequences, f"generic folder '{self.root}'"):
            frames = video_frames(self.image_dir / name, _IMAGE_EXTS)
            index = {f.stem: i for i, f in enumerate(frames)}
            masks = _list_files(self.mask_dir / name, {".png"})
            if not masks:
                raise VOSInputError(f"'{self.mask_dir / name}' holds no .png mask; give at least the mask of the "
                                    f"first frame of '{name}'")
            for m in masks:
                if m.stem not in index:
                    raise VOSInputError(f"mask '{m}' has no frame named '{m.stem}' in '{self.image_dir / name}'; "
                                        "rename the mask after the frame it was drawn on, or remove it")
            offset = min(index[m.stem] for m in masks)
            names = [f.stem + ".png" for f in frames]
            yield GenericVideo(name, frames[offset:], {index[m.stem] - offset: m for m in masks}, names[offset:],
                               blank=names[:offset])


# ----------------------------------------------------------------------------------------------------------------
# Scoring (vos-benchmark)
# ----------------------------------------------------------------------------------------------------------------


def vos_benchmark_text(table: list[tuple[str, float]], objects: list[ObjectScores]) -> str:
    """results.csv as vos-benchmark writes it: a header, the Global score line, one line per object, `DECIMALS`."""
    ml = max([len(o.sequence) for o in objects] + [len("Global score")])
    jf, j, f = (v for _, v in table)
    d = DECIMALS
    lines = [f"{'sequence':<{ml}},{'obj':>3}, {'J&F':>4}, {'J':>4}, {'F':>4}"]
    lines.append(f"{'Global score':<{ml}},{'':>3}, {jf:.{d}f}, {j:.{d}f}, {f:.{d}f}")
    for o in objects:
        oj, of = o.values["J"], o.values["F"]
        lines.append(f"{o.sequence:<{ml}},{o.object_label:03}, {(oj + of) / 2:>4.{d}f}, {oj:>4.{d}f}, {of:>4.{d}f}")
    return "\n".join(lines) + "\n"


def reduce_vos_benchmark(objects: list[ObjectScores]) -> list[tuple[str, float]]:
    """vos-benchmark's global table: J and F = plain means over all objects of their per-object means (x100),
    J&F = (J + F) / 2."""
    j = float(np.array([o.values["J"] for o in objects]).mean())
    f = float(np.array([o.values["F"] for o in objects]).mean())
    return [("J&F", (j + f) / 2), ("J", j), ("F", f)]


def appearance_objects(
    video: str, results: list[tuple[int, int, np.ndarray]], frames: list[str], label: str | None = None
) -> list[ObjectScores]:
    """The objects of one video from `common.score_from_appearance`'s results on `frames`: J and F counted from each
    object's first appearance, its values the means of those (x100). label: the object's name (an object folder);
    None: its id, 3 digits."""
    objects = []
    for k, first, scores in results:
        counted = np.arange(len(frames)) >= first
        j, f = scores[:, metrics.J].copy(), scores[:, metrics.F].copy()
        values = {"J": float(np.mean(j[counted]) * 100), "F": float(np.mean(f[counted]) * 100)}
        name = label if label is not None else f"{k:03}"
        objects.append(
            ObjectScores(f"{video}_{name}", video, name, frames, j, f, counted, (values["J"] + values["F"]) / 2, values)
        )
    return objects


def _common_videos(gt: Path, results: Path, what: str) -> tuple[list[str], list[str]]:
    """Videos in both folders (the toolkits' default, non-strict), and a note naming the GT videos left out."""
    gt_videos, pred_videos = subdirs(gt), set(subdirs(results))
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


def finish_vos(benchmark: str, objects: list[ObjectScores], out: Path, notes: list[str], title: str = "",
               split: str = "") -> Scores:
    """vos-benchmark's reduction of `objects` and its results.csv in `out`, as the `benchmark`'s result (titled
    `title`, of `split`), in percent as the toolkit prints it."""
    if not objects:
        raise VOSInputError("no object appears in the evaluated GT frames; nothing to score")
    table = reduce_vos_benchmark(objects)
    path = out / "results.csv"
    write_text(path, vos_benchmark_text(table, objects))
    return Scores(benchmark, split, table, objects, DECIMALS, [path], notes, percent=True, title=title)


def open_results_csv(gt: Path, results: Path, gt_holds: str,
                     results_hold: str) -> tuple[Path, Path, list[str], list[str]]:
    """The checked folders of a scoring that writes vos-benchmark's results.csv (vos-benchmark, SA-V), and the
    videos in both trees with the notes about the others. The output folder is the caller's to check and its stale
    results.csv to remove (`common.begin_writing`), once the ground truth is checked."""
    gt = need_dir(gt, "--gt", gt_holds)
    results = need_dir(results, "--results", results_hold)
    videos, notes = _common_videos(gt, results, "the predictions of these videos")
    return gt, results, videos, notes


def gt_pngs(folder: Path) -> list[str]:
    """The GT PNGs of one video folder, sorted; a folder without any is refused (the toolkit would skip the video
    without a word, and its objects would be missing from the table)."""
    names = pngs(folder)
    if not names:
        raise VOSInputError(f"ground-truth folder {folder} holds no .png mask; re-extract its annotations or remove "
                            "the empty folder")
    return names


def score_vos_benchmark(gt: Path, results: Path, out: Path | None = None, workers: int = 2,
                        on_checked: Callable[[], object] | None = None) -> Scores:
    """Score `results/<video>/<frame>.png` on a GT folder of `<video>/<frame>.png` id maps (vos-benchmark -g), as
    vos-benchmark: frames = sorted GT files without the first and the last, each object counted from its first
    appearance in GT or prediction, DAVIS J and F. Writes results.csv into `out` (default `results`), the last one
    removed once the ground truth is checked (`common.begin_writing`, which calls `on_checked`)."""
    gt, results, videos, notes = open_results_csv(
        gt, results, "the folder of GT video folders (vos-benchmark -g)",
        "the folder with one sub-folder of PNGs per video")
    tasks, frames_of = [], []
    for video in videos:
        names = gt_pngs(gt / video)[1:-1]
        tasks.append(([(gt / video / x, results / video / x) for x in names],))
        frames_of.append([x[: -len(".png")] for x in names])
    target = Path(out or results)
    out = begin_writing(target, "--out" if out else "--results", [target / "results.csv"], on_checked)
    objects = []
    for video, frames, res in zip(videos, frames_of, parallel_map(score_from_appearance, tasks, workers), strict=True):
        objects += appearance_objects(video, res, frames)
    return finish_vos("vos-benchmark", objects, out, notes, "vos-benchmark")


def _score(request: ScoreRequest) -> Scores:
    return score_vos_benchmark(require_gt(request, "vos-benchmark"), request.results, request.out, request.workers,
                               request.on_checked)


BENCHMARK = Benchmark(
    name="generic",
    keys=(DataKey("generic", "generic", Generic),),
    holds="JPEGImages/<video>/ and Annotations/<video>/ (every mask given)",
    root="generic",
    training=Training("JPEGImages/<video>/ and Annotations/<video>/ (masks on any subset of the frames)",
                      lambda root, held_out, **clips: train_clips(root, held_out, **clips), holds_out=True),
    scorings=(Scoring("vos-benchmark", "hkchengrex/vos-benchmark", "the vos-benchmark GT folder (-g)", _score,
                      lambda request: report_folders_beside(require_gt(request, "vos-benchmark")),
                      result_files=("results.csv",)),),
)


# ---------------------------------------------------------------------------------------------------------------------
# Training and fine-tuning (run.py --train --stages generic --generic DIR [--val-sequences V ...])
# ---------------------------------------------------------------------------------------------------------------------

VAL_MIN_MASKS = 3  # vos-benchmark scores the GT frames without the first and the last: a held-out video needs 3


def held_out(folder: Generic, names: list[str] | None) -> list[str]:
    """The held-out videos `names` (--val-sequences) of the folder, checked: each is a video of it with at least
    VAL_MIN_MASKS masks, so that vos-benchmark has a frame to score; [] when none are given."""
    names = list(names or [])
    _select(names, folder.sequences, f"--val-sequences: the generic folder '{folder.root}'")
    for name in names:
        count = len(_list_files(folder.mask_dir / name, {".png"}))
        if count < VAL_MIN_MASKS:
            raise VOSInputError(f"--val-sequences {name}: '{folder.mask_dir / name}' holds {count} mask(s); a held-out "
                                f"video needs at least {VAL_MIN_MASKS} (vos-benchmark scores all but the first and the "
                                f"last), so annotate more of its frames or hold out another video")
    return names


def train_clips(root: str | Path, val_sequences: list[str] | None = None, output_size: tuple[int, int] = (384, 384),
                clip_len: int = 10, clips_per_epoch: int = 128) -> AnnotatedVideos:
    """Clips of a generic folder's videos but the held-out ones: `JPEGImages/<video>/` (.jpg or .png frames) and
    `Annotations/<video>/<frame>.png` on any subset of the frames (Cutie's and XMem's generic layout). Clips are
    made of the annotated frames, as on YouTube-VOS (samplers.AnnotatedVideos): consecutive clip frames are
    consecutive annotated frames, however far apart in the video."""
    folder = Generic(root)
    held = set(held_out(folder, val_sequences))
    videos = [v for v in folder.sequences if v not in held]
    if not videos:
        raise VOSInputError(f"--val-sequences holds out every video of the generic folder '{folder.root}'; leave at "
                            f"least one to train on")
    return AnnotatedVideos(folder.image_dir, folder.mask_dir, videos, f"generic folder '{folder.root}'", output_size,
                           clip_len, clips_per_epoch, image_exts=frozenset(_IMAGE_EXTS),
                           fix="give it masks in Annotations/<video>/ named as its frames, or move it out of the "
                               "folder")


def validation_videos(root: str | Path, names: list[str]) -> Iterator[VideoReader]:
    """The held-out videos as a validation runs them: each object given at its first mask only, as the benchmarks
    whose objects join late are run (dataset.StartingVideo), so that the masks after it are predicted and scored,
    not handed over."""
    for video in Generic(root).videos(names):
        starting: dict[int, list[int]] = {}
        seen: set[int] = set()
        for index, path in sorted(video.given_masks.items()):
            ids = [int(i) for i in np.unique(read_mask(path)) if i != 0 and int(i) not in seen]
            if ids:
                starting[index] = ids
                seen.update(ids)
        if not starting:
            raise VOSInputError(f"every mask of held-out video '{video.name}' in '{Path(root) / 'Annotations'}' is "
                                f"empty; hold out a video with an object")
        given = {i: video.given_masks[i] for i in starting}
        first = min(given)
        yield StartingVideo(video.name, video.frames[first:], {i - first: p for i, p in given.items()},
                        video.output_names[first:], starting={i - first: ids for i, ids in starting.items()})
