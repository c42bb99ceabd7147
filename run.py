"""EMVOS: `python run.py --test` segments DAVIS / YouTube-VOS (or one video), `python run.py --train` trains.

With no dataset on disk and no flags, `python run.py --test` runs on the short DAVIS sample shipped in `sample/`,
with the authors' checkpoint (fetched into trained_model/ on first use).
"""

import argparse
import errno
import os
import shlex
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dataset
from benchmarks import registry
from core import config_flags, flags, inference, methods, weights
from core.segmenter import PRECISIONS, run_settings
from training import trainer
from utils import VOSInputError, writable_dir

# Dataset roots: edit these or pass the flags (--davis, --ytvos, --coco), as in the official run.py. The DAVIS reader
# works out whether it was given the 2017 layout or the original DAVIS 2016 download.
# A benchmark of benchmarks/registry.py with a root flag (--mose, --lvos, --sav, ...) defaults to the <FLAG>_ROOT
# constant here when there is one.
DAVIS_ROOT = "../DB/DAVIS"
YTVOS18_ROOT = "../DB/YTVOS18"
YTVOS19_ROOT = "../DB/YTVOS19"
COCO_ROOT = "../DB/COCO"
MOSE_ROOT = "../DB/MOSE"  # holds valid/ (and train/ to train on)
LVOS_ROOT = "../DB/LVOS"  # holds valid/ and test/ (and train/ to train on)
SAV_ROOT = "../DB/SAV"  # holds sav_val/ and sav_test/ (and sav_train/ to train on)
SAMPLE_ROOT = Path(__file__).resolve().parent / "sample" / "DAVIS2016"  # CC BY 4.0, see sample/README.md
TRAINED_MODEL = methods.TRAINED_MODEL  # the authors' files are fetched here; --train writes here by default


def roots(args: argparse.Namespace) -> dataset.Roots:
    """The roots of this run, --train's and --test's: the flags, else the constants above (read at the call: an edit
    or a patch holds). Training reads YouTube-VOS 2018 (`ytvos`), the official training set."""
    benchmarks = {b.root: getattr(args, _dest(b.root), None) or default_root(b.root) for b in registry.root_flags()}
    return dataset.Roots(davis=args.davis, ytvos=args.ytvos or YTVOS18_ROOT, ytvos19=args.ytvos or YTVOS19_ROOT,
                         coco=args.coco, sample=SAMPLE_ROOT, benchmarks=benchmarks,
                         trained_model=TRAINED_MODEL)


def default_root(flag: str) -> str | None:
    """The <FLAG>_ROOT constant above of a benchmark root flag (read at the call), None when there is none."""
    return globals().get(f"{_dest(flag).upper()}_ROOT")


def _dest(flag: str) -> str:
    return flag.replace("-", "_")


# ---------------------------------------------------------------------------------------------------------------
# the modes
# ---------------------------------------------------------------------------------------------------------------

def prob_maps(args: argparse.Namespace) -> None:
    """--prob-maps REF.jpg REF.png IMG...: VideoMatch's probability maps of each image against the reference."""
    if len(args.prob_maps) < 3:
        raise VOSInputError("--prob-maps needs REF.jpg REF.png and at least one image to match: "
                            "--prob-maps REF.jpg REF.png IMG [IMG ...]")
    from reports import visualize  # the figures only for the visual tools

    settings = run_settings(args.device, args.precision)
    out_dir = writable_dir(Path(args.output) / "prob_maps", "--output")
    # VideoMatch's own file by default: the only method with a matching layer to show
    model, method, _ = inference.load_model(test_options(args, []), settings, TRAINED_MODEL,
                                            default_method="videomatch")
    if method != "videomatch":
        raise VOSInputError(f"--prob-maps shows VideoMatch's soft matching layer, and --weights holds {method}; pass "
                            f"a VideoMatch checkpoint (ours or the public port's) with --weights")
    ref, ref_mask, *images = args.prob_maps
    for path in visualize.probability_maps(model, ref, ref_mask, images, out_dir):
        print(f"wrote {path}")


