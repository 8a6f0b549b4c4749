"""``vinvl extract``: images -> predictions.tsv + features.tsv, in the native or the original grammar."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer

from .options import device_option, dtype_option, one_of, output_folder

HELP = """Detect objects and attributes and write the VinVL/Oscar files.

\b
Native form (positional arguments are image files or folders):
  vinvl extract PATH... -o OUT [--model NAME | --weights W]
      [--labelmap L] [--min-size N] [--max-size N] [--device auto|cpu|cuda]
      [--batch-size N] [--set KEY=VALUE ...] [--dtype fp32|auto|bf16|fp16]
      [--boxes FILE [--boxes-missing empty] [--boxes-unused ignore]]
\b
Original form (positional arguments are the original's KEY VALUE pairs):
  vinvl extract --config-file F.yaml [KEY VALUE ...] --images PATH [-o OUT]
\b
  MODEL.WEIGHT names the weights, DATASETS.LABELMAP_FILE (under DATA_DIR)
  the label map, OUTPUT_DIR the default output folder. TEST.IMS_PER_BATCH
  zero-pads images together as the original batches them (grouped by
  orientation under DATALOADER.ASPECT_RATIO_GROUPING, its default).
  Rows follow TEST.TSV_SAVE_SUBSET. The seed's sgg_configs/vgattr/
  vinvl_x152c4.yaml is shipped: that path works even without the file.
\b
  Without --images, the dataset yamls of DATASETS.TEST under DATA_DIR.
  MODEL.RPN.FORCE_BOXES True MODEL.ROI_BOX_HEAD.FORCE_BOXES True: the
  boxes of the dataset yamls' label files (or --boxes FILE) are described.
\b
Given boxes (--boxes): each image's boxes (x1 y1 x2 y2, original pixels)
replace the detector's: every box is kept, in order, with its best class,
score, feature and attributes (no threshold, NMS or regression).
\b
Inputs: image files, folders (recursive), .txt lists of paths, image
TSVs (key<TAB>base64) and dataset yamls (img, linelist), in the order
given. Keys: the path relative to the folder given (a file: its name),
without extension, '/'-separated; or --key-from name|stem, --key-regex
(the first group), --key-map FILE (path<TAB>key or JSON); TSV keys as
they are. A duplicate key stops the run before any work.
\b
Outputs in OUT, each .tsv with its .lineidx, rows in input order:
  predictions.tsv  the detector's rows (the native form adds attributes,
                   attr_scores, image_h, image_w)
  features.tsv     key, num_boxes, base64 float32 (num_boxes x D: 2054,
                   518 for the demo model; manifest.json feature_dim)
  label.tsv, hw.tsv, imageid2idx.json   Oscar's tags, sizes, key index
  errors.tsv       key, where, reason: inputs that could not be read
  manifest.json    model, weights sha256, settings, versions, counts
