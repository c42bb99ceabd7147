"""Training: `python run.py --train`, one or more stages in a row (a library; run.py is its command line).

Read top to bottom: the options, one training step (swap-and-attach, the skip rule, the loss), validation through the
same driver as `run.py --test`, checkpoints, and the loop. The stage presets and each method's loss are in the method
registry (methods.py).

    python run.py --train --coco ../DB/COCO --davis ../DB/DAVIS            # official: coco, then davis
    python run.py --train --stages ytvos --init trained_model/coco_best.pth --ytvos ../DB/YTVOS18
    torchrun --nproc_per_node 4 run.py --train ...                          # data parallel, same global batch
    python run.py --train --resume trained_model/coco_davis_interrupted.pth --davis ../DB/DAVIS

Checkpoint names follow the official release, not the stage names: the coco stage writes `coco_*`, the davis stage
`coco_davis_*` and the ytvos stage `coco_ytvos_*` (the official run.py names each stage after the chain that leads to
it), so a run with default flags ends with `coco_davis_best.pth`, the released file name. The name stays the same when
a stage runs alone. A weights file `X.pth` holds what the method's file layout says (EMVOS: exactly the official state
dict, which the authors' run.py loads); everything `--resume` needs to go on exactly where the run stopped (weights,
optimizer, epoch, random states, options) is in `X.train.pth` beside it.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import random
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, RandomSampler
from tqdm import tqdm

import dataset
import evaluation
import flags
import methods
import weights
from inference import RunSettings, run_settings, segment_video
from methods import Method, StageConfig
from utils import VOSInputError, atomic_write, writable_dir

SEED = 19971007  # the official run.py seeds python, numpy and torch with it


class TrainingError(Exception):
    """Training cannot go on (a non-finite loss or weights); the message says where and what to try."""


class TrainingInterrupted(SystemExit):
    """Raised after Ctrl+C (SIGINT) or SIGTERM once the resumable checkpoint is written (or when the user aborted).

    A SystemExit with code 130, so an uncaught one ends the program quietly, without a traceback; the message with
    the resume command has been printed already. `checkpoint` is the file written, or None.
    """

    def __init__(self, checkpoint: Path | None):
        super().__init__(130)
        self.checkpoint = checkpoint


PAIRS = "davis_pairs"  # stage data of every frame pair (dataset.TrainPairs); held-out pairs select the model
DATA_FLAGS = {  # stage data -> (root flag, what the folder must hold)
    "coco": ("--coco", "train2017/ + annotations/instances_train2017.json, or the converted JPEGImages/ + "
                       "Annotations/ of the official code"),
    "davis": ("--davis", "JPEGImages/480p, Annotations/480p and ImageSets/ of DAVIS-2017-trainval-480p"),
    "ytvos": ("--ytvos", "train/JPEGImages, train/Annotations (and train/meta.json) of YouTube-VOS 2018"),
    PAIRS: ("--davis", "JPEGImages/480p, Annotations/480p and ImageSets/ of DAVIS (2016 for VideoMatch's port recipe; "
                       "the original DAVIS 2016 download works too)"),
}

# The stage fields that --train may override, with their help: run.py makes a --<field-name> flag for each; a flag
# left out keeps the preset (or, with --resume, what the interrupted run used).
OVERRIDES = {
    "epochs": "epochs per stage (official: coco 8000, davis 4000)",
    "batch_size": "clips per step over all processes (16 / 8)",
    "clip_len": "frames per clip (coco 5, davis 10)",
    "clips_per_epoch": "clips per epoch (128; VideoMatch pairs: 0 = every pair)",
    "crop": "clip size H W (384 384)",
    "lr": "Adam learning rate (1e-4)",
    "weight_decay": "Adam weight decay (EMVOS 0, VideoMatch 5e-4)",
    "val_every": "validate every N epochs, 0 = never (400 / 200)",
    "save_every": "write a checkpoint every N epochs (4000 / 2000)",
    "swap_above": "swap-and-attach when a uniform draw exceeds this (0.8: p = 0.2; 1: never)",
}
# The checked argparse types of the float overrides (the integer ones are checked against their stage in
# stage_configs, where the bound depends on the stage's data); run.py types the rest from the StageConfig field.
# Adam's lr and weight decay at most 1: far above any working value, and below what torch's float32 step overflows
# on (lr / (1 - beta1) must be a float32).
OVERRIDE_TYPES = {"lr": flags.float_range(0.0, 1.0, lo_open=True), "weight_decay": flags.float_range(0.0, 1.0),
                  "swap_above": flags.probability}


# ---------------------------------------------------------------------------------------------------------------
# options
# ---------------------------------------------------------------------------------------------------------------

@dataclass
class TrainOptions:
    """The flags after defaults: explicit flag > the resumed checkpoint's value > default."""

    stages: list[str]
    overrides: dict[str, object]  # StageConfig field -> value, from the flags in OVERRIDES
    val_sequences: list[str] | None = None
    davis_year: str | None = None  # None: 2016 for davis_pairs stages (the port's), 2017 otherwise (official EMVOS)
    save_dir: str = str(methods.TRAINED_MODEL)
    pretrained: bool = True
    chain: str = "last"
    amp: bool = False
    # official 4, but no more than the CPUs: torch warns on every run when the workers outnumber them
    workers: int = field(default_factory=lambda: min(4, os.cpu_count() or 1))
    train_encoder: bool = False
    seed: int = SEED
    loss: str | None = None  # --loss: one of the method's losses by name; None: its default


