"""The methods this repository implements, in one table.

A method is a model class that meets `VOSModel` (framework.py; re-exported here) plus one `Method` entry in
`METHODS`: its config class, default weights, training stages and losses. A training stage (`StageConfig`) names
its `StageData`: the factory of its training data and its model selection (`Selection`), so the trainer runs every
stage the same way. run.py, the trainer, the checkpoint code and bench.py read this table and nothing else, so
adding a method means writing its module and calling `register(Method(...))` (tests/test_extend.py registers a tiny
one and runs it through `run.py --test` and a training step).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn as nn
from torch import Tensor
from torch.overrides import TorchFunctionMode

import model
import videomatch
from core import config_flags
from core.framework import VOSModel as VOSModel  # re-exported: the interface each method's class meets
from core.weights import OFFICIAL_BLOB_IDS, as_state_dict, check_finite, load_file
from dataset import Roots
from training import samplers
from training.samplers import TrainSet
from utils import VOSInputError


class Selection(Protocol):
    """A stage's model selection: a score of the model as it is now (higher is better); the best so far is kept as
    `<save_name>_best.pth`."""

    title: str  # what the messages call the score, e.g. 'DAVIS 2017 val J&F'

    def __call__(self, net: nn.Module) -> float | None:
        """The score; None when a stop (Ctrl+C) came half way (the trainer saves, and the resumed run scores again)."""


@dataclass(frozen=True)
class StageContext:
    """What the trainer hands a stage's data factory and selection."""

    roots: Roots
    davis_year: str | None  # --davis-year; None: the data's own default
    world: int  # processes in the job; each draws an equal share of an epoch's clips
    device: torch.device
    # J&F on DAVIS val through the driver of `run.py --test`, opened on the first call and shared by the stages;
    # None when that DAVIS val is not on disk (the trainer says so once)
    davis_val: Callable[[], Selection | None]


@dataclass(frozen=True)
class StageData:
    """What a stage trains on and how it selects its model; the trainer knows stages by nothing else."""

    name: str  # what the messages call the data
    root: str  # the field of dataset.Roots it reads, which is also its flag (--davis, --ytvos, --coco)
    holds: str  # what that folder must hold, for the message when it is missing
    open: Callable[[StageConfig, StageContext], TrainSet]  # the stage's training data (its check() not yet run)
    # the stage's model selection, given its training data; None: nothing to select on (the last weights stand)
    selection: Callable[[StageConfig, TrainSet, StageContext], Selection | None]
    column: str  # the train_log.csv column that records the selection's score


@dataclass(frozen=True)
class StageConfig:
    """One training stage. EMVOS's presets are the official run.py's train_coco / train_davis / train_ytvos."""

    name: str  # what --stages calls it
    save_name: str  # checkpoint prefix, the official one: '<save_name>_best.pth', '<save_name>_<epoch:04d>.pth'
    data: StageData  # its training data and model selection (COCO_CLIPS, DAVIS_CLIPS, YTVOS_CLIPS, DAVIS_PAIRS)
    clip_len: int  # frames per clip; the loss covers frames 1..clip_len-1
    clips_per_epoch: int  # an epoch draws this many items (the official clip_n); DAVIS_PAIRS: 0 = every pair
    batch_size: int  # clips per optimizer step, over all processes together
    epochs: int
    save_every: int  # write '<save_name>_<epoch:04d>.pth' every this many epochs (and after the last one)
    val_every: int  # run the data's model selection every this many epochs; 0 = never
    crop: tuple[int, int] = (384, 384)  # clip size (H, W) after the random resized crop
    lr: float = 1e-4  # Adam, no schedule (official)
    weight_decay: float = 0.0  # official: none
    swap_above: float = 0.8  # swap-and-attach when random.random() > this (p = 0.2); the official comparison

    def record(self) -> dict:
        """The stage as plain values (its data by name), as a checkpoint records it."""
        return {**{k: v for k, v in vars(self).items() if k != "data"}, "data": self.data.name}


Loss = Callable[[Tensor, Tensor], Tensor]  # logits (B, L-1, 2, H, W), gt (B, L-1, H, W) in {0, 1} -> scalar


