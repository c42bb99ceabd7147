"""Datasets on disk (DAVIS 2016 / 2017, YouTube-VOS 2018 / 2019, COCO, a user's video): test-time video readers and
training clip samplers.

Test side: a `Layout` per benchmark (`DAVIS`, `YouTubeVOS`, `SingleVideo`) yields one `VideoReader` per video. The
reader holds file paths only and knows the frame order, the masks given at each frame, the official test-time size
(`official_size`) and the size masks are written at, and the output files; inference.segment_video runs any of them
one frame at a time, so no reader ever holds a whole video in memory.

Training side: `TrainDAVIS`, `TrainYTVOS` and `TrainCOCO` are torch Datasets of random clips
{'imgs': (L, 3, H, W) float RGB in [0, 1], 'masks': (L, H, W) long, 1 = the target object}, sampled and augmented
as the loaders of the official code (suhwan-cho/EMVOS) do; use `seed_worker` as the DataLoader's worker_init_fn.
`TrainPairs` gives VideoMatch's training pairs as the public PyTorch port draws and augments them
(`PortAugmentation`).

Every unusable input raises `utils.VOSInputError` naming the file or flag and the fix.
"""

from __future__ import annotations

import json
import math
import random
import re
import shutil
import sys
import tempfile
import weakref
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cached_property
from itertools import combinations
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset

from utils import VOSInputError, read_frame, read_mask, save_mask

# ----------------------------------------------------------------------------------------------------------------------
# Test side
# ----------------------------------------------------------------------------------------------------------------------


# Where the datasets are by default (run.py re-exports these as editable constants; the flags override them).
DAVIS_ROOT = "../DB/DAVIS"
YTVOS18_ROOT = "../DB/YTVOS18"
YTVOS19_ROOT = "../DB/YTVOS19"
COCO_ROOT = "../DB/COCO"


# The official test protocol: short side to 480 unless a given object would then have fewer pixels than this.
TEST_SHORT_SIDE = 480
MIN_OBJECT_PIXELS = 1000


def official_size(height: int, width: int, given: Iterable[np.ndarray]) -> tuple[int, int] | None:
    """The size to run at, or None to keep the original: the short side goes to 480 (bicubic frames, nearest masks),
    unless any given object would then have fewer than 1000 pixels (the official evaluator's rule)."""
    if min(height, width) == TEST_SHORT_SIDE:
        return None
    if height > width:
        size = (int(TEST_SHORT_SIDE / width * height), TEST_SHORT_SIDE)
    else:
        size = (TEST_SHORT_SIDE, int(TEST_SHORT_SIDE / height * width))
    for mask in given:
        resized = resize_mask(torch.from_numpy(mask).long(), size)
        ids, counts = resized.unique(return_counts=True)
        if any(c < MIN_OBJECT_PIXELS for i, c in zip(ids.tolist(), counts.tolist(), strict=True) if i != 0):
            return None
    return size


def resize_frame(frame: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(3, H, W) -> (3, h, w) bicubic, not clamped: the official code feeds the overshoot to the network as is."""
    return F.interpolate(frame[None], size=size, mode="bicubic", align_corners=False)[0]


def resize_mask(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(H, W) ids -> (h, w) ids, nearest (as F.interpolate does it in the official code)."""
    return F.interpolate(mask[None, None].float(), size=size, mode="nearest")[0, 0].long()


@dataclass
class VideoReader:
    """One video at test time: which frames run in which order, which masks are given at which frame, the size the
    model runs at and the size masks are written at, and where each frame's mask goes.

    Built from paths only; frames and masks are read one at a time when asked for, so no reader ever holds a whole
    video in memory. The driver (inference.segment_video) asks, for each index: `image` (the frame as on disk),
    `model_input` (frame and given mask at `run_size`), then `to_output` and `write` for the prediction.
    A benchmark with another mask format (one file per object, ...) subclasses this and overrides `load_mask`
    and / or `write`.
    """

    name: str
    frames: list[Path]  # every frame to run on, in order
    given_masks: dict[int, Path]  # frame index -> its given mask (index 0 always; objects may first be given later)
    output_names: list[str | None]  # per frame: PNG file name to write ('00000.png'), or None = run but don't write
    binary: bool = False  # DAVIS 2016: binarise masks (!= 0)

    def __len__(self) -> int:
        return len(self.frames)

    @cached_property
    def original_size(self) -> tuple[int, int]:
        """(H, W) of the frames on disk: every frame must have it, and masks are written at it."""
        return read_frame(self.frames[0]).shape[:2]

    @cached_property
    def given(self) -> dict[int, np.ndarray]:
        """{frame index: id mask} of every given mask, read and checked up front (they decide the run size)."""
        if 0 not in self.given_masks:
            raise VOSInputError(f"video {self.name} has no mask for its first frame {self.frames[0]}")
        height, width = self.original_size
        given = {}
        for index, path in sorted(self.given_masks.items()):
            mask = self.load_mask(index)
            if mask.shape != (height, width):
                raise VOSInputError(
                    f"mask {path} is {mask.shape[1]}x{mask.shape[0]} but its frame {self.frames[index]} is "
                    f"{width}x{height}; masks must have the size of their frame (resize it with nearest neighbour "
                    "interpolation)"
                )
            given[index] = mask
        if not given[0].any():
            raise VOSInputError(
                f"first-frame mask {self.given_masks[0]} has no object (every pixel is 0); give at least one object "
                "as pixel values 1..255"
            )
        return given

    def load_mask(self, index: int) -> np.ndarray:
        """The (H, W) id mask given at frame `index`, read from given_masks[index] (a benchmark that stores one
        file per object overrides this to merge them)."""
        return read_mask(self.given_masks[index], binary=self.binary)

    @cached_property
    def run_size(self) -> tuple[int, int]:
        """(h, w) the model runs at: the official test-time rule (`official_size`) on the given masks."""
        return official_size(*self.original_size, self.given.values()) or self.original_size

    def check(self) -> None:
        """Read and check the first frame's size and every given mask, and fix the run size: before any frame runs,
        so that a bad mask stops the video before anything is written."""
        _ = self.run_size

    def image(self, index: int) -> np.ndarray:
        """Frame `index` as on disk, (H, W, 3) uint8 RGB, checked to have the video's size."""
        rgb = read_frame(self.frames[index])
        if rgb.shape[:2] != self.original_size:
            height, width = self.original_size
            raise VOSInputError(
                f"frame {self.frames[index]} is {rgb.shape[1]}x{rgb.shape[0]} but the video's first frame is "
                f"{width}x{height}; all frames of a video must have one size"
            )
        return rgb

    def model_input(self, index: int, rgb: np.ndarray) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(frame (3, h, w) float RGB in [0, 1], given mask (h, w) long ids or None) of frame `index` at run_size."""
        frame = torch.tensor(rgb).permute(2, 0, 1).float().div(255)  # a copy: PIL arrays are read-only
        mask = torch.from_numpy(self.given[index]).long() if index in self.given else None
        if self.run_size != self.original_size:
            frame = resize_frame(frame, self.run_size)
            mask = resize_mask(mask, self.run_size) if mask is not None else None
        return frame, mask

    def to_output(self, labels: torch.Tensor) -> np.ndarray:
        """(h, w) predicted ids at run_size -> (H, W) uint8 at the original size (YouTube-VOS is scored at it)."""
        if tuple(labels.shape) != self.original_size:
            labels = resize_mask(labels, self.original_size)
        return labels.to("cpu", torch.uint8).numpy()

    def write(self, out_dir: Path, index: int, labels: np.ndarray) -> list[Path]:
        """Write frame `index`'s (H, W) id mask under out_dir as a palette PNG; the files written ([] if the frame is
        not one to write)."""
        name = self.output_names[index]
        if name is None:
            return []
        save_mask(out_dir / name, labels)
        return [out_dir / name]


class Layout:
    """A test-time dataset on disk: its video names, and one `VideoReader` per video.

    A benchmark is one subclass: it sets `sequences` (and `binary`, `has_annotations`, `submission_prefix` where
    they differ) and implements `videos`; `ground_truth` where the split has masks of every frame.
    """

    sequences: list[str]
    binary: bool = False  # one merged object per video (masks != 0), scored so too
    has_annotations: bool = False  # ground truth of every frame is on disk (J&F can be computed here)
    submission_prefix: str | None = None  # a server's zip holds `<prefix><video>/<frame>.png`; None: no zip

    def __len__(self) -> int:
        return len(self.sequences)

    def videos(self, sequences: list[str] | None = None) -> Iterator[VideoReader]:
        """A reader per video (all, or the named subset in that order)."""
        raise NotImplementedError

    def ground_truth(self, sequences: list[str] | None = None) -> dict[str, list[Path]]:
        """{video: ground-truth mask of every frame}: the `gt` argument of evaluation.evaluate_and_write."""
        raise VOSInputError(f"{type(self).__name__} has no ground truth on disk")


_IMAGE_EXTS = {".jpg", ".jpeg", ".png"}


def _natural_key(path: Path) -> list:
    """Sort 'frame2' before 'frame10'; zero-padded names (DAVIS, YouTube-VOS) sort the same either way."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", path.name)]


