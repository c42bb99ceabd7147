"""Test-time augmentation (core/tta.py, run.py --flip / --scales): exact flip-equivariance, that it changes the masks,
and that --scales 480 alone is the plain run. Random-weight models on tiny frames."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import random_checkpoint, save_mask
from PIL import Image

import dataset
import run
from core import methods, tta
from core.segmenter import VideoSegmenter


@pytest.fixture(scope="module")
def emvos() -> torch.nn.Module:
    torch.manual_seed(0)
    return methods.build_model("emvos").eval()


def _video(height: int, width: int, frames: int = 2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random frames (T, H, W, 3) uint8 and a first mask with two objects that are not mirror images."""
    rng = np.random.default_rng(seed)
    video = rng.integers(0, 256, (frames, height, width, 3), dtype=np.uint8)
    mask = np.zeros((height, width), np.int64)
    mask[2:height - 3, 3:width // 3] = 1
    mask[1:height // 2, width // 2:width - 7] = 2
    return video, mask


def _masks(seg: VideoSegmenter, video: np.ndarray, mask: np.ndarray) -> np.ndarray:
    return np.stack([labels.numpy() for _, labels, _ in seg.propagate(list(video), {0: mask})])


def _mirror_masks(seg: VideoSegmenter, video: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The masks of the mirrored video, mirrored back."""
    return _masks(seg, video[:, :, ::-1].copy(), mask[:, ::-1].copy())[:, :, ::-1]


@pytest.fixture(scope="module")
def at_854(emvos: torch.nn.Module) -> dict[str, np.ndarray]:
    """Masks of a 16 x 854 video (padded to 864: 5 columns each side) and of its mirror, with and without --flip."""
    video, mask = _video(16, 854)
    plain, flipped = VideoSegmenter(emvos), tta.augment(VideoSegmenter(emvos), flip=True)
    return {"plain": _masks(plain, video, mask), "plain_mirror": _mirror_masks(plain, video, mask),
            "flip": _masks(flipped, video, mask), "flip_mirror": _mirror_masks(flipped, video, mask)}


def test_flip_is_exactly_flip_equivariant_at_854_and_the_plain_model_is_not(at_854: dict) -> None:
    """Bug: the flipped pass mirrored after resizing or padding, its probabilities added to the unflipped ones in a
    different order for a mirrored video, or the merged mask fed back unmirrored to the flipped pass: the masks of a
    mirrored video would then differ from the mirror of the video's masks. Without --flip the model is not
    equivariant (learned filters are not symmetric), which shows that the test can see a difference."""
    assert np.array_equal(at_854["flip"], at_854["flip_mirror"])
    assert (at_854["plain"][1:] != at_854["plain_mirror"][1:]).sum() > 100


def test_flip_changes_the_masks(at_854: dict) -> None:
    """Bug: the flipped pass's probabilities dropped from the average (or the wrapper never applied)."""
    assert np.array_equal(at_854["flip"][0], at_854["plain"][0])  # the given frame is the given mask
    assert (at_854["flip"][1:] != at_854["plain"][1:]).sum() > 100


def test_flip_and_scales_stay_equivariant_with_odd_padding(emvos: torch.nn.Module) -> None:
    """Bug: a flipped pass that pads before mirroring; with an odd padding (91 -> 96: 3 columns left, 2 right) the
    mirrored video would then run on frames shifted by a column. Scales 480 and 560 (a 28 x 106 pass) also change
    the masks of --flip alone."""
    video, mask = _video(24, 91)
    both = tta.augment(VideoSegmenter(emvos), flip=True, scales=(480, 560))
    masks = _masks(both, video, mask)
    assert np.array_equal(masks, _mirror_masks(both, video, mask))
    flip_only = _masks(tta.augment(VideoSegmenter(emvos), flip=True), video, mask)
    assert (masks[1:] != flip_only[1:]).sum() > 20


def test_passes_and_their_geometry(emvos: torch.nn.Module) -> None:
    """Bug: scales taken as absolute sizes instead of relative to 480, a pass left unpadded to the model's stride,
    or 480 alone not recognised as no augmentation (so the plain run would change)."""
    aug = tta.TTA(flip=True, scales=(480, 600))
    assert aug.passes == [(480, False), (480, True), (600, False), (600, True)]
    geometry = tta.TTAModel(emvos, aug).geometry(40, 100)
    assert [(g.mirrored, g.size) for g in geometry] == [(False, (40, 100)), (True, (40, 100)), (False, (50, 125)),
                                                        (True, (50, 125))]
    assert all((g.size[0] + g.padding[2] + g.padding[3]) % 16 == 0 for g in geometry)
    assert tta.wrap(emvos, tta.TTA()) is emvos and tta.TTA().is_identity
    assert (tta.TTA().describe(), aug.describe()) == ("none", "flip, scales 480 600")  # the report's line
    assert isinstance(tta.wrap(emvos, tta.TTA(scales=(560,))), tta.TTAModel)
    with pytest.raises(ValueError, match="repeat"):
        tta.TTA(scales=(480, 480))


def test_videomatch_under_flip_is_equivariant() -> None:
    """Bug: TTA written for EMVOS's state only (VideoMatch's MatchState keeps boolean sets and a previous mask at the
    pass's own size, which update must get resized and mirrored)."""
    torch.manual_seed(0)
    net = methods.build_model("videomatch").eval()
    video, mask = _video(24, 45, frames=3)
    seg = tta.augment(VideoSegmenter(net), flip=True, scales=(480, 400))
    assert np.array_equal(_masks(seg, video, mask), _mirror_masks(seg, video, mask))


# --- run.py --test ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_video(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(frames folder, first mask, random EMVOS checkpoint): 2 frames of 32 x 48."""
    root = tmp_path_factory.mktemp("tta_video")
    video, mask = _video(32, 48, seed=1)
    (root / "clip").mkdir()
    for t, rgb in enumerate(video):
        Image.fromarray(rgb).save(root / "clip" / f"{t:05d}.png")
    save_mask(root / "mask.png", mask.astype(np.uint8))
    return root / "clip", root / "mask.png", random_checkpoint("emvos", root / "emvos.pth")


def _run_test(tiny_video: tuple, out: Path, *extra: str) -> tuple[dict[str, bytes], dict]:
    folder, mask, weights = tiny_video
    assert run.main(["--test", "--device", "cpu", "--weights", str(weights), "--video", str(folder), "--mask",
                     str(mask), "--output", str(out), *extra]) == 0
    pngs = {p.name: p.read_bytes() for p in sorted((out / folder.name).glob("*.png"))}
    return pngs, json.loads((out / "run.json").read_text())


def test_run_py_scales_480_alone_is_the_plain_run_and_run_json_records_tta(
        tiny_video: tuple, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Bug: --scales taken as an absolute short side (this video runs at its own 32 x 48, so a pass at 480 px would
    change every mask), the wrapper applied without augmentation, or run.json silent about the TTA settings."""
    monkeypatch.setattr(dataset, "TEST_SHORT_SIDE", 32)  # the official rule keeps the video at 32 x 48
    plain, plain_record = _run_test(tiny_video, tmp_path / "plain")
    same, record = _run_test(tiny_video, tmp_path / "s480", "--scales", "480")
    assert len(plain) == 2 and same == plain
    assert plain_record["tta"] == record["tta"] == {"flip": False, "scales": [480]}
    both, record = _run_test(tiny_video, tmp_path / "both", "--flip", "--scales", "480", "560")
    assert record["tta"] == {"flip": True, "scales": [480, 560]}
    assert both[sorted(both)[0]] == plain[sorted(plain)[0]]  # the given frame
    assert any(both[name] != plain[name] for name in sorted(plain)[1:])


def test_run_py_refuses_a_bad_scale_and_tta_with_onnx(tiny_video: tuple, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture) -> None:
    """Bug: a scale of 0 reaching the resize (a torch error deep in a frame), or --flip silently ignored by --onnx."""
    folder, mask, weights = tiny_video
    with pytest.raises(SystemExit) as stop:
        run.main(["--test", "--scales", "0", "--video", str(folder), "--mask", str(mask)])
    assert stop.value.code == 2 and "--scales" in capsys.readouterr().err
    code = run.main(["--test", "--onnx", str(tmp_path / "model.onnx"), "--flip", "--video", str(folder), "--mask",
                     str(mask), "--output", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and "--flip with --onnx" in err and len(err.strip().splitlines()) == 1
