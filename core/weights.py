"""Weight files: the official EMVOS checkpoints on demand, safe loading of files a user hands in, and ImageNet
backbone weights without running code.

Read top to bottom:
1. The official release: the two checkpoints in the authors' repository, pinned to one commit and checked by their
   git blob ids. `resolve_weights` turns `--weights official-davis` (or a path) into a file on disk, fetching the
   official one when it is missing; a download lands in a hidden temporary file and is moved into place only after
   its blob id matches, so the folder never holds half a file. `official-davis` / `official-ytvos` check the blob id
   of the file they name, and `safe_destination` keeps a training save from overwriting an official file.
2. `load_file` / `load_state_dict_file`: every `torch.load` of a user's file goes through here, with
   `weights_only=True` and one readable error per way a file can be wrong (missing, empty, truncated, a git-lfs
   pointer, a pickle with code in it); `check_finite` refuses NaN or infinite weights.
3. `load_imagenet_weights`: torchvision's `weights.get_state_dict()` unpickles a file already in the hub cache with
   `weights_only=False` and checks its hash only when it downloads it, so a file planted in
   `$TORCH_HOME/hub/checkpoints/` runs code. Here the SHA-256 the file name carries is checked before anything is
   unpickled, and the unpickling is `weights_only` as well.

Downloading is off when the environment variable EMVOS_NO_DOWNLOAD is set to anything but "" or "0" (read at each
call, not at import), and inside `downloads_off()` (run.py's --no-download).
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import io
import os
import re
import tempfile
import urllib.error
import urllib.parse
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

import torch
import torch.nn as nn
from torch import Tensor

from utils import TEMP_PID_TAG, VOSInputError, pid_alive

# ----------------------------------------------------------------------------------------------------------------------
# 1. The official EMVOS checkpoints
# ----------------------------------------------------------------------------------------------------------------------

# The authors' repository at the commit whose trained_model/ holds the released checkpoints. Pinning the commit (not
# `master`) is what makes the blob ids below a fixed property of the URL.
OFFICIAL_COMMIT = "7e1e200338e9e74afa9f9d3cffb592fcc570d00b"
OFFICIAL_BASE_URL = f"https://github.com/suhwan-cho/EMVOS/raw/{OFFICIAL_COMMIT}/trained_model"

# file name -> git blob id at OFFICIAL_COMMIT (SHA-1 of b"blob <size>\0" + bytes, what `git hash-object` prints)
OFFICIAL_BLOB_IDS: dict[str, str] = {
    "coco_davis_best.pth": "fd1081e60b4c7ab791edd1267a321c9621f86391",
    "coco_ytvos_best.pth": "1778292b21ea66d8cfb18ceaf39f70f3fc8dc179",
}

# what `--weights` accepts besides a path
WEIGHT_ALIASES: dict[str, str] = {
    "official-davis": "coco_davis_best.pth",
    "official-ytvos": "coco_ytvos_best.pth",
}

DOWNLOAD_ENV = "EMVOS_NO_DOWNLOAD"

# Errors that mean "the network did not deliver": URLError covers refused connections, DNS failures and HTTPError
# (404, 500, ...); ConnectionError and TimeoutError come from a transfer that breaks after it started; IncompleteRead
# and the other http.client errors are HTTPExceptions. A full disk is an OSError outside this tuple on purpose: the
# "put it there by hand" advice would not help.
_NETWORK_ERRORS = (urllib.error.URLError, ConnectionError, TimeoutError, http.client.HTTPException)

_CHUNK = 1 << 20  # hash files 1 MiB at a time: checkpoints are 100+ MB and need not sit in memory twice


class WeightsUnavailableError(VOSInputError):
    """Weights that are neither on disk nor downloadable now (offline, or downloading turned off)."""


def git_blob_id(path: str | os.PathLike) -> str:
    """The git blob id of a file, as `git hash-object FILE` prints it: SHA-1 of b"blob <size>\\0" + contents.

    Read in 1 MiB chunks, so a large checkpoint is never held in memory.
    """
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size  # the size of the file we read, not of whatever the path names later
        h = hashlib.sha1(b"blob %d\0" % size)
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


# (resolved path, size, mtime_ns) -> git blob id: a 100 MB checkpoint is hashed once per process, not at each save
# or load; a file replaced in place gets a new mtime (or size) and is hashed again.
_BLOB_ID_CACHE: dict[tuple[str, int, int], str] = {}


def cached_blob_id(path: str | os.PathLike) -> str:
    """`git_blob_id(path)`, remembered by the file's size and modification time."""
    st = os.stat(path)
    key = (str(Path(path).resolve()), st.st_size, st.st_mtime_ns)
    if key not in _BLOB_ID_CACHE:
        _BLOB_ID_CACHE[key] = git_blob_id(path)
    return _BLOB_ID_CACHE[key]


