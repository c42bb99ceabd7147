"""Figures and videos that a person can read and that never block: files drawn with OpenCV and PIL, no window.

- `overlay_mask`, `OverlayWriter`: frames with their masks blended in the DAVIS palette colours, as images or as an
  MP4 written one frame at a time (`run.py --visualize`); `colorize`: probabilities through OpenCV's JET map.

- `save_probability_figure`: a frame beside each object's foreground and background probability maps, with a colour
  bar; for `run.py --visualize` (the frame's own probabilities as the driver keeps them).
- `Visualizer`: `run.py --visualize`'s per-frame hook: an overlay MP4 of the video and that figure for one frame.
- `probability_maps`: the public VideoMatch port's `videomatch.py REF.jpg REF.png IMG...`: VideoMatch's soft
  matching output (foreground / background probabilities) for any images against one reference image and its mask.
- `preview_augmentation`: the port's `preprocess.py IMG MASK`: samples of the training augmentation of an image and
  its mask, for EMVOS's clip sampler (samplers.make_clip) and VideoMatch's (samplers.PortAugmentation).

Panels are labelled with cv2.putText (matplotlib is not a dependency); probabilities use OpenCV's JET map
(0 blue, 0.5 green, 1 red) with its colour bar beside them.
"""

from __future__ import annotations

import os
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from core.framework import aggregate_objects, get_padding, one_hot, pad, pad_mask, unpad
from training import samplers
from utils import DAVIS_PALETTE, VOSInputError, read_frame, read_mask, why_no_object
from videomatch import VideoMatch

PANEL_HEIGHT = 240  # pixels of every panel's picture; widths follow each picture's aspect ratio
LABEL_HEIGHT = 26  # the white strip above each panel that names it (one or two lines)
GAP = 8  # white space between panels
WHITE = 255
FONT = cv2.FONT_HERSHEY_SIMPLEX


# ---------------------------------------------------------------------------------------------------------------
# overlays and colour maps (both methods)
# ---------------------------------------------------------------------------------------------------------------


PALETTE_RGB = np.array(DAVIS_PALETTE, dtype=np.uint8).reshape(256, 3)


