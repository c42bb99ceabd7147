"""The fast path, `run.py --test --precision bf16 --compile`, pays its compilation once: a second process with the
same frame sizes loads the compiled graphs from inductor's on-disk cache.

Two whole processes on the sample's bear (10 frames, 854x480), with a fresh TORCHINDUCTOR_CACHE_DIR: about a minute
of compiling on a 2-core CPU, so this is the slow tier (`python -m pytest -m learning`).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import GOLDEN_WEIGHTS

from utils import read_mask

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.learning
LINE = re.compile(r"torch\.compile: ([0-9.]+) s compiling in this run; (\d+) graphs built, (\d+) loaded")


def _run(out: Path, cache: Path, *extra: str) -> tuple[str, list[np.ndarray]]:
    """One `run.py --test` process on the sample's bear; its stdout and its masks in frame order."""
    cmd = [sys.executable, "run.py", "--test", "--data", "sample", "--sequences", "bear", "--device", "cpu",
           "--weights", str(GOLDEN_WEIGHTS), "--no-download", "--no-report", "--output", str(out), *extra]
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(cache)}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    masks = [read_mask(p, raw=True) for p in sorted((out / "sample" / "bear").glob("*.png"))]
    assert len(masks) == 10
    return proc.stdout, masks


def test_second_process_loads_the_compiled_graphs_and_masks_agree_with_fp32(tmp_path: Path) -> None:
    """Fails when the compiled graphs are not cached across processes (freezing or a changing graph key defeats
    inductor's cache: the second run builds again), when run.py stops printing what compilation cost, or when the
    compiled bf16 path (freezing folds batch norms and prepacks the weights) moves the masks beyond bf16 rounding."""
    cache = tmp_path / "inductor"
    first, first_masks = _run(tmp_path / "first", cache, "--precision", "bf16", "--compile")
    second, second_masks = _run(tmp_path / "second", cache, "--precision", "bf16", "--compile")
    (built1, loaded1), (built2, loaded2) = [tuple(int(x) for x in LINE.search(s).groups()[1:]) for s in (first, second)]
    assert built1 >= 4 and loaded1 == 0, first  # encoder, matcher, the decoder's project and forward_split
    assert built2 == 0 and loaded2 == built1, second
    assert float(LINE.search(second).group(1)) < float(LINE.search(first).group(1))
    # the same graphs on the same frames give the same masks
    assert all(np.array_equal(a, b) for a, b in zip(first_masks, second_masks, strict=True))
    _, fp32_masks = _run(tmp_path / "fp32", cache)
    agree = np.mean([np.mean(a == b) for a, b in zip(fp32_masks, second_masks, strict=True)])
    assert agree >= 0.99, f"compiled bf16 masks agree with fp32 on {agree:.4f} of pixels"
