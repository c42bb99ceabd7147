"""Segmenting one video: `VideoSegmenter`, the Python API around it, and one video from a reader to disk.

`VideoSegmenter` steps any `framework.VOSModel` through a video frame by frame (as XMem / Cutie do), holding only the
current frame and the model's state. From Python: `load(checkpoint)` gives a ready VideoSegmenter;
`VideoSegmenter.propagate(frames, masks)` yields every frame's mask and probabilities, `remove_object` stops tracking
an object; `read_frames` streams a folder or a cv2.VideoCapture. `segment_video` feeds a segmenter a
`dataset.VideoReader` (which decides the sizes and the files) and writes what it predicts: run.py --test's driver
(core/inference.py) and the trainer's validation both run videos through it, so their numbers are the same.

This module imports neither the command line (argparse) nor the reports and figures (tests/test_layering.py).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sized
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from core import methods, weights
from core.framework import Runtime, VOSModel, aggregate_objects, get_padding, one_hot, pad, pad_mask, unpad
from dataset import MIN_OBJECT_PIXELS, TEST_SHORT_SIDE, VideoReader, frame_files
from utils import VOSInputError, available_memory, read_frame


@dataclass(frozen=True)
class Precision:
    """What --precision sets: the dtype of frames, masks and probabilities (and so of the soft aggregation), the dtype
    the network's weights are cast to once (`place`), and the autocast dtype its layers run in (None: no autocast)."""

    frames: torch.dtype
    weights: torch.dtype
    autocast: torch.dtype | None = None


# bf16 casts the weights once: over float32 weights autocast casts every convolution's weights again at every call.
# (On a 2-core CPU without AMX both ran at the same speed, 0.493 and 0.496 s per frame at 854x480; the copies are
# what a compiled, prepacked run must not pay: docs/performance.md.) Autocast stays to cast each layer's float32
# inputs (the frame, the matching scores) at the boundaries. fp16 keeps float32 weights
# under autocast: float16 has the range of neither the BatchNorm statistics nor the raw keys' products.
PRECISIONS = {"fp32": Precision(torch.float32, torch.float32), "fp64": Precision(torch.float64, torch.float64),
              "bf16": Precision(torch.float32, torch.bfloat16, torch.bfloat16),
              "fp16": Precision(torch.float32, torch.float32, torch.float16)}


# ---------------------------------------------------------------------------------------------------------------
# the segmenter
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
        """Stop tracking `obj_id`: its slot leaves the model's state (the model's `remove_object(state, slot)`;
        `framework.VOSModel`'s default raises NotImplementedError), so from the next frame on its pixels go to the
        background or to the other objects, and it is never predicted again. A later mask holding `obj_id` starts it
        anew, as a new object."""
        if obj_id not in self.object_ids:
            raise ValueError(f"object {obj_id} is not tracked; the tracked objects are {self.object_ids}")
        slot = self.object_ids.index(obj_id)
        if len(self.object_ids) == 1:  # nothing left to track: the frames are background until a mask adds one
            self.state = None
        else:
            self.model.remove_object(self.state, slot)
        self.object_ids = [i for i in self.object_ids if i != obj_id]
        if self.last_probs is not None:
            self.last_probs = self.last_probs[[i for i in range(self.last_probs.shape[0]) if i != slot]]

    def propagate(self, frames: Iterable[np.ndarray | Tensor] | str | Path | cv2.VideoCapture,
                  masks: dict[int, np.ndarray | Tensor]) -> Propagation:
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
        check_propagate_masks(masks, len(frames) if isinstance(frames, Sized) else None)
        self.reset()
        self.owner = token = object()
        return Propagation(_propagate(self, iter(frames), masks, token))

    @torch.inference_mode()
    def step(self, frame: Tensor, mask: np.ndarray | Tensor | None = None) -> tuple[Tensor, Tensor]:
        """frame: (3, H, W) RGB in [0, 1]; mask: (H, W) object ids (read by `as_mask`) or None.

        Returns (labels (H, W) long object ids, probs (N, H, W) each object's aggregated foreground probability).
        Raises ValueError, naming the sizes, for a frame or mask of another shape than this video's.
        """
        mask = None if mask is None else as_mask(mask)
        self.size = check_step_inputs(frame, mask, self.size, self.frames_seen)
        self.frames_seen += 1
        if self.state is None and self.frames_seen > 1 and (mask is None or not bool(mask.any())):
            # every object was removed (remove_object) and none is given: background
            return torch.zeros(frame.shape[-2:], dtype=torch.long, device=self.device), \
                torch.zeros((0, *frame.shape[-2:]), device=self.device)
        padding = get_padding(*frame.shape[-2:], self.model.stride)
        img = pad(frame[None].to(self.device, self.dtype), padding)
        given = pad_mask(mask[None].to(self.device), padding) if mask is not None else None
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


