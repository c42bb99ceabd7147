"""What keeps `run.py --test` small: the inference side imports no torchvision (which brings torch._dynamo and triton,
about 160 MiB resident), so DenseNet-121 is built in model.py, equal to torchvision's."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from core.backbones import densenet121_features

ROOT = Path(__file__).resolve().parents[1]


def test_densenet121_equals_torchvision() -> None:
    tv = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    ours = densenet121_features().eval()
    after_ours = torch.rand(4)
    torch.manual_seed(0)
    theirs = tv.models.densenet121(weights=None).features.eval()
    after_theirs = torch.rand(4)
    a, b = ours.state_dict(), theirs.state_dict()
    assert list(a) == list(b)  # the same module names, hence the same checkpoint keys
    assert all(torch.equal(a[k], b[k]) for k in a)  # the same random initialisation
    assert torch.equal(after_ours, after_theirs)  # and the same random numbers left for the modules built after it
    x = torch.rand(1, 3, 64, 96)
    with torch.no_grad():
        assert torch.equal(ours(x), theirs(x))


def test_inference_imports_no_torchvision() -> None:
    code = ("import sys, run, model; model.EMVOS(); "
            "print(sorted(m for m in ('torchvision', 'torch._dynamo', 'triton') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]", f"imported by `run.py --test`: {out.stdout.strip()}"
