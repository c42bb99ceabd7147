"""The Python API: `segmenter.load`, `VideoSegmenter.propagate` / `remove_object`, `segmenter.read_frames`, and the
docs/api.md's "Use it from Python" block run as written."""

from __future__ import annotations

import ast
import contextlib
import io
import os
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from conftest import GOLDEN_WEIGHTS, ROOT, square_frame

from core import methods, segmenter
from core.framework import Runtime

README_SECTION = "## Use it from Python"


@pytest.fixture(scope="module")
def golden() -> Path:
    return GOLDEN_WEIGHTS


def readme_snippet() -> str:
    """The first ```python block of docs/api.md's "Use it from Python" section."""
    text = (ROOT / "docs" / "api.md").read_text()
    assert README_SECTION in text, f"docs/api.md has no '{README_SECTION}' section"
    section = text.split(README_SECTION, 1)[1].split("\n## ", 1)[0]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "the section has no python block"
    return match.group(1)


def tiny_sample(root: Path, davis2016_root: Path, frames: int, size: tuple[int, int]) -> None:
    """The sample's bear, its first `frames` frames shrunk to size (w, h), under root/sample/DAVIS2016, and the golden
    weights as root/trained_model/coco_davis_best.pth (what "official-davis" names)."""
    for sub, interpolation in (("JPEGImages", cv2.INTER_AREA), ("Annotations", cv2.INTER_NEAREST)):
        src = sorted((davis2016_root / sub / "480p" / "bear").iterdir())[:frames]
        out = root / "sample" / "DAVIS2016" / sub / "480p" / "bear"
        out.mkdir(parents=True)
        for f in src:
            img = cv2.imread(str(f), cv2.IMREAD_UNCHANGED)
            cv2.imwrite(str(out / f.name), cv2.resize(img, size, interpolation=interpolation))
    (root / "trained_model").mkdir()
    (root / "trained_model" / "coco_davis_best.pth").symlink_to(GOLDEN_WEIGHTS)


def golden_as_official(monkeypatch: pytest.MonkeyPatch) -> None:
    """Take the golden weights for the authors' coco_davis_best.pth: "official-davis" checks the file's git blob id,
    and the real file cannot be downloaded here."""
    monkeypatch.setitem(segmenter.weights.OFFICIAL_BLOB_IDS, "coco_davis_best.pth",
                        segmenter.weights.git_blob_id(GOLDEN_WEIGHTS))


def test_readme_snippet_runs(tmp_path: Path, davis2016_root: Path, golden: Path, one_thread: None,
                             monkeypatch: pytest.MonkeyPatch) -> None:
    """The docs/api.md block, run unchanged from a folder laid out as the repository (the sample shrunk to 48x32, the
    golden weights as the official file): it prints every frame, object 2 appears at frame 2 with a probability map,
    and is gone (mask and probabilities) after remove_object. Fails when docs/api.md drifts from the API (a renamed
    function or argument), when propagate skips or repeats frames, when a later mask does not add its object, or when
    a removed object comes back."""
    tiny_sample(tmp_path, davis2016_root, frames=6, size=(48, 32))
    golden_as_official(monkeypatch)
    monkeypatch.chdir(tmp_path)
    out = io.StringIO()
    namespace: dict = {}
    with contextlib.redirect_stdout(out):
        exec(compile(readme_snippet(), "docs/api.md", "exec"), namespace)  # noqa: S102 - the page's own code
    lines = out.getvalue().splitlines()
    rows = []
    for line in lines:
        m = re.fullmatch(r"(\d+) (\[[\d, ]*\]) (\{.*\})", line)
        assert m, f"unexpected line {line!r}"
        rows.append((int(m.group(1)), ast.literal_eval(m.group(2)), ast.literal_eval(m.group(3))))
    assert [r[0] for r in rows] == list(range(6))
    for index, ids, probs in rows:
        tracked = [1, 2] if 2 <= index <= 3 else [1]
        assert sorted(probs) == tracked, f"frame {index}: probabilities of {sorted(probs)}"
        assert set(ids) <= {0, *tracked}, f"frame {index}: ids {ids}"
    assert 2 in rows[2][1]  # the given box is the output at the frame it is given
    assert namespace["segmenter"].object_ids == [1]


def two_objects(h: int = 32, w: int = 48, t: int = 6) -> tuple[list[np.ndarray], np.ndarray]:
    """t frames of two moving squares (ids 1 and 2) and the first frame's id mask."""
    frames, first = [], None
    for i in range(t):
        rgb, ids = square_frame(h, w, i, [(1, (255, 0, 0)), (2, (0, 200, 255))])
        frames.append(rgb)
        first = ids if first is None else first
    return frames, first


def videomatch_segmenter() -> segmenter.VideoSegmenter:
    torch.manual_seed(0)
    return segmenter.VideoSegmenter(methods.build_model("videomatch").eval(), runtime=Runtime(memory_budget=None))


def emvos_segmenter(golden: Path) -> segmenter.VideoSegmenter:
    return segmenter.load(golden, device="cpu", runtime=Runtime(memory_budget=None))


