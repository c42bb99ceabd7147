"""The method registry: what a method is, the methods this repository implements, and building them from files.

A method is a model class that meets `VOSModel` (framework.py; re-exported here) plus one `Method` entry: its config
class, default weights and its training recipe: the stages (`StageConfig`, each naming its `StageData`: the factory
of its training data and its model selection), the batch transforms between sampler and forward, the training
forward and the losses. The trainer runs every method's recipe the same way and names no method's rule. Each method's
module exports its entry as `METHOD` (EMVOS: model.py, VideoMatch: videomatch.py), and `METHOD_MODULES` lists those
modules, imported on the first read of the table, so adding a method means writing its module and adding its name to
that list. `register(Method(...))` adds an entry at run time (tests/test_extend.py registers a tiny method and runs
it through `run.py --test` and a training step; tests/third_method.py trains on two objects per clip).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn as nn
from torch import Tensor
from torch.overrides import TorchFunctionMode

from benchmarks import registry
from benchmarks.common import Benchmark
from core import config_flags
from core.framework import VOSModel as VOSModel  # re-exported: the interface each method's class meets
from core.weights import OFFICIAL_BLOB_IDS, as_state_dict, check_finite, load_file
from dataset import Roots
from training import samplers
from training.samplers import TrainSet
from utils import VOSInputError

# The modules that define the built-in methods, each exporting its registry entry as METHOD: a new method is its
# module plus its name here.
METHOD_MODULES = ("model", "videomatch")


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
    # --val-sequences: the held-out videos of a stage whose data holds out its own (StageData.holds_out)
    val_sequences: list[str] | None = None
    # J&F by vos-benchmark's rules on held-out videos (folder, names) of a generic folder, through the same driver
    heldout_val: Callable[[Path, list[str]], Selection] | None = None


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
    # --val-sequences names videos of this data's own folder, held out of training to select on (generic); else
    # they are DAVIS val sequences
    holds_out: bool = False
    parts: tuple[StageData, ...] = ()  # a mixture's datasets (mixed_data), each with its own root; () = not a mixture

    def sources(self) -> tuple[StageData, ...]:
        """The datasets this data reads: a mixture's parts, else itself."""
        return self.parts or (self,)


@dataclass(frozen=True)
class StageConfig:
    """One training stage, what every method's stages have. A method whose recipe has settings of its own subclasses
    it (EMVOS: model.EMVOSStage adds swap-and-attach's probability); run.py's override flags are these fields."""

    name: str  # what --stages calls it
    save_name: str  # checkpoint prefix, the official one: '<save_name>_best.pth', '<save_name>_<epoch:04d>.pth'
    data: StageData  # its training data and model selection
    clip_len: int  # frames per clip; the loss covers frames 1..clip_len-1
    clips_per_epoch: int  # an epoch draws this many items (the official clip_n); frame pairs: 0 = every pair
    batch_size: int  # clips per optimizer step, over all processes together
    epochs: int
    save_every: int  # write '<save_name>_<epoch:04d>.pth' every this many epochs (and after the last one)
    val_every: int  # run the data's model selection every this many epochs; 0 = never
    crop: tuple[int, int] = (384, 384)  # clip size (H, W) after the random resized crop
    lr: float = 1e-4  # Adam, no schedule (official EMVOS)
    weight_decay: float = 0.0  # official EMVOS: none

    def record(self) -> dict:
        """The stage as plain values (its data by name), as a checkpoint records it."""
        return {**{k: v for k, v in vars(self).items() if k != "data"}, "data": self.data.name}


# ---------------------------------------------------------------------------------------------------------------
# a method's training recipe: batches, transforms, forward, loss
# ---------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Batch:
    """One step's clips on one process, as the stage's sampler gives them (collated), through the method's batch
    transforms to its training forward and loss. Objects are ids in the masks, so a clip may hold several: a
    binary sampler gives id 1 alone, a method that trains on N objects per clip gets ids 1..N (tests/third_method.py).
    """

    imgs: Tensor  # (B, L, 3, H, W) RGB in [0, 1]
    masks: Tensor  # (B, L, H, W) id masks, 0 background

    def to(self, device: torch.device) -> Batch:
        return Batch(self.imgs.to(device, non_blocking=True), self.masks.to(device, non_blocking=True))


