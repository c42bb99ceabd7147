"""Whole-process wall time of `run.py --test` against the authors' EMVOS code, side by side on one DAVIS sequence, on
the CPU.

    python tools/vs_official.py OFFICIAL_DIR --davis DAVIS2017_ROOT --sequence car-shadow --weights W \\
        [--frames 40] [--rounds 3] [--precision bf16] [--compile] [--no-report] [--out outputs/vs-official]

OFFICIAL_DIR is a checkout of https://github.com/suhwan-cho/EMVOS at commit 7e1e200 (its emvos.py is checked by git
blob id, as tools/make_golden.py does; evaluation/ and dataset_loaders/ must be there too). Its code is only run, in
a subprocess; nothing of it is copied into this repository. Its utils.py writes the masks with pypng (`import png`),
so the Python running this tool needs pypng (`pip install pypng`; it is no requirement of this repository).

What it does, in order:
1. Checks the inputs before any work: --weights is a file; --davis holds JPEGImages/480p/SEQ with at least --frames
   frames numbered 00000.jpg, 00001.jpg, ... (the authors' TestDAVIS reads them by number) and Annotations/480p/SEQ
   with a mask for each, the first one holding object ids (DAVIS 2017, not black/white 0/255); --precision runs on
   the CPU; --out is outside --davis; OFFICIAL_DIR is the authors' code; pypng imports. A bad one: one line on stderr
   naming the flag or path and the fix, exit 2.
2. Builds a temporary DAVIS 2017 root (removed at the end) holding only SEQ: symlinks to its first --frames frames
   and masks, and ImageSets/2017/val.txt naming SEQ. This repository's `--data DAVIS17_val` and the authors'
   `TestDAVIS(root, '2017', 'val')` both read that layout.
3. Runs one warm-up process of ours (with --compile it fills a fresh inductor cache in the run folder, which the
   rounds then load; printed as "first run"),
   then --rounds rounds, each the authors' process and then ours, so that other load on the machine hits both alike:
   - the authors': `python DRIVER OFFICIAL_DIR W ROOT OUTDIR`, where DRIVER (written into the temporary folder)
     imports their modules with the shims a CPU and today's torchvision need (`.cuda()` of tensors and modules
     returns them unchanged, `torch.cuda.set_device` does nothing, densenet121 is built with weights=None since W
     replaces every tensor) and then does what their run.py's test() does: `EMVOS().eval()`, `load_state_dict` of
     W, and under `torch.no_grad()` `evaluation.Evaluator(TestDAVIS(ROOT, '2017', 'val')).evaluate(model, OUTDIR)`;
     it joins the Evaluator's PNG-writing thread, so that every mask is on disk when the process ends;
   - ours: `python run.py --test --data DAVIS17_val --davis ROOT --weights W --device cpu --precision P [--compile]
     [--no-report] --output OUTDIR` in the repository root. It does what run.py --test does with ground truth: the
     masks, J&F scoring and (unless --no-report) report.html; the authors' test() writes masks only.
   Each process is started by a small timer process (a Python without site packages, see TIMER) and timed there
   from spawn to exit (time.perf_counter around Popen and os.wait4); its peak RSS is wait4's ru_maxrss, the largest
   resident set of the process and of the children it waited for (not their sum). A process that fails stops the
   run: one line naming its log, exit 1.
4. Prints one table: each round's two wall times, their medians, the ratio (the authors' median / ours), the peak RSS
   of each side (the largest over the rounds, MiB), and the share of mask pixels on which ours equals the authors'
   (the last round's PNGs of both, read frame by frame as id arrays; one mean over all pixels of all frames).
   It writes result.json (every number, the commands, torch's version, the CPU model from /proc/cpuinfo), the
   processes' logs and both sides' masks into a new folder under --out; nothing there is overwritten. The commands
   in result.json name the temporary root, which is gone once the tool ends.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # a script in tools/: the repository's packages live one folder up

from core.flags import OneLineParser, int_range  # noqa: E402
from core.segmenter import PRECISIONS, run_settings  # noqa: E402
from tools import make_golden  # noqa: E402
from utils import VOSInputError, read_mask  # noqa: E402

DATA_KEY = "DAVIS17_val"  # the temporary root's one split: ImageSets/2017/val.txt, run.py's --data DAVIS17_val

# The authors' side. Their modules import each other by top-level name (`import utils`, `from emvos import EMVOS`),
# so OFFICIAL_DIR goes first on sys.path. The shims are applied before their modules are imported: emvos.py builds
# `tv.models.densenet121(pretrained=True)` in EMVOS() (today's torchvision would download ImageNet weights, which
# load_state_dict replaces anyway), and Evaluator.evaluate calls `.cuda()` on the model and on every input.
# Evaluator.evaluate ends with img_saver.kill(), which only lets the saver thread stop once its queue is empty;
# join() waits for that, so the process ends after its last mask is written, as the authors' run.py does.
DRIVER = """\
import sys
OFFICIAL_DIR, WEIGHTS, ROOT, OUTDIR = sys.argv[1:5]
sys.path.insert(0, OFFICIAL_DIR)
import torch
import torchvision
torch.Tensor.cuda = lambda self, *args, **kwargs: self
torch.nn.Module.cuda = lambda self, *args, **kwargs: self
torch.cuda.set_device = lambda *args, **kwargs: None
_densenet121 = torchvision.models.densenet121
torchvision.models.densenet121 = lambda pretrained=False, **kwargs: _densenet121(weights=None)
import evaluation
from dataset_loaders import TestDAVIS
from emvos import EMVOS
model = EMVOS().eval()
model.load_state_dict(torch.load(WEIGHTS, map_location='cpu'))
with torch.no_grad():
    evaluator = evaluation.Evaluator(TestDAVIS(ROOT, '2017', 'val'))
    evaluator.evaluate(model, OUTDIR)
