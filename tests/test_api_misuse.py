"""The Python API refuses misuse with a ValueError or RuntimeError that names what it got and what it expects, before
any model work: interleaved videos on one segmenter, a spent propagate, masks at frames the video does not have,
ids that are not object ids, and frames or masks of the wrong shape. Each of these once ran silently (another video's
objects appeared, nothing was yielded, a mask was ignored or truncated) or failed deep inside the matching."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import random_checkpoint, single_thread, square_frame

from core import segmenter, weights
from core.framework import Runtime


@pytest.fixture(scope="module")
def seg(tmp_path_factory: pytest.TempPathFactory) -> segmenter.VideoSegmenter:
    path = random_checkpoint("emvos", tmp_path_factory.mktemp("ckpt") / "emvos.pth")
    with single_thread():
        yield segmenter.load(path, device="cpu", runtime=Runtime(memory_budget=None))


def video(t: int = 3, h: int = 32, w: int = 48, objects: int = 1) -> tuple[list[np.ndarray], np.ndarray]:
    squares = [(1, (255, 0, 0)), (2, (0, 200, 255))][:objects]
    frames = [square_frame(h, w, i, squares)[0] for i in range(t)]
    return frames, square_frame(h, w, 0, squares)[1]


def test_two_interleaved_propagates_refuse_to_share_a_state(seg: segmenter.VideoSegmenter) -> None:
    """Bug: a second propagate on the same segmenter reset the state under the first, whose next frames then showed
    the second video's objects."""
    frames_a, first_a = video(objects=1)
    frames_b, first_b = video(objects=2)
    a = seg.propagate(frames_a, {0: first_a})
    assert next(a)[0] == 0
    b = seg.propagate(frames_b, {0: first_b})
    assert sorted(next(b)[2]) == [1, 2]
    with pytest.raises(RuntimeError, match="another propagate"):
        next(a)
    assert [i for i, _, _ in b] == [1, 2]  # the second video runs on


def test_a_spent_propagate_raises_on_a_second_pass(seg: segmenter.VideoSegmenter) -> None:
    """Bug: iterating propagate's result twice yielded nothing the second time, silently."""
    frames, first = video()
    run = seg.propagate(frames, {0: first})
    assert [i for i, _, _ in run] == [0, 1, 2]
    with pytest.raises(RuntimeError, match="already run to its end"):
        list(run)


def test_frames_already_read_are_an_error(seg: segmenter.VideoSegmenter) -> None:
    """Bug: an exhausted iterator of frames gave a video of no frames and no word."""
    frames, first = video()
    it = iter(frames)
    list(it)
    with pytest.raises(ValueError, match="gave no frame"):
        list(seg.propagate(it, {0: first}))


@pytest.mark.parametrize("index", [-1, 99])
def test_masks_at_frames_the_video_lacks(seg: segmenter.VideoSegmenter, index: int) -> None:
    """Bug: a mask at frame 99 of a 3-frame video, or at -1, was ignored."""
    frames, first = video()
    with pytest.raises(ValueError, match=str(index)):
        list(seg.propagate(frames, {0: first, index: first}))
    with pytest.raises(ValueError, match=str(index)):  # a generator has no length: the check comes at its end
        list(seg.propagate(iter(frames), {0: first, index: first}))


@pytest.mark.parametrize(("value", "match"), [(-1, "0 \\(background\\) to 255"), (1.7, "fractions")])
def test_ids_that_are_not_object_ids(seg: segmenter.VideoSegmenter, value: float, match: str) -> None:
    """Bug: id -1 was taken as an object, and a float mask of 1.7 was truncated to object 1."""
    frames, first = video()
    bad = np.where(first > 0, value, 0).astype(np.float64 if isinstance(value, float) else np.int64)
    with pytest.raises(ValueError, match=match):
        list(seg.propagate(frames, {0: bad}))


def test_whole_float_and_bool_masks_are_object_ids(seg: segmenter.VideoSegmenter) -> None:
    """A float mask of whole numbers and a bool mask are ids, as before: the checks refuse only what is ambiguous."""
    frames, first = video()
    as_int = [m for _, m, _ in seg.propagate(frames, {0: first})]
    as_float = [m for _, m, _ in seg.propagate(frames, {0: first.astype(np.float32)})]
    as_bool = [m for _, m, _ in seg.propagate(frames, {0: first > 0})]
    for a, b, c in zip(as_int, as_float, as_bool, strict=True):
        assert torch.equal(a, b) and torch.equal(a, c)


def test_shapes_are_named(seg: segmenter.VideoSegmenter) -> None:
    """Bug: each of these raised a raw tensor error from inside the matching or the padding."""
    frames, first = video()
    small = first[:16, :24]
    with pytest.raises(ValueError, match=r"\(16, 24\).*\(32, 48\)"):  # first mask of another size than the frames
        list(seg.propagate(frames, {0: small}))
    with pytest.raises(ValueError, match=r"mask of frame 2 is \(16, 24\)"):  # a later mask of another size
        list(seg.propagate(frames, {0: first, 2: small}))
    with pytest.raises(ValueError, match="frame 1 is 40x48.*32x48"):  # the frames change size mid-video
        list(seg.propagate([frames[0], np.zeros((40, 48, 3), np.uint8), frames[2]], {0: first}))
    with pytest.raises(ValueError, match=r"mask\[\.\.\., 0\]"):  # an (H, W, 1) mask
        list(seg.propagate(frames, {0: first[..., None]}))
    hwc = torch.from_numpy(frames[0]).float() / 255  # an HWC tensor frame
    with pytest.raises(ValueError, match=r"\(3, H, W\).*\(32, 48, 3\)"):
        list(seg.propagate([hwc], {0: first}))


def test_offline_load_names_the_python_argument(tmp_path: Path) -> None:
    """Bug: load() offline said "pass --weights PATH", a flag a Python caller does not have."""
    with pytest.raises(weights.WeightsUnavailableError) as err:
        segmenter.load("official-davis", device="cpu", trained_model=tmp_path, download=False)
    text = str(err.value)
    assert "--weights" not in text and "--no-download" not in text
    assert "download=False was given" in text
    with pytest.raises(segmenter.VOSInputError) as err:
        segmenter.load(str(tmp_path / "missing.pth"), device="cpu", trained_model=tmp_path)
    assert "--weights" not in str(err.value) and "checkpoint='PATH' to load()" in str(err.value)
