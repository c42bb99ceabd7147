"""report.html / compare.html from real scoring of the bundled DAVIS sample, checked in headless Chromium's DOM.

The Chromium tests are skipped only when no Chromium is installed and this is not CI (the CI environment variable);
in CI they must run (.ci/run installs Chromium when it is missing).

`python tests/test_report.py` times write_report on DAVIS-2016-val-sized data (20 sequences, 1376 frames at 854x480,
thumbnails from the real frames); it is not a test.
"""

from __future__ import annotations

import csv
import math
import os
import shutil
import subprocess
import sys
import time
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import evaluation  # noqa: E402
from benchmarks import davis  # noqa: E402
from benchmarks.common import ObjectScores, Scores  # noqa: E402
from reports import report  # noqa: E402
from utils import VOSInputError, read_mask, save_mask  # noqa: E402

SAMPLE = ROOT / "sample" / "DAVIS2016"
HOSTILE = "<img src=x onerror=alert(1)>"  # a legal folder name on Linux


# ---------------------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------------------


def chromium() -> str:
    """The Chromium binary, or skip (fail in CI, where the test must run)."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    if os.environ.get("CI"):
        pytest.fail("Chromium is not installed; CI must render the reports (apt-get install chromium)")
    pytest.skip("Chromium is not installed (apt-get install chromium)")


def dump_dom(html_path: Path, tmp_path: Path) -> str:
    """The DOM as headless Chromium builds it from the file (scripts, if any, run)."""
    out = subprocess.run(
        [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'chromium-profile'}", "--dump-dom", html_path.resolve().as_uri()],
        capture_output=True, text=True, timeout=60, check=True)
    return out.stdout


class Element:
    def __init__(self, tag: str, attrs: dict[str, str | None]) -> None:
        self.tag, self.attrs, self.text, self.children = tag, attrs, "", []

    def all(self, tag: str) -> list[Element]:
        """Descendants with this tag, in document order (Chromium adds <tbody> between <table> and <tr>)."""
        found = []
        for child in self.children:
            found += ([child] if child.tag == tag else []) + child.all(tag)
        return found

    def cells(self) -> list[Element]:
        return [c for c in self.children if c.tag in ("td", "th")]


class Tree(HTMLParser):
    """Every element with its attributes and the text inside it (its descendants' included)."""

    VOID = {"img", "meta", "br", "hr", "input", "link"}

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[Element] = []
        self.stack: list[Element] = []
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list) -> None:
        el = Element(tag, dict(attrs))
        if self.stack:
            self.stack[-1].children.append(el)
        self.elements.append(el)
        if tag not in self.VOID:
            self.stack.append(el)

    def handle_endtag(self, tag: str) -> None:
        while self.stack:
            if self.stack.pop().tag == tag:
                break

    def handle_data(self, data: str) -> None:
        for el in self.stack:
            el.text += data

    def find(self, tag: str, **attrs: str) -> list[Element]:
        return [e for e in self.elements if e.tag == tag and all(e.attrs.get(k) == v for k, v in attrs.items())]


def perturbed_run(gt: dict[str, list[Path]], out: Path, shift: int) -> None:
    """Predictions = the GT masks moved right by shift * t pixels at frame t (errors that grow over the video)."""
    for seq, paths in gt.items():
        for t, path in enumerate(paths):
            save_mask(out / seq / path.name, np.roll(read_mask(path, binary=True), shift * t, axis=1))


@pytest.fixture
def sample_gt(tmp_path: Path) -> tuple[dict[str, list[Path]], Path]:
    """The bundled sample's GT (bear, boat) plus a copy of boat under a hostile folder name; frames folder."""
    root = tmp_path / "DAVIS"
    for sub in ("Annotations/480p", "JPEGImages/480p"):
        (root / sub).mkdir(parents=True)
        for seq in ("bear", "boat"):
            (root / sub / seq).symlink_to(SAMPLE / sub / seq)
        (root / sub / HOSTILE).symlink_to(SAMPLE / sub / "boat")
    # The hostile copy of boat first: the objects' own order is then not their J&F order (boat beats bear).
    gt = {seq: sorted((root / "Annotations" / "480p" / seq).glob("*.png")) for seq in (HOSTILE, "bear", "boat")}
    return gt, root / "JPEGImages" / "480p"


