"""VideoMatch (Hu et al., ECCV 2018): soft matching, outlier removal, online update, streaming and training."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import DAVIS2016_SAMPLE

import matching
import run
from core import methods
from core.framework import one_hot
from core.methods import build_model
from core.segmenter import VideoSegmenter
from dataset import Roots
from training import checkpoint, trainer
from training.samplers import TrainDAVIS
from utils import VOSInputError
from videomatch import (
    LOSSES,
    MatchState,
    VideoMatch,
    VideoMatchConfig,
    balanced_bce_loss,
    bce_loss,
    dice_loss,
    object_masks,
)

DAVIS2016 = DAVIS2016_SAMPLE


# --- the soft matching layer -----------------------------------------------------------------------------------

# 4 reference positions (rows) x 2 query positions (columns)
SIM = torch.tensor([[[0.9, 0.1],
                     [0.5, 0.8],
                     [0.3, -0.2],
                     [-0.4, 0.4]]])
SETS = torch.tensor([[[True, True, False, True],  # 3 positions
                      [False, False, True, False],  # 1 position: fewer than K
                      [False, False, False, False]]])  # empty


def test_topk_mean_by_hand() -> None:
    scores = matching.topk_mean_scores(SIM, SETS, k=2)
    expected = torch.tensor([[[(0.9 + 0.5) / 2, (0.8 + 0.4) / 2],  # the 2 best of {0.9, 0.5, -0.4}, {0.1, 0.8, 0.4}
                              [0.3, -0.2],  # one position: the mean of what there is
                              [-1.0, -1.0]]])  # empty set: the lowest cosine similarity
    torch.testing.assert_close(scores, expected)
    # K larger than the set: every member averaged, not summed and divided by K
    scores3 = matching.topk_mean_scores(SIM, SETS, k=3)
    torch.testing.assert_close(scores3[0, 0], torch.tensor([(0.9 + 0.5 - 0.4) / 3, (0.1 + 0.8 + 0.4) / 3]))
    # K larger than the whole reference frame
    torch.testing.assert_close(matching.topk_mean_scores(SIM, SETS, k=20), scores3)
    # chunking over query positions changes nothing
    torch.testing.assert_close(matching.topk_mean_scores(SIM, SETS, k=2, chunk=1), scores)


def test_topk_mean_gradient_reaches_only_the_selected_similarities() -> None:
    sim = SIM.clone().requires_grad_()
    matching.topk_mean_scores(sim, SETS[:, :1], k=2).sum().backward()
    expected = torch.tensor([[[0.5, 0.0], [0.5, 0.5], [0.0, 0.0], [0.0, 0.5]]])
    torch.testing.assert_close(sim.grad, expected)


def test_soft_match_softmax_gives_probabilities() -> None:
    sets = torch.stack([SETS[:, 1], SETS[:, 0]], dim=1)[:, None]  # (1, 1 object, [bg, fg], 4)
    scores = matching.soft_match(SIM, sets, k=2)  # (1, 1, 2, 2)
    probs = torch.softmax(scores, dim=2)
    fg = torch.tensor([0.7, 0.6])
    bg = torch.tensor([0.3, -0.2])
    torch.testing.assert_close(probs[0, 0, 1], torch.exp(fg) / (torch.exp(fg) + torch.exp(bg)))


def test_cosine_similarity_ignores_scale_and_zero_features() -> None:
    ref = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]]])  # (1, C=2, 3): x axis, y axis, a zero feature
    query = torch.tensor([[[3.0], [3.0]]])  # 45 degrees
    sim = matching.cosine_similarity(ref, query)
    torch.testing.assert_close(sim[0, :, 0], torch.tensor([0.5 ** 0.5, 0.5 ** 0.5, 0.0]))


def test_mask_sets_majority_and_tiny_object() -> None:
    fg = torch.zeros(1, 2, 8, 8)
    fg[0, 0, :4, :4] = 1  # object 0: exactly the top-left cell of a 2x2 grid
    fg[0, 0, 4:6, :4] = 1  # ... and half of the bottom-left cell (majority: >= 0.5 counts)
    fg[0, 1, 7, 7] = 1  # object 1: one pixel, 1/16 of a cell
    sets = matching.mask_sets(fg, (2, 2))  # (1, 2, 2, 4) [bg, fg]
    assert sets[0, 0, 1].tolist() == [True, False, True, False]
    assert sets[0, 1, 1].tolist() == [False, False, False, True]  # kept: the cell it touches
    assert torch.equal(sets[:, :, 0], ~sets[:, :, 1])


# --- outlier removal ---------------------------------------------------------------------------------------------

def test_dilation_window_of_the_outlier_removal() -> None:
    # The window VideoMatch's outlier removal (Sec. 3.3, VideoMatch.predict) keeps around the previous mask.
    prev = torch.zeros(1, 2, 7, 9, dtype=torch.bool)
    prev[0, 0, 3, 4] = True  # centre pixel
    prev[0, 1, 0, 0] = True  # corner: the window is clipped at the border
    expected = torch.zeros(1, 2, 7, 9, dtype=torch.bool)
    expected[0, 0, 2:5, 3:6] = True
    expected[0, 1, 0:2, 0:2] = True
    assert torch.equal(matching.dilate_mask(prev, 3), expected)


def test_separable_dilation_equals_square_max_pool() -> None:
    g = torch.Generator().manual_seed(0)
    mask = torch.rand(2, 3, 40, 57, generator=g) > 0.97
    for d in (1, 5, 51):
        square = F.max_pool2d(mask.float(), d, stride=1, padding=d // 2) > 0
        assert torch.equal(matching.dilate_mask(mask, d), square)
    with pytest.raises(ValueError, match="odd"):
        matching.dilate_mask(mask, 4)


# --- the model ---------------------------------------------------------------------------------------------------

def tiny_video(h: int = 64, w: int = 96, n: int = 4) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Gray frames with a red and a green square moving right 2 px a frame; and the first frame's id mask."""
    frames = []
    for t in range(n):
        rgb = np.full((h, w, 3), 128, np.uint8)
        rgb[16:40, 8 + 2 * t:32 + 2 * t] = (220, 30, 30)
        rgb[20:44, 50 + 2 * t:74 + 2 * t] = (30, 200, 40)
        frames.append(torch.from_numpy(rgb).permute(2, 0, 1).float() / 255)
    mask = torch.zeros(h, w, dtype=torch.long)
    mask[16:40, 8:32] = 1
    mask[20:44, 50:74] = 2
    return frames, mask


