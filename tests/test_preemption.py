"""Preemption and the checkpoint writes around it: a signal to the whole process group (what SLURM and Kubernetes
send) saves a resumable checkpoint that goes on bit for bit, a resume with another --workers is refused, and a
checkpoint that cannot be written (a full disk, `ulimit -f`) is one line naming the file, the earlier ones intact.

The runs are those of tests/test_train.py: 32x32 clips of 2 frames of the real DAVIS 2016 sample, --no-pretrained."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from conftest import single_thread
from test_train import _davis_args, _state, _train, _weights

from utils import VOSInputError

ROOT = Path(__file__).resolve().parents[1]

# 2 epochs of 2 batches of 2 clips, 2 DataLoader workers: each epoch forks its workers anew
GROUP_RUN = ["--crop", "32", "32", "--clip-len", "2", "--clips-per-epoch", "4", "--epochs", "2", "--save-every", "2",
             "--workers", "2"]

# The run as `python run.py --train` runs it; inside the loss of step 3 (epoch 2, its first batch, while the workers
# prepare the second) it waits for the test to signal its process group and delete the marker file. The signal must
# come from another process, as from `scancel`, SLURM's time limit or a Kubernetes pod deletion: a DataLoader worker
# that gets SIGTERM from its own parent exits quietly (torch's worker handler), one signalled by anybody else dies.
GROUP_DRIVER = textwrap.dedent("""
    import os, sys, time
    import torch
    sys.path.insert(0, {root!r})
    import run
    from core import methods
    torch.set_num_threads(1)
    losses = methods.get("emvos").losses
    loss, calls = losses["cross_entropy"], []
    def waiting(logits, gt):
        calls.append(1)
        if len(calls) == 3:
            open({marker!r}, "w").close()
            deadline = time.monotonic() + 120
            while os.path.exists({marker!r}) and time.monotonic() < deadline:
                time.sleep(0.01)
        return loss(logits, gt)
    losses["cross_entropy"] = waiting
    sys.exit(run.main(["--train", *sys.argv[1:]]))
