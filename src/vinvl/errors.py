"""User-facing errors: the CLI prints them as one line and exits with code 2."""

from __future__ import annotations

import os
import re
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
        return f"not a readable {what} (torch's weights-only reader: {(kept or sentences)[0].strip()[:200]})"
    return f"not a readable {what} ({type(error).__name__}: {text[:300]})"
