"""Small shared helpers.

Image I/O comes first: reading frames and object-id masks, and writing masks as DAVIS palette PNGs. Every bad
input raises `VOSInputError` with a message that names the file and the fix, so that a user sees one readable line
instead of a PIL traceback. Then writing files atomically, the lock a run holds on its output folder (`RunLock`),
parsing memory sizes and probing free memory.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

# ----------------------------------------------------------------------------------------------------------------------
# Image I/O
# ----------------------------------------------------------------------------------------------------------------------


class VOSInputError(Exception):
    """A dataset, frame, mask or flag given by the user is unusable; the message names it and says how to fix it."""


def _davis_palette() -> list[int]:
    """The 256-colour PASCAL VOC / DAVIS palette: the bits of the index are spread over R, G and B, high bit first."""
    palette = []
    for index in range(256):
        r = g = b = 0
        c = index
        for shift in range(7, -1, -1):
            r |= ((c >> 0) & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        palette += [r, g, b]
    return palette


# Flat [r0, g0, b0, r1, ...] list of 768 ints: 0 black, 1 (128, 0, 0), 2 (0, 128, 0), 3 (128, 128, 0), ...
DAVIS_PALETTE: list[int] = _davis_palette()

# Mask modes whose pixel values can be object ids. RGB(A) is refused: colours are not ids.
_ID_MODES = {"P", "L", "1", "I", "I;16", "I;16B", "I;16L", "LA", "La", "PA"}


FRAME_FIX = "re-extract the frame or re-download the sequence"
MASK_FIX = "rewrite it, or re-download it if it is a dataset annotation"


@contextlib.contextmanager
def _reading(path: Path, what: str, fix: str, error: type[Exception] = VOSInputError) -> Iterator[None]:
    """Turn a missing file and every decoding failure inside the block into `error`, naming the file."""
    if not path.is_file():
        raise error(f"{what} '{path}' does not exist; {fix}")
    try:
        yield
    except Image.DecompressionBombError as e:
        # PIL refuses images above twice Image.MAX_IMAGE_PIXELS before decoding them (a guard against files built
        # to exhaust memory); such a frame would not fit the model either
        limit = 2 * (Image.MAX_IMAGE_PIXELS or 0)
        raise error(f"{what} '{path}' is larger than the {limit} pixels PIL opens ({e}); downscale it "
                    f"(e.g. to 480 pixels on the short side, the test protocol's size)") from e
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise error(f"{what} '{path}' cannot be read ({e}); it is corrupt or truncated: {fix}") from e


def _open_image(path: Path, what: str, fix: str, error: type[Exception] = VOSInputError) -> Image.Image:
    """Open and fully decode an image, turning every failure into `error` with a message that names the file."""
    path = Path(path)
    with _reading(path, what, fix, error):
        img = Image.open(path)
        img.load()  # decode now: a truncated file only fails here, and we want that error to name the file
    return img


def _not_an_id_mode(path: Path, mode: str) -> str:
    return (f"mask '{path}' is a {mode} image; save masks as palette (P) or grayscale (L) PNGs whose pixel values "
            f"are object ids (0 = background, 1, 2, ... = objects); convert a black/white mask with "
            f"`PIL.Image.open(path).convert('L').save(path)` or write ids with utils.save_mask")


def check_image(path: str | os.PathLike, what: str) -> tuple[int, int]:
    """Check that a frame (what='frame') or a mask ('mask') reads, without keeping it, and return its (width, height).

    Fails where read_frame / read_mask would, with their message: a missing, corrupt or truncated file, a mask that
    is no id image. Cheaper than reading: a PNG is verified (every chunk present, every CRC right, which also
    catches flipped bits that a full decode lets through) instead of decoded; a JPEG, which has no checksums, is
    decoded at 1/8 scale (PIL's draft mode), which still reads and entropy-decodes its whole stream, so a truncated
    or broken file fails as in a full decode.
    """
    path = Path(path)
    with _reading(path, what, FRAME_FIX if what == "frame" else MASK_FIX), Image.open(path) as img:
        size = img.size
        if what == "mask" and img.mode not in _ID_MODES:
            raise VOSInputError(_not_an_id_mode(path, img.mode))
        if img.format == "PNG":
            img.verify()
        else:
            img.draft(None, (max(1, size[0] // 8), max(1, size[1] // 8)))  # JPEG only; other formats ignore it
            img.load()
    return size


def read_frame(path: str | os.PathLike) -> np.ndarray:
    """Read a video frame as RGB.

    Args:
        path: a JPEG or PNG file (grayscale, palette and RGBA images are converted to RGB).
    Returns:
        uint8 array (H, W, 3), RGB.
    Raises:
        VOSInputError: the file is missing, corrupt or truncated.
    """
    img = _open_image(Path(path), "frame", FRAME_FIX)
    if img.mode != "RGB":
        img = img.convert("RGB")
    return np.asarray(img, dtype=np.uint8)


def read_mask(
    path: str | os.PathLike, binary: bool = False, *, raw: bool = False, error: type[Exception] = VOSInputError
) -> np.ndarray:
    """Read an annotation (or a prediction) as a map of object ids.

    Palette ('P') and grayscale PNGs are read as index values, so pixel value k is object k (0 = background). An
    alpha channel (LA/PA) is dropped: the DAVIS 2016 download has such a file (bear/00077.png is LA).

    Default, for the masks given to the model: value 255 is DAVIS "void" and becomes background, as the official
    loader does (LabelToLongTensor). One exception: a grayscale image whose only values are 0 and 255 is a
    black/white mask (the DAVIS 2016 download and most tools store single objects that way), so there 255 is
    object 1; reading it as void would lose it.

    raw=True, for evaluation: the stored values untouched, as the official DAVIS toolkit reads predictions and
    ground truth (`np.array(Image.open(path))`); what 255 means is then the caller's protocol.

    Args:
        path: the PNG file.
        binary: DAVIS 2016 protocol, every object merged into one (ids != 0 -> 1), after the void mapping.
        raw: keep the stored values (no void mapping, no conversion to uint8).
        error: the exception raised for an unusable file (evaluation.py passes its EvaluationError).
    Returns:
        (H, W) array of object ids: uint8, or with raw=True the stored integer type.
    Raises:
        `error` (VOSInputError by default): the file is missing or unreadable, or is not an index image (RGB(A)),
        or (not raw) has values above 255.
    """
    path = Path(path)
    img = _open_image(path, "mask", MASK_FIX, error)
    if img.mode not in _ID_MODES:
        raise error(_not_an_id_mode(path, img.mode))
    if img.mode in ("LA", "La", "PA"):
        img = img.getchannel(0)
    ids = np.asarray(img)
    if ids.dtype == bool:  # mode '1'
        ids = ids.astype(np.uint8)
    if not raw:
        if ids.dtype != np.uint8:
            if ids.size and (ids.min() < 0 or ids.max() > 255):
                raise error(f"mask '{path}' has values outside 0..255; object ids must fit in 8 bits")
            ids = ids.astype(np.uint8)
        if img.mode == "L" and ids.size and np.isin(ids, (0, 255)).all():
            ids = (ids != 0).astype(np.uint8)
        else:
            ids = np.where(ids == 255, 0, ids).astype(np.uint8)
    if binary:
        ids = (ids != 0).astype(np.uint8)
    return ids


def why_no_object(path: str | os.PathLike) -> str:
    """For a mask that `read_mask` finds empty: what its pixels hold and how to give objects, as the rest of a
    sentence "mask PATH has no object ...". A mask of only 255 is DAVIS "void", not zeros, and must be called so."""
    values = [int(v) for v in np.unique(read_mask(path, raw=True))]
    if values == [0]:
        held = "every pixel is 0"
    else:
        shown = ", ".join(map(str, values[:6])) + (", ..." if len(values) > 6 else "")
        held = f"its pixel values are {shown}, and 255 is DAVIS's void label, read as background"
    return f"({held}); give at least one object as pixel values 1..254 (or a black/white grayscale mask)"


def writable_dir(path: Path, flag: str) -> Path:
    """Create the folder `path` and check that a file can be written in it, so that a run fails before any work,
    not after it. `flag` names the option the path came from, for the message."""
    if path.exists() and not path.is_dir():
        raise VOSInputError(f"{flag} {path} is a file, not a folder; pass a folder path")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
            pass
    except OSError as e:
        raise VOSInputError(f"{flag} {path} is not writable ({e.strerror}); pass a folder you can write to") from e
    return path


def check_output_outside(out: str | os.PathLike, inputs: list[Path], flag: str) -> None:
    """Refuse an output folder that holds, is, or lies inside any of the run's inputs (files or folders), symlinks
    resolved: writing there would overwrite frames, masks or the ground truth being scored."""
    target = Path(os.path.realpath(out))
    for given in inputs:
        real = Path(os.path.realpath(given))
        if real == target or target in real.parents:
            how = "is" if real == target else "holds"
        elif real.is_dir() and real in target.parents:
            how = "lies inside"
        else:
            continue
        shown = f"'{given}'" + (f" (= '{real}')" if Path(given).absolute() != real else "")
        raise VOSInputError(f"{flag} {out} {how} the input {shown} of this run, which writing there could overwrite; "
                            f"pass an {flag} folder outside the dataset, the frames and the masks")


# What a full disk, a quota, a read-only or unwritable folder or a file past the size limit raise: the user's to fix,
# told in one line (`write_failure`); any other OSError is a bug, shown whole.
WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EFBIG)


def write_failure(err: OSError) -> str | None:
    """The one line for an OSError of `WRITE_ERRNOS`, naming the file (atomic_write fills in the name a file object
    leaves out); None for any other errno."""
    if err.errno not in WRITE_ERRNOS:
        return None
    verb = "could not access" if err.errno == errno.EACCES else "could not write"
    return f"{verb} {err.filename or '(a file)'}: {err.strerror}"


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], object], mode: int = 0o644) -> Path:
    """Write a file all at once or not at all.

    `write(f)` fills a temporary file in the same folder (a binary file object: `img.save(f, format='PNG')`,
    `torch.save(obj, f)`, `f.write(text.encode())`); it is flushed, fsynced and then renamed over `path` with
    os.replace, which is atomic within one file system. A crash, a full disk or Ctrl+C at any point leaves the old
    file or the new one under `path`, never a partial one, and no temporary file: it is removed on any exception,
    KeyboardInterrupt included. The temporary name is unique (tempfile.mkstemp), so concurrent runs writing the same
    path do not collide (the last rename wins); it starts with '.', so folder listings that skip hidden files
    (dataset.py) never mistake it for a frame or a mask.

    Args:
        path: the file to write; parent folders are created.
        write: called once with the open binary file; its return value is ignored.
        mode: permission bits of the result (mkstemp creates 0600; outputs are ordinary files).
    Returns:
        `path` as a Path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # The writer's pid is in the name, so that start-up cleanup (weights.clean_stale_temporaries) can leave alone
    # the temporaries of a save that is still running in another process.
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{TEMP_PID_TAG}{os.getpid()}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            # On disk before the rename makes it visible: after a power loss `path` is not an empty new file.
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        if isinstance(e, OSError) and e.filename is None:
            e.filename = str(path)  # a full disk seen through a file object names no file; the message must
        raise
    return path


# Temporary files carry `.pid<N>.` before tempfile's random part: the process that writes them.
TEMP_PID_TAG = "pid"


def pid_alive(pid: int) -> bool:
    """Whether a process with this id runs on this machine (signal 0 checks without sending anything)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by another user
        return True
    return True


class RunLock:
    """A lock file in a run's output folder, held for the run's duration: two runs writing into one folder would
    overwrite and score each other's files.

    `with RunLock(folder, "--output"):` creates the folder (checked writable, as `writable_dir`), then the lock file
    `.emvos.lock` with O_EXCL, holding the pid, the host and the command. Another live process's lock is an error
    naming that process; a lock whose process is gone (a killed run) is taken over with a note. The lock is removed
    at exit, also on Ctrl+C or any error; when this lock created the folder, the run's folders in it that stayed
    empty are removed, and so is the folder (and the parents it created) if nothing is left, so a run that fails
    early leaves nothing behind.
    """

    NAME = ".emvos.lock"

    def __init__(self, folder: str | os.PathLike, flag: str) -> None:
        self.folder = Path(folder)
        self.flag = flag
        self.path = self.folder / self.NAME
        self._held = False
        self._created: list[Path] = []

    def _holder(self) -> tuple[int, str, str]:
        """(pid, host, command) of the lock file's writer; pid 0 when the file cannot be read (being written)."""
        try:
            lines = self.path.read_text().splitlines()
            return int(lines[0]), lines[1], lines[2] if len(lines) > 2 else ""
        except (OSError, ValueError, IndexError):
            return 0, "", ""

    def acquire(self) -> RunLock:
        missing = [p for p in (self.folder, *self.folder.parents) if not p.exists()]
        writable_dir(self.folder, self.flag)
        self._created = missing  # deepest first: the order to remove them in
        text = f"{os.getpid()}\n{socket.gethostname()}\n{' '.join(sys.argv)}\n"
        for _ in range(3):  # a stale lock is removed and the create tried again
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                pid, host, command = self._holder()
                if pid and (host != socket.gethostname() or pid_alive(pid)):
                    self._remove_created()
                    raise VOSInputError(
                        f"{self.flag} {self.folder} is in use by process {pid} on {host or 'this machine'} "
                        f"(`{command}`); wait for it to finish or pass another {self.flag} (if that process is gone, "
                        f"delete {self.path})") from None
                if not pid:  # being written by a process that has just created it
                    self._remove_created()
                    raise VOSInputError(f"{self.flag} {self.folder} is being locked by another run ({self.path}); "
                                        f"pass another {self.flag}") from None
                print(f"note: taking over {self.path}, left by process {pid} which is gone (`{command}`)")
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as f:
                f.write(text)
            self._held = True
            return self
        raise VOSInputError(f"{self.flag} {self.folder}: could not take the lock {self.path}; pass another {self.flag}")

    def release(self) -> None:
        if self._held:
            self._held = False
            if self._holder()[0] == os.getpid():  # never remove a lock another run took over
                self.path.unlink(missing_ok=True)
        self._remove_created()

    def _remove_created(self) -> None:
        if self._created and self._created[0] == self.folder:  # all below it is this run's: drop its empty folders
            for below, _, _ in sorted(os.walk(self.folder), key=lambda entry: -len(entry[0])):
                if below != str(self.folder):
                    with contextlib.suppress(OSError):
                        os.rmdir(below)
        for folder in self._created:
            with contextlib.suppress(OSError):  # not empty (the run wrote there) or already gone
                folder.rmdir()
        self._created = []

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def save_mask(path: str | os.PathLike, mask: np.ndarray) -> None:
    """Write an object-id map as a DAVIS palette PNG (pixel value = object id), creating the parent folders.

    Written with `atomic_write`, so a crash or a full disk never leaves a half-written mask that a later evaluation
    would read as a valid prediction.

    Args:
        path: target .png file.
        mask: (H, W) integer array of object ids in 0..255.
    """
    path = Path(path)
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"save_mask expects an (H, W) id map, got shape {mask.shape} for {path}")
    if mask.size and (mask.min() < 0 or mask.max() > 255):
        raise ValueError(
            f"object ids must be in 0..255 to fit a palette PNG, got {mask.min()}..{mask.max()} for {path}"
        )
    img = Image.fromarray(mask.astype(np.uint8))
    img.putpalette(DAVIS_PALETTE)  # turns the 'L' image into a 'P' image with the same index values
    atomic_write(path, lambda f: img.save(f, format="PNG"))




def available_memory(device: torch.device | str) -> int:
    """Bytes that can still be allocated on a device, now.

    CUDA: free device memory plus what PyTorch's caching allocator holds without using it. CPU: the kernel's
    MemAvailable (Linux), elsewhere the free physical pages.
    """
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


# Share of the free memory one frame's temporaries may take when the budget is automatic. A quarter leaves room for
# what the budget does not cover (similarity matrices, full-resolution logits, aggregation) and for other programs;
# larger batches gain little (bench.py), so there is no reason to press closer to the limit.
AUTO_BUDGET_FRACTION = 0.25


def auto_memory_budget(device: torch.device | str, fraction: float = AUTO_BUDGET_FRACTION) -> int:
    """The automatic memory budget (bytes) for one frame's readout and decoder temporaries on a device."""
    return int(fraction * available_memory(device))
