"""YouTube-VOS 2018 / 2019 validation: the layout on disk and run.py's --data keys (YTVOS18_val, YTVOS19_val).

Nothing is scored here: the validation ground truth is held by the evaluation server, which reads a zip of
`Annotations/<video>/<frame>.png` (the reader's `submission_prefix`). Both keys read run.py's --ytvos (YouTube-VOS
2018 defaults to YTVOS18_ROOT, 2019 to YTVOS19_ROOT), a root that training reads too.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

from benchmarks.common import Benchmark, DataKey
from dataset import Layout, VideoReader, _list_files, _list_folders, _select
from utils import VOSInputError


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
                raise VOSInputError(f"mask '{path}' has no frame '{stem}.jpg' in '{self.all_frames_dir / name}'; "
                                    "re-extract the video's frames, or remove the mask if it belongs to no frame")
        scored = {p.stem for p in _list_files(self.image_dir / name, {".jpg"})}
        start = min(index[s] for s in masks)  # official: frame ids below the first annotated one are dropped
        frames = frames[start:]
        return VideoReader(
            name=name,
            frames=frames,
            given_masks={index[s] - start: p for s, p in sorted(masks.items(), key=lambda kv: index[kv[0]])},
            output_names=[f.stem + ".png" if f.stem in scored else None for f in frames],
        )


BENCHMARK = Benchmark(
    name="ytvos",
    keys=(DataKey("YTVOS18_val", "ytvos", lambda root: YouTubeVOS(root, "2018", "valid")),
          DataKey("YTVOS19_val", "ytvos19", lambda root: YouTubeVOS(root, "2019", "valid"), flag="ytvos")),
    holds="valid/ and valid_all_frames/",
)
