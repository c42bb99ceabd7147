"""Regenerate the golden outputs in tests/golden/ by running the authors' EMVOS code, or check golden vectors with it.

    python tools/make_golden.py OFFICIAL_DIR              # write official_layout.json, official_outputs.npz
    python tools/make_golden.py OFFICIAL_DIR --check      # run the authors' code again, compare with tests/golden/
    python tools/make_golden.py OFFICIAL_DIR --check DIR  # the same for a folder holding emvos_official.pth and
                                                          # cases.npz with frames (what tools/golden.materialize writes)

OFFICIAL_DIR is a checkout of https://github.com/suhwan-cho/EMVOS at commit 7e1e200; only its emvos.py is read, and
its git blob id is checked first. Nothing of it is copied into this repository. The authors' model runs in float64 on
the CPU, with the golden weights of tools/golden.py, on crops of frames of sample/DAVIS2016 (docs/faithfulness.md).

Read top to bottom: loading the authors' module and the shims it needs today; the layout of its state dict; the masks
given in each case; its outputs; the command line.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import sys
import tempfile
import types
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: the repository's packages

from core.flags import OneLineParser  # noqa: E402
from tools import golden  # noqa: E402

OFFICIAL_COMMIT = "7e1e200338e9e74afa9f9d3cffb592fcc570d00b"
OFFICIAL_EMVOS_BLOB = "f4b7777ab0611054ef382a24868f4f414b3f1188"  # `git rev-parse 7e1e200:emvos.py`
SCORE_TOLERANCE = 1e-10  # --check: max |logit difference| allowed between two float64 runs of the authors' code


def git_blob_id(data: bytes) -> str:
    """What `git hash-object` prints for a file holding data."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


# ----------------------------------------------------------------------------------------------------------------------
# Shims: what the authors' 2022 code needs to run on today's torchvision and a CPU. Each leaves its numbers alone.
# ----------------------------------------------------------------------------------------------------------------------


def _densenet121_untrained(pretrained: bool = False, **_: object) -> nn.Module:
    """The official Encoder calls `tv.models.densenet121(pretrained=True)`: today's torchvision reads `pretrained`
    as a request to download the ImageNet weights. Every tensor is replaced by the golden weights anyway, so the
    same network is built with weights=None, without a download."""
    return torchvision.models.densenet121(weights=None)


def apply_shims(official: types.ModuleType) -> types.ModuleType:
    """Point the module's `tv` (torchvision) at a namespace whose densenet121 builds without downloading. The rest
    runs as written: the official forward moves nothing to CUDA (its Evaluator and Trainer do, and are not used), and
    in float64 its float32 masks (`.float()`) are exact (0/1 and 16x16 averages k/256) and promoted by torch's type
    promotion wherever they meet float64 features."""
    official.tv = types.SimpleNamespace(models=types.SimpleNamespace(densenet121=_densenet121_untrained))
    return official


# ----------------------------------------------------------------------------------------------------------------------
# The authors' model
# ----------------------------------------------------------------------------------------------------------------------


def _refuse(message: str) -> None:
    """Bad input: one line on stderr and exit code 2, before any work."""
    print(f"make_golden: {message}", file=sys.stderr)
    raise SystemExit(2)