def official_name(path: str | os.PathLike) -> str | None:
    """The official file name whose bytes `path` holds (whatever it is called now), or None (also when missing)."""
    path = Path(path)
    if not path.is_file():
        return None
    blob = cached_blob_id(path)
    return next((name for name, blob_id in OFFICIAL_BLOB_IDS.items() if blob_id == blob), None)


def safe_destination(path: str | os.PathLike, note: bool = True) -> Path:
    """Where a checkpoint meant for `path` may be written without destroying the authors' released weights.

    `path` itself unless it holds an official checkpoint (by git blob id, whatever its name): then the first of
    `<stem>.retrained.pth`, `<stem>.retrained2.pth`, ... beside it that does not, with one line saying so when
    `note`. The same answer every time for the same files, so the trainer's later saves (and --chain best) find the
    file its earlier saves wrote.
    """
    path = Path(path)
    if official_name(path) is None:
        return path
    k = 1
    while True:
        other = path.with_name(f"{path.stem}.retrained{k if k > 1 else ''}{path.suffix}")
        if official_name(other) is None:
            break
        k += 1
    if note:
        print(f"note: {path} is the authors' official {official_name(path)}; writing {other} instead of "
              f"overwriting it")
    return other


@dataclass(frozen=True)
class Wording:
    """How a message names the ways to give weights and to allow downloads: run.py's flags, or a Python function's
    arguments (a Python user has no --weights to pass)."""

    weights: str = "--weights {}"  # formatted with what to pass: a path or an official alias
    download_off: str = "--no-download was given; run without it to download"


FLAGS = Wording()  # run.py and the tools
API = Wording(weights="checkpoint={!r} to load()",
              download_off="download=False was given; pass download=True to download")


def download_disabled(download: bool = True, wording: Wording = FLAGS) -> str | None:
    """What turned downloading off and how to turn it back on (a phrase for an error message), or None when it is
    allowed. Names the one that did it: run.py's --no-download (`downloads_off`), download=False, or the
    variable."""
    if not download or _off_by_flag:
        return wording.download_off
    flag = os.environ.get(DOWNLOAD_ENV, "")
    if flag not in ("", "0"):
        return f"{DOWNLOAD_ENV}={flag} is set; unset it (or set it to 0) to download"
    return None


_off_by_flag = False  # set by downloads_off: --no-download, kept apart from the variable so messages can tell them


@contextlib.contextmanager
def downloads_off(off: bool = True) -> Iterator[None]:
    """Within the block, downloading is off as run.py's --no-download asks (every download of the run); restored
    after. The environment is left alone, so a refusal names the flag, not DOWNLOAD_ENV."""
    global _off_by_flag
    before = _off_by_flag
    _off_by_flag = before or off
    try:
        yield
    finally:
        _off_by_flag = before


def _by_hand(url: str, dest: Path) -> str:
    """The manual way out, for machines without internet."""
    return f"or download {url} on a machine with internet and put it at {dest}"


def _short(e: Exception) -> str:
    """The first line of a network error, bounded: urllib's can carry a whole HTML page."""
    text = (str(e).strip().splitlines() or [type(e).__name__])[0]
    return text if len(text) <= 120 else text[:117] + "..."


