"""EMVOS (Cho et al., arXiv 2209.03139) in one module with named steps: encode -> match -> decode.

Read top to bottom: the configuration, the building blocks (encoder, matcher, CBAM, decoder), the run-time
settings (`EMVOSRuntime`), the per-video state, the model and its loss, the training recipe (the official stages,
swap-and-attach and the skip rule), the official checkpoint layout, and the registry entry (`METHOD`). What
every method shares (padding, soft aggregation of the objects, the training forward) is in framework.py, the
ImageNet backbones in backbones.py, the matching functions in matching.py, and `segmenter.VideoSegmenter` streams a
video through any model frame by frame.

Naming: the trailing number is the stride, as in STCN: f4, f8, f16 are encoder features at strides 4, 8, 16.
Shapes: B batch (clips), N objects, C channels, HW stride-16 positions, H x W the (padded) frame.

Checkpoints: module names equal the official ones, and the official state dicts carry them under one extra prefix,
`vos.` (the official top module wraps the network as `self.vos`). `from_official` / `to_official` strip and add it,
so `coco_davis_best.pth` loads with strict=True and checkpoints written here load in the official code.
"""

import random
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field, fields

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

import matching
from core import methods
from core.backbones import densenet121_features, resnet_trunk
from core.config_flags import check_config, option
from core.framework import Runtime, VOSModel, clip_forward

OFFICIAL_PREFIX = "vos."


# (layers in order, the three whose outputs are f4, f8, f16). Both backbones give 256, 512, 1024 channels.
ENCODER_LAYERS = {
    "densenet121": (("conv0", "norm0", "relu0", "pool0", "denseblock1", "transition1", "denseblock2",
                     "transition2", "denseblock3"), ("denseblock1", "denseblock2", "denseblock3")),
    "resnet50": (("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3"), ("layer1", "layer2", "layer3")),
}


@dataclass
class ModelConfig:
    """Hyper-parameters of the EMVOS network. The defaults are the official release."""

    encoder: str = field(default="densenet121", metadata=option(
        "backbone to stride 16: densenet121 (official) or resnet50 (the same widths at strides 4/8/16)",
        choices=tuple(ENCODER_LAYERS), weights=True))
    # matching branches, 4 channels each into the decoder (paper Table 4 ablates them)
    branches: tuple[str, ...] = field(default=("surjective", "equalized"), metadata=option(
        "matching branches, any non-empty set (paper Table 4's ablation; official: surjective equalized)",
        choices=matching.BRANCHES, subset=True, weights=True))
    topk: int = field(default=4, metadata=option(
        "K of bijective matching (BMVOS): each reference position keeps its K best query matches", low=1,
        used=lambda c: "bijective" in c.branches, used_when="bijective is one of --branches"))
    key_dim: int = field(default=512, metadata=option(
        "channels of the matching keys (matcher.conv1 / conv2)", low=1, weights=True))
    train_encoder: bool = False  # the official training keeps the encoder frozen (no gradient, BatchNorm frozen)

    def __post_init__(self) -> None:
        self.branches = tuple(self.branches)
        check_config(self)


# ---------------------------------------------------------------------------------------------------------------
# building blocks
# ---------------------------------------------------------------------------------------------------------------

class Encoder(nn.Module):
    """ImageNet backbone cut after stride 16. RGB in [0, 1] -> (f4, f8, f16) with 256, 512, 1024 channels."""

    def __init__(self, name: str = "densenet121", pretrained: bool = False):
        super().__init__()
        layers, self.taps = ENCODER_LAYERS[name]
        backbone = densenet121_features(pretrained) if name == "densenet121" else resnet_trunk(name, 3, pretrained)
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

    oneDNN's transposed convolution is slow with EMVOS's 2 output channels (deconv3 at 854x480: 0.96 GFLOP); as a
    1x1 convolution and a scatter-add (F.fold) the same sums avoid that kernel.
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
        # The keys leave the network in at least float32, normalised there: the matching reads maxima and a softmax
        # off their products, which bf16's 8 significant bits can reorder (EMVOS.match).
        nk = matching.l2_normalise(at_least_fp32(self.conv1(f16))).flatten(2)  # (B, C, HW)
        k = at_least_fp32(self.conv2(f16)).flatten(2)  # (B, C, HW)
        return Keys(nk, k)


