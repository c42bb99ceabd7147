"""Pixel-level matching between a reference frame and a query frame.

Pure functions on key tensors, shared by the model, the tests and the benchmark. Notation follows EMVOS
(Cho et al., "Pixel-Level Equalized Matching for Video Object Segmentation", arXiv 2209.03139, Sec. 3):

- B: batch (clips in training, 1 at inference), C: key channels,
- HW_r / HW_q: number of stride-16 positions of the reference / query frame (rows r / columns q),
- M: mask channels read out at once (2 per object: background, foreground).

A similarity matrix is always laid out (B, HW_r, HW_q): one row per reference pixel.
"""

import torch
import torch.nn.functional as F
from torch import Tensor

BRANCHES = ("surjective", "bijective", "equalized")


def l2_normalise(key: Tensor) -> Tensor:
    """Unit-normalise keys over channels. (B, C, ...) -> (B, C, ...).

    No epsilon, as in the official code: a key with zero norm would give NaNs there too, and an epsilon would change
    the numbers the official checkpoints were trained with.
    """
    return key / key.norm(dim=1, keepdim=True)


def surjective_similarity(nk_ref: Tensor, nk_q: Tensor) -> Tensor:
    """Cosine similarity mapped to [0, 1]: S = (nk_ref^T nk_q + 1) / 2 (paper Sec. 3.2, surjective matching).

    Args:
        nk_ref: (B, C, HW_r) L2-normalised reference keys.
        nk_q: (B, C, HW_q) L2-normalised query keys.
    Returns:
        (B, HW_r, HW_q) similarities. Every query pixel may pick any reference pixel: the mapping from reference to
        query is surjective, so one reference pixel can explain many query pixels.
    """
    return (torch.bmm(nk_ref.transpose(1, 2), nk_q) + 1) / 2  # (B, HW_r, HW_q)


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
    return torch.softmax(torch.bmm(k_ref.transpose(1, 2), k_q), dim=2)  # (B, HW_r, HW_q)


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


def readout_chunk_size(max_bytes: int | None, batch: int, channels: int, hw_ref: int, hw_query: int,
                       element_size: int = 4) -> int:
    """Query positions per chunk so that max_readout's temporary, (B, M, HW_r, chunk), fits in max_bytes.

    None means no limit (one chunk). At least one query position is always processed.
    """
    if max_bytes is None:
        return hw_query
    per_query = batch * channels * hw_ref * element_size
    return int(max(1, min(hw_query, max_bytes // per_query)))


def max_readout(sim: Tensor, masks: Tensor, chunk: int | None = None) -> Tensor:
    """Read a mask out through a similarity matrix: score[m, q] = max_r sim[r, q] * masks[m, r].

    This is the matching score of the paper (Sec. 3.2/3.3, the same for every branch): for each query pixel, the
    best-matching reference pixel weighted by how much it belongs to the mask (background or foreground).

    Args:
        sim: (B, HW_r, HW_q) similarity matrix.
        masks: (B, M, HW_r) soft masks at the reference's stride-16 positions.
        chunk: query positions processed at once; bounds the temporary (B, M, HW_r, chunk). The result does not
            depend on it: max and product are exact, so every chunk size gives identical numbers.
    Returns:
        (B, M, HW_q).
    """
    hw_q = sim.shape[2]
    chunk = hw_q if chunk is None else max(1, chunk)
    masks = masks.unsqueeze(3)  # (B, M, HW_r, 1)
    parts = [(sim[:, None, :, s:s + chunk] * masks).amax(dim=2) for s in range(0, hw_q, chunk)]  # (B, M, chunk)
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=2)  # (B, M, HW_q)


def pool_mask(mask: Tensor, stride: int = 16) -> Tensor:
    """Average-pool a soft mask to the key stride and flatten it: (B, M, H, W) -> (B, M, H*W/stride^2)."""
    return F.avg_pool2d(mask, stride).flatten(2)
