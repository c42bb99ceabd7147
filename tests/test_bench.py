"""Memory-bounded matching and decoding give identical numbers, the batched model equals the official per-object
structure bit for bit, and bench.py runs. Correctness only: the timed benchmark stays out of the test suite."""

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import GOLDEN_CASES

import matching
import utils
from core.framework import Runtime
from core.methods import load_weights
from core.segmenter import VideoSegmenter
from model import EMVOS, EMVOSRuntime
from tools import bench
from tools.reference import PerObjectSegmenter, blob_mask, capture_logits, random_frame

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = GOLDEN_CASES
H, W = 40, 72  # not multiples of 16, so padding is included; 3 x 5 = 15 stride-16 positions


@pytest.fixture(scope="module")
def shared_model() -> EMVOS:
    torch.manual_seed(0)
    return EMVOS().eval()


@pytest.fixture
def tiny_model(shared_model: EMVOS) -> EMVOS:
    """A copy per test: tests change its dtype and memory format, which must not leak into the next test."""
    return copy.deepcopy(shared_model)


def _stream(seg: object, frames: int = 4, objects: int = 3) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Labels and logits of a synthetic video (bench's generators) through a segmenter."""
    mask = blob_mask(H, W, objects, seed=1)
    labels, logits = [], []
    with capture_logits(seg, logits):
        for t in range(frames):
            labels.append(seg.step(random_frame(H, W, t).to(seg.dtype), mask if t == 0 else None)[0])
    return labels, logits


@pytest.mark.parametrize("chunk, mask_chunk", [(1, None), (7, None), (64, None), (300, None), (13, 1), (5, 3),
                                               (None, 4), (1000, 7)])
def test_max_readout_chunks_identical(chunk: int | None, mask_chunk: int | None) -> None:
    """Bugs: a tile boundary that skips or repeats query positions or masks (the last, partial tile above all), the
    max taken over the wrong axis, or masks applied to query rather than reference positions."""
    sim = torch.tensor([[[0.9, 0.1, 0.5], [0.2, 0.8, 0.5]]], dtype=torch.float64)  # (1, HW_r 2, HW_q 3)
    two = torch.tensor([[[1.0, 0.0], [0.5, 1.0]]], dtype=torch.float64)  # (1, M 2, HW_r 2)
    by_hand = torch.tensor([[[0.9, 0.1, 0.5], [0.45, 0.8, 0.5]]], dtype=torch.float64)
    assert torch.equal(matching.max_readout(sim, two, chunk, mask_chunk), by_hand)
    g = torch.Generator().manual_seed(0)
    sim = torch.rand(2, 91, 97, generator=g, dtype=torch.float64)  # 97 query positions: prime, no chunk divides it
    masks = torch.rand(2, 6, 91, generator=g, dtype=torch.float64)
    # score[b, m, q] = max_r sim[b, r, q] * masks[b, m, r], one (clip, mask) at a time
    ref = torch.stack([torch.stack([(sim[i] * masks[i, m][:, None]).max(dim=0).values for m in range(6)])
                       for i in range(2)])
    assert torch.equal(matching.max_readout(sim, masks), ref)
    assert torch.equal(matching.max_readout(sim, masks, chunk, mask_chunk), ref)


@pytest.mark.parametrize("max_bytes", [1, 100, 5000, 40_000, 10**6, 5 * 10**6, 10**7, None])
def test_readout_tiles_fit_the_budget(max_bytes: int | None) -> None:
    """Bugs: a tile above the budget (the bound is broken), or one needlessly small (a tile of one mask and one
    query position fits every budget, and would make the readout one call per position)."""
    b, m, hw_r, hw_q, size = 1, 10, 300, 400, 8
    masks, queries = matching.readout_tiles(max_bytes, b, m, hw_r, hw_q, size)
    assert 1 <= masks <= m and 1 <= queries <= hw_q
    if max_bytes is None:
        assert (masks, queries) == (m, hw_q)
        return

    def tile_bytes(n_masks: int, n_queries: int) -> int:
        return b * n_masks * hw_r * n_queries * size

    if max_bytes >= tile_bytes(1, 1):  # one query position of one mask fits: the tile must fit too
        assert tile_bytes(masks, queries) <= max_bytes
        if masks == m:  # all masks at once: as many query positions as fit
            assert queries == hw_q or tile_bytes(m, queries + 1) > max_bytes
        else:  # masks were cut (query tiles would otherwise fall below min_queries): as many masks as fit
            assert tile_bytes(masks + 1, queries) > max_bytes
    if max_bytes == 10**7:  # the whole readout fits: one tile
        assert (masks, queries) == (m, hw_q)


def test_model_chunked_readout_identical(tiny_model: EMVOS) -> None:
    """Bug: EMVOS.match assembling the tiles of its readout into the wrong objects or positions (any bound on the
    readout's memory then changes the masks)."""
    model = tiny_model.double()
    ref_labels, ref_logits = _stream(VideoSegmenter(model, torch.float64, runtime=Runtime(memory_budget=None)))
    # float64, 15 reference positions, 6 masks (3 objects): tiles of 1 mask x 1 query position; 1 mask x 4 queries
    # (4 does not divide 15); 2 masks x all 15 queries (readout_tiles)
    for max_bytes in (8, 8 * 15 * 4, 8 * 15 * 15 * 2):
        runtime = EMVOSRuntime(memory_budget=None, readout_bytes=max_bytes)
        labels, logits = _stream(VideoSegmenter(model, torch.float64, runtime=runtime))
        assert all(torch.equal(a, b) for a, b in zip(labels, ref_labels, strict=True))
        assert all(torch.equal(a, b) for a, b in zip(logits, ref_logits, strict=True))


def test_decoder_object_batches_identical(tiny_model: EMVOS) -> None:
    """Bugs: decoder batches that drop, repeat or mix up objects (the last, partial batch above all), or a budget
    that changes the default one-object batches (and with them the float32 numbers)."""
    # The default, one object per decoder call, is what the budget cannot change. Larger batches (decoder_batch=None)
    # give the same logits up to summation order: the convolution kernels differ by batch size (measured 2e-14 on
    # logits of magnitude 4-8 in float64), so the masks are the same.
    model = tiny_model.double()

    def stream(memory_budget: int | None, decoder_batch: int | None) -> tuple[list, list]:
        runtime = EMVOSRuntime(memory_budget=memory_budget, decoder_batch=decoder_batch)
        return _stream(VideoSegmenter(model, torch.float64, runtime=runtime), objects=5)

    ref_labels, ref_logits = stream(None, 1)
    labels, logits = stream(1, 1)  # the smallest budget: still one object per call, so bit-identical
    assert all(torch.equal(a, b) for a, b in zip(logits, ref_logits, strict=True))
    f4_pixels = (48 // 4) * (80 // 4)  # the frame padded to 48 x 80, at stride 4
    per_object = model.decoder.bytes_per_object(torch.empty(1, 256, f4_pixels, 1), torch.float64)
    for budget in (None, 2 * per_object):  # all 5 objects at once; batches of 2, 2, 1
        labels, logits = stream(budget, None)
        for a, b in zip(logits, ref_logits, strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
        assert all(torch.equal(a, b) for a, b in zip(labels, ref_labels, strict=True))


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_unsplit_equals_per_object_bitwise_fp32(tiny_model: EMVOS, channels_last: bool,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Bugs: the batched model differing from the official per-object structure in anything but summation order
    (a branch's channels swapped, the global and local references mixed up, a wrong mask pooled)."""
    # Shared similarities and projections are the same operations on the same inputs, and the unsplit decoder sees
    # one object at a time as in the official code, so float32 logits are identical, not merely close, once the key
    # products are the official torch.bmm (ours run them as 1x1 convolutions, and the split decoder, the default,
    # reorders sums too: rounding only, tests/test_decoder_split.py).
    monkeypatch.setattr(matching, "key_products", lambda ref, query: torch.bmm(ref.transpose(1, 2), query))
    model = tiny_model.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    ref_labels, ref_logits = _stream(PerObjectSegmenter(model))
    labels, logits = _stream(VideoSegmenter(model, runtime=EMVOSRuntime(split_decoder=False)))
    assert torch.equal(torch.cat(logits, 1), torch.cat(ref_logits, 1))
    assert all(torch.equal(a, b) for a, b in zip(labels, ref_labels, strict=True))


def test_channels_last_keeps_golden_parity() -> None:
    """Bug: a convolution or reshape that reads channels_last memory as NCHW (the masks then differ entirely)."""
    # channels_last changes float32 summation order (logits move by ~1e-5), so its parity is the float64 golden case
    cases = np.load(GOLDEN)
    model, _ = load_weights(GOLDEN.parent / "emvos_official.pth")
    model = model.double().to(memory_format=torch.channels_last)
    seg = VideoSegmenter(model, dtype=torch.float64)
    out = [seg.step(torch.from_numpy(img).permute(2, 0, 1).double() / 255,
                    torch.from_numpy(cases["a_first_mask"]).long() if i == 0 else None)[0].numpy()
           for i, img in enumerate(cases["a_imgs"])]
    np.testing.assert_array_equal(np.stack(out), cases["a_masks_out"])


def test_memory_budget_api(monkeypatch: pytest.MonkeyPatch) -> None:
    """Bugs: "auto" resolved once, when the Runtime is made, so memory taken or freed later is ignored; a share of the
    free memory other than AUTO_BUDGET_FRACTION; a budget in bytes or None not passed through as it is."""
    cpu = torch.device("cpu")
    free = {"bytes": 8 * 2**30}
    monkeypatch.setattr(utils, "available_memory", lambda device: free["bytes"])
    runtime = Runtime()
    assert runtime.budget_bytes(cpu) == int(utils.AUTO_BUDGET_FRACTION * 8 * 2**30)
    free["bytes"] = 2**30  # another program took memory since: the next frame's budget follows
    assert runtime.budget_bytes(cpu) == int(utils.AUTO_BUDGET_FRACTION * 2**30)
    assert Runtime(memory_budget=123).budget_bytes(cpu) == 123
    assert Runtime(memory_budget=None).budget_bytes(cpu) is None
    with pytest.raises(ValueError, match="memory budget"):
        Runtime(memory_budget="lots")


def test_emvos_runs_a_plain_runtime_with_its_own_defaults() -> None:
    """Bugs: EMVOS dropping the memory budget of a plain framework.Runtime (the driver's default type), or running
    it with other decoder settings than EMVOSRuntime's defaults (one object per call, the split decoder), or
    replacing the settings of an EMVOSRuntime it is given."""
    assert EMVOSRuntime.of(Runtime(memory_budget=123)) == EMVOSRuntime(memory_budget=123)
    assert EMVOSRuntime.of(Runtime(memory_budget=None)) == EMVOSRuntime(memory_budget=None)
    assert EMVOSRuntime.of(None) == EMVOSRuntime()
    assert (EMVOSRuntime().decoder_batch, EMVOSRuntime().readout_bytes, EMVOSRuntime().split_decoder) == (1, None, True)
    own = EMVOSRuntime(memory_budget=7, decoder_batch=None, readout_bytes=64, split_decoder=False)
    assert EMVOSRuntime.of(own) is own


def test_bench_quick_prints_the_table(capsys: pytest.CaptureFixture) -> None:
    """Bugs: bench.py failing to run, a path or object count left out of the table, or the paths drifting from the
    per-object reference beyond summation order (a column that reads 0 where the diff is not, the reference row
    differing from itself). In-process (`bench.main`, what `python bench.py` calls): a subprocess would spend most of
    the test importing torch again."""
    assert bench.main(["--quick", "--precisions", "fp32"]) == 0
    out = capsys.readouterr()
    lines = out.out.splitlines()
    assert any(line.startswith("device") and "fps" in line and "mask diff" in line for line in lines), out.out
    rows = [line.split() for line in lines if line.startswith("cpu ") and " tiny " in line]
    assert {(r[2], r[3]) for r in rows} == {(n, p) for n in ("1", "3") for p in ("per-object", "unsplit", "ours")}
    # columns: mask diff, clear diff, logit diff, load. Against the official per-object structure, ours (key
    # products as convolutions, split decoder) and unsplit (key products only) move logits by summation order (measured
    # up to 3e-5), which may flip tied labels (random weights) but no label that leads by more than bench.TIE
    for r in rows:
        mask, clear, logit = float(r[-4]), float(r[-3]), float(r[-2])
        if r[3] == "per-object":
            assert mask == 0 and logit == 0, out.out
        else:
            assert clear == 0 and logit <= 2e-4, out.out


def test_precision_models_compile_each_copy_on_its_own_weights() -> None:
    """Bug: bench.py --compile with fp32 before bf16 compiled the fp32 model, then deep-copied it for bf16; the copy's
    compiled decoder methods stayed bound to the fp32 original, so the bf16 rows timed fp32's decoder. Each precision's
    `ours` must carry its own weights' dtype and compiled methods bound to itself (compilation is lazy: nothing
    compiles here)."""
    net = EMVOS().eval()
    out = bench.precision_models({"per-object": net, "ours": net}, ["fp32", "bf16"], compile_ours=True)
    for q, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        ours = out[q]["ours"]
        assert next(ours.parameters()).dtype == dtype and out[q]["per-object"] is ours
        for name in ("forward", "project", "forward_split"):
            assert getattr(ours.decoder, name)._torchdynamo_orig_callable.__self__ is ours.decoder, (q, name)
    assert out["bf16"]["ours"] is not net
