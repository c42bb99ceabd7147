"""Results a researcher can look at: `report.html` for one scored run, `compare.html` for several.

The data contract is the one result type every scorer of benchmarks/ returns (`benchmarks.common.Scores`): a
benchmark's global table exactly as its toolkit prints it, and for every scored object its per-frame J and F with
the frames the benchmark's rules count (`ObjectScores`). A page shows a `RunScores`: that result, the folders its
thumbnails read and what made the run; `save_scores` writes it as `scores.json` beside the CSVs, so that `compare`
reads finished runs without scoring them again.

Both pages are single self-contained files: images are embedded as data: URIs, there is no script, no style sheet or
font fetched from anywhere, and every name that comes from the data (sequences, objects, paths, the command line) is
HTML-escaped, so a page opens from disk, offline, and a hostile folder name shows as text. Numbers come before
pictures (the global table first), and every picture has a title, axis labels and a legend.

Usage:
    scores = report.run_scores(result, frames_dir=..., gt_dir=..., pred_dir=results_dir)
    report.publish(scores, results_dir)  # results_dir/scores.json and results_dir/report.html
    python evaluation.py --compare outputs/DAVIS17_val outputs/DAVIS17_val_ablation [--out DIR]
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
import shlex
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import cv2
import numpy as np

from benchmarks.common import ObjectScores, Scores
from utils import VOSInputError, atomic_write, read_frame, read_mask

SCORES_NAME = "scores.json"
REPORT_NAME = "report.html"
COMPARE_NAME = "compare.html"
FORMAT_VERSION = 2  # of scores.json; bump when a field changes meaning (2: the toolkit's unit and title)

# How a run's mask PNGs map to one object (`RunScores.mask_layout`):
#   "ids"        <dir>/<sequence>/<frame>.png, pixel value = object id (DAVIS 2017 and most benchmarks)
#   "binary"     <dir>/<sequence>/<frame>.png, every non-zero pixel is the one object (DAVIS 2016's 0/255 masks)
#   "per-object" <dir>/<sequence>/<object_label>/<frame>.png, non-zero = the object (SA-V: objects may overlap)
MASK_LAYOUTS = ("ids", "binary", "per-object")
FRAME_SUFFIXES = (".jpg", ".jpeg", ".png")

WORST_OBJECTS = 10  # objects shown with thumbnails in report.html
WORST_FRAMES = 3  # thumbnails per such object
CHANGED_OBJECTS = 5  # objects shown with thumbnails in compare.html
THUMB_WIDTH = 384  # pixels; 854x480 frames become 384x216, enough to judge a contour
# Colours of the thumbnails' contours (RGB). Blue and orange stay distinct under the common colour-vision
# deficiencies; the ground truth is drawn wider and underneath, so a perfect prediction shows as an orange line
# inside a blue band instead of hiding the ground truth.
GT_RGB = (0, 114, 178)
PRED_RGB = (230, 159, 0)
GT_THICKNESS, PRED_THICKNESS = 4, 2
NOT_SCORED_GREY = "0.85"  # shading of the frames a benchmark does not score


# ----------------------------------------------------------------------------------------------------------------
# The data contract
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class RunScores:
    """Everything a report shows about one scored run: the scorer's result and where its files are."""

    result: Scores  # the benchmark's table and objects, as its scorer returned them
    frames_dir: str  # <frames_dir>/<sequence>/<frame>.jpg
    gt_dir: str  # ground-truth PNGs, laid out as `mask_layout` says
    pred_dir: str  # predicted PNGs, same layout
    mask_layout: str = "ids"
    command: str = ""  # the command line of the run
    weights_name: str = ""
    weights_id: str = ""  # git blob id or SHA-256 of the weights file
    date: str = ""  # ISO 8601, when the run was scored
    extra: dict = field(default_factory=dict)  # anything else worth a line in the report (key: value)

    def __post_init__(self) -> None:
        if self.mask_layout not in MASK_LAYOUTS:
            raise ValueError(f"mask_layout {self.mask_layout!r}; use one of {', '.join(MASK_LAYOUTS)}")
        if self.mask_layout == "ids":  # the label is the pixel value the thumbnails look for
            for obj in self.result.objects:
                if not obj.object_label.isdigit():
                    raise ValueError(f"object {obj.name}: label {obj.object_label!r} is not an id, but mask_layout "
                                     "'ids' needs the pixel value; use 'per-object' for one folder per object")


def _nan_to_none(values: Sequence[float]) -> list[float | None]:
    return [None if v is None or math.isnan(v) else float(v) for v in values]


def _none_to_nan(values: Sequence[float | None]) -> list[float]:
    return [math.nan if v is None else float(v) for v in values]


