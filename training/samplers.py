"""Training data: the clip samplers of both methods and their augmentation (a library; the trainer opens them).

`TrainDAVIS`, `TrainYTVOS` and `TrainCOCO` are EMVOS's clip samplers: random clips
{'imgs': (L, 3, H, W) float RGB in [0, 1], 'masks': (L, H, W) long, 1 = the target object}, sampled and augmented
as the loaders of the official code (suhwan-cho/EMVOS) do. `TrainPairs` gives VideoMatch's training pairs (L = 2) as
the public PyTorch port draws and augments them (`PortAugmentation`). All of them are `TrainSet`s, the one interface
the trainer reads: `check()` before the first step, `len()` items, item k a clip. Use `seed_worker` as the
DataLoader's worker_init_fn.

Every unusable input raises `utils.VOSInputError` naming the file or flag and the fix.
"""

from __future__ import annotations

import json
import math
import os
import random
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from tqdm import tqdm

from benchmarks.davis import DAVIS
from dataset import _list_files, plain_name
from utils import VOSInputError, check_image, read_frame, read_mask

T = TypeVar("T")


class TrainSet(Dataset, ABC):
    """What the trainer reads of a stage's training data: `check()` refuses data that cannot train (before the first
    step), `len()` is the number of items an epoch may draw, item k is {'imgs': (L, 3, H, W), 'masks': (L, H, W)}."""

    @abstractmethod
    def check(self) -> None:
        """Raise VOSInputError (naming the root or the file, and the fix) when the data could only give skipped
        batches, or holds a file that does not decode or a mask of another size than its frame."""

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def __getitem__(self, index: int) -> dict[str, torch.Tensor]: ...

    def describe(self) -> str | None:
        """A line for the training log about what the data is made of (a mixture's datasets and shares); None:
        nothing beyond the stage's own line."""
        return None


# ----------------------------------------------------------------------------------------------------------------------
# EMVOS: clip samplers, as the official EMVOS loaders sample and augment clips
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


PairLoader = Callable[[int], tuple[Image.Image, Image.Image]]  # annotated frame k -> (RGB frame, id mask)


def clip_of(count: int, load: PairLoader, clip_len: int, output_size: tuple[int, int]) -> dict[str, torch.Tensor]:
    """One training clip from a video of `count` annotated frames, `load(k)` reading the k-th (official TrainDAVIS /
    TrainYTVOS sampling): reversal, flips, then consecutive annotated frames from a random start, the last one
    repeated at the end of the video. Every video sampler (DAVIS, YouTube-VOS, every dataset module's training split,
    a generic folder) draws its clips here, so they share the official draws in the official order."""
    backwards = random.random() > 0.5  # play the video backwards
    h_flip = random.random() > 0.5
    v_flip = random.random() > 0.5
    start = random.sample(range(count), 1)[0]
    ids = [min(start + i, count - 1) for i in range(clip_len)]
    pairs = (load(count - 1 - i if backwards else i) for i in ids)
    return make_clip(pairs, output_size, h_flip, v_flip)


def _video_clip(
    frames: list[Path], masks: list[Path], clip_len: int, output_size: tuple[int, int], binary: bool = False
) -> dict[str, torch.Tensor]:
    """One training clip from a video's annotated frames and their masks (files on disk)."""
    return clip_of(len(frames), lambda k: _load_pair(frames[k], masks[k], binary), clip_len, output_size)


# The up-front data check decodes every file a sampler reads, on a few threads (PIL decodes without the GIL).
CHECK_THREADS = min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
CHECK_PROGRESS_FROM = 2000  # frames (with their masks); fewer are checked without a progress bar


def check_all(check: Callable[[T], None], items: Sequence[T], desc: str) -> None:
    """`check(item)` for every item on CHECK_THREADS threads, with a progress bar when there are many; the first
    item in order that fails raises its VOSInputError, and what was not started yet is cancelled."""
    pool = ThreadPoolExecutor(CHECK_THREADS)
    try:
        for _ in tqdm(pool.map(check, items), total=len(items), desc=desc, unit="file", leave=False,
                      disable=len(items) < CHECK_PROGRESS_FROM):
            pass
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _check_pair(pair: tuple[Path, Path]) -> None:
    frame, mask = pair
    fw, fh = check_image(frame, "frame")
    mw, mh = check_image(mask, "mask")
    if (mw, mh) != (fw, fh):
        raise VOSInputError(f"mask '{mask}' is {mw}x{mh} but its frame '{frame}' is {fw}x{fh}; masks must have the "
                            f"size of their frame (resize it with nearest neighbour interpolation)")


