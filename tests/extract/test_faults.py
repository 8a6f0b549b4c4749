"""Faults and odd inputs of `vinvl extract` (issue 16, classes 1-6): keys a TSV cannot hold, text files that
are not UTF-8, degenerate images, a resume with changed settings, a SIGKILL at every phase of a run, a full
disk in every phase, and stale indexes."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import sys
import threading
from pathlib import Path
from typing import Optional

import numpy as np
import pytest
import torch
from PIL import Image

from vinvl import tsv as T
from vinvl.cli import main
from vinvl.detection import Detector
from vinvl.detection.preprocess import target_size
from vinvl.extract import run as R
from vinvl.labelmap import LabelMap

SKIP_ODD_NAMES = sys.platform == "win32"


def _image(path: Path, h: int = 64, w: int = 80, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)
    return path


def _one_line_error(code: int, err: str, *needles: str) -> None:
    assert code == (1 if "disk full" in needles else 2), err  # a fault mid-run: 1; the user's input: 2
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for n in needles:
        assert n in lines[0], (n, lines[0])


# --- 1. keys a TSV cannot hold, text that is not UTF-8 -------------------------------------------------------

@pytest.mark.skipif(SKIP_ODD_NAMES, reason="POSIX file names")
@pytest.mark.parametrize("name", ["a\tb.jpg", "c\nd.jpg", "e\rf.jpg", "g\x0bh.jpg", "i\x85j.jpg", "k\u2028l.jpg",
                                  " lead.jpg", "trail .jpg", "del\x7f.jpg"])
def test_folder_key_that_a_tsv_cannot_hold_is_refused_up_front(ex, tmp_path: Path, capsys, name: str) -> None:
    d = tmp_path / "imgs"
    _image(d / "fine.jpg")
    _image(d / name, seed=1)
    out = tmp_path / "o"
    code, _, err = ex.cli(capsys, *ex.args(out, images=d))
    _one_line_error(code, err, "its key", "--key-map")
    assert not out.exists()  # refused before any work


@pytest.mark.skipif(SKIP_ODD_NAMES, reason="POSIX file names")
def test_non_utf8_file_name(ex, tmp_path: Path, capsys) -> None:
    d = tmp_path / "imgs"
    _image(d / "fine.jpg")
    odd = os.fsdecode(b"caf\xe9.jpg")  # latin-1 bytes: not UTF-8
    _image(d / odd, seed=1)
    code, _, err = ex.cli(capsys, *ex.args(tmp_path / "o", images=d))
    _one_line_error(code, err, "caf\\xe9.jpg", "not valid UTF-8")
    # A key map naming it as the error shows it gives it a key; one holding the raw bytes is not UTF-8 text.
    (tmp_path / "keys.json").write_text(json.dumps({"fine.jpg": "fine", "caf\\xe9.jpg": "cafe"}))
    code, _, err = ex.cli(capsys, *ex.args(tmp_path / "o2", "--key-map", tmp_path / "keys.json", images=d))
    assert code == 0, err
    assert T.TSVFile(tmp_path / "o2" / "predictions.tsv").keys() == ["cafe", "fine"]
    (tmp_path / "keys.tsv").write_bytes(b"fine.jpg\tfine\n" + os.fsencode(odd) + b"\tcafe\n")
    code, _, err = ex.cli(capsys, *ex.args(tmp_path / "o3", "--key-map", tmp_path / "keys.tsv", images=d))
    _one_line_error(code, err, "keys.tsv:2", "not UTF-8 text")
    # Broken, it lands in errors.tsv under its key with its location escaped, on one row.
    (d / odd).write_bytes(b"broken")
    code, _, err = ex.cli(capsys, *ex.args(tmp_path / "o4", "--key-map", tmp_path / "keys.json", images=d))
    assert code == 3, err
    (row,) = list(T.TSVFile(tmp_path / "o4" / "errors.tsv"))
    assert row[0] == "cafe" and row[1].endswith("caf\\xe9.jpg")


@pytest.mark.parametrize("rule", ["map_tab", "map_newline", "map_empty", "regex_newline", "tsv_cr", "tsv_space"])
def test_keys_from_every_rule_and_input_kind_are_checked(ex, tmp_path: Path, capsys, rule: str) -> None:
    d = tmp_path / "imgs"
    _image(d / "x1.jpg")
    _image(d / "x2.jpg", seed=1)
    extra: list[str] = []
    inputs = d
    if rule.startswith("map_"):
        bad = {"map_tab": "k\tx", "map_newline": "k\nx", "map_empty": ""}[rule]
        (tmp_path / "m.json").write_text(json.dumps({"x1.jpg": "ok", "x2.jpg": bad}))
        extra = ["--key-map", str(tmp_path / "m.json")]
    elif rule == "regex_newline":
        (d / "x1.jpg").rename(d / "x\n1.jpg")
        extra = ["--key-regex", r"^(x\s1)"]
        (d / "x2.jpg").unlink()
    else:
        raw = (d / "x1.jpg").read_bytes()
        import base64

        key = b"k\r" if rule == "tsv_cr" else b" k"
        inputs = tmp_path / "images.tsv"
        inputs.write_bytes(b"good\t" + base64.b64encode(raw) + b"\n" + key + b"\t" + base64.b64encode(raw) + b"\n")
    out = tmp_path / "o"
    code, _, err = ex.cli(capsys, *ex.args(out, *extra, images=inputs))
    _one_line_error(code, err, "its key")
    assert not out.exists()


@pytest.mark.parametrize("what", ["list", "keymap_tsv", "keymap_json", "linelist", "yaml"])
def test_text_inputs_that_are_not_utf8_are_one_line(ex, tmp_path: Path, capsys, what: str) -> None:
    img = _image(tmp_path / "x.jpg")
    extra: list[str] = []
    bad = b"x.jpg\n# caf\xe9\n"
    if what == "list":
        inputs = tmp_path / "l.txt"
        inputs.write_bytes(bad)
    elif what.startswith("keymap"):
        inputs = img
        f = tmp_path / ("m.tsv" if what == "keymap_tsv" else "m.json")
        f.write_bytes(b"x.jpg\tk\n\xff\tz\n" if what == "keymap_tsv" else b'{"x.jpg": "\xe9"}')
        extra = ["--key-map", str(f)]
    else:
        import base64

        (tmp_path / "img.tsv").write_bytes(b"k\t" + base64.b64encode(img.read_bytes()) + b"\n")
        inputs = tmp_path / "d.yaml"
        if what == "linelist":
            (tmp_path / "ll.tsv").write_bytes(b"0\n\xff\n")
            inputs.write_text("img: img.tsv\nlinelist: ll.tsv\n")
        else:
            inputs.write_bytes(b"img: img.tsv\n# \xe9\n")
    code, _, err = ex.cli(capsys, *ex.args(tmp_path / "o", *extra, images=inputs))
    _one_line_error(code, err, "not UTF-8 text")


# --- 2. degenerate images -----------------------------------------------------------------------------------

@pytest.mark.parametrize(("w", "h", "lo", "hi", "want"), [
    (640, 480, 320, 480, (320, 426)), (427, 640, 320, 480, (479, 320)), (640, 427, 600, 1000, (600, 899)),
    (451, 300, 600, 1000, (600, 902)), (1, 3000, 600, 1000, (1000, 1)), (3000, 1, 600, 1000, (1, 1000)),
    (2, 5000, 600, 1000, (1000, 1)), (1, 200, 600, 1000, (1000, 5)), (1, 1, 600, 1000, (600, 600)),
    (1, 1999, 600, 1000, (1999, 1)),  # the rule gives size 1, the short side: kept as it is, as the original does
    (1, 2000, 600, 1000, (1000, 1)), (1, 2001, 600, 1000, (1000, 1)),  # size rounds to 0: clamped
])
def test_target_size_follows_the_rule_and_clamps_what_it_cannot_serve(w, h, lo, hi, want) -> None:
    assert target_size(w, h, lo, hi) == want


def test_degenerate_images_are_processed_and_the_run_goes_on(ex, tmp_path: Path, capsys) -> None:
    d = tmp_path / "imgs"
    shapes = {"a_1x3000": (3000, 1), "b_3000x1": (1, 3000), "c_2x5000": (5000, 2), "d_1x1": (1, 1),
              "e_1x160": (160, 1), "f_normal": (90, 120), "g_3x2": (2, 3)}
    for i, (name, (h, w)) in enumerate(shapes.items()):
        _image(d / f"{name}.png", h, w, seed=i)
    out = tmp_path / "o"
    code, _, err = ex.cli(capsys, *ex.args(out, images=d))
    assert code == 0, err
    preds = {k: json.loads(v) for k, v in T.TSVFile(out / "predictions.tsv")}
    assert list(preds) == sorted(shapes)
    for name, (h, w) in shapes.items():
        p = preds[name]
        assert (p["image_h"], p["image_w"]) == (h, w)
        for obj in p["objects"]:
            x1, y1, x2, y2 = obj["rect"]
            assert -1 <= x1 <= x2 <= w + 1 and -1 <= y1 <= y2 <= h + 1, (name, obj["rect"])
    assert (out / "errors.tsv").read_bytes() == b""


# --- 3. resume with changed settings ------------------------------------------------------------------------

def interrupted(ex, out: Path, capsys, monkeypatch, *extra: str, images: Path | None = None) -> None:
    """A run stopped by a full disk after its first batch."""
    real = R._Shard.write_batch
    calls = {"n": 0}

    def failing(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(self.paths["predictions"]))
        return real(self, *a, **k)

    monkeypatch.setattr(R._Shard, "write_batch", failing)
    code, _, err = ex.cli(capsys, *ex.args(out, *extra, images=images))
    monkeypatch.setattr(R._Shard, "write_batch", real)
    _one_line_error(code, err, "disk full")


def test_resume_refuses_every_setting_that_changes_bytes(ex, tiny: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    out = tmp_path / "o"
    lm = tmp_path / "labelmap.json"
    shutil.copy(tiny / "labelmap.json", lm)
    interrupted(ex, out, capsys, monkeypatch, "--labelmap", str(lm))
    # The same label map file name with other class names: the mix of two maps in one label.tsv.
    other = LabelMap(("__background__",) + tuple(f"z{i}" for i in range(1, 11)),
                     ("__no_attribute__",) + tuple(f"a{i}" for i in range(1, 7)))
    other.save_vg_json(tmp_path / "other.json")
    det = Detector.from_config("tiny", seed=1)
    torch.save({"model": det.model.state_dict()}, tmp_path / "other.pth")
    cases = {
        "labelmap": ["--labelmap", str(tmp_path / "other.json")],
        "weights": ["--labelmap", str(lm), "--weights", str(tmp_path / "other.pth")],
        "numerics": ["--labelmap", str(lm), "--dtype", "bf16"],
        "config.postprocess": ["--labelmap", str(lm), "--set", "score_thresh=0.3"],
        "inputs_sha256": ["--labelmap", str(lm), "--key-from", "name"],
        "skip": ["--labelmap", str(lm), "--skip", "hw"],
        "exif_transpose": ["--labelmap", str(lm), "--exif-transpose"],
    }
    for changed, extra in cases.items():
        args = ex.args(out, "--resume", *extra)
        if "--weights" in extra:  # the later --weights wins over base_args' own
            args[args.index("--weights") + 1] = extra[extra.index("--weights") + 1]
        code, _, err = ex.cli(capsys, *args)
        assert code == 2 and "other settings" in err and changed in err, (changed, err)
    shutil.copy(tmp_path / "other.json", lm)  # same path, other contents
    code, _, err = ex.cli(capsys, *ex.args(out, "--resume", "--labelmap", str(lm)))
    assert code == 2 and "labelmap changed" in err, err
    shutil.copy(tiny / "labelmap.json", lm)
    code, _, err = ex.cli(capsys, *ex.args(out, "--resume", "--labelmap", str(lm)))
    assert code == 0, err
    ref = tmp_path / "ref"
    assert ex.cli(capsys, *ex.args(ref))[0] == 0
    assert ex.digest(out) == ex.digest(ref)
    # A finished run resumed with other settings is refused too, naming them; with the same ones it is complete.
    code, _, err = ex.cli(capsys, *ex.args(out, "--resume", "--labelmap", str(tmp_path / "other.json")))
    assert code == 2 and "labelmap changed" in err, err
    code, _, err = ex.cli(capsys, *ex.args(out, "--resume", "--labelmap", str(lm)))
    assert code == 0, err


# --- 4. a kill at any point of any phase --------------------------------------------------------------------

def forked(argv: list[str], trigger: Optional[str] = None, at: int = 0, stats: Optional[Path] = None) -> int:
    """Run the CLI in a forked child (one thread, like the reference) that SIGKILLs itself at the ``at``-th
    function call (Python or C) after ``trigger`` (a function of vinvl.extract.run) was entered; returns the
    child's exit code, or -9 when it was killed. ``stats`` receives the calls counted and the count at which
    each function of the run module was entered."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 99
        try:
            torch.set_num_threads(1)
            count, marks = 0, []

            def profile(frame, event, arg) -> None:
                nonlocal count
                if event in ("call", "c_call"):
                    count += 1
                    if count == at:
                        os.kill(os.getpid(), signal.SIGKILL)
                    if event == "call" and frame.f_globals.get("__name__") == R.__name__:
                        marks.append([frame.f_code.co_name, count])

            if trigger is not None:
                real = getattr(R, trigger)

                def armed(*a, **k):
                    # On until the child ends (what follows the trigger counts too), in this thread and the
                    # threads it starts (the writer thread of the batches).
                    threading.setprofile(profile)
                    sys.setprofile(profile)
                    return real(*a, **k)

                setattr(R, trigger, armed)
            code = main(argv)
            sys.setprofile(None)
            if stats is not None:
                stats.write_text(json.dumps({"calls": count, "marks": marks}))
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