def _hidden(path: Path) -> bool:
    """Dot files are never frames, masks or videos: macOS leaves '._00000.jpg' (AppleDouble metadata, not a JPEG)
    beside every file it copies to a foreign disk, and utils.atomic_write's temporary files start with '.'."""
    return path.name.startswith(".")


def _list_files(folder: Path, exts: set[str]) -> list[Path]:
    """Visible files in `folder` whose suffix (case-insensitive) is in `exts`, naturally sorted; [] if the folder is
    absent."""
    if not folder.is_dir():
        return []
    files = (p for p in folder.iterdir() if not _hidden(p) and p.is_file() and p.suffix.lower() in exts)
    return sorted(files, key=_natural_key)


def _list_folders(folder: Path) -> list[str]:
    """Names of the visible sub-folders of `folder`, sorted (one per video)."""
    return sorted(p.name for p in folder.iterdir() if not _hidden(p) and p.is_dir())


def _select(requested: list[str] | None, available: list[str], what: str) -> list[str]:
    """The requested subset of sequence names, in the requested order; an unknown name is an error."""
    if requested is None:
        return list(available)
    known = set(available)
    unknown = [s for s in requested if s not in known]
    if unknown:
        examples = ", ".join(available[:5]) + (", ..." if len(available) > 5 else "")
        raise VOSInputError(
            f"unknown sequence(s) {', '.join(unknown)} in {what}; valid names include: {examples or '(none)'}"
        )
    return list(requested)


