"""Reliability of the file commands (`tsv index|merge|check`, `features to-oscar`, `draw`, `corpus build`) under
faults and odd data (docs/reliability.md): read-only and full file systems, killed merges and their temporaries,
non-string captions, empty files, duplicate keys, NaN/Infinity and NUL bytes."""

from __future__ import annotations

import builtins
import contextlib
import errno
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
from PIL import Image

from tests.rows import make_prediction
from vinvl import atomic
from vinvl import draw as D
from vinvl import features as F
from vinvl import tsv as T
from vinvl.cli import main
from vinvl.features import Prediction

SRC = str(Path(__file__).resolve().parents[1] / "src")


def run(capsys: pytest.CaptureFixture, *argv: Any) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_line(err: str) -> str:
    assert err.count("\n") == 1 and err.startswith("error: "), err
    return err


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (hidden ones too) and its bytes."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()} \
        if folder.exists() else {}


def temporaries(folder: Path) -> list[str]:
    return [p.name for p in folder.rglob("*") if ".tmp" in p.name]


# -- simulated file systems ---------------------------------------------------------------------------
def _under(path: Any, root: Path) -> bool:
    if isinstance(path, int):
        return False
    try:
        Path(os.path.abspath(os.fsdecode(path))).relative_to(root)
        return True
    except ValueError:
        return False


def _refuse(err: int, path: Any) -> OSError:
    return OSError(err, os.strerror(err), os.fsdecode(path))


@contextlib.contextmanager
def read_only(root: Path, err: int = errno.EROFS, probe: bool = True) -> Iterator[None]:
    """``root`` read-only inside the ``with``: for real (chmod) when not root, else every change under it refused
    with ``err`` (root writes through chmod). ``probe=False`` leaves ``os.open`` alone, so that only the real
    writes fail, not vinvl's up-front probe."""
    root = Path(os.path.abspath(root))
    if os.geteuid() != 0 and err in (errno.EROFS, errno.EACCES) and probe:
        mode = root.stat().st_mode & 0o7777
        root.chmod(0o555)
        try:
            yield
        finally:
            root.chmod(mode)
        return
    real_open, real_os_open, real_mkdir, real_replace = builtins.open, os.open, os.mkdir, os.replace

    def fake_open(file: Any, mode: str = "r", *a: Any, **k: Any) -> Any:
        if any(c in mode for c in "wax+") and _under(file, root):
            raise _refuse(err, file)
        return real_open(file, mode, *a, **k)

    def fake_os_open(path: Any, flags: int, *a: Any, **k: Any) -> int:
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT) and _under(path, root):
            raise _refuse(err, path)
        return real_os_open(path, flags, *a, **k)

    def fake_mkdir(path: Any, *a: Any, **k: Any) -> None:
        if _under(path, root):
            if os.path.exists(path):  # what a read-only file system answers for an existing folder
                raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), os.fsdecode(path))
            raise _refuse(err, path)
        real_mkdir(path, *a, **k)

    def fake_replace(src: Any, dst: Any, *a: Any, **k: Any) -> None:
        if _under(dst, root):
            raise _refuse(err, dst)
        real_replace(src, dst, *a, **k)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(builtins, "open", fake_open)
        mp.setattr(io, "open", fake_open)
        mp.setattr(os, "mkdir", fake_mkdir)
        mp.setattr(os, "replace", fake_replace)
        if probe:
            mp.setattr(os, "open", fake_os_open)
        yield


class _Filling:
    """A file object on a disk with ``state['left']`` bytes free: the write that does not fit writes what fits
    (a torn write) and fails with ENOSPC, as a full disk does."""

    def __init__(self, f: Any, state: dict[str, int]) -> None:
        self._f, self._state = f, state

    def write(self, data: Any) -> int:
        left = self._state["left"]
        if len(data) > left:
            self._f.write(data[:left])
            self._state["left"] = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._state["left"] = left - len(data)
        return self._f.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)

    def __enter__(self) -> "_Filling":
        return self

    def __exit__(self, *exc: Any) -> None:
        self._f.close()

    def __iter__(self) -> Any:
        return iter(self._f)