def scored_run(gt: dict[str, list[Path]], frames_dir: Path, out: Path, shift: int,
               split: str = "train") -> tuple[report.RunScores, Path, Path]:
    perturbed_run(gt, out, shift)
    result, global_csv, seq_csv = davis.evaluate_and_write(gt, out, split, binary=True, workers=1)
    gt_dir = next(iter(gt.values()))[0].parent.parent
    scores = report.run_scores(result, frames_dir=frames_dir, gt_dir=gt_dir, pred_dir=out,
                               mask_layout="binary", command=f"test --shift {shift}", date="2026-12-01T10:00:00")
    scores.weights_name, scores.weights_id = "w.pth", "0123abcd"
    return scores, global_csv, seq_csv


def read_csv(path: Path) -> list[list[str]]:
    with open(path, newline="") as f:
        return list(csv.reader(f))


def no_remote_resources(tree: Tree, text: str) -> None:
    for el in tree.elements:
        for key in ("src", "href", "srcset", "poster", "data"):
            value = el.attrs.get(key) or ""
            assert not value.lower().startswith(("http:", "https:", "//")), (el.tag, key, value[:80])
    assert "url(" not in text.lower() and "@import" not in text.lower()
    assert "<script" not in text.lower()


# ---------------------------------------------------------------------------------------------------------------
# report.html
# ---------------------------------------------------------------------------------------------------------------


def test_adapter_per_frame_scores_reduce_to_the_csv(sample_gt: tuple, tmp_path: Path) -> None:
    """The scorer's per-frame J/F (davis.evaluate_and_write's Scores through report.run_scores), averaged over the
    counted frames, give the CSV's J-Mean and F-Mean; every frame is listed, the first and last as not counted (the
    protocol drops them; the report shades them). Catches frames named off by one, per-frame arrays of another
    object, or the first/last frame counted."""
    gt, frames = sample_gt
    scores, _, seq_csv = scored_run(gt, frames, tmp_path / "res", shift=4)
    rows = {r[0]: r for r in read_csv(seq_csv)[1:]}
    assert [o.name for o in scores.result.objects] == list(rows)
    for obj in scores.result.objects:
        assert obj.counted.tolist() == [False] + [True] * (len(obj.frames) - 2) + [False]
        assert davis._fmt(obj.counted_mean("j")) == rows[obj.name][1]
        assert davis._fmt(obj.counted_mean("f")) == rows[obj.name][2]
        assert obj.frames == [p.stem for p in gt[obj.sequence]]


def test_report_in_chromium(sample_gt: tuple, tmp_path: Path) -> None:
    """report.html as Chromium reads it: the global table equals the CSV, one row per object in worst-first order
    with the value of its bar, the worst frames' thumbnails, nothing fetched from the network, and the hostile
    sequence name shown as text. Catches an unescaped name (an <img src=x> element appears), a remote resource,
    a table that drifts from the CSV, missing objects or thumbnails, and a wrong sort order."""
    gt, frames = sample_gt
    out = tmp_path / "res"
    scores, global_csv, seq_csv = scored_run(gt, frames, out, shift=6)
    path = report.write_report(scores, out)
    assert path == out / "report.html"
    text = dump_dom(path, tmp_path)
    tree = Tree(text)

    header, values = read_csv(global_csv)
    table = tree.find("table", id="global")[0]
    head_row, value_row = table.all("tr")
    assert [c.text for c in head_row.cells()] == header
    assert [c.attrs["data-value"] for c in value_row.cells()] == values
    assert [c.text for c in value_row.cells()] == values

    rows = [e for e in tree.find("tr") if e.attrs.get("class") == "object"]
    csv_rows = read_csv(seq_csv)[1:]
    assert sorted(r.attrs["data-object"] for r in rows) == sorted(r[0] for r in csv_rows)
    jfs = [float(r.attrs["data-jf"]) for r in rows]
    assert jfs == sorted(jfs)  # worst first, as the bars
    objects = scores.result.objects
    assert [o.jf for o in objects] != sorted(o.jf for o in objects)  # so that the sort is tested
    by_name = {r[0]: (float(r[1]) + float(r[2])) / 2 for r in csv_rows}
    for r in rows:
        assert abs(float(r.attrs["data-jf"]) - by_name[r.attrs["data-object"]]) <= 1e-3

    thumbs = [e for e in tree.find("img") if e.attrs.get("src", "").startswith("data:image/jpeg;base64,")]
    assert len(thumbs) == len(rows) * report.WORST_FRAMES  # 3 objects, 6 counted frames each
    assert all("contours" in e.attrs["alt"] for e in thumbs)
    assert len(tree.find("details")) == len(rows)  # one J/F plot per object
    no_remote_resources(tree, text)

    assert not [e for e in tree.find("img") if e.attrs.get("src") == "x"]  # the name did not become an element
    assert any(e.text == f"{HOSTILE}_1" for e in tree.find("td"))
    assert "&lt;img src=x onerror=alert(1)&gt;_1" in text


