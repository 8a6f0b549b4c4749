"""``vinvl download``: the released models, label maps, features, corpora and checkpoints."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

HELP = """Download released VinVL assets: models, label maps, features, corpora, checkpoints.

NAME is a registry name (`vinvl download --list` shows them all; a model
name fetches its weights, label map, config and vocabulary maps into
VINVL_HOME/models/NAME, where `vinvl extract --model NAME` looks), or a
blob URL: a file, a folder (ending in '/', fetched recursively) or a zip
(unpacked next to it). A SAS token in the URL's query string is kept on
every request. Files land in their VINVL_HOME place ($VINVL_HOME, else
~/.cache/vinvl), or in -o DIR. Large files come in parallel byte ranges
and resume after an interruption; every file is checked against its MD5
(or size) before it gets its final name.
"""


def download(
    name_or_url: Optional[str] = typer.Argument(None, metavar="NAME|URL", help="Registry name or blob URL."),
    out: Optional[Path] = typer.Option(None, "-o", "--out", help="Folder to write into (default: its VINVL_HOME place)."),
    list_: bool = typer.Option(False, "--list", help="List every released asset and exit."),
    format: str = typer.Option("table", "--format", help="Output of --list: table or json."),
    exclude: Optional[List[str]] = typer.Option(None, "--exclude", help="Skip blobs under this sub-prefix (repeatable)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="List the files and sizes without fetching."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
    workers: int = typer.Option(4, "--workers", min=1, help="Parallel requests."),
) -> None:
    """Download released VinVL assets by name or URL."""
    from ..errors import VinvlError

    if format not in ("table", "json"):
        raise VinvlError(f"--format must be table or json, not {format!r}")
    if list_:
        _print_list(format)
        return
    if not name_or_url:
        raise VinvlError("give a NAME or URL to download, or --list to see the released assets")
    from ..download import download as fetch
    from ..download import human_size

    results = fetch(name_or_url, out, exclude=exclude or (), dry_run=dry_run, quiet=quiet, workers=workers)
    for url, res in results:
        if dry_run:
            for path, size in zip(res.files, res.sizes):
                state = "present" if path.is_file() and (size is None or path.stat().st_size == size) else (
                    "partial" if path.with_name(path.name + ".part").exists() else "to fetch")
                typer.echo(f"{human_size(size):>10}  {state:<8}  {path}")
            total = sum(s or 0 for s in res.sizes)
            typer.echo(f"{res.dest}: {len(res.files)} file(s), {human_size(total)}")
        else:
            line = (f"{res.dest}: {len(res.files)} file(s), {human_size(res.fetched_bytes)} fetched, "
                    f"{res.present} already present")
            if res.unpacked is not None:
                line += f", unpacked into {res.unpacked}"
            typer.echo(line)


def _print_list(format: str) -> None:
    from ..assets import list_entries

    rows = list_entries()
    if format == "json":
        typer.echo(json.dumps(rows, indent=1))
        return
    head = ("name", "kind", "size", "description")
    table = [head] + [(r["name"], r["kind"], r["size"], r["description"]) for r in rows]
    w = [max(len(r[i]) for r in table) for i in range(3)]
    for r in table:
        typer.echo(f"{r[0]:<{w[0]}}  {r[1]:<{w[1]}}  {r[2]:<{w[2]}}  {r[3]}")