@pytest.fixture(scope="module")
def kill_case(ex, tmp_path_factory) -> tuple[Path, Path]:
    """Seven images (one broken, so errors.tsv has a row) and a clean forked run of them."""
    d = tmp_path_factory.mktemp("kill")
    for i, (h, w) in enumerate([(60, 80), (80, 60), (70, 70), (60, 80), (90, 40), (50, 50)]):
        _image(d / "imgs" / f"im{i}.png", h, w, seed=i)
    (d / "imgs" / "im9.png").write_bytes(b"broken")
    ref = d / "ref"
    assert forked(ex.args(ref, images=d / "imgs")) == 3
    return d, ref


def _points(first: int, last: int, n: int) -> list[int]:
    return sorted({int(x) for x in np.linspace(first, last, n)})


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_sigkill_at_any_point_of_every_phase_resumes_byte_identical(ex, kill_case, tmp_path: Path) -> None:
    d, ref = kill_case
    out = tmp_path / "o"
    args = ex.args(out, images=d / "imgs")
    resume = args + ["--resume"]
    stats = tmp_path / "stats.json"

    def phase_points(trigger: str, argv: list[str], until: Optional[str], n: int, prepare=lambda: None) -> list[int]:
        prepare()
        assert forked(argv, trigger, 0, stats) in (0, 3)
        s = json.loads(stats.read_text())
        end = next((c for name, c in s["marks"] if name == until), s["calls"]) if until else s["calls"]
        return _points(1, end, n)

    def fresh() -> None:
        shutil.rmtree(out, ignore_errors=True)

    def killed_in_batches() -> None:
        fresh()
        assert forked(args, "_write_window", 3) == -signal.SIGKILL  # inside the first batch's rows

    phases = [
        # (how the run starts, the trigger, its argv, up to which function, kill points)
        ("fresh start", fresh, "_extract", args, "_run_batches", 7),
        ("resume start", killed_in_batches, "_extract", resume, "_run_batches", 6),
        ("batches", fresh, "_run_batches", args, None, 4),
        ("merge and clean-up", fresh, "_wait_for_shards", args, None, 10),
    ]
    kills = 0
    for label, prepare, trigger, argv, until, n in phases:
        for at in phase_points(trigger, argv, until, n, prepare):
            prepare()
            code = forked(argv, trigger, at)
            assert code in (-signal.SIGKILL, 3), (label, at, code)
            kills += code == -signal.SIGKILL
            code = forked(resume)
            assert code in (0, 3), (label, at, code)  # 0: resumed a run found complete
            assert ex.digest(out) == ex.digest(ref), (label, at)
            assert not (out / R.WORK_DIR).exists(), (label, at)
            assert json.loads((out / "manifest.json").read_text())["counts"] == \
                json.loads((ref / "manifest.json").read_text())["counts"], (label, at)
    assert kills >= 20


