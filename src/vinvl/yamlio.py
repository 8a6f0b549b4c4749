"""Reading yaml files with errors a user can act on: one line naming the file, line and column."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Union

from .errors import FormatError, one_line


def yaml_problem(error: BaseException) -> str:
    """A PyYAML error as one line, ``line L, column C: <problem>`` (PyYAML's own message spans several)."""
    mark = getattr(error, "problem_mark", None) or getattr(error, "context_mark", None)
    problem = getattr(error, "problem", None) or getattr(error, "context", None) or str(error)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return where + one_line(str(problem))


def read_yaml(path: Union[str, os.PathLike]) -> Any:
    """``yaml.safe_load`` of a UTF-8 file; a missing, unreadable or malformed file is one :class:`FormatError`."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FormatError("no such file", path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise FormatError(f"not UTF-8 text (byte {e.start})", path) from None
    except OSError as e:
        raise FormatError(f"cannot read it ({e.strerror or e})", path) from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise FormatError(f"not valid yaml: {yaml_problem(e)}", path) from None