class _ListedLayout:
    """The original DAVIS 2016 download: `ImageSets/<resolution>/<split>.txt` lists 'frame annotation' path pairs
    ('/JPEGImages/480p/bear/00000.jpg /Annotations/480p/bear/00000.png'); masks are mode L 0/255."""

    def __init__(self, root: Path, resolution: str, year: str, split: str) -> None:
        if year != "2016":
            raise VOSInputError(
                f"DAVIS root '{root}' is the original DAVIS 2016 download (ImageSets/{resolution}), which has no "
                "DAVIS 2017 sequences; pass the DAVIS-2017-trainval-480p folder with --davis, or ask for a DAVIS 2016 "
                "set (run.py --data DAVIS16_val, run.py --train --davis-year 2016, evaluation.py --year 2016)"
            )
        if split == "test-dev":
            raise VOSInputError(f"DAVIS root '{root}' is the DAVIS 2016 download, which has no test-dev split")
        self.list_path = root / "ImageSets" / resolution / f"{split}.txt"
        if not self.list_path.is_file():
            raise VOSInputError(
                f"DAVIS split list '{self.list_path}' does not exist; the DAVIS 2016 download (DAVIS-data.zip) ships "
                f"train.txt, val.txt and trainval.txt in ImageSets/{resolution}"
            )
        self._pairs: dict[str, tuple[list[Path], list[Path]]] = {}
        for n, line in enumerate(self.list_path.read_text().splitlines(), 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 2:
                raise VOSInputError(f"line {n} of '{self.list_path}' is not 'frame annotation': {line!r}")
            frame, anno = (root / p.lstrip("/") for p in parts)
            frames, annos = self._pairs.setdefault(frame.parent.name, ([], []))
            frames.append(frame)
            annos.append(anno)
        self.sequences = sorted(self._pairs)

    def files(self, seq: str, with_annotations: bool) -> tuple[list[Path], list[Path]]:
        """(frames, annotations) of `seq` as listed, every listed file checked (all frames are annotated here)."""
        frames, annos = self._pairs[seq]
        for kind, paths in (("frame", frames), ("annotation", annos)):
            missing = [p for p in paths if not p.is_file()]
            if missing:
                raise VOSInputError(
                    f"{kind} '{missing[0]}' listed in '{self.list_path}' does not exist ({len(missing)} missing in "
                    f"{seq}); re-download the sequence"
                )
        return list(frames), list(annos)


class _FolderLayout:
    """The DAVIS 2017 layout (DAVIS-2017-trainval-480p, DAVIS-2017-test-dev-480p): `ImageSets/{2016,2017}/<split>.txt`
    name sequences; the frames are `JPEGImages/<resolution>/<seq>/*.jpg`, the annotations
    `Annotations/<resolution>/<seq>/<frame>.png` (test-dev: the first frame's only)."""

    def __init__(self, root: Path, resolution: str, year: str, split: str) -> None:
        self.images = root / "JPEGImages" / resolution
        self.masks = root / "Annotations" / resolution
        sets = root / "ImageSets" / year
        # trainval = train + val when the download has no trainval.txt
        names = ["train", "val"] if split == "trainval" and not (sets / "trainval.txt").is_file() else [split]
        seqs: list[str] = []
        self.lists = [sets / f"{name}.txt" for name in names]
        for name, path in zip(names, self.lists, strict=True):
            if not path.is_file():
                download = (
                    "the separate DAVIS-2017-test-dev-480p.zip download"
                    if name == "test-dev"
                    else "DAVIS-2017-trainval-480p.zip"
                )
                raise VOSInputError(f"DAVIS split list '{path}' does not exist; it ships with {download}")
            seqs += [s.strip() for s in path.read_text().splitlines() if s.strip() and s.strip() not in seqs]
        self.sequences = sorted(seqs)  # the official TestDAVIS sorts the list

    def files(self, seq: str, with_annotations: bool) -> tuple[list[Path], list[Path]]:
        """(frames, annotations) of `seq`: every frame, and the annotation path of each.

        The frame folder decides what runs, so a missing frame would silently drop out of the run and of J&F.
        Refused instead: an annotation whose frame is missing, a gap in the frame numbers (DAVIS numbers the frames
        of a sequence 00000, 00001, ... without gaps) and, when the split is annotated, a frame without annotation.
        """
        folder, mask_folder = self.images / seq, self.masks / seq
        frames = _list_files(folder, {".jpg"})
        if not frames:
            raise VOSInputError(
                f"sequence '{seq}' is listed in {' + '.join(map(str, self.lists))} but '{folder}' holds no .jpg "
                "frames; re-download or re-extract the DAVIS images"
            )
        fix = "re-download or re-extract the DAVIS images (JPEGImages)"
        stems = {f.stem for f in frames}
        orphans = [p for p in _list_files(mask_folder, {".png"}) if p.stem not in stems]
        if orphans:
            raise VOSInputError(
                f"frame '{folder / (orphans[0].stem + '.jpg')}' does not exist but its annotation '{orphans[0]}' "
                f"does ({len(orphans)} such frame(s) in {seq}); {fix}"
            )
        if all(s.isdigit() for s in stems):
            numbers = sorted(int(s) for s in stems)
            gaps = sorted(set(range(numbers[0], numbers[-1] + 1)) - set(numbers))
            if gaps:
                width = len(frames[0].stem)
                raise VOSInputError(
                    f"frame '{folder / f'{gaps[0]:0{width}d}.jpg'}' does not exist ({len(gaps)} missing between "
                    f"{frames[0].name} and {frames[-1].name} of {seq}); {fix}"
                )
        annotations = [mask_folder / (f.stem + ".png") for f in frames]
        if with_annotations:
            missing = [p for p in annotations if not p.is_file()]
            if missing:
                raise VOSInputError(
                    f"annotation '{missing[0]}' does not exist ({len(missing)} frame(s) of {seq} have none); "
                    "re-download or re-extract the DAVIS annotations (Annotations)"
                )
        return frames, annotations


class DAVIS(Layout):
    """DAVIS 2016 / 2017 semi-supervised test reader, on either download layout.

    * 2017 layout (DAVIS-2017-trainval-480p, DAVIS-2017-test-dev-480p): `ImageSets/{2016,2017}/<split>.txt` name
      sequences; frames are every `JPEGImages/480p/<seq>/*.jpg`, annotations `Annotations/480p/<seq>/<frame>.png`.
    * Original DAVIS 2016 layout: `ImageSets/480p/<split>.txt` lists "frame annotation" path pairs, masks are
      mode L 0/255. Only year 2016 exists there.

    The layout is told apart once, here; a missing frame or annotation is an error on either.
    Year 2016 means one merged object per sequence (`binary`), as the official TestDAVIS does with `masks != 0`.
    """

    def __init__(self, root: str | Path, year: str = "2017", split: str = "val", resolution: str = "480p") -> None:
        self.root = Path(root)
        self.year = str(year)
        self.split = split
        self.resolution = resolution
        if self.year not in ("2016", "2017"):
            raise VOSInputError(f"DAVIS year '{year}' is not supported; use 2016 or 2017")
        if split not in ("train", "val", "trainval", "test-dev"):
            raise VOSInputError(f"DAVIS split '{split}' is not supported; use train, val, trainval or test-dev")
        if split == "test-dev" and self.year != "2017":
            raise VOSInputError("DAVIS test-dev exists for year 2017 only; evaluate DAVIS 2016 on val or train")
        if not (self.root / "JPEGImages" / resolution).is_dir():
            raise VOSInputError(
                f"DAVIS root '{self.root}' has no JPEGImages/{resolution}; pass --davis PATH "
                f"(the folder that holds JPEGImages/ and Annotations/)"
            )
        self.binary = self.year == "2016"
        self.has_annotations = split != "test-dev"  # test-dev ships the first-frame masks only
        self.submission_prefix = "" if split == "test-dev" else None  # the DAVIS server scores test-dev
        sets = self.root / "ImageSets"
        self._layout: _ListedLayout | _FolderLayout
        if (sets / "2017").is_dir() or (sets / "2016").is_dir():
            self._layout = _FolderLayout(self.root, resolution, self.year, split)
        elif (sets / resolution).is_dir():
            self._layout = _ListedLayout(self.root, resolution, self.year, split)
        else:
            raise VOSInputError(
                f"DAVIS root '{self.root}' has no ImageSets/2017, ImageSets/2016 or ImageSets/{resolution}; the split "
                "lists ship with the DAVIS download (DAVIS-2017-trainval-480p.zip, or DAVIS-data.zip for 2016)"
            )
        self.sequences = self._layout.sequences

    def _select(self, sequences: list[str] | None) -> list[str]:
        return _select(sequences, self.sequences, f"DAVIS {self.year} {self.split} at '{self.root}'")

    def _files(self, seq: str) -> tuple[list[Path], list[Path]]:
        """(frames, annotations) of one sequence, checked (see the layouts)."""
        self._select([seq])
        return self._layout.files(seq, self.has_annotations)

    def frames(self, seq: str) -> list[Path]:
        """Every frame of `seq`, in order."""
        return self._files(seq)[0]

    def annotations(self, seq: str) -> list[Path]:
        """The ground-truth mask of every frame of `seq` (each one checked to exist)."""
        return self.ground_truth([seq])[seq]

    def ground_truth(self, sequences: list[str] | None = None) -> dict[str, list[Path]]:
        """{sequence: ground-truth mask of every frame}, for all sequences or the named ones in that order: the
        `gt` argument of evaluation.evaluate_sequences / evaluate_and_write."""
        if not self.has_annotations:
            raise VOSInputError(
                "DAVIS test-dev has no ground truth beyond the first frame; evaluate it on the DAVIS challenge server"
            )
        return {seq: self._files(seq)[1] for seq in self._select(sequences)}

    def videos(self, sequences: list[str] | None = None) -> Iterator[VideoReader]:
        """The test videos (all, or the named subset in that order); the first frame's mask is the given one."""
        for seq in self._select(sequences):
            frames, annotations = self._files(seq)
            if not annotations[0].is_file():
                raise VOSInputError(
                    f"first-frame mask '{annotations[0]}' of sequence '{seq}' does not exist; re-download the DAVIS "
                    "annotations"
                )
            yield VideoReader(
                name=seq,
                frames=frames,
                given_masks={0: annotations[0]},
                output_names=[f.stem + ".png" for f in frames],
                binary=self.binary,
            )


class YouTubeVOS(Layout):
    """YouTube-VOS 2018 / 2019 validation reader (the layouts of both years are the same).

    Runs on `valid_all_frames/JPEGImages/<video>` (every frame), writes only the frames that `valid/JPEGImages`
    holds (the ones the server scores). Objects can first appear late: `valid/Annotations/<video>/<frame>.png` holds
    the mask at each object's first appearance, and each such frame becomes a given mask. As the official TestYTVOS
    does, frames before the first annotated one are dropped (neither run nor written).
    """

    has_annotations = False  # the server scores the validation set; no ground truth is on disk
    submission_prefix = "Annotations/"  # the layout the YouTube-VOS server reads

    def __init__(self, root: str | Path, year: str = "2018", split: str = "valid") -> None:
        self.root = Path(root)
        self.year = str(year)
        self.split = split
        if self.year not in ("2018", "2019"):
            raise VOSInputError(f"YouTube-VOS year '{year}' is not supported; use 2018 or 2019")
        self.image_dir = self.root / split / "JPEGImages"
        self.mask_dir = self.root / split / "Annotations"
        for folder in (self.image_dir, self.mask_dir):
            if not folder.is_dir():
                raise VOSInputError(
                    f"YouTube-VOS root '{self.root}' has no {split}/{folder.name}; pass --ytvos PATH (the folder "
                    f"that holds {split}/ and {split}_all_frames/ of the YouTube-VOS {self.year} download)"
                )
        self.all_frames_dir = self.root / f"{split}_all_frames" / "JPEGImages"
        if not self.all_frames_dir.is_dir():
            # Without the all-frames download the model still runs, on the scored frames only (5x sparser in
            # time), which lowers accuracy; say so instead of failing.
            print(
                f"warning: '{self.all_frames_dir}' does not exist; running on the sparse frames of "
                f"'{self.image_dir}' only. Download {split}_all_frames for the official protocol.",
                file=sys.stderr,
            )
            self.all_frames_dir = self.image_dir
        # The official reader lists valid/Annotations; meta.json is not needed to run.
        self.sequences = _list_folders(self.mask_dir)

    def videos(self, sequences: list[str] | None = None) -> Iterator[VideoReader]:
        """The test videos (all, or the named subset in that order)."""
        for name in _select(sequences, self.sequences, f"YouTube-VOS {self.year} {self.split} at '{self.root}'"):
            yield self._video(name)

    def _video(self, name: str) -> VideoReader:
        frames = _list_files(self.all_frames_dir / name, {".jpg"})
        if not frames:
            raise VOSInputError(f"'{self.all_frames_dir / name}' holds no .jpg frames; re-extract the video '{name}'")
        masks = {p.stem: p for p in _list_files(self.mask_dir / name, {".png"})}
        if not masks:
            raise VOSInputError(f"'{self.mask_dir / name}' holds no .png masks; re-extract the annotations")
        index = {f.stem: i for i, f in enumerate(frames)}
        for stem, path in masks.items():
            if stem not in index:
                raise VOSInputError(f"mask '{path}' has no frame '{stem}.jpg' in '{self.all_frames_dir / name}'")
        scored = {p.stem for p in _list_files(self.image_dir / name, {".jpg"})}
        start = min(index[s] for s in masks)  # official: frame ids below the first annotated one are dropped
        frames = frames[start:]
        return VideoReader(
            name=name,
            frames=frames,
            given_masks={index[s] - start: p for s, p in sorted(masks.items(), key=lambda kv: index[kv[0]])},
            output_names=[f.stem + ".png" if f.stem in scored else None for f in frames],
        )


class SingleVideo(Layout):
    """One user video: a folder of frames (.jpg/.jpeg/.png, natural order) or a video file, plus a first-frame mask.

    A video file is decoded frame by frame into a temporary folder of lossless PNGs (a second JPEG encoding would
    add artefacts the model never saw in training) the first time `videos()`
    is called, so memory holds one frame at a time; the folder is removed when this object is garbage-collected
    or `close()` is called.

    Output names follow the input: a folder's frame `frame_0017.jpg` gives `frame_0017.png` (so a missing frame
    leaves a gap instead of shifting every later name); a video file's frame k gives `%05d.png` of k.
    """

    has_annotations = False  # a user's video comes with its first-frame mask only

    def __init__(self, video: str | Path, mask: str | Path, name: str | None = None) -> None:
        self.video = Path(video)
        self.mask = Path(mask)
        if not self.video.exists():
            raise VOSInputError(f"video '{self.video}' does not exist; pass a folder of frames or a video file")
        read_mask(self.mask)  # fail now (missing file, RGB mask) rather than after decoding a whole video
        self.name = name or (self.video.name if self.video.is_dir() else self.video.stem)
        self.sequences = [self.name]
        self._frames: list[Path] | None = None
        self._tmp: Path | None = None
        self._cleanup = None
        if self.video.is_dir():
            # A mask stored next to the frames is not a frame.
            frames = [p for p in _list_files(self.video, _IMAGE_EXTS) if p.resolve() != self.mask.resolve()]
            if not frames:
                raise VOSInputError(f"folder '{self.video}' holds no frames (.jpg, .jpeg or .png files)")
            seen: dict[str, Path] = {}
            for frame in frames:
                if frame.stem in seen:
                    raise VOSInputError(
                        f"frames '{seen[frame.stem]}' and '{frame}' would both write the mask '{frame.stem}.png'; "
                        "keep one of them in the folder"
                    )
                seen[frame.stem] = frame
            self._frames = frames
        else:
            if self.video.suffix.lower() in _IMAGE_EXTS:
                raise VOSInputError(
                    f"'{self.video}' is a single image; pass the folder that holds all frames, or a video file"
                )
            cap = cv2.VideoCapture(str(self.video))
            ok = cap.isOpened() and cap.read()[0]
            cap.release()
            if not ok:
                raise VOSInputError(
                    f"cannot decode video '{self.video}'; extract its frames (e.g. `ffmpeg -i {self.video} "
                    f"frames/%05d.png`) and pass the folder instead"
                )

    def _extract(self) -> list[Path]:
        """Decode the video file into a temporary folder, one frame in memory at a time.

        A video that stops decoding before the frame count its container reports gets one warning line, not an
        error: that count is the header's (or duration x fps) and overstates on some complete files (trimmed MP4s
        with edit lists, audio longer than the video; opencv/opencv#16576), while every decoded frame is a real one.
        """
        self._tmp = Path(tempfile.mkdtemp(prefix=f"emvos_{self.name}_"))
        self._cleanup = weakref.finalize(self, shutil.rmtree, str(self._tmp), True)
        cap = cv2.VideoCapture(str(self.video))
        reported = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))  # 0 or less: the container does not say
        frames = []
        try:
            while True:
                ok, bgr = cap.read()
                if not ok:
                    break
                path = self._tmp / f"{len(frames):05d}.png"
                if not cv2.imwrite(str(path), bgr, [cv2.IMWRITE_PNG_COMPRESSION, 1]):
                    raise VOSInputError(f"cannot write extracted frame '{path}'; is the temporary disk full?")
                frames.append(path)
        finally:
            cap.release()
        if not frames:
            raise VOSInputError(f"video '{self.video}' has no decodable frames")
        if len(frames) < reported:
            print(
                f"warning: video '{self.video}' decoded {len(frames)} of the {reported} frames its container "
                f"reports, so it may be truncated or corrupt; masks are written for frames 00000..{len(frames) - 1:05d}"
                f" only. Check with `ffmpeg -v error -i {self.video} -f null -`, or extract the frames and pass the "
                "folder.",
                file=sys.stderr,
            )
        return frames

    def close(self) -> None:
        """Remove the temporary frame folder of a video file now (it is also removed at garbage collection)."""
        if self._cleanup is not None:
            self._cleanup()
            self._frames = None

    def videos(self, sequences: list[str] | None = None) -> Iterator[VideoReader]:
        """The one video, after checking that the mask has the frames' size."""
        for _ in _select(sequences, self.sequences, f"video '{self.video}'"):
            if self._frames is None:
                self._frames = self._extract()
            fh, fw = read_frame(self._frames[0]).shape[:2]
            mh, mw = read_mask(self.mask).shape
            if (fh, fw) != (mh, mw):
                raise VOSInputError(
                    f"mask '{self.mask}' is {mw}x{mh} but the first frame '{self._frames[0]}' is {fw}x{fh}; "
                    "the mask must be drawn on the first frame at its full size"
                )
            yield VideoReader(
                name=self.name,
                frames=list(self._frames),
                given_masks={0: self.mask},
                # the frame's own name: extracted frames are already named by their index
                output_names=[f.stem + ".png" for f in self._frames],
            )


