"""run.py --test end to end (on a shrunk copy of the sample), the official resize rule, and bad input (clear errors,
earlier outputs kept)."""

import csv
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import GOLDEN_WEIGHTS, random_checkpoint
from PIL import Image

import dataset
import run
from reports import visualize

ROOT = Path(__file__).resolve().parents[1]

WEIGHTS = GOLDEN_WEIGHTS


@pytest.fixture(scope="module")
def videomatch_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random VideoMatch checkpoint, built once for the module (building the network is most of a test's time)."""
    return random_checkpoint("videomatch", tmp_path_factory.mktemp("videomatch") / "videomatch.pth")


def _test(tmp_path: Path, *extra: str) -> int:
    return run.main(["--test", "--device", "cpu", "--weights", str(WEIGHTS), "--output", str(tmp_path / "out"),
                     *extra])


def _small_sample(tmp_path: Path, frames: int = 5, scale: int = 4) -> Path:
    """The bundled sample (DAVIS 2016 download layout) cut to bear and boat, their first `frames` frames, shrunk
    `scale` times (213x120 by default): the same files and names, a fraction of the model time."""
    root = tmp_path / "DAVIS2016"
    kept = []
    for line in (run.SAMPLE_ROOT / "ImageSets/480p/train.txt").read_text().splitlines():
        jpg, png = line.split()
        if int(Path(jpg).stem) >= frames or Path(jpg).parent.name not in ("bear", "boat"):
            continue
        for rel, resample in ((jpg, Image.BICUBIC), (png, Image.NEAREST)):
            image = Image.open(run.SAMPLE_ROOT / rel.lstrip("/"))
            (root / rel.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
            image.resize((image.width // scale, image.height // scale), resample).save(root / rel.lstrip("/"))
        kept.append(line)
    (root / "ImageSets/480p").mkdir(parents=True)
    (root / "ImageSets/480p/train.txt").write_text("\n".join(kept) + "\n")
    return root


def test_sample_end_to_end_writes_palette_pngs_and_csvs(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """No --data and no DAVIS at the default root runs the bundled sample and scores it. Fails if the newcomer path
    picks another root or needs a flag, a mask is written under a shifted name or not as a palette PNG of the frame's
    size, the first frame's output is the model's and not the given mask, or the CSV's J is not the IoU of the
    written masks over frames 1..L-2."""
    monkeypatch.setattr(run, "DAVIS_ROOT", str(tmp_path / "nowhere"))
    monkeypatch.setattr(run, "SAMPLE_ROOT", _small_sample(tmp_path))
    monkeypatch.setattr(dataset, "TEST_SHORT_SIDE", 120)  # the small sample's short side: run as it is
    assert _test(tmp_path, "--sequences", "bear") == 0
    out = tmp_path / "out" / "sample"
    pngs = sorted((out / "bear").glob("*.png"))
    assert [p.name for p in pngs] == [f"{i:05d}.png" for i in range(5)]
    img = Image.open(pngs[3])
    assert img.mode == "P" and img.size == (213, 120)
    assert set(np.unique(np.array(img))) <= {0, 1}
    gt0 = np.array(Image.open(run.SAMPLE_ROOT / "Annotations/480p/bear/00000.png")) != 0
    np.testing.assert_array_equal(np.array(Image.open(pngs[0])) != 0, gt0)
    rows = list(csv.reader((out / "global_results-sample.csv").read_text().splitlines()))
    assert rows[0] == ["J&F-Mean", "J-Mean", "J-Recall", "J-Decay", "F-Mean", "F-Recall", "F-Decay"]
    ious = []
    for png in pngs[1:-1]:
        pred = np.array(Image.open(png)) != 0
        gt = np.array(Image.open(run.SAMPLE_ROOT / "Annotations/480p/bear" / png.name)) != 0
        ious.append((pred & gt).sum() / (pred | gt).sum())
    assert float(rows[1][1]) == pytest.approx(np.mean(ious), abs=5e-4)
    assert float(rows[1][2]) == pytest.approx(np.mean(np.array(ious) > 0.5), abs=5e-4)  # J-Recall
    seq_rows = list(csv.reader((out / "per-sequence_results-sample.csv").read_text().splitlines()))
    assert [r[0] for r in seq_rows[1:]] == ["bear_1"]  # --sequences: only bear is run and scored
    printed = capsys.readouterr().out
    assert "bundled sample" in printed and "fps" in printed and "J&F" in printed


def test_youtubevos_late_object_original_size_and_zip(tmp_path: Path, ytvos_root: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """YouTube-VOS through run.py. Fails if the unscored frames are written or zipped, a video is run from before
    its first mask, masks go out at the run size instead of the original size, a late object's given mask is
    ignored or the zip lacks the server's Annotations/ prefix."""
    # a smaller "480" keeps the test fast while exercising resize-and-back exactly as at 480p
    monkeypatch.setattr(dataset, "TEST_SHORT_SIDE", 48)
    assert _test(tmp_path, "--data", "YTVOS18_val", "--ytvos", str(ytvos_root)) == 0
    out = tmp_path / "out" / "YTVOS18_val"
    assert sorted(p.name for p in (out / "vid_a").iterdir()) == ["00000.png", "00005.png"]
    assert sorted(p.name for p in (out / "vid_b").iterdir()) == ["00005.png", "00010.png"]  # starts at its mask
    late = np.array(Image.open(out / "vid_a" / "00005.png"))
    assert late.shape == (24, 32)  # back at the original size
    given = np.array(Image.open(ytvos_root / "valid/Annotations/vid_a/00005.png"))
    assert (late[given == 2] == 2).all()  # the late object's given pixels overwrite the prediction
    with zipfile.ZipFile(tmp_path / "out" / "YTVOS18_val.zip") as z:
        assert sorted(z.namelist()) == ["Annotations/vid_a/00000.png", "Annotations/vid_a/00005.png",
                                        "Annotations/vid_b/00005.png", "Annotations/vid_b/00010.png"]


def test_single_video_folder(tmp_path: Path, frame_folder: tuple[Path, Path],
                             monkeypatch: pytest.MonkeyPatch) -> None:
    """--video on a folder of frames. Fails if outputs are named by position instead of by frame (frame10 before
    frame2), written at the run size, or the first output is not the given mask."""
    monkeypatch.setattr(dataset, "TEST_SHORT_SIDE", 48)
    folder, mask = frame_folder
    assert _test(tmp_path, "--video", str(folder), "--mask", str(mask)) == 0
    out = tmp_path / "out" / folder.name
    assert sorted(p.name for p in out.iterdir()) == sorted(["frame1.png", "frame2.png", "frame10.png", "frame11.png"])
    assert all(Image.open(p).size == (32, 24) for p in out.iterdir())
    np.testing.assert_array_equal(np.array(Image.open(out / "frame1.png")), np.array(Image.open(mask)))


def test_resize_rule() -> None:
    """The official 480p rule. Fails if the long side is scaled to 480 (portrait), one small object does not keep
    the original size, or 480p frames are resized anyway."""
    big = np.zeros((720, 1280), np.uint8)
    big[100:300, 100:300] = 1
    assert dataset.official_size(720, 1280, [big]) == (480, 853)
    assert dataset.official_size(1280, 720, [big.T]) == (853, 480)  # portrait: the short side is the width
    tiny = np.zeros((720, 1280), np.uint8)
    tiny[10:40, 10:40] = 1  # 900 px, fewer than 1000 after resizing too: keep the original resolution
    assert dataset.official_size(720, 1280, [big, tiny]) is None
    assert dataset.official_size(480, 854, [big[:480, :854]]) is None  # already 480p


def test_resize_frame_bicubic_unclamped_and_mask_nearest() -> None:
    """Fails if frames are clamped to [0, 1] after bicubic resizing (the official code is not) or masks are
    resized with anything but nearest."""
    # bicubic overshoots at a step edge; the official code feeds the overshoot to the network, so no clamping
    frame = torch.zeros(3, 4, 8)
    frame[:, :, 4:] = 1.0
    out = dataset.resize_frame(frame, (8, 16))
    assert out.shape == (3, 8, 16) and out.max() > 1.0 and out.min() < 0.0
    torch.testing.assert_close(out, F.interpolate(frame[None], size=(8, 16), mode="bicubic")[0], rtol=0, atol=0)
    # nearest: output pixel i takes input pixel floor(i * in / out); ids are never blended
    mask = torch.arange(6).view(1, 6).expand(2, 6).contiguous()
    assert dataset.resize_mask(mask, (2, 4))[0].tolist() == [0, 1, 3, 4]


# --- bad input: a clear error naming the file and the fix, and what was written before stays -------------------

def _run_copy(tmp_path: Path, root: Path, capsys: pytest.CaptureFixture,
              monkeypatch: pytest.MonkeyPatch) -> tuple[int, str]:
    """Run DAVIS16_val on a broken copy of the small sample, over an earlier result that must survive."""
    monkeypatch.setattr(dataset, "TEST_SHORT_SIDE", 120)  # the small sample's short side: run as it is
    keep = tmp_path / "out" / "DAVIS16_val" / "earlier" / "00000.png"
    keep.parent.mkdir(parents=True)
    keep.write_bytes(b"earlier result")
    # the sample's list is train.txt: present it as the val split of a DAVIS 2016 download
    shutil.copy(root / "ImageSets/480p/train.txt", root / "ImageSets/480p/val.txt")
    code = _test(tmp_path, "--data", "DAVIS16_val", "--davis", str(root), "--sequences", "bear")
    assert keep.read_bytes() == b"earlier result"
    return code, capsys.readouterr().err


def test_missing_root(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Fails if a missing DAVIS root is a traceback or does not name the path and --davis."""
    assert _test(tmp_path, "--data", "DAVIS17_val", "--davis", str(tmp_path / "missing")) == 2
    err = capsys.readouterr().err
    assert "missing" in err and "--davis" in err


def test_mistyped_davis_root_is_an_error_not_the_sample(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Fails if a --davis that does not exist silently falls back to the bundled sample."""
    assert _test(tmp_path, "--davis", str(tmp_path / "DAVSI")) == 2
    err = capsys.readouterr().err
    assert "--davis" in err and "DAVSI" in err and "JPEGImages" in err
    assert not (tmp_path / "out" / "sample").exists()


def test_missing_checkpoint_says_where_to_put_it(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Fails if a missing --weights file is not named, or the message omits the aliases and --train."""
    code = run.main(["--test", "--device", "cpu", "--weights", str(tmp_path / "mine.pth")])
    assert code == 2
    err = capsys.readouterr().err
    assert "mine.pth" in err and "official-davis" in err and "--train" in err


def test_missing_frame(tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """Fails if a listed frame that is not on disk is skipped instead of refused by name."""
    root = _small_sample(tmp_path)
    (root / "JPEGImages/480p/bear/00000.jpg").unlink()
    code, err = _run_copy(tmp_path, root, capsys, monkeypatch)
    assert code == 2 and "00000.jpg" in err


def test_mask_size_differs_from_frame(tmp_path: Path, capsys: pytest.CaptureFixture,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Fails if a given mask of another size than its frame is resized silently (or crashes the model)."""
    root = _small_sample(tmp_path)
    path = root / "Annotations/480p/bear/00000.png"
    Image.open(path).resize((106, 60)).save(path)
    code, err = _run_copy(tmp_path, root, capsys, monkeypatch)
    assert code == 2 and "00000.png is 106x60 but its frame" in err and "213x120" in err


def test_rgb_mask(tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """Fails if an RGB mask is read as ids (its channels averaged or one channel taken)."""
    root = _small_sample(tmp_path)
    path = root / "Annotations/480p/bear/00000.png"
    Image.open(path).convert("RGB").save(path)
    code, err = _run_copy(tmp_path, root, capsys, monkeypatch)
    assert code == 2 and "00000.png" in err and "RGB" in err


def test_first_mask_without_object(tmp_path: Path, capsys: pytest.CaptureFixture,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Fails if an empty first mask runs (the model would track nothing) instead of being refused."""
    root = _small_sample(tmp_path)
    path = root / "Annotations/480p/bear/00000.png"
    Image.fromarray(np.zeros((120, 213), np.uint8), "L").save(path)
    code, err = _run_copy(tmp_path, root, capsys, monkeypatch)
    assert code == 2 and "00000.png" in err and "no object" in err


def test_corrupt_jpeg_keeps_the_frames_already_written(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Fails if a corrupt frame is a traceback, or the masks of the frames before it are lost (queued writes
    dropped when the run stops)."""
    root = _small_sample(tmp_path)
    (root / "JPEGImages/480p/bear/00002.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    code, err = _run_copy(tmp_path, root, capsys, monkeypatch)
    assert code == 2 and "00002.jpg" in err
    written = sorted(p.name for p in (tmp_path / "out/DAVIS16_val/bear").glob("*.png"))
    assert written == ["00000.png", "00001.png"]  # the frames before the bad one are on disk


def test_videomatch_end_to_end_with_visualisation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   videomatch_weights: Path) -> None:
    """VideoMatch through --test --visualize. Fails if the overlay or the figure land among the masks, the overlay
    misses frames or is not at the frame's size, or the figure is not of the --vis-frame frame and its one object."""
    import cv2

    ckpt = videomatch_weights
    monkeypatch.setattr(run, "SAMPLE_ROOT", _small_sample(tmp_path, frames=4))
    monkeypatch.setattr(dataset, "TEST_SHORT_SIDE", 120)
    code = run.main(["--test", "--device", "cpu", "--weights", str(ckpt), "--output", str(tmp_path / "out"),
                     "--data", "sample", "--sequences", "boat", "--visualize", "--vis-frame", "2"])
    assert code == 0
    seq = tmp_path / "out" / "sample" / "boat"
    assert sorted(p.name for p in seq.iterdir()) == [f"{i:05d}.png" for i in range(4)]  # masks only
    assert (tmp_path / "out" / "sample" / "global_results-sample.csv").exists()
    vis = tmp_path / "out" / "visualize" / "sample" / "boat"
    assert sorted(p.name for p in vis.iterdir()) == ["overlay.mp4", "probabilities_00002.png"]
    cap = cv2.VideoCapture(str(vis / "overlay.mp4"))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 4
    assert (int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)))[1] == 120
    cap.release()
    maps = Image.open(vis / "probabilities_00002.png")
    # one row for the one object: the frame, P(foreground), P(background) at the frame's aspect, and a colour bar
    width, height = maps.size
    assert visualize.PANEL_HEIGHT < height < 2 * visualize.PANEL_HEIGHT
    assert width > 3 * visualize.PANEL_HEIGHT * 213 // 120


def test_method_mismatch_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Fails if --method videomatch with an EMVOS checkpoint runs EMVOS silently."""
    assert _test(tmp_path, "--method", "videomatch", "--data", "sample") == 2
    assert "--method" in capsys.readouterr().err


def test_prob_maps_through_run_py(tmp_path: Path, videomatch_weights: Path) -> None:
    """--prob-maps REF MASK IMG IMG. Fails if not one map per image is written under OUTPUT/prob_maps."""
    root = _small_sample(tmp_path)
    seq = root / "JPEGImages/480p/bear"
    ref, ref_mask, out = seq / "00000.jpg", root / "Annotations/480p/bear/00000.png", tmp_path / "out"
    assert run.main(["--prob-maps", str(ref), str(ref_mask), str(seq / "00003.jpg"), str(seq / "00004.jpg"),
                     "--weights", str(videomatch_weights), "--device", "cpu", "--output", str(out)]) == 0
    assert sorted(p.name for p in (out / "prob_maps").iterdir()) == ["00_00003_probabilities.png",
                                                                     "01_00004_probabilities.png"]


def test_prob_maps_refuses_emvos_and_preview_augmentation(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Fails if --prob-maps runs an EMVOS checkpoint (its probabilities are the decoder's, not the matching
    layer's), or --preview-augmentation does not write OUTPUT/augmentation_<IMG>.png."""
    seq = run.SAMPLE_ROOT / "JPEGImages/480p/bear"
    ref, ref_mask, out = seq / "00000.jpg", run.SAMPLE_ROOT / "Annotations/480p/bear/00000.png", tmp_path / "out"
    assert run.main(["--prob-maps", str(ref), str(ref_mask), str(seq / "00003.jpg"), "--weights", str(WEIGHTS),
                     "--device", "cpu", "--output", str(out)]) == 2
    assert "VideoMatch" in capsys.readouterr().err
    assert run.main(["--preview-augmentation", str(ref), str(ref_mask), "--output", str(out)]) == 0
    assert (out / "augmentation_00000.png").is_file()


@pytest.mark.parametrize(("argv", "says"), [
    (["--test", "--stages", "davis"], "--stages does nothing with --test"),
    (["--train", "--video", "clip.mp4"], "--video does nothing with --train"),
    (["--test", "--video", "clip.mp4", "--mask", "m.png", "--sequences", "bear"], "--video runs one video"),
    (["--test", "--vis-frame", "3"], "pass --visualize too"),
    (["--train", "--method", "videomatch", "--train-encoder"], "--train-encoder is for EMVOS"),
])
def test_flags_that_would_do_nothing_are_errors(argv: list[str], says: str, capsys: pytest.CaptureFixture) -> None:
    """Fails if a flag of the other mode (or one that needs another) is accepted and silently ignored."""
    assert run.main(argv) == 2
    assert says in capsys.readouterr().err
