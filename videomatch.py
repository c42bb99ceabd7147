"""VideoMatch (Hu, Huang and Schwing, "VideoMatch: Matching based Video Object Segmentation", ECCV 2018).

The second method, with the same streaming interface as EMVOS (`framework.VOSModel`: encode / init_state /
add_objects / predict / update / forward), so the same driver runs it and its objects go through the same soft
aggregation. There is no decoder network: the soft matching layer's scores, upsampled, are the logits.
Shapes: B clips, N objects, HW the positions of the stride-8 feature map (times the upsample factor), H x W the
(padded) frame.
"""

import math
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

import matching
from core import methods
from core.backbones import resnet_trunk, vgg19_features, vgg19_modules
from core.config_flags import check_config, option
from core.framework import DEFAULT_RUNTIME, Runtime, VOSModel, clip_forward
from training import samplers
from utils import VOSInputError

# The largest aggregated foreground probability (the probabilities `update` receives) an object can reach while both of
# its reference sets are non-empty. Every encoder here ends with a ReLU (VGG-19's after conv4_4, ResNet-101's layer2),
# so features are non-negative and cosine similarities lie in [0, 1]: the fg - bg gap of the soft matching layer is at
# most 1, one object's softmax at most e / (1 + e) = 0.731, and after soft aggregation (for one object
# p^2 / (p^2 + (1 - p)^2); more objects only lower it) at most e^2 / (1 + e^2) = 0.881. Symmetrically no background
# probability falls below 0.119, except where outlier removal sets the foreground to 0.
MAX_FG_PROBABILITY = math.exp(2) / (1 + math.exp(2))
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


# The backbone's layers up to stride 8 (torchvision names; the module names are kept, so `features.25` is conv4_4).
VIDEOMATCH_ENCODERS = {
    # The port (stashvala/Pytorch-VideoMatch, encoder.py) pops modules off the end of vgg19().features until two
    # max-pools are gone. That removes conv5_1..5_4 with them (its comment says only the max-pools go): 27 modules
    # remain, conv1_1 .. conv4_4 + ReLU, 12 convolutions, 3 max-pools.
    "vgg19": "the first 27 modules of vgg19().features",
    "vgg19_conv5": "every module of vgg19().features except the last two MaxPool2d",
    "resnet101": ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2"),
}


@dataclass
class VideoMatchConfig:
    """Hyper-parameters of VideoMatch. The defaults are the paper's (VGG-19, K = 20, d = 51, no online update), with
    VGG-19 truncated as the public PyTorch port does it (stashvala/Pytorch-VideoMatch), whose checkpoints load here."""

    # 'vgg19': the port's truncation, vgg19().features up to conv4_4 + ReLU (its first 27 modules, 3 max-pools,
    # stride 8); 'vgg19_conv5': this repository's earlier reading of "without the last two max-pools" (all 16
    # convolutions, max-pools 4 and 5 dropped, so conv5_1..5_4 run at stride 8; 4 more convolutions at stride 8,
    # untested against the port); 'resnet101': up to layer2 (stride 8). All give 512 channels.
    encoder: str = field(default="vgg19", metadata=option(
        "backbone up to stride 8: vgg19 (the port's, to conv4_4), vgg19_conv5 (all 16 convolutions), resnet101 (to "
        "layer2)", choices=tuple(VIDEOMATCH_ENCODERS), weights=True))
    # bilinear upsampling of the feature map: finer matching, at HW^2 cost (the port's 65.2: 1.8)
    upsample: float = field(default=1.0, metadata=option(
        "upsample factor of the stride-8 feature map before matching (the port's -uf; its 65.2 J&F used 1.8): "
        "finer matching at the square of the positions' cost", above=0))
    topk: int = field(default=20, metadata=option(
        "K: the soft matching layer averages the K best similarities in each set (paper Sec. 3.1)", low=1))
    dilation: int = field(default=51, metadata=option(
        "d: outlier removal keeps foreground inside the previous mask dilated by d x d pixels (Sec. 3.3); odd, 0 "
        "turns it off (the port's -ro, leave_outliers)", low=0, odd_or_zero=True))
    online_update: bool = field(default=False, metadata=option(
        "the online update of Sec. 3.3: the previous frame's confident positions join the reference sets"))
    # Confident: aggregated fg probability >= this (foreground) or <= 1 - this (background). It must lie below
    # MAX_FG_PROBABILITY (0.881), or no foreground position could join: with 0.9 none did. 0.8 means, for one
    # object, a softmax of 2/3, a fg - bg similarity gap of ln 2 = 0.69 (of at most 1).
    online_threshold: float = field(default=0.8, metadata=option(
        "confidence of the online update: aggregated foreground probability >= this (background <= 1 - this); "
        "in (0.5, 0.881]", above=0.5, high=1.0, used=lambda c: c.online_update, used_when="--online-update is on"))

    def __post_init__(self) -> None:
        check_config(self)
        if self.online_update and self.online_threshold > MAX_FG_PROBABILITY:
            raise ValueError(
                f"online_threshold {self.online_threshold} is out of reach: the encoder's features are non-negative, "
                f"so an aggregated foreground probability stays at or below {MAX_FG_PROBABILITY:.3f} (unless one of "
                f"an object's reference sets is empty) and the online update would add no foreground; use a "
                f"threshold in (0.5, 0.88], e.g. the default 0.8")