def scores_to_json(scores: RunScores) -> str:
    """`scores` as JSON text (NaN written as null, which strict JSON readers accept); a result's per-object values
    (the toolkit's own measures) stay out: the pages show the per-frame arrays and the table."""
    result = scores.result
    objects = [{"name": o.name, "sequence": o.sequence, "object_label": o.object_label, "frames": o.frames,
                "j": _nan_to_none(o.j.tolist()), "f": _nan_to_none(o.f.tolist()), "counted": o.counted.tolist(),
                "jf": None if math.isnan(o.jf) else float(o.jf)} for o in result.objects]
    data = {"benchmark": result.benchmark, "split": result.split,
            "global_table": [[c, None if math.isnan(v) else v] for c, v in result.global_table], "objects": objects,
            "frames_dir": scores.frames_dir, "gt_dir": scores.gt_dir, "pred_dir": scores.pred_dir,
            "mask_layout": scores.mask_layout, "decimals": result.decimals, "percent": result.percent,
            "title": result.title, "command": scores.command,
            "weights_name": scores.weights_name, "weights_id": scores.weights_id, "date": scores.date,
            "extra": scores.extra, "format": FORMAT_VERSION}
    return json.dumps(data, indent=1, allow_nan=False)


def scores_from_json(text: str, source: str = "scores") -> RunScores:
    """Inverse of `scores_to_json`; `source` names the file in the error message."""
    try:
        data = json.loads(text)
        version = data.pop("format", None)
        if version != FORMAT_VERSION:
            raise VOSInputError(
                f"{source} is scores format {version}, this code reads format {FORMAT_VERSION}; score the run again"
            )
        objects = []
        for obj in data.pop("objects"):
            obj["j"], obj["f"] = _none_to_nan(obj["j"]), _none_to_nan(obj["f"])
            obj["jf"] = math.nan if obj["jf"] is None else obj["jf"]
            objects.append(ObjectScores(**obj))
        table = [(c, math.nan if v is None else v) for c, v in data.pop("global_table")]
        result = Scores(data.pop("benchmark"), data.pop("split"), table, objects, data.pop("decimals"),
                        percent=bool(data.pop("percent")), title=data.pop("title"))
        return RunScores(result, **data)
    except VOSInputError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise VOSInputError(f"{source} is not a scores file written by this code ({e}); score the run again") from e


def save_scores(scores: RunScores, path: str | Path) -> Path:
    """Write `scores` as JSON at `path` (atomically: a kill leaves the old file or the new one)."""
    return atomic_write(path, lambda f: f.write(scores_to_json(scores).encode()))


def load_scores(path: str | Path) -> RunScores:
    """Read a run: a scores.json file, or a results folder holding one."""
    path = Path(path)
    if path.is_dir():
        path = path / SCORES_NAME
    if not path.is_file():
        raise VOSInputError(
            f"{path} does not exist; pass a results folder that was scored (it holds {SCORES_NAME} beside the CSVs) "
            f"or the {SCORES_NAME} file itself"
        )
    return scores_from_json(path.read_text(encoding="utf-8"), str(path))


def run_scores(result: Scores, *, frames_dir: str | Path, gt_dir: str | Path, pred_dir: str | Path,
               mask_layout: str = "ids", weights: str | Path | None = None, command: str | None = None,
               date: str | None = None) -> RunScores:
    """The `RunScores` of a scored run: the scorer's `result`, the folders the thumbnails read, and the run:
    `weights` (the file; its name and git blob id are recorded), the command line (default: this process's) and the
    date (default: now, UTC, ISO 8601)."""
    weights_name = weights_id = ""
    if weights is not None:
        from core.weights import git_blob_id  # here: the weights module loads torch, which a report needs nowhere else

        weights_name, weights_id = Path(weights).name, git_blob_id(weights)
    return RunScores(result, frames_dir=str(frames_dir), gt_dir=str(gt_dir), pred_dir=str(pred_dir),
                     mask_layout=mask_layout, weights_name=weights_name, weights_id=weights_id,
                     command=shlex.join(sys.argv) if command is None else command,
                     date=date or datetime.now(timezone.utc).isoformat(timespec="seconds"))


def output_files(out_dir: str | Path) -> list[Path]:
    """The files `publish` writes into out_dir: scores.json and report.html."""
    return [Path(out_dir) / SCORES_NAME, Path(out_dir) / REPORT_NAME]


def remove_outputs(out_dir: str | Path) -> None:
    """Delete an earlier run's scores.json and report.html in out_dir, before scoring it again: a run that fails, or
    runs without a report, must not leave pages that describe other masks."""
    for path in output_files(out_dir):
        path.unlink(missing_ok=True)


def publish(scores: RunScores, out_dir: str | Path) -> tuple[Path, Path]:
    """`scores.json` (for `--compare`) and `report.html` in out_dir, beside the toolkit's files: both or neither (a
    full disk while writing the page removes the scores.json just written, and the error propagates)."""
    out_dir = Path(out_dir)
    saved = save_scores(scores, out_dir / SCORES_NAME)
    try:
        return saved, write_report(scores, out_dir / REPORT_NAME)
    except BaseException:
        saved.unlink(missing_ok=True)
        raise


