"""Speed, memory and precision of EMVOS inference: this repository's batched model against the official structure.

Three ways to segment the same video with the same modules and weights:

- `per-object`: the structure of the official code (suhwan-cho/EMVOS, `VOS.forward`), reimplemented here: every
  object computes its own four HW x HW similarity matrices, its own decoder projections and runs the decoder alone
  (batch 1).
- `unsplit`: `segmenter.VideoSegmenter` with the paper's decoder (model.Decoder.forward, with
  model.EMVOSRuntime(split_decoder=False)): similarities (key products as 1x1 convolutions, matching.key_products)
  once per frame for all objects, the readout in cache-sized tiles, the decoder one object per call
  (model.EMVOSRuntime.decoder_batch: bit-identical to the official per-object decoder), plus torch.compile if asked
  for.
- `ours`: the same with the split decoder (model.Decoder.project + forward_split): the projections and the blend
  convolutions' shared half run once per frame, each object convolves only its own channels, and the transposed
  convolutions run as a 1x1 convolution and col2im. Float32 numbers differ from the official ones by summation order
  only.

Precisions are run.py's: bf16 runs every path on a copy of the model with its weights cast to bf16 once (the matching
in float32), fp16 autocast over the float32 weights (CUDA); --compile compiles `ours` in each precision with inductor
freezing (model.EMVOS.compile_modules). `% peak` is of the measured matrix-product peak in the row's precision.

channels_last (default on) applies to all paths, so that the comparison is of structure; run with
--no-channels-last for the NCHW layout of the official code.

With random weights (the default, and the golden ones) the objects' probabilities nearly coincide, so a float32
rounding difference of 1e-6 flips the label of pixels where two objects tie: `mask diff` counts those; `clear diff`
counts only pixels where the per-object path's winner leads the runner-up by more than TIE in probability.

Every configuration (device x resolution x objects) streams one synthetic video (random frames, random blob masks)
through every path and precision in lockstep, frame by frame, so that noise from other processes on the machine
hits all paths alike; a frame's time is the median over the timed frames. Masks and logits are compared with the
fp32 per-object path on the same frame (the fp32 reference path where per-object does not apply, below). Examples:

    python bench.py --quick                                   # tiny frames, 1 and 3 objects (CI: fp32 only)
    python bench.py --resolutions 480p --objects 1 3 --frames 5
    python bench.py --resolutions 1080p --objects 40 --paths ours --precisions fp32 --frames 3 --max-memory 4G
    python bench.py --configs 480p:1 480p:3 480p:10 --precisions fp32 --frames 3   # the issue's speed rows
    python bench.py --configs 1080p:40 --precisions fp32 --frames 1               # minutes per frame
    python bench.py --memory-growth --resolutions 480p --objects 3 --frames 30
    python bench.py --configs 480p:1 --paths ours --precisions fp32 --branches surjective   # an ablation's cost
    python bench.py --method videomatch --upsample 1.8 --configs 480p:1 --precisions fp32   # the port's 65.2 setting

The model flags are run.py's (config_flags, from each method's config): with a config the official code cannot
build (another encoder, branch set or key width) the per-object path does not apply and `unsplit` is the reference;
VideoMatch runs `ours` alone (its frame step has no other structure to compare with), so the table gives its cost.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import ctypes
import dataclasses
import json
import math
import os
import re
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # a script in tools/: the modules live one folder up

import model as emvos  # noqa: E402
import utils  # noqa: E402
from core import config_flags, flags, framework, methods, segmenter  # noqa: E402
from core.segmenter import VideoSegmenter  # noqa: E402
from tools.reference import PerObjectSegmenter, blob_mask, capture_logits, random_frame  # noqa: E402
from utils import VOSInputError  # noqa: E402

RESOLUTIONS = {"480p": (480, 854), "720p": (720, 1280), "1080p": (1080, 1920), "tiny": (96, 160)}
# run.py's precisions (segmenter.Precision: weights dtype, autocast dtype); fp64 is for comparisons, not for speed
PRECISIONS = {name: p for name, p in segmenter.PRECISIONS.items() if name != "fp64"}
PATHS = ("per-object", "unsplit", "ours")
TIE = 1e-4  # probability gap below which two labels count as a tie (clear diff)


# ---------------------------------------------------------------------------------------------------------------
# measuring
# ---------------------------------------------------------------------------------------------------------------

def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


LIBC = _libc()


def _proc_status_kib(key: str) -> int | None:
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return None
    found = re.search(rf"^{key}:\s+(\d+) kB", text, re.M)
    return int(found.group(1)) if found else None


def rss_bytes() -> int:
    """Resident memory of this process now (Linux /proc; elsewhere the lifetime peak, the best the OS gives)."""
    kib = _proc_status_kib("VmRSS")
    if kib is not None:
        return kib * 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)


def _reset_cpu_peak() -> None:
    # writing 5 to clear_refs resets VmHWM (Linux >= 4.0), so each block gets its own peak without psutil
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


class PeakMemory:
    """Peak memory of a block above what was resident when it began.

    CPU: the resident set (VmHWM after a reset of the high-water mark); freed heap memory is handed back to the OS
    first (malloc_trim), so that memory a previous block left in the allocator does not hide this block's needs.
    CUDA: torch.cuda.max_memory_allocated, i.e. tensors only, not the caching allocator's reserve.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.peak = 0

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start = torch.cuda.memory_allocated(self.device)
        else:
            if LIBC is not None:
                LIBC.malloc_trim(0)
            _reset_cpu_peak()  # where it cannot be reset, VmHWM is the lifetime peak: an upper bound
            self.start = rss_bytes()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device) - self.start
        else:
            hwm = _proc_status_kib("VmHWM")
            self.peak = max(0, (hwm * 1024 if hwm is not None else rss_bytes()) - self.start)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def other_cpu_seconds() -> float:
    """CPU seconds the whole machine has been busy, minus this process's (Linux /proc/stat; else 0).

    Other programs on a shared machine slow a benchmark down; the table reports how many cores they took meanwhile.
    """
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return 0.0
    busy = sum(fields) - fields[3] - (fields[4] if len(fields) > 4 else 0)  # all but idle and iowait
    mine = os.times()
    return busy / os.sysconf("SC_CLK_TCK") - (mine.user + mine.system)