# ----------------------------------------------------------------------------------------------------------------------
# Training side: clip samplers, as the official EMVOS loaders sample and augment clips
# ----------------------------------------------------------------------------------------------------------------------
#
# Every sampler draws from Python's `random` in the same order as the official loaders (video, reversal, h-flip,
# v-flip, start frame, then the crop tries; COCO: flips, image, then per frame the affine draws), so that, seeded
# like the official run, they draw the same clips from the same files.

SHORT_SIDE = 480  # every frame is resized to 480p before cropping, as the official loaders do
CROP_SCALE = (0.8, 1.25)  # crop area relative to the (480p) frame; draws above 1 never fit and count as failed tries
CROP_RATIO = (3 / 4, 4 / 3)
CROP_TRIES = 10  # tries on the first frame to find a crop where the chosen object is big enough
MIN_FG_PIXELS = 256  # ... big enough = at least this many pixels at the output size
COCO_FILL = (124, 116, 104)  # ImageNet mean colour: what the affine warp leaves outside the image
COCO_DEGREES, COCO_SCALE, COCO_SHEAR = 10.0, (0.9, 1.1), 10.0


def seed_worker(worker_id: int) -> None:
    """DataLoader `worker_init_fn`: seed `random` and numpy in each worker from its torch seed.

    torch gives worker k the seed base_seed + k, where base_seed comes from the (seeded) main-process generator;
    seeding the other generators from it makes every worker's clip stream reproducible and different.
    """
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)


