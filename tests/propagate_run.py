"""`python tests/propagate_run.py ARGS` is `python run.py ARGS` with test_extend's tiny `Propagate` method registered
and the official resize rule set to the tiny test frames' short side, so that torchrun can start it in processes
of its own (tests/test_readers.py); PROPAGATE_KILL_RANK=r makes the process of rank r die by SIGKILL at its first
video. Not a tool for users."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from test_extend import Propagate, PropagateConfig  # noqa: E402

import dataset  # noqa: E402
from core import methods  # noqa: E402
from videomatch import bce_loss  # noqa: E402

SHORT_SIDE = 36  # the test frames' short side: run as they are, not upscaled to 480


def propagate_method() -> methods.Method:
    """The registry entry of test_extend's Propagate (no training stage: these runs only test)."""
    return methods.Method("propagate", Propagate, PropagateConfig, "trained_model/propagate.pth", {}, (),
                          {"bce": bce_loss}, "bce")


KILL_RANK = "PROPAGATE_KILL_RANK"  # the process of this rank kills itself (SIGKILL) at its first video


if __name__ == "__main__":
    methods.METHODS["propagate"] = propagate_method()
    dataset.TEST_SHORT_SIDE = SHORT_SIDE
    if os.environ.get(KILL_RANK) is not None and os.environ.get(KILL_RANK) == os.environ.get("RANK"):
        from core import inference

        def die(*args: object, **kwargs: object) -> None:
            os.kill(os.getpid(), signal.SIGKILL)

        inference.segment_video = die
    import run

    sys.exit(run.main(sys.argv[1:]))
