"""Training (DESIGN section 3): `python run.py --train` or `python trainer.py`, one or more stages in a row.

Read top to bottom: the stage presets and the per-method recipe (stages + loss), the options, one training step
(swap-and-attach, the skip rule, the loss), validation through run.py's own inference, checkpoints, and the loop.

    python run.py --train --coco ../DB/COCO --davis ../DB/DAVIS            # official: coco, then davis
    python run.py --train --stages ytvos --init trained_model/coco_best.pth --ytvos ../DB/YTVOS18
    torchrun --nproc_per_node 4 run.py --train ...                          # data parallel, same global batch
    python run.py --train --resume trained_model/coco_davis_interrupted.pth --davis ../DB/DAVIS

Checkpoint names follow the official release, not the stage names: the coco stage writes `coco_*`, the davis stage
`coco_davis_*` and the ytvos stage `coco_ytvos_*` (the official run.py names each stage after the chain that leads to
it), so a run with default flags ends with `coco_davis_best.pth`, the released file name. The name stays the same when
a stage runs alone. Every file holds the weights in the official key layout (`model.load_checkpoint` and
`run.py --test --weights` read it) plus everything `--resume` needs to go on exactly where the run stopped.
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
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

import dataset
import evaluation
import model as model_lib
import run
from utils import VOSInputError

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


# ---------------------------------------------------------------------------------------------------------------
# stages and methods
# ---------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class StageConfig:
    """One training stage. The presets are the official run.py's train_coco / train_davis / train_ytvos."""

    name: str  # what --stages calls it
    save_name: str  # checkpoint prefix, the official one: '<save_name>_best.pth', '<save_name>_<epoch:04d>.pth'
    data: str  # 'coco', 'davis' or 'ytvos': which clip sampler, and which root flag (--coco, --davis, --ytvos)
    clip_len: int  # frames per clip; the loss covers frames 1..clip_len-1
    clips_per_epoch: int  # an epoch is this many random clips (the official clip_n)
    batch_size: int  # clips per optimizer step, over all processes together
    epochs: int
    save_every: int  # write '<save_name>_<epoch:04d>.pth' every this many epochs (and after the last one)
    val_every: int  # validate on DAVIS val every this many epochs; 0 = never
    crop: tuple[int, int] = (384, 384)  # clip size (H, W) after the random resized crop
    lr: float = 1e-4  # Adam, no schedule (official)
    weight_decay: float = 0.0  # official: none
    swap_above: float = 0.8  # swap-and-attach when random.random() > this (p = 0.2); the official comparison


EMVOS_STAGES = {
    "coco": StageConfig("coco", "coco", "coco", clip_len=5, clips_per_epoch=128, batch_size=16, epochs=8000,
                        save_every=4000, val_every=400),
    "davis": StageConfig("davis", "coco_davis", "davis", clip_len=10, clips_per_epoch=128, batch_size=8, epochs=4000,
                         save_every=2000, val_every=200),
    # The official train_ytvos passes val_set=None: no validation, so its best checkpoint is the last one here.
    # --val-every N turns DAVIS validation on for it.
    "ytvos": StageConfig("ytvos", "coco_ytvos", "ytvos", clip_len=10, clips_per_epoch=128, batch_size=8, epochs=8000,
                         save_every=2000, val_every=0),
}


# VideoMatch (DESIGN 6): pairs of frames (the first frame's mask given, the second predicted), Adam lr 1e-5 with
# weight decay 5e-4, the whole network trained (its BatchNorm statistics stay frozen). No swap-and-attach: that is
# EMVOS's augmentation. The schedule (epochs, batch, save / validation cadence) is ours: the paper's is not in DESIGN.
VIDEOMATCH_STAGES = {
    "davis": StageConfig("davis", "videomatch_davis", "davis", clip_len=2, clips_per_epoch=128, batch_size=8,
                         epochs=2000, save_every=1000, val_every=100, lr=1e-5, weight_decay=5e-4, swap_above=1.0),
    "ytvos": StageConfig("ytvos", "videomatch_ytvos", "ytvos", clip_len=2, clips_per_epoch=128, batch_size=8,
                         epochs=2000, save_every=1000, val_every=0, lr=1e-5, weight_decay=5e-4, swap_above=1.0),
}


