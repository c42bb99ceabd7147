"""Test-time readers of today's benchmarks on dataset.py's interface (`Layout` yields one `VideoReader` per video):
MOSE, LVOS, SA-V and a generic folder of videos, as Cutie's and SAM2's test scripts feed them.

- `MOSE`: `valid/JPEGImages/<video>/00000.jpg`, `valid/Annotations/<video>/00000.png` (the first frame's mask only,
  as the official loaders read it); every frame is written, and the server's zip holds the video folders at its root.
- `LVOS`: `<split>/JPEGImages/<video>/00000001.jpg` (8-digit names in steps of 5), `<split>/Annotations/`,
  `<split>/<split>_meta.json`. Each object is given at the first frame of its `frame_range`, so objects join late.
- `SAV`: `sav_<split>/JPEGImages_24fps/<video>/00000.jpg`, `sav_<split>/Annotations_6fps/<video>/<obj>/<frame>.png`
  (one binary mask per object), `sav_<split>/sav_<split>.txt`. Masks are written per object as SAM2's
  `--per_obj_png_file` writes them.
- `Generic`: `JPEGImages/<video>/*.jpg` and `Annotations/<video>/*.png`; every mask on disk is given.

Frames are streamed one at a time by inference.segment_video, as for DAVIS. Every root that does not match its
layout is refused with one line naming what is missing (`utils.VOSInputError`).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dataset import _IMAGE_EXTS, Layout, VideoReader, _list_files, _list_folders, _select, plain_name
from utils import VOSInputError, read_mask, save_mask

# Where the benchmarks are by default (run.py re-exports these as editable constants; the flags override them).
MOSE_ROOT = "../DB/MOSE"
LVOS_ROOT = "../DB/LVOS"
SAV_ROOT = "../DB/SAV"


def _need(path: Path, flag: str, root: Path, holds: str) -> Path:
    """`path` if it exists; else the one-line refusal of `root` naming the missing part."""
    if not path.exists():
        raise VOSInputError(f"{flag} {root} has no {path.relative_to(root)}; pass the folder that holds {holds}")
    return path


def _frames(folder: Path, exts: set[str] = frozenset({".jpg"})) -> list[Path]:
    frames = _list_files(folder, set(exts))
    if not frames:
        raise VOSInputError(f"'{folder}' holds no {'/'.join(sorted(exts))} frames; re-extract the video")
    return frames


# ----------------------------------------------------------------------------------------------------------------------
# MOSE v1 / v2
# ----------------------------------------------------------------------------------------------------------------------


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
        self.image_dir = _need(self.root / split / "JPEGImages", "--mose", self.root, holds)
        self.mask_dir = _need(self.root / split / "Annotations", "--mose", self.root, holds)
        # The official loaders list the annotation folders.
        self.sequences = [plain_name(n, self.mask_dir) for n in _list_folders(self.mask_dir)]

    def videos(self, sequences: list[str] | None = None) -> Iterator[VideoReader]:
        for name in _select(sequences, self.sequences, f"MOSE {self.split} at '{self.root}'"):
            frames = _frames(self.image_dir / name)
            first = self.mask_dir / name / f"{frames[0].stem}.png"
            if not first.is_file():
                raise VOSInputError(f"first-frame mask '{first}' of MOSE video '{name}' does not exist; re-extract "
                                    "the annotations")
            yield VideoReader(name, frames, {0: first}, [f.stem + ".png" for f in frames])


# ----------------------------------------------------------------------------------------------------------------------
# LVOS v1 / v2
# ----------------------------------------------------------------------------------------------------------------------


@dataclass
class LVOSVideo(VideoReader):
    """An LVOS video: at each given frame only the objects whose `frame_range` starts there are given (the
    validation masks hold every object in every frame; giving those would be giving away the answer)."""

    starting: dict[int, list[int]] = field(default_factory=dict)  # frame index -> ids of the objects that start there

    def load_mask(self, index: int) -> np.ndarray:
        mask = read_mask(self.given_masks[index])
        return np.where(np.isin(mask, self.starting[index]), mask, 0).astype(mask.dtype)


class LVOS(Layout):
    """LVOS v1 / v2 `valid` or `test` (the layouts are one): objects are given at the first frame of their
    `frame_range` in `<split>_meta.json`, as Cutie (`use_all_masks`) and SAM2
    (`--track_object_appearing_later_in_video`) run it. Frames before the first object's start are neither run nor
    written: no object exists there and the toolkit reads each object's range only. Val is scored by the
    lvos-evaluation rules (benchmarks.score_lvos); test gets the zip its server reads (`Annotations/<video>/...`)."""

    def __init__(self, root: str | Path, split: str = "valid") -> None:
        self.root = Path(root)
        self.split = split
        self.split_dir = self.root / split
        holds = f"{split}/JPEGImages, {split}/Annotations and {split}/{split}_meta.json (the LVOS download)"
        self.image_dir = _need(self.split_dir / "JPEGImages", "--lvos", self.root, holds)
        self.mask_dir = _need(self.split_dir / "Annotations", "--lvos", self.root, holds)
        self.meta_path = _need(self.split_dir / f"{split}_meta.json", "--lvos", self.root, holds)
        self.has_annotations = split == "valid"  # test: the first mask of each object only
        self.submission_prefix = None if self.has_annotations else "Annotations/"
        try:
            videos = json.loads(self.meta_path.read_text())["videos"]
            self.starts = {
                plain_name(v, self.meta_path): {int(k): int(o["frame_range"]["start"]) for k, o in
                                                videos[v]["objects"].items()}
                for v in videos
            }
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise VOSInputError(f"LVOS meta {self.meta_path} has no videos/<video>/objects/<id>/frame_range/start "
                                f"({err!r}); pass the split's meta json from the LVOS download") from err
        self.sequences = sorted(self.starts)  # the toolkit's order

    def videos(self, sequences: list[str] | None = None) -> Iterator[VideoReader]:
        for name in _select(sequences, self.sequences, f"LVOS {self.split} at '{self.root}'"):
            frames = _frames(self.image_dir / name)
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
            frames = frames[offset:]
            yield LVOSVideo(name, frames, dict(sorted(given.items())), [f.stem + ".png" for f in frames],
                            starting=starting)


# ----------------------------------------------------------------------------------------------------------------------
# SA-V
# ----------------------------------------------------------------------------------------------------------------------


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
    the split is scored by sav_evaluator.py's rules (benchmarks.score_sav) on Annotations_6fps."""

    has_annotations = True  # Annotations_6fps: every 4th frame of every object, the frames the evaluator reads

    def __init__(self, root: str | Path, split: str = "val") -> None:
        self.root = Path(root)
        self.split = split
        folder = f"sav_{split}"
        holds = f"{folder}/JPEGImages_24fps, {folder}/Annotations_6fps and {folder}/{folder}.txt (the SA-V download)"
        self.image_dir = _need(self.root / folder / "JPEGImages_24fps", "--sav", self.root, holds)
        self.annotations = _need(self.root / folder / "Annotations_6fps", "--sav", self.root, holds)
        listing = _need(self.root / folder / f"{folder}.txt", "--sav", self.root, holds)
        self.sequences = [plain_name(line.strip(), listing) for line in listing.read_text().splitlines()
                          if line.strip()]

    def videos(self, sequences: list[str] | None = None) -> Iterator[VideoReader]:
        for name in _select(sequences, self.sequences, f"SA-V {self.split} at '{self.root}'"):
            frames = _frames(self.image_dir / name)
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


