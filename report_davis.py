"""`report.RunScores` from a DAVIS evaluation (`evaluation.EvaluationResult`), for report.html and --compare.

A separate module so that `report` needs nothing from `evaluation` (which dispatches `--compare` to `report`): the
import graph stays a tree. `EvaluationResult` holds per-object statistics only, so the per-frame J and F are scored
here with the evaluator's own frame scorer, which reads the masks exactly as the official toolkit does.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

import evaluation
from report import ObjectFrames, RunScores


def _frame_scores(gt_path: Path, pred_dir: Path, binary: bool, n_objects: int) -> np.ndarray:
    """(2, n_objects) J and F of one frame; NaN when the frame cannot be scored (e.g. no prediction for the first
    frame, which the protocol does not score anyway)."""
    try:
        return evaluation._score_frames([gt_path], pred_dir, binary, n_objects)[:, :, 0]
    except evaluation.EvaluationError:
        return np.full((2, n_objects), math.nan)


def from_davis(result: evaluation.EvaluationResult, gt: dict[str, list[Path]], results_dir: str | Path,
               binary: bool, frames_dir: str | Path, split: str, *, command: str = "", weights_name: str = "",
               weights_id: str = "", date: str = "") -> RunScores:
    """The report's view of a DAVIS run scored by `evaluation.evaluate_sequences(gt, results_dir, binary)`.

    Every frame of each sequence gets J and F; the first and the last are marked not counted, as the semi-supervised
    protocol drops them. An object's `jf` is (J-Mean + F-Mean) / 2 of its row. frames_dir: the folder holding one
    JPEG folder per sequence (`<DAVIS>/JPEGImages/480p`).
    """
    results_dir = Path(results_dir)
    by_name = {o.name: o for o in result.objects}
    objects, gt_dirs = [], set()
    for seq, paths in gt.items():
        paths = [Path(p) for p in paths]
        gt_dirs.add(paths[0].parent.parent)
        n = evaluation.count_objects(paths[0], binary)
        inner = evaluation._score_frames(paths[1:-1], results_dir / seq, binary, n)  # (2, n, T-2), as scored
        scores = np.concatenate([_frame_scores(paths[0], results_dir / seq, binary, n)[:, :, None], inner,
                                 _frame_scores(paths[-1], results_dir / seq, binary, n)[:, :, None]], axis=2)
        counted = [False] + [True] * (len(paths) - 2) + [False]
        for k in range(n):
            row = by_name[f"{seq}_{k + 1}"]
            objects.append(ObjectFrames(
                name=row.name, sequence=seq, object_label=str(k + 1), frames=[p.stem for p in paths],
                j=scores[0, k].tolist(), f=scores[1, k].tolist(), counted=counted,
                jf=(row.j_mean + row.f_mean) / 2))
    if len(gt_dirs) > 1:
        raise ValueError(f"the ground truth lies in {len(gt_dirs)} folders; a report needs one")
    return RunScores(
        benchmark="davis", split=split, global_table=list(zip(evaluation.GLOBAL_COLUMNS, result.global_row(),
                                                              strict=True)),
        objects=objects, frames_dir=str(frames_dir), gt_dir=str(gt_dirs.pop() if gt_dirs else ""),
        pred_dir=str(results_dir), mask_layout="binary" if binary else "ids", decimals=3, command=command,
        weights_name=weights_name, weights_id=weights_id, date=date)
