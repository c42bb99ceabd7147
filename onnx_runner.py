"""Segment a video with the ONNX export of EMVOS (export.py) and numpy, Pillow and onnxruntime only: no PyTorch.

    python onnx_runner.py --model model.onnx --frames video/ --mask first.png --output masks/

The official test-time processing, in numpy, as the PyTorch driver does it (dataset.py, core/framework.py,
core/segmenter.py): the short side to 480 (bicubic frames, nearest masks) unless a given object would then have
fewer than 1000 pixels; the normalisation (ImageNet's mean and deviation, or the ones the exported checkpoint holds,
from the graph's metadata); reflect padding to multiples of 16 (the odd pixel left / top);
each object's [bg, fg] softmax; the soft aggregation of the objects (the minimum background and normalised odds, as
the official code); the given masks of later frames add objects (their frame becomes those objects' reference) or
correct them; masks are written at the original size (nearest) as palette PNGs. `run.py --test --onnx model.onnx`
runs `OnnxSegmenter.step` inside the PyTorch driver, so that its readers, writers and scoring give the numbers.

Importing this module imports neither torch nor onnxruntime (`OnnxModel` loads onnxruntime when built).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

STRIDE = 16  # of EMVOS's coarsest map: frames are padded to a multiple of it
TEST_SHORT_SIDE = 480  # the official test size rule (dataset.official_size)
MIN_OBJECT_PIXELS = 1000
# ImageNet's, as model.Encoder's buffers start; a graph's metadata (emvos.mean, emvos.std) gives its checkpoint's
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
EPS = 1e-7  # framework.aggregate_objects' clamp
FRAME_EXTS = {".jpg", ".jpeg", ".png"}


# ---------------------------------------------------------------------------------------------------------------
# geometry: the official size rule, resizing as torch's F.interpolate does it, padding
# ---------------------------------------------------------------------------------------------------------------

def _nearest_index(n_in: int, n_out: int) -> np.ndarray:
    """Source index of every output index of torch's 'nearest' (floor(i * in / out) in float32, clamped)."""
    if n_in == n_out:
        return np.arange(n_out)
    scale = np.float32(n_in) / np.float32(n_out)
    return np.minimum(np.floor(np.arange(n_out, dtype=np.float32) * scale).astype(np.int64), n_in - 1)


def resize_nearest(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(..., H, W) -> (..., h, w) as F.interpolate(mode='nearest') (dataset.resize_mask)."""
    rows, cols = _nearest_index(mask.shape[-2], size[0]), _nearest_index(mask.shape[-1], size[1])
    return mask[..., rows[:, None], cols[None, :]]


def _cubic_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """(indices (n_out, 4), weights (n_out, 4)) of torch's bicubic (A = -0.75, align_corners=False, indices clamped
    to the border)."""
    a = np.float32(-0.75)
    scale = np.float32(n_in) / np.float32(n_out)
    src = scale * (np.arange(n_out, dtype=np.float32) + np.float32(0.5)) - np.float32(0.5)
    base = np.floor(src)
    t = (src - base).astype(np.float32)

    def near(x: np.ndarray) -> np.ndarray:  # |x| <= 1
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x: np.ndarray) -> np.ndarray:  # 1 < |x| < 2
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    weights = np.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], axis=1).astype(np.float32)
    index = np.clip(base.astype(np.int64)[:, None] + np.arange(-1, 3)[None, :], 0, n_in - 1)
    return index, weights


def resize_bicubic(frame: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(C, H, W) float32 -> (C, h, w) bicubic, not clamped (dataset.resize_frame: the overshoot goes to the network
    as the official code feeds it)."""
    (ri, rw), (ci, cw) = _cubic_taps(frame.shape[1], size[0]), _cubic_taps(frame.shape[2], size[1])
    cols = sum(frame[:, :, ci[:, j]] * cw[:, j] for j in range(4))  # (C, H, w)
    return sum(cols[:, ri[:, j], :] * rw[:, j, None] for j in range(4)).astype(np.float32)  # (C, h, w)


