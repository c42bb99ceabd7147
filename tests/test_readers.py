"""run.py --test on today's benchmark layouts (MOSE, LVOS, SA-V, generic folders), built tiny from real DAVIS 2016
frames, with test_extend's Propagate method (the previous mask is the next prediction, so every written mask is
known exactly); the videos spread over torchrun processes."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import DAVIS2016_SAMPLE, save_mask, write_jpeg
from PIL import Image
from propagate_run import KILL_RANK, SHORT_SIDE, propagate_method

import dataset
import run
from benchmarks import lvos
from core import inference, methods
from utils import VOSInputError

ROOT = Path(__file__).resolve().parents[1]
H, W = SHORT_SIDE, 64
BOX = (slice(2, 10), slice(2, 14))  # object 2: a box in the top-left corner, away from the bear


def frame(t: int) -> np.ndarray:
    """Bear frame t of the real sample at 64x36."""
    img = Image.open(DAVIS2016_SAMPLE / "JPEGImages/480p/bear" / f"{t:05d}.jpg").resize((W, H), Image.BICUBIC)
    return np.asarray(img)


def bear(t: int) -> np.ndarray:
    """Bear mask t at 64x36 as a bool map, kept off the box of object 2."""
    img = Image.open(DAVIS2016_SAMPLE / "Annotations/480p/bear" / f"{t:05d}.png").resize((W, H), Image.NEAREST)
    mask = np.asarray(img) != 0
    mask[BOX] = False
    return mask


def ids(t: int, box: bool) -> np.ndarray:
    """Object 1 = the bear at t, object 2 = the box (if `box`)."""
    out = bear(t).astype(np.uint8)
    if box:
        out[BOX] = 2
    return out


def read(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


@pytest.fixture
def weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Propagate registered (undone after the test), the resize rule at the test frames' size, and its checkpoint."""
    entry = propagate_method()
    monkeypatch.setitem(methods.METHODS, entry.name, entry)
    monkeypatch.setattr(dataset, "TEST_SHORT_SIDE", SHORT_SIDE)
    path = tmp_path / "propagate.pth"
    torch.save(methods.weights_payload(entry.model(), entry.name), path)
    return path


def test_run(weights: Path, out: Path, *args: str) -> int:
    return run.main(["--test", "--device", "cpu", "--weights", str(weights), "--output", str(out), *args])


test_run.__test__ = False  # a helper, not a test


def make_mose(root: Path, lengths: dict[str, int]) -> Path:
    for name, n in lengths.items():
        for t in range(n):
            write_jpeg(root / "valid/JPEGImages" / name / f"{t:05d}.jpg", frame(t))
        save_mask(root / "valid/Annotations" / name / "00000.png", ids(0, box=True))
    return root


def make_lvos(root: Path) -> Path:
    """LVOS val: 7 frames 00000001..00000031 (step 5), every frame annotated; the bear (1) from the first frame, the
    box (2) from 00000011 (its frame_range start)."""
    names = [f"{1 + 5 * k:08d}" for k in range(7)]
    for k, name in enumerate(names):
        write_jpeg(root / "valid/JPEGImages/lv1" / f"{name}.jpg", frame(k))
        save_mask(root / "valid/Annotations/lv1" / f"{name}.png", ids(k, box=k >= 2))
    objects = {"1": {"frame_range": {"start": 1, "end": 31, "frame_nums": 7}},
               "2": {"frame_range": {"start": 11, "end": 31, "frame_nums": 5}}}
    (root / "valid/valid_meta.json").write_text(json.dumps({"videos": {"lv1": {"objects": objects}}}))
    return root


def test_mose_writes_every_frame_and_a_zip_with_videos_at_its_root(weights: Path, tmp_path: Path) -> None:
    """Bugs: a frame not written (MOSE is scored on all of them), the given mask read from a later frame, names not
    5-digit, or the zip holding 'Annotations/<video>' (the MOSE servers read the video folders at the root)."""
    root = make_mose(tmp_path / "MOSE", {"m1": 4, "m2": 3})
    assert test_run(weights, tmp_path / "out", "--data", "MOSE_val", "--mose", str(root)) == 0
    for name, n in (("m1", 4), ("m2", 3)):
        pngs = sorted((tmp_path / "out/MOSE_val" / name).iterdir())
        assert [p.name for p in pngs] == [f"{t:05d}.png" for t in range(n)]
        for p in pngs:
            np.testing.assert_array_equal(read(p), ids(0, box=True))
    with zipfile.ZipFile(tmp_path / "out/MOSE_val.zip") as z:
        assert sorted(z.namelist()) == sorted([f"m1/{t:05d}.png" for t in range(4)] + [f"m2/{t:05d}.png" for t in
                                                                                        range(3)])


