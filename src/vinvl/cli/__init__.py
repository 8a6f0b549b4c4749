"""The ``vinvl`` command tree; each group is a small module that parses arguments and calls the library.

The tree (docs/cli.md): ``extract``, ``caption``, ``draw``, ``tsv``, ``features``, ``labelmap``, ``download``,
``detector train|eval``, ``datasets``, ``oscar <task>``, ``corpus``.
"""

from __future__ import annotations

import sys
from typing import Optional, Sequence

import typer

from .. import __version__
from ..atomic import UNWRITABLE, os_error_line
from ..dtypes import RENAMED_OPTIONS
from ..errors import VinvlError, cli_warnings, one_line
from . import caption as _caption
from . import corpus as _corpus
from . import datasets as _datasets
from . import detector as _detector
from . import download as _download
from . import draw as _draw
from . import extract as _extract
from . import features as _features
from . import labelmap as _labelmap
from . import oscar as _oscar
from . import tsv as _tsv
from .options import ReadableGroup, use_readable_help

app = typer.Typer(
    name="vinvl",
    cls=ReadableGroup,
    help="VinVL region features, file formats and Oscar+ in pure PyTorch.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.command(
    "extract",
    help=_extract.HELP,
    context_settings={"ignore_unknown_options": True, "help_option_names": ["-h", "--help"]},
)(_extract.extract)
app.command("draw", help=_draw.HELP)(_draw.draw)
app.command("download", help=_download.HELP)(_download.download)
app.command("caption", help=_caption.HELP)(_caption.caption)
app.add_typer(_tsv.app, name="tsv")
app.add_typer(_features.app, name="features")
app.add_typer(_labelmap.app, name="labelmap")
app.add_typer(_oscar.app, name="oscar")
app.add_typer(_corpus.app, name="corpus")
app.add_typer(_datasets.app, name="datasets")
app.add_typer(_detector.app, name="detector")
use_readable_help(app)  # after every registration: each command's help shows placeholders a user can read


def _version(value: bool) -> None:
    """Print the version and stop, when ``--version`` is given."""
    if value:
        typer.echo(f"vinvl {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """VinVL region features, file formats and Oscar+ in pure PyTorch."""


INTERRUPTED = 130  # the exit code of Ctrl-C (128 + SIGINT)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the CLI and return its exit code; user errors print one line and give 2, never a traceback, and the
    libraries' warnings come as vinvl's one-line ``warning:`` notes or not at all
    (:func:`vinvl.errors.cli_warnings`)."""
    with cli_warnings():
        return _run(argv)


def _run(argv: Optional[Sequence[str]]) -> int:
    try:
        rv = app(args=list(argv) if argv is not None else None, prog_name="vinvl", standalone_mode=False)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except typer.TyperException as e:  # click's usage errors: bad or missing options and arguments
        if type(e).__name__ == "NoArgsIsHelpError":  # typer has printed the help already
            return e.exit_code
        ctx = getattr(e, "ctx", None)
        hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
        param = getattr(e, "param", None)
        if isinstance(e, typer.BadParameter) and param is not None and getattr(e, "message", None) \
                and type(e).__name__ != "MissingParameter":
            name = "/".join(param.opts) if param.param_type_name == "option" else str(param.name).upper()
            message = f"{name}: {e.message}"
        elif type(e).__name__ == "NoSuchOption" and getattr(e, "option_name", None) in RENAMED_OPTIONS:
            message = (f"{ctx.command_path}: " if ctx is not None else "") + \
                f"{e.option_name} was renamed {RENAMED_OPTIONS[e.option_name]} (the same values)"
        else:
            message = (f"{ctx.command_path}: " if ctx is not None else "") + e.format_message()
        print(f"error: {one_line(message)}{hint}", file=sys.stderr)
        return e.exit_code
    except typer.Abort:
        print("error: aborted", file=sys.stderr)
        return 1
    except VinvlError as e:
        print(f"error: {one_line(str(e))}", file=sys.stderr)
        return e.exit_code
    except BrokenPipeError:
        return 0
    except OSError as e:  # a read or write the command did not expect to fail: still one line, never a traceback
        print(f"error: {one_line(os_error_line(e))}", file=sys.stderr)
        return 2 if e.errno in UNWRITABLE else 1
    except KeyError as e:  # lookups by key/name raise KeyError with a message naming the file
        print(f"error: {one_line(str(e.args[0] if e.args else e))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        rv = INTERRUPTED
    if rv == INTERRUPTED:  # typer turns a command's Ctrl-C into this code, silently
        print("error: interrupted; what was written is kept: rerun the same command to go on (vinvl extract: with "
              "--resume)", file=sys.stderr)
    # Without standalone mode typer returns the exit code of typer.Exit / --help, or the command's own value.
    return rv if isinstance(rv, int) and not isinstance(rv, bool) else 0