def random_crop_params(
    width: int, height: int, scale: tuple[float, float] = CROP_SCALE, ratio: tuple[float, float] = CROP_RATIO
) -> tuple[int, int, int, int]:
    """A random crop (top, left, h, w) of a width x height frame, the official `random_crop_params`.

    RandomResizedCrop's rule: up to 10 draws of an area (scale x frame area) and a log-uniform aspect ratio; the
    first that fits is placed uniformly. Otherwise the largest centred crop whose aspect ratio lies in `ratio`.
    Note what this means for the official settings: a 16:9 frame at 480p (DAVIS, YouTube-VOS) never fits a draw
    (area >= 0.8 and aspect <= 4/3 need h >= 496 > 480), so every such clip gets the centred 640x480 crop; only
    frames near 4:3 (most COCO images) get random crops. Kept as is: it is what the published models saw.
    """
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = random.uniform(*scale) * area
        aspect = math.exp(random.uniform(*log_ratio))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return random.randint(0, height - h), random.randint(0, width - w), h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def _resize_short_side(img: Image.Image, mask: Image.Image) -> tuple[Image.Image, Image.Image]:
    """Short side to 480 (bicubic image, nearest mask); the long side truncated with int() as the official code."""
    w, h = img.size
    size = (SHORT_SIDE, int(SHORT_SIDE / w * h)) if h > w else (int(SHORT_SIDE / h * w), SHORT_SIDE)
    return img.resize(size, Image.BICUBIC), mask.resize(size, Image.NEAREST)


def _crop_ids(mask: Image.Image, crop: tuple[int, int, int, int], output_size: tuple[int, int]) -> np.ndarray:
    """Crop (top, left, h, w) of an id mask resized to output_size (H, W) with nearest neighbour."""
    top, left, h, w = crop
    return np.asarray(mask.crop((left, top, left + w, top + h)).resize(output_size[::-1], Image.NEAREST))


def _choose_crop_and_object(mask: Image.Image, output_size: tuple[int, int]) -> tuple[tuple[int, int, int, int], int]:
    """The clip's crop and target object, chosen on the first frame.

    Official behaviour: up to 10 crops; in each, an object is picked at random among those visible in the crop; stop
    at the first with >= 256 pixels, else keep the 10th. With no object in the crop the target is 0 (an empty mask,
    which the trainer skips).
    """
    for attempt in range(CROP_TRIES):
        crop = random_crop_params(*mask.size)
        ids = _crop_ids(mask, crop, output_size)
        visible = [int(i) for i in np.unique(ids) if i != 0]  # ascending, as torch.unique in the official code
        target = random.choice(visible) if visible else 0
        if (target != 0 and (ids == target).sum() >= MIN_FG_PIXELS) or attempt == CROP_TRIES - 1:
            return crop, target
    raise AssertionError("unreachable")


def make_clip(
    frames: Iterator[tuple[Image.Image, Image.Image]],
    output_size: tuple[int, int],
    h_flip: bool,
    v_flip: bool,
    info: dict | None = None,
) -> dict[str, torch.Tensor]:
    """Shared per-clip augmentation of (RGB image, id mask) pairs: 480p, shared flips, one crop, one target.

    `frames` is consumed lazily so that a pseudo-video (COCO) draws its per-frame warp after the first frame's crop,
    in the official order. Returns {'imgs': (L, 3, H, W) float in [0, 1], 'masks': (L, H, W) long, 1 = target}.
    A dict passed as `info` receives what was drawn: 'crop' (top, left, h, w) at 480p and 'target' (the object id),
    for visualize.preview_augmentation.
    """
    imgs, masks = [], []
    crop, target = None, 0
    for img, mask in frames:
        img, mask = _resize_short_side(img, mask)
        if h_flip:
            img, mask = img.transpose(Image.FLIP_LEFT_RIGHT), mask.transpose(Image.FLIP_LEFT_RIGHT)
        if v_flip:
            img, mask = img.transpose(Image.FLIP_TOP_BOTTOM), mask.transpose(Image.FLIP_TOP_BOTTOM)
        if crop is None:
            crop, target = _choose_crop_and_object(mask, output_size)
            if info is not None:
                info.update(crop=crop, target=target)
        top, left, h, w = crop
        img = img.crop((left, top, left + w, top + h)).resize(output_size[::-1], Image.BICUBIC)
        imgs.append(torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1))  # (3, H, W)
        ids = _crop_ids(mask, crop, output_size)
        masks.append(torch.from_numpy((ids == target) & (target != 0)).long())  # (H, W)
    return {"imgs": torch.stack(imgs), "masks": torch.stack(masks)}


def _load_pair(frame: Path, mask: Path, binary: bool = False) -> tuple[Image.Image, Image.Image]:
    """An RGB frame and its id mask (void 255 already 0, which the official code does after the transforms: the
    same, since nearest-neighbour resizing, flips and crops create no new values)."""
    return Image.fromarray(read_frame(frame)), Image.fromarray(read_mask(mask, binary=binary))


def _video_clip(
    frames: list[Path], masks: list[Path], clip_len: int, output_size: tuple[int, int], binary: bool = False
) -> dict[str, torch.Tensor]:
    """One training clip from a video whose frames are all annotated (official TrainDAVIS / TrainYTVOS sampling)."""
    if random.random() > 0.5:  # play the video backwards
        frames, masks = frames[::-1], masks[::-1]
    h_flip = random.random() > 0.5
    v_flip = random.random() > 0.5
    # Consecutive frames from a random start; at the end of the video the last frame repeats.
    start = random.sample(range(len(frames)), 1)[0]
    ids = [min(start + i, len(frames) - 1) for i in range(clip_len)]
    pairs = (_load_pair(frames[i], masks[i], binary) for i in ids)
    return make_clip(pairs, output_size, h_flip, v_flip)


