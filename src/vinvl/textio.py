"""Reading users' text files and naming users' paths, so that no byte of a file or a file name ends in a
traceback or breaks a line: text that is not UTF-8 is a :class:`FormatError` naming the file and line, and
a file name is shown with odd bytes and control characters escaped (``\\xff``, ``\\n``)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Optional, Union

from .errors import FormatError

PathLike = Union[str, os.PathLike]


def is_control(ch: str) -> bool:
    """Whether ``ch`` breaks a line or a TSV row for some reader: C0/C1 controls (TAB, LF, CR, ...), DEL,
    and the line/paragraph separators that ``str.splitlines`` splits on."""
    return ord(ch) < 32 or 127 <= ord(ch) < 160 or ch in "\u2028\u2029"


def display_path(path: PathLike) -> str:
    """``path`` as one printable line: bytes of a non-UTF-8 file name appear as ``\\xNN`` escapes, control
    characters as ``\\n``, ``\\t``, ...; ordinary names are unchanged."""
    text = os.fsencode(path).decode("utf-8", "backslashreplace")
    return "".join(repr(ch)[1:-1] if is_control(ch) else ch for ch in text)


def is_utf8_name(path: PathLike) -> bool:
    """Whether ``path`` is valid UTF-8 (Python keeps other bytes of a file name as lone surrogates)."""
    try:
        os.fspath(path).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def read_bytes(path: PathLike, what: str = "file") -> bytes:
    """The bytes of ``path``; a missing, unreadable file or a folder is a one-line error naming it."""
    path = Path(path)
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise FormatError("no such file", display_path(path)) from None
    except IsADirectoryError:
        raise FormatError(f"is a folder, expected a {what}", display_path(path)) from None
    except OSError as e:
        raise FormatError(f"cannot read the {what}: {e.strerror or e}", display_path(path)) from None


def read_text(path: PathLike, what: str = "file") -> str:
    """The UTF-8 text of ``path``; a missing file or bytes that are not UTF-8 are one-line errors."""
    data = read_bytes(path, what)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise FormatError(f"not UTF-8 text (byte 0x{data[e.start]:02x})", display_path(path), line=line) from None


def read_json(path: PathLike, expect: Optional[type] = None, data: Optional[bytes] = None, what: str = "JSON file") -> Any:
    """A JSON file (``data``: its bytes when they come from elsewhere, e.g. a zip member named ``path``);
    ``expect`` (dict or list): the top-level type it must have. Every failure is one line naming it."""
    if data is None:
        data = read_bytes(path, what)
    try:
        obj = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise FormatError(f"not valid JSON ({e})", display_path(path)) from None
    if expect is not None and not isinstance(obj, expect):
        kind = "object" if expect is dict else expect.__name__
        raise FormatError(f"expected a JSON {kind}, found {type(obj).__name__}", display_path(path))
    return obj