def default_data(args: argparse.Namespace) -> list[str]:
    """With no --data: the official DAVIS sets when DAVIS is on disk, else the bundled sample. A --davis given on the
    command line that does not exist is an error, never a silent switch to the sample."""
    if Path(args.davis, "JPEGImages").is_dir():
        return ["DAVIS16_val", "DAVIS17_val"]
    if args.davis != DAVIS_ROOT:
        raise VOSInputError(f"--davis {args.davis} has no JPEGImages/ folder; pass the DAVIS root (the folder that "
                            f"holds JPEGImages/ and Annotations/), or drop --davis to run on the bundled sample")
    print(f"no DAVIS at '{args.davis}' (set DAVIS_ROOT in run.py or pass --davis PATH); "
          f"running on the bundled sample {SAMPLE_ROOT}")
    return ["sample"]


# ---------------------------------------------------------------------------------------------------------------
# the command line
# ---------------------------------------------------------------------------------------------------------------

# --train's stage overrides: a --<field> flag for each stage field below (methods.StageConfig's, and swap_above of
# EMVOS's stages, model.EMVOSStage), with its help and its argparse type. A flag left out keeps the preset (with
# --resume, the interrupted run's value); one whose field the chosen method's stages lack is refused by the trainer.
# The integer ones are checked against their stage by the trainer (trainer.stage_configs), where the bound depends
# on the stage's data. Adam's lr and weight decay at most 1: far above any working value, and below what torch's
# float32 step overflows on (lr / (1 - beta1) must be a float32).
STAGE_FLAGS: dict[str, tuple[str, Callable[[str], Any]]] = {
    "epochs": ("epochs per stage (official: coco 8000, davis 4000)", int),
    "batch_size": ("clips per step over all processes (16 / 8)", int),
    "clip_len": ("frames per clip (coco 5, davis 10)", int),
    "clips_per_epoch": ("clips per epoch (128; VideoMatch pairs: 0 = every pair)", int),
    "crop": ("clip size H W (384 384)", flags.positive_int),
    "lr": ("Adam learning rate (1e-4)", flags.float_range(0.0, 1.0, lo_open=True)),
    "weight_decay": ("Adam weight decay (EMVOS 0, VideoMatch 5e-4)", flags.float_range(0.0, 1.0)),
    "val_every": ("validate every N epochs, 0 = never (400 / 200)", int),
    "save_every": ("write a checkpoint every N epochs (4000 / 2000)", int),
    "swap_above": ("EMVOS: swap-and-attach when a uniform draw exceeds this (0.8: p = 0.2; 1: never)",
                   flags.probability),
}


def add_stage_flags(group: argparse._ArgumentGroup) -> None:
    """One override flag per entry of STAGE_FLAGS."""
    for name, (text, kind) in STAGE_FLAGS.items():
        flag = "--" + name.replace("_", "-")
        if name == "crop":
            group.add_argument(flag, type=kind, nargs=2, default=None, metavar=("H", "W"), help=text)
        else:
            group.add_argument(flag, type=kind, default=None, help=text)