def resolve_options(args: argparse.Namespace, method: Method, saved: dict | None = None) -> TrainOptions:
    """Options from the flags; with a resumed checkpoint's saved options for the flags not given."""
    saved = dict(saved or {})
    overrides = dict(saved.get("overrides", {}))
    for name in OVERRIDES:
        value = getattr(args, name, None)
        if value is not None:
            overrides[name] = tuple(value) if name == "crop" else value
    values = {}
    for f in fields(TrainOptions):
        if f.name == "overrides":
            continue
        explicit = getattr(args, f.name, None)
        if f.name == "pretrained" and getattr(args, "no_pretrained", None):
            explicit = False
        if explicit is not None:
            values[f.name] = list(explicit) if f.name in ("stages", "val_sequences") else explicit
        elif f.name in saved:
            values[f.name] = saved[f.name]
    if args.resume and getattr(args, "save_dir", None) is None:
        values["save_dir"] = str(Path(args.resume).parent)  # a resumed run writes next to the file it resumed
    values.setdefault("stages", list(method.default_stages))
    opts = TrainOptions(overrides=overrides, **values)
    unknown = [s for s in opts.stages if s not in method.stages]
    if unknown:
        raise VOSInputError(f"unknown stage(s) {', '.join(unknown)} in --stages; "
                            f"choose from {', '.join(method.stages)}")
    return opts


def stage_configs(opts: TrainOptions, method: Method) -> list[StageConfig]:
    """The presets of the chosen stages with the overrides applied, checked."""
    stages = [replace(method.stages[name], **opts.overrides) for name in opts.stages]
    for s in stages:
        for name in ("epochs", "batch_size", "clips_per_epoch", "save_every"):
            least = 0 if name == "clips_per_epoch" and s.data == PAIRS else 1  # pairs: 0 = every pair
            if getattr(s, name) < least:
                raise VOSInputError(f"--{name.replace('_', '-')} must be at least {least} (stage {s.name})")
        if s.data == PAIRS and s.clip_len != 2:
            raise VOSInputError(f"stage {s.name} trains on frame pairs; --clip-len must be 2")
        if s.clip_len < 2:
            raise VOSInputError(f"--clip-len must be at least 2: the loss covers frames 1..L-1 (stage {s.name})")
        if s.val_every < 0:
            raise VOSInputError("--val-every must be 0 (never) or more")
        if min(s.crop) < 16:
            raise VOSInputError(f"--crop {s.crop[0]} {s.crop[1]} is too small; the network's stride is 16")
    return stages


# ---------------------------------------------------------------------------------------------------------------
# distributed data parallel (torchrun)
# ---------------------------------------------------------------------------------------------------------------

@dataclass
class Dist:
    """This process's place in a torchrun job (rank 0 of 1 when run as a plain process)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    initialized_here: bool = False

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device: torch.device) -> Dist:
    """Join the process group when torchrun (or any launcher setting WORLD_SIZE > 1, RANK, MASTER_ADDR/PORT) started
    us: gloo on CPU, nccl on CUDA. A plain `python run.py --train` stays one process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    here = False
    if not dist.is_initialized():
        # Rank 0 validates alone while the others wait in a collective: allow for a long validation.
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timedelta(hours=2))
        here = True
    return Dist(rank, world, local_rank, here)


def _all_reduce(d: Dist, values: list[float], device: torch.device, op: str) -> list[float]:
    """max or mean of a few numbers over all processes (one small collective)."""
    if not d.enabled:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
    return (t / (1 if op == "max" else d.world)).tolist()


def _gather(d: Dist, obj: object) -> list:
    if not d.enabled:
        return [obj]
    out: list = [None] * d.world
    dist.all_gather_object(out, obj)
    return out


def _broadcast(d: Dist, obj: object) -> object:
    if not d.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _broadcast_weights(d: Dist, net: nn.Module) -> None:
    """Give every process rank 0's weights (after rank 0 alone loaded a file)."""
    if d.enabled:
        with torch.no_grad():
            for t in net.state_dict().values():
                dist.broadcast(t, src=0)


# ---------------------------------------------------------------------------------------------------------------
# random state (saved in checkpoints so that --resume draws the same clips)
# ---------------------------------------------------------------------------------------------------------------

def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # seeds every CUDA device too


def capture_rng() -> dict:
    """Python, numpy, torch (and CUDA) generator states, in types that torch.load(weights_only=True) reads."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": random.getstate(),
             "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss),
                       "cached": float(cached)},
             "torch": torch.get_rng_state(), "cuda": []}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    random.setstate(state["python"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def _init_worker(worker_id: int) -> None:
    """DataLoader workers ignore Ctrl+C: the main process finishes its iteration, saves, then stops them."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    dataset.seed_worker(worker_id)


# ---------------------------------------------------------------------------------------------------------------
# one training step
# ---------------------------------------------------------------------------------------------------------------

def epoch_sampler(data: Dataset, per_epoch: int) -> RandomSampler:
    """One epoch's item order: per_epoch items drawn without replacement, or all of them when 0 (or more).

    The clip samplers hold exactly clips_per_epoch random clips, so for them this is DataLoader(shuffle=True), draw
    for draw; for TrainPairs it is every pair exactly once per epoch, or with a smaller count the port's --iters (the
    first pairs of a fresh shuffle).
    """
    return RandomSampler(data, num_samples=min(len(data), per_epoch) if per_epoch else len(data))


def swap_and_attach(imgs: Tensor, masks: Tensor) -> tuple[Tensor, Tensor]:
    """Paste each clip's target object into the next clip of the batch (official trainer: roll by one along the
    batch); the pasted pixels become background in that clip's own mask, since the object now covers them.

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
    (`len(masks[b, 0].unique()) != 2`). masks: (B, L, H, W) in {0, 1}."""
    first = masks[:, 0].flatten(1)
    return bool((first.amax(dim=1) == first.amin(dim=1)).any())