def at_least_fp32(x: Tensor) -> Tensor:
    """x in float32 when it is in a narrower float type (bf16, fp16); float32 and float64 as they are."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


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
    """Decoder.project's result: the part of the split decoder that is the same for every object, one map per
    stride: each blend convolution's partial sum W_p * p + b over the projected skip features p (before ReLU)."""

    maps: tuple[Tensor, Tensor, Tensor]  # (B, 256, h, w) at strides 16, 8, 4


class Decoder(nn.Module):
    """Refines matching scores from stride 16 to full resolution with the encoder's skip features (paper Sec. 3.4).

    `forward` is the paper's computation, as the official code writes it. `forward_split` (with `project`) computes
    the same numbers in another order, with the part that is equal for every object run once per frame; the model
    chooses it at run time (EMVOSRuntime.split_decoder, on by default).
    """

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

    def forward(self, f4: Tensor, f8: Tensor, f16: Tensor, scores: Tensor, prev_mask16: Tensor) -> Tensor:
        """The paper's decoder: f4, f8, f16 (B, C, ...) skip features; scores (B, N, 8, h, w) matching scores;
        prev_mask16 (B, N, 2, h, w) the previous frame's soft mask. -> logits (B, N, 2, H, W) for [bg, fg].

        At each stride the skip features are projected (1x1), concatenated with the object's coarser prediction,
        blended (3x3), refined by CBAM and upsampled; every object of every clip runs as one batch of B*N.
        """
        b, n = scores.shape[:2]

        def per_object(x: Tensor) -> Tensor:  # (B, C, h, w) -> (B*N, C, h, w): the same map for every object
            return x.repeat_interleave(n, dim=0) if n > 1 else x

        x = torch.cat([per_object(self.conv1(f16)), scores.flatten(0, 1), prev_mask16.flatten(0, 1)], dim=1)
        s8 = self.deconv1(self.cbam1(self.blend1(x)))  # (B*N, 2, H/8, W/8)
        s4 = self.deconv2(self.cbam2(self.blend2(torch.cat([per_object(self.conv2(f8)), s8], dim=1))))
        out = self.deconv3(self.cbam3(self.blend3(torch.cat([per_object(self.conv3(f4)), s4], dim=1))))
        return out.unflatten(0, (b, n))  # (B, N, 2, H, W)

    def project(self, f4: Tensor, f8: Tensor, f16: Tensor) -> Projection:
        """The part of the split decoder that is the same for every object, so that it runs once a frame.

        A blend convolution's input is cat([p, the object's own 2-10 channels s]) and a convolution is linear in its
        input channels: blend(cat[p, s]) = W_p * p + b + W_s * s. This runs the W_p * p + b half (the existing
        weights, sliced: the checkpoint is unchanged), which moves about half of the decoder's per-object FLOPs (40
        of 82 GFLOP at 864x480) to once a frame; forward_split then convolves each object's own channels only.
        """
        def shared(x: Tensor, proj: nn.Sequential, blend: nn.Sequential) -> Tensor:  # p is dropped once used
            return F.conv2d(proj(x), blend.conv.weight[:, :self.SKIP], blend.conv.bias, blend.conv.stride,
                            blend.conv.padding)

        q4 = shared(f4, self.conv3, self.blend3)  # the largest first: at most one p and its q alive at a time
        q8 = shared(f8, self.conv2, self.blend2)
        return Projection((shared(f16, self.conv1, self.blend1), q8, q4))

    def forward_split(self, shared: Projection, scores: Tensor, prev_mask16: Tensor) -> Tensor:
        """forward's numbers from project()'s maps: scores (B, N, 8, h, w); prev_mask16 (B, N, 2, h, w) -> logits
        (B, N, 2, H, W). Equal to forward: float64 logits agree to 1e-12, float32 ones move by summation order only
        (tests/test_decoder_split.py; the golden tests run both). The transposed convolutions run as a 1x1
        convolution and col2im (conv_transpose_gemm), the same sums."""
        b, n = scores.shape[:2]
        # torch.cat keeps channels_last only when every input is in it; otherwise the next conv converts its input
        # back, a copy of (B*N, 258, H/4, W/4) per call, per object
        cl = shared.maps[0].is_contiguous(memory_format=torch.channels_last)
        fmt = torch.channels_last if cl else torch.contiguous_format
        own = torch.cat([scores.flatten(0, 1), prev_mask16.flatten(0, 1)], dim=1).contiguous(memory_format=fmt)

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
# run-time settings
# ---------------------------------------------------------------------------------------------------------------

