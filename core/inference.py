"""Running a model over videos: streaming frames from disk, writing masks, and run.py --test's library.

`VideoSegmenter` steps any `framework.VOSModel` through a video frame by frame (as XMem / Cutie do), holding only the
current frame and the model's state; `segment_video` feeds it a `dataset.VideoReader` (which decides the sizes and
the files) and writes what it predicts. run.py's --test and the trainer's validation both run videos through here,
so their numbers are the same. `segment_benchmarks` is --test itself: the --data keys opened from `dataset.Roots`
by benchmarks.registry, the checkpoint (`load_model`), each benchmark segmented, scored as its layout says
(`Layout.scoring`: its own toolkit's rules), reported and zipped (`run_dataset`, `write_zip`, report.publish). Under
torchrun the videos are spread over the processes (`balance`) and process 0 alone scores, reports and zips.

From Python: `load(checkpoint)` gives a ready VideoSegmenter; `VideoSegmenter.propagate(frames, masks)` yields every
frame's mask and probabilities, `remove_object` stops tracking an object; `read_frames` streams a folder or a
cv2.VideoCapture.
"""

import argparse
import contextlib
import json
import os
import time
import zipfile
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import cv2
import numpy as np
import torch
from torch import Tensor

from benchmarks import registry
from benchmarks.common import Scores, TestScoring, remove_stale
from core import config_flags, methods, tta, weights
from core.distributed import Dist, broadcast, close_distributed, gather, init_distributed, process_device
from core.framework import Runtime, VOSModel, aggregate_objects, get_padding, one_hot, pad, pad_mask, unpad
from dataset import MIN_OBJECT_PIXELS, TEST_SHORT_SIDE, Layout, Roots, SingleVideo, VideoReader, frame_files
from onnx_runner import OnnxModel
from reports import report
from reports.visualize import Visualizer
from utils import RunLock, VOSInputError, atomic_write, available_memory, check_output_outside, read_frame

PRECISIONS = {"fp32": (torch.float32, None), "fp64": (torch.float64, None),
              "bf16": (torch.float32, torch.bfloat16), "fp16": (torch.float32, torch.float16)}


# ---------------------------------------------------------------------------------------------------------------
# one video
# ---------------------------------------------------------------------------------------------------------------

