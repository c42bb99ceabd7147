"""One command that proves the CUDA path on a GPU: parity, speed and memory, training, resume and DDP.

    python tools/cuda_check.py                                        # on a CUDA machine; about --budget seconds
    python tools/cuda_check.py --device cpu --tiny                    # TEST MODE: every part's code path, tiny sizes

It refuses to run where CUDA is missing (exit 2), so CI never runs it; `--device cpu --tiny` is the test mode that
tests/test_cuda_check.py runs on CPU (tiny frames, tiny clips, gloo instead of nccl); its numbers mean nothing.

Parts (--parts), each run on its own: a part that breaks is reported as `error` in the table and the others still run.
- parity: the golden cases (official outputs, --golden) in float64 on the device: masks equal, training logits to
  1e-8; the bundled sample's frames (sample/DAVIS2016) in float32 on the device against the same run on CPU (pixels
  equal, largest logit difference); bf16 (weights cast once) and fp16 (autocast) against the device's float32
  (differing pixels per object).
- speed: bench.py (a subprocess, --json) at 480p, 720p and 1080p with 1, 3 and 10 objects, fp32/bf16/fp16, the
  official per-object structure and this repository's model in the same run, without and with --compile; the
  wall time of whole `run.py --test` processes on synthetic DAVIS-layout sets of those sizes; and the fast path
  (`--precision bf16 --compile`) at 480p twice, compiling into a fresh inductor cache and then loading from it.
- train: 20 iterations of the `davis` stage at the official batch and crop (8 clips of 10 frames, 384x384) on a
  synthetic DAVIS-layout set, without and with --amp: s/iteration, peak memory, finite loss.
- resume: the same run with deterministic algorithms, once straight through and once stopped by SIGINT after the
  second epoch and continued with --resume: the per-epoch log and the final weights must agree.
- ddp: `torchrun --nproc_per_node 1` (and 2 ranks where two GPUs exist; on CPU, gloo) against one process with the
  same global batch; a collective through the backend (nccl on CUDA) with torchrun.

Time: the parts share --budget seconds in fixed proportions; time a part leaves over goes to the next ones. A
subprocess that would outlast its part's time is stopped and reported as `timeout`. It prints one table and writes
report.json, table.txt and the subprocesses' logs into a new folder under --out (nothing there is overwritten).
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import math
import os
import platform
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # a script in tools/: the library modules live in the repository root

import model as emvos  # noqa: E402
from core.flags import OneLineParser  # noqa: E402
from core.methods import load_weights  # noqa: E402
from core.segmenter import PRECISIONS, VideoSegmenter  # noqa: E402
from tools.golden import materialize as materialize_golden  # noqa: E402
from utils import read_frame, read_mask, save_mask  # noqa: E402

PARTS = {"parity": 0.15, "speed": 0.40, "train": 0.20, "resume": 0.15, "ddp": 0.10}  # shares of --budget
SAMPLE = ROOT / "sample" / "DAVIS2016"
GOLDEN_TOLERANCE = 1e-8  # float64 training logits against the official ones (as tests/test_golden.py on CPU)
RESIZE_NOTE = " (run.py runs at short side 480 unless an object would keep under 1000 pixels, the official rule)"
DDP_TOLERANCE = 0.10  # relative per-epoch loss difference allowed between 2 ranks and 1 process (different clips)

# Runs run.py as its command line does (sys.argv, __main__) and, at exit, writes the peak CUDA memory and the
# non-deterministic operations torch warned about to $CUDA_CHECK_REPORT (one file per torchrun rank). With
# CUDA_CHECK_DETERMINISTIC=1 it first asks torch for deterministic algorithms (warn_only: an operation without a
# deterministic CUDA kernel warns instead of stopping the run, and the report names it).
RUN_WRAPPER = r"""
import atexit, json, os, resource, runpy, sys, warnings
import torch
warned = set()
if os.environ.get("CUDA_CHECK_DETERMINISTIC") == "1":
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    show = warnings.showwarning
    def record(message, category, *args, **kwargs):
        if "deterministic" in str(message):
            warned.add(str(message).split(" does not have")[0][:200])
        show(message, category, *args, **kwargs)
    warnings.showwarning = record
def report():
    path = os.environ.get("CUDA_CHECK_REPORT")
    if not path:
        return
    cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    out = {"peak_cuda_bytes": torch.cuda.max_memory_allocated() if cuda else None,
           "max_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
           "nondeterministic_ops": sorted(warned)}
    with open(f"{path}.{os.environ.get('RANK', '0')}", "w") as f:
        json.dump(out, f)
atexit.register(report)
sys.argv = sys.argv[1:]
sys.path.insert(0, os.path.dirname(os.path.abspath(sys.argv[0])))
runpy.run_path(sys.argv[0], run_name="__main__")
"""

# One all_reduce through the process group's backend under torchrun: rank r contributes r + 1.
COLLECTIVE_PROBE = r"""
import os, sys, torch, torch.distributed as dist
backend = sys.argv[1]
rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
device = torch.device("cuda", int(os.environ["LOCAL_RANK"])) if backend == "nccl" else torch.device("cpu")
if device.type == "cuda":
    torch.cuda.set_device(device)