@dataclass
class EMVOSRuntime(Runtime):
    """framework.Runtime with EMVOS's own settings: objects per decoder call, the readout's tile size and the split
    decoder. EMVOS's methods take any Runtime; a plain one runs with the defaults below (`EMVOSRuntime.of`)."""

    # Objects per decoder call. 1: each object alone, which keeps its float32 logits bit-identical to the official
    # per-object decoder (oneDNN and cuDNN choose kernels, hence summation orders, by batch size; random-weight
    # models have ties that such 1e-6 differences flip) and is also the fastest on CPU (bench.py). None: as many
    # as the memory budget allows, which may pay on a GPU at small frames.
    decoder_batch: int | None = 1
    readout_bytes: int | None = None  # fixed readout tile size in bytes (tests); None: from memory_budget
    # Decoder.forward_split: the blend convolutions' shared half once per frame (Decoder.project). False runs
    # Decoder.forward, the paper's computation, for comparisons (float32 logits then equal the official code's;
    # split moves them by summation order only)
    split_decoder: bool = True

    @staticmethod
    def of(runtime: Runtime | None) -> "EMVOSRuntime":
        """runtime itself when it is an EMVOSRuntime; else its generic fields (memory_budget) with EMVOS's defaults
        for the rest; None: all defaults."""
        if isinstance(runtime, EMVOSRuntime):
            return runtime
        if runtime is None:
            return DEFAULT_RUNTIME
        return EMVOSRuntime(**{f.name: getattr(runtime, f.name) for f in fields(Runtime)})