""")


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """One intra-op thread, as in the signalled subprocess, so that in-process and subprocess steps agree bit for
    bit (and spinning OpenMP threads do not slow the shared machine)."""
    with single_thread():
        yield


@pytest.fixture(scope="module")
def uninterrupted(davis2016_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, torch.Tensor]:
    """The final weights of GROUP_RUN without a signal."""
    save_dir = tmp_path_factory.mktemp("uninterrupted")
    _train(_davis_args(davis2016_root, save_dir, *GROUP_RUN))
    return _weights(save_dir / "coco_davis_0002.pth")


@pytest.mark.parametrize("signals", [["SIGTERM"], ["SIGUSR1", "SIGTERM"]], ids=["sigterm", "usr1-then-sigterm"])
def test_signal_to_the_process_group_saves_and_resumes_exactly(davis2016_root: Path, tmp_path: Path,
                                                               uninterrupted: dict[str, torch.Tensor],
                                                               signals: list[str]) -> None:
    """SIGTERM to the whole group of a `--workers 2` run, or SLURM's `--signal=USR1@90` followed by the SIGTERM of
    the time limit, stops it as Ctrl+C does: the iteration finishes, the resumable checkpoint is written, the
    --resume command printed, exit 130, and the resumed run ends with the uninterrupted run's weights bit for bit.
    Fails if the DataLoader workers die of the signal (torch then raises `DataLoader worker (pid ...) is killed by
    signal` mid-step and nothing is saved), if SIGUSR1 is not handled (its default kills the run), or if the SIGTERM
    that follows USR1 aborts the save as a second Ctrl+C does."""
    marker = tmp_path / "step3"
    driver = tmp_path / "driver.py"
    driver.write_text(GROUP_DRIVER.format(root=str(ROOT), marker=str(marker)))
    save_dir = tmp_path / "signalled"
    proc = subprocess.Popen([sys.executable, str(driver), *_davis_args(davis2016_root, save_dir, *GROUP_RUN)],
                            start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.monotonic() + 240
        while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert marker.exists(), "the run never reached step 3"
        for name in signals:
            os.killpg(proc.pid, getattr(signal, name))
        marker.unlink()
        out, err = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err and f"{signals[0]}: stopping after this iteration" in err
    ckpt = save_dir / "coco_davis_interrupted.pth"
    assert f"Resume with:\n  python run.py --train --method emvos --resume {ckpt} --davis {davis2016_root}" in out
    state = _state(ckpt)
    assert state["epoch"] == 1 and state["partial"]["batches"] == 1  # the signalled step finished, then it stopped

    _train(["--device", "cpu", "--davis", str(davis2016_root), "--resume", str(ckpt)])
    resumed = _weights(save_dir / "coco_davis_0002.pth")
    assert resumed.keys() == uninterrupted.keys()
    assert all(torch.equal(resumed[k], uninterrupted[k]) for k in resumed)


def test_resume_with_another_worker_count_is_refused(davis2016_root: Path, tmp_path: Path) -> None:
    """Each DataLoader worker draws its own stream of clips, so a run resumed with another --workers draws other
    clips than the interrupted run (52 of EMVOS's 576 tensors ended different, silently). Fails if such a resume is
    not refused before any step with a message naming the recorded count, or if the refusal also hits a resume that
    leaves --workers out (it then takes the recorded count)."""
    args = ["--crop", "32", "32", "--clip-len", "2", "--clips-per-epoch", "2", "--epochs", "1"]
    _train(_davis_args(davis2016_root, tmp_path, *args))  # --workers 0 (TINY)
    ckpt = tmp_path / "coco_davis_0001.pth"
    with pytest.raises(VOSInputError) as err:
        _train(["--device", "cpu", "--davis", str(davis2016_root), "--resume", str(ckpt), "--epochs", "2",
                "--workers", "2"])
    text = str(err.value)
    assert "\n" not in text and "--workers 0" in text and str(ckpt) in text
    assert not (tmp_path / "coco_davis_0002.pth").exists()
    _train(["--device", "cpu", "--davis", str(davis2016_root), "--resume", str(ckpt), "--epochs", "2"])
    assert _state(tmp_path / "coco_davis_0002.pth")["train_options"]["workers"] == 0


# `run.py --train` with the size of every file it writes capped (`ulimit -f`): the write fails with EFBIG, as on a
# full disk with ENOSPC; SIGXFSZ is ignored so that the write returns the error instead of killing the process.
FSIZE_DRIVER = textwrap.dedent("""
    import resource, signal, sys
    sys.path.insert(0, {root!r})
    import run
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))
    sys.exit(run.main(["--train", *sys.argv[1:]]))
""")


def test_a_checkpoint_that_cannot_be_written_is_one_line_and_the_earlier_stay(davis2016_root: Path,
                                                                             tmp_path: Path) -> None:
    """A full disk (or `ulimit -f`) while a checkpoint is written: one line naming the file, exit 2, and the
    checkpoints written before are intact, with no temporary file left. Fails if torch's zip writer error
    (`RuntimeError: [enforce fail at inline_container.cc:...]`) reaches the user as a traceback, or a save leaves a
    partial file or its temporary behind."""
    args = ["--crop", "32", "32", "--clip-len", "2", "--clips-per-epoch", "2", "--epochs", "1"]
    _train(_davis_args(davis2016_root, tmp_path, *args))
    # the checkpoints (and the log); TensorBoard's runs/ folder is no checkpoint
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.suffix in (".pth", ".csv")}
    assert "coco_davis_0001.train.pth" in before
    driver = tmp_path.parent / "fsize_driver.py"
    # above train_log.csv, below any checkpoint
    driver.write_text(FSIZE_DRIVER.format(root=str(ROOT), limit=min(map(len, before.values())) + 2**16))
    assert len(before["train_log.csv"]) < 2**16 < len(before["coco_davis_0001.pth"])
    ckpt = tmp_path / "coco_davis_0001.pth"
    proc = subprocess.run([sys.executable, str(driver), "--device", "cpu", "--davis", str(davis2016_root),
                           "--resume", str(ckpt), "--epochs", "2"], capture_output=True, text=True, timeout=240,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    error = [line for line in proc.stderr.splitlines() if line.startswith("error:")]  # the rest: progress bars
    assert len(error) == 1 and str(tmp_path / "coco_davis_0002.pth") in error[0] and "--save-dir" in error[0], error
    after = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.suffix == ".pth"}
    assert after == {k: v for k, v in before.items() if k != "train_log.csv"}

