"""Hostile or unlucky weight files and the messages around them: the authors' checkpoint is never overwritten and is
checked when named, NaN weights and configs that contradict their tensors are refused on load, download and pickle
refusals are short and name what turned them off, and the method of a file is read from it."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import socket
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import DAVIS2016_SAMPLE, GOLDEN_WEIGHTS
from PIL import Image

import run
import utils
from core import inference, methods, weights
from training import trainer
from utils import VOSInputError

DAVIS = "coco_davis_best.pth"
TRAIN = ["--train", "--device", "cpu", "--no-pretrained", "--davis", str(DAVIS2016_SAMPLE), "--davis-year", "2016",
         "--stages", "davis", "--crop", "32", "32", "--clip-len", "2", "--batch-size", "2", "--clips-per-epoch", "2",
         "--workers", "0", "--val-every", "0"]


@pytest.fixture(autouse=True)
def downloads_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    """The caller's environment must not decide whether a test downloads."""
    monkeypatch.delenv(weights.DOWNLOAD_ENV, raising=False)


@pytest.fixture(autouse=True)
def small_frames(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(inference, "TEST_SHORT_SIDE", 120)  # a quarter of 480p: what is tested is the refusal


def _golden() -> dict[str, torch.Tensor]:
    return torch.load(GOLDEN_WEIGHTS, map_location="cpu", weights_only=True)


def _test(tmp_path: Path, weights_path: Path | str, *extra: str) -> int:
    return run.main(["--test", "--device", "cpu", "--weights", str(weights_path), "--output", str(tmp_path / "out"),
                     "--data", "sample", "--sequences", "bear", *extra])


def _closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/trained_model"


# ----------------------------------------------------------------------------------------------------------------------
# The authors' checkpoint is never overwritten, and is what official-davis loads
# ----------------------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """One tiny epoch of the davis stage into a --save-dir that already holds the official coco_davis_best.pth."""
    save_dir = tmp_path_factory.mktemp("save_dir")
    official = save_dir / DAVIS
    official.write_bytes(b"the authors' released weights")
    out = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(out):
        mp.setitem(weights.OFFICIAL_BLOB_IDS, DAVIS, weights.git_blob_id(official))
        code = run.main([*TRAIN, "--epochs", "1", "--save-dir", str(save_dir)])
    return SimpleNamespace(dir=save_dir, code=code, stdout=out.getvalue(), official=b"the authors' released weights")


def test_training_never_overwrites_the_official_checkpoint(trained: SimpleNamespace) -> None:
    """Catches the trainer's save writing <save_name>_best.pth over the fetched official file (the default
    --save-dir is trained_model/, where official-davis lives)."""
    assert trained.code == 0
    assert (trained.dir / DAVIS).read_bytes() == trained.official
    mine = trained.dir / "coco_davis_best.retrained.pth"
    net, meta = methods.load_weights(mine)  # the trained weights went beside it, whole
    assert meta["method"] == "emvos"
    assert f"writing {mine} instead of overwriting it" in trained.stdout


def test_safe_destination_goes_by_content_not_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture) -> None:
    """Catches a check by file name only (a renamed official file would be overwritten) and a redirect onto a second
    copy of the official file."""
    official = tmp_path / "renamed.pth"
    official.write_bytes(b"official bytes")
    monkeypatch.setitem(weights.OFFICIAL_BLOB_IDS, DAVIS, weights.git_blob_id(official))
    shutil.copy(official, tmp_path / "renamed.retrained.pth")
    assert weights.safe_destination(official) == tmp_path / "renamed.retrained2.pth"
    assert capsys.readouterr().out.count("\n") == 1  # one line says where the weights go instead
    mine = tmp_path / "mine.pth"
    mine.write_bytes(b"my own weights")
    assert weights.safe_destination(mine) == mine  # a user's own file is overwritten as before: training's own output
    assert weights.safe_destination(tmp_path / "absent.pth") == tmp_path / "absent.pth"


