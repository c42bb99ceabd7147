"""What every method shares, below all of them: the interface a model meets, how it runs on a machine, and the steps
around it that do not depend on the method (padding to its stride, id masks as one-hot, soft aggregation of the
objects, the training forward over a clip).

Shapes: B clips (1 at test time), N tracked objects, n objects given at one frame, H x W the frame padded to a
multiple of the model's stride.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from utils import auto_memory_budget


@dataclass
class Runtime:
    """How to run a model on this machine. Not part of the weights, so it is passed to `predict` (by the driver,
    `segmenter.VideoSegmenter`) rather than stored on the network. Its fields hold for every method; a method may
    extend it with settings of its own (EMVOS: model.EMVOSRuntime) and reads the fields it has a use for."""

    # bound in bytes on one frame's matching readout and decoder temporaries; "auto": a share of the memory free on
    # the frame's device, looked up every frame (utils.auto_memory_budget); None: no bound. run.py's --max-memory.
    memory_budget: int | str | None = "auto"

    def __post_init__(self) -> None:
        if isinstance(self.memory_budget, str) and self.memory_budget != "auto":
            raise ValueError(f"memory budget must be bytes, None or 'auto', not {self.memory_budget!r}")

    def budget_bytes(self, device: torch.device) -> int | None:
        """The memory budget in bytes for a frame on device, resolving "auto" now."""
        if self.memory_budget == "auto":
            return auto_memory_budget(device)
        return self.memory_budget  # type: ignore[return-value]


DEFAULT_RUNTIME = Runtime()


@runtime_checkable
class VOSModel(Protocol):
    """What the segmenter (`segmenter.VideoSegmenter`), the --test driver and the trainer call on a model.

    `feats` and `state` are the method's own types (a small dataclass each). Frames reach the model padded to a
    multiple of its `stride` (EMVOS 16, VideoMatch 8).

    A method's class inherits this Protocol (`class EMVOS(nn.Module, VOSModel)`), so that it gets the defaults of
    `remove_object` (refuses) and `frame_bytes` (0: no estimate) when it does not implement them.
    """

    config: Any  # a dataclass; asdict(config) rebuilds the model with the method's config class
    stride: int  # frames are padded to a multiple of this (the coarsest feature map's stride)

    def encode(self, img: Tensor) -> Any:
        """(B, 3, H, W) RGB in [0, 1] -> the frame's features."""

    def init_state(self, feats: Any, masks: Tensor) -> Any:
        """Start a video from the objects given at this frame; masks (B, n, 2, H, W) [bg, fg] in {0, 1}."""

    def add_objects(self, state: Any, feats: Any, masks: Tensor) -> None:
        """Objects first given at a later frame join the state (masks as in init_state)."""

    def predict(self, feats: Any, state: Any, runtime: Runtime | None = None) -> Tensor:
        """Logits (B, N, 2, H, W) [bg, fg] of every tracked object in a new frame."""

    def update(self, state: Any, feats: Any, probs: Tensor) -> None:
        """After a frame: remember it with the aggregated soft masks probs (B, N, 2, H, W)."""

    def remove_object(self, state: Any, slot: int) -> None:
        """Forget the object in `slot` (0..N-1, in order of first appearance), so that the later frames track only the
        others (`VideoSegmenter.remove_object`). Default: NotImplementedError, naming the class."""
        raise NotImplementedError(f"{type(self).__name__} does not implement remove_object(state, slot), so "
                                  f"VideoSegmenter.remove_object cannot stop tracking one of its objects")

    def frame_bytes(self, height: int, width: int, element_size: int = 4) -> int:
        """Bytes of one frame's largest temporaries that the memory budget cannot tile at a run size of height x
        width (elements of element_size bytes); the driver refuses a video whose frames would not fit
        (`segmenter.check_frame_memory`). Default: 0, no estimate, never refused."""
        return 0

    def forward(self, imgs: Tensor, first_masks: Tensor) -> Tensor:
        """Training: clips (B, L, 3, H, W), first masks (B, H, W) -> the logits of frames 1..L-1 that the method's
        loss takes (one object, EMVOS and VideoMatch: (B, L-1, 2, H, W); several: clip_forward's (B, L-1, N, 2, H,
        W)). The trainer reaches it through the method's `train_forward` (methods.Method)."""


# ---------------------------------------------------------------------------------------------------------------
# padding, masks, aggregation
# ---------------------------------------------------------------------------------------------------------------

def get_padding(height: int, width: int, stride: int) -> tuple[int, int, int, int]:
    """(left, right, top, bottom) to reach multiples of stride; the odd pixel goes left/top, as in the official EMVOS
    code."""
    h_pad, w_pad = (stride - height % stride) % stride, (stride - width % stride) % stride
    return (w_pad + 1) // 2, w_pad // 2, (h_pad + 1) // 2, h_pad // 2


