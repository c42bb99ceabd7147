"""EMVOS (Cho et al., arXiv 2209.03139) in one module with named steps: encode -> match -> decode.

Read top to bottom: the configuration, the building blocks (encoder, matcher, CBAM, decoder), the per-video state,
the model, object aggregation, and `VideoSegmenter`, which streams a video through any model frame by frame.

Naming: the trailing number is the stride, as in STCN: f4, f8, f16 are encoder features at strides 4, 8, 16.
Shapes: B batch (clips), N objects, C channels, HW stride-16 positions, H x W the (padded) frame.

Checkpoints: module names equal the official ones, and the official state dicts carry them under one extra prefix,
`vos.` (the official top module wraps the network as `self.vos`). `from_official` / `to_official` strip and add it,
so `coco_davis_best.pth` loads with strict=True and checkpoints written here load in the official code.

VideoMatch (Hu et al., ECCV 2018), the second method, follows at the end with the same streaming interface.
"""

from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

import matching

OFFICIAL_PREFIX = "vos."


@dataclass
class ModelConfig:
    """Hyper-parameters of the EMVOS network. The defaults are the official release."""

    encoder: str = "densenet121"  # 'densenet121' (official) or 'resnet50' (same widths at strides 4/8/16)
    branches: tuple[str, ...] = ("surjective", "equalized")  # matching branches, 4 channels each (paper Table 4)
    topk: int = 4  # K of bijective matching (BMVOS), used only when 'bijective' is a branch
    key_dim: int = 512  # channels of the matching keys (matcher.conv1 / conv2)
    train_encoder: bool = False  # the official training keeps the encoder frozen (no gradient, BatchNorm frozen)

    def __post_init__(self) -> None:
        self.branches = tuple(self.branches)
        if self.encoder not in ENCODER_LAYERS:
            raise ValueError(f"unknown encoder {self.encoder!r}; choose from {sorted(ENCODER_LAYERS)}")
        for b in self.branches:
            if b not in matching.BRANCHES:
                raise ValueError(f"unknown matching branch {b!r}; choose from {matching.BRANCHES}")
        if not self.branches:
            raise ValueError("at least one matching branch is needed")


# ---------------------------------------------------------------------------------------------------------------
# building blocks
# ---------------------------------------------------------------------------------------------------------------

# (layers in order, the three whose outputs are f4, f8, f16). Both backbones give 256, 512, 1024 channels.
ENCODER_LAYERS = {
    "densenet121": (("conv0", "norm0", "relu0", "pool0", "denseblock1", "transition1", "denseblock2",
                     "transition2", "denseblock3"), ("denseblock1", "denseblock2", "denseblock3")),
    "resnet50": (("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3"), ("layer1", "layer2", "layer3")),
}
IMAGENET_WEIGHTS = {"densenet121": "DenseNet121_Weights", "resnet50": "ResNet50_Weights",
                    "vgg19": "VGG19_Weights", "resnet101": "ResNet101_Weights"}  # the last two: VideoMatch


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


