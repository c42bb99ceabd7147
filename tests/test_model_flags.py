"""Every model choice by flag: the flags come from the config dataclasses, --train records the choice in its
checkpoint and --test rebuilds the model from the file alone, test-time overrides reach the model where the weights
allow them (VideoMatch's upsample factor on a port checkpoint) and are refused, in one line, where they do not.

Training runs are one step at 64x64 on frame pairs, --no-pretrained, on the real DAVIS 2016 sample; the test runs
segment a tiny DAVIS 2017 val tree (one sequence of three 48x64 frames, kept at that size)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import random_checkpoint, save_mask, single_thread, write_jpeg

import model
import run
import videomatch
from core import config_flags, flags, methods
from tools import bench
from training import trainer

ONE_STEP = ["--device", "cpu", "--no-pretrained", "--crop", "32", "32", "--clip-len", "2", "--batch-size", "1",
            "--epochs", "1", "--clips-per-epoch", "1", "--workers", "0", "--val-every", "0", "--stages", "davis",
            "--davis-year", "2016"]


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """One intra-op thread: the machine's cores are shared, and OpenMP threads spinning against other processes make
    a short step take many times longer."""
    with single_thread():
        yield


@pytest.fixture(scope="module")
def tiny_val(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """DAVIS 2017 layout, val = one sequence 'c' of three 48x64 frames with one moving 3x3 square: at 480p it would
    have 900 pixels, under the official test protocol's 1000, so the frames run at their own size."""
    root = tmp_path_factory.mktemp("tiny_davis")
    for t in range(3):
        rgb = np.full((48, 64, 3), 128, np.uint8)
        ids = np.zeros((48, 64), np.uint8)
        rgb[20:23, 10 + t:13 + t], ids[20:23, 10 + t:13 + t] = (200, 40, 40), 1
        write_jpeg(root / "JPEGImages" / "480p" / "c" / f"{t:05d}.jpg", rgb)
        save_mask(root / "Annotations" / "480p" / "c" / f"{t:05d}.png", ids)
    (root / "ImageSets" / "2017").mkdir(parents=True)
    (root / "ImageSets" / "2017" / "val.txt").write_text("c\n")
    return root


def _segment(weights: Path, davis: Path, out: Path, *flags: str) -> int:
    return run.main(["--test", "--device", "cpu", "--weights", str(weights), "--davis", str(davis), "--data",
                     "DAVIS17_val", "--output", str(out), *flags])


def _masks(out: Path) -> list[Path]:
    return sorted((out / "DAVIS17_val" / "c").glob("*.png"))


def _one_line_error(capsys: pytest.CaptureFixture, code: int) -> str:
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: ") and "\n" not in err, err
    return err


# --- the flags are the config fields ---------------------------------------------------------------------------

def test_every_declared_config_field_is_a_flag_with_its_default_and_range() -> None:
    """Fails if a config field declared with option() gets no flag, if a flag's default is not None (a flag not given
    would then override the checkpoint at --test), if its help does not name the field's default, or if a value out
    of the declared range gets past argparse."""
    parser = run.build_parser()
    actions = {a.dest: a for a in parser._actions}
    for spec in methods.METHODS.values():
        for f in fields(spec.config):
            if config_flags.OPTION not in f.metadata:
                continue
            assert f.name in actions and actions[f.name].default is None, f.name
            shown = " ".join(f.default) if isinstance(f.default, tuple) else str(f.default)
            assert f"{spec.name}: " in actions[f.name].help and f"(default {shown})" in actions[f.name].help
    assert {"encoder", "branches", "topk", "key_dim"} <= set(config_flags.options(model.ModelConfig))
    assert {"encoder", "upsample", "topk", "dilation", "online_update", "online_threshold"} == set(
        config_flags.options(videomatch.VideoMatchConfig))
    for bad in (["--topk", "0"], ["--dilation", "4"], ["--dilation", "-1"], ["--upsample", "0"],
                ["--upsample", "nan"], ["--key-dim", "0"], ["--online-threshold", "0.5"], ["--branches", "cosine"],
                ["--encoder", "vgg16"]):
        with pytest.raises(SystemExit) as e:
            parser.parse_args(["--train", *bad])
        assert e.value.code == 2, bad
    args = parser.parse_args(["--train", "--branches", "surjective", "bijective", "--online-update"])
    assert args.branches == ["surjective", "bijective"] and args.online_update is True and args.topk is None


