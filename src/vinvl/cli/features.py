"""``vinvl features``: convert detector outputs to Oscar inputs and inspect feature files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import numpy as np
import typer

from .. import features as F
from ..errors import VinvlError
from .options import output_folder

app = typer.Typer(help="Region features: convert to Oscar's layout, inspect.", no_args_is_help=True)


@app.command("to-oscar")
def to_oscar(
    predictions: Path = typer.Argument(..., help="Detector predictions.tsv."),
    out: Path = typer.Option(..., "-o", "--out", help="Output folder.", callback=output_folder),
    hw: Optional[Path] = typer.Option(None, "--hw", help="hw.tsv with image sizes (needed for the original's rows)."),
) -> None:
    """Write features.tsv (2054-d), label.tsv, imageid2idx.json and lineidx files, streaming."""
    stats = F.to_oscar(predictions, out, hw=hw)
    typer.echo(f"{out}: {stats['images']} images, {stats['boxes']} boxes")


@app.command("show")
def show(
    file: Path = typer.Argument(..., help="features.tsv (either row variant) or predictions.tsv."),
    key: Optional[str] = typer.Option(None, help="Image key."),
    row: Optional[int] = typer.Option(None, help="0-based row number."),
    dim: int = typer.Option(F.OSCAR_DIM, help="Feature width of a features.tsv."),
) -> None:
    """Print a row's shape and summary statistics as JSON."""
    if (key is None) == (row is None):
        raise VinvlError("give exactly one of --key or --row")
    kind = F.first_row_kind(file)
    if kind == "predictions":
        from ..tsv import TSVFile

        t = TSVFile(file, build_index=True, columns=2)
        i = t.index_of(key) if key is not None else row
        k, text = t.fields_bytes(i)  # type: ignore[arg-type]
        p = F.Prediction.from_json(k.decode(), text, path=file, line=i + 1)  # type: ignore[operator]
        arr = p.features if p.features is not None else np.zeros((len(p), 0), np.float32)
        info = {"key": p.key, "num_boxes": len(p), "classes": p.classes[:10], "image_h": p.image_h, "image_w": p.image_w}
    else:
        ft = F.FeatureTSV(file, dim=dim)
        k, arr = ft[ft.tsv.index_of(key)] if key is not None else ft[row]  # type: ignore[index]
        info = {"key": k, "num_boxes": int(arr.shape[0])}
    info.update(
        shape=list(arr.shape),
        mean=float(arr.mean()) if arr.size else None,
        min=float(arr.min()) if arr.size else None,
        max=float(arr.max()) if arr.size else None,
    )
    typer.echo(json.dumps(info))
