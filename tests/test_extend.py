"""The layout a researcher extends: a new method is one module and one registry entry, and run.py --test and
--train run it without an edit; the top-level modules import each other as a tree."""

from __future__ import annotations

import ast
import csv
import subprocess
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
import third_method
import torch
import torch.nn as nn
from conftest import DAVIS2016_SAMPLE, closure, import_graph, repo_modules, save_mask, square_frame
from PIL import Image
from torch import Tensor

import dataset
import run
from core import methods
from core.framework import Runtime, clip_forward, get_padding
from videomatch import bce_loss

ROOT = Path(__file__).resolve().parents[1]


# --- a tiny method: the previous mask, sharpened by one learnable scale, is the next frame's prediction ----------

@dataclass
class PropagateConfig:
    scale: float = 4.0  # initial sharpness of the logits


@dataclass
class PropagateState:
    prev: Tensor  # (B, N, H, W) each object's previous foreground probability


class Propagate(nn.Module, methods.VOSModel):
    stride = 1  # works at any frame size: no padding

    def __init__(self, config: PropagateConfig | None = None, pretrained: bool = False):
        super().__init__()
        self.config = config or PropagateConfig()
        self.scale = nn.Parameter(torch.tensor(self.config.scale))

    def encode(self, img: Tensor) -> Tensor:
        return img

    def init_state(self, feats: Tensor, masks: Tensor) -> PropagateState:
        return PropagateState(masks[:, :, 1])

    def add_objects(self, state: PropagateState, feats: Tensor, masks: Tensor) -> None:
        state.prev = torch.cat([state.prev, masks[:, :, 1]], dim=1)

    def predict(self, feats: Tensor, state: PropagateState, runtime: Runtime | None = None) -> Tensor:
        fg = self.scale * (state.prev - 0.5)
        return torch.stack([-fg, fg], dim=2)  # (B, N, 2, H, W)

    def update(self, state: PropagateState, feats: Tensor, probs: Tensor) -> None:
        state.prev = probs[:, :, 1]

    def forward(self, imgs: Tensor, first_masks: Tensor) -> Tensor:
        return clip_forward(self, imgs, first_masks)


@pytest.fixture
def propagate(monkeypatch: pytest.MonkeyPatch) -> methods.Method:
    stage = methods.StageConfig("davis", "propagate_davis", methods.DAVIS_CLIPS, clip_len=2, clips_per_epoch=2,
                                batch_size=2, epochs=1, save_every=1, val_every=0, crop=(32, 32))
    entry = methods.Method("propagate", Propagate, PropagateConfig, "trained_model/propagate_davis_best.pth",
                           {"davis": stage}, ("davis",), {"bce": bce_loss}, "bce")
    monkeypatch.setitem(methods.METHODS, entry.name, entry)  # what methods.register does, undone after the test
    return entry


def test_a_registered_method_trains_and_tests_through_run_py(propagate: methods.Method, tmp_path: Path) -> None:
    assert isinstance(Propagate(), methods.VOSModel)  # it meets the Protocol
    code = run.main(["--train", "--method", "propagate", "--device", "cpu", "--davis", str(DAVIS2016_SAMPLE),
                     "--davis-year", "2016", "--workers", "0", "--save-dir", str(tmp_path / "ckpt")])
    assert code == 0
    state = torch.load(tmp_path / "ckpt" / "propagate_davis_0001.train.pth", weights_only=True)
    assert state["iteration"] == 1 and state["method"] == "propagate"  # one optimizer step was taken
    scale = state["weights"]["model"]["scale"]
    assert scale != 4.0  # ... and it moved the one weight

    code = run.main(["--test", "--device", "cpu", "--weights", str(tmp_path / "ckpt" / "propagate_davis_best.pth"),
                     "--data", "sample", "--sequences", "bear", "--output", str(tmp_path / "out")])
    assert code == 0
    # the method propagates the first mask unchanged (a positive scale keeps p > 0.5 exactly where it was 1)
    first = np.array(Image.open(run.SAMPLE_ROOT / "Annotations/480p/bear/00000.png")) != 0
    pngs = sorted((tmp_path / "out" / "sample" / "bear").glob("*.png"))
    assert len(pngs) == 10  # the sample's 10 frames of bear
    for png in pngs:
        np.testing.assert_array_equal(np.array(Image.open(png)), first.astype(np.uint8))


