"""Data loss and silently wrong results at test time: outputs that would overwrite inputs, list names that escape
the output folder, two runs on one folder, black/white masks read under the DAVIS 2017 protocol, frames too large
for memory or for PIL, SIGTERM. Each is one line and exit 2 (143 for SIGTERM) before any frame, and nothing the user
has is touched.

The model is the cheap `Propagate` method of test_extend.py (its numbers do not matter here) on tiny frames."""

from __future__ import annotations

import errno
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import DAVIS2016_SAMPLE, GOLDEN_WEIGHTS, ROOT, save_mask, square_frame, write_jpeg
from PIL import Image
from test_extend import Propagate, propagate  # noqa: F401 (the fixture registers the method)

import dataset
import run
import utils
from benchmarks import davis
from core import methods, segmenter, weights
from core.framework import Runtime
from model import EMVOS
from training import samplers

H, W = 24, 32
LOCK = ".emvos.lock"  # utils.RunLock.NAME, spelt out so that the tests read the file a user would see


@pytest.fixture
def net(propagate: methods.Method, tmp_path: Path) -> Path:  # noqa: F811
    """A Propagate checkpoint: --test runs it like any registered method."""
    path = tmp_path / "propagate.pth"
    torch.save(methods.weights_payload(Propagate(), "propagate"), path)
    return path


def tiny_davis(root: Path, seqs: tuple[str, ...] = ("a", "b"), frames: int = 3, black_white: bool = False) -> Path:
    """A DAVIS-2017-layout tree of tiny frames; ImageSets/2017/val.txt and 2016/val.txt list `seqs`. black_white:
    masks are stored as grayscale 0/255, the DAVIS 2016 download's format."""
    for seq in seqs:
        for t in range(frames):
            rgb, ids = square_frame(H, W, t, [(1, (255, 0, 0))])
            write_jpeg(root / "JPEGImages" / "480p" / seq / f"{t:05d}.jpg", rgb)
            png = root / "Annotations" / "480p" / seq / f"{t:05d}.png"
            if black_white:
                png.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(ids * 255, "L").save(png)
            else:
                save_mask(png, ids)
    for year in ("2016", "2017"):
        (root / "ImageSets" / year).mkdir(parents=True, exist_ok=True)
        (root / "ImageSets" / year / "val.txt").write_text("".join(s + "\n" for s in seqs))
    return root


def _test(weights_path: Path, out: Path, *extra: str) -> int:
    return run.main(["--test", "--device", "cpu", "--weights", str(weights_path), "--output", str(out), *extra])