def emvos_loss(logits: Tensor, gt: Tensor) -> Tensor:
    """Cross-entropy of the 2-channel logits (B, L-1, 2, H, W) against gt (B, L-1, H, W) in {0, 1}, averaged over
    every pixel of every frame, as the official nn.CrossEntropyLoss on scores.view(-1, 2, H, W)."""
    return F.cross_entropy(logits.flatten(0, 1).float(), gt.flatten(0, 1))


@dataclass(frozen=True)
class Method:
    """What training needs to know about a method: its stage presets, the default chain, and its loss.

    The model comes from `model.build_model(name, ...)`; its forward must take (imgs (B, L, 3, H, W), first masks
    (B, H, W)) and return per-frame logits for frames 1..L-1, which `loss(logits, gt)` turns into a scalar.
    """

    stages: dict[str, StageConfig]
    default_stages: tuple[str, ...]
    loss: Callable[[Tensor, Tensor], Tensor]
    losses: dict[str, Callable[[Tensor, Tensor], Tensor]] = field(default_factory=dict)  # what --loss may pick


def _float_loss(loss: Callable[[Tensor, Tensor], Tensor]) -> Callable[[Tensor, Tensor], Tensor]:
    """The loss on fp32 logits (under --amp they come out in bf16 / fp16), as emvos_loss does."""
    return lambda logits, gt: loss(logits.float(), gt)


VIDEOMATCH_LOSSES = {name: _float_loss(f) for name, f in model_lib.VIDEOMATCH_LOSSES.items()}


METHODS: dict[str, Method] = {
    "emvos": Method(EMVOS_STAGES, ("coco", "davis"), emvos_loss),  # the official run.py trains coco, then davis
    "videomatch": Method(VIDEOMATCH_STAGES, ("davis",), VIDEOMATCH_LOSSES["bce"], VIDEOMATCH_LOSSES),
}

DATA_FLAGS = {  # stage data -> (root flag, what the folder must hold)
    "coco": ("--coco", "train2017/ + annotations/instances_train2017.json, or the converted JPEGImages/ + "
                       "Annotations/ of the official code"),
    "davis": ("--davis", "JPEGImages/480p, Annotations/480p and ImageSets/ of DAVIS-2017-trainval-480p"),
    "ytvos": ("--ytvos", "train/JPEGImages, train/Annotations (and train/meta.json) of YouTube-VOS 2018"),
}

# stage fields that flags override (flag dest -> StageConfig field)
OVERRIDES = {"epochs": "epochs", "batch_size": "batch_size", "clip_len": "clip_len",
             "clips_per_epoch": "clips_per_epoch", "crop": "crop", "lr": "lr", "val_every": "val_every",
             "save_every": "save_every"}


# ---------------------------------------------------------------------------------------------------------------
# options
# ---------------------------------------------------------------------------------------------------------------

