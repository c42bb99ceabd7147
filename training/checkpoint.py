"""Training checkpoints: writing them whole, the random states they record, reading one back for --resume.

A weights file `X.pth` holds what the method's file layout says (EMVOS: exactly the official state dict); everything
`--resume` needs to go on exactly where the run stopped (weights, optimizer, epoch, random states, options) is in
`X.train.pth` beside it.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from core import methods, weights
from core.methods import StageConfig
from utils import VOSInputError, atomic_write, writable_dir

# what a training state must hold for --resume to go on from it
RESUME_KEYS = ("weights", "method", "config", "optimizer", "stage", "epoch", "rng", "train_options")


def training_state_path(weights_path: Path) -> Path:
    """X.pth -> X.train.pth, the file with what --resume needs besides the weights."""
    return weights_path.with_name(weights_path.stem + ".train.pth")


def save_atomic(payload: dict, path: Path) -> None:
    """torch.save all at once or not at all (utils.atomic_write): a kill never leaves half a checkpoint, and a write
    that fails (a full disk, a quota, `ulimit -f`) leaves the file as it was and raises VOSInputError naming it."""
    try:
        atomic_write(path, lambda f: torch.save(payload, f))
    except (OSError, RuntimeError) as e:
        # torch's zip writer reports the failed write as `RuntimeError: [enforce fail at inline_container.cc:...]`,
        # with the OSError of the file object as its context
        cause = e if isinstance(e, OSError) else e.__context__
        if not isinstance(cause, OSError):
            raise
        raise VOSInputError(f"could not write checkpoint '{path}' ({cause.strerror or cause}: a full disk, a quota or "
                            f"`ulimit -f`); the files written before are intact (each is written whole or not at "
                            f"all): free space, or go on with --resume from the last checkpoint and --save-dir PATH on "
                            f"another disk") from e


def prepare_save_dir(path: Path) -> None:
    """Before any step: the folder exists and takes files, and the temporaries of saves a kill cut short are gone."""
    writable_dir(path, "--save-dir")
    for leftover in weights.clean_stale_temporaries(path):
        print(f"removed {leftover}, left by a save that was killed")


# ---------------------------------------------------------------------------------------------------------------
# random state (saved in checkpoints so that --resume draws the same clips)
# ---------------------------------------------------------------------------------------------------------------

def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # seeds every CUDA device too


def capture_rng() -> dict:
    """Python, numpy, torch (and CUDA) generator states, in types that torch.load(weights_only=True) reads."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": random.getstate(),
             "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss),
                       "cached": float(cached)},
             "torch": torch.get_rng_state(), "cuda": []}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    random.setstate(state["python"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------------------------------------------------------
# --resume
# ---------------------------------------------------------------------------------------------------------------

def load_resume(path: str, method_name: str | None) -> dict:
    """The training state written beside a checkpoint (X.train.pth; X.pth finds it), read safely. The method is the
    file's; a --method given (method_name not None) that differs is an error."""
    given = Path(path)
    state_path = given if given.name.endswith(".train.pth") else training_state_path(given)
    if not state_path.is_file():
        if given.is_file():
            raise VOSInputError(f"--resume {path}: the file holds weights only and no {state_path.name} with the "
                                f"training state is beside it; to start training from these weights pass --init {path}")
        raise VOSInputError(f"--resume {path}: no such file")
    obj = weights.load_file(state_path, "--resume")
    if not isinstance(obj, dict) or any(k not in obj for k in RESUME_KEYS):
        raise VOSInputError(f"--resume {state_path} is not a training state written by `run.py --train` (it lacks "
                            f"{', '.join(k for k in RESUME_KEYS if not isinstance(obj, dict) or k not in obj)})")
    if obj["method"] not in methods.METHODS:
        raise VOSInputError(f"--resume {path} holds a {obj['method']!r} model, which this repository does not "
                            f"implement (methods: {', '.join(methods.METHODS)})")
    if method_name is not None and obj["method"] != method_name:
        raise VOSInputError(f"--resume {path} is a {obj['method']} checkpoint; drop --method {method_name} (the "
                            f"method is read from the file)")
    return {**obj, "path": str(state_path)}


def resume_point(resumed: dict | None, stages: list[StageConfig], path: str | None) -> tuple[int, bool]:
    """(index of the stage to start with, whether the resumed stage was already finished)."""
    if resumed is None:
        return 0, False
    names = [s.name for s in stages]
    if resumed["stage"] not in names:
        raise VOSInputError(f"--resume {path} is from stage '{resumed['stage']}', which is not in --stages "
                            f"{' '.join(names)}")
    first = names.index(resumed["stage"])
    finished = (resumed["epoch"] >= stages[first].epochs and resumed["partial"] is None
                and not resumed["epoch_end_pending"])
    first += finished  # that stage is done: go on with the next one
    if first == len(stages):
        raise VOSInputError(f"--resume {path}: stage '{resumed['stage']}' is finished and no stage follows it in "
                            f"--stages {' '.join(names)}; name a stage after it to go on")
    return first, finished


def resume_command(path: Path, method: str, roots: dict[str, str], world: int) -> str:
    """The command that goes on from the resumable checkpoint `path`: the data roots (flag name -> folder) and the
    file; the stages, sizes and the save folder come from the checkpoint."""
    launcher = f"torchrun --nproc_per_node {world} run.py" if world > 1 else "python run.py"
    flags = [f"--{name} {root}" for name, root in roots.items()]
    return " ".join([launcher, "--train", f"--method {method}", f"--resume {path}", *flags])