def test_official_alias_checks_the_file_it_names(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Catches official-davis loading whatever file sits in trained_model/ under the official name (a retrained one,
    a damaged copy): the numbers it produces would be reported as the authors'."""
    folder = tmp_path / "trained_model"
    folder.mkdir()
    shutil.copy(GOLDEN_WEIGHTS, folder / DAVIS)  # real, loadable weights, but not the released ones
    monkeypatch.setattr(run, "TRAINED_MODEL", folder)
    assert _test(tmp_path, "official-davis") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(folder / DAVIS) in err and "blob id" in err and "move it away" in err
    assert not (tmp_path / "out" / "sample").exists()  # refused before any frame


def test_official_blob_id_is_hashed_once_per_file_version(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Catches hashing the 100 MB file on every resolve (slow) and a cache that misses a file replaced in place."""
    path = tmp_path / DAVIS
    path.write_bytes(b"official bytes")
    monkeypatch.setitem(weights.OFFICIAL_BLOB_IDS, DAVIS, weights.git_blob_id(path))
    calls = []
    real = weights.git_blob_id
    monkeypatch.setattr(weights, "git_blob_id", lambda p: calls.append(p) or real(p))
    for _ in range(3):
        assert weights.resolve_weights("official-davis", tmp_path) == path
    assert len(calls) == 1
    path.write_bytes(b"changed bytes!")  # same size, new contents and mtime
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    with pytest.raises(VOSInputError, match="blob id"):
        weights.resolve_weights("official-davis", tmp_path)


# ----------------------------------------------------------------------------------------------------------------------
# Weights that cannot be right are refused on load
# ----------------------------------------------------------------------------------------------------------------------

POISONED = "vos.decoder.blend1.conv.weight"


def _poison(state: dict[str, torch.Tensor], value: float) -> dict[str, torch.Tensor]:
    state = dict(state)
    state[POISONED] = state[POISONED].clone()
    state[POISONED].view(-1)[7] = value
    return state


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused_for_test(tmp_path: Path, value: float, capsys: pytest.CaptureFixture) -> None:
    """Catches NaN/inf weights being loaded: every frame comes out background and the run still exits 0."""
    path = tmp_path / "diverged.pth"
    torch.save(_poison(_golden(), value), path)
    assert _test(tmp_path, path) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(path) in err and POISONED in err
    assert not (tmp_path / "out" / "sample").exists()


def test_non_finite_weights_are_refused_for_init(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Catches --init starting a training run from NaN weights (every step then stops on a NaN loss)."""
    path = tmp_path / "diverged.pth"
    torch.save(_poison(_golden(), float("nan")), path)
    assert run.main([*TRAIN, "--epochs", "1", "--init", str(path), "--save-dir", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert POISONED in err and str(path) in err
    assert not list((tmp_path / "s").glob("*.pth"))


def test_non_finite_weights_are_refused_for_resume(trained: SimpleNamespace, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture) -> None:
    """Catches --resume restoring NaN weights from a damaged training state."""
    state = torch.load(trained.dir / "coco_davis_0001.train.pth", map_location="cpu", weights_only=True)
    state["weights"] = _poison(state["weights"], float("nan"))
    path = tmp_path / "coco_davis_0001.train.pth"
    torch.save(state, path)
    assert run.main([*TRAIN, "--epochs", "2", "--resume", str(path), "--save-dir", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert POISONED in err and str(path) in err


@pytest.mark.parametrize(("field", "value"), [("key_dim", -1), ("key_dim", 10**7), ("key_dim", 256),
                                              ("encoder", "resnet50")])
def test_config_that_contradicts_the_tensors_is_named(tmp_path: Path, field: str, value: object,
                                                      capsys: pytest.CaptureFixture) -> None:
    """Catches building the model from an edited config before comparing it with the tensors: key_dim 10**7 would
    allocate 40 GB first, -1 fails inside torch with no word of the file, 256 with a 600-character size mismatch."""
    path = tmp_path / "edited.pth"
    torch.save({"model": _golden(), "method": "emvos", "config": {field: value}}, path)
    assert _test(tmp_path, path) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(path) in err
    assert f"its config says {field}: {value!r}" in err and "has shape (" in err
    if field == "key_dim":
        assert "vos.matcher.conv1.conv.weight has shape (512, 1024, 1, 1)" in err


# ----------------------------------------------------------------------------------------------------------------------
# Messages
# ----------------------------------------------------------------------------------------------------------------------

def test_download_off_is_said_once_and_names_the_flag(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture) -> None:
    """Catches "downloading is off: downloading is off", and --no-download reported as EMVOS_NO_DOWNLOAD=1 (the
    flag used to set the variable): the user is told to unset a variable they never set."""
    monkeypatch.setattr(run, "TRAINED_MODEL", tmp_path / "trained_model")
    assert _test(tmp_path, "official-davis", "--no-download") == 2
    err = capsys.readouterr().err
    assert err.count("downloading is off") == 1 and "--no-download" in err and weights.DOWNLOAD_ENV not in err
    assert os.environ.get(weights.DOWNLOAD_ENV) is None  # the flag leaves the environment alone
    monkeypatch.setenv(weights.DOWNLOAD_ENV, "yes")
    assert _test(tmp_path, "official-davis") == 2
    err = capsys.readouterr().err
    assert err.count("downloading is off") == 1 and f"{weights.DOWNLOAD_ENV}=yes" in err and "--no-download" not in err


def test_failed_download_is_short_and_says_each_thing_once(tmp_path: Path) -> None:
    """Catches the 600-character message that gave the URL and the destination twice each."""
    base, folder = _closed_port_url(), tmp_path / "trained_model"
    with pytest.raises(weights.WeightsUnavailableError) as e:
        weights.resolve_weights("official-davis", folder, base_url=base, progress=False)
    msg = str(e.value)
    assert msg.count(f"{base}/{DAVIS}") == 1 and msg.count(str(folder)) == 1 and "by hand" in msg
    assert len(msg) - len(f"{base}/{DAVIS}") - len(str(folder / DAVIS)) < 200, msg  # the rest is short


class _Code:
    def __reduce__(self) -> tuple:
        return (os.getcwd, ())


def test_pickle_refusal_never_repeats_the_advice_to_unpickle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Catches torch's own advice (re-run with weights_only=False, allowlist with add_safe_globals) reaching the
    user: a filter keyed on one torch release's exact sentence lets the next release's wording through."""
    path = tmp_path / "code.pth"
    torch.save({"x": _Code()}, path)
    with pytest.raises(VOSInputError) as e:
        weights.load_file(path)
    msg = str(e.value)
    assert "getcwd" in msg and "NOT loaded" in msg
    assert "False" not in msg and "trusted source" not in msg and "safe_globals" not in msg
    # another release's wording of the same refusal
    future = ("Weights only load failed. This file can still be loaded: set weights_only=False in torch.load, "
              "only for files you trust.\nUnsupported global: GLOBAL os.system was not an allowed global by default. "
              "Please use `torch.serialization.add_safe_globals([os.system])` or the "
              "`torch.serialization.safe_globals([os.system])` context manager to allowlist this global.\n"
              "See https://pytorch.org/docs/stable/generated/torch.load.html.")

    def refuse(*args: object, **kwargs: object) -> None:
        raise __import__("pickle").UnpicklingError(future)

    monkeypatch.setattr(torch, "load", refuse)
    with pytest.raises(VOSInputError) as e:
        weights.load_file(path)
    msg = str(e.value)
    assert "GLOBAL os.system" in msg
    assert "weights_only=False" not in msg and "safe_globals" not in msg and "https://" not in msg


def test_mask_of_only_void_is_not_called_zeros(tmp_path: Path, frame_folder: tuple[Path, Path],
                                               capsys: pytest.CaptureFixture) -> None:
    """Catches "every pixel is 0" for a palette mask whose pixels are all 255 (DAVIS void, read as background)."""
    frames, mask = frame_folder
    void = Image.fromarray(np.full(np.asarray(Image.open(mask)).shape, 255, np.uint8), "P")
    void.putpalette(utils.DAVIS_PALETTE)
    void.save(mask)
    code = run.main(["--test", "--device", "cpu", "--weights", str(GOLDEN_WEIGHTS), "--video", str(frames), "--mask",
                     str(mask), "--output", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and str(mask) in err and "255" in err and "void" in err and "every pixel is 0" not in err


def test_vis_frame_past_the_video_is_refused_before_it_runs(tmp_path: Path, frame_folder: tuple[Path, Path],
                                                            capsys: pytest.CaptureFixture) -> None:
    """Catches --vis-frame beyond the last frame: the run ended with exit 0 and no probability figure."""
    frames, mask = frame_folder  # 4 frames: 0..3
    code = run.main(["--test", "--device", "cpu", "--weights", str(GOLDEN_WEIGHTS), "--video", str(frames), "--mask",
                     str(mask), "--output", str(tmp_path / "out"), "--visualize", "--vis-frame", "9"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "--vis-frame 9" in err and "0..3" in err
    assert not list((tmp_path / "out").rglob("*.png"))


@pytest.mark.parametrize("method", [[], ["--method", "videomatch"]])
def test_prob_maps_without_weights_says_none_are_published(tmp_path: Path, method: list[str],
                                                           monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture) -> None:
    """Catches --prob-maps fetching the EMVOS checkpoint only to refuse it, and advice that names EMVOS files
    (official-davis) or EMVOS training for a method that has no published weights."""
    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("nothing may be downloaded")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    monkeypatch.setattr(run, "TRAINED_MODEL", tmp_path / "trained_model")
    seq = run.SAMPLE_ROOT / "JPEGImages/480p/bear"
    code = run.main(["--prob-maps", str(seq / "00000.jpg"), str(run.SAMPLE_ROOT / "Annotations/480p/bear/00000.png"),
                     str(seq / "00003.jpg"), "--device", "cpu", "--output", str(tmp_path / "out"), *method])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "none are published" in err and "--train --method videomatch" in err and "official-davis" not in err


def test_resume_reads_the_method_from_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture) -> None:
    """Catches --train --resume of a VideoMatch state demanding --method videomatch, which the file records."""
    path = tmp_path / "videomatch_davis_interrupted.train.pth"
    torch.save({"weights": {"w": torch.zeros(1)}, "method": "videomatch", "config": {}, "optimizer": {},
                "stage": "davis", "epoch": 1, "rng": [], "train_options": {}}, path)
    seen = []

    class ReachedError(Exception):
        pass

    def spy(args: object, method: methods.Method, saved: dict | None = None) -> None:
        seen.append(method.name)
        raise ReachedError

    monkeypatch.setattr(trainer, "resolve_options", spy)
    with pytest.raises(ReachedError):
        run.main(["--train", "--resume", str(path)])
    assert seen == ["videomatch"]
    assert run.main(["--train", "--method", "emvos", "--resume", str(path)]) == 2  # a contradicting flag is an error
    assert "drop --method emvos" in capsys.readouterr().err
