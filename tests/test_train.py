"""Training on tiny clips (64x64, 3 frames, batch 2, --no-pretrained): the loss falls, --resume is exact, two DDP
processes agree, checkpoints load as run.py --test loads them, and bad runs stop with clear messages."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from urllib.error import URLError

import numpy as np
import pytest
import torch
from conftest import GOLDEN_WEIGHTS, save_mask, single_thread, square_davis, square_frame, write_jpeg

import dataset
import model
import run
from benchmarks import davis
from core import methods
from dataset import Roots
from training import checkpoint, curves, samplers, trainer
from utils import VOSInputError

ROOT = Path(__file__).resolve().parents[1]

TINY = ["--device", "cpu", "--no-pretrained", "--crop", "32", "32", "--clip-len", "3", "--batch-size", "2",
        "--workers", "0", "--val-every", "0"]


def _davis_args(root: Path, save_dir: Path, *extra: str) -> list[str]:
    """The davis stage on the real DAVIS 2016 sample (year 2016, split train)."""
    return [*TINY, "--davis", str(root), "--davis-year", "2016", "--stages", "davis", "--save-dir", str(save_dir),
            *extra]


def _train(argv: list[str]) -> torch.nn.Module:
    """What `run.py --train ARGV` trains (the options and roots run.py builds from its flags)."""
    args = run.build_parser().parse_args(["--train", *argv])
    return trainer.train(args.method or "emvos", run.train_options(args), run.roots(args))


def _log(save_dir: Path) -> list[dict]:
    with open(save_dir / "train_log.csv", newline="") as f:
        return list(csv.DictReader(f))


def _weights(path: Path) -> dict[str, torch.Tensor]:
    """An EMVOS weights file written by --train: a plain state dict in the official layout."""
    return torch.load(path, map_location="cpu", weights_only=True)


def _state(path: Path) -> dict:
    """The training state written beside a resumable checkpoint X.pth (X.train.pth)."""
    return torch.load(checkpoint.training_state_path(path), map_location="cpu", weights_only=True)


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """One intra-op thread: on a shared 2-core machine, OpenMP threads that spin against DataLoader workers and
    other processes make a 0.2 s step take seconds."""
    with single_thread():
        yield


@pytest.fixture(scope="module")
def sample_run(davis2016_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """16 epochs of one step each on the sample, checkpoints every 8 epochs."""
    save_dir = tmp_path_factory.mktemp("sample_run")
    _train(_davis_args(davis2016_root, save_dir, "--clips-per-epoch", "2", "--epochs", "16", "--save-every", "8"))
    return save_dir


def test_loss_falls_on_the_davis2016_sample(sample_run: Path) -> None:
    rows = _log(sample_run)
    assert [r["epoch"] for r in rows] == [str(e) for e in range(1, 17)]
    assert list(rows[0]) == ["stage", "epoch", "iteration", "loss", "iou", "lr", "sec_per_iter", "val_jf"]
    losses = [float(r["loss"]) for r in rows if r["loss"]]  # an epoch whose only batch was skipped has none
    assert len(losses) >= 12
    assert all(r["val_jf"] == "" for r in rows) and all(float(r["lr"]) == 1e-4 for r in rows)
    # the decoder starts from random weights: the loss must clearly fall within 16 steps (seeded, deterministic)
    first, last = np.mean(losses[:4]), np.mean(losses[-4:])
    assert last < 0.8 * first, losses


def test_checkpoint_loads_like_run_test_with_the_official_keys(sample_run: Path) -> None:
    names = sorted(p.name for p in sample_run.iterdir())
    # official names, each resumable one with its training state beside it; the last epoch is always written; no
    # temporary files left behind
    assert names == ["coco_davis_0008.pth", "coco_davis_0008.train.pth", "coco_davis_0016.pth",
                     "coco_davis_0016.train.pth", "coco_davis_best.pth", "runs", "train_log.csv"]
    net, meta = methods.load_weights(sample_run / "coco_davis_0016.pth")  # what run.py --test --weights does
    assert meta["method"] == "emvos"
    state = _state(sample_run / "coco_davis_0016.pth")
    assert state["stage"] == "davis" and state["epoch"] == 16 and state["method"] == "emvos"
    saved = _weights(sample_run / "coco_davis_0016.pth")
    # exactly the official layout: a plain state dict with the keys and shapes of the official release, which the
    # authors' run.py reads with model.load_state_dict(torch.load(path)) into a model built from those keys
    assert type(saved) is dict and all(isinstance(v, torch.Tensor) for v in saved.values())
    if GOLDEN_WEIGHTS.exists():
        official = torch.load(GOLDEN_WEIGHTS, map_location="cpu", weights_only=True)
        assert {k: v.shape for k, v in saved.items()} == {k: v.shape for k, v in official.items()}
        strict = model.EMVOS()
        strict.load_state_dict(model.from_official(official), strict=True)
        strict.load_state_dict(model.from_official(saved), strict=True)
    assert all(k.startswith("vos.") for k in saved) and len(saved) == 576
    # no validation ran: the best checkpoint is the last one
    best = _weights(sample_run / "coco_davis_best.pth")
    assert all(torch.equal(best[k], saved[k]) for k in saved)
    for k, v in net.state_dict().items():
        assert torch.equal(v, saved["vos." + k])


def _interrupt_at(monkeypatch: pytest.MonkeyPatch, step: int) -> None:
    """Send ourselves SIGINT (Ctrl+C) inside the loss of the given step, as a user would mid-iteration."""
    calls = []
    losses = methods.get("emvos").losses
    original = losses["cross_entropy"]

    def loss(logits: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        if len(calls) == step:
            os.kill(os.getpid(), signal.SIGINT)
        return original(logits, gt)

    monkeypatch.setitem(losses, "cross_entropy", loss)


@pytest.mark.parametrize("workers", ["0", "2"])
def test_resume_after_ctrl_c_continues_exactly(davis2016_root: Path, tmp_path: Path, workers: str,
                                               monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture) -> None:
    args = ["--clips-per-epoch", "6", "--epochs", "2", "--save-every", "2", "--workers", workers]
    _train(_davis_args(davis2016_root, tmp_path / "a", *args))

    with monkeypatch.context() as m:
        _interrupt_at(m, 4)  # epoch 2 (3 batches per epoch), the step finishes, then the run stops
        # run.py turns the trainer's TrainingInterrupted into exit status 130
        assert run.main(["--train", *_davis_args(davis2016_root, tmp_path / "b", *args)]) == 130
    ckpt = tmp_path / "b" / "coco_davis_interrupted.pth"
    assert ckpt.is_file()
    out = capsys.readouterr().out
    assert "Resume with:" in out and f"--resume {ckpt}" in out
    state = _state(ckpt)
    assert state["epoch"] == 1 and 0 < state["partial"]["batches"] < 3

    # only the data root and the file: the stages, sizes and the save folder come from the checkpoint
    _train(["--device", "cpu", "--davis", str(davis2016_root), "--resume", str(ckpt)])
    a, b = _log(tmp_path / "a"), _log(tmp_path / "b")
    for row in a + b:
        row.pop("sec_per_iter")
    assert a == b  # the same loss and IoU in every epoch, before and after the interruption
    final_a = _weights(tmp_path / "a" / "coco_davis_0002.pth")
    final_b = _weights(tmp_path / "b" / "coco_davis_0002.pth")
    assert all(torch.equal(final_a[k], final_b[k]) for k in final_a)


@pytest.mark.parametrize(("clips", "message"), [("4", "iteration 2"), ("2", "is not finite")])
def test_nan_stops_without_writing_a_checkpoint(davis2016_root: Path, tmp_path: Path, clips: str,
                                                message: str) -> None:
    # lr = inf (set past the parser, which refuses it): the first update makes the weights inf/NaN. With two steps
    # per epoch the second loss is NaN; with one, the end-of-epoch save finds the weights non-finite. Either way
    # nothing is written from that state.
    args = run.build_parser().parse_args(["--train", *_davis_args(davis2016_root, tmp_path, "--clips-per-epoch", clips,
                                                                  "--epochs", "2", "--save-every", "1")])
    args.lr = float("inf")
    with pytest.raises(trainer.TrainingError) as err:
        trainer.train("emvos", run.train_options(args), run.roots(args))
    text = str(err.value)
    assert message in text and "--lr" in text and "--amp" in text
    if clips == "4":
        assert "stage 'davis', epoch 1" in text
    assert not list(tmp_path.glob("*.pth")) and not list(tmp_path.glob(".*.tmp"))


def test_missing_data_roots_name_the_flags_before_training(tmp_path: Path) -> None:
    with pytest.raises(VOSInputError) as err:
        _train([*TINY, "--stages", "coco", "davis", "--coco", str(tmp_path / "no_coco"), "--davis",
                str(tmp_path / "no_davis"), "--save-dir", str(tmp_path / "out")])
    text = str(err.value)
    assert "stage(s) coco" in text and "--coco" in text and "no_coco" in text
    assert "stage(s) davis" in text and "--davis PATH" in text
    assert not (tmp_path / "out").exists()


def test_missing_imagenet_weights_say_what_to_do(davis2016_root: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture) -> None:
    def offline(*args: object, **kwargs: object) -> None:
        raise URLError("no network")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))  # an empty cache
    monkeypatch.setattr("torch.hub.download_url_to_file", offline)
    argv = [a for a in _davis_args(davis2016_root, tmp_path / "out") if a != "--no-pretrained"]
    assert run.main(["--train", *argv]) == 2
    text = capsys.readouterr().err
    assert "densenet121" in text and "--no-pretrained" in text
    assert str(tmp_path / "torch_home" / "hub" / "checkpoints") in text  # where to put the file


@pytest.mark.parametrize("amp", [True, False], ids=["amp", "fp32"])
def test_amp_on_cpu_runs_the_forward_in_bf16(davis2016_root: Path, tmp_path: Path, amp: bool,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    # bf16 autocast (CPU has no fp16 autocast); a smaller clip, since bf16 convolutions are slow on most CPUs. What
    # the decoder's attention blocks compute in tells whether autocast was on (the logits themselves come out of a
    # col2im, which autocast runs in fp32).
    seen = []
    forward = model.CBAM.forward

    def spy(self: model.CBAM, x: torch.Tensor) -> torch.Tensor:
        out = forward(self, x)
        seen.append(out.dtype)
        return out

    monkeypatch.setattr(model.CBAM, "forward", spy)
    _train(_davis_args(davis2016_root, tmp_path, "--amp" if amp else "--no-amp", "--clips-per-epoch", "2",
                       "--epochs", "2", "--crop", "32", "32", "--clip-len", "2"))
    assert seen and set(seen) == {torch.bfloat16 if amp else torch.float32}
    logged = [float(r["loss"]) for r in _log(tmp_path) if r["loss"]]
    assert logged and all(np.isfinite(logged))


def test_stages_chain_with_official_names(davis2016_copy: Path, coco_converted_root: Path, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    davis2016_root = davis2016_copy  # the sample's train list without its val list: training has nothing to validate on
    starts = {}
    train_stage = trainer.train_stage

    def spy(t: trainer.Trainer, stage_run: trainer.StageRun) -> None:
        starts[stage_run.stage.name] = {k: v.clone() for k, v in t.net.state_dict().items()}
        train_stage(t, stage_run)

    monkeypatch.setattr(trainer, "train_stage", spy)
    argv = [*TINY, "--stages", "coco", "davis", "--coco", str(coco_converted_root), "--davis", str(davis2016_root),
            "--davis-year", "2016", "--clips-per-epoch", "2", "--epochs", "2", "--val-every", "1",
            "--save-dir", str(tmp_path)]
    _train(argv)
    names = sorted(p.name for p in tmp_path.glob("*.pth"))
    assert names == ["coco_0002.pth", "coco_0002.train.pth", "coco_best.pth", "coco_davis_0002.pth",
                     "coco_davis_0002.train.pth", "coco_davis_best.pth"]
    # the davis stage starts from the coco stage's last weights (the official run.py carries the model over)
    coco_last = model.from_official(_weights(tmp_path / "coco_0002.pth"))
    assert all(torch.equal(starts["davis"][k], v) for k, v in coco_last.items())
    assert capsys.readouterr().out.count("no DAVIS 2016 val") == 1  # said once, not per stage or epoch
    assert [r["stage"] for r in _log(tmp_path)] == ["coco", "coco", "davis", "davis"]

    # resuming from the finished coco stage runs the davis stage exactly as the chained run did
    _train(["--device", "cpu", "--davis", str(davis2016_root), "--resume", str(tmp_path / "coco_0002.pth"),
            "--save-dir", str(tmp_path / "resumed")])
    assert sorted(p.name for p in (tmp_path / "resumed").glob("*.pth")) == [
        "coco_davis_0002.pth", "coco_davis_0002.train.pth", "coco_davis_best.pth"]
    a, b = _weights(tmp_path / "coco_davis_0002.pth"), _weights(tmp_path / "resumed" / "coco_davis_0002.pth")
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture
def tiny_davis2017(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A DAVIS 2017 tree of 48x64 frames with a moving square (train: a, b; val: c, d), and run.py's test size set
    to 48 so that validation runs at that size, as `run.py --test` then does."""
    monkeypatch.setattr(dataset, "TEST_SHORT_SIDE", 48)
    return square_davis(tmp_path / "DAVIS", {"a": (255, 0, 0), "b": (0, 255, 0)},
                        {"c": (0, 0, 255), "d": (255, 255, 0)}, frames=5)