def fetch_official(
    name: str, folder: Path = Path("trained_model"), base_url: str = OFFICIAL_BASE_URL, progress: bool = True,
    wording: Wording = FLAGS,
) -> Path:
    """Download one official checkpoint into `folder` and return its path.

    The bytes go to a hidden temporary file in `folder` (`.<name>.XXXXXXXX.part`) and are moved into place with
    `os.replace` only when their git blob id equals OFFICIAL_BLOB_IDS[name]. Whatever goes wrong (a refused
    connection, an HTTP error, a cut transfer, a wrong file, Ctrl-C), the temporary file is removed, so `folder`
    never holds a partial or unchecked checkpoint.

    Raises:
        ValueError: `name` is not one of the official files.
        WeightsUnavailableError: the transfer failed (the message names the URL and where to put the file by hand).
        VOSInputError: the downloaded bytes are not the official file.
    """
    if name not in OFFICIAL_BLOB_IDS:
        raise ValueError(f"{name!r} is not an official EMVOS checkpoint; choose from {sorted(OFFICIAL_BLOB_IDS)}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    url = f"{base_url.rstrip('/')}/{name}"
    dest = folder / name
    # the pid in the name: start-up cleanup leaves a download that another process is running alone
    fd, tmp_name = tempfile.mkstemp(prefix=f".{name}.{TEMP_PID_TAG}{os.getpid()}.", suffix=".part", dir=folder)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        try:
            # torch.hub writes its own `<tmp>.<uuid>.partial` and renames it onto tmp; it removes that file itself
            # on any error, including KeyboardInterrupt.
            torch.hub.download_url_to_file(url, str(tmp), progress=progress)
        except _NETWORK_ERRORS as e:
            raise WeightsUnavailableError(
                f"could not download {url} ({_short(e)}); nothing was saved. Check the connection and run again, "
                f"put the file at {dest} by hand, or pass {wording.weights.format('PATH')} to a checkpoint you have"
            ) from e
        expected, got = OFFICIAL_BLOB_IDS[name], git_blob_id(tmp)
        if got != expected:
            # Python's http.client does not raise on a body shorter than its Content-Length when read in chunks,
            # so a cut transfer ends here too; the size helps tell it from a changed file.
            raise VOSInputError(
                f"the download of {url} ({tmp.stat().st_size} bytes) is not the official {name}: its git blob id is "
                f"{got}, expected {expected} (a cut transfer or a changed file); it was deleted, nothing was saved. "
                f"Try again, or put the official file at {dest} by hand"
            )
        os.chmod(tmp, 0o644)  # as checkpoint.save_atomic: a 0600 temporary must not hide the weights from other users
        os.replace(tmp, dest)  # same folder, so atomic: dest is either absent or the whole checked file
    finally:
        tmp.unlink(missing_ok=True)  # gone after os.replace; otherwise this is the cleanup
    return dest


def resolve_weights(
    spec: str,
    folder: Path = Path("trained_model"),
    download: bool = True,
    base_url: str = OFFICIAL_BASE_URL,
    progress: bool = True,
    wording: Wording = FLAGS,
) -> Path:
    """Turn a `--weights` value into a checkpoint file on disk.

    - `official-davis` / `official-ytvos` name `folder/coco_davis_best.pth` / `folder/coco_ytvos_best.pth`.
    - An alias's file must be the official one (its git blob id, hashed once per process); any other existing file
      is returned as it is.
    - A missing file named like an official checkpoint is downloaded (`fetch_official`): into `folder` when `spec`
      is an alias or a bare file name (after looking for it there), else into the folder `spec` names.
    - Anything else that is missing is an error naming the path and the ways out.

    Args:
        spec: an alias or a path.
        folder: where the official files live (the authors' layout: trained_model/).
        download: False forbids the network (so does EMVOS_NO_DOWNLOAD set to anything but "" or "0").
        base_url: where the official files are served (tests point it at a local server).
        progress: show a progress bar while downloading.
        wording: how messages name the ways out: run.py's flags (FLAGS) or the Python API's arguments (API).
    Raises:
        WeightsUnavailableError: an official file is missing and cannot be downloaded now.
        VOSInputError: any other missing path, or a folder where a file was expected.
    """
    folder = Path(folder)
    path = folder / WEIGHT_ALIASES[spec] if spec in WEIGHT_ALIASES else Path(spec)
    if path.is_file():
        if spec in WEIGHT_ALIASES and cached_blob_id(path) != OFFICIAL_BLOB_IDS[path.name]:
            raise VOSInputError(
                f"{wording.weights.format(spec)}: {path} is not the authors' {path.name} (its git blob id differs: "
                f"another or a damaged file); move it away and run again to fetch the official one, or pass "
                f"{wording.weights.format(str(path))} to use it as it is"
            )
        return path
    if path.is_dir():
        raise VOSInputError(
            f"{wording.weights.format(str(path))}: '{path}' is a folder; pass the .pth file inside it, or "
            f"{wording.weights.format('official-davis')}"
        )
    if path.name not in OFFICIAL_BLOB_IDS:
        raise VOSInputError(
            f"no checkpoint at '{path}'. Pass {wording.weights.format('official-davis')} (or official-ytvos) to use "
            f"the authors' weights (downloaded into {folder}/ when missing), {wording.weights.format('PATH')} to a "
            f"checkpoint you have, or train "
            f"one with `python run.py --train`"
        )
    if path.parent == Path("."):  # a bare official name means the official folder, as the alias does
        path = folder / path.name
        if path.is_file():
            return path
    why_not = download_disabled(download, wording)
    if why_not is not None:
        url = f"{base_url.rstrip('/')}/{path.name}"
        raise WeightsUnavailableError(
            f"the official EMVOS weights {path} are missing and downloading is off ({why_not}); "
            f"{_by_hand(url, path)}"
        )
    return fetch_official(path.name, path.parent, base_url, progress, wording)


# Temporary files that an interrupted write leaves: checkpoint.save_atomic's `.{name}.pid<N>.XXXXXXXX.tmp`,
# fetch_official's `.{name}.pid<N>.XXXXXXXX.part`, and the `<that>.part.<uuid hex>.partial` that torch.hub writes
# inside the latter. XXXXXXXX is tempfile's random part ([a-z0-9_]); N the writer's pid (older files have none).
_STALE_PATTERNS = (
    re.compile(r"\..+\.[a-z0-9_]+\.(?:tmp|part)"),
    re.compile(r"\..+\.[a-z0-9_]+\.part\.[0-9a-f]{32}\.partial"),
)
_WRITER_PID = re.compile(rf"\..+\.{TEMP_PID_TAG}(\d+)\.[a-z0-9_]+\.(?:tmp|part)(?:\.[0-9a-f]{{32}}\.partial)?")


def clean_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Remove the hidden temporary files of interrupted downloads and checkpoint saves in `folder` (not below it).

    Only plain files whose names match the patterns above are touched, and never one whose writer (the pid in its
    name) still runs: it belongs to a save or download in progress in another process. Returns what was removed.
    Call it at start-up, holding the folder's utils.RunLock (checkpoint.prepare_save_dir runs under the trainer's).
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for p in sorted(folder.iterdir()):
        if p.is_file() and not p.is_symlink() and any(r.fullmatch(p.name) for r in _STALE_PATTERNS):
            writer = _WRITER_PID.fullmatch(p.name)
            if writer and pid_alive(int(writer.group(1))):
                continue
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