def weights_of(results: str | Path, out_dir: str | Path | None = None) -> tuple[str, str]:
    """(weights_name, weights_id) of the run that wrote the masks in `results`, for a report that scores them again:
    from the scores.json an earlier scoring left in out_dir or `results` when it describes these masks (its pred_dir
    is `results`), else the weights' file name from run.py's run.json in its --output (the parent of `results`);
    ("", "") when neither says. Read before the earlier scores.json is replaced."""
    results = Path(results)
    for folder in dict.fromkeys(Path(f) for f in (out_dir, results) if f is not None):
        path = folder / SCORES_NAME
        if not path.is_file():
            continue
        try:
            run = load_scores(path)
        except (VOSInputError, OSError, UnicodeDecodeError):
            continue  # an unreadable or older file says nothing about the weights
        if os.path.realpath(run.pred_dir) == os.path.realpath(results) and run.weights_name:
            return run.weights_name, run.weights_id
    try:
        record = json.loads((results.parent / "run.json").read_text(encoding="utf-8"))
        return Path(record["weights"]).name, ""
    except (OSError, ValueError, KeyError, TypeError):
        return "", ""


# ----------------------------------------------------------------------------------------------------------------
# Thumbnails: the frame with the ground truth's and the prediction's contours
# ----------------------------------------------------------------------------------------------------------------


def _frame_path(scores: RunScores, sequence: str, frame: str) -> Path:
    base = Path(scores.frames_dir) / sequence / frame
    for suffix in FRAME_SUFFIXES:
        if base.with_suffix(suffix).is_file():
            return base.with_suffix(suffix)
    return base.with_suffix(FRAME_SUFFIXES[0])


def mask_path(scores: RunScores, root: str, obj: ObjectScores, frame: str) -> Path:
    """Where the mask of `frame` holding `obj` lies under `root` (the run's gt_dir or pred_dir)."""
    if scores.mask_layout == "per-object":
        return Path(root) / obj.sequence / obj.object_label / f"{frame}.png"
    return Path(root) / obj.sequence / f"{frame}.png"


def _object_mask(scores: RunScores, path: Path, obj: ObjectScores) -> np.ndarray | None:
    """The object's binary mask in the PNG at `path` (raw values, as the toolkits read them); None when absent."""
    if not path.is_file():
        return None
    ids = read_mask(path, raw=True)
    if scores.mask_layout == "ids":
        return ids == int(obj.object_label)
    return ids != 0


def _contours(mask: np.ndarray, scale: float) -> list[np.ndarray]:
    """Outlines of a full-resolution mask, scaled to the thumbnail (finding them before shrinking keeps thin
    parts that a nearest-neighbour resize would drop)."""
    found, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
    return [np.round(c * scale).astype(np.int32) for c in found]


@dataclass
class Thumbnail:
    """One frame drawn for a page: a JPEG data: URI (or None with the reason) and its caption."""

    uri: str | None
    caption: str
    missing: str = ""