@pytest.mark.parametrize(("argv", "says"), [
    (["--upsample", "1.8"], "--upsample is a flag of videomatch, not of emvos (--method emvos, the default)"),
    (["--method", "videomatch", "--branches", "surjective"], "--branches is a flag of emvos, not of videomatch"),
    (["--method", "videomatch", "--encoder", "resnet50"], "videomatch's encoder is 'resnet50'"),
    (["--topk", "8"], "--topk does nothing unless bijective is one of --branches"),
    (["--method", "videomatch", "--online-threshold", "0.7"], "--online-threshold does nothing unless "
                                                              "--online-update is on"),
    (["--method", "videomatch", "--online-update", "--online-threshold", "0.95"], "out of reach"),
])
def test_train_refuses_a_flag_of_the_other_method_before_any_work(argv: list[str], says: str, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture) -> None:
    """Fails if a model flag of the other method, a value only the other method takes, or a flag that changes nothing
    in the chosen config is silently ignored (the run would train another model than asked for), or is reported
    after the data is read (the --davis root here does not exist, and that error must not come first)."""
    code = run.main(["--train", *ONE_STEP, "--davis", str(tmp_path / "none"), "--save-dir", str(tmp_path / "s"),
                     *argv])
    assert says in _one_line_error(capsys, code)
    assert not (tmp_path / "s").exists()


