"""Training on the other benchmarks' training splits (MOSE, LVOS, SA-V), on a folder of one's own videos, and on
mixtures of datasets in one stage: tiny trees built from real frames (tests/train_trees.py), one epoch of each stage
through `run.py --train`, the up-front data checks, a mixed stage's exact resume, and a fine-tune from --init that
then segments its folder with `run.py --test --data generic`."""

from __future__ import annotations

import csv
import json
import math
import random
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import DAVIS2016_SAMPLE, save_mask, single_thread
from PIL import Image
from test_train import _interrupt_at
from train_trees import generic_tree, lvos_tree, mose_tree, rle, sample_frames, sav_tree

import run
from benchmarks import generic, lvos, mose, sav
from core import methods
from training import checkpoint, samplers, trainer
from utils import VOSInputError, read_mask

TINY = ["--device", "cpu", "--no-pretrained", "--crop", "32", "32", "--clip-len", "3", "--batch-size", "2",
        "--workers", "0", "--val-every", "0"]


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """One intra-op thread (conftest.single_thread): the steps are tiny, and the machine is shared."""
    with single_thread():
        yield


@pytest.fixture(scope="module")
def trees(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One tree per new layout, each its dataset's root flag's folder."""
    base = tmp_path_factory.mktemp("trees")
    return {"mose": mose_tree(base / "MOSE"), "lvos": lvos_tree(base / "LVOS"), "sav": sav_tree(base / "SAV"),
            "generic": generic_tree(base / "mine")}


def _log(save_dir: Path) -> list[dict]:
    with open(save_dir / "train_log.csv", newline="") as f:
        return list(csv.DictReader(f))


def _argv(stage: str, trees: dict[str, Path], save_dir: Path, *extra: str) -> list[str]:
    roots = [arg for name in stage.split("+") for arg in (
        ["--davis", str(DAVIS2016_SAMPLE), "--davis-year", "2016"] if name.split(":")[0] == "davis"
        else [f"--{name.split(':')[0]}", str(trees[name.split(':')[0]])])]
    return ["--train", *TINY, "--stages", stage, *roots, "--save-dir", str(save_dir), *extra]


# ---------------------------------------------------------------------------------------------------------------
# the readers
# ---------------------------------------------------------------------------------------------------------------

def test_readers_find_each_layouts_videos_and_annotated_frames(trees: dict[str, Path]) -> None:
    """Bugs: a reader listing the wrong folder or split (valid/ for MOSE), LVOS videos not taken from train_meta.json,
    a generic video's unannotated frames in its clips, a held-out video trained on."""
    m = mose.train_clips(trees["mose"], (32, 32), 3, 2)
    assert m.videos == ["bear", "boat"] and m.where == f"MOSE train at '{trees['mose']}'"
    assert [f.name for f in m.annotated_frames("bear")[0]] == [f"{t:05d}.jpg" for t in range(4)]
    lv = lvos.train_clips(trees["lvos"], (32, 32), 3, 2)
    assert lv.videos == ["bear", "boat"]
    assert [f.name for f in lv.annotated_frames("boat")[1]] == ["00000001.png", "00000006.png", "00000011.png",
                                                                "00000016.png"]
    g = generic.train_clips(trees["generic"], ["hockey"], (32, 32), 3, 2)
    assert g.videos == ["bear", "boat"]  # hockey is held out
    assert [f.name for f in g.annotated_frames("bear")[0]] == ["00000.jpg", "00002.jpg", "00003.jpg", "00004.jpg"]
    assert generic.train_clips(trees["generic"]).videos == ["bear", "boat", "hockey"]


def test_sav_reads_every_fourth_video_frame_and_rle_masklets(trees: dict[str, Path]) -> None:
    """SA-V: annotated frame k is video frame 4k, read from the mp4 (a seek, then reading on) and the same as reading
    the video from its start; masklets become ids in list order, an absent masklet no id. Bugs: frames off by the
    seek (a keyframe instead of the frame), every frame taken as annotated (k instead of 4k), objects merged."""
    data = sav.train_clips(trees["sav"], (32, 32), 3, 2)
    assert [v.name for v in data.videos] == ["sav_000001", "sav_000002"] and data.size == 2
    video = data.videos[0]
    sequential = sav.read_video_frames(video.mp4, 0, 8)
    assert sorted(sequential) == [0, 4, 8]
    sought = sav.read_video_frames(video.mp4, 4, 8)
    assert all(np.array_equal(sought[k], sequential[k]) for k in (4, 8))
    originals = sample_frames("bear", 9)
    for k in (0, 4, 8):  # mp4v is lossy: close to its own frame, far from the neighbours'
        near = (k, min(k + 1, 8), max(k - 1, 0))
        diffs = [np.abs(sequential[k].astype(float) - originals[t][0]).mean() for t in near]
        assert diffs[0] < 8 and (k == 8 or diffs[1] > diffs[0]) and (k == 0 or diffs[2] > diffs[0]), (k, diffs)
    masklet, height, width = sav.read_masklets(video)
    assert (height, width) == (120, 214) and len(masklet) == 3
    ids = sav.masklet_ids(video, masklet[0], height, width)
    assert set(np.unique(ids)) == {0, 1, 2} and (ids[:20, :30] == 2).all()
    assert np.array_equal(ids == 1, (originals[0][1] == 1) & ~((np.arange(120)[:, None] < 20)
                                                               & (np.arange(214)[None] < 30)))
    assert 2 not in sav.masklet_ids(video, masklet[1], height, width)
    random.seed(0)
    clip = data[0]
    assert clip["imgs"].shape == (3, 3, 32, 32) and clip["masks"].shape == (3, 32, 32)


def test_validation_gives_each_object_at_its_first_mask_only(tmp_path: Path) -> None:
    """The held-out videos validate with the first mask of each object given and the rest predicted. Bug: every mask
    of the folder handed to the model (the generic reader's test-time rule), which makes the score the labels' own."""
    root = generic_tree(tmp_path / "g", frames=5, annotated=(0, 1, 2, 3, 4))
    later = read_mask(root / "Annotations" / "hockey" / "00003.png")
    later[:10, :10] = 2  # a second object appears at frame 3
    save_mask(root / "Annotations" / "hockey" / "00003.png", later)
    (video,) = generic.validation_videos(root, ["hockey"])
    assert sorted(video.given_masks) == [0, 3]
    assert set(np.unique(video.load_mask(0))) == {0, 1}
    assert set(np.unique(video.load_mask(3))) == {0, 2}  # only the new object is given there
    assert len(video.frames) == 5 and video.output_names[-1] == "00004.png"


@pytest.mark.parametrize("names, message", [
    (["nope"], "unknown sequence.*nope.*--val-sequences"),
    (["bear", "boat", "hockey"], "holds out every video"),
])
def test_val_sequences_are_checked(trees: dict[str, Path], names: list[str], message: str) -> None:
    """Bugs: a misspelt held-out video silently trained on (and nothing validated), or a run with nothing to train."""
    with pytest.raises(VOSInputError, match=message):
        generic.train_clips(trees["generic"], names)


def test_a_heldout_video_needs_three_masks(tmp_path: Path) -> None:
    """vos-benchmark scores the GT frames but the first and the last. Bug: a held-out video with two masks accepted,
    then every validation fails (nothing to score) after the first epoch."""
    root = generic_tree(tmp_path / "g", frames=3, annotated=(0, 2))
    with pytest.raises(VOSInputError, match=r"--val-sequences hockey: .* holds 2 mask\(s\)"):
        generic.train_clips(root, ["hockey"])


# ---------------------------------------------------------------------------------------------------------------
# one epoch of each stage
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("stage, save_name", [("mose", "coco_mose"), ("lvos", "coco_lvos"), ("sav", "coco_sav"),
                                              ("generic", "generic"), ("davis+mose", "coco_davis+mose")])
def test_one_epoch_of_each_new_stage_writes_a_checkpoint_that_test_loads(
        stage: str, save_name: str, trees: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Bugs: a stage that cannot open its layout, reads a root other than its flag's, writes no checkpoint or one
    that --test (methods.load_weights, what --weights reads) cannot build; a mixture not said in the log."""
    assert run.main(_argv(stage, trees, tmp_path, "--epochs", "1", "--clips-per-epoch", "2")) == 0
    names = sorted(p.name for p in tmp_path.glob("*.pth"))
    assert names == [f"{save_name}_0001.pth", f"{save_name}_0001.train.pth", f"{save_name}_best.pth"]
    net, meta = methods.load_weights(tmp_path / f"{save_name}_best.pth")
    assert meta["method"] == "emvos"
    (row,) = _log(tmp_path)
    assert row["stage"] == stage and math.isfinite(float(row["loss"]))
    state = torch.load(checkpoint.training_state_path(tmp_path / f"{save_name}_0001.pth"), weights_only=True)
    out = capsys.readouterr().out
    if "+" in stage:
        line = "mixture by their sizes: davis (3 videos, share 0.600), mose (2 videos, share 0.400)"
        assert line in out and state["data"] == line and state["stage_config"]["data"] == "davis+mose"
    else:
        assert "mixture" not in out and state["data"] is None


def test_videomatch_trains_on_a_new_stage(trees: dict[str, Path], tmp_path: Path) -> None:
    """Both methods have the stages. Bug: a stage added to EMVOS's table alone."""
    argv = _argv("lvos", trees, tmp_path, "--epochs", "1", "--clips-per-epoch", "2", "--clip-len", "2")
    assert run.main([*argv, "--method", "videomatch"]) == 0
    assert (tmp_path / "videomatch_lvos_best.pth").is_file()


# ---------------------------------------------------------------------------------------------------------------
# bad data: one line, before the first step
# ---------------------------------------------------------------------------------------------------------------

def _break(trees: dict[str, Path], tmp_path: Path, case: str) -> tuple[str, Path, Path, str]:
    """A copy of the tree of `case`'s stage with one thing broken: (stage, root, the file the line must name, a
    phrase it must hold)."""
    stage = case.split()[0]
    root = {"mose": mose_tree, "lvos": lvos_tree, "sav": sav_tree, "generic": generic_tree}[stage](tmp_path / stage)
    if case == "mose truncated frame":
        bad = root / "train" / "JPEGImages" / "boat" / "00003.jpg"
        bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])
        return stage, root, bad, ""
    if case == "mose video without object":
        for png in (root / "train" / "Annotations" / "boat").glob("*.png"):
            save_mask(png, np.zeros((120, 214), np.uint8))
        return stage, root, root / "train" / "Annotations" / "boat" / "00000.png", "video 'boat' has no object"
    if case == "lvos mask size":
        bad = root / "train" / "Annotations" / "bear" / "00000011.png"
        save_mask(bad, np.ones((120, 213), np.uint8))
        return stage, root, bad, "is 213x120 but its frame"
    if case == "lvos no meta":
        (root / "train" / "train_meta.json").unlink()
        return stage, root, root, "train/train_meta.json"
    if case == "sav truncated mp4":
        bad = root / "sav_train" / "sav_000" / "sav_000002.mp4"
        bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 3])
        return stage, root, bad, "does not decode"
    if case in ("sav rle size", "sav no object"):
        bad = root / "sav_train" / "sav_000" / "sav_000001_manual.json"
        data = json.loads(bad.read_text())
        if case == "sav rle size":
            data["masklet"][2][0] = rle(np.ones((120, 200), np.uint8))
        else:
            data["masklet"] = [[rle(np.zeros((120, 214), np.uint8))] for _ in data["masklet"]]
        bad.write_text(json.dumps(data))
        return stage, root, bad, "200x120 but the video is 214x120" if case == "sav rle size" else "no masklet"
    if case == "generic truncated mask":
        bad = root / "Annotations" / "boat" / "00002.png"
        bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])
        return stage, root, bad, ""
    raise AssertionError(case)


