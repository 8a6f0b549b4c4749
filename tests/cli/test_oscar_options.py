"""The `vinvl oscar` options are defined once: every command's option comes from one table (same flags, type,
range and help everywhere), every default from the task's options class; the device rule is the same in every
command; docs/oscar.md's option table is the one the code generates."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import pytest
import typer.main

from vinvl.cli import app, main
from vinvl.cli.oscar_options import OPTIONS, REQUIRED, option_table
from vinvl.oscar import options as O

REPO = Path(__file__).resolve().parents[2]


def _all_commands():  # type: ignore[no-untyped-def]
    def walk(cmd, path):  # type: ignore[no-untyped-def]
        for name, sub in sorted(getattr(cmd, "commands", {}).items()):
            if hasattr(sub, "commands"):
                yield from walk(sub, (*path, name))
            else:
                yield (*path, name), sub

    return list(walk(typer.main.get_command(app), ()))


def _oscar_commands():  # type: ignore[no-untyped-def]
    return [(path, cmd) for path, cmd in _all_commands() if path[0] == "oscar"]


COMMANDS = _oscar_commands()
TRAIN = {("oscar", "pretrain"): O.PretrainOptions, ("oscar", "retrieval", "train"): O.RetrievalOptions,
         ("oscar", "caption", "train"): O.CaptionOptions, ("oscar", "vqa", "train"): O.VQAOptions,
         ("oscar", "gqa", "train"): O.GQAOptions, ("oscar", "nlvr2", "train"): O.NLVR2Options}


def _base(t):  # type: ignore[no-untyped-def]
    args = [a for a in typing.get_args(t) if a is not type(None)]
    return _base(args[0]) if typing.get_origin(t) is typing.Union and len(args) == 1 else t


def test_every_option_comes_from_the_one_table() -> None:
    assert len(COMMANDS) == 17
    for path, cmd in COMMANDS:
        declared = cmd.callback.oscar_options
        for p in cmd.params:
            if p.param_type_name != "option" or p.name in ("help",):
                continue
            assert p.name in declared, (path, p.name)  # no option is declared outside OPTIONS
            assert tuple(p.opts) + tuple(p.secondary_opts) == tuple(
                f for flag in OPTIONS[p.name].flags for f in flag.split("/")), (path, p.name)
            assert p.help.startswith(OPTIONS[p.name].help), (path, p.name)


def test_flags_are_unique() -> None:
    seen: dict[str, str] = {}
    for name, opt in OPTIONS.items():
        for flag in (f for flags in opt.flags for f in flags.split("/")):
            assert flag not in seen, (flag, name, seen.get(flag))
            seen[flag] = name


def test_defaults_live_in_the_options_classes() -> None:
    """Each training command takes every field of its task's options class, with the class's default and type."""
    for path, cls in TRAIN.items():
        cmd = dict(COMMANDS)[path]
        params = {p.name: p for p in cmd.params}
        defaults = O.option_defaults(cls)
        for f in dataclasses.fields(cls):
            if path == ("oscar", "pretrain") and f.name == "eval_batch_size":
                continue  # pretraining has no evaluation
            assert f.name in params, (path, f.name)
            assert cmd.callback.oscar_options[f.name] == defaults[f.name], (path, f.name)
            hint = typing.get_type_hints(cls)[f.name]
            assert _base(hint) == _base(OPTIONS[f.name].type), (f.name, hint, OPTIONS[f.name].type)
    # the model zoo's settings differ by task, in one place each
    assert O.GQAOptions().max_seq_length == 165 and O.NLVR2Options().classifier == "mlp" and O.VQAOptions().loss_type == "bce"
    assert O.CaptionOptions().save_steps == -1 and O.RetrievalOptions().save_steps == 5000


def test_the_not_set_values_are_one_rule() -> None:
    for cls in (O.PretrainOptions, O.RetrievalOptions, O.CaptionOptions, O.VQAOptions, O.GQAOptions, O.NLVR2Options):
        o = cls()
        assert o.max_steps >= 0 and o.save_steps >= -1 and o.device == "auto" and o.precision == "fp32"
    from vinvl.errors import VinvlError

    for bad in (dict(save_steps=-2), dict(max_steps=-1), dict(scheduler="cosine"), dict(precision="fp8"), dict(device="gpu"),
                dict(max_steps=0, num_train_epochs=0)):
        with pytest.raises(VinvlError):
            O.TrainingOptions(**bad).check()


@pytest.mark.parametrize("path, cmd", [c for c in COMMANDS if "device" in {p.name for p in c[1].params}],
                         ids=[" ".join(c[0]) for c in COMMANDS if "device" in {p.name for p in c[1].params}])
def test_device_rule_in_every_command(tmp_path: Path, capsys: pytest.CaptureFixture, path: tuple, cmd) -> None:  # type: ignore[no-untyped-def]
    assert cmd.callback.oscar_options["device"] == "auto"
    param = next(p for p in cmd.params if p.name == "device")
    for good in ("auto", "cpu", "cuda", "cuda:1"):
        assert param.callback(None, param, good) == good
    filled = []
    for p in cmd.params:
        if p.required:
            filled += [p.opts[0], str(tmp_path / p.name)] if p.param_type_name == "option" else [str(tmp_path / p.name)]
    for bad in ("gpu", "cuda:", "cuda:x", "mps"):
        code = main([*path, *filled, "--device", bad])
        err = capsys.readouterr().err
        assert code == 2 and err.startswith("error: --device: ") and err.count("\n") == 1, err
    assert list(tmp_path.iterdir()) == []


def test_resolve_device(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from vinvl.errors import VinvlError
    from vinvl.oscar.training import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu") and resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(VinvlError, match="--device cuda: no CUDA device here"):
        resolve_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("auto") == torch.device("cuda") and resolve_device("cuda:0") == torch.device("cuda", 0)
    with pytest.raises(VinvlError, match="has 1 CUDA device"):
        resolve_device("cuda:3")


def test_docs_option_table_is_current() -> None:
    """docs/oscar.md holds the generated table (`python -m vinvl.cli.oscar_options` prints it)."""
    text = (REPO / "docs/oscar.md").read_text()
    begin, end = "<!-- options:begin -->\n", "<!-- options:end -->"
    assert begin in text and end in text
    shown = text[text.index(begin) + len(begin) : text.index(end)]
    assert shown == option_table(), "regenerate the table: python -m vinvl.cli.oscar_options"
    for name, opt in OPTIONS.items():
        if any(name in cmd.callback.oscar_options for _, cmd in COMMANDS):
            assert opt.flags[-1].split("/")[0] in shown, name


def test_required_and_restored_defaults() -> None:
    for path, cmd in COMMANDS:
        assert cmd.callback.oscar_options.get("out") is REQUIRED, path
    vqa_eval = dict(COMMANDS)[("oscar", "vqa", "eval")].callback.oscar_options
    assert vqa_eval["max_seq_length"] is None and vqa_eval["split"] == "val"  # None: the checkpoint's value


def test_the_oscar_command_modules_form_a_tree() -> None:
    """cli/oscar*.py import each other downwards only: the group (oscar.py) imports the task modules, they import the
    option definitions (oscar_flags.py), and the table (oscar_options.py) sits above the group; no circle."""
    import ast

    cli = REPO / "src/vinvl/cli"
    names = {p.stem for p in cli.glob("oscar*.py")}
    imports: dict[str, set[str]] = {}
    for name in names:
        tree = ast.parse((cli / f"{name}.py").read_text(encoding="utf-8"))
        imports[name] = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level == 1
                         and n.module in names}
    assert imports["oscar_flags"] == set() and imports["oscar_options"] == {"oscar", "oscar_flags"}
    assert not any("oscar_options" in found for found in imports.values())
    assert imports["oscar"] == names - {"oscar", "oscar_options"}

    def reaches(a: str, b: str, seen: frozenset = frozenset()) -> bool:
        return any(n == b or (n not in seen and reaches(n, b, seen | {n})) for n in imports[a])

    assert [n for n in names if reaches(n, n)] == []


def test_one_dtype_vocabulary_for_every_command() -> None:
    """Every command that takes a number format calls it --dtype, with the values of vinvl.dtypes (the detector's
    inference adds auto), fp32 by default; none takes --precision any more."""
    from vinvl.dtypes import DTYPE_CHOICES, DTYPES

    with_dtype = {}
    for path, cmd in _all_commands():
        flags = {f: p for p in cmd.params for f in p.opts}
        assert "--precision" not in flags, path
        if "--dtype" in flags:
            p = flags["--dtype"]
            assert p.default == "fp32", path
            ok = [v for v in ("fp32", "bf16", "fp16", "auto", "fp8") if _accepts(p, v)]
            assert ok in (list(DTYPES), [*DTYPES, "auto"]) and set(ok) <= set(DTYPE_CHOICES), (path, ok)
            with_dtype[" ".join(path)] = ok
    for name in ("extract", "caption", "detector train", "oscar caption train", "oscar caption eval",
                 "oscar retrieval eval", "oscar vqa train", "oscar pretrain"):
        assert name in with_dtype, name
    assert "auto" in with_dtype["extract"] and "auto" not in with_dtype["detector train"]


def _accepts(param, value: str) -> bool:  # type: ignore[no-untyped-def]
    try:
        param.callback(None, param, value) if param.callback else None
    except (typer.BadParameter, Exception):  # noqa: BLE001 - any refusal
        return False
    return True


@pytest.mark.parametrize("command", [["oscar", "caption", "train", "d.yaml", "-o", "o"],
                                     ["oscar", "retrieval", "eval", "ckpt", "data", "-o", "o"],
                                     ["detector", "train", "d.yaml", "-o", "o"]])
def test_the_old_precision_spelling_is_refused_with_a_hint(command: list, capsys: pytest.CaptureFixture) -> None:
    """`--precision bf16` (the spelling before 2026-12-07) is one line naming --dtype, exit 2, nothing run."""
    assert main([*command, "--precision", "bf16"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--precision was renamed --dtype" in err, err


def test_only_the_flags_on_the_line_are_explicit(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The merge rule's "the user's explicit value" is what the command line gave, read from the running command's
    context (typer's own copy of click included): a flag left at its default is not explicit."""
    import vinvl.oscar.tasks.captioning as captioning

    seen = {}

    def fake_train(data, out, opts, **kw):  # type: ignore[no-untyped-def]
        seen["explicit"] = opts.explicit()
        return out

    monkeypatch.setattr(captioning, "train", fake_train)
    monkeypatch.setattr("vinvl.oscar.data.captions.CaptionData", lambda *a, **k: None)
    assert main(["oscar", "caption", "train", str(tmp_path / "train.yaml"), "-o", str(tmp_path / "run"),
                 "--learning-rate", "1e-4", "--max-seq-length", "40"]) == 0
    assert {"learning_rate", "max_seq_length"} <= seen["explicit"]
    assert not seen["explicit"] & {"batch_size", "weight_decay", "seed", "max_img_seq_length", "num_train_epochs"}
