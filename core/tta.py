"""Test-time augmentation: a horizontally flipped pass and passes at other scales, merged frame by frame.

`TTAModel` wraps any `framework.VOSModel` and is one itself, so the segmenter (`segmenter.VideoSegmenter`) runs it as it
runs the method: its padding, its handling of given and late objects, its soft aggregation and output are unchanged.
Each pass sees the frame at its own scale (and mirrored, for a flipped pass), runs the wrapped model with its own
state, and its per-object [bg, fg] probabilities come back to the frame's size (bilinear) and orientation. The
probabilities of the passes are averaged per object, and the driver aggregates the objects as usual.

What each pass remembers: all passes share the merged mask. After a frame every pass's state is updated with the
aggregated merged probabilities (mirrored and resized to the pass), not with its own prediction. This is what
Cutie's `flip_aug` does (cutie/inference/inference_core.py: the flipped copy runs as a second batch element, the two
predictions are averaged, and the averaged mask is memorised by both, mirrored for the flipped one). XMem's `--flip`
and `--size` (and Cutie's multi-scale evaluation) instead run every setting as a whole separate evaluation, each with
its own memory fed its own predictions, save the probabilities (`--save_scores`) and average them afterwards
(merge_multi_scale.py). The shared mask is chosen here because (1) the mask written out is the one every pass
propagates from, so a pass that drifts is pulled back each frame instead of drifting on; EMVOS matches against the
previous frame's mask alone (paper Sec. 3.1), so it has no long memory to recover from a drift; (2) one run streams
each video once with the memory of a few passes, with no score files to store and merge; (3) the merged mask is
exactly flip-equivariant (below), so the merged video is too.

Scales are short sides as the official test rule writes them: a pass at S runs the frame at S / 480 of the run size
(`dataset.TEST_SHORT_SIDE`), so at 480 x 854 for DAVIS at S = 480, and a video that the official rule keeps at its
full size (a small object) is scaled from that size. `TTA()` (no flip, 480 alone) is no augmentation: `wrap` gives the
model back unchanged, so `--scales 480` is the plain run, bit for bit. A single pass through `TTAModel` differs from
it only in the stride padding: the driver feeds the model's own predictions of the padded border back, the wrapper
the merged mask reflect-padded.

Flip-equivariance is exact, for any frame size: a flipped pass mirrors the frame before it resizes and pads it, and
mirrors its probabilities after resizing them back, so the passes run on a mirrored video are the passes run on the
video with their roles swapped, input for input; each scale's unflipped and flipped probabilities are added first (a
commutative sum) and the scales then in their order, so the merged probabilities of the mirrored video are the mirror
of the video's, bit for bit (tests/test_tta.py). Without the flipped pass a model is not: reflect padding puts the
odd pixel on the left, and learned filters are not symmetric.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from core.framework import Runtime, VOSModel, get_padding, pad, unpad
from dataset import TEST_SHORT_SIDE, resize_frame


@dataclass(frozen=True)
class TTA:
    """Which passes run: every scale (a short side, see the module docstring), each also mirrored when flip."""

    flip: bool = False
    scales: tuple[int, ...] = (TEST_SHORT_SIDE,)

    def __post_init__(self) -> None:
        if not self.scales or any(int(s) != s or s < 1 for s in self.scales):
            raise ValueError(f"TTA scales must be positive short sides in pixels, not {self.scales}")
        if len(set(self.scales)) != len(self.scales):
            raise ValueError(f"TTA scales {self.scales} repeat a scale; give each once")
        object.__setattr__(self, "scales", tuple(int(s) for s in self.scales))

    @property
    def passes(self) -> list[tuple[int, bool]]:
        """(scale, mirrored) of every pass, in the order their probabilities are summed."""
        return [(s, m) for s in self.scales for m in ((False, True) if self.flip else (False,))]

    @property
    def is_identity(self) -> bool:
        """One pass at the run size, unmirrored: no augmentation."""
        return self.passes == [(TEST_SHORT_SIDE, False)]

    def record(self) -> dict[str, Any]:
        """The settings as run.json and the report record them."""
        return {"flip": self.flip, "scales": list(self.scales)}

    def describe(self) -> str:
        """One line for the report: 'none', or the passes' settings ('flip, scales 480 560')."""
        if self.is_identity:
            return "none"
        return ", ".join((["flip"] if self.flip else []) + [f"scales {' '.join(map(str, self.scales))}"])


@dataclass
class _Pass:
    """One pass's geometry for a frame of the run size: mirrored or not, the size it runs at, its stride padding."""

    mirrored: bool
    size: tuple[int, int]  # (h, w) before padding
    padding: tuple[int, int, int, int]

    def frame(self, x: Tensor, resize: Any) -> Tensor:
        """(B, C, H, W) at the run size -> the pass's padded input: mirrored first, then resized, then padded."""
        if self.mirrored:
            x = x.flip(-1)
        if tuple(x.shape[-2:]) != self.size:
            x = resize(x, self.size)
        return pad(x, self.padding)

    def back(self, x: Tensor, size: tuple[int, int]) -> Tensor:
        """(B, C, h, w) padded pass output -> the run size (bilinear, as XMem and Cutie resize probabilities back),
        resized first, then mirrored."""
        x = unpad(x, self.padding)
        if tuple(x.shape[-2:]) != size:
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        return x.flip(-1) if self.mirrored else x


def _bicubic(x: Tensor, size: tuple[int, int]) -> Tensor:
    return torch.stack([resize_frame(f, size) for f in x])  # frames as the readers resize them (bicubic)


def _nearest(x: Tensor, size: tuple[int, int]) -> Tensor:
    return F.interpolate(x, size=size, mode="nearest")  # given masks as the readers resize them