@pytest.mark.parametrize("case", ["mose truncated frame", "mose video without object", "lvos mask size",
                                  "lvos no meta", "sav truncated mp4", "sav rle size", "sav no object",
                                  "generic truncated mask"])
def test_bad_training_data_is_one_line_before_the_first_step(trees: dict[str, Path], tmp_path: Path, case: str,
                                                             monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture) -> None:
    """A corrupt frame, mask, video or json, a mask of another size, a video without any object, a missing meta
    json: one line naming the file (exit 2), before any step and before any checkpoint. Bugs: the file first read in
    a DataLoader worker mid-run (a traceback hours in), a size mismatch stretched silently, a video without an
    object trained on (its batches all skipped)."""
    stage, root, named, phrase = _break(trees, tmp_path, case)
    steps = []
    monkeypatch.setattr(trainer, "train_stage", lambda *a, **k: steps.append(1))
    argv = _argv(stage, {**trees, stage: root}, tmp_path / "out", "--epochs", "1", "--clips-per-epoch", "2")
    assert run.main(argv) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and str(named) in lines[0] and phrase in lines[0] and "Traceback" not in err, err
    assert steps == [] and not list((tmp_path / "out").glob("*.pth"))


# ---------------------------------------------------------------------------------------------------------------
# mixtures
# ---------------------------------------------------------------------------------------------------------------

