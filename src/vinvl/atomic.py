"""Writing a file so that a reader (or a resumed run) never sees half of it: a temporary name beside
the target, renamed into place only once complete, removed if the write fails."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Union

from .errors import VinvlError

PathLike = Union[str, os.PathLike]


def temporary_name(path: PathLike) -> Path:
    """The hidden, per-process temporary name beside ``path`` (``.name.tmpPID``)."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


def atomic_write(path: PathLike, write: Callable[[Path], object]) -> Path:
    """Call ``write(tmp)`` and rename ``tmp`` to ``path`` (creating its folder); ``tmp`` is removed on failure."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_bytes(path: PathLike, data: bytes) -> Path:
    """``data`` into ``path``, atomically."""
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_text(path: PathLike, text: str) -> Path:
    """``text`` (UTF-8) into ``path``, atomically."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_write_json(path: PathLike, obj: Any, indent: Optional[int] = None) -> Path:
    """``obj`` as JSON into ``path``, atomically."""
    return atomic_write_text(path, json.dumps(obj, indent=indent))


# -- temporaries left by killed processes, and writes that fail -----------------------------------
_TEMPORARY = re.compile(r"\.(?P<name>.+)\.tmp(?P<pid>[0-9]+)")


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` still runs on this machine (a killed one not yet reaped, a zombie, does not)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: another user's live process
        return True
    try:  # Linux: a zombie answers kill(0) but will never finish its write
        stat = Path(f"/proc/{pid}/stat").read_bytes()  # "pid (name) STATE ...": the name may hold ")"
        end = stat.rindex(b")")
        return stat[end + 2 : end + 3] != b"Z"
    except (OSError, ValueError):
        return True


def remove_stale_temporaries(
    folder: PathLike, names: Union[Iterable[str], Callable[[str], bool]]
) -> list[Path]:
    """Remove the temporaries ``.NAME.tmpPID`` (:func:`temporary_name`'s) in ``folder`` whose process is gone.

    A process killed between writing a temporary and renaming it leaves the temporary behind. Only
    vinvl's own naming is touched, only for a ``NAME`` in ``names`` (or one it accepts, if it is a
    function), and never while process ``PID`` is alive: it may still be writing. (A process of another
    machine sharing the folder cannot be seen: run one writer per output there.) Returns what was
    removed; one that cannot be removed is kept.
    """
    folder = Path(folder)
    wanted = names if callable(names) else set(names).__contains__
    removed: list[Path] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:  # no folder yet (nothing to clean), or one we cannot read
        return removed
    for entry in entries:
        m = _TEMPORARY.fullmatch(entry.name)
        if m is None or not wanted(m["name"]):
            continue
        pid = int(m["pid"])
        if pid == os.getpid() or pid_alive(pid):
            continue
        path = Path(entry.path)
        try:
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(path)
            else:
                path.unlink()
        except OSError:
            continue  # a read-only folder: the write that follows reports it
        removed.append(path)
    return removed


# errno values saying that a path cannot take output at all (the user's choice of place), rather than
# that a run which could write there met a fault (a full disk, an I/O error).
UNWRITABLE = frozenset({errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR, errno.EISDIR, errno.ENAMETOOLONG})
NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


def naming(error: OSError, path: PathLike) -> OSError:
    """``error`` (same errno, same class) naming ``path``, the file the user knows, instead of a temporary or nothing."""
    reason = error.strerror or str(error) or type(error).__name__
    return OSError(error.errno, reason, os.fspath(path))  # OSError picks the subclass of the errno


def os_error_line(error: OSError, path: Optional[PathLike] = None) -> str:
    """One line ``PATH: why`` for a failed read or write (``out.tsv: disk full (No space left on device)``)."""
    where = path if path is not None else error.filename
    reason = error.strerror or str(error) or type(error).__name__
    why = f"disk full ({reason})" if error.errno in NO_SPACE else reason
    return " ".join((f"{os.fspath(where)}: {why}" if where is not None else why).split())


_PROBE = "vinvl-write-probe"


def check_writable(folder: PathLike, create: bool = True) -> Path:
    """Make ``folder`` (and its parents) and create and remove a file in it; a one-line :class:`VinvlError`
    naming it if that fails (read-only, not allowed, a file in the way, full). ``create=False`` leaves a
    missing folder unmade and asks its nearest existing parent instead (nothing is written anywhere).

    Run before any work, so that an output place that cannot take the output is reported at once.
    """
    folder = Path(folder)
    if not create and not folder.exists():
        parent = next((p for p in folder.parents if p.exists()), Path("."))
        try:
            if not parent.is_dir():
                raise OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), os.fspath(parent))
            vfs = os.statvfs(parent)
            if vfs.f_flag & os.ST_RDONLY:
                raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fspath(folder))
            if not os.access(parent, os.W_OK | os.X_OK):
                raise OSError(errno.EACCES, os.strerror(errno.EACCES), os.fspath(folder))
            if vfs.f_bavail == 0:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), os.fspath(folder))
        except OSError as e:
            raise VinvlError(f"{os_error_line(e, folder)}: cannot write output there") from None
        return folder
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:  # a file where a folder should be
        raise VinvlError(f"{folder}: exists and is not a folder, so nothing can be written there") from None
    except OSError as e:
        raise VinvlError(f"{os_error_line(e, e.filename or folder)}: cannot make the output folder {folder}") from None
    probe = temporary_name(folder / _PROBE)
    remove_stale_temporaries(folder, [_PROBE])  # a probe of a run killed right here
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise VinvlError(f"{os_error_line(e, folder)}: cannot write output there") from None
    return folder
