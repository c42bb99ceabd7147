"""weights.py: official checkpoints from a stand-in server on 127.0.0.1, safe loading, hash-checked ImageNet files.

No internet: a ThreadingHTTPServer on port 0 serves a tmp folder and plays the authors' repository (through the
`base_url` parameter) or the torchvision download site (through a weights entry's `.url`). It counts requests, so a
test can say the network was never touched.
"""

from __future__ import annotations

import functools
import hashlib
import os
import random
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import zipfile
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn
import torchvision as tv
from conftest import GOLDEN_WEIGHTS

import dataset
import run
from core import weights
from core.weights import WeightsUnavailableError
from utils import VOSInputError

DAVIS = "coco_davis_best.pth"


# ----------------------------------------------------------------------------------------------------------------------
# Helpers: the local server, a payload that leaves a trace when unpickled
# ----------------------------------------------------------------------------------------------------------------------


class _Handler(SimpleHTTPRequestHandler):
    """Serves the server's folder; `/cut/<file>` announces the whole file but sends half of it and hangs up."""

    def do_GET(self) -> None:  # noqa: N802 -- the http.server API
        self.server.hits.append(self.path)
        if self.path.startswith("/cut/"):
            data = (Path(self.directory) / self.path[len("/cut/") :]).read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        super().do_GET()

    def log_message(self, *args: object) -> None:  # keep pytest's output clean
        pass


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A web server on 127.0.0.1 serving tmp_path/remote; .url, .root, .hits (request paths, in order)."""
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)  # a proxy setting must not send 127.0.0.1 elsewhere
    root = tmp_path / "remote"
    root.mkdir()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Handler, directory=str(root)))
    httpd.hits = []
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield SimpleNamespace(url=f"http://127.0.0.1:{httpd.server_port}", root=root, hits=httpd.hits)
    httpd.shutdown()
    httpd.server_close()
    thread.join()


@pytest.fixture
def official(server: SimpleNamespace, monkeypatch: pytest.MonkeyPatch) -> bytes:
    """A small torch file served as coco_davis_best.pth, with the blob-id table patched to expect it."""
    path = server.root / DAVIS
    torch.save({"vos.w": torch.arange(6.0)}, path)
    monkeypatch.setitem(weights.OFFICIAL_BLOB_IDS, DAVIS, weights.git_blob_id(path))
    return path.read_bytes()


@pytest.fixture(autouse=True)
def downloads_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    """The caller's environment must not decide whether a test downloads."""
    monkeypatch.delenv(weights.DOWNLOAD_ENV, raising=False)


def closed_port_url() -> str:
    """A URL on a port nothing listens on: the connection is refused, as on a machine without internet."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/trained_model"


class Payload:
    """Unpickling this creates `target` (open(target, "w")): the trace of code run by a planted pickle."""

    def __init__(self, target: Path):
        self.target = str(target)

    def __reduce__(self) -> tuple:
        return (open, (self.target, "w"))


def save_with_payload(path: Path, side_effect: Path) -> Path:
    torch.save({"w": torch.ones(2), "x": Payload(side_effect)}, path)
    return path


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tiny_densenet() -> nn.Module:
    """A torchvision DenseNet small enough to build in milliseconds, with denselayer keys like densenet121's."""
    return tv.models.DenseNet(growth_rate=4, block_config=(1, 1), num_init_features=8, bn_size=2, num_classes=3)


def old_densenet_keys(state: dict) -> dict:
    """What the 2017 torchvision files hold: `norm.1` for `norm1` ..., no num_batches_tracked, no _metadata."""
    old = {}
    for k, v in state.items():
        if k.endswith("num_batches_tracked"):
            continue
        old[re.sub(r"(denselayer\d+\.(?:norm|relu|conv))([12])\.", r"\1.\2.", k)] = v
    return old


# ----------------------------------------------------------------------------------------------------------------------
# 1. Official checkpoints on demand
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 3 * (1 << 20) + 5])  # empty, and several 1 MiB chunks plus a tail
def test_git_blob_id_equals_git_hash_object(tmp_path: Path, size: int) -> None:
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    path = tmp_path / "blob.bin"
    path.write_bytes(random.Random(size).randbytes(size))
    expected = subprocess.run(["git", "hash-object", str(path)], capture_output=True, text=True, check=True)
    assert weights.git_blob_id(path) == expected.stdout.strip()


