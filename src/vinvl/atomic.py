"""Writing a file so that a reader, a resumed run or a crash never sees half of it: vinvl's one durability rule.

A file gets its final name only through :func:`commit`: directly (a writer that streams into a
:func:`temporary_name` of its own, such as :class:`vinvl.tsv.TSVWriter`, or a download's ``NAME.part``),
or through :func:`atomic_write` and its ``_bytes``/``_text``/``_json`` forms, which write the temporary
beside the target, commit it, and remove it if the write fails. What a commit does, in this order:

1. **fsync the temporary** (a file; for a folder, every file and folder in it, deepest first). Without it
   a crash just after the rename can leave the final name on an empty or partly written file: a file
   system may put the rename on disk before the bytes.
2. **rename it to the final name** (``os.replace``, atomic): a reader sees the old file or the whole new one.
3. **fsync the final name's folder.** The rename is a change to the folder, held in memory until then:
   a crash could bring back the old file, or no file, after the run reported the new one or recorded it
   as done (a resume journal, a shard's ``DONE``, a download sidecar). Since a commit returns only after
   this fsync, commits reach the disk in the order they are made: a TSV's index is committed before the
   TSV, so a crash never leaves a new TSV beside an old index. (The temporary's own folder, when another,
   is not synced: a crash may leave the temporary's name as well, and :func:`remove_stale_temporaries`
   clears it.)

Two more fsyncs, for what a crash could otherwise lose under a committed file:

- :func:`make_folders` fsyncs the parent of each folder it creates, right after creating it: a new folder
  is an entry of its parent, and a committed file would vanish with a folder its parent never recorded.
- :func:`flush_to_disk` fsyncs a file written in place and resumed rather than renamed (a download's
  ``NAME.part`` filled by ranges), before anything records that its bytes are written: a record (the
  sidecar, itself committed) must never claim bytes a crash could lose.

Where a file system cannot fsync a folder (``EINVAL``, ``ENOTSUP``), or a folder cannot be opened (Windows),
the atomic rename is all it offers, and that is taken; any other error (``EIO``) is raised. Nothing outside
this module calls ``os.fsync`` or renames a file into place (``tests/test_atomic_writes.py`` checks it, and
lists what has not moved here yet).
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
from pathlib import Path
from typing import IO, Any, Callable, Iterable, Optional, Union

from .errors import VinvlError

PathLike = Union[str, os.PathLike]

# errno values of a file system (or OS) that cannot fsync a folder, or open one: nothing more to be done.
_NO_FOLDER_SYNC = frozenset({errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS, errno.EACCES,
                             errno.EPERM, errno.EISDIR, errno.EBADF})


def temporary_name(path: PathLike) -> Path:
    """The hidden, per-process temporary name beside ``path`` (``.name.tmpPID``)."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


def flush_to_disk(f: IO[Any]) -> None:
    """Flush the open file ``f`` and fsync it: before anything records that its bytes are written."""
    f.flush()
    os.fsync(f.fileno())


def sync_folder(folder: PathLike) -> None:
    """fsync ``folder`` itself (the names made, renamed or removed in it); nothing where the OS cannot."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError as e:
        if e.errno in _NO_FOLDER_SYNC:
            return
        raise
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno not in _NO_FOLDER_SYNC:
            raise
    finally:
        os.close(fd)


def _sync_file(path: PathLike) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sync_tree(path: Path) -> None:
    """fsync a file, or every file and folder of a folder (deepest first, the folder itself last)."""
    if not path.is_dir() or path.is_symlink():
        _sync_file(path)
        return
    for root, _, files in os.walk(path, topdown=False):
        for name in files:
            if not os.path.islink(os.path.join(root, name)):  # a link's target is not part of the tree
                _sync_file(os.path.join(root, name))
        sync_folder(root)


def make_folders(folder: PathLike) -> Path:
    """``mkdir -p folder``, each folder it creates fsynced into its parent; FileExistsError if a file is in the way."""
    folder = Path(folder)
    missing: list[Path] = []
    p = folder
    while not p.exists() and p != p.parent:
        missing.append(p)
        p = p.parent
    for p in reversed(missing):
        try:
            os.mkdir(p)
        except FileExistsError:
            if not p.is_dir():
                raise
            continue  # made by a concurrent run, which syncs it
        sync_folder(p.parent)
    if not folder.is_dir():
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), os.fspath(folder))
    return folder


def commit(tmp: PathLike, final: PathLike) -> Path:
    """Give the complete temporary ``tmp`` (a file or folder) the name ``final``: fsync it, rename, fsync the folder."""
    tmp, final = Path(tmp), Path(final)
    _sync_tree(tmp)
    os.replace(tmp, final)
    sync_folder(final.parent)
    return final


def atomic_write(path: PathLike, write: Callable[[Path], object]) -> Path:
    """Call ``write(tmp)`` and :func:`commit` ``tmp`` to ``path`` (making its folder); ``tmp`` is removed on failure."""
    path = Path(path)
    make_folders(path.parent)
    tmp = temporary_name(path)
    try:
        write(tmp)
        commit(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_bytes(path: PathLike, data: bytes) -> Path:
    """``data`` into ``path``, atomically and durably."""
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_text(path: PathLike, text: str) -> Path:
    """``text`` (UTF-8) into ``path``, atomically and durably."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_write_json(path: PathLike, obj: Any, indent: Optional[int] = None) -> Path:
    """``obj`` as JSON into ``path``, atomically and durably."""
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
        make_folders(folder)
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