@dataclass
class VideoSegmenter:
    """Segments one video frame by frame: `step(frame, mask=None)` -> the frame's id mask (as in XMem / Cutie).

    Works with any `framework.VOSModel`; frames are padded to a multiple of the model's stride. Only the current
    frame and the model's state are held, so memory does not grow with the video's length.

    The first call needs a mask with at least one object. A later mask adds the objects it holds that are not
    tracked yet (their first appearance, as in YouTube-VOS); its pixels overwrite the prediction in the output.
    An object given again later is taken as a correction of that frame. `remove_object` stops tracking one;
    `propagate` runs a whole video (a generator, as SAM 2's propagate_in_video); `reset` starts a new video.
    """

    model: VOSModel
    dtype: torch.dtype = torch.float32  # the frames' dtype: float64 to compare with a reference, else float32
    autocast: torch.dtype | None = None  # bfloat16 / float16 under torch.autocast
    runtime: Runtime = field(default_factory=Runtime)  # memory budget and chunking, passed to model.predict
    keep_probabilities: bool = False  # keep each object's [bg, fg] probabilities of the last frame (visualisation)
    object_ids: list[int] = field(default_factory=list)
    state: Any = None  # the model's per-video state (model.VideoState, videomatch.MatchState, ...)
    last_probs: Tensor | None = None  # (N, 2, H, W) the model's own probabilities before aggregation, if kept
    frames_seen: int = 0  # frames stepped since the video started
    size: tuple[int, int] | None = None  # (H, W) of this video's frames, set by its first frame
    # the propagate run that owns this video: a second propagate (or reset) on the same segmenter ends the first, whose
    # next frame then raises instead of continuing on the other video's objects
    owner: object | None = field(default=None, repr=False)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def reset(self) -> None:
        """Forget the video: the next step starts a new one (and needs a mask)."""
        self.object_ids, self.state, self.last_probs, self.frames_seen = [], None, None, 0
        self.size, self.owner = None, None

    def remove_object(self, obj_id: int) -> None:
        """Stop tracking `obj_id`: its slot leaves the model's state, so from the next frame on its pixels go to the
        background or to the other objects, and it is never predicted again. A later mask holding `obj_id` starts it
        anew, as a new object."""
        if obj_id not in self.object_ids:
            raise ValueError(f"object {obj_id} is not tracked; the tracked objects are {self.object_ids}")
        remove = getattr(self.model, "remove_object", None)
        if remove is None:
            raise NotImplementedError(f"{type(self.model).__name__} has no remove_object(state, slot)")
        slot = self.object_ids.index(obj_id)
        if len(self.object_ids) == 1:  # nothing left to track: the frames are background until a mask adds one
            self.state = None
        else:
            remove(self.state, slot)
        self.object_ids = [i for i in self.object_ids if i != obj_id]
        if self.last_probs is not None:
            self.last_probs = self.last_probs[[i for i in range(self.last_probs.shape[0]) if i != slot]]

    def propagate(self, frames: "Iterable[np.ndarray | Tensor] | str | Path | cv2.VideoCapture",
                  masks: dict[int, "np.ndarray | Tensor"]) -> "Propagation":
        """Segment a video from its start: yields (index, id mask (H, W) long, {object id: foreground probability
        (H, W)}) per frame, one frame at a time, so memory does not grow with the video.

        frames: (H, W, 3) uint8 RGB arrays or (3, H, W) float tensors in [0, 1], or a folder of frames or a
        cv2.VideoCapture (read with `read_frames`), run at the size given. masks: {frame index: (H, W) object ids},
        at least one object at frame 0; the later ones add or correct objects as `step` says. Between two frames the
        caller may `remove_object`. One segmenter runs one video at a time: a second propagate (or `reset`) ends
        the first, whose next frame raises. The result is iterated once; a second pass raises, as does a video
        with no frames or a mask at an index past its last frame.
        """
        if isinstance(frames, (str, Path, cv2.VideoCapture)):
            frames = read_frames(frames)
        bad = [i for i in masks if not isinstance(i, (int, np.integer)) or i < 0]
        if bad:
            raise ValueError(f"masks are keyed by frame index 0, 1, ...; got {bad}")
        if 0 not in masks:
            raise ValueError(f"propagate needs a mask at frame 0 (masks were given at frames {sorted(masks)})")
        if hasattr(frames, "__len__") and max(masks) >= len(frames):
            raise ValueError(f"masks were given at frames {sorted(i for i in masks if i >= len(frames))}, but the "
                             f"video has {len(frames)} frames (0 to {len(frames) - 1})")
        self.reset()
        self.owner = token = object()
        return Propagation(self._propagate(iter(frames), masks, token))

    def _propagate(self, frames: Iterator, masks: dict[int, "np.ndarray | Tensor"], token: object
                   ) -> Iterator[tuple[int, Tensor, dict[int, Tensor]]]:
        index = -1
        for index, frame in enumerate(frames):
            if self.owner is not token:
                raise RuntimeError("another propagate (or reset) started on this segmenter, so this video's state is "
                                   "gone; run one video at a time, or use one segmenter per video (load() twice)")
            mask = masks.get(index)
            labels, probs = self.step(as_frame(frame), None if mask is None else as_mask(mask))
            yield index, labels, dict(zip(self.object_ids, probs, strict=True))
        if index < 0:
            raise ValueError("frames gave no frame (an iterator that was already read to its end?)")
        if max(masks) > index:
            raise ValueError(f"masks were given at frames {sorted(i for i in masks if i > index)}, but the video "
                             f"had {index + 1} frames (0 to {index})")

    @torch.inference_mode()
    def step(self, frame: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """frame: (3, H, W) RGB in [0, 1]; mask: (H, W) object ids or None.

        Returns (labels (H, W) long object ids, probs (N, H, W) each object's aggregated foreground probability).
        Raises ValueError, naming the sizes, for a frame or mask of another shape than this video's.
        """
        self._check_inputs(frame, mask)
        self.frames_seen += 1
        if self.state is None and self.frames_seen > 1 and (mask is None or not bool(mask.any())):
            # every object was removed (remove_object) and none is given: background
            return torch.zeros(frame.shape[-2:], dtype=torch.long, device=self.device), \
                torch.zeros((0, *frame.shape[-2:]), device=self.device)
        padding = get_padding(*frame.shape[-2:], self.model.stride)
        img = pad(frame[None].to(self.device, self.dtype), padding)
        given = pad_mask(mask[None].to(self.device).long(), padding) if mask is not None else None
        with torch.autocast(self.device.type, self.autocast, enabled=self.autocast is not None):
            labels, probs = self._step(img, given)
        if self.keep_probabilities and self.last_probs is not None:
            self.last_probs = unpad(self.last_probs, padding)
        return unpad(labels[0], padding), unpad(probs[0, :, 1].float(), padding)

    def _check_inputs(self, frame: Tensor, mask: Tensor | None) -> None:
        """Shapes before any work: the errors the model would raise from deep inside the matching name no size."""
        if not isinstance(frame, Tensor) or frame.ndim != 3 or frame.shape[0] != 3:
            got = tuple(frame.shape) if hasattr(frame, "shape") else type(frame).__name__
            raise ValueError(f"a frame must be a (3, H, W) RGB tensor in [0, 1] (step) or an (H, W, 3) uint8 array "
                             f"(propagate), not {got}")
        size = tuple(frame.shape[-2:])
        if self.size is not None and size != self.size:
            raise ValueError(f"frame {self.frames_seen} is {size[0]}x{size[1]} (H x W), but this video's frames are "
                             f"{self.size[0]}x{self.size[1]}; every frame of a video has one size")
        if mask is not None:
            mask = as_mask(mask)
            if tuple(mask.shape) != size:
                raise ValueError(f"the mask of frame {self.frames_seen} is {tuple(mask.shape)}, but the frame is "
                                 f"{size} (H, W); give an (H, W) mask of object ids at the frame's size")
        self.size = size

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


class Propagation:
    """VideoSegmenter.propagate's frames, iterated once: a second pass would silently yield nothing (a spent
    generator), so it raises instead."""

    def __init__(self, frames: Iterator[tuple[int, Tensor, dict[int, Tensor]]]):
        self._frames = frames
        self._done = False

    def __iter__(self) -> "Propagation":
        if self._done:
            raise RuntimeError("this propagate() has already run to its end; call propagate() again to segment the "
                               "video again")
        return self

    def __next__(self) -> tuple[int, Tensor, dict[int, Tensor]]:
        try:
            return next(self._frames)
        except StopIteration:
            self._done = True
            raise


def as_mask(mask: "np.ndarray | Tensor") -> Tensor:
    """(H, W) object ids as a long tensor: integers 0..255 (0 is the background), or bools. Refuses what would be
    read as other objects than meant: negative ids, fractions (1.7 is not object 1), and masks of other shapes."""
    # a copy: masks read with PIL are read-only arrays, which torch would wrap with a warning
    m = mask.detach().cpu() if isinstance(mask, Tensor) else torch.tensor(np.asarray(mask))
    if m.ndim != 2:
        raise ValueError(f"a mask must be (H, W) object ids, not shape {tuple(m.shape)}"
                         + ("; drop the last axis (mask[..., 0])" if m.ndim == 3 and m.shape[-1] == 1 else ""))
    if m.dtype == torch.bool:
        return m.long()
    if m.is_floating_point() and not bool((m == m.round()).all()):
        raise ValueError("a mask holds object ids, whole numbers; this one has fractions (e.g. "
                         f"{m[m != m.round()][0].item():g}): round it or pass an integer array")
    if m.numel() and (m.min() < 0 or m.max() > 255):
        raise ValueError(f"object ids run from 0 (background) to 255; this mask holds {int(m.min())} to "
                         f"{int(m.max())}")
    return m.long()


def as_frame(frame: "np.ndarray | Tensor") -> Tensor:
    """An (H, W, 3) uint8 RGB array -> the (3, H, W) float tensor in [0, 1] that `VideoSegmenter.step` takes; a
    tensor passes unchanged."""
    if isinstance(frame, Tensor):
        return frame
    frame = np.asarray(frame)
    if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
        raise ValueError(f"a frame must be an (H, W, 3) uint8 RGB array, not {frame.dtype} of shape {frame.shape}")
    return torch.tensor(frame).permute(2, 0, 1).float().div_(255)  # a copy: PIL and cv2 arrays may be read-only


def read_frames(source: "str | Path | cv2.VideoCapture") -> Iterator[np.ndarray]:
    """(H, W, 3) uint8 RGB frames, one at a time, from a folder of .jpg/.jpeg/.png frames (natural order), a video
    file, or an open cv2.VideoCapture (read to its end, not released: the caller owns it)."""
    if isinstance(source, cv2.VideoCapture):
        while True:
            ok, bgr = source.read()
            if not ok:
                return
            yield cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    source = Path(source)
    if source.is_dir():
        for path in frame_files(source):
            yield read_frame(path)
        return
    if not source.is_file():
        raise VOSInputError(f"video '{source}' does not exist; pass a folder of frames or a video file")
    cap = cv2.VideoCapture(str(source))
    try:
        yield from read_frames(cap)
    finally:
        cap.release()


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


def check_frame_memory(model: VOSModel, video: VideoReader, settings: RunSettings) -> None:
    """Before a video's first frame: refuse a run size whose untiled temporaries (the model's `frame_bytes`, if it
    says) exceed the memory budget, or the free memory when the budget is automatic; no bound (None) never refuses.

    The official size rule keeps the full resolution when a given object would fall below 1000 pixels at 480p, so a
    4000x3000 photo sequence with a small object asks for gigabytes per similarity matrix: a clear refusal up front
    beats an out-of-memory kill half way."""
    estimate = getattr(model, "frame_bytes", None)
    budget = settings.runtime.memory_budget
    if estimate is None or budget is None:
        return
    h, w = video.run_size
    element = torch.finfo(settings.autocast or settings.dtype).bits // 8
    need = estimate(h, w, element)
    limit = available_memory(settings.device) if budget == "auto" else int(budget)
    if need <= limit:
        return
    height, width = video.original_size
    kept = (" (kept at full size: the official rule does not downscale when a given object would fall below "
            f"{MIN_OBJECT_PIXELS} pixels at {TEST_SHORT_SIDE}p)") if (h, w) == (height, width) else ""
    what = (f"the free memory ({limit / 2**30:.1f} GiB)" if budget == "auto"
            else f"--max-memory ({limit / 2**30:.2f} GiB)")
    raise VOSInputError(
        f"video {video.name} runs at {w}x{h}{kept}, where one frame's matching needs about {need / 2**30:.1f} GiB, "
        f"more than {what}; downscale the video, pass a larger --max-memory, or --max-memory none to try anyway")


def segment_video(model: VOSModel, video: VideoReader, out_dir: Path, settings: RunSettings,
                  on_frame: Callable[[int, np.ndarray, np.ndarray, VideoSegmenter], None] | None = None,
                  keep_probabilities: bool = False) -> VideoRun:
    """Run one video frame by frame and write its masks under out_dir as the reader says (`VideoReader.write`).

    The reader decides the sizes (the official run size, masks back at the original size); this loop only times the
    model, overlaps reading and writing with it, and surfaces write errors. on_frame(index, rgb frame, id mask,
    segmenter) is called after each frame (visualisation hooks); with keep_probabilities the segmenter keeps each
    frame's per-object probabilities for it.
    """
    video.check()
    check_frame_memory(model, video, settings)
    seg = (ArraySegmenter(model.segmenter()) if isinstance(model, OnnxModel)  # --onnx: onnx_runner's own step
           else VideoSegmenter(model, settings.dtype, settings.autocast, settings.runtime, keep_probabilities))
    seconds, frames, written = 0.0, 0, []

    def load(index: int) -> tuple[int, np.ndarray, Tensor, Tensor | None]:
        rgb = video.image(index)
        return index, rgb, *video.model_input(index, rgb)

    with ThreadPoolExecutor(1) as writer:
        writes: deque[Future] = deque()
        for index, rgb, frame, mask in prefetch(list(range(len(video))), load):
            sync(settings.device)
            t0 = time.perf_counter()
            labels, _ = seg.step(frame, mask)
            sync(settings.device)
            seconds += time.perf_counter() - t0
            frames += 1
            labels = video.to_output(labels)
            writes.append(writer.submit(video.write, out_dir, index, labels))
            while len(writes) > 4 or (writes and writes[0].done()):
                written += writes.popleft().result()  # surface write errors early; bound the queue
            if on_frame is not None:
                on_frame(index, rgb, labels, seg)
        for w in writes:
            written += w.result()
    return VideoRun(frames, seconds, written)


# ---------------------------------------------------------------------------------------------------------------
# run.py --test: a benchmark from disk, the checkpoint, scores and submission archives
# ---------------------------------------------------------------------------------------------------------------

def write_zip(files: Iterable[Path], zip_path: Path, prefix: str) -> Path:
    """Zip exactly these mask files for an evaluation server as `<prefix><video>/<frame>.png` (the layout's
    `submission_prefix`): never whatever else sits in the folder from an earlier run. Written to a unique temporary name
    and renamed, so two runs never write into one file and a kill leaves no half archive."""
    def write(f: BinaryIO) -> None:
        with zipfile.ZipFile(f, "w", zipfile.ZIP_DEFLATED) as z:
            for png in files:
                z.write(png, f"{prefix}{png.parent.name}/{png.name}")

    return atomic_write(zip_path, write)


class VideoFailedError(Exception):
    """A video failed in one process of a torchrun job; rank 0 raises this, naming the video and the rank."""


class OtherRankFailedError(Exception):
    """Raised on the ranks other than 0 when a video failed, so that the failure is told once (by rank 0)."""


def balance(videos: list[VideoReader], world: int) -> list[list[VideoReader]]:
    """The videos of each of `world` processes, balanced by frame count: longest first, each to the process with the
    fewest frames so far (ties: the lowest rank), so that one long video does not leave the others idle at the end."""
    loads, parts = [0] * world, [[] for _ in range(world)]
    for video in sorted(videos, key=len, reverse=True):  # sorted is stable: equal lengths keep their order
        rank = loads.index(min(loads))
        parts[rank].append(video)
        loads[rank] += len(video)
    return parts


def _segment_share(model: VOSModel, key: str, share: list[VideoReader], out_dir: Path, settings: RunSettings,
                   make_hook: Callable[[VideoReader], Any] | None,
                   job: Dist) -> tuple[dict[str, VideoRun], tuple[str, str] | None]:
    """Segment this process's `share` of dataset `key` into out_dir/<video>/, printing each video's speed: (the
    VideoRuns by video name, None) on success. In a torchrun job the first video that fails ends the share and is
    returned as (video, error) with the runs before it, to be told after the gather; alone, its error propagates."""
    runs: dict[str, VideoRun] = {}
    for video in share:
        hook = make_hook(video) if make_hook else None
        try:
            done = segment_video(model, video, out_dir / video.name, settings, hook, keep_probabilities=bool(hook))
        except Exception as err:
            if not job.enabled:
                raise
            return runs, (video.name, f"{type(err).__name__}: {err}")  # told by rank 0 after the gather, never a hang
        finally:
            if hook is not None:
                hook.close()
        runs[video.name] = done
        print(f"{key} {video.name}: {done.frames} frames, {done.frames / max(done.seconds, 1e-9):.2f} fps", flush=True)
    return runs, None


def _gather_runs(job: Dist, key: str, runs: dict[str, VideoRun],
                 failure: tuple[str, str] | None) -> dict[str, VideoRun] | None:
    """Every process's VideoRuns of dataset `key` (its `runs`, and its `failure`: (video, error) or None), met in one
    gather: all of them by video name on rank 0, None on the other ranks. A video that failed in any process stops
    the job: rank 0 raises VideoFailedError naming it and the process (the first failing rank), the others
    OtherRankFailedError."""
    shares = gather(job, (runs, failure))
    failed = [(rank, f) for rank, (_, f) in enumerate(shares) if f is not None]
    if failed:
        rank, (name, message) = failed[0]
        if not job.main:
            raise OtherRankFailedError(name)
        raise VideoFailedError(f"{key}: video {name} failed in process {rank} of {job.world}: {message}")
    if not job.main:
        return None
    return {name: run for share, _ in shares for name, run in share.items()}


def _score_segmented(key: str, scoring: TestScoring | None, fps: float) -> Scores | None:
    """The scores of the masks just written, by `scoring` (the layout's: its own toolkit's rules), printed with its
    table; None when the split is not scored here."""
    if scoring is None:
        return None
    result = scoring.score()
    print(scoring.format(result))
    print(scoring.summary(result, key, fps))
    return result


def run_dataset(model: VOSModel, key: str, videos: Iterable[VideoReader], out_dir: Path, settings: RunSettings,
                scoring: TestScoring | None, zip_prefix: str | None,
                make_hook: Callable[[VideoReader], Any] | None = None, job: Dist | None = None,
                on_scored: Callable[[Scores, Path], None] | None = None) -> Scores | None:
    """Segment every video of one dataset into out_dir/<video>/, then score them by `scoring` (the layout's, if the
    split is scored here), and zip (if zip_prefix).

    Every reader is built (and so checked) before any frame runs. In a torchrun job (`job`) each process segments
    its share of the videos (`balance`) and writes their masks; all meet in one gather, and rank 0 alone scores and
    zips. A video that fails in any process stops the job: rank 0 raises VideoFailedError naming it, the others
    OtherRankFailedError.

    make_hook(video) gives a per-frame hook for segment_video (called as on_frame, then `.close()`d), e.g.
    visualize.Visualizer. on_scored(result, frames folder) is called after scoring (the report).
    """
    job = job or Dist()
    if job.main and scoring is not None:  # a run that fails half way must not leave the last run's scores beside
        remove_stale(scoring.stale)  # its new masks
        report.remove_outputs(out_dir)
    videos = list(videos)
    runs, failure = _segment_share(model, key, balance(videos, job.world)[job.rank], out_dir, settings, make_hook,
                                   job)
    gathered = _gather_runs(job, key, runs, failure)
    if gathered is None:
        return None
    done_runs = [gathered[v.name] for v in videos]  # in the dataset's order, as one process writes them
    total_frames, total_seconds = sum(r.frames for r in done_runs), sum(r.seconds for r in done_runs)
    written = [p for r in done_runs for p in r.written]
    fps = total_frames / max(total_seconds, 1e-9)
    print(f"{key}: {len(done_runs)} video{'s' * (len(done_runs) != 1)}, {total_frames} frames, {fps:.2f} fps "
          f"(model time{f', summed over {job.world} processes' if job.enabled else ''})")
    result = _score_segmented(key, scoring, fps)
    if result is not None and on_scored is not None and videos:
        on_scored(result, videos[0].frames[0].parent.parent)  # <frames>/<video>/<frame>.jpg
    if zip_prefix is not None:
        path = write_zip(written, out_dir.parent / f"{key}.zip", zip_prefix)
        print(f"{key}: submission archive {path} ({len(written)} masks)")
    return result


def weights_path(args: argparse.Namespace, trained_model: Path) -> Path:
    """The checkpoint file --weights names (default: the method's own file in trained_model/), fetched on first use
    when it is one of the authors' files."""
    given = args.weights or str(methods.default_weights(args.method, trained_model))
    # the base URL is looked up now, not bound at import, so that tests can stand a local server in for GitHub
    return weights.resolve_weights(given, trained_model, base_url=weights.OFFICIAL_BASE_URL)


def model_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The model flags given (config field -> value), every method's: the checkpoint says which method they meet."""
    names = config_flags.model_flag_names(methods.config_classes())
    return {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}


def load_model(args: argparse.Namespace, settings: RunSettings,
               trained_model: Path) -> tuple[VOSModel, str, dict[str, Any]]:
    """The checkpoint named by --weights (a path or an alias such as official-ytvos; default: the method's own file
    in trained_model/), fetched on first use when it is one of the authors' files, checked, on the run's device and
    precision; the model flags given override the file's config where the weights allow it (methods.check_overrides).
    Returns (model, method, record): the record says which file, config and overrides made the model (run.json)."""
    if args.method_given:  # a flag of the other method is refused before the file is read (or fetched)
        config_flags.given_model_flags(args, args.method, methods.config_classes(), " (--method)")
    path = weights_path(args, trained_model)
    overrides = model_overrides(args)
    net, meta = methods.load_weights(path, "--weights", overrides)
    if args.method_given and meta["method"] != args.method:
        raise VOSInputError(f"--weights {path} holds a {meta['method']} model but --method {args.method} was asked "
                            f"for; drop --method or pass a {args.method} checkpoint")
    method = methods.get(meta["method"])
    unused = config_flags.unused_flags(net.config, overrides)
    if unused is not None:
        raise VOSInputError(f"{unused}, and --weights {path} holds a {method.name} model with "
                            f"{config_flags.describe(net.config)}; drop the flag")
    print(f"{method.name}: {path}")
    held = asdict(method.config(**meta["file_config"]))  # the file's config, its defaults filled in
    for name in (n for n in overrides if getattr(net.config, n) != held[n]):
        print(f"config override: {name} {getattr(net.config, name)} (the file holds {held[name]})")
    record = {"method": method.name, "weights": str(path), "config": asdict(net.config), "file_config": held,
              "overrides": {n: getattr(net.config, n) for n in overrides}}
    net = place(net, settings)
    if args.channels_last:  # NHWC convolutions: faster with oneDNN and cuDNN (bench.py); fp32 logits move ~1e-5
        net = net.to(memory_format=torch.channels_last)
    if args.compile:
        if not method.compilable:
            able = ", ".join(m.name for m in methods.METHODS.values() if m.compilable)
            raise VOSInputError(f"--compile is implemented for {able}, not for {method.name}; drop --compile")
        net.compile_modules()
    return net, method.name, record


def load(checkpoint: str | Path = "emvos", device: str | None = None, precision: str = "fp32",
         runtime: Runtime | None = None, trained_model: str | Path = "trained_model",
         download: bool = True) -> VideoSegmenter:
    """A ready `VideoSegmenter` in one call: the checkpoint loaded (strict), on the device, in eval mode.

    checkpoint: a method name (`emvos`, `videomatch`: that method's own file in `trained_model`), an official alias
    (`official-davis`, `official-ytvos`) or a path; the authors' files are fetched into `trained_model` on first use
    unless download is False. The method is the one the checkpoint holds. device: "cpu" or "cuda" (default: cuda
    when available); precision: as run.py's --precision (fp32, fp64, bf16, fp16).
    """
    settings = run_settings(device, precision, runtime)
    folder = Path(trained_model)
    name = str(checkpoint)
    spec = str(methods.default_weights(name, folder)) if name in methods.METHODS else name
    path = weights.resolve_weights(spec, folder, download, base_url=weights.OFFICIAL_BASE_URL, wording=weights.API)
    net, _ = methods.load_weights(path, "checkpoint")
    net = place(net, settings)
    return VideoSegmenter(net, settings.dtype, settings.autocast, settings.runtime)


def place(net: torch.nn.Module, settings: RunSettings) -> torch.nn.Module:
    """The network on the run's device, in float64 when the frames are (fp64 compares with a reference)."""
    net = net.to(settings.device)
    return net.to(torch.float64) if settings.dtype == torch.float64 else net


def segment_benchmarks(args: argparse.Namespace, roots: Roots) -> list:
    """run.py --test: segment --video, or every --data benchmark (its --sequences), scoring and zipping each as its
    layout says; the scores of the benchmarks scored here (rank 0 only in a torchrun job, whose processes share the
    videos)."""
    settings = run_settings(args.device, args.precision, Runtime(memory_budget=args.max_memory))
    # oneDNN's primitive cache keeps every convolution it has built together with memory of its own: 60-90 MiB
    # resident at 854x480, for about 3 % of speed when they are built anew each frame (README, "Memory"). Read at the
    # first convolution; ONEDNN_PRIMITIVE_CACHE_CAPACITY set in the environment wins.
    os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "0")
    job = init_distributed(settings.device)  # torchrun: gloo on CPU, nccl on CUDA; else one process
    layouts: dict[str, Layout] = {}
    try:
        out_root = Path(args.output)
        # Every input is opened and checked before the model loads and any frame runs; the output folder must not
        # hold or lie inside any of them (frames, given masks, the ground truth being scored).
        if args.video is not None:
            layouts, selection = {"video": SingleVideo(args.video, args.mask)}, None
        else:
            layouts, selection = {key: registry.open_layout(key, roots) for key in args.data}, args.sequences
        check_output_outside(out_root, [p for data in layouts.values() for p in data.inputs(selection)], "--output")
        settings.device = process_device(job, settings.device)  # each process its own GPU (LOCAL_RANK)
        with output_lock(job, out_root):  # one run per output folder: two would score each other's masks
            return _segment_layouts(args, layouts, selection, out_root, settings, roots, job)
    except VOSInputError:
        if job.enabled and not job.main:  # every process finds the same bad input: process 0 tells it
            raise OtherRankFailedError("bad input") from None
        raise
    finally:
        for data in layouts.values():
            if isinstance(data, SingleVideo):
                data.close()
        close_distributed(job)