def build_parser() -> argparse.ArgumentParser:
    p = flags.OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--train", action="store_true", help="train (stages, see --stages)")
    mode.add_argument("--test", action="store_true", help="segment datasets or one video and score them")
    mode.add_argument("--prob-maps", nargs="+", default=None, metavar="PATH",
                      help="REF.jpg REF.png IMG...: VideoMatch's foreground / background probabilities of each IMG "
                           "against the reference image and its mask (the VideoMatch port's videomatch.py), as PNGs "
                           "in OUTPUT/prob_maps/; the model from --weights")
    mode.add_argument("--preview-augmentation", nargs=2, default=None, metavar=("IMG", "MASK"),
                      help="samples of both methods' training augmentation of an image and its mask (the port's "
                           "preprocess.py), as OUTPUT/augmentation_<IMG>.png")
    p.add_argument("--method", default=None, choices=list(methods.METHODS),
                   help="emvos (default) or videomatch; --test takes the method from the checkpoint")
    p.add_argument("--davis", default=DAVIS_ROOT, help="DAVIS root (2017 layout or the original DAVIS 2016 download)")
    p.add_argument("--ytvos", default=None, help=f"YouTube-VOS root (default {YTVOS18_ROOT} / {YTVOS19_ROOT})")
    p.add_argument("--coco", default=COCO_ROOT, help="COCO root (converted JPEGImages/+Annotations/ or raw download)")
    p.add_argument("--device", default=None, choices=["cpu", "cuda"], help="default: cuda when available")
    p.add_argument("--precision", default="fp32", choices=list(PRECISIONS),
                   help="fp32; bf16: the weights cast to bf16 once, the matching in fp32 (the fast path with "
                        "--compile); fp16 by autocast over fp32 weights (needs CUDA); fp64 to compare with a reference")
    p.add_argument("--no-download", action="store_true",
                   help=f"never download weights (also: {weights.DOWNLOAD_ENV}=1); missing files are an error that "
                        f"says where to put them")
    m = p.add_argument_group(
        "model", "the network's choices, from each method's config (--train: for the chosen --method; --test: the "
        "checkpoint's config, overridden where the weights allow: VideoMatch's upsample, K, d, online update, EMVOS's "
        "K; a choice the weights fix, encoder, branches, key width, is refused unless it equals the file's)")
    flags.add_model_flags(m, methods.config_classes())
    t = p.add_argument_group("test")
    t.add_argument("--data", nargs="+", choices=list(registry.data_keys()), default=None,
                   help="datasets to test on (default: DAVIS16_val DAVIS17_val, or the bundled sample)")
    for bench in registry.root_flags():  # --mose, --lvos, ...: one per benchmark module with a root of its own
        default = default_root(bench.root)
        stages = train_stages_reading(bench.root)
        t.add_argument(f"--{bench.root}", default=None,
                       help=f"{bench.name} root, holding {bench.holds}{f' (default {default})' if default else ''}, "
                            f"for --data {' / '.join(k.key for k in bench.keys)}"
                            f"{f' and --train --stages {stages}' if stages else ''}")
    t.add_argument("--weights", default=None,
                   help="checkpoint path, or official-davis / official-ytvos for the authors' files (fetched into "
                        "trained_model/ on first use); default: the method's own, "
                        f"trained_model/{methods.get('emvos').weights} for EMVOS")
    t.add_argument("--output", default="outputs",
                   help="PNGs go to OUTPUT/<KEY>/<sequence>/<frame>.png (--video: OUTPUT/<video>/<frame>.png); a "
                        "folder outside every input of the run, locked while the run writes there")
    t.add_argument("--sequences", nargs="+", default=None, help="run only these sequences (not with --video)")
    t.add_argument("--video", default=None, help="one video: a folder of frames or a video file (needs --mask)")
    t.add_argument("--mask", default=None, help="first-frame mask PNG for --video (pixel values = object ids)")
    t.add_argument("--max-memory", type=flags.byte_size, default="auto",
                   help="bound on one frame's matching/decoder temporaries, e.g. 4G or 512M; 'none': no bound; "
                        "default: automatic, from free memory")
    t.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True,
                   help="channels_last convolutions (default on)")
    t.add_argument("--compile", action="store_true",
                   help="torch.compile the encoder, the key projections and the decoder, with inductor freezing "
                        "(weights prepacked); compiled graphs are cached on disk for later runs")
    t.add_argument("--visualize", action="store_true",
                   help="also write OUTPUT/visualize/<KEY>/<sequence>/overlay.mp4 and the probability maps of "
                        "--vis-frame (kept apart from the masks and the zips; KEY is 'video' for --video)")
    t.add_argument("--vis-frame", type=flags.positive_int, default=None,
                   help="frame whose fg/bg probabilities --visualize saves (1; frame 0 is the given mask)")
    t.add_argument("--no-report", action="store_true",
                   help="with ground truth, write only the CSVs, not report.html and scores.json beside them")
    t.add_argument("--flip", action="store_true",
                   help="test-time augmentation: add a horizontally flipped pass; the passes' probabilities are "
                        "averaged and every pass remembers the merged mask (core/tta.py)")
    t.add_argument("--scales", nargs="+", type=flags.positive_int, default=None, metavar="S",
                   help="test-time augmentation: a pass at each short side S, relative to the official 480 "
                        "(default: 480 alone, no augmentation)")
    t.add_argument("--onnx", default=None, metavar="MODEL",
                   help="run the ONNX export (export.py's MODEL.onnx and MODEL.encode.onnx) with onnxruntime "
                        "instead of the PyTorch checkpoint (onnx_runner.py): the same readers, writers and scoring")
    g = p.add_argument_group("train")
    g.add_argument("--stages", nargs="+", default=None, metavar="STAGE",
                   help="stages in order, each starting from the previous one's weights (EMVOS default: coco davis, "
                        "as the official run.py; presets: " + ", ".join(methods.get("emvos").stages) + "); a+b+c is "
                        "one stage drawing its clips from several datasets in proportion to their sizes, a:1+b:2 "
                        "weighted (docs/training_data.md)")
    add_stage_flags(g)
    g.add_argument("--val-sequences", nargs="+", default=None,
                   help="validate on these DAVIS val sequences only; with a generic stage, these videos of --generic "
                        "are held out of training and validate it (vos-benchmark J&F), the other stages using all of "
                        "DAVIS val")
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
                   help="go on exactly where the run that wrote this checkpoint stopped (X.pth or its X.train.pth)")
    g.add_argument("--chain", choices=["last", "best"], default=None,
                   help="a later stage starts from the previous stage's last weights (official: the model object is "
                        "carried over) or from its best checkpoint")
    g.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                   help="mixed precision: bf16 autocast (fp16 + GradScaler on GPUs without bf16)")
    g.add_argument("--workers", type=flags.nonneg_int, default=None, help="DataLoader worker processes (default: 4 as "
                   "the official code, fewer on a machine with fewer CPUs)")
    g.add_argument("--train-encoder", action="store_true", default=None,
                   help="EMVOS: fine-tune the encoder too (official: frozen; its BatchNorm statistics stay frozen)")
    g.add_argument("--seed", type=flags.seed, default=None, help=f"random seed ({trainer.SEED}, official)")
    losses = "; ".join(f"{m.name}: " + ", ".join(n + " (default)" * (n == m.default_loss) for n in m.losses)
                       for m in methods.METHODS.values())
    g.add_argument("--loss", default=None, choices=sorted({n for m in methods.METHODS.values() for n in m.losses}),
                   help=f"training loss by name ({losses})")
    return p


