"""What a hostile but fair user tries, through run.py: planted pickles, stale zips, bad checkpoints, unwritable or
full output places, Ctrl+C, leftovers of killed saves. Each gets one clear line and exit 2 (130 for Ctrl+C), and
nothing already written is lost."""

from __future__ import annotations

import errno
import pickle
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import DAVIS2016_SAMPLE, GOLDEN_WEIGHTS
from PIL import Image

import dataset
import run
from core import methods, segmenter
from training import trainer

TRAIN = ["--train", "--device", "cpu", "--davis", str(DAVIS2016_SAMPLE), "--davis-year", "2016", "--stages", "davis",
         "--crop", "32", "32", "--clip-len", "2", "--batch-size", "2", "--clips-per-epoch", "2", "--epochs", "1",
         "--workers", "0", "--val-every", "0"]


def _test(tmp_path: Path, *extra: str) -> int:
    return run.main(["--test", "--device", "cpu", "--weights", str(GOLDEN_WEIGHTS), "--output", str(tmp_path / "out"),
                     *extra])


class Planted:
    """Unpickling this runs code: it creates the file `marker`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (Path.touch, (self.marker,))


def test_a_planted_pickle_in_the_imagenet_cache_never_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture) -> None:
    cache = tmp_path / "torch_home" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    marker = tmp_path / "pwned"
    with open(cache / "densenet121-a639ec97.pth", "wb") as f:  # the file name torchvision looks for
        pickle.dump(Planted(marker), f)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    assert run.main([*TRAIN, "--save-dir", str(tmp_path / "ckpt")]) == 2  # without --no-pretrained
    assert not marker.exists()
    err = capsys.readouterr().err
    assert "densenet121-a639ec97.pth" in err and "--no-pretrained" in err


def test_the_zip_holds_only_what_this_run_wrote(tmp_path: Path, ytvos_root: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dataset, "TEST_SHORT_SIDE", 48)
    assert _test(tmp_path, "--data", "YTVOS18_val", "--ytvos", str(ytvos_root)) == 0
    assert _test(tmp_path, "--data", "YTVOS18_val", "--ytvos", str(ytvos_root), "--sequences", "vid_a",
                 "--visualize") == 0
    with zipfile.ZipFile(tmp_path / "out" / "YTVOS18_val.zip") as z:
        names = sorted(z.namelist())
    assert names == ["Annotations/vid_a/00000.png", "Annotations/vid_a/00005.png"]  # not vid_b of the first run
    assert (tmp_path / "out" / "visualize" / "YTVOS18_val" / "vid_a" / "overlay.mp4").is_file()
    assert not list((tmp_path / "out").glob(".*.tmp"))


def _bad_files(tmp_path: Path) -> dict[str, Path]:
    real = tmp_path / "real.pth"
    torch.save(torch.load(GOLDEN_WEIGHTS, weights_only=True), real)
    files = {"empty": b"", "truncated": real.read_bytes()[: real.stat().st_size // 2], "random": bytes(range(256)) * 64}
    out = {}
    for kind, data in files.items():
        out[kind] = tmp_path / f"{kind}.pth"
        out[kind].write_bytes(data)
    for kind, obj in {"tensor": torch.zeros(3), "list": [1, 2, 3],
                      "another_model": torch.nn.Linear(2, 2).state_dict(),
                      "bad_config": {"model": {}, "method": "emvos", "config": {"encoder": "alexnet"}}}.items():
        out[kind] = tmp_path / f"{kind}.pth"
        torch.save(obj, out[kind])
    return out


@pytest.mark.parametrize("flag", ["--weights", "--resume"])
def test_bad_checkpoints_are_one_line_and_exit_2(tmp_path: Path, flag: str, capsys: pytest.CaptureFixture) -> None:
    for kind, path in _bad_files(tmp_path).items():
        if flag == "--weights":
            code = run.main(["--test", "--device", "cpu", "--weights", str(path), "--output", str(tmp_path / "o"),
                             "--data", "sample"])
        else:
            state = path.with_name(path.stem + ".train.pth")  # --resume X.pth reads X.train.pth
            path.rename(state)
            code = run.main([*TRAIN, "--no-pretrained", "--resume", str(state)])
        err = capsys.readouterr().err
        assert code == 2, (kind, err)
        assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, (kind, err)
        assert path.stem in err, (kind, err)


def test_unwritable_places_fail_before_the_first_frame_or_step(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture) -> None:
    steps = []
    monkeypatch.setattr(segmenter.VideoSegmenter, "step", lambda *a, **k: steps.append(1))
    monkeypatch.setattr(trainer, "train_stage", lambda *a, **k: steps.append(1))
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder")
    assert run.main(["--test", "--device", "cpu", "--weights", str(GOLDEN_WEIGHTS), "--output", str(a_file),
                     "--data", "sample"]) == 2
    assert "--output" in capsys.readouterr().err
    assert run.main([*TRAIN, "--no-pretrained", "--save-dir", str(a_file / "ckpt")]) == 2
    assert "--save-dir" in capsys.readouterr().err
    assert steps == [] and a_file.read_text() == "not a folder"


def test_a_full_disk_mid_run_is_one_line_and_keeps_what_was_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                   capsys: pytest.CaptureFixture) -> None:
    save_mask = dataset.save_mask
    calls = []

    def full(path: Path, mask: object) -> None:
        calls.append(path)
        if len(calls) >= 3:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        save_mask(path, mask)

    monkeypatch.setattr(dataset, "save_mask", full)
    assert _test(tmp_path, "--data", "sample", "--sequences", "bear") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "No space left on device" in err and "Traceback" not in err
    written = sorted(p.name for p in (tmp_path / "out" / "sample" / "bear").iterdir())
    assert written == ["00000.png", "00001.png"]


def test_ctrl_c_during_test_says_what_was_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture) -> None:
    step = segmenter.VideoSegmenter.step
    calls = []

    def interrupted(self: segmenter.VideoSegmenter, *a: object, **k: object) -> object:
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return step(self, *a, **k)

    monkeypatch.setattr(segmenter.VideoSegmenter, "step", interrupted)
    assert _test(tmp_path, "--data", "sample", "--sequences", "bear") == 130
    err = capsys.readouterr().err
    assert "interrupted" in err and "Traceback" not in err and str(tmp_path / "out") in err
    written = sorted(p.name for p in (tmp_path / "out" / "sample" / "bear").iterdir())
    assert written == ["00000.png", "00001.png", "00002.png"]


def test_leftovers_of_killed_saves_are_removed_at_the_next_start(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture) -> None:
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    leftover = ckpt / ".coco_davis_0001.pth.k3j9x_2a.tmp"  # what utils.atomic_write leaves after kill -9
    leftover.write_bytes(b"\0" * 1024)
    keep = ckpt / "notes.txt"
    keep.write_text("mine")
    assert run.main([*TRAIN, "--no-pretrained", "--save-dir", str(ckpt)]) == 0
    assert not leftover.exists() and keep.read_text() == "mine"
    assert str(leftover) in capsys.readouterr().out
    net, meta = methods.load_weights(ckpt / "coco_davis_best.pth")
    assert meta["method"] == "emvos"


def _davis_copy(tmp_path: Path) -> Path:
    root = tmp_path / "DAVIS2016"
    shutil.copytree(DAVIS2016_SAMPLE, root)
    return root


@pytest.mark.parametrize("broken", ["all masks empty", "empty list", "a sequence without masks"])
def test_training_that_cannot_train_stops_before_the_first_step(tmp_path: Path, broken: str,
                                                                monkeypatch: pytest.MonkeyPatch,
                                                                capsys: pytest.CaptureFixture) -> None:
    root = _davis_copy(tmp_path)
    listing = root / "ImageSets" / "480p" / "train.txt"
    if broken == "all masks empty":
        for png in (root / "Annotations" / "480p").glob("*/*.png"):
            Image.fromarray(np.zeros((480, 854), np.uint8), "L").save(png)
    elif broken == "empty list":
        listing.write_text("")
    else:  # boat listed, but its annotation folder is gone
        shutil.rmtree(root / "Annotations" / "480p" / "boat")
    steps = []
    monkeypatch.setattr(trainer, "train_stage", lambda *a, **k: steps.append(1))
    argv = [a if a != str(DAVIS2016_SAMPLE) else str(root) for a in TRAIN]
    assert run.main([*argv, "--no-pretrained", "--save-dir", str(tmp_path / "ckpt")]) == 2
    err = capsys.readouterr().err
    assert steps == [] and str(root) in err and "Traceback" not in err, err
    assert not list(tmp_path.glob("ckpt/*.pth"))
