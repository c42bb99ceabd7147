"""A third method, written as a researcher adds one: a model, its training data, its model selection, its batch
transform, its training forward, its loss and its registry entry, all in this one module; nothing in run.py,
trainer.py, the driver or the generic layer (core/framework.py, core/methods.py) names it.

`ColourCue` predicts each object's next mask from its previous one, sharpened by a learnable scale, plus a learnable
colour cue read at stride 8 (the frame average-pooled over 8 x 8 cells and upsampled back by 8, so the frame must
reach it padded to a multiple of 8). Unlike EMVOS and VideoMatch it trains on OBJECTS objects per clip, tracked
together: `FolderClips` gives consecutive frames of one folder of PNG frames with their id masks (ids 1..OBJECTS),
its batch transform `shuffle_objects` draws each clip's order of the objects (so that no slot learns one object),
its forward and loss take every object's logits, and `ClipIoU`, the foreground IoU of every object on those clips,
selects the model. tests/test_extend.py registers `method()`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from core import methods
from core.framework import Runtime, clip_forward
from training.samplers import TrainSet
from utils import VOSInputError, read_frame, read_mask

STRIDE = 8  # the colour cue's cell: frames are padded to a multiple of it, not to EMVOS's 16
OBJECTS = 2  # objects per training clip: ids 1 and 2 of the masks


# --- the model --------------------------------------------------------------------------------------------------

@dataclass
class ColourCueConfig:
    scale: float = 4.0  # initial sharpness of the previous mask's logits


@dataclass
class ColourCueState:
    prev: Tensor  # (B, N, H, W) each object's previous foreground probability


class ColourCue(nn.Module, methods.VOSModel):
    stride = STRIDE

    def __init__(self, config: ColourCueConfig | None = None, pretrained: bool = False):
        super().__init__()  # no backbone: `pretrained` has nothing to load
        self.config = config or ColourCueConfig()
        self.scale = nn.Parameter(torch.tensor(self.config.scale))
        self.colour = nn.Parameter(torch.zeros(3))  # starts without a colour cue; training moves it

    def encode(self, img: Tensor) -> Tensor:
        """(B, 3, H, W) -> (B, 3, H/8, W/8) mean colour of each 8 x 8 cell."""
        return F.avg_pool2d(img, STRIDE)

    def init_state(self, feats: Tensor, masks: Tensor) -> ColourCueState:
        return ColourCueState(masks[:, :, 1])

    def add_objects(self, state: ColourCueState, feats: Tensor, masks: Tensor) -> None:
        state.prev = torch.cat([state.prev, masks[:, :, 1]], dim=1)

    def predict(self, feats: Tensor, state: ColourCueState, runtime: Runtime | None = None) -> Tensor:
        # scale_factor, not the frame's size: the cue is only as wide as the frame when the frame was padded to 8
        cue = F.interpolate(torch.einsum("c,bchw->bhw", self.colour, feats)[:, None], scale_factor=STRIDE)
        fg = self.scale * (state.prev - 0.5) + cue
        return torch.stack([-fg, fg], dim=2)  # (B, N, 2, H, W)

    def update(self, state: ColourCueState, feats: Tensor, probs: Tensor) -> None:
        state.prev = probs[:, :, 1]

    def forward(self, imgs: Tensor, first_masks: Tensor) -> Tensor:
        """Clips (B, L, 3, H, W), first id masks (B, H, W) -> logits (B, L-1, OBJECTS, 2, H, W) of ids 1..OBJECTS."""
        return clip_forward(self, imgs, first_masks, objects=OBJECTS)


def object_targets(gt: Tensor, objects: int) -> Tensor:
    """Id masks (..., H, W) -> (..., objects, H, W) in {0, 1}: object k is id k + 1."""
    ids = torch.arange(1, objects + 1, device=gt.device)
    return (gt.unsqueeze(-3) == ids[:, None, None]).long()


def cross_entropy(logits: Tensor, gt: Tensor) -> Tensor:
    """logits (B, L-1, N, 2, H, W), gt id masks (B, L-1, H, W) -> mean pixel cross-entropy of every object's
    [bg, fg] against its own mask."""
    target = object_targets(gt, logits.shape[2])  # (B, L-1, N, H, W)
    return F.cross_entropy(logits.flatten(0, 2).float(), target.flatten(0, 2))


# --- its batch transform --------------------------------------------------------------------------------------------

def shuffle_objects(batch: methods.Batch, stage: methods.StageConfig) -> methods.Batch:
    """Each clip's objects in an order of its own (a permutation of the ids 1..OBJECTS, drawn from torch's generator,
    which a resumed run restores), so that the object in slot 1 is not always the same one."""
    masks = batch.masks.clone()
    for b in range(masks.shape[0]):
        order = torch.randperm(OBJECTS) + 1
        for old, new in zip(range(1, OBJECTS + 1), order.tolist(), strict=True):
            masks[b][batch.masks[b] == old] = new
    return methods.Batch(batch.imgs, masks)


# --- its training data and model selection ------------------------------------------------------------------------

class FolderClips(TrainSet):
    """Clips of `clip_len` consecutive frames of ROOT/frames/*.png with their id masks ROOT/masks/*.png (same names;
    values 1..OBJECTS the objects, others background), cropped at the top-left corner to `output_size`. Item k starts
    at frame k."""

    def __init__(self, root: str, clip_len: int, output_size: tuple[int, int]):
        self.root = Path(root)
        self.clip_len = clip_len
        self.output_size = output_size
        self.frames = sorted((self.root / "frames").glob("*.png"))

    def check(self) -> None:
        masked = [f for f in self.frames if (self.root / "masks" / f.name).is_file()]
        if len(masked) < self.clip_len:
            raise VOSInputError(f"{self.root} has {len(masked)} of the {self.clip_len} frames with masks a clip needs "
                                f"(frames/*.png with masks/*.png of the same name); add frames or lower --clip-len")
        height, width = read_frame(self.frames[0]).shape[:2]
        if height < self.output_size[0] or width < self.output_size[1]:
            raise VOSInputError(f"{self.frames[0]} is {width}x{height}, smaller than --crop "
                                f"{self.output_size[0]} {self.output_size[1]}; pass a smaller --crop")

    def __len__(self) -> int:
        return max(len(self.frames) - self.clip_len + 1, 0)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        h, w = self.output_size
        paths = self.frames[index:index + self.clip_len]
        imgs = [torch.tensor(read_frame(p)[:h, :w]).permute(2, 0, 1).float() / 255 for p in paths]
        masks = [torch.tensor(read_mask(self.root / "masks" / p.name)[:h, :w]).long() for p in paths]
        masks = [torch.where(m <= OBJECTS, m, 0) for m in masks]
        return {"imgs": torch.stack(imgs), "masks": torch.stack(masks)}


@dataclass
class ClipIoU:
    """Mean foreground IoU of the model's predictions of every object on every clip of its training folder (a test
    method: no held-out data), the forward under no_grad."""

    data: FolderClips
    scores: list[float] = field(default_factory=list)  # what each call returned, for the test to compare

    @property
    def title(self) -> str:
        return f"foreground IoU on {len(self.data)} folder clips"

    def __call__(self, net: nn.Module) -> float:
        ious = []
        with torch.no_grad():
            for k in range(len(self.data)):
                clip = self.data[k]
                imgs, masks = clip["imgs"][None], clip["masks"][None]
                pred = net(imgs, masks[:, 0]).argmax(dim=-3) == 1  # (1, L-1, OBJECTS, H, W)
                gt = object_targets(masks[:, 1:], OBJECTS) == 1
                union = (pred | gt).sum().item()
                ious.append((pred & gt).sum().item() / union if union else 1.0)
        score = sum(ious) / max(len(ious), 1)
        self.scores.append(score)
        return score


SELECTIONS: list[ClipIoU] = []  # every selection the stage opened, newest last (the test reads their scores)


def _open_selection(stage: methods.StageConfig, data: TrainSet, ctx: methods.StageContext) -> ClipIoU:
    SELECTIONS.append(ClipIoU(data))  # type: ignore[arg-type]
    return SELECTIONS[-1]


FOLDER_CLIPS = methods.StageData(
    "folder_clips", "davis", "frames/*.png and masks/*.png of the same names",
    lambda s, c: FolderClips(c.roots.davis, s.clip_len, tuple(s.crop)), _open_selection, "val_clip_iou")


def method() -> methods.Method:
    """The registry entry (register it with methods.register, or monkeypatch.setitem on methods.METHODS)."""
    stage = methods.StageConfig("clips", "third_clips", FOLDER_CLIPS, clip_len=2, clips_per_epoch=2, batch_size=2,
                                epochs=1, save_every=1, val_every=1, crop=(40, 45), lr=1e-2)
    # the training forward is the generic one (the model's forward on the clips and their first masks), here with
    # every object's logits; the loss and the log's IoU take those
    return methods.Method("third", ColourCue, ColourCueConfig, "third_clips_best.pth", {"clips": stage}, ("clips",),
                          {"cross_entropy": cross_entropy}, "cross_entropy",
                          transforms=(methods.BatchTransform(shuffle_objects),))