def disk_fills(monkeypatch: pytest.MonkeyPatch, root: Path, budget: int) -> dict[str, int]:
    """Files opened for writing under ``root`` share ``budget`` free bytes; the write past them fails with ENOSPC."""
    root = Path(os.path.abspath(root))
    state = {"left": budget, "budget": budget}
    real_open = builtins.open

    def fake_open(file: Any, mode: str = "r", *a: Any, **k: Any) -> Any:
        f = real_open(file, mode, *a, **k)
        return _Filling(f, state) if any(c in mode for c in "wax+") and _under(file, root) else f

    monkeypatch.setattr(builtins, "open", fake_open)
    monkeypatch.setattr(io, "open", fake_open)
    return state


# -- the commands and their inputs ---------------------------------------------------------------------
def _images(folder: Path, rows: list[Prediction]) -> None:
    for p in rows:
        arr = np.full((p.image_h, p.image_w, 3), 90, np.uint8)
        arr[..., 2] = np.linspace(40, 200, p.image_w).astype(np.uint8)[None]
        (folder / p.key).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr).save(folder / f"{p.key}.png")


@pytest.fixture
def data(tmp_path: Path) -> dict[str, Path]:
    """Inputs of every command: predictions with features and sizes, their images, two TSV shards."""
    rng = np.random.default_rng(5)
    preds = [make_prediction(rng, f"img{i}", n) for i, n in enumerate([3, 0, 5, 2])]
    for p in preds:
        p.features = p.features[:, :16]  # small rows: the fault points below cover them densely
        p.image_h, p.image_w = min(p.image_h, 120), min(p.image_w, 160)
        p.boxes = np.minimum(p.boxes, [p.image_w - 1, p.image_h - 1] * 2)
    subset = ("rect", "class", "conf", "feature", "attr_labels", "attr_scores")
    pred = T.write_tsv(tmp_path / "in" / "predictions.tsv", [p.to_row(subset) for p in preds])
    _images(tmp_path / "in" / "images", preds)
    shards = [T.write_tsv(tmp_path / "in" / f"s{i}.tsv", [[f"k{i}_{j}", "x" * j] for j in range(20)]) for i in range(3)]
    return {"pred": pred, "images": tmp_path / "in" / "images", "s0": shards[0], "s1": shards[1], "s2": shards[2],
            "tmp": tmp_path}


def _command(kind: str, d: dict[str, Path]) -> tuple[list[Any], Path]:
    """argv of one command and the folder its output goes to."""
    out = d["tmp"] / "out"
    if kind == "merge":
        return ["tsv", "merge", d["s0"], d["s1"], d["s2"], "-o", out / "merged.tsv"], out
    if kind == "to-oscar":
        return ["features", "to-oscar", d["pred"], "-o", out], out
    if kind == "draw":
        return ["draw", d["pred"], "--images", d["images"], "-o", out, "--html"], out
    # index: the index goes beside the files it indexes
    idx = d["tmp"] / "idx"
    idx.mkdir(exist_ok=True)
    files = []
    for i in range(3):
        f = idx / f"s{i}.tsv"
        f.write_bytes(d[f"s{i}"].read_bytes())
        files.append(f)
    return ["tsv", "index", *files], idx


KINDS = ["index", "merge", "to-oscar", "draw"]


# -- class 3: read-only and full file systems ----------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("err", [errno.EROFS, errno.EACCES])
def test_read_only_output_is_one_line_exit_2_before_work(tmp_path: Path, data: dict, kind: str, err: int,
                                                          capsys: pytest.CaptureFixture) -> None:
    argv, out = _command(kind, data)
    out.mkdir(exist_ok=True)
    (out / "old.txt").write_text("kept")
    before = snapshot(out)
    with read_only(out, err):
        code, text, stderr = run(capsys, *argv)
    assert code == 2 and text == "" and str(out) in one_line(stderr)
    assert "Traceback" not in stderr and ".tmp" not in stderr
    assert snapshot(out) == before


