"""`vinvl extract`'s guards around a run: resume by what the inputs are (not how their paths are spelled), folders
reached through links, an output folder that cannot be written, a finished run's outputs re-checked, one run per
output folder."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.extract.test_faults import interrupted
from vinvl import tsv as T


def _copy_images(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


# -- 1. the resume fingerprint is the inputs, not the path as typed ----------------------------------------------
def test_another_spelling_of_the_same_inputs_resumes(ex, tiny: Path, clean: Path, tmp_path: Path, capsys,
                                                      monkeypatch) -> None:
    out = tmp_path / "o"
    monkeypatch.chdir(tiny)
    interrupted(ex, out, capsys, monkeypatch, images=Path("imgs"))  # relative to the working folder
    monkeypatch.chdir(tmp_path)
    code, _, err = ex.cli(capsys, *ex.args(out, "--resume", images=tiny / "imgs"))  # absolute, elsewhere
    assert code == 0, err
    assert ex.digest(out) == ex.digest(clean)


def test_other_inputs_under_the_same_spelling_are_refused(ex, tiny: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    _copy_images(tiny / "imgs", a / "imgs")
    _copy_images(tiny / "imgs", b / "imgs")
    rng = np.random.default_rng(5)
    for f in (b / "imgs").rglob("*.jpg"):  # the same names, other pictures
        Image.fromarray(rng.integers(0, 255, (64, 80, 3), dtype=np.uint8)).save(f)
    out = tmp_path / "o"
    monkeypatch.chdir(a)
    interrupted(ex, out, capsys, monkeypatch, images=Path("imgs"))
    monkeypatch.chdir(b)
    code, _, err = ex.cli(capsys, *ex.args(out, "--resume", images=Path("imgs")))
    assert code == 2 and err.count("\n") == 1
    assert "inputs_sha256 changed: image 'im01' is another file" in err and str(b / "imgs" / "im01.jpg") in err


def test_an_image_rewritten_after_the_kill_is_noticed(ex, tiny: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    imgs = _copy_images(tiny / "imgs", tmp_path / "imgs")
    out = tmp_path / "o"
    interrupted(ex, out, capsys, monkeypatch, images=imgs)
    done = T.TSVFile(out / ".vinvl-extract/shard-00000-of-00001/predictions.tsv", build_index=True).keys()
    assert done, "the interrupted run wrote some images"
    victim = imgs / f"{done[0]}.jpg"
    Image.fromarray(np.zeros((40, 50, 3), np.uint8)).save(victim)
    code, _, err = ex.cli(capsys, *ex.args(out, "--resume", images=imgs))
    assert code == 2 and f"image {done[0]!r} changed since the interrupted run" in err


# -- 2. folders reached through links; entries that cannot be read ---------------------------------------------
def test_linked_folders_are_followed_and_broken_entries_listed(ex, tiny: Path, tmp_path: Path, capsys) -> None:
    data = tmp_path / "data"
    (data / "own").mkdir(parents=True)
    shutil.copy(tiny / "imgs" / "im01.jpg", data / "own" / "a.jpg")
    elsewhere = _copy_images(tiny / "imgs" / "s", tmp_path / "elsewhere")
    (data / "photos").symlink_to(elsewhere, target_is_directory=True)
    (data / "gone").symlink_to(tmp_path / "nowhere", target_is_directory=True)  # a dangling folder link
    (data / "own" / "lost.jpg").symlink_to(tmp_path / "nothing.jpg")  # a dangling file link
    (data / "photos_again").symlink_to(data, target_is_directory=True)  # a loop back to the top
    os.mkfifo(data / "own" / "pipe.jpg")  # opening it would block forever
    out = tmp_path / "o"
    code, _, err = ex.cli(capsys, *ex.args(out, images=data))
    assert code == 3, err
    keys = T.TSVFile(out / "predictions.tsv").keys()
    linked = sorted(f"photos/{p.stem}" for p in elsewhere.glob("*.jpg"))
    assert keys == ["own/a", *linked]  # each real folder once, through the first link that reaches it
    errors = {r[0]: r[2] for r in T.TSVFile(out / "errors.tsv")}
    assert set(errors) == {"gone", "own/lost", "own/pipe"}
    assert errors["gone"].startswith("dangling link to") and errors["own/lost"].startswith("dangling link to")
    assert "not a regular file" in errors["own/pipe"]


# -- 3. an output folder that cannot be written fails before the model loads ---------------------------------------
def test_an_unwritable_output_folder_fails_before_the_model(ex, tiny: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    import errno

    from vinvl import atomic

    real_open = os.open

    def read_only(path, *a, **k):
        if "vinvl-write-probe" in os.fspath(path):
            raise OSError(errno.EROFS, "Read-only file system", os.fspath(path))
        return real_open(path, *a, **k)

    out = tmp_path / "o"
    out.mkdir()
    monkeypatch.setattr(atomic.os, "open", read_only)
    code, _, err = ex.cli(capsys, *ex.args(out))
    assert code == 2 and err.count("\n") == 1 and f"{out}: Read-only file system" in err
    assert not list(out.iterdir())  # nothing was written: the model never ran
    rofs = os.statvfs_result((4096,) * 3 + (0,) * 5 + (os.ST_RDONLY, 255))  # a missing -o: its parent is asked
    monkeypatch.setattr(atomic.os, "statvfs", lambda p: rofs)
    code, _, err = ex.cli(capsys, *ex.args(tmp_path / "new" / "o"))
    assert code == 2 and "Read-only file system" in err and not (tmp_path / "new").exists()


def test_a_read_only_output_fails_before_torch_is_imported(ex, tiny: Path, tmp_path: Path) -> None:
    """The check runs before the heavy imports: a child process never loads torch."""
    code = (
        "import sys, os, errno\n"
        "from vinvl import atomic\n"
        "real = os.open\n"
        "def ro(p, *a, **k):\n"
        "    if 'vinvl-write-probe' in os.fspath(p): raise OSError(errno.EROFS, 'Read-only file system')\n"
        "    return real(p, *a, **k)\n"
        "atomic.os.open = ro\n"
        "from vinvl.cli import main\n"
        "rc = main(sys.argv[1:])\n"
        "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH')\n"
        "sys.exit(rc)\n"
    )
    (tmp_path / "o").mkdir()
    r = subprocess.run([sys.executable, "-c", code, *ex.args(tmp_path / "o")], env=ex.ENV, capture_output=True, text=True)
    assert r.returncode == 2 and "Read-only file system" in r.stderr and r.stdout.strip() == "NO-TORCH", (r.stdout, r.stderr)


# -- 5. a finished run's outputs are checked before "done" ---------------------------------------------------------
def test_resume_of_a_finished_run_checks_its_outputs(ex, tiny: Path, clean: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "o"
    shutil.copytree(clean, out)
    code, _, err = ex.cli(capsys, *ex.args(out, "--resume"))
    assert code == 0, err
    with open(out / "predictions.tsv", "r+b") as f:
        f.truncate(f.seek(0, 2) // 2)
    code, _, err = ex.cli(capsys, *ex.args(out, "--resume"))
    assert code == 2 and err.count("\n") == 1 and "predictions.tsv: has" in err and "changed after the run" in err


def test_resume_of_a_finished_run_with_failed_inputs_keeps_exit_3(ex, tiny: Path, tmp_path: Path, capsys) -> None:
    imgs = _copy_images(tiny / "imgs", tmp_path / "imgs")
    (imgs / "broken.jpg").write_bytes(b"not an image")
    out = tmp_path / "o"
    code, _, err = ex.cli(capsys, *ex.args(out, images=imgs))
    assert code == 3, err
    code, stdout, err = ex.cli(capsys, *ex.args(out, "--resume", images=imgs))
    assert code == 3 and "1 failed" in stdout, (stdout, err)


# -- 6. one run per output folder ----------------------------------------------------------------------------------
_HOLDER = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o644)
fcntl.flock(fd, fcntl.LOCK_EX)
os.pwrite(fd, f"{os.getpid()}\\n".encode(), 0)
print("held", flush=True)
time.sleep(60)
"""


