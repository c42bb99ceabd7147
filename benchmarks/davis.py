"""DAVIS 2016 / 2017: the layout on disk (both downloads), run.py's --data keys, and the semi-supervised scoring of
davisvideochallenge/davis2017-evaluation (region similarity J, boundary accuracy F and J&F).

The numbers are those of the official toolkit, reimplemented so that they match it to the printed decimals while
being faster (cropping to the objects, one pass over each PNG, frames spread over worker processes) and safer
(errors name the file and the fix; result CSVs are always recomputed, never reused). evaluation.py runs this
scoring by default; run.py --test runs it on the splits with ground truth, and the trainer's validation on DAVIS val.

- Keys: DAVIS16_val, DAVIS17_val, DAVIS17_test-dev (root: run.py's --davis) and `sample`, the bundled piece of DAVIS
  2016 train (root: run.py's SAMPLE_ROOT, no flag).
- Scoring: every object is scored on every frame but the first and the last of its sequence; per object Mean,
  Recall and Decay of J and F; the global table is a plain mean over objects. The CSVs are written with 3 decimals
  (`DECIMALS`); test-dev is zipped for the challenge server with the sequence folders at the root.
"""

from __future__ import annotations

import csv
import io
import math
import os
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks import metrics
from benchmarks.common import (
    Benchmark,
    DataKey,
    ObjectScores,
    ScoreRequest,
    Scores,
    Scoring,
    TestScoring,
    begin_writing,
    parallel_map,
)
from dataset import Layout, VideoReader, _list_files, _select, plain_name
from utils import VOSInputError, atomic_write, read_mask

DECIMALS = 3  # the toolkit's CSVs and printout: %.3f


# ---------------------------------------------------------------------------------------------------------------------
# The layout on disk
# ---------------------------------------------------------------------------------------------------------------------


