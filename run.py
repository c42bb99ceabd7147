"""EMVOS: `python run.py --test` segments DAVIS / YouTube-VOS (or one video), `python run.py --train` trains.

With no dataset on disk and no flags, `python run.py --test` runs on the short DAVIS sample shipped in `sample/`.
"""

import argparse
import os
import sys
import time
import zipfile
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import evaluation
from dataset import DAVIS, SingleVideo, TestVideo, YouTubeVOS
from model import VideoSegmenter, load_checkpoint
from utils import OverlayWriter, VOSInputError, parse_bytes, read_frame, read_mask, save_mask, save_probability_maps

# Dataset roots and weights: edit these or pass the flags (--davis, --ytvos, --coco, --weights), as in the official
# run.py. The DAVIS reader works out whether it was given the 2017 layout or the original DAVIS 2016 download.
DAVIS_ROOT = "../DB/DAVIS"
YTVOS18_ROOT = "../DB/YTVOS18"
YTVOS19_ROOT = "../DB/YTVOS19"
COCO_ROOT = "../DB/COCO"
WEIGHTS = {"emvos": "trained_model/coco_davis_best.pth", "videomatch": "trained_model/videomatch_davis_best.pth"}
SAMPLE_ROOT = Path(__file__).resolve().parent / "sample" / "DAVIS2016"  # CC BY 4.0, see sample/README.md

# --data key -> (benchmark, year, split)
TEST_KEYS = {
    "DAVIS16_val": ("davis", "2016", "val"),
    "DAVIS17_val": ("davis", "2017", "val"),
    "DAVIS17_test-dev": ("davis", "2017", "test-dev"),
    "YTVOS18_val": ("ytvos", "2018", "valid"),
    "YTVOS19_val": ("ytvos", "2019", "valid"),
    "sample": ("sample", "2016", "train"),  # the bundled piece of DAVIS 2016 train
}
PRECISIONS = {"fp32": (torch.float32, None), "fp64": (torch.float64, None),
              "bf16": (torch.float32, torch.bfloat16), "fp16": (torch.float32, torch.float16)}

# The official protocol (DESIGN 2): short side to 480 unless a given object would then have fewer pixels than this.
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
class RunSettings:
    """How to run the model: device, precision and what to write."""

    device: torch.device
    dtype: torch.dtype = torch.float32
    autocast: torch.dtype | None = None


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
        raise VOSInputError(f"first-frame mask {video.given_masks[0]} has no object (every pixel is 0); give at "
                            f"least one object as pixel values 1..255")
    return given


def segment_video(model: torch.nn.Module, video: TestVideo, out_dir: Path, settings: RunSettings,
                  on_frame: Callable[[int, np.ndarray, np.ndarray, VideoSegmenter], None] | None = None
                  ) -> tuple[int, float]:
    """Run one video frame by frame and write its palette PNGs to out_dir. Returns (frames run, model seconds).

    on_frame(index, rgb frame, id mask, segmenter) is called after each frame (visualisation hooks).
    """
    first = read_frame(video.frames[0])
    height, width = first.shape[:2]
    given = load_given_masks(video, (height, width))
    size = test_size(height, width, given.values())
    seg = VideoSegmenter(model, dtype=settings.dtype, autocast=settings.autocast)
    seconds, frames = 0.0, 0

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
            while len(writes) > 4 or (writes and writes[0].done()):
                writes.popleft().result()  # surface write errors early; bound the queue
            if on_frame is not None:
                on_frame(index, rgb, labels, seg)
        for w in writes:
            w.result()
    return frames, seconds


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Visualizer:
    """`--visualize`: an overlay MP4 next to a video's PNGs and, for VideoMatch, its soft matching layer's foreground
    and background probability maps of one frame as a PNG. Written as the frames go; nothing waits on a window."""

    def __init__(self, video: TestVideo, out_dir: Path, vis_frame: int = 1, fps: float = 24.0) -> None:
        self.out_dir = out_dir / video.name
        self.overlay = OverlayWriter(self.out_dir / "overlay.mp4", fps)
        self.vis_frame = vis_frame

    def __call__(self, index: int, rgb: np.ndarray, labels: np.ndarray, seg: VideoSegmenter) -> None:
        self.overlay.write(rgb, labels)
        maps = getattr(seg.state, "probability_maps", None)  # only VideoMatch's state exposes them
        if index == self.vis_frame and maps is not None:
            probs = maps(*seg.frame_size)[0].float()  # (N, 2, h, w) at the size the model ran at
            probs = F.interpolate(probs, size=labels.shape, mode="bilinear", align_corners=False).cpu().numpy()
            save_probability_maps(self.out_dir / f"probabilities_{index:05d}.png", probs[:, 1], probs[:, 0])

    def close(self) -> None:
        self.overlay.close()


# ---------------------------------------------------------------------------------------------------------------
# datasets
# ---------------------------------------------------------------------------------------------------------------