def vgg19_layers(name: str) -> list[str]:
    """The torchvision names of the `vgg19().features` modules an encoder keeps ('vgg19' or 'vgg19_conv5')."""
    modules = vgg19_modules()
    pools = [k for k, (_, kind, _, _) in enumerate(modules) if kind == "pool"]
    if name == "vgg19":  # the port: everything before the second-to-last max-pool
        return [m[0] for m in modules[:pools[-2]]]
    return [m[0] for k, m in enumerate(modules) if k not in pools[-2:]]


class VideoMatchEncoder(nn.Module):
    """The Siamese feature extractor: RGB in [0, 1] (B, 3, H, W) -> (B, 512, H/8 * f, W/8 * f), f the upsample factor.

    Weights are `features.<torchvision name>`, so ImageNet weights come from the torchvision file as they are; only
    the modules kept are built (backbones.py).
    """

    def __init__(self, name: str = "vgg19", pretrained: bool = False, upsample: float = 1.0):
        super().__init__()
        if name.startswith("vgg19"):
            self.features = vgg19_features(vgg19_layers(name), pretrained)
        else:
            self.features = resnet_trunk(name, 2, pretrained)
        self.upsample = upsample
        # ImageNet normalisation inside the network (the port does it in preprocessing, the same arithmetic)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

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

    def reference(self) -> tuple[Tensor, Tensor]:
        """The features (B, C, HW_r') and [bg, fg] sets (B, N, 2, HW_r') matched against: the given frames, plus the
        previous frame's confident positions when the online update is on."""
        if self.online_feats is None:
            return self.ref_feats, self.ref_sets
        return (torch.cat([self.ref_feats, self.online_feats], dim=2),
                torch.cat([self.ref_sets, self.online_sets], dim=3))


def object_masks(probs: Tensor) -> Tensor:
    """(B, N, 2, H, W) aggregated [1 - p, p] -> (B, N, H, W) bool: the pixels each object wins in the id mask.

    Background is what the objects leave, 1 - sum(p); ties go to the lower index, as in aggregate_objects. With one
    object this is p > 0.5.
    """
    fg = probs[:, :, 1]
    # max().indices: the same first-maximum rule as argmax, many times faster over a short dimension on CPU
    winner = torch.cat([1 - fg.sum(dim=1, keepdim=True), fg], dim=1).max(dim=1).indices  # (B, H, W) in 0..N
    ids = torch.arange(1, fg.shape[1] + 1, device=fg.device).view(1, -1, 1, 1)
    return winner.unsqueeze(1) == ids


