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
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision as tv
from torch import Tensor

import matching
import weights
from utils import auto_memory_budget

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


@dataclass
class Runtime:
    """How to run a model on this machine. Not part of the weights, so it is passed to `predict` (by the driver,
    `inference.VideoSegmenter`) rather than stored on the network."""

    # bound in bytes on one frame's matching readout and decoder temporaries; "auto": a share of the memory free on
    # the frame's device, looked up every frame (utils.auto_memory_budget); None: no bound. run.py's --max-memory.
    memory_budget: int | str | None = "auto"
    # Objects per decoder call. 1: each object alone, which keeps its float32 logits bit-identical to the official
    # per-object decoder (oneDNN and cuDNN choose kernels, hence summation orders, by batch size; random-weight
    # models have ties that such 1e-6 differences flip) and is also the fastest on CPU (bench.py). None: as many
    # as the memory budget allows, which may pay on a GPU at small frames.
    decoder_batch: int | None = 1
    readout_bytes: int | None = None  # fixed readout tile size in bytes (tests); None: from memory_budget
    topk_chunk: int | None = None  # VideoMatch: query positions per top-K chunk; None: all at once

    def __post_init__(self) -> None:
        if isinstance(self.memory_budget, str) and self.memory_budget != "auto":
            raise ValueError(f"memory budget must be bytes, None or 'auto', not {self.memory_budget!r}")

    def budget_bytes(self, device: torch.device) -> int | None:
        """The memory budget in bytes for a frame on device, resolving "auto" now."""
        if self.memory_budget == "auto":
            return auto_memory_budget(device)
        return self.memory_budget  # type: ignore[return-value]


DEFAULT_RUNTIME = Runtime()


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


def imagenet_backbone(name: str, pretrained: bool) -> nn.Module:
    """A torchvision backbone, with its ImageNet weights (torchvision's IMAGENET1K_V1 file) only when asked for.

    The file is loaded by weights.load_imagenet_weights, not by torchvision: its SHA-256 is checked against the hash
    its name carries before anything is unpickled, and it is unpickled with weights_only=True, so a file planted in
    the torch hub cache cannot run code. Without internet the error names the URL, the folder and --no-pretrained.
    """
    net = getattr(tv.models, name)(weights=None)
    if pretrained:
        weights.load_imagenet_weights(net, getattr(tv.models, IMAGENET_WEIGHTS[name]).IMAGENET1K_V1)
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
        x = x * torch.sigmoid(gate)
        x = x * torch.sigmoid(self.conv3(torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], 1)))
        return x


