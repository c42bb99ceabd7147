"""Scoring as the official toolkits do it: DAVIS semi-supervised evaluation (region similarity J, boundary accuracy F
and J&F) by default, and with --benchmark the rules and files of each benchmark module's own toolkit.

The scorers are the benchmark modules' (benchmarks/davis.py for DAVIS, which matches davis2017-evaluation to the
printed decimals; the others listed in benchmarks/registry.py); this file is their command line. Every scoring also
writes scores.json and report.html beside the result files (reports/report.py), unless --no-report.

Usage:
    python evaluation.py --davis data/DAVIS2017 --year 2017 --split val --results output/val
    python evaluation.py --benchmark vos-benchmark --gt data/generic/Annotations --results output/generic
    python evaluation.py --compare output/val output/val_ablation  # two scored runs: compare.html
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from pathlib import Path

from benchmarks import registry
from benchmarks.common import ScoreRequest, Scores, Scoring, remove_stale
from core import flags
from core.flags import OneLineParser
from utils import VOSInputError, check_output_outside, writable_dir, write_failure

# the options defined here (argparse dests); a scorer's other options (Scoring.options) become --<name> PATH
COMMON_OPTIONS = ("gt", "davis", "year", "split", "results", "out", "workers")


def _per_scoring(texts: dict[str, str]) -> str:
    return "; ".join(f"{name}: {text}" for name, text in texts.items())


def build_parser() -> argparse.ArgumentParser:
    """The command line, its --benchmark choices and their options generated from benchmarks.registry."""
    scorings = registry.scorings()
    parser = OneLineParser(
        prog="evaluation.py",
        description="Semi-supervised VOS scoring as the official toolkits do it (J, F, J&F and each benchmark's own "
        "measures); bad input exits with code 2."
    )
    parser.add_argument(
        "--benchmark",
        choices=list(scorings),
        default="davis",
        help="whose rules and files: " + ", ".join(f"{name} ({s.toolkit})" for name, s in scorings.items()),
    )
    parser.add_argument("--gt", type=Path, help="what the official evaluator takes: "
                        + _per_scoring({name: s.gt for name, s in scorings.items()}))
    parser.add_argument("--davis", type=Path, help="DAVIS root (DAVIS 2016 or 2017 layout), for --benchmark davis")
    parser.add_argument("--year", choices=["2016", "2017"], default="2017", help="2016: single object, binary masks")
    parser.add_argument("--split", help=_per_scoring({name: s.split for name, s in scorings.items() if s.split}))
    parser.add_argument("--results", type=Path, help="folder with one sub-folder of PNGs per video")
    options: dict[str, dict[str, str]] = {}
    for name, s in scorings.items():
        for option, text in s.options.items():
            if option not in COMMON_OPTIONS:
                options.setdefault(option, {})[name] = text
    for option, texts in options.items():  # dest `option`, flag with dashes (toy_videos: --toy-videos)
        parser.add_argument(f"--{option.replace('_', '-')}", type=Path, help=_per_scoring(texts))
    parser.add_argument("--out", type=Path, help="folder for the result files (default: the --results folder)")
    parser.add_argument("--workers", type=flags.positive_int, default=2,
                        help="processes (1 or more); 1 evaluates in this process")
    parser.add_argument("--no-report", action="store_true",
                        help="write only the toolkit's files, not report.html and scores.json beside them")
    parser.add_argument("--compare", nargs="+", metavar="RESULTS", default=None,
                        help="compare scored runs instead of scoring: results folders holding scores.json (the first "
                        "is the base); writes compare.html into --out (default: the first folder)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    command = shlex.join(["evaluation.py", *argv])  # what report.html records
    if args.compare is not None:
        return _compare(args)

    start = time.perf_counter()
    try:
        _score(registry.scorings()[args.benchmark], args, command, start)
    except VOSInputError as err:  # the DAVIS scorer's EvaluationError included
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # a full disk, a read-only --out: one line (atomic writes leave no partial file)
        line = write_failure(err)
        if line is None:
            raise
        print(f"error: {line}; every file is written whole or not at all (report.html and scores.json together)",
              file=sys.stderr)
        return 2
    return 0


def check_paths(args: argparse.Namespace) -> None:
    """Refuse --results that is the ground truth (--gt or --davis: it would be scored against itself), and an output
    folder (--out, default --results) that is, holds or lies inside the ground truth, which the result files,
    scores.json and report.html would be written into."""
    truth = [(flag, path) for flag, path in (("--gt", args.gt), ("--davis", args.davis)) if path is not None]
    for flag, path in truth:
        if os.path.realpath(args.results) == os.path.realpath(path):
            raise VOSInputError(f"--results {args.results} is the {flag} folder, which would be scored against "
                                "itself; pass the folder of the predictions")
    check_output_outside(args.out or args.results, [path for _, path in truth],
                         "--out" if args.out is not None else "--results")


def _compare(args: argparse.Namespace) -> int:
    """--compare RESULTS_A RESULTS_B [...] [--out DIR]: reports.report's comparison of scored runs of one benchmark
    and split (per-object J&F side by side, sorted by the change from the first run to the last), printed and written
    to compare.html in --out (default: the first run's results folder); exit 2 on bad input, or when a flag that
    scores (--results, --gt, --davis) is given too."""
    given = [f for f, v in (("--results", args.results), ("--gt", args.gt), ("--davis", args.davis)) if v]
    if given:
        print(f"error: --compare reads scored runs and scores nothing; drop {', '.join(given)}", file=sys.stderr)
        return 2
    from reports import report  # matplotlib and the page code only when comparing

    try:
        runs = [report.load_scores(p) for p in args.compare]
        report.check_comparable(runs, args.compare)
        first = Path(args.compare[0])
        out = args.out if args.out is not None else (first if first.is_dir() else first.parent)
        if out.exists() and not out.is_dir():
            raise VOSInputError(f"--out {out} is a file, not a folder; pass a folder path")
        path, table = report.compare(runs, out, args.compare)
    except VOSInputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(table)
    print(f"\nwrote {path}")
    return 0


def _score(scoring: Scoring, args: argparse.Namespace, command: str, start: float) -> None:
    """Score --results with `scoring` (--benchmark's), print its table and the files written, and (unless
    --no-report) write the report; `start` is when the scoring began (the time printed)."""
    if args.results is None:
        raise VOSInputError("pass --results DIR, the folder with one sub-folder of PNGs per video (or --compare)")
    from reports import report  # the names of its files, and the weights an earlier report recorded

    out = args.out or args.results
    weights = report.weights_of(args.results, out)  # read before the earlier scores.json goes
    earlier: list[Path] = []

    def checked() -> None:
        """Called by the scorer once its flags and the ground truth are checked: the paths checked against the
        ground truth, then the earlier scores.json, report.html and every scoring's result files in `out` removed
        (this tool's outputs, made from these predictions, which would otherwise stand beside a report of others)."""
        check_paths(args)
        writable_dir(out, "--out" if args.out is not None else "--results")
        earlier.extend(registry.result_files(out))
        remove_stale([*report.output_files(out), *earlier])

    request = ScoreRequest(args.gt, args.results, args.out, args.workers, args.split,
                           {name: getattr(args, name) for name in scoring.options}, on_checked=checked)
    scored = scoring.score(request)
    print(scoring.format(scored))
    print(f"\nwrote {' and '.join(str(p) for p in scored.files)} ({time.perf_counter() - start:.1f} s)")
    gone = [p.name for p in earlier if p not in scored.files]
    if gone:
        print(f"removed {', '.join(gone)} from {out}: result files of an earlier scoring, which this report does not "
              "describe")
    if not args.no_report:
        folders = scoring.report_folders(request)
        if folders is not None:
            write_report(scored, scored.files[0].parent, *folders, args.results, command, weights)


def write_report(scores: Scores, out_dir: Path, frames_dir: Path, gt_dir: Path, layout: str, pred_dir: Path,
                 command: str, weights: tuple[str, str] = ("", "")) -> None:
    """scores.json and report.html beside the result files, recording the command line, the date and `weights`
    ((name, id) of the checkpoint that made the masks, as report.weights_of finds it; empty when unknown)."""
    from reports import report  # matplotlib and the page code only when a report is written

    start = time.perf_counter()
    run = report.run_scores(scores, frames_dir=frames_dir, gt_dir=gt_dir, pred_dir=pred_dir, mask_layout=layout,
                            command=command)
    run.weights_name, run.weights_id = weights
    paths = report.publish(run, out_dir)
    print(f"wrote {' and '.join(str(p) for p in paths)} ({time.perf_counter() - start:.1f} s)")


if __name__ == "__main__":
    sys.exit(main())
