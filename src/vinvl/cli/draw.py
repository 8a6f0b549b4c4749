"""``vinvl draw``: a predictions.tsv's boxes, classes, scores and attributes drawn onto its images."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from .options import output_folder, write_faults

HELP = """Draw the detections of a predictions.tsv onto their images.

Each row's image is looked up in --images as KEY plus a common image
extension (.jpg .png ...; keys with '/' are subfolders) and written to
OUT/KEY.png with one coloured box per detection (a colour per class) and
a label "attributes class score". --keys draws only the rows named,
--min-score and --max-boxes thin the boxes (best scores kept), and --html
also writes OUT/index.html showing every picture with a table of its boxes.
"""


def draw(
    predictions: Path = typer.Argument(..., help="predictions.tsv (rows: key, JSON)."),
    images: Path = typer.Option(..., "--images", help="Folder holding the images, named by key."),
    out: Path = typer.Option(..., "-o", "--out", help="Output folder for KEY.png (and index.html).", callback=output_folder),
    keys: Optional[List[str]] = typer.Option(None, "--keys", help="Draw only these keys (repeatable)."),
    html: bool = typer.Option(False, "--html", help="Also write OUT/index.html."),
    top_attributes: int = typer.Option(2, "--top-attributes", min=0, help="Attributes shown per label."),
    min_score: float = typer.Option(0.0, "--min-score", min=0.0, max=1.0, help="Skip boxes scoring below this."),
    max_boxes: Optional[int] = typer.Option(None, "--max-boxes", min=0, help="Draw at most this many boxes per image."),
) -> None:
    """Draw a predictions.tsv's detections onto their images."""
    from ..draw import draw_predictions

    with write_faults(f"the pictures finished before it are kept in {out}"):
        written = draw_predictions(
            predictions,
            images,
            out,
            keys=keys,
            html=html,
            top_attributes=top_attributes,
            min_score=min_score,
            max_boxes=max_boxes,
        )
    line = f"{out}: {len(written)} image{'' if len(written) == 1 else 's'} drawn"
    if html:
        line += f", {out / 'index.html'}"
    typer.echo(line)
