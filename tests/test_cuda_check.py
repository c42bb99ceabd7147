"""tools/cuda_check.py on CPU: it refuses to run without CUDA, its test mode (--device cpu --tiny) runs the parity part
and catches a wrong result, a part that breaks is a row of the table, and (opt-in, minutes on 2 cores) the parts that
run run.py / bench.py / torchrun as subprocesses go through at tiny sizes."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import GOLDEN_CASES, GOLDEN_WEIGHTS, single_thread

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import cuda_check  # noqa: E402

SCRIPT = ROOT / "tools" / "cuda_check.py"


def _report(out: Path) -> dict:
    (folder,) = out.iterdir()  # one run, one new folder
    return json.loads((folder / "report.json").read_text())


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """One intra-op thread: the in-process parity runs share a 2-core machine."""
    with single_thread():
        yield


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: the check would run")
def test_refuses_without_cuda_in_one_line(tmp_path: Path) -> None:
    """Catches a check that starts (and fails half way, or writes a report) on a machine without a GPU."""
    proc = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "CUDA is not available" in proc.stderr
    assert proc.stdout == "" and list(tmp_path.iterdir()) == []


def test_cpu_outside_the_test_mode_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Catches --device cpu running the full-size check (hours on a CPU) instead of asking for --tiny."""
    assert cuda_check.main(["--device", "cpu", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--tiny" in err[0]
    assert not any(tmp_path.iterdir())


def test_tiny_parity_passes_on_cpu(tmp_path: Path) -> None:
    """The parity part's code path on CPU: the golden training logits, the sample in fp32 on the device against
    CPU, bf16 against fp32. Catches a comparison that cannot run (wrong shapes, a missing logit record)."""
    assert cuda_check.main(["--device", "cpu", "--tiny", "--parts", "parity", "--golden", str(GOLDEN_CASES.parent),
                            "--out", str(tmp_path)]) == 0
    checks = {c["name"]: c for c in _report(tmp_path)["checks"]}
    assert checks["golden case c fp64 training logits"]["status"] == "ok"
    assert checks["golden case c fp64 training logits"]["data"]["max_abs_diff"] < 1e-8
    same = checks["sample bear fp32 cpu vs cpu"]
    assert same["status"] == "ok" and same["data"]["max_logit_diff"] == 0
    bf16 = checks["sample bear bf16 vs fp32"]["data"]
    assert set(bf16["pixels_differ_per_object"]) == {"1"} and bf16["max_logit_diff"] > 0  # bf16 really ran
    assert checks["sample bear fp16 vs fp32"]["status"] == "skip"  # a CUDA path, marked as such


def test_wrong_golden_logits_fail_the_check(tmp_path: Path) -> None:
    """Catches a parity check that compares nothing (or with a loose tolerance): golden logits moved by 1e-6 must
    give FAIL and exit 1."""
    golden = tmp_path / "golden"
    golden.mkdir()
    shutil.copy(GOLDEN_WEIGHTS, golden / GOLDEN_WEIGHTS.name)
    cases = dict(np.load(GOLDEN_CASES))
    cases["c_scores_out"] = cases["c_scores_out"] + 1e-6
    np.savez(golden / "cases.npz", **cases)
    out = tmp_path / "out"
    ctx = cuda_check.Context(torch.device("cpu"), True, golden, out, sys.executable)
    cuda_check.golden_parity(ctx)
    (check,) = ctx.checks
    assert check.status == "FAIL" and 9e-7 < check.data["max_abs_diff"] < 1.1e-6


def test_a_broken_part_is_a_row_and_the_others_still_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Catches one exception ending the whole check (no table, no JSON), or a later part losing its time."""
    ran = []

    def broken(ctx: cuda_check.Context) -> None:
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    def fine(ctx: cuda_check.Context) -> None:
        ran.append(ctx.left())
        ctx.add("train", "something", "ok", "42")

    monkeypatch.setitem(cuda_check.RUNNERS, "speed", broken)
    monkeypatch.setitem(cuda_check.RUNNERS, "train", fine)
    assert cuda_check.main(["--device", "cpu", "--tiny", "--parts", "speed", "train", "--budget", "60",
                            "--out", str(tmp_path)]) == 1
    report = _report(tmp_path)
    assert [(c["part"], c["status"]) for c in report["checks"]] == [("speed", "error"), ("train", "ok")]
    assert "illegal memory access" in report["checks"][0]["value"]
    # train's share is 20 / 60 of the budget, plus what speed left over: about all 60 s
    assert ran and 50 < ran[0] <= 60
    (folder,) = tmp_path.iterdir()
    assert "illegal memory access" in (folder / "table.txt").read_text()


def test_subprocess_time_limit_stops_the_child(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Catches a part that waits forever on a hung run.py, or starts one after its time is spent (the budget must
    hold)."""
    monkeypatch.setattr(cuda_check, "MIN_START_S", 1.0)  # the child here starts in milliseconds: no need to wait 5 s
    ctx = cuda_check.Context(torch.device("cpu"), True, None, tmp_path, sys.executable)
    ctx.deadline = cuda_check.time.monotonic() + 2
    proc = cuda_check.run_process(ctx, "sleeper", [sys.executable, "-c", "import time; print('up', flush=True); "
                                                   "time.sleep(60)"])
    assert proc.rc is None and proc.wall < 30 and proc.stdout == "up\n"
    assert cuda_check.status_of(proc) == "timeout" and "time limit" in cuda_check.failure(proc)
    # with the part's time spent, nothing starts: the check becomes a `skip` row
    ctx.deadline = cuda_check.time.monotonic()
    with pytest.raises(cuda_check.OutOfTimeError) as spent:
        cuda_check.run_process(ctx, "late", [sys.executable, "-c", "open('started', 'w')"])
    assert not (ROOT / "started").exists()
    cuda_check.broken(ctx, "train", "late", spent.value)
    assert [(c.status, c.name) for c in ctx.checks] == [("skip", "late")]


@pytest.mark.learning  # minutes on 2 cores: the slow tier, `python -m pytest -m learning`, which CI runs too
def test_tiny_subprocess_parts_on_cpu(tmp_path: Path) -> None:
    """speed (bench.py --json, run.py --test), train (fp32, --amp), resume (SIGINT, --resume) and ddp (torchrun,
    gloo, 1 and 2 ranks) at tiny sizes. Catches a changed command line, log format or checkpoint name that breaks
    the check before a GPU ever sees it."""
    code = cuda_check.main(["--device", "cpu", "--tiny", "--parts", "speed", "train", "resume", "ddp",
                            "--budget", "1800", "--out", str(tmp_path)])
    checks = _report(tmp_path)["checks"]
    assert code == 0, [c for c in checks if c["status"] not in ("ok", "info", "skip")]
    names = [c["name"] for c in checks]
    assert any(n.startswith("tiny  2 obj per-object") for n in names)
    assert any(n.startswith("train_amp ") for n in names) and any(n.startswith("train_fp32 ") for n in names)
    resumed = next(c for c in checks if c["name"] == "resumed vs uninterrupted (deterministic)")
    assert resumed["data"]["max_weight_diff"] == 0 and resumed["data"]["same_log"]
    assert sum(c["part"] == "ddp" for c in checks) == 4