def thumbnail(scores: RunScores, obj: ObjectScores, index: int, width: int = THUMB_WIDTH) -> Thumbnail:
    """Frame `index` of `obj` with its ground-truth contour (blue, wide) and predicted contour (orange, thin)."""
    frame = obj.frames[index]
    result = scores.result
    j, f = (fmt(v[index] * result.scale, result.decimals) or "n/a" for v in (obj.j, obj.f))
    caption = f"frame {frame}: J {j}, F {f}"
    frame_path = _frame_path(scores, obj.sequence, frame)
    try:
        rgb = read_frame(frame_path)
        gt = _object_mask(scores, mask_path(scores, scores.gt_dir, obj, frame), obj)
        pred = _object_mask(scores, mask_path(scores, scores.pred_dir, obj, frame), obj)
    except VOSInputError as e:  # a report never stops on a picture: say what is missing instead
        return Thumbnail(None, caption, str(e))
    h, w = rgb.shape[:2]
    scale = width / w
    small = cv2.resize(rgb, (width, max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    notes = []
    for mask, colour, thickness, what in ((gt, GT_RGB, GT_THICKNESS, "ground truth"),
                                          (pred, PRED_RGB, PRED_THICKNESS, "prediction")):
        if mask is None:
            notes.append(f"no {what} PNG")
        elif mask.shape != (h, w):
            notes.append(f"{what} is {mask.shape[1]}x{mask.shape[0]}, frame {w}x{h}")
        else:
            cv2.drawContours(small, _contours(mask, scale), -1, colour, thickness, lineType=cv2.LINE_AA)
    ok, jpeg = cv2.imencode(".jpg", small[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 85])
    if not ok:
        return Thumbnail(None, caption, "JPEG encoding failed")
    uri = "data:image/jpeg;base64," + base64.b64encode(jpeg.tobytes()).decode("ascii")
    return Thumbnail(uri, caption, "; ".join(notes))


# ----------------------------------------------------------------------------------------------------------------
# Charts (matplotlib, Agg: files only, no display)
# ----------------------------------------------------------------------------------------------------------------


def _plt():  # noqa: ANN202 - the pyplot module
    """pyplot on the Agg backend, imported on first use so that scoring without a report never loads matplotlib."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _mpl_text(text: str) -> str:
    """A name as matplotlib draws it literally: '$' would start mathtext (and a lone '$' fails to parse)."""
    return text.replace("$", r"\$")


CHART_LABEL = 40  # characters of a name a chart shows (the middle elided); the page's tables show it whole


def _shorten(name: str, width: int = CHART_LABEL) -> str:
    """`name`, or its start and end around '...' when longer than `width` characters."""
    if len(name) <= width:
        return name
    keep = width - 3
    return name[: (keep + 1) // 2] + "..." + name[len(name) - keep // 2 :]


def _png_uri(fig: object) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def axis_limits(values: Sequence[float], full: float = 1.0, diverging: bool = False) -> tuple[float, float]:
    """A bar chart's value axis: 0..full (1 for fractions, 100 for percentages), widened to hold any value beyond
    it; diverging (changes): symmetric around 0, 5 % past the largest change (full / 100 when nothing changed)."""
    finite = [float(v) for v in values if v is not None and math.isfinite(v)]
    if diverging:
        reach = 1.05 * max([abs(v) for v in finite] + [0.0]) or full / 100
        return -reach, reach
    return min([0.0, *finite]), max([full, *finite])


def bar_chart(labels: list[str], values: list[float], title: str, xlabel: str, mean: float | None = None,
              diverging: bool = False, full: float = 1.0, decimals: int = 3) -> str:
    """Horizontal bars, one per label, top to bottom in the given order, on the axis `axis_limits` gives (`full`:
    the top of the scale the values are in); the mean's label has `decimals` decimals. A PNG data: URI."""
    plt = _plt()
    n = len(labels)
    fig, ax = plt.subplots(figsize=(8, 1.2 + 0.22 * max(n, 1)), dpi=100, layout="constrained")
    y = np.arange(n)
    vals = np.nan_to_num(np.asarray(values, dtype=np.float64), nan=0.0)
    colours = np.where(vals < 0, "#d55e00", "#009e73") if diverging else "#0072b2"  # drops orange, gains green
    ax.barh(y, vals, color=colours, height=0.7)
    # a long name would take the whole width from the bars (matplotlib then warns that the layout collapsed); the
    # tables beside the chart give the full names
    ax.set_yticks(y, [_mpl_text(_shorten(s)) for s in labels], fontsize=8)
    ax.invert_yaxis()  # first label on top
    ax.set_ylim(n - 0.5, -0.5)
    if diverging:
        ax.axvline(0, color="black", linewidth=0.8)
    ax.set_xlim(*axis_limits([*values, *([] if mean is None else [mean])], full, diverging))
    if mean is not None and not math.isnan(mean):
        ax.axvline(mean, color="#cc79a7", linestyle="--", linewidth=1.2, label=f"mean {mean:.{decimals}f}")
        ax.legend(loc="lower right", bbox_to_anchor=(1.0, 1.0), fontsize=8, frameon=False)
    ax.set_xlabel(xlabel)
    ax.set_title(_mpl_text(title), fontsize=10, loc="left")
    ax.grid(axis="x", alpha=0.3)
    uri = _png_uri(fig)
    plt.close(fig)
    return uri


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) index ranges where mask is True."""
    edges = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1), strict=True))


class FramePlot:
    """J and F over one object's frames, the frames not counted shaded. One figure serves every object: its
    static parts (frame, y axis, legend) are drawn once and each object only redraws its lines, shading, x axis and
    title over them (matplotlib blitting), several times cheaper than a new figure per object. `result`'s unit
    (`Scores.percent`) sets the y axis and the title's decimals."""

    def __init__(self, result: Scores | None = None) -> None:
        self.scale = result.scale if result is not None else 1.0
        self.decimals = result.decimals if result is not None else 3
        plt = self._plt = _plt()
        from matplotlib.patches import Patch

        self.fig, self.ax = plt.subplots(figsize=(7.2, 1.9), dpi=90)
        self.fig.subplots_adjust(left=0.075, right=0.99, bottom=0.24, top=0.84)
        ax = self.ax
        (self.j_line,) = ax.plot([], [], color="#0072b2", linewidth=1.3, label="J (region)", animated=True)
        (self.f_line,) = ax.plot([], [], color="#d55e00", linewidth=1.3, label="F (boundary)", animated=True)
        handles = [self.j_line, self.f_line, Patch(facecolor=NOT_SCORED_GREY, label="not scored")]
        # Above the axes, so that no line ever covers it.
        ax.legend(handles=handles, loc="lower right", bbox_to_anchor=(1.0, 1.0), fontsize=8, ncol=3,
                  frameon=False, borderaxespad=0.1)
        ax.set_ylim(-0.02 * self.scale, 1.02 * self.scale)
        ax.set_ylabel("score (%)" if self.scale == 100 else "score", fontsize=8)
        ax.set_xlabel("frame index", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        ax.xaxis.set_animated(True)  # its ticks follow each object's frame count
        self.title = ax.set_title("", loc="left", fontsize=9, animated=True)
        self.fig.canvas.draw()
        self.background = self.fig.canvas.copy_from_bbox(self.fig.bbox)

    def render(self, obj: ObjectScores) -> str:
        """A PNG data: URI of obj's J and F per frame."""
        canvas, ax = self.fig.canvas, self.ax
        canvas.restore_region(self.background)
        n = len(obj.frames)
        x = np.arange(n)
        ax.set_xlim(-0.5, max(n - 0.5, 0.5))
        self.j_line.set_data(x, np.asarray(obj.j, dtype=np.float64) * self.scale)
        self.f_line.set_data(x, np.asarray(obj.f, dtype=np.float64) * self.scale)
        self.title.set_text(_mpl_text(f"{obj.name}: J&F {obj.jf:.{self.decimals}f}"))
        spans = [ax.axvspan(a - 0.5, b - 0.5, color=NOT_SCORED_GREY, zorder=0, linewidth=0, animated=True)
                 for a, b in _runs(~np.asarray(obj.counted, dtype=bool))]
        for artist in (*spans, ax.xaxis, self.j_line, self.f_line, self.title):
            ax.draw_artist(artist)
        for span in spans:
            span.remove()
        rgb = np.asarray(canvas.buffer_rgba())[:, :, :3]
        ok, png = cv2.imencode(".png", np.ascontiguousarray(rgb[:, :, ::-1]), [cv2.IMWRITE_PNG_COMPRESSION, 3])
        if not ok:
            raise RuntimeError(f"OpenCV could not encode the frame plot of {obj.name} as PNG")
        return "data:image/png;base64," + base64.b64encode(png.tobytes()).decode("ascii")

    def close(self) -> None:
        self._plt.close(self.fig)


# ----------------------------------------------------------------------------------------------------------------
# HTML
# ----------------------------------------------------------------------------------------------------------------

_CSS = """
body { font-family: sans-serif; margin: 1.5em; color: #222; max-width: 1300px; }
table { border-collapse: collapse; margin: 0.5em 0 1em; }
th, td { border: 1px solid #bbb; padding: 3px 8px; text-align: right; }
th { background: #eee; }
td.name, th.name { text-align: left; font-family: monospace; overflow-wrap: anywhere; max-width: 40em; }
h1, h3, summary, p { overflow-wrap: anywhere; } img { max-width: 100%; }
.meta td { text-align: left; font-family: monospace; white-space: pre-wrap; word-break: break-all; }
.thumbs { display: flex; flex-wrap: wrap; gap: 8px; margin-bottom: 1em; }
figure { margin: 0; } figcaption { font-size: 0.85em; }
.legend span { display: inline-block; width: 2em; height: 0.35em; vertical-align: middle; margin: 0 0.3em 0 1em; }
.missing { color: #a00; font-size: 0.85em; max-width: 384px; word-break: break-all; }
details { margin: 0.2em 0; } summary { cursor: pointer; font-family: monospace; }
.neg { color: #b34700; } .pos { color: #007a5a; }
"""


def esc(text: object) -> str:
    """Text from the data as HTML text or attribute value: every &, <, >, " and ' escaped."""
    return html.escape(str(text), quote=True)


def fmt(value: float, decimals: int = 3) -> str:
    """A number as the toolkits' CSVs write it; NaN as an empty string (pandas' empty field)."""
    return "" if value is None or math.isnan(value) else f"{value:.{decimals}f}"


def _cell(value: float, decimals: int, cls: str = "") -> str:
    text = fmt(value, decimals)
    klass = f' class="{cls}"' if cls else ""
    return f'<td{klass} data-value="{esc(text)}">{esc(text) if text else "n/a"}</td>'


def _page(title: str, body: list[str]) -> str:
    return "\n".join([
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        # No resource may come from anywhere: the page must read the same offline and from disk.
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; img-src data:; "
        "style-src 'unsafe-inline'\">",
        f"<title>{esc(title)}</title><style>{_CSS}</style></head><body>", *body, "</body></html>",
    ])


def _legend() -> str:
    gt, pred = ("rgb({},{},{})".format(*c) for c in (GT_RGB, PRED_RGB))
    return (f'<p class="legend">Contours:<span style="background:{gt}"></span>ground truth (wide, blue)'
            f'<span style="background:{pred}"></span>prediction (thin, orange)</p>')


def _figure(thumb: Thumbnail, label: str = "") -> str:
    caption = esc(f"{label}{thumb.caption}")
    if thumb.uri is None:
        return f'<figure><div class="missing">{esc(thumb.missing)}</div><figcaption>{caption}</figcaption></figure>'
    note = f'<div class="missing">{esc(thumb.missing)}</div>' if thumb.missing else ""
    alt = esc(f"{label}{thumb.caption} with ground-truth and predicted contours")
    return f'<figure><img src="{thumb.uri}" alt="{alt}">{note}<figcaption>{caption}</figcaption></figure>'


def _meta_table(scores: RunScores) -> str:
    rows = [("benchmark", scores.result.benchmark), ("split", scores.result.split), ("date", scores.date),
            ("weights", f"{scores.weights_name} ({scores.weights_id})" if scores.weights_id else scores.weights_name),
            ("command", scores.command), ("predictions", scores.pred_dir), ("ground truth", scores.gt_dir),
            ("frames", scores.frames_dir), *((str(k), str(v)) for k, v in scores.extra.items())]
    cells = "".join(f'<tr><th class="name">{esc(k)}</th><td data-field="{esc(k)}">{esc(v)}</td></tr>'
                    for k, v in rows)
    return f'<table class="meta">{cells}</table>'


def _global_table(scores: RunScores) -> str:
    head = "".join(f"<th>{esc(c)}</th>" for c, _ in scores.result.global_table)
    row = "".join(_cell(v, scores.result.decimals) for _, v in scores.result.global_table)
    return f'<table id="global"><tr>{head}</tr><tr>{row}</tr></table>'


def plural(n: int, noun: str) -> str:
    """'1 object', '2 objects'."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _unit_sentence(result: Scores) -> str:
    if result.percent:
        return "Every J, F and J&F on this page is a percentage (0-100), as the toolkit prints it."
    return "Every J, F and J&F on this page is a fraction (0-1), as the toolkit prints it."


def _sorted_objects(objects: list[ObjectScores]) -> list[ObjectScores]:
    """Worst J&F first; NaN last; ties in the toolkit's order."""
    return sorted(objects, key=lambda o: (math.isnan(o.jf), o.jf))


def render_report(scores: RunScores) -> str:
    """The HTML text of report.html (see `write_report`)."""
    result = scores.result
    title = f"{result.name}: evaluation report"
    d, unit = result.decimals, " (%)" if result.percent else ""
    ranked = _sorted_objects(result.objects)
    jf_mean = float(np.nanmean([o.jf for o in ranked])) if any(not math.isnan(o.jf) for o in ranked) else math.nan
    body = [f"<h1>{esc(title)}</h1>", _meta_table(scores), "<h2>Global results</h2>", _global_table(scores),
            f'<p class="unit">{esc(_unit_sentence(result))}</p>']

    body += [f"<h2>Per-object J&amp;F ({plural(len(ranked), 'object')}, worst first)</h2>"]
    if ranked:
        chart = bar_chart([o.name for o in ranked], [o.jf for o in ranked], "J&F per object", f"J&F{unit}",
                          mean=jf_mean, full=result.scale, decimals=d)
        body.append(f'<img src="{chart}" alt="bar chart of J&amp;F per object, worst first">')
    rows = [f"<tr><th>rank</th><th class=\"name\">object</th><th>J&amp;F{unit}</th><th>J{unit} (scored frames)</th>"
            f"<th>F{unit} (scored frames)</th><th>scored frames</th></tr>"]
    for rank, o in enumerate(ranked, 1):
        j, f = (o.counted_mean(m) * result.scale for m in ("j", "f"))
        rows.append(f'<tr class="object" data-object="{esc(o.name)}" data-jf="{esc(fmt(o.jf, d))}"><td>{rank}</td>'
                    f'<td class="name">{esc(o.name)}</td>{_cell(o.jf, d)}{_cell(j, d)}{_cell(f, d)}'
                    f'<td>{sum(o.counted)} of {len(o.frames)}</td></tr>')
    body.append(f'<table id="objects">{"".join(rows)}</table>')

    worst = [o for o in ranked if not math.isnan(o.jf)][:WORST_OBJECTS]
    body += [f"<h2>The {plural(len(worst), 'worst object')}: their {WORST_FRAMES} worst scored frames</h2>",
             _legend()]
    for o in worst:
        figures = [_figure(thumbnail(scores, o, i)) for i in o.worst_frames(WORST_FRAMES)]
        body.append(f'<h3 data-object="{esc(o.name)}">{esc(o.name)}: J&amp;F {esc(fmt(o.jf, d))}</h3>'
                    f'<div class="thumbs">{"".join(figures)}</div>')

    body.append("<h2>J and F over the frames of each object (shaded: frames the benchmark does not score)</h2>")
    plot = FramePlot(result)
    try:
        for rank, o in enumerate(ranked):
            opened = " open" if rank < WORST_OBJECTS else ""  # the worst objects' curves show without a click
            body.append(f'<details{opened} data-object="{esc(o.name)}"><summary>{esc(o.name)}: J&amp;F '
                        f'{esc(fmt(o.jf, d))}</summary><img src="{plot.render(o)}" alt="{esc(o.name)}: J and F per '
                        'frame"></details>')
    finally:
        plot.close()
    return _page(title, body)


def write_report(scores: RunScores, path: str | Path) -> Path:
    """Write report.html for one run at `path` (a file path, or a folder to hold report.html).

    One self-contained page: the run (command, weights, date), the global table, per-object J&F as a bar chart and a
    table, thumbnails of the worst frames of the worst objects, and J/F curves over the frames of every object.
    """
    path = Path(path)
    if path.is_dir():
        path = path / REPORT_NAME
    text = render_report(scores)
    return atomic_write(path, lambda f: f.write(text.encode("utf-8")))


# ----------------------------------------------------------------------------------------------------------------
# Comparing runs
# ----------------------------------------------------------------------------------------------------------------


def run_letters(n: int) -> list[str]:
    return [chr(ord("A") + k) if k < 26 else f"R{k + 1}" for k in range(n)]


def check_comparable(runs: list[RunScores], sources: list[str]) -> None:
    """Refuse runs of different benchmarks or splits: their numbers do not measure the same thing."""
    if len(runs) < 2:
        raise VOSInputError("--compare needs at least two results folders (or scores.json files)")
    for what in ("benchmark", "split"):
        values = [getattr(r.result, what) for r in runs]
        if len(set(values)) > 1:
            listed = ", ".join(f"{s} is {v}" for s, v in zip(sources, values, strict=True))
            raise VOSInputError(f"the runs differ in {what} ({listed}); compare runs of one benchmark and split")


@dataclass
class ObjectComparison:
    """One object across the runs: its J&F in each (NaN where a run lacks it) and the change from the first run."""

    name: str
    jf: list[float]
    objects: list[ObjectScores | None]

    @property
    def delta(self) -> float:
        """J&F of the last run minus the first's (NaN when either lacks the object)."""
        return self.jf[-1] - self.jf[0]


def compare_objects(runs: list[RunScores]) -> list[ObjectComparison]:
    """Every object of any run, sorted by the change from the first run to the last, biggest drop first (objects
    missing from a run last, in the first run's order)."""
    names = list(dict.fromkeys(o.name for r in runs for o in r.result.objects))
    by_run = [{o.name: o for o in r.result.objects} for r in runs]
    rows = []
    for name in names:
        objs = [m.get(name) for m in by_run]
        rows.append(ObjectComparison(name, [math.nan if o is None else o.jf for o in objs], objs))
    return sorted(rows, key=lambda c: (math.isnan(c.delta), c.delta if not math.isnan(c.delta) else 0.0))


def coverage_notes(runs: list[RunScores]) -> list[str]:
    """One line per run that lacks objects another run scored, naming them and their videos: runs on different
    videos or subsets are compared (the objects scored in every run are comparable row by row), but their global
    tables average over different objects, which each page and printout says here rather than refusing."""
    letters = run_letters(len(runs))
    every = {o.name: o.sequence for r in runs for o in r.result.objects}
    notes = []
    for k, r in zip(letters, runs, strict=True):
        have = {o.name for o in r.result.objects}
        lacking = [name for name in every if name not in have]
        if lacking:
            videos = list(dict.fromkeys(every[n] for n in lacking))
            shown = ", ".join(lacking[:8]) + (", ..." if len(lacking) > 8 else "")
            notes.append(f"note: run {k} did not score {plural(len(lacking), 'object')} that another run scored "
                         f"({shown}; {plural(len(videos), 'video')}: {', '.join(videos[:8])}"
                         f"{', ...' if len(videos) > 8 else ''}), so the global results are over different objects: "
                         "compare the per-object rows scored in every run")
    return notes


def format_comparison(runs: list[RunScores], sources: list[str], rows: list[ObjectComparison]) -> str:
    """The printed comparison: the runs, the notes on objects some runs lack, their global tables, then per-object
    J&F sorted by the change."""
    letters = run_letters(len(runs))
    lines = [f"{k} = {s}" + (f" ({', '.join(x for x in (r.weights_name, r.date) if x)})"
                             if r.weights_name or r.date else "")
             for k, s, r in zip(letters, sources, runs, strict=True)]
    lines += coverage_notes(runs)
    columns = list(dict.fromkeys(c for r in runs for c, _ in r.result.global_table))
    width = max([len(c) for c in columns] + [4])
    lines += ["", f" Global results {runs[0].result.benchmark} {runs[0].result.split} ".center(78, "-")]
    lines.append("run".ljust(4) + " ".join(c.rjust(width) for c in columns))
    for k, r in zip(letters, runs, strict=True):
        table = dict(r.result.global_table)
        decimals = r.result.decimals
        lines.append(k.ljust(4) + " ".join(fmt(table.get(c, math.nan), decimals).rjust(width) for c in columns))
    name_w = max([len("Object")] + [len(c.name) for c in rows])
    d = runs[0].result.decimals  # one benchmark: one unit and one number of decimals
    lines += ["", f" Per-object J&F, sorted by {letters[-1]} - {letters[0]} ".center(78, "-")]
    lines.append("Object".ljust(name_w) + "".join(f" {k:>7}" for k in letters) + f" {'delta':>7}")
    for c in rows:
        lines.append(c.name.ljust(name_w) + "".join(f" {fmt(v, d):>7}" for v in c.jf) + f" {fmt(c.delta, d):>7}")
    return "\n".join(lines)


def render_compare(runs: list[RunScores], sources: list[str], rows: list[ObjectComparison]) -> str:
    """The HTML text of compare.html (see `compare`)."""
    letters = run_letters(len(runs))
    first, last = letters[0], letters[-1]
    result = runs[0].result  # one benchmark and split (check_comparable): one unit
    d, unit = result.decimals, " (%)" if result.percent else ""
    title = f"{result.name}: comparison of {len(runs)} runs"
    body = [f"<h1>{esc(title)}</h1>", *(f'<p class="note">{esc(n)}</p>' for n in coverage_notes(runs)),
            "<h2>Runs</h2>"]
    run_rows = "".join(
        f'<tr><th>{k}</th><td class="name">{esc(s)}</td><td class="name">{esc(r.weights_name)} {esc(r.weights_id)}'
        f'</td><td class="name">{esc(r.date)}</td><td class="name">{esc(r.command)}</td></tr>'
        for k, s, r in zip(letters, sources, runs, strict=True))
    body.append('<table class="meta"><tr><th>run</th><th>results</th><th>weights</th><th>date</th><th>command</th>'
                f"</tr>{run_rows}</table>")

    columns = list(dict.fromkeys(c for r in runs for c, _ in r.result.global_table))
    head = "".join(f"<th>{esc(c)}</th>" for c in columns)
    grow = "".join(f'<tr data-run="{k}"><th>{k}</th>'
                   + "".join(_cell(dict(r.result.global_table).get(c, math.nan), r.result.decimals) for c in columns)
                   + "</tr>" for k, r in zip(letters, runs, strict=True))
    body += ["<h2>Global results</h2>", f'<table id="global"><tr><th>run</th>{head}</tr>{grow}</table>',
             f'<p class="unit">{esc(_unit_sentence(result))}</p>']

    both = [c for c in rows if not math.isnan(c.delta)]
    body.append(f"<h2>Per-object J&amp;F, sorted by the change {esc(last)} &minus; {esc(first)} "
                "(biggest drop first)</h2>")
    if both:
        chart = bar_chart([c.name for c in both], [c.delta for c in both], f"change in J&F per object, {last} - "
                          f"{first}", f"J&F({last}) - J&F({first}){unit}", diverging=True, full=result.scale,
                          decimals=d)
        body.append(f'<img src="{chart}" alt="bar chart of the change in J&amp;F per object">')
    head = "".join(f"<th>J&amp;F {k}</th>" for k in letters)
    trs = [f'<tr><th class="name">object</th>{head}<th>{esc(last)} &minus; {esc(first)}</th></tr>']
    for c in rows:
        sign = "neg" if c.delta < 0 else "pos" if c.delta > 0 else ""
        trs.append(f'<tr class="object" data-object="{esc(c.name)}" data-delta="{esc(fmt(c.delta))}">'
                   f'<td class="name">{esc(c.name)}</td>' + "".join(_cell(v, d) for v in c.jf)
                   + _cell(c.delta, d, sign) + "</tr>")
    body.append(f'<table id="objects">{"".join(trs)}</table>')

    changed = sorted(both, key=lambda c: -abs(c.delta))[:CHANGED_OBJECTS]
    body += [f"<h2>The {plural(len(changed), 'object')} that changed most: each run's worst scored frame, in every "
             "run</h2>",
             _legend()]
    for c in changed:
        # Each run's worst frame, shown for every run, so that the same frame can be read side by side.
        frames = list(dict.fromkeys(o.frames[i] for o in c.objects if o is not None for i in o.worst_frames(1)))
        body.append(f'<h3 data-object="{esc(c.name)}">{esc(c.name)}: ' + ", ".join(
            f"{k} {esc(fmt(v, d))}" for k, v in zip(letters, c.jf, strict=True)) + "</h3>")
        for frame in frames:
            figures = []
            for k, r, o in zip(letters, runs, c.objects, strict=True):
                if o is None or frame not in o.frames:
                    figures.append(f'<figure><div class="missing">run {k} did not score frame {esc(frame)} of '
                                   f"{esc(c.name)}</div></figure>")
                else:
                    figures.append(_figure(thumbnail(r, o, o.frames.index(frame)), f"run {k}, "))
            body.append(f'<div class="thumbs">{"".join(figures)}</div>')
    return _page(title, body)


def compare(runs: list[RunScores], out_dir: str | Path, sources: list[str] | None = None) -> tuple[Path, str]:
    """Write `out_dir/compare.html` for runs of one benchmark and split; returns (its path, the printed table).

    `sources` names the runs (their results folders) in the page and the table; the first run is the baseline and
    objects are sorted by the last run's J&F minus the first's.
    """
    sources = sources or [f"run {k}" for k in run_letters(len(runs))]
    check_comparable(runs, sources)
    rows = compare_objects(runs)
    text = render_compare(runs, sources, rows)
    path = atomic_write(Path(out_dir) / COMPARE_NAME, lambda f: f.write(text.encode("utf-8")))
    return path, format_comparison(runs, sources, rows)