DEFAULT_RUNTIME = EMVOSRuntime()


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

    With the split decoder the skip features f4, f8, f16 serve only the decoder's per-frame part: `project` replaces
    them by it, so that they are not held while every object is decoded and aggregated (51 MiB at 854x480, a fifth
    of a frame's peak).
    """

    f4: Tensor | None  # (B, 256, H/4, W/4); None once projected
    f8: Tensor | None  # (B, 512, H/8, W/8)
    f16: Tensor | None  # (B, 1024, H/16, W/16)
    keys: Keys
    size16: tuple[int, int]  # (h, w) of the stride-16 maps
    shared: Projection | None = None  # Decoder.project's result, once computed

    def project(self, decoder: Decoder) -> Projection:
        """The split decoder's per-frame part (Decoder.project), computed once; the skip features are dropped then."""
        if self.shared is None:
            self.shared = decoder.project(self.f4, self.f8, self.f16)
            self.f4 = self.f8 = self.f16 = None
        return self.shared

    def skips(self) -> tuple[Tensor, Tensor, Tensor]:
        """(f4, f8, f16) for the paper's decoder (Decoder.forward); refused once the split decoder released them."""
        if self.f4 is None:
            raise ValueError("this frame's skip features were released by the split decoder's projection; encode the "
                             "frame again to decode it with split_decoder=False")
        return self.f4, self.f8, self.f16


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

    def remove(self, slot: int) -> None:
        """Forget the object in `slot`: its columns leave its global reference (the reference goes when it has no
        object left) and the local one."""
        start = 0
        for k, ref in enumerate(self.references):
            n = ref.mask16.shape[1]
            if start <= slot < start + n:
                if n == 1:
                    del self.references[k]
                else:
                    keep = [i for i in range(n) if i != slot - start]
                    self.references[k] = Reference(ref.keys, ref.mask16[:, keep])
                break
            start += n
        keep = [i for i in range(self.prev_mask16.shape[1]) if i != slot]
        self.prev_mask16 = self.prev_mask16[:, keep]


# ---------------------------------------------------------------------------------------------------------------
# the model
# ---------------------------------------------------------------------------------------------------------------

class EMVOS(nn.Module, VOSModel):
    """Encoder + surjective / equalized matching against the first and the previous frame + decoder."""

    stride = 16  # of f16, the coarsest map: frames are padded to a multiple of it (framework.VOSModel)

    def __init__(self, config: ModelConfig | None = None, pretrained: bool = False):
        super().__init__()
        self.config = config or ModelConfig()
        self.encoder = Encoder(self.config.encoder, pretrained)
        self.matcher = Matcher(1024, self.config.key_dim)
        self.decoder = Decoder(4 * len(self.config.branches))
        # The official training keeps the encoder frozen: no gradient for it, so the trainer's optimizer (which takes
        # the parameters that require one) and DistributedDataParallel leave it alone.
        self.encoder.requires_grad_(self.config.train_encoder)

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

    @matching.outside_autocast
    def match(self, feats: FrameFeatures, state: VideoState, runtime: Runtime | None = None) -> Tensor:
        """Matching scores of every object: (B, N, 4 * branches, h, w).

        Per branch, in the official channel order: global bg, fg (against each object's first frame), then local bg,
        fg (against the previous frame). A similarity matrix depends only on the two frames, so each is computed
        once per frame and read out for all objects together. The matching runs in the keys' precision, at least
        float32 (Matcher), outside autocast (what bf16 matching would change: docs/performance.md).
        """
        runtime = EMVOSRuntime.of(runtime)
        q = (feats.keys.nk, feats.keys.k)
        b, n = state.prev_mask16.shape[:2]
        h, w = feats.size16
        hw_q = h * w
        limit = runtime.readout_bytes if runtime.readout_bytes is not None else runtime.budget_bytes(q[0].device)
        if q[0].device.type == "cpu":
            limit = min(limit or matching.READOUT_TILE_BYTES, matching.READOUT_TILE_BYTES)

        def readout(branch: str, keys: Keys, mask16: Tensor) -> Tensor:  # mask16 (B, n, 2, HW_r) -> (B, n, 2, HW_q)
            sim = matching.similarity(branch, (keys.nk, keys.k), q, self.config.topk)  # (B, HW_r, HW_q)
            masks = mask16.flatten(1, 2)  # (B, 2n, HW_r)
            # the product sim * mask takes the wider of the two dtypes
            mask_chunk, chunk = matching.readout_tiles(limit, b, masks.shape[1], sim.shape[1], hw_q,
                                                       max(sim.element_size(), masks.element_size()))
            return matching.max_readout(sim, masks, chunk, mask_chunk).unflatten(1, mask16.shape[1:3])

        channels = []
        for branch in self.config.branches:
            glob = torch.cat([readout(branch, ref.keys, ref.mask16) for ref in state.references], dim=1)
            local = readout(branch, state.prev_keys, state.prev_mask16)
            channels += [glob, local]
        return torch.cat(channels, dim=2).unflatten(3, (h, w))  # (B, N, 4 * branches, h, w)

    def decode(self, feats: FrameFeatures, scores: Tensor, state: VideoState, runtime: Runtime | None = None
               ) -> Tensor:
        """-> logits (B, N, 2, H, W) for [bg, fg] of every object.

        runtime.split_decoder chooses Decoder.forward_split, whose per-frame part (Decoder.project, which then
        replaces feats' skip features) runs once; else Decoder.forward, the paper's computation. Objects go through
        the decoder runtime.decoder_batch at a time, fewer if the memory budget says so; an object's logits do not
        depend on the others in its batch (up to float rounding, see EMVOSRuntime.decoder_batch). A plain Runtime
        runs with EMVOSRuntime's defaults.
        """
        runtime = EMVOSRuntime.of(runtime)
        prev = state.prev_mask16.unflatten(3, feats.size16)  # (B, N, 2, h, w)
        if runtime.split_decoder:
            proj = feats.project(self.decoder)
            q4 = proj.maps[2]  # (B, 256, H/4, W/4), the size of f4

            def run(s: Tensor, p: Tensor) -> Tensor:
                return self.decoder.forward_split(proj, s, p)
        else:
            skips = feats.skips()
            q4 = skips[0]

            def run(s: Tensor, p: Tensor) -> Tensor:
                return self.decoder(*skips, s, p)
        n = scores.shape[1]
        chunk = min(n, runtime.decoder_batch or n)
        if chunk > 1:
            per_object = self.decoder.bytes_per_object(q4, torch.promote_types(q4.dtype, scores.dtype))
            chunk = decoder_chunk_size(runtime.budget_bytes(q4.device), chunk, per_object)
        if chunk >= n:
            return run(scores, prev)
        out = None  # filled chunk by chunk: a list and torch.cat would hold every object's logits twice
        for s in range(0, n, chunk):
            logits = run(scores[:, s:s + chunk], prev[:, s:s + chunk])  # (B, chunk, 2, H, W)
            if out is None:
                out = logits.new_empty(logits.shape[0], n, *logits.shape[2:])
            out[:, s:s + chunk] = logits
        return out  # (B, N, 2, H, W)

    # --- run-time ------------------------------------------------------------------------------------------------
    def frame_bytes(self, height: int, width: int, element_size: int = 4) -> int:
        """Bytes of one frame's largest temporaries that the memory budget cannot tile: a (HW_r, HW_q) similarity
        matrix of f16 positions (matching.similarity), held twice by the equalized branch (the products and their
        softmax). The driver refuses a frame whose matrices cannot fit (segmenter.check_frame_memory)."""
        positions = -(-height // self.stride) * -(-width // self.stride)
        return 2 * positions * positions * element_size

    def compile_modules(self, **options: object) -> "EMVOS":
        """torch.compile, for inference, the encoder, the matcher's key projections and the decoder (forward, and the
        split decoder's project / forward_split); the matching between them stays eager (its tiling depends on the
        object count). Inductor's freezing makes the weights constants: batch norms fold into convolutions and the
        weights are laid out once (prepacked for oneDNN on CPU), so the graphs run only without autograd. options go
        to torch.compile; the state dict keys stay unchanged (compiled callables are instance attributes)."""
        options = {"options": {"freezing": True}, **options}
        for module in (self.encoder, self.matcher):
            module.compile(**options)
        for name in ("forward", "project", "forward_split"):
            setattr(self.decoder, name, torch.compile(getattr(self.decoder, name), **options))
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

    def remove_object(self, state: VideoState, slot: int) -> None:
        """Forget the object in `slot` (VideoState.remove): the later frames match and decode only the others."""
        state.remove(slot)

    def update(self, state: VideoState, feats: FrameFeatures, probs: Tensor) -> None:
        """After a frame: it becomes the local reference, with the (aggregated) soft masks probs (B, N, 2, H, W)."""
        state.prev_keys = feats.keys
        state.prev_mask16 = matching.pool_mask(probs.flatten(1, 2)).unflatten(1, probs.shape[1:3])

    def predict(self, feats: FrameFeatures, state: VideoState, runtime: Runtime | None = None) -> Tensor:
        """Logits (B, N, 2, H, W) of every tracked object in a new frame."""
        runtime = EMVOSRuntime.of(runtime)  # once per frame, not in both steps
        return self.decode(feats, self.match(feats, state, runtime), state, runtime)

    # --- training forward ------------------------------------------------------------------------------------------
    def forward(self, imgs: Tensor, first_masks: Tensor) -> Tensor:
        """Training forward (clip_forward): clips (B, L, 3, H, W), first masks (B, H, W) -> logits (B, L-1, 2, H, W)."""
        return clip_forward(self, imgs, first_masks)


def emvos_loss(logits: Tensor, gt: Tensor) -> Tensor:
    """Cross-entropy of the 2-channel logits (B, L-1, 2, H, W) against gt (B, L-1, H, W) in {0, 1}, averaged over
    every pixel of every frame, as the official nn.CrossEntropyLoss on scores.view(-1, 2, H, W). Computed in fp32
    (under --amp the logits come out in bf16 / fp16)."""
    return F.cross_entropy(logits.flatten(0, 1).float(), gt.flatten(0, 1))


# ---------------------------------------------------------------------------------------------------------------
# the training recipe: the official stages, swap-and-attach and the skip rule (methods.Method calls them; the
# trainer runs them as it runs any method's)
# ---------------------------------------------------------------------------------------------------------------

def swap_and_attach(imgs: Tensor, masks: Tensor) -> tuple[Tensor, Tensor]:
    """Swap-and-attach, as the official trainer does it: paste each clip's target object into the next clip of the
    batch (a roll by one along the batch); the pasted pixels become background in that clip's own mask, since the
    object now covers them.

    imgs: (B, L, 3, H, W); masks: (B, L, H, W) in {0, 1}.
    """
    m = masks[:, :, None].to(imgs.dtype)  # (B, L, 1, H, W)
    objects = torch.roll(imgs * m, shifts=1, dims=0)
    object_masks = torch.roll(m, shifts=1, dims=0)
    imgs = (1 - object_masks) * imgs + object_masks * objects
    masks = ((1 - object_masks) * m)[:, :, 0].long()
    return imgs, masks


def must_skip(masks: Tensor) -> bool:
    """The official skip rule: a batch is dropped when any clip's first mask lacks background or foreground
    (`len(masks[b, 0].unique()) != 2` in the official trainer). masks: (B, L, H, W) in {0, 1}."""
    first = masks[:, 0].flatten(1)
    return bool((first.amax(dim=1) == first.amin(dim=1)).any())


def _swap(batch: methods.Batch, stage: "EMVOSStage") -> methods.Batch:
    # the official draw, one per batch, before the skip rule looks at the batch (so skipped batches draw too)
    if random.random() > stage.swap_above:
        return methods.Batch(*swap_and_attach(batch.imgs, batch.masks))
    return batch


def _swap_note(stage: "EMVOSStage", clips: int) -> str | None:
    if clips == 1 and stage.swap_above < 1:
        return (f"note: one clip per process: swap-and-attach then pastes a clip onto itself, which empties its mask, "
                f"so those batches (p = {1 - stage.swap_above:g}) are skipped, as the official code does at batch "
                f"size 1")
    return None


SWAP_AND_ATTACH = methods.BatchTransform(_swap, _swap_note)
OFFICIAL_SKIP = methods.BatchTransform(lambda batch, stage: None if must_skip(batch.masks) else batch)


@dataclass(frozen=True)
class EMVOSStage(methods.StageConfig):
    """An EMVOS training stage: the presets are the official run.py's train_coco / train_davis / train_ytvos."""

    swap_above: float = 0.8  # swap-and-attach when random.random() > this (p = 0.2), the official comparison


EMVOS_STAGES = {
    "coco": EMVOSStage("coco", "coco", methods.COCO_CLIPS, clip_len=5, clips_per_epoch=128, batch_size=16,
                       epochs=8000, save_every=4000, val_every=400),
    "davis": EMVOSStage("davis", "coco_davis", methods.DAVIS_CLIPS, clip_len=10, clips_per_epoch=128, batch_size=8,
                        epochs=4000, save_every=2000, val_every=200),
    # The official train_ytvos passes val_set=None: no validation, so its best checkpoint is the last one here.
    # --val-every N turns DAVIS validation on for it.
    "ytvos": EMVOSStage("ytvos", "coco_ytvos", methods.YTVOS_CLIPS, clip_len=10, clips_per_epoch=128, batch_size=8,
                        epochs=8000, save_every=2000, val_every=0),
    # Not in the official code: every other dataset module's training split (methods.benchmark_clips) with the ytvos
    # stage's settings (a large video set after coco), and fine-tuning on a folder of one's own videos (from --init)
    # with the davis stage's, fewer epochs, selected on its held-out videos (--val-sequences). --stages a+b mixes any
    # of them in one stage.
    **{name: EMVOSStage(name, name, data, clip_len=10, clips_per_epoch=128, batch_size=8, epochs=200,
                        save_every=100, val_every=20) if data.holds_out else
       EMVOSStage(name, f"coco_{name}", data, clip_len=10, clips_per_epoch=128, batch_size=8, epochs=8000,
                  save_every=2000, val_every=0)
       for name, data in methods.benchmark_clips().items()},
}


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


def is_official_architecture(config: ModelConfig) -> bool:
    """Whether the authors' code builds this network (so its weights are written in their plain layout)."""
    official = ModelConfig()
    return (config.encoder, config.branches, config.key_dim) == (official.encoder, official.branches, official.key_dim)


def official_config(weights: Mapping[str, Tensor]) -> dict | None:
    """{} (the official config) for a state dict in the official layout, else None."""
    keys = ("vos.encoder.denseblock1.denselayer1.conv1.weight", "vos.matcher.conv2.conv.weight",
            "vos.decoder.blend1.conv.weight")
    if not all(k in weights for k in keys):
        return None
    official = ModelConfig()
    c_in = weights["vos.decoder.blend1.conv.weight"].shape[1]
    if weights["vos.matcher.conv2.conv.weight"].shape[0] != official.key_dim or c_in != 256 + 4 * 2 + 2:
        return None
    return {}


# ---------------------------------------------------------------------------------------------------------------
# the registry entry (methods.METHOD_MODULES lists this module)
# ---------------------------------------------------------------------------------------------------------------

METHOD = methods.Method(
    "emvos", EMVOS, ModelConfig, "coco_davis_best.pth", EMVOS_STAGES, ("coco", "davis"),
    {"cross_entropy": emvos_loss}, "cross_entropy", compilable=True, to_file=to_official, from_file=from_official,
    plain=is_official_architecture, infer_config=official_config, transforms=(SWAP_AND_ATTACH, OFFICIAL_SKIP))
