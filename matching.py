"""Pixel-level matching between a reference frame and a query frame.

Pure functions on key tensors, shared by the model, the tests and the benchmark. Notation follows EMVOS
(Cho et al., "Pixel-Level Equalized Matching for Video Object Segmentation", arXiv 2209.03139, Sec. 3):

- B: batch (clips in training, 1 at inference), C: key channels,
- HW_r / HW_q: number of stride-16 positions of the reference / query frame (rows r / columns q),
- M: mask channels read out at once (2 per object: background, foreground).

A similarity matrix is always laid out (B, HW_r, HW_q): one row per reference pixel.
"""

import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor

P = ParamSpec("P")
R = TypeVar("R")

BRANCHES = ("surjective", "bijective", "equalized")


def outside_autocast(fn: Callable[P, R]) -> Callable[P, R]:
    """fn with autocast off on CPU and CUDA: its tensors' own dtypes decide its precision. Under autocast a matrix
    product runs in bf16 / fp16 whatever its inputs, and the matching's maxima and softmax would read rounded
    similarities."""
    @functools.wraps(fn)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        with torch.autocast("cpu", enabled=False), torch.autocast("cuda", enabled=False):
            return fn(*args, **kwargs)

    return run


def l2_normalise(key: Tensor) -> Tensor:
    """Unit-normalise keys over channels. (B, C, ...) -> (B, C, ...).

    No epsilon, as in the official code: a key with zero norm would give NaNs there too, and an epsilon would change
    the numbers the official checkpoints were trained with.
    """
    return key / key.norm(dim=1, keepdim=True)


def key_products(ref: Tensor, query: Tensor) -> Tensor:
    """ref^T query per clip: (B, C, HW_r), (B, C, HW_q) -> (B, HW_r, HW_q), the product inside every similarity.

    Computed as a 1x1 convolution whose filters are the reference positions (grouped by clip) rather than with
    torch.bmm: on CPU oneDNN runs such products faster than MKL's sgemm (at 854x480 they are 1620 x 1620 x 512, four
    per frame). The same sums in another order: float32 results move by rounding only.
    """
    b, c, hw_r = ref.shape
    weight = ref.transpose(1, 2).reshape(b * hw_r, c, 1, 1)  # (B HW_r, C, 1, 1)
    out = F.conv2d(query.reshape(1, b * c, 1, query.shape[2]), weight, groups=b)  # (1, B HW_r, 1, HW_q)
    return out.view(b, hw_r, query.shape[2])


def surjective_similarity(nk_ref: Tensor, nk_q: Tensor) -> Tensor:
    """Cosine similarity mapped to [0, 1]: S = (nk_ref^T nk_q + 1) / 2 (paper Sec. 3.2, surjective matching).

    Args:
        nk_ref: (B, C, HW_r) L2-normalised reference keys.
        nk_q: (B, C, HW_q) L2-normalised query keys.
    Returns:
        (B, HW_r, HW_q) similarities. Every query pixel may pick any reference pixel: the mapping from reference to
        query is surjective, so one reference pixel can explain many query pixels.
    """
    return (key_products(nk_ref, nk_q) + 1) / 2  # (B, HW_r, HW_q)


def equalized_similarity(k_ref: Tensor, k_q: Tensor) -> Tensor:
    """Equalized matching (paper Sec. 3.3): E = softmax over the query positions of k_ref^T k_q.

    The softmax runs over the **query** axis, so each reference pixel spreads one unit of mass over the query frame;
    a reference pixel cannot be the best match of many query pixels at full strength. No temperature and no
    1/sqrt(C): the official model learned the key scale itself.

    Args:
        k_ref: (B, C, HW_r) reference keys (not normalised).
        k_q: (B, C, HW_q) query keys.
    Returns:
        (B, HW_r, HW_q); each row sums to 1.
    """
    return torch.softmax(key_products(k_ref, k_q), dim=2)  # (B, HW_r, HW_q)


