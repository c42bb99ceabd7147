"""curves.CurveLogger: TensorBoard events read back, train_log.csv as the trainer writes it, train_curves.png, and a
resumed run that continues the steps without duplicates."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import square_davis
from PIL import Image
from tensorboard.backend.event_processing import event_accumulator

import dataset
import run
from core import methods
from training import curves, trainer


def scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    acc = event_accumulator.EventAccumulator(str(run_dir), size_guidance={event_accumulator.SCALARS: 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def epoch_row(stage: str, epoch: int, iteration: int, loss: float, val: float | None) -> dict:
    """A row as Trainer.end_epoch builds it (numbers already formatted)."""
    return {"stage": stage, "epoch": epoch, "iteration": iteration, "loss": f"{loss:.6f}", "iou": "0.500000",
            "lr": "1e-05", "sec_per_iter": "0.1000", "val_jf": "" if val is None else f"{val:.6f}"}


def train(logger: curves.CurveLogger, stage: str, first_epoch: int, last_epoch: int, iters_per_epoch: int,
          offset: float, val_every: int = 2) -> None:
    """Epochs first..last of `iters_per_epoch` steps; step i logs loss offset + i (so runs are told apart)."""
    for epoch in range(first_epoch, last_epoch + 1):
        for i in range((epoch - 1) * iters_per_epoch + 1, epoch * iters_per_epoch + 1):
            logger.step(i, loss=offset + i, iou=i / 100, lr=1e-5, seconds=0.25)
        val = 0.1 * epoch + offset if epoch % val_every == 0 else None
        logger.epoch(epoch_row(stage, epoch, epoch * iters_per_epoch, offset + epoch, val))


COLUMNS = trainer.log_columns([methods.METHODS["emvos"].stages["davis"]])


def test_events_csv_and_png(tmp_path: Path) -> None:
    """A tiny run's events hold every logged value at its step, train_log.csv has the trainer's columns for the
    stage and every row in them, and train_curves.png is a real image. Catches values logged at the wrong step or
    tag, a CSV that drifts from the trainer's columns, and a missing or empty figure."""
    logger = curves.CurveLogger(tmp_path, COLUMNS)
    logger.start_stage("davis", 0)
    train(logger, "davis", 1, 4, iters_per_epoch=3, offset=0.0)
    logger.close()

    got = scalars(tmp_path / "runs" / "davis")
    assert got["train/loss"] == [(i, pytest.approx(float(i))) for i in range(1, 13)]
    assert [s for s, _ in got["train/lr"]] == list(range(1, 13))
    assert got["val/jf"] == [(6, pytest.approx(0.2)), (12, pytest.approx(0.4))]
    assert got["epoch/loss"] == [(3 * e, pytest.approx(float(e))) for e in range(1, 5)]

    rows = curves.read_log(tmp_path / "train_log.csv")
    assert list(rows[0]) == ["stage", "epoch", "iteration", "loss", "iou", "lr", "sec_per_iter", "val_jf"]
    assert [(r["iteration"], r["loss"], r["val_jf"]) for r in rows] == [
        ("3", "1.000000", ""), ("6", "2.000000", "0.200000"), ("9", "3.000000", ""), ("12", "4.000000", "0.400000")]

    img = np.asarray(Image.open(tmp_path / "train_curves.png").convert("L"))
    assert img.shape[0] > 300 and img.shape[1] > 500 and img.std() > 10  # drawn, not blank


def test_resume_continues_without_duplicates(tmp_path: Path) -> None:
    """A run that reached epoch 4 but resumes from its epoch-2 checkpoint (iteration 6) logs epochs 3-4 again:
    TensorBoard then shows each step once, the resumed values from step 7 on, and the curves' rows of epochs 3-4
    are the resumed run's. Catches a missing purge_step (steps 7-12 twice), an off-by-one purge that also drops
    the checkpoint's own step 6, and stale CSV rows winning in the figure."""
    first = curves.CurveLogger(tmp_path, COLUMNS)
    first.start_stage("davis", 0)
    train(first, "davis", 1, 4, iters_per_epoch=3, offset=0.0)
    first.close()

    resumed = curves.CurveLogger(tmp_path, COLUMNS)
    resumed.start_stage("davis", 6)
    train(resumed, "davis", 3, 4, iters_per_epoch=3, offset=100.0)
    resumed.close()

    got = scalars(tmp_path / "runs" / "davis")
    steps = [s for s, _ in got["train/loss"]]
    assert steps == list(range(1, 13))
    assert got["train/loss"][5] == (6, pytest.approx(6.0))  # the checkpoint's last step stands
    assert got["train/loss"][6] == (7, pytest.approx(107.0))  # the resumed run from there on
    assert got["val/jf"] == [(6, pytest.approx(0.2)), (12, pytest.approx(100.4))]

    rows = curves.read_log(tmp_path / "train_log.csv")
    assert [(r["epoch"], r["loss"]) for r in rows] == [("1", "1.000000"), ("2", "2.000000"), ("3", "103.000000"),
                                                       ("4", "104.000000")]
    assert len((tmp_path / "train_log.csv").read_text().splitlines()) == 1 + 6  # the CSV itself only appends


