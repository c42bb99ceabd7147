"""Every `--flag` that an error message or the README tells a user to pass exists on the command line it is meant
for: run.py's, unless the text names evaluation.py or bench.py before it (or the message is raised in one of them).

A message naming a flag that no parser defines sends the user to an argparse error instead of the fix; it happens
when a flag is renamed (`--year` became `--davis-year` on run.py) and the messages far from the parser are not.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import evaluation
import run
from tools import bench

ROOT = Path(__file__).resolve().parents[1]
ERRORS = {"VOSInputError", "EvaluationError", "TrainingError"}
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9_]*(?:-[a-z0-9_]+)*")
# torchrun's, in the README's multi-GPU command; SAM2's vos_inference.py option that writes SA-V's per-object PNGs
# tensorboard's --logdir (the training curves), SLURM's --signal (sbatch's, for preemption)
# git's --stat (git diff --stat, regenerating the golden files); XMem's eval.py --size (the TTA comparison)
OTHER_TOOLS = {"--nproc_per_node", "--per_obj_png_file", "--logdir", "--signal", "--stat", "--size"}
# packages whose messages speak to the users of two scripts: a benchmark module's layout is opened by run.py --test
# (its root flag), its scorer by evaluation.py --benchmark (--gt, its options); a flag there is one of either
BOTH = "run.py or evaluation.py"
LIBRARY_OF = {"benchmarks": BOTH}


SCRIPTS = ("run.py", "evaluation.py", "bench.py", "tools/cuda_check.py", "tools/make_golden.py", "export.py",
           "onnx_runner.py", "tools/inference_speed.py", "tools/golden.py", "tools/vs_official.py")
AST_SCRIPTS = SCRIPTS[3:]  # their flags read from the source's add_argument calls


def defined_flags() -> dict[str, set[str]]:
    """{script: its option strings}: run.py's, evaluation.py's and bench.py's parsers built (so that generated flags
    count), every `add_argument` of tools/cuda_check.py and tools/make_golden.py read from the source, with the
    `--no-X` of BooleanOptionalAction flags."""
    flags = {"run.py": set(run.build_parser()._option_string_actions),
             "evaluation.py": set(evaluation.build_parser()._option_string_actions),
             "bench.py": set(bench.build_parser()._option_string_actions)}
    flags[BOTH] = flags["run.py"] | flags["evaluation.py"]
    for name in AST_SCRIPTS:
        flags[name] = set()
        for node in ast.walk(ast.parse((ROOT / name).read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "add_argument":
                names = [a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
                flags[name].update(names)
                if any(k.arg == "action" and "BooleanOptional" in ast.unparse(k.value) for k in node.keywords):
                    flags[name].update("--no-" + n[2:] for n in names if n.startswith("--"))
    return flags


def named_flags(text: str, where: str, default: str, row: bool = False) -> list[tuple[str, str, str]]:
    """(where, script, flag) for each flag in text; its script is the last one the text names before it
    ('evaluation.py --year 2016'), in a table row else the first one named after it ('(`--profile`) | `bench.py`'),
    else `default`."""
    found = []
    for match in FLAG.finditer(text):
        if match.group() in OTHER_TOOLS:
            continue
        before, after = text[: match.start()], text[match.end():]
        before = before.replace("tools/gpu_check.sh", "tools/cuda_check.py")  # the wrapper passes its flags on
        script = max(SCRIPTS, key=before.rfind)
        if before.rfind(script) < 0:
            named = [s for s in SCRIPTS if s in after] if row else []
            script = min(named, key=after.find) if named else default
        found.append((where, script, match.group()))
    return found


def _strings(node: ast.AST) -> list[str]:
    """The literal text of every string constant and f-string part under node."""
    return [n.value for n in ast.walk(node) if isinstance(n, ast.Constant) and isinstance(n.value, str)]


def message_flags() -> list[tuple[str, str, str]]:
    """(where, script, flag) for every flag in the arguments of `raise <one of ERRORS>(...)` in the repository's
    top-level modules and those of LIBRARY_OF's packages. A flag with no script named before it is one of the script
    that raises it, of either script for a package of LIBRARY_OF, and of run.py for every other module (run.py is
    what reaches them)."""
    found = []
    for path in sorted(ROOT.glob("*.py")) + sorted(p for d in LIBRARY_OF for p in (ROOT / d).glob("*.py")):
        folder = path.parent.name if path.parent != ROOT else None
        default = path.name if path.name in SCRIPTS else LIBRARY_OF.get(folder, "run.py")
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call)):
                continue
            func = node.exc.func
            if (func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)) not in ERRORS:
                continue
            for text in _strings(node.exc):
                found += named_flags(text, f"{path.name}:{node.lineno}", default)
    return found


DOCS = ["README.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md"))]


def readme_flags() -> list[tuple[str, str, str]]:
    """(where, script, flag) for every flag in README.md and docs/*.md, read per table row and per paragraph or code
    block (a command wraps over lines); a flag with no script named in its row or paragraph is run.py's."""
    found = []
    for doc in DOCS:
        chunk, start = [], 1
        lines = (ROOT / doc).read_text().splitlines() + [""]
        for n, line in enumerate(lines, 1):
            if line.lstrip().startswith("|"):
                found += named_flags(line, f"{doc}:{n}", "run.py", row=True)
                line = ""
            if line.strip() and not line.lstrip().startswith("```"):
                start = start if chunk else n
                chunk.append(line)
            elif chunk:
                found += named_flags("\n".join(chunk), f"{doc}:{start}", "run.py")
                chunk = []
    return found


def test_the_scanners_see_flags() -> None:
    """Fails if a scanner finds nothing (a broken regex or AST walk would make the real test pass vacuously)."""
    messages, readme, defined = message_flags(), readme_flags(), defined_flags()
    assert ("davis.py", BOTH, "--davis") in {(w.split(":")[0], s, f) for w, s, f in messages}
    assert ("davis.py", "evaluation.py", "--year") in {(w.split(":")[0], s, f) for w, s, f in messages}
    assert len(messages) > 20 and len(readme) > 10
    assert "docs/training.md" in DOCS and {w.split(":")[0] for w, _, _ in readme} >= {"README.md", "docs/errors.md"}
    assert ("run.py", "--test") in {(s, f) for _, s, f in readme}
    assert ("evaluation.py", "--year") in {(s, f) for _, s, f in readme}
    assert "--nproc_per_node" in (ROOT / "README.md").read_text()  # else OTHER_TOOLS is stale: drop it
    assert {"--davis-year", "--no-channels-last", "--clip-len"} <= defined["run.py"]
    assert "--year" in defined["evaluation.py"] and "--year" not in defined["run.py"]
    assert {"--quick", "--no-channels-last"} <= defined["bench.py"]
    assert [s for _, s, _ in named_flags("--davis-year 2016, evaluation.py --year; --x", "", "run.py")] == [
        "run.py", "evaluation.py", "evaluation.py"]
    assert [s for _, s, _ in named_flags("| (`--profile`) | `bench.py` |", "", "run.py", row=True)] == ["bench.py"]
    assert FLAG.findall("pass --davis-year 2016, not -x or a--b; `--max-memory 4G`") == ["--davis-year", "--max-memory"]


@pytest.mark.parametrize("source", [message_flags, readme_flags], ids=["error messages", "README"])
def test_every_flag_named_exists(source) -> None:
    """Fails if an error message or the README names a flag that its script does not define, e.g. `--year` or
    `--split` (evaluation.py's) told to a run.py user, whose flags are --data and --davis-year."""
    defined = defined_flags()
    missing = sorted({f"{where} {script} {flag}" for where, script, flag in source() if flag not in defined[script]})
    assert not missing, "flags named but defined nowhere:\n" + "\n".join(missing)


def test_root_messages_name_the_flag_that_fills_that_root(tmp_path: Path) -> None:
    """The messages about a missing root name its flag from the dataset.Roots field it reads (methods.StageData.root,
    benchmarks.registry.open_layout), which the static scan above cannot see. Bugs: a field renamed apart from its
    flag (the message then tells a flag that does not exist, e.g. --ytvos18), a flag that run.roots puts into another
    field than the one its message is about, or --ytvos not reaching YouTube-VOS 2019."""
    import dataset
    from benchmarks import registry
    from core import methods
    from utils import VOSInputError

    parser = run.build_parser()
    for spec in methods.METHODS.values():
        for stage in spec.stages.values():
            flag, given = f"--{stage.data.root}", str(tmp_path / stage.data.root)
            assert flag in parser._option_string_actions, (spec.name, stage.name, flag)
            roots = run.roots(parser.parse_args(["--train", flag, given]))
            assert str(roots.get(stage.data.root)) == given
    for key in registry.data_keys():
        with pytest.raises(VOSInputError) as missing:
            registry.open_layout(key, dataset.Roots())
        found = re.search(r"needs (--\w+) ROOT", str(missing.value))
        if key == "sample":  # no flag: run.py sets the bundled folder itself
            assert found is None and "Roots.sample" in str(missing.value)
            continue
        assert found is not None and found.group(1) in parser._option_string_actions, str(missing.value)
        given = str(tmp_path / f"given_{key}")
        with pytest.raises(VOSInputError, match=re.escape(given)):  # the layout opened the folder the flag gave
            registry.open_layout(key, run.roots(parser.parse_args(["--test", found.group(1), given])))