def test_thumbnail_colours_follow_the_legend(tmp_path: Path) -> None:
    """The ground truth's contour is drawn in GT_RGB and the prediction's in PRED_RGB, as the legend says, each where
    its own mask lies. Catches swapped colours or both contours drawn from one mask."""
    import cv2

    h, w = 96, 160
    frame = np.full((h, w, 3), 255, np.uint8)
    (tmp_path / "frames" / "v").mkdir(parents=True)
    cv2.imwrite(str(tmp_path / "frames" / "v" / "00001.jpg"), frame)
    gt, pred = np.zeros((h, w), np.uint8), np.zeros((h, w), np.uint8)
    gt[20:70, 10:60] = 2  # object 2, left
    pred[20:70, 100:150] = 2  # object 2, right
    pred[0:10, 0:10] = 1  # another object: not drawn
    save_mask(tmp_path / "gt" / "v" / "00001.png", gt)
    save_mask(tmp_path / "pred" / "v" / "00001.png", pred)
    obj = ObjectScores("v_2", "v", "2", ["00001"], [0.0], [0.0], [True], 0.0)
    scores = report.RunScores(Scores("davis", "val", [("J&F-Mean", 0.0)], [obj], 3), str(tmp_path / "frames"),
                              str(tmp_path / "gt"), str(tmp_path / "pred"))
    thumb = report.thumbnail(scores, obj, 0, width=w)
    import base64

    img = cv2.imdecode(np.frombuffer(base64.b64decode(thumb.uri.split(",", 1)[1]), np.uint8), cv2.IMREAD_COLOR)
    rgb = img[:, :, ::-1].astype(int)

    def near(y: int, x: int, colour: tuple[int, int, int]) -> bool:
        return np.abs(rgb[y, x] - np.array(colour)).max() < 40

    assert near(45, 10, report.GT_RGB) and near(45, 100, report.PRED_RGB)
    assert near(5, 5, (255, 255, 255))  # object 1 has no contour


def test_worst_frames_skip_frames_not_counted() -> None:
    """Worst frames come from the counted frames only, NaN never. Catches choosing the protocol's dropped first
    frame (often the worst) or a NaN frame."""
    obj = ObjectScores("a_1", "a", "1", ["0", "1", "2", "3", "4"], [0.0, 0.5, math.nan, 0.2, 0.9],
                              [0.0, 0.5, math.nan, 0.4, 0.9], [False, True, True, True, True], 0.5)
    assert obj.worst_frames(3) == [3, 1, 4]