def test_validation_matches_run_test_and_keeps_the_best(tiny_davis2017: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    args = [*TINY, "--stages", "davis", "--davis", str(tiny_davis2017), "--clips-per-epoch", "2", "--epochs", "2",
            "--val-every", "1", "--save-every", "2", "--val-sequences", "c", "d"]
    _train([*args, "--save-dir", str(tmp_path / "a")])
    scores = [float(r["val_jf"]) for r in _log(tmp_path / "a")]
    assert len(scores) == 2
    state = _state(tmp_path / "a" / "coco_davis_0002.pth")
    assert state["best_score"] == pytest.approx(max(scores), abs=1e-6)  # the log keeps 6 decimals
    best = _weights(tmp_path / "a" / "coco_davis_best.pth")
    # the masks run.py --test writes with the best weights score the very number validation recorded
    assert run.main(["--test", "--device", "cpu", "--weights", str(tmp_path / "a" / "coco_davis_best.pth"),
                     "--davis", str(tiny_davis2017), "--data", "DAVIS17_val", "--sequences", "c", "d",
                     "--output", str(tmp_path / "test")]) == 0
    gt = {n: sorted((tiny_davis2017 / "Annotations" / "480p" / n).glob("*.png")) for n in ("c", "d")}
    result = davis.evaluate_sequences(gt, tmp_path / "test" / "DAVIS17_val", binary=False, workers=1)
    assert result.jf_mean == state["best_score"]

    # Ctrl+C during the first validation (in its first video): the run saves, and the resumed run validates that
    # epoch again and ends as the uninterrupted one did
    segment_video = trainer.segment_video
    calls = []

    def interrupting(*a: object, **k: object) -> object:
        calls.append(1)
        if len(calls) == 1:
            os.kill(os.getpid(), signal.SIGINT)
        return segment_video(*a, **k)

    with monkeypatch.context() as m:
        m.setattr(trainer, "segment_video", interrupting)
        with pytest.raises(trainer.TrainingInterrupted) as stopped:
            _train([*args, "--save-dir", str(tmp_path / "b")])
    # a library's exception, not a SystemExit: a caller of trainer.train decides what a stop means for it
    assert not isinstance(stopped.value, SystemExit)
    assert stopped.value.checkpoint == tmp_path / "b" / "coco_davis_interrupted.pth"
    stopped_state = _state(stopped.value.checkpoint)
    assert stopped_state["epoch_end_pending"] and stopped_state["epoch"] == 1
    _train(["--device", "cpu", "--davis", str(tiny_davis2017), "--resume", str(stopped.value.checkpoint)])
    a, b = _log(tmp_path / "a"), _log(tmp_path / "b")
    for row in a + b:
        row.pop("sec_per_iter")
    assert a == b
    assert _state(tmp_path / "b" / "coco_davis_0002.pth")["best_score"] == state["best_score"]
    best_b = _weights(tmp_path / "b" / "coco_davis_best.pth")
    assert all(torch.equal(best[k], best_b[k]) for k in best)


DDP_DRIVER = textwrap.dedent("""
    import os, sys
    import torch
    sys.path.insert(0, {root!r})
    import run
    from training import samplers
    from training import trainer
    torch.set_num_threads(1)
    clips = []
    get = samplers.TrainDAVIS.__getitem__
    def record(self, index):
        clip = get(self, index)
        clips.append(float(clip["imgs"].sum()))
        return clip
    samplers.TrainDAVIS.__getitem__ = record
    args = run.build_parser().parse_args(["--train", *sys.argv[1:]])
    net = trainer.train(args.method or "emvos", run.train_options(args), run.roots(args))
    torch.save({{"state": net.state_dict(), "clips": clips}}, os.path.join({out!r}, f"rank{{os.environ['RANK']}}.pt"))
""")


def test_two_process_ddp_ends_with_identical_weights(davis2016_root: Path, tmp_path: Path) -> None:
    driver = tmp_path / "driver.py"
    driver.write_text(DDP_DRIVER.format(root=str(ROOT), out=str(tmp_path)))
    argv = _davis_args(davis2016_root, tmp_path / "out", "--batch-size", "4", "--clips-per-epoch", "4",
                       "--epochs", "2", "--save-every", "2", "--clip-len", "2")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(driver), *argv], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert all(torch.equal(r0["state"][k], r1["state"][k]) for k in r0["state"])
    assert len(r0["clips"]) == len(r1["clips"]) == 4 and r0["clips"] != r1["clips"]  # each rank its own clips
    # rank 0 alone writes: one log row per epoch, its checkpoint equal to the weights both ranks hold
    assert [r["epoch"] for r in _log(tmp_path / "out")] == ["1", "2"]
    saved = model.from_official(_weights(tmp_path / "out" / "coco_davis_0002.pth"))
    assert all(torch.equal(saved[k], r0["state"][k]) for k in saved)


