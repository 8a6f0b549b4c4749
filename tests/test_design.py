"""The rules of docs/design.md, checked on the package's imports (every import statement, function-local ones
included), so the page cannot drift from the code."""

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


def test_no_private_names_across_modules() -> None:
    found = [f"{m}:{line} takes {n} from {t}" for m, imports in IMPORTS.items() for t, names, line in imports
             for n in names if n.startswith("_") and not n.startswith("__") and t != m]
    assert found == []