dist.init_process_group(backend)
t = torch.tensor([rank + 1.0], device=device)
dist.all_reduce(t)
expected = world * (world + 1) / 2
print(f"collective rank {rank}/{world} {backend}: sum {t.item():g}, expected {expected:g}", flush=True)
dist.destroy_process_group()
sys.exit(0 if t.item() == expected else 1)
"""


# ---------------------------------------------------------------------------------------------------------------
# results
# ---------------------------------------------------------------------------------------------------------------

@dataclass
class Check:
    """One line of the table. status: ok, FAIL (measured and wrong), error (the code broke), timeout, skip, info."""

    part: str
    name: str
    status: str
    value: str = ""
    data: dict = field(default_factory=dict)


@dataclass
class Context:
    """What every part needs: the device, the sizes, the output folder and the clock."""

    device: torch.device
    tiny: bool
    golden: Path | None
    out: Path
    python: str
    deadline: float = math.inf  # the current part's
    checks: list[Check] = field(default_factory=list)
    cache: dict = field(default_factory=dict)

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def add(self, part: str, name: str, status: str, value: str = "", **data: object) -> None:
        self.checks.append(Check(part, name, status, value, data))
        print(f"  [{part}] {name}: {status} {value}", flush=True)


class OutOfTimeError(Exception):
    """The part's time is spent before a subprocess could start: its rows become `skip`."""


@dataclass
class Proc:
    """A finished (or stopped) subprocess."""

    rc: int | None  # None: stopped at its time limit
    wall: float
    stdout: str
    stderr: str
    log: Path


# A subprocess is not started with less time than this left: a Python that imports torch needs seconds before it
# does any of its work, so a shorter run could only end as a timeout.
MIN_START_S = 5.0


def run_process(ctx: Context, name: str, cmd: list[str], env: dict | None = None,
                on_line: Callable[[str, subprocess.Popen], None] | None = None) -> Proc:
    """Run cmd in the repository root within the part's time left; stdout and stderr go to logs/<name>.log too.

    on_line(line, process) sees each stdout line as it comes (the resume check sends SIGINT from there)."""
    log = ctx.out / "logs" / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    timeout = ctx.left()
    if timeout < MIN_START_S:
        raise OutOfTimeError(f"not run, nor what follows it in this check: the part's time is spent ({name})")
    start = time.monotonic()
    with open(log.with_suffix(".stderr"), "w+") as err:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=full_env, stdout=subprocess.PIPE, stderr=err, text=True,
                                start_new_session=True)
        lines: list[str] = []

        # a reader thread keeps the time limit even when the child prints nothing
        def read() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                lines.append(line)
                if on_line is not None:
                    on_line(line, proc)

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        try:
            rc: int | None = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the child's own session: torchrun's ranks and workers go too
            proc.wait()
            rc = None
        reader.join(timeout=10)
        err.seek(0)
        stderr = err.read()
    wall = time.monotonic() - start
    stdout = "".join(lines)
    log.write_text(f"$ {' '.join(cmd)}\n# rc {rc}, {wall:.1f} s\n{stdout}")
    return Proc(rc, wall, stdout, stderr, log)


def broken(ctx: Context, part: str, name: str, e: Exception) -> None:
    """A check that raised: `skip` when it ran out of time, else `error` with the traceback in the report."""
    if isinstance(e, OutOfTimeError):
        ctx.add(part, name, "skip", str(e))
    else:
        ctx.add(part, name, "error", f"{type(e).__name__}: {e}"[:300], traceback=traceback.format_exc())


def failure(proc: Proc) -> str:
    """Why a subprocess did not succeed, in one line (its last error line), with its log."""
    if proc.rc is None:
        return f"stopped at the part's time limit after {proc.wall:.0f} s ({proc.log})"
    last = [x for x in (proc.stderr + proc.stdout).splitlines() if x.strip()][-1:] or [""]
    return f"exit {proc.rc}: {last[0][:160]} ({proc.log})"


def status_of(proc: Proc) -> str:
    return "timeout" if proc.rc is None else "error"


# ---------------------------------------------------------------------------------------------------------------
# data: the bundled sample and synthetic DAVIS-layout sets
# ---------------------------------------------------------------------------------------------------------------

