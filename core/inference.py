"""run.py --test's driver: benchmarks from disk, the checkpoint, scores, reports and submission archives.

`segment_benchmarks(options, roots)` is --test itself, configured by a `TestOptions` (run.py builds one from its
flags, as the trainer takes `TrainOptions`): the --data keys opened from `dataset.Roots` by benchmarks.registry, the
checkpoint (`load_model`), each benchmark's videos run through `segmenter.segment_video` (the trainer's validation
runs the same function, so their numbers are the same), scored as its layout says (`Layout.scoring`: its own
toolkit's rules), reported and zipped (`run_dataset`, `write_zip`, reports.report.publish). Under torchrun the videos
are spread over the processes (`balance`) and process 0 alone scores, reports and zips.

The reports, the figures (--visualize) and the ONNX runner (--onnx) are imported by the functions that use them, so
that a run without them never loads them. Bad input raises `utils.VOSInputError`; run.py turns it into exit 2.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import zipfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import torch
from torch import Tensor

from benchmarks import registry
from benchmarks.common import Scores, TestScoring, remove_stale
from core import config_flags, methods, tta, weights
from core.distributed import Dist, broadcast, close_distributed, gather, init_distributed, process_device
from core.framework import Runtime, VOSModel
from core.segmenter import RunSettings, Stepper, VideoRun, place, run_settings, segment_video
from dataset import TEST_SHORT_SIDE, Layout, Roots, SingleVideo, VideoReader
from utils import RunLock, VOSInputError, atomic_write, check_output_outside


@dataclass
class TestOptions:
    """What run.py --test runs (run.py's `test_options` builds it from the flags; each field is the flag of its name).

    A single video (`video` and its first-frame `mask`) or the benchmarks of the `data` keys (their `sequences`, all
    when None) are segmented into `output`. `method` None takes the method from the checkpoint; a method given
    refuses a checkpoint of another one. `model`: config field -> value, the model flags given (they override the
    checkpoint's config where its weights allow it). `command`: the command line, recorded in the reports.
    """

    __test__ = False  # not a test class, for pytest, which collects the Test* classes a test module imports

    output: Path = Path("outputs")
    data: list[str] = field(default_factory=list)
    sequences: list[str] | None = None
    video: str | None = None
    mask: str | None = None
    weights: str | None = None  # a path or an official alias; None: the method's own file in trained_model/
    method: str | None = None
    model: dict[str, Any] = field(default_factory=dict)
    device: str | None = None  # None: cuda when available
    precision: str = "fp32"
    max_memory: int | str | None = "auto"  # bytes, "auto" or None (no bound): framework.Runtime.memory_budget
    channels_last: bool = True
    compile: bool = False
    visualize: bool = False
    vis_frame: int = 1
    report: bool = True  # report.html and scores.json beside the CSVs (run.py --no-report: False)
    command: str | None = None
    onnx: str | None = None  # the ONNX export to run instead of the checkpoint (onnx_runner.OnnxModel)
    flip: bool = False  # test-time augmentation (core/tta.py)
    scales: tuple[int, ...] | None = None


# ---------------------------------------------------------------------------------------------------------------
# the model
# ---------------------------------------------------------------------------------------------------------------

def weights_path(options: TestOptions, trained_model: Path, default_method: str = "emvos") -> Path:
    """The checkpoint file `options.weights` names (default: the own file in trained_model/ of the method given, else
    of default_method), fetched on first use when it is one of the authors' files."""
    given = options.weights or str(methods.default_weights(options.method or default_method, trained_model))
    # the base URL is looked up now, not bound at import, so that tests can stand a local server in for GitHub
    return weights.resolve_weights(given, trained_model, base_url=weights.OFFICIAL_BASE_URL)


def load_model(options: TestOptions, settings: RunSettings, trained_model: Path,
               default_method: str = "emvos") -> tuple[VOSModel, str, dict[str, Any]]:
    """The checkpoint named by options.weights (a path or an alias such as official-ytvos; default: the method's own
    file in trained_model/, default_method's when no method is given), fetched on first use when it is one of the
    authors' files, checked, on the run's device and precision; the model flags given (options.model) override the
    file's config where the weights allow it (methods.check_overrides). Returns (model, method, record): the record
    says which file, config and overrides made the model (run.json)."""
    if options.method is not None:  # a flag of the other method is refused before the file is read (or fetched)
        config_flags.check_model_flags(options.model, options.method, methods.config_classes(), " (--method)")
    path = weights_path(options, trained_model, default_method)
    overrides = dict(options.model)
    net, meta = methods.load_weights(path, "--weights", overrides)
    if options.method is not None and meta["method"] != options.method:
        raise VOSInputError(f"--weights {path} holds a {meta['method']} model but --method {options.method} was "
                            f"asked for; drop --method or pass a {options.method} checkpoint")
    method = methods.get(meta["method"])
    unused = config_flags.unused_flags(net.config, overrides)
    if unused is not None:
        raise VOSInputError(f"{unused}, and --weights {path} holds a {method.name} model with "
                            f"{config_flags.describe(net.config)}; drop the flag")
    print(f"{method.name}: {path}")
    held = asdict(method.config(**meta["file_config"]))  # the file's config, its defaults filled in
    for name in (n for n in overrides if getattr(net.config, n) != held[n]):
        print(f"config override: {name} {getattr(net.config, name)} (the file holds {held[name]})")
    record = {"method": method.name, "weights": str(path), "config": asdict(net.config), "file_config": held,
              "overrides": {n: getattr(net.config, n) for n in overrides}}
    net = place(net, settings)
    if options.channels_last:  # NHWC convolutions: faster with oneDNN and cuDNN (bench.py); fp32 logits move ~1e-5
        net = net.to(memory_format=torch.channels_last)
    if options.compile:
        if not method.compilable:
            able = ", ".join(m.name for m in methods.METHODS.values() if m.compilable)
            raise VOSInputError(f"--compile is implemented for {able}, not for {method.name}; drop --compile")
        net.compile_modules()
    return net, method.name, record


class ArraySegmenter:
    """The driver's segmenter for onnx_runner.OnnxSegmenter, which steps on numpy arrays: the reader's tensors go in
    as arrays, its labels and probabilities come back as tensors."""

    def __init__(self, seg: Any):
        self.seg = seg

    def step(self, frame: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        labels, probs = self.seg.step(frame.numpy(), None if mask is None else mask.numpy())
        return torch.from_numpy(labels), torch.from_numpy(probs)


@dataclass
class RunModel:
    """What --test runs: a PyTorch model (`net`), or the ONNX graphs (`onnx`: an onnx_runner.OnnxModel, no PyTorch
    model), whose own segmenter steps each video; and the record of what made it, for run.json."""

    net: VOSModel | None
    record: dict[str, Any]
    onnx: Any = None

    def stepper(self) -> Stepper | None:
        """A fresh segmenter of one video for segment_video's `stepper`: the ONNX runner's; None for `net`."""
        return None if self.onnx is None else ArraySegmenter(self.onnx.segmenter())


def open_model(options: TestOptions, settings: RunSettings, trained_model: Path) -> RunModel:
    """The model --test runs and its record for run.json: the --onnx graphs (onnx_runner, no PyTorch model), else
    the checkpoint (load_model) under the test-time augmentation of --flip / --scales (core/tta.py; none by
    default, when `tta.wrap` returns the model itself)."""
    if options.onnx is not None:
        from onnx_runner import OnnxModel  # onnxruntime only for --onnx

        try:
            om = OnnxModel(options.onnx)
        except FileNotFoundError as e:
            raise VOSInputError(f"--onnx: {e}") from None
        print(f"onnx: {om.path}")
        return RunModel(None, {"method": "emvos", "weights": str(om.path), "onnx": True, "tta": tta.TTA().record()},
                        om)
    net, _, record = load_model(options, settings, trained_model)
    augmentation = tta.TTA(options.flip, tuple(options.scales or (TEST_SHORT_SIDE,)))
    record["tta"] = augmentation.record()
    return RunModel(tta.wrap(net, augmentation), record)



# ---------------------------------------------------------------------------------------------------------------
# the videos of one dataset
# ---------------------------------------------------------------------------------------------------------------

def write_zip(files: Iterable[Path], zip_path: Path, prefix: str) -> Path:
    """Zip exactly these mask files for an evaluation server as `<prefix><video>/<frame>.png` (the layout's
    `submission_prefix`): never whatever else sits in the folder from an earlier run. Written to a unique temporary name
    and renamed, so two runs never write into one file and a kill leaves no half archive."""
    def write(f: BinaryIO) -> None:
        with zipfile.ZipFile(f, "w", zipfile.ZIP_DEFLATED) as z:
            for png in files:
                z.write(png, f"{prefix}{png.parent.name}/{png.name}")

    return atomic_write(zip_path, write)


class VideoFailedError(Exception):
    """A video failed in one process of a torchrun job; rank 0 raises this, naming the video and the rank."""


class OtherRankFailedError(Exception):
    """Raised on the ranks other than 0 when a video failed, so that the failure is told once (by rank 0)."""


def balance(videos: list[VideoReader], world: int) -> list[list[VideoReader]]:
    """The videos of each of `world` processes, balanced by frame count: longest first, each to the process with the
    fewest frames so far (ties: the lowest rank), so that one long video does not leave the others idle at the end."""
    loads, parts = [0] * world, [[] for _ in range(world)]
    for video in sorted(videos, key=len, reverse=True):  # sorted is stable: equal lengths keep their order
        rank = loads.index(min(loads))
        parts[rank].append(video)
        loads[rank] += len(video)
    return parts


def _segment_share(model: RunModel, key: str, share: list[VideoReader], out_dir: Path, settings: RunSettings,
                   make_hook: Callable[[VideoReader], Any] | None,
                   job: Dist) -> tuple[dict[str, VideoRun], tuple[str, str] | None]:
    """Segment this process's `share` of dataset `key` into out_dir/<video>/, printing each video's speed: (the
    VideoRuns by video name, None) on success. In a torchrun job the first video that fails ends the share and is
    returned as (video, error) with the runs before it, to be told after the gather; alone, its error propagates."""
    runs: dict[str, VideoRun] = {}
    for video in share:
        hook = make_hook(video) if make_hook else None
        try:
            done = segment_video(model.net, video, out_dir / video.name, settings, hook,
                                 keep_probabilities=bool(hook), progress=show_progress(job), stepper=model.stepper())
        except Exception as err:
            if not job.enabled:
                raise
            return runs, (video.name, f"{type(err).__name__}: {err}")  # told by rank 0 after the gather, never a hang
        finally:
            if hook is not None:
                hook.close()
        runs[video.name] = done
        print(f"{key} {video.name}: {done.frames} frames, {done.frames / max(done.seconds, 1e-9):.2f} fps", flush=True)
    return runs, None


def show_progress(job: Dist) -> bool:
    """Frame bars only where a person watches: on a terminal, and from one process of a torchrun job (the others'
    bars would overwrite its lines)."""
    return job.rank == 0 and sys.stderr.isatty()


def _gather_runs(job: Dist, key: str, runs: dict[str, VideoRun],
                 failure: tuple[str, str] | None) -> dict[str, VideoRun] | None:
    """Every process's VideoRuns of dataset `key` (its `runs`, and its `failure`: (video, error) or None), met in one
    gather: all of them by video name on rank 0, None on the other ranks. A video that failed in any process stops
    the job: rank 0 raises VideoFailedError naming it and the process (the first failing rank), the others
    OtherRankFailedError."""
    shares = gather(job, (runs, failure))
    failed = [(rank, f) for rank, (_, f) in enumerate(shares) if f is not None]
    if failed:
        rank, (name, message) = failed[0]
        if not job.main:
            raise OtherRankFailedError(name)
        raise VideoFailedError(f"{key}: video {name} failed in process {rank} of {job.world}: {message}")
    if not job.main:
        return None
    return {name: run for share, _ in shares for name, run in share.items()}


def _score_segmented(key: str, scoring: TestScoring | None, fps: float) -> Scores | None:
    """The scores of the masks just written, by `scoring` (the layout's: its own toolkit's rules), printed with its
    table; None when the split is not scored here."""
    if scoring is None:
        return None
    result = scoring.score()
    print(scoring.format(result))
    print(scoring.summary(result, key, fps))
    return result


def run_dataset(model: RunModel, key: str, videos: Iterable[VideoReader], out_dir: Path, settings: RunSettings,
                scoring: TestScoring | None, zip_prefix: str | None,
                make_hook: Callable[[VideoReader], Any] | None = None, job: Dist | None = None,
                on_scored: Callable[[Scores, Path], None] | None = None) -> Scores | None:
    """Segment every video of one dataset with `model` (open_model's: the PyTorch model or the ONNX graphs) into
    out_dir/<video>/, then score them by `scoring` (the layout's, if the split is scored here), and zip (if
    zip_prefix).

    Every reader is built (and so checked) before any frame runs. In a torchrun job (`job`) each process segments
    its share of the videos (`balance`) and writes their masks; all meet in one gather, and rank 0 alone scores and
    zips. A video that fails in any process stops the job: rank 0 raises VideoFailedError naming it, the others
    OtherRankFailedError.

    make_hook(video) gives a per-frame hook for segment_video (called as on_frame, then `.close()`d), e.g.
    visualize.Visualizer. on_scored(result, frames folder) is called after scoring (the report).
    """
    job = job or Dist()
    if job.main and scoring is not None:  # a run that fails half way must not leave the last run's scores beside
        remove_stale(scoring.stale)  # its new masks
        from reports import report  # the page code only where a split is scored

        report.remove_outputs(out_dir)
    videos = list(videos)
    runs, failure = _segment_share(model, key, balance(videos, job.world)[job.rank], out_dir, settings, make_hook,
                                   job)
    gathered = _gather_runs(job, key, runs, failure)
    if gathered is None:
        return None
    done_runs = [gathered[v.name] for v in videos]  # in the dataset's order, as one process writes them
    total_frames, total_seconds = sum(r.frames for r in done_runs), sum(r.seconds for r in done_runs)
    written = [p for r in done_runs for p in r.written]
    fps = total_frames / max(total_seconds, 1e-9)
    print(f"{key}: {len(done_runs)} video{'s' * (len(done_runs) != 1)}, {total_frames} frames, {fps:.2f} fps "
          f"(model time{f', summed over {job.world} processes' if job.enabled else ''})")
    result = _score_segmented(key, scoring, fps)
    if result is not None and on_scored is not None and videos:
        on_scored(result, videos[0].frames[0].parent.parent)  # <frames>/<video>/<frame>.jpg
    if zip_prefix is not None:
        path = write_zip(written, out_dir.parent / f"{key}.zip", zip_prefix)
        print(f"{key}: submission archive {path} ({len(written)} masks)")
    return result


def segment_benchmarks(options: TestOptions, roots: Roots) -> list[Scores]:
    """run.py --test: segment options.video, or every options.data benchmark (its sequences), scoring and zipping each
    as its layout says; the scores of the benchmarks scored here (rank 0 only in a torchrun job, whose processes share
    the videos)."""
    settings = run_settings(options.device, options.precision, Runtime(memory_budget=options.max_memory))
    # oneDNN's primitive cache keeps every convolution it has built together with memory of its own: 60-90 MiB
    # resident at 854x480, for about 3 % of fp32's speed when they are built anew each frame (docs/performance.md,
    # "Memory"). bf16 convolutions are JIT-compiled kernels, whose rebuilding cost a tenth of a bf16 frame: the cache
    # stays on for them. Read at the first convolution; ONEDNN_PRIMITIVE_CACHE_CAPACITY set in the
    # environment wins.
    if options.precision != "bf16":
        os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "0")
    job = init_distributed(settings.device)  # torchrun: gloo on CPU, nccl on CUDA; else one process
    layouts: dict[str, Layout] = {}
    try:
        out_root = Path(options.output)
        # Every input is opened and checked before the model loads and any frame runs; the output folder must not
        # hold or lie inside any of them (frames, given masks, the ground truth being scored).
        if options.video is not None:
            layouts, selection = {"video": SingleVideo(options.video, options.mask)}, None
        else:
            layouts = {key: registry.open_layout(key, roots) for key in options.data}
            selection = options.sequences
        check_output_outside(out_root, [p for data in layouts.values() for p in data.inputs(selection)], "--output")
        settings.device = process_device(job, settings.device)  # each process its own GPU (LOCAL_RANK)
        with output_lock(job, out_root):  # one run per output folder: two would score each other's masks
            return _segment_layouts(options, layouts, selection, out_root, settings, roots, job)
    except VOSInputError:
        if job.enabled and not job.main:  # every process finds the same bad input: process 0 tells it
            raise OtherRankFailedError("bad input") from None
        raise
    finally:
        for data in layouts.values():
            if isinstance(data, SingleVideo):
                data.close()
        close_distributed(job)


@contextlib.contextmanager
def output_lock(job: Dist, out_root: Path) -> Iterator[None]:
    """The --output lock, taken by process 0 for a whole torchrun job: the other processes learn whether it was
    taken, so that none of them goes on alone (and none finds process 0's lock and refuses)."""
    lock, error = None, None
    if job.main:
        try:
            lock = RunLock(out_root, "--output").acquire()
        except VOSInputError as e:
            error = str(e)
    if job.enabled:
        error = broadcast(job, error)
    if error is not None:
        raise VOSInputError(error)
    try:
        yield
    finally:
        if lock is not None:
            lock.release()


def _segment_layouts(options: TestOptions, layouts: dict[str, Layout], selection: list[str] | None,
                     out_root: Path, settings: RunSettings, roots: Roots, job: Dist) -> list[Scores]:
    """segment_benchmarks once the inputs are checked and the output folder is locked."""
    # Every reader and scoring of every dataset is built (so checked) before the model loads: a bad mask, a
    # frame_range past the frames or a --vis-frame past a video's end is told at once, not after the checkpoint.
    plans = []
    for key, data in layouts.items():
        single = key == "video"  # --video writes OUTPUT/<video name>/, a benchmark OUTPUT/<KEY>/<sequence>/
        names = data.sequences if selection is None else selection
        scoring = None if single else data.scoring(key, out_root / key, names)
        videos = list(data.videos(selection))
        for video in videos if options.visualize else []:
            if options.vis_frame >= len(video):
                raise VOSInputError(f"--vis-frame {options.vis_frame} is past the last frame of {video.name} (frames "
                                    f"0..{len(video) - 1}); pass --vis-frame 1..{len(video) - 1}")
        plans.append((key, data, single, scoring, videos))
    model = open_model(options, settings, roots.trained_model or methods.TRAINED_MODEL)
    results = []
    for key, data, single, scoring, videos in plans:
        result = run_dataset(model, key, videos, out_root if single else out_root / key, settings,
                             scoring, data.submission_prefix, visualizer(options, out_root / "visualize" / key), job,
                             reporter(options, model.record, key, scoring, out_root / key))
        if options.visualize and job.main:
            print(f"{key}: overlays and probability maps in {out_root / 'visualize' / key}")
        if result is not None:
            results.append(result)
    if options.compile and job.main:
        print(compile_account())
    if job.main:  # what made these outputs (the checkpoint, its config, this run's overrides), once they are whole
        text = json.dumps(model.record, indent=2) + "\n"
        atomic_write(out_root / "run.json", lambda f: f.write(text.encode()))
    return results


def compile_account() -> str:
    """--compile's cost in this process, from torch.compile's own counters: seconds spent compiling (tracing, and
    building or loading the inductor graphs) and how many graphs came from inductor's on-disk cache. A first run
    builds every graph; a later run with the same frame sizes loads them from the cache and pays only the tracing."""
    from torch._dynamo.utils import calculate_time_spent, counters
    from torch._inductor.runtime.cache_dir_utils import cache_dir

    seconds = calculate_time_spent().get("entire_frame_compile", 0.0)
    hits, misses = counters["inductor"]["fxgraph_cache_hit"], counters["inductor"]["fxgraph_cache_miss"]
    return (f"torch.compile: {seconds:.1f} s compiling in this run; {misses} graphs built, {hits} loaded from the "
            f"inductor cache {cache_dir()} (TORCHINDUCTOR_CACHE_DIR moves it)")


def visualizer(options: TestOptions, out_dir: Path) -> Callable[[VideoReader], Any] | None:
    """--visualize's per-video hook for run_dataset (reports.visualize.Visualizer, writing under out_dir), or None."""
    if not options.visualize:
        return None
    from reports.visualize import Visualizer  # matplotlib and the video writer only for --visualize

    return lambda video: Visualizer(video.name, out_dir, options.vis_frame, frames=len(video.frames))


def reporter(options: TestOptions, record: dict[str, Any], key: str, scoring: TestScoring | None,
             pred_dir: Path) -> Callable[[Scores, Path], None] | None:
    """run_dataset's on_scored for dataset `key`: report.html and scores.json beside its CSVs (reports.report), or
    None where there is nothing to report (options.report False, or the split is not scored here)."""
    if not options.report or scoring is None:
        return None
    checkpoint = Path(record["weights"])  # the file load_model read

    def write(result: Scores, frames_dir: Path) -> None:
        from reports import report  # the page code and matplotlib only when a report is written

        gt_dir, layout = scoring.report_masks
        scores = report.run_scores(result, frames_dir=frames_dir, gt_dir=gt_dir, pred_dir=pred_dir,
                                   mask_layout=layout, weights=checkpoint, command=options.command)
        scores.extra["test-time augmentation"] = tta.TTA(**record["tta"]).describe()  # as run.json records it
        if record.get("onnx"):
            scores.extra["runtime"] = "onnxruntime (--onnx)"
        print(f"{key}: report {' and '.join(str(p) for p in report.publish(scores, pred_dir))}")
    return write