class _Tagged(samplers.ClipSampler):
    """A dataset of `videos` videos whose clips are all `tag`."""

    def __init__(self, tag: int, videos: int) -> None:
        super().__init__((2, 2), 2, 8)
        self.tag, self.videos = tag, videos

    @property
    def size(self) -> int:
        return self.videos

    def check(self) -> None:
        pass

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"imgs": torch.full((2, 3, 2, 2), float(self.tag)), "masks": torch.zeros(2, 2, 2, dtype=torch.long)}


@pytest.mark.parametrize("weights, shares", [(None, [0.25, 0.75]), ([1.0, 1.0], [0.5, 0.5]), ([0.0, 2.0], [0, 1])])
def test_a_mixture_draws_by_size_or_by_its_weights(weights: list[float] | None, shares: list[float]) -> None:
    """Bugs: sizes ignored (each dataset drawn equally), the weights ignored or inverted, a draw outside Python's
    seeded generator (then --resume could not replay it)."""
    mix = samplers.MixedClips([("a", _Tagged(0, 1)), ("b", _Tagged(1, 3))], weights, 8)
    assert mix.shares == pytest.approx(shares) and len(mix) == 8
    random.seed(0)
    tags = [int(mix[0]["imgs"][0, 0, 0, 0]) for _ in range(4000)]
    assert np.mean(tags) == pytest.approx(shares[1], abs=0.025)
    random.seed(0)
    assert [int(mix[0]["imgs"][0, 0, 0, 0]) for _ in range(50)] == tags[:50]