def synthetic_frame(height: int, width: int, t: int, objects: int, seed: int, speck: bool = False,
                    ) -> tuple[np.ndarray, np.ndarray]:
    """(H, W, 3) uint8 RGB and (H, W) ids: a smooth random background and `objects` ellipses, each its own colour,
    that move a little every frame (later objects on top, so one may hide another).

    speck: one more object, a 4x4 square in a corner: run.py --test's resize to short side 480 would leave it fewer
    than 1000 pixels, so the official rule (dataset.official_size) keeps tiny frames at their own size."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(40, 215, size=(max(2, height // 40), max(2, width // 40), 3)).astype(np.float32)
    background = np.asarray(Image.fromarray(coarse.astype(np.uint8)).resize((width, height), Image.BILINEAR))
    rgb = background.astype(np.float32)
    ids = np.zeros((height, width), np.uint8)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    for i in range(1, objects + 1):
        cy, cx = rng.uniform(0.2, 0.8, 2)
        vy, vx = rng.uniform(-0.01, 0.01, 2)
        ry, rx = rng.uniform(0.08, 0.2, 2) / math.sqrt(max(1, objects / 3))
        colour = rng.uniform(0, 255, 3)
        inside = (((yy / height - cy - vy * t) / ry) ** 2 + ((xx / width - cx - vx * t) / rx) ** 2) <= 1
        rgb[inside] = colour
        ids[inside] = i
    if speck:
        rgb[2:6, 2:6], ids[2:6, 2:6] = 255, objects + 1
    noise = np.random.default_rng(seed * 1000 + t).normal(0, 6, rgb.shape)
    return np.clip(rgb + noise, 0, 255).astype(np.uint8), ids


def davis_layout(root: Path, sequences: dict[str, tuple[int, int, int]], frames: int, split: str,
                 speck: bool = False) -> Path:
    """A DAVIS 2017-layout tree (JPEGImages/480p, Annotations/480p palette PNGs, ImageSets/2017/<split>.txt) of
    synthetic sequences {name: (height, width, objects)}, every frame annotated (speck: see synthetic_frame)."""
    for s, (name, (height, width, objects)) in enumerate(sequences.items()):
        (root / "JPEGImages" / "480p" / name).mkdir(parents=True, exist_ok=True)
        for t in range(frames):
            rgb, ids = synthetic_frame(height, width, t, objects, seed=s + 1, speck=speck)
            Image.fromarray(rgb).save(root / "JPEGImages" / "480p" / name / f"{t:05d}.jpg", quality=90)
            save_mask(root / "Annotations" / "480p" / name / f"{t:05d}.png", ids)
    (root / "ImageSets" / "2017").mkdir(parents=True, exist_ok=True)
    (root / "ImageSets" / "2017" / f"{split}.txt").write_text("".join(f"{n}\n" for n in sequences))
    return root


def weights_file(ctx: Context) -> Path:
    """The golden (official-layout, random) weights when given, else a seeded random EMVOS in the official layout."""
    if ctx.golden is not None and (ctx.golden / "emvos_official.pth").is_file():
        return ctx.golden / "emvos_official.pth"
    path = ctx.out / "data" / "random_emvos.pth"
    if not path.exists():
        torch.manual_seed(0)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(emvos.to_official(emvos.EMVOS().state_dict()), path)
    return path


# ---------------------------------------------------------------------------------------------------------------
# part 1: parity
# ---------------------------------------------------------------------------------------------------------------

def segment(model: torch.nn.Module, frames: list[torch.Tensor], masks: dict[int, torch.Tensor], dtype: torch.dtype,
            autocast: torch.dtype | None) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Labels and the model's logits (framework.VOSModel.predict, recorded) of every frame, on CPU."""
    seg = VideoSegmenter(model, dtype=dtype, autocast=autocast)
    logits: list[torch.Tensor] = []
    original = model.predict

    def recording(*args: object, **kwargs: object) -> torch.Tensor:
        out = original(*args, **kwargs)
        logits.append(out.detach().float().cpu())
        return out

    model.predict = recording
    try:
        labels = [seg.step(f, masks.get(i))[0].cpu() for i, f in enumerate(frames)]
    finally:
        del model.predict
    return labels, logits


def golden_parity(ctx: Context) -> None:
    """The official outputs in float64 on the device (as tests/test_golden.py does on CPU)."""
    if ctx.golden is None or not (ctx.golden / "cases.npz").is_file():
        ctx.add("parity", "golden fp64", "skip", f"no cases.npz under --golden {ctx.golden}")
        return
    cases = dict(np.load(ctx.golden / "cases.npz"))
    net = load_weights(ctx.golden / "emvos_official.pth")[0].double().to(ctx.device)
    # the test mode: only the first clip of case c (float64 on a CPU is slow; the sample covers segment())
    videos = {} if ctx.tiny else {"a": (4, {0: "a_first_mask"}), "b": (4, {0: "b_first_mask", 2: "b_frame2_mask"})}
    for case, (length, masks) in videos.items():
        frames = [torch.from_numpy(a).permute(2, 0, 1).double() / 255 for a in cases[f"{case}_imgs"][:length]]
        given = {i: torch.from_numpy(cases[k]).long() for i, k in masks.items()}
        labels, _ = segment(net, frames, given, torch.float64, None)
        differ = int((torch.stack(labels).numpy() != cases[f"{case}_masks_out"][:length]).sum())
        ctx.add("parity", f"golden case {case} fp64 masks", "ok" if differ == 0 else "FAIL",
                f"{differ} pixels of {length} frames differ from the official masks", pixels_differ=differ)
    clips = 1 if ctx.tiny else len(cases["c_imgs"])
    imgs = torch.from_numpy(cases["c_imgs"][:clips]).permute(0, 1, 4, 2, 3).double().div(255).to(ctx.device)
    with torch.no_grad():
        scores = net(imgs, torch.from_numpy(cases["c_first_masks"][:clips]).long().to(ctx.device)).cpu().numpy()
    diff = float(np.abs(scores - cases["c_scores_out"][:clips]).max())
    ctx.add("parity", "golden case c fp64 training logits", "ok" if diff <= GOLDEN_TOLERANCE else "FAIL",
            f"max |diff| {diff:.2e} over {clips} clips (tolerance {GOLDEN_TOLERANCE:g})", max_abs_diff=diff)


