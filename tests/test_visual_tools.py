"""The port's two visual tools as PNG writers (visualize.py): probability maps and the augmentation preview, plus the
labelled probability figure of --visualize. Nothing opens a window."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import save_mask, write_jpeg
from PIL import Image

from core import methods
from reports import visualize
from reports.visualize import GAP, LABEL_HEIGHT
from utils import VOSInputError


def two_squares(tmp_path: Path, n: int = 3, h: int = 64, w: int = 96) -> tuple[list[Path], Path]:
    """Frames with a red and a green square moving right 2 px a frame, and the first frame's id mask."""
    frames = []
    for t in range(n):
        rgb = np.full((h, w, 3), 128, np.uint8)
        rgb[16:40, 8 + 2 * t:32 + 2 * t] = (220, 30, 30)
        rgb[20:44, 50 + 2 * t:74 + 2 * t] = (30, 200, 40)
        frames.append(write_jpeg(tmp_path / "frames" / f"{t:05d}.jpg", rgb))
    ids = np.zeros((h, w), np.uint8)
    ids[16:40, 8:32] = 1
    ids[20:44, 50:74] = 2
    save_mask(tmp_path / "mask.png", ids)
    return frames, tmp_path / "mask.png"


def test_probability_maps_write_one_labelled_png_per_image(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = methods.build_model("videomatch").train()
    frames, mask = two_squares(tmp_path)
    ph = 60
    paths = visualize.probability_maps(net, frames[0], mask, frames[1:], tmp_path / "out", panel_height=ph)
    assert [p.name for p in paths] == ["00_00001_probabilities.png", "01_00002_probabilities.png"]
    picture = np.asarray(Image.open(paths[0]))
    # title, then the reference row and one row per object (2), each a label strip over a panel
    assert picture.shape[0] == 2 * GAP + 30 + 2 + 3 * (LABEL_HEIGHT + ph) + 2 * GAP
    frame_w = round(96 * ph / 64)
    assert picture.shape[1] >= 2 * GAP + 3 * frame_w + 2 * GAP  # frame, P(fg), P(bg) side by side, then the bar
    label = picture[2 * GAP + 32: 2 * GAP + 32 + LABEL_HEIGHT, GAP:GAP + frame_w]
    assert (label < 100).all(axis=2).sum() > 20  # text was drawn
    assert net.training  # left as it was
    with pytest.raises(VOSInputError, match="VideoMatch"):
        visualize.probability_maps(methods.build_model("emvos"), frames[0], mask, frames[1:], tmp_path / "e")


def test_probability_figure_puts_the_map_beside_the_frame(tmp_path: Path) -> None:
    frame = np.full((60, 90, 3), 128, np.uint8)
    fg = np.zeros((1, 30, 45), np.float32)  # maps at half the frame's size: drawn at the frame's
    fg[:, :, :20] = 1  # certain foreground on the left
    labels = np.zeros((60, 90), np.uint8)
    labels[:, :40] = 3
    ph = 60
    figure = visualize.save_probability_figure(tmp_path / "p" / "prob.png", frame, fg, 1 - fg, labels, [3], "", ph)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "p" / "prob.png")), figure)
    width = 90  # 90 x 60 frame drawn 60 high
    y = GAP + LABEL_HEIGHT + ph // 2
    fg_left, fg_right = figure[y, GAP + width + GAP + 5], figure[y, GAP + 2 * width + GAP - 5]
    assert fg_left[0] > 100 and fg_left[2] < 60  # p = 1: (dark) red
    assert fg_right[2] > 100 and fg_right[0] < 60  # p = 0: blue
    bg_left = figure[y, GAP + 2 * (width + GAP) + 5]
    assert bg_left[2] > 100 and bg_left[0] < 60  # its background map: blue where fg is red
    bar = visualize.colour_bar(100)
    assert bar[LABEL_HEIGHT, 10, 0] > 100 and bar[-1, 10, 2] > 100  # 1 red at the top, 0 blue at the bottom
    with pytest.raises(ValueError, match="object ids"):
        visualize.save_probability_figure(tmp_path / "x.png", frame, fg, 1 - fg, object_ids=[1, 2])


def test_augmentation_preview_is_seeded_and_leaves_the_random_state(tmp_path: Path) -> None:
    rgb = np.full((120, 214, 3), 90, np.uint8)
    rgb[40:80, 80:120] = (250, 20, 20)
    ids = np.zeros((120, 214), np.uint8)
    ids[40:80, 80:120] = 1
    image = write_jpeg(tmp_path / "img.jpg", rgb)
    save_mask(tmp_path / "mask.png", ids)
    random.seed(5)
    expected = random.random()
    random.seed(5)
    one = visualize.preview_augmentation(image, tmp_path / "mask.png", tmp_path / "a.png", samples=3, seed=1,
                                         panel_height=60)
    assert random.random() == expected  # the caller's random state is untouched
    two = visualize.preview_augmentation(image, tmp_path / "mask.png", tmp_path / "b.png", samples=3, seed=1,
                                         panel_height=60)
    assert one.read_bytes() == two.read_bytes()
    picture = np.asarray(Image.open(one))
    # title, original, EMVOS heading + 3 samples, VideoMatch heading + 3 samples
    assert picture.shape[0] == 2 * GAP + 30 + 2 + 3 * (LABEL_HEIGHT + 60) + 2 * LABEL_HEIGHT + 4 * GAP
    with pytest.raises(VOSInputError, match="drawn on the image"):
        save_mask(tmp_path / "small.png", ids[:-1])
        visualize.preview_augmentation(image, tmp_path / "small.png", tmp_path / "c.png")