def test_lvos_gives_each_object_at_its_start_and_scores_by_lvos_rules(weights: Path, tmp_path: Path) -> None:
    """Bugs: the late object given at the first frame (or not at all), the validation GT of a tracked object given
    again at a later object's start (the answer given away), frames misnamed, or the scores not the LVOS toolkit's
    (frames of each object's range without its first and last, per-object rows `<video>_<k>`)."""
    root = make_lvos(tmp_path / "LVOS")
    assert test_run(weights, tmp_path / "out", "--data", "LVOS_val", "--lvos", str(root)) == 0
    out = tmp_path / "out/LVOS_val"
    names = [f"{1 + 5 * k:08d}" for k in range(7)]
    assert sorted(p.name for p in (out / "lv1").iterdir()) == [f"{n}.png" for n in names]
    for k, name in enumerate(names):
        # the bear propagated from frame 0 (never re-given), the box from its start on
        np.testing.assert_array_equal(read(out / "lv1" / f"{name}.png"), ids(0, box=k >= 2), err_msg=name)
    rows = {r[0]: r for r in csv.reader((out / "per-sequence_results-valid.csv").read_text().splitlines())}
    j_bear = np.mean([(bear(0) & bear(k)).sum() / (bear(0) | bear(k)).sum() for k in range(1, 6)])
    assert float(rows["lv1_1"][1]) == pytest.approx(j_bear, abs=5e-4)
    assert float(rows["lv1_2"][1]) == 1.0
    assert (out / "global_results-valid.csv").is_file()


def test_lvos_test_zips_for_its_server(weights: Path, tmp_path: Path) -> None:
    """Bug: LVOS test scored (it has first masks only) or zipped without the `Annotations/` folder its server
    reads."""
    root = make_lvos(tmp_path / "LVOS")
    (root / "valid").rename(root / "test")
    (root / "test/valid_meta.json").rename(root / "test/test_meta.json")
    assert test_run(weights, tmp_path / "out", "--data", "LVOS_test", "--lvos", str(root)) == 0
    with zipfile.ZipFile(tmp_path / "out/LVOS_test.zip") as z:
        assert sorted(z.namelist()) == [f"Annotations/lv1/{1 + 5 * k:08d}.png" for k in range(7)]
    assert not list((tmp_path / "out/LVOS_test").glob("*.csv"))


def make_sav(root: Path, videos: tuple[str, ...] = ("s1",)) -> Path:
    """SA-V val: 9 frames at 24 fps, masks every 4th (6 fps): object 000 the bear, 001 the box."""
    base = root / "sav_val"
    for name in videos:
        for t in range(9):
            write_jpeg(base / "JPEGImages_24fps" / name / f"{t:05d}.jpg", frame(t))
            if t % 4 == 0:
                save_mask(base / "Annotations_6fps" / name / "000" / f"{t:05d}.png", bear(t).astype(np.uint8))
                box = np.zeros((H, W), np.uint8)
                box[BOX] = 1
                save_mask(base / "Annotations_6fps" / name / "001" / f"{t:05d}.png", box)
    (base / "sav_val.txt").write_text("".join(f"{v}\n" for v in videos))
    return root


def test_sav_writes_per_object_pngs_and_scores_by_sav_rules(weights: Path, tmp_path: Path) -> None:
    """Bugs: object folders not `<obj:03d>` as SAM2's --per_obj_png_file writes them, the 0/1 PNG of one object
    holding another, the 24 fps frames without masks, or results.csv not sav_evaluator's (object rows per folder)."""
    root = make_sav(tmp_path / "SAV")
    assert test_run(weights, tmp_path / "out", "--data", "SAV_val", "--sav", str(root)) == 0
    out = tmp_path / "out/SAV_val/s1"
    assert sorted(p.name for p in out.iterdir()) == ["000", "001"]
    box = np.zeros((H, W), np.uint8)
    box[BOX] = 1
    for t in range(9):
        img = Image.open(out / "000" / f"{t:05d}.png")
        assert img.mode == "P"
        np.testing.assert_array_equal(np.asarray(img), bear(0).astype(np.uint8))
        np.testing.assert_array_equal(read(out / "001" / f"{t:05d}.png"), box)
    rows = list(csv.reader((tmp_path / "out/SAV_val/results.csv").read_text().splitlines()))
    by_obj = {r[1].strip(): r for r in rows[2:]}
    assert set(by_obj) == {"000", "001"}
    j_bear = 100 * ((bear(0) & bear(4)).sum() / (bear(0) | bear(4)).sum())  # only 00004: first and last dropped
    assert float(by_obj["000"][3]) == pytest.approx(j_bear, abs=0.05)
    assert float(by_obj["001"][3]) == 100.0


