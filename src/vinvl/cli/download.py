"""``vinvl download``: the released models, label maps, features, corpora and checkpoints."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, List, Optional

import typer

from ..errors import FaultError, VinvlError
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
final name. Busy answers (429, 5xx) and reset connections are retried
with back-off; Ctrl-C stops at once (exit 130) and a rerun resumes.
Exit 2 for what you can fix (a name, an option, access, an unreachable
host, a checksum mismatch), 1 when a source answered but the transfer
failed mid-run after every retry (rerun to resume).

`--check [NAME...]` asks every source whether it answers (HEAD requests
only) and prints one line per source with its state, in the same words
for the hub and Azure: reachable, denied (HTTP 401/403/409), missing
(HTTP 404), error (HTTP 5xx), unreachable (DNS failure, connection
refused, timed out), offline (HF_HUB_OFFLINE). Exit 0 when every asset
has a reachable source, 3 when some have none, 2 when none answered.
`--list` prints every asset with its file, source, revision and size in
100 columns; `--format json` gives every field, URLs included.
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
    quiet: bool = typer.Option(False, "--quiet", "-q",
                               help="No progress bars, and no log lines of the hub client."),
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
    from ..download import RemoteError, human_size
    from ..registry import download as fetch

    try:
        results = fetch(names[0], out, exclude=exclude or (), dry_run=dry_run, quiet=quiet, workers=workers, sas=sas)
    except RemoteError as e:
        if not e.fault:
            raise  # what the user can fix: one line, exit 2
        # A source answered, then the transfer failed after every retry: a fault mid-run; a rerun resumes.
        raise FaultError(str(e)) from None
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


LIST_WIDTH = 100  # --list fits a 100-column terminal; --format json keeps every field


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(0, width - 3)] + "..."


def _print_list(format: str) -> None:
    from ..registry import entry, list_entries

    rows = list_entries()
    if format == "json":
        typer.echo(json.dumps(rows, indent=1))
        return
    # One line per entry (name, kind, description), then one indented line per source of each of its files:
    # a flat table of every field would be 190 columns wide (names and file names reach 51 and 56 characters).
    cells = [("  " + (r["file"] or "(folder)"), _where(r), _revision(r["revision"]), r["size"]) for r in rows]
    head = ("  file", "source", "revision", "size")
    w = [max(len(c[i]) for c in cells + [head]) for i in range(3)]

    def line(c: tuple[str, str, str, str]) -> str:
        return f"{c[0]:<{w[0]}}  {c[1]:<{w[1]}}  {c[2]:<{w[2]}}  {c[3]}".rstrip()

    typer.echo("name (kind): description")
    typer.echo(line(head))
    last = None
    for r, c in zip(rows, cells):
        if r["name"] != last:
            last = r["name"]
            typer.echo(_clip(f"{r['name']} ({r['entry']}): {entry(r['name']).description}", LIST_WIDTH))
        typer.echo(_clip(line(c), LIST_WIDTH))


def _where(row: dict[str, Any]) -> str:
    # The kind, and what tells its sources apart where the entry's line does not (an Azure account, a host).
    from ..registry import SOURCE_KINDS

    account = SOURCE_KINDS[row["source"]].account(row["url"])
    return f"{row['source']} {account}" if account else row["source"]


def _revision(rev: Optional[str]) -> str:
    # A pinned commit as git abbreviates it; a branch ("main") as it is; Azure and https sources have none.
    if not rev:
        return "-"
    return rev[:7] if len(rev) == 40 else rev


def _check(names: List[str], sas: Optional[str], timeout: float, format: str) -> None:
    from ..download import human_size
    from ..registry import NoSourceAnswered, check

    offline: Optional[NoSourceAnswered] = None
    try:
        rows = check(names, sas=sas, timeout=timeout)
    except NoSourceAnswered as e:  # still one line per source first: each says why (DNS failure, refused, ...)
        rows, offline = e.rows, e
    if format == "json":
        typer.echo(json.dumps([{"name": r.name, "file": r.file, "source": r.source.kind, "url": r.source.address(),
                                "revision": r.source.revision or None, "status": r.status, "state": r.state,
                                "http": r.http, "reason": r.reason or None, "size": r.size, "detail": r.detail}
                               for r in rows], indent=1))
    else:
        table = [("name", "file", "source", "state", "size")]
        table += [(r.name, r.file, r.source.label(), r.state, human_size(r.size) if r.size is not None else "-")
                  for r in rows]
        w = [max(len(t[i]) for t in table) for i in range(4)]
        for t in table:
            typer.echo(f"{t[0]:<{w[0]}}  {t[1]:<{w[1]}}  {t[2]:<{w[2]}}  {t[3]:<{w[3]}}  {t[4]}")
    if offline is not None:
        raise offline
    assets = {(r.name, r.file) for r in rows}
    ok = {(r.name, r.file) for r in rows if r.status == "reachable"}
    note = f"{len(ok)} of {len(assets)} assets have a reachable source"
    if any(r.status == "denied" for r in rows):
        note += "; denied: Azure needs a read SAS (--sas or VINVL_AZURE_SAS), the hub a token (HF_TOKEN)"
    typer.echo(note, err=True)
    if ok != assets:
        raise typer.Exit(3)
