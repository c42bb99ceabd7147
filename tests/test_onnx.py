"""The ONNX export (export.py) and the torch-free runner (onnx_runner.py): its numpy preprocessing equals the
PyTorch driver's, it imports no torch, and its masks agree with PyTorch's fp32 masks on the golden cases and on real
frames, also through run.py --test --onnx. The golden weights are exported once for the module (about a minute: the
exporter traces the whole network); every run is on small frames."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import DAVIS2016_SAMPLE, GOLDEN_CASES, GOLDEN_WEIGHTS, ROOT, random_checkpoint, save_mask
from PIL import Image

import dataset
import export
import onnx_runner
import run
from core import framework
from core.methods import load_weights
from core.segmenter import VideoSegmenter

TIE = 1e-4  # two labels whose aggregated probabilities are this close are a tie (tools/bench.py's TIE)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("onnx") / "golden.onnx"
    assert export.main(["--weights", str(GOLDEN_WEIGHTS), "--output", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def both(exported: Path) -> tuple[torch.nn.Module, onnx_runner.OnnxModel]:
    net, _ = load_weights(GOLDEN_WEIGHTS)
    return net, onnx_runner.OnnxModel(exported)


def _compare(net: torch.nn.Module, om: onnx_runner.OnnxModel, frames: list[np.ndarray],
             masks: dict[int, np.ndarray]) -> dict[str, float]:
    """Step PyTorch (fp32) and onnxruntime through the same frames: the share of equal label pixels, the share among
    the pixels whose winner leads by more than TIE, and the largest logit difference."""
    seg, oseg, logits = VideoSegmenter(net), om.segmenter(), {"torch": [], "onnx": []}
    predict, step = net.predict, om.step
    net.predict = lambda *a, **k: logits["torch"].append(predict(*a, **k)) or logits["torch"][-1]
    om.step = lambda *a: logits["onnx"].append(step(*a)) or logits["onnx"][-1]
    equal = clear = clear_equal = total = 0
    try:
        for i, rgb in enumerate(frames):
            frame = torch.from_numpy(rgb).permute(2, 0, 1).float() / 255
            mask = masks.get(i)
            labels, probs = seg.step(frame, None if mask is None else torch.from_numpy(mask).long())
            labels_o, _ = oseg.step(frame.numpy(), mask)
            p = np.concatenate([1 - probs.numpy().sum(0, keepdims=True), probs.numpy()])
            top = np.sort(p, axis=0)
            sure = (top[-1] - top[-2]) > TIE
            same = labels.numpy() == labels_o
            equal, total = equal + same.sum(), total + same.size
            clear, clear_equal = clear + sure.sum(), clear_equal + (same & sure).sum()
    finally:
        del net.predict, om.step
    diff = max(float(np.abs(t[0].numpy() - o[0]).max()) for t, o in zip(logits["torch"], logits["onnx"], strict=True))
    return {"agree": equal / total, "clear_agree": clear_equal / clear, "logit_diff": diff}


def test_golden_case_a_agrees_with_pytorch(both: tuple) -> None:
    """Bug: a preprocessing step that differs from the driver's (normalisation, padding side, mask pooling), or the
    state fed back wrongly (the previous frame's keys or masks), moves most pixels. Case a: one object, padded."""
    cases = dict(np.load(GOLDEN_CASES))
    result = _compare(*both, list(cases["a_imgs"]), {0: cases["a_first_mask"]})
    assert result["agree"] >= 0.999 and result["logit_diff"] < 1e-3, result


def test_golden_case_b_late_object_agrees_with_pytorch_up_to_ties(both: tuple) -> None:
    """Bug: an object given at a later frame matched against the first frame's keys (its reference must be its own
    frame: ref_index), or added in another slot order. Random weights give the three objects nearly equal
    probabilities (half of the pixels lead by less than 1e-4), so pixels are compared where the winner is clear."""
    cases = dict(np.load(GOLDEN_CASES))
    result = _compare(*both, list(cases["b_imgs"]), {0: cases["b_first_mask"], 2: cases["b_frame2_mask"]})
    assert result["clear_agree"] >= 0.999 and result["logit_diff"] < 1e-3, result


def test_real_frames_agree_with_pytorch(both: tuple) -> None:
    """Real frames (the bundled DAVIS 2016 sample's bear, 3 frames shrunk to 120 x 213): at least 99.9 % equal."""
    seq = DAVIS2016_SAMPLE / "JPEGImages" / "480p" / "bear"
    frames = [np.asarray(Image.open(seq / f"{t:05d}.jpg").convert("RGB").resize((213, 120), Image.BICUBIC))
              for t in range(3)]
    first = np.asarray(Image.open(DAVIS2016_SAMPLE / "Annotations" / "480p" / "bear" / "00000.png"))
    mask = (np.asarray(Image.fromarray(first).resize((213, 120), Image.NEAREST)) != 0).astype(np.int64)
    result = _compare(*both, frames, {0: mask})
    assert result["agree"] >= 0.999 and result["logit_diff"] < 1e-3, result


def test_run_py_onnx_uses_the_same_driver_and_agrees(exported: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """run.py --test --onnx: the reader's frames through onnx_runner's step, written by the same writer. Bug: the
    ONNX path writing other file names or sizes, or its masks disagreeing with the PyTorch run's."""
    folder = tmp_path / "clip"
    folder.mkdir()
    seq = DAVIS2016_SAMPLE / "JPEGImages" / "480p" / "boat"
    for t in range(3):
        Image.open(seq / f"{t:05d}.jpg").resize((107, 60), Image.BICUBIC).save(folder / f"{t:05d}.png")
    first = Image.open(DAVIS2016_SAMPLE / "Annotations" / "480p" / "boat" / "00000.png").resize((107, 60))
    save_mask(tmp_path / "mask.png", (np.asarray(first) != 0).astype(np.uint8))
    monkeypatch.setattr(dataset, "TEST_SHORT_SIDE", 60)  # run at the size on disk
    common = ["--test", "--video", str(folder), "--mask", str(tmp_path / "mask.png")]
    assert run.main([*common, "--onnx", str(exported), "--output", str(tmp_path / "onnx")]) == 0
    assert run.main([*common, "--device", "cpu", "--weights", str(GOLDEN_WEIGHTS), "--output",
                     str(tmp_path / "torch")]) == 0
    onnx_masks = sorted((tmp_path / "onnx" / "clip").glob("*.png"))
    torch_masks = sorted((tmp_path / "torch" / "clip").glob("*.png"))
    assert [p.name for p in onnx_masks] == [p.name for p in torch_masks] == ["00000.png", "00001.png", "00002.png"]
    a = np.stack([np.asarray(Image.open(p)) for p in onnx_masks])
    b = np.stack([np.asarray(Image.open(p)) for p in torch_masks])
    assert a.shape == (3, 60, 107) and (a == b).mean() >= 0.999
    assert json.loads((tmp_path / "onnx" / "run.json").read_text())["onnx"] is True


def test_the_runner_imports_no_torch_and_segments_a_folder(exported: Path, tmp_path: Path) -> None:
    """The torch-free promise, in a fresh interpreter: onnx_runner's command line segments a folder of frames with
    numpy, Pillow and onnxruntime, and torch is never imported. Fails if the runner (or anything it imports) pulls
    in torch, or if its size rule resized a video that keeps its size (its first mask would not come back as given)."""
    folder = tmp_path / "frames"
    folder.mkdir()
    for t in range(2):
        Image.open(DAVIS2016_SAMPLE / "JPEGImages" / "480p" / "bear" / f"{t:05d}.jpg").resize((64, 36)).save(
            folder / f"f{t}.jpg")
    mask = np.zeros((36, 64), np.uint8)
    mask[10:12, 20:22] = 1  # 711 pixels at 480p: the official rule keeps the frames at 36 x 64
    save_mask(tmp_path / "mask.png", mask)
    code = ("import sys, onnx_runner; assert 'torch' not in sys.modules; "
            f"onnx_runner.main(['--model', {str(exported)!r}, '--frames', {str(folder)!r}, '--mask', "
            f"{str(tmp_path / 'mask.png')!r}, '--output', {str(tmp_path / 'out')!r}]); "
            "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"
    written = sorted((tmp_path / "out").glob("*.png"))
    assert [p.name for p in written] == ["f0.png", "f1.png"]
    np.testing.assert_array_equal(np.asarray(Image.open(written[0])), mask)


def test_numpy_preprocessing_equals_the_drivers() -> None:
    """Bug: the runner's resize, size rule, padding or aggregation drifting from dataset.py / framework.py (bicubic
    weights, nearest indices in float32, the odd padding pixel's side, the aggregation's clamp)."""
    rng = np.random.default_rng(0)
    frame = rng.random((3, 37, 53), dtype=np.float32)
    for size in ((480, 687), (20, 30), (37, 53)):
        np.testing.assert_allclose(onnx_runner.resize_bicubic(frame, size),
                                   dataset.resize_frame(torch.from_numpy(frame), size).numpy(), atol=1e-5)
    ids = rng.integers(0, 3, (37, 53))
    for size in ((480, 687), (20, 30), (74, 106)):
        np.testing.assert_array_equal(onnx_runner.resize_nearest(ids, size),
                                      dataset.resize_mask(torch.from_numpy(ids), size).numpy())
    small, large = np.zeros((720, 1280), np.int64), np.zeros((720, 1280), np.int64)
    small[:30, :30] = 1  # 30 x 30 at 720p: 400 pixels at 480p, below the 1000 the rule keeps
    large[:300, :300] = 2
    for shape, given in (((720, 1280), [large]), ((720, 1280), [small]), ((480, 854), []), ((1280, 720), [])):
        assert onnx_runner.official_size(*shape, given) == dataset.official_size(*shape, given)
    for h, w in ((37, 53), (48, 64), (33, 50)):
        x = rng.random((1, 2, h, w), dtype=np.float32)
        padding = onnx_runner.get_padding(h, w)
        assert padding == framework.get_padding(h, w, 16)
        np.testing.assert_array_equal(onnx_runner.pad(x, padding), framework.pad(torch.from_numpy(x), padding).numpy())
    probs = rng.random((3, 1, 9, 11), dtype=np.float32)
    probs = np.concatenate([1 - probs, probs], axis=1)
    labels, agg = onnx_runner.aggregate(probs)
    labels_t, agg_t = framework.aggregate_objects(torch.from_numpy(probs)[None])
    np.testing.assert_array_equal(labels, labels_t[0].numpy())
    np.testing.assert_allclose(agg, agg_t[0].numpy(), atol=1e-6)


def test_export_refuses_bad_input_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Bad input is one line and exit 2, before any export: a missing weights file, an output that exists (its
    encoder file too) without --force, a missing folder, and a VideoMatch checkpoint (whose matching does not
    export). Fails if a user's file could be overwritten or a traceback came out."""
    existing = tmp_path / "model.onnx"
    existing.write_bytes(b"mine")
    vm = random_checkpoint("videomatch", tmp_path / "vm.pth")
    for argv, words in ((["--weights", str(tmp_path / "none.pth"), "--output", str(tmp_path / "a.onnx")],
                         "does not exist"),
                        (["--weights", str(GOLDEN_WEIGHTS), "--output", str(existing)], "--force"),
                        (["--weights", str(GOLDEN_WEIGHTS), "--output", str(tmp_path / "no" / "a.onnx")],
                         "does not exist"),
                        (["--weights", str(vm), "--output", str(tmp_path / "vm.onnx")], "videomatch")):
        assert export.main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and words in err, err
    assert existing.read_bytes() == b"mine" and not (tmp_path / "vm.onnx").exists()
