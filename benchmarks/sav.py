"""SA-V (facebookresearch/sam2's sav_dataset): the layout on disk, run.py's --data keys (SAV_val, SAV_test, root
--sav), and the scoring of sav_evaluator.py (evaluation.py --benchmark sav, and run.py --test on both splits).

sav_evaluator.py is vos-benchmark's evaluator with one folder per object: each object folder of Annotations_6fps is
scored on its sorted GT frames without the first and the last, counted from the object's first appearance, and the
table and results.csv are vos-benchmark's (benchmarks.generic, its decimals included).
"""

from __future__ import annotations

import json
import os
import random
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image

from benchmarks.common import (
    Benchmark,
    DataKey,
    ScoreRequest,
    Scores,
    Scoring,
    TestScoring,
    Training,
    begin_writing,
    format_scores,
    parallel_map,
    require_gt,
    score_from_appearance,
)
from benchmarks.generic import appearance_objects, finish_vos, open_results_csv
from dataset import Layout, VideoReader, _list_folders, _select, need_part, plain_name, video_frames
from training.samplers import ClipSampler, PairLoader, check_all, clip_of
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
    holds="sav_val/ and sav_test/ (and sav_train/ for --train)",
    root="sav",
    training=Training("sav_train/ (<id>.mp4 with <id>_manual.json)",
                      lambda root, held_out, **clips: train_clips(root, **clips)),
    scorings=(Scoring("sav", "sam2 sav_evaluator.py", "SA-V's Annotations_6fps (--gt_root)", _score,
                      _report_folders, result_files=("results.csv",)),),
)


# ----------------------------------------------------------------------------------------------------------------
# Training videos (run.py --train --stages sav)
# ----------------------------------------------------------------------------------------------------------------

# SA-V train is annotated at 6 fps in 24 fps videos: annotated frame k is video frame 4k (sav_dataset/README.md,
# "masklet_frame_count"; sav_utils.SAVDataset.read_frames decodes the mp4 and keeps frames[::4]).
SAV_STEP = 4


@dataclass(frozen=True)
class SAVTrainVideo:
    """One SA-V training video: its id, its mp4 and its `<id>_manual.json` beside it."""

    name: str
    mp4: Path
    annotations: Path


def read_masklets(video: SAVTrainVideo) -> tuple[list[list[dict]], int, int]:
    """(masklet, height, width) of a video's `_manual.json`: masklet[k][j] is object j's COCO RLE at annotated frame
    k (sav_dataset/README.md, "SA-V train")."""
    try:
        data = json.loads(video.annotations.read_text())
        masklet = data["masklet"]
        height, width = int(data["video_height"]), int(data["video_width"])
        if not isinstance(masklet, list) or not all(isinstance(frame, list) for frame in masklet):
            raise TypeError("masklet is not a list of lists")
    except (ValueError, KeyError, TypeError, OSError) as err:
        raise VOSInputError(f"'{video.annotations}' is not an SA-V masklet json ({err!r}); re-extract it from the "
                            f"SA-V train download") from err
    return masklet, height, width


def masklet_ids(video: SAVTrainVideo, rles: list[dict], height: int, width: int) -> np.ndarray:
    """(H, W) uint8 ids of one annotated frame's RLE masks, object j as id j + 1; where masklets overlap (a person
    and their hand), the one listed later holds the pixel, as SAVVideo merges the val/test masks."""
    from pycocotools import mask as mask_utils  # only SA-V train needs pycocotools

    if len(rles) > 255:
        raise VOSInputError(f"'{video.annotations}' has {len(rles)} masklets in a frame; at most 255 fit in an id mask")
    ids = np.zeros((height, width), np.uint8)
    for obj, rle in enumerate(rles, 1):
        try:
            size = tuple(rle["size"])
            mask = mask_utils.decode(rle)
        except (ValueError, KeyError, TypeError) as err:
            raise VOSInputError(f"'{video.annotations}': masklet {obj - 1} does not decode as COCO RLE ({err}); "
                                f"re-extract the json") from err
        if size != (height, width) or mask.shape != (height, width):
            raise VOSInputError(f"'{video.annotations}': masklet {obj - 1} is {size[1]}x{size[0]} but the video is "
                                f"{width}x{height}; re-extract the json")
        ids[mask > 0] = obj
    return ids


