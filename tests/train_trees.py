"""Tiny training trees of the MOSE, LVOS, SA-V and generic layouts, built from real frames (the DAVIS 2016 sample's
first frames, at a quarter of their size) in a test's tmp_path. Each writer follows the layout its dataset's own
README gives (docs/training_data.md names the source of each)."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
from conftest import DAVIS2016_SAMPLE, save_mask, write_jpeg
from PIL import Image

SIZE = (214, 120)  # (W, H): the sample's 854x480 at a quarter
VIDEOS = ("bear", "boat")


def sample_frames(video: str, count: int, step: int = 1) -> list[tuple[np.ndarray, np.ndarray]]:
    """(RGB frame, id mask with the object as 1) of frames 0, step, ... of a sample video, resized to SIZE."""
    pairs = []
    for t in range(0, count * step, step):
        rgb = Image.open(DAVIS2016_SAMPLE / "JPEGImages" / "480p" / video / f"{t:05d}.jpg").convert("RGB")
        mask = Image.open(DAVIS2016_SAMPLE / "Annotations" / "480p" / video / f"{t:05d}.png")
        ids = (np.asarray(mask.resize(SIZE, Image.NEAREST)) != 0).astype(np.uint8)
        pairs.append((np.asarray(rgb.resize(SIZE, Image.BICUBIC)), ids))
    return pairs


def mose_tree(root: Path, frames: int = 4) -> Path:
    """MOSE train: train/JPEGImages/<video>/00000.jpg and train/Annotations/<video>/00000.png, every frame."""
    for video in VIDEOS:
        for t, (rgb, ids) in enumerate(sample_frames(video, frames)):
            write_jpeg(root / "train" / "JPEGImages" / video / f"{t:05d}.jpg", rgb)
            save_mask(root / "train" / "Annotations" / video / f"{t:05d}.png", ids)
    return root


def lvos_tree(root: Path, frames: int = 4) -> Path:
    """LVOS train: 8-digit names in steps of 5 from 00000001, masks on every frame, train/train_meta.json with each
    object's frame_range."""
    meta = {"videos": {}}
    for video in VIDEOS:
        names = [f"{1 + 5 * t:08d}" for t in range(frames)]
        for name, (rgb, ids) in zip(names, sample_frames(video, frames), strict=True):
            write_jpeg(root / "train" / "JPEGImages" / video / f"{name}.jpg", rgb)
            save_mask(root / "train" / "Annotations" / video / f"{name}.png", ids)
        meta["videos"][video] = {"objects": {"1": {"frame_range": {"start": 1, "end": int(names[-1]),
                                                                     "frame_nums": frames}}}}
    (root / "train" / "train_meta.json").write_text(json.dumps(meta))
    return root


def rle(mask: np.ndarray) -> dict:
    """A binary mask as SA-V's json stores it: COCO RLE with the counts as a string."""
    from pycocotools import mask as mask_utils

    encoded = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(s) for s in encoded["size"]], "counts": encoded["counts"].decode()}


def sav_tree(root: Path, annotated: int = 3) -> Path:
    """SA-V train: sav_train/sav_000/<id>.mp4 at 24 fps (mp4v, written with OpenCV) and <id>_manual.json beside it,
    a masklet per object in COCO RLE on every 4th frame (6 fps); a second masklet absent in the middle frame."""
    folder = root / "sav_train" / "sav_000"
    folder.mkdir(parents=True)
    for k, video in enumerate(VIDEOS, 1):
        vid = f"sav_{k:06d}"
        pairs = sample_frames(video, 4 * (annotated - 1) + 1)
        writer = cv2.VideoWriter(str(folder / f"{vid}.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 24, SIZE)
        assert writer.isOpened(), "this OpenCV build cannot write mp4v"
        for rgb, _ in pairs:
            writer.write(np.ascontiguousarray(rgb[:, :, ::-1]))
        writer.release()
        masklet = []
        for t in range(0, len(pairs), 4):
            second = np.zeros_like(pairs[t][1])
            if t != 4:
                second[:20, :30] = 1
            masklet.append([rle(pairs[t][1]), rle(second)])
        (folder / f"{vid}_manual.json").write_text(json.dumps({
            "video_id": vid, "video_frame_count": float(len(pairs)), "video_height": float(SIZE[1]),
            "video_width": float(SIZE[0]), "masklet": masklet, "masklet_id": [0, 1], "masklet_num": 2,
            "masklet_type": ["manual", "manual"]}))
    return root


def generic_tree(root: Path, frames: int = 5, annotated: tuple[int, ...] = (0, 2, 3, 4)) -> Path:
    """A generic folder: JPEGImages/<video>/<frame>.jpg, Annotations/<video>/<frame>.png on the `annotated` frames
    only; a third video (hockey) to hold out."""
    for video in (*VIDEOS, "hockey"):
        for t, (rgb, ids) in enumerate(sample_frames(video, frames)):
            write_jpeg(root / "JPEGImages" / video / f"{t:05d}.jpg", rgb)
            if t in annotated:
                save_mask(root / "Annotations" / video / f"{t:05d}.png", ids)
    return root