def test_scores_json_round_trip(tmp_path: Path) -> None:
    """save_scores/load_scores keep every field, NaN included, and refuse a file of another format. Catches NaN
    written as invalid JSON or read back as None, and a silently accepted foreign file."""
    obj = ObjectScores("s_1", "s", "1", ["a", "b"], [math.nan, 0.5], [1.0, math.nan], [False, True],
                              math.nan)
    scores = report.RunScores(Scores("lvos", "valid", [("J&F-Mean", 81.25), ("V-Mean", math.nan)], [obj], 2), "f", "g",
                              "p", command="x", weights_name="w", weights_id="id", date="d", extra={"note": "n"})
    path = report.save_scores(scores, tmp_path / "scores.json")
    back = report.load_scores(tmp_path)
    assert report.scores_to_json(back) == report.scores_to_json(scores)
    assert math.isnan(back.result.objects[0].j[0]) and math.isnan(back.result.value("V-Mean"))
    path.write_text(path.read_text().replace(f'"format": {report.FORMAT_VERSION}', '"format": 99'))
    with pytest.raises(VOSInputError, match="format 99"):
        report.load_scores(path)
    with pytest.raises(VOSInputError, match="does not exist"):
        report.load_scores(tmp_path / "nowhere")


def test_names_with_dollars_render(tmp_path: Path) -> None:
    r"""An object named like TeX ('$\frac$') is drawn literally, not parsed as mathtext (which would raise).
    Catches a missing '$' escape in the chart labels."""
    name = r"x$\frac$y"
    obj = ObjectScores(name, name, "1", ["0", "1", "2"], [0.1, 0.2, 0.3], [0.1, 0.2, 0.3],
                              [False, True, False], 0.2)
    scores = report.RunScores(Scores("davis", "val", [("J&F-Mean", 0.2)], [obj], 3), str(tmp_path), str(tmp_path),
                              str(tmp_path))
    text = report.render_report(scores)
    assert report.esc(name) in text and "frame image" not in text


# ---------------------------------------------------------------------------------------------------------------
# compare.html
# ---------------------------------------------------------------------------------------------------------------


