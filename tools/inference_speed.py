"""Cost of test-time augmentation, and onnxruntime against PyTorch, on real frames (the bundled DAVIS 2016 sample).

    python tools/inference_speed.py --tta --weights W --frames 4              # seconds per frame of each TTA setting
    python tools/inference_speed.py --onnx model.onnx --weights W --frames 6   # the export against its checkpoint
    python tools/inference_speed.py --api --weights W                         # the Python API against run.py --test

The sample's `bear` (854 x 480, the official run size) is segmented from its given first mask. A frame's time is
the median over the frames after the first (which only encodes the given mask). --tta runs the PyTorch model
(fp32) with no augmentation, --flip, --scales 480 560 and both, each frame through all four in turn. --onnx steps
PyTorch (fp32, `segmenter.VideoSegmenter`) and onnxruntime (`onnx_runner.OnnxSegmenter`) through the same frames in
lockstep. In both modes other load on the machine hits every setting alike. --onnx prints each one's frames per
second, the share of equal mask pixels and the largest logit difference. --api times `segmenter.load(W).propagate`
on the sample's bear against `run.py --test` on the same frames (its model time per frame, as it prints it), in one
process, alternating, two rounds. Without --weights the model has random weights (seed 0).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # a script in tools/: the modules live one folder up

import onnx_runner  # noqa: E402
from core import methods, tta  # noqa: E402
from core.flags import OneLineParser  # noqa: E402
from core.segmenter import VideoSegmenter  # noqa: E402
from utils import read_frame, read_mask  # noqa: E402

SAMPLE = Path(__file__).resolve().parents[1] / "sample" / "DAVIS2016"
TTA_SETTINGS = {"none": tta.TTA(), "--flip": tta.TTA(flip=True), "--scales 480 560": tta.TTA(scales=(480, 560)),
                "--flip --scales 480 560": tta.TTA(flip=True, scales=(480, 560))}


def sample_video(frames: int, sequence: str = "bear") -> tuple[list[torch.Tensor], torch.Tensor]:
    """The first `frames` frames of a sample sequence as (3, H, W) tensors in [0, 1], and its first mask (ids)."""
    paths = sorted((SAMPLE / "JPEGImages" / "480p" / sequence).glob("*.jpg"))[:frames]
    rgb = [torch.tensor(read_frame(p)).permute(2, 0, 1).float() / 255 for p in paths]  # a copy: read-only
    mask = torch.from_numpy(read_mask(SAMPLE / "Annotations" / "480p" / sequence / "00000.png", binary=True)).long()
    return rgb, mask


def timed(step: object, *args: object) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = step(*args)
    return time.perf_counter() - t0, out


def time_tta(net: torch.nn.Module, frames: list[torch.Tensor], mask: torch.Tensor) -> None:
    """Every setting steps through each frame in turn (lockstep), so that other load hits them alike."""
    segs = {name: tta.augment(VideoSegmenter(net), s.flip, s.scales) for name, s in TTA_SETTINGS.items()}
    seconds: dict[str, list[float]] = {name: [] for name in segs}
    for i, frame in enumerate(frames):
        for name, seg in segs.items():
            t = timed(seg.step, frame, mask if i == 0 else None)[0]
            if i:
                seconds[name].append(t)
        print(f"frame {i}: " + ", ".join(f"{name} {s[-1]:.2f} s" for name, s in seconds.items() if i), flush=True)
    base = statistics.median(seconds["none"])
    for name, setting in TTA_SETTINGS.items():
        median = statistics.median(seconds[name])
        print(f"{name:26s} {median:7.2f} s/frame  {1 / median:6.3f} fps  x{median / base:.2f}  "
              f"({len(setting.passes)} pass{'es' * (len(setting.passes) > 1)})")


def compare_onnx(net: torch.nn.Module, path: Path, frames: list[torch.Tensor], mask: torch.Tensor) -> None:
    om = onnx_runner.OnnxModel(path)
    seg, oseg, logits = VideoSegmenter(net), om.segmenter(), {}
    predict, step = net.predict, om.step
    net.predict = lambda *a, **k: logits.__setitem__("torch", predict(*a, **k)) or logits["torch"]
    om.step = lambda *a: logits.__setitem__("onnx", step(*a)) or logits["onnx"]
    times, equal, total, diff = {"pytorch": [], "onnxruntime": []}, 0, 0, 0.0
    for i, frame in enumerate(frames):
        given = mask if i == 0 else None
        t_torch, (labels, _) = timed(seg.step, frame, given)
        t_onnx, (labels_o, _) = timed(oseg.step, frame.numpy(), None if given is None else given.numpy())
        equal, total = equal + int((labels.numpy() == labels_o).sum()), total + labels_o.size
        if i:
            times["pytorch"].append(t_torch)
            times["onnxruntime"].append(t_onnx)
            diff = max(diff, float(np.abs(logits["torch"][0].numpy() - logits["onnx"][0]).max()))
        print(f"frame {i}: pytorch {t_torch:.2f} s, onnxruntime {t_onnx:.2f} s", flush=True)
    for name, seconds in times.items():
        median = statistics.median(seconds)
        print(f"{name:12s} {median:6.2f} s/frame  {1 / median:6.3f} fps (median of {len(seconds)} frames)")
    print(f"masks: {equal / total:.5%} of {total} pixels equal; largest logit difference {diff:.3g}")


def time_api(weights: str, rounds: int = 2) -> None:
    """--api: seconds per frame of the Python API (median over the frames after the first) against run.py --test's
    model time per frame (the fps it prints for the video), alternating so that load hits both alike."""
    import contextlib
    import io
    import re
    import tempfile

    import run
    from core import segmenter

    folder = SAMPLE / "JPEGImages" / "480p" / "bear"
    first = read_mask(SAMPLE / "Annotations" / "480p" / "bear" / "00000.png")
    seg = segmenter.load(weights, device="cpu")
    for r in range(rounds):
        steps, start = [], time.perf_counter()
        for _ in seg.propagate(segmenter.read_frames(folder), {0: first}):
            steps.append(time.perf_counter() - start)
            start = time.perf_counter()
        out, printed = tempfile.mkdtemp(prefix="inference_speed_"), io.StringIO()
        with contextlib.redirect_stdout(printed):
            run.main(["--test", "--data", "DAVIS16_val", "--davis", str(SAMPLE), "--sequences", "bear", "--weights",
                      weights, "--device", "cpu", "--output", out, "--no-report"])
        fps = float(re.search(r"bear: \d+ frames, ([0-9.]+) fps", printed.getvalue()).group(1))
        api = statistics.median(steps[1:])
        print(f"round {r}: propagate {api:.3f} s/frame, run.py --test {1 / fps:.3f} s/frame, ratio {api * fps:.2f}")


def main(argv: list[str] | None = None) -> int:
    p = OneLineParser(prog="inference_speed.py", description=__doc__,
                      formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--tta", action="store_true", help="seconds per frame of each TTA setting (PyTorch, fp32)")
    mode.add_argument("--onnx", type=Path, metavar="MODEL", help="export.py's step graph, from --weights")
    mode.add_argument("--api", action="store_true", help="the Python API's propagate against run.py --test")
    p.add_argument("--weights", default=None, help="the checkpoint (default: random weights, seed 0)")
    p.add_argument("--frames", type=int, default=4, help="frames of the sample's bear (2 to 10)")
    p.add_argument("--threads", type=int, default=None, help="torch's CPU threads (default: torch's choice)")
    args = p.parse_args(argv)
    if not 2 <= args.frames <= 10:
        p.error("--frames must be 2 to 10 (the sample's bear has 10 frames; the first only encodes its mask)")
    if args.api and not args.weights:
        p.error("--api needs --weights (run.py --test loads a checkpoint file)")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.api:
        time_api(args.weights)
        return 0
    torch.manual_seed(0)
    net = methods.load_weights(args.weights)[0] if args.weights else methods.build_model("emvos").eval()
    frames, mask = sample_video(args.frames)
    print(f"bear: {args.frames} frames of {frames[0].shape[2]}x{frames[0].shape[1]}, {torch.get_num_threads()} "
          f"torch threads")
    with torch.inference_mode():
        if args.tta:
            time_tta(net, frames, mask)
        else:
            compare_onnx(net, args.onnx, frames, mask)
    return 0


if __name__ == "__main__":
    sys.exit(main())