@pytest.fixture(scope="module")
def tiny_model() -> VideoMatch:
    torch.manual_seed(0)
    return build_model("videomatch", {"encoder": "vgg19"}).eval()


def test_two_objects_aggregate_into_one_mask(tiny_model: VideoMatch) -> None:
    frames, mask = tiny_video()
    seg = VideoSegmenter(tiny_model)
    labels, probs = seg.step(frames[0], mask)
    assert torch.equal(labels, mask)
    for frame in frames[1:]:
        labels, probs = seg.step(frame)
        assert labels.shape == (64, 96) and probs.shape == (2, 64, 96)
        assert set(labels.unique().tolist()) == {0, 1, 2}  # both objects found, one id mask
        # after aggregation an object with p > 0.5 outweighs the background (1 - sum p < 0.5) and every other object,
        # and where the objects together have less than 0.5 the background wins
        for k in (0, 1):
            assert (labels[probs[k] > 0.5] == k + 1).all()
        assert (labels[probs.sum(0) < 0.5] == 0).all()
    # untrained weights, 8x12 feature positions: no accuracy to speak of, but each square stays with its own object
    assert (labels[16:40, 14:38] == 1).float().mean() > 0.5
    assert (labels[20:44, 56:80] == 2).float().mean() > 0.5
    assert isinstance(seg.state, MatchState)
    assert seg.state.prev_mask.shape == (1, 2, 64, 96)


def test_driver_pads_videomatch_to_its_stride(tiny_model: VideoMatch, monkeypatch: pytest.MonkeyPatch) -> None:
    """Bug: the driver padding every model to EMVOS's stride 16, so that VideoMatch (stride 8) matches reflected
    border pixels that are not in the frame; or the padding not cropped off the labels and probabilities."""
    frames, mask = tiny_video(50, 84)  # stride 8 pads to 56 x 88; stride 16 would pad to 64 x 96
    sizes = []
    encode = tiny_model.encode

    def spy(img: torch.Tensor) -> torch.Tensor:
        sizes.append(tuple(img.shape[-2:]))
        return encode(img)

    monkeypatch.setattr(tiny_model, "encode", spy)
    seg = VideoSegmenter(tiny_model)
    labels, _ = seg.step(frames[0], mask)
    assert torch.equal(labels, mask)
    labels, probs = seg.step(frames[1])
    assert sizes == [(56, 88), (56, 88)]
    assert labels.shape == (50, 84) and probs.shape == (2, 50, 84)
    assert seg.state.prev_mask.shape == (1, 2, 56, 88)  # outlier removal's previous mask, on the padded frame


