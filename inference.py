"""Running a model over videos: streaming frames from disk, writing masks, and run.py --test's library.

`VideoSegmenter` steps any `framework.VOSModel` through a video frame by frame (as XMem / Cutie do), holding only the
current frame and the model's state; `segment_video` feeds it a `dataset.VideoReader` (which decides the sizes and
the files) and writes what it predicts. run.py's --test and the trainer's validation both run videos through here,
so their numbers are the same. `segment_benchmarks` is --test itself: the benchmarks of `TEST_KEYS` opened from
`Roots`, the checkpoint (`load_model`), each benchmark segmented, scored and zipped (`run_dataset`, `write_zip`).
"""

import argparse
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

import numpy as np
import torch
from torch import Tensor

import config_flags
import evaluation
import methods
import weights
from dataset import DAVIS, Layout, SingleVideo, VideoReader, YouTubeVOS
from framework import Runtime, VOSModel, aggregate_objects, get_padding, one_hot, pad, pad_mask, unpad
from utils import VOSInputError, atomic_write, writable_dir
from visualize import Visualizer

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
        padding = get_padding(*frame.shape[-2:], self.model.stride)
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
    seg = VideoSegmenter(model, settings.dtype, settings.autocast, settings.runtime, keep_probabilities)
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

# --data key -> (benchmark, year, split)
TEST_KEYS = {
    "DAVIS16_val": ("davis", "2016", "val"),
    "DAVIS17_val": ("davis", "2017", "val"),
    "DAVIS17_test-dev": ("davis", "2017", "test-dev"),
    "YTVOS18_val": ("ytvos", "2018", "valid"),
    "YTVOS19_val": ("ytvos", "2019", "valid"),
    "sample": ("sample", "2016", "train"),  # the bundled piece of DAVIS 2016 train
}


@dataclass
class Roots:
    """Where the data and the checkpoints are (run.py's editable constants, or the flags that override them)."""

    davis: str | Path
    ytvos18: str | Path
    ytvos19: str | Path
    sample: Path  # the bundled DAVIS 2016 sample
    trained_model: Path  # the authors' files are fetched here; the default checkpoint is read from here


def open_layout(key: str, roots: Roots) -> Layout:
    """The benchmark that a --data key names, read from its root."""
    bench, year, split = TEST_KEYS[key]
    if bench == "sample":
        return DAVIS(roots.sample, year, split)
    if bench == "davis":
        return DAVIS(roots.davis, year, split)
    return YouTubeVOS(roots.ytvos18 if year == "2018" else roots.ytvos19, year, split)


def write_zip(files: Iterable[Path], zip_path: Path, prefix: str) -> Path:
    """Zip exactly these mask files for an evaluation server as `<prefix><video>/<frame>.png` (YouTube-VOS wants
    'Annotations/'): never whatever else sits in the folder from an earlier run. Written to a unique temporary name
    and renamed, so two runs never write into one file and a kill leaves no half archive."""
    def write(f: BinaryIO) -> None:
        with zipfile.ZipFile(f, "w", zipfile.ZIP_DEFLATED) as z:
            for png in files:
                z.write(png, f"{prefix}{png.parent.name}/{png.name}")

    return atomic_write(zip_path, write)