# ----------------------------------------------------------------------------------------------------------------------
# Generic folders (Cutie / XMem / vos-benchmark)
# ----------------------------------------------------------------------------------------------------------------------


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
        self.image_dir = _need(self.root / "JPEGImages", "--generic", self.root, holds)
        self.mask_dir = _need(self.root / "Annotations", "--generic", self.root, holds)
        self.sequences = [plain_name(n, self.image_dir) for n in _list_folders(self.image_dir)]

    def videos(self, sequences: list[str] | None = None) -> Iterator[VideoReader]:
        for name in _select(sequences, self.sequences, f"generic folder '{self.root}'"):
            frames = _frames(self.image_dir / name, _IMAGE_EXTS)
            index = {f.stem: i for i, f in enumerate(frames)}
            masks = _list_files(self.mask_dir / name, {".png"})
            if not masks:
                raise VOSInputError(f"'{self.mask_dir / name}' holds no .png mask; give at least the mask of the "
                                    f"first frame of '{name}'")
            for m in masks:
                if m.stem not in index:
                    raise VOSInputError(f"mask '{m}' has no frame named '{m.stem}' in '{self.image_dir / name}'")
            offset = min(index[m.stem] for m in masks)
            names = [f.stem + ".png" for f in frames]
            yield GenericVideo(name, frames[offset:], {index[m.stem] - offset: m for m in masks}, names[offset:],
                               blank=names[:offset])
