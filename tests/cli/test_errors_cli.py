"""One-line user errors before any work (issue 16, item 9), checked over every command and setting, not examples."""

from __future__ import annotations

import json
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
import typer.main

from vinvl import features as F
from vinvl import tsv as T
from vinvl.cli import app, main
from vinvl.errors import FormatError, VinvlError, one_line



def run(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def one_error_line(err: str) -> str:
    assert err.count("\n") == 1 and err.startswith("error: "), err
    return err


def _commands(group=None, path=()):  # type: ignore[no-untyped-def]
    cmd = typer.main.get_command(app) if group is None else group
    for name, sub in sorted(getattr(cmd, "commands", {}).items()):
        if hasattr(sub, "commands"):
            yield from _commands(sub, (*path, name))
        else:
            yield (*path, name), sub


COMMANDS = list(_commands())


def _filled(cmd, tmp: Path, skip: str = "") -> list[str]:  # type: ignore[no-untyped-def]
    """Arguments for every required parameter of ``cmd`` (placeholders: nothing runs once parsing fails)."""
    argv: list[str] = []
    for p in cmd.params:
        if p.name == skip or not p.required:
            continue
        value = str(tmp / f"placeholder_{p.name}")
        argv += [p.opts[0], value] if p.param_type_name == "option" else [value]
    return argv


def _numeric(p) -> type | None:  # type: ignore[no-untyped-def]
    """int or float for a numeric parameter (``Optional`` unwrapped), else None."""
    import typing

    ann = p.type_descriptor.annotation
    args = [a for a in typing.get_args(ann) if a is not type(None)] if typing.get_origin(ann) is typing.Union else [ann]
    return args[0] if len(args) == 1 and args[0] in (int, float) else None


def _ranged_options():  # type: ignore[no-untyped-def]
    for path, cmd in COMMANDS:
        for p in cmd.params:
            if p.param_type_name == "option" and _numeric(p) and (p.min is not None or p.max is not None):
                yield path, cmd, p, p.min, p.max


RANGED = list(_ranged_options())


def test_every_numeric_option_has_a_range() -> None:
    """A numeric option without bounds is listed here with the reason any value is fine."""
    unbounded_ok = {("tsv", "show", "row"), ("features", "show", "row")}  # checked against the file's rows
    ranged = {(*path, p.name) for path, _, p, _, _ in RANGED}
    for path, cmd in COMMANDS:
        for p in cmd.params:
            if p.param_type_name == "option" and _numeric(p):
                assert (*path, p.name) in ranged or (*path, p.name) in unbounded_ok, (path, p.name)
    assert len(RANGED) >= 100


@pytest.mark.parametrize("path, cmd, param, lo, hi", RANGED, ids=[f"{' '.join(r[0])} {r[2].name}" for r in RANGED])
def test_out_of_range_options_stop_before_work(
    tmp_path: Path, capsys: pytest.CaptureFixture, path: tuple, cmd, param, lo, hi  # type: ignore[no-untyped-def]
) -> None:
    is_int = _numeric(param) is int
    bad_values = ["abc"]
    if lo is not None:
        bad_values.append(str(lo - 1 if is_int else lo - 0.5))
    if hi is not None:
        bad_values.append(str(hi + 1 if is_int else hi + 0.5))
    for bad in bad_values:
        argv = [*path, *_filled(cmd, tmp_path), param.opts[-1], bad]
        code, out, err = run(capsys, *argv)
        assert code == 2 and out == "", (argv, out)
        assert one_error_line(err).startswith(f"error: {'/'.join(param.opts)}: "), err
    assert list(tmp_path.iterdir()) == []  # nothing was written


# Every output of the commands (vinvl download aside): (command, parameter, a folder?).
OSCAR = [("oscar", "pretrain"), *[("oscar", task, verb) for task in ("vqa", "gqa", "nlvr2", "caption")
                                  for verb in ("train", "eval", "predict")],
         ("oscar", "caption", "split"), *[("oscar", "retrieval", verb) for verb in ("train", "eval", "rank")]]
OUTPUTS = [*[(path, "out", True) for path in OSCAR],
    (("extract",), "out", True), (("draw",), "out", True), (("datasets", "shapes"), "out", True),
    (("detector", "train"), "out", True), (("corpus", "build"), "out", True), (("features", "to-oscar"), "out", True),
    (("detector", "eval"), "json_out", False), (("corpus", "decontaminate"), "out", False),
    (("corpus", "decontaminate"), "report", False), (("tsv", "merge"), "out", False),
    (("labelmap", "convert"), "out", False), (("features", "convert"), "out", False), (("caption",), "out", False),
]


def test_every_output_parameter_is_listed() -> None:
    names = {"out", "json_out", "report"}
    found = {(path, p.name) for path, cmd in COMMANDS if path != ("download",) for p in cmd.params if p.name in names}
    assert found == {(path, name) for path, name, _ in OUTPUTS}


@pytest.mark.parametrize("path, name, folder", OUTPUTS, ids=[f"{' '.join(o[0])} {o[1]}" for o in OUTPUTS])
def test_output_of_the_wrong_kind_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture, path: tuple, name: str,
                                              folder: bool) -> None:
    cmd = dict(COMMANDS)[path]
    param = next(p for p in cmd.params if p.name == name)
    a_file = tmp_path / "existing.txt"
    a_file.write_text("keep me\n")
    (tmp_path / "a_folder").mkdir()
    wrong = [a_file, a_file / "sub"] if folder else [tmp_path / "a_folder", a_file / "sub.tsv"]
    for target in wrong:
        given = [param.opts[0], str(target)] if param.param_type_name == "option" else [str(target)]
        argv = [*path, *_filled(cmd, tmp_path, skip=name), *given]
        code, out, err = run(capsys, *argv)
        assert code == 2 and out == "", argv
        shown = "/".join(param.opts) if param.param_type_name == "option" else name.upper()
        assert one_error_line(err).startswith(f"error: {shown}: ") and str(a_file if target != tmp_path / "a_folder"
                                                                             else target) in err, err
    assert a_file.read_text() == "keep me\n" and sorted(p.name for p in tmp_path.iterdir()) == ["a_folder", "existing.txt"]


