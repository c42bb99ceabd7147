"""VideoMatch as the public PyTorch port (stashvala/Pytorch-VideoMatch) builds and trains it: the truncated VGG-19,
every frame pair once per epoch, the port's augmentation, its checkpoints; and an online update that does something."""

from __future__ import annotations

import random
from collections import Counter
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import torchvision
from conftest import DAVIS2016_SAMPLE, save_mask, write_jpeg
from PIL import Image

import run
import videomatch
from core import methods
from core.framework import aggregate_objects, one_hot
from training import samplers, trainer
from utils import VOSInputError
from videomatch import VideoMatch, VideoMatchConfig

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def vgg19_features() -> nn.Sequential:
    """`torchvision.models.vgg19().features`, built by torchvision's own builder without the 123 M-parameter
    classifier that vgg19() would also make."""
    return torchvision.models.vgg.make_layers(torchvision.models.vgg.cfgs["E"])


def port_vgg19_features() -> nn.Sequential:
    """What the port's Encoder.load_vgg19 keeps, rebuilt here: pop modules off the end of vgg19().features until two
    max-pools have gone."""
    feats = vgg19_features()
    pools = 0
    while pools < 2:
        _, layer = feats._modules.popitem()
        pools += isinstance(layer, nn.MaxPool2d)
    return feats.eval()


# --- the encoder -------------------------------------------------------------------------------------------------

def test_vgg19_encoder_ends_where_the_port_ends() -> None:
    torch.manual_seed(0)
    port = port_vgg19_features()
    ours = videomatch.VideoMatchEncoder("vgg19").eval()
    assert len(ours.features) == len(port) == 27  # conv1_1 .. conv4_4 + ReLU
    assert [type(m) for m in ours.features] == [type(m) for m in port]
    assert isinstance(ours.features[-1], nn.ReLU) and ours.features[-2].out_channels == 512  # conv4_4
    assert sum(isinstance(m, nn.Conv2d) for m in ours.features) == 12
    assert sum(isinstance(m, nn.MaxPool2d) for m in ours.features) == 3  # stride 8
    with torch.no_grad():
        assert ours(torch.rand(1, 3, 64, 96)).shape == (1, 512, 8, 12)
    # the earlier reading stays reachable: all 16 convolutions, conv5_x at stride 8 too
    conv5 = videomatch.VideoMatchEncoder("vgg19_conv5")
    assert sum(isinstance(m, nn.Conv2d) for m in conv5.features) == 16 and len(conv5.features) == 35
    assert VideoMatchConfig().encoder == "vgg19"


# --- the port's checkpoints ----------------------------------------------------------------------------------------

def test_port_vgg19_checkpoint_loads_with_the_same_features(tmp_path: Path) -> None:
    torch.manual_seed(1)
    port = port_vgg19_features()
    path = tmp_path / "vm_vgg.pth"
    torch.save(port.state_dict(), path)  # the port's save_model: Encoder.feat_ext.state_dict()
    net, meta = methods.load_weights(path)
    assert isinstance(net, VideoMatch) and meta["method"] == "videomatch" and net.config.encoder == "vgg19"
    img = torch.rand(1, 3, 48, 64)
    with torch.no_grad():
        ours = net.encoder(img)
        theirs = port((img - MEAN) / STD)  # the port normalises in preprocessing
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    # a whole vgg19().features is not a port file (nor any method's): refused with the file named
    full = tmp_path / "vgg19_features.pth"
    torch.save(vgg19_features().state_dict(), full)
    with pytest.raises(VOSInputError, match="vgg19_features.pth"):
        methods.load_weights(full)


def test_port_resnet101_checkpoint_loads_with_the_same_features(tmp_path: Path) -> None:
    torch.manual_seed(2)
    resnet = torchvision.models.resnet101().eval()
    path = tmp_path / "vm_resnet.pth"
    torch.save(resnet.state_dict(), path)  # the port keeps the whole model, layer3, layer4 and fc included
    net, _ = methods.load_weights(path)
    assert net.config.encoder == "resnet101"
    img = torch.rand(1, 3, 32, 48)
    with torch.no_grad():
        x = (img - MEAN) / STD
        for name in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2"):  # the port's Encoder.forward
            x = getattr(resnet, name)(x)
        torch.testing.assert_close(net.encoder(img), x, rtol=0, atol=0)