def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """The training flags. run.py defines --method, --device, --precision, --davis, --ytvos and --coco itself.

    Flags left out default to the stage presets, or, with --resume, to what the interrupted run used.
    """
    g = parser.add_argument_group("train")
    g.add_argument("--stages", nargs="+", default=None, metavar="STAGE",
                   help="stages in order, each starting from the previous one's weights (default: coco davis, as "
                        "the official run.py; presets: " + ", ".join(EMVOS_STAGES) + ")")
    g.add_argument("--epochs", type=int, default=None, help="epochs per stage (official: coco 8000, davis 4000)")
    g.add_argument("--batch-size", type=int, default=None, help="clips per step over all processes (16 / 8)")
    g.add_argument("--clip-len", type=int, default=None, help="frames per clip (coco 5, davis 10)")
    g.add_argument("--clips-per-epoch", type=int, default=None, help="clips per epoch (128)")
    g.add_argument("--crop", type=int, nargs=2, default=None, metavar=("H", "W"), help="clip size (384 384)")
    g.add_argument("--lr", type=float, default=None, help="Adam learning rate (1e-4)")
    g.add_argument("--val-every", type=int, default=None, help="validate every N epochs, 0 = never (400 / 200)")
    g.add_argument("--save-every", type=int, default=None, help="write a checkpoint every N epochs (4000 / 2000)")
    g.add_argument("--val-sequences", nargs="+", default=None, help="validate on these DAVIS val sequences only")
    g.add_argument("--davis-year", choices=["2016", "2017"], default=None,
                   help="DAVIS year for the davis stage's train split and for validation (2017, official); 2016 "
                        "merges the objects into one and also reads the original DAVIS 2016 download")
    g.add_argument("--save-dir", default=None,
                   help="where checkpoints and train_log.csv go (trained_model; with --resume, the file's folder)")
    g.add_argument("--no-pretrained", action="store_true", default=None,
                   help="start the backbone from scratch instead of its ImageNet weights")
    g.add_argument("--init", default=None, metavar="PATH",
                   help="start the first stage from these weights (an official .pth or one written here)")
    g.add_argument("--resume", default=None, metavar="PATH",
                   help="go on exactly where the run that wrote this checkpoint stopped")
    g.add_argument("--chain", choices=["last", "best"], default=None,
                   help="a later stage starts from the previous stage's last weights (official: the model object is "
                        "carried over) or from its best checkpoint")
    g.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                   help="mixed precision: bf16 autocast (fp16 + GradScaler on GPUs without bf16)")
    g.add_argument("--workers", type=int, default=None, help="DataLoader worker processes (4, official)")
    g.add_argument("--train-encoder", action="store_true", default=None,
                   help="fine-tune the encoder too (official: frozen; its BatchNorm statistics stay frozen anyway)")
    g.add_argument("--seed", type=int, default=None, help=f"random seed ({SEED}, official)")
    g.add_argument("--loss", default=None, choices=sorted(VIDEOMATCH_LOSSES),
                   help="VideoMatch training loss: bce (default), balanced_bce or dice")


@dataclass
class TrainOptions:
    """The flags after defaults: explicit flag > the resumed checkpoint's value > default."""

    stages: list[str]
    overrides: dict[str, object]  # StageConfig field -> value, from the flags in OVERRIDES
    val_sequences: list[str] | None = None
    davis_year: str = "2017"
    save_dir: str = "trained_model"
    pretrained: bool = True
    chain: str = "last"
    amp: bool = False
    workers: int = 4
    train_encoder: bool = False
    seed: int = SEED
    loss: str | None = None  # --loss: one of the method's losses by name; None: its default


def resolve_options(args: argparse.Namespace, method: Method, saved: dict | None = None) -> TrainOptions:
    """Options from the flags; with a resumed checkpoint's saved options for the flags not given."""
    saved = dict(saved or {})
    overrides = dict(saved.get("overrides", {}))
    for dest, name in OVERRIDES.items():
        value = getattr(args, dest, None)
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
            if getattr(s, name) < 1:
                raise VOSInputError(f"--{name.replace('_', '-')} must be at least 1 (stage {s.name})")
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
    settings: run.RunSettings

    @property
    def title(self) -> str:
        return f"DAVIS {self.data.year} val" + (f" ({len(self.sequences)} sequences)" if self.sequences else "")


def open_validation(root: str | None, year: str, sequences: list[str] | None,
                    settings: run.RunSettings) -> tuple[Validation | None, str | None]:
    """(the validation set, None), or (None, why not) when that DAVIS val is not on disk."""
    try:
        data = dataset.DAVIS(root if root is not None else run.DAVIS_ROOT, year, "val")
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
                run.segment_video(net, video, Path(tmp) / video.name, val.settings)
            gt = {n: val.data.annotations(n) for n in val.sequences}
            return evaluation.evaluate_sequences(gt, Path(tmp), val.data.binary).jf_mean
    finally:
        net.train()


# ---------------------------------------------------------------------------------------------------------------
# checkpoints and the log
# ---------------------------------------------------------------------------------------------------------------