@dataclass(frozen=True)
class Method:
    """One row of the table: everything run.py, the trainer and the checkpoint code need to know of a method."""

    name: str
    model: type[nn.Module]  # its class meets VOSModel; built as model(config, pretrained=...)
    config: type  # the model's config dataclass
    weights: str  # default checkpoint of `run.py --test`: a file name in trained_model/
    stages: dict[str, StageConfig]  # training presets by name
    default_stages: tuple[str, ...]  # what `run.py --train` runs with no --stages
    losses: dict[str, Loss]  # what --loss may pick
    default_loss: str
    compilable: bool = False  # --compile is implemented (model.compile_modules())
    # the file's key layout <-> this repository's state-dict keys (EMVOS: the official 'vos.' prefix)
    to_file: Callable[[Mapping[str, Tensor]], dict[str, Tensor]] = dict
    from_file: Callable[[Mapping[str, Tensor]], dict[str, Tensor]] = dict
    # whether a model of this config is written as a plain state dict (the official layout) rather than with its
    # method and config beside the weights
    plain: Callable[[Any], bool] = lambda config: False
    # the config of a plain state dict in this method's file layout (from its keys and shapes), or None if not one
    infer_config: Callable[[Mapping[str, Tensor]], dict | None] = lambda weights: None


# EMVOS's training data: the official loaders' clips; the model is selected on DAVIS val J&F, as the official trainer
# validates on DAVIS 2017 val.
def _clip_args(stage: StageConfig, ctx: StageContext) -> dict:
    if stage.clips_per_epoch < 1:
        raise VOSInputError(f"--clips-per-epoch must be at least 1 (stage {stage.name})")
    return {"output_size": tuple(stage.crop), "clip_len": stage.clip_len,
            "clips_per_epoch": stage.clips_per_epoch // ctx.world}


def _davis_val(stage: StageConfig, data: TrainSet, ctx: StageContext) -> Selection | None:
    return ctx.davis_val()


COCO_CLIPS = StageData(
    "coco", "coco", "train2017/ + annotations/instances_train2017.json, or the converted JPEGImages/ + Annotations/ "
    "of the official code", lambda s, c: samplers.TrainCOCO(c.roots.coco, **_clip_args(s, c)), _davis_val, "val_jf")
DAVIS_CLIPS = StageData(
    "davis", "davis", "JPEGImages/480p, Annotations/480p and ImageSets/ of DAVIS-2017-trainval-480p",
    lambda s, c: samplers.TrainDAVIS(c.roots.davis, year=c.davis_year or "2017", split="train", **_clip_args(s, c)),
    _davis_val, "val_jf")
YTVOS_CLIPS = StageData(
    "ytvos", "ytvos", "train/JPEGImages, train/Annotations (and train/meta.json) of YouTube-VOS 2018",
    lambda s, c: samplers.TrainYTVOS(c.roots.ytvos, **_clip_args(s, c)), _davis_val, "val_jf")

EMVOS_STAGES = {
    "coco": StageConfig("coco", "coco", COCO_CLIPS, clip_len=5, clips_per_epoch=128, batch_size=16, epochs=8000,
                        save_every=4000, val_every=400),
    "davis": StageConfig("davis", "coco_davis", DAVIS_CLIPS, clip_len=10, clips_per_epoch=128, batch_size=8,
                         epochs=4000, save_every=2000, val_every=200),
    # The official train_ytvos passes val_set=None: no validation, so its best checkpoint is the last one here.
    # --val-every N turns DAVIS validation on for it.
    "ytvos": StageConfig("ytvos", "coco_ytvos", YTVOS_CLIPS, clip_len=10, clips_per_epoch=128, batch_size=8,
                         epochs=8000, save_every=2000, val_every=0),
}


# VideoMatch's training data as the public port draws it: every frame pair, selected on held-out pairs.
def _open_pairs(stage: StageConfig, ctx: StageContext) -> samplers.TrainPairs:
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


DAVIS_PAIRS = StageData(
    "davis_pairs", "davis", "JPEGImages/480p, Annotations/480p and ImageSets/ of DAVIS (2016 for VideoMatch's port "
    "recipe; the original DAVIS 2016 download works too)", _open_pairs,
    lambda s, data, c: HeldoutPairs(data, c.device) if data.heldout_pairs else None, "val_pairs_iou")

# VideoMatch. "davis" is the public PyTorch port's recipe (stashvala/Pytorch-VideoMatch, main.py defaults; J&F 65.2 on
# DAVIS 2016 val with VGG-19 and upsample 1.8): every pair (i < j) of frames of each DAVIS 2016 train sequence once
# per epoch (samplers.TrainPairs; its --iters is --clips-per-epoch, 0 = all), each frame augmented on its own and
# resized to 480x854 (samplers.PortAugmentation), batch 1, Dice, Adam lr 1e-5 with weight decay 5e-4, one epoch, and
# the model kept by its foreground IoU on 0.25 % of the pairs held out (the port reports that IoU; selecting on it,
# rather than on DAVIS val, keeps the test set out of training). The whole network trains (BatchNorm frozen).
# "davis_clips" and "ytvos" are this repository's earlier recipe, kept reachable with --stages: consecutive frames
# (pairs of clip_len 2), EMVOS's crop rule squashed to 384x384 (on 16:9 frames a centred 640x480 crop, so objects
# are distorted by 4:3 -> 1:1 unlike at test time), batch 8, selection on DAVIS val J&F. No swap-and-attach:
# that is EMVOS's augmentation.
VIDEOMATCH_STAGES = {
    "davis": StageConfig("davis", "videomatch_davis", DAVIS_PAIRS, clip_len=2, clips_per_epoch=0, batch_size=1,
                         epochs=1, save_every=1, val_every=1, crop=(480, 854), lr=1e-5, weight_decay=5e-4,
                         swap_above=1.0),
    "davis_clips": StageConfig("davis_clips", "videomatch_davis_clips", DAVIS_CLIPS, clip_len=2, clips_per_epoch=128,
                               batch_size=8, epochs=2000, save_every=1000, val_every=100, lr=1e-5, weight_decay=5e-4,
                               swap_above=1.0),
    "ytvos": StageConfig("ytvos", "videomatch_ytvos", YTVOS_CLIPS, clip_len=2, clips_per_epoch=128, batch_size=8,
                         epochs=2000, save_every=1000, val_every=0, lr=1e-5, weight_decay=5e-4, swap_above=1.0),
}

# Where checkpoints live: the authors' files are fetched here on first use, --train writes here by default.
TRAINED_MODEL = Path(__file__).resolve().parents[1] / "trained_model"

METHODS: dict[str, Method] = {}


def register(method: Method) -> Method:
    """Add a method to the table (or replace the entry of that name)."""
    METHODS[method.name] = method
    return method


def config_classes() -> dict[str, type]:
    """method name -> its config dataclass, for the model flags (config_flags.add_model_flags)."""
    return {m.name: m.config for m in METHODS.values()}


def get(name: str) -> Method:
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose from {', '.join(METHODS)}")
    return METHODS[name]


register(Method("emvos", model.EMVOS, model.ModelConfig, "coco_davis_best.pth", EMVOS_STAGES,
                ("coco", "davis"), {"cross_entropy": model.emvos_loss}, "cross_entropy", compilable=True,
                to_file=model.to_official, from_file=model.from_official, plain=model.is_official_architecture,
                infer_config=model.official_config))
# Reads the port's checkpoints (its encoder's plain state dict) beside this repository's own files.
register(Method("videomatch", videomatch.VideoMatch, videomatch.VideoMatchConfig,
                "videomatch_davis_best.pth", VIDEOMATCH_STAGES, ("davis",), videomatch.LOSSES, "dice",
                from_file=videomatch.from_port, infer_config=videomatch.port_config))


# ---------------------------------------------------------------------------------------------------------------
# building models and checkpoints
# ---------------------------------------------------------------------------------------------------------------

def build_model(method: str = "emvos", config: dict | None = None, pretrained: bool = False) -> nn.Module:
    """A fresh model by method name, from a config dict (as stored in checkpoints) or the defaults."""
    spec = get(method)
    return spec.model(spec.config(**(config or {})), pretrained=pretrained)


def default_weights(method: str, folder: Path = TRAINED_MODEL) -> Path:
    """The checkpoint a run without --weights uses: `folder/<the method's file>`. An official file may be missing (it
    is fetched on first use); any other method's file has nowhere to come from, so its absence is an error here."""
    path = Path(folder) / get(method).weights
    if path.name not in OFFICIAL_BLOB_IDS and not path.is_file():
        raise VOSInputError(f"no {method} weights at {path}, and none are published to download; train them with "
                            f"`python run.py --train --method {method}`, or pass --weights PATH to a {method} "
                            f"checkpoint")
    return path


def weights_payload(net: nn.Module, method: str) -> dict:
    """What a weights file holds. A method with an official layout (EMVOS with the official architecture) gets
    exactly that: a plain state dict with the official keys, which the authors' code loads with
    `load_state_dict(torch.load(path))`. Otherwise the weights plus what rebuilds the model: {model, method, config}.
    """
    spec = get(method)
    weights = spec.to_file(net.state_dict())
    if spec.plain(net.config):
        return weights
    return {"model": weights, "method": method, "config": asdict(net.config)}


def recognise(weights: Mapping[str, Tensor]) -> tuple[str, dict] | None:
    """(method, config) of a plain state dict, from its keys and shapes; None when no registered method owns it."""
    for spec in METHODS.values():
        config = spec.infer_config(weights)
        if config is not None:
            return spec.name, config
    return None


def load_weights(path: str | Path, what: str = "--weights", overrides: dict | None = None) -> tuple[nn.Module, dict]:
    """Build the model a weights file describes and load it (strict). Returns (model on CPU in eval mode, metadata).

    Reads a plain state dict (an official EMVOS checkpoint, or any layout a method's `infer_config` recognises), a
    {model, method, config} file, or the training state `X.train.pth` that `run.py --train` writes beside `X.pth`.
    overrides: config fields to set on top of the file's (e.g. train_encoder for --init --train-encoder, the model
    flags of --test); `check_overrides` refuses those the weights cannot take. The metadata holds the file's other
    entries, the method, `config` (the one built) and `file_config` (the file's own, or the one inferred from it).
    Every failure is a VOSInputError that names the file (`what` names the flag it came from).
    """
    obj = load_file(path, what)
    if isinstance(obj, dict) and "optimizer" in obj and "weights" in obj:  # a training state: its weights
        obj = obj["weights"]
    return model_from_payload(obj, Path(path), what, overrides=overrides)


def check_overrides(method: str, file_config: dict, overrides: Mapping[str, Any], path: Path, what: str) -> None:
    """Refuse config overrides that the weights in `path` cannot take: a field of another method, or a field the
    weights fix (config_flags.option(weights=True): encoder, branches, key width) set to another value than the
    file's. Fields that leave the tensors as they are (VideoMatch's upsample, K, d, online update; EMVOS's K) pass."""
    spec = get(method)
    declared = config_flags.options(spec.config)
    own = {f.name for f in fields(spec.config)}
    try:
        held = asdict(spec.config(**file_config))  # the file's config with the defaults it left out
    except (TypeError, ValueError) as e:
        raise VOSInputError(f"{what} {path}: its {method} config {file_config} is not valid here ({e})") from e
    for name, value in overrides.items():
        flag = config_flags.flag_name(name)
        if name not in own:
            owners = [m.name for m in METHODS.values() if name in {f.name for f in fields(m.config)}]
            raise VOSInputError(f"{flag} is a flag of {' and '.join(owners) or 'no method'}, and {what} {path} holds "
                                f"a {method} model; drop {flag}")
        if name in declared and declared[name]["weights"] and _same(value) != _same(held[name]):
            shown = " ".join(held[name]) if isinstance(held[name], tuple) else held[name]
            raise VOSInputError(f"{flag} {' '.join(value) if isinstance(value, (list, tuple)) else value}: {what} "
                                f"{path} holds a {method} model with {name} {shown}, which its weights fix; drop "
                                f"{flag} (or pass weights trained with it)")


def _same(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def model_from_payload(payload: object, path: Path, what: str, config: dict | None = None,
                       overrides: dict | None = None) -> tuple[nn.Module, dict]:
    """The model a loaded weights payload (what `weights_payload` writes, or an official / port state dict) holds.

    config: the config to build with when the caller knows it (a training state records it); by default the file's
    own, or the one its method infers from the keys.
    """
    state, meta = as_state_dict(payload, path, what)
    if "method" in meta:
        method, file_config = meta["method"], meta.get("config") or {}
        if method not in METHODS:
            raise VOSInputError(f"{what} {path} holds a {method!r} model, which this repository does not implement "
                                f"(methods: {', '.join(METHODS)})")
    else:
        found = recognise(state)
        if found is None:
            keys = ", ".join(list(state)[:3])
            raise VOSInputError(f"{what} {path} holds a state dict of {len(state)} tensors ({keys}, ...) that is not "
                                f"the weights of any method here ({', '.join(METHODS)}); pass an EMVOS or VideoMatch "
                                f"checkpoint")
        method, file_config = found
    base = file_config if config is None else config
    if overrides:
        check_overrides(method, base, overrides, path, what)
    config = {**base, **overrides} if overrides else dict(base)
    check_finite(state, path, what)
    state = get(method).from_file(state)
    check_config_fits(method, config, state, path, what)  # on the meta device: nothing allocated yet
    try:
        net = build_model(method, config)
    except (TypeError, ValueError) as e:
        raise VOSInputError(f"{what} {path}: its {method} config {config} is not valid here ({e})") from e
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise VOSInputError(f"{what} {path} does not fit the {method} model with config {net.config}: "
                            f"{str(e).splitlines()[0][:300]}") from e
    # the config built (the overrides applied) wins over the file's own entry of that name
    return net.eval(), {**meta, "method": method, "config": config, "file_config": base}


class _SkipInPlace(TorchFunctionMode):
    """In-place ops on meta tensors do nothing: a meta tensor has no values, and torch runs an initialiser's
    `normal_` on one through its Python reference implementation, which makes a meta build slower than a real one."""

    def __torch_function__(self, func: Callable, types: tuple, args: tuple = (), kwargs: dict | None = None) -> Any:
        name = getattr(func, "__name__", "")
        in_place = name.endswith("_") and not name.startswith("__")
        if in_place and args and isinstance(args[0], Tensor) and args[0].is_meta:
            return args[0]
        return func(*args, **(kwargs or {}))


def _meta_mismatch(method: str, config: dict, state: Mapping[str, Tensor]) -> tuple[str, tuple, tuple | None] | str:
    """Build the model of `config` on the meta device (shapes only, no memory, so `key_dim: 10**7` costs nothing) and
    compare it with `state` (this repository's keys). '' when they fit; else (key, shape in the file, shape the
    config builds or None when the config has no such tensor), or the build error's text."""
    try:
        with torch.device("meta"), _SkipInPlace():
            shapes = {k: tuple(v.shape) for k, v in build_model(method, config).state_dict().items()}
    except (TypeError, ValueError, RuntimeError, OverflowError) as e:  # e.g. a negative or astronomic channel count
        return str(e).splitlines()[0][:200] if str(e) else type(e).__name__
    for k, v in state.items():
        if shapes.get(k) != tuple(v.shape):
            return k, tuple(v.shape), shapes.get(k)
    missing = [k for k in shapes if k not in state]
    return (missing[0], (), shapes[missing[0]]) if missing else ""


def _field_tensor(method: str, fitting: dict, name: str, state: Mapping[str, Tensor]) -> str:
    """A tensor of `state` whose shape follows the integer field `name` (the first that changes when it grows by
    one); the first tensor when the field is not an integer."""
    value = fitting[name]
    if isinstance(value, int) and not isinstance(value, bool):
        found = _meta_mismatch(method, {**fitting, name: value + 1}, state)
        if isinstance(found, tuple) and found[0] in state:
            return found[0]
    return next(iter(state))


def check_config_fits(method: str, config: dict, state: Mapping[str, Tensor], path: Path, what: str) -> None:
    """The config a file records against its tensors, before the model is built: a field that disagrees with them
    (an edited `key_dim: -1`, or `10**7`, which would allocate gigabytes first) is named with the tensor it
    contradicts. A field is the culprit when putting its default back makes the file fit."""
    found = _meta_mismatch(method, config, state)
    if found == "":
        return
    spec = get(method)
    defaults = {f.name: getattr(spec.config(), f.name) for f in fields(spec.config)}
    for name, value in config.items():
        if name in defaults and value != defaults[name] and _meta_mismatch(method, {**config, name: defaults[name]},
                                                                           state) == "":
            key = found[0] if isinstance(found, tuple) and found[0] in state else _field_tensor(
                method, {**config, name: defaults[name]}, name, state)
            file_key = next(iter(spec.to_file({key: state[key]})))
            shape = tuple(state[key].shape)
            raise VOSInputError(f"{what} {path}: its config says {name}: {value!r}, but the file's tensor {file_key} "
                                f"has shape {shape} ({name}: {defaults[name]!r} fits it); the file's config was "
                                f"edited or damaged: re-save the checkpoint from its model")
    if isinstance(found, str):
        raise VOSInputError(f"{what} {path}: its {method} config {config} is not valid here ({found})")
    key, shape, want = found
    file_key = next(iter(spec.to_file({key: state.get(key)})))
    have = f"has shape {shape}" if key in state else "is missing"
    raise VOSInputError(f"{what} {path}: its tensor {file_key} {have}, but its {method} config {config} builds "
                        f"{'no such tensor' if want is None else f'shape {want}'}; pass a checkpoint of that model")
