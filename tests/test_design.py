"""The rules of docs/design.md, checked on the package's imports (every import statement, function-local ones
included), so the page cannot drift from the code: no circles, arrows only down the layers, and the rules."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "vinvl"

FORMATS = ["vinvl.tsv", "vinvl.features", "vinvl.labelmap", "vinvl.textio", "vinvl.yamlio", "vinvl.atomic",
           "vinvl.errors", "vinvl.dataset_spec", "vinvl.images", "vinvl.state_dict", "vinvl.safe_pickle",
           "vinvl.corpus.layout", "vinvl.given_boxes"]
MODELS = ["vinvl.detection", "vinvl.oscar", "vinvl.extract", "vinvl.regions", "vinvl.caption", "vinvl.cli"]
DETECTOR_SIDE = ["vinvl.detection", "vinvl.extract", "vinvl.config"]
BOTH_SIDES = ["vinvl.regions", "vinvl.caption", "vinvl.cli", "vinvl.__main__"]

# The layers of docs/design.md, lowest first (its picture, rule 1 and rule 4, and "the transfer engine"): a module
# imports modules of its own layer or of those below, never above. A module sits in the layer of its longest prefix
# listed (corpus.layout is a format; the rest of vinvl.corpus, the tools that build corpora, is not).
LAYERS: list[tuple[str, list[str]]] = [
    ("file formats", FORMATS),
    ("the transfer engine", ["vinvl.download"]),
    ("released assets, the detector's configuration, the training options and the number formats",
     ["vinvl.registry", "vinvl.config", "vinvl.training.options", "vinvl.dtypes"]),
    ("tools over files", ["vinvl.draw", "vinvl.corpus", "vinvl.datasets"]),
    ("the training engine (both halves train through it)", ["vinvl.training"]),
    ("the detector and Oscar+ (rule 3 keeps them apart)", ["vinvl.detection", "vinvl.oscar"]),
    ("extraction (uses the detector)", ["vinvl.extract"]),
    ("what joins the halves", ["vinvl.regions", "vinvl.caption"]),
    ("the CLI", ["vinvl.cli", "vinvl.__main__"]),
]
# Circles known to exist, each the exact set of its modules; any other circle fails, and so does an entry whose
# circle is gone (delete it then).
KNOWN_CIRCLES: set[frozenset[str]] = set()  # circles tolerated while being removed: none


def _module(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _within(name: str, prefixes: list[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _imports() -> dict[str, list[tuple[str, list[str], int]]]:
    """Every module of the package -> its imports of vinvl: (module imported, names taken from it, line)."""
    out: dict[str, list[tuple[str, list[str], int]]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        mod, found = _module(path), []
        package = mod.split(".") if path.name == "__init__.py" else mod.split(".")[:-1]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package[: len(package) - (node.level - 1)]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                if target.split(".")[0] == "vinvl":
                    names = [a.name for a in node.names]
                    found.append((target, names, node.lineno))
                    # `from . import x` imports the module vinvl.x
                    found += [(f"{target}.{n}", [], node.lineno) for n in names
                              if (PACKAGE.parent / (target.replace(".", "/") + f"/{n}.py")).is_file()
                              or (PACKAGE.parent / (target.replace(".", "/") + f"/{n}/__init__.py")).is_file()]
            elif isinstance(node, ast.Import):
                found += [(a.name, [], node.lineno) for a in node.names if a.name.split(".")[0] == "vinvl"]
        out[mod] = found
    return out


IMPORTS = _imports()


def _graph(imports: dict[str, list[tuple[str, list[str], int]]]) -> dict[str, dict[str, int]]:
    """Module -> {module it imports: first line}. ``from P import m`` where every name is a module of P is an arrow to
    those modules only: it runs P's ``__init__`` as any import below P does, which is no circle of its own."""
    graph: dict[str, dict[str, int]] = {m: {} for m in imports}
    for m, found in imports.items():
        for target, names, line in found:
            if names and all(f"{target}.{n}" in imports for n in names):
                continue  # the modules themselves are listed as their own entries
            while target not in imports and "." in target:  # an attribute path: the module that holds it
                target = target.rsplit(".", 1)[0]
            if target != m and target in imports:
                graph[m].setdefault(target, line)
    return graph


def _circles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """Every circle: the modules, sorted, of each set of two or more that all reach each other (Tarjan's strongly
    connected components)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            part = []
            while True:
                w = stack.pop()
                part.append(w)
                if w == v:
                    break
            if len(part) > 1:
                found.append(sorted(part))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def _loop(graph: dict[str, dict[str, int]], members: list[str]) -> str:
    """The shortest loop from the first of ``members`` back to it, within them, with each import's line."""
    start, inside = members[0], set(members)
    paths = {start: [start]}
    queue = [start]
    while queue:
        v = queue.pop(0)
        for w in sorted(graph[v]):
            if w == start:
                hops = paths[v] + [start]
                return " -> ".join(f"{a}:{graph[a][b]}" for a, b in zip(hops, hops[1:])) + f" -> {start}"
            if w in inside and w not in paths:
                paths[w] = paths[v] + [w]
                queue.append(w)
    raise AssertionError(f"no loop through {start}")


GRAPH = _graph(IMPORTS)


def _layer(module: str) -> int | None:
    """The index in LAYERS of ``module``'s longest listed prefix; the package's ``__init__`` (a version) is a format."""
    if module == "vinvl":
        return 0
    best = max(((len(p), i) for i, (_, prefixes) in enumerate(LAYERS) for p in prefixes if _within(module, [p])),
               default=None)
    return None if best is None else best[1]


