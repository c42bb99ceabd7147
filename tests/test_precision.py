"""bf16 autocast on CPU: it runs, and its logits stay close to float32 on real frames (DAVIS 2016 bear, downscaled).

The golden weights are random (generated from a hash, tools/golden.py), so their masks follow no object and a mask
comparison would say little; the logits are compared instead.
"""


import numpy as np
import pytest
import torch
from conftest import DAVIS2016_SAMPLE, GOLDEN_WEIGHTS
from PIL import Image

from core.methods import load_weights
from core.segmenter import VideoSegmenter
from tools.reference import capture_logits

WEIGHTS = GOLDEN_WEIGHTS
BEAR = DAVIS2016_SAMPLE
SIZE = (432, 240)  # (W, H): half of 854x480, not a multiple of 16 in width, so padding is exercised too
FRAMES = 3  # the given first frame and 2 predicted ones: errors also travel through the previous masks


def _frame(i: int) -> torch.Tensor:
    img = Image.open(BEAR / "JPEGImages" / "480p" / "bear" / f"{i:05d}.jpg").convert("RGB").resize(SIZE, Image.BICUBIC)
    return torch.from_numpy(np.array(img)).permute(2, 0, 1).float() / 255


def _mask() -> torch.Tensor:
    ann = Image.open(BEAR / "Annotations" / "480p" / "bear" / "00000.png").resize(SIZE, Image.NEAREST)
    return torch.from_numpy((np.array(ann) != 0).astype(np.int64))


def _logits(model: torch.nn.Module, autocast: torch.dtype | None) -> torch.Tensor:
    seg = VideoSegmenter(model, autocast=autocast)
    sink: list[torch.Tensor] = []
    with capture_logits(seg, sink):
        for i in range(FRAMES):
            seg.step(_frame(i), _mask() if i == 0 else None)
    return torch.cat(sink).float()  # (FRAMES - 1, 1, 2, H, W)


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_bf16_logits_close_to_fp32(channels_last: bool) -> None:
    model, _ = load_weights(WEIGHTS)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    ref = _logits(model, None)
    low = _logits(model, torch.bfloat16)
    assert low.shape == ref.shape and torch.isfinite(low).all()
    diff = (low - ref).abs()
    # bf16 keeps 8 significant bits (rounding 2^-9, 0.2%). About 130 layers of rounding add up to a few percent of the
    # activations' scale at worst (measured here: max 1.6% of the largest |logit| over these 2 frames, 1.8% with
    # channels_last, no more with a third frame; mean 1.0-1.1% of the logits' std). The bounds leave room for other
    # CPUs' kernels, while a real fault (a wrong cast, an overflow, a module left out) gives differences of the order
    # of the logits themselves.
    assert diff.max() <= 0.05 * ref.abs().max(), f"max |bf16 - fp32| {diff.max():.3f} vs |logit| {ref.abs().max():.2f}"
    assert diff.mean() <= 0.02 * ref.std(), f"mean |bf16 - fp32| {diff.mean():.4f} vs logit std {ref.std():.3f}"
