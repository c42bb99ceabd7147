"""The golden vectors: weights generated from a hash, frames cut from the bundled sample, and the outputs of the
authors' code stored in tests/golden/. tools/make_golden.py writes tests/golden/ by running the authors' code; the
tests and tools/cuda_check.py read the vectors through this module (docs/faithfulness.md tells the whole story).

Read top to bottom:
1. `golden_state_dict`: every tensor of the official EMVOS state dict (names, shapes, dtypes and what each tensor is,
   listed in tests/golden/official_layout.json from the authors' model), each element drawn from splitmix64 of a hash
   of the tensor's name and the element's index in numpy uint64 arithmetic. No torch RNG is involved, so the same bits
   come out on every platform and torch version; `weights_digest` fingerprints them.
2. `CASES` / `case_frames`: the three cases' frames, crops of frames of sample/DAVIS2016 (crops, not resizes: cutting
   an array is exact, where a resampling filter is a library's choice).
3. `load_cases`: the given masks and official outputs stored in tests/golden/official_outputs.npz, with the frames cut
   again from sample/ and checked against the SHA-256 stored beside them.
4. `materialize`: a self-contained golden folder (emvos_official.pth and cases.npz holding frames, masks and outputs)
   for the code that reads files: run.py --weights, tools/cuda_check.py --golden, the tests. From a shell:

       python tools/golden.py [DEST]    # writes DEST/emvos_official.pth and DEST/cases.npz (default tests/golden/build)
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
GOLDEN_DIR = ROOT / "tests" / "golden"
LAYOUT = GOLDEN_DIR / "official_layout.json"  # the authors' state dict: names, shapes, dtypes, roles
OUTPUTS = GOLDEN_DIR / "official_outputs.npz"  # given masks, official outputs, fingerprints of the inputs
SAMPLE = ROOT / "sample" / "DAVIS2016"
WEIGHTS_NAME = "emvos_official.pth"  # "official": the authors' key layout; the values are the hash's
CASES_NAME = "cases.npz"

# ----------------------------------------------------------------------------------------------------------------------
# 1. Weights from a hash
# ----------------------------------------------------------------------------------------------------------------------

_GAMMA = np.uint64(0x9E3779B97F4A7C15)  # splitmix64's increment (2^64 / golden ratio)
_MIX1, _MIX2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)  # splitmix64's finaliser constants

# role -> the uniform range its values are drawn from. Convolution weights use He's bound, sqrt(6 / fan_in), so that
# activations keep their scale through the 120 convolutions of DenseNet-121 and the decoder. Biases are not zero (the
# official initialisation zeroes them, which would hide a bias that is lost on loading); BatchNorm running variances
# are positive; the pixel mean and std the encoder normalises with are near ImageNet's but not equal, so that a model
# which ignores the loaded buffers gives other numbers.
RANGES: dict[str, tuple[float, float]] = {
    "conv_bias": (-0.1, 0.1),
    "bn_weight": (0.75, 1.25),
    "bn_bias": (-0.1, 0.1),
    "bn_mean": (-0.1, 0.1),
    "bn_var": (0.75, 1.25),
    "pixel_mean": (0.4, 0.5),
    "pixel_std": (0.2, 0.25),
}


def unit_floats(name: str, n: int) -> np.ndarray:
    """n float64 in [0, 1): element i is splitmix64(seed + (i + 1) * gamma) >> 11, times 2^-53, where seed is the
    first 8 bytes (little-endian) of SHA-256(name). numpy's uint64 arithmetic wraps modulo 2^64 as splitmix64 wants."""
    seed = np.uint64(int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little"))
    z = seed + np.arange(1, n + 1, dtype=np.uint64) * _GAMMA
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    z ^= z >> np.uint64(31)
    return (z >> np.uint64(11)).astype(np.float64) * 2.0**-53


def read_layout(path: Path = LAYOUT) -> list[tuple[str, tuple[int, ...], str, str]]:
    """[(name, shape, dtype, role)] of the official state dict, in its order."""
    return [(name, tuple(shape), dtype, role) for name, shape, dtype, role in json.loads(path.read_text())["tensors"]]


def golden_tensor(name: str, shape: tuple[int, ...], dtype: str, role: str) -> torch.Tensor:
    """One tensor of the golden weights (float32, or int64 zeros for BatchNorm's num_batches_tracked)."""
    if role == "bn_count":
        return torch.zeros(shape, dtype=torch.int64)
    if dtype != "float32":
        raise ValueError(f"{name}: a {role} tensor of dtype {dtype}; the generator writes float32 ones")
    n = int(np.prod(shape, dtype=np.int64))
    if role == "conv_weight":  # torch's fan_in for Conv2d (out, in, k, k) and ConvTranspose2d (in, out, k, k) alike
        bound = float(np.sqrt(6.0 / (shape[1] * int(np.prod(shape[2:], dtype=np.int64)))))
        low, high = -bound, bound
    else:
        low, high = RANGES[role]
    values = (low + (high - low) * unit_floats(name, n)).astype(np.float32)  # float64 -> float32: IEEE rounding
    return torch.from_numpy(values.reshape(shape))


def golden_state_dict(layout_path: Path = LAYOUT) -> dict[str, torch.Tensor]:
    """The golden weights: the official EMVOS state dict (576 tensors, 9.83 M values) filled from the hash."""
    return {name: golden_tensor(name, shape, dtype, role) for name, shape, dtype, role in read_layout(layout_path)}


def weights_digest(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 over the names, dtypes, shapes and little-endian bytes of a state dict, in its order."""
    h = hashlib.sha256()
    for name, t in state.items():
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        arr = t.detach().cpu().contiguous().numpy()
        h.update(arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes())
    return h.hexdigest()


# ----------------------------------------------------------------------------------------------------------------------
# 2. The cases' frames: crops of the bundled sample
# ----------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Crop:
    """Frames `frames` of sequence `seq` of the sample, rows top..top+height and columns left..left+width."""

    seq: str
    frames: tuple[int, ...]
    top: int
    left: int
    height: int
    width: int

    def frame(self, sample: Path, t: int) -> np.ndarray:
        """(height, width, 3) uint8 RGB crop of frame t."""
        path = sample / "JPEGImages" / "480p" / self.seq / f"{t:05d}.jpg"
        with Image.open(path) as img:
            rgb = np.asarray(img.convert("RGB"))
        return np.ascontiguousarray(rgb[self.top:self.top + self.height, self.left:self.left + self.width])

    def annotation(self, sample: Path, t: int) -> np.ndarray:
        """(height, width) bool crop of frame t's ground truth (DAVIS 2016: 0 background, 255 object)."""
        path = sample / "Annotations" / "480p" / self.seq / f"{t:05d}.png"
        with Image.open(path) as img:
            ids = np.asarray(img.convert("L")) != 0
        return ids[self.top:self.top + self.height, self.left:self.left + self.width]


# case -> its clips (one for the inference cases a and b, a batch of two for the training forward c)
CASES: dict[str, tuple[Crop, ...]] = {
    # a: one object, inference; 200x360 is not a multiple of 16, so the frames are reflect-padded to 208x368
    "a": (Crop("bear", (0, 1, 2, 3), 180, 60, 200, 360),),
    # b: two objects given in frame 0 (the boat's left and right halves) and a third first given in frame 2
    "b": (Crop("boat", (0, 1, 2, 3), 130, 300, 208, 368),),
    # c: training forward, a batch of two 4-frame clips, the first frame's mask only, soft scores of frames 1..3 out
    "c": (Crop("bear", (0, 1, 2, 3), 220, 150, 192, 192), Crop("boat", (0, 1, 2, 3), 130, 380, 192, 192)),
}


def case_frames(case: str, sample: Path = SAMPLE) -> np.ndarray:
    """Case a/b: (L, H, W, 3) uint8; case c: (B, L, H, W, 3) uint8."""
    clips = np.stack([np.stack([crop.frame(sample, t) for t in crop.frames]) for crop in CASES[case]])
    return clips[0] if case != "c" else clips


def frames_digest(frames: np.ndarray) -> str:
    """SHA-256 of a uint8 frame array's shape and bytes."""
    return hashlib.sha256(f"{frames.shape}|".encode() + np.ascontiguousarray(frames).tobytes()).hexdigest()


# ----------------------------------------------------------------------------------------------------------------------
# 3. The stored cases
# ----------------------------------------------------------------------------------------------------------------------


def load_cases(outputs: Path = OUTPUTS, sample: Path = SAMPLE) -> dict[str, np.ndarray]:
    """The three cases in one dict: `{case}_imgs` (cut from sample/), the given masks (`a_first_mask`,
    `b_first_mask`, `b_frame2_mask`, `c_first_masks`) and the official outputs (`a_masks_out`, `b_masks_out`: hard
    masks of every frame; `c_scores_out`: float64 logits of frames 1..3). Raises ValueError when the frames cut from
    the sample are not the ones the outputs were computed on."""
    with np.load(outputs) as stored:
        cases = {k: stored[k] for k in stored.files if not k.endswith("_sha256")}
        digests = {k: str(stored[k]) for k in stored.files if k.endswith("_sha256")}
    for case in CASES:
        frames = case_frames(case, sample)
        if frames_digest(frames) != digests[f"{case}_imgs_sha256"]:
            raise ValueError(
                f"golden case {case}: the frames cut from {sample} are not those {outputs} was computed on (their "
                "SHA-256 differs): the sample's JPEGs were changed, or this Pillow decodes JPEG to other pixels; "
                "restore sample/ from git, or regenerate tests/golden/ with tools/make_golden.py")
        cases[f"{case}_imgs"] = frames
    return cases


def expected_weights_digest(outputs: Path = OUTPUTS) -> str:
    """The fingerprint of the weights the stored outputs were computed with."""
    with np.load(outputs) as stored:
        return str(stored["weights_sha256"])


# ----------------------------------------------------------------------------------------------------------------------
# 4. A self-contained golden folder
# ----------------------------------------------------------------------------------------------------------------------


def _write_if_changed(path: Path, data: bytes) -> None:
    """Write data to path through a temporary file and an atomic rename, unless the file already holds it: suites
    running side by side then read either the old file or the new one, never half of one."""
    if path.is_file() and path.stat().st_size == len(data) and path.read_bytes() == data:
        return
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # one per process: no two writers share it
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def materialize(dest: Path, outputs: Path = OUTPUTS, sample: Path = SAMPLE, layout: Path = LAYOUT,
                overwrite: bool = True) -> Path:
    """Write dest/emvos_official.pth (the golden weights, a plain state dict in the official layout) and
    dest/cases.npz (load_cases' arrays); returns dest. Raises ValueError when the generated weights are not those
    the stored outputs were computed with (the generator or the layout changed without regenerating the outputs);
    with overwrite=False, FileExistsError when either file exists with other contents."""
    state = golden_state_dict(layout)
    digest, expected = weights_digest(state), expected_weights_digest(outputs)
    if digest != expected:
        raise ValueError(f"the golden weights generated from {layout} have SHA-256 {digest}, but {outputs} was "
                         f"computed with {expected}; regenerate tests/golden/ with tools/make_golden.py")
    cases = load_cases(outputs, sample)
    dest.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    torch.save(state, buf)
    weights = buf.getvalue()
    buf = io.BytesIO()
    np.savez(buf, **cases)
    for path in (dest / WEIGHTS_NAME, dest / CASES_NAME):  # both checked before either is written
        if not overwrite and path.exists() and path.read_bytes() != (weights if path.name == WEIGHTS_NAME else
                                                                     buf.getvalue()):
            raise FileExistsError(f"{path} exists and is not the golden file; choose another folder, or move it "
                                  f"away")
    _write_if_changed(dest / WEIGHTS_NAME, weights)
    _write_if_changed(dest / CASES_NAME, buf.getvalue())
    return dest


def main(argv: list[str] | None = None) -> int:
    """`python tools/golden.py [DEST]`: the golden weights and cases into DEST (default tests/golden/build/); a file
    of those names that holds anything else is never overwritten (exit 2)."""
    sys.path.insert(0, str(ROOT))  # a script in tools/: the modules live one folder up
    from core.flags import OneLineParser

    p = OneLineParser(prog="tools/golden.py", description="Write the golden weights (emvos_official.pth, a plain state "
                      "dict in the authors' layout) and the golden cases (cases.npz) into DEST.")
    p.add_argument("dest", nargs="?", type=Path, default=GOLDEN_DIR / "build", metavar="DEST",
                   help="a folder (created if missing; default tests/golden/build)")
    args = p.parse_args(argv)
    if args.dest.exists() and not args.dest.is_dir():
        p.error(f"DEST {args.dest} is a file; pass a folder")
    try:
        folder = materialize(args.dest, overwrite=False)
    except (FileExistsError, ValueError) as e:
        print(f"tools/golden.py: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {folder / WEIGHTS_NAME} and {folder / CASES_NAME}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