TEST_ONLY = ("data", "weights", "sequences", "video", "mask", "visualize",
             "vis_frame", "compile", "max_memory", "channels_last",
             "no_report", "flip", "scales", "onnx")
# what does nothing with --onnx: the graphs hold the weights, run on the CPU in float32, without augmentation
ONNX_IGNORES = ("weights", "compile", "visualize", "vis_frame", "flip", "scales", "device", "precision")
TRAIN_ONLY = ("stages", "val_sequences", "davis_year", "save_dir", "no_pretrained", "init", "resume", "chain", "amp",
              "workers", "train_encoder", "seed", "loss", *STAGE_FLAGS)


def train_stages_reading(root: str) -> str:
    """The training stages (of any method) that read the root flag `root`, as 'a / b', '' for none."""
    names = {name: None for m in methods.METHODS.values() for name, stage in m.stages.items()
             if root in {d.root for d in stage.data.sources()}}
    return " / ".join(names)


def only_in_test() -> tuple[str, ...]:
    """The --test flags: TEST_ONLY and the root flags of the registered benchmarks that no training stage reads."""
    return TEST_ONLY + tuple(_dest(b.root) for b in registry.root_flags() if not train_stages_reading(b.root))


def train_options(args: argparse.Namespace) -> trainer.TrainOptions:
    """--train's flags as the trainer's options; a flag not given stays None (the resumed run's value, or the
    trainer's default)."""
    overrides = {name: getattr(args, name) for name in STAGE_FLAGS if getattr(args, name) is not None}
    if "crop" in overrides:
        overrides["crop"] = tuple(overrides["crop"])
    return trainer.TrainOptions(
        stages=args.stages, overrides=overrides, val_sequences=args.val_sequences, davis_year=args.davis_year,
        save_dir=args.save_dir, pretrained=False if args.no_pretrained else None, chain=args.chain, amp=args.amp,
        workers=args.workers, train_encoder=args.train_encoder, seed=args.seed, loss=args.loss, init=args.init,
        resume=args.resume, device=args.device, precision=args.precision,
        model=flags.given_model_flags(args, args.method or "emvos", methods.config_classes(),
                                      "" if args.method is not None else " (--method emvos, the default)"))