def check_files(pairs: Sequence[tuple[Path, Path]], where: str) -> None:
    """Every (frame, mask) a sampler reads decodes, and every mask has its frame's size (utils.check_image).

    Checked before the first step because later it is worse: a corrupt file stops the run hours in, inside a
    DataLoader worker, with that worker's traceback; a mask of another size is silently stretched onto its frame.
    """
    check_all(_check_pair, pairs, f"checking {where}")


def check_videos(videos: Iterable[tuple[str, list[Path], list[Path]]], where: str, binary: bool = False) -> None:
    """Refuse, before the first training step, video data that could only give skipped batches or crash later.

    videos: (name, frames, their masks) for every video a sampler draws from, only the frames it reads; where: the
    root and split, for the message. An empty list of videos, a video without an annotated frame, a frame or mask
    that does not decode or a mask of another size than its frame (check_files), and a video whose masks hold no
    object at all (each of its clips would have no target, and the official rule skips its batches) are errors.
    Each video's masks are read as ids until one with an object is found, so a normal dataset costs one such read
    per video besides the decoding.
    """
    videos = list(videos)
    without_masks = [name for name, _, masks in videos if not masks]
    if not videos:
        raise VOSInputError(f"{where} lists no videos to train on; check the split list (ImageSets/) or the folder")
    if without_masks:
        raise VOSInputError(f"{where}: {len(without_masks)} video(s) have no annotated frame (a frame with its mask) "
                            f"({', '.join(without_masks[:5])}{', ...' if len(without_masks) > 5 else ''}); "
                            f"re-extract the annotations or take them out of the split list")
    check_files([pair for _, frames, masks in videos for pair in zip(frames, masks, strict=True)], where)
    empty = [(name, masks) for name, _, masks in videos if not any(read_mask(m, binary=binary).any() for m in masks)]
    if len(empty) == len(videos):
        raise VOSInputError(f"{where}: every mask of its {len(videos)} video(s) is empty (no object, all pixels 0), "
                            f"so no training clip has a target and every batch would be skipped; these are not the "
                            f"annotations (check that Annotations/ holds the object masks)")
    if empty:
        name, masks = empty[0]
        raise VOSInputError(f"{where}: video '{name}' has no object in any of its {len(masks)} mask(s) (first "
                            f"'{masks[0]}'), so its clips have no target; re-extract its annotations or move it out"
                            f"{f' ({len(empty)} such videos)' if len(empty) > 1 else ''}")


class ClipSampler(TrainSet):
    """What every clip sampler shares: `clips_per_epoch` random clips of `clip_len` frames at `output_size`; the
    index only counts clips (the official loaders draw the video at random for every item)."""

    def __init__(self, output_size: tuple[int, int], clip_len: int, clips_per_epoch: int) -> None:
        self.output_size = tuple(output_size)
        self.clip_len = clip_len
        self.clips_per_epoch = clips_per_epoch

    def __len__(self) -> int:
        return self.clips_per_epoch

    @property
    @abstractmethod
    def size(self) -> int:
        """How many videos (COCO: images) clips are drawn from: a mixed stage's default weight."""


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

    @property
    def size(self) -> int:
        return len(self.data.sequences)

    def check(self) -> None:
        """Refuse data that cannot train (check_videos), before the first step."""
        check_videos(((s, self.data.frames(s), self.data.annotations(s)) for s in self.data.sequences),
                     f"DAVIS {self.data.year} {self.data.split} at '{self.data.root}'", self.data.binary)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        """A random clip; `index` only counts clips (the official loader draws the video at random too)."""
        seq = random.choice(self.data.sequences)
        return _video_clip(
            self.data.frames(seq), self.data.annotations(seq), self.clip_len, self.output_size, self.data.binary
        )