def check_videos(videos: Iterator[tuple[str, list[Path]]], where: str, binary: bool = False) -> None:
    """Refuse, before the first training step, video data that could only give skipped batches or crash later.

    videos: (name, mask files) for every video a sampler draws from; where: the root and split, for the message. A
    video with no mask file, an empty list of videos, and data whose masks hold no object at all (every batch
    would be skipped by the official rule) are errors. Masks are read until one with an object is found per video,
    so a normal dataset costs one mask read per video.
    """
    names, without_masks, empty = [], [], []
    for name, masks in videos:
        names.append(name)
        if not masks:
            without_masks.append(name)
        elif not any(read_mask(m, binary=binary).any() for m in masks):
            empty.append(name)
    if not names:
        raise VOSInputError(f"{where} lists no videos to train on; check the split list (ImageSets/) or the folder")
    if without_masks:
        raise VOSInputError(f"{where}: {len(without_masks)} video(s) have no mask files ({', '.join(without_masks[:5])}"
                            f"{', ...' if len(without_masks) > 5 else ''}); re-extract the annotations or take them "
                            f"out of the split list")
    if len(empty) == len(names):
        raise VOSInputError(f"{where}: every mask of its {len(names)} video(s) is empty (no object, all pixels 0), so "
                            f"no training clip has a target and every batch would be skipped; these are not the "
                            f"annotations (check that Annotations/ holds the object masks)")


class ClipSampler(Dataset):
    """What every clip sampler shares: `clips_per_epoch` random clips of `clip_len` frames at `output_size`; the
    index only counts clips (the official loaders draw the video at random for every item)."""

    def __init__(self, output_size: tuple[int, int], clip_len: int, clips_per_epoch: int) -> None:
        self.output_size = tuple(output_size)
        self.clip_len = clip_len
        self.clips_per_epoch = clips_per_epoch

    def __len__(self) -> int:
        return self.clips_per_epoch


class TrainDAVIS(ClipSampler):
    """Clips of DAVIS (2017 train by default) on either download layout; year 2016 merges the objects into one."""

    def __init__(
        self,
        root: str | Path,
        year: str = "2017",
        split: str = "train",
        output_size: tuple[int, int] = (384, 384),
        clip_len: int = 10,
        clips_per_epoch: int = 128,
    ) -> None:
        self.data = DAVIS(root, year=year, split=split)
        if not self.data.has_annotations:
            raise VOSInputError("DAVIS test-dev has no training annotations; pass split='train'")
        super().__init__(output_size, clip_len, clips_per_epoch)

    def check(self) -> None:
        """Refuse data that cannot train (check_videos), before the first step."""
        check_videos(((s, self.data.annotations(s)) for s in self.data.sequences),
                     f"DAVIS {self.data.year} {self.data.split} at '{self.data.root}'", self.data.binary)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        """A random clip; `index` only counts clips (the official loader draws the video at random too)."""
        seq = random.choice(self.data.sequences)
        return _video_clip(
            self.data.frames(seq), self.data.annotations(seq), self.clip_len, self.output_size, self.data.binary
        )


class TrainYTVOS(ClipSampler):
    """Clips of YouTube-VOS train: `train/JPEGImages/<video>` with masks in `train/Annotations/<video>`.

    Only annotated frames are used (every 5th frame of the original video), so consecutive clip frames are 5 video
    frames apart, as in the official loader, which pairs the sorted image and mask lists of `train/`.
    """

    def __init__(
        self,
        root: str | Path,
        output_size: tuple[int, int] = (384, 384),
        clip_len: int = 10,
        clips_per_epoch: int = 128,
    ) -> None:
        self.root = Path(root)
        self.image_dir = self.root / "train" / "JPEGImages"
        self.mask_dir = self.root / "train" / "Annotations"
        for folder in (self.image_dir, self.mask_dir):
            if not folder.is_dir():
                raise VOSInputError(
                    f"YouTube-VOS root '{self.root}' has no train/{folder.name}; pass --ytvos PATH (the folder that "
                    "holds train/ of the YouTube-VOS 2018 download, train.zip)"
                )
        meta = self.root / "train" / "meta.json"
        if meta.is_file():
            try:
                self.videos = sorted(json.loads(meta.read_text())["videos"])
            except (ValueError, KeyError, TypeError) as e:
                raise VOSInputError(
                    f"'{meta}' is not a YouTube-VOS meta.json ({e}); re-download it or delete it "
                    "to use the folder listing"
                ) from e
        else:
            self.videos = sorted(p.name for p in self.mask_dir.iterdir() if p.is_dir())
        if not self.videos:
            raise VOSInputError(f"'{self.mask_dir}' holds no videos; re-extract the YouTube-VOS train download")
        super().__init__(output_size, clip_len, clips_per_epoch)

    def annotated_frames(self, video: str) -> tuple[list[Path], list[Path]]:
        """(frames, masks) of the annotated frames of `video`, in order."""
        masks = {p.stem: p for p in _list_files(self.mask_dir / video, {".png"})}
        frames = [f for f in _list_files(self.image_dir / video, {".jpg"}) if f.stem in masks]
        if not frames:
            raise VOSInputError(
                f"video '{video}' has no frame in '{self.image_dir / video}' with a mask in '{self.mask_dir / video}'; "
                "re-extract the YouTube-VOS train download"
            )
        return frames, [masks[f.stem] for f in frames]

    def check(self) -> None:
        """Refuse data that cannot train (check_videos), before the first step."""
        masks = ((v, sorted(_list_files(self.mask_dir / v, {".png"}))) for v in self.videos)
        check_videos(masks, f"YouTube-VOS train at '{self.root}'")

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        """A random clip; `index` only counts clips."""
        video = random.choice(self.videos)
        return _video_clip(*self.annotated_frames(video), self.clip_len, self.output_size)


