"""Every file vinvl writes appears atomically (docs/cli.md, docs/reliability.md): a write call in the package
either writes the temporary path :mod:`vinvl.atomic` hands it (a lambda's parameter) or is one of the few
listed below, each of which streams into its own temporary name or is an append-only log.

And one durability rule in one place: only :mod:`vinvl.atomic` renames a file into place or calls fsync
(its :func:`~vinvl.atomic.commit` does both, in the order its docstring gives); the order itself is checked
in tests/test_atomic.py."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Iterator, Optional

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "vinvl"

# (module, function) -> why its writes need no atomic_write (each temporary here still gets its name from atomic.commit)
OWN_RULE = {
    ("tsv.py", "TSVWriter.__init__"): "streams to temporary names, committed on close",
    ("tsv.py", "merge_tsv"): "writes temporary names, committed when complete",
    ("tsv.py", "_stream_key_index"): "streams into the temporary atomic_write hands it",
    ("download.py", "_Span.__call__"): "ranges into NAME.part, committed after its MD5 check",
    ("download.py", "Downloader._fetch_whole"): "NAME.part, committed after its MD5 check",
    ("download.py", "_RangedFile.__init__"): "NAME.part, committed after its MD5 check",
    ("extract/run.py", "_Shard.__init__"): "the extraction journal and shard files: append-only, cut back on --resume",
    ("training/engine.py", "Engine._log_window"): "log.jsonl: append-only, rewritten atomically to the checkpoint's step on --resume",
}
WRITE_MODES = ("w", "a", "x", "+")

# (module, function) -> why it still renames into place or fsyncs by itself. Each entry is a debt, not a rule.
OWN_RENAME: dict = {}  # (file, function) -> why it renames or syncs by itself; none today
# What renames or syncs a file: os.replace/rename/renames, shutil.move, os.fsync/fdatasync, Path.rename/replace.
_OS_CALLS = {("os", "replace"), ("os", "rename"), ("os", "renames"), ("shutil", "move"), ("os", "fsync"),
             ("os", "fdatasync")}


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


def _renames(tree: ast.AST) -> Iterator[tuple[ast.Call, list[ast.AST]]]:
    """Every call that renames a file into place or fsyncs one, with the enclosing nodes."""

    def visit(node: ast.AST, stack: list[ast.AST]) -> Iterator:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Call) and isinstance(child.func, ast.Attribute):
                f = child.func
                named = isinstance(f.value, ast.Name) and (f.value.id, f.attr) in _OS_CALLS
                # Path.rename(target) / Path.replace(target) take one argument; str.replace takes two or three.
                path_method = f.attr in ("rename", "replace") and len(child.args) == 1 and not child.keywords
                if named or path_method:
                    yield child, stack
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


def test_only_vinvl_atomic_renames_into_place_or_fsyncs() -> None:
    found, used = [], set()
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC).as_posix()
        if rel == "atomic.py":
            continue
        for call, stack in _renames(ast.parse(path.read_text(encoding="utf-8"))):
            where = (rel, _function(stack))
            if where in OWN_RENAME:
                used.add(where)
                continue
            found.append(f"{rel}:{call.lineno} in {where[1]}: {ast.unparse(call)[:100]}")
    assert not found, "renames or fsyncs outside vinvl.atomic (use its commit / flush_to_disk):\n" + "\n".join(found)
    assert used == set(OWN_RENAME), f"stale entries: {sorted(set(OWN_RENAME) - used)}"


def test_vinvl_atomic_is_where_the_renames_are() -> None:
    """The check above reads the calls it forbids elsewhere: vinvl.atomic's own rename and fsyncs are found."""
    calls = {ast.unparse(c.func) for c, _ in _renames(ast.parse((SRC / "atomic.py").read_text(encoding="utf-8")))}
    assert {"os.replace", "os.fsync"} <= calls


@pytest.mark.parametrize("code, bad", [
    ("def f(tmp, p):\n    os.replace(tmp, p)\n", True),
    ("def f(tmp, p):\n    os.rename(tmp, p)\n", True),
    ("def f(tmp, p):\n    tmp.rename(p)\n", True),
    ("def f(tmp, p):\n    Path(tmp).replace(p)\n", True),
    ("def f(tmp, p):\n    shutil.move(tmp, p)\n", True),
    ("def f(g):\n    os.fsync(g.fileno())\n", True),
    ("def f(tmp, p):\n    commit(tmp, p)\n", False),
    ("def f(s):\n    return s.replace('a', 'b')\n", False),
    ("def f(g):\n    flush_to_disk(g)\n", False),
])
def test_the_rename_check_itself(code: str, bad: bool) -> None:
    assert bool(list(_renames(ast.parse(code)))) == bad


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
