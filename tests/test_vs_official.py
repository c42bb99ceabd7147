"""tools/vs_official.py without the authors' code and without pypng: its refusals, the temporary DAVIS 2017 root it
builds, the mask agreement, the peak memory of a timed process, and the order and arithmetic of a run whose
processes are stood in for."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import save_mask, write_jpeg

from benchmarks.davis import DAVIS
from tools import make_golden, vs_official

SEQ = "tiny"


def tiny_davis(root: Path, frames: int = 4) -> Path:
    """A DAVIS 2017 root with one sequence of `frames` 8x8 frames, each annotated (object 1, a 4x4 square)."""
    for t in range(frames):
        rgb = np.full((8, 8, 3), 30 * t, np.uint8)
        ids = np.zeros((8, 8), np.uint8)
        ids[2:6, t : t + 4] = 1
        write_jpeg(root / "JPEGImages" / "480p" / SEQ / f"{t:05d}.jpg", rgb)
        save_mask(root / "Annotations" / "480p" / SEQ / f"{t:05d}.png", ids)
    return root


def fake_official(folder: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder the official check accepts: its emvos.py's blob id is made the expected one."""
    (folder / "evaluation").mkdir(parents=True)
    (folder / "dataset_loaders").mkdir()
    (folder / "emvos.py").write_text("# stands in for the authors' emvos.py\n")
    monkeypatch.setattr(make_golden, "OFFICIAL_EMVOS_BLOB",
                        make_golden.git_blob_id((folder / "emvos.py").read_bytes()))
    return folder


def setup(tmp_path: Path, **change: str) -> tuple[list[str], Path]:
    """(argv, --out) of a run on the tiny root whose one problem, if any, is `change`'s."""
    davis, weights, out = tiny_davis(tmp_path / "davis"), tmp_path / "w.pth", tmp_path / "out"
    weights.write_bytes(b"checkpoint")
    given = {"official": str(tmp_path / "EMVOS"), "--davis": str(davis), "--weights": str(weights), "--frames": "3"}
    given.update(change)
    argv = [given.pop("official"), "--sequence", SEQ, "--out", str(out)]
    for flag, value in given.items():
        argv += [flag, value]
    return argv, out


def refused(argv: list[str], capsys: pytest.CaptureFixture) -> str:
    """stderr of a run that must exit 2 with one line."""
    assert vs_official.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    return err


