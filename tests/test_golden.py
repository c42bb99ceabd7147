"""Parity with the official EMVOS code (suhwan-cho/EMVOS @ 7e1e200) on the golden vectors, in float64.

tests/golden/ holds the outputs of the authors' code (tools/make_golden.py) for weights generated from a hash
(tools/golden.py) on frames cut from sample/; conftest writes them as GOLDEN_WEIGHTS and GOLDEN_CASES.
docs/faithfulness.md describes the cases and how to regenerate and check them.
"""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import GOLDEN_CASES, GOLDEN_WEIGHTS
from PIL import Image

from core.framework import Runtime
from core.methods import load_weights
from core.segmenter import VideoSegmenter
from model import EMVOS, EMVOSRuntime, from_official, to_official
from tools import golden

WEIGHTS = GOLDEN_WEIGHTS
CASES = GOLDEN_CASES


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


# ----------------------------------------------------------------------------------------------------------------------
# The golden vectors themselves
# ----------------------------------------------------------------------------------------------------------------------


def _splitmix64_reference(name: str, n: int) -> list[float]:
    """tools/golden.unit_floats written again in Python integers (arbitrary precision, masked to 64 bits)."""
    import hashlib

    m = (1 << 64) - 1
    seed = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little")
    out = []
    for i in range(1, n + 1):
        z = (seed + i * 0x9E3779B97F4A7C15) & m
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & m
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & m
        z ^= z >> 31
        out.append((z >> 11) * 2.0**-53)
    return out


def test_hash_is_splitmix64_in_exact_integer_arithmetic() -> None:
    """Fails if numpy's uint64 arithmetic does not wrap as splitmix64 needs (a cast to float or int64 on the way, a
    shift by a float), or the generator stops being the documented one: the weights would then differ between
    platforms and no longer be those the official outputs were computed with."""
    for name in ("vos.encoder.conv0.weight", "vos.decoder.deconv3.deconv.bias"):
        np.testing.assert_array_equal(golden.unit_floats(name, 2000), np.array(_splitmix64_reference(name, 2000)))


def test_weights_are_those_the_official_outputs_were_computed_with() -> None:
    """Fails if the generator, its ranges or the layout file change without regenerating tests/golden/ (the stored
    fingerprint of the weights would no longer match), or if the file conftest wrote is not the generated one."""
    state = golden.golden_state_dict()
    assert golden.weights_digest(state) == golden.expected_weights_digest()
    written = torch.load(WEIGHTS, map_location="cpu", weights_only=True)
    assert list(written) == list(state) and all(torch.equal(written[k], state[k]) for k in state)


def test_weights_cover_the_official_layout_at_sensible_scales() -> None:
    """Fails if a tensor of the authors' state dict is missing or constant, a BatchNorm running variance is not
    positive (the encoder would divide by the square root of a negative number), or a convolution's weights leave
    He's bound (activations would vanish or explode through DenseNet-121 and every case would be trivial)."""
    layout = json.loads(golden.LAYOUT.read_text())["tensors"]
    assert len(layout) == 576 and layout[0][0] == "vos.encoder.mean"
    state = golden.golden_state_dict()
    for name, shape, _, role in layout:
        t = state[name]
        assert tuple(t.shape) == tuple(shape), name
        if role == "bn_count":
            continue
        assert t.dtype == torch.float32 and t.numel() > 0 and (t.numel() == 1 or t.std() > 0), name
        if role == "bn_var":
            assert t.min() > 0, name
        if role == "conv_weight":
            bound = (6 / (shape[1] * int(np.prod(shape[2:])))) ** 0.5
            assert t.abs().max() <= bound and t.abs().max() > 0.9 * bound, name


def test_official_outputs_are_not_trivial(cases: dict) -> None:
    """Fails if the golden weights make the official outputs degenerate (one class everywhere, every object lost,
    flat scores): then a broken implementation could match them. Every object keeps at least 5% of every frame in
    a and b, and case c's scores vary and pick both classes."""
    for case, objects in (("a", [0, 1]), ("b", [0, 1, 2])):
        for frame in cases[f"{case}_masks_out"]:
            share = np.bincount(frame.ravel(), minlength=4) / frame.size
            assert (share[objects] >= 0.05).all(), (case, share)
    assert (cases["b_masks_out"][3] == 3).mean() >= 0.02  # the late object is tracked after its frame
    scores = cases["c_scores_out"]
    picked = scores.argmax(axis=2)
    assert scores.std() > 1 and 0.05 < (picked == 1).mean() < 0.95


def test_frames_that_are_not_the_golden_ones_are_refused(tmp_path: Path) -> None:
    """Fails if the frames cut from sample/ are not checked against the fingerprint stored with the outputs: a sample
    changed (or decoded to other pixels) would give other inputs, and the tests would report a mask difference that
    no change of the model caused."""
    sample = tmp_path / "DAVIS2016"
    shutil.copytree(golden.SAMPLE, sample)
    frame = sample / "JPEGImages" / "480p" / "boat" / "00002.jpg"
    Image.open(frame).save(frame, quality=50)
    with pytest.raises(ValueError, match="golden case b: the frames cut from .* are not those"):
        golden.load_cases(sample=sample)


def test_make_golden_refuses_a_folder_that_is_not_the_authors_code(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture) -> None:
    """Fails if tools/make_golden.py runs on a folder without the authors' emvos.py, or on another version of it
    (outputs of other code would be stored as the official ones), instead of one line and exit code 2."""
    from tools import make_golden

    for content in (None, "print('not the authors' code')\n"):
        if content is not None:
            (tmp_path / "emvos.py").write_text(content)
        with pytest.raises(SystemExit) as stop:
            make_golden.main([str(tmp_path)])
        err = capsys.readouterr().err
        assert stop.value.code == 2 and err.count("\n") == 1 and "emvos.py" in err and "7e1e200" in err


def test_the_golden_writer_is_a_command_that_never_overwrites(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Bugs: `python tools/golden.py --help` wrote 46 MB into a folder named --help, and a DEST holding another file
    of the same name would have been overwritten."""
    from tools import golden

    with pytest.raises(SystemExit) as e:
        golden.main(["--help"])
    assert e.value.code == 0 and not Path("--help").exists()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / golden.WEIGHTS_NAME).write_bytes(b"my own checkpoint")
    assert golden.main([str(mine)]) == 2
    assert (mine / golden.WEIGHTS_NAME).read_bytes() == b"my own checkpoint" and not (mine / golden.CASES_NAME).exists()
    assert "is not the golden file" in capsys.readouterr().err
    assert golden.main([str(tmp_path / "new")]) == 0
    assert (tmp_path / "new" / golden.WEIGHTS_NAME).read_bytes() == GOLDEN_WEIGHTS.read_bytes()
    assert golden.main([str(tmp_path / "new")]) == 0  # the same files again: nothing to refuse
