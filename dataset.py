"""Datasets on disk: where they are (`Roots`, read by training and testing alike), the test-time interface every
dataset module implements, and a user's own video (`SingleVideo`).

Test side: a `Layout` per dataset yields one `VideoReader` per video. The reader holds file paths only and knows the
frame order, the masks given at each frame, the official test-time size (`official_size`) and the size masks are
written at, and the output files; segmenter.segment_video runs any of them one frame at a time, so no reader ever
holds a whole video in memory. The layouts of the benchmarks (DAVIS, YouTube-VOS and the others), with their
--data keys and scoring, are the modules of benchmarks/, listed by benchmarks.registry.

The training samplers are in training/samplers.py.

Every unusable input raises `utils.VOSInputError` naming the file or flag and the fix.
"""

from __future__ import annotations

import re
import shutil
import sys
import tempfile
import weakref
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, fields
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from utils import VOSInputError, read_frame, read_mask, save_mask, why_no_object

if TYPE_CHECKING:
    from benchmarks.common import TestScoring

# ----------------------------------------------------------------------------------------------------------------------
# Test side
# ----------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Roots:
    """Where the data and the checkpoints are, for training (trainer.train) and testing (inference.segment_benchmarks).
    run.py fills it from its flags and the editable *_ROOT constants at its top (`run.roots`). A root that a run.py
    flag sets is named after that flag, so that a message about a missing root can name it (methods.StageData.root,
    benchmarks.registry.open_layout). None: not given; a training stage or a --data key that reads it is then refused
    before any work, naming its flag (`sample`, which has none, by its name)."""

    davis: str | Path | None = None  # DAVIS (2017 layout or the original DAVIS 2016 download); also the validation set
    ytvos: str | Path | None = None  # YouTube-VOS 2018: its train/ for training, valid/ for --data YTVOS18_val
    ytvos19: str | Path | None = None  # YouTube-VOS 2019, for --data YTVOS19_val (run.py's --ytvos sets it too)
    coco: str | Path | None = None  # COCO (the converted folder or the cocodataset.org download)
    sample: Path | None = None  # the bundled DAVIS 2016 sample, for --data sample (no flag: run.py's SAMPLE_ROOT)
    # the authors' files are fetched here and the default checkpoint is read from here (no flag: run.py's
    # TRAINED_MODEL); None: methods.TRAINED_MODEL
    trained_model: Path | None = None
    # the roots of the test benchmarks whose flag run.py generates from benchmarks.registry: {flag name: folder}
    benchmarks: Mapping[str, str | Path | None] = field(default_factory=dict)

    def get(self, name: str) -> str | Path | None:
        """The root named `name`: a field above, else the benchmark root of that flag (None when not given)."""
        if name in {f.name for f in fields(self)} - {"benchmarks"}:
            return getattr(self, name)
        return self.benchmarks.get(name)


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
    video in memory. The driver (segmenter.segment_video) asks, for each index: `image` (the frame as on disk),
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


@dataclass
class StartingVideo(VideoReader):
    """A video whose given masks give only the objects that start there: a later mask of a tracked object is ground
    truth to predict, not a correction (a benchmark whose masks hold every object in every frame, or a held-out
    video of one's own, would otherwise give the answer away)."""

    starting: dict[int, list[int]] = field(default_factory=dict)  # frame index -> ids of the objects that start there

    def load_mask(self, index: int) -> np.ndarray:
        mask = read_mask(self.given_masks[index])
        return np.where(np.isin(mask, self.starting[index]), mask, 0).astype(mask.dtype)


class Layout:
    """A test-time dataset on disk: its video names, and one `VideoReader` per video.

    A benchmark is one subclass: it sets `sequences` (and `binary`, `has_annotations`, `submission_prefix` where
    they differ) and implements `videos`; `ground_truth` where the split has masks of every frame, `scoring` where
    run.py --test scores it.
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
        """{video: ground-truth mask of every frame}, where the split has it on disk."""
        raise VOSInputError(f"{type(self).__name__} has no ground truth on disk")

    def scoring(self, key: str, out_dir: Path, videos: list[str]) -> TestScoring | None:
        """How run.py --test (--data `key`) scores these `videos` once segmented into out_dir, built and checked
        before any frame runs; None: nothing to score on disk (the default)."""
        return None

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


def _list_files(folder: Path, exts: set[str], skip: Path | None = None) -> list[Path]:
    """Visible files in `folder` whose suffix (case-insensitive) is in `exts`, but `skip` (a mask stored beside
    its frames), naturally sorted; [] if the folder is absent.

    Every frame and mask listing of the readers goes through here, so two files of one name ('00001.jpg' beside
    '00001.JPG', '00002.jpg' beside '00002.png') are refused for all of them: both frames would run and write the
    one mask '00001.png', the later overwriting the earlier, and a frame's given mask is found by that name."""
    if not folder.is_dir():
        return []
    skipped = skip.resolve() if skip is not None else None
    files = sorted((p for p in folder.iterdir() if not _hidden(p) and p.is_file() and p.suffix.lower() in exts
                    and (skipped is None or p.resolve() != skipped)), key=_natural_key)
    seen: dict[str, Path] = {}
    for path in files:
        if path.stem in seen:
            first, second = sorted((seen[path.stem], path))
            raise VOSInputError(
                f"'{first}' and '{second}' share the name '{path.stem}', and frames, masks and the masks written "
                f"('{path.stem}.png') are matched by name, so one would overwrite or stand in for the other; keep one "
                f"of them in '{folder}'"
            )
        seen[path.stem] = path
    return files


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


def need_part(path: Path, flag: str, root: Path, holds: str) -> Path:
    """`path` if it exists; else the one-line refusal of the root given with `flag`, naming the missing part."""
    if not path.exists():
        raise VOSInputError(f"{flag} {root} has no {path.relative_to(root)}; pass the folder that holds {holds}")
    return path


def video_frames(folder: Path, exts: Iterable[str] = (".jpg",)) -> list[Path]:
    """The frames of one video folder (`exts`, naturally sorted); a folder without any is refused."""
    frames = _list_files(folder, set(exts))
    if not frames:
        raise VOSInputError(f"'{folder}' holds no {'/'.join(sorted(exts))} frames; re-extract the video")
    return frames


def _select(requested: list[str] | None, available: list[str], what: str) -> list[str]:
    """The requested subset of sequence names, in the requested order; an unknown name is an error, and so is a
    name given twice (run.py --sequences bear bear): that video would be run and written twice, and its objects
    scored twice in the means."""
    if requested is None:
        return list(available)
    twice = list(dict.fromkeys(s for s in requested if requested.count(s) > 1))
    if twice:
        raise VOSInputError(f"the video(s) {', '.join(twice)} of {what} are asked for more than once (run.py "
                            "--sequences); name each video once")
    known = set(available)
    unknown = [s for s in requested if s not in known]
    if unknown:
        examples = ", ".join(available[:5]) + (", ..." if len(available) > 5 else "")
        raise VOSInputError(
            f"unknown sequence(s) {', '.join(unknown)} in {what}; valid names include: {examples or '(none)'}"
        )
    return list(requested)


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
            frames = _list_files(self.video, _IMAGE_EXTS, skip=self.mask)
            if not frames:
                raise VOSInputError(f"folder '{self.video}' holds no frames (.jpg, .jpeg or .png files)")
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
