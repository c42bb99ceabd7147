"""SA-V (facebookresearch/sam2's sav_dataset): the layout on disk, run.py's --data keys (SAV_val, SAV_test, root
--sav), and the scoring of sav_evaluator.py (evaluation.py --benchmark sav, and run.py --test on both splits).

sav_evaluator.py is vos-benchmark's evaluator with one folder per object: each object folder of Annotations_6fps is
scored on its sorted GT frames without the first and the last, counted from the object's first appearance, and the
table and results.csv are vos-benchmark's (benchmarks.generic, its decimals included).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from benchmarks.common import (
    Benchmark,
    DataKey,
    ScoreRequest,
    Scores,
    Scoring,
    TestScoring,
    begin_writing,
    format_scores,
    parallel_map,
    require_gt,
    score_from_appearance,
)
from benchmarks.generic import appearance_objects, finish_vos, open_results_csv
from dataset import Layout, VideoReader, _list_folders, _select, need_part, plain_name, video_frames
from utils import VOSInputError, read_mask, save_mask


@dataclass
class SAVVideo(VideoReader):
    """An SA-V video: one binary mask file per object (folder `objects[k]` is label k + 1 here), read into one id
    map and written back per object. SA-V objects may overlap, an id map cannot: where given masks overlap, the
    object listed later holds the pixel."""

    objects: list[str] = field(default_factory=list)  # object folder names ('000', '001', ...), in label order
    mask_folder: Path = Path()  # Annotations_6fps/<video>

    def load_mask(self, index: int) -> np.ndarray:
        merged: np.ndarray | None = None
        name = Path(self.given_masks[index]).name
        for label, obj in enumerate(self.objects, start=1):
            mask = read_mask(self.mask_folder / obj / name) != 0
            merged = np.zeros(mask.shape, np.uint8) if merged is None else merged
            if mask.shape != merged.shape:
                raise VOSInputError(f"mask '{self.mask_folder / obj / name}' is {mask.shape[1]}x{mask.shape[0]}, "
                                    f"unlike the video's other object masks; re-extract the annotations")
            merged[mask] = label
        assert merged is not None  # SAV.videos gives at least one object
        return merged

    def write(self, out_dir: Path, index: int, labels: np.ndarray) -> list[Path]:
        """Frame `index` as one 0/1 palette PNG per object, `<out_dir>/<obj>/<frame>.png` (SAM2's
        `--per_obj_png_file` layout, which sav_evaluator.py reads)."""
        name = self.output_names[index]
        if name is None:
            return []
        written = []
        for label, obj in enumerate(self.objects, start=1):
            save_mask(out_dir / obj / name, (labels == label).astype(np.uint8))
            written.append(out_dir / obj / name)
        return written


class SAV(Layout):
    """SA-V `val` or `test`: the videos of `sav_<split>.txt`, run on every 24 fps frame; each object's mask at the
    first frame is given (SAM2's evaluation assumes every object is there), every frame is written per object, and
    the split is scored by sav_evaluator.py's rules (`score_sav`) on Annotations_6fps."""

    has_annotations = True  # Annotations_6fps: every 4th frame of every object, the frames the evaluator reads

    def __init__(self, root: str | Path, split: str = "val") -> None:
        self.root = Path(root)
        self.split = split
        folder = f"sav_{split}"
        holds = f"{folder}/JPEGImages_24fps, {folder}/Annotations_6fps and {folder}/{folder}.txt (the SA-V download)"
        self.image_dir = need_part(self.root / folder / "JPEGImages_24fps", "--sav", self.root, holds)
        self.annotations = need_part(self.root / folder / "Annotations_6fps", "--sav", self.root, holds)
        listing = need_part(self.root / folder / f"{folder}.txt", "--sav", self.root, holds)
        self.sequences = [plain_name(line.strip(), listing) for line in listing.read_text().splitlines()
                          if line.strip()]
        twice = sorted({v for v in self.sequences if self.sequences.count(v) > 1})
        if twice:  # its masks would be written twice and its objects scored twice
            raise VOSInputError(f"'{listing}' names the video(s) {', '.join(twice[:5])} more than once; list each "
                                "video once (re-download the list)")

    def videos(self, sequences: list[str] | None = None) -> Iterator[VideoReader]:
        for name in _select(sequences, self.sequences, f"SA-V {self.split} at '{self.root}'"):
            frames = video_frames(self.image_dir / name)
            objects = [plain_name(o, self.annotations / name) for o in _list_folders(self.annotations / name)] \
                if (self.annotations / name).is_dir() else []
            if not objects or len(objects) > 255:
                raise VOSInputError(f"'{self.annotations / name}' holds {len(objects)} object folders (1 to 255 are "
                                    "needed); re-extract the annotations")
            first = f"{frames[0].stem}.png"
            for obj in objects:
                if not (self.annotations / name / obj / first).is_file():
                    raise VOSInputError(f"mask '{self.annotations / name / obj / first}' does not exist: SA-V gives "
                                        "every object at the video's first frame; re-extract the annotations")
            yield SAVVideo(name, frames, {0: self.annotations / name / objects[0] / first},
                           [f.stem + ".png" for f in frames], objects=objects, mask_folder=self.annotations / name)

    def scoring(self, key: str, out_dir: Path, videos: list[str]) -> TestScoring:
        """sav_evaluator.py's rules on exactly `videos` (their Annotations_6fps), results.csv into out_dir; every
        object is checked to appear in an evaluated frame before any frame runs (`check_objects_appear`)."""
        for v in videos:
            check_objects_appear(self.annotations / v)

        def score() -> Scores:
            # the evaluator scores every video folder of both trees: give it the ground truth of the videos run, so
            # that folders an earlier run left in out_dir are not scored as this run's
            with tempfile.TemporaryDirectory(prefix=".sav_gt_") as tmp:
                for v in dict.fromkeys(videos):
                    (Path(tmp) / v).symlink_to((self.annotations / v).resolve(), target_is_directory=True)
                return score_sav(Path(tmp), out_dir, out_dir, split=self.split)

        return TestScoring([out_dir / "results.csv"], score, format_scores, (self.annotations, "per-object"))


def check_objects_appear(video: Path) -> None:
    """Refuse an object folder of Annotations_6fps/<video> that is empty in every frame the evaluator reads (its
    sorted frames without the first and the last): sav_evaluator.py stops on it, so it is told before any work, naming
    the user's folder. Each object's frames are read until the first that holds it (the first read, mostly)."""
    if not video.is_dir():
        return  # SAV.videos names the missing folder
    for obj in sorted(p.name for p in video.iterdir() if p.is_dir() and not p.name.startswith(".")):
        names = sorted(p.name for p in (video / obj).iterdir() if not p.name.startswith("."))[1:-1]
        if not any(read_mask(video / obj / x, raw=True).any() for x in names):
            raise VOSInputError(
                f"SA-V object {video / obj} is empty in all its evaluated GT frames (the {len(names)} between its "
                "first and last), where sav_evaluator.py stops; re-extract its annotations or remove the folder"
            )


def score_sav(gt: Path, results: Path, out: Path | None = None, workers: int = 2,
              on_checked: Callable[[], object] | None = None, split: str | None = None) -> Scores:
    """Score SA-V predictions (`results/<video>/<object folder>/<frame>.png`, binary) on Annotations_6fps `gt`
    (sav_evaluator.py --gt_root), as sav_evaluator.py: per object folder, its sorted GT frames without the first and
    the last, the object counted from its first appearance. A video whose GT folder holds only PNGs is scored as
    vos-benchmark does. Writes results.csv into `out` (default `results`), the last one removed once the ground truth
    is checked (`common.begin_writing`, which calls `on_checked`). split: the result's split (default: from the
    folder `sav_<split>` that holds `gt`, else none)."""
    gt, results, videos, notes = open_results_csv(
        gt, results, "SA-V's Annotations_6fps folder (sav_evaluator.py --gt_root)",
        "the folder with one sub-folder per video")
    if split is None:
        parent = gt.resolve().parent.name
        split = parent.removeprefix("sav_") if parent.startswith("sav_") else ""
    tasks, keys = [], []
    for video in videos:
        entries = sorted(p.name for p in (gt / video).iterdir() if not p.name.startswith("."))
        if not entries:
            raise VOSInputError(f"ground-truth folder {gt / video} is empty; re-extract its annotations or remove "
                                "the empty folder")
        if all(x.endswith(".png") for x in entries):  # DAVIS-like video: vos-benchmark's rules
            names = entries[1:-1]
            tasks.append(([(gt / video / x, results / video / x) for x in names], False))
            keys.append((video, None, [x[:-4] for x in names]))
            continue
        check_objects_appear(gt / video)
        for obj in entries:
            names = sorted(os.listdir(gt / video / obj))[1:-1]
            pairs = [(gt / video / obj / x, results / video / obj / x) for x in names]
            tasks.append((pairs, True))
            keys.append((video, obj, [x[:-4] for x in names]))
    target = Path(out or results)
    out = begin_writing(target, "--out" if out else "--results", [target / "results.csv"], on_checked)
    objects = []
    for (video, obj, frames), res in zip(keys, parallel_map(score_from_appearance, tasks, workers), strict=True):
        objects += appearance_objects(video, res, frames, obj)
    return finish_vos("sav", objects, out, notes, "SA-V", split)


def _score(request: ScoreRequest) -> Scores:
    return score_sav(require_gt(request, "sav"), request.results, request.out, request.workers, request.on_checked)


def _report_folders(request: ScoreRequest) -> tuple[Path, Path, str]:
    """The frames lie in JPEGImages_24fps/ beside Annotations_6fps/; one mask folder per object."""
    gt = require_gt(request, "sav")
    return gt.parent / "JPEGImages_24fps", gt, "per-object"


BENCHMARK = Benchmark(
    name="sav",
    keys=(DataKey("SAV_val", "sav", lambda root: SAV(root, "val")),
          DataKey("SAV_test", "sav", lambda root: SAV(root, "test"))),
    holds="sav_val/ and sav_test/",
    root="sav",
    scorings=(Scoring("sav", "sam2 sav_evaluator.py", "SA-V's Annotations_6fps (--gt_root)", _score,
                      _report_folders, result_files=("results.csv",)),),
)