def test_choice_options(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    cases = [
        (["extract", "x", "-o", str(tmp_path / "o")], "--dtype", ["fp64", "FP32", ""]),
        (["extract", "x", "-o", str(tmp_path / "o")], "--key-from", ["path", "Name"]),
        (["extract", "x", "-o", str(tmp_path / "o")], "--skip", ["label", "feature"]),
        (["extract", "x", "-o", str(tmp_path / "o")], "--device", ["gpu", "cuda:", "cuda:x", "mps"]),
        (["detector", "train", "d.yaml", "-o", str(tmp_path / "o")], "--device", ["gpu", "cuda0"]),
        (["detector", "eval", "d.yaml", "--weights", "w"], "--device", ["tpu"]),
        (["tsv", "check", "f.tsv"], "--kind", ["feature", "json"]),
    ]
    for base, option, values in cases:
        for v in values:
            code, out, err = run(capsys, *base, option, v)
            assert code == 2 and out == "" and option in one_error_line(err), (base, option, v, err)
    assert not (tmp_path / "o").exists()


def test_choice_lists_match_the_library() -> None:
    """The parse-time choices are the library's own lists."""
    from vinvl.detection.detector import _DTYPES
    from vinvl.extract.run import OUTPUT_FILES

    params = {p.name: p for p in dict(COMMANDS)[("extract",)].params}

    def accepts(name: str, value: str) -> bool:
        try:
            params[name].callback(None, params[name], [value] if name == "skip" else value)
            return True
        except typer.BadParameter:
            return False

    assert all(accepts("dtype", d) for d in _DTYPES) and not accepts("dtype", "fp64")
    assert all(accepts("skip", s) for s in OUTPUT_FILES) and not accepts("skip", "errors")


# -- detector settings: every typed setting refuses a value of the wrong type or range -----------
def _wrong_values(field: str, value) -> list[str]:  # type: ignore[no-untyped-def]
    if isinstance(value, bool):
        return ["abc", "1", "0.5"]
    if isinstance(value, int):
        return ["abc", "1.5", "True", "-1"] if field not in ("nms_filter",) else ["3", "abc", "True"]
    if isinstance(value, float):
        return ["abc", "True", "[1]"] + (["-0.5", "1.5"] if "thresh" in field else ["-1"])
    if isinstance(value, tuple):  # any mean is a valid pixel mean
        return ["abc", "5", "(1, 'x')", "()"] + ([] if field == "pixel_mean" else ["(-1,) * %d" % len(value)])
    return []


def test_every_detector_setting_is_type_and_range_checked() -> None:
    import dataclasses

    from vinvl.config import detector_preset
    from vinvl.config.original import ConfigError, apply_set_options, detector_fields

    cfg = detector_preset("shapes_demo")
    checked = 0
    for key in detector_fields():
        section, name = key.split("__")
        value = getattr(getattr(cfg, section), name)
        for bad in _wrong_values(name, value):
            bad = repr(eval(bad)) if bad.startswith("(-1,)") else bad  # noqa: S307 - a literal built above
            for given in (key, name):
                try:
                    apply_set_options(cfg, [f"{given}={bad}"])
                except ConfigError as e:
                    if "ambiguous" in str(e):
                        continue
                    assert str(e).startswith(f"--set {given}={bad}: ") and name in str(e) and "\n" not in str(e), e
                    checked += 1
                else:
                    pytest.fail(f"--set {given}={bad} was accepted")
        assert apply_set_options(cfg, [f"{key}={value!r}"]) == cfg  # the preset's own value round-trips
    assert checked > 150
    for f in dataclasses.fields(cfg.postprocess):
        assert f.name in {k.split("__")[1] for k in detector_fields()}


@pytest.mark.parametrize("setting", ["score_thresh=abc", "nms_thresh=2", "detections_per_img=0", "min_size=-3",
                                     "pixel_std=(1,1)", "ignore_box_regression=maybe", "anchor_sizes=[]"])
def test_bad_set_stops_extract_before_any_output(tmp_path: Path, capsys: pytest.CaptureFixture, setting: str) -> None:
    img_dir = Path(__file__).resolve().parents[2] / "examples" / "images"
    code, out, err = run(capsys, "extract", str(img_dir), "-o", str(tmp_path / "out"), "--model", "shapes_demo",
                         "--set", setting)
    assert code == 2 and out == ""
    assert one_error_line(err).startswith(f"error: --set {setting}: "), err
    assert not (tmp_path / "out").exists()


def test_bad_set_stops_detector_commands(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "d.yaml").write_text("img: i.tsv\nlabel: l.tsv\n")
    for argv in (["detector", "train", str(tmp_path / "d.yaml"), "-o", str(tmp_path / "run"), "--set", "nms_filter=7"],
                 ["detector", "train", str(tmp_path / "d.yaml"), "-o", str(tmp_path / "run"), "--set", "nope=1"],
                 ["detector", "train", str(tmp_path / "d.yaml"), "-o", str(tmp_path / "run"), "--set", "noequals"]):
        code, _, err = run(capsys, *argv)
        assert code == 2 and "--set" in one_error_line(err)
    assert not (tmp_path / "run").exists()


# -- rows out of range, empty files ------------------------------------------------------------
@pytest.mark.parametrize("rows", [0, 1, 3])
def test_show_row_out_of_range_and_empty(tmp_path: Path, capsys: pytest.CaptureFixture, rows: int) -> None:
    rng = np.random.default_rng(rows)
    path = T.write_tsv(tmp_path / "features.tsv",
                       [F.format_features_row(f"k{i}", rng.standard_normal((2, 10))) for i in range(rows)])
    for group in ("features", "tsv"):
        for row in (rows, rows + 7, 99, -1):
            code, out, err = run(capsys, group, "show", str(path), "--row", str(row))
            assert code == 2 and out == ""
            assert one_error_line(err).startswith(f"error: {path}"), err
            assert ("empty" in err) if rows == 0 and group == "features" else (f"row {row}" in err), err
        if rows:
            code, out, _ = run(capsys, group, "show", str(path), "--row", str(rows - 1))
            assert code == 0 and out
        code, _, err = run(capsys, group, "show", str(path), "--key", "nokey")
        assert code == 2 and ("empty" if rows == 0 and group == "features" else "nokey") in one_error_line(err)


# -- CR line endings at the command line -------------------------------------------------------
def test_crlf_files_at_the_command_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from tests.rows import make_prediction

    rng = np.random.default_rng(5)
    preds = [make_prediction(rng, f"k{i}", int(n)) for i, n in enumerate(rng.integers(1, 4, 3))]
    made = {
        "features.tsv": [F.format_features_row(p.key, p.region_features()) for p in preds],
        "predictions.tsv": [p.to_row() for p in preds],
        "label.tsv": [F.format_label_row(p) for p in preds],
        "hw.tsv": [F.format_hw_row(p.key, 5, 6) for p in preds],
    }
    for name, rows in made.items():
        path = T.write_tsv(tmp_path / name, rows)
        path.write_bytes(path.read_bytes().replace(b"\n", b"\r\n"))
        T.build_lineidx(path)
        code, _, err = run(capsys, "tsv", "check", str(path))
        assert code == 2 and err.count("CR line endings") == 3, err
        code, _, err = run(capsys, "tsv", "show", str(path), "--row", "2")
        assert code == 2 and f"{path}:3: " in err and "CR line endings" in one_error_line(err)
    for name in ("features.tsv", "predictions.tsv"):
        code, _, err = run(capsys, "features", "show", str(tmp_path / name), "--row", "1")
        assert code == 2 and "CR line endings" in one_error_line(err)
    code, _, err = run(capsys, "features", "to-oscar", str(tmp_path / "predictions.tsv"), "-o", str(tmp_path / "o"))
    assert code == 2 and "CR line endings" in one_error_line(err) and not (tmp_path / "o" / "features.tsv").exists()


# -- yaml parse errors ----------------------------------------------------------------------------
BAD_YAML = ["a: [1, 2\n", "a: b: c\n", "x:\n  - 1\n y: 2\n", "\"open\n", "k: !!python/object:os.system x\n",
            "{a: 1\n", "a:\n\t- tab\n", "- 1\n- 2\nb: 3\n"]


@pytest.mark.parametrize("text", BAD_YAML)
def test_yaml_parse_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture, text: str) -> None:
    from vinvl.yamlio import read_yaml

    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    with pytest.raises(FormatError) as e:
        read_yaml(bad)
    assert str(e.value).startswith(f"{bad}: not valid yaml: line ") and "\n" not in str(e.value)
    for argv in (["extract", "--config-file", str(bad), "--images", str(tmp_path), "-o", str(tmp_path / "o")],
                 ["detector", "train", str(bad), "-o", str(tmp_path / "o")]):
        code, out, err = run(capsys, *argv)
        assert code == 2 and out == "" and f"{bad}: not valid yaml: line " in one_error_line(err), err
    # readers outside this module (dataset yamls given to extract) still come out as one line naming the file
    code, out, err = run(capsys, "extract", str(bad), "-o", str(tmp_path / "o"), "--model", "shapes_demo")
    assert code == 2 and out == "" and str(bad) in one_error_line(err), err
    assert not (tmp_path / "o").exists()