def test_damaged_work_folder_redoes_what_it_lost(ex, kill_case, tmp_path: Path) -> None:
    """A shard file removed or cut short behind the run's back (or a torn settings.json) never becomes NUL bytes
    or a traceback: the journal falls back to what every file still holds and those batches are redone."""
    d, ref = kill_case
    out = tmp_path / "o"
    args = ex.args(out, images=d / "imgs")
    shard = out / R.WORK_DIR / "shard-00000-of-00001"
    for damage in ("remove features", "cut predictions", "torn journal line"):
        shutil.rmtree(out, ignore_errors=True)
        assert forked(args, "_wait_for_shards", 1) == -signal.SIGKILL  # every batch done, nothing merged
        if damage == "remove features":
            (shard / "features.tsv").unlink()
        elif damage == "cut predictions":
            os.truncate(shard / "predictions.tsv", (shard / "predictions.tsv").stat().st_size // 3)
        else:
            with open(shard / "journal.tsv", "ab") as f:
                f.write(b'{"batches": 9, "counts"')
        assert forked(args + ["--resume"]) == 3, damage
        assert ex.digest(out) == ex.digest(ref), damage
    shutil.rmtree(out)
    assert forked(args, "_wait_for_shards", 1) == -signal.SIGKILL
    (shard / "settings.json").write_text('{"inputs_sha')
    code = forked(args + ["--resume"])
    assert code == 2


# --- 5. a full disk in every phase --------------------------------------------------------------------------

def _full_after(monkeypatch, module, name: str, nth: int, partial: bool = False) -> None:
    """Make the ``nth`` call of ``module.name`` fail with ENOSPC (after copying half, with ``partial``)."""
    real = getattr(module, name)
    calls = {"n": 0}

    def full(*a, **k):
        calls["n"] += 1
        if calls["n"] == nth:
            if partial:  # T._copy_rows(src_path, dst)
                data = Path(a[0]).read_bytes()
                a[1].write(data[: max(1, len(data) // 2)])
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(*a, **k)

    monkeypatch.setattr(module, name, full)


@pytest.mark.parametrize("phase", ["settings", "merge_first", "merge_third", "key_index", "manifest", "batch"])
def test_disk_full_in_every_phase(ex, kill_case, tmp_path: Path, capsys, monkeypatch, phase: str) -> None:
    d, ref = kill_case
    out = tmp_path / "o"
    args = ex.args(out, images=d / "imgs")
    torch.set_num_threads(1)  # as the reference run (restored after the test)
    with monkeypatch.context() as m:
        if phase == "settings":
            _full_after(m, R, "atomic_write_text", 1)
        elif phase.startswith("merge"):
            _full_after(m, T, "_copy_rows", 1 if phase == "merge_first" else 3, partial=True)
        elif phase == "key_index":
            _full_after(m, R, "write_key_index", 1)
        elif phase == "manifest":
            _full_after(m, R, "atomic_write_text", 3)  # settings, DONE, manifest
        else:
            _full_after(m, R._Shard, "write_batch", 2)
        code, _, err = ex.cli(capsys, *args)
    _one_line_error(code, err, "disk full", "--resume")
    leftovers = [p.name for p in out.rglob(".*.tmp*")] if out.exists() else []
    assert not leftovers  # temporaries of the failed write are removed
    code, _, err = ex.cli(capsys, *args, "--resume")
    assert code == 3, err
    assert ex.digest(out) == ex.digest(ref)


# --- 6. stale indexes ---------------------------------------------------------------------------------------

def _stale_by_append(path: Path, rows: list[list[str]]) -> None:
    with open(path, "ab") as f:
        for r in rows:
            f.write(("\t".join(r) + "\n").encode())


@pytest.mark.parametrize("how", ["appended", "cut", "rewritten", "appended_8b"])
def test_stale_shard_index_is_refused_by_merge_and_named_by_readers(tmp_path: Path, capsys, how: str) -> None:
    a = T.write_tsv(tmp_path / "a.tsv", [["a1", "x"], ["a2", "y"]])
    b = T.write_tsv(tmp_path / "b.tsv", [["b1", "x"], ["b2", "yy"], ["b3", "z"]])
    if how.startswith("appended"):
        _stale_by_append(b, [["b4", "w"], ["b5", "v"]])
        if how == "appended_8b":
            offsets = T.read_lineidx(T.lineidx_path(b))
            T.lineidx8b_path(b).write_bytes(offsets.astype("<i8").tobytes())
            T.lineidx_path(b).unlink()
    elif how == "cut":  # its last row removed
        os.truncate(b, 11)
    else:  # rows of other lengths, but the same ends: only reading the rows (or merging) can tell
        b.write_text("b1\txx\nb2\ty\nb3\tz\n")
    code = main(["tsv", "merge", str(a), str(b), "-o", str(tmp_path / "m.tsv")])
    err = capsys.readouterr().err
    _one_line_error(code, err, "b.", "stale index")
    assert not (tmp_path / "m.tsv").exists() and not (tmp_path / "m.lineidx").exists()
    if how == "rewritten":
        code = main(["tsv", "show", str(b), "--key", "b2"])
        err = capsys.readouterr().err
        _one_line_error(code, err, "does not match the index")
        return
    for argv in (["tsv", "show", str(b)], ["tsv", "show", str(b), "--key", "b4" if how != "cut" else "b1"]):
        code = main(argv)
        _one_line_error(code, capsys.readouterr().err, "stale index")


def test_an_error_is_the_only_line_also_with_the_default_model(tmp_path: Path, capsys, monkeypatch) -> None:
    """The default model's notes (demo model, numerics) come only once the inputs and weights are known good."""
    monkeypatch.setenv("VINVL_HOME", str(tmp_path / "home"))
    d = tmp_path / "imgs"
    _image(d / "fine.jpg")
    _image(d / "bad\tname.jpg", seed=1)
    code = main(["extract", str(d), "-o", str(tmp_path / "o")])
    _one_line_error(code, capsys.readouterr().err, "its key")