def save_atomic(payload: dict, path: Path) -> None:
    """torch.save to a temporary file in the same folder, then os.replace: a kill never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def check_finite_weights(net: nn.Module, where: str) -> None:
    """Refuse to save weights that an overflowing update made inf or NaN."""
    for name, p in net.named_parameters():
        if not torch.isfinite(p).all():
            raise TrainingError(f"weight {name} is not finite {where}; no checkpoint was written from this state. "
                                f"Try a lower --lr, or run without --amp (--no-amp), from the last checkpoint")


LOG_COLUMNS = ("stage", "epoch", "iteration", "loss", "iou", "lr", "val_jf", "sec_per_iter")


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
    """Runs the stages in order on one model. One per process; rank 0 alone writes files and validates."""

    method_name: str
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
    log_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.save_dir = Path(self.opts.save_dir)
        self.log_path = self.save_dir / "train_log.csv"
        self.amp = amp_dtype(self.opts.amp, self.device)
        self.verbose = self.dist_info.main

    def say(self, text: str) -> None:
        if self.verbose:
            tqdm.write(text, file=sys.stdout)
            sys.stdout.flush()

    # --- checkpoints ------------------------------------------------------------------------------------------------
    def payload(self, stage: StageConfig, state: StageState, optimizer: torch.optim.Optimizer,
                scaler: torch.amp.GradScaler | None) -> dict:
        return model_lib.checkpoint_dict(
            self.net, self.method_name, stage=stage.name, save_name=stage.save_name, epoch=state.epoch,
            iteration=state.iteration, best_score=state.best_score, validated=state.validated,
            partial=state.partial, epoch_end_pending=state.epoch_end_pending, rng=state.rng,
            world_size=self.dist_info.world, optimizer=optimizer.state_dict(),
            scaler=scaler.state_dict() if scaler is not None else None, stage_config=asdict(stage),
            train_options=asdict(self.opts))

    def write(self, payload: dict, path: Path, what: str) -> None:
        # every process checks (their weights are equal), so that all of them stop together
        check_finite_weights(self.net, f"after epoch {payload['epoch']} of stage '{payload['stage']}'")
        if self.dist_info.main:
            save_atomic(payload, path)
            self.say(f"saved {what}: {path}")

    def resume_command(self, path: Path) -> str:
        flags = [f"{DATA_FLAGS[s.data][0]} {self.roots[s.data]}" for s in self.stages if self.roots.get(s.data)]
        flags = list(dict.fromkeys(flags))
        if self.validation is not None and not any(s.data == "davis" for s in self.stages):
            flags.append(f"--davis {self.roots['davis']}")
        launcher = f"torchrun --nproc_per_node {self.dist_info.world} run.py" if self.dist_info.enabled else \
            "python run.py"
        return " ".join([launcher, "--train", f"--resume {path}", *flags])

    def interrupted(self, stage: StageConfig, state: StageState, optimizer: torch.optim.Optimizer,
                    scaler: torch.amp.GradScaler | None, where: str) -> TrainingInterrupted:
        path = self.save_dir / f"{stage.save_name}_interrupted.pth"
        self.write(self.payload(stage, state, optimizer, scaler), path, "resumable checkpoint")
        self.say(f"interrupted in stage '{stage.name}' at {where}. Resume with:\n  {self.resume_command(path)}")
        return TrainingInterrupted(path)

    # --- stages -------------------------------------------------------------------------------------------------
    def run(self, first: int, resumed: dict | None) -> None:
        for k in range(first, len(self.stages)):
            stage = self.stages[k]
            if k > first and self.opts.chain == "best":
                self.load_best(self.stages[k - 1])
            self.run_stage(stage, resumed if k == first else None)
            self.datasets.pop(stage.name, None)  # free it (the COCO index is large)

    def load_best(self, previous: StageConfig) -> None:
        """--chain best: start from the previous stage's best checkpoint instead of its last weights."""
        path = self.save_dir / f"{previous.save_name}_best.pth"
        found = _broadcast(self.dist_info, path.is_file() if self.dist_info.main else None)
        if not found:
            self.say(f"--chain best: no {path}; going on from the last weights of stage '{previous.name}'")
            return
        if self.dist_info.main:
            obj = torch.load(path, map_location="cpu", weights_only=True)
            self.net.load_state_dict(model_lib.from_official(obj["model"]), strict=True)
            self.say(f"starting from {path}")
        _broadcast_weights(self.dist_info, self.net)

    def make_loader(self, stage: StageConfig) -> DataLoader:
        per_rank = stage.batch_size // self.dist_info.world
        return DataLoader(self.datasets[stage.name], batch_size=per_rank, shuffle=True,
                          num_workers=self.opts.workers, worker_init_fn=_init_worker,
                          pin_memory=self.device.type == "cuda")

    def run_stage(self, stage: StageConfig, resumed: dict | None) -> None:
        net = self.net.train()  # EMVOS.train keeps the encoder (BatchNorm) in eval mode, as the official model.eval()
        params = [p for p in net.parameters() if p.requires_grad]
        # A new Adam per stage, as the official run.py builds one in each train_* function.
        optimizer = torch.optim.Adam(params, lr=stage.lr, weight_decay=stage.weight_decay)
        scaler = torch.amp.GradScaler("cuda") if self.amp == torch.float16 else None
        state = StageState(rng=_gather(self.dist_info, capture_rng()))
        if resumed is not None:
            optimizer.load_state_dict(resumed["optimizer"])
            if scaler is not None and resumed.get("scaler"):
                scaler.load_state_dict(resumed["scaler"])
            state = StageState(epoch=resumed["epoch"], iteration=resumed["iteration"],
                               best_score=resumed["best_score"], validated=resumed["validated"],
                               partial=resumed["partial"], epoch_end_pending=resumed["epoch_end_pending"],
                               rng=resumed["rng"])
            if len(state.rng) == self.dist_info.world:
                restore_rng(state.rng[self.dist_info.rank])
            else:
                self.say(f"warning: the checkpoint was written by {len(state.rng)} process(es), this run has "
                         f"{self.dist_info.world}; the clips drawn from here on differ from the original run's")
        ddp = nn.parallel.DistributedDataParallel(
            net, device_ids=[self.device.index] if self.device.type == "cuda" else None,
            broadcast_buffers=False,  # the only buffers are frozen BatchNorm statistics and constants
        ) if self.dist_info.enabled else net
        loader = self.make_loader(stage)
        if loader.batch_size == 1:
            self.say("note: one clip per process: swap-and-attach then pastes a clip onto itself, which empties its "
                     "mask, so those batches (p = 0.2) are skipped, as the official code does at batch size 1")
        val_note = f"validating on {self.validation.title} every {stage.val_every} epochs" \
            if self.validation is not None and stage.val_every else "no validation"
        self.say(f"stage '{stage.name}': {stage.epochs} epochs of {stage.clips_per_epoch} clips of "
                 f"{stage.clip_len} frames at {stage.crop[0]}x{stage.crop[1]}, batch {stage.batch_size}"
                 f"{f' ({self.dist_info.world} processes)' if self.dist_info.enabled else ''}, lr {stage.lr:g}, "
                 f"{val_note}; checkpoints {self.save_dir}/{stage.save_name}_*.pth")

        if state.epoch_end_pending:  # stopped during the validation of a finished epoch: do that epoch's end again
            stats = EpochStats(**state.partial)
            state.partial, state.epoch_end_pending = None, False
            self.end_epoch(stage, state, optimizer, scaler, stats)
        for epoch in range(state.epoch + 1, stage.epochs + 1):
            stats = self.train_epoch(stage, state, epoch, ddp, loader, optimizer, scaler)
            self.end_epoch(stage, state, optimizer, scaler, stats)
        if not state.validated:
            # Nothing to choose the best by, so the last weights stand for the stage. The official ytvos stage has no
            # validation set, so its trainer never writes a best file at all; this gives coco_ytvos_best.pth a source.
            self.write(self.payload(stage, state, optimizer, scaler),
                       self.save_dir / f"{stage.save_name}_best.pth", "last checkpoint as best (no validation)")

    def train_epoch(self, stage: StageConfig, state: StageState, epoch: int, ddp: nn.Module, loader: DataLoader,
                    optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None) -> EpochStats:
        d = self.dist_info
        if state.partial is not None:  # resuming mid-epoch: redraw the epoch's batches up to where it stopped
            partial = dict(state.partial)
            epoch_rng = partial.pop("rng")
            restore_rng(epoch_rng[d.rank] if len(epoch_rng) == d.world else capture_rng())
            stats = EpochStats(**partial)
            state.partial = None
        else:
            epoch_rng = _gather(d, capture_rng())
            stats = EpochStats()
        replay = stats.batches
        batches = iter(loader)  # draws the workers' seeds (and the shuffle) from torch's generator
        bar = tqdm(total=len(loader), desc=f"{stage.name} ep{epoch:04d}", leave=False, dynamic_ncols=True,
                   disable=not self.verbose, initial=replay)
        try:
            for _ in range(replay):  # the same data and the same swap draws, without running the model
                next(batches)
                random.random()
            while stats.batches < len(loader):
                batch = None
                t0 = time.perf_counter()
                if not self.stop.requested:
                    try:
                        batch = next(batches)
                    except Exception:
                        if not self.stop.requested:  # workers that died of the signal: not an error
                            raise
                if batch is not None:
                    imgs, masks = batch["imgs"], batch["masks"]  # (B, L, 3, H, W), (B, L, H, W)
                    if random.random() > stage.swap_above:  # the official draw, for every batch, before skipping
                        imgs, masks = swap_and_attach(imgs, masks)
                skip, stop = _all_reduce(d, [float(batch is None or must_skip(masks)), float(self.stop.requested)],
                                         self.device, "max")
                if stop:
                    state.partial = {**asdict(stats), "rng": epoch_rng}
                    state.epoch = epoch - 1
                    raise self.interrupted(stage, state, optimizer, scaler,
                                           f"epoch {epoch} after {stats.batches} of {len(loader)} batches")
                stats.batches += 1
                bar.update()
                if skip:
                    continue
                loss, iou = self.step(stage, epoch, stats, ddp, imgs, masks, optimizer, scaler)
                b = imgs.shape[0] * d.world
                state.iteration += 1
                stats.steps += 1
                stats.count += b
                stats.loss_sum += loss * b
                stats.iou_sum += iou * b
                stats.seconds += time.perf_counter() - t0
                bar.set_postfix(loss=f"{loss:.4f}", iou=f"{iou:.4f}")
        finally:
            bar.close()
        state.epoch = epoch
        return stats

    def step(self, stage: StageConfig, epoch: int, stats: EpochStats, ddp: nn.Module, imgs: Tensor, masks: Tensor,
             optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None) -> tuple[float, float]:
        imgs = imgs.to(self.device, non_blocking=True)
        masks = masks.to(self.device, non_blocking=True)
        gt = masks[:, 1:]
        with torch.autocast(self.device.type, dtype=self.amp, enabled=self.amp is not None):
            logits = ddp(imgs, masks[:, 0])  # (B, L-1, 2, H, W)
        loss = self.method.loss(logits, gt)
        loss_value, iou = _all_reduce(self.dist_info, [loss.item(), foreground_iou(logits.detach(), gt).item()],
                                      self.device, "mean")
        if not math.isfinite(loss_value):
            raise TrainingError(
                f"the loss is {loss_value} in stage '{stage.name}', epoch {epoch}, iteration {stats.steps + 1} of the "
                f"epoch ({stats.batches} batches drawn); training stopped and no checkpoint was written from this "
                f"state (those in {self.save_dir} are intact). Try a lower --lr (now {stage.lr:g})"
                f"{', or run without --amp (--no-amp)' if self.amp is not None else ''}, and resume from the last "
                f"checkpoint with --resume; without --amp, a diverging run usually needs the lower --lr")
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        return loss_value, iou

    def end_epoch(self, stage: StageConfig, state: StageState, optimizer: torch.optim.Optimizer,
                  scaler: torch.amp.GradScaler | None, stats: EpochStats) -> None:
        """Validate, keep the best, write the periodic checkpoint and the log row (the official order)."""
        epoch = state.epoch
        state.rng = _gather(self.dist_info, capture_rng())  # what the next epoch starts from
        loss, iou, sec = stats.summary()
        if stats.steps:
            self.say(f"[{stage.name} ep{epoch:04d}] loss {loss:.5f}  iou {iou:.5f}  ({stats.steps} it, "
                     f"{sec:.3f} s/it)")
        score = None
        if self.validation is not None and stage.val_every and epoch % stage.val_every == 0:
            result = validate(self.net, self.validation, self.stop) if self.dist_info.main else None
            score = _broadcast(self.dist_info, result)
            if score is None:  # stopped during validation: the resumed run validates this epoch again
                state.partial, state.epoch_end_pending = asdict(stats), True
                raise self.interrupted(stage, state, optimizer, scaler, f"the validation after epoch {epoch}")
            state.validated = True
            new_best = score > state.best_score
            self.say(f"[{stage.name} ep{epoch:04d}] {self.validation.title} J&F {score:.5f}"
                     f"{' (new best)' if new_best else f' (best {state.best_score:.5f})'}")
            if new_best:
                state.best_score = score
                self.write(self.payload(stage, state, optimizer, scaler),
                           self.save_dir / f"{stage.save_name}_best.pth", f"new best checkpoint after epoch {epoch}")
        if epoch % stage.save_every == 0 or epoch == stage.epochs:
            self.write(self.payload(stage, state, optimizer, scaler),
                       self.save_dir / f"{stage.save_name}_{epoch:04d}.pth", "checkpoint")
        if self.dist_info.main:
            append_log(self.log_path, {
                "stage": stage.name, "epoch": epoch, "iteration": state.iteration,
                "loss": f"{loss:.6f}" if stats.steps else "", "iou": f"{iou:.6f}" if stats.steps else "",
                "lr": f"{optimizer.param_groups[0]['lr']:g}", "val_jf": "" if score is None else f"{score:.6f}",
                "sec_per_iter": f"{sec:.4f}" if stats.steps else ""})