@dataclass(frozen=True)
class BatchTransform:
    """A step of a method's recipe between the sampler and the training forward (EMVOS: swap-and-attach, then the
    official skip rule). `apply(batch, stage)` returns the batch to train on, or None to skip it (the processes of a
    job skip it together, and a skipped batch takes no optimizer step). Its random draws must come from Python's,
    NumPy's or torch's global generator: a resumed epoch sends the batches it had done through the transforms again,
    from the random states the checkpoint restored, so that the epoch goes on with the draws of the interrupted run.
    """

    apply: Callable[[Batch, StageConfig], Batch | None]
    # a line the trainer prints before a stage starts, given the stage and the clips per process; None: nothing
    note: Callable[[StageConfig, int], str | None] = lambda stage, clips: None


def first_mask_forward(model: nn.Module, batch: Batch) -> Tensor:
    """The training forward of EMVOS and VideoMatch: the model's forward on the clips and their first masks (one
    object, id 1) -> logits (B, L-1, 2, H, W). `model` may be the DistributedDataParallel wrapper: it is called, so
    that the wrapper's hooks run."""
    return model(batch.imgs, batch.masks[:, 0])


def foreground_iou(logits: Tensor, gt: Tensor) -> Tensor:
    """Mean foreground IoU of the argmax over frames (and objects), as the official get_iou (with its 1e-7
    smoothing): what the training log shows beside the loss.

    logits: (B, L-1, 2, H, W) with gt (B, L-1, H, W) in {0, 1}; or (B, L-1, N, 2, H, W) with gt id masks, object k of
    the logits being id k + 1 (framework.clip_forward with objects=N).
    """
    pred = logits.argmax(dim=-3) == 1
    if logits.dim() == gt.dim() + 1:
        fg = gt == 1
    else:
        ids = torch.arange(1, logits.shape[2] + 1, device=gt.device)
        fg = gt[:, :, None] == ids[:, None, None]  # (B, L-1, N, H, W)
    inter = (pred & fg).flatten(-2).sum(-1).float()
    union = (pred | fg).flatten(-2).sum(-1).float()
    return ((inter + 1e-7) / (union + 1e-7)).mean()


Loss = Callable[[Tensor, Tensor], Tensor]  # the training forward's logits, the id masks of frames 1..L-1 -> scalar


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
    # the training recipe besides the stages and losses: what happens to each batch before the forward, in order
    # (EMVOS: swap-and-attach, the official skip rule); the training forward (model, batch) -> logits, which the
    # loss takes with the batch's masks of frames 1..L-1; and the IoU the log shows (logits, those masks)
    transforms: tuple[BatchTransform, ...] = ()
    train_forward: Callable[[nn.Module, Batch], Tensor] = first_mask_forward
    train_iou: Callable[[Tensor, Tensor], Tensor] = foreground_iou


# ---------------------------------------------------------------------------------------------------------------
# training data several methods share: the clip samplers of the official EMVOS loaders, selected on DAVIS val J&F
# (the official trainer validates on DAVIS 2017 val)
# ---------------------------------------------------------------------------------------------------------------

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
def _heldout_val(stage: StageConfig, data: TrainSet, ctx: StageContext) -> Selection | None:
    names = ctx.val_sequences or []
    root = ctx.roots.get(stage.data.root)
    return ctx.heldout_val(Path(root), names) if names and ctx.heldout_val else None


def benchmark_clips() -> dict[str, StageData]:
    """{name: stage data} of every dataset module with a training split (benchmarks.registry, `Benchmark.training`),
    read from that module's root. Selected on DAVIS val, as the official stages are; a folder of one's own videos
    (`Training.holds_out`) is selected on its videos held out by --val-sequences, scored as vos-benchmark scores a
    generic folder, and with none held out the last weights stand."""
    stages = {}
    for bench in registry.BENCHMARKS:
        if bench.training is None:
            continue

        def open_clips(stage: StageConfig, ctx: StageContext, bench: Benchmark = bench) -> TrainSet:
            return bench.training.clips(ctx.roots.get(bench.root), ctx.val_sequences, **_clip_args(stage, ctx))

        held = bench.training.holds_out
        stages[bench.name] = StageData(bench.name, bench.root, bench.training.holds, open_clips,
                                       _heldout_val if held else _davis_val, "val_heldout_jf" if held else "val_jf",
                                       holds_out=held)
    return stages


