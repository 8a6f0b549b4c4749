"""Writing a file so that a reader (or a resumed run) never sees half of it: a temporary name beside
the target, renamed into place only once complete, removed if the write fails."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Optional, Union

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