class _ListedLayout:
    """The original DAVIS 2016 download: `ImageSets/<resolution>/<split>.txt` lists 'frame annotation' path pairs
    ('/JPEGImages/480p/bear/00000.jpg /Annotations/480p/bear/00000.png'); masks are mode L 0/255."""

    def __init__(self, root: Path, resolution: str, year: str, split: str) -> None:
        if year != "2016":
            raise VOSInputError(
                f"DAVIS root '{root}' is the original DAVIS 2016 download (ImageSets/{resolution}), which has no "
                "DAVIS 2017 sequences; pass the DAVIS-2017-trainval-480p folder with --davis, or ask for a DAVIS 2016 "
                "set (run.py --data DAVIS16_val, run.py --train --davis-year 2016, evaluation.py --year 2016)"
            )
        if split == "test-dev":
            raise VOSInputError(f"DAVIS root '{root}' is the DAVIS 2016 download, which has no test-dev split")
        self.list_path = root / "ImageSets" / resolution / f"{split}.txt"
        if not self.list_path.is_file():
            raise VOSInputError(
                f"DAVIS split list '{self.list_path}' does not exist; the DAVIS 2016 download (DAVIS-data.zip) ships "
                f"train.txt, val.txt and trainval.txt in ImageSets/{resolution}"
            )
        self._pairs: dict[str, tuple[list[Path], list[Path]]] = {}
        for n, line in enumerate(self.list_path.read_text().splitlines(), 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 2:
                raise VOSInputError(f"line {n} of '{self.list_path}' is not 'frame annotation': {line!r}")
            frame, anno = (root / p.lstrip("/") for p in parts)
            frames, annos = self._pairs.setdefault(plain_name(frame.parent.name, self.list_path), ([], []))
            frames.append(frame)
            annos.append(anno)
        self.sequences = sorted(self._pairs)

    def files(self, seq: str, with_annotations: bool) -> tuple[list[Path], list[Path]]:
        """(frames, annotations) of `seq` as listed, every listed file checked (all frames are annotated here)."""
        frames, annos = self._pairs[seq]
        for kind, paths in (("frame", frames), ("annotation", annos)):
            missing = [p for p in paths if not p.is_file()]
            if missing:
                raise VOSInputError(
                    f"{kind} '{missing[0]}' listed in '{self.list_path}' does not exist ({len(missing)} missing in "
                    f"{seq}); re-download the sequence"
                )
        return list(frames), list(annos)


class _FolderLayout:
    """The DAVIS 2017 layout (DAVIS-2017-trainval-480p, DAVIS-2017-test-dev-480p): `ImageSets/{2016,2017}/<split>.txt`
    name sequences; the frames are `JPEGImages/<resolution>/<seq>/*.jpg`, the annotations
    `Annotations/<resolution>/<seq>/<frame>.png` (test-dev: the first frame's only)."""

    def __init__(self, root: Path, resolution: str, year: str, split: str) -> None:
        self.images = root / "JPEGImages" / resolution
        self.masks = root / "Annotations" / resolution
        sets = root / "ImageSets" / year
        # trainval = train + val when the download has no trainval.txt
        names = ["train", "val"] if split == "trainval" and not (sets / "trainval.txt").is_file() else [split]
        seqs: list[str] = []
        self.lists = [sets / f"{name}.txt" for name in names]
        for name, path in zip(names, self.lists, strict=True):
            if not path.is_file():
                download = (
                    "the separate DAVIS-2017-test-dev-480p.zip download"
                    if name == "test-dev"
                    else "DAVIS-2017-trainval-480p.zip"
                )
                raise VOSInputError(f"DAVIS split list '{path}' does not exist; it ships with {download}")
            listed = [plain_name(s.strip(), path) for s in path.read_text().splitlines() if s.strip()]
            seqs += [s for s in listed if s not in seqs]
        self.sequences = sorted(seqs)  # the official TestDAVIS sorts the list

    def files(self, seq: str, with_annotations: bool) -> tuple[list[Path], list[Path]]:
        """(frames, annotations) of `seq`: every frame, and the annotation path of each.

        The frame folder decides what runs, so a missing frame would silently drop out of the run and of J&F.
        Refused instead: an annotation whose frame is missing, a gap in the frame numbers (DAVIS numbers the frames
        of a sequence 00000, 00001, ... without gaps) and, when the split is annotated, a frame without annotation.
        """
        folder, mask_folder = self.images / seq, self.masks / seq
        frames = _list_files(folder, {".jpg"})
        if not frames:
            raise VOSInputError(
                f"sequence '{seq}' is listed in {' + '.join(map(str, self.lists))} but '{folder}' holds no .jpg "
                "frames; re-download or re-extract the DAVIS images"
            )
        fix = "re-download or re-extract the DAVIS images (JPEGImages)"
        stems = {f.stem for f in frames}
        orphans = [p for p in _list_files(mask_folder, {".png"}) if p.stem not in stems]
        if orphans:
            raise VOSInputError(
                f"frame '{folder / (orphans[0].stem + '.jpg')}' does not exist but its annotation '{orphans[0]}' "
                f"does ({len(orphans)} such frame(s) in {seq}); {fix}"
            )
        if all(s.isdigit() for s in stems):
            numbers = sorted(int(s) for s in stems)
            gaps = sorted(set(range(numbers[0], numbers[-1] + 1)) - set(numbers))
            if gaps:
                width = len(frames[0].stem)
                raise VOSInputError(
                    f"frame '{folder / f'{gaps[0]:0{width}d}.jpg'}' does not exist ({len(gaps)} missing between "
                    f"{frames[0].name} and {frames[-1].name} of {seq}); {fix}"
                )
        annotations = [mask_folder / (f.stem + ".png") for f in frames]
        if with_annotations:
            missing = [p for p in annotations if not p.is_file()]
            if missing:
                raise VOSInputError(
                    f"annotation '{missing[0]}' does not exist ({len(missing)} frame(s) of {seq} have none); "
                    "re-download or re-extract the DAVIS annotations (Annotations)"
                )
        return frames, annotations


class DAVIS(Layout):
    """DAVIS 2016 / 2017 semi-supervised test reader, on either download layout.

    * 2017 layout (DAVIS-2017-trainval-480p, DAVIS-2017-test-dev-480p): `ImageSets/{2016,2017}/<split>.txt` name
      sequences; frames are every `JPEGImages/480p/<seq>/*.jpg`, annotations `Annotations/480p/<seq>/<frame>.png`.
    * Original DAVIS 2016 layout: `ImageSets/480p/<split>.txt` lists "frame annotation" path pairs, masks are
      mode L 0/255. Only year 2016 exists there.

    The layout is told apart once, here; a missing frame or annotation is an error on either.
    Year 2016 means one merged object per sequence (`binary`), as the official TestDAVIS does with `masks != 0`.
    """

    def __init__(self, root: str | Path, year: str = "2017", split: str = "val", resolution: str = "480p") -> None:
        self.root = Path(root)
        self.year = str(year)
        self.split = split
        self.resolution = resolution
        if self.year not in ("2016", "2017"):
            raise VOSInputError(f"DAVIS year '{year}' is not supported; use 2016 or 2017")
        if split not in ("train", "val", "trainval", "test-dev"):
            raise VOSInputError(f"DAVIS split '{split}' is not supported; use train, val, trainval or test-dev")
        if split == "test-dev" and self.year != "2017":
            raise VOSInputError("DAVIS test-dev exists for year 2017 only; evaluate DAVIS 2016 on val or train")
        if not (self.root / "JPEGImages" / resolution).is_dir():
            raise VOSInputError(
                f"DAVIS root '{self.root}' has no JPEGImages/{resolution}; pass --davis PATH "
                f"(the folder that holds JPEGImages/ and Annotations/)"
            )
        self.binary = self.year == "2016"
        self.has_annotations = split != "test-dev"  # test-dev ships the first-frame masks only
        self.submission_prefix = "" if split == "test-dev" else None  # the DAVIS server scores test-dev
        sets = self.root / "ImageSets"
        self._layout: _ListedLayout | _FolderLayout
        if (sets / "2017").is_dir() or (sets / "2016").is_dir():
            self._layout = _FolderLayout(self.root, resolution, self.year, split)
        elif (sets / resolution).is_dir():
            self._layout = _ListedLayout(self.root, resolution, self.year, split)
        else:
            raise VOSInputError(
                f"DAVIS root '{self.root}' has no ImageSets/2017, ImageSets/2016 or ImageSets/{resolution}; the split "
                "lists ship with the DAVIS download (DAVIS-2017-trainval-480p.zip, or DAVIS-data.zip for 2016)"
            )
        self.sequences = self._layout.sequences
        self._convention_checked = False

    def _select(self, sequences: list[str] | None) -> list[str]:
        return _select(sequences, self.sequences, f"DAVIS {self.year} {self.split} at '{self.root}'")

    def _files(self, seq: str) -> tuple[list[Path], list[Path]]:
        """(frames, annotations) of one sequence, checked (see the layouts)."""
        self._select([seq])
        return self._layout.files(seq, self.has_annotations)

    def frames(self, seq: str) -> list[Path]:
        """Every frame of `seq`, in order."""
        return self._files(seq)[0]

    def annotations(self, seq: str) -> list[Path]:
        """The ground-truth mask of every frame of `seq` (each one checked to exist)."""
        return self.ground_truth([seq])[seq]

    def ground_truth(self, sequences: list[str] | None = None) -> dict[str, list[Path]]:
        """{sequence: ground-truth mask of every frame}, for all sequences or the named ones in that order: the
        `gt` argument of `evaluate_sequences` / `evaluate_and_write`."""
        if not self.has_annotations:
            raise VOSInputError(
                "DAVIS test-dev has no ground truth beyond the first frame; evaluate it on the DAVIS challenge server"
            )
        gt = {seq: self._files(seq)[1] for seq in self._select(sequences)}
        self._check_mask_convention({seq: masks[0] for seq, masks in gt.items()})
        return gt

    def _check_mask_convention(self, first_masks: dict[str, Path]) -> None:
        """Refuse black/white masks where DAVIS 2017 reads object ids: decided once for the root, on the first-frame
        masks of the sequences to run, before any frame.

        A grayscale (L) mask holding only 0 and 255 is how the DAVIS 2016 download stores its one object. In the
        2017 protocol pixel values are object ids and 255 is void: the runner would still see object 1 (read_mask's
        black/white rule) while the official scorer finds no object, after the whole run. Year 2016 merges every
        object into one (masks != 0) and reads such masks correctly."""
        if self.binary or self._convention_checked:
            return
        for seq, path in first_masks.items():
            if not path.is_file():
                continue  # videos() names the missing first mask
            with Image.open(path) as img:
                if img.mode != "L":
                    continue
                values = np.unique(np.asarray(img))
            if 255 in values and set(values.tolist()) <= {0, 255}:
                raise VOSInputError(
                    f"DAVIS root '{self.root}' holds black/white masks (grayscale 0/255, the DAVIS 2016 download's "
                    f"format), e.g. '{path}' of {seq}; DAVIS {self.year} reads pixel values as object ids and 255 as "
                    "void, so it would score no object: run DAVIS 2016 on it (run.py --data DAVIS16_val, "
                    "evaluation.py --year 2016), or rewrite the masks as palette PNGs with ids 1, 2, ... "
                    "(utils.save_mask)"
                )
        self._convention_checked = True

    def inputs(self, sequences: list[str] | None = None) -> list[Path]:
        """The root, and the folders the frames and annotations of these sequences really are in (symlinks
        resolved: a sequence folder may link to another disk)."""
        folders = {self.root}
        for seq in self._select(sequences):
            for paths in self._files(seq):
                folders |= {Path(os.path.realpath(p)).parent for p in paths}
        return sorted(folders)

    def scoring(self, key: str, out_dir: Path, videos: list[str]) -> TestScoring | None:
        """run.py --test's scoring of `videos` in out_dir as the DAVIS toolkit does, its CSVs named after the key's
        split (`csv_split`); None for test-dev, which the challenge server scores."""
        if not self.has_annotations:
            return None
        split, gt = csv_split(key), self.ground_truth(videos)  # checked before any frame runs
        gt_dir = next(iter(gt.values()))[0].parent.parent if gt else self.root

        def summary(result: Scores, key: str, fps: float) -> str:
            return (f"{key}: J&F {result.value('J&F-Mean'):.3f}  J {result.value('J-Mean'):.3f}  "
                    f"F {result.value('F-Mean'):.3f}  {fps:.2f} fps")

        return TestScoring(list(csv_paths(out_dir, split)),
                           lambda: evaluate_and_write(gt, out_dir, split, self.binary)[0],
                           lambda result: format_table(result, key), (gt_dir, "binary" if self.binary else "ids"),
                           summary)

    def videos(self, sequences: list[str] | None = None) -> Iterator[VideoReader]:
        """The test videos (all, or the named subset in that order); the first frame's mask is the given one."""
        selected = self._select(sequences)
        self._check_mask_convention({seq: self._files(seq)[1][0] for seq in selected})  # before the first frame
        for seq in selected:
            frames, annotations = self._files(seq)
            if not annotations[0].is_file():
                raise VOSInputError(
                    f"first-frame mask '{annotations[0]}' of sequence '{seq}' does not exist; re-download the DAVIS "
                    "annotations"
                )
            yield VideoReader(
                name=seq,
                frames=frames,
                given_masks={0: annotations[0]},
                output_names=[f.stem + ".png" for f in frames],
                binary=self.binary,
            )



# ----------------------------------------------------------------------------------------------------------------
# Scoring (davis2017-evaluation, semi-supervised)
# ----------------------------------------------------------------------------------------------------------------

VOID_LABEL = 255  # DAVIS 2017 marks uncertain pixels with 255; the semi-supervised protocol scores them as background
GLOBAL_COLUMNS = ("J&F-Mean", "J-Mean", "J-Recall", "J-Decay", "F-Mean", "F-Recall", "F-Decay")
SEQUENCE_COLUMNS = ("Sequence", "J-Mean", "F-Mean")
FRAMES_PER_TASK = 8  # frames per worker task: small enough to balance 2 cores even on a 3-sequence sample


def csv_split(key: str) -> str:
    """The split a --data key's CSVs are named after (global_results-<split>.csv)."""
    return "val" if "val" in key else key


class EvaluationError(VOSInputError):
    """Bad evaluation input (missing folder or PNG, wrong size, too many objects); the message names the fix."""


# ----------------------------------------------------------------------------------------------------------------
# Per-object statistics
# ----------------------------------------------------------------------------------------------------------------


def decay_edges(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Start and (exclusive) end indices of the four Decay quarters of an n-frame score sequence.

    The official code builds the edges as `round(linspace(1, n, 5) + 1e-10) - 1`, casts them to uint8 and slices
    `[ids[i]:ids[i+1]+1]` with uint8 arithmetic. The cast wraps modulo 256, so from n = 256 scored frames on the
    quarters are wrong (the last one is empty at n = 256, making Decay NaN). We reproduce that bug on purpose so
    that the numbers stay comparable with published ones; DAVIS sequences have at most 104 frames.
    """
    edges = (np.round(np.linspace(1, n, 5) + 1e-10) - 1).astype(np.int64) % 256
    return edges[:4], (edges[1:] + 1) % 256


def object_statistics(scores: np.ndarray) -> tuple[float, float, float]:
    """Mean, Recall and Decay of one object's per-frame scores (J or F), as the official `db_statistics`.

    Mean = nanmean, Recall = share of frames scoring > 0.5, Decay = mean of the first quarter of the frames minus
    mean of the last quarter (quarters as in `decay_edges`).
    """
    scores = np.asarray(scores, dtype=np.float64)
    starts, ends = decay_edges(len(scores))
    with warnings.catch_warnings():  # empty slices give NaN, as in the official code
        warnings.simplefilter("ignore", category=RuntimeWarning)
        mean = float(np.nanmean(scores))
        recall = float(np.nanmean(scores > 0.5))
        decay = float(np.nanmean(scores[starts[0] : ends[0]]) - np.nanmean(scores[starts[3] : ends[3]]))
    return mean, recall, decay


# ----------------------------------------------------------------------------------------------------------------
# Reading masks and scoring sequences
# ----------------------------------------------------------------------------------------------------------------


def _read_gt(path: Path, binary: bool) -> np.ndarray:
    """GT object ids as the official toolkit reads them: the stored values, binarised for DAVIS 2016 (0/255
    masks), otherwise void (255) set to background (`masks[masks == 255] = 0`). Unlike the runner's reader there is
    no special case for 0/255 grayscale masks: the numbers must be the official ones."""
    if not path.is_file():
        raise EvaluationError(f"ground-truth mask {path} does not exist; re-download or re-extract DAVIS")
    gt = read_mask(path, binary, raw=True, error=EvaluationError)
    return gt if binary else np.where(gt == VOID_LABEL, 0, gt)


def count_objects(first_gt: Path, binary: bool) -> int:
    """Number of objects scored in a sequence: the largest id in its first GT frame (void excluded)."""
    return int(_read_gt(first_gt, binary).max())


def _score_frames(gt_paths: list[Path], pred_dir: Path, binary: bool, n_objects: int) -> np.ndarray:
    """J and F of objects 1..n_objects on the given frames: array (2, n_objects, len(gt_paths)).

    The prediction of each frame is `pred_dir / <GT file name>`; objects absent from it score as empty masks.
    """
    scores = np.zeros((2, n_objects, len(gt_paths)))
    for t, gt_path in enumerate(gt_paths):
        pred_path = pred_dir / gt_path.name
        gt = _read_gt(gt_path, binary)
        if not binary and gt.max(initial=0) > n_objects:
            # DAVIS counts the objects of the first GT frame only; the official script then stops (exit code 0, no
            # CSV) as soon as a prediction tracks the late object. vos-benchmark scores it from its first appearance.
            raise EvaluationError(
                f"GT {gt_path} has object id {int(gt.max())}, absent from the first GT frame of "
                f"{gt_path.parent.name} ({n_objects} object(s)); the DAVIS rules cannot score an object that "
                "appears late: score this data with --benchmark vos-benchmark"
            )
        if not pred_path.is_file():
            raise EvaluationError(
                f"missing prediction {pred_path} (for GT {gt_path}); write one PNG per frame into {pred_dir}, "
                "named like the GT annotation"
            )
        # Raw values, as the official results reader: a prediction's 255 is object 255, not void.
        pred = read_mask(pred_path, raw=True, error=EvaluationError)
        if pred.shape != gt.shape:
            raise EvaluationError(
                f"prediction {pred_path} is {pred.shape[1]}x{pred.shape[0]} but its GT {gt_path} is "
                f"{gt.shape[1]}x{gt.shape[0]} (WxH); save predictions at the annotation resolution"
            )
        if binary:
            pred = pred != 0
        elif pred.max(initial=0) > n_objects:
            # The official toolkit stops here too ("an index higher than the number of objects").
            raise EvaluationError(
                f"prediction {pred_path} has object id {int(pred.max())} but the sequence has {n_objects} "
                f"object(s) in its first GT frame {gt_paths[0].parent}; ids must be 1..{n_objects}"
            )
        scores[:, :, t] = metrics.object_scores(gt, pred, range(1, n_objects + 1))[:, : metrics.F + 1].T
    return scores


def _check_sequence(gt_paths: list[Path], pred_dir: Path) -> None:
    """Refuse a sequence too short to score or without its results folder, before any work starts."""
    if len(gt_paths) < 3:
        raise EvaluationError(
            f"sequence {pred_dir.name} has {len(gt_paths)} annotated frame(s); the semi-supervised protocol scores "
            "all frames but the first and the last, so it needs at least 3"
        )
    if not pred_dir.is_dir():
        raise EvaluationError(
            f"no results folder {pred_dir}; the results folder needs one sub-folder per sequence holding one PNG "
            "per frame"
        )


def object_scores(sequence: str, object_id: int, frames: list[str], j: np.ndarray, f: np.ndarray) -> ObjectScores:
    """One object of a sequence whose GT frames are `frames`: J and F on every frame but the first and the last
    (`j`, `f`), which the toolkit never scores (NaN, not counted); its values are the toolkit's Mean, Recall and
    Decay of J and F (`object_statistics`)."""
    jm, jr, jd = object_statistics(j)
    fm, fr, fd = object_statistics(f)
    values = {"J": jm, "J-Recall": jr, "J-Decay": jd, "F": fm, "F-Recall": fr, "F-Decay": fd}
    counted = np.r_[False, np.ones(len(j), dtype=bool), False]
    return ObjectScores(f"{sequence}_{object_id}", sequence, str(object_id), frames, np.r_[math.nan, j, math.nan],
                        np.r_[math.nan, f, math.nan], counted, (jm + fm) / 2, values)


def scores_of(objects: list[ObjectScores], split: str = "", title: str = "DAVIS") -> Scores:
    """The toolkit's global table of `objects` (means over all objects, not sequences; NaN when there are none, like
    the official np.mean), in the order of GLOBAL_COLUMNS."""

    def mean(key: str) -> float:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", category=RuntimeWarning)
            return float(np.mean([o.values[key] for o in objects]))

    j_mean, f_mean = mean("J"), mean("F")
    values = ((j_mean + f_mean) / 2, j_mean, mean("J-Recall"), mean("J-Decay"), f_mean, mean("F-Recall"),
              mean("F-Decay"))
    return Scores("davis", split, list(zip(GLOBAL_COLUMNS, values, strict=True)), objects, DECIMALS, title=title)


def evaluate_sequences(
    gt: dict[str, list[Path]], results_dir: Path, binary: bool, workers: int = 2, split: str = "",
    on_checked: Callable[[], None] | None = None,
) -> Scores:
    """Score every sequence of `gt` ({sequence: sorted GT PNG paths}) against `results_dir/<sequence>/*.png`.

    binary: True for DAVIS 2016 (masks binarised). workers: processes; 1 runs in this process (no pool).
    Frames are split into small tasks so that both cores stay busy whatever the sequence lengths.
    on_checked: called once every sequence is checked, before any frame is scored (the removal of stale files).
    """
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise EvaluationError(f"results folder {results_dir} does not exist; pass --results DIR with the predictions")
    n_objects, tasks = {}, []
    for seq, paths in gt.items():
        paths = [Path(p) for p in paths]
        _check_sequence(paths, results_dir / seq)
        n_objects[seq] = count_objects(paths[0], binary)
        scored = paths[1:-1]
        for start in range(0, len(scored), FRAMES_PER_TASK):
            tasks.append((seq, scored[start : start + FRAMES_PER_TASK]))

    args = [(paths, results_dir / seq, binary, n_objects[seq]) for seq, paths in tasks]
    if on_checked is not None:
        on_checked()
    chunks = parallel_map(_score_frames, args, workers)

    per_seq: dict[str, list[np.ndarray]] = {seq: [] for seq in gt}
    for (seq, _), chunk in zip(tasks, chunks, strict=True):
        per_seq[seq].append(chunk)
    objects = []
    for seq, parts in per_seq.items():
        scores = np.concatenate(parts, axis=2)  # (2, n_objects, frames)
        frames = [Path(p).stem for p in gt[seq]]
        objects += [object_scores(seq, k + 1, frames, scores[0, k], scores[1, k]) for k in range(n_objects[seq])]
    return scores_of(objects, split, "DAVIS 2016" if binary else "DAVIS 2017")


# ----------------------------------------------------------------------------------------------------------------
# Output
# ----------------------------------------------------------------------------------------------------------------


def _fmt(value: float) -> str:
    return "" if math.isnan(value) else f"{value:.3f}"  # pandas writes NaN as an empty field


def csv_paths(out_dir: str | Path, split: str) -> tuple[Path, Path]:
    """The official toolkit's result files for `split` in out_dir: (global, per-sequence)."""
    out_dir = Path(out_dir)
    return out_dir / f"global_results-{split}.csv", out_dir / f"per-sequence_results-{split}.csv"


def remove_csvs(out_dir: str | Path, split: str) -> None:
    """Delete the CSVs of `split` in out_dir, if any. The official script silently reuses them, which reports stale
    numbers after a new run; and once the predictions change (a new run, or a failed evaluation), the last run's
    numbers must not stay beside them."""
    for path in csv_paths(out_dir, split):
        path.unlink(missing_ok=True)


def _csv_bytes(header: tuple[str, ...], rows: list[list[str]]) -> bytes:
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return text.getvalue().encode()


def write_csvs(result: Scores, out_dir: str | Path, split: str) -> tuple[Path, Path]:
    """Write `global_results-<split>.csv` and `per-sequence_results-<split>.csv` into out_dir, as the official
    toolkit lays them out (pandas `to_csv(index=False, float_format='%.3f')`).

    Each file is written with `utils.atomic_write`: a full disk or a kill leaves the previous file or the new one,
    never a truncated CSV. The global file goes last, so that its presence means both are complete.
    """
    global_path, seq_path = csv_paths(out_dir, split)
    seq_rows = [[obj.name, _fmt(obj.values["J"]), _fmt(obj.values["F"])] for obj in result.objects]
    atomic_write(seq_path, lambda f: f.write(_csv_bytes(SEQUENCE_COLUMNS, seq_rows)))
    global_row = [[_fmt(v) for _, v in result.global_table]]
    atomic_write(global_path, lambda f: f.write(_csv_bytes(GLOBAL_COLUMNS, global_row)))
    return global_path, seq_path


def evaluate_and_write(
    gt: dict[str, list[Path]],
    results_dir: str | Path,
    split: str,
    binary: bool,
    workers: int = 2,
    out_dir: str | Path | None = None,
    on_checked: Callable[[], object] | None = None,
) -> tuple[Scores, Path, Path]:
    """Score `results_dir` (see `evaluate_sequences`) and write its CSVs into out_dir (default results_dir):
    (result, global CSV, sequence CSV); the result lists both files.

    The CSVs of `split` already in out_dir are deleted once every sequence is checked and before any frame is
    scored (`common.begin_writing`, after `on_checked`), so a failed evaluation leaves none and a refused one deletes
    nothing.
    """
    flag = "--results" if out_dir is None else "--out"
    out_dir = results_dir if out_dir is None else out_dir

    def checked() -> None:
        begin_writing(Path(out_dir), flag, csv_paths(out_dir, split), on_checked)

    result = evaluate_sequences(gt, Path(results_dir), binary, workers, split, checked)
    result.files = list(write_csvs(result, out_dir, split))
    return (result, *result.files)


def format_table(result: Scores, split: str = "") -> str:
    """Global and per-object results as aligned text, like the official script's printout."""
    width = max([len(c) for c in GLOBAL_COLUMNS])
    lines = [f" Global results {split} ".center(78, "-")]
    lines.append(" ".join(c.rjust(width) for c in GLOBAL_COLUMNS))
    lines.append(" ".join(_fmt(v).rjust(width) for _, v in result.global_table))
    name_w = max([len("Sequence")] + [len(o.name) for o in result.objects])
    lines += ["", f" Per sequence results {split} ".center(50, "-")]
    lines.append(f"{'Sequence'.ljust(name_w)} {'J-Mean':>8} {'F-Mean':>8}")
    for obj in result.objects:
        lines.append(f"{obj.name.ljust(name_w)} {_fmt(obj.values['J']):>8} {_fmt(obj.values['F']):>8}")
    return "\n".join(lines)



# ----------------------------------------------------------------------------------------------------------------
# evaluation.py --benchmark davis, and the registry's entry
# ----------------------------------------------------------------------------------------------------------------


def _open(request: ScoreRequest) -> DAVIS:
    root = request.options.get("davis") or request.gt
    if root is None:
        raise VOSInputError("--benchmark davis needs the DAVIS root: pass --davis PATH (or --gt PATH)")
    return DAVIS(root, year=request.options.get("year") or "2017", split=request.split or "val")


def score(request: ScoreRequest) -> Scores:
    """evaluation.py's default: --results scored on the DAVIS root's --split (default val) and --year, as
    davis2017-evaluation does; the CSVs go to --out (default --results)."""
    ds = _open(request)
    return evaluate_and_write(ds.ground_truth(), request.results, ds.split, ds.binary, request.workers,
                              request.out, request.on_checked)[0]


def report_folders(request: ScoreRequest) -> tuple[Path, Path, str] | None:
    """(frames folder, ground-truth folder, mask layout) of the DAVIS root scored; None when the split is empty."""
    ds = _open(request)
    if not ds.sequences:
        return None
    first = ds.sequences[0]
    return ds.frames(first)[0].parent.parent, ds.annotations(first)[0].parent.parent, \
        "binary" if ds.binary else "ids"


BENCHMARK = Benchmark(
    name="davis",
    keys=(
        DataKey("DAVIS16_val", "davis", lambda root: DAVIS(root, "2016", "val")),
        DataKey("DAVIS17_val", "davis", lambda root: DAVIS(root, "2017", "val")),
        DataKey("DAVIS17_test-dev", "davis", lambda root: DAVIS(root, "2017", "test-dev")),
        DataKey("sample", "sample", lambda root: DAVIS(root, "2016", "train"), flag=None,
                unset="it is the bundled sample: set it to sample/DAVIS2016 of this repository (run.py's SAMPLE_ROOT)"),
    ),
    holds="JPEGImages/ and Annotations/",
    scorings=(Scoring("davis", "davis2017-evaluation", "the DAVIS root (as --davis)", score, report_folders,
                      options={"davis": "the DAVIS root", "year": "2016 (binary masks) or 2017"},
                      split="image set (default val)",
                      format=lambda result: format_table(result, result.split),
                      result_files=("global_results-*.csv", "per-sequence_results-*.csv")),),
)