def test_own_checkpoints_still_round_trip(tmp_path: Path) -> None:
    net = methods.build_model("videomatch", {"encoder": "vgg19", "topk": 5})
    path = tmp_path / "own.pth"
    torch.save(methods.weights_payload(net, "videomatch"), path)
    loaded, meta = methods.load_weights(path)
    assert loaded.config == net.config and meta["method"] == "videomatch"
    for k, v in net.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v)


# --- the online update ---------------------------------------------------------------------------------------------

def unit(*v: float) -> torch.Tensor:
    t = torch.tensor(v, dtype=torch.float32)
    return t / t.norm()


def test_online_update_adds_the_confident_positions() -> None:
    # Hand-made, non-negative unit features on a 1 x 8 grid, each position 8 x 8 pixels of an 8 x 64 frame.
    # Reference: positions 0-3 foreground (feature A), 4-7 background (B), A and B orthogonal.
    # Next frame: [A, A, D, D, M, M, B, B]. A is foreground beyond doubt (similarity 1 to the fg set, 0 to the bg
    # set: the largest gap, aggregated probability e^2 / (1 + e^2) = 0.881); D, a new look of the object, is close
    # to A (0.96); M = (A + B) / sqrt 2 is as close to both (0.71): doubtful; B is background.
    a, b = unit(1, 0, 0), unit(0, 1, 0)
    d, m = unit(1, 0, 0.3), unit(1, 1, 0)
    ref = torch.stack([a] * 4 + [b] * 4, dim=1).view(1, 3, 1, 8)
    frame = torch.stack([a, a, d, d, m, m, b, b], dim=1).view(1, 3, 1, 8)
    mask = torch.zeros(1, 8, 64, dtype=torch.long)
    mask[:, :, :32] = 1
    net = VideoMatch(VideoMatchConfig(topk=1, dilation=0, online_update=True)).eval()  # default threshold 0.8
    state = net.init_state(ref, one_hot(mask, [1]))
    before = net.match(frame, state)[0, 0, 1, 0]  # fg scores (8,)
    probs = aggregate_objects(torch.softmax(net.predict(frame, state), dim=2))[1]  # what the driver passes
    cells = probs[0, 0, 1, 0].view(8, 8).mean(dim=1)  # averaged over each position's pixels
    assert cells[0] == pytest.approx(videomatch.MAX_FG_PROBABILITY, abs=1e-6)
    assert (cells[:4] > 0.8).all() and (cells[4:6] - 0.5).abs().max() < 0.1 and (cells[6:] < 0.2).all()
    net.update(state, frame, probs)
    assert state.online_sets[0, 0, 1].tolist() == [True] * 4 + [False] * 4  # A and D join the foreground set
    assert state.online_sets[0, 0, 0].tolist() == [False] * 6 + [True] * 2  # B the background set; M neither
    # the next frame is matched against the extended sets: D now finds itself among the foreground features
    after = net.match(frame, state)[0, 0, 1, 0]
    assert before[2] == pytest.approx(1 / float(torch.tensor([1, 0, 0.3]).norm()), abs=1e-5)  # 0.958
    assert after[2] == pytest.approx(1.0) and torch.equal(after[[0, 1, 6, 7]], before[[0, 1, 6, 7]])
    # with the update off nothing joins
    off = VideoMatch(VideoMatchConfig(topk=1, dilation=0)).eval()
    state = off.init_state(ref, one_hot(mask, [1]))
    off.update(state, frame, probs)
    assert state.online_sets is None


def test_online_update_refuses_an_unreachable_threshold() -> None:
    with pytest.raises(ValueError, match="0.881"):
        VideoMatchConfig(online_update=True, online_threshold=0.9)
    VideoMatchConfig(online_update=False, online_threshold=0.9)  # unused: no complaint