@pytest.mark.parametrize("kind", ["merge", "to-oscar", "draw"])
def test_output_under_a_read_only_parent(tmp_path: Path, data: dict, kind: str, capsys: pytest.CaptureFixture) -> None:
    argv, out = _command(kind, data)
    parent = out.parent / "ro"
    parent.mkdir()
    argv = [str(a).replace(str(out), str(parent / "new" / "out")) for a in argv]
    with read_only(parent):
        code, _, stderr = run(capsys, *argv)
    assert code == 2 and str(parent / "new") in one_line(stderr) and not (parent / "new").exists()


@pytest.mark.parametrize("kind", KINDS)
def test_refused_at_the_first_real_write_is_still_exit_2(tmp_path: Path, data: dict, kind: str,
                                                         capsys: pytest.CaptureFixture) -> None:
    """A place the up-front probe could write but the real write cannot (an ACL, a quota on names) is the user's
    path all the same: exit 2, one line naming the final file, never its temporary."""
    argv, out = _command(kind, data)
    out.mkdir(exist_ok=True)
    before = snapshot(out)
    with read_only(out, errno.EACCES, probe=False):
        code, _, stderr = run(capsys, *argv)
    assert code == 2 and str(out) in one_line(stderr) and ".tmp" not in stderr
    assert snapshot(out) == before


