"""``vinvl features``: convert detector outputs to Oscar inputs and inspect feature files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from .. import features as F
from ..atomic import check_writable
from ..errors import VinvlError
from ..tsv import TSVFile
from .options import one_of, output_file, output_folder, write_faults

app = typer.Typer(help="Region features: convert to Oscar's layout, inspect.", no_args_is_help=True)


@app.command("to-oscar")
def to_oscar(
    predictions: Path = typer.Argument(..., help="Detector predictions.tsv."),
    out: Path = typer.Option(..., "-o", "--out", help="Output folder.", callback=output_folder),
    hw: Optional[Path] = typer.Option(None, "--hw", help="hw.tsv with image sizes (needed for the original's rows)."),
) -> None:
    """Write features.tsv (region width + 6: 2054-d for the released detectors), label.tsv, imageid2idx.json,
    lineidx files and manifest.json (its feature_dim), streaming."""
    with write_faults(f"{out} is left as it was"):
        stats = F.to_oscar(predictions, out, hw=hw)
    typer.echo(f"{out}: {stats['images']} images, {stats['boxes']} boxes, {stats['feature_dim']}-d rows")


@app.command("convert")
def convert(
    src: Path = typer.Argument(..., help="Feature TSV in either layout."),
    out: Path = typer.Option(..., "-o", "--out", help="Converted feature TSV (its .lineidx beside it).",
                             callback=output_file),
    layout: str = typer.Option("caption", "--layout", help="caption (run_captioning.py's key, JSON) or plain "
                               "(key, num_boxes, base64).", callback=one_of(*F.FEATURE_LAYOUTS)),
) -> None:
    """Rewrite a feature TSV in captioning's layout or the 3-column one (rows, order and blobs unchanged)."""
    if not src.is_file():
        raise VinvlError(f"{src}: no such file")
    check_writable(out.parent)  # a read-only or unreachable -o is named before any row is read
    with write_faults(f"{out} is left as it was"):
        s = F.convert_features(src, out, layout)
    typer.echo(f"{out}: {s['rows']} rows, {s['boxes']} boxes ({s['layout']})")


@app.command("show")
def show(
    file: Path = typer.Argument(..., help="features.tsv (either row variant) or predictions.tsv."),
    key: Optional[str] = typer.Option(None, help="Image key."),
    row: Optional[int] = typer.Option(None, help="0-based row number."),
    dim: Optional[int] = typer.Option(
        None, "--dim", min=1, help="Row width of a features.tsv (2054; 518 for the demo detector). Default: manifest.json "
        "beside the file, else the first row with boxes."),
) -> None:
    """Print a row's shape and summary statistics as JSON."""
    import numpy as np

    if (key is None) == (row is None):
        raise VinvlError("give exactly one of --key or --row")
    t = TSVFile(file, build_index=True)
    if len(t) == 0:
        raise VinvlError(f"{file}: the file is empty (no rows)")
    if row is not None and not 0 <= row < len(t):
        raise VinvlError(f"{file}: row {row} is out of range: the file has {len(t)} rows (0..{len(t) - 1})")
    i = t.index_of(key) if key is not None else row
    kind = F.first_row_kind(file)
    if kind == "predictions":
        fields = t.fields_bytes(i)  # type: ignore[arg-type]
        F.check_no_cr(fields, file, i + 1)  # type: ignore[operator]
        if len(fields) != 2:
            raise VinvlError(f"{file}:{i + 1}: expected 2 columns (key, JSON), found {len(fields)}")  # type: ignore[operator]
        p = F.Prediction.from_json(fields[0].decode("utf-8", "replace"), fields[1], path=file, line=i + 1)  # type: ignore[operator]
        arr = p.features if p.features is not None else np.zeros((len(p), 0), np.float32)
        info = {"key": p.key, "num_boxes": len(p), "classes": p.classes[:10], "image_h": p.image_h, "image_w": p.image_w}
    elif kind in ("features", "caption-features"):
        ft = F.FeatureTSV(file, dim=dim)
        k, arr = ft[i]  # type: ignore[index]
        info = {"key": k, "num_boxes": int(arr.shape[0]), "feature_dim": ft.dim}
    else:
        raise VinvlError(f"{file}: line 1 is not a features or predictions row (found {kind!r}); see `vinvl tsv check`")
    info.update(
        shape=list(arr.shape),
        mean=float(arr.mean()) if arr.size else None,
        min=float(arr.min()) if arr.size else None,
        max=float(arr.max()) if arr.size else None,
    )
    typer.echo(json.dumps(info))
