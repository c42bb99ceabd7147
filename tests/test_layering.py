"""A core without argparse: the libraries take dataclasses (inference.TestOptions, trainer.TrainOptions) and raise
exceptions; only the entry points read flags and turn errors into exit codes; segmenting a video or training loads
neither the command line nor the reports and figures. The import graph is read from the source (conftest's
`import_graph`, every import in a file, a function's own imports included)."""

from __future__ import annotations

import argparse
import ast
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from conftest import closure, import_graph, repo_modules
from torch import Tensor

import run
from core import inference, segmenter
from core.framework import Runtime, VOSModel

# what a user runs (each reads its own flags), and the module that builds their parsers
ENTRY_POINTS = {"run", "evaluation", "export", "onnx_runner"}
COMMAND_LINE = "core.flags"


def is_entry_point(module: str) -> bool:
    return module in ENTRY_POINTS or module.startswith("tools.")


def imports_argparse(path: Path) -> bool:
    tree = ast.parse(path.read_text())
    return any((isinstance(n, ast.Import) and any(a.name == "argparse" for a in n.names))
               or (isinstance(n, ast.ImportFrom) and n.module == "argparse") for n in ast.walk(tree))


@pytest.mark.parametrize("start", ["core.segmenter", "training.trainer"])
def test_segmenting_and_training_load_no_command_line_and_no_reports(start: str) -> None:
    """Bug: the segmenter or the training loop importing (however deep, even inside a function) a module that
    imports argparse, or the reports and figures (reports/report.py, reports/visualize.py), as the old inference.py
    did (12 modules of the repository, report and visualize among them) and the trainer through it."""
    graph, mods = import_graph(), repo_modules()
    reached = closure(start, graph)
    assert sorted(m for m in reached if imports_argparse(mods[m])) == []
    assert sorted(m for m in reached if m.startswith("reports")) == []
    assert start == "training.trainer" or "core.inference" not in reached  # the --test driver is not the segmenter


def test_only_entry_points_read_flags() -> None:
    """Bug: a library module that imports argparse, builds a parser (report.compare_main did) or imports the
    entry points' command-line module (core/flags.py), so that help texts and flag parsing live in the library."""
    graph, mods = import_graph(), repo_modules()
    assert sorted(m for m, p in mods.items() if imports_argparse(p)
                  and not is_entry_point(m) and m != COMMAND_LINE) == []
    assert sorted(m for m, deps in graph.items() if COMMAND_LINE in deps and not is_entry_point(m)) == []


def library_sources() -> dict[str, ast.Module]:
    return {m: ast.parse(p.read_text()) for m, p in repo_modules().items()
            if not is_entry_point(m) and m != COMMAND_LINE}


def test_no_library_takes_a_namespace_or_decides_an_exit_code() -> None:
    """Bug: a library function annotated with argparse.Namespace (five of inference.py's were), or one that ends the
    process (sys.exit, exit, os._exit, raise SystemExit, a SystemExit subclass as trainer.TrainingInterrupted was)
    instead of raising an exception the entry point turns into an exit status."""
    found = []
    for module, tree in library_sources().items():
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr == "Namespace":
                found.append(f"{module}:{node.lineno} Namespace")
            elif isinstance(node, ast.Name) and node.id in ("SystemExit", "exit", "quit"):
                found.append(f"{module}:{node.lineno} {node.id}")
            elif isinstance(node, ast.Attribute) and node.attr in ("exit", "_exit") and \
                    isinstance(node.value, ast.Name) and node.value.id in ("sys", "os"):
                found.append(f"{module}:{node.lineno} {node.value.id}.{node.attr}")
    assert found == []