def test_options(args: argparse.Namespace, data: list[str], command: str | None = None) -> inference.TestOptions:
    """--test's flags as the driver's options (data: the --data keys, `default_data`'s when none was given; command:
    the command line, for the reports); the method None when --method was not given (the checkpoint's)."""
    return inference.TestOptions(
        output=Path(args.output), data=data, sequences=args.sequences, video=args.video, mask=args.mask,
        weights=args.weights, method=args.method, model=flags.model_overrides(args, methods.config_classes()),
        device=args.device, precision=args.precision, max_memory=args.max_memory, channels_last=args.channels_last,
        compile=args.compile, visualize=args.visualize, vis_frame=1 if args.vis_frame is None else args.vis_frame,
        report=not args.no_report, command=command, onnx=args.onnx, flip=args.flip,
        scales=None if args.scales is None else tuple(args.scales))


def check_onnx_flags(args: argparse.Namespace, defaults: dict) -> None:
    """--onnx runs fixed graphs: the flags that choose weights, model, device, precision or augmentation are errors."""
    given = [d for d in ONNX_IGNORES if getattr(args, d) != defaults.get(d)
             and (d, getattr(args, d)) not in (("device", "cpu"), ("precision", "fp32"))]
    given += list(flags.model_overrides(args, methods.config_classes()))  # the model flags: the graphs fix the model
    if given:
        raise VOSInputError(f"{', '.join('--' + d.replace('_', '-') for d in given)} with --onnx: the ONNX graphs "
                            f"hold the weights and run on the CPU in fp32 without augmentation; drop "
                            f"{'it' if len(given) == 1 else 'them'} or drop --onnx")