def _breaches(sources: list[str], forbidden: list[str], allowed: list[str] = ()) -> list[str]:
    return [f"{m}:{line} imports {t}" for m, found in IMPORTS.items() if _within(m, sources) and not _within(m, allowed)
            for t, _, line in found if _within(t, forbidden)]


def test_the_import_graph_is_read() -> None:
    """The checks below see the package: the modules they name exist and known links are found."""
    for m in FORMATS + DETECTOR_SIDE + ["vinvl.oscar", "vinvl.regions", "vinvl.caption", "vinvl.cli"]:
        assert m in IMPORTS, m
    assert any(t == "vinvl.detection" for t, _, _ in IMPORTS["vinvl.regions"])
    assert _breaches(["vinvl.regions"], ["vinvl.detection"])  # the checker reports a link when there is one


def test_file_formats_know_no_model() -> None:
    assert _breaches(FORMATS, MODELS + ["vinvl.config", "vinvl.registry", "vinvl.download"]) == []


def test_the_library_knows_no_cli() -> None:
    assert _breaches(["vinvl"], ["vinvl.cli"], allowed=["vinvl.cli", "vinvl.__main__"]) == []


def test_detector_and_oscar_meet_only_through_region_files() -> None:
    assert _breaches(["vinvl.oscar"], DETECTOR_SIDE + ["vinvl.regions", "vinvl.caption"]) == []
    assert _breaches(DETECTOR_SIDE, ["vinvl.oscar", "vinvl.regions", "vinvl.caption"]) == []
    def takes(m: str, prefixes: list[str]) -> bool:
        return any(_within(t, prefixes) for t, _, _ in IMPORTS[m])

    sees_both = {m for m in IMPORTS if takes(m, ["vinvl.oscar"]) and takes(m, ["vinvl.detection", "vinvl.extract"])}
    assert sees_both and all(_within(m, BOTH_SIDES) for m in sees_both), sees_both


def test_layers_point_down() -> None:
    assert _breaches(["vinvl.detection", "vinvl.config"], ["vinvl.extract", "vinvl.draw", "vinvl.corpus"]) == []
    assert _breaches(["vinvl.config"], ["vinvl.detection"]) == []


def test_no_circles() -> None:
    """No two modules import each other, directly or around a loop, lazily or not: the modules of a circle are one
    layer in disguise, and it fails at import time as soon as one of its lazy imports moves to the top of a file."""
    found = {frozenset(c): c for c in _circles(GRAPH)}
    unknown = [f"{', '.join(c)}: {_loop(GRAPH, c)}" for key, c in found.items() if key not in KNOWN_CIRCLES]
    assert not unknown, "import circles (their modules: one loop, with the line of each import):\n" + "\n".join(unknown)
    gone = [sorted(k) for k in KNOWN_CIRCLES if k not in found]
    assert not gone, f"no longer circles: delete their KNOWN_CIRCLES entries: {gone}"


def test_the_circle_check_itself() -> None:
    graph = {"a": {"b": 1}, "b": {"c": 2}, "c": {"a": 3, "d": 4}, "d": {}, "e": {"d": 5}}
    assert _circles(graph) == [["a", "b", "c"]] and _loop(graph, ["a", "b", "c"]) == "a:1 -> b:2 -> c:3 -> a"
    assert _circles({"a": {"b": 1}, "b": {}}) == []
    imports = {"p": [("p.m", [], 1)], "p.m": [("p", ["n"], 2), ("p.n", [], 2)], "p.n": []}
    assert _graph(imports) == {"p": {"p.m": 1}, "p.m": {"p.n": 2}, "p.n": {}}  # `from . import n`: no arrow to p
    assert _graph({**imports, "p.m": [("p", ["version"], 3)]})["p.m"] == {"p": 3}  # a name of p's own: an arrow


def test_every_module_has_a_layer() -> None:
    assert [m for m in IMPORTS if _layer(m) is None] == []


def test_no_arrow_up_the_layers() -> None:
    """Every import points to the module's own layer or one below (docs/design.md, rule 4)."""
    up = [f"{m}:{line} imports {t}: {LAYERS[_layer(m)][0]} -> {LAYERS[_layer(t)][0]}"
          for m, targets in GRAPH.items() for t, line in targets.items()
          if _layer(m) is not None and _layer(t) is not None and _layer(t) > _layer(m)]
    assert up == []


def test_the_layer_check_itself() -> None:
    def layer(m: str) -> str:
        return LAYERS[_layer(m)][0]

    assert layer("vinvl.corpus.layout") == "file formats" and layer("vinvl.corpus.build") == "tools over files"
    assert layer("vinvl") == "file formats" and layer("vinvl.cli.download") == "the CLI" and _layer("vinvl.x") is None
    assert _layer("vinvl.registry") > _layer("vinvl.download")  # the engine knows no registry
    assert _layer("vinvl.config") == _layer("vinvl.training.options") < _layer("vinvl.training.engine")
    assert _layer("vinvl.training.engine") < _layer("vinvl.detection") == _layer("vinvl.oscar")
    assert "vinvl.download" in GRAPH["vinvl.registry"] and "vinvl.errors" in GRAPH["vinvl.atomic"]


def test_one_training_engine_for_both_halves() -> None:
    """The detector and every Oscar+ task train through vinvl.training.engine, which knows neither half."""
    assert "vinvl.training.engine" in GRAPH["vinvl.detection.train"]
    assert "vinvl.training.engine" in GRAPH["vinvl.oscar.training"]
    assert _breaches(["vinvl.training"], ["vinvl.detection", "vinvl.oscar", "vinvl.extract"]) == []


def test_no_private_names_across_modules() -> None:
    found = [f"{m}:{line} takes {n} from {t}" for m, imports in IMPORTS.items() for t, names, line in imports
             for n in names if n.startswith("_") and not n.startswith("__") and t != m]
    assert found == []