def load_official(official_dir: Path) -> types.ModuleType:
    """Import OFFICIAL_DIR/emvos.py (checked to be the file of commit 7e1e200) as a module, with the shims applied."""
    path = official_dir / "emvos.py"
    if not path.is_file():
        _refuse(f"{path} not found; pass a checkout of suhwan-cho/EMVOS as OFFICIAL_DIR (git clone "
                f"https://github.com/suhwan-cho/EMVOS DIR && git -C DIR checkout {OFFICIAL_COMMIT[:7]})")
    blob = git_blob_id(path.read_bytes())
    if blob != OFFICIAL_EMVOS_BLOB:
        _refuse(f"{path} has git blob id {blob}, not {OFFICIAL_EMVOS_BLOB} (emvos.py at {OFFICIAL_COMMIT[:7]}); "
                f"check out that commit: git -C {official_dir} checkout {OFFICIAL_COMMIT[:7]}")
    spec = importlib.util.spec_from_file_location("emvos_official", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return apply_shims(module)


def official_layout(net: nn.Module) -> list[list]:
    """[[name, shape, dtype, role]] of the official model's state dict, in its order; the role says which range
    tools/golden.py draws the tensor's values from."""
    roles = {}
    bn_roles = {"weight": "bn_weight", "bias": "bn_bias", "running_mean": "bn_mean", "running_var": "bn_var",
                "num_batches_tracked": "bn_count"}
    for prefix, module in net.named_modules():
        own = dict(module.named_parameters(recurse=False)) | dict(module.named_buffers(recurse=False))
        for name in own:
            if isinstance(module, nn.BatchNorm2d):
                role = bn_roles[name]
            elif isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
                role = {"weight": "conv_weight", "bias": "conv_bias"}[name]
            elif name in ("mean", "std"):  # the Encoder's input normalisation buffers
                role = f"pixel_{name}"
            else:
                raise SystemExit(f"make_golden: no role for {prefix}.{name} ({type(module).__name__})")
            roles[f"{prefix}.{name}" if prefix else name] = role
    state = net.state_dict()
    assert set(roles) == set(state), set(roles) ^ set(state)
    return [[k, list(v.shape), str(v.dtype).removeprefix("torch."), roles[k]] for k, v in state.items()]


def official_model(official: types.ModuleType, state: dict[str, torch.Tensor]) -> nn.Module:
    """The authors' EMVOS with `state` loaded (strict), in float64 and eval mode."""
    net = official.EMVOS()
    net.load_state_dict(state, strict=True)
    return net.double().eval()


# ----------------------------------------------------------------------------------------------------------------------
# The masks given in each case
# ----------------------------------------------------------------------------------------------------------------------


def given_masks(sample: Path = golden.SAMPLE) -> dict[str, np.ndarray]:
    """From the sample's ground truth: a_first_mask (object 1), b_first_mask (the boat split at the middle column of
    its extent into objects 1 and 2), b_frame2_mask (object 3, a 30x50 box of background, given first in frame 2),
    c_first_masks (object 1 of each clip)."""
    (a,), (b,), c = golden.CASES["a"], golden.CASES["b"], golden.CASES["c"]
    boat = b.annotation(sample, b.frames[0])
    cols = np.flatnonzero(boat.any(axis=0))
    split = (cols[0] + cols[-1] + 1) // 2
    first = boat.astype(np.uint8)
    first[:, split:] *= 2
    late = np.zeros_like(first)
    late[10:40, 10:60] = 3
    assert not (b.annotation(sample, b.frames[2]) & (late != 0)).any(), "object 3 must be background in frame 2"
    return {"a_first_mask": a.annotation(sample, a.frames[0]).astype(np.uint8), "b_first_mask": first,
            "b_frame2_mask": late,
            "c_first_masks": np.stack([crop.annotation(sample, crop.frames[0]) for crop in c]).astype(np.uint8)}


# ----------------------------------------------------------------------------------------------------------------------
# The authors' outputs
# ----------------------------------------------------------------------------------------------------------------------


def _clip(imgs: np.ndarray) -> torch.Tensor:
    """(..., L, H, W, 3) uint8 -> (B, L, 3, H, W) float64 in [0, 1], what the official loaders hand the model."""
    t = torch.from_numpy(imgs).double() / 255
    t = t.permute(*range(t.dim() - 3), -1, -3, -2)
    return t if t.dim() == 5 else t.unsqueeze(0)


def _mask(ids: np.ndarray) -> torch.Tensor:
    """(H, W) uint8 -> (1, 1, H, W) int64, a given mask as the official DAVIS loader makes it."""
    return torch.from_numpy(ids).long()[None, None]


def official_outputs(net: nn.Module, cases: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run the authors' EMVOS.forward on the three cases: a and b as its Evaluator does (batch 1, a list of given
    masks, val_frame_ids None: a hard mask for every frame), c as its Trainer does (a batch of clips, the first
    frame's masks, soft scores of frames 1..L-1)."""
    out = {}
    with torch.no_grad():
        for case, later in (("a", {}), ("b", {2: "b_frame2_mask"})):
            imgs = cases[f"{case}_imgs"]
            masks = [_mask(cases[f"{case}_first_mask"])] + [None] * (len(imgs) - 1)
            for t, key in later.items():
                masks[t] = _mask(cases[key])
            result = net(_clip(imgs), masks, None)["masks"]  # (1, L, 1, H, W)
            out[f"{case}_masks_out"] = result[0, :, 0].numpy().astype(np.uint8)
        first = torch.from_numpy(cases["c_first_masks"]).long()[:, None, None]  # (B, 1, 1, H, W): masks[:, :1]
        out["c_scores_out"] = net(_clip(cases["c_imgs"]), first, None)["scores"].numpy()  # (B, L-1, 2, H, W)
    return out


def compare(ours: dict[str, np.ndarray], stored: dict[str, np.ndarray]) -> bool:
    """Print, per output, how far the stored one is from the one just computed; True when the masks are equal and
    the scores within SCORE_TOLERANCE."""
    ok = True
    for key in ("a_masks_out", "b_masks_out"):
        differ = int((ours[key] != stored[key]).sum()) if ours[key].shape == stored[key].shape else -1
        ok &= differ == 0
        print(f"{key}: {'shape differs' if differ < 0 else f'{differ} of {ours[key].size} pixels differ'}")
    a, b = ours["c_scores_out"], stored["c_scores_out"]
    diff = float(np.abs(a - b).max()) if a.shape == b.shape else float("inf")
    ok &= diff <= SCORE_TOLERANCE
    print(f"c_scores_out: max |difference| {diff:.3e} (tolerance {SCORE_TOLERANCE:g}; scores' std {b.std():.3f})")
    return ok


def check_folder(official: types.ModuleType, folder: Path) -> bool:
    """Run the authors' code with folder/emvos_official.pth on the inputs of folder/cases.npz; compare."""
    state = torch.load(folder / golden.WEIGHTS_NAME, map_location="cpu", weights_only=True)
    with np.load(folder / golden.CASES_NAME) as f:
        stored = {k: f[k] for k in f.files}
    return compare(official_outputs(official_model(official, state), stored), stored)


def generate(official: types.ModuleType) -> None:
    """Write tests/golden/official_layout.json (from the authors' model) and official_outputs.npz."""
    net = official.EMVOS()
    layout = official_layout(net)
    golden.GOLDEN_DIR.mkdir(parents=True, exist_ok=True)
    lines = ",\n".join("    " + json.dumps(entry) for entry in layout)
    golden.LAYOUT.write_text(f'{{"source": "suhwan-cho/EMVOS@{OFFICIAL_COMMIT} emvos.py EMVOS().state_dict()",\n'
                             f' "tensors": [\n{lines}\n]}}\n')
    state = golden.golden_state_dict()
    cases = given_masks()
    for case in golden.CASES:
        cases[f"{case}_imgs"] = golden.case_frames(case)
    outputs = official_outputs(official_model(official, state), cases)
    stored = {k: v for k, v in cases.items() if not k.endswith("_imgs")} | outputs
    stored |= {f"{case}_imgs_sha256": np.array(golden.frames_digest(cases[f"{case}_imgs"])) for case in golden.CASES}
    stored["weights_sha256"] = np.array(golden.weights_digest(state))
    np.savez_compressed(golden.OUTPUTS, **stored)
    for key, value in outputs.items():
        summary = ([np.bincount(m.ravel()).tolist() for m in value] if value.dtype == np.uint8
                   else f"range [{value.min():.2f}, {value.max():.2f}], std {value.std():.3f}")
        print(f"{key} {value.shape}: {summary}")
    print(f"wrote {golden.LAYOUT} ({golden.LAYOUT.stat().st_size} bytes), {golden.OUTPUTS} "
          f"({golden.OUTPUTS.stat().st_size} bytes)")


def main(argv: list[str] | None = None) -> int:
    p = OneLineParser(description=__doc__.split("\n\n")[0])
    p.add_argument("official_dir", type=Path, metavar="OFFICIAL_DIR",
                   help="a checkout of suhwan-cho/EMVOS at commit 7e1e200 (its emvos.py is imported)")
    p.add_argument("--check", nargs="?", type=Path, const=golden.GOLDEN_DIR, default=None, metavar="DIR",
                   help="compare instead of writing: tests/golden/ (the default) or a folder with emvos_official.pth "
                        "and cases.npz holding frames; exit 1 when a mask pixel differs or a score by more than "
                        f"{SCORE_TOLERANCE:g}")
    args = p.parse_args(argv)
    if args.check is not None and args.check != golden.GOLDEN_DIR and not (args.check / golden.CASES_NAME).is_file():
        p.exit(2, f"--check {args.check}: no {golden.CASES_NAME} there\n")
    official = load_official(args.official_dir)
    torch.set_grad_enabled(False)
    if args.check is None:
        generate(official)
        return 0
    if args.check == golden.GOLDEN_DIR:
        with tempfile.TemporaryDirectory() as tmp:
            ok = check_folder(official, golden.materialize(Path(tmp)))
    else:
        ok = check_folder(official, args.check)
    print("the outputs match the authors' code" if ok else "the outputs DIFFER from the authors' code")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
