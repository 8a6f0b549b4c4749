"""The command line only parses, calls the library and prints (issue 27): no `vinvl.cli` module imports torch but
where listed below with the reason, and the detector commands build no model, config or run options themselves
(no Detector, AttrRCNN, ExtractOptions, ... constructed in cli/). Checked on the source's syntax tree, so every
import and call counts, function-local ones included."""

from __future__ import annotations

import ast
from pathlib import Path

CLI = Path(__file__).resolve().parents[2] / "src" / "vinvl" / "cli"

# (module, function) -> why it imports torch. Type hints under `if TYPE_CHECKING:` need no entry.
TORCH_ALLOWED = {
    ("detector.py", "train"): "--threads sets torch's CPU thread count for the training engine (its part of the command)",
}
# Model and data logic: building these is the library's job (Detector.from_pretrained, plan_extraction, ...).
BUILDERS = {"Detector", "AttrRCNN", "ExtractOptions", "DetectorConfig", "LabelMap", "DetectionDataset", "build_parts",
            "load_model", "Numerics"}
# ... and assembling what to run: the library's plan_extraction / resolve_pretrained / evaluate_weights do it.
ASSEMBLY = {"detector_preset", "apply_set_options", "load_original", "resolve_detector", "default_detector",
            "resolve_pretrained", "collect_inputs", "match_given_boxes", "dataset_label_boxes", "make_key_rule", "choose",
            "file_sha256", "extract", "evaluate"}
# The detector commands this applies to, and the functions that are theirs (`vinvl detector train` hands the preset's
# name and the --set strings to vinvl.detection.train.train, which assembles the detector).
THIN = {"extract.py": None, "caption.py": None, "detector.py": {"train", "evaluate"}}


def _functions(tree: ast.AST) -> dict[ast.AST, str]:
    """Every node -> the name of the top-level function it lies in ("" at module level)."""
    owner: dict[ast.AST, str] = {}
    for top in getattr(tree, "body", []):
        name = top.name if isinstance(top, (ast.FunctionDef, ast.AsyncFunctionDef)) else ""
        for node in ast.walk(top):
            owner[node] = name
    return owner


def _type_checking_nodes(tree: ast.AST) -> set[ast.AST]:
    out: set[ast.AST] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            out |= {n for stmt in node.body for n in ast.walk(stmt)}
    return out


