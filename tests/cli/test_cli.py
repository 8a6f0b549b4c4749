"""The `vinvl` command line: the groups of the foundation, exit codes, one-line errors, and the libraries'
warnings routed through vinvl's one `warning:` line or dropped as noise (Reliability 2, item 9)."""

from __future__ import annotations

import io
import json
import logging
import os
import struct
import subprocess
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

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



# -- what a user sees: vinvl's one-line notes, not the libraries' warnings (Reliability 2, item 9) -----------
_TIFF = b"MM\x00\x2a\x00\x00\x00\x08"  # big-endian TIFF header, first IFD at offset 8
CORRUPT_EXIF = {  # EXIF blocks PIL warns about, each in its own words
    "ifd_cut_short": (_TIFF + struct.pack(">H", 5) + struct.pack(">HHII", 0x010E, 2, 3, 0), "Corrupt EXIF data"),
    "tag_past_the_end": (_TIFF + struct.pack(">H", 1) + struct.pack(">HHII", 0x010E, 2, 1000, 26) + b"\0" * 4,
                         "Tag data larger than file"),
    "tag_cut_short": (_TIFF + struct.pack(">H", 1) + struct.pack(">HHII", 0x010E, 2, 20, 20) + b"\0" * 4 + b"abcdef",
                      "Truncated File Read"),
}


def _jpeg_with_exif(exif: bytes) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 30, 30)).save(buf, "JPEG", exif=b"Exif\x00\x00" + exif)
    return buf.getvalue()


def test_corrupt_exif_decodes_without_a_warning() -> None:
    from PIL import Image

    from vinvl.images import decode_image, open_image

    for name, (exif, pil_says) in CORRUPT_EXIF.items():
        data = _jpeg_with_exif(exif)
        with warnings.catch_warnings(record=True) as raw:
            warnings.simplefilter("always")
            Image.open(io.BytesIO(data)).load()
        assert any(pil_says in str(w.message) for w in raw), (name, [str(w.message) for w in raw])  # PIL does warn
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            images = [decode_image(data), decode_image(data, exif_transpose=True), open_image(data)]
        assert [str(w.message) for w in seen] == [], name
        assert all(im.size == (64, 48) for im in images)  # the pixels decode: damaged metadata is no failure


def test_extract_says_nothing_of_pil_or_torch_warnings(ex: SimpleNamespace, tiny: Path, tmp_path: Path) -> None:
    """Corrupt-EXIF JPEGs and a checkpoint pickled with protocol 3 (torch reads it, with a warning) through the
    real command, in a child process as a user runs it: the run succeeds and stderr carries no library warning."""
    import torch

    images = tmp_path / "imgs"
    images.mkdir()
    for name, (exif, _) in CORRUPT_EXIF.items():
        (images / f"{name}.jpg").write_bytes(_jpeg_with_exif(exif))
    weights = tmp_path / "protocol3.pth"
    torch.save(torch.load(tiny / "tiny.pth", weights_only=True), weights, pickle_protocol=3)
    with warnings.catch_warnings(record=True) as raw:
        warnings.simplefilter("always")
        torch.load(weights, weights_only=True)
    assert any("pickle protocol 3" in str(w.message) for w in raw)  # torch does warn about this file
    out = tmp_path / "out"
    argv = [a for a in ex.args(out, images=images) if a != "--quiet"]
    argv[argv.index("--weights") + 1] = str(weights)
    r = ex.run(argv)
    assert r.returncode == 0, r.stderr
    for library_text in ("EXIF", "Tag data", "Truncated File Read", "pickle protocol", "UserWarning", "warnings.warn",
                         "site-packages"):
        assert library_text not in r.stderr, (library_text, r.stderr)
    assert [ln for ln in r.stderr.splitlines() if ln.startswith("warning:")] == []  # nothing here is worth a note
    assert (out / "errors.tsv").read_text() == "" and len((out / "predictions.tsv").read_text().splitlines()) == 3


def test_a_checkpoint_torch_cannot_read_is_one_line_without_torch_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture, recwarn: pytest.WarningsRecorder
) -> None:
    import torch

    weights = tmp_path / "protocol4.pth"
    torch.save({"model": {"w": torch.zeros(2)}}, weights, pickle_protocol=4)
    images = Path(__file__).resolve().parents[2] / "examples" / "images"
    code, out, err = run(capsys, "extract", str(images), "-o", str(tmp_path / "out"), "--weights", str(weights),
                         "--preset", "shapes_demo")
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith(f"error: {weights}: not a readable PyTorch checkpoint (") and "opcode FRAME, of pickle " \
        "protocol 4" in err, err
    # Not merely kept off stderr by pytest: the warning never left vinvl's routing.
    assert [str(w.message) for w in recwarn if "pickle protocol" in str(w.message)] == []