def test_generic_uses_every_mask_orders_frames_by_number_and_writes_every_frame(weights: Path,
                                                                              tmp_path: Path) -> None:
    """Bugs: frames in text order ('10' before '2'), a later mask ignored (the late box), the frame before the first
    mask not written, or masks written under other names."""
    root = tmp_path / "G"
    for t in range(1, 11):
        write_jpeg(root / "JPEGImages/g1" / f"{t}.jpg", frame(t - 1))
    save_mask(root / "Annotations/g1/2.png", ids(1, box=False))
    late = np.zeros((H, W), np.uint8)
    late[BOX] = 2
    save_mask(root / "Annotations/g1/5.png", late)
    assert test_run(weights, tmp_path / "out", "--data", "generic", "--generic", str(root)) == 0
    out = tmp_path / "out/generic/g1"
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{t}.png" for t in range(1, 11))
    assert not read(out / "1.png").any()
    for t in range(2, 11):
        np.testing.assert_array_equal(read(out / f"{t}.png"), ids(1, box=t >= 5), err_msg=str(t))


def test_sequences_score_only_the_videos_run(weights: Path, tmp_path: Path) -> None:
    """Bug: `--sequences` scoring the folders an earlier run left in the output (SA-V's evaluator scores every video
    folder it finds) or failing on the videos not run (LVOS's toolkit scores every video of its meta)."""
    sav = make_sav(tmp_path / "SAV", ("s1", "s2"))
    assert test_run(weights, tmp_path / "out", "--data", "SAV_val", "--sav", str(sav)) == 0
    assert test_run(weights, tmp_path / "out", "--data", "SAV_val", "--sav", str(sav), "--sequences", "s2") == 0
    rows = list(csv.reader((tmp_path / "out/SAV_val/results.csv").read_text().splitlines()))[2:]
    assert sorted((r[0].strip(), r[1].strip()) for r in rows) == [("s2", "000"), ("s2", "001")]
    lvos = make_lvos(tmp_path / "LVOS")
    meta = json.loads((lvos / "valid/valid_meta.json").read_text())
    meta["videos"]["lv2"] = meta["videos"]["lv1"]  # listed, never run
    (lvos / "valid/valid_meta.json").write_text(json.dumps(meta))
    (lvos / "valid/JPEGImages/lv2").symlink_to(lvos / "valid/JPEGImages/lv1")
    assert test_run(weights, tmp_path / "out", "--data", "LVOS_val", "--lvos", str(lvos), "--sequences", "lv1") == 0
    rows = list(csv.reader((tmp_path / "out/LVOS_val/per-sequence_results-valid.csv").read_text().splitlines()))
    assert [r[0] for r in rows[1:]] == ["lv1_1", "lv1_2"]


@pytest.mark.parametrize("layout", ["mose", "lvos", "sav", "generic"])
def test_a_root_of_another_layout_is_refused_naming_what_is_missing(layout: str, tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture,
                                                                    weights: Path) -> None:
    """Bug: a wrong root read as an empty benchmark (a run that scores nothing) or failing later with a traceback,
    instead of one line naming the missing folder or file and the flag, exit 2, before the model loads."""
    root = make_mose(tmp_path / "MOSE", {"m1": 2}) if layout != "mose" else tmp_path / "empty"
    root.mkdir(exist_ok=True)
    key = {"mose": "MOSE_val", "lvos": "LVOS_val", "sav": "SAV_val", "generic": "generic"}[layout]
    assert test_run(weights, tmp_path / "out", "--data", key, f"--{layout}", str(root)) == 2
    err = capsys.readouterr().err.strip()
    missing = {"mose": "valid/JPEGImages", "lvos": "valid/valid_meta.json", "sav": "sav_val/JPEGImages_24fps",
               "generic": "JPEGImages"}[layout]
    assert len(err.splitlines()) == 1 and f"--{layout} {root} has no {missing}" in err, err


