"""``vinvl labelmap``: inspect label maps and map classes between vocabularies."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from ..labelmap import LabelMap, VocabularyMap
from .options import output_file

app = typer.Typer(help="Label maps: show, look up, convert, map between vocabularies.", no_args_is_help=True)


@app.command("show")
def show(file: Path = typer.Argument(..., help="VG json, class2ind json or labelmap.tsv.")) -> None:
    """Print the number of classes and attributes and the first few of each."""
    lm = LabelMap.load(file)
    typer.echo(f"{file}: {lm.num_classes} classes (incl. background), {lm.num_attributes} attributes")
    typer.echo("classes: " + ", ".join(f"{i}={n}" for i, n in enumerate(lm.classes[:8])) + ", ...")
    if lm.attributes:
        typer.echo("attributes: " + ", ".join(f"{i}={n}" for i, n in enumerate(lm.attributes[:8])) + ", ...")


@app.command("lookup")
def lookup(
    file: Path = typer.Argument(..., help="Label map."),
    queries: List[str] = typer.Argument(..., help="Class names or indices."),
    attribute: bool = typer.Option(False, "--attribute", help="Look up attributes instead of classes."),
) -> None:
    """Print ``index<TAB>name`` for each class (or attribute) name or index."""
    lm = LabelMap.load(file)
    for q in queries:
        if q.isdigit():
            i = int(q)
            name = lm.attribute_name(i) if attribute else lm.class_name(i)
        else:
            name, i = q, (lm.attribute_index(q) if attribute else lm.class_index(q))
        typer.echo(f"{i}\t{name}")


@app.command("map")
def map_(
    mapping: Path = typer.Argument(..., help="Vocabulary map json (source class -> target index)."),
    queries: List[str] = typer.Argument(..., help="Source class names."),
    target: Path = typer.Option(..., "--target", help="Target label map (e.g. the merged 1848-class map)."),
) -> None:
    """Print ``source<TAB>target index<TAB>target name`` for each source class."""
    vm = VocabularyMap.load(mapping, LabelMap.load(target))
    for q in queries:
        typer.echo(f"{q}\t{vm.map_name(q)}\t{vm.target_name(q)}")


@app.command("convert")
def convert(
    file: Path = typer.Argument(..., help="Any supported label map."),
    out: Path = typer.Option(..., "-o", "--out", help="Output VG-style json.", callback=output_file),
    attributes: Optional[Path] = typer.Option(None, help="Take the attributes from this VG json."),
) -> None:
    """Write a label map in the VG json layout (label_to_idx, idx_to_label, ...)."""
    lm = LabelMap.load(file)
    if attributes is not None:
        lm = LabelMap(lm.classes, LabelMap.load(attributes).attributes, source=lm.source)
    lm.save_vg_json(out)
    typer.echo(f"{out}: {lm.num_classes} classes, {lm.num_attributes} attributes")