def official_size(height: int, width: int, given: Iterable[np.ndarray]) -> tuple[int, int] | None:
    """The size to run at, or None to keep the original (dataset.official_size): short side to 480 unless a given
    object would then have fewer than 1000 pixels."""
    if min(height, width) == TEST_SHORT_SIDE:
        return None
    if height > width:
        size = (int(TEST_SHORT_SIDE / width * height), TEST_SHORT_SIDE)
    else:
        size = (TEST_SHORT_SIDE, int(TEST_SHORT_SIDE / height * width))
    for mask in given:
        ids, counts = np.unique(resize_nearest(mask, size), return_counts=True)
        if any(c < MIN_OBJECT_PIXELS for i, c in zip(ids.tolist(), counts.tolist(), strict=True) if i != 0):
            return None
    return size


def get_padding(height: int, width: int, stride: int = STRIDE) -> tuple[int, int, int, int]:
    """(left, right, top, bottom) to multiples of stride, the odd pixel left / top (framework.get_padding)."""
    h_pad, w_pad = (stride - height % stride) % stride, (stride - width % stride) % stride
    return (w_pad + 1) // 2, w_pad // 2, (h_pad + 1) // 2, h_pad // 2


def pad(x: np.ndarray, padding: tuple[int, int, int, int]) -> np.ndarray:
    """Reflect-pad the last two axes (torch's 'reflect': the border pixel is not repeated)."""
    left, right, top, bottom = padding
    if not any(padding):
        return x
    return np.pad(x, [(0, 0)] * (x.ndim - 2) + [(top, bottom), (left, right)], mode="reflect")


def unpad(x: np.ndarray, padding: tuple[int, int, int, int]) -> np.ndarray:
    left, right, top, bottom = padding
    return x[..., top:x.shape[-2] - bottom, left:x.shape[-1] - right]


# ---------------------------------------------------------------------------------------------------------------
# masks: one-hot, pooling, soft aggregation
# ---------------------------------------------------------------------------------------------------------------

def one_hot(ids_mask: np.ndarray, ids: list[int]) -> np.ndarray:
    """(H, W) ids -> (n, 2, H, W) float32 [mask != id, mask == id] (framework.one_hot)."""
    fg = np.stack([ids_mask == i for i in ids]).astype(np.float32)
    return np.stack([1 - fg, fg], axis=1)