def sample_video(ctx: Context, name: str) -> tuple[list[torch.Tensor], dict[int, torch.Tensor]]:
    """The bundled sample's 8 frames of one sequence (2, shrunk to 96x160, in --tiny) and its first mask."""
    paths = sorted((SAMPLE / "JPEGImages" / "480p" / name).glob("*.jpg"))[: 2 if ctx.tiny else 8]
    frames = [torch.from_numpy(read_frame(p).copy()).permute(2, 0, 1).float() / 255 for p in paths]
    # the DAVIS 2016 download's 0/255 masks: one object, id 1
    mask = torch.from_numpy(read_mask(SAMPLE / "Annotations" / "480p" / name / "00000.png", binary=True)).long()
    if ctx.tiny:
        frames = [torch.nn.functional.interpolate(f[None], size=(96, 160), mode="area")[0] for f in frames]
        mask = torch.nn.functional.interpolate(mask[None, None].float(), size=(96, 160), mode="nearest")[0, 0].long()
    return frames, {0: mask}


def object_pixels_differ(a: list[torch.Tensor], b: list[torch.Tensor]) -> dict[int, int]:
    """Per object id of either run: pixels (over all frames) that one run gives the object and the other does not."""
    ids = sorted(set(torch.cat([x.flatten() for x in a + b]).unique().tolist()) - {0})
    return {i: int(sum(((x == i) != (y == i)).sum().item() for x, y in zip(a, b, strict=True))) for i in ids}


def precision_parity(ctx: Context) -> None:
    """fp32 on the device against fp32 on CPU; bf16 (weights cast once) and fp16 (autocast) against the device's fp32
    (per object), on the
    bundled sample and (not in --tiny) the golden case b's frames, with the golden weights when given."""
    weights = weights_file(ctx)
    cpu_net = load_weights(weights)[0].float()
    net = load_weights(weights)[0].float().to(ctx.device)
    on_cpu = ctx.device.type == "cpu"
    videos = {f"sample {name}": sample_video(ctx, name) for name in (("bear",) if ctx.tiny else ("bear", "boat"))}
    if not ctx.tiny and ctx.golden is not None and (ctx.golden / "cases.npz").is_file():
        # several objects, one of them first given at frame 2: the per-object rows of the reduced precisions
        cases = np.load(ctx.golden / "cases.npz")
        videos["golden b"] = ([torch.from_numpy(a).permute(2, 0, 1).float() / 255 for a in cases["b_imgs"]],
                              {0: torch.from_numpy(cases["b_first_mask"]).long(),
                               2: torch.from_numpy(cases["b_frame2_mask"]).long()})
    for name, (frames, masks) in videos.items():
        ref_labels, ref_logits = segment(cpu_net, frames, masks, torch.float32, None)
        labels, logits = segment(net, frames, masks, torch.float32, None)
        differ = sum(int((x != y).sum()) for x, y in zip(ref_labels, labels, strict=True))
        logit = max(float((x - y).abs().max()) for x, y in zip(ref_logits, logits, strict=True))
        tf32 = torch.backends.cudnn.allow_tf32 if ctx.device.type == "cuda" else False
        ctx.add("parity", f"{name} fp32 {ctx.device.type} vs cpu", "ok" if differ == 0 else "FAIL",
                f"{differ} of {sum(x.numel() for x in labels)} pixels differ, max |logit diff| {logit:.2e}"
                f"{' (cuDNN TF32 on, the torch default)' if tf32 else ''}", pixels_differ=differ,
                max_logit_diff=logit, cudnn_tf32=tf32)
        for q in ("bf16", "fp16"):
            if q == "fp16" and on_cpu:
                ctx.add("parity", f"{name} {q} vs fp32", "skip", "fp16 autocast is a CUDA path")
                continue
            chosen = PRECISIONS[q]  # bf16: a copy with its weights cast once, as run.py --precision bf16 runs
            q_net = net if chosen.weights == torch.float32 else copy.deepcopy(net).to(chosen.weights)
            q_labels, q_logits = segment(q_net, frames, masks, chosen.frames, chosen.autocast)
            per_object = object_pixels_differ(labels, q_labels)
            logit = max(float((x - y).abs().max()) for x, y in zip(logits, q_logits, strict=True))
            total = sum(x.numel() for x in labels)
            text = ", ".join(f"object {i} {n}" for i, n in per_object.items())
            ctx.add("parity", f"{name} {q} vs fp32", "info",
                    f"pixels differing per object (of {total}): {text}; max |logit diff| {logit:.2e}",
                    pixels_differ_per_object=per_object, max_logit_diff=logit)


def part_parity(ctx: Context) -> None:
    for check in (golden_parity, precision_parity):
        try:
            check(ctx)
        except Exception as e:  # one broken check must not hide the other
            broken(ctx, "parity", check.__name__, e)
    if ctx.device.type == "cuda":
        torch.cuda.empty_cache()  # the subprocesses of the later parts get the GPU's memory back


# ---------------------------------------------------------------------------------------------------------------
# part 2: speed and memory
# ---------------------------------------------------------------------------------------------------------------