class TrainCOCO(ClipSampler):
    """COCO images as pseudo-videos: each further frame is a cumulative random affine warp of the first.

    Accepts the converted folder the official code expects (`JPEGImages/*.jpg` + `Annotations/*.png` of instance
    ids) or the COCO download (`train2017/` + `annotations/instances_train2017.json`), decoded with pycocotools.

    From the raw download, crowd annotations (iscrowd=1) are left out: their pixels are background. A crowd region
    covers many people at once and is no single object to track, so it should never become the target, and the
    target-vs-rest mask makes every non-target pixel 0 anyway. Images without any non-crowd instance are skipped
    (their clips would be empty and the trainer would skip them). Instances are painted largest first, so an object
    lying on a bigger one stays visible.
    """

    def __init__(
        self,
        root: str | Path,
        output_size: tuple[int, int] = (384, 384),
        clip_len: int = 5,
        clips_per_epoch: int = 128,
        image_set: str = "train2017",
    ) -> None:
        self.root = Path(root)
        super().__init__(output_size, clip_len, clips_per_epoch)
        if (self.root / "JPEGImages").is_dir() and (self.root / "Annotations").is_dir():
            self.layout = "converted"
            self.images = _list_files(self.root / "JPEGImages", {".jpg"})
            if not self.images:
                raise VOSInputError(f"'{self.root / 'JPEGImages'}' holds no .jpg images; re-run the COCO conversion")
        elif (self.root / "annotations").is_dir() or (self.root / image_set).is_dir():
            self.layout = "raw"
            self._read_instances(image_set)
        else:
            raise VOSInputError(
                f"COCO root '{self.root}' has neither JPEGImages/ + Annotations/ (the converted folder of the official "
                f"code) nor {image_set}/ + annotations/instances_{image_set}.json (the cocodataset.org download); "
                "pass --coco PATH"
            )

    def _read_instances(self, image_set: str) -> None:
        """Keep, per image, only what decoding needs: size and the non-crowd segmentations, polygons as arrays
        (the raw json as Python lists takes several GB, copied into every DataLoader worker)."""
        ann_file = self.root / "annotations" / f"instances_{image_set}.json"
        self.image_dir = self.root / image_set
        if not ann_file.is_file():
            raise VOSInputError(
                f"COCO annotation file '{ann_file}' does not exist; download annotations_trainval2017"
                ".zip from cocodataset.org and unzip it into the COCO root (--coco PATH)"
            )
        if not self.image_dir.is_dir():
            raise VOSInputError(
                f"COCO image folder '{self.image_dir}' does not exist; download {image_set}.zip from "
                "cocodataset.org and unzip it into the COCO root (--coco PATH)"
            )
        try:
            data = json.loads(ann_file.read_text())
            infos = {im["id"]: (im["file_name"], im["height"], im["width"]) for im in data["images"]}
            per_image: dict[int, list[tuple[float, object]]] = {}
            for ann in data["annotations"]:
                if ann.get("iscrowd", 0):
                    continue
                seg = ann["segmentation"]
                if isinstance(seg, list):
                    seg = [np.asarray(poly, dtype=np.float64) for poly in seg if len(poly) >= 6]  # >= 3 points
                    if not seg:
                        continue
                per_image.setdefault(ann["image_id"], []).append((float(ann.get("area", 0.0)), seg))
        except (ValueError, KeyError, TypeError) as e:
            raise VOSInputError(f"'{ann_file}' is not a COCO instances file ({e}); re-download it") from e
        del data
        self.image_ids = sorted(i for i in per_image if i in infos)
        if not self.image_ids:
            raise VOSInputError(f"'{ann_file}' has no non-crowd instance annotations")
        self._infos = {i: infos[i] for i in self.image_ids}
        # Largest first, so that smaller instances are painted over the bigger ones they lie on.
        self._segs = {i: [s for _, s in sorted(per_image[i], key=lambda a: -a[0])] for i in self.image_ids}

    @property
    def num_images(self) -> int:
        """How many images clips are drawn from."""
        return len(self.images) if self.layout == "converted" else len(self.image_ids)

    def check(self) -> None:
        """Refuse data that cannot train, before the first step. The raw download keeps only images with an
        instance (checked when it is read); the converted folder needs an Annotations/ PNG per image and at least
        one mask with an object (read until one is found)."""
        if self.layout == "converted":
            masks = [self.root / "Annotations" / (image.stem + ".png") for image in self.images]
            missing = [m for m in masks if not m.is_file()]
            if missing:
                raise VOSInputError(f"COCO root '{self.root}': {len(missing)} image(s) have no mask ({missing[0]}, "
                                    f"...); re-run the conversion")
            check_videos(iter([("COCO", masks)]), f"COCO at '{self.root}'")

    def load(self, k: int) -> tuple[Image.Image, Image.Image]:
        """Image k (RGB) and its instance-id mask (mode L)."""
        if self.layout == "converted":
            image = self.images[k]
            mask = self.root / "Annotations" / (image.stem + ".png")
            return _load_pair(image, mask)
        from pycocotools import mask as mask_utils  # only the raw download needs pycocotools

        image_id = self.image_ids[k]
        file_name, h, w = self._infos[image_id]
        ids = np.zeros((h, w), np.uint8)
        for obj, seg in enumerate(self._segs[image_id][:255], 1):  # ids must fit in a uint8 mask
            if isinstance(seg, list):
                rle = mask_utils.merge(mask_utils.frPyObjects(seg, h, w))
            elif isinstance(seg["counts"], list):  # uncompressed RLE
                rle = mask_utils.frPyObjects(seg, h, w)
            else:
                rle = seg
            ids[mask_utils.decode(rle) > 0] = obj
        img = read_frame(self.image_dir / file_name)
        if img.shape[:2] != (h, w):
            raise VOSInputError(
                f"COCO image '{self.image_dir / file_name}' is {img.shape[1]}x{img.shape[0]}, the "
                f"annotations say {w}x{h}; re-download {self.image_dir.name}"
            )
        return Image.fromarray(img), Image.fromarray(ids)

    def _pseudo_video(self, k: int) -> Iterator[tuple[Image.Image, Image.Image]]:
        """Frames of one image, each warped by the sum (product for scale) of all affine draws so far.

        As in the official code, even the first frame is warped, the warp applies at the original image size
        (before 480p), and both image and mask are resampled with nearest neighbour (torchvision's default).
        """
        # imported here: torchvision brings in torch._dynamo and triton (160 MiB), which the test side does not need
        import torchvision.transforms.functional as TF  # noqa: N812
        from torchvision.transforms import InterpolationMode

        img0, mask0 = self.load(k)
        angle, scale, shear = 0.0, 1.0, (0.0, 0.0)
        for _ in range(self.clip_len):
            d_angle = random.uniform(-COCO_DEGREES, COCO_DEGREES)
            random.uniform(-0.0, 0.0), random.uniform(-0.0, 0.0)  # the official draws a (zero) translation
            d_scale = random.uniform(*COCO_SCALE)
            d_shear = (random.uniform(-COCO_SHEAR, COCO_SHEAR), random.uniform(-COCO_SHEAR, COCO_SHEAR))
            angle, scale, shear = angle + d_angle, scale * d_scale, (shear[0] + d_shear[0], shear[1] + d_shear[1])
            img = TF.affine(img0, angle, [0, 0], scale, list(shear), InterpolationMode.NEAREST, fill=list(COCO_FILL))
            mask = TF.affine(mask0, angle, [0, 0], scale, list(shear), InterpolationMode.NEAREST, fill=0)
            yield img, mask

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        """A random pseudo-video clip; `index` only counts clips."""
        h_flip = random.random() > 0.5
        v_flip = random.random() > 0.5
        k = random.choice(range(self.num_images))
        return make_clip(self._pseudo_video(k), self.output_size, h_flip, v_flip)


# ----------------------------------------------------------------------------------------------------------------------
# Training side: VideoMatch as the public PyTorch port trains it (stashvala/Pytorch-VideoMatch: davis.py, preprocess.py)
# ----------------------------------------------------------------------------------------------------------------------

PORT_SIZE = (480, 854)  # the port's --input_image_shape (H, W)
PORT_CROP = (0.85, 0.95)  # crop side as a share of the frame's, aspect kept
PORT_SCALE = (0.9, 1.1)  # zoom about the centre, canvas kept
HELDOUT_SHARE = 0.0025  # the port's --validation_size: pairs held out to select the model on
HELDOUT_SEED = 0  # the held-out pairs depend on this only, so every run (and a resumed one) holds out the same