def pool_mask(masks: np.ndarray) -> np.ndarray:
    """(N, 2, H, W) -> (N, 2, HW / 256): the average over each 16 x 16 cell, row-major (matching.pool_mask)."""
    n, c, h, w = masks.shape
    cells = masks.reshape(n, c, h // STRIDE, STRIDE, w // STRIDE, STRIDE).astype(np.float64)
    return cells.mean(axis=(3, 5)).astype(np.float32).reshape(n, c, -1)


def softmax(logits: np.ndarray, axis: int) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def aggregate(probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Soft aggregation (framework.aggregate_objects): (N, 2, H, W) [bg, fg] -> (labels (H, W) in 0..N, ties to the
    lower index; the aggregated (N, 2, H, W) [1 - p, p])."""
    bg = probs[:, 0].min(axis=0, keepdims=True)  # (1, H, W)
    odds = np.concatenate([np.clip(bg, EPS, 1 - EPS) / np.clip(1 - bg, EPS, 1 - EPS),
                           np.clip(probs[:, 1], EPS, 1 - EPS) / np.clip(probs[:, 0], EPS, 1 - EPS)])  # (1+N, H, W)
    p = odds / odds.sum(axis=0, keepdims=True)
    fg = p[1:]
    return p.argmax(axis=0), np.stack([1 - fg, fg], axis=1).astype(np.float32)


# ---------------------------------------------------------------------------------------------------------------
# the graphs and one video
# ---------------------------------------------------------------------------------------------------------------

class OnnxModel:
    """The two graphs of export.py: `path` (the per-frame step) and its `.encode.onnx` beside it (the first frame's
    encoding), in onnxruntime on the CPU."""

    def __init__(self, path: str | Path, threads: int | None = None):
        import onnxruntime as ort  # here: importing this module stays light

        self.path = Path(path)
        encoder = self.path.with_name(self.path.stem + ".encode.onnx")
        for p in (self.path, encoder):
            if not p.is_file():
                raise FileNotFoundError(f"ONNX model {p} does not exist; write it with python export.py --weights W "
                                        f"--output {self.path}")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        providers = ["CPUExecutionProvider"]
        self.step_graph = ort.InferenceSession(str(self.path), options, providers=providers)
        self.encode_graph = ort.InferenceSession(str(encoder), options, providers=providers)
        meta = self.step_graph.get_modelmeta().custom_metadata_map

        def channels(key: str, default: tuple[float, ...]) -> np.ndarray:
            values = [float(v) for v in meta[key].split(",")] if key in meta else default
            return np.array(values, np.float32).reshape(3, 1, 1)

        self.mean, self.std = channels("emvos.mean", MEAN), channels("emvos.std", STD)

    def encode(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(1, 3, H, W) normalised, padded -> the frame's keys (nk, k), each (C, HW)."""
        nk, k = self.encode_graph.run(["nk", "k"], {"image": image})
        return nk, k

    def step(self, image: np.ndarray, state: State) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """-> (logits (N, 2, H, W), nk, k) of one frame against the state."""
        logits, nk, k = self.step_graph.run(["logits", "nk", "k"], {
            "image": image, "ref_nk": state.ref_nk, "ref_k": state.ref_k, "ref_index": state.ref_index,
            "ref_mask16": state.ref_mask16, "prev_nk": state.prev_nk, "prev_k": state.prev_k,
            "prev_mask16": state.prev_mask16})
        return logits, nk, k

    def segmenter(self) -> OnnxSegmenter:
        """A new video."""
        return OnnxSegmenter(self)


@dataclass
class State:
    """EMVOS's state (model.VideoState) as arrays: the reference frames' keys (R, C, HW), each object's reference
    frame (N,), given masks (N, 2, HW), and the previous frame's keys (C, HW) and soft masks (N, 2, HW)."""

    ref_nk: np.ndarray
    ref_k: np.ndarray
    ref_index: np.ndarray
    ref_mask16: np.ndarray
    prev_nk: np.ndarray
    prev_k: np.ndarray
    prev_mask16: np.ndarray


@dataclass
class OnnxSegmenter:
    """One video, frame by frame, as `segmenter.VideoSegmenter`: `step(frame, mask=None)` -> (id mask, each object's
    aggregated foreground probability). The first frame needs a mask with an object; a later mask adds its new
    objects and overwrites the prediction with its pixels (a correction of the objects it holds)."""

    model: OnnxModel
    object_ids: list[int] = field(default_factory=list)
    state: State | None = None

    def step(self, frame: np.ndarray, mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """frame: (3, H, W) float RGB in [0, 1] at the run size; mask: (H, W) object ids or None.
        Returns (labels (H, W) int64, probs (N, H, W) float32)."""
        padding = get_padding(*frame.shape[-2:])
        image = pad((frame.astype(np.float32) - self.model.mean) / self.model.std, padding)[None]  # (1, 3, H, W)
        given = pad(np.asarray(mask, np.int64), padding) if mask is not None else None
        given_ids = [] if given is None else [int(i) for i in np.unique(given) if i != 0]
        new_ids = [i for i in given_ids if i not in self.object_ids]
        if self.state is None:
            if not new_ids:
                raise ValueError("the first frame needs a mask with at least one object (non-zero pixels)")
            masks = one_hot(given, new_ids)
            nk, k = self.model.encode(image)
            mask16 = pool_mask(masks)
            self.state = State(nk[None], k[None], np.zeros(len(new_ids), np.int64), mask16, nk, k, mask16)
            self.object_ids = new_ids
            return unpad(given, padding), unpad(masks[:, 1], padding)
        logits, nk, k = self.model.step(image, self.state)
        probs = softmax(logits, axis=1)  # (N, 2, H, W)
        corrected = [i for i in given_ids if i in self.object_ids]
        if corrected:
            probs[[self.object_ids.index(i) for i in corrected]] = one_hot(given, corrected)
        if new_ids:  # this frame becomes the new objects' reference (model.EMVOS.add_objects)
            masks = one_hot(given, new_ids)
            s = self.state
            s.ref_index = np.concatenate([s.ref_index, np.full(len(new_ids), len(s.ref_nk), np.int64)])
            s.ref_nk, s.ref_k = np.concatenate([s.ref_nk, nk[None]]), np.concatenate([s.ref_k, k[None]])
            s.ref_mask16 = np.concatenate([s.ref_mask16, pool_mask(masks)])
            self.object_ids = self.object_ids + new_ids
            probs = np.concatenate([probs, masks])
        index, probs = aggregate(probs)
        labels = np.array([0] + self.object_ids, np.int64)[index]
        if given is not None:
            labels = np.where(given != 0, given, labels)
        self.state.prev_nk, self.state.prev_k, self.state.prev_mask16 = nk, k, pool_mask(probs)  # model.EMVOS.update
        return unpad(labels, padding), unpad(probs[:, 1], padding)


# ---------------------------------------------------------------------------------------------------------------
# a folder of frames
# ---------------------------------------------------------------------------------------------------------------

def _palette() -> list[int]:
    """The DAVIS / PASCAL VOC palette (utils.save_mask's): the index's bits spread over R, G, B, high bit first."""
    out = []
    for index in range(256):
        rgb, c = [0, 0, 0], index
        for shift in range(7, -1, -1):
            for channel in range(3):
                rgb[channel] |= ((c >> channel) & 1) << shift
            c >>= 3
        out += rgb
    return out


def frame_files(folder: Path) -> list[Path]:
    """Visible .jpg/.jpeg/.png files, natural order (frame2 before frame10)."""
    import re

    def key(p: Path) -> list:
        return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", p.name)]

    return sorted((p for p in folder.iterdir() if p.suffix.lower() in FRAME_EXTS and not p.name.startswith(".")),
                  key=key)


def segment(model: OnnxModel, frames: list[Path], first_mask: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
    """Yield (index, id mask at the original size, uint8) of every frame, the first frame's mask given."""
    height, width = first_mask.shape
    size = official_size(height, width, [first_mask]) or (height, width)
    seg = model.segmenter()
    for index, path in enumerate(frames):
        rgb = np.asarray(Image.open(path).convert("RGB"))
        if rgb.shape[:2] != (height, width):
            raise ValueError(f"frame {path} is {rgb.shape[1]}x{rgb.shape[0]}, the mask {width}x{height}")
        frame = rgb.transpose(2, 0, 1).astype(np.float32) / 255
        mask = first_mask if index == 0 else None
        if size != (height, width):
            frame = resize_bicubic(frame, size)
            mask = resize_nearest(mask, size) if mask is not None else None
        labels, _ = seg.step(frame, mask)
        yield index, resize_nearest(labels, (height, width)).astype(np.uint8)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="onnx_runner.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, type=Path, help="the step graph export.py wrote (model.onnx)")
    p.add_argument("--frames", required=True, type=Path, help="a folder of frames (.jpg/.png, natural order)")
    p.add_argument("--mask", required=True, type=Path, help="the first frame's mask (palette PNG of object ids)")
    p.add_argument("--output", required=True, type=Path, help="folder for the masks (<frame name>.png)")
    p.add_argument("--threads", type=int, default=None, help="onnxruntime threads (default: its own choice)")
    args = p.parse_args(argv)
    for path, flag in ((args.frames, "--frames"), (args.mask, "--mask")):
        if not path.exists():
            p.exit(2, f"onnx_runner.py: error: {flag} {path} does not exist\n")
    frames = frame_files(args.frames)
    if not frames:
        p.exit(2, f"onnx_runner.py: error: --frames {args.frames} holds no .jpg/.jpeg/.png frame\n")
    try:
        model = OnnxModel(args.model, args.threads)
    except FileNotFoundError as e:
        p.exit(2, f"onnx_runner.py: error: --model: {e}\n")
    first = np.asarray(Image.open(args.mask))
    if first.ndim != 2:
        p.exit(2, f"onnx_runner.py: error: --mask {args.mask} is not a palette or grayscale PNG of object ids\n")
    args.output.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    for index, labels in segment(model, frames, first):
        img = Image.fromarray(labels, mode="P")
        img.putpalette(_palette())
        img.save(args.output / (frames[index].stem + ".png"))
    seconds = time.perf_counter() - t0
    print(f"{len(frames)} frames in {seconds:.1f} s ({len(frames) / seconds:.2f} fps); masks in {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
