"""Fine-tuning learns: a tiny EMVOS trained on one kind of synthetic video (squares over gray noise, DAVIS layout)
is fine-tuned with `run.py --train --stages generic --init ...` on a generic folder of another kind (discs of other
colours over horizontal stripes, masks on every other frame), and its IoU on that folder's held-out videos rises above
a threshold that the same fine-tune on broken labels does not reach.

Scoring is the real test-time driver (`segmenter.load`, `VideoSegmenter.propagate`) on the held-out videos, the
mean J of the annotated frames after the first. Part of the `learning` tier (`python -m pytest -m learning`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import save_mask, write_jpeg, write_moving_squares

import run
from benchmarks.metrics import jaccard
from core.segmenter import load
from utils import read_frame, read_mask

pytestmark = [pytest.mark.learning, pytest.mark.usefixtures("one_thread")]

SIZE, FRAMES = 64, 8
PRETRAIN_VIDEOS, FINETUNE_VIDEOS, HELDOUT_VIDEOS = 16, 12, 4
COMMON = ["--device", "cpu", "--no-pretrained", "--workers", "0", "--val-every", "0", "--crop", str(SIZE), str(SIZE),
          "--clip-len", "3", "--batch-size", "2", "--epochs", "1", "--save-every", "1", "--lr", "3e-4"]
PRETRAIN_STEPS = ["--clips-per-epoch", "120"]
FINETUNE_STEPS = ["--clips-per-epoch", "120"]
# Between what the fine-tune on correct labels reaches and what it reaches on broken ones (measured; docstring).
MIN_FINETUNED = 0.25


def squares(root: Path, rng: np.random.Generator) -> list[str]:
    """The first kind: one square per video (reds and greens, 24-36 px) drifting over gray noise; DAVIS 2017 layout,
    every video in train."""
    names = [f"sq{k}" for k in range(PRETRAIN_VIDEOS)]
    for name in names:
        colour = np.array([rng.integers(150, 256), rng.integers(0, 60), 0]) if rng.random() < 0.5 else \
            np.array([0, rng.integers(150, 256), rng.integers(0, 60)])
        side = int(rng.integers(24, 37))
        pos, vel = rng.uniform(0, SIZE - side, 2), rng.uniform(-2, 2, 2)
        write_moving_squares(root, name, [(colour, side, pos, vel)], FRAMES, SIZE,
                             lambda: np.clip(rng.normal(128, 20, (SIZE, SIZE, 3)), 0, 255).astype(np.uint8))
    (root / "ImageSets" / "2017").mkdir(parents=True)
    (root / "ImageSets" / "2017" / "train.txt").write_text("\n".join(names) + "\n")
    return names


def discs(root: Path, names: list[str], rng: np.random.Generator, labels: dict[str, str] | None = None) -> None:
    """The other kind, in a generic folder: one disc per video (blues and yellows, radius 10-16) moving over
    horizontal stripes, masks on the even frames only. labels: {video: the video whose masks it gets}, to break
    them on purpose (the discs are drawn the same)."""
    rows = np.arange(SIZE)[:, None]
    cols = np.arange(SIZE)[None]
    masks = {}
    for name in names:
        colour = np.array([0, rng.integers(0, 80), rng.integers(170, 256)]) if rng.random() < 0.5 else \
            np.array([rng.integers(200, 256), rng.integers(200, 256), 0])
        radius = rng.uniform(10, 16)
        centre, vel = rng.uniform(radius, SIZE - radius, 2), rng.uniform(-3, 3, 2)
        masks[name] = []
        for t in range(FRAMES):
            stripes = np.where((rows // 4) % 2, 90, 160) + rng.normal(0, 8, (SIZE, SIZE))
            rgb = np.repeat(np.clip(stripes, 0, 255)[..., None], 3, axis=2).astype(np.uint8)
            inside = (rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 <= radius ** 2
            rgb[inside] = colour
            write_jpeg(root / "JPEGImages" / name / f"{t:05d}.jpg", rgb, full_chroma=True)
            masks[name].append(inside.astype(np.uint8))
            centre += vel
            vel[(centre < radius) | (centre > SIZE - radius)] *= -1
            centre[:] = np.clip(centre, radius, SIZE - radius)
    for name in names:
        source = (labels or {}).get(name, name)
        for t in range(0, FRAMES, 2):
            save_mask(root / "Annotations" / name / f"{t:05d}.png", masks[source][t])


def heldout_iou(checkpoint: Path, root: Path, videos: list[str]) -> float:
    """Mean J of the annotated frames after the first of the held-out videos, the first mask given."""
    segmenter = load(checkpoint, device="cpu", download=False)
    scores = []
    for name in videos:
        frames = [read_frame(p) for p in sorted((root / "JPEGImages" / name).glob("*.jpg"))]
        gt = {t: read_mask(root / "Annotations" / name / f"{t:05d}.png") for t in range(0, FRAMES, 2)}
        for index, labels, _ in segmenter.propagate(frames, {0: gt[0]}):
            if index and index in gt:
                scores.append(jaccard(labels.numpy() == 1, gt[index] == 1))
    return float(np.mean(scores))


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """EMVOS trained on the squares (the davis stage, 60 steps of 2 clips)."""
    root = tmp_path_factory.mktemp("squares")
    squares(root, np.random.default_rng(0))
    save = root / "ck"
    assert run.main(["--train", *COMMON, *PRETRAIN_STEPS, "--davis", str(root), "--davis-year", "2017",
                     "--stages", "davis", "--save-dir", str(save)]) == 0
    return save / "coco_davis_best.pth"


def _finetune(pretrained: Path, folder: Path, heldout: list[str], save: Path) -> float:
    assert run.main(["--train", *COMMON, *FINETUNE_STEPS, "--stages", "generic", "--generic", str(folder),
                     "--init", str(pretrained), "--val-sequences", *heldout, "--save-dir", str(save)]) == 0
    return heldout_iou(save / "generic_best.pth", folder, heldout)


def test_finetuning_on_a_generic_folder_of_another_kind_learns_it(pretrained: Path, tmp_path: Path) -> None:
    """60 fine-tuning steps (2 clips of 3 annotated frames) from the squares model on the discs folder, its 4
    held-out videos scored. Measured (seeded, one thread, this repository's 2-core CPU machine): held-out IoU 0.000
    before the fine-tune (the squares model does not follow a disc over stripes), 0.434 after it; with the training
    videos' labels broken on purpose (each video given the next video's masks, so that the targets do not belong to
    the frames) 0.000. MIN_FINETUNED (0.25) lies between. With 20 pretraining and 40 fine-tuning steps the
    fine-tune had not yet left the background prior (0.002), so the steps cannot shrink much: the test takes about
    4 CPU minutes."""
    names = [f"disc{k}" for k in range(FINETUNE_VIDEOS + HELDOUT_VIDEOS)]
    heldout = names[FINETUNE_VIDEOS:]
    good, broken = tmp_path / "good", tmp_path / "broken"
    discs(good, names, np.random.default_rng(1))
    train = names[:FINETUNE_VIDEOS]
    discs(broken, names, np.random.default_rng(1), labels=dict(zip(train, train[1:] + train[:1], strict=True)))
    before = heldout_iou(pretrained, good, heldout)
    after = _finetune(pretrained, good, heldout, tmp_path / "ft_good")
    spoiled = _finetune(pretrained, broken, heldout, tmp_path / "ft_broken")
    print(f"held-out IoU on the discs: before {before:.3f}, fine-tuned {after:.3f}, broken labels {spoiled:.3f}")
    assert before < MIN_FINETUNED <= after and spoiled < MIN_FINETUNED, (before, after, spoiled)