--skip predictions|features|labels|hw leaves an output out.
\b
Batches are written whole, rows in input order: --resume continues an
interrupted run and gives the same bytes as a clean run. Exit code 0:
all images done; 3: some inputs failed (see errors.tsv); 2: bad usage.
torchrun --nproc_per_node N -m vinvl extract ... splits the batches
over N processes and merges their shards (rank 0).
"""


def extract(
    args: Optional[List[str]] = typer.Argument(None, help="Images/folders (native) or KEY VALUE pairs (original)."),
    out: Optional[Path] = typer.Option(None, "-o", "--out", help="Output folder.", callback=output_folder),
    config_file: Optional[Path] = typer.Option(None, "--config-file", help="Original yaml config (original form)."),
    images: Optional[List[Path]] = typer.Option(None, "--images", help="Images or folders (original form)."),
    model: Optional[str] = typer.Option(None, "--model", help="Registry detector name (VINVL_HOME; fetched when missing)."),
    weights: Optional[Path] = typer.Option(None, "--weights", help="Checkpoint file (overrides --model)."),
    labelmap: Optional[Path] = typer.Option(None, "--labelmap", help="Label map file."),
    preset: Optional[str] = typer.Option(None, "--preset", help="Architecture preset for --weights."),
    min_size: Optional[int] = typer.Option(None, "--min-size", min=1, help="Short side after resizing."),
    max_size: Optional[int] = typer.Option(None, "--max-size", min=1, help="Longest side after resizing."),
    device: Optional[str] = device_option("; the original form: MODEL.DEVICE unless given"),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", min=1, help="Images per forward pass."),
    set_: Optional[List[str]] = typer.Option(None, "--set", help="Detector setting KEY=VALUE (e.g. nms_filter=2)."),
    workers: int = typer.Option(0, "--workers", min=0, help="DataLoader workers decoding and resizing images."),
    bucket_batches: int = typer.Option(
        8, "--bucket-batches", min=1, help="With --batch-size > 1: batches per window in which images of equal resized size "
        "are batched together (no padding; the same rows as batch size 1 up to float rounding)."),
    key_from: str = typer.Option("relpath", "--key-from", help="Key of a file input: relpath, name or stem.",
                                  callback=one_of("relpath", "name", "stem")),
    key_regex: Optional[str] = typer.Option(None, "--key-regex", help="Key = first group of this regex on the relative path."),
    key_map: Optional[Path] = typer.Option(None, "--key-map", help="File mapping path -> key (TSV or JSON)."),
    skip: Optional[List[str]] = typer.Option(None, "--skip", help="Leave out an output: predictions, features, labels, hw.",
                                              callback=one_of("predictions", "features", "labels", "hw")),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run in OUT."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace what OUT holds."),
    exif_transpose: bool = typer.Option(False, "--exif-transpose", help="Apply EXIF orientation (the original does not)."),
    boxes: Optional[Path] = typer.Option(None, "--boxes", help="Given boxes per image key (label TSV, JSON {key: [[x1, y1, "
                                         "x2, y2], ...]} or COCO instances json; original pixels): every box described "
                                         "in order instead of detected ones (the original's FORCE_BOXES)."),
    boxes_missing: str = typer.Option("error", "--boxes-missing", help="An image without boxes in --boxes: error, or "
                                      "empty (a zero-box row).", callback=one_of("error", "empty")),
    boxes_unused: str = typer.Option("error", "--boxes-unused", help="Entries of --boxes that match no image: error, or "
                                     "ignore.", callback=one_of("error", "ignore")),
    dtype: str = dtype_option(),
    quiet: bool = typer.Option(False, "--quiet", help="No progress output."),
) -> None:
    # The plan refuses whatever it can before torch is imported (seconds): the options, the model's files, the
    # inputs and their keys, the boxes, the output folder. The run then loads the detector once.
    from ..extract.plan import plan_extraction

    native = config_file is None
    job = plan_extraction(
        [*(images or []), *map(Path, args or [])] if native else list(images or []), out,
        config_file=config_file, config_opts=[] if native else list(args or []), model=model, weights=weights,
        labelmap=labelmap, preset=preset, settings=set_ or [], min_size=min_size, max_size=max_size,
        batch_size=batch_size, device=device, dtype=dtype, key_from=key_from, key_regex=key_regex, key_map=key_map,
        boxes=boxes, boxes_missing=boxes_missing, boxes_unused=boxes_unused, skip=skip or [], workers=workers,
        bucket_batches=bucket_batches, exif_transpose=exif_transpose, resume=resume, overwrite=overwrite, quiet=quiet,
        command=["vinvl", "extract", *sys.argv[2:]] if sys.argv[1:2] == ["extract"] else None)

    from ..extract.run import run_extraction

    stats = run_extraction(job, say=lambda line: typer.echo(line, err=True))
    if not stats.finished:
        typer.echo(f"{job.out_dir}: rank {job.options.rank} done: {stats.images} images in {stats.seconds:.1f} s", err=True)
        return
    typer.echo(
        f"{job.out_dir}: {stats.images} images, {stats.boxes} boxes, {stats.failed} failed in {stats.seconds:.1f} s "
        f"({stats.images / max(stats.seconds, 1e-9):.2f} images/s)"
    )
    if stats.failed:
        typer.echo(f"{stats.failed} input(s) could not be read: see {Path(job.out_dir) / 'errors.tsv'}", err=True)
        raise typer.Exit(3)