@pytest.mark.parametrize("name", ["davis+davis", "davis:1+mose", "davis+nope", "davis:x+mose:1", "davis:0+mose:0",
                                  "davis:1", "davis:-1+mose:2"])
def test_a_malformed_mixture_is_refused(name: str, trees: dict[str, Path], tmp_path: Path,
                                        capsys: pytest.CaptureFixture) -> None:
    """Bugs: a typo or a half-weighted mixture trained as something else than asked."""
    assert run.main(["--train", *TINY, "--stages", name, "--save-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--stages" in err, err


def test_a_weighted_mixture_names_its_checkpoints_after_its_first_stage() -> None:
    emvos = methods.get("emvos")
    stage = methods.stage_preset(emvos, "davis:1+mose:3")
    assert (stage.name, stage.save_name, stage.data.name) == ("davis:1+mose:3", "coco_davis+mose", "davis+mose")
    assert stage.epochs == emvos.stages["davis"].epochs and stage.data.column == "val_jf"
    assert [d.name for d in stage.data.sources()] == ["davis", "mose"]


@pytest.mark.parametrize("workers", ["0", "2"])
def test_a_mixed_stage_resumes_exactly(trees: dict[str, Path], tmp_path: Path, workers: str,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The resume tests' pattern (tests/test_train.py) on a weighted mixture: a run stopped by Ctrl+C mid-epoch and
    resumed from its checkpoint ends with the same log and the same weights as the run never stopped. Bugs: the
    mixture's dataset draw outside the states the checkpoint restores, the weights not restored from the stage name
    the checkpoint records, a part's root lost from the resume command."""
    extra = ["--clips-per-epoch", "6", "--epochs", "2", "--save-every", "2", "--workers", workers]
    stage = "davis:1+mose:2"
    assert run.main(_argv(stage, trees, tmp_path / "a", *extra)) == 0
    with monkeypatch.context() as m:
        _interrupt_at(m, 4)
        assert run.main(_argv(stage, trees, tmp_path / "b", *extra)) == 130
    ckpt = tmp_path / "b" / "coco_davis+mose_interrupted.pth"
    state = torch.load(checkpoint.training_state_path(ckpt), weights_only=True)
    assert state["epoch"] == 1 and state["train_options"]["stages"] == [stage]
    assert run.main(["--train", "--device", "cpu", "--davis", str(DAVIS2016_SAMPLE), "--mose", str(trees["mose"]),
                     "--resume", str(ckpt)]) == 0
    a, b = _log(tmp_path / "a"), _log(tmp_path / "b")
    for row in a + b:
        row.pop("sec_per_iter")
    assert a == b and [r["stage"] for r in a] == [stage, stage]
    wa = torch.load(tmp_path / "a" / "coco_davis+mose_0002.pth", weights_only=True)
    wb = torch.load(tmp_path / "b" / "coco_davis+mose_0002.pth", weights_only=True)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_a_mixtures_missing_root_is_named(trees: dict[str, Path], tmp_path: Path,
                                          capsys: pytest.CaptureFixture) -> None:
    """Bug: only the first dataset's root checked, so the run fails later on the second."""
    argv = ["--train", *TINY, "--stages", "davis+lvos", "--davis", str(DAVIS2016_SAMPLE), "--lvos",
            str(tmp_path / "nowhere"), "--save-dir", str(tmp_path / "out")]
    assert run.main(argv) == 2
    err = capsys.readouterr().err
    assert "stage(s) davis+lvos train on lvos, but --lvos" in err and "does not exist" in err


# ---------------------------------------------------------------------------------------------------------------
# fine-tuning on one's own videos
# ---------------------------------------------------------------------------------------------------------------

def test_finetune_from_init_selects_on_heldout_videos_then_segments_the_folder(tmp_path: Path) -> None:
    """`run.py --train --stages generic --generic DIR --init CKPT --val-sequences V` then `run.py --test --data
    generic`: the fine-tune starts from the --init weights, validates on the held-out video by vos-benchmark's J&F
    (logged, a fraction), keeps its best, and that checkpoint segments the folder. Bugs: --init ignored, the
    held-out video not validated on (or trained on), a best checkpoint --test cannot run."""
    root = generic_tree(tmp_path / "mine", frames=3, annotated=(0, 1, 2))
    init_dir = tmp_path / "init"
    assert run.main(["--train", *TINY, "--stages", "generic", "--generic", str(root), "--epochs", "1",
                     "--clips-per-epoch", "2", "--save-dir", str(init_dir)]) == 0
    init = init_dir / "generic_best.pth"
    save = tmp_path / "ft"
    argv = ["--train", *[a for a in TINY if a != "--no-pretrained"], "--stages", "generic", "--generic", str(root),
            "--init", str(init), "--val-sequences", "hockey", "--epochs", "1", "--clips-per-epoch", "2",
            "--save-dir", str(save)]
    argv[argv.index("--val-every") + 1] = "1"
    opened = []
    original = generic.train_clips
    with pytest.MonkeyPatch.context() as m:
        m.setattr(generic, "train_clips", lambda *a, **k: opened.append(original(*a, **k)) or opened[-1])
        assert run.main(argv) == 0
    assert opened[0].videos == ["bear", "boat"]
    (row,) = _log(save)
    assert 0 <= float(row["val_heldout_jf"]) <= 1
    best = save / "generic_best.pth"
    start = torch.load(init, weights_only=True)
    after = torch.load(best, weights_only=True)
    moved = [k for k in start if not torch.equal(start[k], after[k])]
    # from --init: the frozen encoder is exactly the init file's, the rest moved by the step
    assert moved and all(not k.startswith("vos.encoder.") for k in moved)
    out = tmp_path / "seg"
    assert run.main(["--test", "--device", "cpu", "--weights", str(best), "--data", "generic", "--generic", str(root),
                     "--sequences", "hockey", "--output", str(out)]) == 0
    masks = sorted((out / "generic" / "hockey").glob("*.png"))
    assert [p.name for p in masks] == ["00000.png", "00001.png", "00002.png"]
    assert np.asarray(Image.open(masks[0])).shape == (120, 214)


def test_init_official_davis_is_resolved_as_weights_are(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture, trees: dict[str, Path]) -> None:
    """--init official-davis names the authors' file in trained_model/ (fetched when missing), as --weights does.
    Bug: the alias read as a path ('no such file official-davis')."""
    monkeypatch.setattr(methods, "TRAINED_MODEL", tmp_path / "trained_model")
    argv = _argv("generic", trees, tmp_path / "out", "--init", "official-davis", "--no-download")
    assert run.main(argv) == 2
    err = capsys.readouterr().err
    assert "official EMVOS weights" in err and str(tmp_path / "trained_model" / "coco_davis_best.pth") in err, err