def mixed_data(parts: list[StageData], weights: list[float] | None) -> StageData:
    """One stage's data drawn from several datasets (samplers.MixedClips): by the weights, else by their sizes.
    Its model selection is the first dataset's, given that dataset's sampler."""
    for part in parts:
        if part.parts:
            raise VOSInputError(f"a mixture cannot hold the mixture {part.name}; list its datasets once")

    def open_mix(stage: StageConfig, ctx: StageContext) -> TrainSet:
        opened = [(part.name, part.open(stage, ctx)) for part in parts]
        for name, data in opened:
            if not isinstance(data, samplers.ClipSampler):
                raise VOSInputError(f"stage {stage.name}: {name} gives {type(data).__name__} items, not random "
                                    f"clips, so it cannot be mixed; mix the clip stages (davis_clips for VideoMatch)")
        return samplers.MixedClips(opened, weights, stage.clips_per_epoch // ctx.world)

    def select(stage: StageConfig, data: TrainSet, ctx: StageContext) -> Selection | None:
        return parts[0].selection(stage, data.parts[0][1], ctx)

    return StageData("+".join(p.name for p in parts), parts[0].root, parts[0].holds, open_mix, select,
                     parts[0].column, holds_out=any(p.holds_out for p in parts), parts=tuple(parts))


def stage_preset(method: Method, name: str) -> StageConfig:
    """The preset --stages NAME names: one of the method's stages, or a mixture `a+b+c` of them, optionally weighted
    `a:1+b:1+c:2` (every part weighted, or none: then each dataset weighs its size). A mixture trains with its first
    stage's settings and selection, on the data of all; it writes `<first stage's save name>+b+c_*.pth`."""
    if "+" not in name and ":" not in name:
        if name not in method.stages:
            raise VOSInputError(f"unknown stage {name} in --stages; choose from {', '.join(method.stages)}, or mix "
                                f"them as a+b (weighted a:1+b:2)")
        return method.stages[name]
    parts = [p.partition(":") for p in name.split("+")]
    stages = [p[0] for p in parts]
    unknown = [n for n in stages if n not in method.stages]
    if unknown or len(set(stages)) != len(stages) or len(stages) < 2:
        raise VOSInputError(f"--stages {name}: a mixture is two or more of {', '.join(method.stages)} joined by '+' "
                            f"(each at most once), optionally weighted as davis:1+ytvos:2"
                            f"{f'; unknown: {chr(44).join(unknown)}' if unknown else ''}")
    given = [w for _, colon, w in parts if colon]
    if given and len(given) != len(parts):
        raise VOSInputError(f"--stages {name}: weight every dataset of the mixture (davis:1+ytvos:2) or none (then "
                            f"each weighs its size)")
    try:
        weights = [float(w) for w in given] if given else None
    except ValueError as e:
        raise VOSInputError(f"--stages {name}: a weight is not a number ({e})") from e
    if weights is not None and (any(not w >= 0 or w == float("inf") for w in weights) or sum(weights) <= 0):
        raise VOSInputError(f"--stages {name}: the weights must be non-negative numbers, not all 0")
    first = method.stages[stages[0]]
    data = mixed_data([method.stages[n].data for n in stages], weights)
    return replace(first, name=name, save_name="+".join([first.save_name, *stages[1:]]), data=data)


# ---------------------------------------------------------------------------------------------------------------
# the table
# ---------------------------------------------------------------------------------------------------------------

# Where checkpoints live: the authors' files are fetched here on first use, --train writes here by default.
TRAINED_MODEL = Path(__file__).resolve().parents[1] / "trained_model"


class Registry(MutableMapping[str, Method]):
    """method name -> its entry. The modules of METHOD_MODULES are imported on the first read or write, not when this
    module is: they import this module for `Method`, so the import graph stays a tree."""

    def __init__(self) -> None:
        self._entries: dict[str, Method] = {}
        self._loaded = False

    def _load(self) -> dict[str, Method]:
        if not self._loaded:
            self._loaded = True  # first: a method module that registers while it loads finds the table open
            try:
                for name in METHOD_MODULES:
                    entry = importlib.import_module(name).METHOD
                    self._entries.setdefault(entry.name, entry)
            except BaseException:
                self._loaded = False  # the next read tries again and raises again, never an incomplete table
                raise
        return self._entries

    def __getitem__(self, name: str) -> Method:
        return self._load()[name]

    def __setitem__(self, name: str, method: Method) -> None:
        self._load()[name] = method

    def __delitem__(self, name: str) -> None:
        del self._load()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._load())

    def __len__(self) -> int:
        return len(self._load())


METHODS = Registry()


def register(method: Method) -> Method:
    """Add a method to the table (or replace the entry of that name)."""
    METHODS[method.name] = method
    return method


def config_classes() -> dict[str, type]:
    """method name -> its config dataclass, for the model flags (flags.add_model_flags)."""
    return {m.name: m.config for m in METHODS.values()}


def get(name: str) -> Method:
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose from {', '.join(METHODS)}")
    return METHODS[name]


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