# ----------------------------------------------------------------------------------------------------------------------
# 2. Loading a file a user hands in
# ----------------------------------------------------------------------------------------------------------------------

_LFS_HEADER = b"version https://git-lfs.github.com/spec/"
_ZIP_HEADER = b"PK\x03\x04"  # torch.save since 1.6 writes a zip archive
_PICKLE_PROTO = 0x80  # the PROTO opcode: the first byte of a pickle (and of torch.save's legacy format)


# Sentences of torch's weights_only refusal that give advice rather than say what was refused: re-running with
# weights_only=False, allowlisting with add_safe_globals / safe_globals, the documentation link. Their wording changes
# between torch releases, so whole sentences are dropped by what they talk about, not matched verbatim.
_ADVICE = re.compile(r"weights.only|safe_globals|allowlist|trusted source|documentation|https?://|in pytorch \d|"
                     r"please use|you can use|re-?running", re.IGNORECASE)


def _refusal_reason(e: Exception) -> str:
    """What torch's weights_only refusal says was refused (e.g. `unsupported GLOBAL posix.system`), without its
    advice to load with weights_only=False or to allowlist the object: exactly what must not happen here."""
    sentences = re.split(r"(?<=[.!?])\s+|\n+", str(e))
    kept = [t.strip() for t in sentences if t.strip() and not _ADVICE.search(t)]
    return " ".join(" ".join(kept).split()).rstrip(".") or "unsupported content"