def read_video_frames(mp4: Path, first: int, last: int) -> dict[int, np.ndarray]:
    """The RGB frames first, first + SAV_STEP, ..., last of an mp4, decoded with OpenCV as sav_utils does (seek to
    `first`, then read on, so a clip costs its own stretch of the video, not the whole of it)."""
    capture = cv2.VideoCapture(str(mp4))
    try:
        if first:
            capture.set(cv2.CAP_PROP_POS_FRAMES, first)
        frames = {}
        for index in range(first, last + 1):
            ok, bgr = capture.read()
            if not ok:
                raise VOSInputError(f"'{mp4}' does not decode at frame {index} (its json annotates frame {last}); "
                                    f"re-download the video")
            if (index - first) % SAV_STEP == 0:
                frames[index] = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        return frames
    finally:
        capture.release()


class SAVTrainClips(ClipSampler):
    """Clips of SA-V train: `sav_train/**/<id>.mp4` with `<id>_manual.json` beside it (the download's
    `sav_train/sav_000/`... folders; sav_dataset/README.md, "SA-V train"). Only the manual masklets are read. A clip
    is made of consecutive annotated frames (4 video frames apart), drawn as every video clip is (samplers.clip_of);
    the frames come from the mp4 (OpenCV), the masks from the RLE masklets (pycocotools), objects as ids in list
    order."""

    def __init__(self, root: str | Path, output_size: tuple[int, int] = (384, 384), clip_len: int = 10,
                 clips_per_epoch: int = 128) -> None:
        self.root = Path(root)
        folder = need_part(self.root / "sav_train", "--sav", self.root,
                           "sav_train/ (the SA-V train download: <id>.mp4 with <id>_manual.json)")
        suffix = "_manual.json"
        self.videos = [SAVTrainVideo(plain_name(p.name[: -len(suffix)], p.parent), p.with_name(
            p.name[: -len(suffix)] + ".mp4"), p) for p in sorted(folder.rglob(f"*{suffix}"), key=lambda p: p.name)
            if not p.name.startswith(".")]
        if not self.videos:
            raise VOSInputError(f"'{folder}' holds no <id>_manual.json; extract the SA-V train download there")
        super().__init__(output_size, clip_len, clips_per_epoch)

    @property
    def size(self) -> int:
        return len(self.videos)

    def check(self) -> None:
        """Before the first step, per video: its json parses, every RLE decodes at the video's size, some masklet
        has an object; its mp4 opens at that size and decodes its first frame and its last annotated one (decoding
        every frame of SA-V's 50,583 videos up front would take hours; a truncated file fails at its end)."""
        check_all(self._check_video, self.videos, f"checking SA-V train at '{self.root}'")

    def _check_video(self, video: SAVTrainVideo) -> None:
        masklet, height, width = read_masklets(video)
        if not masklet or not any([masklet_ids(video, rles, height, width).any() for rles in masklet]):  # each decoded
            raise VOSInputError(f"'{video.annotations}' has no masklet with an object in any frame; re-extract it, "
                                f"or move the video and its jsons out of sav_train/")
        if not video.mp4.is_file():
            raise VOSInputError(f"SA-V video '{video.mp4}' of '{video.annotations}' does not exist; re-extract it")
        last = SAV_STEP * (len(masklet) - 1)
        for index, rgb in {**read_video_frames(video.mp4, 0, 0), **read_video_frames(video.mp4, last, last)}.items():
            if rgb.shape[:2] != (height, width):
                raise VOSInputError(f"frame {index} of '{video.mp4}' is {rgb.shape[1]}x{rgb.shape[0]} but its json "
                                    f"says {width}x{height}; re-download the video")

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        """A random clip; `index` only counts clips."""
        video = random.choice(self.videos)
        masklet, height, width = read_masklets(video)
        return clip_of(len(masklet), self._loader(video, masklet, height, width), self.clip_len, self.output_size)

    def _loader(self, video: SAVTrainVideo, masklet: list[list[dict]], height: int, width: int) -> PairLoader:
        """Annotated frame k -> (frame, id mask). The first call decodes every frame a clip through k may need (up
        to clip_len - 1 annotated frames either way: clips are played backwards too)."""
        frames: dict[int, np.ndarray] = {}

        def load(k: int) -> tuple[Image.Image, Image.Image]:
            if SAV_STEP * k not in frames:
                lo, hi = max(0, k - self.clip_len + 1), min(len(masklet) - 1, k + self.clip_len - 1)
                frames.update(read_video_frames(video.mp4, SAV_STEP * lo, SAV_STEP * hi))
            return Image.fromarray(frames[SAV_STEP * k]), Image.fromarray(masklet_ids(video, masklet[k], height, width))

        return load


def train_clips(root: str | Path, output_size: tuple[int, int] = (384, 384), clip_len: int = 10,
                clips_per_epoch: int = 128) -> SAVTrainClips:
    """Clips of SA-V train under `root` (--sav): see SAVTrainClips."""
    return SAVTrainClips(root, output_size, clip_len, clips_per_epoch)