evaluator.img_saver.join()
"""


# Each process is started by this small timer, a Python without site packages (about 10 MiB), and not by the tool
# itself: Linux keeps a process's ru_maxrss across fork and exec, so a child starts from its parent's resident size,
# and the tool's (torch imported, about 700 MiB) would hide any smaller peak. The timer reaps the process with
# os.wait4, which gives that process's own rusage, and prints one JSON line.
TIMER = """\
import json, os, subprocess, sys, time
log, cmd = sys.argv[1], sys.argv[2:]
with open(log, 'w') as out:
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    try:
        _, status, usage = os.wait4(proc.pid, 0)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    wall = time.perf_counter() - start
proc.returncode = os.waitstatus_to_exitcode(status)
print(json.dumps({'wall_s': wall, 'maxrss_kib': usage.ru_maxrss, 'returncode': proc.returncode}))
"""


class InputError(Exception):
    """A bad input, found before any work: main prints it as one line and exits with 2."""


# ----------------------------------------------------------------------------------------------------------------------
# The checks
# ----------------------------------------------------------------------------------------------------------------------


def check_sequence(davis: Path, sequence: str, frames: int) -> tuple[list[Path], list[Path]]:
    """(frames, masks): the first `frames` JPEGs of the sequence and their annotations, checked to be what both
    readers need (see the module docstring)."""
    images, annotations = davis / "JPEGImages" / "480p" / sequence, davis / "Annotations" / "480p" / sequence
    for folder in (images, annotations):
        if not folder.is_dir():
            raise InputError(f"--davis {davis}: no folder {folder}; pass a DAVIS 2017 root (JPEGImages/480p/<seq>, "
                             f"Annotations/480p/<seq>) that holds --sequence {sequence}")
    jpgs = sorted(images.glob("*.jpg"))
    if len(jpgs) < frames:
        raise InputError(f"--davis {davis}: {images} holds {len(jpgs)} .jpg frames, fewer than --frames {frames}; "
                         "pass a smaller --frames or another --sequence")
    jpgs = jpgs[:frames]
    expected = [f"{i:05d}.jpg" for i in range(frames)]
    odd = [p.name for p, name in zip(jpgs, expected, strict=True) if p.name != name]
    if odd:
        raise InputError(f"--davis {davis}: frame {images / odd[0]} breaks the numbering 00000.jpg, 00001.jpg, ... "
                         "that the authors' TestDAVIS reads; rename the sequence's frames so")
    masks = [annotations / f"{p.stem}.png" for p in jpgs]
    missing = [m for m in masks if not m.is_file()]
    if missing:
        raise InputError(f"--davis {davis}: no annotation {missing[0]} ({len(missing)} of the first {frames} frames "
                         "have none); both readers need one per frame")
    with Image.open(masks[0]) as first:
        grey = first.mode == "L" and set(np.unique(np.asarray(first)).tolist()) == {0, 255}
    if grey:
        raise InputError(f"--davis {davis}: {masks[0]} is a black/white 0/255 mask (the DAVIS 2016 format); DAVIS 2017 "
                         "reads pixel values as object ids: rewrite the masks as palette PNGs with ids 1, 2, ...")
    return jpgs, masks


def check_official(official: Path) -> None:
    """OFFICIAL_DIR is the authors' code at 7e1e200: its emvos.py by git blob id, and the two packages test() uses."""
    commit = make_golden.OFFICIAL_COMMIT[:7]
    fix = (f"pass a checkout of suhwan-cho/EMVOS at {commit} as OFFICIAL_DIR (git clone "
           f"https://github.com/suhwan-cho/EMVOS DIR && git -C DIR checkout {commit})")
    emvos = official / "emvos.py"
    if not emvos.is_file():
        raise InputError(f"OFFICIAL_DIR {official}: no emvos.py there; {fix}")
    blob = make_golden.git_blob_id(emvos.read_bytes())
    if blob != make_golden.OFFICIAL_EMVOS_BLOB:
        raise InputError(f"OFFICIAL_DIR {official}: emvos.py has git blob id {blob}, not "
                         f"{make_golden.OFFICIAL_EMVOS_BLOB} (emvos.py at {commit}); {fix}")
    for package in ("evaluation", "dataset_loaders"):
        if not (official / package).is_dir():
            raise InputError(f"OFFICIAL_DIR {official}: no {package}/ there (the authors' test() uses it); {fix}")