def _load_error(path: Path, what: str, head: bytes, e: Exception, fix: str) -> VOSInputError:
    """Name what a file that torch.load refused actually is, judged from its first bytes and the error."""
    text = str(e)
    is_torch_like = head[:1] == bytes([_PICKLE_PROTO]) or head.startswith(_ZIP_HEADER)
    if "Weights only load failed" in text and is_torch_like:
        reason = _refusal_reason(e)
        if reason.startswith("Unsupported operand"):
            # pickle opcodes torch.save never writes (e.g. protocol 4 framing of a plain pickle.dump)
            kind = f"is a pickle the safe loader cannot read ({reason}): not torch.save's format, so it may hold code"
        else:
            kind = f"contains code or Python objects other than tensors ({reason})"
        return VOSInputError(
            f"{what} '{path}' {kind}; it was NOT loaded and nothing in it ran. Only plain weights are read "
            f"(torch.load with weights_only=True); re-save the tensors alone (torch.save(model.state_dict(), path)) "
            f"from a copy you trust"
        )
    if head.startswith(_ZIP_HEADER) or isinstance(e, EOFError):
        first = text.split(". ")[0].splitlines()[0] if text else type(e).__name__  # torch's first sentence says it
        return VOSInputError(f"{what} '{path}' is truncated or corrupt ({first}); {fix}")
    return VOSInputError(f"{what} '{path}' is not a PyTorch file (it starts with {head[:8]!r}); {fix}")


def _load_open_file(f: BinaryIO, path: Path, what: str, fix: str) -> object:
    """torch.load(weights_only=True) of an open file, every failure turned into one VOSInputError naming `path`."""
    if os.fstat(f.fileno()).st_size == 0:
        raise VOSInputError(f"{what} '{path}' is empty (0 bytes), an interrupted download or copy; {fix}")
    head = f.read(64)
    f.seek(0)
    if head.startswith(_LFS_HEADER):
        raise VOSInputError(
            f"{what} '{path}' is a git-lfs pointer (a small text file that names the real one), not the weights; "
            f"run `git lfs pull` in the repository it came from, or download the file itself"
        )
    try:
        return torch.load(f, map_location="cpu", weights_only=True)
    except Exception as e:  # RuntimeError, UnpicklingError, EOFError, ValueError...: all mean "bad file"
        raise _load_error(path, what, head, e, fix) from e


def _open_user_file(path: Path, what: str) -> BinaryIO:
    if not path.exists():
        raise VOSInputError(f"{what} '{path}' does not exist; check the path")
    if path.is_dir():
        raise VOSInputError(f"{what} '{path}' is a folder, not a file; pass the .pth file inside it")
    try:
        return open(path, "rb")  # the callers close it in a with block
    except OSError as e:
        raise VOSInputError(f"{what} '{path}' cannot be opened ({e.strerror}); check its permissions") from e


def load_file(path: str | os.PathLike, what: str = "checkpoint") -> object:
    """`torch.load(path, map_location="cpu", weights_only=True)` with one clear error per way the file can be wrong.

    Never falls back to `weights_only=False`: a file that holds code or arbitrary Python objects is refused unread.

    Args:
        path: the file.
        what: what the file is meant to be, for the message ("checkpoint", "--init weights", ...).
    Raises:
        VOSInputError: missing, a folder, empty, a git-lfs pointer, truncated or corrupt, not a PyTorch file, or a
            pickle that weights_only refuses. The message names the file.
    """
    path = Path(path)
    fix = "download or copy it again"
    with _open_user_file(path, what) as f:
        return _load_open_file(f, path, what, fix)


def _article(name: str) -> str:
    return f"an {name}" if name[:1] in "aeiou" else f"a {name}"


def _describe(obj: object) -> str:
    if isinstance(obj, Tensor):
        return f"a single tensor of shape {tuple(obj.shape)}"
    return _article(type(obj).__name__)


def _tensor_map_problem(obj: object) -> str | None:
    """Why `obj` is not a state dict (str -> Tensor), or None when it is one."""
    if not isinstance(obj, Mapping):
        return f"holds {_describe(obj)}"
    if not obj:
        return "holds an empty dict, no weights"
    for k, v in obj.items():
        if not isinstance(k, str):
            return f"holds a dict with the key {k!r} ({_describe(k)}, not a parameter name)"
        if not isinstance(v, Tensor):
            return f"holds a dict whose entry {k!r} is {_describe(v)}"
    return None


