"""``vinvl extract``: images -> predictions.tsv + features.tsv, in the native or the original grammar."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from ..errors import VinvlError

HELP = """Detect objects and attributes and write the VinVL/Oscar files.

\b
Native form (positional arguments are image files or folders):
  vinvl extract PATH... -o OUT [--model NAME | --weights W]
      [--labelmap L] [--min-size N] [--max-size N] [--device cpu|cuda]
      [--batch-size N] [--set KEY=VALUE ...]
\b
Original form (positional arguments are the original's KEY VALUE pairs):
  vinvl extract --config-file F.yaml [KEY VALUE ...] --images PATH [-o OUT]
\b
  MODEL.WEIGHT names the weights, DATASETS.LABELMAP_FILE (under DATA_DIR)
  the label map, OUTPUT_DIR the default output folder. TEST.IMS_PER_BATCH
  batches consecutive images zero-padded together, as the original does.
  Rows follow TEST.TSV_SAVE_SUBSET. The seed's sgg_configs/vgattr/
  vinvl_x152c4.yaml is shipped: that path works even without the file.
\b
Keys: the image path relative to the folder given (for a file: its
name), without extension, '/'-separated.
\b
Outputs in OUT, each with its .lineidx:
  predictions.tsv  the detector's rows (the native form adds attributes,
                   attr_scores, image_h, image_w)
  features.tsv     key, num_boxes, base64 float32 (num_boxes x 2054)
"""


def extract(
    args: Optional[List[str]] = typer.Argument(None, help="Images/folders (native) or KEY VALUE pairs (original)."),
    out: Optional[Path] = typer.Option(None, "-o", "--out", help="Output folder."),
    config_file: Optional[Path] = typer.Option(None, "--config-file", help="Original yaml config (original form)."),
    images: Optional[List[Path]] = typer.Option(None, "--images", help="Images or folders (original form)."),
    model: Optional[str] = typer.Option(None, "--model", help="Released model name, looked up in VINVL_HOME."),
    weights: Optional[Path] = typer.Option(None, "--weights", help="Checkpoint file (overrides --model)."),
    labelmap: Optional[Path] = typer.Option(None, "--labelmap", help="Label map file."),
    preset: Optional[str] = typer.Option(None, "--preset", help="Architecture preset for --weights."),
    min_size: Optional[int] = typer.Option(None, "--min-size", help="Short side after resizing."),
    max_size: Optional[int] = typer.Option(None, "--max-size", help="Longest side after resizing."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu or cuda."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Images per forward pass."),
    set_: Optional[List[str]] = typer.Option(None, "--set", help="Detector setting KEY=VALUE (e.g. nms_filter=2)."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
) -> None:
    from ..config.original import ConfigError, load_original, typed_override
    from ..detection import Detector
    from ..extract import collect_images
    from ..extract.run import NATIVE_SUBSET, extract as run_extract
    from ..zoo import resolve_model

    args = args or []
    overrides: dict = {}
    if min_size is not None:
        overrides["min_size"] = min_size
    if max_size is not None:
        overrides["max_size"] = max_size
    if batch_size is not None:
        overrides["batch_size"] = batch_size
    if config_file is not None:
        if set_:
            raise VinvlError("--set is for the native form; with --config-file give KEY VALUE pairs")
        if not images:
            raise VinvlError("the original form needs --images PATH")
        config_file = _config_path(config_file)
        _, run = load_original(config_file, args)
        cfg = run.detector.replace(**overrides) if overrides else run.detector
        weights_path = weights or (Path(run.weights) if run.weights else None)
        if weights_path is None:
            raise ConfigError(f"{config_file}: MODEL.WEIGHT is empty; set it or pass --weights")
        labelmap_path = labelmap or (Path(run.labelmap) if run.labelmap else None)
        dev = device or run.device
        out_dir = out or Path(run.output_dir)
        subset, sized, inputs = run.save_subset, False, list(images)
    else:
        if images:
            inputs = list(images) + [Path(a) for a in args]
        else:
            inputs = [Path(a) for a in args]
        if not inputs:
            raise VinvlError("no images given (native form: vinvl extract PATH... -o OUT)")
        if out is None:
            raise VinvlError("-o/--out is required in the native form")
        if weights is not None:
            from ..config import detector_preset

            cfg = detector_preset(preset or "vinvl_vg_x152c4")
            weights_path, labelmap_path = weights, labelmap
        else:
            entry, weights_path, cached_labelmap = resolve_model(model or "vinvl_vg_x152c4")
            from ..config import detector_preset

            cfg = detector_preset(preset or entry.preset)
            labelmap_path = labelmap or cached_labelmap
        for item in set_ or []:
            key, sep, value = item.partition("=")
            if not sep:
                raise VinvlError(f"--set {item!r}: expected KEY=VALUE")
            cfg = typed_override(cfg, key, value)
        cfg = cfg.replace(**overrides) if overrides else cfg
        dev = device or "cpu"
        out_dir, subset, sized = out, NATIVE_SUBSET, True
    _check_device(dev)
    if labelmap_path is not None and not Path(labelmap_path).is_file():
        raise VinvlError(f"{labelmap_path}: no such label map file")
    items = collect_images(inputs)
    det = Detector.from_checkpoint(weights_path, preset=cfg, labelmap=labelmap_path, device=dev)
    if labelmap_path is None:
        typer.echo("note: no label map: classes are written as their indices", err=True)
    stats = run_extract(items, det, out_dir, subset=subset, image_size_in_rows=sized, quiet=quiet)
    typer.echo(
        f"{out_dir}: {stats.images} images, {stats.boxes} boxes in {stats.seconds:.1f} s "
        f"({stats.images / max(stats.seconds, 1e-9):.2f} images/s)"
    )


def _check_device(device: str) -> None:
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise VinvlError(f"device {device!r} requested but no CUDA device is available (use cpu)")
    if not (device == "cpu" or device.startswith("cuda")):
        raise VinvlError(f"device must be cpu or cuda[:N], got {device!r}")


def _config_path(path: Path) -> Path:
    """The given config, or the shipped copy of the seed's config when its path is named but absent."""
    from ..config.original import seed_config_path

    if not path.exists() and path.name == seed_config_path().name:
        typer.echo(f"note: {path} not found; using the shipped {seed_config_path().name}", err=True)
        return seed_config_path()
    return path
