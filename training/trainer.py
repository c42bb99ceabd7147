"""Training: `python run.py --train`, one or more stages in a row (a library; run.py is its command line).

Read top to bottom: the options, the model selection on DAVIS val through the same driver as `run.py --test`, the
log, and the loop (`train_stage`: the method's batch transforms, its training forward and loss, backward, optimizer
step). The trainer runs every method's recipe the same way and knows none of them: each stage brings its training
data and its model selection (methods.StageData), and the method's registry entry (methods.Method, exported by the
method's own module) its stage presets, batch transforms, training forward and losses. Checkpoints and --resume are
in checkpoint.py, torchrun's process group in distributed.py.

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

import contextlib
import math
import os
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import torch
import torch.nn as nn
from torch import Tensor
from torch.utils.data import DataLoader, RandomSampler
from tqdm import tqdm

from benchmarks import davis, generic
from core import config_flags, distributed, methods, weights
from core.distributed import Dist
from core.methods import Batch, Method, Selection, StageConfig, StageContext
from core.segmenter import RunSettings, run_settings, segment_video
from dataset import Roots
from training import checkpoint, curves, samplers
from training.checkpoint import capture_rng, restore_rng
from training.samplers import TrainSet
from utils import RunLock, VOSInputError

SEED = 19971007  # the official run.py seeds python, numpy and torch with it


class TrainingError(Exception):
    """Training cannot go on (a non-finite loss or weights); the message says where and what to try."""


class TrainingInterrupted(Exception):  # noqa: N818 -- a stop the user asked for, not an error
    """Raised after Ctrl+C (SIGINT), SIGTERM or SIGUSR1 once the resumable checkpoint is written (`checkpoint`), or
    when the user aborted without saving (`checkpoint` None). The message with the resume command has been printed
    already; run.py turns it into exit status 130, as a shell reports a Ctrl+C."""

    def __init__(self, checkpoint: Path | None):
        super().__init__(f"training stopped; resumable checkpoint: {checkpoint}" if checkpoint is not None
                         else "training aborted without saving")
        self.checkpoint = checkpoint


# ---------------------------------------------------------------------------------------------------------------
# options
# ---------------------------------------------------------------------------------------------------------------

@dataclass
class TrainOptions:
    """What `run.py --train` was asked for, one field per flag. None: not given, so with --resume the interrupted
    run's value and otherwise the default in the comment (`resolve_options` fills them in)."""

    stages: list[str] | None = None  # the method's default stages (EMVOS: coco davis, as the official run.py)
    overrides: dict[str, object] = field(default_factory=dict)  # stage field -> value, over every chosen stage
    val_sequences: list[str] | None = None  # None: every sequence of DAVIS val
    davis_year: str | None = None  # None: each stage data's own (2016 for frame pairs, else 2017); 2017 to validate
    save_dir: str | None = None  # trained_model/; with --resume, the folder of the resumed file
    pretrained: bool | None = None  # True: the backbone starts from its ImageNet weights (official)
    chain: str | None = None  # 'last' (official: the model object is carried over) or 'best'
    amp: bool | None = None  # False
    workers: int | None = None  # 4 DataLoader workers (official)
    train_encoder: bool | None = None  # False: EMVOS's encoder stays frozen (official)
    seed: int | None = None  # SEED
    loss: str | None = None  # one of the method's losses by name; None: its default
    model: dict[str, object] = field(default_factory=dict)  # config field -> value (the model flags); the rest default
    # of this run only, not recorded in its checkpoints
    init: str | None = None  # start the first stage from these weights
    resume: str | None = None  # go on from this checkpoint (X.pth or X.train.pth)
    device: str | None = None  # None: cuda when available
    precision: str = "fp32"  # of validation: fp32, bf16 or fp16


# the options a checkpoint records and --resume restores, and the defaults of those that have one
RECORDED = ("stages", "overrides", "val_sequences", "davis_year", "save_dir", "pretrained", "chain", "amp", "workers",
            "train_encoder", "seed", "loss")
DEFAULTS = {"pretrained": True, "chain": "last", "amp": False, "train_encoder": False, "seed": SEED}


def resolve_options(options: TrainOptions, method: Method, saved: dict | None = None) -> TrainOptions:
    """Every option settled: the flag given > the resumed run's recorded value (`saved`) > the default."""
    recorded = {k: v for k, v in (saved or {}).items() if k in RECORDED}
    # workers: official 4, but no more than the CPUs (torch warns on every run when the workers outnumber them)
    values = {**DEFAULTS, "workers": min(4, os.cpu_count() or 1), "stages": list(method.default_stages),
              "save_dir": str(methods.TRAINED_MODEL), **recorded}
    if options.resume:
        values["save_dir"] = str(Path(options.resume).parent)  # a resumed run writes next to the file it resumed
    values.update({k: v for k, v in asdict(options).items() if v is not None})
    values["overrides"] = {**recorded.get("overrides", {}), **options.overrides}
    values["stages"] = list(values["stages"])
    if values.get("val_sequences") is not None:
        values["val_sequences"] = list(values["val_sequences"])
    opts = TrainOptions(**values)
    for name in opts.stages:
        methods.stage_preset(method, name)  # an unknown stage or a malformed mixture is refused here
    return opts