@pytest.mark.parametrize("module", ["core/segmenter.py", "core/inference.py"])
def test_the_driver_and_the_segmenter_probe_nothing(module: str) -> None:
    """Bug: probing a model (or flags) for an attribute by name, getattr(model, "remove_object", None) or
    getattr(args, "command", None), instead of calling what the Protocol (or the options dataclass) declares."""
    tree = ast.parse((Path(__file__).resolve().parents[1] / module).read_text())
    probes = [n.lineno for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)
              and (n.func.id == "hasattr" or (n.func.id == "getattr" and len(n.args) > 1
                                               and isinstance(n.args[1], ast.Constant)))]
    assert probes == []


class Copy(nn.Module, VOSModel):
    """A method that implements neither remove_object nor frame_bytes: each frame repeats the first mask."""

    stride = 1

    def __init__(self) -> None:
        super().__init__()
        self.config = None
        self.scale = nn.Parameter(torch.ones(()))

    def encode(self, img: Tensor) -> Tensor:
        return img

    def init_state(self, feats: Tensor, masks: Tensor) -> list[Tensor]:
        return [masks]

    def add_objects(self, state: list[Tensor], feats: Tensor, masks: Tensor) -> None:
        state[0] = torch.cat([state[0], masks], dim=1)

    def predict(self, feats: Tensor, state: list[Tensor], runtime: Runtime | None = None) -> Tensor:
        return (state[0] * 2 - 1) * 10 * self.scale  # logits whose softmax is the first mask

    def update(self, state: list[Tensor], feats: Tensor, probs: Tensor) -> None:
        pass


def test_protocol_defaults_refuse_remove_and_estimate_nothing() -> None:
    """Bug: a method without remove_object failing with an AttributeError from deep inside (or silently keeping the
    object), or one without a memory estimate refused or crashing in the driver's memory check; the Protocol's
    defaults raise NotImplementedError naming the class, and estimate 0 bytes, which no budget refuses."""
    model = Copy()
    assert isinstance(model, VOSModel) and model.frame_bytes(4000, 3000, 4) == 0
    seg = segmenter.VideoSegmenter(model, runtime=Runtime(memory_budget=1))
    first = torch.zeros(4, 5, dtype=torch.long)
    first[:2], first[2:] = 1, 2
    seg.step(torch.rand(3, 4, 5), first)
    labels, _ = seg.step(torch.rand(3, 4, 5))
    assert torch.equal(labels, first)
    with pytest.raises(NotImplementedError, match="Copy does not implement remove_object"):
        seg.remove_object(2)


def test_run_builds_test_options_and_never_changes_its_flags(monkeypatch: pytest.MonkeyPatch,
                                                              tmp_path: Path) -> None:
    """Bug: run.py changing the parsed flags (args.method defaulted to emvos with an args.method_given beside it,
    args.data, args.vis_frame, args.command set after parsing) so that the library read values no flag gave; or
    TestOptions missing a flag (the method given, the model flags, the command line for the report)."""
    seen: dict = {}

    def capture(options: inference.TestOptions, roots: object) -> list:
        seen["options"] = options
        return []

    mode = run._run_mode

    def watched(args: argparse.Namespace, command: str | None) -> None:
        before = dict(vars(args))
        mode(args, command)
        seen["changed"] = {k: (v, vars(args)[k]) for k, v in before.items() if vars(args)[k] != v}

    monkeypatch.setattr(inference, "segment_benchmarks", capture)
    monkeypatch.setattr(run, "_run_mode", watched)
    argv = ["--test", "--device", "cpu", "--output", str(tmp_path / "out"), "--davis", str(tmp_path / "none"),
            "--data", "DAVIS17_val", "--topk", "3", "--max-memory", "1G", "--no-report"]
    assert run.main(argv) == 0
    assert seen["changed"] == {}
    options = seen["options"]
    assert options.method is None and options.model == {"topk": 3} and options.data == ["DAVIS17_val"]
    assert options.vis_frame == 1 and options.max_memory == 2**30 and not options.report
    assert options.output == tmp_path / "out" and options.command.startswith("run.py --test --device cpu")
    assert run.main([*argv, "--method", "videomatch"]) == 0
    assert seen["options"].method == "videomatch" and seen["changed"] == {}
