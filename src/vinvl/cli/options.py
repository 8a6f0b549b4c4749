"""Option checks shared by the commands, run while the command line is parsed (before any work).

A failed check is a ``typer.BadParameter``: the CLI prints it as one line naming the option
(``error: vinvl extract: Invalid value for '-o' / '--out': ...``) and exits 2.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional, Sequence

import typer

from ..errors import VinvlError
from ..oscar.options import check_device


def output_folder_problem(path: Path) -> Optional[str]:
    """Why ``path`` cannot be (or become) an output folder, or None: it, or a parent of it, is a file."""
    p = Path(path)
    if p.exists() or p.is_symlink():
        if not p.is_dir():
            return f"{p} exists and is not a folder"
        return None
    for parent in p.parents:
        if parent.exists():
            return None if parent.is_dir() else f"{parent} is a file, so {p} cannot be a folder"
    return None


def check_output_folder(path: Path, option: str = "-o/--out") -> None:
    """Raise a one-line :class:`VinvlError` naming ``option`` unless ``path`` can be an output folder."""
    problem = output_folder_problem(path)
    if problem:
        raise VinvlError(f"{option}: {problem}")


def output_folder(value: Optional[Path]) -> Optional[Path]:
    """Typer callback of an output-folder option: refuse an existing file (or a path under one)."""
    if value is not None:
        problem = output_folder_problem(value)
        if problem:
            raise typer.BadParameter(problem)
    return value


def output_file(value: Optional[Path]) -> Optional[Path]:
    """Typer callback of an output-file option: refuse an existing folder (or a path under a file)."""
    if value is not None:
        p = Path(value)
        if p.is_dir():
            raise typer.BadParameter(f"{p} is a folder, not a file")
        problem = output_folder_problem(p.parent)
        if problem:
            raise typer.BadParameter(problem)
    return value


def one_of(*choices: str) -> Callable[[Optional[str]], Optional[str]]:
    """A typer callback accepting only ``choices`` (each item of a repeated option too)."""

    def check(value):  # type: ignore[no-untyped-def]
        values: Sequence[Optional[str]] = value if isinstance(value, (list, tuple)) else [value]
        for v in values:
            if v is not None and v not in choices:
                raise typer.BadParameter(f"{v!r} is not one of {', '.join(choices)}")
        return value

    return check


def device_name(value: Optional[str]) -> Optional[str]:
    """Typer callback of ``--device``: ``cpu``, ``cuda`` or ``cuda:N`` (whether CUDA is there is checked later)."""
    if value is None or (value != "auto" and _device_grammar(value)):
        return value
    raise typer.BadParameter(f"{value!r} is not cpu, cuda or cuda:N")


def device_or_auto(value: Optional[str]) -> Optional[str]:
    """Typer callback of a ``--device`` that also takes ``auto`` (CUDA when present)."""
    if value is None or _device_grammar(value):
        return value
    raise typer.BadParameter(f"{value!r} is not auto, cpu, cuda or cuda:N")


def _device_grammar(value: str) -> bool:
    try:
        check_device(value)  # the one grammar of device names (the Oscar+ Trainer's too)
    except VinvlError:
        return False
    return True