def test_stages_are_separate_runs(tmp_path: Path) -> None:
    """Each stage logs into runs/<stage>/ from its own step 1, so resuming the second stage cannot purge the first
    stage's events. Catches one shared run directory, where stage 2's purge_step would delete stage 1's curves."""
    logger = curves.CurveLogger(tmp_path, COLUMNS)
    logger.start_stage("coco", 0)
    train(logger, "coco", 1, 2, iters_per_epoch=5, offset=0.0)
    logger.start_stage("davis", 0)
    train(logger, "davis", 1, 2, iters_per_epoch=2, offset=50.0)
    logger.start_stage("davis", 2)  # resume stage 2 after its first epoch
    train(logger, "davis", 2, 2, iters_per_epoch=2, offset=70.0)
    logger.close()
    assert [s for s, _ in scalars(tmp_path / "runs" / "coco")["train/loss"]] == list(range(1, 11))
    assert scalars(tmp_path / "runs" / "davis")["train/loss"] == [
        (1, pytest.approx(51.0)), (2, pytest.approx(52.0)), (3, pytest.approx(73.0)), (4, pytest.approx(74.0))]
    with pytest.raises(RuntimeError, match="start_stage"):
        curves.CurveLogger(tmp_path, COLUMNS).step(1, 0.0, 0.0, 0.0, 0.0)


@pytest.fixture
def tiny_davis(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A DAVIS 2017 tree of 48x64 frames with a moving square (train: a, b; val: c), validated at that size."""
    monkeypatch.setattr(dataset, "TEST_SHORT_SIDE", 48)
    return square_davis(tmp_path / "DAVIS", {"a": (255, 0, 0), "b": (0, 255, 0)}, {"c": (0, 0, 255)}, frames=4)


def test_run_train_logs_curves_and_a_resume_continues_them(tiny_davis: Path, tmp_path: Path) -> None:
    """run.py --train (2 epochs of one step, validated after each) writes TensorBoard events whose values are the
    ones train_log.csv records, and train_curves.png; resumed from the epoch-1 checkpoint, the run logs step 2 again
    and TensorBoard shows steps 1 and 2 once each, step 2 with the resumed run's (bit-exact, hence equal) value. Fails
    when the trainer does not call the logger (no events, no figure), logs at the wrong step (an epoch count instead
    of the iteration), or opens the resumed stage without the checkpoint's iteration (step 2 twice)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    save = tmp_path / "out"
    try:
        assert run.main(["--train", "--device", "cpu", "--no-pretrained", "--crop", "48", "48", "--clip-len", "3",
                         "--batch-size", "2", "--workers", "0", "--stages", "davis", "--davis", str(tiny_davis),
                         "--clips-per-epoch", "2", "--epochs", "2", "--val-every", "1", "--save-every", "1",
                         "--val-sequences", "c", "--save-dir", str(save)]) == 0
        first = scalars(save / "runs" / "davis")
        rows = curves.read_log(save / "train_log.csv")
        assert [r["iteration"] for r in rows] == ["1", "2"] and all(r["val_jf"] for r in rows)
        assert first["train/loss"] == [(i + 1, pytest.approx(float(r["loss"]), abs=1e-6)) for i, r in enumerate(rows)]
        assert first["val/jf"] == [(i + 1, pytest.approx(float(r["val_jf"]), abs=1e-6)) for i, r in enumerate(rows)]
        img = np.asarray(Image.open(save / "train_curves.png").convert("L"))
        assert img.std() > 10

        assert run.main(["--train", "--device", "cpu", "--davis", str(tiny_davis),
                         "--resume", str(save / "coco_davis_0001.pth")]) == 0
    finally:
        torch.set_num_threads(threads)
    again = scalars(save / "runs" / "davis")
    assert [s for s, _ in again["train/loss"]] == [1, 2]
    assert again["train/loss"] == first["train/loss"]  # --resume is exact: the same step 2
    assert [s for s, _ in again["val/jf"]] == [1, 2]
    assert len(curves.read_log(save / "train_log.csv")) == 2  # the redone epoch replaces its row in the curves