def densenet121_features() -> nn.Sequential:
    """`torchvision.models.densenet121(weights=None).features`, built here: importing torchvision brings in
    torch._dynamo and triton (about 160 MiB resident and 0.8 s for `run.py --test`, which needs neither).

    The same module names (so the same checkpoint keys), operations and random initialisation: modules are made and
    initialised in torchvision's order, its classifier included and then dropped, so that the same seed gives the
    same weights here and in every module built after the encoder (tests/test_decoder_split.py checks it).
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
    classifier = nn.Linear(c, 1000)
    for m in [*features.modules(), classifier]:
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.zeros_(m.bias)
    return features


def imagenet_backbone(name: str, pretrained: bool) -> nn.Module:
    """A torchvision backbone, with ImageNet weights through torchvision's weights API only when asked for.

    Weights cannot be fetched on a machine without internet; then the error says which file to put where.
    DenseNet-121 without ImageNet weights (inference from a checkpoint) comes from densenet121_features, without
    importing torchvision.
    """
    if name == "densenet121" and not pretrained:
        return densenet121_features()
    import torchvision as tv

    weights = getattr(tv.models, IMAGENET_WEIGHTS[name]).IMAGENET1K_V1 if pretrained else None
    try:
        net = getattr(tv.models, name)(weights=weights)
    except (OSError, RuntimeError) as e:  # URLError is an OSError; a truncated download is a RuntimeError
        hub = Path(torch.hub.get_dir()) / "checkpoints"
        raise RuntimeError(
            f"could not load the ImageNet weights of {name} ({e}). Download {weights.url} and put it in {hub}/, "
            f"or pass --no-pretrained to start the backbone from scratch") from e
    return net.features if name == "densenet121" else net


class Encoder(nn.Module):
    """ImageNet backbone cut after stride 16. RGB in [0, 1] -> (f4, f8, f16) with 256, 512, 1024 channels."""

    def __init__(self, name: str = "densenet121", pretrained: bool = False):
        super().__init__()
        layers, self.taps = ENCODER_LAYERS[name]
        backbone = imagenet_backbone(name, pretrained)
        for n in layers:  # the official keys name the backbone's own submodules (vos.encoder.denseblock1...)
            self.add_module(n, getattr(backbone, n))
        self.layers = layers
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))

    def forward(self, img: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        x = (img - self.mean) / self.std
        feats = []
        for n in self.layers:
            x = getattr(self, n)(x)
            if n in self.taps:
                feats.append(x)
        f4, f8, f16 = feats
        return f4, f8, f16


def _init(m: nn.Module) -> nn.Module:
    # the official initialisation of every new conv: Kaiming-uniform weights, zero bias
    nn.init.kaiming_uniform_(m.weight)
    nn.init.zeros_(m.bias)
    return m


def conv(c_in: int, c_out: int, k: int, s: int = 1, p: int = 0, relu: bool = False) -> nn.Sequential:
    """Conv2d (+ ReLU) wrapped as `.conv` (`.relu`): the wrapper gives the official `...conv.weight` keys."""
    parts = [("conv", _init(nn.Conv2d(c_in, c_out, k, s, p)))] + ([("relu", nn.ReLU())] if relu else [])
    return nn.Sequential(OrderedDict(parts))


def deconv(c_in: int, c_out: int, k: int, s: int, p: int) -> nn.Sequential:
    return nn.Sequential(OrderedDict(deconv=_init(nn.ConvTranspose2d(c_in, c_out, k, s, p))))


def conv_transpose_gemm(x: Tensor, layer: nn.ConvTranspose2d) -> Tensor:
    """layer(x) as a 1x1 convolution to C_out k k channels and col2im (F.fold): the same sums in another order.

    oneDNN's transposed convolution is slow with EMVOS's 2 output channels (deconv3 at 854x480: 0.96 GFLOP in
    about 28 ms on this project's CPU); as a 1x1 convolution and a scatter-add it takes about 5 ms.
    Stride, padding and kernel as the layer's; no output padding, dilation or groups (EMVOS has none).
    """
    b, _, h, w = x.shape
    (kh, kw), (sh, sw), (ph, pw) = layer.kernel_size, layer.stride, layer.padding
    weight = layer.weight.flatten(1).t()  # (C_out * kh * kw, C_in)
    cols = F.conv2d(x, weight[:, :, None, None])  # (B, C_out * kh * kw, h, w)
    if cols.stride(1) == 1:  # channels_last: (B, hw, C_out k k) in memory
        cols = cols.permute(0, 2, 3, 1).reshape(b, h * w, -1).transpose(1, 2)
    size = ((h - 1) * sh - 2 * ph + kh, (w - 1) * sw - 2 * pw + kw)
    return F.fold(cols.reshape(b, -1, h * w), size, (kh, kw), stride=(sh, sw), padding=(ph, pw)) + \
        layer.bias.view(1, -1, 1, 1)


class Matcher(nn.Module):
    """The two key projections of f16: conv1 for surjective/bijective matching (L2-normalised), conv2 for equalized."""

    def __init__(self, c_in: int = 1024, c_key: int = 512):
        super().__init__()
        self.conv1 = conv(c_in, c_key, 1)
        self.conv2 = conv(c_in, c_key, 1)

    def forward(self, f16: Tensor) -> "Keys":
        nk = matching.l2_normalise(self.conv1(f16)).flatten(2)  # (B, C, HW)
        k = self.conv2(f16).flatten(2)  # (B, C, HW)
        return Keys(nk, k)


class CBAM(nn.Module):
    """Convolutional block attention (Woo et al., 2018) after a 3x3 conv: channel gate, then spatial gate."""

    def __init__(self, c: int):
        super().__init__()
        self.conv1 = conv(c, c, 3, 1, 1)
        self.conv2 = nn.Sequential(conv(c, c, 1, relu=True), conv(c, c, 1))
        self.conv3 = nn.Sequential(conv(2, 16, 3, 1, 1, relu=True), conv(16, 1, 3, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv1(x)
        gate = self.conv2(F.adaptive_avg_pool2d(x, 1)) + self.conv2(F.adaptive_max_pool2d(x, 1))
        # Without autograd the gates scale x in place: the same products, without two more maps of x's size
        # (26 MB per object at stride 4, 854x480) to allocate and fault in.
        inplace = not (torch.is_grad_enabled() and x.requires_grad)
        x = x.mul_(torch.sigmoid(gate)) if inplace else x * torch.sigmoid(gate)
        spatial = torch.sigmoid(self.conv3(torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], 1)))
        return x.mul_(spatial) if inplace else x * spatial


@dataclass
class Projection:
    """Decoder.project's result: the part of the decoder that is the same for every object, one map per stride."""

    maps: tuple[Tensor, Tensor, Tensor]  # (B, 256, h, w) at strides 16, 8, 4
    split: bool  # True: each blend convolution's shared partial sum W_p * p + b (before ReLU); False: p itself


class Decoder(nn.Module):
    """Refines matching scores from stride 16 to full resolution with the encoder's skip features."""

    SKIP = 256  # channels of the projected skip features p: the first input channels of every blend convolution

    def __init__(self, match_channels: int = 8):
        super().__init__()
        self.conv1 = conv(1024, 256, 1, relu=True)
        self.blend1 = conv(256 + match_channels + 2, 256, 3, 1, 1, relu=True)
        self.cbam1 = CBAM(256)
        self.deconv1 = deconv(256, 2, 4, 2, 1)  # stride 16 -> 8
        self.conv2 = conv(512, 256, 1, relu=True)
        self.blend2 = conv(256 + 2, 256, 3, 1, 1, relu=True)
        self.cbam2 = CBAM(256)
        self.deconv2 = deconv(256, 2, 4, 2, 1)  # stride 8 -> 4
        self.conv3 = conv(256, 256, 1, relu=True)
        self.blend3 = conv(256 + 2, 256, 3, 1, 1, relu=True)
        self.cbam3 = CBAM(256)
        self.deconv3 = deconv(256, 2, 6, 4, 1)  # stride 4 -> 1

    def project(self, f4: Tensor, f8: Tensor, f16: Tensor, split: bool = True) -> Projection:
        """The part of the decoder that is the same for every object, so that it runs once a frame.

        Always the 1x1 projections p of the skip features. A blend convolution's input is cat([p, the object's own
        2-10 channels s]) and a convolution is linear in its input channels: blend(cat[p, s]) = W_p * p + b + W_s * s.
        split=True also runs the W_p * p + b half here (the existing weights, sliced: the checkpoint is unchanged),
        which moves about half of the decoder's per-object FLOPs (40 of 82 GFLOP at 864x480) to once a frame;
        forward then convolves each object's own channels only. split=False keeps the official computation (for
        comparisons): float64 logits agree to 1e-12, float32 ones move by summation order only (tests).
        """
        if not split:
            return Projection((self.conv1(f16), self.conv2(f8), self.conv3(f4)), split=False)

        def shared(x: Tensor, proj: nn.Sequential, blend: nn.Sequential) -> Tensor:  # p is dropped once used
            return F.conv2d(proj(x), blend.conv.weight[:, :self.SKIP], blend.conv.bias, blend.conv.stride,
                            blend.conv.padding)

        q4 = shared(f4, self.conv3, self.blend3)  # the largest first: at most one p and its q alive at a time
        q8 = shared(f8, self.conv2, self.blend2)
        return Projection((shared(f16, self.conv1, self.blend1), q8, q4), split=True)

    def forward(self, shared: Projection, scores: Tensor, prev_mask16: Tensor) -> Tensor:
        """shared: project()'s maps (B, 256, ...) x3; scores: (B, N, 8, h, w); prev_mask16: (B, N, 2, h, w).

        Returns logits (B, N, 2, H, W). All objects of all clips run as one batch of B*N.
        """
        b, n = scores.shape[:2]
        # torch.cat keeps channels_last only when every input is in it; otherwise the next conv converts its input
        # back, a copy of (B*N, 258, H/4, W/4) per call (bench.py: 7 ms per object at 854x480 on CPU)
        cl = shared.maps[0].is_contiguous(memory_format=torch.channels_last)
        fmt = torch.channels_last if cl else torch.contiguous_format
        own = torch.cat([scores.flatten(0, 1), prev_mask16.flatten(0, 1)], dim=1).contiguous(memory_format=fmt)
        if not shared.split:
            return self._forward_unsplit(shared.maps, own, b, n, fmt).unflatten(0, (b, n))

        def blend(layer: nn.Sequential, q: Tensor, s: Tensor) -> Tensor:
            # relu(W_s * s + (W_p * p + b)): the object's own channels only; q (B, 256, h, w) is project()'s
            s = s.contiguous(memory_format=fmt)
            x = F.conv2d(s, layer.conv.weight[:, self.SKIP:], None, layer.conv.stride, layer.conv.padding)
            x.unflatten(0, (b, n)).add_(q.unsqueeze(1))  # (B, N, 256, h, w), in place: no second map per object
            return F.relu(x, inplace=True)

        q16, q8, q4 = shared.maps
        s8 = conv_transpose_gemm(self.cbam1(blend(self.blend1, q16, own)), self.deconv1.deconv)
        s4 = conv_transpose_gemm(self.cbam2(blend(self.blend2, q8, s8)), self.deconv2.deconv)
        out = conv_transpose_gemm(self.cbam3(blend(self.blend3, q4, s4)), self.deconv3.deconv)
        return out.unflatten(0, (b, n))  # (B, N, 2, H, W)

    def _forward_unsplit(self, proj: tuple[Tensor, Tensor, Tensor], own: Tensor, b: int, n: int,
                         fmt: torch.memory_format) -> Tensor:
        """The official computation: each blend convolution on cat([p, s]) -> (B*N, 2, H, W)."""

        def per_object(x: Tensor) -> Tensor:  # (B, C, h, w) -> (B*N, C, h, w), the same map for every object
            if n == 1:  # as is: through expand the size-1 batch's stride changes and channels_last is lost
                return x
            return x.unsqueeze(1).expand(b, n, *x.shape[1:]).flatten(0, 1).contiguous(memory_format=fmt)

        p16, p8, p4 = proj
        s8 = self.deconv1(self.cbam1(self.blend1(torch.cat([per_object(p16), own], dim=1))))
        s4 = self.deconv2(self.cbam2(self.blend2(torch.cat([per_object(p8), s8], dim=1))))
        return self.deconv3(self.cbam3(self.blend3(torch.cat([per_object(p4), s4], dim=1))))

    # Feature maps of (256 + 2) channels at stride 4 alive at once per object at the decoder's peak (blend3's input
    # and output, CBAM's conv and gated copies): 3.3-5.5 measured at 480p (the first object of a batch costs the
    # most), rounded up.
    LIVE_MAPS = 5

    def bytes_per_object(self, f4: Tensor, dtype: torch.dtype) -> int:
        """Estimated peak temporary memory of one object in forward, from the stride-4 features f4 (B, 256, h, w)."""
        b, _, h, w = f4.shape
        return self.LIVE_MAPS * (256 + 2) * b * h * w * torch.empty(0, dtype=dtype).element_size()


def decoder_chunk_size(max_bytes: int | None, objects: int, bytes_per_object: int) -> int:
    """Objects per decoder batch so that the batch's temporaries fit max_bytes (None: all); at least one."""
    if max_bytes is None:
        return objects
    return int(max(1, min(objects, max_bytes // max(1, bytes_per_object))))


# ---------------------------------------------------------------------------------------------------------------
# per-video state
# ---------------------------------------------------------------------------------------------------------------

@dataclass
class Keys:
    """A frame's matching keys, each (B, C, HW): `nk` L2-normalised (surjective, bijective), `k` raw (equalized)."""

    nk: Tensor
    k: Tensor


@dataclass
class FrameFeatures:
    """What the encoder and matcher give for one frame.

    The skip features f4, f8, f16 serve only the decoder's per-frame part: `project` replaces them by it, so that
    they are not held while every object is decoded and aggregated (51 MiB at 854x480, a fifth of a frame's peak).
    """

    f4: Tensor | None  # (B, 256, H/4, W/4); None once projected
    f8: Tensor | None  # (B, 512, H/8, W/8)
    f16: Tensor | None  # (B, 1024, H/16, W/16)
    keys: Keys
    size16: tuple[int, int]  # (h, w) of the stride-16 maps
    shared: Projection | None = None  # Decoder.project's result, once computed

    def project(self, decoder: Decoder, split: bool = True) -> Projection:
        """The decoder's per-frame part (Decoder.project), computed once; the skip features are dropped then."""
        if self.shared is None or self.shared.split != split:
            if self.f4 is None:
                raise ValueError(f"this frame's skip features were released after its projection with "
                                 f"split={not split}; encode the frame again to decode it with split={split}")
            self.shared = decoder.project(self.f4, self.f8, self.f16, split)
            self.f4 = self.f8 = self.f16 = None
        return self.shared


@dataclass
class Reference:
    """A frame at which objects were first given: the 'global' reference of those objects (paper Sec. 3.1)."""

    keys: Keys
    mask16: Tensor  # (B, n, 2, HW): the given [bg, fg] masks of its n objects, average-pooled to stride 16


@dataclass
class VideoState:
    """Everything EMVOS remembers about a video. Objects are slots 0..N-1 in order of first appearance; the
    references hold them in the same order (objects first given at the same frame share a reference)."""

    references: list[Reference]
    prev_keys: Keys  # the previous frame, shared by every object ('local' reference)
    prev_mask16: Tensor  # (B, N, 2, HW): each object's previous soft mask [bg, fg] at stride 16

    @property
    def num_objects(self) -> int:
        return self.prev_mask16.shape[1]


# ---------------------------------------------------------------------------------------------------------------
# the model
# ---------------------------------------------------------------------------------------------------------------

class EMVOS(nn.Module):
    """Encoder + surjective / equalized matching against the first and the previous frame + decoder."""

    def __init__(self, config: ModelConfig | None = None, pretrained: bool = False):
        super().__init__()
        self.config = config or ModelConfig()
        self.encoder = Encoder(self.config.encoder, pretrained)
        self.matcher = Matcher(1024, self.config.key_dim)
        self.decoder = Decoder(4 * len(self.config.branches))
        # bound on the readout's temporary in bytes (matching.max_readout); None: follow memory_budget. Runtime.
        self.max_readout_bytes: int | None = None
        # bound on one frame's matching and decoder temporaries (set_memory_budget); "auto": a share of free memory
        self.memory_budget: int | str | None = "auto"
        # Objects per decoder call. 1: each object alone, which keeps its float32 logits bit-identical to the official
        # per-object decoder (oneDNN and cuDNN choose kernels, hence summation orders, by batch size; random-weight
        # models have ties that such 1e-6 differences flip) and is also the fastest on CPU (bench.py). None: as many
        # as the memory budget allows, which may pay on a GPU at small frames.
        self.decoder_batch: int | None = 1

    def train(self, mode: bool = True) -> "EMVOS":
        super().train(mode)
        self.encoder.eval()  # BatchNorm statistics stay frozen, as in the official training
        return self

    # --- the three named steps ----------------------------------------------------------------------------------
    def encode(self, img: Tensor) -> FrameFeatures:
        """img: (B, 3, H, W) RGB in [0, 1], H and W multiples of 16."""
        with torch.set_grad_enabled(self.config.train_encoder and torch.is_grad_enabled()):
            f4, f8, f16 = self.encoder(img)
        return FrameFeatures(f4, f8, f16, self.matcher(f16), (f16.shape[-2], f16.shape[-1]))

    def match(self, feats: FrameFeatures, state: VideoState) -> Tensor:
        """Matching scores of every object: (B, N, 4 * branches, h, w).

        Per branch, in the official channel order: global bg, fg (against each object's first frame), then local bg,
        fg (against the previous frame). A similarity matrix depends only on the two frames, so each is computed
        once per frame and read out for all objects together.
        """
        q = (feats.keys.nk, feats.keys.k)
        b, n = state.prev_mask16.shape[:2]
        h, w = feats.size16
        hw_q = h * w
        limit = self.max_readout_bytes if self.max_readout_bytes is not None else self.budget_bytes(q[0].device)
        if q[0].device.type == "cpu":
            limit = min(limit or matching.READOUT_TILE_BYTES, matching.READOUT_TILE_BYTES)

        def readout(branch: str, keys: Keys, mask16: Tensor) -> Tensor:  # mask16 (B, n, 2, HW_r) -> (B, n, 2, HW_q)
            sim = matching.similarity(branch, (keys.nk, keys.k), q, self.config.topk)  # (B, HW_r, HW_q)
            masks = mask16.flatten(1, 2)  # (B, 2n, HW_r)
            # under autocast the product sim * mask takes the wider of the two dtypes
            mask_chunk, chunk = matching.readout_tiles(limit, b, masks.shape[1], sim.shape[1], hw_q,
                                                       max(sim.element_size(), masks.element_size()))
            return matching.max_readout(sim, masks, chunk, mask_chunk).unflatten(1, mask16.shape[1:3])

        channels = []
        for branch in self.config.branches:
            glob = torch.cat([readout(branch, ref.keys, ref.mask16) for ref in state.references], dim=1)
            local = readout(branch, state.prev_keys, state.prev_mask16)
            channels += [glob, local]
        return torch.cat(channels, dim=2).unflatten(3, (h, w))  # (B, N, 4 * branches, h, w)

    def decode(self, feats: FrameFeatures, scores: Tensor, state: VideoState, split: bool = True) -> Tensor:
        """-> logits (B, N, 2, H, W) for [bg, fg] of every object.

        The decoder's shared part runs once (Decoder.project, which then replaces feats' skip features; split: the
        blend convolutions' shared half too). Objects then go through the decoder decoder_batch at a time, fewer if
        the memory budget says so; an object's logits do not depend on the others in its batch (up to float
        rounding, see decoder_batch).
        """
        proj = feats.project(self.decoder, split)
        prev = state.prev_mask16.unflatten(3, feats.size16)  # (B, N, 2, h, w)
        n = scores.shape[1]
        chunk = min(n, self.decoder_batch or n)
        q4 = proj.maps[2]  # (B, 256, H/4, W/4), the size of f4
        if chunk > 1:
            per_object = self.decoder.bytes_per_object(q4, torch.promote_types(q4.dtype, scores.dtype))
            chunk = decoder_chunk_size(self.budget_bytes(q4.device), chunk, per_object)
        if chunk >= n:
            return self.decoder(proj, scores, prev)
        out = None  # filled chunk by chunk: a list and torch.cat would hold every object's logits twice
        for s in range(0, n, chunk):
            logits = self.decoder(proj, scores[:, s:s + chunk], prev[:, s:s + chunk])  # (B, chunk, 2, H, W)
            if out is None:
                out = logits.new_empty(logits.shape[0], n, *logits.shape[2:])
            out[:, s:s + chunk] = logits
        return out  # (B, N, 2, H, W)

    # --- runtime settings (not weights) -------------------------------------------------------------------------
    def set_memory_budget(self, max_bytes: int | str | None = "auto") -> "EMVOS":
        """Bound the temporaries of one frame's matching readout and decoder to max_bytes.

        "auto" (the default): a share of the memory free on the frame's device, looked up every frame
        (matching.auto_memory_budget). None: no bound. The readout is cut into tiles of query positions and masks
        (exact: the numbers do not depend on the tiling); the decoder takes at most decoder_batch objects at a time
        (default 1, which needs no budget) and fewer when their temporaries would not fit. Not covered: the
        similarity matrices (HW x HW each) and the full-resolution logits and aggregation, which every budget needs.
        run.py's --max-memory: `model.set_memory_budget(bytes or None or "auto")`.
        """
        if isinstance(max_bytes, str) and max_bytes != "auto":
            raise ValueError(f"memory budget must be bytes, None or 'auto', not {max_bytes!r}")
        self.memory_budget = max_bytes
        return self

    def budget_bytes(self, device: torch.device) -> int | None:
        """The memory budget in bytes for a frame on device, resolving "auto" now."""
        if self.memory_budget == "auto":
            return matching.auto_memory_budget(device)
        return self.memory_budget

    def compile_modules(self, **options: object) -> "EMVOS":
        """torch.compile the encoder and the decoder in place (options go to torch.compile; keys stay unchanged)."""
        self.encoder.compile(**options)
        self.decoder.compile(**options)
        return self

    # --- memory ----------------------------------------------------------------------------------------------------
    def init_state(self, feats: FrameFeatures, masks: Tensor) -> VideoState:
        """Start a video from the objects given at this frame. masks: (B, n, 2, H, W) [bg, fg] in {0, 1}."""
        mask16 = matching.pool_mask(masks.flatten(1, 2)).unflatten(1, masks.shape[1:3])  # (B, n, 2, HW)
        return VideoState([Reference(feats.keys, mask16)], feats.keys, mask16)

    def add_objects(self, state: VideoState, feats: FrameFeatures, masks: Tensor) -> None:
        """Objects first given at a later frame (YouTube-VOS): this frame becomes their global reference."""
        mask16 = matching.pool_mask(masks.flatten(1, 2)).unflatten(1, masks.shape[1:3])
        state.references.append(Reference(feats.keys, mask16))
        state.prev_mask16 = torch.cat([state.prev_mask16, mask16], dim=1)

    def update(self, state: VideoState, feats: FrameFeatures, probs: Tensor) -> None:
        """After a frame: it becomes the local reference, with the (aggregated) soft masks probs (B, N, 2, H, W)."""
        state.prev_keys = feats.keys
        state.prev_mask16 = matching.pool_mask(probs.flatten(1, 2)).unflatten(1, probs.shape[1:3])

    def predict(self, feats: FrameFeatures, state: VideoState, split: bool = True) -> Tensor:
        """Logits (B, N, 2, H, W) of every tracked object in a new frame. split: see Decoder.project."""
        return self.decode(feats, self.match(feats, state), state, split)

    # --- training forward ------------------------------------------------------------------------------------------
    def forward(self, imgs: Tensor, first_masks: Tensor) -> Tensor:
        """Training forward (DESIGN 1.8): clips with only the first frame's mask given, one object (id 1).

        imgs: (B, L, 3, H, W) RGB in [0, 1]; first_masks: (B, H, W) with values 0/1.
        Returns the logits of frames 1..L-1, (B, L-1, 2, H, W); no aggregation, and the previous soft mask is the
        softmax of the last logits, as in the official training.
        """
        b, length, _, height, width = imgs.shape
        padding = get_padding(height, width)
        imgs = pad(imgs.flatten(0, 1), padding).unflatten(0, (b, length))
        first = pad_mask(first_masks, padding)
        feats = self.encode(imgs[:, 0])
        state = self.init_state(feats, one_hot(first, [1]))
        logits = []
        for i in range(1, length):
            feats = self.encode(imgs[:, i])
            logit = self.predict(feats, state)  # (B, 1, 2, H, W)
            logits.append(logit[:, 0])
            if i < length - 1:
                self.update(state, feats, torch.softmax(logit, dim=2))
        return unpad(torch.stack(logits, dim=1), padding)


# ---------------------------------------------------------------------------------------------------------------
# padding, masks, aggregation
# ---------------------------------------------------------------------------------------------------------------

def get_padding(height: int, width: int, div: int = 16) -> tuple[int, int, int, int]:
    """(left, right, top, bottom) to reach multiples of div; the odd pixel goes left/top, as in the official code."""
    h_pad, w_pad = (div - height % div) % div, (div - width % div) % div
    return (w_pad + 1) // 2, w_pad // 2, (h_pad + 1) // 2, h_pad // 2


def pad(x: Tensor, padding: tuple[int, int, int, int]) -> Tensor:
    """Reflect-pad (B, C, H, W) images."""
    return F.pad(x, padding, mode="reflect") if any(padding) else x


def pad_mask(mask: Tensor, padding: tuple[int, int, int, int]) -> Tensor:
    """Reflect-pad (B, H, W) id masks (reflect padding needs floats, as in the official code)."""
    return pad(mask[:, None].float(), padding)[:, 0].long() if any(padding) else mask


def unpad(x: Tensor, padding: tuple[int, int, int, int]) -> Tensor:
    """Crop the padding off (..., H, W)."""
    left, right, top, bottom = padding
    return x[..., top:x.shape[-2] - bottom, left:x.shape[-1] - right]


def one_hot(mask: Tensor, ids: list[int], dtype: torch.dtype = torch.float32) -> Tensor:
    """(B, H, W) id mask -> (B, n, 2, H, W) [mask != id, mask == id] for each id."""
    fg = torch.stack([mask == i for i in ids], dim=1).to(dtype)  # (B, n, H, W)
    return torch.stack([1 - fg, fg], dim=2)


def aggregate_objects(probs: Tensor, eps: float = 1e-7) -> tuple[Tensor, Tensor]:
    """Soft aggregation of the objects' [bg, fg] probabilities (official EMVOS; as in RGMP / STM).

    Background is the minimum of the objects' background probabilities; each class's odds p / (1 - p), with both
    terms clamped to [eps, 1 - eps], are normalised by the sum of all odds.

    Args:
        probs: (B, N, 2, H, W) per-object [bg, fg] probabilities.
    Returns:
        labels: (B, H, W) in 0..N (0 background; ties go to the lower index, background first), and
        aggregated: (B, N, 2, H, W) the objects' [1 - p, p] after aggregation (the next frame's previous masks).
    """
    bg = probs[:, :, 0].amin(dim=1, keepdim=True)  # (B, 1, H, W)
    odds = torch.cat([bg.clamp(eps, 1 - eps) / (1 - bg).clamp(eps, 1 - eps),
                      probs[:, :, 1].clamp(eps, 1 - eps) / probs[:, :, 0].clamp(eps, 1 - eps)], dim=1)  # (B, 1+N, H, W)
    p = odds / odds.sum(dim=1, keepdim=True)
    labels = p.max(dim=1).indices  # the first maximum, as argmax; argmax over this dim is 20x slower on CPU (30 ms)
    fg = p[:, 1:]
    return labels, torch.stack([1 - fg, fg], dim=2)


# ---------------------------------------------------------------------------------------------------------------
# checkpoints
# ---------------------------------------------------------------------------------------------------------------

def from_official(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Official key layout ('vos.encoder...') -> this module's ('encoder...'). Keys without the prefix pass as is."""
    n = len(OFFICIAL_PREFIX)
    return {(k[n:] if k.startswith(OFFICIAL_PREFIX) else k): v for k, v in state_dict.items()}


def to_official(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """This module's keys -> the official layout, so files written here load in the authors' code."""
    return {OFFICIAL_PREFIX + k: v for k, v in state_dict.items()}


def missing_checkpoint_message(path: str | Path) -> str:
    return (f"no checkpoint at '{path}'. Put the official EMVOS weights there (coco_davis_best.pth or "
            f"coco_ytvos_best.pth from the trained_model/ folder of github.com/suhwan-cho/EMVOS), pass --weights PATH, "
            f"or train one with `python run.py --train`.")


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """Build the model a checkpoint describes and load its weights (strict).

    Accepts an official state dict (keys 'vos.*', the official EMVOS config) or a file written by `run.py --train`
    (a dict with 'model', 'config' and 'method'). Returns (model in eval mode, the file's metadata).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(missing_checkpoint_message(path))
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated download, a git-lfs pointer, not a torch file
        raise RuntimeError(f"could not read checkpoint '{path}' ({e}); download it again") from e
    meta = {k: v for k, v in obj.items() if k != "model"} if "model" in obj else {}
    state_dict = obj.get("model", obj)
    method = meta.get("method", "emvos")
    model = build_model(method, meta.get("config"))
    try:
        model.load_state_dict(from_official(state_dict), strict=True)
    except RuntimeError as e:
        raise RuntimeError(f"checkpoint '{path}' does not fit the {method} model with config {model.config}: "
                           f"{str(e)[:600]}") from e
    return model.to(device).eval(), meta


def build_model(method: str = "emvos", config: dict | None = None, pretrained: bool = False) -> nn.Module:
    """A fresh model by method name, from a config dict (as stored in checkpoints) or the defaults."""
    if method == "emvos":
        return EMVOS(ModelConfig(**(config or {})), pretrained=pretrained)
    if method == "videomatch":
        return VideoMatch(VideoMatchConfig(**(config or {})), pretrained=pretrained)
    raise ValueError(f"unknown method {method!r}; choose from ['emvos', 'videomatch']")


def checkpoint_dict(model: nn.Module, method: str | None = None, **extra: object) -> dict:
    """What `run.py --train` saves: the weights plus the method and config needed to rebuild the model.

    method defaults to the model's. EMVOS weights are written in the official layout ('vos.' prefix) so that the
    authors' code loads them; VideoMatch has no official layout and keeps its own keys.
    """
    method = method or ("videomatch" if isinstance(model, VideoMatch) else "emvos")
    weights = to_official(model.state_dict()) if method == "emvos" else model.state_dict()
    return {"model": weights, "method": method, "config": asdict(model.config), **extra}


# ---------------------------------------------------------------------------------------------------------------
# streaming inference over one video
# ---------------------------------------------------------------------------------------------------------------

@dataclass
class VideoSegmenter:
    """Segments one video frame by frame: `step(frame, mask=None)` -> the frame's id mask (as in XMem / Cutie).

    Works with any model that has encode / init_state / add_objects / predict / update. Only the current frame and
    the model's state are held, so memory does not grow with the video's length.

    The first call needs a mask with at least one object. A later mask adds the objects it holds that are not
    tracked yet (their first appearance, as in YouTube-VOS); its pixels overwrite the prediction in the output.
    An object given again later is taken as a correction of that frame.
    """

    model: nn.Module
    dtype: torch.dtype = torch.float32  # the frames' dtype: float64 to compare with a reference, else float32
    autocast: torch.dtype | None = None  # bfloat16 / float16 under torch.autocast
    split_decoder: bool = True  # EMVOS: False runs the official, unsplit decoder (Decoder.project), for comparisons
    object_ids: list[int] = field(default_factory=list)
    state: VideoState | None = None
    frame_size: tuple[int, int] | None = None  # (H, W) of the last frame given to step, before padding

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.inference_mode()
    def step(self, frame: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """frame: (3, H, W) RGB in [0, 1]; mask: (H, W) object ids or None.

        Returns (labels (H, W) long object ids, probs (N, H, W) each object's aggregated foreground probability).
        """
        height, width = self.frame_size = tuple(frame.shape[-2:])
        padding = get_padding(height, width)
        img = pad(frame[None].to(self.device, self.dtype), padding)
        given = pad_mask(mask[None].to(self.device).long(), padding) if mask is not None else None
        with torch.autocast(self.device.type, self.autocast, enabled=self.autocast is not None):
            labels, probs = self._step(img, given)
        return unpad(labels[0], padding), unpad(probs[0, :, 1].float(), padding)

    def _step(self, img: Tensor, given: Tensor | None) -> tuple[Tensor, Tensor]:
        feats = self.model.encode(img)
        given_ids = [] if given is None else [i for i in given.unique().tolist() if i != 0]
        new_ids = [i for i in given_ids if i not in self.object_ids]
        if self.state is None:
            if not new_ids:
                raise ValueError("the first frame needs a mask with at least one object (non-zero pixels)")
            masks = one_hot(given, new_ids, img.dtype)
            self.object_ids = new_ids
            self.state = self.model.init_state(feats, masks)
            return given, masks  # the given frame is the output, as the official code returns it
        logits = self.model.predict(feats, self.state) if self.split_decoder else \
            self.model.predict(feats, self.state, split=False)
        probs = torch.softmax(logits.to(img.dtype), dim=2)  # (1, N, 2, H, W)
        del logits  # not held through the aggregation: N full-resolution maps (0.7 GB at 1080p x 40 objects)
        corrected = [i for i in given_ids if i in self.object_ids]
        if corrected:
            slots = [self.object_ids.index(i) for i in corrected]
            probs[:, slots] = one_hot(given, corrected, probs.dtype)
        if new_ids:
            masks = one_hot(given, new_ids, probs.dtype)
            self.model.add_objects(self.state, feats, masks)
            self.object_ids = self.object_ids + new_ids
            probs = torch.cat([probs, masks], dim=1)
        index, probs = aggregate_objects(probs)
        ids = torch.tensor([0] + self.object_ids, device=index.device)
        labels = ids[index]  # (1, H, W)
        if given is not None:
            labels = torch.where(given != 0, given, labels)
        self.model.update(self.state, feats, probs)
        return labels, probs


# ---------------------------------------------------------------------------------------------------------------
# VideoMatch (Hu, Huang and Schwing, "VideoMatch: Matching based Video Object Segmentation", ECCV 2018)
#
# The second method, with the same streaming interface as EMVOS (encode / init_state / add_objects / predict /
# update), so VideoSegmenter runs it unchanged and its objects go through the same soft aggregation. There is no
# decoder network: the soft matching layer's scores, upsampled, are the logits. Shapes: HW the positions of the
# stride-8 feature map (times the upsample factor), H x W the (padded) frame.
# ---------------------------------------------------------------------------------------------------------------

@dataclass
class VideoMatchConfig:
    """Hyper-parameters of VideoMatch. The defaults are the paper's: VGG-19, K = 20, d = 51, no online update."""

    encoder: str = "vgg19"  # 'vgg19' (without its last two max-pools) or 'resnet101' (up to layer2); both stride 8
    upsample: float = 1.0  # bilinear upsampling of the feature map: finer matching, at HW^2 cost in time and memory
    topk: int = 20  # K: the soft matching layer averages the K best similarities in each set (paper Sec. 3.1)
    dilation: int = 51  # d of outlier removal (Sec. 3.3), odd, in pixels of the frame; 0 turns it off
    online_update: bool = False  # Sec. 3.3: extend the reference sets with the previous frame's confident features
    online_threshold: float = 0.9  # confident: aggregated fg probability >= this (foreground) or <= 1 - this (bg)

    def __post_init__(self) -> None:
        if self.encoder not in VIDEOMATCH_ENCODERS:
            raise ValueError(f"unknown VideoMatch encoder {self.encoder!r}; choose from {sorted(VIDEOMATCH_ENCODERS)}")
        if self.upsample <= 0:
            raise ValueError(f"the upsample factor must be positive, got {self.upsample}")
        if self.topk < 1:
            raise ValueError(f"topk (K) must be at least 1, got {self.topk}")
        if self.dilation < 0 or (self.dilation and self.dilation % 2 == 0):
            raise ValueError(f"dilation (d) must be odd, or 0 to turn outlier removal off; got {self.dilation}")
        if not 0.5 < self.online_threshold <= 1:
            raise ValueError(f"online_threshold must be in (0.5, 1], got {self.online_threshold}")


# The backbone's layers up to stride 8 (torchvision names). VGG-19 keeps all 16 convolutions and loses max-pools 4
# and 5, so its last 8 convolutions run at stride 8; ResNet-101 stops after layer2. Both give 512 channels.
VIDEOMATCH_ENCODERS = {
    "vgg19": None,  # every module of vgg19().features except the last two MaxPool2d
    "resnet101": ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2"),
}


class VideoMatchEncoder(nn.Module):
    """The Siamese feature extractor: RGB in [0, 1] (B, 3, H, W) -> (B, 512, H/8 * f, W/8 * f), f the upsample factor.

    Weights are `features.<torchvision name>`, so ImageNet weights come from the torchvision model as is.
    """

    def __init__(self, name: str = "vgg19", pretrained: bool = False, upsample: float = 1.0):
        super().__init__()
        backbone = imagenet_backbone(name, pretrained)
        if name == "vgg19":
            children = list(backbone.features.named_children())
            pools = [n for n, m in children if isinstance(m, nn.MaxPool2d)][-2:]
            layers = [(n, m) for n, m in children if n not in pools]
        else:
            layers = [(n, getattr(backbone, n)) for n in VIDEOMATCH_ENCODERS[name]]
        self.features = nn.Sequential(OrderedDict(layers))
        self.upsample = upsample
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))

    def forward(self, img: Tensor) -> Tensor:
        x = self.features((img - self.mean) / self.std)  # (B, 512, H/8, W/8)
        if self.upsample != 1:
            size = (max(1, round(x.shape[-2] * self.upsample)), max(1, round(x.shape[-1] * self.upsample)))
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        return x


@dataclass
class MatchState:
    """Everything VideoMatch remembers about a video. Objects are slots 0..N-1 in order of first appearance.

    The reference features of every frame at which objects were given are concatenated along HW_r; each object's
    [bg, fg] sets select its own frame's positions there (False elsewhere), so all objects share one similarity
    matrix per query frame.
    """

    ref_feats: Tensor  # (B, C, HW_r) unit-norm features of the frames objects were given at
    ref_sets: Tensor  # (B, N, 2, HW_r) bool: each object's given [bg, fg] positions
    prev_mask: Tensor  # (B, N, H, W) bool: each object's pixels in the previous output (outlier removal)
    online_feats: Tensor | None = None  # (B, C, HW) the previous frame's features (online update only)
    online_sets: Tensor | None = None  # (B, N, 2, HW) bool: its confidently predicted [bg, fg] positions
    last_probs: Tensor | None = None  # (B, N, 2, H, W) the soft matching layer's [bg, fg] probabilities, last frame

    @property
    def num_objects(self) -> int:
        return self.prev_mask.shape[1]

    def reference(self) -> tuple[Tensor, Tensor]:
        """The features (B, C, HW_r') and [bg, fg] sets (B, N, 2, HW_r') matched against: the given frames, plus the
        previous frame's confident positions when the online update is on."""
        if self.online_feats is None:
            return self.ref_feats, self.ref_sets
        return (torch.cat([self.ref_feats, self.online_feats], dim=2),
                torch.cat([self.ref_sets, self.online_sets], dim=3))

    def probability_maps(self, height: int, width: int) -> Tensor:
        """The last predicted frame's per-object [bg, fg] probabilities of the soft matching layer (before outlier
        removal and aggregation: what the matching alone says), (B, N, 2, height, width).

        height, width: the frame's size before VideoSegmenter padded it; the padding is cropped off.
        """
        if self.last_probs is None:
            raise ValueError("no frame has been predicted yet: the first frame's mask is given, not matched; "
                             "visualise a later frame (--vis-frame 1 or more)")
        return unpad(self.last_probs, get_padding(height, width))


def object_masks(probs: Tensor) -> Tensor:
    """(B, N, 2, H, W) aggregated [1 - p, p] -> (B, N, H, W) bool: the pixels each object wins in the id mask.

    Background is what the objects leave, 1 - sum(p); ties go to the lower index, as in aggregate_objects. With one
    object this is p > 0.5.
    """
    fg = probs[:, :, 1]
    winner = torch.cat([1 - fg.sum(dim=1, keepdim=True), fg], dim=1).max(dim=1).indices  # (B, H, W) in 0..N
    ids = torch.arange(1, fg.shape[1] + 1, device=fg.device).view(1, -1, 1, 1)
    return winner.unsqueeze(1) == ids


class VideoMatch(nn.Module):
    """Siamese encoder + soft matching layer (top-K mean of cosine similarities) + outlier removal."""

    def __init__(self, config: VideoMatchConfig | None = None, pretrained: bool = False):
        super().__init__()
        self.config = config or VideoMatchConfig()
        self.encoder = VideoMatchEncoder(self.config.encoder, pretrained, self.config.upsample)
        # query positions per top-K chunk (matching.topk_mean_scores); None: all at once. Runtime, not a weight.
        self.topk_chunk: int | None = None

    def train(self, mode: bool = True) -> "VideoMatch":
        super().train(mode)
        # BatchNorm statistics stay frozen (ResNet-101): training batches of frame pairs are too small to estimate
        # them, as in EMVOS's training. VGG-19 has none.
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.eval()
        return self

    # --- the three named steps ----------------------------------------------------------------------------------
    def encode(self, img: Tensor) -> Tensor:
        """img: (B, 3, H, W) RGB in [0, 1], H and W multiples of 8 -> (B, C, h, w) features, unit norm per position."""
        return F.normalize(self.encoder(img), dim=1, eps=1e-12)

    def match(self, feats: Tensor, state: MatchState) -> Tensor:
        """Soft matching layer (Sec. 3.1): [bg, fg] scores of every object, (B, N, 2, h, w), in [-1, 1]."""
        ref_feats, sets = state.reference()
        sim = matching.cosine_similarity(ref_feats, feats.flatten(2))  # (B, HW_r, HW_q), one for all objects
        scores = matching.soft_match(sim, sets, self.config.topk, self.topk_chunk)  # (B, N, 2, HW_q)
        return scores.unflatten(3, feats.shape[-2:])

    def decode(self, scores: Tensor, size: tuple[int, int]) -> Tensor:
        """Bilinear upsampling of the scores to the frame (Sec. 3.1): logits (B, N, 2, H, W); softmax over dim 2 gives
        the paper's [bg, fg] probabilities."""
        up = F.interpolate(scores.flatten(1, 2), size=size, mode="bilinear", align_corners=False)
        return up.unflatten(1, scores.shape[1:3])

    # --- memory ----------------------------------------------------------------------------------------------------
    def init_state(self, feats: Tensor, masks: Tensor) -> MatchState:
        """Start a video from the objects given at this frame. masks: (B, n, 2, H, W) [bg, fg] in {0, 1}."""
        sets = matching.mask_sets(masks[:, :, 1], feats.shape[-2:])  # (B, n, 2, HW)
        return MatchState(feats.flatten(2), sets, masks[:, :, 1] > 0.5)

    def add_objects(self, state: MatchState, feats: Tensor, masks: Tensor) -> None:
        """Objects first given at a later frame (YouTube-VOS): this frame's features become their reference."""
        new = matching.mask_sets(masks[:, :, 1], feats.shape[-2:])  # (B, n, 2, HW)
        b, n_old, _, hw_old = state.ref_sets.shape
        n_new, hw_new = new.shape[1], new.shape[3]
        old_sets = torch.cat([state.ref_sets, state.ref_sets.new_zeros(b, n_old, 2, hw_new)], dim=3)
        new_sets = torch.cat([new.new_zeros(b, n_new, 2, hw_old), new], dim=3)
        state.ref_feats = torch.cat([state.ref_feats, feats.flatten(2)], dim=2)
        state.ref_sets = torch.cat([old_sets, new_sets], dim=1)
        state.prev_mask = torch.cat([state.prev_mask, masks[:, :, 1] > 0.5], dim=1)
        if state.online_sets is not None:  # the new objects have no confident positions in the previous frame
            state.online_sets = torch.cat([state.online_sets, state.online_sets.new_zeros(b, n_new, 2,
                                                                                          state.online_sets.shape[3])],
                                          dim=1)

    def update(self, state: MatchState, feats: Tensor, probs: Tensor) -> None:
        """After a frame, with the (aggregated) soft masks probs (B, N, 2, H, W).

        Its id mask becomes the previous mask of outlier removal. With the online update (Sec. 3.3), this frame's
        confidently predicted positions (matching.confident_sets: cell-averaged foreground probability >=
        online_threshold, or <= 1 - online_threshold for background) extend the given frame's sets until the next
        frame replaces them: the references are the given frames plus the last frame, so time and memory per frame
        stay constant however long the video. The paper's notes here do not fix the threshold; a single object's
        aggregated probability p^2 / (p^2 + (1 - p)^2) reaches 0.98 at the largest cosine gap, so 0.9 is reachable.
        """
        state.prev_mask = object_masks(probs)
        if self.config.online_update:
            state.online_feats = feats.flatten(2)
            state.online_sets = matching.confident_sets(probs[:, :, 1], feats.shape[-2:], self.config.online_threshold)

    def predict(self, feats: Tensor, state: MatchState, remove_outliers: bool = True) -> Tensor:
        """Logits (B, N, 2, H, W) of every tracked object in a new frame.

        With outlier removal (Sec. 3.3, on unless dilation is 0), foreground outside each object's previous mask
        dilated by d x d gets the lowest logit, so its probability is exactly 0 and the pixel cannot be the object's.
        The training forward turns it off: it is a test-time step, and it would cut the gradient there.
        """
        logits = self.decode(self.match(feats, state), tuple(state.prev_mask.shape[-2:]))
        state.last_probs = torch.softmax(logits.detach(), dim=2)
        if remove_outliers and self.config.dilation:
            keep = matching.dilate_mask(state.prev_mask, self.config.dilation)  # (B, N, H, W)
            fg = logits[:, :, 1].masked_fill(~keep, torch.finfo(logits.dtype).min)
            logits = torch.stack([logits[:, :, 0], fg], dim=2)
        return logits

    # --- training forward ------------------------------------------------------------------------------------------
    def forward(self, imgs: Tensor, first_masks: Tensor) -> Tensor:
        """Training forward, as EMVOS's: clips with only the first frame's mask given, one object (id 1).

        imgs: (B, L, 3, H, W) RGB in [0, 1]; first_masks: (B, H, W) with values 0/1. The paper trains on pairs
        (L = 2); longer clips carry the previous mask (and, with the online update, the confident sets) along.
        Returns the logits of frames 1..L-1, (B, L-1, 2, H, W), without outlier removal.
        """
        b, length, _, height, width = imgs.shape
        padding = get_padding(height, width)
        imgs = pad(imgs.flatten(0, 1), padding)
        first = pad_mask(first_masks, padding)
        feats = self.encode(imgs).unflatten(0, (b, length))  # every frame in one pass: BatchNorm is frozen
        state = self.init_state(feats[:, 0], one_hot(first, [1], imgs.dtype))
        logits = []
        for i in range(1, length):
            logit = self.predict(feats[:, i], state, remove_outliers=False)  # (B, 1, 2, H, W)
            logits.append(logit[:, 0])
            if i < length - 1:
                self.update(state, feats[:, i], torch.softmax(logit, dim=2))
        return unpad(torch.stack(logits, dim=1), padding)


# --- VideoMatch training losses (paper Sec. 4: BCE, class-balanced BCE or Dice on the foreground probability) ---
# Each takes logits (..., 2, H, W) [bg, fg] and targets (..., H, W) in {0, 1} and returns a scalar.

def bce_loss(logits: Tensor, target: Tensor) -> Tensor:
    """Binary cross-entropy of the foreground probability, averaged over pixels and frames.

    From log_softmax of the two logits (numerically stable); for two classes it equals the cross-entropy EMVOS uses.
    """
    logp = torch.log_softmax(logits, dim=-3)
    t = target.to(logp.dtype)
    return -(t * logp[..., 1, :, :] + (1 - t) * logp[..., 0, :, :]).mean()


def balanced_bce_loss(logits: Tensor, target: Tensor) -> Tensor:
    """Class-balanced BCE (HED, Xie and Tu 2015; OSVOS): per frame, foreground pixels weigh beta = the share of
    background pixels and background pixels 1 - beta, so a small object counts as much as the background around it.
    Averaged over pixels and frames."""
    logp = torch.log_softmax(logits, dim=-3)
    t = target.to(logp.dtype)
    beta = 1 - t.mean(dim=(-2, -1), keepdim=True)  # (..., 1, 1)
    return -(beta * t * logp[..., 1, :, :] + (1 - beta) * (1 - t) * logp[..., 0, :, :]).mean()


def dice_loss(logits: Tensor, target: Tensor, eps: float = 1.0) -> Tensor:
    """Soft Dice loss (Milletari et al., 2016): 1 - (2 |P T| + eps) / (|P| + |T| + eps) per frame, P the foreground
    probabilities, averaged over frames. eps keeps a frame without object (P, T ~ 0) at a loss near 0, not 0 / 0."""
    p = torch.softmax(logits, dim=-3)[..., 1, :, :].flatten(-2)  # (..., HW)
    t = target.flatten(-2).to(p.dtype)
    return (1 - (2 * (p * t).sum(-1) + eps) / (p.sum(-1) + t.sum(-1) + eps)).mean()


VIDEOMATCH_LOSSES = {"bce": bce_loss, "balanced_bce": balanced_bce_loss, "dice": dice_loss}


def videomatch_loss(name: str, logits: Tensor, target: Tensor) -> Tensor:
    """The training loss chosen by name (`--loss dice|bce|balanced_bce`): logits (B, T, 2, H, W), target (B, T, H, W)
    -> scalar."""
    if name not in VIDEOMATCH_LOSSES:
        raise ValueError(f"unknown VideoMatch loss {name!r}; pass --loss with one of {sorted(VIDEOMATCH_LOSSES)}")
    return VIDEOMATCH_LOSSES[name](logits, target)