def open_dataset(key: str, args: argparse.Namespace) -> DAVIS | YouTubeVOS:
    bench, year, split = TEST_KEYS[key]
    if bench == "sample":
        return DAVIS(SAMPLE_ROOT, year, split)
    if bench == "davis":
        return DAVIS(args.davis, year, split)
    root = args.ytvos or (YTVOS18_ROOT if year == "2018" else YTVOS19_ROOT)
    return YouTubeVOS(root, year, split)


def write_zip(out_dir: Path, zip_path: Path, prefix: str) -> Path:
    """Zip the PNGs for an evaluation server: `<prefix><video>/<frame>.png` (YouTube-VOS wants 'Annotations/')."""
    tmp = zip_path.with_suffix(".zip.tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
        for png in sorted(out_dir.glob("*/*.png")):
            z.write(png, f"{prefix}{png.parent.name}/{png.name}")
    tmp.replace(zip_path)
    return zip_path


def run_dataset(model: torch.nn.Module, key: str, videos: Iterable[TestVideo], out_dir: Path, settings: RunSettings,
                gt: dict[str, list[Path]] | None, binary: bool, zip_prefix: str | None,
                visualize: Callable | None = None) -> evaluation.EvaluationResult | None:
    """Segment every video of one dataset into out_dir/<video>/, then score (if gt) and zip (if zip_prefix)."""
    total_frames, total_seconds = 0, 0.0
    names = []
    for video in videos:
        hook = visualize(video, out_dir) if visualize else None
        frames, seconds = segment_video(model, video, out_dir / video.name, settings, hook)
        if hook is not None:
            hook.close()
        total_frames, total_seconds = total_frames + frames, total_seconds + seconds
        names.append(video.name)
        print(f"{key} {video.name}: {frames} frames, {frames / max(seconds, 1e-9):.2f} fps", flush=True)
    fps = total_frames / max(total_seconds, 1e-9)
    print(f"{key}: {len(names)} videos, {total_frames} frames, {fps:.2f} fps (model time)")
    result = None
    if gt is not None:
        result = evaluation.evaluate_sequences({n: gt[n] for n in names}, out_dir, binary)
        evaluation.write_csvs(result, out_dir, "val" if "val" in key else key)
        print(evaluation.format_table(result, key))
        print(f"{key}: J&F {result.jf_mean:.3f}  J {result.j_mean:.3f}  F {result.f_mean:.3f}  {fps:.2f} fps")
    if zip_prefix is not None:
        path = write_zip(out_dir, out_dir.parent / f"{key}.zip", zip_prefix)
        print(f"{key}: submission archive {path}")
    return result


# ---------------------------------------------------------------------------------------------------------------
# entry point
# ---------------------------------------------------------------------------------------------------------------

def run_settings(args: argparse.Namespace) -> RunSettings:
    if args.device == "cuda" and not torch.cuda.is_available():
        raise VOSInputError("--device cuda was asked for but PyTorch sees no CUDA device; pass --device cpu")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype, autocast = PRECISIONS[args.precision]
    if args.precision == "fp16" and device.type != "cuda":
        raise VOSInputError("--precision fp16 needs --device cuda; on CPU use --precision bf16 or fp32")
    if args.precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise VOSInputError("this GPU has no bfloat16; pass --precision fp16 or fp32")
    return RunSettings(device, dtype, autocast)


def test(args: argparse.Namespace) -> list[evaluation.EvaluationResult]:
    settings = run_settings(args)
    # oneDNN's primitive cache keeps every convolution it has built together with memory of its own: 60-90 MiB
    # resident at 854x480, for about 3 % of speed when they are built anew each frame (README, "Memory"). Read at the
    # first convolution; ONEDNN_PRIMITIVE_CACHE_CAPACITY set in the environment wins.
    os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "0")
    weights = args.weights or WEIGHTS[args.method]
    model, meta = load_checkpoint(weights, settings.device)
    method = meta.get("method", "emvos")
    if args.weights is not None and args.method_given and method != args.method:
        raise VOSInputError(f"--weights {weights} holds a {method} model but --method {args.method} was asked for; "
                            f"drop --method or pass a {args.method} checkpoint")
    print(f"{method}: {weights}")
    model = model.to(settings.dtype) if settings.dtype == torch.float64 else model
    if args.channels_last:  # NHWC convolutions: faster with oneDNN and cuDNN (bench.py); fp32 logits move ~1e-5
        model = model.to(memory_format=torch.channels_last)
    if hasattr(model, "set_memory_budget"):
        model.set_memory_budget(args.max_memory)
    if args.compile:
        if not hasattr(model, "compile_modules"):
            raise VOSInputError(f"--compile is implemented for EMVOS only, not for {method}; drop --compile")
        model.compile_modules()
    out_root = Path(args.output)
    results = []

    def visualize(video: TestVideo, out_dir: Path) -> Visualizer:
        return Visualizer(video, out_dir, args.vis_frame)

    vis = visualize if args.visualize else None
    if args.video is not None:
        if args.mask is None:
            raise VOSInputError("--video needs --mask PATH: the first frame's mask (a palette or grayscale PNG)")
        single = SingleVideo(args.video, args.mask)
        try:
            run_dataset(model, "video", single.videos(), out_root, settings, None, False, None, vis)
        finally:
            single.close()
        return results
    for key in args.data:
        bench, _, split = TEST_KEYS[key]
        dataset = open_dataset(key, args)
        has_gt = bench != "ytvos" and split != "test-dev"
        gt = None
        if has_gt:
            names = dataset.sequences if args.sequences is None else args.sequences
            gt = {n: dataset.annotations(n) for n in names if n in dataset.sequences}
        zip_prefix = "Annotations/" if bench == "ytvos" else ("" if split == "test-dev" else None)
        result = run_dataset(model, key, dataset.videos(args.sequences), out_root / key, settings, gt,
                             getattr(dataset, "binary", False), zip_prefix, vis)
        if result is not None:
            results.append(result)
    return results


