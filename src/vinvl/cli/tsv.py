"""``vinvl tsv``: index, check, show and merge TSV files."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from .. import tsv as T
from ..atomic import check_writable
from ..errors import FormatError, VinvlError
from ..features import ROW_KINDS, check_no_cr, first_row_kind, row_checker
from .options import one_of, output_file, write_faults

app = typer.Typer(help="TSV + .lineidx files: index, check, show, merge.", no_args_is_help=True)


@app.command("index")
def index(
    files: List[Path] = typer.Argument(..., help="TSV files to index."),
) -> None:
    """Build (or rebuild) each file's .lineidx by scanning it."""
    for f in files:  # every file readable and every index's folder writable, before any index is written
        if not f.is_file():
            raise FormatError("no such file", f)
        try:
            with open(f, "rb"):
                pass
        except OSError as e:
            raise FormatError(f"cannot read it ({e.strerror or e})", f) from None
        check_writable(T.lineidx_path(f).parent)
    for n, f in enumerate(files):
        done = f"the {n} index{'es' if n != 1 else ''} written before it and its old index (if any) are kept"
        with write_faults(done if n else "its old index (if any) is kept"):
            out = T.build_lineidx(f)
        typer.echo(f"{out}: {len(T.read_lineidx(out))} rows")


@app.command("check")
def check(
    file: Path = typer.Argument(..., help="TSV file to check."),
    kind: str = typer.Option("auto", help=f"Row format: {', '.join(ROW_KINDS)}.", callback=one_of(*ROW_KINDS)),
    columns: Optional[int] = typer.Option(None, min=1, help="Expected number of columns (default: the first row's)."),
    max_report: int = typer.Option(1000, min=0, help="Print at most this many problems."),
    dim: Optional[int] = typer.Option(
        None, "--dim", min=1, help="Width of each stored vector: a features row's (2054; 518 for the demo detector) or a "
        "predictions object's feature (2048; 512 for the demo). Default: manifest.json beside the file, else the first "
        "row with boxes; every row must have it."),
) -> None:
    """Report every bad line of a file in one pass; exit 2 if there is any."""
    chosen = first_row_kind(file) if kind == "auto" else kind
    rows, problems = T.check_tsv(file, columns=columns, row_check=row_checker(chosen, file, dim=dim))
    for p in problems[:max_report]:
        typer.echo(f"error: {p}", err=True)
    if len(problems) > max_report:
        typer.echo(f"... and {len(problems) - max_report} more problems", err=True)
    if problems:
        typer.echo(f"{file}: {len(problems)} problems in {rows} rows ({chosen})", err=True)
        raise typer.Exit(2)
    typer.echo(f"{file}: {rows} rows OK ({chosen})" if rows else f"{file}: 0 rows OK (an empty file)")


@app.command("show")
def show(
    file: Path = typer.Argument(..., help="TSV file."),
    row: Optional[int] = typer.Option(None, help="0-based row number."),
    key: Optional[str] = typer.Option(None, help="Key (first column)."),
    width: int = typer.Option(120, min=0, help="Truncate each field to this many characters (0: no limit)."),
) -> None:
    """Print one row (by number or key), one field per line; with neither, the row count."""
    t = T.TSVFile(file, build_index=True)
    if row is None and key is None:
        typer.echo(f"{file}: {len(t)} rows")
        return
    if row is not None and key is not None:
        raise VinvlError("give --row or --key, not both")
    if row is not None and not 0 <= row < len(t):
        span = f" (0..{len(t) - 1})" if len(t) else ""
        raise VinvlError(f"{file}: row {row} is out of range: the file has {len(t)} rows{span}")
    at = row if row is not None else t.index_of(key)  # type: ignore[arg-type]
    check_no_cr(t.fields_bytes(at), file, at + 1)
    for i, value in enumerate(t[at]):
        text = value if not width or len(value) <= width else value[:width] + f"... ({len(value)} chars)"
        typer.echo(f"[{i}] {text}")


@app.command("merge")
def merge(
    shards: List[Path] = typer.Argument(..., help="TSV shards, in order."),
    out: Path = typer.Option(..., "-o", "--out", help="Merged TSV (its .lineidx is written beside it).", callback=output_file),
    allow_duplicate_keys: bool = typer.Option(
        False, "--allow-duplicate-keys", help="Keep rows whose key (first column) is already in an earlier row or "
        "shard (files with several rows per image, e.g. a corpus); by default a repeated key is an error."),
) -> None:
    """Concatenate shards with a rebased .lineidx (rows are copied, not re-read); a key twice is refused."""
    for s in shards:  # a missing shard is named before the output place is made
        if not s.is_file():
            raise FormatError("no such file", s)
    check_writable(out.parent)
    with write_faults(f"{out} is left as it was"):
        T.merge_tsv(shards, out, unique_keys=not allow_duplicate_keys)
    typer.echo(f"{out}: {len(T.read_lineidx(T.lineidx_path(out)))} rows")