def test_compare_in_chromium(sample_gt: tuple, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """compare.html and the printed table for two scored runs, read back from scores.json through the
    evaluation.py --compare hook: per-object J&F of both runs as in their CSVs, sorted by B - A, thumbnails of both
    runs, nothing remote. Catches a wrong sort, runs swapped, values that differ from the runs' CSVs, and
    thumbnails of one run only."""
    gt, frames = sample_gt
    runs, csvs = [], []
    for name, shift in (("A", 2), ("B", 8)):
        scores, _, seq_csv = scored_run(gt, frames, tmp_path / name, shift)
        report.save_scores(scores, tmp_path / name / report.SCORES_NAME)
        runs.append(scores)
        csvs.append({r[0]: (float(r[1]) + float(r[2])) / 2 for r in read_csv(seq_csv)[1:]})
    assert evaluation.main(["--compare", str(tmp_path / "A"), str(tmp_path / "B"), "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {tmp_path / 'compare.html'}" in printed

    text = dump_dom(tmp_path / "compare.html", tmp_path)
    tree = Tree(text)
    rows = [e for e in tree.find("tr") if e.attrs.get("class") == "object"]
    assert sorted(r.attrs["data-object"] for r in rows) == sorted(csvs[0])
    deltas = [float(r.attrs["data-delta"]) for r in rows]
    assert deltas == sorted(deltas) and deltas[0] < 0  # B moves masks further: a drop, listed first
    for r in rows:
        a, b, d = (float(c.attrs["data-value"]) for c in r.cells()[1:4])
        assert abs(a - csvs[0][r.attrs["data-object"]]) <= 1e-3 and abs(b - csvs[1][r.attrs["data-object"]]) <= 1e-3
        assert abs((b - a) - d) <= 2e-3
    thumbs = [e for e in tree.find("img") if e.attrs.get("src", "").startswith("data:image/jpeg;base64,")]
    assert thumbs and {e.attrs["alt"].split(",")[0] for e in thumbs} == {"run A", "run B"}
    no_remote_resources(tree, text)
    assert not [e for e in tree.find("img") if e.attrs.get("src") == "x"]
    # the printed table lists every object, biggest drop first
    listed = [line.split()[0] for line in printed.splitlines() if line.startswith(("bear_", "boat_"))]
    assert listed and listed[0] == rows[0].attrs["data-object"]


def test_compare_refuses_other_split_or_benchmark(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Runs of different splits or benchmarks are refused with one line and exit status 2, and no compare.html is
    written. Catches comparing numbers that do not measure the same thing."""
    def run(benchmark: str, split: str) -> report.RunScores:
        return report.RunScores(Scores(benchmark, split, [("J&F-Mean", 0.5)], [], 3), "f", "g", "p")

    with pytest.raises(VOSInputError, match="differ in split"):
        report.compare([run("davis", "val"), run("davis", "train")], tmp_path)
    report.save_scores(run("davis", "val"), tmp_path / "a" / "scores.json")
    report.save_scores(run("lvos", "val"), tmp_path / "b" / "scores.json")
    assert evaluation.main(["--compare", str(tmp_path / "a"), str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "differ in benchmark" in err
    assert not (tmp_path / "a" / "compare.html").exists()


# ---------------------------------------------------------------------------------------------------------------
# timing on DAVIS-2016-val-sized data (not a test)
# ---------------------------------------------------------------------------------------------------------------


def synthetic_davis16_val(tmp: Path, data: Path) -> report.RunScores:
    """20 sequences, 1376 frames at 854x480 (DAVIS 2016 val's size): real frames and GT of the DAVIS 2016 tree `data`
    (its sequences cycled; each needs 69 annotated frames), predictions = GT moved sideways, random per-frame scores."""
    rng = np.random.default_rng(0)
    seqs = sorted(p.name for p in (data / "JPEGImages" / "480p").iterdir())
    lengths = [69] * 16 + [68] * 4  # 1376 frames
    objects = []
    for k, n in enumerate(lengths):
        src = seqs[k % len(seqs)]
        name = f"seq{k:02d}"
        (tmp / "frames").mkdir(exist_ok=True)
        (tmp / "gt").mkdir(exist_ok=True)
        (tmp / "frames" / name).symlink_to(data / "JPEGImages" / "480p" / src)
        (tmp / "gt" / name).symlink_to(data / "Annotations" / "480p" / src)
        frames = [f"{t:05d}" for t in range(n)]
        for t in range(n):
            save_mask(tmp / "pred" / name / f"{t:05d}.png",
                      np.roll(read_mask(tmp / "gt" / name / f"{t:05d}.png", binary=True), 5, axis=1))
        j = rng.uniform(0.3, 1.0, n).tolist()
        objects.append(ObjectScores(f"{name}_1", name, "1", frames, j, rng.uniform(0.3, 1.0, n).tolist(),
                                           [False] + [True] * (n - 2) + [False], float(np.mean(j))))
    return report.RunScores(Scores("davis", "val", list(zip(davis.GLOBAL_COLUMNS, [0.5] * 7, strict=True)), objects, 3),
                            str(tmp / "frames"), str(tmp / "gt"), str(tmp / "pred"), mask_layout="binary")


if __name__ == "__main__":
    import tempfile

    if len(sys.argv) != 2:
        sys.exit("usage: python tests/test_report.py DAVIS2016_ROOT (a DAVIS 2016 tree, 69 annotated frames or more "
                 "per sequence: the full download, not the bundled sample)")
    data = Path(sys.argv[1])
    with tempfile.TemporaryDirectory() as tmp:
        scores = synthetic_davis16_val(Path(tmp), data)
        objects = scores.result.objects
        gt = {o.sequence: [Path(scores.gt_dir) / o.sequence / f"{t}.png" for t in o.frames] for o in objects}
        start = time.perf_counter()
        davis.evaluate_sequences(gt, Path(scores.pred_dir), binary=True, workers=2)
        scoring = time.perf_counter() - start
        start = time.perf_counter()
        path = report.write_report(scores, Path(tmp) / "report.html")
        seconds = time.perf_counter() - start
        print(f"{len(objects)} objects, {sum(len(o.frames) for o in objects)} frames: scoring "
              f"(davis.evaluate_sequences, 2 workers) {scoring:.2f} s, write_report {seconds:.2f} s, "
              f"report.html {path.stat().st_size / 1e6:.1f} MB")
