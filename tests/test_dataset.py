"""Tests of the image I/O helpers (utils.py), the dataset readers (dataset.py) and the clip samplers (samplers.py)."""

from __future__ import annotations

import random
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from conftest import square_frame
from PIL import Image
from torch.utils.data import DataLoader

import dataset
from benchmarks.davis import DAVIS
from benchmarks.ytvos import YouTubeVOS
from dataset import SingleVideo, VideoReader
from training.samplers import TrainCOCO, TrainDAVIS, TrainYTVOS, random_crop_params, seed_worker
from utils import DAVIS_PALETTE, VOSInputError, atomic_write, read_frame, read_mask, save_mask

# ----------------------------------------------------------------------------------------------------------------------
# utils.py image I/O
# ----------------------------------------------------------------------------------------------------------------------


def test_palette_is_the_davis_palette() -> None:
    assert len(DAVIS_PALETTE) == 768
    colours = [tuple(DAVIS_PALETTE[3 * i : 3 * i + 3]) for i in range(256)]
    assert colours[:9] == [
        (0, 0, 0),
        (128, 0, 0),
        (0, 128, 0),
        (128, 128, 0),
        (0, 0, 128),
        (128, 0, 128),
        (0, 128, 128),
        (128, 128, 128),
        (64, 0, 0),
    ]
    assert colours[255] == (224, 224, 192)  # the DAVIS / VOC "void" colour
    assert len(set(colours)) == 256


def test_save_and_read_mask_roundtrip(tmp_path: Path) -> None:
    ids = np.array([[0, 1, 2], [3, 17, 0]], np.uint8)
    path = tmp_path / "deep" / "dir" / "00000.png"
    save_mask(path, ids)
    img = Image.open(path)
    assert img.mode == "P" and img.getpalette()[:9] == DAVIS_PALETTE[:9]
    np.testing.assert_array_equal(read_mask(path), ids)
    np.testing.assert_array_equal(read_mask(path, binary=True), ids != 0)
    assert [p.name for p in path.parent.iterdir()] == ["00000.png"]  # no temporary file left behind