def test_official_ids_are_pinned() -> None:
    """Bugs: a typo in a pinned blob id (every real download would be refused), or a base URL that follows a branch
    (the files could change under their ids). The ids are what `git ls-tree 7e1e200 trained_model` lists in
    suhwan-cho/EMVOS, the commit the URL names."""
    assert weights.OFFICIAL_BLOB_IDS == {
        "coco_davis_best.pth": "fd1081e60b4c7ab791edd1267a321c9621f86391",
        "coco_ytvos_best.pth": "1778292b21ea66d8cfb18ceaf39f70f3fc8dc179",
    }
    assert re.fullmatch(r"https://github\.com/suhwan-cho/EMVOS/raw/7e1e200[0-9a-f]{33}/trained_model",
                        weights.OFFICIAL_BASE_URL)


def test_each_alias_fetches_its_own_file(tmp_path: Path, server: SimpleNamespace,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Bug: an alias naming the other checkpoint (--weights official-ytvos testing with the DAVIS weights), or one
    checked against the other file's blob id."""
    for name in weights.OFFICIAL_BLOB_IDS:
        torch.save({"name": name}, server.root / name)
        monkeypatch.setitem(weights.OFFICIAL_BLOB_IDS, name, weights.git_blob_id(server.root / name))
    folder = tmp_path / "trained_model"
    for alias, name in (("official-davis", "coco_davis_best.pth"), ("official-ytvos", "coco_ytvos_best.pth")):
        got = weights.resolve_weights(alias, folder, base_url=server.url, progress=False)
        assert got == folder / name and torch.load(got) == {"name": name}
    assert server.hits == ["/coco_davis_best.pth", "/coco_ytvos_best.pth"]


def test_fetch_places_the_checked_file(tmp_path: Path, server: SimpleNamespace, official: bytes) -> None:
    folder = tmp_path / "trained_model"  # does not exist yet
    got = weights.resolve_weights("official-davis", folder, base_url=server.url, progress=False)
    assert got == folder / DAVIS
    assert got.read_bytes() == official
    assert sorted(os.listdir(folder)) == [DAVIS]  # no temporary file left beside it
    assert got.stat().st_mode & 0o777 == 0o644  # not the temporary file's private 0600
    assert server.hits == [f"/{DAVIS}"]
    # present now: returned as is, the network is not asked again
    assert weights.resolve_weights("official-davis", folder, base_url=server.url, progress=False) == got
    assert len(server.hits) == 1
    state, meta = weights.load_state_dict_file(got)
    assert torch.equal(state["vos.w"], torch.arange(6.0)) and meta == {}


def test_bare_official_name_is_fetched_into_the_folder(
    tmp_path: Path, server: SimpleNamespace, official: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    got = weights.resolve_weights(DAVIS, Path("trained_model"), base_url=server.url, progress=False)
    assert got == Path("trained_model") / DAVIS and got.read_bytes() == official


def test_changed_byte_is_refused_and_nothing_is_left(tmp_path: Path, server: SimpleNamespace, official: bytes) -> None:
    served = bytearray(official)
    served[len(served) // 2] ^= 0xFF
    (server.root / DAVIS).write_bytes(bytes(served))
    folder = tmp_path / "trained_model"
    with pytest.raises(VOSInputError) as e:
        weights.resolve_weights("official-davis", folder, base_url=server.url, progress=False)
    msg = str(e.value)
    assert weights.OFFICIAL_BLOB_IDS[DAVIS] in msg  # expected id
    assert weights.git_blob_id(server.root / DAVIS) in msg  # the id of what came
    assert f"{server.url}/{DAVIS}" in msg
    assert os.listdir(folder) == []


def test_cut_transfer_leaves_nothing(tmp_path: Path, server: SimpleNamespace, official: bytes) -> None:
    folder = tmp_path / "trained_model"
    with pytest.raises(VOSInputError) as e:
        weights.resolve_weights("official-davis", folder, base_url=f"{server.url}/cut", progress=False)
    assert server.hits == [f"/cut/{DAVIS}"]  # the transfer did start
    assert f"{server.url}/cut/{DAVIS}" in str(e.value)
    assert os.listdir(folder) == []


def test_interrupt_during_download_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C half way: the temporary file goes, and the KeyboardInterrupt still reaches the caller."""

    def half_then_interrupt(url: str, dst: str, hash_prefix: str | None = None, progress: bool = True) -> None:
        Path(dst).write_bytes(b"PK\x03\x04 half a file")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch.hub, "download_url_to_file", half_then_interrupt)
    folder = tmp_path / "trained_model"
    with pytest.raises(KeyboardInterrupt):
        weights.fetch_official(DAVIS, folder, base_url="http://127.0.0.1:9", progress=False)
    assert os.listdir(folder) == []


def test_offline_names_url_file_and_folder(tmp_path: Path, official: bytes) -> None:
    folder = tmp_path / "trained_model"
    base = closed_port_url()
    with pytest.raises(WeightsUnavailableError) as e:
        weights.resolve_weights("official-davis", folder, base_url=base, progress=False)
    msg = str(e.value)
    assert f"{base}/{DAVIS}" in msg and str(folder / DAVIS) in msg and "by hand" in msg
    assert os.listdir(folder) == []


def test_http_error_is_reported_as_unavailable(tmp_path: Path, server: SimpleNamespace) -> None:
    folder = tmp_path / "trained_model"  # the server has no such file: 404
    with pytest.raises(WeightsUnavailableError, match="404"):
        weights.resolve_weights("official-ytvos", folder, base_url=server.url, progress=False)
    assert os.listdir(folder) == []


@pytest.mark.parametrize("how", ["download=False", "env"])
def test_no_download_never_touches_the_network(
    tmp_path: Path, server: SimpleNamespace, official: bytes, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    if how == "env":
        monkeypatch.setenv(weights.DOWNLOAD_ENV, "1")
    folder = tmp_path / "trained_model"
    with pytest.raises(WeightsUnavailableError) as e:
        weights.resolve_weights(
            "official-davis", folder, download=how != "download=False", base_url=server.url, progress=False
        )
    msg = str(e.value)
    assert f"{server.url}/{DAVIS}" in msg and str(folder / DAVIS) in msg
    assert (weights.DOWNLOAD_ENV if how == "env" else "--no-download") in msg  # what turned it off
    assert server.hits == []
    assert not folder.exists()


def test_env_zero_keeps_downloading_on(
    tmp_path: Path, server: SimpleNamespace, official: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(weights.DOWNLOAD_ENV, "0")
    got = weights.resolve_weights("official-davis", tmp_path / "tm", base_url=server.url, progress=False)
    assert got.read_bytes() == official and len(server.hits) == 1


def test_missing_other_path_names_the_fix(tmp_path: Path, server: SimpleNamespace) -> None:
    missing = tmp_path / "my_run" / "best.pth"
    with pytest.raises(VOSInputError) as e:
        weights.resolve_weights(str(missing), tmp_path / "trained_model", base_url=server.url, progress=False)
    assert str(missing) in str(e.value) and "--weights official-davis" in str(e.value)
    assert server.hits == []


def test_existing_file_is_returned_as_is(tmp_path: Path) -> None:
    path = tmp_path / "mine.pth"
    path.write_bytes(b"not even checked here")
    assert weights.resolve_weights(str(path), download=False) == path


def test_clean_stale_temporaries(tmp_path: Path) -> None:
    stale = [tmp_path / ".x.pth.abc.tmp", tmp_path / ".x.pth.abc.part"]
    for p in stale:
        p.write_bytes(b"half")
    # the names checkpoint.save_atomic and fetch_official really make, and torch.hub's file inside the latter
    for prefix, suffix in ((".coco_best.pth.", ".tmp"), (f".{DAVIS}.", ".part")):
        fd, name = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=tmp_path)
        os.close(fd)
        stale.append(Path(name))
    stale.append(Path(f"{name}.{'0f' * 16}.partial"))
    stale[-1].write_bytes(b"half")
    keep = [tmp_path / n for n in ("x.pth", ".gitignore", ".x.pth", ".notes.tmp", "x.pth.abc.tmp")]
    for p in keep:
        p.write_bytes(b"keep")
    (tmp_path / ".dir.abc.tmp").mkdir()  # a folder is never removed
    removed = weights.clean_stale_temporaries(tmp_path)
    assert sorted(removed) == sorted(stale)
    assert sorted(os.listdir(tmp_path)) == sorted([p.name for p in keep] + [".dir.abc.tmp"])
    assert weights.clean_stale_temporaries(tmp_path / "absent") == []


# ----------------------------------------------------------------------------------------------------------------------
# 2. Loading user files
# ----------------------------------------------------------------------------------------------------------------------


def _good_bytes() -> bytes:
    path = Path(tempfile.mkdtemp()) / "good.pth"
    torch.save({"w": torch.arange(2000.0)}, path)
    data = path.read_bytes()
    shutil.rmtree(path.parent)
    return data


def _write(content: bytes):
    return lambda p: p.write_bytes(content)


_BAD_FILES = {
    "empty": (_write(b""), "empty (0 bytes)"),
    "truncated": (lambda p: p.write_bytes(_good_bytes()[: len(_good_bytes()) // 2]), "truncated or corrupt"),
    "random bytes": (_write(b"\x13" + random.Random(0).randbytes(4095)), "not a PyTorch file"),
    "tensor": (lambda p: torch.save(torch.ones(3), p), "single tensor"),
    "list": (lambda p: torch.save([torch.ones(1)], p), "holds a list, not a state dict"),
    "dict of ints": (lambda p: torch.save({"epoch": 3}, p), "'epoch' is an int"),
    "bad model entry": (lambda p: torch.save({"model": [1], "method": "emvos"}, p), "'model' entry holds a list"),
    "directory": (lambda p: p.mkdir(), "is a folder"),
    "git-lfs pointer": (
        _write(b"version https://git-lfs.github.com/spec/v1\noid sha256:" + b"a" * 64 + b"\nsize 123\n"),
        "git-lfs pointer",
    ),
    "missing": (lambda p: None, "does not exist"),
}


@pytest.mark.parametrize("kind", list(_BAD_FILES))
def test_bad_checkpoint_kinds(tmp_path: Path, kind: str) -> None:
    make, says = _BAD_FILES[kind]
    path = tmp_path / "model.pth"
    make(path)
    with pytest.raises(VOSInputError) as e:
        weights.load_state_dict_file(path)
    assert str(path) in str(e.value) and says in str(e.value)


def test_pickle_with_code_is_not_run(tmp_path: Path) -> None:
    side = tmp_path / "side_effect"
    path = save_with_payload(tmp_path / "model.pth", side)
    with pytest.raises(VOSInputError) as e:
        weights.load_state_dict_file(path)
    assert str(path) in str(e.value) and "NOT loaded" in str(e.value)
    assert not side.exists()


def test_payload_is_live(tmp_path: Path) -> None:
    """The payload the tests plant really runs under a plain torch.load: so its absence above means something."""
    side = tmp_path / "side_effect"
    torch.load(save_with_payload(tmp_path / "model.pth", side), weights_only=False)
    assert side.exists()


def test_state_dict_and_training_checkpoint(tmp_path: Path) -> None:
    net = nn.Linear(3, 2)
    torch.save(net.state_dict(), tmp_path / "plain.pth")
    state, meta = weights.load_state_dict_file(tmp_path / "plain.pth")
    assert meta == {} and state.keys() == net.state_dict().keys()
    assert all(torch.equal(state[k], v) for k, v in net.state_dict().items())

    torch.save({"model": net.state_dict(), "method": "emvos", "config": {"a": 1}}, tmp_path / "run.pth")
    state, meta = weights.load_state_dict_file(tmp_path / "run.pth")
    assert meta == {"method": "emvos", "config": {"a": 1}}
    assert torch.equal(state["weight"], net.weight)


# ----------------------------------------------------------------------------------------------------------------------
# 3. ImageNet weights: hash before unpickling
# ----------------------------------------------------------------------------------------------------------------------


def test_planted_pickle_in_torch_cache_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The attack: a pickle with code at $TORCH_HOME/hub/checkpoints/densenet121-a639ec97.pth (torchvision runs it)."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    cache = Path(torch.hub.get_dir()) / "checkpoints"
    assert cache == tmp_path / "torch" / "hub" / "checkpoints"  # the default cache_dir, as torchvision's
    cache.mkdir(parents=True)
    side = tmp_path / "side_effect"
    planted = save_with_payload(cache / "densenet121-a639ec97.pth", side)
    with pytest.raises(VOSInputError) as e:
        weights.load_imagenet_weights(tiny_densenet(), tv.models.DenseNet121_Weights.IMAGENET1K_V1, download=False)
    assert str(planted) in str(e.value) and "does not match the hash" in str(e.value)
    assert "--no-pretrained" in str(e.value)
    assert not side.exists()


def _hash_named(tmp_path: Path, folder: Path, stem: str, save) -> Path:
    """Save through `save`, then name the file `<stem>-<first 8 hex of its SHA-256>.pth` in `folder`."""
    tmp = tmp_path / "unnamed.pth"
    save(tmp)
    folder.mkdir(parents=True, exist_ok=True)
    return tmp.rename(folder / f"{stem}-{sha256(tmp)[:8]}.pth")


@pytest.mark.parametrize("old_keys", [False, True], ids=["current keys", "old densenet keys"])
def test_hash_named_file_loads_the_same_weights(tmp_path: Path, old_keys: bool) -> None:
    torch.manual_seed(0)
    source = tiny_densenet()
    state = old_densenet_keys(source.state_dict()) if old_keys else source.state_dict()
    if old_keys:
        assert "features.denseblock1.denselayer1.norm.1.weight" in state  # the renaming the loader must undo
    cache = tmp_path / "cache"
    path = _hash_named(tmp_path, cache, "tinydensenet", lambda p: torch.save(state, p))
    net = tiny_densenet()  # another random init
    weights.load_imagenet_weights(net, SimpleNamespace(url=f"http://127.0.0.1:9/x/{path.name}"), cache, download=False)
    for k, v in source.state_dict().items():
        if not k.endswith("num_batches_tracked"):
            assert torch.equal(net.state_dict()[k], v), k


def test_legacy_zip_hub_file_loads(tmp_path: Path) -> None:
    """torch.hub still reads its old format, a zip holding one pre-1.6 torch file; so does the safe loader."""
    source = nn.Linear(3, 2)
    inner = tmp_path / "inner.pth"
    torch.save(source.state_dict(), inner, _use_new_zipfile_serialization=False)

    def save_zip(p: Path) -> None:
        with zipfile.ZipFile(p, "w") as zf:
            zf.write(inner, "linear.pth")

    path = _hash_named(tmp_path, tmp_path / "cache", "linear", save_zip)
    net = nn.Linear(3, 2)
    weights.load_imagenet_weights(net, SimpleNamespace(url=f"http://127.0.0.1:9/{path.name}"), path.parent)
    assert torch.equal(net.weight, source.weight) and torch.equal(net.bias, source.bias)


def test_hash_matching_pickle_with_code_is_refused(tmp_path: Path) -> None:
    side = tmp_path / "side_effect"
    cache = tmp_path / "cache"
    path = _hash_named(tmp_path, cache, "evil", lambda p: save_with_payload(p, side))
    entry = SimpleNamespace(url=f"http://127.0.0.1:9/{path.name}")
    with pytest.raises(VOSInputError) as e:
        weights.load_imagenet_weights(tiny_densenet(), entry, cache, download=False)
    assert str(path) in str(e.value) and "NOT loaded" in str(e.value)
    assert not side.exists()


def test_imagenet_download_is_hash_checked(tmp_path: Path, server: SimpleNamespace) -> None:
    torch.manual_seed(0)
    source = tiny_densenet()
    remote = _hash_named(tmp_path, server.root, "tinydensenet", lambda p: torch.save(source.state_dict(), p))
    entry = SimpleNamespace(url=f"{server.url}/{remote.name}")

    net = tiny_densenet()
    weights.load_imagenet_weights(net, entry, tmp_path / "cache", progress=False)
    assert os.listdir(tmp_path / "cache") == [remote.name]
    assert torch.equal(net.features.conv0.weight, source.features.conv0.weight)

    data = bytearray(remote.read_bytes())  # the server now sends a changed file under the same name
    data[len(data) // 2] ^= 0xFF
    remote.write_bytes(bytes(data))
    with pytest.raises(VOSInputError, match="does not match the hash"):
        weights.load_imagenet_weights(tiny_densenet(), entry, tmp_path / "cache2", progress=False)
    assert os.listdir(tmp_path / "cache2") == []  # torch.hub's partial file is gone too


@pytest.mark.parametrize("how", ["offline", "download=False", "env"])
def test_imagenet_unavailable(
    tmp_path: Path, server: SimpleNamespace, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    entry = tv.models.ResNet50_Weights.IMAGENET1K_V1
    url = entry.url.replace(
        "https://download.pytorch.org/models", server.url if how != "offline" else closed_port_url()
    )
    if how == "env":
        monkeypatch.setenv(weights.DOWNLOAD_ENV, "yes")
    cache = tmp_path / "cache"
    with pytest.raises(WeightsUnavailableError) as e:
        weights.load_imagenet_weights(
            nn.Identity(), SimpleNamespace(url=url), cache, download=how != "download=False", progress=False
        )
    msg = str(e.value)
    assert url in msg and str(cache / "resnet50-0676ba61.pth") in msg and "--no-pretrained" in msg
    assert server.hits == []


# ----------------------------------------------------------------------------------------------------------------------
# through run.py --test, as a newcomer runs it: the same code path, the local server standing in for GitHub
# ----------------------------------------------------------------------------------------------------------------------


@pytest.fixture
def served_golden(server: SimpleNamespace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The golden official-layout checkpoint served as coco_davis_best.pth; run.py's trained_model/ in tmp_path."""
    golden = GOLDEN_WEIGHTS
    (server.root / DAVIS).symlink_to(golden)
    monkeypatch.setitem(weights.OFFICIAL_BLOB_IDS, DAVIS, weights.git_blob_id(golden))
    monkeypatch.setattr(weights, "OFFICIAL_BASE_URL", server.url)
    monkeypatch.setattr(run, "TRAINED_MODEL", tmp_path / "trained_model")
    monkeypatch.setattr(dataset, "TEST_SHORT_SIDE", 120)  # a quarter of 480p: the download is what is tested
    return tmp_path / "trained_model"


def _run_test(tmp_path: Path, *extra: str) -> int:
    return run.main(["--test", "--device", "cpu", "--data", "sample", "--sequences", "bear", "--output",
                     str(tmp_path / "out"), *extra])


def test_run_test_fetches_the_default_checkpoint_once(served_golden: Path, server: SimpleNamespace,
                                                      tmp_path: Path) -> None:
    assert _run_test(tmp_path) == 0  # no --weights: trained_model/coco_davis_best.pth, fetched on first use
    assert server.hits == [f"/{DAVIS}"]
    assert sorted(p.name for p in served_golden.iterdir()) == [DAVIS]
    assert weights.git_blob_id(served_golden / DAVIS) == weights.OFFICIAL_BLOB_IDS[DAVIS]
    assert len(list((tmp_path / "out" / "sample" / "bear").glob("*.png"))) == 10  # the sample's 10 frames
    assert _run_test(tmp_path, "--weights", "official-davis") == 0  # the alias names the same file: no new request
    assert server.hits == [f"/{DAVIS}"]


def test_run_test_offline_says_where_to_put_the_file(served_golden: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture) -> None:
    url = closed_port_url()
    monkeypatch.setattr(weights, "OFFICIAL_BASE_URL", url)
    assert _run_test(tmp_path) == 2
    err = capsys.readouterr().err
    assert f"{url}/{DAVIS}" in err and str(served_golden) in err and DAVIS in err
    assert not served_golden.exists() or not any(served_golden.iterdir())


def test_no_download_flag_never_touches_the_network(served_golden: Path, server: SimpleNamespace, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture) -> None:
    assert _run_test(tmp_path, "--no-download") == 2
    assert server.hits == []
    err = capsys.readouterr().err
    assert "--no-download" in err and str(served_golden / DAVIS) in err
