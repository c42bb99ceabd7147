"""curves.CurveLogger: TensorBoard events read back, train_log.csv as the trainer writes it, train_curves.png, and a
resumed run that continues the steps without duplicates."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tensorboard.backend.event_processing import event_accumulator

import curves
import trainer


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


def test_events_csv_and_png(tmp_path: Path) -> None:
    """A tiny run's events hold every logged value at its step, train_log.csv is byte for byte what
    trainer.append_log writes for the same rows, and train_curves.png is a real image. Catches values logged
    at the wrong step or tag, a CSV that drifts from the trainer's columns, and a missing or empty figure."""
    logger = curves.CurveLogger(tmp_path)
    logger.start_stage("davis", 0)
    train(logger, "davis", 1, 4, iters_per_epoch=3, offset=0.0)
    logger.close()

    got = scalars(tmp_path / "runs" / "davis")
    assert got["train/loss"] == [(i, pytest.approx(float(i))) for i in range(1, 13)]
    assert [s for s, _ in got["train/lr"]] == list(range(1, 13))
    assert got["val/jf"] == [(6, pytest.approx(0.2)), (12, pytest.approx(0.4))]
    assert got["epoch/loss"] == [(3 * e, pytest.approx(float(e))) for e in range(1, 5)]

    expected = tmp_path / "expected.csv"
    for epoch in range(1, 5):
        trainer.append_log(expected, epoch_row("davis", epoch, 3 * epoch, float(epoch),
                                               0.1 * epoch if epoch % 2 == 0 else None))
    assert (tmp_path / "train_log.csv").read_bytes() == expected.read_bytes()
    assert curves.LOG_COLUMNS == trainer.LOG_COLUMNS

    img = np.asarray(Image.open(tmp_path / "train_curves.png").convert("L"))
    assert img.shape[0] > 300 and img.shape[1] > 500 and img.std() > 10  # drawn, not blank


def test_resume_continues_without_duplicates(tmp_path: Path) -> None:
    """A run that reached epoch 4 but resumes from its epoch-2 checkpoint (iteration 6) logs epochs 3-4 again:
    TensorBoard then shows each step once, the resumed values from step 7 on, and the curves' rows of epochs 3-4
    are the resumed run's. Catches a missing purge_step (steps 7-12 twice), an off-by-one purge that also drops
    the checkpoint's own step 6, and stale CSV rows winning in the figure."""
    first = curves.CurveLogger(tmp_path)
    first.start_stage("davis", 0)
    train(first, "davis", 1, 4, iters_per_epoch=3, offset=0.0)
    first.close()

    resumed = curves.CurveLogger(tmp_path)
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
    logger = curves.CurveLogger(tmp_path)
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
        curves.CurveLogger(tmp_path).step(1, 0.0, 0.0, 0.0, 0.0)