def test_yaml_that_is_not_text(tmp_path: Path) -> None:
    from vinvl.yamlio import read_yaml

    (tmp_path / "b.yaml").write_bytes(b"a: \xff\xfe\n")
    with pytest.raises(FormatError, match=r"b.yaml:1: not UTF-8 text"):
        read_yaml(tmp_path / "b.yaml")
    with pytest.raises(FormatError, match=r"c.yaml: no such file"):
        read_yaml(tmp_path / "c.yaml")


# -- checkpoints torch refuses ---------------------------------------------------------------
class _Custom:
    pass


class _Evil:
    def __reduce__(self):  # type: ignore[no-untyped-def]
        import os

        return (os.system, ("echo pwned",))


def _unsafe_checkpoints(tmp: Path) -> dict[str, tuple[Path, str]]:
    import functools

    import torch

    made = {}
    for name, obj, shows in [
        ("class", {"model": {"w": torch.zeros(2)}, "extra": _Custom()}, "_Custom"),
        ("reduce", {"model": {"w": torch.zeros(2)}, "x": _Evil()}, "system"),
        ("partial", {"model": {"w": torch.zeros(2)}, "f": functools.partial(int, "3")}, "partial"),
    ]:
        torch.save(obj, tmp / f"{name}.pth")
        made[name] = (tmp / f"{name}.pth", shows)
    (tmp / "junk.pth").write_bytes(b"\x80\x02junk" * 10)
    made["junk"] = (tmp / "junk.pth", "not a readable PyTorch checkpoint")
    with zipfile.ZipFile(tmp / "zip.pth", "w") as z:
        z.writestr("a", "b")
    made["zip"] = (tmp / "zip.pth", "not a readable PyTorch checkpoint")
    (tmp / "pickle.pth").write_bytes(pickle.dumps({"a": 1}))
    made["pickle"] = (tmp / "pickle.pth", "not a readable PyTorch checkpoint")
    return made


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_refused_checkpoints_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from vinvl.detection.checkpoint import CheckpointError, read_checkpoint

    made = _unsafe_checkpoints(tmp_path)
    for name, (path, shows) in made.items():
        with pytest.raises(CheckpointError) as e:
            read_checkpoint(path)
        msg = str(e.value)
        assert msg.startswith(f"{path}: ") and "\n" not in msg and "\x1b" not in msg and shows in msg, msg
        if name in ("class", "reduce", "partial"):
            assert "refusing to load: the file needs unsafe unpickling" in msg and len(msg) < 400, msg
    img_dir = Path(__file__).resolve().parents[2] / "examples" / "images"
    code, out, err = run(capsys, "extract", str(img_dir), "-o", str(tmp_path / "out"), "--weights",
                         str(made["reduce"][0]), "--preset", "shapes_demo")
    assert code == 2 and "unsafe unpickling" in one_error_line(err) and not (tmp_path / "out").exists()