# ---------------------------------------------------------------------------------------------------------------
# entry points
# ---------------------------------------------------------------------------------------------------------------

def open_datasets(stages: list[StageConfig], args: argparse.Namespace, opts: TrainOptions,
                  d: Dist) -> tuple[dict[str, Dataset], dict[str, str | None]]:
    """Every stage's clip sampler, built (and its data root checked) before any training starts."""
    roots = {"coco": getattr(args, "coco", None), "davis": getattr(args, "davis", None),
             "ytvos": getattr(args, "ytvos", None) or run.YTVOS18_ROOT}
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
        if s.data == "coco":
            sets[s.name] = dataset.TrainCOCO(roots["coco"], **common)
        elif s.data == "davis":
            sets[s.name] = dataset.TrainDAVIS(roots["davis"], year=opts.davis_year, split="train", **common)
        else:
            sets[s.name] = dataset.TrainYTVOS(roots["ytvos"], **common)
    return sets, roots


def load_resume(path: str, method_name: str) -> dict:
    """A checkpoint written by training, with its training state."""
    if not Path(path).is_file():
        raise VOSInputError(f"--resume {path}: no such file")
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(obj, dict) or "optimizer" not in obj or "stage" not in obj:
        raise VOSInputError(f"--resume {path}: the file holds weights only, no training state; to start training "
                            f"from these weights pass --init {path}")
    if obj["method"] != method_name:
        raise VOSInputError(f"--resume {path} is a {obj['method']} checkpoint; pass --method {obj['method']}")
    return obj