def test_late_object_and_probability_maps(tiny_model: VideoMatch) -> None:
    frames, mask = tiny_video(60, 90)  # not a multiple of 16: VideoSegmenter pads, the maps crop it off
    seg = VideoSegmenter(tiny_model, keep_probabilities=True)
    seg.step(frames[0], torch.where(mask == 1, mask, 0))
    assert seg.last_probs is None  # the first frame's mask is given, not predicted
    labels, probs = seg.step(frames[1], torch.where(mask == 2, mask, 0))  # object 2 first given here
    assert probs.shape == (2, 60, 90) and seg.object_ids == [1, 2]
    assert seg.state.ref_sets.shape[:3] == (1, 2, 2)
    # each object's sets live on its own frame's positions only
    hw = seg.state.ref_sets.shape[3] // 2
    assert not seg.state.ref_sets[0, 0, :, hw:].any() and not seg.state.ref_sets[0, 1, :, :hw].any()
    labels, probs = seg.step(frames[2])
    maps = seg.last_probs
    assert maps.shape == (2, 2, 60, 90)
    torch.testing.assert_close(maps.sum(dim=1), torch.ones(2, 60, 90))


def test_predict_applies_outlier_removal() -> None:
    torch.manual_seed(0)
    model = VideoMatch(VideoMatchConfig(dilation=5)).eval()
    frames, mask = tiny_video()
    with torch.no_grad():
        feats = model.encode(torch.stack(frames[:2]))
        state = model.init_state(feats[:1], one_hot(mask[None], [1]))
        logits = model.predict(feats[1:], state)
        free = model.train().predict(feats[1:], state)  # training mode: no outlier removal (it is a test-time step)
        model.eval()
    keep = matching.dilate_mask(state.prev_mask, 5)[0, 0]
    fg = torch.softmax(logits, dim=2)[0, 0, 1]
    assert (fg[~keep] == 0).all()
    torch.testing.assert_close(logits[0, 0, :, keep], free[0, 0, :, keep])


def test_online_update_is_off_by_default_and_extends_the_sets(tiny_model: VideoMatch) -> None:
    assert VideoMatchConfig().online_update is False
    frames, mask = tiny_video()
    feats = tiny_model.encode(torch.stack(frames[:2])).detach()
    probs = one_hot(mask[None], [1]).double()  # a confident prediction: p = 1 on the object, 0 elsewhere
    probs[..., :8] = 0.5  # ... except a doubtful band on the left, one feature column wide

    state = tiny_model.init_state(feats[:1], one_hot(mask[None], [1]))
    tiny_model.update(state, feats[1:], probs)
    assert state.online_feats is None and state.online_sets is None
    assert state.reference()[0] is state.ref_feats

    online = VideoMatch(VideoMatchConfig(online_update=True))
    online.load_state_dict(tiny_model.state_dict())
    state = online.init_state(feats[:1], one_hot(mask[None], [1]))
    given = state.ref_sets.clone()
    online.update(state, feats[1:], probs)
    ref_feats, sets = state.reference()
    hw = feats.shape[-2] * feats.shape[-1]
    assert ref_feats.shape == (1, 512, 2 * hw) and sets.shape == (1, 1, 2, 2 * hw)
    assert torch.equal(sets[..., :hw], given)  # the given frame's sets stay as they were
    expected_fg = matching.mask_sets((mask == 1)[None, None].float(), feats.shape[-2:])[:, :, 1]  # its 3x3 cells
    assert torch.equal(sets[:, :, 1, hw:], expected_fg)
    bg = sets[0, 0, 0, hw:].view(feats.shape[-2:])
    assert not bg[:, 0].any() and bg[:, 1:].sum() > 0  # the doubtful band (first cell column) joins neither set
    # the next frame is matched against the extended sets, and the scores differ
    with torch.no_grad():
        assert not torch.equal(online.match(feats[1:], state), tiny_model.match(feats[1:], state_without(state)))


def state_without(state: MatchState) -> MatchState:
    return MatchState(state.ref_feats, state.ref_sets, state.prev_mask)


def test_object_masks_follow_the_argmax() -> None:
    fg = torch.tensor([[0.4, 0.3], [0.35, 0.1]]).view(1, 2, 2, 1)  # 2 objects, 2 pixels
    masks = object_masks(torch.stack([1 - fg, fg], dim=2))
    assert masks[0, :, 0, 0].tolist() == [True, False]  # 0.4 beats background 0.25 and object 2
    assert masks[0, :, 1, 0].tolist() == [False, False]  # background 0.6 wins