# -- the CLI's last line of defence: any user error's message on one line --------------------
@pytest.mark.parametrize("message", ["a\nb", "first line\n\n  second\tline\n", "\x1b[1mbold\x1b[0m\nnext"])
@pytest.mark.parametrize("exc", [VinvlError, KeyError, FormatError])
def test_main_prints_any_user_error_on_one_line(capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch,
                                                message: str, exc: type) -> None:
    from vinvl.labelmap import LabelMap

    def fail(*a, **k):  # type: ignore[no-untyped-def]
        raise exc(message)

    monkeypatch.setattr(LabelMap, "load", staticmethod(fail))
    code, out, err = run(capsys, "labelmap", "show", "x.json")
    assert code == 2 and out == ""
    assert one_error_line(err).endswith(one_line(message) + "\n") and "\x1b" not in err


def test_real_bugs_are_not_hidden(monkeypatch: pytest.MonkeyPatch) -> None:
    from vinvl.labelmap import LabelMap

    def bug(*a, **k):  # type: ignore[no-untyped-def]
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(LabelMap, "load", staticmethod(bug))
    with pytest.raises(ZeroDivisionError):
        main(["labelmap", "show", "x.json"])


def test_usage_errors_exit_2_on_one_line(capsys: pytest.CaptureFixture) -> None:
    for argv in (["tsv", "nope"], ["tsv", "check"], ["draw", "p.tsv"], ["features", "show", "f", "--row"],
                 ["labelmap", "show", "a", "b"], ["nope"], ["tsv", "show", "f", "--bogus"]):
        code, out, err = run(capsys, *argv)
        assert code == 2 and out == "" and one_error_line(err), argv
    code, out, _ = run(capsys)  # no arguments: the help, as before
    assert code == 2 and "Usage" in out + capsys.readouterr().err or code == 2


def test_json_manifest_of_to_oscar_names_width(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from tests.rows import make_prediction

    rng = np.random.default_rng(9)
    preds = [make_prediction(rng, f"k{i}", 2) for i in range(2)]
    for p in preds:
        p.features = rng.standard_normal((2, 40)).astype(np.float32)
    src = T.write_tsv(tmp_path / "predictions.tsv", [p.to_row() for p in preds])
    code, out, _ = run(capsys, "features", "to-oscar", str(src), "-o", str(tmp_path / "o"))
    assert code == 0 and "46-d rows" in out
    assert json.loads((tmp_path / "o" / "manifest.json").read_text())["feature_dim"] == 46
    for argv in (["tsv", "check", str(tmp_path / "o" / "features.tsv")], ["tsv", "check", str(src)]):
        assert run(capsys, *argv)[0] == 0
    code, _, err = run(capsys, "tsv", "check", str(src), "--dim", "2048")
    assert code == 2 and "40-d here but 2048-d as given" in err
    code, out, _ = run(capsys, "features", "show", str(tmp_path / "o" / "features.tsv"), "--row", "1")
    assert code == 0 and json.loads(out)["shape"] == [2, 46]
