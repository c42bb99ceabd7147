"""Per-frame measures of video object segmentation: region similarity J and boundary accuracy F (pure numpy).

The one place where J and F of a frame are computed, for every benchmark: each benchmark module reduces the
per-frame values returned by `object_scores` with its toolkit's rules. The toolkits differ in three places only,
all parameters here:
- J: |P&G|/|P|G|, or with 1 added to both counts (`smooth=1`, a toolkit that scores empty frames that way).
- F: everyone uses DAVIS's one-pixel boundary map (`boundary_map`, the pure-Python `_seg2bmap`) dilated by a disk;
  the radius is ceil(0.008 * image diagonal) unless a toolkit gives its own (`radii`).
- A toolkit may report a second F with another radius (column `F_NEW`); otherwise that column is F.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import cv2
import numpy as np

BOUND_TH = 0.008  # boundary tolerance as a fraction of the image diagonal (8 px at 854x480)


def jaccard(gt: np.ndarray, pred: np.ndarray, smooth: int = 0) -> float:
    """Region similarity J = (|gt & pred| + smooth) / (|gt | pred| + smooth) of two binary (H, W) masks.

    smooth=0 is DAVIS's J; with smooth=1 (a toolkit's choice, see its module) a k-pixel false positive on an empty GT
    scores 1/(k+1) instead of 0. Both empty gives 1 either way.
    """
    if gt.shape != pred.shape:
        raise ValueError(f"jaccard: shapes differ, gt {gt.shape} vs pred {pred.shape}")
    gt, pred = gt.astype(bool, copy=False), pred.astype(bool, copy=False)
    union = np.count_nonzero(gt | pred)
    if union == 0:
        return 1.0
    return (np.count_nonzero(gt & pred) + smooth) / (union + smooth)


def boundary_map(mask: np.ndarray) -> np.ndarray:
    """One-pixel boundary of a binary (H, W) mask, as the official pure-Python `_seg2bmap`.

    A pixel is on the boundary when it differs from its right, lower or lower-right neighbour; neighbours outside
    the image are not compared (so the last row only looks right, the last column only down, the corner never).
    That is what `_seg2bmap`'s zero padding plus its overrides of the last row and column amount to. (One toolkit's
    optional Cython `compute_b` computes `seg ^ (e | s | se)` instead, a different map; every benchmark here follows
    the pure-Python one, DAVIS's.)
    """
    seg = mask.astype(bool, copy=False)
    bmap = np.zeros(seg.shape, dtype=bool)
    bmap[:, :-1] |= seg[:, :-1] ^ seg[:, 1:]
    bmap[:-1, :] |= seg[:-1, :] ^ seg[1:, :]
    bmap[:-1, :-1] |= seg[:-1, :-1] ^ seg[1:, 1:]
    return bmap


def disk(radius: float) -> np.ndarray:
    """Structuring element x^2 + y^2 <= r^2 on the grid arange(-r, r + 1), as skimage.morphology.disk (uint8).

    A non-integer radius gives skimage's off-centre disk (r = 7.837: 17x17 with 191 pixels, against 197 for r = 8),
    which a toolkit that does not round its radius up gets.
    """
    grid = np.arange(-radius, radius + 1)
    x, y = np.meshgrid(grid, grid)
    return (x**2 + y**2 <= radius**2).astype(np.uint8)


def boundary_radius(shape: tuple[int, int], bound_th: float = BOUND_TH) -> float:
    """Dilation radius in pixels: `bound_th` itself when >= 1, else ceil(bound_th * image diagonal)."""
    # np.linalg.norm (not math.hypot) so that the rounding is the official one to the last bit.
    return bound_th if bound_th >= 1 else float(np.ceil(bound_th * np.linalg.norm(shape)))


def crop_box(gt: np.ndarray, pred: np.ndarray) -> tuple[slice, slice] | None:
    """Rows/columns that hold every boundary pixel of both masks, or None when both masks are empty.

    Boundary pixels of a mask lie in its bounding box grown by one pixel up and left (a pixel left of the mask
    differs from its right neighbour); one more row and column at the bottom and right keep the crop's own last
    row and column all-background, so `boundary_map` on the crop equals the full-frame map cut to the crop.
    """
    rows = np.flatnonzero(np.any(gt, axis=1) | np.any(pred, axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(np.any(gt, axis=0) | np.any(pred, axis=0))
    return slice(max(rows[0] - 1, 0), rows[-1] + 2), slice(max(cols[0] - 1, 0), cols[-1] + 2)


def _f_from_boundaries(gt_b: np.ndarray, pred_b: np.ndarray, radius: float) -> float:
    """F of two boundary maps with a disk of `radius`, with the official edge cases."""
    n_gt, n_pred = np.count_nonzero(gt_b), np.count_nonzero(pred_b)
    # The official edge cases: an empty boundary gives P=1, R=0 (or P=0, R=1), hence F=0; both empty gives F=1.
    if n_gt == 0 or n_pred == 0:
        return 1.0 if n_gt == n_pred else 0.0
    # Cropping cannot change the counts: dilation only spreads boundary pixels, which all lie inside the crop, and
    # cv2.dilate's default border adds nothing. cv2.dilate with the same disk is what the official code runs.
    kernel = disk(radius)
    pred_dil = cv2.dilate(pred_b.view(np.uint8), kernel).view(bool)
    gt_dil = cv2.dilate(gt_b.view(np.uint8), kernel).view(bool)
    precision = np.count_nonzero(pred_b & gt_dil) / n_pred
    recall = np.count_nonzero(gt_b & pred_dil) / n_gt
    if precision + recall == 0:
        return 0.0
    return 2 * precision * recall / (precision + recall)


def boundary_f_radii(gt: np.ndarray, pred: np.ndarray, radii: Sequence[float]) -> list[float]:
    """Boundary F of two boolean (H, W) masks for each dilation radius (boundary maps computed once)."""
    box = crop_box(gt, pred)
    if box is None:
        return [1.0] * len(radii)  # both empty: precision = recall = 1
    gt_b, pred_b = boundary_map(gt[box]), boundary_map(pred[box])
    return [_f_from_boundaries(gt_b, pred_b, r) for r in radii]


def boundary_f(gt: np.ndarray, pred: np.ndarray, bound_th: float = BOUND_TH) -> float:
    """Boundary accuracy F of two binary (H, W) masks.

    Precision is the share of predicted boundary pixels within `boundary_radius` of a GT boundary pixel (disk
    neighbourhood), recall the converse, F their harmonic mean. Empty prediction with non-empty GT: P=1, R=0, F=0;
    both empty: F=1.
    """
    if gt.shape != pred.shape:
        raise ValueError(f"boundary_f: shapes differ, gt {gt.shape} vs pred {pred.shape}")
    gt, pred = gt.astype(bool, copy=False), pred.astype(bool, copy=False)
    return boundary_f_radii(gt, pred, [boundary_radius(gt.shape, bound_th)])[0]


# Columns of `object_scores`.
J, F, F_NEW = 0, 1, 2


def object_scores(gt: np.ndarray, pred: np.ndarray, objects: Sequence[int], smooth: int = 0,
                  radii: Callable[[np.ndarray], tuple[float, float]] | None = None) -> np.ndarray:
    """J, F and a second F of each object id in one frame: array (len(objects), 3), columns `J`, `F`, `F_NEW`.

    gt, pred: (H, W) id maps of the same shape (object k = pixels equal to k). smooth: J's smoothing (`jaccard`).
    radii(gt mask of the object) -> (radius of F, radius of F_NEW), a toolkit's own dilation radii; None: DAVIS's
    `boundary_radius` for both, so F_NEW is F.
    """
    if gt.shape != pred.shape:
        raise ValueError(f"object_scores: shapes differ, gt {gt.shape} vs pred {pred.shape}")
    out = np.empty((len(objects), 3))
    radius = boundary_radius(gt.shape)
    for i, k in enumerate(objects):
        gt_k, pred_k = gt == k, pred == k
        out[i, J] = jaccard(gt_k, pred_k, smooth)
        if radii is not None:
            out[i, F], out[i, F_NEW] = boundary_f_radii(gt_k, pred_k, radii(gt_k))
        else:
            out[i, F] = out[i, F_NEW] = boundary_f_radii(gt_k, pred_k, [radius])[0]
    return out