def test_checkpoint_round_trip(tiny_model: VideoMatch, tmp_path: Path) -> None:
    model = build_model("videomatch", {"encoder": "resnet101", "topk": 5, "online_update": True})
    path = tmp_path / "vm.pth"
    torch.save(methods.weights_payload(model, "videomatch"), path)
    loaded, meta = methods.load_weights(path)
    assert isinstance(loaded, VideoMatch) and meta["method"] == "videomatch"
    assert loaded.config == model.config
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v)
    with pytest.raises(ValueError, match="videomatch"):
        build_model("nope")


def test_config_is_checked() -> None:
    with pytest.raises(ValueError, match="encoder"):
        VideoMatchConfig(encoder="densenet121")
    with pytest.raises(ValueError, match="odd"):
        VideoMatchConfig(dilation=50)


# --- losses ------------------------------------------------------------------------------------------------------

def test_losses_by_hand() -> None:
    target = torch.zeros(1, 1, 4, 5, dtype=torch.long)
    target[..., :2, :2] = 1  # 4 of 20 pixels
    even = torch.zeros(1, 1, 2, 4, 5)  # p = 0.5 everywhere
    log2 = torch.log(torch.tensor(2.0))
    torch.testing.assert_close(bce_loss(even, target), log2)
    # beta = 16/20 on the 4 positives, 4/20 on the 16 negatives: mean weight 2 * 0.2 * 0.8
    torch.testing.assert_close(balanced_bce_loss(even, target), log2 * 2 * 0.2 * 0.8)
    torch.testing.assert_close(dice_loss(even, target), torch.tensor(1 - (2 * 2 + 1) / (10 + 4 + 1)))
    perfect = torch.stack([1 - target, target], dim=2).float() * 40 - 20
    for loss in LOSSES.values():
        assert loss(perfect, target) < 1e-6


# --- training ----------------------------------------------------------------------------------------------------

def test_training_on_real_pairs_lowers_the_loss() -> None:
    # Two frame pairs of the real sample from the training sampler (samplers.TrainDAVIS, clip_len 2, a tiny 48x80
    # crop), the paper's optimiser (Adam, lr 1e-5, weight decay 5e-4) and BCE, on this one batch: from random
    # weights the loss falls at every step, ~1.2% a step (the port's VGG-19 to conv4_4); 6 steps keep it at seconds.
    random.seed(0)
    torch.manual_seed(0)
    data = TrainDAVIS(DAVIS2016, year="2016", split="train", output_size=(48, 80), clip_len=2, clips_per_epoch=2)
    clips = [data[i] for i in range(2)]
    imgs = torch.stack([c["imgs"] for c in clips])  # (2, 2, 3, 48, 80)
    masks = torch.stack([c["masks"] for c in clips])  # (2, 2, 48, 80)
    assert all(0 < m[0].sum() < m[0].numel() for m in masks)  # both classes in each first frame
    model = build_model("videomatch").train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-5, weight_decay=5e-4)
    losses = []
    for _ in range(6):
        logits = model(imgs, masks[:, 0])
        assert logits.shape == (2, 1, 2, 48, 80)
        loss = bce_loss(logits, masks[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(b < a for a, b in zip(losses, losses[1:], strict=False)), losses  # every step lowers it
    assert losses[-1] < 0.95 * losses[0], losses


def test_trainer_preset_trains_videomatch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    adam = []
    original = torch.optim.Adam

    def spy(params: object, **kwargs: object) -> torch.optim.Optimizer:
        adam.append(kwargs)
        return original(params, **kwargs)

    monkeypatch.setattr(torch.optim, "Adam", spy)
    argv = ["--train", "--method", "videomatch", "--device", "cpu", "--no-pretrained", "--crop", "32", "32",
            "--batch-size", "2", "--workers", "0", "--val-every", "0", "--epochs", "1", "--clips-per-epoch", "2",
            "--loss", "dice", "--davis", str(DAVIS2016), "--davis-year", "2016", "--save-dir", str(tmp_path)]
    args = run.build_parser().parse_args(argv)
    net = trainer.train(args.method or "emvos", run.train_options(args), run.roots(args))
    assert all(p.requires_grad for p in net.parameters())  # the encoder is the whole network: it is trained
    assert adam == [{"lr": 1e-5, "weight_decay": 5e-4}]  # the paper's optimiser settings reached Adam
    loaded, _ = methods.load_weights(tmp_path / "videomatch_davis_best.pth")
    assert isinstance(loaded, VideoMatch)
    state = torch.load(checkpoint.training_state_path(tmp_path / "videomatch_davis_0001.pth"), weights_only=True)
    assert state["train_options"]["loss"] == "dice"
    with pytest.raises(VOSInputError, match="--loss"):  # an EMVOS run has no Dice loss
        trainer.train("emvos", trainer.TrainOptions(loss="dice", save_dir=str(tmp_path / "e")), Roots())
