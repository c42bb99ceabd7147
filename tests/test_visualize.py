"""Visualisation: overlay videos (both methods) and VideoMatch's probability maps, written without any window."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from core.methods import build_model
from core.segmenter import VideoSegmenter
from reports import visualize
from reports.visualize import OverlayWriter, colorize, overlay_mask
from utils import DAVIS_PALETTE


def frames_and_masks(n: int, h: int = 60, w: int = 90) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Gray frames with a red and a green square moving right 2 px a frame, and their id masks."""
    frames, masks = [], []
    for t in range(n):
        rgb = np.full((h, w, 3), 128, np.uint8)
        ids = np.zeros((h, w), np.uint8)
        rgb[10:30, 5 + 2 * t:25 + 2 * t] = (220, 30, 30)
        ids[10:30, 5 + 2 * t:25 + 2 * t] = 1
        rgb[25:50, 50 + 2 * t:75 + 2 * t] = (30, 200, 40)
        ids[25:50, 50 + 2 * t:75 + 2 * t] = 2
        frames.append(rgb)
        masks.append(ids)
    return frames, masks


def test_overlay_blends_the_palette_colour() -> None:
    frames, masks = frames_and_masks(1)
    out = overlay_mask(frames[0], masks[0], alpha=0.5)
    assert out.shape == (60, 90, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[0, 0], frames[0][0, 0])  # background untouched
    red = np.array(DAVIS_PALETTE[3:6])  # object 1: (128, 0, 0)
    np.testing.assert_array_equal(out[15, 10], np.rint(0.5 * np.array([220, 30, 30]) + 0.5 * red))
    with pytest.raises(ValueError, match="size"):
        overlay_mask(frames[0], masks[0][:-1])


def test_overlay_video_reads_back(tmp_path: Path) -> None:
    frames, masks = frames_and_masks(7)
    path = tmp_path / "out" / "bear.mp4"
    with OverlayWriter(path, fps=10) as writer:  # parent folders are created; one frame at a time
        for frame, mask in zip(frames, masks, strict=True):
            writer.write(frame, mask)
    assert writer.count == 7
    cap = cv2.VideoCapture(str(path))
    assert cap.isOpened()
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 7
    read = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        read.append(frame)
    cap.release()
    assert len(read) == 7 and read[0].shape == (60, 90, 3)
    # lossy codec, but the blended colour is still there: red-ish on object 1, green-ish on object 2 (BGR)
    b, g, r = read[3][20, 20].astype(int)
    assert r > g + 50 and r > b + 50
    b, g, r = read[3][35, 65].astype(int)
    assert g > r + 30 and g > b + 30


def test_overlay_video_refuses_a_frame_of_another_size(tmp_path: Path) -> None:
    frames, masks = frames_and_masks(2)
    with OverlayWriter(tmp_path / "b.mp4") as writer:
        writer.write(frames[0], masks[0])
        # cv2.VideoWriter would drop it without a word
        with pytest.raises(ValueError, match=r"frame 1 is 90x58 but the video .*b\.mp4' is 90x60.*one size"):
            writer.write(frames[1][:-2], masks[1][:-2])


def test_probability_maps_png_of_a_videomatch_step(tmp_path: Path) -> None:
    frames, masks = frames_and_masks(3)
    torch.manual_seed(0)
    seg = VideoSegmenter(build_model("videomatch").eval(), keep_probabilities=True)

    def tensor(rgb: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(rgb).permute(2, 0, 1).float() / 255

    seg.step(tensor(frames[0]), torch.from_numpy(masks[0]).long())
    seg.step(tensor(frames[1]))
    maps = seg.last_probs.numpy()  # (N, 2, H, W) [bg, fg], padding cropped
    assert maps.shape == (2, 2, 60, 90)
    labels = np.asarray(masks[1])
    path = tmp_path / "vis" / "00001_prob.png"
    two = visualize.save_probability_figure(path, frames[1], maps[:, 1], maps[:, 0], labels=labels, object_ids=[1, 2])
    with Image.open(path) as png:
        assert png.size == (two.shape[1], two.shape[0]) and png.mode == "RGB"
    # one row per object: a single object's figure is shorter, as wide
    one = visualize.save_probability_figure(tmp_path / "one.png", frames[1], maps[0, 1], maps[0, 0])
    assert one.shape[1] == two.shape[1] and one.shape[0] < two.shape[0]
    # the colour map goes from blue (0) to red (1)
    ends = colorize(np.array([[0.0, 1.0]]))
    assert ends[0, 0, 2] > 100 and ends[0, 0, 0] < 50 and ends[0, 1, 0] > 100 and ends[0, 1, 2] < 50
