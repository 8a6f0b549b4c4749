"""User-facing errors: the CLI prints them as one line and exits with code 2."""

from __future__ import annotations

import os
from typing import Optional


class VinvlError(Exception):
    """An error caused by the user's input or setup (not a bug): shown without a traceback."""


class FormatError(VinvlError, ValueError):
    """A file does not follow its format; names the file and the 1-based line or the key."""

    def __init__(
        self,
        message: str,
        path: Optional[os.PathLike | str] = None,
        line: Optional[int] = None,
        key: Optional[str] = None,
    ) -> None:
        self.path = None if path is None else os.fspath(path)
        self.line = line
        self.key = key
        self.reason = message
        where = self.path or "<input>"
        if line is not None:
            where += f":{line}"
        if key is not None:
            where += f" (key {key!r})"
        super().__init__(f"{where}: {message}")