def bench_runs(ctx: Context, compiled: bool) -> list[tuple[str, list[str]]]:
    """(name, bench.py arguments): one run per resolution, so that a time limit keeps the finished ones. The test
    mode leaves --compile out (minutes of compilation on a CPU)."""
    if ctx.tiny:
        return [] if compiled else [("bench_tiny", ["--configs", "tiny:2", "--precisions", "fp32", "--frames", "1"])]
    precisions = ["fp32", "bf16", "fp16"] if torch.cuda.is_bf16_supported() else ["fp32", "fp16"]
    runs = []
    for res in ("480p", "720p", "1080p"):
        args = ["--configs", *(f"{res}:{n}" for n in (1, 3, 10)), "--precisions", *precisions, "--frames", "3"]
        runs.append((f"bench_{res}{'_compile' if compiled else ''}", args + (["--compile"] if compiled else [])))
    return runs


def speed_bench(ctx: Context, compiled: bool) -> None:
    for name, args in bench_runs(ctx, compiled):
        path = ctx.out / f"{name}.json"
        cmd = [ctx.python, "tools/bench.py", "--device", ctx.device.type, "--paths", "per-object", "ours", "--json",
               str(path), *args]
        proc = run_process(ctx, name, cmd)
        if proc.rc != 0 or not path.is_file():
            ctx.add("speed", name, status_of(proc), failure(proc))
            continue
        report = json.loads(path.read_text())
        for row in report["rows"]:
            label = (f"{row['resolution']} {row['objects']:>2} obj {row['path']:10s} {row['precision']}"
                     f"{' compile' if report['settings']['compile'] else ''}")
            ctx.add("speed", label, "info",
                    f"{row['fps']:8.2f} fps  x{row['x_per_object']:.2f} per-object  "
                    f"{row['peak_bytes'] / 2**20:8.0f} MiB  mask diff {row['mask_diff']:.1e}", **row)


def speed_wall(ctx: Context) -> None:
    """Whole `run.py --test` processes: wall time (start, model load, JPEG decode, PNG write, scoring) per frame."""
    sizes = {"tiny": (96, 160)} if ctx.tiny else {"480p": (480, 854), "720p": (720, 1280), "1080p": (1080, 1920)}
    frames = 3 if ctx.tiny else 10
    weights = weights_file(ctx)
    for res, (height, width) in sizes.items():
        root = ctx.out / "data" / f"test_{res}"
        objects = (1,) if ctx.tiny else (1, 3, 10)
        davis_layout(root, {f"{res}_{n}obj": (height, width, n) for n in objects}, frames, "val", speck=ctx.tiny)
        cmd = [ctx.python, "run.py", "--test", "--device", ctx.device.type, "--davis", str(root), "--data",
               "DAVIS17_val", "--weights", str(weights), "--output", str(ctx.out / f"masks_{res}"), "--no-download"]
        proc = run_process(ctx, f"run_test_{res}", cmd)
        if proc.rc != 0:
            ctx.add("speed", f"run.py --test {res}", status_of(proc), failure(proc))
            continue
        total = frames * len(objects)
        model_fps = [line.split(", ")[-1] for line in proc.stdout.splitlines() if "fps" in line and "obj:" in line]
        ctx.add("speed", f"run.py --test {res} fp32, whole process", "info",
                f"{total / proc.wall:.2f} frames/s over {proc.wall:.1f} s wall ({total} frames); model time per "
                f"video: {', '.join(model_fps)}{'' if ctx.tiny else RESIZE_NOTE}",
                wall_s=proc.wall, frames=total)


def speed_fast_path(ctx: Context) -> None:
    """The fast path, `run.py --test --precision bf16 --compile`, twice on the 480p set of speed_wall: the first run
    compiles (into a fresh inductor cache of this check), the second loads the compiled graphs from it. Wall time and
    run.py's own compile line of each. Not in the test mode (minutes of compilation on a CPU)."""
    root = ctx.out / "data" / "test_480p"
    if ctx.tiny or not root.is_dir():
        return
    weights = weights_file(ctx)
    env = {"TORCHINDUCTOR_CACHE_DIR": str(ctx.out / "inductor_cache")}
    for run in ("first", "warm"):
        cmd = [ctx.python, "run.py", "--test", "--device", ctx.device.type, "--davis", str(root), "--data",
               "DAVIS17_val", "--weights", str(weights), "--output", str(ctx.out / f"masks_fast_{run}"),
               "--no-download", "--precision", "bf16", "--compile"]
        proc = run_process(ctx, f"run_test_fast_{run}", cmd, env=env)
        if proc.rc != 0:
            ctx.add("speed", f"run.py --test 480p bf16 --compile ({run} run)", status_of(proc), failure(proc))
            continue
        compiled = [line for line in proc.stdout.splitlines() if line.startswith("torch.compile:")]
        ctx.add("speed", f"run.py --test 480p bf16 --compile ({run} run), whole process", "info",
                f"{proc.wall:.1f} s wall; {compiled[0] if compiled else 'no compile line'}", wall_s=proc.wall)


def part_speed(ctx: Context) -> None:
    # compiled runs last: they take the longest, and what the budget cuts should be the least needed
    for name, check in (("bench.py", lambda: speed_bench(ctx, False)), ("run.py --test", lambda: speed_wall(ctx)),
                        ("run.py --test fast path", lambda: speed_fast_path(ctx)),
                        ("bench.py --compile", lambda: speed_bench(ctx, True))):
        try:
            check()
        except Exception as e:
            broken(ctx, "speed", name, e)