@dataclass
class PortAugmentation:
    """The port's training augmentation of one frame (preprocess.FrameAugmentor with RandomAugment, p = 0.5).

    The three operations run in a random order, each with probability `p` (the port's `random() > p`):
    horizontal flip; a random crop of `crop` of each side (aspect kept); a zoom by a factor in `scale` about the
    centre on the same canvas (torchvision's affine, nearest neighbour, black where the zoom leaves the frame, as
    the port). Then the frame is resized to `output_size` (bilinear; the mask nearest).

    The port's crop rule is kept: a frame that is not larger than the output in both sides is never cropped, and the
    crop never goes below the output size (the lower bound rises to the output/frame ratio). At its default size
    (480x854) on 480p DAVIS frames that means no crop at all; `crop_any_size` crops such frames too, from the full
    `crop` range, and upsamples (not the port).

    Departures from the port that change no distribution: every draw comes from Python's `random` (the port draws
    crop positions and zoom factors from torch), so `seed_worker` makes them reproducible; the mask is resized with
    nearest neighbour (the port resizes mode-L DAVIS 2016 masks bilinearly and keeps >= 1, a pixel wider).
    """

    output_size: tuple[int, int] = PORT_SIZE  # (H, W)
    crop: tuple[float, float] = PORT_CROP
    scale: tuple[float, float] = PORT_SCALE
    p: float = 0.5  # each operation's probability
    crop_any_size: bool = False

    def __call__(self, img: Image.Image, mask: Image.Image) -> tuple[Image.Image, Image.Image]:
        img, mask, _ = self.apply(img, mask)
        return img, mask

    def apply(self, img: Image.Image, mask: Image.Image) -> tuple[Image.Image, Image.Image, list[str]]:
        """(RGB frame, id mask) -> the augmented pair at output_size and what was done, e.g. ['crop 0.91', 'flip']."""
        ops = [self._flip, self._crop, self._scale]
        random.shuffle(ops)
        done = []
        for op in ops:
            if random.random() > self.p:
                img, mask, what = op(img, mask)
                if what:
                    done.append(what)
        size = self.output_size[::-1]  # PIL sizes are (W, H)
        return img.resize(size, Image.BILINEAR), mask.resize(size, Image.NEAREST), done

    def _flip(self, img: Image.Image, mask: Image.Image) -> tuple[Image.Image, Image.Image, str]:
        return img.transpose(Image.FLIP_LEFT_RIGHT), mask.transpose(Image.FLIP_LEFT_RIGHT), "flip"

    def _crop(self, img: Image.Image, mask: Image.Image) -> tuple[Image.Image, Image.Image, str]:
        w, h = img.size
        out_h, out_w = self.output_size
        if self.crop_any_size:
            low = self.crop[0]
        elif h <= out_h or w <= out_w:
            return img, mask, ""  # the port skips it (with a warning)
        else:
            low = max(self.crop[0], min(out_h / h, out_w / w, self.crop[1]))
        share = random.uniform(low, self.crop[1])
        ch, cw = int(h * share), int(w * share)
        top, left = random.randint(0, h - ch), random.randint(0, w - cw)
        box = (left, top, left + cw, top + ch)
        return img.crop(box), mask.crop(box), f"crop {share:.2f}"

    def _scale(self, img: Image.Image, mask: Image.Image) -> tuple[Image.Image, Image.Image, str]:
        import torchvision.transforms.functional as TF  # noqa: N812 -- training only; its import holds 160 MiB
        from torchvision.transforms import InterpolationMode

        factor = random.uniform(*self.scale)

        def zoom(x: Image.Image) -> Image.Image:
            return TF.affine(x, 0.0, [0, 0], factor, [0.0, 0.0], InterpolationMode.NEAREST, fill=0)

        return zoom(img), zoom(mask), f"zoom {factor:.2f}"


def _to_tensors(img: Image.Image, ids: np.ndarray, target: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(3, H, W) float RGB in [0, 1] and the (H, W) long mask of `target` (0 = none: an empty mask)."""
    rgb = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)
    return rgb, torch.from_numpy((ids == target) & (target != 0)).long()


class TrainPairs(Dataset):
    """Every pair of frames (i < j) of every sequence of a DAVIS split, each pair exactly once per epoch (with the
    trainer's shuffled sampler): the port's PairSampler (itertools.combinations of each sequence's frames), any gap.

    Item k is {'imgs': (2, 3, H, W), 'masks': (2, H, W)}: frame i with its mask (the reference), frame j with its
    mask (the target), each frame augmented on its own by `augment` (the port draws the two frames' augmentations
    independently). Year 2016 (the port's) has one object; on multi-object masks (2017) the target is an object of
    the reference frame drawn at random (the port merges all objects into one, its DAVIS 2016 only rule).

    `heldout` of the pairs (the port's 0.25 %, at least one when the share is positive) are set aside, chosen by
    HELDOUT_SEED alone: they are not items, and `heldout_pair(k)` gives them without augmentation (only resized) for
    the model selection (trainer.validate_pairs). As in the port the split is by pair, so held-out frames also appear
    in training pairs with other partners: the held-out IoU measures matching across new frame pairs, not new videos.
    """

    def __init__(
        self,
        root: str | Path,
        year: str = "2016",
        split: str = "train",
        output_size: tuple[int, int] = PORT_SIZE,
        heldout: float = HELDOUT_SHARE,
        augment: PortAugmentation | None = None,
    ) -> None:
        self.data = DAVIS(root, year=year, split=split)
        if not self.data.has_annotations:
            raise VOSInputError("DAVIS test-dev has no training annotations; pass split='train'")
        if not 0 <= heldout < 1:
            raise VOSInputError(f"the held-out share of pairs must be in [0, 1), got {heldout}")
        self.output_size = tuple(output_size)
        self.augment = augment if augment is not None else PortAugmentation(self.output_size)
        self.videos = [(self.data.frames(s), self.data.annotations(s)) for s in self.data.sequences]
        pairs = [(v, i, j) for v, (frames, _) in enumerate(self.videos) for i, j in combinations(range(len(frames)), 2)]
        if not pairs:
            raise VOSInputError(f"DAVIS {year} {split} at '{root}' has no sequence with two frames to pair")
        count = max(1, math.floor(heldout * len(pairs))) if heldout > 0 else 0
        held = set(random.Random(HELDOUT_SEED).sample(range(len(pairs)), count))
        self.pairs = [p for k, p in enumerate(pairs) if k not in held]
        self.heldout_pairs = [pairs[k] for k in sorted(held)]

    def __len__(self) -> int:
        return len(self.pairs)

    def check(self) -> None:
        """Refuse data that cannot train (check_videos), before the first step."""
        check_videos(((s, masks) for s, (_, masks) in zip(self.data.sequences, self.videos, strict=True)),
                     f"DAVIS {self.data.year} {self.data.split} at '{self.data.root}'", self.data.binary)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return self._sample(self.pairs[index], augment=True)

    def heldout_pair(self, k: int) -> dict[str, torch.Tensor]:
        """Held-out pair k, resized to output_size without augmentation; the target is the lowest object id."""
        return self._sample(self.heldout_pairs[k], augment=False)

    def pair_names(self, index: int) -> tuple[str, int, int]:
        """(sequence, i, j) of training item `index`."""
        v, i, j = self.pairs[index]
        return self.data.sequences[v], i, j

    def _sample(self, pair: tuple[int, int, int], augment: bool) -> dict[str, torch.Tensor]:
        v, i, j = pair
        frames, masks = self.videos[v]
        loaded = []
        for k in (i, j):
            img, mask = _load_pair(frames[k], masks[k], self.data.binary)
            if augment:
                img, mask = self.augment(img, mask)
            else:
                size = self.output_size[::-1]
                img, mask = img.resize(size, Image.BILINEAR), mask.resize(size, Image.NEAREST)
            loaded.append((img, np.asarray(mask)))
        ids = [int(x) for x in np.unique(loaded[0][1]) if x != 0]
        target = (random.choice(ids) if augment else ids[0]) if ids else 0
        imgs, out = zip(*(_to_tensors(img, m, target) for img, m in loaded), strict=True)
        return {"imgs": torch.stack(imgs), "masks": torch.stack(out)}