def bijective_similarity(nk_ref: Tensor, nk_q: Tensor, topk: int = 4) -> Tensor:
    """Bijective matching as in BMVOS (Cho et al., 2022), the baseline EMVOS compares against.

    Per reference pixel keep its top-K query scores of the surjective similarity and set the rest of that row to the
    row's minimum, so a reference pixel only supports the K query pixels it matches best.

    Args:
        nk_ref: (B, C, HW_r), nk_q: (B, C, HW_q) L2-normalised keys.
        topk: K, the query positions each reference pixel keeps (4 in BMVOS).
    Returns:
        (B, HW_r, HW_q).
    """
    sim = surjective_similarity(nk_ref, nk_q)  # (B, HW_r, HW_q)
    k = min(topk, sim.shape[2])
    values, index = sim.topk(k, dim=2)  # (B, HW_r, K)
    out = sim.amin(dim=2, keepdim=True).expand_as(sim).clone()  # (B, HW_r, HW_q) filled with the row minimum
    return out.scatter_(2, index, values)


def similarity(branch: str, ref: tuple[Tensor, Tensor], query: tuple[Tensor, Tensor], topk: int = 4) -> Tensor:
    """The similarity matrix of one matching branch. ref and query are (normalised key, key), each (B, C, HW).

    Returns (B, HW_r, HW_q). surjective and bijective use the normalised key (matcher.conv1), equalized the raw key
    (matcher.conv2), as in the official model.
    """
    if branch == "surjective":
        return surjective_similarity(ref[0], query[0])
    if branch == "bijective":
        return bijective_similarity(ref[0], query[0], topk)
    if branch == "equalized":
        return equalized_similarity(ref[1], query[1])
    raise ValueError(f"unknown matching branch {branch!r}; choose from {BRANCHES}")


# On CPU the readout works in tiles of about this many bytes even without a memory limit: a larger temporary is
# fresh memory from the OS at every call, and its page faults cost more than the arithmetic (854x480, 3 objects: one
# 63 MB temporary, or 4 MB tiles that stay in cache). A GPU's caching allocator has no such cost.
READOUT_TILE_BYTES = 4 * 2**20