def overlay_mask(frame: np.ndarray, mask: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend each object's palette colour into a frame.

    Args:
        frame: (H, W, 3) uint8 RGB.
        mask: (H, W) object ids (0 = background, left as it is).
        alpha: weight of the colour on object pixels.
    Returns:
        (H, W, 3) uint8 RGB.
    """
    frame = np.asarray(frame, dtype=np.uint8)
    mask = np.asarray(mask)
    if mask.shape != frame.shape[:2]:
        raise ValueError(f"mask {mask.shape} and frame {frame.shape[:2]} differ in size; resize the mask to the frame")
    colour = PALETTE_RGB[mask.astype(np.uint8)].astype(np.float32)  # (H, W, 3)
    blended = (1 - alpha) * frame.astype(np.float32) + alpha * colour
    return np.where((mask != 0)[..., None], np.rint(blended), frame).astype(np.uint8)


class OverlayWriter:
    """An MP4 (codec mp4v) of frames with their masks blended in, written one frame at a time (never blocks on a
    window, holds no frame): `write(frame, mask)` per frame, then `close()`; also a context manager."""

    def __init__(self, path: str | os.PathLike, fps: float = 24.0, alpha: float = 0.5) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fps, self.alpha = fps, alpha
        self.count = 0
        self._writer: cv2.VideoWriter | None = None
        self._size: tuple[int, int] | None = None

    def write(self, frame: np.ndarray, mask: np.ndarray) -> None:
        """frame: (H, W, 3) uint8 RGB; mask: (H, W) object ids."""
        image = overlay_mask(frame, mask, self.alpha)
        height, width = image.shape[:2]
        if self._writer is None:
            self._writer = cv2.VideoWriter(str(self.path), cv2.VideoWriter_fourcc(*"mp4v"), self.fps, (width, height))
            if not self._writer.isOpened():
                raise RuntimeError(f"OpenCV cannot write '{self.path}' with codec mp4v; give a path ending in .mp4 "
                                   f"in a writable folder")
            self._size = (height, width)
        elif (height, width) != self._size:  # VideoWriter would drop the frame without a word
            raise ValueError(f"frame {self.count} is {width}x{height} but the video '{self.path}' is "
                             f"{self._size[1]}x{self._size[0]}; all frames of one video must have one size")
        self._writer.write(np.ascontiguousarray(image[:, :, ::-1]))  # OpenCV takes BGR
        self.count += 1

    def close(self) -> None:
        if self._writer is not None:
            self._writer.release()
            self._writer = None

    def __enter__(self) -> OverlayWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def colorize(prob: np.ndarray, colormap: int = cv2.COLORMAP_JET) -> np.ndarray:
    """(H, W) values in [0, 1] -> (H, W, 3) uint8 RGB through an OpenCV colour map (JET: 0 blue, 1 red)."""
    grey = np.rint(np.clip(np.asarray(prob, dtype=np.float32), 0, 1) * 255).astype(np.uint8)
    return cv2.applyColorMap(grey, colormap)[:, :, ::-1]


# ---------------------------------------------------------------------------------------------------------------
# drawing
# ---------------------------------------------------------------------------------------------------------------

def text_strip(width: int, text: str, height: int = LABEL_HEIGHT, scale: float = 0.5) -> np.ndarray:
    """(height, width, 3) white strip with `text` in black: shrunk to fit the width, else wrapped onto two lines at
    its commas, else cut with '...'."""
    strip = np.full((height, width, 3), WHITE, np.uint8)

    def fits(line: str, s: float) -> bool:
        return cv2.getTextSize(line, FONT, s, 1)[0][0] <= width - 6

    while scale > 0.42 and not fits(text, scale):
        scale -= 0.04
    lines = [text]
    if not fits(text, scale) and ", " in text and height >= 22:
        parts = text.split(", ")
        cut = max(range(1, len(parts)), key=lambda k: fits(", ".join(parts[:k]) + ",", 0.4) * k)
        lines, scale = [", ".join(parts[:cut]) + ",", ", ".join(parts[cut:])], 0.4
    for k, line in enumerate(lines):
        while len(line) > 3 and not fits(line, scale):
            line = line[:-4] + "..."
        (_, th), _ = cv2.getTextSize(line, FONT, scale, 1)
        y = (height + th) // 2 if len(lines) == 1 else (k + 1) * height // 2 - 2
        cv2.putText(strip, line, (3, y), FONT, scale, (0, 0, 0), 1, cv2.LINE_AA)
    return strip


def fit_height(rgb: np.ndarray, height: int, nearest: bool = False) -> np.ndarray:
    """Resize an (H, W, 3) picture to `height` rows, keeping its aspect ratio."""
    h, w = rgb.shape[:2]
    width = max(1, round(w * height / h))
    if (h, w) == (height, width):
        return rgb
    method = cv2.INTER_NEAREST if nearest else (cv2.INTER_AREA if height < h else cv2.INTER_LINEAR)
    return cv2.resize(rgb, (width, height), interpolation=method)


def panel(rgb: np.ndarray, label: str, height: int = PANEL_HEIGHT, nearest: bool = False) -> np.ndarray:
    """A picture scaled to `height` with its label above."""
    pic = fit_height(np.asarray(rgb, dtype=np.uint8), height, nearest)
    return np.concatenate([text_strip(pic.shape[1], label), pic])


def colour_bar(height: int = PANEL_HEIGHT, label: str = "probability") -> np.ndarray:
    """The JET scale from 1 (top) to 0 (bottom), with ticks at 0, 0.25, ..., 1, labelled like a panel."""
    bar_w, width = 22, 74
    values = np.linspace(1, 0, height, dtype=np.float32)[:, None].repeat(bar_w, axis=1)
    pic = np.full((height, width, 3), WHITE, np.uint8)
    pic[:, 4:4 + bar_w] = colorize(values)
    for v in (0.0, 0.25, 0.5, 0.75, 1.0):
        y = min(height - 1, round((1 - v) * (height - 1)))
        cv2.line(pic, (4 + bar_w, y), (8 + bar_w, y), (0, 0, 0), 1)
        cv2.putText(pic, f"{v:g}", (11 + bar_w, min(height - 3, max(10, y + 4))), FONT, 0.4, (0, 0, 0), 1,
                    cv2.LINE_AA)
    return np.concatenate([text_strip(width, label, scale=0.45), pic])


def _stack(pictures: Sequence[np.ndarray], axis: int, gap: int) -> np.ndarray:
    """Pictures along axis 1 (side by side, top-aligned) or 0 (one under the other, left-aligned), gaps of white."""
    across = 1 - axis  # the other image axis, padded to the largest picture
    size = max(p.shape[across] for p in pictures)
    out = []
    for k, p in enumerate(pictures):
        if k:
            shape = [size, size, 3]
            shape[axis] = gap
            out.append(np.full(shape, WHITE, np.uint8))
        pad = [(0, 0), (0, 0), (0, 0)]
        pad[across] = (0, size - p.shape[across])
        out.append(np.pad(p, pad, constant_values=WHITE))
    return np.concatenate(out, axis=axis)


def hstack(panels: Sequence[np.ndarray], gap: int = GAP) -> np.ndarray:
    """Panels side by side, top-aligned, on white."""
    return _stack(panels, 1, gap)


def vstack(rows: Sequence[np.ndarray], gap: int = GAP) -> np.ndarray:
    """Rows one under the other, left-aligned, on white."""
    return _stack(rows, 0, gap)


def titled(figure: np.ndarray, title: str) -> np.ndarray:
    """A figure with a title line above it and a white margin around."""
    body = vstack([text_strip(figure.shape[1], title, height=30, scale=0.65), figure], gap=2)
    return np.pad(body, ((GAP, GAP), (GAP, GAP), (0, 0)), constant_values=WHITE)


def outlined(frame: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """A frame with each object blended in its palette colour and outlined in white (ids (H, W), 0 = none)."""
    out = np.ascontiguousarray(overlay_mask(frame, ids, alpha=0.45))
    for i in np.unique(ids):
        if i == 0:
            continue
        contours, _ = cv2.findContours((ids == i).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(out, contours, -1, (255, 255, 255), max(1, round(frame.shape[0] / 240)), cv2.LINE_AA)
    return out


def write_png(path: str | Path, rgb: np.ndarray) -> Path:
    """Write an (H, W, 3) uint8 RGB picture as PNG, creating the parent folders."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(rgb)).save(path, format="PNG")
    return path


# ---------------------------------------------------------------------------------------------------------------
# probability maps
# ---------------------------------------------------------------------------------------------------------------

def probability_figure(frame: np.ndarray, fg: np.ndarray, bg: np.ndarray, labels: np.ndarray | None = None,
                       object_ids: Sequence[int] | None = None, title: str = "",
                       reference: tuple[np.ndarray, np.ndarray] | None = None,
                       panel_height: int = PANEL_HEIGHT) -> np.ndarray:
    """The picture save_probability_figure writes (see there); `reference` (RGB frame, id mask) adds a first row
    with the reference image and its given mask."""
    frame = np.asarray(frame, dtype=np.uint8)
    fg, bg = np.asarray(fg, dtype=np.float32), np.asarray(bg, dtype=np.float32)
    if fg.ndim == 2:
        fg, bg = fg[None], bg[None]
    if fg.shape != bg.shape or fg.ndim != 3:
        raise ValueError(f"foreground {fg.shape} and background {bg.shape} maps must both be (H, W) or (N, H, W)")
    ids = list(object_ids) if object_ids is not None else list(range(1, fg.shape[0] + 1))
    if len(ids) != fg.shape[0]:
        raise ValueError(f"{len(ids)} object ids for {fg.shape[0]} probability maps")
    h, w = frame.shape[:2]
    if fg.shape[1:] != (h, w):  # maps at the run size, frame at its own: draw both at the frame's
        fg = np.stack([cv2.resize(m, (w, h), interpolation=cv2.INTER_LINEAR) for m in fg])
        bg = np.stack([cv2.resize(m, (w, h), interpolation=cv2.INTER_LINEAR) for m in bg])
    rows = []
    if reference is not None:
        ref_frame, ref_ids = reference
        rows.append(hstack([panel(outlined(ref_frame, ref_ids), "reference image + given mask", panel_height)]))
    for obj, f, b in zip(ids, fg, bg, strict=True):
        if labels is not None:
            mine, what = np.where(np.asarray(labels) == obj, obj, 0), "predicted mask"
        else:
            mine, what = np.where(f >= 0.5, obj, 0), "P(fg) >= 0.5"
        rows.append(hstack([
            panel(outlined(frame, mine), f"frame, object {obj}: {what}", panel_height),
            panel(colorize(f), f"object {obj}: P(foreground), {f.min():.2f}-{f.max():.2f}", panel_height),
            panel(colorize(b), f"object {obj}: P(background), {b.min():.2f}-{b.max():.2f}", panel_height),
            colour_bar(panel_height),
        ]))
    figure = vstack(rows)
    return titled(figure, title) if title else np.pad(figure, ((GAP, GAP), (GAP, GAP), (0, 0)),
                                                       constant_values=WHITE)


def save_probability_figure(path: str | Path, frame: np.ndarray, fg: np.ndarray, bg: np.ndarray,
                            labels: np.ndarray | None = None, object_ids: Sequence[int] | None = None,
                            title: str = "", panel_height: int = PANEL_HEIGHT) -> np.ndarray:
    """Write a PNG of each object's foreground and background probabilities beside its frame.

    One row per object: the frame with the object's predicted pixels (from `labels`, else P(fg) >= 0.5) blended in
    and outlined, P(foreground), P(background) on the JET scale, and the colour bar; `title` above all.

    Args:
        path: the .png file; parent folders are created.
        frame: (H, W, 3) uint8 RGB.
        fg, bg: (N, H, W) or (H, W) probabilities in [0, 1], one map per object; any size (drawn at the frame's).
        labels: (H, W) object ids of the output mask, or None.
        object_ids: the id of each map (default 1..N).
        title: e.g. 'bear, frame 1'.
    Returns:
        the picture written, (h, w, 3) uint8 RGB.
    """
    figure = probability_figure(frame, fg, bg, labels, object_ids, title, panel_height=panel_height)
    write_png(path, figure)
    return figure


def _tensor(rgb: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.tensor(rgb).permute(2, 0, 1)[None].float().div(255).to(device)


@torch.no_grad()
def probability_maps(model: VideoMatch, ref_image: str | Path, ref_mask: str | Path,
                     images: Sequence[str | Path], out_dir: str | Path, remove_outliers: bool = False,
                     panel_height: int = PANEL_HEIGHT) -> list[Path]:
    """VideoMatch's foreground / background probabilities of each image against one reference image and its mask,
    one PNG per image in out_dir ('<k>_<name>_probabilities.png'); the port's `videomatch.py REF.jpg REF.png IMG...`.

    Every image is matched against the reference alone (no previous frame, no online update), resized to the
    reference's size as the port does. remove_outliers False shows the soft matching layer as it is (the port's
    tool); True applies outlier removal around the reference mask, as for the frame right after the reference.
    Each object of the mask (ids 1, 2, ...) gets its own row; the frame panel outlines the aggregated prediction.

    Args:
        model: a videomatch.VideoMatch (methods.load_weights of a VideoMatch or port checkpoint).
    Returns:
        the PNG paths, in the order of `images`.
    """
    if not isinstance(model, VideoMatch):  # EMVOS has a decoder between matching and probabilities
        raise VOSInputError("the probability maps show VideoMatch's soft matching; pass a VideoMatch checkpoint")
    if not images:
        raise VOSInputError("give at least one image to match against the reference")
    ref = read_frame(ref_image)
    ids = read_mask(ref_mask)
    if ids.shape != ref.shape[:2]:
        raise VOSInputError(f"mask {ref_mask} is {ids.shape[1]}x{ids.shape[0]} but the reference image {ref_image} "
                            f"is {ref.shape[1]}x{ref.shape[0]}; the mask must be drawn on the reference image")
    objects = [int(i) for i in np.unique(ids) if i != 0]
    if not objects:
        raise VOSInputError(f"mask {ref_mask} has no object {why_no_object(ref_mask)}")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        h, w = ref.shape[:2]
        padding = get_padding(h, w, model.stride)
        given = pad_mask(torch.from_numpy(ids)[None].long().to(device), padding)
        state = model.init_state(model.encode(pad(_tensor(ref, device), padding)), one_hot(given, objects))
        paths = []
        for k, image in enumerate(images):
            rgb = read_frame(image)
            if rgb.shape[:2] != (h, w):
                rgb = np.asarray(Image.fromarray(rgb).resize((w, h), Image.BILINEAR))
            feats = model.encode(pad(_tensor(rgb, device), padding))
            logits = model.predict(feats, state, remove_outliers=remove_outliers)
            probs = unpad(torch.softmax(logits.float(), dim=2), padding)[0]  # (N, 2, H, W)
            index, _ = aggregate_objects(probs[None])
            labels = np.asarray([0, *objects])[index[0].cpu().numpy()]
            name = Path(image).stem
            figure = probability_figure(rgb, probs[:, 1].cpu().numpy(), probs[:, 0].cpu().numpy(), labels, objects,
                                        f"{Path(image).parent.name}/{Path(image).name} matched against "
                                        f"{Path(ref_image).parent.name}/{Path(ref_image).name}", (ref, ids),
                                        panel_height)
            paths.append(write_png(Path(out_dir) / f"{k:02d}_{name}_probabilities.png", figure))
        return paths
    finally:
        model.train(was_training)


# ---------------------------------------------------------------------------------------------------------------
# training augmentation
# ---------------------------------------------------------------------------------------------------------------

def _uint8(img: torch.Tensor) -> np.ndarray:
    """(3, H, W) float in [0, 1] -> (H, W, 3) uint8."""
    return (img.permute(1, 2, 0).clamp(0, 1) * 255).round().to(torch.uint8).contiguous().numpy()


def emvos_samples(img: Image.Image, mask: Image.Image, count: int,
                  output_size: tuple[int, int] = (384, 384)) -> list[tuple[np.ndarray, np.ndarray, str]]:
    """`count` draws of EMVOS's clip augmentation of one frame (samplers.make_clip with the samplers' random flips):
    (RGB, target mask, what was drawn)."""
    out = []
    for _ in range(count):
        h_flip, v_flip = random.random() > 0.5, random.random() > 0.5
        info: dict = {}
        clip = samplers.make_clip(iter([(img, mask)]), output_size, h_flip, v_flip, info)
        top, left, ch, cw = info["crop"]
        what = [w for w, on in (("h-flip", h_flip), ("v-flip", v_flip)) if on]
        what.append(f"crop {cw}x{ch} -> {output_size[1]}x{output_size[0]}")
        what.append(f"object {info['target']}" if info["target"] else "no object")
        out.append((_uint8(clip["imgs"][0]), clip["masks"][0].numpy().astype(np.uint8), ", ".join(what)))
    return out


def port_samples(img: Image.Image, mask: Image.Image, count: int, augment: samplers.PortAugmentation | None = None
                 ) -> list[tuple[np.ndarray, np.ndarray, str]]:
    """`count` draws of the port's augmentation (VideoMatch's training frames): (RGB, id mask, what was drawn)."""
    augment = augment or samplers.PortAugmentation()
    out = []
    for _ in range(count):
        a, m, ops = augment.apply(img, mask)
        out.append((np.asarray(a), np.asarray(m), ", ".join(ops) or "no operation drawn"))
    return out


def preview_augmentation(image: str | Path, mask: str | Path, out_path: str | Path, samples: int = 4, seed: int = 0,
                         augment: samplers.PortAugmentation | None = None, emvos_size: tuple[int, int] = (384, 384),
                         panel_height: int = 200) -> Path:
    """A PNG of training augmentations of one image and its mask, the port's `preprocess.py IMG MASK` without the
    window: the original, then a row of `samples` draws of EMVOS's sampler (480p, flips, its crop rule, squashed to
    emvos_size) and one of VideoMatch's (the port's flip / crop / zoom, each with p = 0.5, to 480x854), each panel
    at its own aspect ratio and labelled with what was drawn. Seeded: the same seed draws the same samples, and the
    caller's random state is left as it was.
    """
    rgb, ids = read_frame(image), read_mask(mask)
    if ids.shape != rgb.shape[:2]:
        raise VOSInputError(f"mask {mask} is {ids.shape[1]}x{ids.shape[0]} but image {image} is "
                            f"{rgb.shape[1]}x{rgb.shape[0]}; the mask must be drawn on the image")
    img, mask_img = Image.fromarray(rgb), Image.fromarray(ids)
    augment = augment or samplers.PortAugmentation()
    saved = random.getstate()
    try:
        random.seed(seed)
        emvos = emvos_samples(img, mask_img, samples, emvos_size)
        port = port_samples(img, mask_img, samples, augment)
    finally:
        random.setstate(saved)
    oh, ow = augment.output_size
    original = hstack([panel(outlined(rgb, ids), f"original {rgb.shape[1]}x{rgb.shape[0]}, given mask", panel_height)])
    emvos_row = hstack([panel(outlined(a, m), what, panel_height) for a, m, what in emvos])
    port_row = hstack([panel(outlined(a, m), what, panel_height) for a, m, what in port])
    width = max(original.shape[1], emvos_row.shape[1], port_row.shape[1])
    rows = [
        original,
        text_strip(width, f"EMVOS (samplers.make_clip): 480p, flips, its crop rule, resized to "
                          f"{emvos_size[1]}x{emvos_size[0]}", scale=0.55),
        emvos_row,
        text_strip(width, f"VideoMatch (samplers.PortAugmentation): flip / crop {augment.crop[0]:g}-{augment.crop[1]:g}"
                          f" / zoom {augment.scale[0]:g}-{augment.scale[1]:g}, each with p {augment.p:g}, resized to "
                          f"{ow}x{oh}" + ("" if augment.crop_any_size else
                                          " (as the port, no crop of frames not larger than that)"), scale=0.55),
        port_row,
    ]
    return write_png(out_path, titled(vstack(rows), f"training augmentation of {Path(image).name}"))


class KeptProbabilities(Protocol):
    """What Visualizer reads of the segmenter (segmenter.VideoSegmenter with keep_probabilities)."""

    last_probs: torch.Tensor | None  # (N, 2, h, w) each object's [bg, fg] probabilities of the last frame
    object_ids: list[int]


class Visualizer:
    """`--visualize`: an overlay MP4 of each video and the per-object foreground / background probabilities of one
    frame (--vis-frame) as a PNG, both under OUTPUT/visualize/<KEY>/<video>/, never among the masks (nor in a
    submission zip). Written as the frames go; nothing waits on a window."""

    def __init__(self, name: str, vis_dir: Path, vis_frame: int = 1, fps: float = 24.0,
                 frames: int | None = None) -> None:
        if frames is not None and vis_frame >= frames:  # checked before the video runs: else no figure, silently
            raise VOSInputError(f"--vis-frame {vis_frame} is past the last frame of {name} (frames 0..{frames - 1}); "
                                f"pass --vis-frame 1..{frames - 1}")
        self.name = name
        self.out_dir = vis_dir / name
        self.overlay = OverlayWriter(self.out_dir / "overlay.mp4", fps)
        self.vis_frame = vis_frame

    def __call__(self, index: int, rgb: np.ndarray, labels: np.ndarray, seg: KeptProbabilities) -> None:
        self.overlay.write(rgb, labels)
        if index == self.vis_frame and seg.last_probs is not None:
            probs = F.interpolate(seg.last_probs, size=labels.shape, mode="bilinear", align_corners=False).numpy()
            save_probability_figure(self.out_dir / f"probabilities_{index:05d}.png", rgb, probs[:, 1], probs[:, 0],
                                    labels=labels, object_ids=seg.object_ids, title=f"{self.name}, frame {index}")

    def close(self) -> None:
        self.overlay.close()
