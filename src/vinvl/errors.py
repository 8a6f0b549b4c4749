"""User-facing errors and warnings: the CLI prints an error as one ``error:`` line and exits with code 2, and
anything short of an error as one ``warning:`` line (:func:`print_warning`); the libraries' own warnings go
through that same line or, where they are noise to a vinvl user, nowhere (:func:`cli_warnings`)."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import warnings
from pathlib import Path
from typing import Any, Iterator, Optional, TextIO


class VinvlError(Exception):
    """An error caused by the user's input or setup (not a bug): shown without a traceback, exit code 2."""

    exit_code = 2


class FaultError(VinvlError):
    """A fault met mid-run (a full disk, an I/O error) rather than bad input: one line, exit code 1; what was
    written before it is kept."""

    exit_code = 1


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


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def single_spaced(text: str) -> str:
    """``text`` with every run of whitespace (newlines and TABs too) one space, and none at either end."""
    return " ".join(text.split())


def one_line(text: str) -> str:
    """``text`` on one line: terminal colour codes dropped, every run of whitespace (newlines too) one space."""
    return single_spaced(_ANSI.sub("", text))


def torch_load_problem(error: BaseException, what: str = "PyTorch checkpoint") -> str:
    """Why ``torch.load(weights_only=True)`` failed, in one line (torch's own message is a paragraph)."""
    text = one_line(str(error))
    low = text.lower()
    if "weights only load failed" in low or "weightsunpickler error" in low:
        asked = re.search(r"GLOBAL ([\w.]+)|unrecognized function ([\w.]+)", text)
        if asked:
            return ("refusing to load: the file needs unsafe unpickling (it stores Python objects, not only tensors): "
                    f"it asks for {asked.group(1) or asked.group(2)}")
        detail = re.split(r"\s*Check the documentation", text.split("WeightsUnpickler error:", 1)[-1])[0]
        sentences = re.split(r"(?<=[^.\s])\.\s+", detail)
        boiler = ("weights only load failed", "pytorch 2.6", "re-running", "do it only", "please use", "(1)", "(2)",
                  "alternatively", "this file can still be loaded")
        kept = [t for t in sentences if not any(b in t.lower() for b in boiler)]
        opcode = re.search(r"Unsupported operand (\d+)", detail)
        if opcode:
            return f"not a readable {what} ({_pickle_opcode(int(opcode.group(1)))})"
        return f"not a readable {what} (torch's weights-only reader: {(kept or sentences)[0].strip()[:200]})"
    return f"not a readable {what} ({type(error).__name__}: {text[:300]})"


def _pickle_opcode(code: int) -> str:
    # torch names the opcode by number only; its name and protocol tell the user how the file was written.
    import pickletools

    op = pickletools.code2op.get(chr(code)) if 0 <= code < 256 else None
    if op is None:
        return f"torch's weights-only reader does not read pickle opcode {code}"
    return (f"torch's weights-only reader does not read pickle opcode {op.name}, of pickle protocol {op.proto}: "
            "torch.save writes protocol 2")


# -- warnings ----------------------------------------------------------------------------------------------

def print_warning(message: str, file: Optional[TextIO] = None) -> None:
    """Print ``message`` as one ``warning: ...`` line on stderr: vinvl's one way of saying what is short of an error."""
    print(f"warning: {one_line(message)}", file=file if file is not None else sys.stderr)


# Warnings that tell a vinvl user nothing they can act on: (library, ``*`` for any, category, message pattern,
# why it is noise). The CLI drops them; every other warning becomes one ``warning:`` line.
QUIET_WARNINGS: tuple[tuple[str, type[Warning], str, str], ...] = (
    ("PIL", UserWarning, "",
     "damaged metadata (EXIF: 'Corrupt EXIF data', 'Tag data larger than file'; MPO, palettes): vinvl decodes "
     "the stored pixels and reads no metadata unless asked (--exif-transpose, where a damaged tag is skipped)"),
    ("torch", UserWarning, r"Detected pickle protocol|TypedStorage is deprecated|weights_only",
     "torch's notes on a checkpoint's pickling: a file its weights-only reader cannot read is vinvl's one-line "
     "error naming the file (torch_load_problem), one it can read needs no note"),
    # Deprecations are raised with the caller's line (often vinvl's), so they are matched in any library.
    ("*", FutureWarning, "", "an API deprecation: a note for the developers of the code that calls it, not for users"),
    ("*", DeprecationWarning, "", "as FutureWarning"),
    ("*", PendingDeprecationWarning, "", "as FutureWarning"),
)
# Libraries that speak through the logging module rather than warnings (transformers' 'Some weights of ...',
# the hub's 'Xet Storage is enabled ...'): only their errors are shown. The variables reach worker processes.
QUIET_LOGGERS = {"transformers": "TRANSFORMERS_VERBOSITY", "huggingface_hub": "HF_HUB_VERBOSITY"}

_OWN_PACKAGE = Path(__file__).resolve().parent


def warning_library(filename: str) -> str:
    """The top-level package a warning was raised in, from its file: ``torch``, ``PIL``; ``vinvl`` for this
    package; ``""`` for a script (or C++ warnings raised on behalf of the Python line that called them)."""
    path = Path(filename)
    try:
        path.resolve().relative_to(_OWN_PACKAGE)
        return "vinvl"
    except (OSError, ValueError):
        pass
    parts = path.parts
    for marker in ("site-packages", "dist-packages"):
        if marker in parts:
            i = len(parts) - 1 - parts[::-1].index(marker)
            if i + 1 < len(parts):
                return parts[i + 1].split(".")[0]
    return ""


def warning_line(message: Warning | str, category: type[Warning], filename: str) -> Optional[str]:
    """What the CLI prints for a warning: None for noise (:data:`QUIET_WARNINGS`), else the text of one
    ``warning:`` line, prefixed with the library that raised it when that is not vinvl."""
    library = warning_library(filename)
    text = one_line(str(message))
    for lib, cat, pattern, _ in QUIET_WARNINGS:
        if issubclass(category, cat) and lib in (library, "*") and re.search(pattern, text):
            return None
    return text if library in ("vinvl", "") else f"{library}: {text}"


@contextlib.contextmanager
def cli_warnings() -> Iterator[None]:
    """Inside the block, every warning is one ``warning:`` line on stderr (once per text) or, when it is noise
    to a vinvl user (:data:`QUIET_WARNINGS`, :data:`QUIET_LOGGERS`), nothing; outside it Python's rules apply."""
    shown: set[str] = set()

    def show(message: Any, category: type[Warning], filename: str, lineno: int, file: Any = None,
             line: Optional[str] = None) -> None:
        text = warning_line(message, category, filename)
        if text is not None and text not in shown:
            shown.add(text)
            print_warning(text)

    env_before = {var: os.environ.get(var) for var in QUIET_LOGGERS.values()}
    levels_before = {name: logging.getLogger(name).level for name in QUIET_LOGGERS}
    with warnings.catch_warnings():
        warnings.showwarning = show
        for name, var in QUIET_LOGGERS.items():
            if env_before[var] is not None:
                continue  # the user's own choice of verbosity
            os.environ[var] = "error"  # read when the library is first imported, here or in a worker
            if name in sys.modules:  # imported already: it read its level then
                logging.getLogger(name).setLevel(logging.ERROR)
        try:
            yield
        finally:
            for var, value in env_before.items():
                if value is None:
                    os.environ.pop(var, None)
                else:
                    os.environ[var] = value
            for name, level in levels_before.items():
                if name in sys.modules:
                    logging.getLogger(name).setLevel(level)
