"""The `vinvl` command line: the groups of the foundation, exit codes, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.rows import make_prediction
from vinvl import features as F
from vinvl import tsv as T
from vinvl.cli import main


def run(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_help_lists_groups(capsys: pytest.CaptureFixture) -> None:
    code, out, _ = run(capsys, "--help")
    assert code == 0
    for group in ("tsv", "features", "labelmap"):
        assert group in out
    assert run(capsys, "--version")[1].startswith("vinvl ")


def test_python_dash_m_and_console_script(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "vinvl", "tsv", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "check" in r.stdout
    bad = tmp_path / "x.tsv"
    bad.write_bytes(b"a\t1\nb")
    r = subprocess.run([sys.executable, "-m", "vinvl", "tsv", "index", str(bad)], capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.strip() == f"error: {bad}:2: last row is truncated (no newline at end of file)"
    assert "Traceback" not in r.stderr


def test_usage_error_is_2(capsys: pytest.CaptureFixture) -> None:
    assert run(capsys, "tsv", "nope")[0] == 2
    assert run(capsys, "features", "to-oscar")[0] == 2


def test_tsv_commands(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    p = tmp_path / "x.tsv"
    p.write_text("a\t1\nb\t2\n")
    code, out, _ = run(capsys, "tsv", "index", str(p))
    assert code == 0 and "2 rows" in out and T.lineidx_path(p).read_text() == "0\n4\n"
    code, out, _ = run(capsys, "tsv", "show", str(p), "--key", "b")
    assert code == 0 and out.splitlines() == ["[0] b", "[1] 2"]
    assert "2 rows" in run(capsys, "tsv", "show", str(p))[1]
    code, _, err = run(capsys, "tsv", "show", str(p), "--key", "zz")
    assert code == 2 and "no row with key 'zz'" in err
    assert run(capsys, "tsv", "show", str(p), "--row", "5")[0] == 2
    q = T.write_tsv(tmp_path / "y.tsv", [["c", "3"]])
    code, out, _ = run(capsys, "tsv", "merge", str(p), str(q), "-o", str(tmp_path / "m.tsv"))
    assert code == 0 and (tmp_path / "m.tsv").read_text() == "a\t1\nb\t2\nc\t3\n"
    code, out, _ = run(capsys, "tsv", "check", str(tmp_path / "m.tsv"))
    assert code == 0 and "3 rows OK" in out


def test_tsv_check_reports_all_and_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    good = F.encode_floats(np.zeros((1, 2054), np.float32))
    rows = [
        f"a\t1\t{good}",
        f"b\t2\t{good}",  # num_boxes disagrees with the blob
        "c\t1\t!!!!",  # invalid base64
        f"a\t1\t{good}",  # duplicate key
        "d\t1",  # wrong column count
        f"e\t1\t{good[:-8]}",  # blob not a multiple of 4 x 2054
    ]
    p = tmp_path / "features.tsv"
    p.write_text("\n".join(rows) + "\n")
    code, _, err = run(capsys, "tsv", "check", str(p))
    assert code == 2
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert [ln.split(":")[2] for ln in lines] == ["2 (key 'b')", "3 (key 'c')", "4 (key 'a')", "5", "6 (key 'e')"]
    assert "5 problems in 6 rows (features)" in err


def test_features_to_oscar_and_show(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    rng = np.random.default_rng(0)
    preds = [make_prediction(rng, f"k{i}", n, size=False) for i, n in enumerate([2, 0, 5])]
    src = T.write_tsv(tmp_path / "predictions.tsv", [p.to_row() for p in preds])
    hw = T.write_tsv(tmp_path / "hw.tsv", [F.format_hw_row(p.key, 100, 200) for p in preds])
    code, _, err = run(capsys, "features", "to-oscar", str(src), "-o", str(tmp_path / "o"))
    assert code == 2 and err.startswith("error: ") and "--hw" in err and len(err.splitlines()) == 1
    code, out, _ = run(capsys, "features", "to-oscar", str(src), "--hw", str(hw), "-o", str(tmp_path / "o"))
    assert code == 0 and "3 images, 7 boxes" in out
    code, out, _ = run(capsys, "features", "show", str(tmp_path / "o/features.tsv"), "--key", "k2")
    assert code == 0 and json.loads(out)["shape"] == [5, 2054]
    code, out, _ = run(capsys, "features", "show", str(src), "--row", "0")
    assert code == 0 and json.loads(out)["shape"] == [2, 2048]
    assert run(capsys, "tsv", "check", str(tmp_path / "o/label.tsv"))[0] == 0
    assert run(capsys, "tsv", "check", str(src))[0] == 0


def test_labelmap_commands(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    lm = tmp_path / "lm.json"
    lm.write_text(json.dumps({"label_to_idx": {"cat": 1, "dog": 2}, "attribute_to_idx": {"red": 1}}))
    code, out, _ = run(capsys, "labelmap", "show", str(lm))
    assert code == 0 and "3 classes" in out and "2 attributes" in out
    assert run(capsys, "labelmap", "lookup", str(lm), "dog", "1")[1].splitlines() == ["2\tdog", "1\tcat"]
    assert run(capsys, "labelmap", "lookup", str(lm), "--attribute", "red")[1] == "1\tred\n"
    code, _, err = run(capsys, "labelmap", "lookup", str(lm), "cow")
    assert code == 2 and "no class named 'cow'" in err
    mp = tmp_path / "coco.json"
    mp.write_text(json.dumps({"puppy": 2}))
    assert run(capsys, "labelmap", "map", str(mp), "puppy", "--target", str(lm))[1] == "puppy\t2\tdog\n"
    (tmp_path / "o365.tsv").write_text("person\t1\nbus\t2\n")
    code, _, _ = run(capsys, "labelmap", "convert", str(tmp_path / "o365.tsv"), "-o", str(tmp_path / "o.json"), "--attributes", str(lm))
    assert code == 0
    assert json.loads((tmp_path / "o.json").read_text())["label_to_idx"] == {"person": 1, "bus": 2}
    (tmp_path / "bad.json").write_text(json.dumps({"label_to_idx": {"a": 1, "b": 5}}))
    code, _, err = run(capsys, "labelmap", "show", str(tmp_path / "bad.json"))
    assert code == 2 and "bad.json: label_to_idx: non-contiguous index 5" in err


_BLOB = F.encode_floats(np.zeros((1, 2054), np.float32))


@pytest.mark.parametrize(
    "content, command, where",
    [
        (b"a\t1\nb", ["tsv", "index"], ":2: last row is truncated"),
        (f"a\t1\t{_BLOB}\nb\t1\n".encode(), ["features", "show", "--key", "b"], ":2 (key 'b')"),
        (b"a\t1\t!!\n", ["features", "show", "--key", "a"], ":1 (key 'a'): invalid base64"),
        (f"a\t1\t{_BLOB[:-8]}\n".encode(), ["features", "show", "--row", "0"], "not a multiple of 4 bytes"),
        (f"a\t1\t{_BLOB[:-8]}\n".encode(), ["features", "show", "--row", "0", "--dim", "2054"], "not a multiple of 4"),
        (f"a\t1\t{_BLOB}\nb\t2\t{_BLOB}\n".encode(), ["features", "show", "--row", "1"], ":2 (key 'b'): num_boxes says 2"),
        (f"a\t2\t{_BLOB}\n".encode(), ["features", "show", "--row", "0", "--dim", "2054"], ":1 (key 'a'): num_boxes says 2"),
        (b"a\t1\nb\t2\na\t3\n", ["tsv", "show", "--key", "b"], ":3 (key 'a'): duplicate key"),
        (b"a\t\xff\n", ["tsv", "show", "--row", "0"], ":1: invalid UTF-8"),
        (b"", ["features", "to-oscar", "-o", "OUT"], ": file is empty"),
        (b"k\tnot json\n", ["features", "to-oscar", "-o", "OUT"], ":1 (key 'k'): invalid JSON"),
    ],
)
def test_bad_input_one_line_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture, content: bytes, command: list[str], where: str
) -> None:
    p = tmp_path / "in.tsv"
    p.write_bytes(content)
    argv = [a.replace("OUT", str(tmp_path / "out")) for a in command]
    code, _, err = run(capsys, *argv[:2], str(p), *argv[2:])
    assert code == 2
    assert err.count("\n") == 1 and err.startswith(f"error: {p}") and where in err, err


def test_stale_index_cli(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    p = T.write_tsv(tmp_path / "x.tsv", [["a", "1"], ["b", "2"]])
    T.lineidx_path(p).write_text("0\n3\n")
    code, _, err = run(capsys, "tsv", "show", str(p), "--row", "1")
    assert code == 2 and f"{p}:2: index x.lineidx does not match the file: stale index" in err
    code, _, err = run(capsys, "tsv", "check", str(p))
    assert code == 2 and "stale index" in err