# ---------------------------------------------------------------------------------------------------------------
# parts 3-5: training, resume, DDP (all through run.py --train)
# ---------------------------------------------------------------------------------------------------------------

def train_root(ctx: Context) -> Path:
    """The synthetic DAVIS 2017-layout training set (made once per check)."""
    root = ctx.out / "data" / "train"
    if not root.exists():
        height, width = (96, 128) if ctx.tiny else (480, 854)
        frames = 4 if ctx.tiny else 12
        davis_layout(root, {f"train{i}": (height, width, 1 + i) for i in range(3)}, frames, "train")
    return root


def train_args(ctx: Context, save_dir: Path, *extra: str) -> list[str]:
    """The davis stage: official batch, clip length and crop (tiny in the test mode), 20 iterations (4 in tiny) in
    4 epochs, random-init backbone (no download)."""
    batch, clip, crop = (2, 3, 64) if ctx.tiny else (8, 10, 384)
    per_epoch = 1 if ctx.tiny else 5
    return ["--train", "--device", ctx.device.type, "--davis", str(train_root(ctx)), "--davis-year", "2017",
            "--stages", "davis", "--no-pretrained", "--batch-size", str(batch), "--clip-len", str(clip),
            "--crop", str(crop), str(crop), "--clips-per-epoch", str(batch * per_epoch), "--epochs", "4",
            "--save-every", "4", "--val-every", "0", "--workers", "0" if ctx.tiny else "4", "--seed", "0",
            "--save-dir", str(save_dir), "--no-download", *extra]


@dataclass
class TrainRun:
    proc: Proc
    log: list[dict]
    reports: list[dict]
    save_dir: Path

    @property
    def losses(self) -> list[float]:
        return [float(r["loss"]) for r in self.log if r.get("loss")]

    def epoch_losses(self) -> dict[int, float]:
        return {int(r["epoch"]): float(r["loss"]) for r in self.log if r.get("loss")}

    def weights(self) -> dict[str, torch.Tensor]:
        return torch.load(self.save_dir / "coco_davis_0004.pth", map_location="cpu", weights_only=True)


def train(ctx: Context, name: str, argv: list[str], save_dir: Path, deterministic: bool = False, ranks: int = 0,
          on_line: Callable[[str, subprocess.Popen], None] | None = None) -> TrainRun:
    """run.py with argv through RUN_WRAPPER, writing into save_dir; ranks > 0: under torchrun with that many
    processes."""
    report = ctx.out / "logs" / f"{name}.report"
    env = {"CUDA_CHECK_REPORT": str(report), "CUDA_CHECK_DETERMINISTIC": "1" if deterministic else "0"}
    if deterministic:
        env["CUBLAS_WORKSPACE_CONFIG"] = ":4096:8"  # what cuBLAS needs for deterministic results
    if ctx.device.type == "cpu":
        env["OMP_NUM_THREADS"] = "1"
    wrapped = ["-c", RUN_WRAPPER, "run.py", *argv]
    if ranks:
        cmd = [ctx.python, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(ranks),
               "--no-python", ctx.python, *wrapped]
    else:
        cmd = [ctx.python, *wrapped]
    proc = run_process(ctx, name, cmd, env, on_line)
    log_path = save_dir / "train_log.csv"
    log = []
    if log_path.is_file():
        with open(log_path, newline="") as f:
            log = list(csv.DictReader(f))
    reports = [json.loads(p.read_text()) for p in sorted(report.parent.glob(f"{report.name}.*"))]
    return TrainRun(proc, log, reports, save_dir)


def peak_text(run: TrainRun) -> tuple[str, int | None]:
    peaks = [r["peak_cuda_bytes"] for r in run.reports if r.get("peak_cuda_bytes") is not None]
    if peaks:
        return f"peak {max(peaks) / 2**30:.2f} GiB allocated", max(peaks)
    rss = [r["max_rss_bytes"] for r in run.reports]
    return (f"peak RSS {max(rss) / 2**30:.2f} GiB", max(rss)) if rss else ("peak memory not reported", None)


def part_train(ctx: Context) -> None:
    for amp in (False, True):
        name = f"train_{'amp' if amp else 'fp32'}"
        try:
            run = train(ctx, name, train_args(ctx, ctx.out / name, "--amp" if amp else "--no-amp"), ctx.out / name)
            if run.proc.rc != 0:
                ctx.add("train", name, status_of(run.proc), failure(run.proc))
                continue
            secs = [float(r["sec_per_iter"]) for r in run.log if r.get("sec_per_iter")]
            steady = float(np.median(secs[1:])) if len(secs) > 1 else math.nan  # epoch 1 pays the warm-up
            iterations = int(run.log[-1]["iteration"]) if run.log else 0
            finite = bool(run.losses) and all(math.isfinite(x) for x in run.losses)
            peak, peak_bytes = peak_text(run)
            ctx.add("train", f"{name} {iterations} it", "ok" if finite and iterations else "FAIL",
                    f"{steady:.3f} s/it (epochs 2-4; epoch 1 {secs[0] if secs else math.nan:.3f}), {peak}, losses "
                    f"{', '.join(f'{x:.4f}' for x in run.losses)}{'' if finite else ' NOT FINITE'}, "
                    f"{run.proc.wall:.0f} s wall", sec_per_iter=secs, losses=run.losses, peak_bytes=peak_bytes,
                    iterations=iterations)
        except Exception as e:
            broken(ctx, "train", name, e)