def _bilinear(x: Tensor, size: tuple[int, int]) -> Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def _per_object(fn: Any, masks: Tensor) -> Tensor:
    """Apply a (B, C, H, W) -> (B, C, h, w) map to (B, N, 2, H, W) per-object masks."""
    return fn(masks.flatten(1, 2)).unflatten(1, masks.shape[1:3])


@dataclass
class TTAFeatures:
    """A frame as every pass sees it: the wrapped model's features per pass, and the geometry of each pass."""

    feats: list[Any]
    passes: list[_Pass]
    size: tuple[int, int]  # (H, W) of the frame at the run size
    dtype: torch.dtype


@dataclass
class TTAState:
    """The wrapped model's state of every pass (each its own, all fed the merged mask)."""

    states: list[Any] = field(default_factory=list)


class TTAModel(nn.Module):
    """A `framework.VOSModel` that runs `model` once per pass of `tta` and averages the passes' probabilities.

    Its stride is 1: the driver hands it the frame at the run size, and each pass pads its own input to the wrapped
    model's stride. `predict` returns the log of the averaged [bg, fg] probabilities, so that the driver's softmax
    gives them back (to float rounding) and aggregates the objects as it does for any model.
    """

    stride = 1

    def __init__(self, model: VOSModel, tta: TTA):
        super().__init__()
        self.model = model
        self.tta = tta
        self.config = model.config

    def geometry(self, height: int, width: int) -> list[_Pass]:
        """Every pass's geometry for a frame of (height, width) at the run size."""
        out = []
        for scale, mirrored in self.tta.passes:
            f = scale / TEST_SHORT_SIDE
            size = (height, width) if f == 1 else (max(1, round(height * f)), max(1, round(width * f)))
            out.append(_Pass(mirrored, size, get_padding(*size, self.model.stride)))
        return out

    def encode(self, img: Tensor) -> TTAFeatures:
        """img: (B, 3, H, W) RGB in [0, 1] at the run size."""
        passes = self.geometry(*img.shape[-2:])
        return TTAFeatures([self.model.encode(p.frame(img, _bicubic)) for p in passes], passes,
                           tuple(img.shape[-2:]), img.dtype)

    def _masks(self, feats: TTAFeatures, masks: Tensor) -> list[Tensor]:
        return [_per_object(lambda m, p=p: p.frame(m, _nearest), masks) for p in feats.passes]

    def init_state(self, feats: TTAFeatures, masks: Tensor) -> TTAState:
        return TTAState([self.model.init_state(f, m) for f, m in zip(feats.feats, self._masks(feats, masks),
                                                                      strict=True)])

    def add_objects(self, state: TTAState, feats: TTAFeatures, masks: Tensor) -> None:
        for s, f, m in zip(state.states, feats.feats, self._masks(feats, masks), strict=True):
            self.model.add_objects(s, f, m)

    def remove_object(self, state: TTAState, slot: int) -> None:
        remove = getattr(self.model, "remove_object", None)
        if remove is None:
            raise NotImplementedError(f"{type(self.model).__name__} has no remove_object(state, slot)")
        for s in state.states:
            remove(s, slot)

    def predict(self, feats: TTAFeatures, state: TTAState, runtime: Runtime | None = None) -> Tensor:
        """log of the passes' averaged [bg, fg] probabilities, (B, N, 2, H, W) at the run size."""
        total, pair = None, None
        for k, (p, f, s) in enumerate(zip(feats.passes, feats.feats, state.states, strict=True)):
            probs = torch.softmax(self.model.predict(f, s, runtime).to(feats.dtype), dim=2)  # (B, N, 2, h, w)
            probs = _per_object(lambda x, p=p: p.back(x, feats.size), probs)
            # a scale's unflipped and flipped passes are added first: a + b = b + a keeps mirroring exact
            pair = probs if pair is None else pair + probs
            if not self.tta.flip or k % 2 == 1:
                total = pair if total is None else total + pair
                pair = None
        return torch.log(total / len(feats.passes))

    def update(self, state: TTAState, feats: TTAFeatures, probs: Tensor) -> None:
        """Every pass remembers the merged, aggregated probabilities (B, N, 2, H, W), mirrored and resized to it."""
        for p, f, s in zip(feats.passes, feats.feats, state.states, strict=True):
            self.model.update(s, f, _per_object(lambda x, p=p: p.frame(x, _bilinear), probs))

    def frame_bytes(self, height: int, width: int, element_size: int = 4) -> int:
        """The wrapped model's frame_bytes at the largest pass (the passes run one after the other)."""
        estimate = getattr(self.model, "frame_bytes", None)
        if estimate is None:
            return 0
        return max(estimate(*p.size, element_size) for p in self.geometry(height, width))


def wrap(model: VOSModel, tta: TTA) -> VOSModel:
    """model under `tta`; the model itself when tta is no augmentation (one unmirrored pass at 480)."""
    return model if tta.is_identity else TTAModel(model, tta)


def augment(segmenter: Any, flip: bool = False, scales: tuple[int, ...] | list[int] = (TEST_SHORT_SIDE,)) -> Any:
    """A `segmenter.VideoSegmenter` like `segmenter` (its precision and run-time settings, a fresh video; the given
    one is left as it is) whose model runs under test-time augmentation, with the same `step` / `propagate`:

        seg = tta.augment(segmenter.load("emvos"), flip=True, scales=(480, 560))
        for index, labels, probs in seg.propagate("video_frames/", {0: first_mask}): ...

    Frames run at the size given, which the scales are relative to (module docstring).
    """
    return dataclasses.replace(segmenter, model=wrap(segmenter.model, TTA(flip, tuple(scales))), object_ids=[],
                               state=None, last_probs=None, frames_seen=0)