def check_pypng() -> None:
    try:
        import png  # noqa: F401
    except ImportError:
        raise InputError(f"pypng is missing in {sys.executable}: pip install pypng (the authors' code writes its "
                         "masks with it)") from None


def check_inputs(args: argparse.Namespace) -> tuple[list[Path], list[Path]]:
    """The checks of step 1 of the module docstring, in its order (those that need no official code first); returns
    check_sequence's."""
    if not args.weights.is_file():
        raise InputError(f"--weights {args.weights}: no such file; pass the checkpoint both sides load (the authors' "
                         "state-dict layout, e.g. tests/golden/build/emvos_official.pth)")
    found = check_sequence(args.davis, args.sequence, args.frames)
    try:
        run_settings("cpu", args.precision)
    except VOSInputError as e:
        raise InputError(f"--precision {args.precision}: run.py refuses it on the CPU ({e})") from None
    if args.out.exists() and not args.out.is_dir():
        raise InputError(f"--out {args.out}: a file is there; pass a folder (a new run folder is made in it)")
    if args.out.resolve().is_relative_to(args.davis.resolve()):
        raise InputError(f"--out {args.out} is inside --davis {args.davis}; run.py writes nowhere under its inputs: "
                         "pass a folder outside it")
    check_official(args.official_dir)
    check_pypng()
    return found


# ----------------------------------------------------------------------------------------------------------------------
# The temporary root, the run folder, the processes
# ----------------------------------------------------------------------------------------------------------------------


