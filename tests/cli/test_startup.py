"""Start-up: the help, TSV, feature-file and label-map tools run without importing torch (issue 16, item 10)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from vinvl import features as F
from vinvl import tsv as T
from vinvl.cli import app, main

HEAVY = ("torch", "torchvision", "transformers")
SRC = str(Path(__file__).resolve().parents[2] / "src")

_PROBE = """
import json, sys
from vinvl.cli import main
report = []
for argv in json.loads(sys.argv[1]):
    code = main(argv)
    heavy = sorted({m.split('.')[0] for m in sys.modules} & set(json.loads(sys.argv[2])))
    report.append([argv, code, heavy])
print('REPORT' + json.dumps(report))
"""


def _probe(commands: list[list[str]], cwd: Path) -> list[list]:
    """Run ``commands`` one after another in one fresh interpreter; which heavy modules each left loaded."""
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    res = subprocess.run([sys.executable, "-c", _PROBE, json.dumps(commands), json.dumps(HEAVY)], cwd=cwd, env=env,
                         capture_output=True, text=True, timeout=300)
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("REPORT")]
    assert res.returncode == 0 and lines, res.stderr[-3000:]
    return json.loads(lines[-1][len("REPORT"):])


def _files(tmp: Path, rng: np.random.Generator, dim: int) -> dict[str, str]:
    preds = []
    for i, n in enumerate(rng.integers(0, 5, 4)):
        preds.append(F.Prediction(
            key=f"img{i}", boxes=np.sort(rng.uniform(0, 90, (int(n), 4)), axis=1), classes=["cat"] * int(n),
            scores=rng.uniform(0, 1, int(n)), features=rng.standard_normal((int(n), dim)), image_h=100, image_w=120))
    src = T.write_tsv(tmp / "predictions.tsv", [p.to_row() for p in preds])
    F.to_oscar(src, tmp / "oscar")
    (tmp / "lm.json").write_text(json.dumps({"label_to_idx": {"cat": 1, "dog": 2}, "attribute_to_idx": {"red": 1}}))
    return {"pred": str(src), "feat": str(tmp / "oscar" / "features.tsv"), "label": str(tmp / "oscar" / "label.tsv"),
            "lm": str(tmp / "lm.json"), "out": str(tmp / "o2"), "merged": str(tmp / "merged.tsv")}


@pytest.mark.parametrize("dim", [6, 512, 2048])
def test_light_commands_do_not_import_torch(tmp_path: Path, dim: int) -> None:
    f = _files(tmp_path, np.random.default_rng(dim), dim)
    commands = [
        ["--help"], ["--version"], ["tsv", "--help"], ["labelmap", "--help"], ["features", "--help"],
        ["tsv", "check", "--help"], ["labelmap", "show", "--help"], ["features", "show", "--help"],
        ["tsv", "index", f["pred"]], ["tsv", "check", f["pred"]], ["tsv", "check", f["feat"]],
        ["tsv", "check", f["label"], "--kind", "label"], ["tsv", "show", f["feat"], "--row", "1"],
        ["tsv", "show", f["pred"], "--key", "img0"], ["tsv", "merge", f["feat"], f["feat"], "-o", f["merged"]],
        ["features", "show", f["feat"], "--row", "0"], ["features", "show", f["pred"], "--key", "img3"],
        ["features", "to-oscar", f["pred"], "-o", f["out"]],
        ["labelmap", "show", f["lm"]], ["labelmap", "lookup", f["lm"], "dog", "1"],
        ["tsv", "show", f["feat"], "--row", "99"],  # an error too must come without torch
        ["oscar", "--help"], ["oscar", "pretrain", "--help"], ["oscar", "vqa", "train", "--help"],
        ["oscar", "caption", "eval", "--help"], ["oscar", "retrieval", "rank", "--help"],
        ["oscar", "vqa", "train", "d", "-o", f["out"], "--learning-rate", "-1"],  # a range error before any import
    ]
    report = _probe(commands, tmp_path)
    assert [r[0] for r in report] == commands
    for argv, code, heavy in report:
        assert heavy == [], f"vinvl {' '.join(argv)} imported {heavy}"
        assert code == (2 if argv[-1] in ("99", "-1") else 0), argv


def test_heavy_commands_still_get_torch_when_they_run(tmp_path: Path) -> None:
    """The probe itself can fail: a command that needs torch shows up in it (--help of extract does not)."""
    report = _probe([["extract", "--help"], ["detector", "train", "--help"]], tmp_path)
    assert all(heavy == [] and code == 0 for _, code, heavy in report)
    (tmp_path / "d.yaml").write_text("img: none.tsv\nlabel: none.tsv\n")
    report = _probe([["detector", "eval", str(tmp_path / "d.yaml"), "--weights", str(tmp_path / "w.pth")]], tmp_path)
    assert report[0][1] == 2 and "torch" in report[0][2]


def _all_commands(group, path=()):  # type: ignore[no-untyped-def]
    import typer.main

    cmd = typer.main.get_command(group) if not hasattr(group, "commands") else group
    for name, sub in sorted(getattr(cmd, "commands", {}).items()):
        if hasattr(sub, "commands"):
            yield from _all_commands(sub, (*path, name))
        else:
            yield (*path, name), sub


def test_every_command_help_lists_its_options(capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """Lazy imports must not cost the help: each command's --help exits 0 and shows each of its options."""
    monkeypatch.setenv("COLUMNS", "300")  # no option name cut by the help table's wrapping
    commands = list(_all_commands(app))
    assert len(commands) >= 20 and ("oscar", "caption", "train") in [c for c, _ in commands]
    for path, cmd in commands:
        capsys.readouterr()
        assert main([*path, "--help"]) == 0, path
        out = capsys.readouterr().out
        assert "Usage" in out, path
        for param in cmd.params:
            opts = [o for o in getattr(param, "opts", []) if o.startswith("--")]
            if opts and param.param_type_name == "option" and not getattr(param, "hidden", False):
                assert any(o in out for o in opts), (path, opts)