# --- a third method (tests/third_method.py): stride 8, its own sampler, selection, log column, loss, batch transform
# and two objects per training clip ---------------------------------------------------------------------------------

FRAME = (40, 45)  # padded to 40 x 48 at stride 8 (the odd column to the left), 48 x 48 at 16


@pytest.fixture
def third(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict:
    """tests/third_method.py registered as `third`, a folder of 4 frames at FRAME with two squares (ids 1 and 2)
    moving right, and a record of the (training mode, size) of every frame its encode receives."""
    monkeypatch.setitem(methods.METHODS, "third", third_method.method())
    monkeypatch.setattr(third_method, "SELECTIONS", [])
    seen: list[tuple[bool, tuple[int, int]]] = []
    encode = third_method.ColourCue.encode

    def recording(self: third_method.ColourCue, img: Tensor) -> Tensor:
        seen.append((self.training, tuple(img.shape[-2:])))
        return encode(self, img)

    monkeypatch.setattr(third_method.ColourCue, "encode", recording)
    data = tmp_path / "clips"
    (data / "frames").mkdir(parents=True)
    for t in range(4):
        rgb, ids = square_frame(*FRAME, t, [(1, (200, 40, 40)), (2, (40, 40, 200))])
        Image.fromarray(rgb).save(data / "frames" / f"{t:05d}.png")
        save_mask(data / "masks" / f"{t:05d}.png", ids)
    return {"data": data, "seen": seen}


def test_a_third_method_with_its_own_stride_sampler_and_selection_runs_through_run_py(
        third: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """Bugs: the driver or the training forward padding to EMVOS's 16 (or not at all) instead of the model's own
    stride; the trainer reading only the built-in samplers, or calling the DAVIS val selection, or logging `val_jf`
    and the J&F title, instead of the stage's own selection, score column and title; a checkpoint of a method outside
    the built-in two that run.py --test cannot load."""
    assert isinstance(third_method.ColourCue(), methods.VOSModel)
    assert get_padding(*FRAME, 16) != get_padding(*FRAME, 8)  # the frame tells the two strides apart
    ckpt = tmp_path / "ckpt"
    code = run.main(["--train", "--method", "third", "--device", "cpu", "--davis", str(third["data"]),
                     "--workers", "0", "--save-dir", str(ckpt)])
    assert code == 0
    out = capsys.readouterr().out
    state = torch.load(ckpt / "third_clips_0001.train.pth", weights_only=True)
    assert state["iteration"] == 1 and state["method"] == "third"  # one optimizer step of this method
    assert state["weights"]["model"]["scale"] != 4.0  # the step moved its weights (its own loss has gradients)
    assert state["weights"]["model"]["colour"].abs().min() > 0
    # every training frame reached encode padded to 8: 40 x 45 -> 40 x 48, not 48 x 48 (16) or 40 x 45 (none)
    assert {size for training, size in third["seen"] if training} == {(40, 48)}

    # its own selection ran once (val_every 1), its title in the message, its score in its own column
    [selection] = third_method.SELECTIONS
    [score] = selection.scores
    assert 0 < score <= 1
    assert f"{selection.title} {score:.5f} (new best)" in out
    with open(ckpt / "train_log.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1 and "val_jf" not in rows[0]
    assert float(rows[0]["val_clip_iou"]) == pytest.approx(score, abs=1e-6)
    assert (ckpt / "third_clips_best.pth").is_file()  # kept as the new best by that score

    # --test with its checkpoint: masks at the frames' own size (the test rule's short side set to theirs)
    monkeypatch.setattr(dataset, "TEST_SHORT_SIDE", FRAME[0])
    third["seen"].clear()
    code = run.main(["--test", "--device", "cpu", "--weights", str(ckpt / "third_clips_best.pth"),
                     "--video", str(third["data"] / "frames"), "--mask", str(third["data"] / "masks" / "00000.png"),
                     "--output", str(tmp_path / "out")])
    assert code == 0
    assert {size for _, size in third["seen"]} == {(40, 48)} and len(third["seen"]) == 4  # padded to 8 at test
    first = np.array(Image.open(third["data"] / "masks" / "00000.png"))
    pngs = sorted((tmp_path / "out" / "frames").glob("*.png"))
    assert [p.name for p in pngs] == [f"{t:05d}.png" for t in range(4)]
    for png in pngs:  # the first mask propagated, uncropped where it was padded (the odd column on the left)
        np.testing.assert_array_equal(np.array(Image.open(png)), first)


def test_a_third_methods_own_sampler_check_refuses_its_data_before_training(third: dict, tmp_path: Path,
                                                                           capsys: pytest.CaptureFixture) -> None:
    """Bug: the trainer skipping a new sampler's check() (or only checking the built-in ones), so that unusable data
    fails after the model is built, or never, instead of one line naming the folder and exit 2."""
    for frame in sorted((third["data"] / "masks").glob("*.png"))[1:]:
        frame.unlink()
    code = run.main(["--train", "--method", "third", "--device", "cpu", "--davis", str(third["data"]),
                     "--workers", "0", "--save-dir", str(tmp_path / "ckpt")])
    assert code == 2
    err = capsys.readouterr().err
    assert f"{third['data']} has 1 of the 2 frames with masks a clip needs" in err and "--clip-len" in err
    assert not list((tmp_path / "ckpt").glob("*.pth")) and third["seen"] == []

def test_a_third_method_trains_on_two_objects_per_clip_through_its_own_transform(
        third: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """tests/third_method.py trains with OBJECTS = 2 objects per clip and a batch transform of its own, with no edit
    to the trainer, the generic layer or run.py. Bugs: the trainer or the batch cutting the clips to one binary
    object (`masks == 1`, or the forward tracking id 1 alone), so that the loss sees one object; a method's own batch
    transforms not run, run once per epoch instead of once per batch, or the forward fed the batch from before them;
    a step that does not lower the method's own loss (its gradient lost between forward and optimizer)."""
    entry = methods.METHODS["third"]
    transformed: list[tuple[Tensor, Tensor]] = []  # (masks in, masks out) of each call of the method's transform
    steps: list[dict] = []

    def recording_transform(batch: methods.Batch, stage: methods.StageConfig) -> methods.Batch:
        out = third_method.shuffle_objects(batch, stage)
        transformed.append((batch.masks.clone(), out.masks.clone()))
        return out

    forward, loss = third_method.ColourCue.forward, entry.losses["cross_entropy"]

    def recording_forward(self: third_method.ColourCue, imgs: Tensor, first_masks: Tensor) -> Tensor:
        steps.append({"first": first_masks.clone()})
        return forward(self, imgs, first_masks)

    def recording_loss(logits: Tensor, gt: Tensor) -> Tensor:
        steps[-1].update(objects=logits.shape[2], gt=gt.clone())
        return loss(logits, gt)

    monkeypatch.setitem(methods.METHODS, "third", replace(
        entry, transforms=(methods.BatchTransform(recording_transform),), losses={"cross_entropy": recording_loss}))
    monkeypatch.setattr(third_method.ColourCue, "forward", recording_forward)
    epochs = 8
    ckpt = tmp_path / "ckpt"
    code = run.main(["--train", "--method", "third", "--device", "cpu", "--davis", str(third["data"]), "--workers",
                     "0", "--save-dir", str(ckpt), "--epochs", str(epochs), "--val-every", "0"])
    assert code == 0
    training = [s for s in steps if "gt" in s]  # the selection's forward calls have no loss after them
    assert len(training) == len(transformed) == epochs  # one step of 2 clips per epoch, each batch transformed once
    for step, (before, after) in zip(training, transformed, strict=True):
        assert step["objects"] == third_method.OBJECTS  # the loss got both objects' logits
        for masks in (step["first"], step["gt"]):
            assert all(set(m.unique().tolist()) == {0, 1, 2} for m in masks.flatten(0, -3))  # both objects, every clip
        assert torch.equal(step["first"], after[:, 0]) and torch.equal(step["gt"], after[:, 1:])  # after the transform
        # the transform changes the order only: each clip's ids 1, 2 swapped or kept, the pixels of its objects kept
        for b in range(before.shape[0]):
            swapped = torch.where(before[b] > 0, 3 - before[b], 0)
            assert torch.equal(after[b], before[b]) or torch.equal(after[b], swapped)
    assert any(not torch.equal(a, b) for b, a in transformed)  # ... and it drew another order at least once

    # the loss falls: the trained weights' loss on every clip of the folder is below the initial weights'
    data = third_method.FolderClips(str(third["data"]), clip_len=2, output_size=FRAME)
    clips = [data[k] for k in range(len(data))]
    imgs, masks = torch.stack([c["imgs"] for c in clips]), torch.stack([c["masks"] for c in clips])
    trained, _ = methods.load_weights(ckpt / f"third_clips_{epochs:04d}.pth")
    with torch.no_grad():
        start, end = (loss(net(imgs, masks[:, 0]), masks[:, 1:]).item()
                      for net in (third_method.ColourCue(), trained))
    assert end < 0.99 * start, (start, end)  # 8 steps of lr 1e-2 lower it by 4 %


def test_modules_import_as_a_tree() -> None:
    """Bug: a library importing an entry point (run.py, evaluation.py, a tool), or two modules importing each other,
    so that loading one loads the command line or the order of imports decides what works."""
    graph = import_graph()
    entry_points = {"run", "evaluation", "export", "tools.bench", "tools.cuda_check", "tools.make_golden"}
    libraries = {m: deps for m, deps in graph.items() if not m.startswith("tools.")}  # a tool may drive run.py
    assert {m: sorted(deps & entry_points) for m, deps in libraries.items() if deps & entry_points} == {}

    assert [m for m in graph if any(m in graph[d] for d in closure(m, graph))] == []  # no cycle: none reaches back


def test_import_run_loads_each_module_once() -> None:
    code = ("import os, sys, run; files = [getattr(m, '__file__', None) for m in list(sys.modules.values())]; "
            "mine = [f for f in files if f and os.path.abspath(f).startswith(sys.argv[1] + os.sep) "
            "and '.venv' not in f]; assert len(mine) == len(set(mine)), mine; print(len(mine))")
    out = subprocess.run([sys.executable, "-c", code, str(ROOT)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert int(out.stdout) >= 9  # run, inference, methods, model, videomatch, matching, dataset, evaluation, ...


def test_generic_modules_import_nothing_from_model() -> None:
    """Bug: code every method needs (padding, aggregation, the driver, figures, training, readers) reached through
    EMVOS's module, so that VideoMatch silently inherits EMVOS's choices (its stride 16) and cannot be used without
    it. model.py is EMVOS: only its own callers (the method list, the reference, bench.py, the golden maker) may
    import it."""
    allowed = {"model", "core.methods", "tools.reference", "tools.bench", "tools.cuda_check", "tools.make_golden",
               "export"}
    graph = import_graph()
    assert sorted(m for m, deps in graph.items() if "model" in deps and m not in allowed) == []


def test_no_class_is_longer_than_150_lines() -> None:
    """Fails when a class grows into a second module (the trainer's 270-line class mixed the loop, resume replay,
    validation and saving): a class of the top-level modules above 150 lines is to be split."""
    long = []
    for path in repo_modules().values():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and node.end_lineno - node.lineno + 1 > 150:
                long.append(f"{path.name}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)")
    assert not long, "classes above 150 lines: " + ", ".join(long)
