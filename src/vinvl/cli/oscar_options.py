"""The option table of docs/oscar.md: every ``vinvl oscar`` option with its flags, help and each command's default,
walked from the ``oscar`` command group (``python -m vinvl.cli.oscar_options`` prints it; a test keeps the page
current). The options themselves are defined in :mod:`vinvl.cli.oscar_flags`; this module sits above the command
modules (it reads their group), so nothing below imports it.
"""

from __future__ import annotations

from typing import Any

import typer.main

from .oscar import app as oscar_app
from .oscar_flags import OPTIONS, REQUIRED


# -- the option table of docs/oscar.md ---------------------------------------------------------------------
def _shown(value: Any) -> str:
    if value is REQUIRED:
        return "required"
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


def option_table(app: Any = None) -> str:
    """The markdown table of every ``vinvl oscar`` option (default: the ``oscar`` group's): flags, help, and each
    command's default."""
    root = typer.main.get_command(app if app is not None else oscar_app)
    used: dict[str, dict[str, Any]] = {}

    def walk(cmd: Any, path: tuple[str, ...]) -> None:
        for name, sub in sorted(getattr(cmd, "commands", {}).items()):
            if hasattr(sub, "commands"):
                walk(sub, (*path, name))
            else:
                for opt, default in getattr(sub.callback, "oscar_options", {}).items():
                    used.setdefault(opt, {})[" ".join((*path, name))] = default

    walk(root, ())
    lines = ["| option | meaning | default by command |", "|---|---|---|"]
    for name, opt in OPTIONS.items():
        if name not in used:
            continue
        by_default: dict[str, list[str]] = {}
        for cmd, default in used[name].items():
            by_default.setdefault(_shown(default), []).append(cmd)
        if len(by_default) == 1:
            defaults = next(iter(by_default))
            if len(used[name]) > 1:
                defaults += " (" + ", ".join(used[name]) + ")"
        else:
            defaults = "; ".join(f"{d}: {', '.join(c)}" for d, c in by_default.items())
        rng = ""
        if opt.min is not None or opt.max is not None:
            rng = f" Range {_shown(opt.min) if opt.min is not None else ''}..{_shown(opt.max) if opt.max is not None else ''}."
        if opt.choices:
            rng = f" One of {', '.join(opt.choices)}."
        flags = " / ".join(f"`{f}`" for f in opt.flags)
        lines.append(f"| {flags} | {opt.help}{rng} | {defaults} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(option_table(), end="")
