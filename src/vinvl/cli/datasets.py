"""``vinvl datasets``: write synthetic datasets (the shapes detection set) to disk."""

from __future__ import annotations

from pathlib import Path

import typer
from .options import output_folder

app = typer.Typer(help="Synthetic datasets: shapes with classes and attributes.", no_args_is_help=True)


@app.command("shapes")
def shapes(
    out: Path = typer.Argument(..., help="Output folder (images/, img.tsv, hw.tsv, label.tsv, labelmap.json, dataset.yaml).",
                               callback=output_folder),
    num: int = typer.Option(200, "--num", min=1, help="Number of images."),
    seed: int = typer.Option(0, "--seed", min=0, help="Dataset seed; image i depends only on (seed, i)."),
    min_size: int = typer.Option(160, "--min-size", min=1, help="Smallest image side in pixels (at least 64)."),
    max_size: int = typer.Option(320, "--max-size", min=1, help="Largest image side in pixels."),
) -> None:
    """Write a deterministic shapes detection dataset (class + colour/size/fill attributes per object)."""
    from ..datasets.shapes import check_args, generate_shapes

    check_args(num, min_size, max_size)  # before any file is written
    s = generate_shapes(out, num, seed=seed, min_size=min_size, max_size=max_size)
    per_class = ", ".join(f"{n} {c}" for c, n in s["classes"].items())
    typer.echo(f"{out}: {s['images']} images, {s['objects']} objects ({per_class})")