@pytest.fixture
def steps(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Records every model step, so a test can assert that none ran."""
    done: list[int] = []
    step = segmenter.VideoSegmenter.step

    def counted(self: segmenter.VideoSegmenter, *a: object, **k: object) -> object:
        done.append(1)
        return step(self, *a, **k)

    monkeypatch.setattr(segmenter.VideoSegmenter, "step", counted)
    return done


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# --- 1. the output folder never holds or lies inside an input -------------------------------------------------------

@pytest.mark.parametrize("case", ["gt folder of --video", "parent of the frames", "inside the root",
                                  "symlink to the root", "folder a sequence links to"])
def test_an_output_that_would_overwrite_an_input_is_refused(case: str, net: Path, tmp_path: Path, steps: list[int],
                                                            capsys: pytest.CaptureFixture) -> None:
    """Bug: `--video DS/JPEGImages/480p/a --mask DS/Annotations/480p/a/00000.png --output DS/Annotations/480p` ran
    and rewrote the ground truth with predictions (and --output set to the folder above the frames overwrote PNG
    frames); symlinks hid the same overwrite."""
    ds = tiny_davis(tmp_path / "DS")
    elsewhere = tmp_path / "disk2"
    if case == "folder a sequence links to":  # b's annotations live on another disk
        (ds / "Annotations" / "480p" / "b").rename(elsewhere)
        (ds / "Annotations" / "480p" / "b").symlink_to(elsewhere)
    if case == "symlink to the root":
        (tmp_path / "link").symlink_to(ds)
    before = _snapshot(tmp_path)
    video = ("--video", str(ds / "JPEGImages/480p/a"), "--mask", str(ds / "Annotations/480p/a/00000.png"))
    data = ("--data", "DAVIS17_val", "--davis", str(ds))
    args = {"gt folder of --video": (ds / "Annotations/480p", *video),
            "parent of the frames": (ds / "JPEGImages/480p", *video),
            "inside the root": (ds / "results", *data),
            "symlink to the root": (tmp_path / "link", *data),
            "folder a sequence links to": (elsewhere, *data)}[case]
    assert _test(net, *args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --output") and err.count("\n") == 1 and "input" in err, err
    assert steps == [] and _snapshot(tmp_path) == before  # not one file written, moved or removed


def test_an_output_beside_the_inputs_runs(net: Path, tmp_path: Path) -> None:
    """Bug: the check refused outputs that merely share a parent folder with the data (prefix match on strings:
    'DS-out' starts with 'DS')."""
    ds = tiny_davis(tmp_path / "DS")
    assert _test(net, tmp_path / "DS-out", "--data", "DAVIS17_val", "--davis", str(ds)) == 0
    assert sorted(p.name for p in (tmp_path / "DS-out" / "DAVIS17_val" / "a").glob("*.png")) == [
        "00000.png", "00001.png", "00002.png"]


# --- 4. names read from lists, meta.json and folders are plain names ------------------------------------------------

def _frames_and_masks(folder: Path) -> None:
    """Frames and their masks in one folder: where an escaping list name points in the tests below."""
    for t in range(3):
        rgb, ids = square_frame(H, W, t, [(1, (255, 0, 0))])
        write_jpeg(folder / f"{t:05d}.jpg", rgb)
        save_mask(folder / f"{t:05d}.png", ids)


@pytest.mark.parametrize("name", ["../../../esc/frames", "ABSOLUTE", "a/b", "..", "a\\b"])
def test_a_sequence_name_that_escapes_the_output_is_refused(name: str, net: Path, tmp_path: Path, steps: list[int],
                                                            capsys: pytest.CaptureFixture) -> None:
    """Bug: a sequence named '../../../esc/frames' in ImageSets/2017/val.txt wrote masks outside --output, and an
    absolute name overwrote the files at that path."""
    ds = tiny_davis(tmp_path / "DS")
    if name == "ABSOLUTE":
        name = str(tmp_path / "abs")
        _frames_and_masks(tmp_path / "abs")  # the unchecked reader ran it and wrote its masks over these
    elif name.startswith(".."):
        _frames_and_masks(tmp_path / "esc" / "frames")  # DS/JPEGImages/480p/../../../esc/frames
    elif name == "a/b":
        _frames_and_masks(ds / "JPEGImages" / "480p" / "a" / "b")
    before = _snapshot(tmp_path)
    (ds / "ImageSets" / "2017" / "val.txt").write_text(f"a\n{name}\n")
    assert _test(net, tmp_path / "x" / "y" / "out", "--data", "DAVIS17_val", "--davis", str(ds)) == 2
    err = capsys.readouterr().err
    assert str(ds / "ImageSets" / "2017" / "val.txt") in err and repr(name) in err and err.count("\n") == 1, err
    assert "not a plain folder name" in err
    (ds / "ImageSets" / "2017" / "val.txt").write_text("a\nb\n")
    assert steps == [] and not (tmp_path / "x").exists() and _snapshot(tmp_path) == before


def test_every_reader_checks_the_names_it_reads(tmp_path: Path, ytvos_train_root: Path) -> None:
    """Bug: a reader other than the DAVIS 2017 lists (the DAVIS 2016 listing, YouTube-VOS train's meta.json) took
    a name with '..' as a video."""
    assert dataset.plain_name("bike-packing", "x") == "bike-packing"
    for bad in ("", ".", "..", "a/b", "/a", "a\\b", "a\0b"):
        with pytest.raises(utils.VOSInputError, match="x.txt"):
            dataset.plain_name(bad, "x.txt")
    listed = tmp_path / "D16"
    (listed / "ImageSets" / "480p").mkdir(parents=True)
    (listed / "JPEGImages" / "480p").mkdir(parents=True)
    line = "/JPEGImages/480p/a/../00000.jpg /Annotations/480p/a/../00000.png\n"  # the sequence '..'
    (listed / "ImageSets" / "480p" / "val.txt").write_text(line)
    with pytest.raises(utils.VOSInputError, match="val.txt"):
        davis.DAVIS(listed, "2016", "val")
    meta = ytvos_train_root / "train" / "meta.json"
    meta.write_text(json.dumps({"videos": {"objs": {}, "../grad": {}}}))
    with pytest.raises(utils.VOSInputError, match="meta.json"):
        samplers.TrainYTVOS(ytvos_train_root, (32, 32), 2, 2)


# --- 5. one run per output folder and per save folder --------------------------------------------------------------

def _lock(folder: Path, pid: int, command: str = "python run.py --test") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK
    path.write_text(f"{pid}\n{socket.gethostname()}\n{command}\n")
    return path


def _gone_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


@pytest.fixture
def live_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield p.pid
    p.kill()
    p.wait()


def test_a_second_run_on_one_output_is_refused_and_names_the_first(net: Path, tmp_path: Path, live_pid: int,
                                                                   frame_folder: tuple[Path, Path], steps: list[int],
                                                                   capsys: pytest.CaptureFixture) -> None:
    """Bug: two runs on one --output wrote and scored each other's masks; nothing stopped the second."""
    frames, mask = frame_folder
    lock = _lock(tmp_path / "out", live_pid, "python run.py --test --data DAVIS17_val")
    assert _test(net, tmp_path / "out", "--video", str(frames), "--mask", str(mask)) == 2
    err = capsys.readouterr().err
    assert f"process {live_pid}" in err and "--data DAVIS17_val" in err and err.count("\n") == 1, err
    assert steps == [] and lock.read_text().startswith(f"{live_pid}\n")  # the first run's lock stays
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [LOCK]


def test_the_lock_is_held_while_running_and_removed_at_exit_also_on_ctrl_c(net: Path, tmp_path: Path,
                                                                           frame_folder: tuple[Path, Path],
                                                                           monkeypatch: pytest.MonkeyPatch,
                                                                           capsys: pytest.CaptureFixture) -> None:
    """Bug: the lock was not taken during the run, or stayed behind after it (every later run refused), in
    particular after Ctrl+C; a stale lock (its process gone) blocked the folder for good."""
    frames, mask = frame_folder
    out = tmp_path / "out"
    seen: list[str] = []
    step = segmenter.VideoSegmenter.step

    def watch(self: segmenter.VideoSegmenter, *a: object, **k: object) -> object:
        seen.append((out / LOCK).read_text().split("\n")[0])
        if len(seen) == 3 and interrupt:
            raise KeyboardInterrupt
        return step(self, *a, **k)

    monkeypatch.setattr(segmenter.VideoSegmenter, "step", watch)
    _lock(out, _gone_pid())
    interrupt = False
    assert _test(net, out, "--video", str(frames), "--mask", str(mask)) == 0
    assert "taking over" in capsys.readouterr().out
    assert seen == [str(os.getpid())] * 4 and not (out / LOCK).exists()
    seen.clear()
    interrupt = True
    assert _test(net, out, "--video", str(frames), "--mask", str(mask)) == 130
    assert len(seen) == 3 and not (out / LOCK).exists()


def test_a_failed_run_leaves_no_empty_output_folders(net: Path, tmp_path: Path, frame_folder: tuple[Path, Path]
                                                     ) -> None:
    """Bug: a run that failed before writing anything (here: a missing checkpoint) left the empty --output folders
    it had created."""
    frames, mask = frame_folder
    out = tmp_path / "new" / "out"
    assert _test(tmp_path / "missing.pth", out, "--video", str(frames), "--mask", str(mask)) == 2
    assert not (tmp_path / "new").exists()


TRAIN = ["--train", "--method", "propagate", "--device", "cpu", "--davis", str(DAVIS2016_SAMPLE), "--davis-year",
         "2016", "--workers", "0"]


def test_a_second_training_on_one_save_dir_is_refused_and_keeps_its_temporaries(
        propagate: methods.Method, tmp_path: Path, live_pid: int, capsys: pytest.CaptureFixture) -> None:  # noqa: F811
    """Bug: a second --train on a running one's --save-dir started, and its start-up clean-up deleted the `.tmp` of
    the first's save in progress (killing that save)."""
    ckpt = tmp_path / "ckpt"
    running = ckpt / f".propagate_davis_0001.pth.pid{live_pid}.k3j9x_2a.tmp"
    _lock(ckpt, live_pid, "python run.py --train")
    running.write_bytes(b"half a save")
    assert run.main([*TRAIN, "--save-dir", str(ckpt)]) == 2
    err = capsys.readouterr().err
    assert "--save-dir" in err and f"process {live_pid}" in err and err.count("\n") == 1, err
    assert not list(ckpt.glob("*.pth")) and running.read_bytes() == b"half a save"
    # the first run is gone: its lock is taken over and its dead temporary removed, a live process's kept
    (ckpt / LOCK).write_text(f"{_gone_pid()}\n{socket.gethostname()}\nx\n")
    dead = ckpt / f".propagate_davis_0001.pth.pid{_gone_pid()}.k3j9x_2a.tmp"
    dead.write_bytes(b"killed")
    assert run.main([*TRAIN, "--save-dir", str(ckpt)]) == 0
    assert (ckpt / "propagate_davis_best.pth").is_file() and not dead.exists() and running.exists()
    assert not (ckpt / LOCK).exists()


def test_temporaries_name_their_writer(tmp_path: Path) -> None:
    """Bug: atomic_write's temporary did not carry its writer's pid, so clean-up could not tell a live save's file
    from a killed one's."""
    names: list[str] = []
    utils.atomic_write(tmp_path / "x.pth", lambda f: names.extend(os.listdir(tmp_path)))
    assert len(names) == 1 and f".pid{os.getpid()}." in names[0] and utils.RunLock.NAME == LOCK
    assert weights.clean_stale_temporaries(tmp_path) == []
    live = tmp_path / names[0]
    live.write_bytes(b"mine")  # this process runs: the file is kept
    assert weights.clean_stale_temporaries(tmp_path) == [] and live.exists()


# --- 9. the mask convention is decided per root before any frame ----------------------------------------------------

def test_black_white_masks_in_a_2017_root_are_refused_before_any_frame(net: Path, tmp_path: Path, steps: list[int],
                                                                      capsys: pytest.CaptureFixture) -> None:
    """Bug: grayscale 0/255 ground truth in a DAVIS-2017-layout root was segmented as object 1, and only after the
    whole run did the scorer find 0 objects (255 is void in DAVIS 2017)."""
    ds = tiny_davis(tmp_path / "DS", black_white=True)
    assert _test(net, tmp_path / "out", "--data", "DAVIS17_val", "--davis", str(ds)) == 2
    err = capsys.readouterr().err
    assert "00000.png" in err and "DAVIS16_val" in err and err.count("\n") == 1, err
    assert steps == []
    # DAVIS 2016 merges the objects (masks != 0): the same root is read and scored correctly there
    assert _test(net, tmp_path / "out", "--data", "DAVIS16_val", "--davis", str(ds)) == 0
    jf = re.search(r"DAVIS16_val: J&F (\d\.\d+)", capsys.readouterr().out)
    assert jf and float(jf.group(1)) > 0.5  # the first mask, propagated, against a square moving 1 px per frame


# --- 11. a frame too large for memory -------------------------------------------------------------------------------

def _big_video(tmp_path: Path) -> dataset.VideoReader:
    frame = write_jpeg(tmp_path / "big" / "00000.jpg", np.zeros((3000, 4000, 3), np.uint8))
    ids = np.zeros((3000, 4000), np.uint8)
    ids[100:130, 100:130] = 1  # about 23 pixels at 480p, below 1000: the official rule keeps 4000x3000
    save_mask(tmp_path / "big.png", ids)
    return dataset.VideoReader("big", [frame], {0: tmp_path / "big.png"}, ["00000.png"])


def test_a_frame_whose_matching_cannot_fit_is_refused_up_front(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                               ) -> None:
    """Bug: a 4000x3000 frame with a 30x30 object ran at full size (the official rule) and asked for ~8.8 GB per
    similarity matrix in matching.key_products, an out-of-memory kill instead of a message; the estimate must be
    the real size (not stride-free or per-object)."""
    model = EMVOS()
    assert 2 * 8.8e9 < model.frame_bytes(3000, 4000) < 2 * 8.9e9  # two (250*188)^2 float32 matrices
    video = _big_video(tmp_path)
    assert video.run_size == (3000, 4000)
    monkeypatch.setattr(segmenter, "available_memory", lambda device: 4 * 2**30)
    for budget, refused in (("auto", True), (2**30, True), (64 * 2**30, False), (None, False)):
        settings = segmenter.RunSettings(torch.device("cpu"), runtime=Runtime(memory_budget=budget))
        if refused:
            with pytest.raises(utils.VOSInputError, match=r"4000x3000.*16\.5 GiB.*--max-memory"):
                segmenter.check_frame_memory(model, video, settings)
        else:
            segmenter.check_frame_memory(model, video, settings)


def test_run_py_refuses_the_frame_before_the_first_step(tmp_path: Path, steps: list[int],
                                                        capsys: pytest.CaptureFixture) -> None:
    """Bug: the driver did not ask the model's estimate before the first frame (the refusal came from inside the
    model, or never)."""
    video = _big_video(tmp_path)
    assert _test(GOLDEN_WEIGHTS, tmp_path / "out", "--video", str(video.frames[0].parent), "--mask",
                 str(video.given_masks[0]), "--max-memory", "1G") == 2
    err = capsys.readouterr().err
    assert "4000x3000" in err and "--max-memory" in err and err.count("\n") == 1, err
    assert steps == [] and not (tmp_path / "out").exists()


# --- 12. images above PIL's decompression-bomb limit ----------------------------------------------------------------

def test_an_image_above_pils_limit_is_one_line(net: Path, frame_folder: tuple[Path, Path], tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """Bug: a 14000x14000 PNG raised PIL.Image.DecompressionBombError, a traceback instead of a line naming the
    file (here the limit is lowered so that 32x24 frames exceed it)."""
    frames, mask = frame_folder
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # PIL refuses above twice this: 200 < 32 * 24
    for read in (utils.read_frame, utils.read_mask):
        with pytest.raises(utils.VOSInputError, match=r"mask\.png.* 200 pixels"):
            read(mask)
    assert _test(net, tmp_path / "out", "--video", str(frames), "--mask", str(mask)) == 2
    err = capsys.readouterr().err
    assert "mask.png" in err and "Traceback" not in err and err.count("\n") == 1, err


# --- SIGTERM during --test -----------------------------------------------------------------------------------------

SLOW_RUN = """
import sys, time
sys.path[:0] = [{root!r}, {tests!r}]
import run
from core import methods
from test_extend import Propagate, PropagateConfig
from videomatch import bce_loss
predict = Propagate.predict
Propagate.predict = lambda self, *a, **k: (time.sleep(0.05), predict(self, *a, **k))[1]
methods.register(methods.Method("propagate", Propagate, PropagateConfig, "x.pth", {{}}, (), {{"bce": bce_loss}},
                                "bce"))
sys.exit(run.main(sys.argv[1:]))
"""


def test_sigterm_during_test_stops_like_ctrl_c(net: Path, tmp_path: Path) -> None:
    """Bug: SIGTERM (kill, a scheduler's stop) killed --test with no message and left the output folder locked;
    it must unwind as Ctrl+C does (exit 143, one line, the lock removed, every written mask whole)."""
    frames = tmp_path / "many"
    for t in range(400):
        rgb, ids = square_frame(H, W, t % 8, [(1, (255, 0, 0))])
        write_jpeg(frames / f"{t:05d}.jpg", rgb)
        if t == 0:
            save_mask(tmp_path / "m.png", ids)
    out = tmp_path / "out"
    script = SLOW_RUN.format(root=str(ROOT), tests=str(ROOT / "tests"))
    proc = subprocess.Popen([sys.executable, "-c", script, "--test", "--device", "cpu", "--weights", str(net),
                             "--video", str(frames), "--mask", str(tmp_path / "m.png"), "--output", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not list(out.glob("many/*.png")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert "interrupted" in err and str(out) in err and "Traceback" not in err and err.strip().count("\n") == 0, err
    written = sorted(out.glob("many/*.png"))
    assert 0 < len(written) < 400 and not (out / LOCK).exists()
    for png in written:
        utils.read_mask(png)  # whole files only


# --- newcomer items ------------------------------------------------------------------------------------------------

def test_visualize_says_where_and_one_video_is_singular(net: Path, tmp_path: Path, frame_folder: tuple[Path, Path],
                                                        capsys: pytest.CaptureFixture) -> None:
    """Bug: --visualize never printed where the overlay and the figures went; the summary said '1 videos'."""
    frames, mask = frame_folder
    assert _test(net, tmp_path / "out", "--video", str(frames), "--mask", str(mask), "--visualize") == 0
    out = capsys.readouterr().out
    assert f"in {tmp_path / 'out' / 'visualize' / 'video'}" in out and "video: 1 video, 4 frames" in out, out
    assert (tmp_path / "out" / "visualize" / "video" / "frames" / "overlay.mp4").is_file()
    assert sorted(p.name for p in (tmp_path / "out" / "frames").iterdir()) == [
        "frame1.png", "frame10.png", "frame11.png", "frame2.png"]


def test_a_full_disk_names_the_file(net: Path, tmp_path: Path, frame_folder: tuple[Path, Path],
                                    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """Bug: ENOSPC from writing through a file object carries no file name: 'could not write : No space left'."""
    frames, mask = frame_folder

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(utils.os, "fsync", full)
    assert _test(net, tmp_path / "out", "--video", str(frames), "--mask", str(mask)) == 2
    err = capsys.readouterr().err
    assert f"could not write {tmp_path / 'out' / 'frames' / 'frame1.png'}: No space left" in err, err
    assert not (tmp_path / "out").exists()  # the run created it and wrote nothing: no empty folders stay


def test_train_davis_given_a_file_says_it_is_not_a_folder(propagate: methods.Method, tmp_path: Path,  # noqa: F811
                                                          capsys: pytest.CaptureFixture) -> None:
    """Bug: `--train --davis FILE` said the file 'does not exist'."""
    a_file = tmp_path / "davis.zip"
    a_file.write_bytes(b"PK")
    argv = [a if a != str(DAVIS2016_SAMPLE) else str(a_file) for a in TRAIN]
    assert run.main([*argv, "--save-dir", str(tmp_path / "ckpt")]) == 2
    err = capsys.readouterr().err
    assert f"'{a_file}' is a file, not a folder" in err and "does not exist" not in err, err