def as_state_dict(obj: object, path: Path, what: str) -> tuple[dict[str, Tensor], dict]:
    """(weights, metadata) from a loaded object: a plain state dict, or a dict with one under "model"."""
    if _tensor_map_problem(obj) is None:
        # keep an OrderedDict as it is: load_state_dict reads its `_metadata` (module versions) when present
        return (obj if isinstance(obj, dict) else dict(obj)), {}
    if isinstance(obj, Mapping) and "model" in obj:
        problem = _tensor_map_problem(obj["model"])
        if problem is None:
            inner = obj["model"]
            meta = {k: v for k, v in obj.items() if k != "model"}
            return (inner if isinstance(inner, dict) else dict(inner)), meta
        raise VOSInputError(f"{what} '{path}': its 'model' entry {problem}, not a state dict of tensors")
    raise VOSInputError(
        f"{what} '{path}' {_tensor_map_problem(obj)}, not a state dict of tensors (a dict of parameter name -> "
        f"tensor, or a dict with one under 'model'); pass a checkpoint saved from a model's state_dict()"
    )


def load_state_dict_file(path: str | os.PathLike, what: str = "checkpoint") -> tuple[dict[str, Tensor], dict]:
    """Load a checkpoint safely and return (weights, metadata).

    Accepts a plain state dict (parameter name -> tensor, e.g. the official EMVOS files; metadata is then {}) or a
    dict holding one under "model" (what `run.py --train` writes; metadata is every other entry: method, config,
    optimizer, ...).

    Raises:
        VOSInputError: everything `load_file` refuses, and a file that holds anything else (a tensor, a list, a
            dict with non-tensor values); the message names the file and what it holds.
    """
    path = Path(path)
    return as_state_dict(load_file(path, what), path, what)


def check_finite(state: Mapping[str, Tensor], path: Path, what: str) -> None:
    """Refuse weights holding NaN or infinity, naming the first such tensor: a network with them turns every frame
    into background (NaN logits lose every comparison) and the run would still end with exit 0."""
    for name, t in state.items():
        if t.is_floating_point() or t.is_complex():
            bad = ~torch.isfinite(t)
            if bad.any():
                raise VOSInputError(
                    f"{what} '{path}': tensor {name} {tuple(t.shape)} holds {int(bad.sum())} NaN/inf values, so the "
                    f"file is damaged or comes from a diverged run; pass an earlier checkpoint of that run, or "
                    f"download or copy it again"
                )


# ----------------------------------------------------------------------------------------------------------------------
# 3. ImageNet backbone weights, hash-checked before unpickling
# ----------------------------------------------------------------------------------------------------------------------


class WeightsURL(Protocol):
    """What `load_imagenet_weights` needs of a weights entry: a torchvision `WeightsEnum` member has it."""

    @property
    def url(self) -> str: ...


# torchvision's naming: `<name>-<first hex digits of the SHA-256>.pth` (torch.hub says eight or more digits)
_HASH_IN_NAME = re.compile(r".+-([0-9a-f]{8,})")

# Old DenseNet files name layers `norm.1`, `conv.2`...; the modules are `norm1`, `conv2` since '.' left module names.
# The same rewrite as torchvision.models.densenet._load_state_dict; it matches no key of other networks.
_OLD_DENSENET_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$"
)


def _sha256(f: BinaryIO) -> str:
    h = hashlib.sha256()
    for chunk in iter(lambda: f.read(_CHUNK), b""):
        h.update(chunk)
    f.seek(0)
    return h.hexdigest()


def _load_hub_file(f: BinaryIO, path: Path, what: str, fix: str) -> object:
    """weights_only load of a hub file, including torch.hub's legacy format: a zip holding one pre-1.6 torch file."""
    if zipfile.is_zipfile(f):
        f.seek(0)
        with zipfile.ZipFile(f) as zf:
            members = zf.infolist()
            if len(members) == 1 and not members[0].is_dir():  # torch.save archives hold several entries
                return _load_open_bytes(zf.read(members[0]), path, what, fix)
    f.seek(0)
    return _load_open_file(f, path, what, fix)


def _load_open_bytes(data: bytes, path: Path, what: str, fix: str) -> object:
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # as in _load_open_file
        raise _load_error(path, what, data[:64], e, fix) from e