def test_atomic_write_replaces_whole_or_not_at_all(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "out.bin"
    assert atomic_write(path, lambda f: f.write(b"first")) == path  # parent folders are created
    assert path.read_bytes() == b"first" and path.stat().st_mode & 0o777 == 0o644

    def half_then(exc: BaseException):
        def write(f) -> None:
            f.write(b"half of the new conte")
            f.flush()  # the partial bytes really are in the temporary file when the failure comes
            raise exc

        return write

    for exc in (OSError(28, "No space left on device"), KeyboardInterrupt()):
        with pytest.raises(type(exc)):
            atomic_write(path, half_then(exc))
        assert path.read_bytes() == b"first"  # the old file, untouched
        assert [p.name for p in path.parent.iterdir()] == ["out.bin"]  # no temporary file left
    atomic_write(path, lambda f: f.write(b"second"))
    assert path.read_bytes() == b"second" and [p.name for p in path.parent.iterdir()] == ["out.bin"]


def test_save_mask_failing_mid_write_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def failing_save(self, fp, *args, **kwargs) -> None:
        fp.write(b"\x89PNG\r\n\x1a\n")  # a PNG signature and nothing else: what a full disk leaves
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", failing_save)
    with pytest.raises(OSError, match="No space"):
        save_mask(tmp_path / "00000.png", np.zeros((4, 4), np.uint8))
    assert list(tmp_path.iterdir()) == []


def test_read_mask_void_and_binary_grayscale(tmp_path: Path, davis2016_root: Path) -> None:
    # Palette mask: 255 is DAVIS void -> background.
    save_mask(tmp_path / "void.png", np.array([[0, 1, 255]], np.uint8))
    np.testing.assert_array_equal(read_mask(tmp_path / "void.png"), [[0, 1, 0]])
    # Grayscale 0/255 (the DAVIS 2016 download): 255 is the object.
    real = read_mask(davis2016_root / "Annotations" / "480p" / "bear" / "00000.png")
    assert real.shape == (480, 854) and set(np.unique(real)) == {0, 1}
    # Grayscale with small values: index values as they are.
    Image.fromarray(np.array([[0, 2, 3]], np.uint8)).save(tmp_path / "l.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "l.png"), [[0, 2, 3]])


def test_read_mask_raw_keeps_stored_values(tmp_path: Path) -> None:
    # raw=True is the evaluator's reading (the official toolkit's np.array(Image.open(path))): no void mapping.
    save_mask(tmp_path / "void.png", np.array([[0, 1, 255]], np.uint8))
    np.testing.assert_array_equal(read_mask(tmp_path / "void.png", raw=True), [[0, 1, 255]])
    Image.fromarray(np.array([[0, 255]], np.uint8)).save(tmp_path / "bw.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "bw.png", raw=True), [[0, 255]])
    np.testing.assert_array_equal(read_mask(tmp_path / "bw.png", binary=True, raw=True), [[0, 1]])
    Image.fromarray(np.array([[0, 300]], np.uint16)).save(tmp_path / "wide.png")  # 16-bit grayscale
    np.testing.assert_array_equal(read_mask(tmp_path / "wide.png", raw=True), [[0, 300]])
    with pytest.raises(VOSInputError, match="outside 0..255"):
        read_mask(tmp_path / "wide.png")
    Image.fromarray(np.array([[[2, 255], [0, 0]]], np.uint8), "LA").save(tmp_path / "la.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "la.png", raw=True), [[2, 0]])  # alpha dropped

    class OtherError(Exception):
        pass

    Image.fromarray(np.zeros((2, 2, 3), np.uint8)).save(tmp_path / "rgb.png")
    with pytest.raises(OtherError, match="rgb.png' is a RGB image"):
        read_mask(tmp_path / "rgb.png", raw=True, error=OtherError)


def test_read_frame(tmp_path: Path, davis2016_root: Path) -> None:
    frame = read_frame(davis2016_root / "JPEGImages" / "480p" / "bear" / "00000.jpg")
    assert frame.shape == (480, 854, 3) and frame.dtype == np.uint8
    Image.fromarray(np.zeros((4, 5), np.uint8)).save(tmp_path / "gray.png")
    assert read_frame(tmp_path / "gray.png").shape == (4, 5, 3)


def test_bad_images_raise_naming_the_file(tmp_path: Path, davis2016_root: Path) -> None:
    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(b"this is not a jpeg" * 10)
    with pytest.raises(VOSInputError, match="garbage.jpg.*re-extract"):
        read_frame(garbage)
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes((davis2016_root / "JPEGImages" / "480p" / "bear" / "00000.jpg").read_bytes()[:5000])
    with pytest.raises(VOSInputError, match="truncated.jpg"):
        read_frame(truncated)
    with pytest.raises(VOSInputError, match="missing.jpg"):
        read_frame(tmp_path / "missing.jpg")
    Image.fromarray(np.zeros((4, 5, 3), np.uint8)).save(tmp_path / "rgb.png")
    with pytest.raises(VOSInputError, match="rgb.png' is a RGB image.*object ids"):
        read_mask(tmp_path / "rgb.png")
    with pytest.raises(VOSInputError, match="missing.png"):
        read_mask(tmp_path / "missing.png")


# ----------------------------------------------------------------------------------------------------------------------
# Test-side readers
# ----------------------------------------------------------------------------------------------------------------------


def test_davis_2016_original_layout(davis2016_root: Path) -> None:
    """The DAVIS 2016 download (listed pairs). Fails if frames are dropped or reordered, the first mask is not the
    given one, outputs are not named by frame, the year 2016 is not binary, or test-time zips are made for val."""
    ds = DAVIS(davis2016_root, year="2016", split="train")
    assert ds.sequences == ["bear", "boat", "hockey"] and len(ds) == 3 and ds.binary
    videos = list(ds.videos(["boat"]))
    assert len(videos) == 1
    v = videos[0]
    assert isinstance(v, VideoReader) and v.name == "boat" and v.binary
    assert len(v.frames) == 10 and v.frames[0].name == "00000.jpg" and v.frames[-1].name == "00009.jpg"
    assert all(p.is_file() for p in v.frames)
    assert v.given_masks == {0: davis2016_root / "Annotations" / "480p" / "boat" / "00000.png"}
    assert v.output_names[0] == "00000.png" and len(v.output_names) == 10
    assert ds.submission_prefix is None  # the val/train splits are scored here, never zipped
    gt = ds.ground_truth(["boat"])
    assert list(gt) == ["boat"] and len(gt["boat"]) == 10 and all(p.is_file() for p in gt["boat"])
    assert ds.frames("bear")[-1].name == "00009.jpg" and len(ds.annotations("bear")) == 10
    assert list(ds.ground_truth()) == ["bear", "boat", "hockey"]


def test_davis_2017_layout(davis2017_root: Path) -> None:
    """The 2017 layout. Fails if the named sequences come back in another order, year 2016 on the 2017 layout uses
    the 2017 list or keeps two objects, or trainval without a trainval.txt is not train + val."""
    ds = DAVIS(davis2017_root, year="2017", split="val")
    assert ds.sequences == ["bear", "boat"] and not ds.binary
    _, boat = list(ds.videos())
    assert [p.name for p in boat.frames] == [f"{i:05d}.jpg" for i in range(6)]
    assert boat.given_masks == {0: davis2017_root / "Annotations" / "480p" / "boat" / "00000.png"}
    gt = ds.ground_truth(["boat", "bear"])  # the named sequences, in that order
    assert list(gt) == ["boat", "bear"] and gt["boat"] == ds.annotations("boat")
    assert [p.name for p in gt["boat"]] == [f"{i:05d}.png" for i in range(6)]
    with pytest.raises(VOSInputError, match="unknown sequence.*dog"):
        ds.ground_truth(["dog"])
    assert set(np.unique(read_mask(boat.given_masks[0], binary=boat.binary))) == {0, 1, 2}
    # DAVIS 2016 on the 2017 layout: its own sequence list, objects merged.
    ds16 = DAVIS(davis2017_root, year="2016", split="val")
    assert ds16.sequences == ["boat"] and ds16.binary
    v = next(ds16.videos())
    assert set(np.unique(read_mask(v.given_masks[0], binary=v.binary))) == {0, 1}
    # trainval without a trainval.txt = train + val.
    assert DAVIS(davis2017_root, "2017", "trainval").sequences == ["bear", "boat", "hockey"]


def test_davis_test_dev(davis2017_copy: Path) -> None:
    """Fails if test-dev claims ground truth (J&F would be computed on first-frame masks only), or its masks are
    not zipped flat for the DAVIS server."""
    with pytest.raises(VOSInputError, match="test-dev.txt.*test-dev-480p"):
        DAVIS(davis2017_copy, "2017", "test-dev")
    (davis2017_copy / "ImageSets" / "2017" / "test-dev.txt").write_text("hockey\n")
    ds = DAVIS(davis2017_copy, "2017", "test-dev")
    v = next(ds.videos())
    assert not ds.has_annotations and list(v.given_masks) == [0] and ds.submission_prefix == ""
    with pytest.raises(VOSInputError, match="server"):
        ds.annotations("hockey")
    with pytest.raises(VOSInputError, match="server"):
        ds.ground_truth()


def test_davis_errors(davis2016_copy: Path, davis2017_copy: Path, tmp_path: Path) -> None:
    """Fails if a bad root, a missing split list, a 2017 request on the 2016 download, an unknown sequence or a
    listed but missing frame or folder gets past the reader (or names no file and fix)."""
    with pytest.raises(VOSInputError, match=r"'.*nowhere' has no JPEGImages/480p; pass --davis PATH"):
        DAVIS(tmp_path / "nowhere", "2017", "val")
    with pytest.raises(VOSInputError, match=r"val.txt.*DAVIS-data.zip"):
        DAVIS(davis2016_copy, "2016", "val")
    with pytest.raises(VOSInputError, match="original DAVIS 2016 download"):
        DAVIS(davis2016_copy, "2017", "train")
    with pytest.raises(VOSInputError, match="unknown sequence.*dog.*bear"):
        list(DAVIS(davis2016_copy, "2016", "train").videos(["dog"]))
    # A frame listed in train.txt that is not on disk.
    listing = davis2016_copy / "ImageSets" / "480p" / "train.txt"
    listing.write_text(listing.read_text() + "/JPEGImages/480p/bear/00099.jpg /Annotations/480p/bear/00099.png\n")
    with pytest.raises(VOSInputError, match="00099.jpg.*train.txt"):
        list(DAVIS(davis2016_copy, "2016", "train").videos(["bear"]))
    # A sequence listed in the 2017 layout whose folder is missing.
    (davis2017_copy / "ImageSets" / "2017" / "val.txt").write_text("bear\nghost\n")
    with pytest.raises(VOSInputError, match="ghost"):
        list(DAVIS(davis2017_copy, "2017", "val").videos())


def test_davis_2017_missing_frame_or_annotation_is_refused(davis2017_copy: Path) -> None:
    """Fails if a missing frame silently drops out of the run and of J&F, whichever way it is missing."""
    jpegs, pngs = davis2017_copy / "JPEGImages" / "480p" / "boat", davis2017_copy / "Annotations" / "480p" / "boat"

    def refused(match: str) -> None:
        ds = DAVIS(davis2017_copy, "2017", "val")
        for read in (lambda: list(ds.videos(["boat"])), lambda: ds.ground_truth(), lambda: ds.frames("boat")):
            with pytest.raises(VOSInputError, match=match):
                read()

    # A frame's JPEG is gone but its annotation is there: it would silently drop out of the run and of J&F.
    (jpegs / "00002.jpg").rename(jpegs / "moved")
    refused(r"frame '.*boat/00002\.jpg' does not exist but its annotation '.*boat/00002\.png' does.*re-download")
    (jpegs / "moved").rename(jpegs / "00002.jpg")
    # The last frame's JPEG: no gap in the numbering, the annotation tells.
    (jpegs / "00005.jpg").rename(jpegs / "moved")
    refused(r"frame '.*boat/00005\.jpg' does not exist but its annotation")
    (jpegs / "moved").rename(jpegs / "00005.jpg")
    # JPEG and annotation both gone: the gap in the numbering tells.
    (jpegs / "00003.jpg").rename(jpegs / "moved")
    (pngs / "00003.png").rename(jpegs / "moved.png")
    refused(r"frame '.*boat/00003\.jpg' does not exist \(1 missing between 00000\.jpg and 00005\.jpg of boat\)")
    (jpegs / "moved").rename(jpegs / "00003.jpg")
    # An annotated split with a frame but no annotation.
    refused(r"annotation '.*boat/00003\.png' does not exist \(1 frame\(s\) of boat have none\)")
    (jpegs / "moved.png").rename(pngs / "00003.png")
    assert len(DAVIS(davis2017_copy, "2017", "val").frames("boat")) == 6


def test_davis_2016_missing_annotation_is_refused(davis2016_copy: Path) -> None:
    """Fails if a listed annotation that is not on disk is scored as an empty mask instead of refused."""
    listing = davis2016_copy / "ImageSets" / "480p" / "train.txt"
    listing.write_text(listing.read_text() + "/JPEGImages/480p/bear/00000.jpg /Annotations/480p/bear/00999.png\n")
    with pytest.raises(VOSInputError, match="annotation '.*00999.png' listed in '.*train.txt' does not exist"):
        DAVIS(davis2016_copy, "2016", "train").ground_truth(["bear"])


def test_hidden_files_are_not_frames_or_masks(davis2017_copy: Path, ytvos_root: Path, frame_folder) -> None:
    """Fails if macOS AppleDouble files or other dot files are read as frames, masks or videos."""
    # macOS AppleDouble files ('._name', not images at all) and other dot files beside every frame and mask.
    def litter(folder: Path, ext: str) -> None:
        for name in (f"._00000{ext}", f"._zzz{ext}", ".DS_Store", f".00001{ext}.x1y2.tmp"):
            (folder / name).write_bytes(b"\x00\x05\x16\x07 AppleDouble")

    litter(davis2017_copy / "JPEGImages" / "480p" / "boat", ".jpg")
    litter(davis2017_copy / "Annotations" / "480p" / "boat", ".png")
    ds = DAVIS(davis2017_copy, "2017", "val")
    (boat,) = ds.videos(["boat"])
    assert [p.name for p in boat.frames] == [f"{i:05d}.jpg" for i in range(6)]
    assert boat.output_names == [f"{i:05d}.png" for i in range(6)]
    assert [p.name for p in ds.ground_truth(["boat"])["boat"]] == [f"{i:05d}.png" for i in range(6)]

    for folder in ("valid_all_frames/JPEGImages", "valid/JPEGImages"):
        litter(ytvos_root / folder / "vid_a", ".jpg")
    litter(ytvos_root / "valid/Annotations/vid_a", ".png")
    (ytvos_root / "valid" / "Annotations" / ".ipynb_checkpoints").mkdir()
    yt = YouTubeVOS(ytvos_root)
    assert yt.sequences == ["vid_a", "vid_b"]
    a = next(yt.videos(["vid_a"]))
    assert [p.name for p in a.frames] == [f"{t:05d}.jpg" for t in range(6)]
    assert list(a.given_masks) == [0, 5] and a.output_names == ["00000.png", None, None, None, None, "00005.png"]

    folder, mask = frame_folder
    litter(folder, ".png")
    (v,) = SingleVideo(folder, mask).videos()
    assert [p.name for p in v.frames] == ["frame1.png", "frame2.png", "frame10.png", "frame11.png"]


def test_youtube_vos_late_objects(ytvos_root: Path) -> None:
    """Fails if objects first given late are not given at their frame index, frames before the first mask are
    run (the official TestYTVOS drops them), unscored frames are written, or the zip prefix is not the server's."""
    ds = YouTubeVOS(ytvos_root, "2018")
    assert ds.sequences == ["vid_a", "vid_b"] and len(ds) == 2
    a, b = ds.videos()
    assert [p.name for p in a.frames] == [f"{t:05d}.jpg" for t in range(6)]
    assert all("valid_all_frames" in str(p) for p in a.frames)
    masks = ytvos_root / "valid" / "Annotations" / "vid_a"
    assert a.given_masks == {0: masks / "00000.png", 5: masks / "00005.png"}
    assert a.output_names == ["00000.png", None, None, None, None, "00005.png"]
    assert not ds.has_annotations and not ds.binary and not a.binary
    assert ds.submission_prefix == "Annotations/"
    with pytest.raises(VOSInputError, match="no ground truth"):
        ds.ground_truth()
    # vid_b: first annotation at frame 5, earlier frames dropped (official TestYTVOS).
    assert [p.name for p in b.frames] == [f"{t:05d}.jpg" for t in range(5, 11)]
    assert list(b.given_masks) == [0] and b.given_masks[0].name == "00005.png"
    assert b.output_names == ["00005.png", None, None, None, None, "00010.png"]


def test_youtube_vos_without_all_frames(ytvos_root: Path, capsys: pytest.CaptureFixture) -> None:
    """Fails if a missing valid_all_frames is fatal or silent, or the given-mask indices are not re-counted on
    the sparse frames."""
    import shutil

    shutil.rmtree(ytvos_root / "valid_all_frames")
    ds = YouTubeVOS(ytvos_root)
    assert "valid_all_frames" in capsys.readouterr().err
    a = next(ds.videos(["vid_a"]))
    assert [p.name for p in a.frames] == ["00000.jpg", "00005.jpg"]
    assert a.given_masks == {
        0: ytvos_root / "valid/Annotations/vid_a/00000.png",
        1: ytvos_root / "valid/Annotations/vid_a/00005.png",
    }
    assert a.output_names == ["00000.png", "00005.png"]


def test_youtube_vos_errors(tmp_path: Path) -> None:
    """Fails if a root without valid/ is not refused naming --ytvos."""
    with pytest.raises(VOSInputError, match="has no valid/JPEGImages; pass --ytvos PATH"):
        YouTubeVOS(tmp_path)


def test_single_video_folder(frame_folder: tuple[Path, Path]) -> None:
    """Fails if frames are sorted as strings (frame10 before frame2) or outputs are not named by frame."""
    folder, mask = frame_folder
    sv = SingleVideo(folder, mask)
    assert len(sv) == 1 and sv.sequences == ["frames"]
    (v,) = sv.videos()
    assert [p.name for p in v.frames] == ["frame1.png", "frame2.png", "frame10.png", "frame11.png"]
    assert v.given_masks == {0: mask} and v.output_names == ["frame1.png", "frame2.png", "frame10.png", "frame11.png"]
    assert not sv.has_annotations and not sv.binary


def test_single_video_folder_with_a_gap_names_outputs_by_frame(tmp_path: Path) -> None:
    """Fails if outputs are named by position (a gap would shift every later name) or two frames write one mask."""
    folder = tmp_path / "clip"
    folder.mkdir()
    for t in (0, 1, 3, 4):  # 00002.jpg is missing
        Image.fromarray(np.full((8, 8, 3), 40 * t, np.uint8)).save(folder / f"{t:05d}.jpg")
    save_mask(tmp_path / "mask.png", np.ones((8, 8), np.uint8))
    (v,) = SingleVideo(folder, tmp_path / "mask.png").videos()
    # every mask goes out under its own frame's name, none under the previous frame's
    assert dict(zip([f.name for f in v.frames], v.output_names, strict=True)) == {
        "00000.jpg": "00000.png",
        "00001.jpg": "00001.png",
        "00003.jpg": "00003.png",
        "00004.jpg": "00004.png",
    }
    # two frames that would write one mask
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(folder / "00004.png")
    with pytest.raises(VOSInputError, match=r"00004\.(jpg|png)' and '.*00004\.(jpg|png)' share the name '00004'"):
        SingleVideo(folder, tmp_path / "mask.png")


def test_truncated_video_file_is_reported(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Fails if a truncated video file is an error (its decoded frames are real) or goes unreported."""
    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (32, 24))
    assert writer.isOpened(), "this OpenCV build cannot write MJPG"
    rng = np.random.default_rng(0)
    for _ in range(10):
        writer.write(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8))  # noise: every frame a few kB
    writer.release()
    save_mask(tmp_path / "mask.png", np.ones((24, 32), np.uint8))
    whole = SingleVideo(path, tmp_path / "mask.png")
    assert len(next(whole.videos()).frames) == 10 and capsys.readouterr().err == ""
    whole.close()
    cut = tmp_path / "cut.avi"  # an interrupted download: the header still says 10 frames
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    sv = SingleVideo(cut, tmp_path / "mask.png")
    (v,) = sv.videos()
    err = capsys.readouterr().err
    assert 0 < len(v.frames) < 10
    assert f"warning: video '{cut}' decoded {len(v.frames)} of the 10 frames" in err and "truncated" in err
    assert len(err.strip().splitlines()) == 1  # one line
    sv.close()


def test_single_video_file(tiny_mp4: tuple[Path, Path]) -> None:
    """Fails if a video file's frames are not decoded in order as RGB, or the temporary folder outlives close()."""
    path, mask = tiny_mp4
    sv = SingleVideo(path, mask, name="demo")
    (v,) = sv.videos()
    assert v.name == "demo" and len(v.frames) == 7 and v.output_names[-1] == "00006.png"
    frame = read_frame(v.frames[0])
    assert frame.shape == (24, 32, 3)
    assert frame[10, 5, 0] > 200 and frame[10, 5, 1] < 60  # the red square survived BGR<->RGB and encoding
    tmp = v.frames[0].parent
    sv.close()
    assert not tmp.exists()


def test_single_video_errors(tmp_path: Path, frame_folder: tuple[Path, Path], tiny_mp4: tuple[Path, Path]) -> None:
    """Fails if a missing video or mask, an empty folder, an undecodable file, a mask of another size or an RGB
    mask is accepted."""
    folder, mask = frame_folder
    with pytest.raises(VOSInputError, match="nothing.mp4.*does not exist"):
        SingleVideo(tmp_path / "nothing.mp4", mask)
    with pytest.raises(VOSInputError, match="nomask.png"):
        SingleVideo(folder, tmp_path / "nomask.png")
    (tmp_path / "empty").mkdir()
    with pytest.raises(VOSInputError, match="empty.*holds no frames"):
        SingleVideo(tmp_path / "empty", mask)
    (tmp_path / "broken.mp4").write_bytes(b"\x00" * 100)
    with pytest.raises(VOSInputError, match="cannot decode video.*broken.mp4"):
        SingleVideo(tmp_path / "broken.mp4", mask)
    save_mask(tmp_path / "small.png", np.zeros((5, 5), np.uint8))
    with pytest.raises(VOSInputError, match="small.png.*5x5.*32x24"):
        list(SingleVideo(folder, tmp_path / "small.png").videos())
    Image.fromarray(np.zeros((24, 32, 3), np.uint8)).save(tmp_path / "rgbmask.png")
    with pytest.raises(VOSInputError, match="rgbmask.png.*RGB"):
        SingleVideo(folder, tmp_path / "rgbmask.png")


def _reader(tmp_path: Path, late_side: int) -> VideoReader:
    """3 frames of 24x32: object 1 (an 8x8 square) given at frame 0, object 2 (late_side x late_side) first given at
    frame 2; frame 1 is run but not written."""
    tmp_path.mkdir()
    frames, masks = [], {}
    for t in range(3):
        rgb, ids = square_frame(24, 32, t, [(1, (255, 0, 0))])
        frames.append(tmp_path / f"{t:05d}.jpg")
        Image.fromarray(rgb).save(frames[-1])
        if t == 2:
            ids[18 : 18 + late_side, 26 : 26 + late_side] = 2
        if t != 1:
            masks[t] = tmp_path / f"{t:05d}.png"
            save_mask(masks[t], ids)
    return VideoReader("clip", frames, masks, ["00000.png", None, "00002.png"])


def test_video_reader_sizes_inputs_and_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The reader's geometry, what segment_video relies on. Fails if the run size ignores a mask given after the
    first frame (the official rule checks every given object), a mask is handed to the model at a frame that has
    none, masks are resized with anything but nearest, predictions are written at the run size, a frame that is
    not to be written is written, or a frame of another size is run."""
    monkeypatch.setattr(dataset, "TEST_SHORT_SIDE", 48)  # 24x32 frames go to 48x64, as 720p goes to 480p
    monkeypatch.setattr(dataset, "MIN_OBJECT_PIXELS", 100)  # 8x8 -> 256 px: kept; 4x4 -> 64 px: too small
    video = _reader(tmp_path / "big", late_side=6)
    video.check()
    assert len(video) == 3 and video.original_size == (24, 32) and video.run_size == (48, 64)
    frame, mask = video.model_input(0, video.image(0))
    assert frame.shape == (3, 48, 64) and frame.dtype == torch.float32
    # RGB in [0, 1] (not BGR, not 0..255): the red square's centre and the grey background
    torch.testing.assert_close(frame[:, 24, 12], torch.tensor([1.0, 0.0, 0.0]), atol=0.05, rtol=0)
    torch.testing.assert_close(frame[:, 2, 60], torch.full((3,), 128 / 255), atol=0.02, rtol=0)
    np.testing.assert_array_equal(mask.numpy(), np.kron(video.given[0], np.ones((2, 2), np.uint8)))
    assert video.model_input(1, video.image(1))[1] is None
    assert set(np.unique(video.model_input(2, video.image(2))[1].numpy())) == {0, 1, 2}
    labels = torch.from_numpy(np.kron(video.given[2], np.ones((2, 2), np.uint8))).long()
    out = video.to_output(labels)
    assert out.dtype == np.uint8 and out.shape == (24, 32)
    np.testing.assert_array_equal(out, video.given[2])
    assert video.write(tmp_path / "out", 1, out) == []
    assert video.write(tmp_path / "out", 2, out) == [tmp_path / "out" / "00002.png"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["00002.png"]
    np.testing.assert_array_equal(read_mask(tmp_path / "out" / "00002.png"), video.given[2])
    # a late object too small at 480p keeps the original size, as a small first object does
    small = _reader(tmp_path / "small", late_side=4)
    assert small.run_size == (24, 32)
    frame, mask = small.model_input(2, small.image(2))
    assert frame.shape == (3, 24, 32) and np.array_equal(mask.numpy(), small.given[2])
    # frames and masks that do not match the first frame
    Image.fromarray(np.zeros((20, 32, 3), np.uint8)).save(small.frames[1])
    with pytest.raises(VOSInputError, match=r"00001\.jpg is 32x20 but the video's first frame is 32x24"):
        small.image(1)
    save_mask(small.given_masks[2], np.ones((12, 16), np.uint8))
    with pytest.raises(VOSInputError, match=r"00002\.png is 16x12 but its frame .*00002\.jpg is 32x24"):
        _ = VideoReader("again", small.frames, small.given_masks, small.output_names).run_size
    with pytest.raises(VOSInputError, match="no mask for its first frame"):
        VideoReader("late", small.frames, {2: small.given_masks[2]}, small.output_names).check()


# ----------------------------------------------------------------------------------------------------------------------
# Training clip samplers
# ----------------------------------------------------------------------------------------------------------------------


def check_clip(clip: dict, length: int, size: tuple[int, int]) -> None:
    """Shapes, dtypes and value ranges every sampler promises."""
    imgs, masks = clip["imgs"], clip["masks"]
    assert imgs.shape == (length, 3, *size) and imgs.dtype == torch.float32
    assert masks.shape == (length, *size) and masks.dtype == torch.long
    assert imgs.min() >= 0 and imgs.max() <= 1
    assert set(masks.unique().tolist()) <= {0, 1}


def target_colour(clip: dict, t: int) -> str:
    """'red' or 'green': the colour under the target mask of frame t (median, robust to blurred edges)."""
    pixels = clip["imgs"][t].permute(1, 2, 0)[clip["masks"][t] == 1]  # (n, 3)
    r, g, _ = pixels.median(dim=0).values.tolist()
    return "red" if r > g else "green"


def test_random_crop_params() -> None:
    random.seed(0)
    # A 16:9 frame at 480p never fits a crop of >= 0.8 of its area with aspect <= 4/3 (h >= 496 > 480): the
    # official rule always falls back to the centred 640x480 crop there (DAVIS, YouTube-VOS).
    assert {random_crop_params(854, 480) for _ in range(200)} == {(0, 107, 480, 640)}
    # A 4:3 frame gets random crops, and the full frame when no draw fits.
    crops = [random_crop_params(640, 480) for _ in range(500)]
    for top, left, h, w in crops:
        assert top >= 0 and top + h <= 480 and left >= 0 and left + w <= 640
        assert 3 / 4 - 0.01 <= w / h <= 4 / 3 + 0.01 and h * w >= 0.8 * 640 * 480 - 2000
    assert len(set(crops)) > 10 and (0, 0, 480, 640) in crops


def test_ytvos_clips_keep_one_object(ytvos_train_root: Path) -> None:
    ds = TrainYTVOS(ytvos_train_root, output_size=(64, 64), clip_len=3, clips_per_epoch=7)
    assert len(ds) == 7 and ds.videos == ["grad", "objs"]
    frames, masks = ds.annotated_frames("objs")
    assert [f.name for f in frames] == ["00000.jpg", "00005.jpg", "00010.jpg", "00015.jpg"]  # not 00002.jpg
    assert [m.name for m in masks] == ["00000.png", "00005.png", "00010.png", "00015.png"]
    colours = set()
    for seed in range(12):
        random.seed(seed)
        ds.videos = ["objs"]
        clip = ds[0]
        check_clip(clip, 3, (64, 64))
        assert clip["masks"][0].sum() >= 256  # the objects are big enough for that in every crop try
        per_frame = {target_colour(clip, t) for t in range(3) if clip["masks"][t].sum() > 20}
        assert len(per_frame) == 1  # the same object is the target in every frame
        colours |= per_frame
    assert colours == {"red", "green"}  # both objects get picked


def test_video_clip_flips_reversal_and_end_repeat(ytvos_train_root: Path) -> None:
    ds = TrainYTVOS(ytvos_train_root, output_size=(48, 64), clip_len=6)
    ds.videos = ["grad"]
    seen_h, seen_v, seen_dirs = set(), set(), set()
    for seed in range(16):
        random.seed(seed)
        clip = ds[0]
        check_clip(clip, 6, (48, 64))
        imgs, masks = clip["imgs"], clip["masks"]
        # R rises left->right and G top->bottom unless flipped; the flip is shared by every frame of the clip.
        h_signs = {bool(img[0, :, -8:].mean() < img[0, :, :8].mean()) for img in imgs}
        v_signs = {bool(img[1, -8:, :].mean() < img[1, :8, :].mean()) for img in imgs}
        assert len(h_signs) == 1 and len(v_signs) == 1
        seen_h |= h_signs
        seen_v |= v_signs
        # Time from the blue background: consecutive frames one step apart, the last one repeated at the end.
        times = [round(img[2][m == 0].median().item() * 255 / 40) for img, m in zip(imgs, masks, strict=True)]
        steps = {b - a for a, b in zip(times, times[1:], strict=False)}
        assert steps <= {1, 0} or steps <= {-1, 0}
        assert times[-1] in (0, 3) and times[-1] == times[-2]  # 4 annotated frames, 6 in the clip: the end repeats
        seen_dirs.add(1 if times[-1] > times[0] else -1 if times[-1] < times[0] else 0)
        assert masks.sum(dim=(1, 2)).min() > 0  # the one object is in every frame
    assert seen_h == {False, True} and seen_v == {False, True}
    assert {1, -1} <= seen_dirs  # played forwards and backwards


def test_sampling_is_reproducible(ytvos_train_root: Path) -> None:
    ds = TrainYTVOS(ytvos_train_root, output_size=(32, 32), clip_len=2, clips_per_epoch=4)

    def epoch() -> list[torch.Tensor]:
        torch.manual_seed(7)
        loader = DataLoader(ds, batch_size=2, num_workers=2, worker_init_fn=seed_worker)
        return [b["imgs"] for b in loader]

    first, second = epoch(), epoch()
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)
    random.seed(3)
    c1 = ds[0]
    random.seed(3)
    c2 = ds[0]
    assert torch.equal(c1["imgs"], c2["imgs"]) and torch.equal(c1["masks"], c2["masks"])


def test_train_davis_on_both_layouts(davis2016_root: Path, davis2017_root: Path) -> None:
    random.seed(0)
    ds16 = TrainDAVIS(davis2016_root, year="2016", split="train", output_size=(64, 64), clip_len=3, clips_per_epoch=5)
    assert len(ds16) == 5
    for _ in range(3):
        clip = ds16[0]
        check_clip(clip, 3, (64, 64))
        assert clip["masks"][0].sum() > 0  # 0/255 masks read as object 1, not as void
    ds17 = TrainDAVIS(davis2017_root, year="2017", split="train", output_size=(64, 64), clip_len=3)
    assert ds17.data.sequences == ["bear", "hockey"] and not ds17.data.binary
    check_clip(ds17[0], 3, (64, 64))
    # boat has two objects on the 2017 layout; year 2016 merges them.
    ds_val = TrainDAVIS(davis2017_root, year="2016", split="val", output_size=(64, 64), clip_len=2)
    assert ds_val.data.binary
    check_clip(ds_val[0], 2, (64, 64))


def test_coco_raw_download(coco_raw_root: Path) -> None:
    ds = TrainCOCO(coco_raw_root, output_size=(64, 64), clip_len=5, clips_per_epoch=3)
    assert ds.layout == "raw" and ds.num_images == 1 and len(ds) == 3  # image 2 has only a crowd: skipped
    img, mask = ds.load(0)
    ids = np.asarray(mask)
    assert img.size == (64, 48) and set(np.unique(ids)) == {0, 1, 2}
    assert (ids[42:, :] == 0).all()  # crowd pixels are background
    assert ids[20, 48] == 1 and ids[15, 15] == 2  # the larger instance (area 720) is painted first, as id 1
    colours = set()
    for seed in range(10):
        random.seed(seed)
        clip = ds[0]
        check_clip(clip, 5, (64, 64))
        assert not torch.equal(clip["imgs"][0], clip["imgs"][1])  # each frame is warped further
        per_frame = {target_colour(clip, t) for t in range(5) if clip["masks"][t].sum() > 20}
        assert len(per_frame) == 1
        colours |= per_frame
    assert colours == {"red", "green"}


def test_coco_converted_folder(coco_converted_root: Path) -> None:
    ds = TrainCOCO(coco_converted_root, output_size=(48, 48), clip_len=3)
    assert ds.layout == "converted" and ds.num_images == 1
    random.seed(1)
    clip = ds[0]
    check_clip(clip, 3, (48, 48))
    assert clip["masks"][0].sum() >= 256


def test_coco_warp_fill_colour(coco_converted_root: Path) -> None:
    """Pixels warped in from outside the image have the official fill colour (124, 116, 104) and mask 0."""
    ds = TrainCOCO(coco_converted_root, clip_len=4)
    random.seed(5)
    filled = 0
    for img, mask in ds._pseudo_video(0):
        img, mask = np.asarray(img), np.asarray(mask)
        fill = (img == np.array([124, 116, 104])).all(axis=-1)
        assert (mask[fill] == 0).all()
        filled += fill.sum()
    assert filled > 0


def test_training_errors(tmp_path: Path, coco_raw_root: Path, ytvos_train_root: Path, davis2017_copy: Path) -> None:
    with pytest.raises(VOSInputError, match="has no train/JPEGImages; pass --ytvos PATH"):
        TrainYTVOS(tmp_path / "none")
    with pytest.raises(VOSInputError, match=r"neither JPEGImages/.*instances_train2017.json.*--coco PATH"):
        TrainCOCO(tmp_path / "none")
    (coco_raw_root / "annotations" / "instances_train2017.json").unlink()
    with pytest.raises(VOSInputError, match="instances_train2017.json.*annotations_trainval2017"):
        TrainCOCO(coco_raw_root)
    (coco_raw_root / "annotations" / "instances_train2017.json").write_text('{"images": [')
    with pytest.raises(VOSInputError, match="instances_train2017.json.*not a COCO instances file"):
        TrainCOCO(coco_raw_root)
    (ytvos_train_root / "train" / "meta.json").write_text("not json")
    with pytest.raises(VOSInputError, match="meta.json"):
        TrainYTVOS(ytvos_train_root)
    (ytvos_train_root / "train" / "meta.json").unlink()
    (ytvos_train_root / "train" / "Annotations" / "empty").mkdir()
    ds = TrainYTVOS(ytvos_train_root)
    assert ds.videos == ["empty", "grad", "objs"]  # folder listing without meta.json
    with pytest.raises(VOSInputError, match="'empty' has no frame"):
        ds.annotated_frames("empty")
    with pytest.raises(VOSInputError, match="'.*nowhere' has no JPEGImages/480p; pass --davis PATH"):
        TrainDAVIS(tmp_path / "nowhere")
    missing_list = r"split list '.*ImageSets/2017/val\.txt' does not exist; it ships with DAVIS"
    (davis2017_copy / "ImageSets" / "2017" / "val.txt").unlink()
    with pytest.raises(VOSInputError, match=missing_list):
        TrainDAVIS(davis2017_copy, split="val")