@pytest.mark.parametrize("kind", KINDS)
def test_disk_full_at_any_point_is_exit_1_and_loses_nothing(tmp_path: Path, data: dict, kind: str,
                                                            capsys: pytest.CaptureFixture,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """ENOSPC at evenly spaced byte counts of everything the command writes: one line naming the final file, exit 1;
    no temporary left; every file under a final name is the old one or the complete new one; the pieces finished
    before the fault (draw's pictures, index's earlier indexes) are kept."""
    argv, out = _command(kind, data)
    # An earlier output that a failed run must leave as it was.
    if kind == "merge":
        T.write_tsv(out / "merged.tsv", [["old", "1"]])
    elif kind == "to-oscar":
        F.to_oscar(T.write_tsv(tmp_path / "old.tsv", [make_prediction(np.random.default_rng(0), "old", 1).to_row()]),
                   out)
    elif kind == "draw":
        (out / "img0.png").parent.mkdir(parents=True, exist_ok=True)
        (out / "img0.png").write_bytes(b"an older picture")
    old = snapshot(out)
    state = disk_fills(monkeypatch, out, 1 << 40)
    code, _, err = run(capsys, *argv)
    assert code == 0, err
    new, total = snapshot(out), state["budget"] - state["left"]
    assert total > 0
    failures = 0
    for budget in sorted({0, 1, total - 1, *np.linspace(0, total - 1, 12).astype(int).tolist()}):
        state["left"] = 1 << 40
        for name, blob in old.items():  # back to the earlier output
            (out / name).write_bytes(blob)
        for name in set(snapshot(out)) - set(old):
            (out / name).unlink()
        state["left"] = budget
        code, _, err = run(capsys, *argv)
        assert code == 1, (budget, err)
        line = one_line(err)
        assert "disk full" in line and str(out) in line and ".tmp" not in line and "Traceback" not in line
        assert not temporaries(out), budget
        after = snapshot(out)
        for name, blob in after.items():
            assert blob in (old.get(name), new.get(name)), (budget, name)
        if kind in ("merge", "to-oscar"):  # all or nothing
            assert after == old, budget
        failures += 1
    assert failures >= 5
    state["left"] = 1 << 40
    code, _, err = run(capsys, *argv)  # once there is room the same command completes
    assert code == 0 and snapshot(out) == new, err


def test_disk_full_keeps_the_pictures_finished_before(tmp_path: Path, data: dict, capsys: pytest.CaptureFixture,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    argv, out = _command("draw", data)
    state = disk_fills(monkeypatch, out, 1 << 40)
    assert run(capsys, *argv)[0] == 0
    clean = snapshot(out)
    for p in list(out.rglob("*")):
        if p.is_file():
            p.unlink()
    state["left"] = len(clean["img0.png"]) + len(clean["img1.png"]) + 10  # two pictures fit, the third does not
    code, _, err = run(capsys, *argv)
    assert code == 1 and "img2.png" in one_line(err) and "kept" in err
    assert snapshot(out) == {k: clean[k] for k in ("img0.png", "img1.png")}


def test_disk_full_keeps_the_indexes_written_before(tmp_path: Path, data: dict, capsys: pytest.CaptureFixture,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    argv, idx = _command("index", data)
    disk_fills(monkeypatch, idx, len(T.lineidx_path(data["s0"]).read_bytes()) + 5)  # the first index fits
    code, _, err = run(capsys, *argv)
    assert code == 1 and "s1.lineidx" in one_line(err)
    assert (idx / "s0.lineidx").read_bytes() == T.lineidx_path(data["s0"]).read_bytes()
    assert not (idx / "s1.lineidx").exists() and not temporaries(idx)


# -- class 3: temporaries of killed runs ----------------------------------------------------------------
_CHILD = """
import sys, time
import vinvl.tsv as T
flag = sys.argv[1]
real = T._replace
def stop(tmp, final):  # the temporaries are complete: signal, then wait to be killed before the rename
    open(flag, "w").close()
    time.sleep(600)
T._replace = stop
from vinvl.cli import main
main(sys.argv[2:])
"""


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


@pytest.mark.parametrize("reap", [True, False])
def test_killed_merge_leaves_temporaries_that_the_next_run_removes(tmp_path: Path, data: dict, reap: bool,
                                                                    capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "m" / "merged.tsv"
    out.parent.mkdir()
    argv = ["tsv", "merge", str(data["s0"]), str(data["s1"]), "-o", str(out)]
    flag = tmp_path / "flag"
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    child = subprocess.Popen([sys.executable, "-c", _CHILD, str(flag), *argv], env=env)
    try:
        deadline = time.monotonic() + 120
        while not flag.exists():
            assert child.poll() is None and time.monotonic() < deadline, "the child merge stopped early"
            time.sleep(0.05)
        os.kill(child.pid, signal.SIGKILL)
        if reap:
            child.wait()
        else:  # killed but not reaped: a zombie, which kill(pid, 0) still answers
            stat = Path(f"/proc/{child.pid}/stat")
            while stat.exists() and stat.read_bytes().rsplit(b")", 1)[1][1:2] != b"Z":
                time.sleep(0.05)
        left = sorted(p.name for p in out.parent.iterdir())
        assert left == sorted([f".merged.tsv.tmp{child.pid}", f".merged.lineidx.tmp{child.pid}"])
        # Not ours to remove: a live process's temporary, other names, another pattern.
        live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        keep = [f".merged.tsv.tmp{live.pid}", ".merged.tsv.tmpx1", "merged.tsv.tmp1", f".other.tsv.tmp{_dead_pid()}"]
        for name in keep:
            (out.parent / name).write_text("not ours")
        try:
            code, _, err = run(capsys, *argv)
        finally:
            live.kill()
            live.wait()
        assert code == 0, err
        assert sorted(p.name for p in out.parent.iterdir()) == sorted(["merged.tsv", "merged.lineidx", *keep])
        assert out.read_bytes() == data["s0"].read_bytes() + data["s1"].read_bytes()
    finally:
        child.kill()
        child.wait()


@pytest.mark.parametrize("kind", KINDS)
def test_every_command_removes_its_stale_temporaries(tmp_path: Path, data: dict, kind: str,
                                                     capsys: pytest.CaptureFixture) -> None:
    argv, out = _command(kind, data)
    out.mkdir(exist_ok=True)
    dead = _dead_pid()
    names = {"index": ["s0.lineidx", "s2.lineidx"], "merge": ["merged.tsv", "merged.lineidx"],
             "to-oscar": ["features.tsv", "label.lineidx", "imageid2idx.json", "manifest.json"],
             "draw": ["img0.png", "index.html"]}[kind]
    for n in names:
        (out / f".{n}.tmp{dead}").write_bytes(b"half")
    if kind == "to-oscar":  # a staging folder of a killed conversion
        (out / f".to-oscar.tmp{dead}").mkdir()
        (out / f".to-oscar.tmp{dead}" / "features.tsv").write_bytes(b"half")
    assert run(capsys, *argv)[0] == 0
    assert not temporaries(out)


def test_remove_stale_temporaries_only_touches_dead_owners(tmp_path: Path) -> None:
    dead = _dead_pid()
    mine = atomic.temporary_name(tmp_path / "a.tsv")
    for name in (f".a.tsv.tmp{dead}", mine.name, ".a.tsv.tmp1", f"a.tsv.tmp{dead}", f".b.tsv.tmp{dead}"):
        (tmp_path / name).write_text("x")
    removed = atomic.remove_stale_temporaries(tmp_path, ["a.tsv"])
    assert [p.name for p in removed] == [f".a.tsv.tmp{dead}"]  # pid 1 lives; ours is in use; others are not ours
    assert atomic.remove_stale_temporaries(tmp_path / "missing", ["a.tsv"]) == []
    assert atomic.pid_alive(os.getpid()) and not atomic.pid_alive(dead) and not atomic.pid_alive(0)


# -- class 4: corpus build refuses what is not text -------------------------------------------------------
def _corpus_inputs(tmp: Path) -> tuple[Path, Path]:
    from tests.corpus.test_build import extracted

    return extracted(tmp, "coco", {"1": ["dog"], "2": ["cat"]}), extracted(tmp, "gqa", {"g1": ["bus"]})


NOT_TEXT = [123, 1.5, None, ["a", "b"], {"x": 1}, True]


@pytest.mark.parametrize("value", NOT_TEXT, ids=repr)
@pytest.mark.parametrize("field", ["caption", "image_id", "vqa question", "gqa question", "gqa answer",
                                   "gqa imageId", "qla q", "qla img_id"])
def test_corpus_build_refuses_what_is_not_text(tmp_path: Path, field: str, value: Any,
                                               capsys: pytest.CaptureFixture) -> None:
    coco, gqa = _corpus_inputs(tmp_path)
    good_caption = {"image_id": 1, "caption": "a dog"}
    name, key = field.rsplit(" ", 1) if " " in field else ("caption", field)
    if name == "caption":
        entries = [good_caption, {**good_caption, "image_id": 2, "caption": "a cat", key: value}]
        doc: Any = {"annotations": entries}
        where, opt = "annotations[1]", ["--captions", f"coco={tmp_path / 'in.json'}"]
    elif name == "vqa":
        doc = {"questions": [{"image_id": 1, "question": "what?", "question_id": 7},
                             {"image_id": 2, "question": value, "question_id": 8}]}
        where, opt = "questions[1]", ["--questions", f"coco={tmp_path / 'in.json'}"]
    elif name == "gqa":
        doc = {"q1": {"imageId": "g1", "question": "what color?", "answer": "red"},
               "q2": {"imageId": "g1", "question": "which?", "answer": "blue", key: value}}
        where, opt = "question 'q2'", ["--questions", f"gqa={tmp_path / 'in.json'}"]
    else:
        doc = [{"img_id": "g1", "q": "what?", "q_id": 3}, {"img_id": "g1", "q": "which?", "q_id": 4, key: value}]
        where, opt = "entry 1", ["--questions", f"gqa={tmp_path / 'in.json'}"]
    (tmp_path / "in.json").write_text(json.dumps(doc))
    argv = ["corpus", "build", tmp_path / "out", *opt, "--features", f"coco={coco}", "--features", f"gqa={gqa}"]
    code, _, err = run(capsys, *argv)
    ids = key in ("image_id", "imageId", "img_id")
    if value is None and key == "answer" or ids and isinstance(value, int) and not isinstance(value, bool):
        assert code == 0, err  # no answer (a test split), an integer id: both fine
        return
    assert code == 2 and f"{tmp_path / 'in.json'}: {where}" in one_line(err) and f"'{key}'" in err, err
    assert json.dumps(value)[:20] in err
    assert not (tmp_path / "out" / "corpus.tsv").exists() and not (tmp_path / "out" / "corpus.yaml").exists()
    assert not temporaries(tmp_path / "out")


def test_corpus_build_writes_strings_and_integer_ids(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    coco, _ = _corpus_inputs(tmp_path)
    (tmp_path / "c.json").write_text(json.dumps({"annotations": [{"image_id": 1, "caption": " a  dog\n"},
                                                                 {"image_id": "2", "caption": "123"}]}))
    code, _, err = run(capsys, "corpus", "build", tmp_path / "out", "--captions", f"coco={tmp_path / 'c.json'}",
                       "--features", f"coco={coco}")
    assert code == 0, err
    assert list(T.TSVFile(tmp_path / "out" / "corpus.tsv")) == [["coco_1", "coco_1", "a dog"],
                                                                ["coco_2", "coco_2", "123"]]


# -- class 8: empty files, duplicate keys, NaN and NUL --------------------------------------------------
def test_an_empty_file_is_valid_for_tsv_check(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    errors = T.write_tsv(tmp_path / "errors.tsv", [])  # a clean run's errors.tsv and its index
    code, out, err = run(capsys, "tsv", "check", errors)
    assert code == 0 and err == "" and "0 rows OK" in out
    for kind in ("plain", "features", "predictions", "label", "hw"):
        assert run(capsys, "tsv", "check", errors, "--kind", kind)[0] == 0
    T.lineidx_path(errors).write_text("0\n")  # but an index that says otherwise is stale
    code, _, err = run(capsys, "tsv", "check", errors)
    assert code == 2 and "stale index" in err


@pytest.mark.parametrize("chunk", [3, 7, 64, 1 << 20])
def test_merge_refuses_a_key_twice_naming_both_places(tmp_path: Path, chunk: int, capsys: pytest.CaptureFixture,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(T, "_SCAN_CHUNK", chunk)  # keys cut by chunk ends are found whole
    rng = np.random.default_rng(chunk)
    keys = [f"key{'x' * int(rng.integers(0, 9))}{i}" for i in range(60)]
    rows = [[k, "v" * int(rng.integers(0, 30))] for k in keys] + [["solo_" + "y" * 9]]
    a = T.write_tsv(tmp_path / "a.tsv", rows[:25])
    b = T.write_tsv(tmp_path / "b.tsv", rows[25:])
    out = tmp_path / "m.tsv"
    assert run(capsys, "tsv", "merge", a, b, "-o", out)[0] == 0
    assert T.TSVFile(out).keys() == [r[0] for r in rows]
    c = T.write_tsv(tmp_path / "c.tsv", [["other", "1"], [keys[30], "again"]])
    before = out.read_bytes()
    code, _, err = run(capsys, "tsv", "merge", a, b, c, "-o", out)
    assert code == 2 and f"{c}:2 (key '{keys[30]}'): duplicate key (first at {b}:6)" in one_line(err)
    assert out.read_bytes() == before and not temporaries(tmp_path)
    e = T.write_tsv(tmp_path / "e.tsv", [["other", "1"], ["zz", "2"], [keys[2], "again"]])  # first in the first shard
    code, _, err = run(capsys, "tsv", "merge", a, b, e, "-o", out)
    assert code == 2 and f"{e}:3 (key '{keys[2]}'): duplicate key (first at {a}:3)" in one_line(err)
    d = T.write_tsv(tmp_path / "d.tsv", [["p", "1"], ["q", "2"], ["p", "3"]])  # twice within one shard
    for shards in ([d], [a, d]):
        code, _, err = run(capsys, "tsv", "merge", *shards, "-o", tmp_path / "n.tsv")
        assert code == 2 and f"{d}:3 (key 'p'): duplicate key (first at line 1)" in one_line(err)
        assert not (tmp_path / "n.tsv").exists()
    code, _, err = run(capsys, "tsv", "merge", a, b, c, "-o", out, "--allow-duplicate-keys")  # a corpus, say
    assert code == 0 and len(T.TSVFile(out)) == len(rows) + 2


def _feature_row(key: str, arr: np.ndarray) -> list[str]:
    return F.format_features_row(key, arr)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_check_reports_nan_and_infinity(tmp_path: Path, bad: float, capsys: pytest.CaptureFixture) -> None:
    rng = np.random.default_rng(3)
    x = rng.standard_normal((3, 10)).astype(np.float32)
    y = x.copy()
    y[1, 4] = bad
    feats = T.write_tsv(tmp_path / "features.tsv", [_feature_row("a", x), _feature_row("b", y), _feature_row("c", x)])
    code, _, err = run(capsys, "tsv", "check", feats)
    assert code == 2 and "features.tsv:2 (key 'b'): 1 NaN or infinite number in the row, the first in box 1 (value 4)" \
        in err
    cap = T.write_tsv(tmp_path / "cap.tsv", [F.format_caption_features_row("a", x), F.format_caption_features_row("b", y)])
    code, _, err = run(capsys, "tsv", "check", cap)
    assert code == 2 and "cap.tsv:2 (key 'b')" in err and "NaN or infinite" in err
    preds = []
    for field in ("rect", "conf", "feature", "attr_scores"):
        p = make_prediction(rng, field, 2)
        p.features = p.features[:, :10]
        if field == "rect":
            p.boxes[1, 2] = bad
        elif field == "conf":
            p.scores[1] = bad
        elif field == "feature":
            p.features[1, 3] = bad
        else:
            p.attr_scores = [[0.5], [0.5, bad]]
            p.attributes = [["red"], ["big", "old"]]
        preds.append(p)
    subset = ("rect", "class", "conf", "feature", "attr_labels", "attr_scores")
    ptsv = T.write_tsv(tmp_path / "predictions.tsv", [p.to_row(subset) for p in preds])  # json writes NaN, Infinity
    code, _, err = run(capsys, "tsv", "check", ptsv)
    lines = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    assert code == 2 and len(lines) == 4
    for n, (ln, field) in enumerate(zip(lines, ("rect", "conf", "feature", "attr_scores")), start=1):
        assert f"predictions.tsv:{n} (key '{field}')" in ln and f"object 1's {field}" in ln
    code, _, err = run(capsys, "features", "to-oscar", ptsv, "-o", tmp_path / "o")
    assert code == 2 and "predictions.tsv:1 (key 'rect')" in one_line(err) and not (tmp_path / "o" / "features.tsv").exists()
    label = T.write_tsv(tmp_path / "label.tsv", [["a", json.dumps([{"class": "x", "conf": bad, "rect": [0, 0, 1, 1]}])]])
    code, _, err = run(capsys, "tsv", "check", label, "--kind", "label")
    assert code == 2 and "label.tsv:1 (key 'a')" in err and "object 0's conf" in err


def test_check_reports_nul_bytes(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    x = np.ones((2, 10), np.float32)
    good = ["\t".join(_feature_row(k, x)).encode() + b"\n" for k in "abc"]
    p = tmp_path / "features.tsv"
    # a NUL block, as a torn or preallocated write leaves, before a row, and one NUL inside a key
    p.write_bytes(good[0] + b"\0" * 64 + good[1] + good[2].replace(b"c", b"c\0", 1))
    code, _, err = run(capsys, "tsv", "check", p)
    assert code == 2
    assert "features.tsv:2: NUL byte at byte 0 of the row" in err and "features.tsv:3: NUL byte at byte 1" in err
    assert "2 problems in 3 rows" in err


# -- class 9: labels that never overlap or leave the image, attributes by score ---------------------------
def _dense(rng: np.random.Generator, w: int, h: int, n: int) -> Prediction:
    xy = rng.uniform(-10, [w * 0.7, h * 0.7], (n, 2))
    wh = rng.uniform(10, [w * 0.6, h * 0.6], (n, 2))
    words = ["white", "blue", "long", "wooden", "metal", "striped"]
    attrs = [list(rng.choice(words, int(rng.integers(0, 4)), replace=False)) for _ in range(n)]
    return Prediction(f"d{n}", np.concatenate([xy, xy + wh], 1), [f"thing{int(c)}" for c in rng.integers(0, 30, n)],
                      rng.uniform(0.1, 1, n), attributes=attrs,
                      attr_scores=[rng.uniform(0, 1, len(a)).tolist() for a in attrs])


@pytest.mark.parametrize("size", [(320, 240), (90, 200), (640, 120), (60, 40)])
@pytest.mark.parametrize("seed", range(4))
def test_labels_never_overlap_and_stay_inside_the_image(size: tuple[int, int], seed: int) -> None:
    rng = np.random.default_rng(seed)
    pred = _dense(rng, *size, int(rng.integers(5, 30)))
    labels = D.layout_labels(pred, size, top_attributes=3)
    w, h = size
    boxes = dict(D.visible_boxes(pred, size))
    assert labels and len(labels) >= min(5, len(boxes)) // 2
    for k, lab in enumerate(labels):
        x1, y1, x2, y2 = lab.rect
        assert 0 <= x1 <= x2 < w and 0 <= y1 <= y2 < h, lab
        assert pred.classes[lab.index][:3] in lab.text or "..." in lab.text
        for other in labels[k + 1:]:
            assert not D._overlaps(lab.rect, other.rect), (lab, other)
    # What is drawn is that layout: each label's fill colour at its rectangle's corners.
    image = Image.new("RGB", size, (0, 0, 0))
    drawn = np.asarray(D.draw_prediction(image, pred, top_attributes=3))
    palette = D.Palette()
    for i, _ in D.visible_boxes(pred, size):
        palette.color(pred.classes[i])
    for lab in labels:
        x1, y1, x2, y2 = lab.rect
        for y, x in ((y1, x1), (y1, x2), (y2, x1), (y2, x2)):
            assert tuple(drawn[y, x]) == palette.color(pred.classes[lab.index])


def test_a_label_too_wide_is_shortened_not_cut(tmp_path: Path) -> None:
    p = Prediction("n", np.array([[5, 5, 85, 195]], np.float32), ["refrigerator"], np.array([0.9], np.float32),
                   attributes=[["stainless", "silver", "tall"]], attr_scores=[[0.5, 0.7, 0.6]])
    (lab,) = D.layout_labels(p, (90, 200), top_attributes=3)
    assert lab.rect[2] < 90 and lab.text.endswith("0.90") and "refrigerator" in lab.text
    assert D.box_label(p, 0, top_attributes=3) == "silver tall stainless refrigerator 0.90"
    (lab,) = D.layout_labels(p, (30, 200))
    assert lab.rect[2] < 30 and lab.text.endswith("0.90")


def test_attributes_in_score_order_everywhere(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """The same attributes in another file order read the same; padding (score 0) and NaN scores are left out."""
    boxes = np.array([[10, 10, 60, 60], [70, 10, 120, 60], [10, 70, 60, 110]], np.float32)
    p = Prediction("img", boxes, ["cat", "dog", "cow"], np.array([0.9, float("nan"), 0.7], np.float32),
                   attributes=[["small", "white", "furry"], ["furry", "small", "white"], ["white", "pad", "odd"]],
                   attr_scores=[[0.2, 0.9, 0.5], [0.5, 0.2, 0.9], [0.9, 0.0, float("nan")]],
                   image_h=120, image_w=130)
    assert D.box_label(p, 0, 3) == "white furry small cat 0.90"
    assert D.box_label(p, 1, 3).startswith("white furry small dog")
    assert D.box_label(p, 2, 3) == "white cow 0.70"
    assert D.selected_boxes(p) == [0, 2]  # a NaN score neither sorts first nor is drawn
    tsv = T.write_tsv(tmp_path / "p.tsv", [p.to_row(("rect", "class", "conf", "attr_labels", "attr_scores"))])
    _images(tmp_path / "im", [p])
    code, _, err = run(capsys, "draw", tsv, "--images", tmp_path / "im", "-o", tmp_path / "o", "--html")
    assert code == 0, err
    page = (tmp_path / "o" / "index.html").read_text()
    assert "<td>white (0.90), furry (0.50), small (0.20)</td>" in page and "<td>white (0.90)</td>" in page