class VideoMatch(nn.Module, VOSModel):
    """Siamese encoder + soft matching layer (top-K mean of cosine similarities) + outlier removal."""

    stride = 8  # of the encoder's features: frames are padded to a multiple of it (framework.VOSModel)

    def __init__(self, config: VideoMatchConfig | None = None, pretrained: bool = False):
        super().__init__()
        self.config = config or VideoMatchConfig()
        self.encoder = VideoMatchEncoder(self.config.encoder, pretrained, self.config.upsample)
        # Query positions per top-K chunk of the soft matching layer (matching.soft_match), a bound on its
        # temporaries; None: all at once. How to run, not what the model is, so not part of the config.
        self.topk_chunk: int | None = None

    def train(self, mode: bool = True) -> "VideoMatch":
        super().train(mode)
        # BatchNorm statistics stay frozen (ResNet-101; VGG-19 has none): the port's batch is one pair, whose two
        # frames cannot estimate them (the port leaves them in train mode, so its running statistics drift with each
        # pair); frozen, they keep ImageNet's, as EMVOS's training does.
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.eval()
        return self

    # --- the three named steps ----------------------------------------------------------------------------------
    def encode(self, img: Tensor) -> Tensor:
        """img: (B, 3, H, W) RGB in [0, 1], H and W multiples of 8 -> (B, C, h, w) features, unit norm per position."""
        return F.normalize(self.encoder(img), dim=1, eps=1e-12)

    def match(self, feats: Tensor, state: MatchState, runtime: Runtime = DEFAULT_RUNTIME) -> Tensor:
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

    def frame_bytes(self, height: int, width: int, element_size: int = 4) -> int:
        """Bytes of one frame's largest temporaries that the memory budget cannot tile: the (HW_r, HW_q) cosine
        similarity of stride-8 positions (the given frame as reference; the online update adds the last frame) and
        the top-K's masked copy of it (segmenter.check_frame_memory refuses a frame they cannot fit)."""
        positions = -(-height // self.stride) * -(-width // self.stride)
        refs = 2 if self.config.online_update else 1
        return 2 * refs * positions * positions * element_size

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

    def remove_object(self, state: MatchState, slot: int) -> None:
        """Forget the object in `slot`: its [bg, fg] sets and previous mask go, and the reference positions no object
        selects any more (those of a frame whose every object is gone) leave the similarity matrix."""
        keep = [i for i in range(state.ref_sets.shape[1]) if i != slot]
        state.ref_sets = state.ref_sets[:, keep]
        state.prev_mask = state.prev_mask[:, keep]
        if state.online_sets is not None:
            state.online_sets = state.online_sets[:, keep]
        used = state.ref_sets.flatten(0, 2).any(dim=0)  # (HW_r,)
        if not bool(used.all()):
            state.ref_feats = state.ref_feats[:, :, used]
            state.ref_sets = state.ref_sets[..., used]

    def update(self, state: MatchState, feats: Tensor, probs: Tensor) -> None:
        """After a frame, with the aggregated soft masks probs (B, N, 2, H, W), as the segmenter (segmenter.py) and
        `forward` pass them: framework.aggregate_objects of the softmax of `predict`'s logits.

        Its id mask becomes the previous mask of outlier removal. With the online update (Sec. 3.3), this frame's
        confidently predicted positions (matching.confident_sets: cell-averaged foreground probability >=
        online_threshold, or <= 1 - online_threshold for background) extend the given frame's sets until the next
        frame replaces them: the references are the given frames plus the last frame, so time and memory per frame
        stay constant however long the video. The paper's notes here do not fix the threshold; it must stay below
        MAX_FG_PROBABILITY (0.881), the most a foreground probability can reach with non-negative features (the
        config refuses more). Where outlier removal zeroed the foreground, the positions are confident background.
        """
        state.prev_mask = object_masks(probs)
        if self.config.online_update:
            state.online_feats = feats.flatten(2)
            state.online_sets = matching.confident_sets(probs[:, :, 1], feats.shape[-2:], self.config.online_threshold)

    def predict(self, feats: Tensor, state: MatchState, runtime: Runtime | None = None,
                remove_outliers: bool | None = None) -> Tensor:
        """Logits (B, N, 2, H, W) of every tracked object in a new frame.

        Outlier removal (Sec. 3.3, off when dilation is 0) gives foreground outside each object's previous mask
        dilated by d x d the lowest logit, so its probability is exactly 0 and the pixel cannot be the object's.
        remove_outliers None: on in eval mode, off in training (a test-time step, and it would cut the gradient
        there); False: the soft matching layer's output as it is (visualize.probability_maps, as the port's
        `videomatch.py REF.jpg REF.png IMG...` shows it).
        """
        logits = self.decode(self.match(feats, state, runtime or DEFAULT_RUNTIME), tuple(state.prev_mask.shape[-2:]))
        if remove_outliers is None:
            remove_outliers = not self.training
        if remove_outliers and self.config.dilation:
            keep = matching.dilate_mask(state.prev_mask, self.config.dilation)  # (B, N, H, W)
            fg = logits[:, :, 1].masked_fill(~keep, torch.finfo(logits.dtype).min)
            logits = torch.stack([logits[:, :, 0], fg], dim=2)
        return logits

    # --- training forward ------------------------------------------------------------------------------------------
    def forward(self, imgs: Tensor, first_masks: Tensor) -> Tensor:
        """Training forward: clips (B, L, 3, H, W) RGB in [0, 1], first masks (B, H, W) in {0, 1} -> the logits of
        frames 1..L-1, (B, L-1, 2, H, W), the padding to a multiple of the stride (8) cropped off.

        The paper and the port train on pairs (L = 2): the first frame's mask given, the second predicted; `update`
        is never called then. Longer clips carry the previous mask along and, with the online update, the confident
        sets, from the probabilities `update` gets at test time (the softmax through framework.aggregate_objects, which
        for one object is p^2 / (p^2 + (1 - p)^2)), so a threshold that the test-time update reaches is reached here
        too (EMVOS's training passes the plain softmax, as the official code, which here never leaves [0.27, 0.73]).
        No outlier removal in training.
        """
        return clip_forward(self, imgs, first_masks, aggregate=True)


# --- checkpoints of the port (stashvala/Pytorch-VideoMatch) -------------------------------------------------------
# The port saves `Encoder.feat_ext.state_dict()` as a plain dict: for VGG-19 the truncated `features` Sequential
# ('0.weight' ... '25.bias': conv1_1 .. conv4_4), for ResNet-101 the whole torchvision model (its layer3, layer4 and
# fc included, unused). Here the same tensors are `encoder.features.<name>`, so a port file is a renaming.

@cache
def encoder_shapes(name: str) -> dict[str, tuple[int, ...]]:
    """The `features` state-dict keys and shapes of an encoder (built on the meta device: no memory, no weights)."""
    with torch.device("meta"):
        features = VideoMatchEncoder(name).features
    return {k: tuple(v.shape) for k, v in features.state_dict().items()}


def port_config(weights: Mapping[str, Tensor]) -> dict | None:
    """{'encoder': ...} for a port checkpoint (VGG-19 up to conv4_4, or a whole ResNet-101), else None."""
    if any(k.startswith("encoder.") for k in weights):
        return None  # this repository's own layout

    def fits(name: str, keys: set) -> bool:
        shapes = encoder_shapes(name)
        return keys == set(shapes) and all(tuple(weights[k].shape) == s for k, s in shapes.items())

    if fits("vgg19", set(weights)):
        return {"encoder": "vgg19"}
    # ResNet-101: the stride-8 part exactly; anything else only layer3 (23 blocks, as ResNet-101's), layer4 and fc
    head = {k for k in weights if k.split(".")[0] in VIDEOMATCH_ENCODERS["resnet101"]}
    rest = set(weights) - head
    layer3 = {k.split(".")[1] for k in rest if k.startswith("layer3.")}
    if (fits("resnet101", head) and all(k.split(".")[0] in ("layer3", "layer4", "fc") for k in rest)
            and layer3 in (set(), {str(i) for i in range(23)})):
        return {"encoder": "resnet101"}
    return None


def from_port(weights: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """A checkpoint's keys -> this module's: a port file renamed (unused ResNet layers dropped, the constant
    normalisation buffers added); a file in this repository's layout as it is."""
    config = port_config(weights)
    if config is None:
        return dict(weights)
    state = {f"encoder.features.{k}": weights[k] for k in encoder_shapes(config["encoder"])}
    state["encoder.mean"] = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    state["encoder.std"] = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return state


# --- VideoMatch training losses (paper Sec. 4: BCE, class-balanced BCE or Dice on the foreground probability) ---
# Each takes logits (..., 2, H, W) [bg, fg] and targets (..., H, W) in {0, 1} and returns a scalar, computed in fp32
# (under --amp the logits come out in bf16 / fp16).

def bce_loss(logits: Tensor, target: Tensor) -> Tensor:
    """Binary cross-entropy of the foreground probability, averaged over pixels and frames.

    From log_softmax of the two logits (numerically stable); for two classes it equals the cross-entropy EMVOS uses.
    """
    logp = torch.log_softmax(logits.float(), dim=-3)
    t = target.to(logp.dtype)
    return -(t * logp[..., 1, :, :] + (1 - t) * logp[..., 0, :, :]).mean()


def balanced_bce_loss(logits: Tensor, target: Tensor) -> Tensor:
    """Class-balanced BCE (HED, Xie and Tu 2015; OSVOS): per frame, foreground pixels weigh beta = the share of
    background pixels and background pixels 1 - beta, so a small object counts as much as the background around it.
    Averaged over pixels and frames."""
    logp = torch.log_softmax(logits.float(), dim=-3)
    t = target.to(logp.dtype)
    beta = 1 - t.mean(dim=(-2, -1), keepdim=True)  # (..., 1, 1)
    return -(beta * t * logp[..., 1, :, :] + (1 - beta) * (1 - t) * logp[..., 0, :, :]).mean()


def dice_loss(logits: Tensor, target: Tensor, eps: float = 1.0) -> Tensor:
    """Soft Dice loss (Milletari et al., 2016): 1 - (2 |P T| + eps) / (|P| + |T| + eps) per frame, P the foreground
    probabilities, averaged over frames. eps keeps a frame without object (P, T ~ 0) at a loss near 0, not 0 / 0."""
    p = torch.softmax(logits.float(), dim=-3)[..., 1, :, :].flatten(-2)  # (..., HW)
    t = target.flatten(-2).to(p.dtype)
    return (1 - (2 * (p * t).sum(-1) + eps) / (p.sum(-1) + t.sum(-1) + eps)).mean()


LOSSES = {"bce": bce_loss, "balanced_bce": balanced_bce_loss, "dice": dice_loss}


# --- the training recipe ------------------------------------------------------------------------------------------
# The port's training data: every frame pair, selected on held-out pairs.

def _open_pairs(stage: methods.StageConfig, ctx: methods.StageContext) -> samplers.TrainPairs:
    if stage.clip_len != 2:
        raise VOSInputError(f"stage {stage.name} trains on frame pairs; --clip-len must be 2")
    if ctx.world > 1:  # each process would go through every pair: no DistributedSampler here
        raise VOSInputError(f"stage {stage.name} (every frame pair, batch 1 as the port) runs in one process; "
                            f"start it with python run.py, not torchrun")
    return samplers.TrainPairs(ctx.roots.davis, year=ctx.davis_year or "2016", output_size=tuple(stage.crop))


@dataclass
class HeldoutPairs:
    """Mean foreground IoU over the held-out pairs (resized, not augmented): the port's validation score
    (segmentation_IOU: foreground probability >= 0.5 against the mask, 1 when both are empty), here the model
    selection of the pairs stage. It scores the matching as trained: the forward in training mode, without test-time
    outlier removal (which the port's validation does not run either), under no_grad."""

    data: samplers.TrainPairs
    device: torch.device

    @property
    def title(self) -> str:
        return f"IoU on {len(self.data.heldout_pairs)} held-out pairs"

    def __call__(self, net: nn.Module) -> float:
        ious = []
        net.train()  # VideoMatch: no outlier removal (BatchNorm stays frozen either way)
        with torch.no_grad():
            for k in range(len(self.data.heldout_pairs)):
                pair = self.data.heldout_pair(k)
                imgs, masks = pair["imgs"][None].to(self.device), pair["masks"][None].to(self.device)
                fg = torch.softmax(net(imgs, masks[:, 0]).float(), dim=2)[:, :, 1] >= 0.5  # (1, 1, H, W)
                gt = masks[:, 1:] == 1
                union = (fg | gt).sum().item()
                ious.append((fg & gt).sum().item() / union if union else 1.0)
        return sum(ious) / max(len(ious), 1)


DAVIS_PAIRS = methods.StageData(
    "davis_pairs", "davis", "JPEGImages/480p, Annotations/480p and ImageSets/ of DAVIS (2016 for VideoMatch's port "
    "recipe; the original DAVIS 2016 download works too)", _open_pairs,
    lambda s, data, c: HeldoutPairs(data, c.device) if data.heldout_pairs else None, "val_pairs_iou")


def _draw_as_before(batch: methods.Batch, stage: methods.StageConfig) -> methods.Batch:
    """VideoMatch has no batch transform: the batch goes on as the sampler gave it. It draws one number from
    Python's generator all the same: until each method carried its own recipe, the trainer drew EMVOS's
    swap-and-attach number for every method's batches, and with --workers 0 the samplers draw from that generator
    too, so without the draw a run with those flags would train on other clips than it did, and a checkpoint
    written then would resume on other clips than the interrupted run would have drawn."""
    random.random()
    return batch


# VideoMatch. "davis" is the public PyTorch port's recipe (stashvala/Pytorch-VideoMatch, main.py defaults; J&F 65.2 on
# DAVIS 2016 val with VGG-19 and upsample 1.8): every pair (i < j) of frames of each DAVIS 2016 train sequence once
# per epoch (samplers.TrainPairs; its --iters is --clips-per-epoch, 0 = all), each frame augmented on its own and
# resized to 480x854 (samplers.PortAugmentation), batch 1, Dice, Adam lr 1e-5 with weight decay 5e-4, one epoch, and
# the model kept by its foreground IoU on 0.25 % of the pairs held out (the port reports that IoU; selecting on it,
# rather than on DAVIS val, keeps the test set out of training). The whole network trains (BatchNorm frozen).
# "davis_clips" and "ytvos" are this repository's earlier recipe, kept reachable with --stages: consecutive frames
# (pairs of clip_len 2), EMVOS's crop rule squashed to 384x384 (on 16:9 frames a centred 640x480 crop, so objects
# are distorted by 4:3 -> 1:1 unlike at test time), batch 8, selection on DAVIS val J&F. No swap-and-attach:
# that is EMVOS's augmentation (its stages are model.EMVOSStage; these are plain ones, so --swap-above is refused).
VIDEOMATCH_STAGES = {
    "davis": methods.StageConfig("davis", "videomatch_davis", DAVIS_PAIRS, clip_len=2, clips_per_epoch=0,
                                 batch_size=1, epochs=1, save_every=1, val_every=1, crop=(480, 854), lr=1e-5,
                                 weight_decay=5e-4),
    "davis_clips": methods.StageConfig("davis_clips", "videomatch_davis_clips", methods.DAVIS_CLIPS, clip_len=2,
                                       clips_per_epoch=128, batch_size=8, epochs=2000, save_every=1000,
                                       val_every=100, lr=1e-5, weight_decay=5e-4),
    "ytvos": methods.StageConfig("ytvos", "videomatch_ytvos", methods.YTVOS_CLIPS, clip_len=2, clips_per_epoch=128,
                                 batch_size=8, epochs=2000, save_every=1000, val_every=0, lr=1e-5, weight_decay=5e-4),
    # every other dataset module's training split (methods.benchmark_clips) with the ytvos stage's settings, and
    # fine-tuning on one's own videos (from --init), selected on its held-out videos (--val-sequences); --stages a+b
    # mixes clip stages
    **{name: methods.StageConfig(name, f"videomatch_{name}", data, clip_len=2, clips_per_epoch=128, batch_size=8,
                                 epochs=2000 if not data.holds_out else 200, save_every=1000 if not data.holds_out
                                 else 100, val_every=0 if not data.holds_out else 20, lr=1e-5, weight_decay=5e-4)
       for name, data in methods.benchmark_clips().items()},
}


# --- the registry entry (methods.METHOD_MODULES lists this module) ------------------------------------------------
# Reads the port's checkpoints (its encoder's plain state dict) beside this repository's own files.
METHOD = methods.Method(
    "videomatch", VideoMatch, VideoMatchConfig, "videomatch_davis_best.pth", VIDEOMATCH_STAGES, ("davis",), LOSSES,
    "dice", from_file=from_port, infer_config=port_config, transforms=(methods.BatchTransform(_draw_as_before),))