def matmul_peak(device: torch.device, precision: str, size: int = 2048, repeats: int = 5) -> dict[str, float]:
    """Measured FLOP/s of a size^3 matrix product in the given precision, the roofline of the table, two ways.

    'mm': torch.mm (BLAS: MKL on CPU, cuBLAS on CUDA). 'conv': the same product as a 1x1 convolution of size
    channels over size pixels (oneDNN on CPU, cuDNN on CUDA), the library EMVOS's convolutions run on. The two can
    differ a lot, by a factor of two or more on some CPUs.
    """
    dtype = PRECISIONS[precision].autocast or PRECISIONS[precision].weights
    g = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=g).to(device, dtype)
    b = torch.randn(size, size, generator=g).to(device, dtype)
    side = 2 ** (int(math.log2(size)) // 2)
    x = b.reshape(1, size, side, size // side).contiguous(memory_format=torch.channels_last)
    w = a.reshape(size, size, 1, 1).contiguous(memory_format=torch.channels_last)
    out = {}
    with torch.inference_mode():
        for name, fn in (("mm", lambda: a @ b), ("conv", lambda: F.conv2d(x, w))):
            best = math.inf
            for i in range(repeats + 2):
                synchronize(device)
                t = time.perf_counter()
                fn()
                synchronize(device)
                if i >= 2:  # the first products pay for thread start-up and kernel selection
                    best = min(best, time.perf_counter() - t)
            out[name] = 2 * size**3 / best
    return out


def count_flops(fn: Callable[[], object]) -> tuple[int, object]:
    """FLOPs of the matrix products and convolutions in fn (torch.utils.flop_counter), and fn's result."""
    with FlopCounterMode(display=False) as counter:
        out = fn()
    return counter.get_total_flops(), out


# ---------------------------------------------------------------------------------------------------------------
# one configuration
# ---------------------------------------------------------------------------------------------------------------

@dataclass
class Row:
    device: str
    resolution: str
    objects: int
    path: str
    precision: str
    times: list[float] = field(default_factory=list)
    others: list[float] = field(default_factory=list)  # cores other processes used during each timed frame
    peak_bytes: int = 0
    flops: int = 0
    mask_diff: float = 0.0  # largest fraction of pixels whose label differs from the fp32 per-object path
    clear_diff: float = 0.0  # the same, counting only pixels where the reference's label leads by more than TIE
    logit_diff: float = 0.0  # largest |logit difference| from the fp32 per-object path

    @property
    def seconds(self) -> float:
        return statistics.median(self.times) if self.times else math.nan


def make_segmenter(path: str, model: emvos.EMVOS, precision: str, runtime: framework.Runtime | None = None) -> object:
    """A segmenter of `path` on model, whose weights are already in the precision's dtype (precision_models)."""
    autocast = PRECISIONS[precision].autocast
    if path == "per-object":
        return PerObjectSegmenter(model, autocast=autocast)
    runtime = dataclasses.replace(emvos.EMVOSRuntime.of(runtime), split_decoder=path == "ours")
    return VideoSegmenter(model, autocast=autocast, runtime=runtime)


def label_margin(probs: Tensor) -> Tensor:
    """(N, H, W) aggregated foreground probabilities -> (H, W) lead of the winning label (background included) over
    the runner-up."""
    top = torch.cat([1 - probs.sum(dim=0, keepdim=True), probs]).topk(2, dim=0).values
    return top[0] - top[1]


def precision_models(models: dict[str, torch.nn.Module], precisions: list[str],
                     compile_ours: bool = False) -> dict[str, dict[str, torch.nn.Module]]:
    """Per precision, every path's model with its weights in that precision's dtype, cast once as run.py --precision
    does (bf16: a bf16 copy); paths that share a model share its copy. compile_ours: `ours` (and what shares it)
    compiled, per copy (model.EMVOS.compile_modules), once every copy is made: a copy of a compiled model would
    call the original's compiled methods."""
    out: dict[str, dict[str, torch.nn.Module]] = {}
    for q in precisions:
        dtype = PRECISIONS[q].weights
        copies: dict[int, torch.nn.Module] = {}
        for net in models.values():
            if id(net) not in copies:
                copies[id(net)] = net if dtype == torch.float32 else copy.deepcopy(net).to(dtype)
        out[q] = {path: copies[id(net)] for path, net in models.items()}
    if compile_ours:
        for paths in out.values():
            paths["ours"].compile_modules()
    return out


def run_configuration(models: dict[str, dict[str, emvos.EMVOS]], device: torch.device, resolution: str, objects: int,
                      precisions: list[str], paths: list[str], frames: int, seed: int = 0, warmup: int = 1,
                      runtime: framework.Runtime | None = None) -> list[Row]:
    """Stream one synthetic video through every (path, precision) in lockstep; see the module docstring.

    Frame 0 gives the masks, frames 1..warmup are untimed (FLOPs counted on frame 1), the next `frames` are timed.
    models: per precision, the model each path runs on (precision_models: the same weights; `ours` may carry fast
    paths).
    """
    height, width = RESOLUTIONS[resolution]
    fp32 = models["fp32"]
    reference = "per-object" if "per-object" in fp32 else next(iter(fp32))  # what the diffs are measured from
    paths = [p for p in paths if p in fp32]
    combos = [(reference, "fp32")] + [(p, q) for q in precisions for p in paths if (p, q) != (reference, "fp32")]
    rows = [Row(device.type, resolution, objects, p, q) for p, q in combos]
    segs = [make_segmenter(p, models[q][p], q, runtime) for p, q in combos]
    mask = blob_mask(height, width, objects, seed)
    for t in range(frames + warmup + 1):
        frame = random_frame(height, width, seed * 1000 + t)
        ref_logits: Tensor | None = None
        ref_labels: Tensor | None = None
        clear: Tensor | None = None
        for row, seg in zip(rows, segs, strict=True):
            logits: list[Tensor] = []
            # Memory is measured on the last untimed frame only: PeakMemory hands freed memory back to the OS first,
            # and a step that must then fault all its memory in again would be timed slower than in real use.
            mem = PeakMemory(device) if t == warmup else contextlib.nullcontext()
            with capture_logits(seg, logits), mem:
                synchronize(device)
                start, other = time.perf_counter(), other_cpu_seconds()
                if t == 0:
                    labels, probs = seg.step(frame, mask)
                elif t == 1:
                    row.flops, (labels, probs) = count_flops(lambda seg=seg, frame=frame: seg.step(frame))
                else:
                    labels, probs = seg.step(frame)
                synchronize(device)
                elapsed = time.perf_counter() - start
                other = other_cpu_seconds() - other
            if t > warmup:
                row.times.append(elapsed)
                row.others.append(other / elapsed)
            if t == warmup:
                row.peak_bytes = mem.peak
            if t == 0:
                continue
            out = torch.cat(logits, dim=1).float()  # (1, N, 2, H, W)
            if ref_logits is None:  # the first combination is the fp32 reference (per-object where it applies)
                ref_logits, ref_labels, clear = out, labels, label_margin(probs.float()) > TIE
            row.logit_diff = max(row.logit_diff, (out - ref_logits).abs().max().item())
            row.mask_diff = max(row.mask_diff, (labels != ref_labels).float().mean().item())
            row.clear_diff = max(row.clear_diff, ((labels != ref_labels) & clear).float().mean().item())
            del out, logits, probs
    return rows


# ---------------------------------------------------------------------------------------------------------------
# memory growth over a long video
# ---------------------------------------------------------------------------------------------------------------

def state_bytes(state: object) -> int:
    """Bytes of the distinct tensor storages a (nested) dataclass / list holds: what a video's state keeps."""
    seen: dict[int, int] = {}

    def visit(x: object) -> None:
        if isinstance(x, Tensor):
            seen[x.untyped_storage().data_ptr()] = x.untyped_storage().nbytes()
        elif isinstance(x, list | tuple):
            for y in x:
                visit(y)
        elif hasattr(x, "__dataclass_fields__"):
            for name in x.__dataclass_fields__:
                visit(getattr(x, name))

    visit(state)
    return sum(seen.values())


@dataclass
class Growth:
    """Per frame of a long video: peak memory during the frame, memory resident after it, the state's bytes."""

    peak: list[int] = field(default_factory=list)
    resident: list[int] = field(default_factory=list)
    state: list[int] = field(default_factory=list)
    times: list[float] = field(default_factory=list)


def memory_growth(model: emvos.EMVOS, device: torch.device, resolution: str, objects: int, frames: int,
                  precision: str = "fp32", runtime: framework.Runtime | None = None) -> Growth:
    """Stream a synthetic video through `ours` and record memory per frame.

    CPU: peak = the process's resident high-water mark during the frame (reset before it); resident = the resident
    set after the frame once freed heap memory went back to the OS (malloc_trim), i.e. live memory plus allocator
    fragmentation. CUDA: max allocated during the frame, allocated after it. Memory that does not grow with the
    video's length gives the same numbers at frame 5 and at the end, up to allocator noise; the state's bytes must
    be exactly constant.
    """
    height, width = RESOLUTIONS[resolution]
    seg = make_segmenter("ours", model, precision, runtime)
    mask = blob_mask(height, width, objects, 0)
    out = Growth()
    for t in range(frames):
        frame = random_frame(height, width, t)
        synchronize(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        else:
            _reset_cpu_peak()
        start = time.perf_counter()
        seg.step(frame, mask if t == 0 else None)
        synchronize(device)
        out.times.append(time.perf_counter() - start)
        if device.type == "cuda":
            out.peak.append(torch.cuda.max_memory_allocated(device))
            out.resident.append(torch.cuda.memory_allocated(device))
        else:
            hwm = _proc_status_kib("VmHWM")
            out.peak.append(hwm * 1024 if hwm is not None else rss_bytes())
            if LIBC is not None:
                LIBC.malloc_trim(0)
            out.resident.append(rss_bytes())
        out.state.append(state_bytes(seg.state))
        print(f"frame {t:3d}: {out.times[-1]:7.2f} s, peak {out.peak[-1] / 2**30:6.2f} GiB, resident after "
              f"{out.resident[-1] / 2**30:6.2f} GiB, state {out.state[-1] / 2**20:7.2f} MiB", flush=True)
    return out


# ---------------------------------------------------------------------------------------------------------------
# where one frame's time goes
# ---------------------------------------------------------------------------------------------------------------

SAMPLE = Path(__file__).resolve().parents[1] / "sample" / "DAVIS2016"
PARTS = ("JPEG read", "encoder", "matching", "decoder, per frame", "decoder, per object", "rest of the step",
         "PNG write")


def sample_video(objects: int) -> tuple[list[Path], Tensor]:
    """The bundled bear frames (854x480) and its first mask cut into `objects` vertical strips of equal area."""
    import numpy as np
    from PIL import Image

    frames = sorted((SAMPLE / "JPEGImages" / "480p" / "bear").glob("*.jpg"))
    if not frames:
        raise FileNotFoundError(f"the bundled sample {SAMPLE} is missing; --profile runs on its bear frames")
    fg = np.asarray(Image.open(SAMPLE / "Annotations" / "480p" / "bear" / "00000.png")) != 0
    cuts = np.percentile(np.nonzero(fg)[1], np.linspace(0, 100, objects + 1)[1:-1])
    strips = 1 + (np.arange(fg.shape[1])[None, :] >= np.asarray(cuts)[:, None, None]).sum(0)
    return frames, torch.from_numpy(np.where(fg, strips, 0).astype(np.int64))


def profile_frames(model: emvos.EMVOS, device: torch.device, objects: int, split: bool, out_dir: Path,
                   ) -> dict[str, float]:
    """Median seconds per part of a frame, as run.py runs it: read the JPEG, VideoSegmenter.step, write the PNG.

    Parts inside the step are timed by wrapping model.encode, model.match, Decoder.project, Decoder.forward_split
    and Decoder.forward (the unsplit path's decoder, projections included);
    'rest of the step' is what the step took besides them (padding, softmax, aggregation, state update). Frame 0
    (the given mask) and frame 1 (first-call set-up) are not counted. In run.py reading and writing overlap the
    model in threads, so they cost wall time only where the model waits.
    """

    paths, mask = sample_video(objects)
    seg = VideoSegmenter(model, runtime=emvos.EMVOSRuntime(split_decoder=split))
    times: dict[str, list[float]] = {part: [] for part in PARTS}
    current: dict[str, float] = {}

    def timed(target: object, name: str, part: str) -> None:
        original = getattr(target, name)

        def wrapper(*args: object, **kwargs: object) -> object:
            synchronize(device)
            start = time.perf_counter()
            out = original(*args, **kwargs)
            synchronize(device)
            current[part] = current.get(part, 0.0) + time.perf_counter() - start
            return out

        setattr(target, name, wrapper)

    for target, name, part in ((model, "encode", "encoder"), (model, "match", "matching"),
                               (model.decoder, "project", "decoder, per frame"),
                               (model.decoder, "forward", "decoder, per object"),
                               (model.decoder, "forward_split", "decoder, per object")):
        timed(target, name, part)
    try:
        for t, path in enumerate(paths):
            current.clear()
            start = time.perf_counter()
            rgb = utils.read_frame(path)
            frame = torch.tensor(rgb).permute(2, 0, 1).float().div(255)
            read = time.perf_counter() - start
            synchronize(device)
            start = time.perf_counter()
            labels, _ = seg.step(frame, mask if t == 0 else None)
            synchronize(device)
            step = time.perf_counter() - start
            start = time.perf_counter()
            utils.save_mask(out_dir / f"{t:05d}.png", labels.to("cpu", torch.uint8).numpy())
            write = time.perf_counter() - start
            if t < 2:
                continue
            inside = {part: current.get(part, 0.0) for part in PARTS[1:5]}
            for part, value in (("JPEG read", read), *inside.items(), ("rest of the step", step - sum(inside.values())),
                                ("PNG write", write)):
                times[part].append(value)
    finally:
        for target in (model, model.decoder):
            for name in ("encode", "match", "project", "forward", "forward_split"):
                target.__dict__.pop(name, None)
    return {part: statistics.median(v) for part, v in times.items()}


def format_profile(columns: dict[str, dict[str, float]]) -> str:
    """One line per part: milliseconds and share of the frame in each column (path)."""
    head = f"{'part':22s}" + "".join(f" {name:>22s}" for name in columns)
    lines = [head, "-" * len(head)]
    totals = {name: sum(col.values()) for name, col in columns.items()}
    for part in (*PARTS, "frame"):
        cells = []
        for name, col in columns.items():
            value = totals[name] if part == "frame" else col[part]
            cells.append(f" {1e3 * value:11.1f} ms {100 * value / totals[name]:5.1f} %")
        lines.append(f"{part:22s}" + "".join(cells))
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------------------------------------------

def speedup_over_per_object(rows: list[Row], row: Row) -> float:
    """Median per-frame ratio of the per-object path's time to row's, in row's precision (nan without that path)."""
    base = next((r for r in rows if r.path == "per-object" and r.precision == row.precision
                 and (r.device, r.resolution, r.objects) == (row.device, row.resolution, row.objects)), None)
    # paired: the two paths ran the same frames back to back, so the ratio per frame cancels slow spells
    return statistics.median(b / o for b, o in zip(base.times, row.times, strict=True)) if base else math.nan


def json_report(rows: list[Row], peaks: dict[tuple[str, str], float], args: argparse.Namespace) -> dict:
    """The table's numbers for programs (--json): one record per row, the matmul peaks and the settings."""
    records = []
    for row in rows:
        record = dataclasses.asdict(row)
        record.update(seconds=row.seconds, fps=1 / row.seconds, x_per_object=speedup_over_per_object(rows, row))
        records.append(record)
    settings = {"compile": args.compile, "channels_last": args.channels_last, "frames": args.frames,
                "decoder_batch": args.decoder_batch, "max_memory": args.max_memory, "seed": args.seed,
                "threads": torch.get_num_threads()}
    return {"rows": records, "matmul_peak_flops": {f"{d} {q}": v for (d, q), v in peaks.items()},
            "settings": settings}


def format_table(rows: list[Row], peaks: dict[tuple[str, str], float]) -> str:
    """One line per (device, resolution, objects, path, precision)."""
    head = (f"{'device':6} {'res':>6} {'obj':>3} {'path':10} {'prec':4} {'fps':>7} {'s/frame':>8} "
            f"{'x per-obj':>9} {'peak MiB':>9} {'GFLOP':>7} {'GFLOP/s':>8} {'% peak':>6} {'mask diff':>9} "
            f"{'clear diff':>10} {'logit diff':>10} {'load':>5}")
    lines = [head, "-" * len(head)]
    for row in rows:
        speedup = speedup_over_per_object(rows, row)
        achieved = row.flops / row.seconds
        peak = peaks.get((row.device, row.precision), math.nan)
        lines.append(
            f"{row.device:6} {row.resolution:>6} {row.objects:3d} {row.path:10} {row.precision:4} "
            f"{1 / row.seconds:7.3f} {row.seconds:8.3f} {speedup:9.2f} {row.peak_bytes / 2**20:9.0f} "
            f"{row.flops / 1e9:7.1f} {achieved / 1e9:8.1f} {100 * achieved / peak:6.1f} "
            f"{row.mask_diff:9.2e} {row.clear_diff:10.2e} {row.logit_diff:10.2e} "
            f"{max(0.0, statistics.mean(row.others or [0])):5.1f}")
    return "\n".join(lines)


def build_models(args: argparse.Namespace, device: torch.device) -> dict[str, torch.nn.Module]:
    """path -> the model it runs, for the paths that apply to the model (see the module docstring). The per-object
    path runs the plain model; `ours` a second copy with the same weights and the fast paths. The model: --weights
    (its config, overridden by the model flags where the weights allow) or random weights of --method's config."""
    configs = methods.config_classes()
    if args.weights:
        plain, meta = methods.load_weights(args.weights, "--weights", flags.model_overrides(args, configs) or None)
        args.method = meta["method"]
    else:
        torch.manual_seed(args.seed)
        plain = methods.build_model(args.method, flags.given_model_flags(args, args.method, configs))
    plain = plain.to(device).eval()
    unused = config_flags.unused_flags(plain.config, flags.model_overrides(args, configs))
    if unused is not None:
        raise VOSInputError(f"{unused}; drop it")
    ours = type(plain)(plain.config).to(device).eval()
    ours.load_state_dict(plain.state_dict())
    if args.channels_last:  # both paths: the comparison is of structure, at bit-identical float32 numbers
        plain.to(memory_format=torch.channels_last)
        ours.to(memory_format=torch.channels_last)
    if args.compile and not methods.get(args.method).compilable:
        raise VOSInputError(f"--compile is implemented for EMVOS only; drop it with --method {args.method}")
    if not isinstance(plain, emvos.EMVOS):
        return {"ours": ours}
    if not emvos.is_official_architecture(plain.config):  # the per-object path is the official code's network
        return {"unsplit": ours, "ours": ours}
    return {"per-object": plain, "unsplit": ours, "ours": ours}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    if args.quick:
        args.resolutions, args.objects, args.frames, args.configs = ["tiny"], [1, 3], 2, None
    if args.configs is None:
        args.configs = [(r, n) for r in args.resolutions for n in args.objects]
    return args


def build_parser() -> argparse.ArgumentParser:
    """bench.py's flags, the model flags (run.py's, from the config dataclasses) among them."""
    p = flags.OneLineParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny frames, 1 and 3 objects, fp32 and bf16, few frames (CI)")
    p.add_argument("--device", nargs="+", default=None, help="cpu and/or cuda (default: cpu, and cuda when present)")
    p.add_argument("--resolutions", nargs="+", default=["480p", "720p", "1080p"], choices=list(RESOLUTIONS))
    p.add_argument("--objects", nargs="+", type=flags.positive_int, default=[1, 3, 10])
    p.add_argument("--configs", nargs="+", type=parse_config, default=None, metavar="RES:OBJECTS",
                   help="these (resolution, objects) rows instead of --resolutions x --objects, e.g. 480p:10 1080p:40")
    p.add_argument("--precisions", nargs="+", default=None, choices=list(PRECISIONS),
                   help="default: fp32 bf16 (+ fp16 on CUDA); bf16 on CPU runs where the CPU supports it")
    p.add_argument("--paths", nargs="+", default=list(PATHS), choices=list(PATHS))
    p.add_argument("--frames", type=flags.positive_int, default=3,
                   help="timed frames per configuration (after the given frame and a warm-up)")
    p.add_argument("--max-memory", type=flags.byte_size, default="auto",
                   help="bound on one frame's matching/decoder temporaries for `ours`, e.g. 4G; 'none': unbounded; "
                        "default: automatic, from free memory")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True,
                   help="channels_last convolutions (both paths, so that their float32 numbers stay identical)")
    p.add_argument("--decoder-batch", type=int, default=1,
                   help="objects per decoder call for `ours` (model.EMVOSRuntime.decoder_batch); 0: all the budget "
                        "allows")
    p.add_argument("--compile", action="store_true", help="torch.compile the encoder and decoder of `ours`")
    p.add_argument("--weights", default=None, help="checkpoint to load (default: random init, --seed)")
    p.add_argument("--seed", type=flags.seed, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--json", type=Path, default=None, metavar="PATH",
                   help="also write the table's numbers to PATH as JSON (NaN where a ratio has no per-object row)")
    p.add_argument("--memory-growth", action="store_true",
                   help="instead of the table: peak memory per frame of `ours` over --frames frames")
    p.add_argument("--method", default="emvos", choices=list(methods.METHODS),
                   help="the method whose random model is timed (with --weights: the file's)")
    flags.add_model_flags(p.add_argument_group("model", "run.py's model flags"), methods.config_classes())
    p.add_argument("--profile", action="store_true",
                   help="instead of the table: where a frame's time goes (JPEG, encoder, matching, decoder, rest, "
                        "PNG) on the bundled sample's bear frames (854x480), split and unsplit decoder; --objects")
    return p


def parse_config(text: str) -> tuple[str, int]:
    """'480p:10' -> ('480p', 10)."""
    res, _, n = text.partition(":")
    if res not in RESOLUTIONS or not n.isdigit() or int(n) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not RES:OBJECTS with RES one of {list(RESOLUTIONS)}, "
                                         f"e.g. 480p:10")
    return res, int(n)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = args.device or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    rows: list[Row] = []
    peaks: dict[tuple[str, str], float] = {}
    for name in devices:
        device = torch.device(name)
        if device.type == "cuda" and not torch.cuda.is_available():
            print("CUDA is not available on this machine; drop --device cuda", file=sys.stderr)
            return 2
        precisions = args.precisions or (["fp32", "bf16", "fp16"] if device.type == "cuda" else ["fp32", "bf16"])
        precisions = [q for q in precisions if supported(device, q)]
        try:
            models = build_models(args, device)
        except VOSInputError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        net = models["ours"]
        print(f"{args.method}: {config_flags.describe(net.config)}; paths {', '.join(models)}", flush=True)
        if (args.profile or args.memory_growth) and args.method != "emvos":
            print(f"--profile and --memory-growth time EMVOS's parts; drop them with --method {args.method}",
                  file=sys.stderr)
            return 2
        runtime = emvos.EMVOSRuntime(memory_budget=args.max_memory, decoder_batch=args.decoder_batch or None)
        if args.profile:
            print_profiles(args, precision_models(models, ["fp32"], args.compile)["fp32"], device)
        elif args.memory_growth:
            cast = precision_models(models, precisions[:1], args.compile)[precisions[0]]
            print_memory_growth(args, cast, device, precisions[0], runtime)
        else:
            rows += time_device(args, precision_models(models, precisions, args.compile), device, precisions,
                                runtime, peaks)
    if rows:
        print_table(args, rows, peaks)
    return 0


def print_profiles(args: argparse.Namespace, models: dict[str, torch.nn.Module], device: torch.device) -> None:
    """--profile: the split of a frame's time (`profile_frames`) for each --objects count, unsplit and split
    decoder, printed as one table per count."""
    import tempfile

    for n in args.objects:
        with tempfile.TemporaryDirectory() as tmp:
            columns = {f"{n} obj, {name}": profile_frames(models["ours"], device, n, split, Path(tmp))
                       for name, split in (("unsplit", False), ("split", True))}
        print(f"\n{device.type}, 854x480, medians of the bear frames 2..7, threads {torch.get_num_threads()}")
        print(format_profile(columns))


def print_memory_growth(args: argparse.Namespace, models: dict[str, torch.nn.Module], device: torch.device,
                        precision: str, runtime: framework.Runtime) -> None:
    """--memory-growth: for each --configs row, peak, resident and state memory of `ours` at an early and the last
    frame (`memory_growth`), and the median time per frame."""
    for res, n in args.configs:
        print(f"memory growth: {device.type} {res} {n} objects, {args.frames} frames")
        g = memory_growth(models["ours"], device, res, n, args.frames, precision, runtime)
        probe, last = min(5, len(g.peak) // 2), len(g.peak) - 1
        for kind, values in (("peak", g.peak), ("resident", g.resident), ("state", g.state)):
            print(f"{kind:8s} frame {probe}: {values[probe] / 2**20:8.1f} MiB, frame {last}: "
                  f"{values[last] / 2**20:8.1f} MiB ({(values[last] - values[probe]) / 2**20:+.1f}); "
                  f"largest {max(values) / 2**20:.1f} MiB")
        print(f"{statistics.median(g.times[1:] or g.times):.2f} s/frame (median)")


def time_device(args: argparse.Namespace, models: dict[str, dict[str, torch.nn.Module]], device: torch.device,
                precisions: list[str], runtime: framework.Runtime, peaks: dict[tuple[str, str], float]) -> list[Row]:
    """The table's rows on one device: its matmul peak per precision (into `peaks`, keyed by device type and
    precision), then every --configs row through `run_configuration`."""
    for q in precisions:
        measured = matmul_peak(device, q)
        peaks[(device.type, q)] = max(measured.values())
        both = ", ".join(f"{k} {v / 1e9:.0f}" for k, v in measured.items())
        print(f"{device.type} {q} 2048^3 matmul peak: {both} GFLOP/s; % peak is of the larger", flush=True)
    rows: list[Row] = []
    for res, n in args.configs:
        start = time.perf_counter()
        # torch.compile specialises on the first frames it sees (and recompiles once for dynamic shapes)
        warmup = 3 if args.compile else 1
        rows += run_configuration(models, device, res, n, precisions, args.paths, args.frames, args.seed,
                                  warmup, runtime)
        print(f"  {device.type} {res} {n} objects done in {time.perf_counter() - start:.0f} s", flush=True)
    return rows


def print_table(args: argparse.Namespace, rows: list[Row], peaks: dict[tuple[str, str], float]) -> None:
    """The table of all devices' rows with the legend of its columns, and its numbers as JSON into --json."""
    print(f"\nthreads {torch.get_num_threads()}, channels_last {args.channels_last}, compile {args.compile}, "
          f"decoder batch {args.decoder_batch or 'all'}, max memory {args.max_memory}. Times: medians of "
          f"{args.frames} frames; x per-obj: median per-frame ratio to the per-object path in the same "
          f"precision; % peak: of the measured matmul peak in that precision; diffs: vs the fp32 per-object "
          f"path, or the first path where it does not apply (mask: fraction of pixels; clear: of those not "
          f"tied within {TIE} in the reference; logit: max abs); load: cores other processes took meanwhile.")
    print(format_table(rows, peaks))
    if args.json is not None:
        payload = json.dumps(json_report(rows, peaks, args), indent=1).encode()
        utils.atomic_write(args.json, lambda f: f.write(payload))
        print(f"wrote {args.json}")


def supported(device: torch.device, precision: str) -> bool:
    """fp16 autocast is a CUDA path; bf16 needs CPU or GPU support (else it is left out with a note)."""
    if precision == "fp32":
        return True
    if device.type == "cuda":
        ok = precision == "fp16" or torch.cuda.is_bf16_supported()
    else:
        ok = precision == "bf16" and torch.backends.mkldnn.is_available()
    if not ok:
        print(f"skipping {precision} on {device.type}: not supported there", file=sys.stderr)
    return ok


if __name__ == "__main__":
    sys.exit(main())
