"""Shared fixtures: the real DAVIS 2016 sample and generators of tiny dataset trees in tmp_path."""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # flat repo: tests import dataset, utils, ... from the repository root

# Every test finds the golden vectors and the real frames through these names, all in the repository.
# The golden vectors (docs/faithfulness.md): tests/golden/ holds the authors' outputs and tools/golden.py generates the
# weights from a hash; pytest_configure below writes both, with the frames the cases cut from sample/, into
# tests/golden/build/ (ignored by git) once per run, for the tests and tools that read files.
GOLDEN_BUILD = ROOT / "tests" / "golden" / "build"
GOLDEN_WEIGHTS = GOLDEN_BUILD / "emvos_official.pth"  # official layout, weights from a hash
GOLDEN_CASES = GOLDEN_BUILD / "cases.npz"  # frames, given masks and the official outputs of the three cases
# The real frames: the bundled sample, 3 train sequences of DAVIS 2016 (10 frames each), original 2016 layout.
DAVIS2016_SAMPLE = ROOT / "sample" / "DAVIS2016"
# Every annotation of those 3 sequences (82, 75, 75 frames): the toolkit parity is pinned on whole sequences.
DAVIS2016_ANNOTATIONS = ROOT / "sample" / "DAVIS2016-annotations"


def repo_modules() -> dict[str, Path]:
    """{dotted module name: file} of the repository's own code: the top level and its packages, not the tests."""
    mods = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[0] in {"tests", ".venv", "venv", "outputs", "docs"} or parts[0].startswith("."):
            continue
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if parts:
            mods[".".join(parts)] = path
    return mods