def build_root(dest: Path, sequence: str, frames: list[Path], masks: list[Path]) -> Path:
    """A DAVIS 2017 root at dest holding only `sequence`: JPEGImages/480p/<seq>/ and Annotations/480p/<seq>/ with
    symlinks to the given frames and masks (same names), and ImageSets/2017/val.txt naming the sequence."""
    for kind, files in (("JPEGImages", frames), ("Annotations", masks)):
        folder = dest / kind / "480p" / sequence
        folder.mkdir(parents=True)
        for path in files:
            (folder / path.name).symlink_to(path.resolve())
    (dest / "ImageSets" / "2017").mkdir(parents=True)
    (dest / "ImageSets" / "2017" / "val.txt").write_text(f"{sequence}\n")
    return dest


def new_run_folder(parent: Path) -> Path:
    """A new folder parent/<date>-<time>[-n]: an earlier run's folder is never written into."""
    parent.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for n in range(1, 1000):
        folder = parent / (stamp if n == 1 else f"{stamp}-{n}")
        try:
            folder.mkdir()
            return folder
        except FileExistsError:
            continue
    raise InputError(f"--out {parent}: 999 run folders named {stamp}* exist already; pass another --out")


@dataclass
class Process:
    """One timed process: its command, wall time from spawn to exit, peak RSS, exit status and log."""

    side: str
    cmd: list[str]
    wall_s: float
    peak_rss_mib: float
    returncode: int
    log: str


def timed(side: str, cmd: list[str], cwd: Path, log: Path, env: dict[str, str] | None = None) -> Process:
    """Run cmd in cwd (stdout and stderr into log; env added to this process's environment) through TIMER: its wall
    time from spawn to exit, its peak RSS (wait4's ru_maxrss, KiB on Linux) and its exit status."""
    timer = subprocess.run([sys.executable, "-S", "-c", TIMER, str(log), *cmd], cwd=cwd, capture_output=True,
                           text=True, env={**os.environ, **(env or {})})
    if timer.returncode != 0:
        raise RuntimeError(f"the timer of the {side} process failed: {timer.stderr.strip()[-300:]}")
    got = json.loads(timer.stdout.splitlines()[-1])
    return Process(side, cmd, got["wall_s"], got["maxrss_kib"] / 1024, got["returncode"], str(log))


def last_line(log: str) -> str:
    lines = [x for x in Path(log).read_text(errors="replace").splitlines() if x.strip()]
    return lines[-1][:200] if lines else "(no output)"


# ----------------------------------------------------------------------------------------------------------------------
# Agreement and the table
# ----------------------------------------------------------------------------------------------------------------------


@dataclass
class Agreement:
    """Pixels on which two folders of masks hold the same id, over all pixels of all their frames."""

    equal: int
    pixels: int
    frames: int

    @property
    def share(self) -> float:
        return self.equal / self.pixels


def mask_agreement(ours: Path, theirs: Path) -> Agreement:
    """The pixels on which the PNG masks in `ours` hold the same id as those of the same name in `theirs`, read as id
    arrays frame by frame. Both folders must hold the same frames of equal sizes (else ValueError)."""
    names = sorted(p.name for p in theirs.glob("*.png"))
    mine = sorted(p.name for p in ours.glob("*.png"))
    if not names or names != mine:
        raise ValueError(f"{ours} and {theirs} hold different masks: {len(mine)} and {len(names)} PNGs, first "
                         f"difference {sorted(set(mine) ^ set(names))[:1]}")
    equal = total = 0
    for name in names:
        a, b = read_mask(ours / name, raw=True), read_mask(theirs / name, raw=True)
        if a.shape != b.shape:
            raise ValueError(f"{ours / name} is {a.shape}, {theirs / name} is {b.shape}")
        equal += int((a == b).sum())
        total += a.size
    return Agreement(equal, total, len(names))


