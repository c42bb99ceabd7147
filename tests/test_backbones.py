"""The ImageNet backbones are built only as far as the methods use them, and torchvision's ImageNet files still load
into them: the keys of the parts left out are skipped, every kept key is required and loaded."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn

from core import weights
from model import Encoder
from videomatch import VideoMatchEncoder

tv = pytest.importorskip("torchvision")


def _file_layout(name: str) -> dict[str, torch.Tensor]:
    """The tensors of torchvision's whole network `name` (its ImageNet file's layout) on the meta device: keys,
    shapes and dtypes only."""
    with torch.device("meta"):
        net = getattr(tv.models, name)()
    return net.state_dict()


# (torchvision network, the encoder built with pretrained=True, its key -> the file's key)
ENCODERS: dict[str, tuple[str, Callable[[], nn.Module], Callable[[str], str]]] = {
    "emvos densenet121": ("densenet121", lambda: Encoder("densenet121", pretrained=True), lambda k: f"features.{k}"),
    "emvos resnet50": ("resnet50", lambda: Encoder("resnet50", pretrained=True), lambda k: k),
    "videomatch vgg19": ("vgg19", lambda: VideoMatchEncoder("vgg19", pretrained=True), lambda k: k),
    "videomatch vgg19_conv5": ("vgg19", lambda: VideoMatchEncoder("vgg19_conv5", pretrained=True), lambda k: k),
    "videomatch resnet101": ("resnet101", lambda: VideoMatchEncoder("resnet101", pretrained=True),
                             lambda k: k.removeprefix("features.")),
}


@pytest.mark.parametrize("case", list(ENCODERS))
def test_imagenet_file_loads_into_the_truncated_backbone(case: str, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Bugs: a backbone that builds a module torchvision's file does not have or misses one it has (renamed keys:
    ImageNet files and port checkpoints would stop loading), a dropped list that leaves a head's keys in (strict
    loading fails) or drops a kept layer (it would stay random), or weights loaded into the wrong modules."""
    name, build, file_key = ENCODERS[case]
    layout = _file_layout(name)
    g = torch.Generator().manual_seed(0)
    files: list[dict[str, torch.Tensor]] = []
    real_load = weights.load_imagenet_weights

    def load_from_a_served_file(net: nn.Module, entry: object, dropped: tuple[str, ...] = ()) -> None:
        # The file holds every key of the whole network; the parts a backbone keeps with their real shapes, the rest
        # as one number each (their values are never read: only their keys must be skipped).
        kept = set(net.state_dict())
        state = {k: (torch.randn(v.shape, generator=g).to(v.dtype) if k in kept else torch.zeros(1))
                 for k, v in layout.items()}
        files.append(state)
        raw = tmp_path / "raw.pth"
        torch.save(state, raw)
        path = raw.rename(tmp_path / f"{name}-{hashlib.sha256(raw.read_bytes()).hexdigest()[:8]}.pth")
        real_load(net, SimpleNamespace(url=f"http://127.0.0.1:9/{path.name}"), tmp_path, download=False,
                  dropped=dropped)

    monkeypatch.setattr(weights, "load_imagenet_weights", load_from_a_served_file)
    encoder = build()
    assert len(files) == 1
    loaded = {k: v for k, v in encoder.state_dict().items() if k not in ("mean", "std")}
    for k, v in loaded.items():
        assert torch.equal(v, files[0][file_key(k)]), k
    # nothing beyond the layers the method uses: no classifier, no later stage
    used = {file_key(k).split(".")[0 if name.startswith("resnet") else 1] for k in loaded}
    assert not used & {"classifier", "fc", "layer4", "norm5", "denseblock4"}


def test_vgg19_builds_no_classifier() -> None:
    """Bug: building the whole torchvision VGG-19 (its classifier holds 123 M of its 143 M parameters) to keep 27
    modules of it."""
    encoder = VideoMatchEncoder("vgg19")
    layout = _file_layout("vgg19")
    port_part = sum(v.numel() for k, v in layout.items() if k.startswith("features.") and int(k.split(".")[1]) < 27)
    assert sum(p.numel() for p in encoder.parameters()) == port_part  # conv1_1 .. conv4_4
    assert [n for n, _ in encoder.features.named_children()] == [str(i) for i in range(27)]