def test_preview_augmentation_refuses_model_flags(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Fails if a model flag passes with a mode that builds no model."""
    code = run.main(["--preview-augmentation", "a.jpg", "a.png", "--topk", "3", "--output", str(tmp_path)])
    assert "--topk does nothing with --preview-augmentation" in _one_line_error(capsys, code)


# --- --train records the choice, --test rebuilds it from the file ---------------------------------------------

@pytest.mark.parametrize(("method", "flags", "expected"), [
    ("emvos", ["--encoder", "resnet50"], {"encoder": "resnet50"}),
    ("emvos", ["--branches", "surjective"], {"branches": ("surjective",)}),
    # the same decoder width as the official pair: written plain, the file would pass for the official model
    ("emvos", ["--branches", "surjective", "bijective"], {"branches": ("surjective", "bijective")}),
    ("emvos", ["--branches", "surjective", "bijective", "equalized", "--topk", "2"],
     {"branches": ("surjective", "bijective", "equalized"), "topk": 2}),
    ("videomatch", ["--encoder", "resnet101"], {"encoder": "resnet101"}),
    ("videomatch", ["--upsample", "1.8"], {"upsample": 1.8}),
], ids=["resnet50", "surjective", "surjective-bijective", "all-three", "vm-resnet101", "vm-upsample-1.8"])
def test_one_step_checkpoint_records_the_choice_and_test_rebuilds_it(
        method: str, flags: list[str], expected: dict, davis2016_root: Path, tiny_val: Path,
        tmp_path: Path) -> None:
    """Fails if a model flag does not reach the trained network, if the checkpoint does not record it (a plain state
    dict in the official layout would be read back as the official config), or if --test without flags builds
    anything but the recorded model (run.json holds the config --test built)."""
    save = tmp_path / "ckpt"
    assert run.main(["--train", "--method", method, *ONE_STEP, "--davis", str(davis2016_root), "--save-dir",
                     str(save), *flags]) == 0
    best = save / f"{methods.get(method).stages['davis'].save_name}_best.pth"
    payload = torch.load(best, map_location="cpu", weights_only=True)
    assert set(payload) == {"model", "method", "config"} and payload["method"] == method
    recorded = methods.get(method).config(**payload["config"])
    assert {k: getattr(recorded, k) for k in expected} == expected
    net, meta = methods.load_weights(best)
    assert net.config == recorded and meta["method"] == method
    assert _segment(best, tiny_val, tmp_path / "out") == 0  # no model flag: the file alone
    record = json.loads((tmp_path / "out" / "run.json").read_text())
    assert record["method"] == method and record["overrides"] == {}
    assert methods.get(method).config(**record["config"]) == recorded
    assert len(_masks(tmp_path / "out")) == 3


# --- test-time overrides -------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def port_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A port checkpoint: the truncated VGG-19's plain state dict (the port's Encoder.feat_ext.state_dict(), keys
    '0.weight' .. '25.bias'), random weights."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("port") / "vm_vgg.pth"
    torch.save(videomatch.VideoMatchEncoder("vgg19").features.state_dict(), path)
    return path


def test_port_checkpoint_runs_at_upsample_1_8_with_a_finer_feature_map(port_checkpoint: Path,
                                                                       tiny_val: Path,
                                                                       tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch,
                                                                       capsys: pytest.CaptureFixture) -> None:
    """Fails if --upsample is not applied to a port checkpoint (whose file records no config, so it would build
    at 1.0), if the factor does not reach the feature map that is matched, or if the override is not printed and
    recorded in run.json beside the masks."""
    shapes: list[tuple[int, int]] = []
    encode = videomatch.VideoMatch.encode

    def recording(self: videomatch.VideoMatch, img: torch.Tensor) -> torch.Tensor:
        feats = encode(self, img)
        shapes.append(tuple(feats.shape[-2:]))
        return feats

    monkeypatch.setattr(videomatch.VideoMatch, "encode", recording)
    assert _segment(port_checkpoint, tiny_val, tmp_path / "plain", "--method", "videomatch") == 0
    plain, shapes[:] = set(shapes), []
    assert _segment(port_checkpoint, tiny_val, tmp_path / "up", "--method", "videomatch", "--upsample",
                    "1.8") == 0
    # 48x64 frames: stride 8 gives 6x8 positions; x1.8 gives round(10.8) x round(14.4)
    assert plain == {(6, 8)} and set(shapes) == {(11, 14)}
    assert "config override: upsample 1.8 (the file holds 1.0)" in capsys.readouterr().out
    record = json.loads((tmp_path / "up" / "run.json").read_text())
    assert record["overrides"] == {"upsample": 1.8} and record["config"]["upsample"] == 1.8
    assert record["file_config"]["upsample"] == 1.0 and record["config"]["encoder"] == "vgg19"


@pytest.fixture(scope="module")
def densenet_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An EMVOS checkpoint of the official config (so a plain state dict with the official keys), random weights."""
    return random_checkpoint("emvos", tmp_path_factory.mktemp("emvos") / "coco_davis_best.pth")


@pytest.mark.parametrize(("flags", "says"), [
    (["--encoder", "resnet50"], "holds a emvos model with encoder densenet121, which its weights fix"),
    (["--branches", "surjective", "bijective"], "with branches surjective equalized, which its weights fix"),
    (["--key-dim", "256"], "with key_dim 512, which its weights fix"),
    (["--upsample", "1.8"], "--upsample is a flag of videomatch, and --weights"),
    (["--topk", "8"], "--topk does nothing unless bijective is one of --branches"),
])
def test_test_refuses_what_the_weights_fix_in_one_line(flags: list[str], says: str, densenet_checkpoint: Path,
                                                       tiny_val: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture) -> None:
    """Fails if --test builds another network than the file's (an encoder or branch set the weights were not trained
    for: strict loading would fail with a traceback, or, for a branch set of the same width, silently run other
    matching on these weights), if a flag of the other method or one that changes nothing passes, or if the refusal
    is not one line naming what the file holds, before any mask is written."""
    code = _segment(densenet_checkpoint, tiny_val, tmp_path / "out", *flags)
    assert says in _one_line_error(capsys, code)
    assert not _masks(tmp_path / "out") and not (tmp_path / "out" / "run.json").exists()
    # the same value as the file's is no change, and runs
    if flags[0] == "--encoder":
        assert _segment(densenet_checkpoint, tiny_val, tmp_path / "same", "--encoder", "densenet121") == 0


def test_check_overrides_passes_fields_that_keep_the_tensors() -> None:
    """Fails if a field that leaves the weights' shapes alone (VideoMatch's K, d, online update; EMVOS's K with the
    bijective branch) is refused, or if a field the weights fix passes when it differs."""
    path = Path("f.pth")
    methods.check_overrides("videomatch", {"encoder": "resnet101"},
                            {"upsample": 1.8, "topk": 5, "dilation": 0, "online_update": True,
                             "online_threshold": 0.7, "encoder": "resnet101"}, path, "--weights")
    methods.check_overrides("emvos", {"branches": ["surjective", "bijective"]}, {"topk": 2}, path, "--weights")
    with pytest.raises(methods.VOSInputError, match="encoder resnet101, which its weights fix"):
        methods.check_overrides("videomatch", {"encoder": "resnet101"}, {"encoder": "vgg19"}, path, "--weights")


def test_given_model_flags_returns_the_values_for_the_method() -> None:
    """Fails if given_model_flags drops a flag or passes a list where the config holds a tuple (a recorded branch set
    would then differ from the one built)."""
    args = argparse.Namespace(**{n: None for n in config_flags.model_flag_names(methods.config_classes())})
    args.branches, args.topk = ["bijective", "equalized"], 6
    assert flags.given_model_flags(args, "emvos", methods.config_classes()) == {
        "branches": ("bijective", "equalized"), "topk": 6}


def test_resume_refuses_model_flags() -> None:
    """Fails if model flags pass with --resume, whose checkpoint holds the model that goes on training (the flags
    would be silently dropped)."""
    opts = trainer.TrainOptions(resume="x.pth", model={"topk": 3})
    with pytest.raises(methods.VOSInputError, match="model its checkpoint holds; drop --topk"):
        trainer.check_recipe(opts, methods.get("emvos"))


@pytest.mark.parametrize(("argv", "paths", "field", "value"), [
    (["--method", "videomatch", "--upsample", "1.8"], ["ours"], "upsample", 1.8),
    (["--branches", "surjective"], ["unsplit", "ours"], "branches", ("surjective",)),
])
def test_bench_builds_the_flagged_model_with_the_paths_that_apply(argv: list[str], paths: list[str], field: str,
                                                                 value: object) -> None:
    """Fails if bench.py drops its model flags (it would time the default model and call it the flagged one), or
    runs the per-object path, which is the official network only, on another config."""
    args = bench.parse_args(["--quick", "--no-channels-last", *argv])
    models = bench.build_models(args, torch.device("cpu"))
    assert list(models) == paths and getattr(models["ours"].config, field) == value


def test_init_takes_the_flags_on_top_of_its_config(davis2016_root: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture) -> None:
    """Fails if --init's config is not the base of the model flags (--topk would be refused as doing nothing, judged
    against the default branches instead of the file's bijective one, or the file's branches would be lost), or if a
    flag that contradicts the --init weights (another encoder) passes."""
    torch.manual_seed(0)
    init = tmp_path / "init.pth"
    torch.save(methods.weights_payload(methods.build_model("emvos", {"branches": ("surjective", "bijective")}),
                                       "emvos"), init)
    save = tmp_path / "ckpt"
    assert run.main(["--train", *ONE_STEP, "--davis", str(davis2016_root), "--save-dir", str(save), "--init",
                     str(init), "--topk", "3"]) == 0
    config = torch.load(save / "coco_davis_best.pth", map_location="cpu", weights_only=True)["config"]
    assert tuple(config["branches"]) == ("surjective", "bijective") and config["topk"] == 3
    capsys.readouterr()
    code = run.main(["--train", *ONE_STEP, "--davis", str(davis2016_root), "--save-dir", str(tmp_path / "b"),
                     "--init", str(init), "--encoder", "resnet50"])
    err = _one_line_error(capsys, code)
    assert f"--init {init} holds a emvos model with encoder densenet121, which its weights fix" in err
