"""The layout a researcher extends: a new method is one module and one registry entry, and run.py --test and
--train run it without an edit; the top-level modules import each other as a tree."""

from __future__ import annotations

import ast
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from conftest import DAVIS2016_SAMPLE
from PIL import Image
from torch import Tensor

import methods
import run
from framework import Runtime, clip_forward
from videomatch import bce_loss

ROOT = Path(__file__).resolve().parents[1]


# --- a tiny method: the previous mask, sharpened by one learnable scale, is the next frame's prediction ----------

@dataclass
class PropagateConfig:
    scale: float = 4.0  # initial sharpness of the logits


@dataclass
class PropagateState:
    prev: Tensor  # (B, N, H, W) each object's previous foreground probability


class Propagate(nn.Module):
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
                                batch_size=2, epochs=1, save_every=1, val_every=0, crop=(32, 32), swap_above=1.0)
    entry = methods.Method("propagate", Propagate, PropagateConfig, "trained_model/propagate_davis_best.pth",
                           {"davis": stage}, ("davis",), {"bce": bce_loss}, "bce")
    monkeypatch.setitem(methods.METHODS, entry.name, entry)  # what methods.register does, undone after the test
    return entry


@pytest.mark.skipif(not DAVIS2016_SAMPLE.is_dir(), reason=f"DAVIS 2016 sample not found at {DAVIS2016_SAMPLE}")
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
    assert len(pngs) == 8
    for png in pngs:
        np.testing.assert_array_equal(np.array(Image.open(png)), first.astype(np.uint8))


def test_top_level_modules_import_as_a_tree() -> None:
    modules = {p.stem: p for p in ROOT.glob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                deps |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                deps.add(node.module.split(".")[0])
        graph[name] = deps & set(modules)
    # the entry points sit at the top: no module imports them
    assert not [m for m, deps in graph.items() if deps & {"run", "bench"}]

    def reach(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for dep in graph[todo.pop()]:
                if dep not in seen:
                    seen.add(dep)
                    todo.append(dep)
        return seen

    assert [m for m in graph if m in reach(m)] == []  # no cycle


def test_import_run_loads_each_module_once() -> None:
    code = ("import os, sys, run; files = [getattr(m, '__file__', None) for m in list(sys.modules.values())]; "
            "mine = [f for f in files if f and os.path.dirname(os.path.abspath(f)) == sys.argv[1]]; "
            "assert len(mine) == len(set(mine)), mine; print(len(mine))")
    out = subprocess.run([sys.executable, "-c", code, str(ROOT)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert int(out.stdout) >= 9  # run, inference, methods, model, videomatch, matching, dataset, evaluation, ...


def test_generic_modules_import_nothing_from_model() -> None:
    """Bug: code every method needs (padding, aggregation, the driver, figures, training, readers) reached through
    EMVOS's module, so that VideoMatch silently inherits EMVOS's choices (its stride 16) and cannot be used without
    it. model.py is EMVOS: only its own callers (the method table, the reference, bench.py) may import it."""
    generic = ["framework", "backbones", "matching", "videomatch", "inference", "visualize", "trainer", "dataset",
               "utils", "weights", "evaluation"]
    generic += [name for name in ("samplers",) if (ROOT / f"{name}.py").is_file()]
    offenders = {}
    for name in generic:
        imported = set()
        for node in ast.walk(ast.parse((ROOT / f"{name}.py").read_text())):
            if isinstance(node, ast.Import):
                imported |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])
        if "model" in imported:
            offenders[name] = sorted(imported & {"model"})
    assert offenders == {}