def test_training_forward_updates_with_aggregated_probabilities(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    net = VideoMatch(VideoMatchConfig(online_update=True)).train()
    seen = []
    update = VideoMatch.update

    def spy(self: VideoMatch, state: videomatch.MatchState, feats: torch.Tensor, probs: torch.Tensor) -> None:
        seen.append(probs.detach())
        update(self, state, feats, probs)

    monkeypatch.setattr(VideoMatch, "update", spy)
    imgs = torch.rand(1, 3, 3, 32, 48)
    first = torch.zeros(1, 32, 48, dtype=torch.long)
    first[:, 8:24, 8:24] = 1
    logits = net(imgs, first)
    assert logits.shape == (1, 2, 2, 32, 48) and len(seen) == 1  # updated after frame 1 only
    p = torch.softmax(net.predict(net.encode(imgs[:, 1]), net.init_state(net.encode(imgs[:, 0]),
                                                                           one_hot(first, [1]))), dim=2)
    torch.testing.assert_close(seen[0], aggregate_objects(p)[1])  # not the plain softmax p


# --- training pairs ------------------------------------------------------------------------------------------------

def tiny_davis(root: Path, lengths: dict[str, int], h: int = 32, w: int = 48) -> Path:
    """A DAVIS tree (2017 layout, year 2016 list) whose frame i is a flat grey of level 20 + 40 i with a red square
    at column 8 + i (i < 6)."""
    for seq, n in lengths.items():
        for i in range(n):
            rgb = np.full((h, w, 3), 20 + 40 * (i % 6), np.uint8)
            ids = np.zeros((h, w), np.uint8)
            ids[8:24, 8 + i % 6:24 + i % 6] = 1
            rgb[ids == 1] = (250, 0, 0)
            write_jpeg(root / "JPEGImages" / "480p" / seq / f"{i:05d}.jpg", rgb)
            save_mask(root / "Annotations" / "480p" / seq / f"{i:05d}.png", ids)
    (root / "ImageSets" / "2016").mkdir(parents=True)
    (root / "ImageSets" / "2016" / "train.txt").write_text("".join(f"{s}\n" for s in lengths))
    return root


def test_pairs_every_pair_exactly_once_per_epoch(tmp_path: Path) -> None:
    root = tiny_davis(tmp_path / "davis", {"a": 4, "b": 3})
    no_aug = samplers.PortAugmentation((32, 48), p=1.0)  # random() > 1 never: frames only resized
    data = samplers.TrainPairs(root, year="2016", output_size=(32, 48), heldout=0, augment=no_aug)
    expected = Counter([("a", i, j) for i, j in combinations(range(4), 2)] +
                       [("b", i, j) for i, j in combinations(range(3), 2)])
    assert len(data) == 9
    torch.manual_seed(0)
    sampler = trainer.epoch_sampler(data, 0)  # the trainer's: 0 = every pair
    orders = []
    for _ in range(3):
        order = [data.pair_names(k) for k in sampler]
        assert Counter(order) == expected  # each (i < j) pair exactly once
        orders.append(order)
    assert orders[0] != orders[1]  # reshuffled every epoch
    # each item holds frame i then frame j, with their masks
    for k in range(len(data)):
        _, i, j = data.pair_names(k)
        item = data[k]
        assert item["imgs"].shape == (2, 3, 32, 48) and item["masks"].shape == (2, 32, 48)
        grey = item["imgs"][:, 1, 0, 0] * 255  # green of a background pixel
        assert torch.allclose(grey, torch.tensor([20 + 40 * i, 20 + 40 * j]).float(), atol=6)
        assert item["masks"][0, 8:24, 8 + i:24 + i].all() and item["masks"][1, 8:24, 8 + j:24 + j].all()
    # a cap draws that many distinct pairs (the port's --iters)
    assert len(set(trainer.epoch_sampler(data, 5))) == 5


def test_heldout_pairs_are_apart_and_fixed(tmp_path: Path) -> None:
    root = tiny_davis(tmp_path / "davis", {"a": 30})  # 435 pairs: 0.25 % is 1
    one = samplers.TrainPairs(root, year="2016", output_size=(32, 48))
    two = samplers.TrainPairs(root, year="2016", output_size=(32, 48))
    assert len(one.heldout_pairs) == 1 and len(one) == 434
    assert one.heldout_pairs == two.heldout_pairs  # the same whatever the run's seed
    assert not set(one.heldout_pairs) & set(one.pairs)
    held = one.heldout_pair(0)
    assert held["imgs"].shape == (2, 3, 32, 48) and held["masks"][0].sum() > 0


def test_port_recipe_reaches_the_training_loop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # `run.py --train --method videomatch` with no recipe flag but a small size and one pair: what the loop gets is
    # the port's recipe (every-pair sampler, batch 1, Dice, Adam 1e-5 / 5e-4, model kept by held-out pair IoU)
    seen: dict[str, object] = {}
    start_stage, adam, dice = trainer.start_stage, torch.optim.Adam, videomatch.LOSSES["dice"]

    def spy_stage(t: trainer.Trainer, *args: object) -> trainer.StageRun:
        run_ = start_stage(t, *args)
        seen["loader"] = run_.loader
        return run_

    def spy_adam(params: object, **kwargs: object) -> torch.optim.Optimizer:
        seen["adam"] = kwargs
        return adam(params, **kwargs)

    def spy_dice(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        seen["dice"] = seen.get("dice", 0) + 1
        return dice(logits, target)

    monkeypatch.setattr(trainer, "start_stage", spy_stage)
    monkeypatch.setattr(torch.optim, "Adam", spy_adam)
    monkeypatch.setitem(videomatch.LOSSES, "dice", spy_dice)
    assert run.main(["--train", "--method", "videomatch", "--device", "cpu", "--no-pretrained", "--davis",
                     str(DAVIS2016_SAMPLE), "--crop", "48", "80", "--clips-per-epoch", "1", "--workers", "0",
                     "--save-dir", str(tmp_path)]) == 0
    loader = seen["loader"]
    assert isinstance(loader.dataset, samplers.TrainPairs) and loader.batch_size == 1
    assert seen["adam"] == {"lr": 1e-5, "weight_decay": 5e-4} and seen["dice"] == 1
    log = (tmp_path / "train_log.csv").read_text().splitlines()
    header, row = log[0].split(","), log[1].split(",")
    assert row[header.index("val_pairs_iou")] != ""  # selected by the held-out pairs
    assert (tmp_path / "videomatch_davis_best.pth").is_file()


# --- the port's augmentation ---------------------------------------------------------------------------------------

def square_picture(h: int = 240, w: int = 427, side: int = 60) -> tuple[Image.Image, Image.Image]:
    """A textured 16:9 picture with a red square in the middle, and the square's mask."""
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 120, (h, w, 3)).astype(np.uint8)
    rgb[..., 0] //= 2  # little red in the texture
    ids = np.zeros((h, w), np.uint8)
    top, left = (h - side) // 2, (w - side) // 2
    ids[top:top + side, left:left + side] = 1
    rgb[ids == 1] = (255, 0, 0)
    return Image.fromarray(rgb), Image.fromarray(ids)


def test_port_augmentation_keeps_the_aspect_ratio_and_the_mask_on_the_object() -> None:
    img, mask = square_picture()
    aug = samplers.PortAugmentation((120, 214), p=0.0, crop_any_size=True)  # every operation, every time
    random.seed(0)
    for _ in range(20):
        out, out_mask, ops = aug.apply(img, mask)
        assert out.size == (214, 120) and out_mask.size == (214, 120)
        assert sorted(o.split()[0] for o in ops) == ["crop", "flip", "zoom"]
        m = np.asarray(out_mask) == 1
        rows, cols = np.nonzero(m)
        height, width = np.ptp(rows) + 1, np.ptp(cols) + 1
        assert abs(width / height - 1) < 0.1, (ops, width, height)  # a square stays a square
        rgb = np.asarray(out).astype(int)
        red = (rgb[..., 0] > 180) & (rgb[..., 1] < 80)
        assert (red == m).mean() > 0.99 and (red & m).sum() / m.sum() > 0.9, ops  # the mask stays on the object


def test_port_crop_rule_spares_frames_not_larger_than_the_output() -> None:
    img, mask = square_picture(120, 214)
    random.seed(0)
    port = samplers.PortAugmentation((120, 214), p=0.0)
    assert all("crop" not in " ".join(port.apply(img, mask)[2]) for _ in range(10))
    bigger = samplers.PortAugmentation((100, 178), p=0.0)  # frame larger: crops of at least the output size
    for _ in range(10):
        share = float(next(o for o in bigger.apply(img, mask)[2] if o.startswith("crop")).split()[1])
        assert max(0.85, 100 / 120) - 0.005 <= share <= 0.95