def test_missing_official_dir_is_refused_before_any_work(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Bug: a missing OFFICIAL_DIR found only when the authors' process fails, after our warm-up run (minutes), or
    a run folder left behind by a refused run."""
    argv, out = setup(tmp_path)
    err = refused(argv, capsys)
    assert "OFFICIAL_DIR" in err and "emvos.py" in err and "7e1e200" in err
    assert not out.exists() or not any(out.iterdir())


def test_another_emvos_py_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Bug: another version of the authors' emvos.py (or any file of that name) timed as the official code: the blob
    id check of tools/make_golden.py skipped or compared with the wrong constant."""
    official = tmp_path / "EMVOS"
    (official / "evaluation").mkdir(parents=True)
    (official / "dataset_loaders").mkdir()
    (official / "emvos.py").write_text("print('not the authors code')\n")
    argv, _ = setup(tmp_path)
    err = refused(argv, capsys)
    assert "OFFICIAL_DIR" in err and make_golden.OFFICIAL_EMVOS_BLOB in err


def test_too_few_frames_under_davis_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Bug: --frames larger than the sequence, so that both sides silently run fewer frames than asked (or the
    authors' TestDAVIS fails half way)."""
    argv, _ = setup(tmp_path, **{"--frames": "5"})
    err = refused(argv, capsys)
    assert "--davis" in err and "--frames 5" in err and "holds 4" in err


def test_missing_weights_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Bug: a missing --weights found by each subprocess in turn, after minutes of warm-up."""
    argv, _ = setup(tmp_path, **{"--weights": str(tmp_path / "nowhere.pth")})
    err = refused(argv, capsys)
    assert "--weights" in err and "nowhere.pth" in err


def test_black_white_masks_and_fp16_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Bugs: DAVIS 2016 0/255 masks under --davis (run.py's DAVIS 2017 reader refuses them only after the warm-up
    would start; the authors' reader reads 255 as void, no object) and --precision fp16, which run.py refuses on
    the CPU."""
    argv, _ = setup(tmp_path, **{"--precision": "fp16"})
    assert "--precision fp16" in refused(argv, capsys)
    from PIL import Image

    argv, _ = setup(tmp_path / "bw")
    first = tmp_path / "bw" / "davis" / "Annotations" / "480p" / SEQ / "00000.png"
    Image.fromarray(np.where(np.asarray(Image.open(first)) > 0, 255, 0).astype(np.uint8), "L").save(first)
    err = refused(argv, capsys)
    assert "--davis" in err and "0/255" in err


def test_missing_pypng_is_refused_with_the_fix(tmp_path: Path, capsys: pytest.CaptureFixture,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Bug: without pypng the authors' process dies on `import png` after our warm-up run, instead of one line that
    says what to install."""
    fake_official(tmp_path / "EMVOS", monkeypatch)
    monkeypatch.setitem(sys.modules, "png", None)  # `import png` raises ImportError
    argv, _ = setup(tmp_path)
    assert "pip install pypng" in refused(argv, capsys)


def test_the_temporary_root_holds_the_first_frames_and_both_readers_find_them(tmp_path: Path) -> None:
    """Bugs: the root linking every frame instead of the first --frames (the authors' TestDAVIS lists the folder, so
    it would run them all), a frame without its mask or the mask of a frame beyond them (this repository's reader
    refuses an annotation whose frame is missing), or a split list that DAVIS17_val does not read."""
    davis = tiny_davis(tmp_path / "davis")
    frames, masks = vs_official.check_sequence(davis, SEQ, 3)
    root = vs_official.build_root(tmp_path / "root", SEQ, frames, masks)
    names = ["00000", "00001", "00002"]
    assert sorted(p.name for p in (root / "JPEGImages" / "480p" / SEQ).iterdir()) == [f"{n}.jpg" for n in names]
    assert sorted(p.name for p in (root / "Annotations" / "480p" / SEQ).iterdir()) == [f"{n}.png" for n in names]
    assert (root / "ImageSets" / "2017" / "val.txt").read_text() == f"{SEQ}\n"
    assert (root / "JPEGImages" / "480p" / SEQ / "00001.jpg").read_bytes() == \
        (davis / "JPEGImages" / "480p" / SEQ / "00001.jpg").read_bytes()
    ours = DAVIS(root, "2017", "val")
    assert ours.sequences == [SEQ] and [p.name for p in ours.frames(SEQ)] == [f"{n}.jpg" for n in names]
    assert [p.name for p in ours.annotations(SEQ)] == [f"{n}.png" for n in names]


def test_agreement_counts_equal_ids_over_all_pixels(tmp_path: Path) -> None:
    """Bugs: the share taken per frame and averaged unweighted, foreground only, on colours instead of ids, or
    frames paired by position instead of name; a missing frame or a size mismatch compared anyway."""
    a = [np.zeros((4, 4), np.uint8), np.ones((4, 4), np.uint8)]
    b = [x.copy() for x in a]
    b[0][0, 0], b[0][3, 3], b[1][2, 1] = 2, 1, 0  # 3 of 32 pixels differ
    for folder, masks in (("a", a), ("b", b)):
        for t, ids in enumerate(masks):
            save_mask(tmp_path / folder / f"{t:05d}.png", ids)
    agree = vs_official.mask_agreement(tmp_path / "a", tmp_path / "b")
    assert (agree.equal, agree.pixels, agree.frames) == (29, 32, 2) and agree.share == 29 / 32
    (tmp_path / "b" / "00001.png").unlink()
    with pytest.raises(ValueError, match="different masks"):
        vs_official.mask_agreement(tmp_path / "a", tmp_path / "b")
    save_mask(tmp_path / "b" / "00001.png", np.ones((4, 5), np.uint8))
    with pytest.raises(ValueError, match=r"\(4, 5\)"):
        vs_official.mask_agreement(tmp_path / "a", tmp_path / "b")


def test_a_timed_process_reports_its_own_peak_memory_and_wall_time(tmp_path: Path) -> None:
    """Bugs: ru_maxrss read as bytes or as MiB (it is KiB on Linux), the tool's own rusage reported instead of the
    child's, or a failed child's exit status lost."""
    code = "import sys, time; b = bytearray(300 * 2**20); b[::4096] = b'x' * len(b[::4096]); time.sleep(0.3); " \
           "sys.exit(3)"
    proc = vs_official.timed("x", [sys.executable, "-c", code], tmp_path, tmp_path / "x.log")
    assert proc.returncode == 3 and proc.wall_s >= 0.3
    assert 300 <= proc.peak_rss_mib < 600, proc.peak_rss_mib


def test_a_run_warms_up_then_alternates_and_writes_every_number(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Processes stood in for (no authors' code, no run.py): each writes masks where the real one would. Bugs: the
    warm-up counted in a round, the sides not alternating (ours first, or all of one side first), the ratio
    inverted, the median of the wrong side, the agreement read from another round or another folder, an earlier
    run folder reused, the temporary root left behind."""
    fake_official(tmp_path / "EMVOS", monkeypatch)
    monkeypatch.setitem(sys.modules, "png", sys)  # any module: the check only imports it
    argv, out = setup(tmp_path, **{"--rounds": "3"})
    walls = {"ours_warmup": 9.0, "authors_1": 6.0, "ours_1": 2.0, "authors_2": 9.0, "ours_2": 4.0, "authors_3": 7.0,
             "ours_3": 3.0}
    calls, roots = [], []

    envs = []

    def fake_timed(side: str, cmd: list[str], cwd: Path, log: Path, env: dict | None = None
                   ) -> vs_official.Process:
        name, output = log.stem, Path(cmd[-1])
        calls.append(name)
        envs.append((side, cmd, env))
        if side == "ours":
            root = Path(cmd[cmd.index("--davis") + 1])
            roots.append(root)
            assert DAVIS(root, "2017", "val").sequences == [SEQ] and cmd[cmd.index("--data") + 1] == "DAVIS17_val"
            output = output / "DAVIS17_val"
        else:
            assert Path(cmd[1]).read_text() == vs_official.DRIVER and cmd[4] == str(roots[-1])
        ids = np.zeros((8, 8), np.uint8)
        if name == "ours_3":
            ids[0, :5] = 1  # 5 pixels of each of its 3 frames differ: 15 of the last round's 192
        for t in range(3):
            save_mask(output / SEQ / f"{t:05d}.png", ids)
        log.write_text("")
        return vs_official.Process(side, cmd, walls[name], 100.0 + walls[name], 0, str(log))

    monkeypatch.setattr(vs_official, "timed", fake_timed)
    assert vs_official.main(argv) == 0
    assert vs_official.main(argv) == 0  # a second run: a second folder
    assert calls[:7] == list(walls) and calls[7:] == list(walls)
    assert not any(r.exists() for r in roots)
    folders = sorted(out.iterdir())
    assert len(folders) == 2
    result = json.loads((folders[0] / "result.json").read_text())
    assert result["first_run_s"] == 9.0 and result["authors_median_s"] == 7.0 and result["ours_median_s"] == 3.0
    assert result["ratio"] == pytest.approx(7 / 3)
    assert (result["authors_peak_rss_mib"], result["ours_peak_rss_mib"]) == (109.0, 104.0)
    assert (result["agreement_pixels"], result["differing_pixels"], result["agreement_frames"]) == (192, 15, 3)
    printed = capsys.readouterr().out
    assert "2.33x" in printed and "first run (ours, warm-up): 9.0 s" in printed and "15 differ" in printed
    # --compile and --no-report reach our side only; ours then compiles into a cache of the run's own folder
    assert not any(env for _, _, env in envs)
    envs.clear()
    assert vs_official.main([*argv, "--compile", "--no-report"]) == 0
    third = sorted(out.iterdir())[-1]
    for side, cmd, env in envs:
        assert ("--compile" in cmd and "--no-report" in cmd) == (side == "ours")
        assert env == ({"TORCHINDUCTOR_CACHE_DIR": str(third / "inductor_cache")} if side == "ours" else None)