def check_step_inputs(frame: Tensor, mask: Tensor | None, size: tuple[int, int] | None,
                      index: int) -> tuple[int, int]:
    """`VideoSegmenter.step`'s shapes before any work (the errors the model would raise from deep inside the matching
    name no size): the frame's (H, W), which must equal `size`, the video's (None: this is its first frame); index is
    the frame's, for the messages."""
    if not isinstance(frame, Tensor) or frame.ndim != 3 or frame.shape[0] != 3:
        got = tuple(frame.shape) if isinstance(frame, (Tensor, np.ndarray)) else type(frame).__name__
        raise ValueError(f"a frame must be a (3, H, W) RGB tensor in [0, 1] (step) or an (H, W, 3) uint8 array "
                         f"(propagate), not {got}")
    here = (int(frame.shape[-2]), int(frame.shape[-1]))
    if size is not None and here != size:
        raise ValueError(f"frame {index} is {here[0]}x{here[1]} (H x W), but this video's frames are "
                         f"{size[0]}x{size[1]}; every frame of a video has one size")
    if mask is not None and tuple(mask.shape) != here:  # mask: as_mask's (H, W) ids
        raise ValueError(f"the mask of frame {index} is {tuple(mask.shape)}, but the frame is "
                         f"{here} (H, W); give an (H, W) mask of object ids at the frame's size")
    return here


def check_propagate_masks(masks: dict[int, Any], frames: int | None) -> None:
    """`VideoSegmenter.propagate`'s masks before any frame runs: keyed by frame index, one at frame 0, none past the
    video's last frame (when its length, `frames`, is known up front)."""
    bad = [i for i in masks if not isinstance(i, (int, np.integer)) or i < 0]
    if bad:
        raise ValueError(f"masks are keyed by frame index 0, 1, ...; got {bad}")
    if 0 not in masks:
        raise ValueError(f"propagate needs a mask at frame 0 (masks were given at frames {sorted(masks)})")
    if frames is not None and max(masks) >= frames:
        raise ValueError(f"masks were given at frames {sorted(i for i in masks if i >= frames)}, but the "
                         f"video has {frames} frames (0 to {frames - 1})")


def _propagate(seg: VideoSegmenter, frames: Iterator, masks: dict[int, np.ndarray | Tensor], token: object
               ) -> Iterator[tuple[int, Tensor, dict[int, Tensor]]]:
    """propagate's frames: each stepped as it is read, while `token` still owns the segmenter."""
    index = -1
    for index, frame in enumerate(frames):
        if seg.owner is not token:
            raise RuntimeError("another propagate (or reset) started on this segmenter, so this video's state is "
                               "gone; run one video at a time, or use one segmenter per video (load() twice)")
        mask = masks.get(index)
        labels, probs = seg.step(as_frame(frame), mask)
        yield index, labels, dict(zip(seg.object_ids, probs, strict=True))
    if index < 0:
        raise ValueError("frames gave no frame (an iterator that was already read to its end?)")
    if max(masks) > index:
        raise ValueError(f"masks were given at frames {sorted(i for i in masks if i > index)}, but the video "
                         f"had {index + 1} frames (0 to {index})")


class Propagation:
    """VideoSegmenter.propagate's frames, iterated once: a second pass would silently yield nothing (a spent
    generator), so it raises instead."""

    def __init__(self, frames: Iterator[tuple[int, Tensor, dict[int, Tensor]]]):
        self._frames = frames
        self._done = False

    def __iter__(self) -> Propagation:
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