def format_table(result: dict) -> str:
    """The rounds, the medians and the ratio, peak RSS and agreement, as aligned text."""
    lines = [f"{result['sequence']}: {result['frames']} frames of {result['frame_size']}, "
             f"{result['objects']} object(s); ours --precision {result['precision']}"
             f"{' --compile' if result['compile'] else ''}{' --no-report' if result.get('no_report') else ''}; "
             f"torch {result['torch']}; {result['cpu']}",
             f"first run (ours, warm-up): {result['first_run_s']:.1f} s", "",
             f"{'round':>8} {'authors (s)':>12} {'ours (s)':>10}"]
    for r in result["rounds"]:
        lines.append(f"{r['round']:>8} {r['authors']['wall_s']:>12.1f} {r['ours']['wall_s']:>10.1f}")
    lines += [f"{'median':>8} {result['authors_median_s']:>12.1f} {result['ours_median_s']:>10.1f}",
              f"{'peak RSS':>8} {result['authors_peak_rss_mib']:>8.0f} MiB {result['ours_peak_rss_mib']:>6.0f} MiB", "",
              f"ratio (the authors' median / ours): {result['ratio']:.2f}x",
              f"masks: ours equal the authors' on {result['agreement']:.7f} of {result['agreement_pixels']} pixels, "
              f"{result['differing_pixels']} differ ({result['agreement_frames']} frames, round "
              f"{len(result['rounds'])})" if result["agreement"] is not None
              else f"masks: not compared ({result['agreement_error']})"]
    return "\n".join(lines)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


# ----------------------------------------------------------------------------------------------------------------------
# The command line
# ----------------------------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = OneLineParser(prog="tools/vs_official.py", description=__doc__.split("\n\n")[0].replace("\n", " "))
    p.add_argument("official_dir", type=Path, metavar="OFFICIAL_DIR",
                   help="a checkout of suhwan-cho/EMVOS at commit 7e1e200 (run, never copied)")
    p.add_argument("--davis", type=Path, required=True,
                   help="DAVIS 2017 root: JPEGImages/480p/<seq> and Annotations/480p/<seq> (palette ids)")
    p.add_argument("--sequence", required=True, help="the sequence to run, e.g. car-shadow")
    p.add_argument("--weights", type=Path, required=True,
                   help="checkpoint both sides load (the authors' state-dict layout)")
    p.add_argument("--frames", type=int_range(3), default=40,
                   help="run the sequence's first FRAMES frames (default 40; at least 3: run.py scores every frame "
                        "but the first and the last)")
    p.add_argument("--rounds", type=int_range(1), default=3,
                   help="rounds of (the authors' process, ours) after our warm-up run (default 3)")
    p.add_argument("--precision", choices=list(PRECISIONS), default="fp32",
                   help="ours: run.py's --precision (default fp32; fp16 needs CUDA and is refused)")
    p.add_argument("--compile", action="store_true",
                   help="ours: run.py's --compile, with an inductor cache of this run's own (the warm-up builds it)")
    p.add_argument("--no-report", action="store_true",
                   help="ours: run.py's --no-report (masks and the J&F CSVs, no report.html and scores.json)")
    p.add_argument("--out", type=Path, default=ROOT / "outputs" / "vs-official",
                   help="a new folder per run is made in here (default outputs/vs-official)")
    return p.parse_args(argv)


def run_rounds(args: argparse.Namespace, root: Path, driver: Path, folder: Path) -> tuple[Process, list[dict]]:
    """The warm-up of ours, then --rounds of (the authors', ours). Raises RuntimeError naming a failed process."""
    official = args.official_dir.resolve()

    # --compile: a cache of this run's own, so that the warm-up builds every graph and the rounds load them
    env = {"TORCHINDUCTOR_CACHE_DIR": str(folder / "inductor_cache")} if args.compile else None

    def ours(name: str) -> Process:
        cmd = [sys.executable, str(ROOT / "run.py"), "--test", "--data", DATA_KEY, "--davis", str(root),
               "--weights", str(args.weights.resolve()), "--device", "cpu", "--precision", args.precision,
               *(["--compile"] if args.compile else []), *(["--no-report"] if args.no_report else []),
               "--output", str(folder / name)]
        return checked(timed("ours", cmd, ROOT, folder / f"{name}.log", env))

    def authors(name: str) -> Process:
        cmd = [sys.executable, str(driver), str(official), str(args.weights.resolve()), str(root), str(folder / name)]
        return checked(timed("authors", cmd, driver.parent, folder / f"{name}.log"))

    def checked(proc: Process) -> Process:
        print(f"  {proc.side}: {proc.wall_s:.1f} s, peak RSS {proc.peak_rss_mib:.0f} MiB (log {proc.log})",
              flush=True)
        if proc.returncode != 0:
            raise RuntimeError(f"the {proc.side} process failed (exit {proc.returncode}): {last_line(proc.log)} "
                               f"(log {proc.log})")
        return proc

    print("first run (ours, warm-up):", flush=True)
    first = ours("ours_warmup")
    rounds = []
    for r in range(1, args.rounds + 1):
        print(f"round {r}/{args.rounds}:", flush=True)
        rounds.append({"round": r, "authors": asdict(authors(f"authors_{r}")), "ours": asdict(ours(f"ours_{r}"))})
    return first, rounds