class Decoder(nn.Module):
    """Refines matching scores from stride 16 to full resolution with the encoder's skip features."""

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

    def project(self, f4: Tensor, f8: Tensor, f16: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The 1x1 projections of the skip features. They are the same for every object, so they run once a frame."""
        return self.conv3(f4), self.conv2(f8), self.conv1(f16)

    def forward(self, proj: tuple[Tensor, Tensor, Tensor], scores: Tensor, prev_mask16: Tensor) -> Tensor:
        """proj: project()'s (B, 256, ...) x3; scores: (B, N, 8, h, w); prev_mask16: (B, N, 2, h, w).

        Returns logits (B, N, 2, H, W). All objects of all clips run as one batch of B*N.
        """
        b, n = scores.shape[:2]

        # torch.cat keeps channels_last only when every input is in it; otherwise the next conv converts its input
        # back, a copy of (B*N, 258, H/4, W/4) per call (bench.py: 7 ms per object at 854x480 on CPU)
        cl = proj[0].is_contiguous(memory_format=torch.channels_last)
        fmt = torch.channels_last if cl else torch.contiguous_format

        def per_object(x: Tensor) -> Tensor:  # (B, C, h, w) -> (B*N, C, h, w), the same map for every object
            if n == 1:  # as is: through expand the size-1 batch's stride changes and channels_last is lost
                return x
            return x.unsqueeze(1).expand(b, n, *x.shape[1:]).flatten(0, 1).contiguous(memory_format=fmt)

        p4, p8, p16 = proj
        own = torch.cat([scores.flatten(0, 1), prev_mask16.flatten(0, 1)], dim=1).contiguous(memory_format=fmt)
        x = torch.cat([per_object(p16), own], dim=1)
        s8 = self.deconv1(self.cbam1(self.blend1(x)))
        s4 = self.deconv2(self.cbam2(self.blend2(torch.cat([per_object(p8), s8], dim=1))))
        out = self.deconv3(self.cbam3(self.blend3(torch.cat([per_object(p4), s4], dim=1))))
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
# per-video state
# ---------------------------------------------------------------------------------------------------------------

@dataclass
class Keys:
    """A frame's matching keys, each (B, C, HW): `nk` L2-normalised (surjective, bijective), `k` raw (equalized)."""

    nk: Tensor
    k: Tensor


@dataclass
class FrameFeatures:
    """What the encoder and matcher give for one frame."""

    f4: Tensor  # (B, 256, H/4, W/4)
    f8: Tensor  # (B, 512, H/8, W/8)
    f16: Tensor  # (B, 1024, H/16, W/16)
    keys: Keys

    @property
    def size16(self) -> tuple[int, int]:
        return self.f16.shape[-2], self.f16.shape[-1]


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
        return FrameFeatures(f4, f8, f16, self.matcher(f16))

    def match(self, feats: FrameFeatures, state: VideoState, runtime: Runtime = DEFAULT_RUNTIME) -> Tensor:
        """Matching scores of every object: (B, N, 4 * branches, h, w).

        Per branch, in the official channel order: global bg, fg (against each object's first frame), then local bg,
        fg (against the previous frame). A similarity matrix depends only on the two frames, so each is computed
        once per frame and read out for all objects together.
        """
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

    def decode(self, feats: FrameFeatures, scores: Tensor, state: VideoState, runtime: Runtime = DEFAULT_RUNTIME
               ) -> Tensor:
        """-> logits (B, N, 2, H, W) for [bg, fg] of every object.

        Objects go through the decoder decoder_batch at a time, fewer if the memory budget says so; an object's logits
        do not depend on the others in its batch (up to float rounding, see decoder_batch).
        """
        proj = self.decoder.project(feats.f4, feats.f8, feats.f16)
        prev = state.prev_mask16.unflatten(3, feats.size16)  # (B, N, 2, h, w)
        n = scores.shape[1]
        chunk = min(n, runtime.decoder_batch or n)
        if chunk > 1:
            per_object = self.decoder.bytes_per_object(feats.f4, torch.promote_types(feats.f4.dtype, scores.dtype))
            chunk = decoder_chunk_size(runtime.budget_bytes(feats.f4.device), chunk, per_object)
        if chunk >= n:
            return self.decoder(proj, scores, prev)
        return torch.cat([self.decoder(proj, scores[:, s:s + chunk], prev[:, s:s + chunk]) for s in range(0, n, chunk)],
                         dim=1)  # (B, N, 2, H, W)

    # --- run-time ------------------------------------------------------------------------------------------------
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

    def predict(self, feats: FrameFeatures, state: VideoState, runtime: Runtime | None = None) -> Tensor:
        """Logits (B, N, 2, H, W) of every tracked object in a new frame."""
        runtime = runtime or DEFAULT_RUNTIME
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


def clip_forward(net: nn.Module, imgs: Tensor, first_masks: Tensor, aggregate: bool = False) -> Tensor:
    """The training forward of any method with the streaming interface: clips with only the first frame's mask
    given, one object (id 1); each frame's prediction becomes the next frame's previous mask.

    imgs: (B, L, 3, H, W) RGB in [0, 1]; first_masks: (B, H, W) with values 0/1.
    aggregate: False (EMVOS, as the official training): the previous soft mask is the softmax of the last logits.
    True (VideoMatch): it goes through aggregate_objects as at test time (for one object p^2 / (p^2 + (1 - p)^2)),
    so that an online-update threshold the test-time update reaches is reached in training too.
    Returns the logits of frames 1..L-1, (B, L-1, 2, H, W), with the padding to a multiple of 16 cropped off.
    """
    b, length, _, height, width = imgs.shape
    padding = get_padding(height, width)
    imgs = pad(imgs.flatten(0, 1), padding).unflatten(0, (b, length))
    first = pad_mask(first_masks, padding)
    feats = net.encode(imgs[:, 0])
    state = net.init_state(feats, one_hot(first, [1], imgs.dtype))
    logits = []
    for i in range(1, length):
        feats = net.encode(imgs[:, i])
        logit = net.predict(feats, state)  # (B, 1, 2, H, W)
        logits.append(logit[:, 0])
        if i < length - 1:
            probs = torch.softmax(logit, dim=2)
            net.update(state, feats, aggregate_objects(probs)[1] if aggregate else probs)
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
    labels = p.argmax(dim=1)
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
