"""Reading yaml files with errors a user can act on (one line naming the file, line and column), and writing
them atomically."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Union

import yaml

from .atomic import atomic_write_text
from .errors import FormatError, one_line
from .textio import read_text


def yaml_problem(error: BaseException) -> str:
    """A PyYAML error as one line, ``line L, column C: <problem>`` (PyYAML's own message spans several)."""
    mark = getattr(error, "problem_mark", None) or getattr(error, "context_mark", None)
    problem = getattr(error, "problem", None) or getattr(error, "context", None) or str(error)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return where + one_line(str(problem))


def read_yaml(path: Union[str, os.PathLike], what: str = "yaml file") -> Any:
    """``yaml.safe_load`` of a UTF-8 file; a missing, unreadable or malformed file is one :class:`FormatError`."""
    text = read_text(path, what)
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise FormatError(f"not valid yaml: {yaml_problem(e)}", path) from None


def write_yaml(path: Union[str, os.PathLike], obj: Any) -> Path:
    """``obj`` as block yaml (keys in their order), atomically; returns ``path``."""
    return atomic_write_text(path, yaml.safe_dump(obj, sort_keys=False))
