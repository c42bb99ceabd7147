"""Training curves: TensorBoard scalars, the `train_log.csv` rows and `train_curves.png`, from one logger.

`CurveLogger` is called by the training loop on the main process only:
- `start_stage(stage, iteration)` when a stage starts or resumes: its TensorBoard run is `<save-dir>/runs/<stage>/`
  and a resumed stage drops, in TensorBoard's view, every event of an earlier run at a later step (purge_step), so
  the curves go on from the checkpoint with no step twice;
- `step(...)` after every optimizer step: loss, foreground IoU, learning rate, seconds per iteration;
- `epoch(row)` at every epoch end: appends the row to train_log.csv (the columns and the text the trainer gives, one
  flushed line per epoch), logs its epoch means and validation score, and after a validation redraws
  train_curves.png (epoch-mean loss and validation score over epochs, every stage of the log).

Steps are the stage's own iteration count (the official `i`), so a stage's curves start at 1 whatever came before.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

from utils import atomic_write

LOG_NAME = "train_log.csv"
CURVES_NAME = "train_curves.png"
RUNS_DIR = "runs"
# train_log.csv: these step statistics of the epoch, then one score column per stage's model selection (the trainer
# names them: trainer.log_columns)
STEP_COLUMNS = ("stage", "epoch", "iteration", "loss", "iou", "lr", "sec_per_iter")
SCORE_TITLES = {"val_jf": "validation J&F", "val_pairs_iou": "held-out pairs IoU"}  # else the column's name


def score_columns(columns: list[str] | tuple[str, ...]) -> list[str]:
    """The columns of a log that hold a model-selection score."""
    return [c for c in columns if c not in STEP_COLUMNS]


def append_log(path: Path, row: dict, columns: list[str]) -> None:
    """One row per epoch in train_log.csv, flushed at once so a crash loses nothing. A new file gets `columns`; an
    existing one (a resumed run's, or an earlier run's in the same folder) keeps its own, and is rewritten whole with
    the missing ones added when a column of this run is not among them."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header: list[str] = []
    if path.is_file() and path.stat().st_size:
        with open(path, newline="") as f:
            header = next(csv.reader(f))
    if header and not set(columns) <= set(header):
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
        header = [*header, *(c for c in columns if c not in header)]
        text = io.StringIO()
        w = csv.DictWriter(text, header, restval="", lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
        atomic_write(path, lambda f: f.write(text.getvalue().encode()))
    with open(path, "a", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        if not header:
            header = columns
            w.writerow(header)
        w.writerow([row.get(c, "") for c in header])
        f.flush()


def read_log(path: Path) -> list[dict[str, str]]:
    """The rows of train_log.csv as they stand after every resume: a row of (stage, epoch e) replaces the earlier
    rows of that stage from epoch e on (a run resumed from an older checkpoint redoes those epochs)."""
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    kept: list[dict[str, str]] = []
    for row in rows:
        epoch = int(row["epoch"])
        kept = [r for r in kept if not (r["stage"] == row["stage"] and int(r["epoch"]) >= epoch)]
        kept.append(row)
    return kept


def _number(text: str | None) -> float:
    try:
        return float(text) if text not in (None, "") else math.nan
    except ValueError:
        return math.nan


def plot_curves(log_path: Path, out_path: Path) -> Path:
    """train_curves.png: epoch-mean training loss (top) and the validation score (bottom) over the epochs of every
    stage in the log, the stages one after another on one epoch axis."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    rows = read_log(log_path)
    fig, (loss_ax, val_ax) = plt.subplots(2, 1, figsize=(8, 5.5), dpi=100, sharex=True, layout="constrained")
    stages = list(dict.fromkeys(r["stage"] for r in rows))
    scores = score_columns(list(rows[0])) if rows else []
    offset = 0
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for k, stage in enumerate(stages):
        mine = [r for r in rows if r["stage"] == stage]
        x = [offset + int(r["epoch"]) for r in mine]
        colour = colours[k % len(colours)]
        loss_ax.plot(x, [_number(r["loss"]) for r in mine], marker=".", color=colour, label=stage)
        for column in scores:
            title = SCORE_TITLES.get(column, column)
            points = [(xi, _number(r.get(column))) for xi, r in zip(x, mine, strict=True)]
            points = [(xi, v) for xi, v in points if not math.isnan(v)]
            if points:
                val_ax.plot(*zip(*points, strict=True), marker="o", color=colour, label=f"{stage}: {title}")
        if k:
            for ax in (loss_ax, val_ax):
                ax.axvline(offset + 0.5, color="0.6", linestyle=":", linewidth=1)
        offset = max(x, default=offset)
    loss_ax.set_ylabel("training loss (epoch mean)")
    loss_ax.set_title("training curves (stages one after another)", loc="left", fontsize=10)
    val_ax.set_ylabel("validation score")
    val_ax.set_xlabel("epoch (counted over all stages)")
    val_ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    for ax in (loss_ax, val_ax):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8, loc="best")
    fig.canvas.draw()

    def save(f: object) -> None:
        fig.savefig(f, format="png")

    try:
        return atomic_write(out_path, save)
    finally:
        plt.close(fig)


class CurveLogger:
    """TensorBoard scalars + train_log.csv + train_curves.png in `save_dir` (see the module docstring)."""

    def __init__(self, save_dir: str | Path, columns: list[str] | tuple[str, ...]) -> None:
        """columns: train_log.csv's columns for a new file (`STEP_COLUMNS`, then the selections' score columns)."""
        self.save_dir = Path(save_dir)
        self.columns = list(columns)
        self.log_path = self.save_dir / LOG_NAME
        self.curves_path = self.save_dir / CURVES_NAME
        self.writer = None
        self.stage: str | None = None

    def start_stage(self, stage: str, iteration: int = 0) -> None:
        """Open the stage's TensorBoard run. iteration: the optimizer steps the stage has already taken (those of
        the checkpoint it resumes from); events an earlier run logged after that step are dropped."""
        from torch.utils.tensorboard import SummaryWriter  # here: importing tensorboard costs a second

        self.close()
        # Steps up to `iteration` were logged by the run that wrote the checkpoint and stand; from iteration + 1 on
        # this run logs them again, so TensorBoard discards the old ones (SessionLog.START at purge_step).
        self.writer = SummaryWriter(log_dir=str(self.save_dir / RUNS_DIR / stage),
                                    purge_step=iteration + 1 if iteration > 0 else None)
        self.stage = stage

    def _writer(self):  # noqa: ANN202 - a SummaryWriter
        if self.writer is None:
            raise RuntimeError("CurveLogger: call start_stage(stage, iteration) before logging")
        return self.writer

    def step(self, iteration: int, loss: float, iou: float, lr: float, seconds: float) -> None:
        """One optimizer step of the current stage (iteration counts from 1)."""
        w = self._writer()
        w.add_scalar("train/loss", loss, iteration)
        w.add_scalar("train/iou", iou, iteration)
        w.add_scalar("train/lr", lr, iteration)
        w.add_scalar("train/sec_per_iter", seconds, iteration)

    def epoch(self, row: dict) -> None:
        """An epoch's end: `row` maps the log's columns to the text to write ('' or absent when unknown); it is
        appended to train_log.csv, logged to TensorBoard at its iteration (a score column `val_x` as `val/x`), and
        when it carries a score train_curves.png is redrawn."""
        append_log(self.log_path, row, self.columns)
        w, step = self._writer(), int(row["iteration"])
        tags = [("loss", "epoch/loss"), ("iou", "epoch/iou"), ("sec_per_iter", "epoch/sec_per_iter")]
        scores = score_columns(list(row))
        for column, tag in tags + [(c, f"val/{c.removeprefix('val_')}") for c in scores]:
            value = _number(row.get(column))
            if not math.isnan(value):
                w.add_scalar(tag, value, step)
        w.add_scalar("epoch/epoch", int(row["epoch"]), step)
        w.flush()
        if any(row.get(c) not in (None, "") for c in scores):
            plot_curves(self.log_path, self.curves_path)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