def run_dataset(model: VOSModel, key: str, videos: Iterable[VideoReader], out_dir: Path, settings: RunSettings,
                gt: dict[str, list[Path]] | None, binary: bool, zip_prefix: str | None,
                make_hook: Callable[[VideoReader], Any] | None = None) -> evaluation.EvaluationResult | None:
    """Segment every video of one dataset into out_dir/<video>/, then score against gt (the ground truth of those
    videos, if the split has it) and zip (if zip_prefix).

    make_hook(video) gives a per-frame hook for segment_video (called as on_frame, then `.close()`d), e.g.
    visualize.Visualizer.
    """
    split = "val" if "val" in key else key
    if gt is not None:  # a run that fails half way must not leave the last run's scores beside its new masks
        evaluation.remove_csvs(out_dir, split)
    total_frames, total_seconds, videos_run = 0, 0.0, 0
    written: list[Path] = []
    for video in videos:
        hook = make_hook(video) if make_hook else None
        try:
            done = segment_video(model, video, out_dir / video.name, settings, hook, keep_probabilities=bool(hook))
        finally:
            if hook is not None:
                hook.close()
        total_frames, total_seconds = total_frames + done.frames, total_seconds + done.seconds
        written += done.written
        videos_run += 1
        print(f"{key} {video.name}: {done.frames} frames, {done.frames / max(done.seconds, 1e-9):.2f} fps", flush=True)
    fps = total_frames / max(total_seconds, 1e-9)
    print(f"{key}: {videos_run} videos, {total_frames} frames, {fps:.2f} fps (model time)")
    result = None
    if gt is not None:
        result, _, _ = evaluation.evaluate_and_write(gt, out_dir, split, binary)
        print(evaluation.format_table(result, key))
        print(f"{key}: J&F {result.jf_mean:.3f}  J {result.j_mean:.3f}  F {result.f_mean:.3f}  {fps:.2f} fps")
    if zip_prefix is not None:
        path = write_zip(written, out_dir.parent / f"{key}.zip", zip_prefix)
        print(f"{key}: submission archive {path} ({len(written)} masks)")
    return result


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
    spec = methods.get(args.method)
    # the base URL is looked up now, not bound at import, so that tests can stand a local server in for GitHub
    path = weights.resolve_weights(args.weights or str(trained_model / spec.weights), trained_model,
                                   base_url=weights.OFFICIAL_BASE_URL)
    if args.method_given:  # a flag of the other method is refused before the file is read
        config_flags.given_model_flags(args, args.method, methods.config_classes(), " (--method)")
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
    net = net.to(settings.device)
    if settings.dtype == torch.float64:
        net = net.to(torch.float64)
    if args.channels_last:  # NHWC convolutions: faster with oneDNN and cuDNN (bench.py); fp32 logits move ~1e-5
        net = net.to(memory_format=torch.channels_last)
    if args.compile:
        if not method.compilable:
            able = ", ".join(m.name for m in methods.METHODS.values() if m.compilable)
            raise VOSInputError(f"--compile is implemented for {able}, not for {method.name}; drop --compile")
        net.compile_modules()
    return net, method.name, record


def segment_benchmarks(args: argparse.Namespace, roots: Roots) -> list[evaluation.EvaluationResult]:
    """run.py --test: segment --video, or every --data benchmark (its --sequences), scoring and zipping each as its
    layout says; the scores of the benchmarks that have ground truth on disk."""
    settings = run_settings(args.device, args.precision, Runtime(memory_budget=args.max_memory))
    # oneDNN's primitive cache keeps every convolution it has built together with memory of its own: 60-90 MiB
    # resident at 854x480, for about 3 % of speed when they are built anew each frame (README, "Memory"). Read at the
    # first convolution; ONEDNN_PRIMITIVE_CACHE_CAPACITY set in the environment wins.
    os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "0")
    out_root = writable_dir(Path(args.output), "--output")  # before the model loads and any frame runs
    model, _, record = load_model(args, settings, roots.trained_model)
    # what made these outputs (the checkpoint, its config and the overrides of this run), beside them
    text = json.dumps(record, indent=2) + "\n"
    atomic_write(out_root / "run.json", lambda f: f.write(text.encode()))

    def visualizer(key: str) -> Callable[[VideoReader], Visualizer] | None:
        if not args.visualize:
            return None
        return lambda video: Visualizer(video.name, out_root / "visualize" / key, args.vis_frame)

    if args.video is not None:
        single = SingleVideo(args.video, args.mask)
        try:
            run_dataset(model, "video", single.videos(), out_root, settings, None, False, None, visualizer("video"))
        finally:
            single.close()
        return []
    results = []
    for key in args.data:
        data = open_layout(key, roots)
        gt = data.ground_truth(args.sequences) if data.has_annotations else None
        result = run_dataset(model, key, data.videos(args.sequences), out_root / key, settings, gt, data.binary,
                             data.submission_prefix, visualizer(key))
        if result is not None:
            results.append(result)
    return results


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