def import_graph() -> dict[str, set[str]]:
    """{module: the repository modules it imports}, read from the source (absolute imports, as the repository
    writes them): `from core import methods` counts as core.methods, `from core.methods import x` too."""
    import ast

    mods = repo_modules()

    def resolve(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for name, path in mods.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                deps |= {resolve(a.name) for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                deps |= {resolve(f"{node.module}.{a.name}") for a in node.names} | {resolve(node.module)}
        graph[name] = {d for d in deps if d and d != name}
    return graph


def closure(start: str, graph: dict[str, set[str]]) -> set[str]:
    """start and every module it imports, transitively, in an import_graph()."""
    seen, todo = {start}, [start]
    while todo:
        for dep in graph[todo.pop()]:
            if dep not in seen:
                seen.add(dep)
                todo.append(dep)
    return seen


def random_checkpoint(method: str, path: Path) -> Path:
    """A checkpoint of `method` with its default config and random weights (seed 0), written to path: building the
    network is most of a test's time, so module fixtures make one and share it."""
    import torch

    from core import methods  # here: conftest is imported before any test needs torch

    torch.manual_seed(0)
    torch.save(methods.weights_payload(methods.build_model(method), method), path)
    return path


def save_mask(path: Path, ids: np.ndarray) -> None:
    """utils.save_mask, imported late because the repository root joins sys.path only above."""
    import utils

    utils.save_mask(path, ids)


def write_jpeg(path: Path, rgb: np.ndarray, full_chroma: bool = False) -> Path:
    """Write an (H, W, 3) uint8 RGB array as a JPEG (quality 95), creating parent folders. full_chroma: 4:4:4, where
    the default 4:2:0 makes a saturated colour bleed two pixels past its edge."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path, quality=95, **({"subsampling": 0} if full_chroma else {}))
    return path


def write_moving_squares(root: Path, name: str, squares: list[tuple[np.ndarray, int, np.ndarray, np.ndarray]],
                         frames: int, size: int, background: Callable[[], np.ndarray]) -> None:
    """A video in DAVIS 2017 layout under root (JPEGImages/480p/name, 4:4:4 JPEGs; Annotations/480p/name): squares
    [(colour, side, position (y, x), velocity)] with ids 1, 2, ... painted in order on background() (a new
    (size, size, 3) uint8 frame each time), each moving by its velocity per frame and bouncing off the borders.
    Positions and velocities are updated in place."""
    for t in range(frames):
        rgb = background()
        ids = np.zeros((size, size), np.uint8)
        for obj, (colour, side, pos, vel) in enumerate(squares, start=1):
            y, x = pos.astype(int)
            rgb[y:y + side, x:x + side] = colour
            ids[y:y + side, x:x + side] = obj
            pos += vel
            vel[(pos < 0) | (pos > size - side)] *= -1
            pos[:] = np.clip(pos, 0, size - side)
        write_jpeg(root / "JPEGImages" / "480p" / name / f"{t:05d}.jpg", rgb, full_chroma=True)
        save_mask(root / "Annotations" / "480p" / name / f"{t:05d}.png", ids)


def square_frame(
    h: int, w: int, t: int, squares: list[tuple[int, tuple[int, int, int]]]
) -> tuple[np.ndarray, np.ndarray]:
    """A gray frame with coloured squares moving right by one pixel per frame t; returns (rgb, id map).

    `squares` is [(object id, colour)], each square h//3 high, placed side by side.
    """
    rgb = np.full((h, w, 3), 128, np.uint8)
    ids = np.zeros((h, w), np.uint8)
    side = h // 3
    for n, (obj, colour) in enumerate(squares):
        y, x = h // 3, 2 + t + n * (side + 4)
        rgb[y : y + side, x : x + side] = colour
        ids[y : y + side, x : x + side] = obj
    return rgb, ids


def square_davis(root: Path, train: dict[str, tuple], val: dict[str, tuple], frames: int) -> Path:
    """A DAVIS 2017 tree under root of 48x64 frames, each sequence a square of its colour moving right by 2 px a
    frame ({name: colour} for the train and val lists)."""
    for seq, colour in {**train, **val}.items():
        for t in range(frames):
            rgb, ids = square_frame(48, 64, 2 * t, [(1, colour)])
            write_jpeg(root / "JPEGImages" / "480p" / seq / f"{t:05d}.jpg", rgb)
            save_mask(root / "Annotations" / "480p" / seq / f"{t:05d}.png", ids)
    (root / "ImageSets" / "2017").mkdir(parents=True)
    (root / "ImageSets" / "2017" / "train.txt").write_text("".join(f"{n}\n" for n in train))
    (root / "ImageSets" / "2017" / "val.txt").write_text("".join(f"{n}\n" for n in val))
    return root


@pytest.fixture(scope="session")
def davis2016_root() -> Path:
    """The real DAVIS 2016 sample, original layout (ImageSets/480p/train.txt and val.txt)."""
    return DAVIS2016_SAMPLE


@pytest.fixture(scope="session")
def davis2017_root(davis2016_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A DAVIS 2017-layout tree built from the first 6 frames of the sample.

    Frames are symlinks; masks are rewritten as palette PNGs with object ids. 'boat' gets a second object (id 2, a
    box in the top-left corner) so that multi-object handling is visible. Splits: 2017/train = bear, hockey;
    2017/val = bear, boat; 2016/val = boat.
    """
    root = tmp_path_factory.mktemp("davis2017")
    for seq in ("bear", "boat", "hockey"):
        (root / "JPEGImages" / "480p" / seq).mkdir(parents=True)
        for i in range(6):
            src = davis2016_root / "JPEGImages" / "480p" / seq / f"{i:05d}.jpg"
            (root / "JPEGImages" / "480p" / seq / src.name).symlink_to(src)
            ids = np.asarray(Image.open(davis2016_root / "Annotations" / "480p" / seq / f"{i:05d}.png")) != 0
            ids = ids.astype(np.uint8)
            if seq == "boat":
                ids[10:60, 10:90] = 2
            save_mask(root / "Annotations" / "480p" / seq / f"{i:05d}.png", ids)
    lists = {"2017/train.txt": "bear\nhockey\n", "2017/val.txt": "bear\nboat\n", "2016/val.txt": "boat\n"}
    for name, text in lists.items():
        (root / "ImageSets" / name).parent.mkdir(parents=True, exist_ok=True)
        (root / "ImageSets" / name).write_text(text)
    return root


@pytest.fixture
def davis2016_copy(davis2016_root: Path, tmp_path: Path) -> Path:
    """A writable 2016-layout tree: the sample's train list (not its val list) over symlinked sequence folders, safe
    to break."""
    root = tmp_path / "DAVIS2016"
    for sub in ("JPEGImages/480p", "Annotations/480p"):
        (root / sub).mkdir(parents=True)
        for seq in (davis2016_root / sub).iterdir():
            (root / sub / seq.name).symlink_to(seq)
    (root / "ImageSets" / "480p").mkdir(parents=True)
    shutil.copy(davis2016_root / "ImageSets" / "480p" / "train.txt", root / "ImageSets" / "480p" / "train.txt")
    return root


@pytest.fixture
def davis2017_copy(davis2017_root: Path, tmp_path: Path) -> Path:
    """A writable copy of the davis2017_root tree (frames stay symlinks, so deleting one leaves the sample alone)."""
    return Path(shutil.copytree(davis2017_root, tmp_path / "DAVIS2017", symlinks=True))


def make_ytvos_valid(root: Path, split: str = "valid") -> Path:
    """A tiny YouTube-VOS validation tree (32x24 frames).

    vid_a: 6 frames 00000..00005; scored frames (valid/JPEGImages) 00000 and 00005; object 1 given at 00000,
           object 2 first given at 00005 (late object).
    vid_b: 11 frames; scored 00000, 00005, 00010; the only annotation is at 00005, so frames 0-4 are dropped.
    """
    h, w = 24, 32
    videos = {"vid_a": (6, {0: [(1, (255, 0, 0))], 5: [(2, (0, 255, 0))]}), "vid_b": (11, {5: [(1, (0, 0, 255))]})}
    for name, (n, given) in videos.items():
        for t in range(n):
            rgb, _ = square_frame(h, w, t, [(1, (255, 0, 0)), (2, (0, 255, 0))])
            write_jpeg(root / f"{split}_all_frames" / "JPEGImages" / name / f"{t:05d}.jpg", rgb)
            if t % 5 == 0:
                write_jpeg(root / split / "JPEGImages" / name / f"{t:05d}.jpg", rgb)
            if t in given:
                _, ids = square_frame(h, w, t, given[t])
                save_mask(root / split / "Annotations" / name / f"{t:05d}.png", ids)
    (root / split / "meta.json").write_text('{"videos": {}}')
    return root


@pytest.fixture
def ytvos_root(tmp_path: Path) -> Path:
    """Tiny YouTube-VOS tree with valid/ and valid_all_frames/ (see make_ytvos_valid)."""
    return make_ytvos_valid(tmp_path / "YTVOS")


@pytest.fixture
def frame_folder(tmp_path: Path) -> tuple[Path, Path]:
    """A folder of 4 tiny PNG frames named frame1..frame10-style (natural order matters) and a first-frame mask."""
    folder = tmp_path / "frames"
    for t, name in enumerate(["frame1.png", "frame2.png", "frame10.png", "frame11.png"]):
        rgb, ids = square_frame(24, 32, t, [(1, (255, 0, 0))])
        folder.mkdir(exist_ok=True)
        Image.fromarray(rgb).save(folder / name)
        if t == 0:
            save_mask(tmp_path / "mask.png", ids)
    return folder, tmp_path / "mask.png"


@pytest.fixture
def tiny_mp4(tmp_path: Path) -> tuple[Path, Path]:
    """A 7-frame 32x24 mp4 (mp4v) and its first-frame mask."""
    path = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10, (32, 24))
    assert writer.isOpened(), "this OpenCV build cannot write mp4v"
    for t in range(7):
        rgb, ids = square_frame(24, 32, t, [(1, (255, 0, 0))])
        writer.write(rgb[:, :, ::-1].copy())
        if t == 0:
            save_mask(tmp_path / "clip_mask.png", ids)
    writer.release()
    return path, tmp_path / "clip_mask.png"


# ----------------------------------------------------------------------------------------------------------------------
# Training-side trees
# ----------------------------------------------------------------------------------------------------------------------

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def two_object_frame(t: int, h: int = 36, w: int = 48) -> tuple[np.ndarray, np.ndarray]:
    """Gray frame with a red square (object 1) and a green square (object 2), each h*0.4 wide, moving right."""
    rgb = np.full((h, w, 3), 128, np.uint8)
    ids = np.zeros((h, w), np.uint8)
    side = int(h * 0.4)
    for obj, colour, x in ((1, RED, 2 + t), (2, GREEN, w // 2 + t)):
        rgb[h // 4 : h // 4 + side, x : x + side] = colour
        ids[h // 4 : h // 4 + side, x : x + side] = obj
    return rgb, ids


def gradient_frame(t: int, h: int = 36, w: int = 48) -> tuple[np.ndarray, np.ndarray]:
    """R rises left to right, G top to bottom (so flips are visible); B = 40 t outside the object (so time is
    visible); object 1 is a centred box with B = 255."""
    rgb = np.zeros((h, w, 3), np.uint8)
    rgb[..., 0] = np.linspace(0, 255, w)[None, :]
    rgb[..., 1] = np.linspace(0, 255, h)[:, None]
    rgb[..., 2] = 40 * t
    ids = np.zeros((h, w), np.uint8)
    ids[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4] = 1
    rgb[ids == 1, 2] = 255
    return rgb, ids


@pytest.fixture
def ytvos_train_root(tmp_path: Path) -> Path:
    """YouTube-VOS train tree: 'objs' (two objects, 4 annotated frames 00000..00015 plus an unannotated 00002.jpg)
    and 'grad' (gradient frames, 4 annotated frames); train/meta.json lists both."""
    root = tmp_path / "YTVOS"
    for name, make in (("objs", two_object_frame), ("grad", gradient_frame)):
        for t in range(4):
            rgb, ids = make(t)
            write_jpeg(root / "train" / "JPEGImages" / name / f"{5 * t:05d}.jpg", rgb)
            save_mask(root / "train" / "Annotations" / name / f"{5 * t:05d}.png", ids)
    write_jpeg(root / "train" / "JPEGImages" / "objs" / "00002.jpg", np.zeros((36, 48, 3), np.uint8))
    (root / "train" / "meta.json").write_text(json.dumps({"videos": {"objs": {}, "grad": {}}}))
    return root


def _coco_image() -> tuple[np.ndarray, list[dict]]:
    """A 64x48 image with a red and a green polygon instance and a blue crowd region (uncompressed RLE)."""
    h, w = 48, 64
    rgb = np.full((h, w, 3), 128, np.uint8)
    rgb[4:30, 4:30] = RED  # polygon A, 26x26
    rgb[10:40, 36:60] = GREEN  # polygon B, 30x24 (larger, painted first)
    rgb[42:48, :] = BLUE  # crowd
    crowd = np.zeros((h, w), np.uint8)
    crowd[42:48, :] = 1
    # Uncompressed RLE counts run over the column-major (Fortran) flattening, starting with a run of zeros.
    flat = crowd.flatten(order="F")
    changes = np.flatnonzero(np.diff(flat)) + 1
    counts = np.diff(np.concatenate([[0], changes, [flat.size]])).tolist()
    anns = [
        {"segmentation": [[4, 4, 30, 4, 30, 30, 4, 30]], "area": 676.0, "iscrowd": 0, "category_id": 1},
        {"segmentation": [[36, 10, 60, 10, 60, 40, 36, 40]], "area": 720.0, "iscrowd": 0, "category_id": 1},
        {"segmentation": {"counts": counts, "size": [h, w]}, "area": 384.0, "iscrowd": 1, "category_id": 1},
    ]
    return rgb, anns


@pytest.fixture
def coco_raw_root(tmp_path: Path) -> Path:
    """COCO download layout: train2017/ with two images and annotations/instances_train2017.json. Image 1 has two
    polygon instances and a crowd region; image 2 has only a crowd annotation (so it is never sampled)."""
    root = tmp_path / "COCO"
    rgb, anns = _coco_image()
    images, annotations = [], []
    for image_id in (1, 2):
        name = f"{image_id:012d}.jpg"
        write_jpeg(root / "train2017" / name, rgb)
        images.append({"id": image_id, "file_name": name, "height": 48, "width": 64})
        for ann in anns if image_id == 1 else anns[2:]:
            annotations.append({**ann, "id": len(annotations) + 1, "image_id": image_id})
    data = {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "thing"}]}
    (root / "annotations").mkdir(parents=True)
    (root / "annotations" / "instances_train2017.json").write_text(json.dumps(data))
    return root


@pytest.fixture
def coco_converted_root(tmp_path: Path) -> Path:
    """The converted COCO folder of the official code: JPEGImages/*.jpg + Annotations/*.png (instance ids)."""
    root = tmp_path / "COCO_converted"
    rgb, _ = _coco_image()
    ids = np.zeros(rgb.shape[:2], np.uint8)
    ids[4:30, 4:30] = 1
    ids[10:40, 36:60] = 2
    write_jpeg(root / "JPEGImages" / "000000000001.jpg", rgb)
    save_mask(root / "Annotations" / "000000000001.png", ids)
    return root


@pytest.fixture(autouse=True)
def no_process_outlives_its_test() -> Iterator[None]:
    """Fails the test that leaves a child process alive. DataLoader workers ignore SIGTERM (they must survive the
    signal SLURM sends to a whole job step), so one left behind would make the interpreter wait on it forever at
    exit: the suite would hang after its last test instead of failing (an interrupted training leaked two)."""
    import multiprocessing

    yield
    alive = [p.name for p in multiprocessing.active_children()]
    assert not alive, f"child processes left alive: {alive}"


def pytest_configure(config: pytest.Config) -> None:
    """Writes the golden folder (GOLDEN_WEIGHTS, GOLDEN_CASES) once per run, before any test is collected. Under
    pytest-xdist (`-n N`) each worker gets its share of the cores as intra-op threads: N workers with all cores each
    would contend for them and make every convolution slower."""
    if not hasattr(config, "workerinput"):  # the only process, or xdist's controller before its workers start
        from tools import golden

        golden.materialize(GOLDEN_BUILD)
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        import torch

        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))


@contextmanager
def single_thread() -> Iterator[None]:
    """torch on one intra-op thread inside the block (restored after): at the suite's sizes an operation is too small
    to share, and OpenMP threads spinning against other processes make a short step take many times longer."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture
def one_thread() -> Iterator[None]:
    """single_thread() for one test (modules whose module-scoped fixtures compute too use a module-scoped one)."""
    with single_thread():
        yield