def torch_imports(source: str, module: str) -> list[str]:
    """``module:line in function`` for each import of torch not listed in :data:`TORCH_ALLOWED`."""
    tree = ast.parse(source)
    owner, hints = _functions(tree), _type_checking_nodes(tree)
    found = []
    for node in ast.walk(tree):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
            [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
        if any(n == "torch" or n.startswith("torch.") for n in names) and node not in hints \
                and (module, owner.get(node, "")) not in TORCH_ALLOWED:
            found.append((node.lineno, f"{module}:{node.lineno} in {owner.get(node) or 'module'}"))
    return [text for _, text in sorted(found)]


def model_logic(source: str, module: str, functions: set[str] | None = None) -> list[str]:
    """``module:line name`` for each call of a builder or an assembly function (in ``functions`` only, if given)."""
    tree = ast.parse(source)
    owner = _functions(tree)
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or (functions is not None and owner.get(node) not in functions):
            continue
        f = node.func
        while isinstance(f, ast.Attribute) and not (isinstance(f.value, ast.Name) and f.value.id in BUILDERS):
            f = f.value  # a.b.c(...): the name it starts from decides, unless a builder's method is called
        name = f.value.id if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
        attr = node.func.attr if isinstance(node.func, ast.Attribute) else ""
        if name in BUILDERS or (name in ASSEMBLY and not attr):
            found.append((node.lineno, node.col_offset, f"{module}:{node.lineno} {ast.unparse(node.func)}"))
    return [text for *_, text in sorted(found)]


def test_no_cli_module_imports_torch_but_where_listed() -> None:
    modules = sorted(CLI.glob("*.py"))
    assert len(modules) > 10 and (CLI / "extract.py") in modules
    found = [hit for m in modules for hit in torch_imports(m.read_text(encoding="utf-8"), m.name)]
    assert found == [], f"cli/ imports torch (do it in the library, or list the reason in TORCH_ALLOWED): {found}"
    for module, function in TORCH_ALLOWED:  # an entry that no longer applies goes
        tree = ast.parse((CLI / module).read_text(encoding="utf-8"))
        assert any(isinstance(n, ast.FunctionDef) and n.name == function and "torch" in ast.unparse(n)
                   for n in ast.walk(tree)), (module, function)


def test_the_detector_commands_build_no_model_and_assemble_no_run() -> None:
    found = [hit for module, functions in THIN.items()
             for hit in model_logic((CLI / module).read_text(encoding="utf-8"), module, functions)]
    assert found == [], f"cli/ does the library's work: {found}"


def test_extract_is_the_two_library_calls() -> None:
    """`vinvl extract` is what a script does in two calls: plan_extraction (torch-free), run_extraction."""
    tree = ast.parse((CLI / "extract.py").read_text(encoding="utf-8"))
    called = {ast.unparse(n.func) for n in ast.walk(tree) if isinstance(n, ast.Call)}
    assert {"plan_extraction", "run_extraction"} <= called


def test_the_checks_find_what_they_look_for() -> None:
    """The checkers can fail: each kind of breach in a made-up command module is reported."""
    source = '''
import torch
from typing import TYPE_CHECKING
if TYPE_CHECKING:
    from torch import device
def run(x):
    from torch.nn import Module
    det = Detector.from_checkpoint(x, preset=detector_preset("tiny"))
    opts = ExtractOptions(subset=("rect",))
    cfg = apply_set_options(cfg, [])
    return vinvl.extract.run.extract(x)  # a method of a module: the library's own name, called through it
'''
    assert torch_imports(source, "made_up.py") == ["made_up.py:2 in module", "made_up.py:7 in run"]
    assert model_logic(source, "made_up.py") == [
        "made_up.py:8 Detector.from_checkpoint", "made_up.py:8 detector_preset", "made_up.py:9 ExtractOptions",
        "made_up.py:10 apply_set_options"]
    assert model_logic(source, "made_up.py", {"other"}) == []


def test_device_and_dtype_are_declared_once_for_the_detector_commands() -> None:
    """--device: one grammar, one default (auto: CUDA when present) in extract, caption, detector train|eval;
    --dtype: the library's vocabulary (vinvl.config.DTYPE_CHOICES), fp32 by default."""
    import pytest
    import typer
    import typer.main

    from vinvl.cli import app
    from vinvl.cli.options import DEVICE_POLICY
    from vinvl.config import DTYPE_CHOICES

    root = typer.main.get_command(app)
    paths = [("extract",), ("caption",), ("detector", "train"), ("detector", "eval")]
    for path in paths:
        cmd = root.commands[path[0]] if len(path) == 1 else root.commands[path[0]].commands[path[1]]
        params = {p.name: p for p in cmd.params}
        device = params["device"]
        assert device.default is None and DEVICE_POLICY in device.help, path
        assert all(device.callback(None, device, v) == v for v in ("auto", "cpu", "cuda", "cuda:1")), path
        for bad in ("gpu", "cuda:x", "mps"):
            with pytest.raises(typer.BadParameter):
                device.callback(None, device, bad)
        if "dtype" in params:
            dtype = params["dtype"]
            assert dtype.default == "fp32" and all(dtype.callback(None, dtype, d) == d for d in DTYPE_CHOICES)
            with pytest.raises(typer.BadParameter):
                dtype.callback(None, dtype, "fp64")
    assert {p for p in paths if "dtype" in {q.name for q in (root.commands[p[0]] if len(p) == 1 else
                                                             root.commands[p[0]].commands[p[1]]).params}} \
        == {("extract",), ("caption",)}
