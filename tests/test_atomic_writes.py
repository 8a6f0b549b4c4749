"""Every file vinvl writes appears atomically (docs/cli.md, docs/reliability.md): a write call in the package
either writes the temporary path :mod:`vinvl.atomic` hands it (a lambda's parameter) or is one of the few
listed below, each of which manages its own temporary name or is an append-only log."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Iterator, Optional

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "vinvl"

# (module, function) -> why its writes need no vinvl.atomic
OWN_RULE = {
    ("tsv.py", "_write_lineidx_text"): "writes .<name>.tmp<pid>, then renames",
    ("tsv.py", "TSVWriter.__init__"): "streams to temporary names, renamed on close",
    ("tsv.py", "merge_tsv"): "writes temporary names, renamed when complete",
    ("tsv.py", "write_key_index"): "streams to a temporary name, renamed when complete",
    ("download.py", "_Span.__call__"): "ranges into NAME.part, renamed after its MD5 check",
    ("download.py", "Downloader._fetch_whole"): "NAME.part, renamed after its MD5 check",
    ("download.py", "_RangedFile.__init__"): "NAME.part, renamed after its MD5 check",
    ("extract/run.py", "_Shard.__init__"): "the extraction journal and shard files: append-only, cut back on --resume",
    ("oscar/training.py", "Trainer._log_window"): "log.jsonl: append-only, rewritten atomically to the checkpoint's step on --resume",
    ("detection/train.py", "train"): "log.jsonl: append-only",
}
WRITE_MODES = ("w", "a", "x", "+")


def _writes(tree: ast.AST) -> Iterator[tuple[ast.Call, Optional[ast.expr], list[ast.AST]]]:
    """Every call that writes a file, its target path expression and the enclosing nodes."""

    def visit(node: ast.AST, stack: list[ast.AST]) -> Iterator:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Call):
                f = child.func
                name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
                if name in ("write_text", "write_bytes") and isinstance(f, ast.Attribute):
                    yield child, f.value, stack
                elif name == "open" and isinstance(f, ast.Name):
                    mode = child.args[1] if len(child.args) > 1 else next((k.value for k in child.keywords if k.arg == "mode"), None)
                    if isinstance(mode, ast.Constant) and any(m in str(mode.value) for m in WRITE_MODES):
                        yield child, child.args[0], stack
                elif name == "save" and isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) and f.value.id == "torch":
                    yield child, child.args[1] if len(child.args) > 1 else None, stack
                elif name in ("dump", "savetxt", "save") and isinstance(f, ast.Attribute) and \
                        isinstance(f.value, ast.Name) and f.value.id in ("json", "np", "numpy", "yaml"):
                    yield child, child.args[1] if len(child.args) > 1 else None, stack
            yield from visit(child, stack + [child])

    yield from visit(tree, [])


def _temporary(target: Optional[ast.expr], stack: list[ast.AST]) -> bool:
    """Whether ``target`` is the parameter of the innermost enclosing lambda (atomic_write's temporary path)."""
    lam = next((n for n in reversed(stack) if isinstance(n, (ast.Lambda, ast.FunctionDef))), None)
    if not isinstance(lam, ast.Lambda) or target is None:
        return False
    params = {a.arg for a in lam.args.args}
    return (isinstance(target, ast.Name) and target.id in params) or (
        isinstance(target, ast.Call) and any(isinstance(a, ast.Name) and a.id in params for a in target.args))


def _function(stack: list[ast.AST]) -> str:
    """The enclosing classes and functions, dotted (``TSVWriter.__init__``)."""
    return ".".join(n.name for n in stack if isinstance(n, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))) or "<module>"


def test_every_write_is_atomic_or_listed() -> None:
    found, used = [], set()
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC).as_posix()
        for call, target, stack in _writes(ast.parse(path.read_text(encoding="utf-8"))):
            if _temporary(target, stack):
                continue
            where = (rel, _function(stack))
            if where in OWN_RULE:
                used.add(where)
                continue
            found.append(f"{rel}:{call.lineno} in {where[1]}: {ast.unparse(call)[:100]}")
    assert not found, "writes in place (use vinvl.atomic or TSVWriter):\n" + "\n".join(found)
    assert used == set(OWN_RULE), f"stale entries: {sorted(set(OWN_RULE) - used)}"


@pytest.mark.parametrize("code, bad", [
    ("def f(p):\n    p.write_text('x')\n", True),
    ("def f(p):\n    atomic_write(p, lambda tmp: tmp.write_text('x'))\n", False),
    ("def f(p, obj):\n    torch.save(obj, p)\n", True),
    ("def f(p, obj):\n    atomic_write(p, lambda tmp: torch.save(obj, tmp))\n", False),
    ("def f(p):\n    with open(p, 'a') as g:\n        g.write('x')\n", True),
    ("def f(p):\n    with open(p, 'rb') as g:\n        g.read()\n", False),
    ("def f(p, m):\n    atomic_write(p, lambda t: m.save(str(t)))\n", False),
])
def test_the_check_itself(code: str, bad: bool) -> None:
    hits = [(c, t, s) for c, t, s in _writes(ast.parse(code)) if not _temporary(t, s)]
    assert bool(hits) == bad
