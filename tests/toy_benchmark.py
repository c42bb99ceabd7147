"""A toy benchmark defined outside the repository, as a researcher adding a data set would write one: its layout
on disk (a test-time reader), its --data key and root flag, and a scoring rule, registered with one call
(`registry.register(BENCHMARK)`). tests/test_benchmark_registry.py runs it through run.py --test and
evaluation.py --benchmark toy, with no other edit to the repository.

Layout: `<root>/frames/<video>/<frame>.jpg` and `<root>/truth/<video>/<frame>.png` (the ground truth of every
frame; the first frame's is given). Rule: an object's score is its mean J over every frame but the first, x100;
the table is the mean over objects (`toy-J`), written to toy.txt with 1 decimal.
"""

from __future__ import annotations

from collections.abc import Iterator
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
    format_scores,
    read_pair,
    require_gt,
    subdirs,
    write_text,
)
from dataset import Layout, VideoReader, _list_files, _select, need_part, video_frames
from utils import VOSInputError, read_mask

DECIMALS = 1
RESULT_NAME = "toy.txt"


class Toy(Layout):
    """`frames/<video>/*.jpg` and `truth/<video>/*.png`; the first frame's mask is given, every frame is written."""

    has_annotations = True

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.frame_dir = need_part(self.root / "frames", "--toy", self.root, "frames/ and truth/")
        self.truth_dir = need_part(self.root / "truth", "--toy", self.root, "frames/ and truth/")
        self.sequences = subdirs(self.frame_dir)

    def videos(self, sequences: list[str] | None = None) -> Iterator[VideoReader]:
        for name in _select(sequences, self.sequences, f"toy at '{self.root}'"):
            frames = video_frames(self.frame_dir / name)
            yield VideoReader(name, frames, {0: self.truth_dir / name / f"{frames[0].stem}.png"},
                              [f.stem + ".png" for f in frames])

    def scoring(self, key: str, out_dir: Path, videos: list[str]) -> TestScoring:
        return TestScoring([out_dir / RESULT_NAME], lambda: score_toy(self.truth_dir, out_dir, out_dir, videos),
                           format_scores, (self.truth_dir, "ids"))


def score_toy(truth: Path, results: Path, out: Path | None = None, videos: list[str] | None = None) -> Scores:
    """The toy rule on `results/<video>/<frame>.png` against `truth/<video>/<frame>.png`; toy.txt into `out`."""
    objects = []
    for video in videos if videos is not None else subdirs(truth):
        gts = _list_files(truth / video, {".png"})
        ids = [int(k) for k in np.unique(read_mask(gts[0], raw=True)) if k != 0]
        j = np.full((len(ids), len(gts)), np.nan)
        for t, gt_path in enumerate(gts[1:], start=1):
            gt, pred = read_pair(gt_path, results / video / gt_path.name)
            j[:, t] = metrics.object_scores(gt, pred, ids)[:, metrics.J]
        for row, k in zip(j, ids, strict=True):
            counted = ~np.isnan(row)
            mean = float(row[counted].mean() * 100)
            objects.append(ObjectScores(f"{video}_{k}", video, str(k), [p.stem for p in gts], row, row, counted, mean,
                                        {"J": mean}))
    if not objects:
        raise VOSInputError(f"no object in the first frames of {truth}; nothing to score")
    table = [("toy-J", float(np.mean([o.values["J"] for o in objects])))]
    path = Path(out or results) / RESULT_NAME
    write_text(path, f"toy-J {table[0][1]:.{DECIMALS}f}\n")
    return Scores("toy", "", table, objects, DECIMALS, [path])


def _score(request: ScoreRequest) -> Scores:
    listing = request.options.get("toy_videos")
    videos = listing.read_text().split() if listing is not None else None
    return score_toy(require_gt(request, "toy"), request.results, request.out, videos)


BENCHMARK = Benchmark(
    name="toy",
    keys=(DataKey("TOY_val", "toy", Toy),),
    holds="frames/ and truth/",
    root="toy",
    scorings=(Scoring("toy", "the toy rule", "the toy truth/ folder", _score,
                      lambda request: (require_gt(request, "toy").parent / "frames", request.gt, "ids"),
                      options={"toy_videos": "file of the videos to score (default: every video)"}),),
)