def recorded_options(opts: TrainOptions) -> dict:
    """The options a checkpoint keeps (plain values), which --resume restores."""
    return {k: v for k, v in asdict(opts).items() if k in RECORDED}


def check_recipe(opts: TrainOptions, method: Method) -> None:
    if opts.resume and opts.init:
        raise VOSInputError("pass --resume or --init, not both: --resume restores the weights it holds")
    if opts.loss is not None and opts.loss not in method.losses:
        raise VOSInputError(f"--loss {opts.loss} is not a loss of {method.name}; choose from "
                            f"{', '.join(method.losses)}")
    if opts.model and opts.resume:
        flags = ", ".join(config_flags.flag_name(n) for n in opts.model)
        raise VOSInputError(f"--resume goes on with the model its checkpoint holds; drop {flags}")
    if opts.model:
        try:
            config = method.config(**opts.model)
        except ValueError as e:
            raise VOSInputError(f"the model flags give no valid {method.name} config: {e}") from e
        # with --init the flags apply on top of that file's config: checked once it is read (build_network)
        unused = None if opts.init else config_flags.unused_flags(config, opts.model)
        if unused is not None:
            raise VOSInputError(f"{unused}; drop it")
    if opts.precision == "fp64":
        raise VOSInputError("--precision fp64 is for comparing with a reference at test time; validation during "
                            "training runs in fp32 (default), bf16 or fp16")


def check_resumed_workers(options: TrainOptions, resumed: dict) -> None:
    """Refuse a --workers other than the resumed run's: each DataLoader worker draws its own stream of clips (seeded
    as torch seeds workers, as in the official run), so another count would go on with other clips than the
    interrupted run would have drawn, and end with other weights."""
    saved = resumed["train_options"].get("workers")
    if options.workers is not None and saved is not None and options.workers != saved:
        raise VOSInputError(f"--workers {options.workers}: {options.resume} was trained with --workers {saved}, and "
                            f"each worker draws its own clips, so the resumed run would not go on as the interrupted "
                            f"one would have; pass --workers {saved} or leave --workers out")


def stage_configs(opts: TrainOptions, method: Method) -> list[StageConfig]:
    """The presets of the chosen stages with the overrides applied, checked (the data checks its own needs when
    it opens). An override of a field a stage lacks (EMVOS's swap_above on a VideoMatch stage) is refused: it would
    do nothing."""
    for name in opts.stages:
        preset = methods.stage_preset(method, name)
        own = {f.name for f in fields(preset)}
        for key in opts.overrides:
            if key not in own:
                flag = "--" + key.replace("_", "-")
                raise VOSInputError(f"{flag} is not a setting of {method.name}'s stage '{name}' (its recipe has "
                                    f"no such step), so it would do nothing; drop {flag}")
    stages = [replace(methods.stage_preset(method, name), **opts.overrides) for name in opts.stages]
    for s in stages:
        least = {"epochs": (s.epochs, 1), "batch_size": (s.batch_size, 1), "clips_per_epoch": (s.clips_per_epoch, 0),
                 "save_every": (s.save_every, 1)}
        for name, (value, low) in least.items():
            if value < low:
                raise VOSInputError(f"--{name.replace('_', '-')} must be at least {low} (stage {s.name})")
        if s.clip_len < 2:
            raise VOSInputError(f"--clip-len must be at least 2: the loss covers frames 1..L-1 (stage {s.name})")
        if s.val_every < 0:
            raise VOSInputError("--val-every must be 0 (never) or more")
        stride = method.model.stride
        if min(s.crop) < stride:
            raise VOSInputError(f"--crop {s.crop[0]} {s.crop[1]} is too small; {method.name}'s stride is {stride}")
    return stages


# ---------------------------------------------------------------------------------------------------------------
# one training step
# ---------------------------------------------------------------------------------------------------------------

def epoch_sampler(data: TrainSet, per_epoch: int) -> RandomSampler:
    """One epoch's item order: per_epoch items drawn without replacement, or all of them when 0 (or more).

    The clip samplers hold exactly clips_per_epoch random clips, so for them this is DataLoader(shuffle=True), draw
    for draw; for TrainPairs it is every pair exactly once per epoch, or with a smaller count the port's --iters (the
    first pairs of a fresh shuffle).
    """
    return RandomSampler(data, num_samples=min(len(data), per_epoch) if per_epoch else len(data))


