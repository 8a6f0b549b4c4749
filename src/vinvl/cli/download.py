"""``vinvl download``: the released models, label maps, features, corpora and checkpoints."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from ..errors import VinvlError
from .options import one_of, output_folder

HELP = """Download released VinVL assets: models, label maps, features, corpora, checkpoints.

NAME is a registry name (`vinvl download --list` shows them all; a model
name fetches its weights, label map, config and vocabulary maps into
VINVL_HOME/models/NAME, where `vinvl extract --model NAME` looks; a
captioner goes to VINVL_HOME/checkpoints/NAME), or a blob URL: a file, a
folder (ending in '/', fetched recursively) or a zip (unpacked next to
it). Each file comes from the first of its sources that works: the
Hugging Face Hub mirror where one exists (HF_ENDPOINT, HF_TOKEN and
HF_HUB_OFFLINE apply), then the original Azure storage, which since 2023
needs a read SAS (--sas or VINVL_AZURE_SAS). Files land in their
VINVL_HOME place ($VINVL_HOME, else ~/.cache/vinvl), or in -o DIR; every
file is checked (hub ETag / sha256, Azure MD5 or size) before it gets its
final name. `--check [NAME...]` asks every source whether it answers
(HEAD requests only) and prints a table: exit 0 when every asset has a
reachable source, 3 when some have none, 2 when offline.
"""


def download(
    names: Optional[List[str]] = typer.Argument(None, metavar="NAME|URL...", help="Registry name or blob URL (several with --check)."),
    out: Optional[Path] = typer.Option(None, "-o", "--out", help="Folder to write into (default: its VINVL_HOME place).",
                                       callback=output_folder),
    list_: bool = typer.Option(False, "--list", help="List every released asset and each of its sources, and exit."),
    check: bool = typer.Option(False, "--check", help="Ask every source of NAME... (default: all) whether it answers; no download."),
    format: str = typer.Option("table", "--format", help="Output of --list and --check: table or json.",
                               callback=one_of("table", "json")),
    sas: Optional[str] = typer.Option(None, "--sas", help="Read SAS token added to Azure URLs (default: $VINVL_AZURE_SAS)."),
    exclude: Optional[List[str]] = typer.Option(None, "--exclude", help="Skip blobs under this sub-prefix (repeatable)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="List the files and sizes without fetching."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
    workers: int = typer.Option(4, "--workers", min=1, help="Parallel requests."),
    timeout: float = typer.Option(5.0, "--timeout", min=0.1, help="Seconds each --check request may take."),
) -> None:
    """Download released VinVL assets by name or URL."""
    if list_:
        _print_list(format)
        return
    if check:
        _check(names or [], sas, timeout, format)
        return
    if not names:
        raise VinvlError("give a NAME or URL to download, --list to see the released assets, or --check")
    if len(names) > 1:
        raise VinvlError("give one NAME or URL to download (several names only with --check)")
    from ..download import download as fetch
    from ..download import human_size

    results = fetch(names[0], out, exclude=exclude or (), dry_run=dry_run, quiet=quiet, workers=workers, sas=sas)
    for source, res in results:
        if dry_run:
            for path, size in zip(res.files, res.sizes):
                state = "present" if path.exists() and (size is None or not path.is_file()
                                                         or path.stat().st_size == size) else (
                    "partial" if path.with_name(path.name + ".part").exists() else "to fetch")
                typer.echo(f"{human_size(size):>10}  {state:<8}  {path}")
            total = sum(s or 0 for s in res.sizes)
            typer.echo(f"{res.dest}: {len(res.files)} file(s), {human_size(total)} ({source})")
        else:
            line = (f"{res.dest}: {len(res.files)} file(s), {human_size(res.fetched_bytes)} fetched, "
                    f"{res.present} already present")
            if res.unpacked is not None:
                line += f", unpacked into {res.unpacked}"
            typer.echo(f"{line} ({source})")


def _print_list(format: str) -> None:
    from ..registry import list_entries

    rows = list_entries()
    if format == "json":
        typer.echo(json.dumps(rows, indent=1))
        return
    head = ("name", "kind", "source", "size", "description")
    table = [head] + [(r["name"], r["kind"], r["source"], r["size"], r["description"]) for r in rows]
    w = [max(len(r[i]) for r in table) for i in range(4)]
    for r in table:
        typer.echo(f"{r[0]:<{w[0]}}  {r[1]:<{w[1]}}  {r[2]:<{w[2]}}  {r[3]:<{w[3]}}  {r[4]}")


def _check(names: List[str], sas: Optional[str], timeout: float, format: str) -> None:
    from ..download import human_size
    from ..registry import check

    rows = check(names, sas=sas, timeout=timeout)
    if format == "json":
        typer.echo(json.dumps([{"name": r.name, "file": r.file, "source": r.source.kind, "url": r.source.address(),
                                "status": r.status, "size": r.size, "detail": r.detail} for r in rows], indent=1))
    else:
        table = [("name", "file", "source", "status", "size")]
        table += [(r.name, r.file, r.source.label(), r.status, human_size(r.size) if r.size is not None else "-")
                  for r in rows]
        w = [max(len(t[i]) for t in table) for i in range(4)]
        for t in table:
            typer.echo(f"{t[0]:<{w[0]}}  {t[1]:<{w[1]}}  {t[2]:<{w[2]}}  {t[3]:<{w[3]}}  {t[4]}")
    assets = {(r.name, r.file) for r in rows}
    ok = {(r.name, r.file) for r in rows if r.status == "reachable"}
    typer.echo(f"{len(ok)} of {len(assets)} assets have a reachable source", err=True)
    if ok != assets:
        raise typer.Exit(3)
