"""What the training loop trains on is what the data says: every label it feeds the model and the loss lies on the
object it names, in every frame, after the real samplers, augmentation and swap-and-attach.

A tiny DAVIS-2017-layout tree of synthetic videos is written to tmp_path: each object is a square of its own colour
(no colour is used twice in the tree) moving over gray noise, so the colours of a training clip say where its target
object is, and the mask the loop hands to the model must cover exactly that colour. `run.py --train` runs in-process
with the method's own forward and loss wrapped to record their inputs (the computation is unchanged), so the clips
come from the real sampler, augmentation, swap-and-attach and loop, whatever module they live in.

That training then learns, on held-out synthetic videos, is tests/test_learning_curve.py (its own tier, minutes:
`python -m pytest -m learning`); this file checks the labels of every step in seconds, which also names the step
that went wrong.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_moving_squares

import run
from benchmarks.metrics import jaccard
from core import methods

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny steps run faster on one thread

SIZE = 64  # frame side; the samplers resize to 480p and crop back to --crop, so objects keep their share of the frame
BACKGROUND = np.array([(128, 128, 128), (0, 0, 0)])  # the noise's mean, and the black a zoom leaves at the borders
# Object colours: the {0, 128, 255} grid of RGB colours but gray and black, at least 127 apart, so that a
# pixel's nearest colour names its object after JPEG coding and bicubic resizing (edges blend with the background).
PALETTE = np.array([(r, g, b) for r in (0, 128, 255) for g in (0, 128, 255) for b in (0, 128, 255)
                    if (r, g, b) not in ((128, 128, 128), (0, 0, 0))])
SURE, UNSURE = 60.0, -2  # a pixel further than SURE from every colour is a blend: left out of the comparison
VIDEOS = 4  # of two objects each: colours 0..2 * VIDEOS - 1
MIN_IOU = 0.95  # labels on their objects score 1.0 here; masks shifted 2 pixels against their frames 0.91-0.92


def write_synthetic_davis(root: Path, videos: int = VIDEOS, frames: int = 6, seed: int = 0) -> Path:
    """DAVIS 2017 layout (JPEGImages/480p, Annotations/480p palette PNGs, ImageSets/2017/{train,val}.txt) of videos
    with two objects each: squares of 18-25 pixels in their own PALETTE colour, moving 1-3 pixels a frame along each
    axis (bouncing off the borders) over gray noise (std 20). Video k uses colours 2k and 2k + 1. Every sequence is
    in both train and val."""
    rng = np.random.default_rng(seed)
    names = [f"synth{k}" for k in range(videos)]
    for k, name in enumerate(names):
        side = rng.integers(18, 26, 2)
        pos = rng.uniform(0, SIZE - side[:, None], (2, 2))
        vel = rng.choice([-1, 1], (2, 2)) * rng.uniform(1, 3, (2, 2))
        squares = [(PALETTE[2 * k + obj], side[obj], pos[obj], vel[obj]) for obj in range(2)]
        write_moving_squares(root, name, squares, frames, SIZE,
                             lambda: np.clip(rng.normal(128, 20, (SIZE, SIZE, 3)), 0, 255).astype(np.uint8))
    (root / "ImageSets" / "2017").mkdir(parents=True)
    for split in ("train", "val"):
        (root / "ImageSets" / "2017" / f"{split}.txt").write_text("\n".join(names) + "\n")
    return root


def colour_labels(imgs: torch.Tensor, colours: int) -> np.ndarray:
    """(..., 3, H, W) RGB in [0, 1] -> (..., H, W): each pixel's nearest colour, 0..colours-1 for PALETTE[:colours],
    -1 for the background colours, UNSURE where the nearest is further than SURE (edges that resizing blended)."""
    rgb = np.moveaxis(imgs.numpy() * 255, -3, -1)[..., None, :]  # (..., H, W, 1, 3)
    candidates = np.concatenate([PALETTE[:colours], BACKGROUND]).astype(np.float32)
    distance = np.linalg.norm(rgb - candidates, axis=-1)
    nearest = distance.argmin(-1)
    labels = np.where(nearest < colours, nearest, -1)
    return np.where(distance.min(-1) <= SURE, labels, UNSURE)


def edge_band(mask: np.ndarray) -> np.ndarray:
    """The pixels within one pixel of a binary (H, W) mask's edge (inside or out): where bicubic or bilinear frames
    and nearest-neighbour masks may disagree by a pixel after resizing, so the comparison leaves them out."""
    padded = np.pad(mask, 1, mode="edge")
    h, w = mask.shape
    near = [padded[1 + dy:1 + dy + h, 1 + dx:1 + dx + w] for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
    return np.any(near, axis=0) & ~np.all(near, axis=0)


def record_training(method: str, argv: list[str], monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    """Run `run.py --train` with `argv` and return, for every step, what reached the model (clips, first masks) and
    the loss (targets), as CPU tensors. The model and loss are wrapped, not replaced: training runs as usual."""
    spec = methods.get(method)
    steps: list[dict] = []
    forward = spec.model.forward

    def recording_forward(self: torch.nn.Module, imgs: torch.Tensor, first_masks: torch.Tensor) -> torch.Tensor:
        steps.append({"imgs": imgs.detach().cpu().clone(), "first": first_masks.detach().cpu().clone()})
        return forward(self, imgs, first_masks)

    def recording(loss: methods.Loss) -> methods.Loss:
        def wrapped(logits: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
            steps[-1]["gt"] = gt.detach().cpu().clone()
            return loss(logits, gt)
        return wrapped

    monkeypatch.setattr(spec.model, "forward", recording_forward)
    for name, loss in list(spec.losses.items()):
        monkeypatch.setitem(spec.losses, name, recording(loss))
    assert run.main(["--train", "--method", method, "--device", "cpu", "--no-pretrained", "--workers", "0",
                     "--val-every", "0", *argv]) == 0
    assert steps and all("gt" in s for s in steps), "no training step reached the model and the loss"
    return steps


def check_labels_on_their_objects(step: dict, colours: int) -> list[int]:
    """Every clip's first mask (the model's input) and targets (the loss's) cover the colour of one object, frame by
    frame (IoU >= MIN_IOU). Returns each clip's target colour."""
    imgs, first, gt = step["imgs"], step["first"], step["gt"]
    assert gt.shape[1] == imgs.shape[1] - 1, "the loss covers frames 1..L-1 of each clip"
    labels = colour_labels(imgs, colours)  # (B, L, H, W)
    masks = torch.cat([first[:, None], gt], dim=1).numpy() == 1  # (B, L, H, W)
    targets = []
    for b in range(imgs.shape[0]):
        under = labels[b, 0][masks[b, 0]]
        under = under[under != UNSURE]
        colour = int(np.bincount(under[under >= 0], minlength=colours).argmax()) if (under >= 0).any() else -1
        assert colour >= 0, f"clip {b}: the first mask lies on no object"
        for t in range(imgs.shape[1]):
            sure = (labels[b, t] != UNSURE) & ~edge_band(masks[b, t])
            iou = jaccard(labels[b, t][sure] == colour, masks[b, t][sure])
            where = "first mask (model input)" if t == 0 else f"target of frame {t} (loss input)"

            assert iou >= MIN_IOU, f"clip {b}: the {where} is not on its object (IoU {iou:.3f} with its colour)"
        targets.append(colour)
    return targets


def test_emvos_trains_on_aligned_labels_and_swap_and_attach_relabels(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """EMVOS, davis stage (TrainDAVIS clips: 480p resize, random crop, flips, reversal) with swap-and-attach on every
    batch (--swap-above 0): each clip's first mask and targets lie on its own object in every frame, and the object
    pasted from the previous clip of the batch is in the frames but labelled background.

    Bugs caught, each made on purpose and run (the first failing check's IoU in brackets; correct labels score 1.0):
    the clips' masks rolled by one along the batch (0.00), or only their targets (0.00); masks shifted 3 / 2 pixels
    against their frames (0.88 / 0.92); shifted 1 pixel (caught only because one clip's first mask then lies on no
    object: the IoU leaves out a pixel on each side of an edge); swap-and-attach that labels the pasted object as the
    target too (0.74); a swap that clears the pasted pixels from the mask without pasting the object (0.91).
    """
    root = write_synthetic_davis(tmp_path / "DAVIS")
    steps = record_training("emvos", ["--davis", str(root), "--stages", "davis", "--epochs", "1",
                                      "--clips-per-epoch", "8", "--batch-size", "4", "--clip-len", "3",
                                      "--crop", "64", "64", "--swap-above", "0", "--save-dir", str(tmp_path / "ck")],
                            monkeypatch)
    colours = 2 * VIDEOS
    pasted_seen = 0
    for step in steps:
        targets = check_labels_on_their_objects(step, colours)
        labels = colour_labels(step["imgs"], colours)
        for b, own in enumerate(targets):
            pasted = targets[b - 1]  # the official roll by one: clip b holds clip b-1's target
            if pasted // 2 == own // 2:
                continue  # the same video: its colours are in the clip anyway
            # the pasted object covers at least the pixels left labelled in clip b-1 (some of its own may be covered)
            masks = torch.cat([step["first"][:, None], step["gt"]], dim=1)
            for t in range(masks.shape[1]):
                need = int((masks[b - 1, t] == 1).sum())
                got = int((labels[b, t] == pasted).sum())
                assert got >= 0.8 * need, (f"clip {b}, frame {t}: the object of clip {b - 1} was not pasted ({got} of "
                                           f"{need} pixels)")
            pasted_seen += 1
    assert pasted_seen, "no clip got an object from another video; the check of the paste did not run"


def test_videomatch_trains_on_aligned_labels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """VideoMatch, davis stage (TrainPairs: frame pairs, each frame augmented on its own by the port's flip / crop /
    zoom; DAVIS 2017 year, so the target is one object of the reference frame): the reference mask (the model's
    input) and the target (the loss's) lie on the same object, in both frames of every pair.

    Bugs caught, each made on purpose and run (the first failing check's IoU in brackets; correct labels score 1.0):
    the masks rolled by one along the batch (0.62); the target frame's mask flipped left-right while its frame is
    not (0.00); both masks shifted 3 / 2 pixels against their frames (0.82 / 0.91); the target's mask alone shifted 3
    pixels (0.83). Not caught: a 1-pixel shift (the IoU leaves out a pixel on each side of an edge, which resizing
    blends), and the mask of the video's other object in both frames (a valid target too).
    """
    root = write_synthetic_davis(tmp_path / "DAVIS")
    steps = record_training("videomatch", ["--davis", str(root), "--stages", "davis", "--davis-year", "2017",
                                           "--epochs", "1", "--clips-per-epoch", "4", "--batch-size", "2",
                                           "--crop", "64", "64", "--save-dir", str(tmp_path / "ck")], monkeypatch)
    for step in steps:
        check_labels_on_their_objects(step, 2 * VIDEOS)