def test_train_from_dataclasses_runs_a_stage_with_its_own_data_and_selection(davis2016_root: Path, tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """trainer.train takes TrainOptions and Roots alone (no parser), fills in what was not given, and runs a stage
    that brings its own selection and log column as it runs the presets. Fails if the trainer reads a flag that only
    run.py's parser makes, drops an option on the way to the loop, or special-cases the stages it knows (a fixed
    set of log columns, a validation chosen by the stage's name)."""
    scores = iter([0.25, 0.5, 0.375])

    class Constant:
        title = "a constant"

        def __call__(self, net: torch.nn.Module) -> float:
            return next(scores)

    data = replace(methods.DAVIS_CLIPS, name="custom", selection=lambda s, d, c: Constant(), column="val_custom")
    stage = replace(model.EMVOS_STAGES["davis"], name="custom", save_name="custom", data=data, epochs=3,
                    save_every=3, val_every=1, clips_per_epoch=2, batch_size=2, clip_len=3, crop=(64, 64))
    monkeypatch.setitem(methods.get("emvos").stages, "custom", stage)
    options = trainer.TrainOptions(stages=["custom"], davis_year="2016", pretrained=False, workers=0, device="cpu",
                                   save_dir=str(tmp_path), overrides={"lr": 2e-4})
    trainer.train("emvos", options, Roots(davis=str(davis2016_root)))
    rows = _log(tmp_path)
    assert list(rows[0])[-1] == "val_custom" and "val_jf" not in rows[0]
    assert [r["val_custom"] for r in rows] == ["0.250000", "0.500000", "0.375000"]
    assert all(float(r["lr"]) == 2e-4 for r in rows)  # the override reached Adam
    state = _state(tmp_path / "custom_0003.pth")
    assert state["best_score"] == 0.5 and state["stage_config"]["data"] == "custom"
    recorded = state["train_options"]
    assert recorded["seed"] == trainer.SEED and recorded["chain"] == "last" and recorded["pretrained"] is False
    assert recorded["workers"] == 0 and recorded["overrides"] == {"lr": 2e-4}


def test_ytvos_root_set_at_the_top_of_run_py_reaches_train(ytvos_train_root: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """README: set the roots at the top of run.py. Fails if --train opens YouTube-VOS anywhere else than
    run.YTVOS18_ROOT when --ytvos is not given (it used to fall back to dataset.YTVOS18_ROOT)."""
    opened = []
    sampler = samplers.TrainYTVOS

    def recording(root: str, **kwargs: object) -> samplers.TrainYTVOS:
        opened.append(root)
        return sampler(root, **kwargs)

    monkeypatch.setattr(samplers, "TrainYTVOS", recording)
    monkeypatch.setattr(run, "YTVOS18_ROOT", str(ytvos_train_root))
    argv = [*TINY, "--stages", "ytvos", "--epochs", "1", "--clips-per-epoch", "2", "--save-dir", str(tmp_path / "o")]
    assert run.main(["--train", *argv]) == 0
    assert opened == [str(ytvos_train_root)]
    assert (tmp_path / "o" / "coco_ytvos_best.pth").is_file()


def test_log_keeps_an_earlier_header_and_widens_it_for_a_new_column(tmp_path: Path) -> None:
    """An existing train_log.csv (a resumed run's, or another method's run in the same folder) keeps its rows and
    columns. Fails if a row is written in another column order than the header, or a score with no column in the
    existing header is dropped, or the earlier rows are lost when the header grows."""
    path = tmp_path / "train_log.csv"
    old = ["stage", "epoch", "iteration", "loss", "iou", "lr", "val_jf", "sec_per_iter"]
    curves.append_log(path, {"stage": "coco", "epoch": 1, "val_jf": "0.5"}, old)
    new = trainer.log_columns([methods.get("videomatch").stages["davis"]])
    curves.append_log(path, {"stage": "davis", "epoch": 1, "sec_per_iter": "0.1", "val_pairs_iou": "0.7"}, new)
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == [*old, "val_pairs_iou"]
    assert rows[0]["val_jf"] == "0.5" and rows[0]["val_pairs_iou"] == ""
    assert rows[1]["sec_per_iter"] == "0.1" and rows[1]["val_pairs_iou"] == "0.7" and rows[1]["val_jf"] == ""


@pytest.mark.parametrize("broken", ["mask 63x48", "mask 200x100", "truncated frame", "truncated mask"])
def test_bad_training_files_are_one_line_before_the_first_step(tmp_path: Path, broken: str,
                                                               capsys: pytest.CaptureFixture) -> None:
    """A mask of another size than its frame (one pixel narrower, as a 853x480 mask for an 854x480 frame, or
    another picture's), a truncated JPEG frame or a truncated PNG mask, in the last frame of the only training
    video: one line naming the file, exit 2, before any step, even with --workers 2. Fails if the size is not
    checked (the mask is stretched onto its frame and the run ends with exit 0), or if the file is first read in a
    DataLoader worker (its traceback is then part of the message), or if only the first mask of a video is read up
    front."""
    root = tmp_path / "DAVIS"
    for t in range(3):
        rgb, ids = square_frame(48, 64, t, [(1, (255, 0, 0))])
        write_jpeg(root / "JPEGImages" / "480p" / "a" / f"{t:05d}.jpg", rgb)
        save_mask(root / "Annotations" / "480p" / "a" / f"{t:05d}.png", ids)
    (root / "ImageSets" / "2017").mkdir(parents=True)
    (root / "ImageSets" / "2017" / "train.txt").write_text("a\n")
    frame, mask = root / "JPEGImages" / "480p" / "a" / "00002.jpg", root / "Annotations" / "480p" / "a" / "00002.png"
    if broken.startswith("mask "):
        w, h = map(int, broken.split()[1].split("x"))
        save_mask(mask, np.ones((h, w), np.uint8))
    else:
        bad = frame if broken == "truncated frame" else mask
        bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])
    argv = ["--train", "--device", "cpu", "--no-pretrained", "--davis", str(root), "--stages", "davis", "--crop", "32",
            "32", "--clip-len", "3", "--batch-size", "2", "--clips-per-epoch", "2", "--epochs", "1", "--workers", "2",
            "--val-every", "0", "--save-dir", str(tmp_path / "out")]
    assert run.main(argv) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    named = frame if broken == "truncated frame" else mask
    assert len(lines) == 1 and str(named) in lines[0] and "Traceback" not in err, err
    if broken.startswith("mask "):
        assert f"is {broken.split()[1]} but its frame" in lines[0] and "64x48" in lines[0]
    assert not (tmp_path / "out").exists()