def build_network(method_name: str, opts: TrainOptions, resumed: dict | None, init: str | None) -> nn.Module:
    """The model to train: from the resumed checkpoint, from --init weights, or new (ImageNet backbone)."""
    if resumed is not None:
        net = model_lib.build_model(method_name, resumed["config"])
        net.load_state_dict(model_lib.from_official(resumed["model"]), strict=True)
    elif init is not None:
        net, meta = model_lib.load_checkpoint(init)
        if meta.get("method", "emvos") != method_name:
            raise VOSInputError(f"--init {init} is a {meta['method']} checkpoint, not {method_name}")
        if opts.train_encoder:
            net.config.train_encoder = True
    else:
        config = {"train_encoder": True} if opts.train_encoder and method_name == "emvos" else None
        try:
            net = model_lib.build_model(method_name, config, pretrained=opts.pretrained)
        except RuntimeError as e:  # imagenet_backbone's message names the file, the folder and --no-pretrained
            raise VOSInputError(str(e)) from e
    # a config without train_encoder (VideoMatch: the encoder is the whole network) trains everything
    if not getattr(net.config, "train_encoder", True) and hasattr(net, "encoder"):
        # No gradient for the encoder (official: frozen). Keeping it out of the optimizer changes nothing (Adam skips
        # parameters without gradient) and lets DistributedDataParallel expect gradients for every parameter it sees.
        net.encoder.requires_grad_(False)
    return net