def readout_tiles(max_bytes: int | None, batch: int, masks: int, hw_ref: int, hw_query: int, element_size: int = 4,
                  min_queries: int = 64) -> tuple[int, int]:
    """(masks, query positions) per tile so that max_readout's temporary, (B, masks, HW_r, queries), fits max_bytes.

    None means no limit (one tile). Query positions are cut first, down to min_queries (smaller tiles pay more in
    per-call overhead than they save), then masks, then query positions again; at least one of each.
    """
    if max_bytes is None:
        return masks, hw_query
    queries = max_bytes // (batch * masks * hw_ref * element_size)
    if queries >= min(hw_query, min_queries):
        return masks, int(min(hw_query, queries))
    queries = min(hw_query, min_queries)
    per_mask = max_bytes // (batch * hw_ref * queries * element_size)
    if per_mask >= 1:
        return int(per_mask), queries
    return 1, int(max(1, max_bytes // (batch * hw_ref * element_size)))


def max_readout(sim: Tensor, masks: Tensor, chunk: int | None = None, mask_chunk: int | None = None) -> Tensor:
    """Read a mask out through a similarity matrix: score[m, q] = max_r sim[r, q] * masks[m, r].

    This is the matching score of the paper (Sec. 3.2/3.3, the same for every branch): for each query pixel, the
    best-matching reference pixel weighted by how much it belongs to the mask (background or foreground).

    Args:
        sim: (B, HW_r, HW_q) similarity matrix.
        masks: (B, M, HW_r) soft masks at the reference's stride-16 positions.
        chunk: query positions processed at once; mask_chunk: masks processed at once (see readout_tiles). They
            bound the temporary (B, mask_chunk, HW_r, chunk). The result does not depend on them: max and product
            are exact, so every tiling gives identical numbers.
    Returns:
        (B, M, HW_q).
    """
    b, n_masks, _ = masks.shape
    hw_q = sim.shape[2]
    chunk = hw_q if chunk is None else max(1, chunk)
    mask_chunk = n_masks if mask_chunk is None else max(1, mask_chunk)
    masks = masks.unsqueeze(3)  # (B, M, HW_r, 1)
    if chunk >= hw_q and mask_chunk >= n_masks:
        return (sim[:, None] * masks).amax(dim=2)  # (B, M, HW_q)
    out = sim.new_empty(b, n_masks, hw_q, dtype=torch.result_type(sim, masks))
    for s in range(0, hw_q, chunk):  # query tiles outside: a tile of sim stays in cache while every mask reads it
        tile = sim[:, None, :, s:s + chunk]  # (B, 1, HW_r, chunk)
        for m in range(0, n_masks, mask_chunk):
            out[:, m:m + mask_chunk, s:s + chunk] = (tile * masks[:, m:m + mask_chunk]).amax(dim=2)
    return out


def pool_mask(mask: Tensor, stride: int = 16) -> Tensor:
    """Average-pool a soft mask to the key stride and flatten it: (B, M, H, W) -> (B, M, H*W/stride^2)."""
    return F.avg_pool2d(mask, stride).flatten(2)


# ---------------------------------------------------------------------------------------------------------------
# VideoMatch (Hu et al., "VideoMatch: Matching based Video Object Segmentation", ECCV 2018)
#
# Here HW_r / HW_q count the positions of the VideoMatch feature map (stride 8, times the upsample factor), and a
# reference "set" is a boolean mask over the reference positions: the features of the set are the rows it selects.
# ---------------------------------------------------------------------------------------------------------------

def cosine_similarity(ref: Tensor, query: Tensor, eps: float = 1e-12) -> Tensor:
    """Cosine similarity between every reference and every query position (VideoMatch Sec. 3.1).

    Args:
        ref: (B, C, HW_r) reference features; query: (B, C, HW_q) query features (any scale).
        eps: lower bound on the norms. Unlike EMVOS's keys, VideoMatch features come straight out of a ReLU, so a
            position can be all zeros; with the bound its similarity is 0 to everything instead of NaN.
    Returns:
        (B, HW_r, HW_q) in [-1, 1].
    """
    ref = F.normalize(ref, dim=1, eps=eps)
    query = F.normalize(query, dim=1, eps=eps)
    return torch.bmm(ref.transpose(1, 2), query)  # (B, HW_r, HW_q)


def topk_mean_scores(sim: Tensor, ref_masks: Tensor, k: int = 20, empty: float = -1.0,
                     chunk: int | None = None) -> Tensor:
    """The soft matching layer's readout (VideoMatch Sec. 3.1): for every query position and every reference set,
    the mean of the K largest similarities to the reference positions inside the set.

    A set with fewer than K positions averages all of them (the mean of what there is, not a sum divided by K, so a
    small object is not penalised for its size). An empty set scores `empty` everywhere: -1, the lowest cosine
    similarity, says "nothing of this set resembles the pixel", so the softmax against the other set goes to that
    one (an object absent from the reference frame is not found; a frame that is all object has no background).

    Args:
        sim: (B, HW_r, HW_q) similarities, e.g. cosine_similarity.
        ref_masks: (B, M, HW_r) bool, the reference sets (per object: background, foreground).
        k: K of the paper (20).
        empty: the score of an empty set.
        chunk: query positions processed at once; bounds the temporary (B, HW_r, chunk) per set. The result does
            not depend on it.
    Returns:
        (B, M, HW_q). Differentiable in sim (the gradient reaches the selected similarities).
    """
    hw_r, hw_q = sim.shape[1:]
    kk = min(k, hw_r)
    chunk = hw_q if chunk is None else max(1, chunk)
    count = ref_masks.sum(dim=2).clamp(max=k).to(sim.dtype)  # (B, M): how many similarities each mean averages
    outside = ~ref_masks.unsqueeze(3)  # (B, M, HW_r, 1)
    scores = []
    for m in range(ref_masks.shape[1]):  # one set at a time: the masked copy of sim is the large temporary
        parts = []
        for s in range(0, hw_q, chunk):
            masked = sim[:, :, s:s + chunk].masked_fill(outside[:, m], float("-inf"))  # (B, HW_r, chunk)
            top = masked.topk(kk, dim=1).values  # (B, K, chunk); -inf where the set has fewer than K positions
            parts.append(torch.where(torch.isfinite(top), top, torch.zeros_like(top)).sum(dim=1))  # (B, chunk)
        scores.append(torch.cat(parts, dim=1) if len(parts) > 1 else parts[0])
    total = torch.stack(scores, dim=1)  # (B, M, HW_q)
    mean = total / count.clamp(min=1).unsqueeze(2)
    return torch.where(count.unsqueeze(2) > 0, mean, torch.full_like(mean, empty))


def soft_match(sim: Tensor, sets: Tensor, k: int = 20, chunk: int | None = None) -> Tensor:
    """Background and foreground scores of every object: (B, HW_r, HW_q), (B, N, 2, HW_r) -> (B, N, 2, HW_q).

    sets holds each object's [bg, fg] reference sets; softmax over dim 2 of the result gives the [bg, fg]
    probabilities of the paper (a softmax over the two scores, no temperature).
    """
    return topk_mean_scores(sim, sets.flatten(1, 2), k, chunk=chunk).unflatten(1, sets.shape[1:3])


def mask_sets(fg: Tensor, size: tuple[int, int]) -> Tensor:
    """Reference sets of given masks on a feature grid: (B, M, H, W) in [0, 1] -> (B, M, 2, h*w) bool [bg, fg].

    A feature position belongs to the foreground when at least half of the pixels it covers do (area average);
    everything else is background, so the two sets split the frame. An object that covers no position by half
    (smaller than a cell) would lose every reference feature; it takes the positions it touches instead.
    """
    frac = F.adaptive_avg_pool2d(fg, size).flatten(2)  # (B, M, hw)
    fg_set = frac >= 0.5
    tiny = ~fg_set.any(dim=2, keepdim=True) & (frac > 0).any(dim=2, keepdim=True)  # (B, M, 1)
    fg_set = torch.where(tiny, frac > 0, fg_set)
    return torch.stack([~fg_set, fg_set], dim=2)


def confident_sets(fg_prob: Tensor, size: tuple[int, int], threshold: float = 0.9) -> Tensor:
    """The confidently predicted positions of a frame, for the online update (VideoMatch Sec. 3.3).

    (B, M, H, W) foreground probabilities -> (B, M, 2, h*w) bool [bg, fg]: foreground where the probability, averaged
    over the pixels of the feature position, is at least `threshold`; background where it is at most 1 - threshold;
    positions in between (object boundaries, doubtful regions) join neither set.
    """
    frac = F.adaptive_avg_pool2d(fg_prob, size).flatten(2)  # (B, M, hw)
    return torch.stack([frac <= 1 - threshold, frac >= threshold], dim=2)


def dilate_mask(mask: Tensor, d: int) -> Tensor:
    """Binary dilation by a d x d square: (B, M, H, W) bool -> bool, the same size (d odd).

    Exactly max_pool2d with a d x d window, stride 1, padding d // 2; the square is separable, so it runs as a 1 x d
    and a d x 1 pool (2d instead of d^2 comparisons per pixel, which matters at d = 51).
    """
    if d % 2 != 1:
        raise ValueError(f"the dilation kernel must have an odd size, got {d}")
    x = mask.float()
    x = F.max_pool2d(x, (1, d), stride=1, padding=(0, d // 2))
    x = F.max_pool2d(x, (d, 1), stride=1, padding=(d // 2, 0))
    return x > 0

