"""Loading weight files safely (provisional; replaced by the full module)."""

from pathlib import Path

import torch
from torch import Tensor

from utils import VOSInputError


def load_state_dict_file(path: str | Path, what: str = "checkpoint") -> tuple[dict[str, Tensor], dict]:
    path = Path(path)
    if not path.is_file():
        raise VOSInputError(f"{what} {path}: no such file")
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(obj, dict) and "model" in obj:
        return obj["model"], {k: v for k, v in obj.items() if k != "model"}
    return obj, {}


DOWNLOAD_ENV = "EMVOS_NO_DOWNLOAD"


def resolve_weights(spec: str, folder: Path = Path("trained_model"), download: bool = True) -> Path:
    path = Path(spec)
    if not path.is_file():
        raise VOSInputError(f"no checkpoint at '{path}'")
    return path