def test_a_second_run_on_the_same_folder_fails_at_once(ex, tiny: Path, tmp_path: Path, capsys) -> None:
    from vinvl.extract.run import LOCK_FILE

    out = tmp_path / "o"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(out / LOCK_FILE)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        t0 = time.monotonic()
        code, _, err = ex.cli(capsys, *ex.args(out))
        assert code == 2 and f"another vinvl extract is writing here (pid {holder.pid})" in err
        assert time.monotonic() - t0 < 30 and not (out / "predictions.tsv").exists()
    finally:
        holder.kill()
        holder.wait()
    code, _, err = ex.cli(capsys, *ex.args(out))  # the holder is gone: its lock with it
    assert code == 0, err


@pytest.mark.parametrize("spelling", ["relative", "absolute"])
def test_identities_do_not_depend_on_spelling(tiny: Path, monkeypatch, spelling: str) -> None:
    from vinvl.extract import collect_inputs
    from vinvl.extract.sources import input_identities

    monkeypatch.chdir(tiny)
    here = input_identities(collect_inputs([Path("imgs") if spelling == "relative" else tiny / "imgs"]))
    monkeypatch.chdir("/")
    assert here == input_identities(collect_inputs([tiny / "imgs"]))


_SLOW = """
import sys, time
from vinvl.extract import run as R
real = R._Shard.write_batch
def slow(self, *a, **k):
    print("batch", flush=True)
    time.sleep(0.3)
    return real(self, *a, **k)
R._Shard.write_batch = slow
from vinvl.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_ctrl_c_is_one_line_and_resumes(ex, tiny: Path, clean: Path, tmp_path: Path) -> None:
    import signal

    out = tmp_path / "o"
    p = subprocess.Popen([sys.executable, "-c", _SLOW, *ex.args(out)], env=ex.ENV, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "batch"
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 130 and err.strip().startswith("error: interrupted") and err.count("\n") == 1, err
    r = ex.run(ex.args(out, "--resume"))
    assert r.returncode == 0, r.stderr
    assert ex.digest(out) == ex.digest(clean)