def reference(ctx: Context) -> TrainRun:
    """The deterministic single-process run that resume and DDP compare with (made once)."""
    if "reference" not in ctx.cache:
        ctx.cache["reference"] = train(ctx, "train_reference", train_args(ctx, ctx.out / "reference", "--no-amp"),
                                       ctx.out / "reference", deterministic=True)
    return ctx.cache["reference"]


def weight_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """Largest |difference| over every tensor of two weights files (inf when their keys differ)."""
    if a.keys() != b.keys():
        return math.inf
    return max(float((a[k].double() - b[k].double()).abs().max()) if a[k].numel() else 0.0 for k in a)


def part_resume(ctx: Context) -> None:
    ref = reference(ctx)
    if ref.proc.rc != 0:
        ctx.add("resume", "reference run", status_of(ref.proc), failure(ref.proc))
        return
    sent: list[float] = []

    def interrupt(line: str, proc: subprocess.Popen) -> None:
        # after the second epoch's log line: the run stops after the iteration in flight, mid third epoch
        if line.startswith("[davis ep0002]") and not sent:
            sent.append(time.monotonic())
            proc.send_signal(signal.SIGINT)

    stopped = train(ctx, "train_interrupted", train_args(ctx, ctx.out / "interrupted", "--no-amp"),
                    ctx.out / "interrupted", deterministic=True, on_line=interrupt)
    checkpoint = ctx.out / "interrupted" / "coco_davis_interrupted.pth"
    if stopped.proc.rc != 130 or not checkpoint.is_file():
        ctx.add("resume", "SIGINT after epoch 2", "FAIL" if stopped.proc.rc is not None else "timeout",
                f"expected exit 130 and {checkpoint.name}; " + failure(stopped.proc))
        return
    ctx.add("resume", "SIGINT after epoch 2", "ok", f"exit 130, wrote {checkpoint.name}")
    # only the data root and the file: the stages, sizes and the save folder come from the checkpoint
    resumed = train(ctx, "train_resumed", ["--train", "--device", ctx.device.type, "--davis", str(train_root(ctx)),
                                           "--resume", str(checkpoint), "--no-download"], ctx.out / "interrupted",
                    deterministic=True)
    if resumed.proc.rc != 0:
        ctx.add("resume", "--resume", status_of(resumed.proc), failure(resumed.proc))
        return
    strip = [{k: v for k, v in r.items() if k != "sec_per_iter"} for r in ref.log]
    same_log = strip == [{k: v for k, v in r.items() if k != "sec_per_iter"} for r in resumed.log]
    diff = weight_difference(ref.weights(), resumed.weights())
    ops = sorted({op for r in ref.reports + stopped.reports + resumed.reports for op in r["nondeterministic_ops"]})
    why = f"; ops without a deterministic kernel: {'; '.join(ops)}" if ops else ""
    ctx.add("resume", "resumed vs uninterrupted (deterministic)", "ok" if diff == 0 and same_log else "FAIL",
            f"final weights max |diff| {diff:.2e}, per-epoch loss/IoU log {'identical' if same_log else 'DIFFERS'}"
            f"{why}", max_weight_diff=diff, same_log=same_log, nondeterministic_ops=ops,
            losses_reference=ref.losses, losses_resumed=resumed.losses)


def part_ddp(ctx: Context) -> None:
    backend = "nccl" if ctx.device.type == "cuda" else "gloo"
    ranks = [1] + ([2] if ctx.device.type == "cpu" or torch.cuda.device_count() >= 2 else [])
    for n in ranks:
        proc = run_process(ctx, f"collective_{n}", [ctx.python, "-m", "torch.distributed.run", "--standalone",
                                                    "--nproc_per_node", str(n), "--no-python", ctx.python, "-c",
                                                    COLLECTIVE_PROBE, backend])
        ok = proc.rc == 0 and proc.stdout.count("collective rank") == n
        ctx.add("ddp", f"torchrun {n} rank(s) {backend} all_reduce", "ok" if ok else status_of(proc),
                proc.stdout.strip().splitlines()[-1] if ok else failure(proc))
    ref = reference(ctx)
    if ref.proc.rc != 0:
        ctx.add("ddp", "reference run", status_of(ref.proc), failure(ref.proc))
        return
    for n in ranks:
        run = train(ctx, f"train_ddp{n}", train_args(ctx, ctx.out / f"ddp{n}", "--no-amp"), ctx.out / f"ddp{n}",
                    deterministic=True, ranks=n)
        if run.proc.rc != 0:
            ctx.add("ddp", f"torchrun {n} run.py --train", status_of(run.proc), failure(run.proc))
            continue
        # epochs whose every batch the skip rule dropped have no loss; compare the epochs both runs have
        mine, theirs = run.epoch_losses(), ref.epoch_losses()
        common = sorted(mine.keys() & theirs.keys())
        if not common or (n == 1 and mine.keys() != theirs.keys()):
            ctx.add("ddp", f"torchrun {n} run.py --train", "FAIL",
                    f"epochs with a loss: {sorted(mine)}, reference {sorted(theirs)}")
            continue
        rel = max(abs(mine[e] - theirs[e]) / max(abs(theirs[e]), 1e-12) for e in common)
        if n == 1:
            # WORLD_SIZE 1: the trainer joins no process group, so this is the single process under torchrun
            diff = weight_difference(run.weights(), ref.weights())
            ok = rel == 0 and diff == 0
            text = f"loss trajectory max rel diff {rel:.1e}, final weights max |diff| {diff:.2e} (no process group " \
                   f"at 1 rank)"
        else:
            ok, diff = rel <= DDP_TOLERANCE, None
            text = (f"per-epoch loss max rel diff {rel:.1e} over epochs {common} (tolerance {DDP_TOLERANCE}: each "
                    f"rank draws its own clips, so only the trend can agree)")
        status = ("ok" if ok else "FAIL") if not (ctx.tiny and n > 1) else "info"  # tiny: too few clips to compare
        ctx.add("ddp", f"torchrun {n} rank(s) run.py --train vs 1 process", status, text,
                rel_loss_diff=rel, weight_diff=diff, losses=mine, losses_reference=theirs)