def amp_dtype(enabled: bool, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for --amp: bf16 where the device has it, fp16 (with a GradScaler) on older GPUs."""
    if not enabled:
        return None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu":
        return torch.bfloat16  # CPU autocast is bf16 only
    raise VOSInputError(f"--amp is not supported on device {device.type}; run without it")


def check_finite_weights(net: nn.Module, where: str) -> None:
    """Refuse to save weights that an overflowing update made inf or NaN."""
    for name, p in net.named_parameters():
        if not torch.isfinite(p).all():
            raise TrainingError(f"weight {name} is not finite {where}; no checkpoint was written from this state. "
                                f"Try a lower --lr, or run without --amp (--no-amp), from the last checkpoint")


# Ctrl+C; what SLURM (at the time limit, scancel) and Kubernetes (pod deletion) send before the kill; what SLURM's
# `--signal=USR1@90` sends 90 s before it. Each stops a run as Ctrl+C does (StopRequest).
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)


def _init_worker(worker_id: int) -> None:
    """DataLoader workers ignore the stop signals, which SLURM sends to every process of a job step: a
    worker killed by one makes torch raise in the main process wherever it is (mid-step), and nothing is saved. The
    main process finishes its iteration, saves, then stops the workers. They were forked with the signals blocked
    (`held_stop_signals`), so one sent before this point is dropped here instead of killing the worker."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    samplers.seed_worker(worker_id)


@contextlib.contextmanager
def held_stop_signals() -> Iterator[None]:
    """Block the stop signals in this thread while DataLoader workers are forked: a forked worker inherits the mask
    and keeps the signals pending until it ignores them (`_init_worker`); this process gets its own when the block
    ends, or another thread takes it meanwhile (Python then runs the handler in the main thread all the same)."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


# ---------------------------------------------------------------------------------------------------------------
# model selection on DAVIS val: run.py's own inference and evaluation.py's J&F, so the numbers are those of
# `run.py --test`
# ---------------------------------------------------------------------------------------------------------------

class StopRequest:
    """Ctrl+C (SIGINT), SIGTERM or SIGUSR1 (STOP_SIGNALS): the first one lets the current iteration finish, then the
    run saves a resumable checkpoint and stops. A second Ctrl+C aborts at once without saving; a later SIGTERM or
    SIGUSR1 does not (SLURM sends SIGTERM at the time limit after `--signal=USR1@90`; the save goes on). Signal
    handlers only exist in the main thread; elsewhere a KeyboardInterrupt is the only way in."""

    def __init__(self, verbose: bool):
        self.requested = False
        self.verbose = verbose
        self._previous: dict = {}

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: object) -> None:
        if self.requested:
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            return
        self.requested = True
        if self.verbose:
            print(f"\n{signal.Signals(signum).name}: stopping after this iteration to save a resumable checkpoint "
                  f"(press Ctrl+C again to abort without saving)", file=sys.stderr, flush=True)

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


@dataclass
class DavisValidation:
    """J&F-Mean on DAVIS val (the official trainer validates on DAVIS 2017 val) or a subset of it: a Selection."""

    data: davis.DAVIS
    sequences: list[str]
    settings: RunSettings
    stop: StopRequest

    @property
    def title(self) -> str:
        subset = f" ({len(self.sequences)} sequences)" if self.sequences else ""
        return f"DAVIS {self.data.year} val{subset} J&F"

    def __call__(self, net: nn.Module) -> float | None:
        """The J&F-Mean, or None when a stop was requested half way (the caller saves and exits)."""
        net.eval()
        try:
            with tempfile.TemporaryDirectory(prefix="emvos_val_") as tmp:
                for video in self.data.videos(self.sequences):
                    if self.stop.requested:
                        return None
                    segment_video(net, video, Path(tmp) / video.name, self.settings)
                gt = self.data.ground_truth(self.sequences)
                return davis.evaluate_sequences(gt, Path(tmp), self.data.binary).jf_mean
        finally:
            net.train()


def open_validation(root: str | None, year: str, sequences: list[str] | None, settings: RunSettings,
                    stop: StopRequest) -> tuple[DavisValidation | None, str | None]:
    """(the validation set, None), or (None, why not) when that DAVIS val is not on disk."""
    if root is None:
        return None, "--davis is not set"
    try:
        data = davis.DAVIS(root, year, "val")
    except VOSInputError as e:
        return None, str(e)
    names = list(sequences) if sequences else list(data.sequences)
    unknown = [n for n in names if n not in data.sequences]
    if unknown:
        raise VOSInputError(f"--val-sequences {' '.join(unknown)}: not in DAVIS {year} val at '{data.root}' "
                            f"(it has {', '.join(data.sequences[:5])}{', ...' if len(data.sequences) > 5 else ''})")
    return DavisValidation(data, names, settings, stop), None


@dataclass
class HeldoutValidation:
    """J&F of held-out videos of a generic folder (--val-sequences), each object given at its first mask, segmented
    by the driver of `run.py --test` and scored as vos-benchmark scores a generic folder (its frames but the first
    and the last, each object from its first appearance): the selection of a fine-tuning stage. Reported as a
    fraction, as the DAVIS J&F."""

    root: Path
    sequences: list[str]
    settings: RunSettings
    stop: StopRequest

    @property
    def title(self) -> str:
        return f"vos-benchmark J&F of {len(self.sequences)} held-out video(s) of {self.root}"

    def __call__(self, net: nn.Module) -> float | None:
        net.eval()
        try:
            with tempfile.TemporaryDirectory(prefix="emvos_val_") as tmp:
                for video in generic.validation_videos(self.root, self.sequences):
                    if self.stop.requested:
                        return None
                    segment_video(net, video, Path(tmp) / video.name, self.settings)
                scores = generic.score_vos_benchmark(self.root / "Annotations", Path(tmp), workers=1)
                return dict(scores.global_table)["J&F"] / 100
        finally:
            net.train()


class DavisVal:
    """The DAVIS val selection the stages share (StageContext.davis_val): opened on the first call, and when it is
    not on disk, said once."""

    def __init__(self, root: str | None, opts: TrainOptions, settings: RunSettings, stop: StopRequest,
                 verbose: bool) -> None:
        self.root, self.opts, self.settings, self.stop, self.verbose = root, opts, settings, stop, verbose
        self.opened = False
        self.selection: DavisValidation | None = None

    def __call__(self) -> DavisValidation | None:
        if not self.opened:
            self.opened = True
            year = self.opts.davis_year or "2017"
            self.selection, why = open_validation(self.root, year, self.opts.val_sequences, self.settings, self.stop)
            if self.selection is None and self.verbose:
                print(f"no DAVIS {year} val to validate on ({why}); training without validation, so each stage "
                      f"keeps its last checkpoint as <name>_best.pth")
        return self.selection


# ---------------------------------------------------------------------------------------------------------------
# the log
# ---------------------------------------------------------------------------------------------------------------

def log_columns(stages: list[StageConfig]) -> list[str]:
    """train_log.csv's columns: the epoch's step statistics, then the score column of each stage's selection."""
    return [*curves.STEP_COLUMNS, *dict.fromkeys(s.data.column for s in stages)]


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
class Trainer:
    """What every stage of a run shares. One per process; rank 0 alone writes files and validates."""

    method: Method
    opts: TrainOptions
    stages: list[StageConfig]  # every stage of --stages, those already done included
    net: nn.Module  # the bare model (not the DDP wrapper)
    device: torch.device
    dist_info: Dist
    roots: Roots
    stop: StopRequest
    davis_val: DavisVal

    def __post_init__(self) -> None:
        self.save_dir = Path(self.opts.save_dir)
        # rank 0 alone logs: train_log.csv, TensorBoard under runs/, train_curves.png
        self.curves = curves.CurveLogger(self.save_dir, log_columns(self.stages)) if self.dist_info.main else None
        self.amp = amp_dtype(self.opts.amp, self.device)
        self.loss = self.method.losses[self.opts.loss or self.method.default_loss]
        self.verbose = self.dist_info.main

    def say(self, text: str) -> None:
        if self.verbose:
            tqdm.write(text, file=sys.stdout)
            sys.stdout.flush()


@dataclass
class StageRun:
    """One stage in progress: its preset, data and selection, where it stands, and the objects a step needs."""

    stage: StageConfig
    data: TrainSet
    selection: Selection | None  # None: nothing to select on, the last weights stand as the best
    state: StageState
    model: nn.Module  # what a step calls: the DistributedDataParallel wrapper, or the bare model
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None  # fp16 autocast only
    loader: DataLoader


def train_stage(t: Trainer, run: StageRun) -> None:
    """The stage's epochs from where it stands. A step: the batch (through the method's batch transforms,
    `batches`), the method's training forward over the clips, its loss on frames 1..L-1, backward, the optimizer
    step; after each epoch the model selection, the checkpoints and the log row (`end_epoch`)."""
    state = run.state
    if state.epoch_end_pending:  # stopped during the selection after a finished epoch: do that epoch's end again
        stats = EpochStats(**state.partial)
        state.partial, state.epoch_end_pending = None, False
        end_epoch(t, run, stats)
    for epoch in range(state.epoch + 1, run.stage.epochs + 1):
        stats, epoch_rng = begin_epoch(t, run)
        # closed on any exit (a NaN loss included), so that the epoch's DataLoader workers never outlive it
        with contextlib.closing(batches(t, run, epoch, stats, epoch_rng)) as epoch_batches:
            for batch, t0 in epoch_batches:
                batch = batch.to(t.device)
                gt = batch.masks[:, 1:]  # the loss covers frames 1..L-1; frame 0's masks are given
                with torch.autocast(t.device.type, dtype=t.amp, enabled=t.amp is not None):
                    logits = t.method.train_forward(run.model, batch)  # one object: (B, L-1, 2, H, W)
                loss = t.loss(logits, gt)
                iou = t.method.train_iou(logits.detach(), gt)
                loss_value, iou = distributed.all_reduce(t.dist_info, [loss.item(), iou.item()], t.device, "mean")
                check_finite(t, loss_value, run, epoch, stats)
                run.optimizer.zero_grad(set_to_none=True)
                if run.scaler is not None:  # fp16 autocast
                    run.scaler.scale(loss).backward()
                    run.scaler.step(run.optimizer)
                    run.scaler.update()
                else:
                    loss.backward()
                    run.optimizer.step()
                state.iteration += 1
                seconds = time.perf_counter() - t0
                stats.add(loss_value, iou, batch.imgs.shape[0] * t.dist_info.world, seconds)
                if t.curves is not None:
                    t.curves.step(state.iteration, loss_value, iou, run.optimizer.param_groups[0]["lr"], seconds)
        state.epoch = epoch
        end_epoch(t, run, stats)
    if not state.validated:
        # Nothing to choose the best by, so the last weights stand for the stage. The official ytvos stage has no
        # validation set, so its trainer never writes a best file at all; this gives coco_ytvos_best.pth a source.
        save(t, run, f"{run.stage.save_name}_best.pth", "last checkpoint as best (no validation)")


def begin_epoch(t: Trainer, run: StageRun) -> tuple[EpochStats, list[dict]]:
    """Fresh sums and the random states the epoch starts from (every process's), or, resuming mid-epoch, the
    interrupted epoch's sums and its random states restored."""
    d, state = t.dist_info, run.state
    if state.partial is None:
        return EpochStats(), distributed.gather(d, capture_rng())
    partial = dict(state.partial)
    epoch_rng = partial.pop("rng")
    restore_rng(epoch_rng[d.rank] if len(epoch_rng) == d.world else capture_rng())
    state.partial = None
    return EpochStats(**partial), epoch_rng


def transformed(t: Trainer, run: StageRun, item: dict[str, Tensor]) -> Batch | None:
    """A collated batch of the sampler through the method's batch transforms, in order; None when one skips it."""
    batch: Batch | None = Batch(item["imgs"], item["masks"])
    for transform in t.method.transforms:
        batch = transform.apply(batch, run.stage)
        if batch is None:
            break
    return batch


def batches(t: Trainer, run: StageRun, epoch: int, stats: EpochStats,
            epoch_rng: list[dict]) -> Iterator[tuple[Batch, float]]:
    """The epoch's batches through the method's transforms (`transformed`), those a transform skips left out (on
    every process together), as (batch, start time). A resumed epoch first redraws the batches it had done and sends
    them through the transforms, without running the model, so the data and the random draws go on exactly as in the
    interrupted run. A stop request (Ctrl+C) ends the epoch here: the resumable checkpoint is written and
    TrainingInterrupted raised."""
    d, state = t.dist_info, run.state
    with held_stop_signals():  # the workers are forked here
        loader = iter(run.loader)  # draws the workers' seeds (and the shuffle) from torch's generator
    bar = tqdm(total=len(run.loader), desc=f"{run.stage.name} ep{epoch:04d}", leave=False, dynamic_ncols=True,
               disable=not t.verbose, initial=stats.batches)
    try:
        for _ in range(stats.batches):  # replay: the same data and the same draws of the transforms
            transformed(t, run, next(loader))
        while stats.batches < len(run.loader):
            t0 = time.perf_counter()
            item = None if t.stop.requested else next_batch(t, loader)
            batch = None if item is None else transformed(t, run, item)
            skip, stop = distributed.all_reduce(d, [float(batch is None), float(t.stop.requested)], t.device, "max")
            if stop:
                state.partial, state.epoch = {**asdict(stats), "rng": epoch_rng}, epoch - 1
                raise interrupted(t, run, f"epoch {epoch} after {stats.batches} of {len(run.loader)} batches")
            stats.batches += 1
            bar.update()
            if not skip:
                yield batch, t0
                bar.set_postfix(loss=f"{stats.last_loss:.4f}")
    finally:
        bar.close()
        # The workers ignore the stop signals (_init_worker), so torch's SIGTERM cannot end them: shut them down
        # here, or multiprocessing would wait on them forever when the interpreter exits.
        shutdown = getattr(loader, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()


def next_batch(t: Trainer, loader: Iterator) -> dict | None:
    try:
        return next(loader)
    except Exception:
        if not t.stop.requested:  # workers that died of the signal: not an error
            raise
        return None


def check_finite(t: Trainer, loss: float, run: StageRun, epoch: int, stats: EpochStats) -> None:
    if not math.isfinite(loss):
        raise TrainingError(
            f"the loss is {loss} in stage '{run.stage.name}', epoch {epoch}, iteration {stats.steps + 1} of the "
            f"epoch ({stats.batches} batches drawn); training stopped and no checkpoint was written from this "
            f"state (those in {t.save_dir} are intact). Try a lower --lr (now {run.stage.lr:g})"
            f"{', or run without --amp (--no-amp)' if t.amp is not None else ''}, and resume from the last "
            f"checkpoint with --resume; without --amp, a diverging run usually needs the lower --lr")


def end_epoch(t: Trainer, run: StageRun, stats: EpochStats) -> None:
    """The model selection (keeping a new best), the periodic checkpoint and the log row (the official order)."""
    stage, state = run.stage, run.state
    epoch = state.epoch
    state.rng = distributed.gather(t.dist_info, capture_rng())  # what the next epoch starts from
    loss, iou, sec = stats.summary()
    if stats.steps:
        t.say(f"[{stage.name} ep{epoch:04d}] loss {loss:.5f}  iou {iou:.5f}  ({stats.steps} it, {sec:.3f} s/it)")
    due = run.selection is not None and stage.val_every and epoch % stage.val_every == 0
    score = select(t, run, stats) if due else None
    if epoch % stage.save_every == 0 or epoch == stage.epochs:
        save(t, run, f"{stage.save_name}_{epoch:04d}.pth", "checkpoint", resumable=True)
    if t.curves is not None:
        done = bool(stats.steps)
        t.curves.epoch({
            "stage": stage.name, "epoch": epoch, "iteration": state.iteration,
            "loss": f"{loss:.6f}" if done else "", "iou": f"{iou:.6f}" if done else "",
            "lr": f"{run.optimizer.param_groups[0]['lr']:g}", "sec_per_iter": f"{sec:.4f}" if done else "",
            stage.data.column: "" if score is None else f"{score:.6f}"})


def select(t: Trainer, run: StageRun, stats: EpochStats) -> float:
    """Score the model by the stage's selection (rank 0; the others get its score) and keep a new best."""
    stage, state = run.stage, run.state
    score = distributed.broadcast(t.dist_info, run.selection(t.net) if t.dist_info.main else None)
    if score is None:  # stopped during the selection: the resumed run scores this epoch again
        state.partial, state.epoch_end_pending = asdict(stats), True
        raise interrupted(t, run, f"the validation after epoch {state.epoch}")
    state.validated = True
    new_best = score > state.best_score
    t.say(f"[{stage.name} ep{state.epoch:04d}] {run.selection.title} {score:.5f}"
          f"{' (new best)' if new_best else f' (best {state.best_score:.5f})'}")
    if new_best:
        state.best_score = score
        save(t, run, f"{stage.save_name}_best.pth", f"new best checkpoint after epoch {state.epoch}")
    return score


# ---------------------------------------------------------------------------------------------------------------
# stages
# ---------------------------------------------------------------------------------------------------------------

def open_stages(stages: list[StageConfig], ctx: StageContext) -> list[tuple[TrainSet, Selection | None]]:
    """Every stage's training data (its root first, then the data itself checked) and model selection, before any
    training starts."""
    problems = []
    for data in dict.fromkeys(d for s in stages for d in s.data.sources()):
        root = ctx.roots.get(data.root)
        if root is None or not Path(root).is_dir():
            given = ("is not set" if root is None else f"'{root}' is a file, not a folder" if Path(root).exists()
                     else f"'{root}' does not exist")
            needed_by = ", ".join(s.name for s in stages if data in s.data.sources())
            problems.append(f"stage(s) {needed_by} train on {data.name}, but --{data.root} {given}; pass "
                            f"--{data.root} PATH (the folder with {data.holds}) or leave the stage out of --stages")
    for s in stages:
        if s.batch_size % ctx.world or s.clips_per_epoch % ctx.world:
            problems.append(f"stage {s.name}: --batch-size {s.batch_size} and --clips-per-epoch {s.clips_per_epoch} "
                            f"must be multiples of the {ctx.world} processes (each takes an equal share)")
    if problems:
        raise VOSInputError("\n".join(problems))
    opened = []
    for s in stages:
        data = s.data.open(s, ctx)
        data.check()  # data that could only give skipped batches is an error now, not after the run
        opened.append((data, s.data.selection(s, data, ctx) if s.val_every else None))
    return opened


def start_stage(t: Trainer, stage: StageConfig, data: TrainSet, selection: Selection | None,
                resumed: dict | None) -> StageRun:
    """A new Adam per stage, as the official run.py builds one in each train_* function; with --resume, the
    optimizer, the scaler and the stage's progress and random states of the checkpoint."""
    d = t.dist_info
    net = t.net.train()  # EMVOS.train keeps the encoder (BatchNorm) in eval mode, as the official model.eval()
    optimizer = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=stage.lr,
                                 weight_decay=stage.weight_decay)
    scaler = torch.amp.GradScaler("cuda") if t.amp == torch.float16 else None
    state = StageState(rng=distributed.gather(d, capture_rng()))
    if resumed is not None:
        optimizer.load_state_dict(resumed["optimizer"])
        if scaler is not None and resumed.get("scaler"):
            scaler.load_state_dict(resumed["scaler"])
        state = StageState(**{f.name: resumed[f.name] for f in fields(StageState)})
        if len(state.rng) == d.world:
            restore_rng(state.rng[d.rank])
        else:
            t.say(f"warning: the checkpoint was written by {len(state.rng)} process(es), this run has {d.world}; "
                  f"the clips drawn from here on differ from the original run's")
    model = distributed.wrap(d, net, t.device)
    loader = DataLoader(data, batch_size=stage.batch_size // d.world,
                        sampler=epoch_sampler(data, stage.clips_per_epoch // d.world), num_workers=t.opts.workers,
                        worker_init_fn=_init_worker, pin_memory=t.device.type == "cuda")
    run = StageRun(stage, data, selection, state, model, optimizer, scaler, loader)
    if t.curves is not None:  # a resumed stage's curves go on from the checkpoint's step
        t.curves.start_stage(stage.name, state.iteration)
    describe(t, run)
    return run


def describe(t: Trainer, run: StageRun) -> None:
    stage = run.stage
    for transform in t.method.transforms:
        note = transform.note(stage, run.loader.batch_size)
        if note is not None:
            t.say(note)
    mixture = run.data.describe()
    if mixture is not None:
        t.say(f"stage '{stage.name}': {mixture}")
    selecting = run.selection is not None and stage.val_every
    val_note = f"validating on {run.selection.title} every {stage.val_every} epochs" if selecting else "no validation"
    world = t.dist_info.world
    t.say(f"stage '{stage.name}': {stage.epochs} epochs of {len(run.loader.sampler) * world} clips of "
          f"{stage.clip_len} frames at {stage.crop[0]}x{stage.crop[1]}, batch {stage.batch_size}"
          f"{f' ({world} processes)' if world > 1 else ''}, lr {stage.lr:g}, {val_note}; "
          f"checkpoints {t.save_dir}/{stage.save_name}_*.pth")


def run_stages(t: Trainer, first: int, finished: bool, opened: list[tuple[TrainSet, Selection | None]],
               resumed: dict | None) -> None:
    """Stages first.. in order on one model; a later one starts from the previous one's last weights, or with
    --chain best from its best checkpoint."""
    for k in range(first, len(t.stages)):
        if t.opts.chain == "best" and (k > first or finished):
            load_best(t, t.stages[k - 1])
        data, selection = opened.pop(0)  # the stage's run alone holds its data, freed after it (COCO's is large)
        train_stage(t, start_stage(t, t.stages[k], data, selection, resumed if k == first else None))


def load_best(t: Trainer, previous: StageConfig) -> None:
    """--chain best: start from the previous stage's best checkpoint instead of its last weights."""
    path = weights.safe_destination(t.save_dir / f"{previous.save_name}_best.pth", note=False)  # where save() wrote
    found = distributed.broadcast(t.dist_info, path.is_file() if t.dist_info.main else None)
    if not found:
        t.say(f"--chain best: no {path}; going on from the last weights of stage '{previous.name}'")
        return
    if t.dist_info.main:
        best, _ = methods.load_weights(path, "--chain best")
        t.net.load_state_dict(best.state_dict(), strict=True)
        t.say(f"starting from {path}")
    distributed.broadcast_weights(t.dist_info, t.net)


# ---------------------------------------------------------------------------------------------------------------
# checkpoints (what checkpoint.py writes, from the trainer's state)
# ---------------------------------------------------------------------------------------------------------------

def save(t: Trainer, run: StageRun, name: str, what: str, resumable: bool = False) -> None:
    """Write the weights file `name` (the method's file layout) and, if resumable, its `.train.pth` with
    everything --resume needs. Atomic: a kill leaves the previous file or the new one, never half of one."""
    # every process checks (their weights are equal), so that all of them stop together
    check_finite_weights(t.net, f"after epoch {run.state.epoch} of stage '{run.stage.name}'")
    if not t.dist_info.main:
        return
    path = weights.safe_destination(t.save_dir / name)  # never over the authors' released checkpoint
    checkpoint.save_atomic(methods.weights_payload(t.net, t.method.name), path)
    if resumable:
        checkpoint.save_atomic({
            "weights": methods.weights_payload(t.net, t.method.name), "method": t.method.name,
            "config": asdict(t.net.config), "stage": run.stage.name, "save_name": run.stage.save_name,
            **asdict(run.state), "world_size": t.dist_info.world, "optimizer": run.optimizer.state_dict(),
            "scaler": run.scaler.state_dict() if run.scaler is not None else None,
            "stage_config": run.stage.record(), "train_options": recorded_options(t.opts),
            "data": run.data.describe(),
        }, checkpoint.training_state_path(path))
    t.say(f"saved {what}: {path}{' (+ .train.pth to resume)' if resumable else ''}")


def interrupted(t: Trainer, run: StageRun, where: str) -> TrainingInterrupted:
    """Write the resumable checkpoint of a stopped run and say how to go on from it."""
    path = t.save_dir / f"{run.stage.save_name}_interrupted.pth"
    save(t, run, path.name, "resumable checkpoint", resumable=True)
    needed = [d.root for s in t.stages for d in s.data.sources()] + (
        ["davis"] if t.davis_val.selection is not None else [])
    data_flags = {name: str(t.roots.get(name)) for name in dict.fromkeys(needed) if t.roots.get(name) is not None}
    command = checkpoint.resume_command(path, t.method.name, data_flags, t.dist_info.world)
    t.say(f"interrupted in stage '{run.stage.name}' at {where}. Resume with:\n  {command}")
    return TrainingInterrupted(path)


# ---------------------------------------------------------------------------------------------------------------
# entry point
# ---------------------------------------------------------------------------------------------------------------

def build_network(method: Method, opts: TrainOptions, resumed: dict | None, verbose: bool = True) -> nn.Module:
    """The model to train: from the resumed checkpoint, from --init weights, or new (ImageNet backbone)."""
    overrides = {**opts.model, **({"train_encoder": True} if opts.train_encoder else {})}
    if resumed is not None:
        return methods.model_from_payload(resumed["weights"], Path(resumed["path"]), "--resume", resumed["config"])[0]
    if opts.init is not None:
        # --init official-davis / official-ytvos: the authors' files, as --weights names them (fetched when missing)
        init = weights.resolve_weights(opts.init, methods.TRAINED_MODEL, wording=weights.Wording("--init {}"))
        net, meta = methods.load_weights(init, "--init", overrides)
        if meta["method"] != method.name:
            raise VOSInputError(f"--init {opts.init} is a {meta['method']} checkpoint, not {method.name}")
        unused = config_flags.unused_flags(net.config, opts.model)
        if unused is not None:
            raise VOSInputError(f"{unused}, and --init {opts.init} holds {config_flags.describe(net.config)}; "
                                f"drop it")
        return net
    if not opts.pretrained and verbose:
        print("note: --no-pretrained: the backbone starts from scratch, not from ImageNet (official: ImageNet)")
    return methods.build_model(method.name, overrides, pretrained=opts.pretrained)


def train(method: str | None, options: TrainOptions, roots: Roots) -> nn.Module:
    """Train the stages `options` ask for, on the data under `roots`; returns the trained model (the bare module, on
    its device).

    Raises VOSInputError (bad options or data, missing ImageNet weights, an unwritable save folder) before any
    training, or when a checkpoint cannot be written (a full disk); TrainingError when the loss or the weights stop
    being finite; TrainingInterrupted after Ctrl+C, SIGTERM or SIGUSR1 (the resumable checkpoint written), or a
    second Ctrl+C (nothing saved).
    """
    resumed = checkpoint.load_resume(options.resume, method) if options.resume else None
    spec = methods.get(resumed["method"] if resumed else (method or "emvos"))  # --resume: the method the file records
    opts = resolve_options(options, spec, resumed["train_options"] if resumed else None)
    check_recipe(opts, spec)
    if resumed:
        check_resumed_workers(options, resumed)
    stages = stage_configs(opts, spec)
    first, finished = checkpoint.resume_point(resumed, stages, opts.resume)
    settings = run_settings(opts.device, opts.precision)
    d = distributed.init_distributed(settings.device)
    # one run per save folder (the main process holds it): a second would overwrite the first's checkpoints, and
    # its start-up clean-up (checkpoint.prepare_save_dir) would delete the first's temporaries
    held = contextlib.ExitStack()
    try:
        if d.main:
            held.enter_context(RunLock(Path(opts.save_dir), "--save-dir"))
        settings = replace(settings, device=distributed.process_device(d, settings.device))
        stop = StopRequest(verbose=d.main)
        # --val-sequences names the held-out videos of a stage that holds out its own (generic); the other stages
        # of such a run validate on the whole of DAVIS val
        holds_out = any(s.data.holds_out for s in stages)
        davis_val = DavisVal(roots.davis, replace(opts, val_sequences=None) if holds_out else opts, settings, stop,
                             d.main)
        context = StageContext(roots, opts.davis_year, d.world, settings.device, davis_val, opts.val_sequences,
                               lambda root, names: HeldoutValidation(root, names, settings, stop))
        opened = open_stages(stages[first:], context)
        if d.main:
            checkpoint.prepare_save_dir(Path(opts.save_dir))
        amp_dtype(opts.amp, settings.device)  # refuse an unsupported --amp before building anything
        checkpoint.seed_everything(opts.seed + d.rank)  # each process draws its own clips; DDP gives all rank 0's
        if finished and len(resumed["rng"]) == d.world:
            restore_rng(resumed["rng"][d.rank])
        net = build_network(spec, opts, resumed, verbose=d.main).to(settings.device)
        t = Trainer(spec, opts, stages, net, settings.device, d, roots, stop, davis_val)
        with stop:
            try:
                run_stages(t, first, finished, opened, None if finished else resumed)
            except KeyboardInterrupt:  # a second Ctrl+C, or one that no signal handler could catch
                if d.main:
                    print(f"\naborted without saving; the checkpoints in {t.save_dir} are those written before",
                          file=sys.stderr)
                raise TrainingInterrupted(None) from None
            finally:
                if t.curves is not None:
                    t.curves.close()
        if d.main:
            print(f"finished training: {', '.join(s.name for s in stages[first:])}; checkpoints in {t.save_dir}")
        return net
    finally:
        held.close()
        distributed.close_distributed(d)