def foreground_iou(logits: Tensor, gt: Tensor) -> Tensor:
    """Mean foreground IoU of the argmax over frames, as the official get_iou (with its 1e-7 smoothing).

    logits: (B, L-1, 2, H, W); gt: (B, L-1, H, W) in {0, 1}.
    """
    pred = logits.argmax(dim=2) == 1
    fg = gt == 1
    inter = (pred & fg).flatten(2).sum(-1).float()
    union = (pred | fg).flatten(2).sum(-1).float()
    return ((inter + 1e-7) / (union + 1e-7)).mean()


def amp_dtype(enabled: bool, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for --amp: bf16 where the device has it, fp16 (with a GradScaler) on older GPUs."""
    if not enabled:
        return None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu":
        return torch.bfloat16  # CPU autocast is bf16 only
    raise VOSInputError(f"--amp is not supported on device {device.type}; run without it")


# ---------------------------------------------------------------------------------------------------------------
# validation: run.py's own inference and evaluation.py's J&F, so the numbers are those of `run.py --test`
# ---------------------------------------------------------------------------------------------------------------

@dataclass
class Validation:
    """DAVIS val (the official trainer validates on DAVIS 2017 val) or a subset of it."""

    data: dataset.DAVIS
    sequences: list[str]
    settings: RunSettings

    @property
    def title(self) -> str:
        return f"DAVIS {self.data.year} val" + (f" ({len(self.sequences)} sequences)" if self.sequences else "")


def validate_pairs(net: nn.Module, data: dataset.TrainPairs, device: torch.device) -> float:
    """Mean foreground IoU over the held-out pairs (resized, not augmented): the port's validation score
    (segmentation_IOU: foreground probability >= 0.5 against the mask, 1 when both are empty), here the model
    selection of pairs stages. It scores the matching as trained: the forward in training mode, without test-time
    outlier removal (which the port's validation does not run either), under no_grad."""
    ious = []
    net.train()  # VideoMatch: no outlier removal (BatchNorm stays frozen either way)
    with torch.no_grad():
        for k in range(len(data.heldout_pairs)):
            pair = data.heldout_pair(k)
            imgs, masks = pair["imgs"][None].to(device), pair["masks"][None].to(device)
            fg = torch.softmax(net(imgs, masks[:, 0]).float(), dim=2)[:, :, 1] >= 0.5  # (1, 1, H, W)
            gt = masks[:, 1:] == 1
            union = (fg | gt).sum().item()
            ious.append((fg & gt).sum().item() / union if union else 1.0)
    return sum(ious) / max(len(ious), 1)


def open_validation(root: str | None, year: str, sequences: list[str] | None,
                    settings: RunSettings) -> tuple[Validation | None, str | None]:
    """(the validation set, None), or (None, why not) when that DAVIS val is not on disk."""
    try:
        data = dataset.DAVIS(root if root is not None else dataset.DAVIS_ROOT, year, "val")
    except VOSInputError as e:
        return None, str(e)
    names = list(sequences) if sequences else list(data.sequences)
    unknown = [n for n in names if n not in data.sequences]
    if unknown:
        raise VOSInputError(f"--val-sequences {' '.join(unknown)}: not in DAVIS {year} val at '{data.root}' "
                            f"(it has {', '.join(data.sequences[:5])}{', ...' if len(data.sequences) > 5 else ''})")
    return Validation(data, names, settings), None


def validate(net: nn.Module, val: Validation, stop: StopRequest) -> float | None:
    """J&F-Mean on the validation set, or None when a stop was requested half way (the caller saves and exits)."""
    net.eval()
    try:
        with tempfile.TemporaryDirectory(prefix="emvos_val_") as tmp:
            for video in val.data.videos(val.sequences):
                if stop.requested:
                    return None
                segment_video(net, video, Path(tmp) / video.name, val.settings)
            gt = val.data.ground_truth(val.sequences)
            return evaluation.evaluate_sequences(gt, Path(tmp), val.data.binary).jf_mean
    finally:
        net.train()


# ---------------------------------------------------------------------------------------------------------------
# checkpoints and the log
# ---------------------------------------------------------------------------------------------------------------

def save_atomic(payload: dict, path: Path) -> None:
    """torch.save all at once or not at all (utils.atomic_write): a kill never leaves half a checkpoint."""
    atomic_write(path, lambda f: torch.save(payload, f))


def check_finite_weights(net: nn.Module, where: str) -> None:
    """Refuse to save weights that an overflowing update made inf or NaN."""
    for name, p in net.named_parameters():
        if not torch.isfinite(p).all():
            raise TrainingError(f"weight {name} is not finite {where}; no checkpoint was written from this state. "
                                f"Try a lower --lr, or run without --amp (--no-amp), from the last checkpoint")


LOG_COLUMNS = ("stage", "epoch", "iteration", "loss", "iou", "lr", "val_jf", "sec_per_iter", "val_pairs_iou")


def append_log(path: Path, row: dict) -> None:
    """One row per epoch in train_log.csv (header on a new file), flushed at once so a crash loses nothing."""
    new = not path.is_file() or path.stat().st_size == 0
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        if new:
            w.writerow(LOG_COLUMNS)
        w.writerow([row.get(c, "") for c in LOG_COLUMNS])
        f.flush()


class StopRequest:
    """Ctrl+C (SIGINT) or SIGTERM: the first one lets the current iteration finish, then the run saves a resumable
    checkpoint and stops; a second one aborts at once without saving. Signal handlers only exist in the main
    thread; elsewhere a KeyboardInterrupt is the only way in."""

    def __init__(self, verbose: bool):
        self.requested = False
        self.verbose = verbose
        self._previous: dict = {}

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: object) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        if self.verbose:
            print("\nstopping after this iteration to save a resumable checkpoint (press Ctrl+C again to abort "
                  "without saving)", file=sys.stderr, flush=True)

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


# ---------------------------------------------------------------------------------------------------------------
# the loop
# ---------------------------------------------------------------------------------------------------------------

@dataclass
class EpochStats:
    """Running sums of one epoch (the official AverageMeter: each step weighted by its batch size)."""

    loss_sum: float = 0.0
    iou_sum: float = 0.0
    count: int = 0  # clips in the steps taken
    steps: int = 0
    batches: int = 0  # batches drawn, skipped ones included (what a resumed run replays)
    seconds: float = 0.0

    last_loss: float = 0.0

    def add(self, loss: float, iou: float, clips: int, seconds: float) -> None:
        """One optimizer step over `clips` clips (all processes together)."""
        self.steps += 1
        self.count += clips
        self.loss_sum += loss * clips
        self.iou_sum += iou * clips
        self.seconds += seconds
        self.last_loss = loss

    def summary(self) -> tuple[float, float, float]:
        n = max(self.count, 1)
        return self.loss_sum / n, self.iou_sum / n, self.seconds / max(self.steps, 1)


@dataclass
class StageState:
    """Where a stage stands; what a checkpoint records besides the weights and the optimizer."""

    epoch: int = 0  # epochs completed
    iteration: int = 0  # optimizer steps taken in this stage (the official i, skipped batches not counted)
    best_score: float = 0.0  # the official trainer starts at 0 and keeps a new best when score > best
    validated: bool = False  # any validation in this stage yet (if none by the end, best = last)
    partial: dict | None = None  # mid-epoch stop: EpochStats fields + the epoch-start random states
    epoch_end_pending: bool = False  # stopped during the epoch-end validation: redo it on resume
    rng: list[dict] = field(default_factory=list)  # per rank, the random states the next epoch starts from


@dataclass
class StageRun:
    """One stage in progress: its preset, where it stands, and the objects a step needs."""

    stage: StageConfig
    state: StageState
    model: nn.Module  # what a step calls: the DistributedDataParallel wrapper, or the bare model
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None  # fp16 autocast only
    loader: DataLoader


@dataclass
class Trainer:
    """Runs the stages in order on one model. One per process; rank 0 alone writes files and validates."""

    method: Method
    opts: TrainOptions
    stages: list[StageConfig]
    net: nn.Module  # the bare model (not the DDP wrapper)
    device: torch.device
    dist_info: Dist
    datasets: dict[str, Dataset]
    validation: Validation | None
    roots: dict[str, str | None]
    stop: StopRequest

    def __post_init__(self) -> None:
        self.save_dir = Path(self.opts.save_dir)
        self.log_path = self.save_dir / "train_log.csv"
        self.amp = amp_dtype(self.opts.amp, self.device)
        self.loss = self.method.losses[self.opts.loss or self.method.default_loss]
        self.verbose = self.dist_info.main

    def say(self, text: str) -> None:
        if self.verbose:
            tqdm.write(text, file=sys.stdout)
            sys.stdout.flush()

    # --- the loop ---------------------------------------------------------------------------------------------------
    def train_epoch(self, run: StageRun, epoch: int) -> EpochStats:
        stats, epoch_rng = self.begin_epoch(run)
        for imgs, masks, t0 in self.batches(run, epoch, stats, epoch_rng):
            imgs, masks = imgs.to(self.device, non_blocking=True), masks.to(self.device, non_blocking=True)
            gt = masks[:, 1:]  # the loss covers frames 1..L-1; frame 0's mask is given
            with torch.autocast(self.device.type, dtype=self.amp, enabled=self.amp is not None):
                logits = run.model(imgs, masks[:, 0])  # (B, L-1, 2, H, W)
            loss = self.loss(logits, gt)
            loss_value, iou = _all_reduce(self.dist_info, [loss.item(), foreground_iou(logits.detach(), gt).item()],
                                          self.device, "mean")
            self.check_finite(loss_value, run, epoch, stats)
            run.optimizer.zero_grad(set_to_none=True)
            if run.scaler is not None:
                run.scaler.scale(loss).backward()
                run.scaler.step(run.optimizer)
                run.scaler.update()
            else:
                loss.backward()
                run.optimizer.step()
            run.state.iteration += 1
            stats.add(loss_value, iou, imgs.shape[0] * self.dist_info.world, time.perf_counter() - t0)
        run.state.epoch = epoch
        return stats

    def begin_epoch(self, run: StageRun) -> tuple[EpochStats, list[dict]]:
        """Fresh sums and the random states the epoch starts from (every process's), or, resuming mid-epoch, the
        interrupted epoch's sums and its random states restored."""
        d, state = self.dist_info, run.state
        if state.partial is None:
            return EpochStats(), _gather(d, capture_rng())
        partial = dict(state.partial)
        epoch_rng = partial.pop("rng")
        restore_rng(epoch_rng[d.rank] if len(epoch_rng) == d.world else capture_rng())
        state.partial = None
        return EpochStats(**partial), epoch_rng

    def batches(self, run: StageRun, epoch: int, stats: EpochStats,
                epoch_rng: list[dict]) -> Iterator[tuple[Tensor, Tensor, float]]:
        """The epoch's batches, swap-and-attach applied, those the official rule skips left out, as (imgs (B, L, 3, H,
        W), masks (B, L, H, W), start time). A resumed epoch first redraws the batches it had done, without running
        the model, so the data and the random draws go on exactly as in the interrupted run. A stop request (Ctrl+C)
        ends the epoch here: the resumable checkpoint is written and TrainingInterrupted raised."""
        d, state = self.dist_info, run.state
        loader = iter(run.loader)  # draws the workers' seeds (and the shuffle) from torch's generator
        bar = tqdm(total=len(run.loader), desc=f"{run.stage.name} ep{epoch:04d}", leave=False, dynamic_ncols=True,
                   disable=not self.verbose, initial=stats.batches)
        try:
            for _ in range(stats.batches):  # replay: the same data and the same swap draws
                next(loader)
                random.random()
            while stats.batches < len(run.loader):
                t0 = time.perf_counter()
                batch = None if self.stop.requested else self.next_batch(loader)
                if batch is not None:
                    imgs, masks = batch["imgs"], batch["masks"]
                    if random.random() > run.stage.swap_above:  # the official draw, for every batch, before skipping
                        imgs, masks = swap_and_attach(imgs, masks)
                skip, stop = _all_reduce(d, [float(batch is None or must_skip(masks)), float(self.stop.requested)],
                                         self.device, "max")
                if stop:
                    state.partial, state.epoch = {**asdict(stats), "rng": epoch_rng}, epoch - 1
                    raise self.interrupted(run, f"epoch {epoch} after {stats.batches} of {len(run.loader)} batches")
                stats.batches += 1
                bar.update()
                if not skip:
                    yield imgs, masks, t0
                    bar.set_postfix(loss=f"{stats.last_loss:.4f}")
        finally:
            bar.close()

    def next_batch(self, loader: Iterator) -> dict | None:
        try:
            return next(loader)
        except Exception:
            if not self.stop.requested:  # workers that died of the signal: not an error
                raise
            return None

    def check_finite(self, loss: float, run: StageRun, epoch: int, stats: EpochStats) -> None:
        if not math.isfinite(loss):
            raise TrainingError(
                f"the loss is {loss} in stage '{run.stage.name}', epoch {epoch}, iteration {stats.steps + 1} of the "
                f"epoch ({stats.batches} batches drawn); training stopped and no checkpoint was written from this "
                f"state (those in {self.save_dir} are intact). Try a lower --lr (now {run.stage.lr:g})"
                f"{', or run without --amp (--no-amp)' if self.amp is not None else ''}, and resume from the last "
                f"checkpoint with --resume; without --amp, a diverging run usually needs the lower --lr")

    # --- stages -----------------------------------------------------------------------------------------------------
    def run(self, first: int, resumed: dict | None) -> None:
        for k in range(first, len(self.stages)):
            stage = self.stages[k]
            if k > first and self.opts.chain == "best":
                self.load_best(self.stages[k - 1])
            self.run_stage(self.start_stage(stage, resumed if k == first else None))
            self.datasets.pop(stage.name, None)  # free it (the COCO index is large)

    def start_stage(self, stage: StageConfig, resumed: dict | None) -> StageRun:
        """A new Adam per stage, as the official run.py builds one in each train_* function; with --resume, the
        optimizer, the scaler and the stage's progress and random states of the checkpoint."""
        net = self.net.train()  # EMVOS.train keeps the encoder (BatchNorm) in eval mode, as the official model.eval()
        optimizer = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=stage.lr,
                                     weight_decay=stage.weight_decay)
        scaler = torch.amp.GradScaler("cuda") if self.amp == torch.float16 else None
        state = StageState(rng=_gather(self.dist_info, capture_rng()))
        if resumed is not None:
            optimizer.load_state_dict(resumed["optimizer"])
            if scaler is not None and resumed.get("scaler"):
                scaler.load_state_dict(resumed["scaler"])
            state = StageState(**{f.name: resumed[f.name] for f in fields(StageState)})
            if len(state.rng) == self.dist_info.world:
                restore_rng(state.rng[self.dist_info.rank])
            else:
                self.say(f"warning: the checkpoint was written by {len(state.rng)} process(es), this run has "
                         f"{self.dist_info.world}; the clips drawn from here on differ from the original run's")
        model = nn.parallel.DistributedDataParallel(
            net, device_ids=[self.device.index] if self.device.type == "cuda" else None,
            broadcast_buffers=False,  # the only buffers are frozen BatchNorm statistics and constants
        ) if self.dist_info.enabled else net
        data = self.datasets[stage.name]
        loader = DataLoader(data, batch_size=stage.batch_size // self.dist_info.world,
                            sampler=epoch_sampler(data, stage.clips_per_epoch // self.dist_info.world),
                            num_workers=self.opts.workers, worker_init_fn=_init_worker,
                            pin_memory=self.device.type == "cuda")
        self.describe(stage, loader)
        return StageRun(stage, state, model, optimizer, scaler, loader)

    def describe(self, stage: StageConfig, loader: DataLoader) -> None:
        if loader.batch_size == 1 and stage.swap_above < 1:
            self.say("note: one clip per process: swap-and-attach then pastes a clip onto itself, which empties its "
                     "mask, so those batches (p = 0.2) are skipped, as the official code does at batch size 1")
        val_note = f"validating on {self.validation_title(stage)} every {stage.val_every} epochs" \
            if self.validation_title(stage) and stage.val_every else "no validation"
        clips = len(loader.sampler) * self.dist_info.world
        self.say(f"stage '{stage.name}': {stage.epochs} epochs of {clips} clips of {stage.clip_len} frames at "
                 f"{stage.crop[0]}x{stage.crop[1]}, batch {stage.batch_size}"
                 f"{f' ({self.dist_info.world} processes)' if self.dist_info.enabled else ''}, lr {stage.lr:g}, "
                 f"{val_note}; checkpoints {self.save_dir}/{stage.save_name}_*.pth")

    def run_stage(self, run: StageRun) -> None:
        state = run.state
        if state.epoch_end_pending:  # stopped during the validation of a finished epoch: do that epoch's end again
            stats = EpochStats(**state.partial)
            state.partial, state.epoch_end_pending = None, False
            self.end_epoch(run, stats)
        for epoch in range(state.epoch + 1, run.stage.epochs + 1):
            self.end_epoch(run, self.train_epoch(run, epoch))
        if not state.validated:
            # Nothing to choose the best by, so the last weights stand for the stage. The official ytvos stage has no
            # validation set, so its trainer never writes a best file at all; this gives coco_ytvos_best.pth a source.
            self.save(run, f"{run.stage.save_name}_best.pth", "last checkpoint as best (no validation)")

    def end_epoch(self, run: StageRun, stats: EpochStats) -> None:
        """Validate, keep the best, write the periodic checkpoint and the log row (the official order)."""
        stage, state = run.stage, run.state
        epoch = state.epoch
        state.rng = _gather(self.dist_info, capture_rng())  # what the next epoch starts from
        loss, iou, sec = stats.summary()
        if stats.steps:
            self.say(f"[{stage.name} ep{epoch:04d}] loss {loss:.5f}  iou {iou:.5f}  ({stats.steps} it, "
                     f"{sec:.3f} s/it)")
        score = None
        title = self.validation_title(stage)
        if title and stage.val_every and epoch % stage.val_every == 0:
            if not self.dist_info.main:
                result = None
            elif stage.data == PAIRS:
                result = validate_pairs(self.net, self.datasets[stage.name], self.device)
            else:
                result = validate(self.net, self.validation, self.stop)
            score = _broadcast(self.dist_info, result)
            if score is None:  # stopped during validation: the resumed run validates this epoch again
                state.partial, state.epoch_end_pending = asdict(stats), True
                raise self.interrupted(run, f"the validation after epoch {epoch}")
            state.validated = True
            new_best = score > state.best_score
            self.say(f"[{stage.name} ep{epoch:04d}] {title} {score:.5f}"
                     f"{' (new best)' if new_best else f' (best {state.best_score:.5f})'}")
            if new_best:
                state.best_score = score
                self.save(run, f"{stage.save_name}_best.pth", f"new best checkpoint after epoch {epoch}")
        if epoch % stage.save_every == 0 or epoch == stage.epochs:
            self.save(run, f"{stage.save_name}_{epoch:04d}.pth", "checkpoint", resumable=True)
        if self.dist_info.main:
            append_log(self.log_path, {
                "stage": stage.name, "epoch": epoch, "iteration": state.iteration,
                "loss": f"{loss:.6f}" if stats.steps else "", "iou": f"{iou:.6f}" if stats.steps else "",
                "lr": f"{run.optimizer.param_groups[0]['lr']:g}", "sec_per_iter": f"{sec:.4f}" if stats.steps else "",
                "val_pairs_iou" if stage.data == PAIRS else "val_jf": "" if score is None else f"{score:.6f}"})

    def validation_title(self, stage: StageConfig) -> str | None:
        """What the stage selects its best checkpoint by, or None when it has nothing to validate on."""
        if stage.data == PAIRS:
            pairs = len(self.datasets[stage.name].heldout_pairs)
            return f"IoU on {pairs} held-out pairs" if pairs else None
        return f"{self.validation.title} J&F" if self.validation is not None else None

    def load_best(self, previous: StageConfig) -> None:
        """--chain best: start from the previous stage's best checkpoint instead of its last weights."""
        path = weights.safe_destination(self.save_dir / f"{previous.save_name}_best.pth", note=False)  # as save()
        found = _broadcast(self.dist_info, path.is_file() if self.dist_info.main else None)
        if not found:
            self.say(f"--chain best: no {path}; going on from the last weights of stage '{previous.name}'")
            return
        if self.dist_info.main:
            best, _ = methods.load_weights(path, "--chain best")
            self.net.load_state_dict(best.state_dict(), strict=True)
            self.say(f"starting from {path}")
        _broadcast_weights(self.dist_info, self.net)

    # --- checkpoints ------------------------------------------------------------------------------------------------
    def save(self, run: StageRun, name: str, what: str, resumable: bool = False) -> None:
        """Write the weights file `name` (the method's file layout) and, if resumable, its `.train.pth` with
        everything --resume needs. Atomic: a kill leaves the previous file or the new one, never half of one."""
        state = run.state
        # every process checks (their weights are equal), so that all of them stop together
        check_finite_weights(self.net, f"after epoch {state.epoch} of stage '{run.stage.name}'")
        if not self.dist_info.main:
            return
        path = weights.safe_destination(self.save_dir / name)  # never over the authors' released checkpoint
        save_atomic(methods.weights_payload(self.net, self.method.name), path)
        if resumable:
            save_atomic({
                "weights": methods.weights_payload(self.net, self.method.name), "method": self.method.name,
                "config": asdict(self.net.config), "stage": run.stage.name, "save_name": run.stage.save_name,
                **asdict(state), "world_size": self.dist_info.world, "optimizer": run.optimizer.state_dict(),
                "scaler": run.scaler.state_dict() if run.scaler is not None else None,
                "stage_config": asdict(run.stage), "train_options": asdict(self.opts),
            }, training_state_path(path))
        self.say(f"saved {what}: {path}{' (+ .train.pth to resume)' if resumable else ''}")

    def resume_command(self, path: Path) -> str:
        flags = [f"{DATA_FLAGS[s.data][0]} {self.roots[s.data]}" for s in self.stages if self.roots.get(s.data)]
        flags = list(dict.fromkeys(flags))
        if self.validation is not None and not any(s.data == "davis" for s in self.stages):
            flags.append(f"--davis {self.roots['davis']}")
        launcher = f"torchrun --nproc_per_node {self.dist_info.world} run.py" if self.dist_info.enabled else \
            "python run.py"
        method = [] if self.method.name == "emvos" else [f"--method {self.method.name}"]
        return " ".join([launcher, "--train", *method, f"--resume {path}", *flags])

    def interrupted(self, run: StageRun, where: str) -> TrainingInterrupted:
        path = self.save_dir / f"{run.stage.save_name}_interrupted.pth"
        self.save(run, path.name, "resumable checkpoint", resumable=True)
        self.say(f"interrupted in stage '{run.stage.name}' at {where}. Resume with:\n  {self.resume_command(path)}")
        return TrainingInterrupted(path)


# ---------------------------------------------------------------------------------------------------------------
# entry point
# ---------------------------------------------------------------------------------------------------------------

def training_state_path(weights_path: Path) -> Path:
    """X.pth -> X.train.pth, the file with what --resume needs besides the weights."""
    return weights_path.with_name(weights_path.stem + ".train.pth")


def open_datasets(stages: list[StageConfig], roots: dict[str, str | None], opts: TrainOptions,
                  d: Dist) -> dict[str, Dataset]:
    """Every stage's clip sampler, built (and its data root checked) before any training starts."""
    problems = []
    for data, (flag, holds) in DATA_FLAGS.items():
        needed_by = [s.name for s in stages if s.data == data]
        root = roots[data]
        if needed_by and (root is None or not Path(root).is_dir()):
            given = "is not set" if root is None else f"'{root}' does not exist"
            problems.append(f"stage(s) {', '.join(needed_by)} train on {data}, but {flag} {given}; pass {flag} PATH "
                            f"(the folder with {holds}) or leave the stage out of --stages")
    for s in stages:
        if s.batch_size % d.world or s.clips_per_epoch % d.world:
            problems.append(f"stage {s.name}: --batch-size {s.batch_size} and --clips-per-epoch {s.clips_per_epoch} "
                            f"must be multiples of the {d.world} processes (each takes an equal share)")
    if problems:
        raise VOSInputError("\n".join(problems))
    sets: dict[str, Dataset] = {}
    for s in stages:
        common = {"output_size": tuple(s.crop), "clip_len": s.clip_len, "clips_per_epoch": s.clips_per_epoch // d.world}
        if s.data == PAIRS:
            if d.enabled:  # each process would go through every pair: no DistributedSampler here
                raise VOSInputError(f"stage {s.name} (every frame pair, batch 1 as the port) runs in one process; "
                                    f"start it with python run.py, not torchrun")
            sets[s.name] = dataset.TrainPairs(roots["davis"], year=davis_year(opts, s), output_size=tuple(s.crop))
        elif s.data == "coco":
            sets[s.name] = dataset.TrainCOCO(roots["coco"], **common)
        elif s.data == "davis":
            sets[s.name] = dataset.TrainDAVIS(roots["davis"], year=davis_year(opts, s), split="train", **common)
        else:
            sets[s.name] = dataset.TrainYTVOS(roots["ytvos"], **common)
        sets[s.name].check()  # data that could only give skipped batches is an error now, not after the run
    return sets


def davis_year(opts: TrainOptions, stage: StageConfig | None = None) -> str:
    """--davis-year, or the default of the stage's data: 2016 for frame pairs (the port's), else 2017."""
    return opts.davis_year or ("2016" if stage is not None and stage.data == PAIRS else "2017")


def load_resume(path: str, method_name: str, method_given: bool = True) -> dict:
    """The training state written beside a checkpoint (X.train.pth; X.pth finds it), read safely. The method is the
    file's; a --method that differs (method_given) is an error."""
    given = Path(path)
    state_path = given if given.name.endswith(".train.pth") else training_state_path(given)
    if not state_path.is_file():
        if given.is_file():
            raise VOSInputError(f"--resume {path}: the file holds weights only and no {state_path.name} with the "
                                f"training state is beside it; to start training from these weights pass --init {path}")
        raise VOSInputError(f"--resume {path}: no such file")
    obj = weights.load_file(state_path, "--resume")
    needed = ("weights", "method", "config", "optimizer", "stage", "epoch", "rng", "train_options")
    if not isinstance(obj, dict) or any(k not in obj for k in needed):
        raise VOSInputError(f"--resume {state_path} is not a training state written by `run.py --train` (it lacks "
                            f"{', '.join(k for k in needed if not isinstance(obj, dict) or k not in obj)})")
    if obj["method"] not in methods.METHODS:
        raise VOSInputError(f"--resume {path} holds a {obj['method']!r} model, which this repository does not "
                            f"implement (methods: {', '.join(methods.METHODS)})")
    if method_given and obj["method"] != method_name:
        raise VOSInputError(f"--resume {path} is a {obj['method']} checkpoint; drop --method {method_name} (the "
                            f"method is read from the file)")
    return {**obj, "path": str(state_path)}


def build_network(method: Method, opts: TrainOptions, resumed: dict | None, init: str | None) -> nn.Module:
    """The model to train: from the resumed checkpoint, from --init weights, or new (ImageNet backbone)."""
    overrides = {"train_encoder": True} if opts.train_encoder else {}
    if resumed is not None:
        return methods.model_from_payload(resumed["weights"], Path(resumed["path"]), "--resume", resumed["config"])[0]
    if init is not None:
        net, meta = methods.load_weights(init, "--init", overrides)
        if meta["method"] != method.name:
            raise VOSInputError(f"--init {init} is a {meta['method']} checkpoint, not {method.name}")
        return net
    return methods.build_model(method.name, overrides, pretrained=opts.pretrained)


def resume_point(resumed: dict | None, stages: list[StageConfig], path: str | None) -> tuple[int, bool]:
    """(index of the stage to start with, whether the resumed stage was already finished)."""
    if resumed is None:
        return 0, False
    names = [s.name for s in stages]
    if resumed["stage"] not in names:
        raise VOSInputError(f"--resume {path} is from stage '{resumed['stage']}', which is not in --stages "
                            f"{' '.join(names)}")
    first = names.index(resumed["stage"])
    finished = (resumed["epoch"] >= stages[first].epochs and resumed["partial"] is None
                and not resumed["epoch_end_pending"])
    first += finished  # that stage is done: go on with the next one
    if first == len(stages):
        raise VOSInputError(f"--resume {path}: stage '{resumed['stage']}' is finished and no stage follows it in "
                            f"--stages {' '.join(names)}; name a stage after it to go on")
    return first, finished


def check_recipe(args: argparse.Namespace, method: Method, opts: TrainOptions) -> None:
    if args.resume and getattr(args, "init", None):
        raise VOSInputError("pass --resume or --init, not both: --resume restores the weights it holds")
    if opts.loss is not None and opts.loss not in method.losses:
        raise VOSInputError(f"--loss {opts.loss} is not a loss of {method.name}; choose from "
                            f"{', '.join(method.losses)}")
    if getattr(args, "precision", "fp32") == "fp64":
        raise VOSInputError("--precision fp64 is for comparing with a reference at test time; validation during "
                            "training runs in fp32 (default), bf16 or fp16")


def train(args: argparse.Namespace) -> nn.Module:
    """Train the stages the flags ask for; returns the trained model (the bare module, on its device).

    Raises VOSInputError (bad flags or data, missing ImageNet weights, an unwritable --save-dir) before any training,
    TrainingError when the loss or the weights stop being finite, and TrainingInterrupted (a SystemExit, code 130)
    after Ctrl+C.
    """
    method = methods.get(getattr(args, "method", None) or "emvos")
    resumed = load_resume(args.resume, method.name, getattr(args, "method_given", True)) if args.resume else None
    method = methods.get(resumed["method"]) if resumed else method  # --resume: the method the file records
    opts = resolve_options(args, method, resumed["train_options"] if resumed else None)
    check_recipe(args, method, opts)
    stages = stage_configs(opts, method)
    first, finished = resume_point(resumed, stages, args.resume)
    settings = run_settings(getattr(args, "device", None), getattr(args, "precision", "fp32"))
    d = init_distributed(settings.device)
    roots = {"coco": getattr(args, "coco", None), "davis": getattr(args, "davis", None),
             "ytvos": getattr(args, "ytvos", None) or dataset.YTVOS18_ROOT}
    roots[PAIRS] = roots["davis"]
    try:
        if d.enabled and settings.device.type == "cuda":
            torch.cuda.set_device(d.local_rank)
            settings = replace(settings, device=torch.device("cuda", d.local_rank))
        datasets = open_datasets(stages[first:], roots, opts, d)
        if d.main:
            prepare_save_dir(Path(opts.save_dir))
        amp_dtype(opts.amp, settings.device)  # refuse an unsupported --amp before building anything
        seed_everything(opts.seed + d.rank)  # each process draws its own clips; DDP gives all rank 0's weights
        if finished and len(resumed["rng"]) == d.world:
            restore_rng(resumed["rng"][d.rank])
        net = build_network(method, opts, resumed, None if resumed else getattr(args, "init", None))
        net = net.to(settings.device)
        if d.main and not opts.pretrained and resumed is None and not getattr(args, "init", None):
            print("note: --no-pretrained: the backbone starts from scratch, not from ImageNet (official: ImageNet)")
        validation = open_validation_if_needed(stages[first:], roots["davis"], opts, settings, d)
        with StopRequest(verbose=d.main) as stop:
            trainer = Trainer(method, opts, stages, net, settings.device, d, datasets, validation, roots, stop)
            if finished and opts.chain == "best":
                trainer.load_best(stages[first - 1])
            try:
                trainer.run(first, None if finished else resumed)
            except KeyboardInterrupt:  # a second Ctrl+C, or one that no signal handler could catch
                if d.main:
                    print(f"\naborted without saving; the checkpoints in {trainer.save_dir} are those written before",
                          file=sys.stderr)
                raise TrainingInterrupted(None) from None
        if d.main:
            print(f"finished training: {', '.join(s.name for s in stages[first:])}; checkpoints in {trainer.save_dir}")
        return net
    finally:
        if d.initialized_here:
            dist.destroy_process_group()


def prepare_save_dir(path: Path) -> None:
    """Before any step: the folder exists and takes files, and the temporaries of saves a kill cut short are gone."""
    writable_dir(path, "--save-dir")
    for leftover in weights.clean_stale_temporaries(path):
        print(f"removed {leftover}, left by a save that was killed")


def open_validation_if_needed(stages: list[StageConfig], davis_root: str | None, opts: TrainOptions,
                              settings: RunSettings, d: Dist) -> Validation | None:
    if not any(s.val_every and s.data != PAIRS for s in stages):  # pairs stages validate on held-out pairs
        return None
    validation, why = open_validation(davis_root, davis_year(opts), opts.val_sequences, settings)
    if validation is None and d.main:
        print(f"no DAVIS {davis_year(opts)} val to validate on ({why}); training without validation, so each "
              f"stage keeps its last checkpoint as <name>_best.pth")
    return validation