def test_names_from_lists_must_be_plain(tmp_path: Path) -> None:
    """Bug: a meta or list entry like '../x' becomes the output folder OUTPUT/<key>/../x, outside the output."""
    root = make_lvos(tmp_path / "LVOS")
    meta = json.loads((root / "valid/valid_meta.json").read_text())
    meta["videos"]["../escape"] = meta["videos"]["lv1"]
    (root / "valid/valid_meta.json").write_text(json.dumps(meta))
    with pytest.raises(VOSInputError, match="not a plain folder name"):
        lvos.LVOS(root)


def test_balance_is_greedy_longest_first() -> None:
    """Bug: videos dealt round-robin or in list order, which leaves one process with the long videos."""
    videos = [dataset.VideoReader(str(n), [Path("x")] * n, {}, []) for n in (1, 7, 3, 4, 2)]
    parts = inference.balance(videos, 2)
    assert [[len(v) for v in p] for p in parts] == [[7, 2], [4, 3, 1]]


def _torchrun(out: Path, *args: str, timeout: int = 90, env: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(ROOT / "tests/propagate_run.py"), "--test", "--device", "cpu", "--output", str(out), *args]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def test_torchrun_two_processes_write_what_one_does_with_one_zip_and_one_score(weights: Path, tmp_path: Path) -> None:
    """Bugs: both processes running every video (or none running some), a process scoring or zipping its own share
    (two sets of CSVs, a zip that misses the other process's masks), or masks that differ from one process's."""
    mose = make_mose(tmp_path / "MOSE", {"m1": 4, "m2": 3, "m3": 2})
    lvos = make_lvos(tmp_path / "LVOS")
    args = ("--weights", str(weights), "--data", "MOSE_val", "LVOS_val", "--mose", str(mose), "--lvos", str(lvos))
    assert run.main(["--test", "--device", "cpu", "--output", str(tmp_path / "one"), *args]) == 0
    done = _torchrun(tmp_path / "two", *args)
    assert done.returncode == 0, done.stderr[-3000:]
    files = sorted(p.relative_to(tmp_path / "one") for p in (tmp_path / "one").rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(tmp_path / "two") for p in (tmp_path / "two").rglob("*") if p.is_file())
    for rel in files:
        if rel.suffix == ".png":
            np.testing.assert_array_equal(read(tmp_path / "one" / rel), read(tmp_path / "two" / rel))
        elif rel.suffix == ".csv":
            assert (tmp_path / "one" / rel).read_text() == (tmp_path / "two" / rel).read_text()
    with zipfile.ZipFile(tmp_path / "one/MOSE_val.zip") as a, zipfile.ZipFile(tmp_path / "two/MOSE_val.zip") as b:
        assert a.namelist() == b.namelist()
    # each video run once: one fps line per video in all processes' output together
    assert sum(done.stdout.count(f"MOSE_val {v}:") for v in ("m1", "m2", "m3")) == 3


def test_torchrun_a_failing_video_stops_the_job_with_one_line_naming_it(weights: Path, tmp_path: Path) -> None:
    """Bugs: the other process waiting forever in the gather (the subprocess timeout fires), a traceback per process
    instead of one line, or a message that does not say which video failed."""
    mose = make_mose(tmp_path / "MOSE", {"m1": 4, "bad": 3})
    write_jpeg(mose / "valid/JPEGImages/bad/00002.jpg", np.zeros((H + 4, W, 3), np.uint8))  # another size
    done = _torchrun(tmp_path / "out", "--weights", str(weights), "--data", "MOSE_val", "--mose", str(mose))
    assert done.returncode != 0
    lines = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, done.stderr[-3000:]
    assert "MOSE_val: video bad failed in process 1 of 2" in lines[0] and "00002.jpg" in lines[0]
    assert not (tmp_path / "out/MOSE_val.zip").exists()


def test_torchrun_a_killed_process_ends_the_job(weights: Path, tmp_path: Path) -> None:
    """Bug: process 0 waiting forever in the gather for a process that was SIGKILLed (the subprocess timeout
    fires), or scoring and zipping the videos it has as if the job were complete."""
    mose = make_mose(tmp_path / "MOSE", {"m1": 3, "m2": 3})
    done = _torchrun(tmp_path / "out", "--weights", str(weights), "--data", "MOSE_val", "--mose", str(mose),
                     env={KILL_RANK: "1"})
    assert done.returncode != 0
    assert "Signals.SIGKILL" in done.stderr or "SIGKILL" in done.stderr, done.stderr[-3000:]
    assert not (tmp_path / "out/MOSE_val.zip").exists()