@contextlib.contextmanager
def output_lock(job: Dist, out_root: Path) -> Iterator[None]:
    """The --output lock, taken by process 0 for a whole torchrun job: the other processes learn whether it was
    taken, so that none of them goes on alone (and none finds process 0's lock and refuses)."""
    lock, error = None, None
    if job.main:
        try:
            lock = RunLock(out_root, "--output").acquire()
        except VOSInputError as e:
            error = str(e)
    if job.enabled:
        error = broadcast(job, error)
    if error is not None:
        raise VOSInputError(error)
    try:
        yield
    finally:
        if lock is not None:
            lock.release()


class ArraySegmenter:
    """The driver's segmenter for onnx_runner.OnnxSegmenter, which steps on numpy arrays: the reader's tensors go in
    as arrays, its labels and probabilities come back as tensors."""

    def __init__(self, seg: Any):
        self.seg = seg

    def step(self, frame: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        labels, probs = self.seg.step(frame.numpy(), None if mask is None else mask.numpy())
        return torch.from_numpy(labels), torch.from_numpy(probs)


def test_model(args: argparse.Namespace, settings: RunSettings,
               trained_model: Path) -> tuple[VOSModel | OnnxModel, dict[str, Any]]:
    """The model --test runs and its record for run.json: the --onnx graphs (onnx_runner, no PyTorch model), else
    the checkpoint (load_model) under the test-time augmentation of --flip / --scales (core/tta.py; none by
    default, when `tta.wrap` returns the model itself)."""
    if getattr(args, "onnx", None) is not None:
        try:
            net = OnnxModel(args.onnx)
        except FileNotFoundError as e:
            raise VOSInputError(f"--onnx: {e}") from None
        print(f"onnx: {net.path}")
        return net, {"method": "emvos", "weights": str(net.path), "onnx": True, "tta": tta.TTA().record()}
    net, _, record = load_model(args, settings, trained_model)
    augmentation = tta.TTA(getattr(args, "flip", False), tuple(getattr(args, "scales", None) or (TEST_SHORT_SIDE,)))
    record["tta"] = augmentation.record()
    return tta.wrap(net, augmentation), record


def _segment_layouts(args: argparse.Namespace, layouts: dict[str, Layout], selection: list[str] | None,
                     out_root: Path, settings: RunSettings, roots: Roots, job: Dist) -> list:
    """segment_benchmarks once the inputs are checked and the output folder is locked."""
    model, record = test_model(args, settings, roots.trained_model or methods.TRAINED_MODEL)

    def visualizer(key: str) -> Callable[[VideoReader], Visualizer] | None:
        if not args.visualize:
            return None
        return lambda video: Visualizer(video.name, out_root / "visualize" / key, args.vis_frame,
                                        frames=len(video.frames))

    checkpoint = Path(record["weights"])  # the file load_model read, for the reports

    def reporter(key: str, scoring: TestScoring | None) -> Callable[[Scores, Path], None] | None:
        if args.no_report or scoring is None:
            return None

        def write(result: Scores, frames_dir: Path) -> None:
            gt_dir, layout = scoring.report_masks
            scores = report.run_scores(result, frames_dir=frames_dir, gt_dir=gt_dir, pred_dir=out_root / key,
                                       mask_layout=layout, weights=checkpoint, command=getattr(args, "command", None))
            scores.extra["test-time augmentation"] = tta.TTA(**record["tta"]).describe()  # as run.json records it
            if record.get("onnx"):
                scores.extra["runtime"] = "onnxruntime (--onnx)"
            print(f"{key}: report {' and '.join(str(p) for p in report.publish(scores, out_root / key))}")
        return write

    results = []
    for key, data in layouts.items():
        single = key == "video"  # --video writes OUTPUT/<video name>/, a benchmark OUTPUT/<KEY>/<sequence>/
        names = data.sequences if selection is None else selection
        scoring = None if single else data.scoring(key, out_root / key, names)
        result = run_dataset(model, key, data.videos(selection), out_root if single else out_root / key, settings,
                             scoring, data.submission_prefix, visualizer(key), job, reporter(key, scoring))
        if args.visualize and job.main:
            print(f"{key}: overlays and probability maps in {out_root / 'visualize' / key}")
        if result is not None:
            results.append(result)
    if job.main:  # what made these outputs (the checkpoint, its config, this run's overrides), once they are whole
        text = json.dumps(record, indent=2) + "\n"
        atomic_write(out_root / "run.json", lambda f: f.write(text.encode()))
    return results


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
