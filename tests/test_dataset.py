"""Tests of the image I/O helpers (utils.py) and the dataset readers and clip samplers (dataset.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dataset import DAVIS, SingleVideo, TestVideo, YouTubeVOS
from utils import DAVIS_PALETTE, VOSInputError, read_frame, read_mask, save_mask

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
    with pytest.raises(VOSInputError, match="rgb.png.*is RGB.*object ids"):
        read_mask(tmp_path / "rgb.png")
    with pytest.raises(VOSInputError, match="missing.png"):
        read_mask(tmp_path / "missing.png")


# ----------------------------------------------------------------------------------------------------------------------
# Test-side readers
# ----------------------------------------------------------------------------------------------------------------------


def test_davis_2016_original_layout(davis2016_root: Path) -> None:
    ds = DAVIS(davis2016_root, year="2016", split="train")
    assert ds.sequences == ["bear", "boat", "hockey"] and len(ds) == 3 and ds.binary
    videos = list(ds.videos(["boat"]))
    assert len(videos) == 1
    v = videos[0]
    assert isinstance(v, TestVideo) and v.name == "boat" and v.binary
    assert len(v.frames) == 75 and v.frames[0].name == "00000.jpg" and v.frames[-1].name == "00074.jpg"
    assert all(p.is_file() for p in v.frames)
    assert v.given_masks == {0: davis2016_root / "Annotations" / "480p" / "boat" / "00000.png"}
    assert v.output_names[0] == "00000.png" and len(v.output_names) == 75
    assert v.annotations is not None and len(v.annotations) == 75 and all(p.is_file() for p in v.annotations)
    assert ds.frames("bear")[-1].name == "00081.jpg" and len(ds.annotations("bear")) == 82


def test_davis_2017_layout(davis2017_root: Path) -> None:
    ds = DAVIS(davis2017_root, year="2017", split="val")
    assert ds.sequences == ["bear", "boat"] and not ds.binary
    _, boat = list(ds.videos())
    assert [p.name for p in boat.frames] == [f"{i:05d}.jpg" for i in range(6)]
    assert boat.given_masks == {0: davis2017_root / "Annotations" / "480p" / "boat" / "00000.png"}
    assert boat.annotations == ds.annotations("boat") and boat.annotations[3].name == "00003.png"
    assert set(np.unique(read_mask(boat.given_masks[0], binary=boat.binary))) == {0, 1, 2}
    # DAVIS 2016 on the 2017 layout: its own sequence list, objects merged.
    ds16 = DAVIS(davis2017_root, year="2016", split="val")
    assert ds16.sequences == ["boat"] and ds16.binary
    v = next(ds16.videos())
    assert set(np.unique(read_mask(v.given_masks[0], binary=v.binary))) == {0, 1}
    # trainval without a trainval.txt = train + val.
    assert DAVIS(davis2017_root, "2017", "trainval").sequences == ["bear", "boat", "hockey"]


def test_davis_test_dev(davis2017_root: Path, tmp_path: Path) -> None:
    with pytest.raises(VOSInputError, match="test-dev.txt.*test-dev-480p"):
        DAVIS(davis2017_root, "2017", "test-dev")
    (davis2017_root / "ImageSets" / "2017" / "test-dev.txt").write_text("hockey\n")
    try:
        ds = DAVIS(davis2017_root, "2017", "test-dev")
        v = next(ds.videos())
        assert v.annotations is None and list(v.given_masks) == [0]
        with pytest.raises(VOSInputError, match="server"):
            ds.annotations("hockey")
    finally:
        (davis2017_root / "ImageSets" / "2017" / "test-dev.txt").unlink()


def test_davis_errors(davis2016_copy: Path, davis2017_root: Path, tmp_path: Path) -> None:
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
    (davis2017_root / "ImageSets" / "2017" / "val.txt").write_text("bear\nghost\n")
    try:
        with pytest.raises(VOSInputError, match="ghost"):
            list(DAVIS(davis2017_root, "2017", "val").videos())
    finally:
        (davis2017_root / "ImageSets" / "2017" / "val.txt").write_text("bear\nboat\n")


def test_youtube_vos_late_objects(ytvos_root: Path) -> None:
    ds = YouTubeVOS(ytvos_root, "2018")
    assert ds.sequences == ["vid_a", "vid_b"] and len(ds) == 2
    a, b = ds.videos()
    assert [p.name for p in a.frames] == [f"{t:05d}.jpg" for t in range(6)]
    assert all("valid_all_frames" in str(p) for p in a.frames)
    masks = ytvos_root / "valid" / "Annotations" / "vid_a"
    assert a.given_masks == {0: masks / "00000.png", 5: masks / "00005.png"}
    assert a.output_names == ["00000.png", None, None, None, None, "00005.png"]
    assert a.annotations is None and not a.binary
    # vid_b: first annotation at frame 5, earlier frames dropped (official TestYTVOS).
    assert [p.name for p in b.frames] == [f"{t:05d}.jpg" for t in range(5, 11)]
    assert list(b.given_masks) == [0] and b.given_masks[0].name == "00005.png"
    assert b.output_names == ["00005.png", None, None, None, None, "00010.png"]


def test_youtube_vos_without_all_frames(ytvos_root: Path, capsys: pytest.CaptureFixture) -> None:
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
    with pytest.raises(VOSInputError, match="has no valid/JPEGImages; pass --ytvos PATH"):
        YouTubeVOS(tmp_path)


def test_single_video_folder(frame_folder: tuple[Path, Path]) -> None:
    folder, mask = frame_folder
    sv = SingleVideo(folder, mask)
    assert len(sv) == 1 and sv.sequences == ["frames"]
    (v,) = sv.videos()
    assert [p.name for p in v.frames] == ["frame1.png", "frame2.png", "frame10.png", "frame11.png"]
    assert v.given_masks == {0: mask} and v.output_names == ["00000.png", "00001.png", "00002.png", "00003.png"]


def test_single_video_file(tiny_mp4: tuple[Path, Path]) -> None:
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
