"""Running a model over a video: the official test-time size rule, streaming frames from disk, writing masks.

`VideoSegmenter` steps any `methods.VOSModel` through a video frame by frame (as XMem / Cutie do), holding only the
current frame and the model's state; `segment_video` feeds it a `dataset.TestVideo` from disk and writes palette PNGs.
run.py's --test and the trainer's validation both run videos through here, so their numbers are the same.
"""

import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from dataset import TestVideo
from methods import VOSModel
from model import Runtime, aggregate_objects, get_padding, one_hot, pad, pad_mask, unpad
from utils import VOSInputError, read_frame, read_mask, save_mask, why_no_object

PRECISIONS = {"fp32": (torch.float32, None), "fp64": (torch.float64, None),
              "bf16": (torch.float32, torch.bfloat16), "fp16": (torch.float32, torch.float16)}

# The official test protocol: short side to 480 unless a given object would then have fewer pixels than this.
TEST_SHORT_SIDE = 480
MIN_OBJECT_PIXELS = 1000


# ---------------------------------------------------------------------------------------------------------------
# the official test-time resize rule
# ---------------------------------------------------------------------------------------------------------------

def test_size(height: int, width: int, given: Iterable[np.ndarray]) -> tuple[int, int] | None:
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


# ---------------------------------------------------------------------------------------------------------------
# one video
# ---------------------------------------------------------------------------------------------------------------