def load_imagenet_weights(
    net: nn.Module,
    weights_entry: WeightsURL,
    cache_dir: Path | None = None,
    download: bool = True,
    progress: bool = True,
    dropped: tuple[str, ...] = (),
) -> None:
    """Load ImageNet weights into `net` (strict), checking the file's SHA-256 before anything is unpickled.

    The replacement for `torchvision.models.<net>(weights=...)`: build the network with `weights=None`, then call
    this. The file is `<cache_dir>/<basename of weights_entry.url>` (by default torch.hub's cache,
    `$TORCH_HOME/hub/checkpoints`, so files torchvision already downloaded are used). Its name carries the first hex
    digits of its SHA-256; a file that does not match is refused unread, and a missing one is downloaded (torch.hub
    checks the same prefix). Loading is `weights_only=True`, and old DenseNet key names are rewritten as torchvision
    does.

    Args:
        net: a network with torchvision's module names, e.g. `torchvision.models.densenet121(weights=None)` or a
            backbones.py trunk.
        weights_entry: e.g. `torchvision.models.DenseNet121_Weights.IMAGENET1K_V1`, or anything with `.url`.
        cache_dir: the folder of downloaded weights.
        download: False forbids the network (so does EMVOS_NO_DOWNLOAD).
        progress: show a progress bar while downloading.
        dropped: names of the file's modules that `net` leaves out (a classifier, later stages): their keys are
            skipped; every other key must fit `net` and every key of `net` must be in the file.
    Raises:
        ValueError: the URL's file name carries no hash (`<name>-<hex>.pth`), so the file could not be checked.
        WeightsUnavailableError: the file is missing and cannot be downloaded now.
        VOSInputError: the file does not match its hash, or is not a file of plain weights.
        RuntimeError: the weights do not fit `net` (load_state_dict, strict).
    """
    url = weights_entry.url
    name = os.path.basename(urllib.parse.urlparse(url).path)
    m = _HASH_IN_NAME.fullmatch(Path(name).stem)
    if m is None:
        raise ValueError(f"the file name of {url} carries no SHA-256 prefix (<name>-<hex>.pth); it cannot be checked")
    prefix = m.group(1)
    cache_dir = Path(torch.hub.get_dir()) / "checkpoints" if cache_dir is None else Path(cache_dir)
    path = cache_dir / name
    what = "ImageNet weights"
    fix = f"delete it and run again to download it afresh from {url}, or pass --no-pretrained"

    if not path.exists():
        why_not = download_disabled(download)
        if why_not is not None:
            raise WeightsUnavailableError(
                f"the ImageNet weights {path} are missing and downloading is off ({why_not}); "
                f"{_by_hand(url, path)}, or pass --no-pretrained to start the backbone from scratch"
            )
        cache_dir.mkdir(parents=True, exist_ok=True)
        try:
            # writes `<path>.<uuid>.partial`, checks the SHA-256 prefix, then renames; it removes the partial on error
            torch.hub.download_url_to_file(url, str(path), hash_prefix=prefix, progress=progress)
        except _NETWORK_ERRORS as e:
            raise WeightsUnavailableError(
                f"could not download the ImageNet weights {url} ({_short(e)}); nothing was saved. Check the "
                f"connection and run again, put the file at {path} by hand, or pass --no-pretrained to start the "
                f"backbone from scratch"
            ) from e
        except RuntimeError as e:
            if "invalid hash value" not in str(e):
                raise
            raise VOSInputError(
                f"the download of {url} does not match the hash its name carries ({e}); it was deleted, nothing was "
                f"saved in {cache_dir}/. Try again, or pass --no-pretrained"
            ) from e

    with _open_user_file(path, what) as f:
        # Hash and load through one open file: a file swapped in by rename between the check and the load is not read.
        digest = _sha256(f)
        if not digest.startswith(prefix):
            raise VOSInputError(
                f"{what} '{path}' does not match the hash its name carries (SHA-256 {digest[: len(prefix)]}..., the "
                f"name says {prefix}); it was NOT loaded. It may have been damaged or planted: {fix}"
            )
        obj = _load_hub_file(f, path, what, fix)
    state, _ = as_state_dict(obj, path, what)
    for key in list(state):
        old = _OLD_DENSENET_KEY.match(key)
        if old:
            state[old.group(1) + old.group(2)] = state.pop(key)
    state = {k: v for k, v in state.items() if not any(k == d or k.startswith(d + ".") for d in dropped)}
    net.load_state_dict(state, strict=True)