class AnnotatedVideos(ClipSampler):
    """Clips of videos stored as `<image_dir>/<video>/<frame>` with masks `<mask_dir>/<video>/<frame>.png` on some of
    the frames: clips are made of the annotated frames alone (a frame with a mask of its name), consecutive clip
    frames being consecutive annotated frames, as the official YouTube-VOS loader pairs the sorted image and mask lists.
    YouTube-VOS train, the training splits of most dataset modules and a generic folder are this (each module names
    its folders and videos).

    `where` names the data in messages ("YouTube-VOS train at '...'"); `fix` is what to do about a video without an
    annotated frame.
    """

    def __init__(
        self,
        image_dir: Path,
        mask_dir: Path,
        videos: list[str],
        where: str,
        output_size: tuple[int, int] = (384, 384),
        clip_len: int = 10,
        clips_per_epoch: int = 128,
        image_exts: frozenset[str] = frozenset({".jpg"}),
        fix: str = "re-extract the download",
    ) -> None:
        self.image_dir, self.mask_dir, self.videos, self.where = Path(image_dir), Path(mask_dir), list(videos), where
        self.image_exts, self.fix = set(image_exts), fix
        if not self.videos:
            raise VOSInputError(f"'{self.mask_dir}' holds no videos; {fix}")
        super().__init__(output_size, clip_len, clips_per_epoch)

    @property
    def size(self) -> int:
        """How many videos clips are drawn from (a mixed stage's default weight)."""
        return len(self.videos)

    def _annotated(self, video: str) -> tuple[list[Path], list[Path]]:
        masks = {p.stem: p for p in _list_files(self.mask_dir / video, {".png"})}
        frames = [f for f in _list_files(self.image_dir / video, self.image_exts) if f.stem in masks]
        return frames, [masks[f.stem] for f in frames]

    def annotated_frames(self, video: str) -> tuple[list[Path], list[Path]]:
        """(frames, masks) of the annotated frames of `video`, in order."""
        frames, masks = self._annotated(video)
        if not frames:
            raise VOSInputError(
                f"video '{video}' has no frame in '{self.image_dir / video}' with a mask in '{self.mask_dir / video}'; "
                f"{self.fix}"
            )
        return frames, masks

    def check(self) -> None:
        """Refuse data that cannot train (check_videos on the annotated frames, those clips are made of), before
        the first step."""
        check_videos(((v, *self._annotated(v)) for v in self.videos), self.where)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        """A random clip; `index` only counts clips."""
        video = random.choice(self.videos)
        return _video_clip(*self.annotated_frames(video), self.clip_len, self.output_size)


class TrainYTVOS(AnnotatedVideos):
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
        image_dir = self.root / "train" / "JPEGImages"
        mask_dir = self.root / "train" / "Annotations"
        for folder in (image_dir, mask_dir):
            if not folder.is_dir():
                raise VOSInputError(
                    f"YouTube-VOS root '{self.root}' has no train/{folder.name}; pass --ytvos PATH (the folder that "
                    "holds train/ of the YouTube-VOS 2018 download, train.zip)"
                )
        meta = self.root / "train" / "meta.json"
        if meta.is_file():
            try:
                videos = sorted(plain_name(v, meta) for v in json.loads(meta.read_text())["videos"])
            except (ValueError, KeyError, TypeError) as e:
                raise VOSInputError(
                    f"'{meta}' is not a YouTube-VOS meta.json ({e}); re-download it or delete it "
                    "to use the folder listing"
                ) from e
        else:
            videos = sorted(plain_name(p.name, mask_dir) for p in mask_dir.iterdir() if p.is_dir())
        super().__init__(image_dir, mask_dir, videos, f"YouTube-VOS train at '{self.root}'", output_size, clip_len,
                         clips_per_epoch, fix="re-extract the YouTube-VOS train download")


def _coco_instances(ann_file: Path) -> tuple[dict[int, tuple[str, int, int]], dict[int, list[tuple[float, object]]]]:
    """From a COCO instances json: {image id: (file name, height, width)} and {image id: [(area, segmentation)]} of
    its non-crowd instances, polygons as arrays of at least 3 points."""
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
    return infos, per_image


def _paint_instances(segs: list, h: int, w: int) -> np.ndarray:
    """(h, w) uint8 instance ids 1.. of COCO segmentations (polygons, RLE or uncompressed RLE), painted in order."""
    from pycocotools import mask as mask_utils  # only the raw download needs pycocotools

    ids = np.zeros((h, w), np.uint8)
    for obj, seg in enumerate(segs[:255], 1):  # ids must fit in a uint8 mask
        if isinstance(seg, list):
            rle = mask_utils.merge(mask_utils.frPyObjects(seg, h, w))
        elif isinstance(seg["counts"], list):  # uncompressed RLE
            rle = mask_utils.frPyObjects(seg, h, w)
        else:
            rle = seg
        ids[mask_utils.decode(rle) > 0] = obj
    return ids


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
        infos, per_image = _coco_instances(ann_file)
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

    @property
    def size(self) -> int:
        return self.num_images

    def check(self) -> None:
        """Refuse data that cannot train, before the first step. The converted folder needs an Annotations/ PNG per
        image, every image and mask decoding at one size, and at least one mask with an object (check_videos). The
        raw download keeps only images with an instance (checked when it is read); every image must decode at the
        size its annotations give."""
        if self.layout == "converted":
            masks = [self.root / "Annotations" / (image.stem + ".png") for image in self.images]
            missing = [m for m in masks if not m.is_file()]
            if missing:
                raise VOSInputError(f"COCO root '{self.root}': {len(missing)} image(s) have no mask ({missing[0]}, "
                                    f"...); re-run the conversion")
            check_videos([("COCO", self.images, masks)], f"COCO at '{self.root}'")
        else:
            check_all(self._check_image, self.image_ids, f"checking COCO {self.image_dir}")

    def _check_image(self, image_id: int) -> None:
        file_name, h, w = self._infos[image_id]
        width, height = check_image(self.image_dir / file_name, "frame")
        if (width, height) != (w, h):
            raise self._size_error(self.image_dir / file_name, width, height, w, h)

    def _size_error(self, path: Path, width: int, height: int, w: int, h: int) -> VOSInputError:
        return VOSInputError(f"COCO image '{path}' is {width}x{height}, the annotations say {w}x{h}; re-download "
                             f"{self.image_dir.name}")

    def load(self, k: int) -> tuple[Image.Image, Image.Image]:
        """Image k (RGB) and its instance-id mask (mode L)."""
        if self.layout == "converted":
            image = self.images[k]
            mask = self.root / "Annotations" / (image.stem + ".png")
            return _load_pair(image, mask)
        image_id = self.image_ids[k]
        file_name, h, w = self._infos[image_id]
        ids = _paint_instances(self._segs[image_id], h, w)
        img = read_frame(self.image_dir / file_name)
        if img.shape[:2] != (h, w):
            raise self._size_error(self.image_dir / file_name, img.shape[1], img.shape[0], w, h)
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


