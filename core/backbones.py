"""ImageNet backbones, built only as far as the methods use them: DenseNet-121's features (EMVOS), ResNet-50 and
ResNet-101 trunks (EMVOS's alternative encoder, VideoMatch), VGG-19 truncated (VideoMatch).

No classifier is built (VGG-19's alone holds 123 M parameters), nor any stage after the last one a method taps.
Module names are torchvision's, so the state-dict keys are too: torchvision's ImageNet files load (their keys of
the parts left out are dropped, every kept key must be there), and so do the checkpoints of the methods' official
code and of the VideoMatch port. Random initialisation follows torchvision's scheme (Kaiming-normal convolutions,
BatchNorm weight 1 and bias 0); DenseNet-121 also draws torchvision's random numbers, in its order.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn as nn
from torch import Tensor

from core import weights

IMAGENET_WEIGHTS = {"densenet121": "DenseNet121_Weights", "resnet50": "ResNet50_Weights",
                    "resnet101": "ResNet101_Weights", "vgg19": "VGG19_Weights"}
RESNET_BLOCKS = {"resnet50": (3, 4, 6, 3), "resnet101": (3, 4, 23, 3)}
RESNET_STEM = ("conv1", "bn1", "relu", "maxpool")


def load_imagenet(net: nn.Module, name: str, dropped: tuple[str, ...]) -> None:
    """torchvision's IMAGENET1K_V1 file of backbone `name` into net, without the modules `dropped` (names)."""
    import torchvision as tv  # only for the file's URL; building the network needs none of it

    entry = getattr(tv.models, IMAGENET_WEIGHTS[name]).IMAGENET1K_V1
    weights.load_imagenet_weights(net, entry, dropped=dropped)


# --- DenseNet-121 -----------------------------------------------------------------------------------------------

class DenseLayer(nn.Module):
    """torchvision's `_DenseLayer` (bottleneck width 4 x growth, no dropout): the same submodules and operations."""

    def __init__(self, c_in: int, growth: int = 32, bottleneck: int = 4):
        super().__init__()
        self.norm1 = nn.BatchNorm2d(c_in)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(c_in, bottleneck * growth, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(bottleneck * growth)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(bottleneck * growth, growth, 3, padding=1, bias=False)

    def forward(self, features: list[Tensor]) -> Tensor:
        x = self.conv1(self.relu1(self.norm1(torch.cat(features, 1))))
        return self.conv2(self.relu2(self.norm2(x)))  # (B, growth, h, w)


class DenseBlock(nn.ModuleDict):
    """torchvision's `_DenseBlock`: every layer sees the concatenation of the block's input and all earlier outputs."""

    def __init__(self, layers: int, c_in: int, growth: int = 32):
        super().__init__({f"denselayer{i + 1}": DenseLayer(c_in + i * growth, growth) for i in range(layers)})

    def forward(self, x: Tensor) -> Tensor:
        features = [x]
        for layer in self.values():
            features.append(layer(features))
        return torch.cat(features, 1)


def densenet121_features(pretrained: bool = False) -> nn.Sequential:
    """`torchvision.models.densenet121().features`, built here without torchvision, whose import alone brings in
    torch._dynamo and triton (about 160 MiB resident for `run.py --test`, which needs neither).

    The same module names (so the same checkpoint keys), operations and random initialisation: modules are made and
    initialised in torchvision's order, and the random numbers its classifier's construction draws are drawn (no
    classifier is built), so that the same seed gives the same weights here and in every module built after the
    encoder (tests/test_memory.py checks it).
    """
    features = nn.Sequential(OrderedDict(conv0=nn.Conv2d(3, 64, 7, 2, 3, bias=False), norm0=nn.BatchNorm2d(64),
                                         relu0=nn.ReLU(inplace=True), pool0=nn.MaxPool2d(3, 2, 1)))
    c = 64
    for i, layers in enumerate((6, 12, 24, 16)):
        features.add_module(f"denseblock{i + 1}", DenseBlock(layers, c))
        c += 32 * layers
        if i < 3:
            features.add_module(f"transition{i + 1}", nn.Sequential(OrderedDict(
                norm=nn.BatchNorm2d(c), relu=nn.ReLU(inplace=True), conv=nn.Conv2d(c, c // 2, 1, bias=False),
                pool=nn.AvgPool2d(2, 2))))
            c //= 2
    features.add_module("norm5", nn.BatchNorm2d(c))
    # nn.Linear(c, 1000)'s construction: its weight, then its bias, drawn uniformly (the bounds draw nothing)
    torch.empty(1000, c).uniform_()
    torch.empty(1000).uniform_()
    _init_like_torchvision(features, conv_mode="fan_in")
    if pretrained:
        load_imagenet(nn.ModuleDict({"features": features}), "densenet121", dropped=("classifier",))
    return features


# --- ResNet-50 / ResNet-101 ---------------------------------------------------------------------------------------

def resnet_trunk(name: str, stages: int, pretrained: bool = False) -> nn.Sequential:
    """torchvision's ResNet (`name`: 'resnet50' or 'resnet101') up to layer`stages`: conv1, bn1, relu, maxpool,
    layer1..layer<stages>, with torchvision's module names; no later stage, pooling or fc is built."""
    from torchvision.models.resnet import Bottleneck

    parts = OrderedDict(conv1=nn.Conv2d(3, 64, 7, 2, 3, bias=False), bn1=nn.BatchNorm2d(64),
                        relu=nn.ReLU(inplace=True), maxpool=nn.MaxPool2d(3, 2, 1))
    c_in = 64
    for i, blocks in enumerate(RESNET_BLOCKS[name][:stages]):
        planes, stride = 64 * 2 ** i, 1 if i == 0 else 2
        c_out = planes * Bottleneck.expansion
        downsample = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))
        layer = [Bottleneck(c_in, planes, stride, downsample)] + [Bottleneck(c_out, planes) for _ in range(1, blocks)]
        parts[f"layer{i + 1}"] = nn.Sequential(*layer)
        c_in = c_out
    trunk = nn.Sequential(parts)
    _init_like_torchvision(trunk, conv_mode="fan_out")
    if pretrained:
        load_imagenet(trunk, name, dropped=tuple(f"layer{i}" for i in range(stages + 1, 5)) + ("fc",))
    return trunk