@dataclass
class VideoSegmenter:
    """Segments one video frame by frame: `step(frame, mask=None)` -> the frame's id mask (as in XMem / Cutie).

    Works with any `methods.VOSModel`. Only the current frame and the model's state are held, so memory does not
    grow with the video's length.

    The first call needs a mask with at least one object. A later mask adds the objects it holds that are not
    tracked yet (their first appearance, as in YouTube-VOS); its pixels overwrite the prediction in the output.
    An object given again later is taken as a correction of that frame.
    """

    model: VOSModel
    dtype: torch.dtype = torch.float32  # the frames' dtype: float64 to compare with a reference, else float32
    autocast: torch.dtype | None = None  # bfloat16 / float16 under torch.autocast
    runtime: Runtime = field(default_factory=Runtime)  # memory budget and chunking, passed to model.predict
    keep_probabilities: bool = False  # keep each object's [bg, fg] probabilities of the last frame (visualisation)
    object_ids: list[int] = field(default_factory=list)
    state: Any = None  # the model's per-video state (model.VideoState, videomatch.MatchState, ...)
    last_probs: Tensor | None = None  # (N, 2, H, W) the model's own probabilities before aggregation, if kept

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.inference_mode()
    def step(self, frame: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """frame: (3, H, W) RGB in [0, 1]; mask: (H, W) object ids or None.

        Returns (labels (H, W) long object ids, probs (N, H, W) each object's aggregated foreground probability).
        """
        padding = get_padding(*frame.shape[-2:])
        img = pad(frame[None].to(self.device, self.dtype), padding)
        given = pad_mask(mask[None].to(self.device).long(), padding) if mask is not None else None
        with torch.autocast(self.device.type, self.autocast, enabled=self.autocast is not None):
            labels, probs = self._step(img, given)
        if self.keep_probabilities and self.last_probs is not None:
            self.last_probs = unpad(self.last_probs, padding)
        return unpad(labels[0], padding), unpad(probs[0, :, 1].float(), padding)

    def _step(self, img: Tensor, given: Tensor | None) -> tuple[Tensor, Tensor]:
        feats = self.model.encode(img)
        given_ids = [] if given is None else [i for i in given.unique().tolist() if i != 0]
        new_ids = [i for i in given_ids if i not in self.object_ids]
        if self.state is None:
            if not new_ids:
                raise ValueError("the first frame needs a mask with at least one object (non-zero pixels)")
            masks = one_hot(given, new_ids, img.dtype)
            self.object_ids = new_ids
            self.state = self.model.init_state(feats, masks)
            return given, masks  # the given frame is the output, as the official code returns it
        logits = self.model.predict(feats, self.state, self.runtime)
        probs = torch.softmax(logits.to(img.dtype), dim=2)  # (1, N, 2, H, W)
        del logits  # not held through the aggregation: N full-resolution maps (0.7 GB at 1080p x 40 objects)
        if self.keep_probabilities:
            self.last_probs = probs[0].float().clone()
        corrected = [i for i in given_ids if i in self.object_ids]
        if corrected:
            slots = [self.object_ids.index(i) for i in corrected]
            probs[:, slots] = one_hot(given, corrected, probs.dtype)
        if new_ids:
            masks = one_hot(given, new_ids, probs.dtype)
            self.model.add_objects(self.state, feats, masks)
            self.object_ids = self.object_ids + new_ids
            probs = torch.cat([probs, masks], dim=1)
        index, probs = aggregate_objects(probs)
        ids = torch.tensor([0] + self.object_ids, device=index.device)
        labels = ids[index]  # (1, H, W)
        if given is not None:
            labels = torch.where(given != 0, given, labels)
        self.model.update(self.state, feats, probs)
        return labels, probs


@dataclass
class RunSettings:
    """How to run a model: device, precision (frames' dtype, autocast dtype) and the run-time memory settings."""

    device: torch.device
    dtype: torch.dtype = torch.float32
    autocast: torch.dtype | None = None
    runtime: Runtime = field(default_factory=Runtime)


def run_settings(device: str | None, precision: str = "fp32", runtime: Runtime | None = None) -> RunSettings:
    """Check --device / --precision against this machine: default cuda when available; fp16 needs a GPU."""
    if device == "cuda" and not torch.cuda.is_available():
        raise VOSInputError("--device cuda was asked for but PyTorch sees no CUDA device; pass --device cpu")
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype, autocast = PRECISIONS[precision]
    if precision == "fp16" and dev.type != "cuda":
        raise VOSInputError("--precision fp16 needs --device cuda; on CPU use --precision bf16 or fp32")
    if precision == "bf16" and dev.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise VOSInputError("this GPU has no bfloat16; pass --precision fp16 or fp32")
    return RunSettings(dev, dtype, autocast, runtime or Runtime())


@dataclass
class VideoRun:
    """What segment_video did: frames run, seconds of model time, and the mask files it wrote (in order)."""

    frames: int
    seconds: float
    written: list[Path]


def prefetch(items: list, load: Callable, depth: int = 2) -> Iterator:
    """Yield load(item) for each item, reading up to `depth` ahead in a thread so disk and model overlap.
    Only `depth` items are ever held, so memory does not grow with the video's length."""
    with ThreadPoolExecutor(1) as pool:
        pending: deque[Future] = deque(pool.submit(load, x) for x in items[:depth])
        for nxt in items[depth:] + [None] * depth:
            result = pending.popleft().result()
            if nxt is not None:
                pending.append(pool.submit(load, nxt))
            yield result


def load_given_masks(video: TestVideo, frame_size: tuple[int, int]) -> dict[int, np.ndarray]:
    """Read and check every given mask of a video up front (they decide the resize rule)."""
    given = {}
    for index, path in sorted(video.given_masks.items()):
        mask = read_mask(path, binary=video.binary)
        if mask.shape != frame_size:
            raise VOSInputError(
                f"mask {path} is {mask.shape[1]}x{mask.shape[0]} but its frame {video.frames[index]} is "
                f"{frame_size[1]}x{frame_size[0]}; masks must have the size of their frame (resize it with nearest "
                f"neighbour interpolation)")
        given[index] = mask
    if not given or 0 not in given:
        raise VOSInputError(f"video {video.name} has no mask for its first frame {video.frames[0]}")
    if not given[0].any():
        first = video.given_masks[0]
        raise VOSInputError(f"first-frame mask {first} has no object {why_no_object(first)}")
    return given


def segment_video(model: VOSModel, video: TestVideo, out_dir: Path, settings: RunSettings,
                  on_frame: Callable[[int, np.ndarray, np.ndarray, VideoSegmenter], None] | None = None,
                  keep_probabilities: bool = False) -> VideoRun:
    """Run one video frame by frame and write its palette PNGs to out_dir/<output name>.

    on_frame(index, rgb frame, id mask, segmenter) is called after each frame (visualisation hooks); with
    keep_probabilities the segmenter keeps each frame's per-object probabilities for it.
    """
    first = read_frame(video.frames[0])
    height, width = first.shape[:2]
    given = load_given_masks(video, (height, width))
    size = test_size(height, width, given.values())
    seg = VideoSegmenter(model, settings.dtype, settings.autocast, settings.runtime, keep_probabilities)
    seconds, frames, written = 0.0, 0, []

    def load(index: int) -> tuple[int, np.ndarray]:
        return index, first if index == 0 else read_frame(video.frames[index])

    with ThreadPoolExecutor(1) as writer:
        writes: deque[Future] = deque()
        for index, rgb in prefetch(list(range(len(video.frames))), load):
            if rgb.shape[:2] != (height, width):
                raise VOSInputError(f"frame {video.frames[index]} is {rgb.shape[1]}x{rgb.shape[0]} but the video's "
                                    f"first frame is {width}x{height}; all frames of a video must have one size")
            frame = torch.tensor(rgb).permute(2, 0, 1).float().div(255)  # a copy: PIL arrays are read-only
            mask = torch.from_numpy(given[index]).long() if index in given else None
            if size is not None:
                frame = resize_frame(frame, size)
                mask = resize_mask(mask, size) if mask is not None else None
            sync(settings.device)
            t0 = time.perf_counter()
            labels, _ = seg.step(frame, mask)
            sync(settings.device)
            seconds += time.perf_counter() - t0
            frames += 1
            if size is not None:  # masks go out at the original size (YouTube-VOS is scored at it)
                labels = resize_mask(labels, (height, width))
            labels = labels.to("cpu", torch.uint8).numpy()
            name = video.output_names[index]
            if name is not None:
                writes.append(writer.submit(save_mask, out_dir / name, labels))
                written.append(out_dir / name)
            while len(writes) > 4 or (writes and writes[0].done()):
                writes.popleft().result()  # surface write errors early; bound the queue
            if on_frame is not None:
                on_frame(index, rgb, labels, seg)
        for w in writes:
            w.result()
    return VideoRun(frames, seconds, written)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
