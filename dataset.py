"""Datasets on disk (DAVIS 2016 / 2017, YouTube-VOS 2018 / 2019, a user's video): where they are (`Roots`, read by
training and testing alike) and the test-time video readers.

Test side: a `Layout` per benchmark (`DAVIS`, `YouTubeVOS`, `SingleVideo`) yields one `VideoReader` per video. The
reader holds file paths only and knows the frame order, the masks given at each frame, the official test-time size
(`official_size`) and the size masks are written at, and the output files; inference.segment_video runs any of them
one frame at a time, so no reader ever holds a whole video in memory.

The training samplers are in samplers.py.

Every unusable input raises `utils.VOSInputError` naming the file or flag and the fix.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import tempfile
import weakref
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from utils import VOSInputError, read_frame, read_mask, save_mask, why_no_object

# ----------------------------------------------------------------------------------------------------------------------
# Test side
# ----------------------------------------------------------------------------------------------------------------------


# Where the datasets are by default (run.py re-exports these as editable constants; the flags override them).
DAVIS_ROOT = "../DB/DAVIS"
YTVOS18_ROOT = "../DB/YTVOS18"
YTVOS19_ROOT = "../DB/YTVOS19"
COCO_ROOT = "../DB/COCO"


@dataclass(frozen=True)
class Roots:
    """Where the data and the checkpoints are, for training (trainer.train) and testing (inference.segment_benchmarks).
    run.py fills it from its flags and the editable *_ROOT constants at its top (`run.roots`). A field that a run.py
    flag sets is named after that flag, so that a message about a missing root can name it (methods.StageData.root).
    None: not given; a training stage or a --data key that reads it is then refused before any work, naming its flag
    (`sample`, which has none, by its name)."""

    davis: str | Path | None = None  # DAVIS (2017 layout or the original DAVIS 2016 download); also the validation set
    ytvos: str | Path | None = None  # YouTube-VOS 2018: its train/ for training, valid/ for --data YTVOS18_val
    ytvos19: str | Path | None = None  # YouTube-VOS 2019, for --data YTVOS19_val (run.py's --ytvos sets it too)
    coco: str | Path | None = None  # COCO (the converted folder or the cocodataset.org download)
    mose: str | Path | None = None  # holds valid/
    lvos: str | Path | None = None  # holds valid/ and test/
    sav: str | Path | None = None  # holds sav_val/ and sav_test/
    generic: str | Path | None = None  # holds JPEGImages/<video>/ and Annotations/<video>/
    sample: Path | None = None  # the bundled DAVIS 2016 sample, for --data sample (no flag: run.py's SAMPLE_ROOT)
    # the authors' files are fetched here and the default checkpoint is read from here (no flag: run.py's
    # TRAINED_MODEL); None: methods.TRAINED_MODEL
    trained_model: Path | None = None


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
            raise VOSInputError(f"first-frame mask {self.given_masks[0]} has no object "
                                f"{why_no_object(self.given_masks[0])}")
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

    root: Path  # the dataset's folder
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

    def inputs(self, sequences: list[str] | None = None) -> list[Path]:
        """The files and folders a run on these videos reads (frames, given masks, ground truth), which no output may
        overwrite: the dataset root (`self.root`, which every benchmark reader sets) unless a reader says more."""
        return [self.root]


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


def frame_files(folder: Path) -> list[Path]:
    """The frames (.jpg, .jpeg, .png) in a folder, hidden files skipped, in natural order ('2' before '10')."""
    return _list_files(folder, _IMAGE_EXTS)


def _list_folders(folder: Path) -> list[str]:
    """Names of the visible sub-folders of `folder`, sorted (one per video), each a plain name."""
    return sorted(plain_name(p.name, folder) for p in folder.iterdir() if not _hidden(p) and p.is_dir())


def plain_name(name: str, source: str | Path) -> str:
    """`name` (a sequence or video name read from `source`: a split list, a meta.json, a folder), checked to be one
    plain file name: outputs are written to `<output>/<name>/`, so a name with a separator, '..' or an absolute path
    would write (or overwrite) files outside the output folder. Every reader calls this on the names it reads."""
    if not name or name in (".", "..") or any(c in name for c in ("/", "\\", "\0")) or Path(name).is_absolute():
        raise VOSInputError(
            f"'{source}' names the video {name!r}, which is not a plain folder name (no '/', '\\', '..', not empty "
            "and not absolute); fix or re-download that file"
        )
    return name


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
            frames, annos = self._pairs.setdefault(plain_name(frame.parent.name, self.list_path), ([], []))
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
            listed = [plain_name(s.strip(), path) for s in path.read_text().splitlines() if s.strip()]
            seqs += [s for s in listed if s not in seqs]
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
        self._convention_checked = False

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
        gt = {seq: self._files(seq)[1] for seq in self._select(sequences)}
        self._check_mask_convention({seq: masks[0] for seq, masks in gt.items()})
        return gt

    def _check_mask_convention(self, first_masks: dict[str, Path]) -> None:
        """Refuse black/white masks where DAVIS 2017 reads object ids: decided once for the root, on the first-frame
        masks of the sequences to run, before any frame.

        A grayscale (L) mask holding only 0 and 255 is how the DAVIS 2016 download stores its one object. In the
        2017 protocol pixel values are object ids and 255 is void: the runner would still see object 1 (read_mask's
        black/white rule) while the official scorer finds no object, after the whole run. Year 2016 merges every
        object into one (masks != 0) and reads such masks correctly."""
        if self.binary or self._convention_checked:
            return
        for seq, path in first_masks.items():
            if not path.is_file():
                continue  # videos() names the missing first mask
            with Image.open(path) as img:
                if img.mode != "L":
                    continue
                values = np.unique(np.asarray(img))
            if 255 in values and set(values.tolist()) <= {0, 255}:
                raise VOSInputError(
                    f"DAVIS root '{self.root}' holds black/white masks (grayscale 0/255, the DAVIS 2016 download's "
                    f"format), e.g. '{path}' of {seq}; DAVIS {self.year} reads pixel values as object ids and 255 as "
                    "void, so it would score no object: run DAVIS 2016 on it (run.py --data DAVIS16_val, "
                    "evaluation.py --year 2016), or rewrite the masks as palette PNGs with ids 1, 2, ... "
                    "(utils.save_mask)"
                )
        self._convention_checked = True

    def inputs(self, sequences: list[str] | None = None) -> list[Path]:
        """The root, and the folders the frames and annotations of these sequences really are in (symlinks
        resolved: a sequence folder may link to another disk)."""
        folders = {self.root}
        for seq in self._select(sequences):
            for paths in self._files(seq):
                folders |= {Path(os.path.realpath(p)).parent for p in paths}
        return sorted(folders)

    def videos(self, sequences: list[str] | None = None) -> Iterator[VideoReader]:
        """The test videos (all, or the named subset in that order); the first frame's mask is the given one."""
        selected = self._select(sequences)
        self._check_mask_convention({seq: self._files(seq)[1][0] for seq in selected})  # before the first frame
        for seq in selected:
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

    def inputs(self, sequences: list[str] | None = None) -> list[Path]:
        """The root and the three folders read (each may be a link to another disk)."""
        return [self.root] + [Path(os.path.realpath(p)) for p in (self.image_dir, self.mask_dir, self.all_frames_dir)]

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

    def inputs(self, sequences: list[str] | None = None) -> list[Path]:
        """The video (a folder of frames or a file), every frame in a folder (a frame may link elsewhere) and the
        mask."""
        frames = self._frames if self.video.is_dir() and self._frames is not None else []
        return [self.video, self.mask, *frames]

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