def as_mask(mask: np.ndarray | Tensor) -> Tensor:
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


def as_frame(frame: np.ndarray | Tensor) -> Tensor:
    """An (H, W, 3) uint8 RGB array -> the (3, H, W) float tensor in [0, 1] that `VideoSegmenter.step` takes; a
    tensor passes unchanged."""
    if isinstance(frame, Tensor):
        return frame
    frame = np.asarray(frame)
    if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
        raise ValueError(f"a frame must be an (H, W, 3) uint8 RGB array, not {frame.dtype} of shape {frame.shape}")
    return torch.tensor(frame).permute(2, 0, 1).float().div_(255)  # a copy: PIL and cv2 arrays may be read-only


def read_frames(source: str | Path | cv2.VideoCapture) -> Iterator[np.ndarray]:
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
    """How to run a model: device, precision (frames' dtype, autocast dtype, the weights' dtype) and the run-time
    memory settings."""

    device: torch.device
    dtype: torch.dtype = torch.float32
    autocast: torch.dtype | None = None
    runtime: Runtime = field(default_factory=Runtime)
    weights: torch.dtype = torch.float32  # what `place` casts the network to


def run_settings(device: str | None, precision: str = "fp32", runtime: Runtime | None = None) -> RunSettings:
    """Check --device / --precision against this machine: default cuda when available; fp16 needs a GPU."""
    if device == "cuda" and not torch.cuda.is_available():
        raise VOSInputError("--device cuda was asked for but PyTorch sees no CUDA device; pass --device cpu")
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    chosen = PRECISIONS[precision]
    if precision == "fp16" and dev.type != "cuda":
        raise VOSInputError("--precision fp16 needs --device cuda; on CPU use --precision bf16 or fp32")
    if precision == "bf16" and dev.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise VOSInputError("this GPU has no bfloat16; pass --precision fp16 or fp32")
    return RunSettings(dev, chosen.frames, chosen.autocast, runtime or Runtime(), chosen.weights)


@dataclass
class VideoRun:
    """What segment_video did: frames run, seconds of model time, and the mask files it wrote (in order)."""

    frames: int
    seconds: float
    written: list[Path]


def prefetch(items: list, load: Callable, depth: int = 2) -> Iterator:
    """Yield load(item) for each item, reading up to `depth` ahead in a thread so disk and model overlap (depth 0:
    in the caller's thread, when it comes). Only `depth` items are ever held, so memory does not grow with the
    video's length."""
    if depth == 0:
        yield from map(load, items)
        return
    with ThreadPoolExecutor(1) as pool:
        pending: deque[Future] = deque(pool.submit(load, x) for x in items[:depth])
        for nxt in items[depth:] + [None] * depth:
            result = pending.popleft().result()
            if nxt is not None:
                pending.append(pool.submit(load, nxt))
            yield result


def check_frame_memory(model: VOSModel, video: VideoReader, settings: RunSettings) -> None:
    """Before a video's first frame: refuse a run size whose untiled temporaries (the model's `frame_bytes`; 0, never
    refused, for a model that does not say) exceed the memory budget, or the free memory when the budget is
    automatic; no bound (None) never refuses.

    The official size rule keeps the full resolution when a given object would fall below 1000 pixels at 480p, so a
    4000x3000 photo sequence with a small object asks for gigabytes per similarity matrix: a clear refusal up front
    beats an out-of-memory kill half way."""
    budget = settings.runtime.memory_budget
    if budget is None:
        return
    h, w = video.run_size
    # the frames' dtype: EMVOS matches in at least float32 whatever --precision (a model that matches under autocast
    # in a narrower type is overestimated, which only refuses earlier)
    element = torch.finfo(settings.dtype).bits // 8
    need = model.frame_bytes(h, w, element)
    if need == 0:
        return
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