def check_flags(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Flags that do nothing in this mode or with this method are errors, not silently ignored."""
    defaults = {a.dest: a.default for a in parser._actions}
    if args.train:
        mode, wrong = "--train", only_in_test()
    elif args.test:
        mode, wrong = "--test", TRAIN_ONLY
    else:  # the visual tools: --prob-maps reads --weights, --output; nothing else of either mode applies
        mode = "--prob-maps" if args.prob_maps is not None else "--preview-augmentation"
        wrong = tuple(d for d in only_in_test() + TRAIN_ONLY if not (d == "weights" and args.prob_maps is not None))
        if args.prob_maps is None:  # --prob-maps builds the model of --weights, with the model flags' overrides
            wrong += config_flags.model_flag_names(methods.config_classes())
    given = [d for d in wrong if getattr(args, d) != defaults.get(d)]
    if given:
        names = ", ".join("--" + d.replace("_", "-") for d in given)
        raise VOSInputError(f"{names} {'does' if len(given) == 1 else 'do'} nothing with {mode}; "
                            f"drop {'it' if len(given) == 1 else 'them'}")
    if args.test:
        if args.video is not None and args.mask is None:
            raise VOSInputError("--video needs --mask PATH: the first frame's mask (a palette or grayscale PNG)")
        if args.mask is not None and args.video is None:
            raise VOSInputError("--mask is the first-frame mask of --video; pass --video PATH too")
        if args.video is not None and (args.sequences or args.data):
            raise VOSInputError("--video runs one video; drop --sequences / --data, or drop --video")
        if args.vis_frame is not None and not args.visualize:
            raise VOSInputError("--vis-frame chooses the frame --visualize draws; pass --visualize too")
        if args.onnx is not None:
            check_onnx_flags(args, defaults)
    if args.train and args.train_encoder and args.method == "videomatch":
        raise VOSInputError("--train-encoder is for EMVOS (its encoder is frozen by default); VideoMatch trains its "
                            "whole network (the encoder is all of it) without the flag")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)  # read, never changed: each mode builds its options from it
    # --no-download: one switch for every download of this run (checkpoints and ImageNet weights)
    with weights.downloads_off(args.no_download):
        return dispatch(args, parser, shlex.join(["run.py", *argv]))


class Terminated(KeyboardInterrupt):
    """SIGTERM (`kill`, a cluster scheduler's stop) outside --train: unwinds as Ctrl+C does, so that the same clean-up
    runs (the output folder's lock, temporary files) and the same line is printed; exit status 143 (128 + 15)."""


def _terminate(signum: int, frame: object) -> None:
    raise Terminated


def dispatch(args: argparse.Namespace, parser: argparse.ArgumentParser, command: str | None = None) -> int:
    """Run the chosen mode (command: the command line, which the reports record); every expected failure is one line
    on stderr and an exit status (2: bad input or a full disk, 3: training diverged, 130: Ctrl+C, 143: SIGTERM
    outside --train, which stops as its Ctrl+C does)."""
    # --train handles SIGTERM itself (trainer.StopRequest: save a resumable checkpoint, then stop)
    previous = None
    if not args.train and threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        return _dispatch(args, parser, command)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _run_mode(args: argparse.Namespace, command: str | None) -> None:
    """Run the one mode the flags choose: --train, --prob-maps, --preview-augmentation, else --test (segment --video
    or the --data benchmarks; with neither, `default_data`'s)."""
    if args.train:
        trainer.train(args.method, train_options(args), roots(args))
    elif args.prob_maps is not None:
        prob_maps(args)
    elif args.preview_augmentation is not None:
        from reports import visualize  # the figures only for the visual tools

        image, mask = args.preview_augmentation
        out = writable_dir(Path(args.output), "--output") / f"augmentation_{Path(image).stem}.png"
        print(f"wrote {visualize.preview_augmentation(image, mask, out)}")
    else:
        data = default_data(args) if args.data is None and args.video is None else args.data or []
        inference.segment_benchmarks(test_options(args, data, command), roots(args))


def speaks() -> bool:
    """Whether this process tells the user what happened: a plain run, or process 0 of a torchrun job (torchrun sets
    RANK in every process it starts)."""
    return os.environ.get("RANK", "0") == "0"


def _dispatch(args: argparse.Namespace, parser: argparse.ArgumentParser, command: str | None) -> int:
    """Check the flags and run the mode; each expected failure becomes its line on stderr and its exit status."""
    try:
        check_flags(args, parser)
        _run_mode(args, command)
    except trainer.TrainingError as e:  # a NaN/inf stop: the message says where and what to change
        print(f"error: {e}", file=sys.stderr)
        return 3
    except trainer.TrainingInterrupted:  # the trainer has said what it saved and how to resume
        return 130  # as a shell reports Ctrl+C; SIGTERM and SIGUSR1 stop --train the same way (a checkpoint)
    except inference.VideoFailedError as e:  # a torchrun process failed on a video: told once, by rank 0
        print(f"error: {e}", file=sys.stderr)
        return 1
    except inference.OtherRankFailedError:
        return 1
    except KeyboardInterrupt as e:
        if speaks():  # torchrun signals every process: one line for the job, not one per rank
            print(f"\ninterrupted: the masks written so far are complete files in {args.output}; run the same "
                  f"command again to redo the rest", file=sys.stderr)
        return 143 if isinstance(e, Terminated) else 130
    except VOSInputError as e:  # benchmarks.davis.EvaluationError included
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EFBIG):
            raise
        print(f"error: could not write {e.filename or ''}: {e.strerror}; files finished before stay as they were "
              f"(each is written whole or not at all)", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