# ---------------------------------------------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------------------------------------------

RUNNERS: dict[str, Callable[[Context], None]] = {"parity": part_parity, "speed": part_speed, "train": part_train,
                                                 "resume": part_resume, "ddp": part_ddp}


def format_table(checks: list[Check]) -> str:
    width = max([len(c.name) for c in checks] + [5])
    head = f"{'part':7} {'check':{width}} {'status':7} result"
    lines = [head, "-" * len(head)]
    lines += [f"{c.part:7} {c.name:{width}} {c.status:7} {c.value}" for c in checks]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = OneLineParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda",
                   help="cuda (the check); cpu only with --tiny, the test mode")
    p.add_argument("--tiny", action="store_true",
                   help="TEST MODE: tiny frames, clips and runs, so that a CPU exercises every part's code path in "
                        "seconds; its numbers say nothing about speed")
    p.add_argument("--golden", type=Path, default=None,
                   help="folder with cases.npz and emvos_official.pth (default: the repository's golden vectors, "
                        "tests/golden/, written out into the run's folder as golden/)")
    p.add_argument("--parts", nargs="+", choices=list(PARTS), default=list(PARTS))
    p.add_argument("--budget", type=float, default=300.0,
                   help="total seconds; the parts share it (parity 15%%, speed 40%%, train 20%%, resume 15%%, "
                        "ddp 10%%) and time one leaves goes to the next (default 300)")
    p.add_argument("--out", type=Path, default=ROOT / "outputs" / "cuda-check",
                   help="a new folder per run is made in here (default outputs/cuda-check)")
    args = p.parse_args(argv)
    if args.golden is not None and not (args.golden / "cases.npz").is_file():
        p.exit(2, f"--golden {args.golden}: no cases.npz there; copy the golden folder there or drop --golden\n")
    if args.budget <= 0:
        p.exit(2, "--budget must be more than 0 seconds\n")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print(f"cuda_check: CUDA is not available here (torch {torch.__version__}); this check needs a GPU "
              f"(--device cpu --tiny is its CPU test mode)", file=sys.stderr)
        return 2
    if args.device == "cpu" and not args.tiny:
        print("cuda_check: --device cpu is the test mode and needs --tiny", file=sys.stderr)
        return 2
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = args.out / f"{stamp}{'-tiny' if args.tiny else ''}"
    n = 1
    while out.exists():  # never write into an earlier run's folder
        n += 1
        out = args.out / f"{stamp}{'-tiny' if args.tiny else ''}-{n}"
    out.mkdir(parents=True)
    device = torch.device(args.device)
    ctx = Context(device, args.tiny, args.golden or materialize_golden(out / "golden"), out, sys.executable)
    info = {"torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
            "device": torch.cuda.get_device_name(0) if device.type == "cuda" else platform.processor() or "cpu",
            "gpus": torch.cuda.device_count() if device.type == "cuda" else 0, "tiny": args.tiny,
            "golden": str(ctx.golden), "budget_s": args.budget}
    print(f"cuda_check: {info}; writing {out}", flush=True)
    start = time.monotonic()
    share = 0.0
    for part in args.parts:
        share += PARTS[part] / sum(PARTS[p] for p in args.parts)
        ctx.deadline = start + share * args.budget
        begun = time.monotonic()
        try:
            RUNNERS[part](ctx)
        except Exception as e:  # a part that breaks is a row of the table, not the end of the check
            broken(ctx, part, part, e)
        print(f"cuda_check: {part} took {time.monotonic() - begun:.0f} s", flush=True)
    info["seconds"] = time.monotonic() - start
    table = format_table(ctx.checks)
    print(f"\n{table}\n\n{info['seconds']:.0f} s; report {out / 'report.json'}")
    (out / "table.txt").write_text(table + "\n")
    (out / "report.json").write_text(json.dumps({"info": info, "checks": [c.__dict__ for c in ctx.checks]},
                                                indent=1, default=str))
    failed = [c for c in ctx.checks if c.status in ("FAIL", "error", "timeout")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