# --- VGG-19 -------------------------------------------------------------------------------------------------------

VGG19_CHANNELS = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512,
                  "M")  # torchvision's configuration "E": conv widths, "M" a 2x2 max-pool


def vgg19_modules() -> list[tuple[str, str, int, int]]:
    """(name, kind, c_in, c_out) of every module of torchvision's `vgg19().features`, kind 'conv', 'relu' or 'pool'."""
    out, c, k = [], 3, 0
    for v in VGG19_CHANNELS:
        if v == "M":
            out.append((str(k), "pool", c, c))
            k += 1
        else:
            out += [(str(k), "conv", c, v), (str(k + 1), "relu", v, v)]
            c, k = v, k + 2
    return out


def vgg19_features(keep: list[str], pretrained: bool = False) -> nn.Sequential:
    """The modules `keep` (torchvision names, '0'..'36') of `vgg19().features`, in order and with their names; the
    rest of the network, classifier included, is not built."""
    modules = {name: (kind, c_in, c_out) for name, kind, c_in, c_out in vgg19_modules()}
    parts = OrderedDict()
    for name in keep:
        kind, c_in, c_out = modules[name]
        parts[name] = (nn.Conv2d(c_in, c_out, 3, padding=1) if kind == "conv" else
                       nn.ReLU(inplace=True) if kind == "relu" else nn.MaxPool2d(2, 2))
    features = nn.Sequential(parts)
    _init_like_torchvision(features, conv_mode="fan_out")
    if pretrained:
        dropped = tuple(f"features.{name}" for name in modules if name not in parts) + ("classifier",)
        load_imagenet(nn.ModuleDict({"features": features}), "vgg19", dropped=dropped)
    return features


def _init_like_torchvision(net: nn.Module, conv_mode: str) -> None:
    # torchvision's own initialisation: Kaiming-normal convolutions (DenseNet fan_in; ResNet and VGG fan_out, for
    # ReLU), zero conv bias, BatchNorm weight 1 and bias 0
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode=conv_mode, nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
