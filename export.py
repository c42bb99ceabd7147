"""Export EMVOS's per-frame step to ONNX: `python export.py --weights W --output model.onnx`.

EMVOS's state has a fixed size (paper Sec. 3.1: each frame is matched against the objects' first frame and the
previous frame), so one frame's step is one graph with the state as explicit inputs and outputs:

- `model.onnx`, the step. Inputs: `image` (1, 3, H, W), the frame at the run size, normalised with the mean and
  standard deviation that the checkpoint holds (ImageNet's in the official one; the graph's metadata `emvos.mean`,
  `emvos.std` give them) and reflect-padded to multiples of 16; the reference frames' keys `ref_nk`, `ref_k`
  (R, C, HW) (R: the frames at which objects were given, 1 unless objects appear later); `ref_index` (N,) int64,
  each object's reference frame; `ref_mask16` (N, 2, HW), each object's given [bg, fg] mask average-pooled to
  stride 16; the previous frame's keys `prev_nk`, `prev_k` (C, HW) and soft masks `prev_mask16` (N, 2, HW).
  Outputs: `logits` (N, 2, H, W) [bg, fg] of every object, and this frame's keys `nk`, `k` (C, HW), the next
  frame's `prev_nk`, `prev_k` (and the reference keys of objects given at this frame). H, W, N, R and HW are
  dynamic.
- `model.encode.onnx` (the output's stem + `.encode.onnx`), the first frame's encoding: `image` -> `nk`, `k`. It is
  the step graph's own sub-graph from `image` to its keys (onnx.utils.extract_model), so the two agree by
  construction.

What stays outside the graphs, in numpy: the official size rule, the ImageNet normalisation, the stride padding,
pooling the masks to stride 16 and the soft aggregation of the objects (onnx_runner.py, which `run.py --test --onnx`
runs). Keys are NCHW flattened: HW = (H / 16) * (W / 16), row-major.

Differences from the PyTorch step, all summation order: the key products are one batched matrix product (PyTorch runs
them as a 1x1 convolution, matching.key_products), and the readout is not tiled. The decoder is `Decoder.forward`,
the paper's computation (no split, no col2im: the TorchScript exporter has no col2im with a dynamic size, and the
unsplit decoder exports with the dynamo exporter as it is).

VideoMatch is not exported (see `export_step`'s refusal). Needs onnx, onnxscript and onnxruntime (requirements.txt).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn as nn
from torch import Tensor

import model as emvos
from core import methods
from core.flags import OneLineParser
from utils import VOSInputError

OPSET = 18
INPUTS = ("image", "ref_nk", "ref_k", "ref_index", "ref_mask16", "prev_nk", "prev_k", "prev_mask16")
OUTPUTS = ("logits", "nk", "k")
EXPORTED_BRANCHES = ("surjective", "equalized")


class EMVOSStep(nn.Module):
    """One frame of EMVOS with the state as tensors (shapes in the module docstring); the network's own modules."""

    def __init__(self, net: emvos.EMVOS):
        super().__init__()
        self.net = net
        # no tiling and no split decoder: the whole frame at once, the paper's decoder (module docstring)
        self.runtime = emvos.EMVOSRuntime(memory_budget=None, decoder_batch=None, split_decoder=False)

    def encode(self, image: Tensor) -> emvos.FrameFeatures:
        """The encoder without its normalisation (the runner normalises, as the official preprocessing does)."""
        enc, x, taps = self.net.encoder, image, []
        for name in enc.layers:
            x = getattr(enc, name)(x)
            if name in enc.taps:
                taps.append(x)
        f4, f8, f16 = taps
        return emvos.FrameFeatures(f4, f8, f16, self.net.matcher(f16), (f16.shape[-2], f16.shape[-1]))

    def forward(self, image: Tensor, ref_nk: Tensor, ref_k: Tensor, ref_index: Tensor, ref_mask16: Tensor,
                prev_nk: Tensor, prev_k: Tensor, prev_mask16: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        feats = self.encode(image)
        nk, k = feats.keys.nk, feats.keys.k  # (1, C, HW_q)

        def similarity(branch: str, ref_n: Tensor, ref_raw: Tensor) -> Tensor:  # (R, C, HW_r) -> (R, HW_r, HW_q)
            if branch == "equalized":  # matching.equalized_similarity
                return torch.softmax(torch.matmul(ref_raw.transpose(1, 2), k), dim=2)
            return (torch.matmul(ref_n.transpose(1, 2), nk) + 1) / 2  # matching.surjective_similarity

        channels = []
        for branch in self.net.config.branches:  # the official channel order: global bg, fg, local bg, fg
            glob = similarity(branch, ref_nk, ref_k)[ref_index]  # (N, HW_r, HW_q): each object's reference
            local = similarity(branch, prev_nk[None], prev_k[None])  # (1, HW, HW_q)
            channels += [(glob[:, None] * ref_mask16[..., None]).amax(dim=2),  # matching.max_readout: (N, 2, HW_q)
                         (local[:, None] * prev_mask16[..., None]).amax(dim=2)]
        scores = torch.cat(channels, dim=1).unflatten(2, feats.size16)[None]  # (1, N, 8, h, w)
        state = emvos.VideoState([], feats.keys, prev_mask16[None])  # decode reads prev_mask16 alone
        logits = self.net.decode(feats, scores, state, self.runtime)[0]  # (N, 2, H, W)
        return logits, nk[0], k[0]


def example_inputs(net: emvos.EMVOS) -> tuple[Tensor, ...]:
    """Inputs to trace with: 2 references, 3 objects and sizes that differ from each other, so that no dynamic size
    is specialised to a constant (torch.export fixes a size of 0 or 1, and equal sizes may be taken as one)."""
    h16, w16, c, n = 3, 5, net.config.key_dim, 3
    hw = h16 * w16
    g = torch.Generator().manual_seed(0)
    nk = nn.functional.normalize(torch.randn(2, c, hw, generator=g), dim=1)
    masks = torch.rand(n, 2, hw, generator=g)
    return (torch.randn(1, 3, 16 * h16, 16 * w16, generator=g), nk, torch.randn(2, c, hw, generator=g),
            torch.tensor([0, 1, 0]), masks, nk[0], torch.randn(c, hw, generator=g), masks.flip(0))


def dynamic_shapes() -> dict[str, dict[int, object]]:
    dim = torch.export.Dim
    h16, w16, r, n, hw = dim("H16", min=1), dim("W16", min=1), dim("R", min=1), dim("N", min=1), dim.AUTO
    return {"image": {2: 16 * h16, 3: 16 * w16}, "ref_nk": {0: r, 2: hw}, "ref_k": {0: r, 2: hw}, "ref_index": {0: n},
            "ref_mask16": {0: n, 2: hw}, "prev_nk": {1: hw}, "prev_k": {1: hw}, "prev_mask16": {0: n, 2: hw}}


def encode_path(output: Path) -> Path:
    """Where the first frame's encoding goes beside the step: model.onnx -> model.encode.onnx."""
    return output.with_name(output.stem + ".encode.onnx")


def check_paths(weights: Path, output: Path, force: bool) -> None:
    """Bad input, before any work: one line naming the flag and the fix."""
    if not weights.is_file():
        raise VOSInputError(f"--weights {weights} does not exist; pass a checkpoint file (.pth)")
    if output.suffix != ".onnx":
        raise VOSInputError(f"--output {output} must end in .onnx (its encoder goes beside it as "
                            f"{encode_path(output).name})")
    if not output.parent.is_dir():
        raise VOSInputError(f"--output {output}: folder {output.parent} does not exist; create it or pass another path")
    existing = [p for p in (output, encode_path(output)) if p.exists()]
    if existing and not force:
        raise VOSInputError(f"--output {output}: {' and '.join(map(str, existing))} already "
                            f"{'exist' if len(existing) > 1 else 'exists'}; pass --force to overwrite, or another path")


def export_step(net: nn.Module, method: str, output: Path, opset: int = OPSET) -> tuple[Path, Path]:
    """Write the step graph to output and the encoding graph beside it (encode_path); returns both paths."""
    if method != "emvos":
        # its soft matching layer (matching.topk_mean_scores) loops over the reference sets in Python and takes
        # min(K, HW_r) of the sizes, so a traced graph would fix the number of objects and the frame size
        raise VOSInputError(f"--weights holds a {method} model; only EMVOS's step is exported (VideoMatch's matching "
                            f"loops over its objects in Python, which a graph with a dynamic object count cannot "
                            f"trace)")
    unsupported = [b for b in net.config.branches if b not in EXPORTED_BRANCHES]
    if unsupported:
        raise VOSInputError(f"--weights uses the {', '.join(unsupported)} branch; the export implements "
                            f"{' and '.join(EXPORTED_BRANCHES)} (the official model's)")
    import onnx  # here: only the export needs it

    step = EMVOSStep(net.float().eval()).eval()
    with torch.no_grad():
        program = torch.onnx.export(step, example_inputs(net), input_names=list(INPUTS), output_names=list(OUTPUTS),
                                    dynamic_shapes=dynamic_shapes(), opset_version=opset, dynamo=True,
                                    external_data=False, verbose=False)
    graph = program.model_proto
    _name_sizes(graph)
    # The normalisation is the checkpoint's (model.Encoder's mean / std buffers are saved in it; the official file
    # holds ImageNet's): the runner reads them from here. repr of a float32's value reads back to the same float32.
    for name in ("mean", "std"):
        values = getattr(net.encoder, name).flatten().tolist()
        graph.metadata_props.add(key=f"emvos.{name}", value=",".join(repr(v) for v in values))
    tmp = output.with_name(f".{output.name}.tmp")
    onnx.save(graph, tmp)
    enc_tmp = output.with_name(f".{encode_path(output).name}.tmp")
    onnx.utils.extract_model(str(tmp), str(enc_tmp), ["image"], ["nk", "k"])
    tmp.replace(output)  # renamed once whole: a failed export leaves no half file under the output's name
    enc_tmp.replace(encode_path(output))
    return output, encode_path(output)


def _name_sizes(graph: object) -> None:
    """Name the inputs' and outputs' dynamic sizes that torch.export leaves as symbols (s24, ...): HW for the
    previous and this frame's positions, HW_r for the references'."""
    names = {"ref_nk": {2: "HW_r"}, "ref_k": {2: "HW_r"}, "ref_mask16": {2: "HW_r"}, "prev_nk": {1: "HW"},
             "prev_k": {1: "HW"}, "prev_mask16": {2: "HW"}, "nk": {1: "HW"}, "k": {1: "HW"},
             "image": {2: "H", 3: "W"}, "logits": {2: "H", 3: "W"}}
    for value in (*graph.graph.input, *graph.graph.output):
        for axis, name in names.get(value.name, {}).items():
            value.type.tensor_type.shape.dim[axis].dim_param = name


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="export.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", required=True, help="an EMVOS checkpoint (official or written by run.py --train)")
    p.add_argument("--output", required=True, type=Path,
                   help="the step graph, e.g. model.onnx; the first frame's encoding goes beside it as "
                        "model.encode.onnx")
    p.add_argument("--force", action="store_true", help="overwrite the output files if they exist")
    p.add_argument("--opset", type=int, default=OPSET, help=f"ONNX opset (default {OPSET})")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        check_paths(Path(args.weights), args.output, args.force)
        net, meta = methods.load_weights(args.weights, "--weights")
        step, enc = export_step(net, meta["method"], args.output, args.opset)
    except VOSInputError as e:
        print(f"export.py: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {step} (per-frame step) and {enc} (first frame's encoding)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
