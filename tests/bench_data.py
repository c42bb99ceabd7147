"""Deterministic synthetic data sets in each benchmark's layout, for tests/test_benchmarks.py.

The masks are ellipses computed with plain float arithmetic (no random numbers), so the same files come out on any
machine and numpy version; the official evaluators were run on exactly these files to obtain the parity numbers
stored in the tests. Frames are 160x240: the image diagonal gives a DAVIS radius of ceil(2.307) = 3 and makes
MOSE v2 use both of its F branches (objects up to 400 px get the area radius, larger ones the float 2.307).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

H, W = 160, 240


def save_ids(path: Path, ids: np.ndarray) -> None:
    """A palette PNG whose pixel values are the ids (as the toolkits' results are written)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(ids.astype(np.uint8), mode="L").convert("P")
    image.putpalette([v for i in range(256) for v in (i, (37 * i) % 256, (91 * i) % 256)])
    image.save(path)


def ellipse(cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
    yy, xx = np.mgrid[:H, :W]
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0


def scene(video: int, t: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """GT and prediction id maps of frame t (of n) of synthetic video `video`.

    Object 1: a large ellipse moving right, predicted a little off. Object 2: a small one (under 400 px) that
    disappears in the middle third of the video and, in odd videos, appears only from frame 3; its prediction has
    a 6-px false positive while it is gone. Object 3 exists only in the prediction of video 1 (from frame 2).
    """
    gt = np.zeros((H, W), np.uint8)
    pred = np.zeros((H, W), np.uint8)
    gt[ellipse(60 + video * 3, 40 + 4 * t, 25 + 2 * video, 35)] = 1
    pred[ellipse(61 + video * 3 + t % (2 + video), 41 + 4 * t, 24 + t % 2, 36 - video)] = 1
    gone = n // 3 <= t < 2 * n // 3 or (video % 2 == 1 and t < 3)
    if not gone:
        gt[ellipse(120, 180 - 3 * t, 5 + t % 2, 6)] = 2
        pred[ellipse(121 + video % 2, 181 - 3 * t, 5, 6 + (t + video) % 3)] = 2
    else:
        pred[118:120, 20 + t : 23 + t] = 2
    if video == 1 and t >= 2:
        pred[10:14, 200:204] = 3
    return gt, pred


def make_lvos(root: Path, n_videos: int = 3, n: int = 12) -> dict:
    """LVOS split folder root/valid (Annotations/<v>/<8 digits>.png, valid_meta.json) and predictions root/pred.

    Object 2's range starts at frame index 2 and ends 2 before the last; predictions also cover frames outside
    the ranges. Video names: lv0, lv1, ...; the unseen list is written to root/unseen.txt (lv1 only).
    """
    videos = {}
    for v in range(n_videos):
        name = f"lv{v}"
        for t in range(n):
            gt, pred = scene(v, t, n)
            frame = f"{1 + 5 * t:08d}"
            save_ids(root / "valid" / "Annotations" / name / f"{frame}.png", gt)
            save_ids(root / "pred" / name / f"{frame}.png", pred)
        ranges = {"1": (0, n - 1), "2": (2, n - 3)}
        videos[name] = {
            "objects": {
                k: {"frame_range": {"start": 1 + 5 * a, "end": 1 + 5 * b, "frame_nums": b - a + 1}}
                for k, (a, b) in ranges.items()
            }
        }
    (root / "valid" / "valid_meta.json").write_text(json.dumps({"videos": videos}))
    (root / "unseen.txt").write_text("lv1\n")
    return videos


def make_mose(root: Path, n_videos: int = 3, n: int = 12) -> None:
    """MOSE v2 root/Annotations/<v>/<5 digits>.png (every frame), root/meta.json, predictions root/pred."""
    meta = {}
    for v in range(n_videos):
        name = f"mo{v}"
        for t in range(n):
            gt, pred = scene(v, t, n)
            save_ids(root / "Annotations" / name / f"{t:05d}.png", gt)
            save_ids(root / "pred" / name / f"{t:05d}.png", pred)
        meta[name] = {"length": n, "height": H, "width": W, "objects": ["1", "2"]}
    (root / "meta.json").write_text(json.dumps({"videos": meta}))


def make_generic(root: Path, n_videos: int = 3, n: int = 12) -> None:
    """vos-benchmark root/gt/<v>/<5 digits>.png and root/pred; video 2's GT is sparse (even frames only)."""
    for v in range(n_videos):
        name = f"vb{v}"
        for t in range(n):
            gt, pred = scene(v, t, n)
            if v != 2 or t % 2 == 0:
                save_ids(root / "gt" / name / f"{t:05d}.png", gt)
            save_ids(root / "pred" / name / f"{t:05d}.png", pred)


def make_sav(root: Path, n_videos: int = 2, n: int = 24) -> None:
    """SA-V root/Annotations_6fps/<v>/<obj:03d>/<5 digits>.png every 4th frame (binary), predictions root/pred in
    the same layout (as vos_inference.py --per_obj_png_file writes them)."""
    for v in range(n_videos):
        name = f"sa{v}"
        for t in range(0, n, 4):
            gt, pred = scene(v, t // 4, n // 4)
            for k in (1, 2):
                save_ids(root / "Annotations_6fps" / name / f"{k - 1:03d}" / f"{t:05d}.png", gt == k)
                save_ids(root / "pred" / name / f"{k - 1:03d}" / f"{t:05d}.png", pred == k)