def summarize(args: argparse.Namespace, frames: list[Path], masks: list[Path], first: Process, rounds: list[dict],
              folder: Path) -> dict:
    """Every number of the run, its setting and the machine, as result.json holds them. The agreement is None (and
    agreement_error says why) when the last round's two mask folders hold other frames or sizes."""
    with Image.open(frames[0]) as img:
        size = f"{img.width}x{img.height}"
    last = rounds[-1]["round"]
    try:
        agree = mask_agreement(folder / f"ours_{last}" / DATA_KEY / args.sequence,
                               folder / f"authors_{last}" / args.sequence)
        share, pixels, differ, count, error = agree.share, agree.pixels, agree.pixels - agree.equal, agree.frames, None
    except ValueError as e:
        share, pixels, differ, count, error = None, 0, None, 0, str(e)
    theirs = statistics.median(r["authors"]["wall_s"] for r in rounds)
    mine = statistics.median(r["ours"]["wall_s"] for r in rounds)
    return {
        "sequence": args.sequence, "frames": len(frames), "frame_size": size,
        "objects": len(set(np.unique(read_mask(masks[0])).tolist()) - {0}),
        "precision": args.precision, "compile": args.compile, "no_report": args.no_report,
        "first_run_s": first.wall_s, "first_run": asdict(first),
        "rounds": rounds, "authors_median_s": theirs, "ours_median_s": mine, "ratio": theirs / mine,
        "authors_peak_rss_mib": max(r["authors"]["peak_rss_mib"] for r in rounds),
        "ours_peak_rss_mib": max(r["ours"]["peak_rss_mib"] for r in rounds),
        "agreement": share, "agreement_pixels": pixels, "differing_pixels": differ,
        "agreement_frames": count, "agreement_error": error,
        "torch": torch.__version__, "python": platform.python_version(), "cpu": cpu_model(),
        "cpu_count": os.cpu_count(), "official_dir": str(args.official_dir.resolve()),
        "official_commit": make_golden.OFFICIAL_COMMIT, "davis": str(args.davis.resolve()),
        "weights": str(args.weights.resolve()),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        frames, masks = check_inputs(args)
        folder = new_run_folder(args.out)
    except InputError as e:
        print(f"vs_official: {e}", file=sys.stderr)
        return 2
    print(f"vs_official: {args.sequence}, first {len(frames)} frames; writing {folder}", flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="vs_official_"))
    try:
        root = build_root(tmp / "davis", args.sequence, frames, masks)
        driver = tmp / "official_driver.py"
        driver.write_text(DRIVER)
        first, rounds = run_rounds(args, root, driver, folder)
    except RuntimeError as e:
        print(f"vs_official: {e}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(tmp)
    result = summarize(args, frames, masks, first, rounds, folder)
    result["temporary_root"] = str(tmp / "davis")
    table = format_table(result)
    print(f"\n{table}\n\nresult: {folder / 'result.json'}")
    (folder / "result.json").write_text(json.dumps(result, indent=1))
    (folder / "table.txt").write_text(table + "\n")
    if result["agreement"] is None:
        print(f"vs_official: the masks of the last round cannot be compared: {result['agreement_error']}",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