def train(args: argparse.Namespace) -> nn.Module:
    """Train the stages the flags ask for; returns the trained model (the bare module, on its device).

    Raises VOSInputError (bad flags or data, missing ImageNet weights) before any training, TrainingError when the
    loss or the weights stop being finite, and TrainingInterrupted (a SystemExit, code 130) after Ctrl+C.
    """
    method_name = getattr(args, "method", "emvos")
    if method_name not in METHODS:
        raise VOSInputError(f"no training recipe for method {method_name!r}; choose from {', '.join(METHODS)}")
    method = METHODS[method_name]
    if args.resume and getattr(args, "init", None):
        raise VOSInputError("pass --resume or --init, not both: --resume restores the weights it holds")
    resumed = load_resume(args.resume, method_name) if args.resume else None
    opts = resolve_options(args, method, resumed["train_options"] if resumed else None)
    if opts.loss is not None:
        if opts.loss not in method.losses:
            raise VOSInputError(f"--loss {opts.loss} is not a loss of {method_name}; "
                                f"{'choose from ' + ', '.join(method.losses) if method.losses else 'drop --loss'}")
        method = replace(method, loss=method.losses[opts.loss])
    stages = stage_configs(opts, method)
    first, finished = 0, False
    if resumed is not None:
        names = [s.name for s in stages]
        if resumed["stage"] not in names:
            raise VOSInputError(f"--resume {args.resume} is from stage '{resumed['stage']}', which is not in --stages "
                                f"{' '.join(names)}")
        first = names.index(resumed["stage"])
        finished = (resumed["epoch"] >= stages[first].epochs and resumed["partial"] is None
                    and not resumed["epoch_end_pending"])
        first += finished  # that stage is done: go on with the next one
        if first == len(stages):
            raise VOSInputError(f"--resume {args.resume}: stage '{resumed['stage']}' is finished and no stage "
                                f"follows it in --stages {' '.join(names)}; name a stage after it to go on")
    if getattr(args, "precision", "fp32") == "fp64":
        raise VOSInputError("--precision fp64 is for comparing with a reference at test time; validation during "
                            "training runs in fp32 (default), bf16 or fp16")
    settings = run.run_settings(args)  # device and validation precision, checked as run.py --test checks them
    d = init_distributed(settings.device)
    try:
        if d.enabled and settings.device.type == "cuda":
            torch.cuda.set_device(d.local_rank)
            settings = replace(settings, device=torch.device("cuda", d.local_rank))
        datasets, roots = open_datasets(stages[first:], args, opts, d)
        amp_dtype(opts.amp, settings.device)  # refuse an unsupported --amp before building anything
        seed_everything(opts.seed + d.rank)  # each process draws its own clips; DDP gives all rank 0's weights
        if finished and len(resumed["rng"]) == d.world:
            restore_rng(resumed["rng"][d.rank])
        net = build_network(method_name, opts, resumed, None if resumed else getattr(args, "init", None))
        net = net.to(settings.device)
        if d.main and not opts.pretrained and resumed is None and not getattr(args, "init", None):
            print("note: --no-pretrained: the backbone starts from scratch, not from ImageNet (official: ImageNet)")
        validation = None
        if any(s.val_every for s in stages[first:]):
            validation, why = open_validation(roots["davis"], opts.davis_year, opts.val_sequences, settings)
            if validation is None and d.main:
                print(f"no DAVIS {opts.davis_year} val to validate on ({why}); training without validation, so each "
                      f"stage keeps its last checkpoint as <name>_best.pth")
        with StopRequest(verbose=d.main) as stop:
            trainer = Trainer(method_name, method, opts, stages, net, settings.device, d, datasets, validation,
                              roots, stop)
            if d.main:
                trainer.save_dir.mkdir(parents=True, exist_ok=True)
            if finished and first < len(stages) and opts.chain == "best":
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


def build_parser() -> argparse.ArgumentParser:
    """The training command line on its own (`python trainer.py ...`): run.py's shared flags plus the train ones."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", default="emvos", choices=list(METHODS), help="which method to train")
    p.add_argument("--davis", default=run.DAVIS_ROOT, help="DAVIS root (2017 layout, or the DAVIS 2016 download)")
    p.add_argument("--ytvos", default=None, help=f"YouTube-VOS 2018 root (default {run.YTVOS18_ROOT})")
    p.add_argument("--coco", default=run.COCO_ROOT, help="COCO root (raw download or converted folder)")
    p.add_argument("--device", default=None, choices=["cpu", "cuda"], help="default: cuda when available")
    p.add_argument("--precision", default="fp32", choices=list(run.PRECISIONS), help="precision of validation")
    add_train_arguments(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        train(args)
    except TrainingInterrupted as e:
        return int(e.code)
    except (VOSInputError, TrainingError, FileNotFoundError, evaluation.EvaluationError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
