"""Option checks shared by the commands, run while the command line is parsed (before any work), and the
readable help every command shows (:func:`use_readable_help`).

A failed check is a ``typer.BadParameter``: the CLI prints it as one line naming the option
(``error: vinvl extract: Invalid value for '-o' / '--out': ...``) and exits 2.
"""

from __future__ import annotations

import contextlib
import functools
import re
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

import typer
from typer.core import TyperCommand, TyperGroup
from typer.models import DefaultPlaceholder

from ..atomic import UNWRITABLE, os_error_line
from ..dtypes import DETECTOR_DTYPE_HELP, DTYPE_CHOICES, DTYPE_HELP, DTYPES
from ..errors import FaultError, VinvlError
from ..training.options import check_device


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
        check_device(value)  # the one grammar of device names (the training engine's too)
    except VinvlError:
        return False
    return True


# -- help: the value placeholder after each option ------------------------------------------------------------
# typer's help table prints a type for every parameter, flags included (`--version <bool>`, as if it took a
# value), and Python's spelling of the rest (`<list[Path]>`, `<int range>`). The classes below give each
# parameter a placeholder a user reads as "what to type here": none for a flag, `<path>` for a repeatable or
# variadic path, `<int>` beside its `[x>=1]`.

_PYTHON_TYPES = {"Path": "path"}  # a class name inside list[...]; typer spells a lone path option `<path>` already


def placeholder(param: Any, ctx: Any) -> Optional[str]:
    """The value placeholder the help shows for ``param`` (a typer option or argument); None for a flag."""
    if param.param_type_name == "option":
        if param.is_flag or param.count:
            return None  # a flag takes no value
        if param.metavar is not None:
            return param.metavar
    label = type(param).display_type(param, ctx)  # typer's own: "<str>", "<list[Path]>", "<int range>", "<a|b>"
    inner = label[1:-1] if label.startswith("<") and label.endswith(">") else label
    inner = re.sub(r"^list\[(.*)\]$", r"\1", inner)  # repeatable options say so; variadic arguments show "..."
    inner = re.sub(r"^(\w+) range$", r"\1", inner)  # the range itself is printed beside it ([x>=1])
    text = f"<{_PYTHON_TYPES.get(inner, inner)}>"
    if param.param_type_name == "option" and param.nargs != 1:
        text += "..."
    return text


def _usage_pieces(original: Callable[..., list[str]], ctx: Any) -> list[str]:
    # An argument whose metavar already ends in "..." (IMAGE|FOLDER...) gets another from typer: {X...}...
    return [re.sub(r"\.\.\.([}\]])\.\.\.$", r"...\1", p) for p in original(ctx)]


def readable_params(params: list[Any]) -> list[Any]:
    """``params`` (a command's, its help option included), each made to show :func:`placeholder` in the help."""
    for p in params:
        if not getattr(p, "_vinvl_readable", False):
            p.display_type_rich = functools.partial(placeholder, p)
            p.get_usage_pieces = functools.partial(_usage_pieces, p.get_usage_pieces)
            p._vinvl_readable = True
    return params


class ReadableCommand(TyperCommand):
    """A typer command whose help shows :func:`placeholder` s."""

    def get_params(self, ctx: Any) -> list[Any]:
        """The command's parameters, as typer's, with readable help placeholders."""
        return readable_params(super().get_params(ctx))


class ReadableGroup(TyperGroup):
    """A typer group whose help shows :func:`placeholder` s."""

    def get_params(self, ctx: Any) -> list[Any]:
        """The group's parameters, as typer's, with readable help placeholders."""
        return readable_params(super().get_params(ctx))


def use_readable_help(app: typer.Typer) -> None:
    """Make every command and group registered under ``app``, at any depth, render with readable placeholders."""
    for info in app.registered_commands:
        if info.cls in (None, TyperCommand):  # typer's default; a command's own class is left to it
            info.cls = ReadableCommand
    for group in app.registered_groups:
        if group.cls in (None, TyperGroup) or isinstance(group.cls, DefaultPlaceholder):
            group.cls = ReadableGroup
        if group.typer_instance is not None:
            use_readable_help(group.typer_instance)


@contextlib.contextmanager
def write_faults(kept: str = "nothing was written under its final name") -> Iterator[None]:
    """Turn a failed read or write into one line naming the file: exit 2 when the place cannot be written or
    read at all (read-only, not allowed: the user's path), exit 1 for a fault mid-run (disk full, I/O error).

    ``kept`` says what the user still has. The library names the final file, never a temporary.
    """
    try:
        yield
    except OSError as e:
        if e.errno in UNWRITABLE:
            raise VinvlError(f"{os_error_line(e)}; {kept}") from None
        raise FaultError(f"{os_error_line(e)}; {kept}") from None


# -- --device and --dtype: declared once for every command (the Oscar+ table takes the same policy and vocabulary) ------------------
DEVICE_POLICY = "auto (the default: CUDA when present, else the CPU), cpu, cuda or cuda:N"


def device_option(also: str = "") -> Any:
    """The detector commands' ``--device``: :data:`DEVICE_POLICY`, checked while parsing; ``also`` adds to the help."""
    return typer.Option(None, "--device", help=f"{DEVICE_POLICY}{also}.", callback=device_or_auto)


def dtype_option(detector: bool = True) -> Any:
    """``--dtype`` (the one vocabulary, vinvl.dtypes), fp32 by default; the detector's inference also takes auto."""
    if detector:
        return typer.Option("fp32", "--dtype", help=DETECTOR_DTYPE_HELP, callback=one_of(*DTYPE_CHOICES))
    return typer.Option("fp32", "--dtype", help=DTYPE_HELP, callback=one_of(*DTYPES))


def given_on_command_line(ctx: Any, names: Sequence[str]) -> frozenset[str]:
    """Which of ``names`` the command line (or the environment) set, as opposed to their defaults (all of them
    without a context: a direct call)."""
    if ctx is None:
        return frozenset(names)
    # by name: typer may carry its own copy of click, whose enum is another class than click's
    return frozenset(n for n in names if getattr(ctx.get_parameter_source(n), "name", "DEFAULT")
                     not in ("DEFAULT", "DEFAULT_MAP"))
