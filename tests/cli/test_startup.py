"""Start-up: the help, TSV, feature-file and label-map tools run without importing torch (issue 16, item 10);
`vinvl caption` refuses what it will not run before importing torch (Reliability 2, item 8); every command's help
shows placeholders a user can read (item 9)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from vinvl import features as F
from vinvl import tsv as T
from vinvl.cli import app, main

HEAVY = ("torch", "torchvision", "transformers")
SRC = str(Path(__file__).resolve().parents[2] / "src")

_PROBE = """
import contextlib, io, json, sys
from vinvl.cli import main
report = []
for argv in json.loads(sys.argv[1]):
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(argv)
    heavy = sorted({m.split('.')[0] for m in sys.modules} & set(json.loads(sys.argv[2])))
    report.append([argv, code, heavy, err.getvalue()])
print('REPORT' + json.dumps(report))
"""


def _probe(commands: list[list[str]], cwd: Path, env: dict[str, str] | None = None) -> list[list]:
    """Run ``commands`` one after another in one fresh interpreter; which heavy modules each left loaded, and
    what each printed on stderr."""
    env = {**os.environ, **(env or {}), "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
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
    shard = T.write_tsv(tmp / "shard2.tsv", [["img_other", "0", ""]])  # other keys: merge refuses a key twice
    return {"pred": str(src), "feat": str(tmp / "oscar" / "features.tsv"), "label": str(tmp / "oscar" / "label.tsv"),
            "lm": str(tmp / "lm.json"), "out": str(tmp / "o2"), "merged": str(tmp / "merged.tsv"), "shard": str(shard)}


@pytest.mark.parametrize("dim", [6, 512, 2048])
def test_light_commands_do_not_import_torch(tmp_path: Path, dim: int) -> None:
    f = _files(tmp_path, np.random.default_rng(dim), dim)
    commands = [
        ["--help"], ["--version"], ["tsv", "--help"], ["labelmap", "--help"], ["features", "--help"],
        ["tsv", "check", "--help"], ["labelmap", "show", "--help"], ["features", "show", "--help"],
        ["tsv", "index", f["pred"]], ["tsv", "check", f["pred"]], ["tsv", "check", f["feat"]],
        ["tsv", "check", f["label"], "--kind", "label"], ["tsv", "show", f["feat"], "--row", "1"],
        ["tsv", "show", f["pred"], "--key", "img0"], ["tsv", "merge", f["feat"], f["shard"], "-o", f["merged"]],
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
    for argv, code, heavy, _ in report:
        assert heavy == [], f"vinvl {' '.join(argv)} imported {heavy}"
        assert code == (2 if argv[-1] in ("99", "-1") else 0), argv


def test_heavy_commands_still_get_torch_when_they_run(tmp_path: Path) -> None:
    """The probe itself can fail: a command that needs torch shows up in it (--help of extract does not)."""
    report = _probe([["extract", "--help"], ["detector", "train", "--help"]], tmp_path)
    assert all(heavy == [] and code == 0 for _, code, heavy, _ in report)
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


# -- vinvl caption: whatever refuses the call does so before torch is imported (Reliability 2, item 8) ----------
IMAGES = str(Path(__file__).resolve().parents[2] / "examples" / "images")


def _offline(tmp: Path) -> dict[str, str]:
    """No hub and empty caches: the released models are nowhere to be had."""
    return {"HF_HUB_OFFLINE": "1", "VINVL_HOME": str(tmp / "home"), "HF_HOME": str(tmp / "hf"),
            "HF_HUB_CACHE": str(tmp / "hf" / "hub")}


def _captioner_folder(tmp: Path, name: str, config: dict | None, files: tuple[str, ...] = ()) -> str:
    """A captioner folder with ``config`` as its config.json and ``files`` present (empty: only looked for)."""
    folder = tmp / name
    folder.mkdir()
    if config is not None:
        (folder / "config.json").write_text(json.dumps({"model_type": "bert", **config}))
    for f in files:
        (folder / f).write_bytes(b"")
    return str(folder)


def test_caption_offline_fails_in_seconds_without_torch(tmp_path: Path) -> None:
    """The README's promise, as a user meets it: offline, without the models, one line naming the source tried,
    in a second or so (the bound is generous: this is a behaviour, not a benchmark), torch never imported."""
    env = {**os.environ, **_offline(tmp_path), "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    start = time.monotonic()
    res = subprocess.run([sys.executable, "-X", "importtime", "-m", "vinvl", "caption", IMAGES], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    wall = time.monotonic() - start
    timing = [ln for ln in res.stderr.splitlines() if ln.startswith("import time:")]
    imported = {ln.rsplit("|", 1)[-1].strip().split(".")[0] for ln in timing}
    assert {"vinvl", "typer"} <= imported  # the import log is read
    assert not imported & set(HEAVY), sorted(imported & set(HEAVY))
    said = [ln for ln in res.stderr.splitlines() if not ln.startswith("import time:")]
    errors = [ln for ln in said if ln.startswith("error: ")]
    assert res.returncode == 2 and len(errors) == 1, said
    assert errors[0].startswith("error: vinvl-base-image-captioning: ")
    assert "tried hf michelecafagna26/vinvl-base-image-captioning@" in errors[0]
    assert not [ln for ln in said if "Traceback" in ln or "Warning" in ln], said
    assert wall < 5.0, f"vinvl caption took {wall:.1f} s to fail"


@pytest.mark.parametrize("argv", [["extract", IMAGES, "-o", "out", "--model", "vinvl_vg_x152c4"],
                                  ["extract", IMAGES, "-o", "out", "--weights", "missing.pth"],
                                  ["detector", "train", "--config-file", "train.yaml", "INPUT.HUE", "0.1"]])
def test_extract_with_a_missing_model_fails_in_seconds_without_torch(tmp_path: Path, argv: list) -> None:
    """The same promise for `vinvl extract`: the model's files are resolved before torch is imported; and for the
    original form of `vinvl detector train`: its config's refusals."""
    (tmp_path / "train.yaml").write_text("SOLVER: {BASE_LR: 0.01}\n")
    env = {**os.environ, **_offline(tmp_path), "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    start = time.monotonic()
    res = subprocess.run([sys.executable, "-X", "importtime", "-m", "vinvl", *argv], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    wall = time.monotonic() - start
    imported = {ln.rsplit("|", 1)[-1].strip().split(".")[0] for ln in res.stderr.splitlines()
                if ln.startswith("import time:")}
    said = [ln for ln in res.stderr.splitlines() if not ln.startswith("import time:")]
    assert res.returncode == 2 and len(said) == 1 and said[0].startswith("error: "), said
    assert not imported & set(HEAVY), sorted(imported & set(HEAVY))
    assert wall < 5.0 and not (tmp_path / "out").exists(), wall


def test_caption_refuses_everything_it_can_before_importing_torch(tmp_path: Path) -> None:
    whole = ("pytorch_model.bin", "vocab.txt")
    demo = _captioner_folder(tmp_path, "demo", {"img_feature_dim": 518}, whole)  # fits the shipped shapes_demo
    no_weights = _captioner_folder(tmp_path, "no_weights", {"img_feature_dim": 518}, ("vocab.txt",))
    no_vocab = _captioner_folder(tmp_path, "no_vocab", {"img_feature_dim": 518}, ("model.safetensors",))
    wide = _captioner_folder(tmp_path, "wide", {"img_feature_dim": 2054})
    odd = _captioner_folder(tmp_path, "odd", {"img_feature_dim": "2054"})
    bare = _captioner_folder(tmp_path, "bare", None)
    (tmp_path / "boxes.json").write_text("{not json")
    refused = {  # command -> what its one error line says
        ("caption", IMAGES): "tried hf michelecafagna26/vinvl-base-image-captioning@",
        ("caption", IMAGES, "--model", wide, "--detector", "shapes_demo"): "shapes_demo gives 518-d regions but",
        ("caption", IMAGES, "--model", odd, "--detector", "shapes_demo"): "img_feature_dim '2054' is not a positive",
        ("caption", IMAGES, "--model", bare, "--detector", "shapes_demo"): "bare: no config.json",
        ("caption", IMAGES, "--model", no_weights, "--detector", "shapes_demo"): "no pytorch_model.bin or model.safe",
        ("caption", IMAGES, "--model", no_vocab, "--detector", "shapes_demo"): "no vocab.txt beside model.safetensors",
        ("caption", IMAGES, "--model", "no-such-captioner"): "no such checkpoint folder or registry name",
        ("caption", IMAGES, "--model", "vinvl_vg_x152c4"): "captioners: vinvl-base-image-captioning",
        ("caption", IMAGES, "--model", demo, "--detector", "no-such-detector"): "unknown model 'no-such-detector'",
        ("caption", str(tmp_path / "missing.jpg")): "missing.jpg: no such image file or folder",
        ("caption", IMAGES, "--boxes", str(tmp_path / "boxes.json")): "boxes.json",
        ("caption", IMAGES, "--num-beams", "0"): "--num-beams",
        ("caption", IMAGES, "--dtype", "fp64"): "--dtype",
    }
    # The probe can fail: a call that passes every check reaches torch (and then stops at the missing GPU).
    control = ["caption", IMAGES, "--model", demo, "--detector", "shapes_demo", "--device", "cuda:99"]
    report = _probe([list(c) for c in refused] + [control], tmp_path, _offline(tmp_path))
    for (argv, code, heavy, err), says in zip(report, refused.values()):
        lines = [ln for ln in err.splitlines() if ln.startswith("error: ")]
        assert code == 2 and len(lines) == 1 and says in lines[0], (argv, err)
        assert heavy == [], f"vinvl {' '.join(argv)} imported {heavy} before refusing"
    argv, code, heavy, err = report[-1]
    assert code == 2 and "--device cuda:99" in err and "torch" in heavy, (err, heavy)


# -- help: placeholders a user can read, in every command of the tree (Reliability 2, item 9) ------------------
def _tree(group, path=()):  # type: ignore[no-untyped-def]
    """Every group and command of the tree, the root included."""
    import typer.main

    cmd = typer.main.get_command(group) if isinstance(group, typer.Typer) else group
    yield path, cmd
    for name, sub in sorted(getattr(cmd, "commands", {}).items()):
        yield from _tree(sub, (*path, name))


def test_help_placeholders_are_readable_everywhere(capsys: pytest.CaptureFixture,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """No `--version <bool>`: a flag shows no value; a value shows `<path>`, `<int>` (never `<list[Path]>`,
    `<int range>`); a variadic argument is `X...`, never `{X...}...`. Every group and command, rendered."""
    import click

    monkeypatch.setenv("COLUMNS", "300")
    tree = list(_tree(app))
    assert len(tree) >= 30 and ("oscar", "vqa", "predict") in [p for p, _ in tree]
    flags = values = 0
    for path, cmd in tree:
        ctx = click.Context(cmd, info_name="vinvl")
        for param in cmd.get_params(ctx):
            shown = param.display_type_rich(ctx=ctx)  # what the help table prints after the option's names
            if param.param_type_name == "option" and (param.is_flag or param.count):
                flags += 1
                assert shown is None, (path, param.opts, shown)
            else:
                values += 1
                assert shown and not any(t in shown for t in ("bool", "list[", "range", "Path")), \
                    (path, param.opts, shown)
        capsys.readouterr()
        assert main([*path, "--help"]) == 0, path
        out = capsys.readouterr().out
        for bad in ("<bool>", "<list[", " range>", "<Path>", "...}...", "...]..."):
            assert bad not in out, (path, bad)
    assert flags > 50 and values > 300  # both kinds were seen
    capsys.readouterr()
    assert main(["--help"]) == 0
    version_row = next(ln for ln in capsys.readouterr().out.splitlines() if "--version" in ln)
    assert "<" not in version_row, version_row
