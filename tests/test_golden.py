"""Parity with the official EMVOS code (suhwan-cho/EMVOS @ 7e1e200) on ../shared/golden, in float64."""


import numpy as np
import pytest
import torch
from conftest import SHARED

from core.framework import Runtime
from core.methods import load_weights
from core.segmenter import VideoSegmenter
from model import EMVOS, EMVOSRuntime, from_official, to_official

GOLDEN = SHARED / "golden"
CASES = GOLDEN / "cases.npz"
WEIGHTS = GOLDEN / "emvos_official.pth"
pytestmark = pytest.mark.skipif(not CASES.exists(), reason=f"golden vectors not found at {GOLDEN}")


@pytest.fixture(scope="module")
def cases() -> dict[str, np.ndarray]:
    return dict(np.load(CASES))


@pytest.fixture(scope="module")
def model64() -> EMVOS:
    model, _ = load_weights(WEIGHTS)
    return model.double()


def _frame(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(a).permute(2, 0, 1).double() / 255


def _run(model: EMVOS, imgs: np.ndarray, masks: dict[int, np.ndarray], runtime: Runtime | None = None
         ) -> np.ndarray:
    seg = VideoSegmenter(model, dtype=torch.float64, runtime=runtime or Runtime())
    out = []
    for i, img in enumerate(imgs):
        given = torch.from_numpy(masks[i]).long() if i in masks else None
        out.append(seg.step(_frame(img), given)[0].numpy())
    return np.stack(out)


def test_official_checkpoint_loads_strict() -> None:
    sd = torch.load(WEIGHTS, map_location="cpu", weights_only=True)
    assert len(sd) == 576
    model = EMVOS()
    model.load_state_dict(from_official(sd), strict=True)
    # and what we write is the official layout again, key for key
    assert set(to_official(model.state_dict())) == set(sd)
    assert sum(v.numel() for k, v in sd.items() if "num_batches" not in k) > 9.8e6


def test_case_a_one_object_with_padding(model64: EMVOS, cases: dict) -> None:
    out = _run(model64, cases["a_imgs"], {0: cases["a_first_mask"]})
    np.testing.assert_array_equal(out, cases["a_masks_out"])


def test_case_b_late_object(model64: EMVOS, cases: dict) -> None:
    out = _run(model64, cases["b_imgs"], {0: cases["b_first_mask"], 2: cases["b_frame2_mask"]})
    assert set(np.unique(out[3])) <= {0, 1, 2, 3}
    np.testing.assert_array_equal(out, cases["b_masks_out"])


def test_case_c_training_forward_scores(model64: EMVOS, cases: dict) -> None:
    imgs = torch.from_numpy(cases["c_imgs"]).permute(0, 1, 4, 2, 3).double() / 255
    with torch.no_grad():
        scores = model64(imgs, torch.from_numpy(cases["c_first_masks"]).long())
    assert scores.shape == cases["c_scores_out"].shape
    np.testing.assert_allclose(scores.numpy(), cases["c_scores_out"], rtol=0, atol=1e-8)


def test_chunked_readout_gives_identical_masks(model64: EMVOS, cases: dict) -> None:
    # the memory-bounded readout must not change a single number
    runtime = EMVOSRuntime(readout_bytes=3 * 2 * 8 * 1000)  # a few query positions per chunk, not a divisor of HW
    out = _run(model64, cases["b_imgs"], {0: cases["b_first_mask"], 2: cases["b_frame2_mask"]}, runtime)
    np.testing.assert_array_equal(out, cases["b_masks_out"])