class InlineExecutor:
    """ThreadPoolExecutor's submit, run at once in the caller's thread: the writes of a CPU run (see overlap_io)."""

    def __enter__(self) -> InlineExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def submit(self, fn: Callable, *args: Any) -> Future:
        done: Future = Future()
        try:
            done.set_result(fn(*args))
        except Exception as e:  # raised from result(), where the driver surfaces a threaded write's error
            done.set_exception(e)
        return done


def overlap_io(device: torch.device) -> bool:
    """Whether frame reading and mask writing run in threads beside the model: on a GPU, yes (the CPU is free while
    it computes); on the CPU, no. There the model's threads take every core, and a reading or writing thread that
    preempts one of them stalls the whole parallel region: measured on 2 cores, 854x480 bf16, the model's time per
    frame was 14 % longer with the threads, and the whole process 1.5 s longer over 40 frames (docs/performance.md)."""
    return device.type != "cpu"


class Stepper(Protocol):
    """What `segment_video` steps: `VideoSegmenter`, or another runtime's segmenter of one video (run.py --test
    --onnx: core/inference.py's ArraySegmenter around onnx_runner's)."""

    def step(self, frame: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """(3, H, W) frame in [0, 1], (H, W) ids or None -> (labels (H, W), probs (N, H, W)), as VideoSegmenter."""


def segment_video(model: VOSModel | None, video: VideoReader, out_dir: Path, settings: RunSettings,
                  on_frame: Callable[[int, np.ndarray, np.ndarray, Stepper], None] | None = None,
                  keep_probabilities: bool = False, progress: bool = False,
                  stepper: Stepper | None = None) -> VideoRun:
    """Run one video frame by frame and write its masks under out_dir as the reader says (`VideoReader.write`).

    The reader decides the sizes (the official run size, masks back at the original size); this loop only times the
    model, overlaps reading and writing with it on a GPU (overlap_io), and surfaces write errors. on_frame(index,
    rgb frame, id mask, segmenter) is called after each frame (visualisation hooks); with keep_probabilities the
    segmenter keeps each frame's per-object probabilities for it. progress: a bar of the video's frames on stderr
    (a long video is minutes of model time on a CPU, with nothing else to show before its last frame). stepper: a
    fresh segmenter of this video to step instead of a VideoSegmenter of `model` (run.py --test --onnx; model None:
    no PyTorch model, so no memory estimate to check).
    """
    video.check()
    if stepper is None:
        if model is None:
            raise ValueError("segment_video needs a model or a stepper")
        check_frame_memory(model, video, settings)
        stepper = VideoSegmenter(model, settings.dtype, settings.autocast, settings.runtime, keep_probabilities)
    seconds, frames, written = 0.0, 0, []

    def load(index: int) -> tuple[int, np.ndarray, Tensor, Tensor | None]:
        rgb = video.image(index)
        return index, rgb, *video.model_input(index, rgb)

    bar = tqdm(total=len(video), desc=video.name, unit="frame", leave=False, disable=not progress)
    threads = overlap_io(settings.device)
    with ThreadPoolExecutor(1) if threads else InlineExecutor() as writer, bar:
        writes: deque[Future] = deque()
        for index, rgb, frame, mask in prefetch(list(range(len(video))), load, 2 if threads else 0):
            sync(settings.device)
            t0 = time.perf_counter()
            labels, _ = stepper.step(frame, mask)
            sync(settings.device)
            seconds += time.perf_counter() - t0
            frames += 1
            labels = video.to_output(labels)
            writes.append(writer.submit(video.write, out_dir, index, labels))
            while len(writes) > 4 or (writes and writes[0].done()):
                written += writes.popleft().result()  # surface write errors early; bound the queue
            if on_frame is not None:
                on_frame(index, rgb, labels, stepper)
            bar.update()
        for w in writes:
            written += w.result()
    return VideoRun(frames, seconds, written)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------------------------------------------------------
# the Python API's one call
# ---------------------------------------------------------------------------------------------------------------

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
    """The network on the run's device, its weights in the run's dtype (bf16: cast once; fp64 compares with a
    reference)."""
    net = net.to(settings.device)
    return net.to(settings.weights) if settings.weights != torch.float32 else net