def default_data(args: argparse.Namespace) -> list[str]:
    """With no --data: the official DAVIS sets when DAVIS is on disk, else the bundled sample."""
    if Path(args.davis, "JPEGImages").is_dir():
        return ["DAVIS16_val", "DAVIS17_val"]
    print(f"no DAVIS at '{args.davis}' (set DAVIS_ROOT in run.py or pass --davis PATH); "
          f"running on the bundled sample {SAMPLE_ROOT}")
    return ["sample"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--train", action="store_true", help="train (stages, see --stages)")
    mode.add_argument("--test", action="store_true", help="segment datasets or one video and score them")
    p.add_argument("--method", default=None, choices=list(WEIGHTS),
                   help="emvos (default) or videomatch; --test takes the method from the checkpoint")
    p.add_argument("--davis", default=DAVIS_ROOT, help="DAVIS root (2017 layout or the original DAVIS 2016 download)")
    p.add_argument("--ytvos", default=None, help=f"YouTube-VOS root (default {YTVOS18_ROOT} / {YTVOS19_ROOT})")
    p.add_argument("--coco", default=COCO_ROOT, help="COCO root (converted JPEGImages/+Annotations/ or raw download)")
    p.add_argument("--device", default=None, choices=["cpu", "cuda"], help="default: cuda when available")
    p.add_argument("--precision", default="fp32", choices=list(PRECISIONS),
                   help="fp32; bf16/fp16 by autocast (fp16 needs CUDA); fp64 to compare with a reference")
    t = p.add_argument_group("test")
    t.add_argument("--data", nargs="+", choices=list(TEST_KEYS), default=None,
                   help="datasets to test on (default: DAVIS16_val DAVIS17_val, or the bundled sample)")
    t.add_argument("--weights", default=None,
                   help=f"checkpoint: official .pth or one written by --train (default {WEIGHTS['emvos']})")
    t.add_argument("--output", default="outputs", help="PNGs go to OUTPUT/<KEY>/<sequence>/<frame>.png")
    t.add_argument("--sequences", nargs="+", default=None, help="run only these sequences")
    t.add_argument("--video", default=None, help="one video: a folder of frames or a video file (needs --mask)")
    t.add_argument("--mask", default=None, help="first-frame mask PNG for --video (pixel values = object ids)")
    t.add_argument("--max-memory", type=parse_bytes, default="auto",
                   help="bound on one frame's matching/decoder temporaries, e.g. 4G or 512M; 'none': no bound; "
                        "default: automatic, from free memory")
    t.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True,
                   help="channels_last convolutions (default on)")
    t.add_argument("--compile", action="store_true", help="torch.compile the encoder and decoder (fixed sizes pay)")
    t.add_argument("--visualize", action="store_true",
                   help="also write <sequence>/overlay.mp4 and, for VideoMatch, the probability maps of --vis-frame")
    t.add_argument("--vis-frame", type=int, default=1, help="frame whose VideoMatch fg/bg probabilities are saved")
    try:
        import trainer
    except ImportError as e:  # the test side must keep working without the training dependencies
        p.set_defaults(train_unavailable=str(e))
    else:
        trainer.add_train_arguments(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.method_given = args.method is not None
    args.method = args.method or "emvos"
    try:
        if args.train:
            if getattr(args, "train_unavailable", None):
                raise VOSInputError(f"training is unavailable: {args.train_unavailable}")
            import trainer
            try:
                trainer.train(args)
            except trainer.TrainingError as e:  # a NaN/inf stop: the message says where and what to change
                print(f"error: {e}", file=sys.stderr)
                return 3
        else:
            if args.data is None and args.video is None:
                args.data = default_data(args)
            test(args)
    except (VOSInputError, FileNotFoundError, evaluation.EvaluationError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