class MixedClips(TrainSet):
    """One stage's clips drawn from several datasets (`--stages davis+ytvos`, any of them): each clip first picks its
    dataset, at random with the mixture's shares, then is that dataset's clip. The shares are the given weights
    normalised, or by default each dataset's size (its videos; COCO: images) over the total, so that every video of
    the mixture is equally likely, as if the datasets were one. The pick is one draw from Python's generator, the one
    the samplers draw their videos from, so the trainer's seeding and --resume replay cover it as they cover a single
    dataset."""

    def __init__(self, parts: Sequence[tuple[str, ClipSampler]], weights: Sequence[float] | None,
                 clips_per_epoch: int) -> None:
        self.parts = list(parts)
        self.clips_per_epoch = clips_per_epoch
        given = list(weights) if weights is not None else [float(data.size) for _, data in self.parts]
        if len(given) != len(self.parts) or any(not math.isfinite(w) or w < 0 for w in given) or sum(given) <= 0:
            raise VOSInputError(f"the weights {given} of the mixture {'+'.join(n for n, _ in self.parts)} must be one "
                                f"non-negative number per dataset, not all 0")
        self.weighted = weights is not None
        self.shares = [w / sum(given) for w in given]

    def __len__(self) -> int:
        return self.clips_per_epoch

    def check(self) -> None:
        """Every dataset of the mixture checked as it is checked alone."""
        for _, data in self.parts:
            data.check()

    def describe(self) -> str:
        how = "the given weights" if self.weighted else "their sizes"
        parts = ", ".join(f"{name} ({data.size} {'images' if isinstance(data, TrainCOCO) else 'videos'}, share "
                          f"{share:.3f})" for (name, data), share in zip(self.parts, self.shares, strict=True))
        return f"mixture by {how}: {parts}"

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        """A clip of a dataset drawn by the shares; `index` only counts clips."""
        k = random.choices(range(len(self.parts)), weights=self.shares)[0]
        return self.parts[k][1][index]


# ----------------------------------------------------------------------------------------------------------------------
# VideoMatch as the public PyTorch port trains it (stashvala/Pytorch-VideoMatch: davis.py, preprocess.py)
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


class TrainPairs(TrainSet):
    """Every pair of frames (i < j) of every sequence of a DAVIS split, each pair exactly once per epoch (with the
    trainer's shuffled sampler): the port's PairSampler (itertools.combinations of each sequence's frames), any gap.

    Item k is {'imgs': (2, 3, H, W), 'masks': (2, H, W)}: frame i with its mask (the reference), frame j with its
    mask (the target), each frame augmented on its own by `augment` (the port draws the two frames' augmentations
    independently). Year 2016 (the port's) has one object; on multi-object masks (2017) the target is an object of
    the reference frame drawn at random (the port merges all objects into one, its DAVIS 2016 only rule).

    `heldout` of the pairs (the port's 0.25 %, at least one when the share is positive) are set aside, chosen by
    HELDOUT_SEED alone: they are not items, and `heldout_pair(k)` gives them without augmentation (only resized) for
    the model selection (videomatch.HeldoutPairs). As in the port the split is by pair, so held-out frames also appear
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
        check_videos(((s, frames, masks) for s, (frames, masks) in zip(self.data.sequences, self.videos, strict=True)),
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