def pad(x: Tensor, padding: tuple[int, int, int, int]) -> Tensor:
    """Reflect-pad (B, C, H, W) images."""
    return F.pad(x, padding, mode="reflect") if any(padding) else x


def pad_mask(mask: Tensor, padding: tuple[int, int, int, int]) -> Tensor:
    """Reflect-pad (B, H, W) id masks (reflect padding needs floats, as in the official code)."""
    return pad(mask[:, None].float(), padding)[:, 0].long() if any(padding) else mask


def unpad(x: Tensor, padding: tuple[int, int, int, int]) -> Tensor:
    """Crop the padding off (..., H, W)."""
    left, right, top, bottom = padding
    return x[..., top:x.shape[-2] - bottom, left:x.shape[-1] - right]


def one_hot(mask: Tensor, ids: list[int], dtype: torch.dtype = torch.float32) -> Tensor:
    """(B, H, W) id mask -> (B, n, 2, H, W) [mask != id, mask == id] for each id."""
    fg = torch.stack([mask == i for i in ids], dim=1).to(dtype)  # (B, n, H, W)
    return torch.stack([1 - fg, fg], dim=2)


def aggregate_objects(probs: Tensor, eps: float = 1e-7) -> tuple[Tensor, Tensor]:
    """Soft aggregation of the objects' [bg, fg] probabilities (official EMVOS; as in RGMP / STM).

    Background is the minimum of the objects' background probabilities; each class's odds p / (1 - p), with both
    terms clamped to [eps, 1 - eps], are normalised by the sum of all odds.

    Args:
        probs: (B, N, 2, H, W) per-object [bg, fg] probabilities.
    Returns:
        labels: (B, H, W) in 0..N (0 background; ties go to the lower index, background first), and
        aggregated: (B, N, 2, H, W) the objects' [1 - p, p] after aggregation (the next frame's previous masks).
    """
    bg = probs[:, :, 0].amin(dim=1, keepdim=True)  # (B, 1, H, W)
    odds = torch.cat([bg.clamp(eps, 1 - eps) / (1 - bg).clamp(eps, 1 - eps),
                      probs[:, :, 1].clamp(eps, 1 - eps) / probs[:, :, 0].clamp(eps, 1 - eps)], dim=1)  # (B, 1+N, H, W)
    p = odds / odds.sum(dim=1, keepdim=True)
    labels = p.max(dim=1).indices  # the first maximum, as argmax, which is many times slower over this dim on CPU
    fg = p[:, 1:]
    return labels, torch.stack([1 - fg, fg], dim=2)


# ---------------------------------------------------------------------------------------------------------------
# the training forward
# ---------------------------------------------------------------------------------------------------------------

def clip_forward(net: nn.Module, imgs: Tensor, first_masks: Tensor, aggregate: bool = False,
                 objects: int | None = None) -> Tensor:
    """The training forward of any method with the streaming interface: clips with only the first frame's masks
    given; each frame's prediction becomes the next frame's previous masks.

    imgs: (B, L, 3, H, W) RGB in [0, 1]; first_masks: (B, H, W) id masks, 0 background.
    objects: None (EMVOS and VideoMatch, as their official training): one object, id 1, and the logits of frames
    1..L-1 are (B, L-1, 2, H, W). An int N: the objects of ids 1..N are tracked together (an id absent from a clip's
    first mask is an empty object there), as at test time, and the logits are (B, L-1, N, 2, H, W).
    aggregate: False (EMVOS, as the official training): the previous soft masks are the softmax of the last logits,
    each object on its own. True (VideoMatch): they go through aggregate_objects as at test time (for one object
    p^2 / (p^2 + (1 - p)^2)), so that an online-update threshold the test-time update reaches is reached in training
    too.
    The padding to a multiple of net.stride is cropped off the logits.
    """
    b, length, _, height, width = imgs.shape
    padding = get_padding(height, width, net.stride)
    imgs = pad(imgs.flatten(0, 1), padding).unflatten(0, (b, length))
    first = pad_mask(first_masks, padding)
    ids = [1] if objects is None else list(range(1, objects + 1))
    feats = net.encode(imgs[:, 0])
    state = net.init_state(feats, one_hot(first, ids, imgs.dtype))
    logits = []
    for i in range(1, length):
        feats = net.encode(imgs[:, i])
        logit = net.predict(feats, state)  # (B, N, 2, H, W)
        logits.append(logit[:, 0] if objects is None else logit)
        if i < length - 1:
            probs = torch.softmax(logit, dim=2)
            net.update(state, feats, aggregate_objects(probs)[1] if aggregate else probs)
    return unpad(torch.stack(logits, dim=1), padding)