def test_warnings_are_one_line_each_and_noise_is_dropped(capsys: pytest.CaptureFixture,
                                                         monkeypatch: pytest.MonkeyPatch,
                                                         recwarn: pytest.WarningsRecorder) -> None:
    from vinvl.errors import VinvlError
    from vinvl.labelmap import LabelMap

    lib = Path("/venv/lib/python3.11/site-packages")

    def load(*a, **k):  # type: ignore[no-untyped-def]
        warnings.warn("the labels\n  look odd", RuntimeWarning)
        warnings.warn("the labels\n  look odd", RuntimeWarning)  # the same note again: said once
        warnings.warn_explicit("Corrupt EXIF data.  Expecting to read 12 bytes but only got 0. ", UserWarning,
                               str(lib / "PIL" / "TiffImagePlugin.py"), 982)
        warnings.warn_explicit("Detected pickle protocol 4 in the checkpoint", UserWarning,
                               str(lib / "torch" / "serialization.py"), 2241)
        warnings.warn_explicit("`resume_download` is deprecated", FutureWarning,
                               str(lib / "huggingface_hub" / "file_download.py"), 1)
        warnings.warn_explicit("`foo` is deprecated", DeprecationWarning, __file__, 1)  # raised at the caller's line
        warnings.warn_explicit("CUDA initialization: unexpected error\n\nsecond line", UserWarning,
                               str(lib / "torch" / "cuda" / "__init__.py"), 1)
        raise VinvlError("x.json: bad label map")

    monkeypatch.setattr(LabelMap, "load", staticmethod(load))
    code, out, err = run(capsys, "labelmap", "show", "x.json")
    assert code == 2 and out == ""
    assert err.splitlines() == ["warning: the labels look odd",
                                "warning: torch: CUDA initialization: unexpected error second line",
                                "error: x.json: bad label map"]
    assert recwarn.list == []  # each went through vinvl's routing, none on to Python's


def test_library_loggers_are_quiet_inside_a_command(capsys: pytest.CaptureFixture,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """transformers' and the hub's logging chatter ('Some weights of ...'): only errors, for this process (even
    where the library is already imported) and its workers (the variables); the user's own choice is kept."""
    from vinvl.labelmap import LabelMap

    pytest.importorskip("transformers")
    seen: list[tuple] = []

    def load(*a, **k):  # type: ignore[no-untyped-def]
        seen.append((os.environ.get("TRANSFORMERS_VERBOSITY"), os.environ.get("HF_HUB_VERBOSITY"),
                     logging.getLogger("transformers").getEffectiveLevel()))
        raise KeyError("x.json: no such file")

    monkeypatch.setattr(LabelMap, "load", staticmethod(load))
    monkeypatch.delenv("TRANSFORMERS_VERBOSITY", raising=False)
    monkeypatch.delenv("HF_HUB_VERBOSITY", raising=False)
    before = logging.getLogger("transformers").level
    assert run(capsys, "labelmap", "show", "x.json")[0] == 2
    assert seen[-1] == ("error", "error", logging.ERROR)
    assert "TRANSFORMERS_VERBOSITY" not in os.environ and logging.getLogger("transformers").level == before
    monkeypatch.setenv("TRANSFORMERS_VERBOSITY", "info")
    assert run(capsys, "labelmap", "show", "x.json")[0] == 2
    assert seen[-1][0] == "info" and os.environ["TRANSFORMERS_VERBOSITY"] == "info"


def test_warning_lines_name_the_library() -> None:
    from vinvl.errors import QUIET_WARNINGS, warning_library, warning_line

    lib = Path("/usr/lib/python3/dist-packages")
    assert warning_library(str(lib / "PIL" / "Image.py")) == "PIL"
    assert warning_library(str(lib / "torch" / "nn" / "modules" / "module.py")) == "torch"
    import vinvl.images

    assert warning_library(vinvl.images.__file__) == "vinvl"
    assert warning_library("/home/me/script.py") == ""
    from PIL import Image

    # A decompression bomb matters (the decoder refuses it with its reason); it is not PIL's metadata noise.
    assert warning_line("Image size (1 pixels) exceeds limit", Image.DecompressionBombWarning,
                        str(lib / "PIL" / "Image.py")) == "PIL: Image size (1 pixels) exceeds limit"
    assert warning_line("Possibly corrupt EXIF data.", UserWarning, str(lib / "PIL" / "TiffImagePlugin.py")) is None
    assert warning_line("odd", UserWarning, str(lib / "torch" / "serialization.py")) == "torch: odd"
    assert all(len(row) == 4 and row[3] for row in QUIET_WARNINGS)  # every silenced kind says why