@pytest.mark.parametrize("method", ["emvos", "videomatch"])
def test_remove_object_at_start_equals_never_given(method: str, golden: Path, one_thread: None) -> None:
    """Removing object 2 right after the first frame leaves the state of a video given object 1 alone, so every later
    frame's probabilities equal that run's. Fails when remove_object drops the wrong slot (object 1's sets or
    reference), leaves object 2's columns in the state (a readout or outlier mask still shaped for two objects), or
    keeps a VideoMatch reference position that no object selects."""
    frames, first = two_objects()
    seg = emvos_segmenter(golden) if method == "emvos" else videomatch_segmenter()
    removed = []
    for index, mask, probs in seg.propagate(frames, masks={0: first}):
        if index == 0:
            seg.remove_object(2)
        else:
            assert 2 not in mask.unique().tolist() and list(probs) == [1]
            removed.append(probs[1])
    alone = []
    for index, _, probs in seg.propagate(frames, masks={0: np.where(first == 1, 1, 0)}):
        if index:
            alone.append(probs[1])
    for k, (a, b) in enumerate(zip(removed, alone, strict=True)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0, msg=f"frame {k + 1}")


def test_remove_object_later_drops_its_slot(golden: Path, one_thread: None) -> None:
    """An object added at frame 2 and removed at frame 3: its reference (EMVOS's global reference of frame 2) and its
    slot in the previous mask leave the state, the id never returns, and removing an untracked id is an error. Fails
    when the reference of the removed object is kept (matching cost grows with removed objects) or the slot of
    another object is dropped."""
    frames, first = two_objects()
    seg = emvos_segmenter(golden)
    only_one = np.where(first == 1, 1, 0)
    seen = []
    for index, mask, probs in seg.propagate(frames, masks={0: only_one, 2: np.where(first == 2, 2, 0)}):
        seen.append(mask.unique().tolist())
        if index == 2:
            assert len(seg.state.references) == 2 and seg.state.prev_mask16.shape[1] == 2
        if index == 3:
            seg.remove_object(2)
            assert len(seg.state.references) == 1 and seg.state.prev_mask16.shape[1] == 1
            assert seg.state.references[0].mask16.shape[1] == 1
        if index > 3:
            assert list(probs) == [1]
    assert all(2 not in ids for ids in seen[4:]) and 2 in seen[2]
    with pytest.raises(ValueError, match="object 2 is not tracked"):
        seg.remove_object(2)


def test_remove_last_object_gives_background(golden: Path, one_thread: None) -> None:
    """With every object removed the frames are background, until a later mask starts a new object. Fails when the
    segmenter runs the model on an empty state or raises the first-frame error in the middle of a video."""
    frames, first = two_objects(t=4)
    seg = emvos_segmenter(golden)
    out = []
    masks = {0: np.where(first == 1, 1, 0), 3: np.where(first == 2, 2, 0)}
    for index, mask, probs in seg.propagate(frames, masks=masks):
        if index == 0:
            seg.remove_object(1)
        out.append((mask.unique().tolist(), sorted(probs)))
    assert out[1:3] == [([0], []), ([0], [])]
    assert 2 in out[3][0] and out[3][1] == [2]


def test_read_frames_folder_and_capture(frame_folder: tuple[Path, Path], tiny_mp4: tuple[Path, Path]) -> None:
    """Frames from a folder come in natural order (frame2 before frame10) and from a cv2.VideoCapture as RGB. Fails
    when the folder is sorted as strings or the capture's BGR frames are passed on unconverted (red would read as
    blue)."""
    folder, _ = frame_folder
    got = list(segmenter.read_frames(folder))
    want = [square_frame(24, 32, t, [(1, (255, 0, 0))])[0] for t in range(4)]
    assert len(got) == 4 and all(np.array_equal(g, w) for g, w in zip(got, want, strict=True))
    cap = cv2.VideoCapture(str(tiny_mp4[0]))
    try:
        frames = list(segmenter.read_frames(cap))
    finally:
        cap.release()
    assert len(frames) == 7
    _, ids = square_frame(24, 32, 0, [(1, (255, 0, 0))])
    red = frames[0][ids == 1].mean(axis=0)
    assert red[0] > 200 and red[2] < 60, f"the red square reads as {red}"


def test_load_names_method_alias_or_path(tmp_path: Path, golden: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """load takes a method name (its file in trained_model/), an alias or a path, and never downloads when told not to.
    Fails when a method name is taken for a path, or download=False still reaches for the network."""
    (tmp_path / "coco_davis_best.pth").symlink_to(golden)
    golden_as_official(monkeypatch)
    for spec in ("emvos", "official-davis", golden):
        seg = segmenter.load(spec, device="cpu", trained_model=tmp_path, download=False)
        assert type(seg.model).__name__ == "EMVOS" and not seg.model.training
    os.remove(tmp_path / "coco_davis_best.pth")
    with pytest.raises(segmenter.weights.WeightsUnavailableError):
        segmenter.load("official-davis", device="cpu", trained_model=tmp_path, download=False)
