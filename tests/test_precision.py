"""--precision bf16 on CPU (weights cast to bf16 once, the matching in float32): it runs, its logits stay close to
float32 on real frames (DAVIS 2016 bear, downscaled), and its masks agree with float32's.

The golden weights are random (generated from a hash, tools/golden.py), so their masks follow no object; they are
still a deterministic function of the network, which bf16 must reproduce on almost every pixel.
"""


import numpy as np
import pytest
import torch
from conftest import DAVIS2016_SAMPLE, GOLDEN_WEIGHTS
from PIL import Image

import model as emvos
from core.methods import load_weights
from core.segmenter import VideoSegmenter, place, run_settings
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


def _run(model: torch.nn.Module, precision: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(labels (FRAMES - 1, H, W), logits (FRAMES - 1, 1, 2, H, W)) of the predicted frames, with the model placed
    and stepped as run.py --precision runs it (segmenter.run_settings, segmenter.place)."""
    settings = run_settings("cpu", precision)
    seg = VideoSegmenter(place(model, settings), settings.dtype, settings.autocast)
    sink: list[torch.Tensor] = []
    labels = []
    with capture_logits(seg, sink):
        for i in range(FRAMES):
            out, _ = seg.step(_frame(i), _mask() if i == 0 else None)
            labels.append(out)
    return torch.stack(labels[1:]), torch.cat(sink).float()


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_bf16_logits_close_to_fp32(channels_last: bool) -> None:
    """--precision bf16 (weights cast once, matching in float32) stays within bf16 rounding of float32. Fails on a
    wrong cast, an overflow or a module left out, which move the logits by their own size."""
    model, _ = load_weights(WEIGHTS)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    _, ref = _run(model, "fp32")
    _, low = _run(model, "bf16")
    assert low.shape == ref.shape and torch.isfinite(low).all()
    diff = (low - ref).abs()
    # bf16 keeps 8 significant bits (rounding 2^-9, 0.2%). About 130 layers of rounding add up to a few percent of the
    # activations' scale at worst (measured here: max 1.6% of the largest |logit| over these 2 frames, 1.7% with
    # channels_last; on average 1.0% of the logits' std). The bounds leave room for other CPUs' kernels, while a real
    # fault gives differences of the order of the logits themselves.
    assert diff.max() <= 0.05 * ref.abs().max(), f"max |bf16 - fp32| {diff.max():.3f} vs |logit| {ref.abs().max():.2f}"
    assert diff.mean() <= 0.02 * ref.std(), f"mean |bf16 - fp32| {diff.mean():.4f} vs logit std {ref.std():.3f}"


def test_bf16_masks_agree_with_fp32() -> None:
    """The fast path's masks agree with float32's on at least 99 % of pixels (measured here: 99.57 %); fails when bf16
    reaches the matching's maxima and softmax, or a layer runs on wrongly cast weights."""
    model, _ = load_weights(WEIGHTS)
    ref, _ = _run(model, "fp32")
    low, _ = _run(model, "bf16")
    agree = (ref == low).float().mean().item()
    assert agree >= 0.99, f"bf16 masks agree with fp32 on {agree:.4f} of pixels"


def test_bf16_casts_weights_once_and_matches_in_fp32() -> None:
    """--precision bf16 holds every weight in bf16 (no autocast copy of fp32 weights at each call) while the keys,
    and so the similarities, maxima and softmax of the matching, stay float32 even under autocast. Fails when place()
    leaves the weights in float32, or when the matcher or EMVOS.match lets bf16 into the matching."""
    settings = run_settings("cpu", "bf16")
    model = place(load_weights(WEIGHTS)[0], settings)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    img = _frame(0)[None, :, :224, :400]
    mask = torch.zeros(1, 1, 2, 224, 400)
    mask[:, :, 1, 64:160, 96:256] = 1
    mask[:, :, 0] = 1 - mask[:, :, 1]
    with torch.inference_mode(), torch.autocast("cpu", settings.autocast):
        feats = model.encode(img)
        assert feats.f16.dtype == torch.bfloat16  # the network itself runs in bf16
        assert feats.keys.nk.dtype == feats.keys.k.dtype == torch.float32
        state = model.init_state(feats, mask)
        scores = model.match(model.encode(img), state)
    assert scores.dtype == torch.float32
    # float32 keys in float64: matching keeps the wider type (fp64 runs compare with the reference)
    assert emvos.at_least_fp32(torch.zeros(2, dtype=torch.float64)).dtype == torch.float64
