"""The reference the tests and bench.py compare this repository's EMVOS against: the official inference structure
(suhwan-cho/EMVOS, `VOS.forward`) reimplemented on this repository's modules, one object at a time; a recorder of
the logits a segmenter predicts; and the synthetic videos (random frames, random blob masks) they segment.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

import matching
from core.framework import aggregate_objects, get_padding, pad, pad_mask, unpad
from model import EMVOS


@dataclass
class ObjectState:
    """What the official code keeps per object (its `state[k]` dict): keys (1, C, h, w) and masks (1, 2, h, w)."""

    init_nk: Tensor
    init_k: Tensor
    init_mask16: Tensor
    prev_nk: Tensor
    prev_k: Tensor
    prev_mask16: Tensor


@dataclass
class PerObjectSegmenter:
    """The official inference structure (`VOS.forward` of suhwan-cho/EMVOS) on this repository's modules.

    Per object and frame: four similarity matrices, eight max-readouts in the official (B, HW, h, w) layout, the
    decoder's 1x1 projections and a batch-1 decoder. Aggregation is the shared one (framework.aggregate_objects), so
    that any difference from `ours` comes from the network. Objects are given in the first frame only (what the
    benchmark needs).
    """

    model: EMVOS
    dtype: torch.dtype = torch.float32
    autocast: torch.dtype | None = None
    object_ids: list[int] = field(default_factory=list)
    objects: list[ObjectState] = field(default_factory=list)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.inference_mode()
    def step(self, frame: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """As `segmenter.VideoSegmenter.step`: frame (3, H, W), mask (H, W) ids on the first frame only."""
        height, width = frame.shape[-2:]
        padding = get_padding(height, width, self.model.stride)
        img = pad(frame[None].to(self.device, self.dtype), padding)
        with torch.autocast(self.device.type, self.autocast, enabled=self.autocast is not None):
            feats = self.model.encoder(img)
            nk = matching.l2_normalise(self.model.matcher.conv1(feats[2]))  # (1, C, h, w)
            k = self.model.matcher.conv2(feats[2])
            if not self.objects:
                if mask is None:
                    raise ValueError("the first frame needs a mask")
                given = pad_mask(mask[None].to(self.device).long(), padding)
                self.object_ids = [i for i in given.unique().tolist() if i != 0]
                for i in self.object_ids:
                    m16 = F.avg_pool2d(torch.stack([given != i, given == i], dim=1).to(img.dtype), 16)
                    self.objects.append(ObjectState(nk, k, m16, nk, k, m16))
                fg = torch.stack([given[0] == i for i in self.object_ids]).to(img.dtype)  # (N, H, W)
                return unpad(given[0], padding), unpad(fg, padding)
            if mask is not None:
                raise ValueError("the per-object path takes objects in the first frame only")
            logits = torch.cat([self._object_logits(feats, nk, k, obj) for obj in self.objects], dim=1)
            probs = torch.softmax(logits.to(img.dtype), dim=2)  # (1, N, 2, H, W)
            index, probs = aggregate_objects(probs)
            for n, obj in enumerate(self.objects):
                obj.prev_nk, obj.prev_k, obj.prev_mask16 = nk, k, F.avg_pool2d(probs[:, n], 16)
        ids = torch.tensor([0] + self.object_ids, device=index.device)
        return unpad(ids[index][0], padding), unpad(probs[0, :, 1].float(), padding)

    def _object_logits(self, feats: tuple[Tensor, Tensor, Tensor], nk: Tensor, k: Tensor, obj: ObjectState) -> Tensor:
        b, _, h, w = nk.shape

        def rows(x: Tensor) -> Tensor:  # (1, C, h, w) -> (1, HW, C)
            return x.flatten(2).transpose(1, 2)

        cos_init = (torch.bmm(rows(obj.init_nk), nk.flatten(2)).view(b, h * w, h, w) + 1) / 2
        cos_prev = (torch.bmm(rows(obj.prev_nk), nk.flatten(2)).view(b, h * w, h, w) + 1) / 2
        soft_init = torch.softmax(torch.bmm(rows(obj.init_k), k.flatten(2)), dim=2).view(b, h * w, h, w)
        soft_prev = torch.softmax(torch.bmm(rows(obj.prev_k), k.flatten(2)), dim=2).view(b, h * w, h, w)
        scores = []
        for sim, m16 in ((cos_init, obj.init_mask16), (cos_prev, obj.prev_mask16),
                         (soft_init, obj.init_mask16), (soft_prev, obj.prev_mask16)):
            for c in (0, 1):  # bg, fg
                scores.append(torch.max(sim * m16[:, c].reshape(b, h * w, 1, 1), dim=1, keepdim=True)[0])
        d = self.model.decoder
        f4, f8, f16 = feats
        x = torch.cat([d.conv1(f16), *scores, obj.prev_mask16], dim=1)
        s8 = d.deconv1(d.cbam1(d.blend1(x)))
        s4 = d.deconv2(d.cbam2(d.blend2(torch.cat([d.conv2(f8), s8], dim=1))))
        return d.deconv3(d.cbam3(d.blend3(torch.cat([d.conv3(f4), s4], dim=1))))[:, None]  # (1, 1, 2, H, W)


@contextlib.contextmanager
def capture_logits(segmenter: object, sink: list[Tensor]) -> Iterator[None]:
    """Record the logits a segmenter's model predicts for a frame (both paths; they run on one model)."""
    if isinstance(segmenter, PerObjectSegmenter):
        target, name = segmenter, "_object_logits"
    else:
        target, name = segmenter.model, "predict"
    original = getattr(target, name)

    def recording(*args: object, **kwargs: object) -> Tensor:
        out = original(*args, **kwargs)
        sink.append(out.detach())
        return out

    setattr(target, name, recording)
    try:
        yield
    finally:
        delattr(target, name)


# ---------------------------------------------------------------------------------------------------------------
# synthetic videos
# ---------------------------------------------------------------------------------------------------------------

def blob_mask(height: int, width: int, objects: int, seed: int) -> Tensor:
    """(H, W) ids 0..objects: one random ellipse per object, later ones on top, every id keeping some pixels."""
    g = torch.Generator().manual_seed(seed)
    yy = torch.arange(height, dtype=torch.float32)[:, None]
    xx = torch.arange(width, dtype=torch.float32)[None, :]
    # sizes such that the objects together cover about 30% of the frame
    base = math.sqrt(0.3 * height * width / (math.pi * max(1, objects)))
    for _ in range(100):
        mask = torch.zeros(height, width, dtype=torch.long)
        for i in range(1, objects + 1):
            cy, cx = torch.rand(2, generator=g).tolist()
            ry, rx = (base * (0.6 + 0.8 * torch.rand(2, generator=g))).tolist()
            mask[((yy - cy * height) / ry) ** 2 + ((xx - cx * width) / rx) ** 2 <= 1] = i
        if len(mask.unique()) == objects + 1:
            return mask
    raise RuntimeError(f"could not place {objects} visible objects on a {width}x{height} frame")


def random_frame(height: int, width: int, seed: int) -> Tensor:
    """(3, H, W) in [0, 1]: smooth random structure plus noise, generated on demand (nothing is held)."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, max(1, height // 32), max(1, width // 32), generator=g)
    smooth = F.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)[0]
    return (0.8 * smooth + 0.2 * torch.rand(3, height, width, generator=g)).clamp(0, 1)
