"""Progress within a video: `run.py --test` shows a bar of each video's frames where a person watches (a terminal,
one process of a torchrun job) and nothing anywhere else (a log file, the other ranks)."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import random_checkpoint, square_davis

import run
from core import inference
from core.distributed import Dist


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = square_davis(tmp_path_factory.mktemp("davis"), {}, {"red": (255, 0, 0)}, frames=5)
    return root, random_checkpoint("emvos", tmp_path_factory.mktemp("ckpt") / "emvos.pth")


def run_test(tiny: tuple[Path, Path], out: Path) -> int:
    root, weights = tiny
    return run.main(["--test", "--data", "DAVIS17_val", "--davis", str(root), "--weights", str(weights),
                     "--device", "cpu", "--output", str(out), "--no-report"])


def test_a_terminal_sees_each_frame(tiny: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                    capsys: pytest.CaptureFixture) -> None:
    """Bug: --test printed one line per video only once the video was done (minutes of silence on a long video)."""
    monkeypatch.setattr(inference, "show_progress", lambda job: True)
    assert run_test(tiny, tmp_path / "out") == 0
    err = capsys.readouterr().err
    assert "red" in err and "5/5" in err and "frame" in err  # the video's name, its frame count, the unit


def test_no_bar_in_a_log_file(tiny: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Bug: a bar written into a log file (stderr not a terminal) fills it with carriage-return lines."""
    assert run_test(tiny, tmp_path / "out") == 0
    err = capsys.readouterr().err
    assert "5/5" not in err and "frame/s" not in err


def test_only_rank_zero_on_a_terminal_shows_bars(monkeypatch: pytest.MonkeyPatch) -> None:
    """Bug: every torchrun process drawing its bar on the one terminal, over each other's lines."""
    monkeypatch.setattr("sys.stderr.isatty", lambda: True)
    assert inference.show_progress(Dist(rank=0, world=2))
    assert not inference.show_progress(Dist(rank=1, world=2))
    monkeypatch.setattr("sys.stderr.isatty", lambda: False)
    assert not inference.show_progress(Dist(rank=0, world=1))
