"""``vinvl extract``: images -> predictions.tsv + features.tsv, in the native or the original grammar."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import List, Optional

import typer

from ..errors import VinvlError
from .options import check_output_folder, device_name, one_of, output_folder

HELP = """Detect objects and attributes and write the VinVL/Oscar files.

\b
Native form (positional arguments are image files or folders):
  vinvl extract PATH... -o OUT [--model NAME | --weights W]
      [--labelmap L] [--min-size N] [--max-size N] [--device cpu|cuda]
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
    device: Optional[str] = typer.Option(None, "--device", help="cpu or cuda.", callback=device_name),
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
    dtype: str = typer.Option("fp32", "--dtype", help="fp32 (default: the original's numbers), auto (bf16 where this "
                              "CPU/GPU has native bf16, else fp32: by capability, never by a timing), or bf16/fp16 autocast "
                              "(faster, with drift: docs/performance.md).", callback=one_of("auto", "fp32", "bf16", "fp16")),
    quiet: bool = typer.Option(False, "--quiet", help="No progress output."),
) -> None:
    # Everything that can refuse the command runs before torch is imported (seconds): the options, the model's
    # files, the inputs and their keys, the boxes, the output folder.
    from ..atomic import check_writable
    from ..config.original import ConfigError, apply_set_options, load_original
    from ..extract import collect_inputs, dataset_label_boxes, make_key_rule, match_given_boxes
    from ..features import NATIVE_SUBSET
    from ..registry import default_detector, file_sha256, resolve_detector

    args = args or []
    notes: list[str] = []  # said once the inputs and the weights are known good (an error is the only line)
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
        config_file = _config_path(config_file)
        _, run = load_original(config_file, args)
        data_dir = Path(run.data_dir)
        if not images:
            if not run.datasets_test:
                raise VinvlError("the original form needs --images PATH or DATASETS.TEST (dataset yamls under DATA_DIR)")
            images = [data_dir / d for d in run.datasets_test]
        cfg = _with_options(run.detector, overrides)
        weights_path = weights or (Path(run.weights) if run.weights else None)
        if weights_path is None:
            raise ConfigError(f"{config_file}: MODEL.WEIGHT is empty; set it or pass --weights")
        labelmap_path = labelmap or (Path(run.labelmap) if run.labelmap else None)
        dev = device or run.device
        out_dir = out or Path(run.output_dir)
        check_output_folder(out_dir, "-o/--out" if out else "OUTPUT_DIR")
        subset, sized, inputs = run.save_subset, False, list(images)
        model_name = None
        if boxes is not None and not run.boxes_given:
            raise ConfigError("--boxes in the original form needs MODEL.RPN.FORCE_BOXES True (and, to keep every box, "
                              "MODEL.ROI_BOX_HEAD.FORCE_BOXES True)")
        if run.evaluate:
            notes.append("note: TEST.SKIP_PERFORMANCE_EVAL False: vinvl extract writes the predictions only; the "
                         "original's evaluation is `vinvl detector eval DATA.yaml --weights W` (docs/detector.md)")
    else:
        data_dir = None
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
            weights_path, labelmap_path, model_name = weights, labelmap, None
        else:
            if model is None:
                model_name, why = default_detector()
                notes.append(f"using {why}")
            else:
                model_name = model
            # A name given explicitly is fetched when missing; the implicit default never downloads.
            found = resolve_detector(model_name, download=model is not None, quiet=quiet)
            from ..config import detector_preset

            cfg = detector_preset(preset or found.preset)
            weights_path, labelmap_path = found.weights, labelmap or found.labelmap
        cfg = apply_set_options(cfg, set_ or [])
        cfg = _with_options(cfg, overrides)
        dev = device or "cpu"
        out_dir, subset, sized = out, NATIVE_SUBSET, True
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and dev.startswith("cuda") and ":" not in dev:
        dev = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    if not (dev == "cpu" or dev.startswith("cuda")):
        raise VinvlError(f"device must be cpu or cuda[:N], got {dev!r}")
    if not Path(weights_path).is_file():
        raise VinvlError(f"{weights_path}: no such checkpoint file")
    if labelmap_path is not None and not Path(labelmap_path).is_file():
        raise VinvlError(f"{labelmap_path}: no such label map file")
    rule = make_key_rule(key_from, key_regex, key_map)
    items = collect_inputs(inputs, rule, data_dir)
    given = boxes_sha256 = None
    if boxes is not None:
        given, source = match_given_boxes(items, boxes, boxes_missing, boxes_unused)
        boxes_sha256 = source.sha256
    elif config_file is not None and run.boxes_given:
        given = dataset_label_boxes(inputs, items, data_dir)
    if rank == 0:
        check_writable(out_dir, create=False)  # an error later (the weights) must not leave an empty folder

    import torch

    from ..detection import Detector
    from ..detection.numerics import Numerics, choose as choose_numerics, faster_mode_hint
    from ..extract.run import ExtractOptions, extract as run_extract, mark_failed

    _check_device(dev)
    # The weights load first (a file of the wrong model stops before anything is measured), in the original's
    # arithmetic for the original form; the native form then takes the numerics --dtype chooses and folds res5's
    # frozen BNs in either layout (the set-up --dtype auto measured).
    native = config_file is None
    det = Detector.from_checkpoint(weights_path, preset=cfg, labelmap=labelmap_path, device=dev, dtype="fp32",
                                   channels_last=native, fold_bn=native)
    numerics = choose_numerics(torch.device(dev), dtype)
    if not native and numerics.dtype == "fp32":
        numerics = Numerics("fp32", False, "fp32: the original form's arithmetic (NCHW, BNs unfolded)")
    if world > 1:
        _agree_across_ranks(items, rank, world)
    if (numerics.dtype, numerics.channels_last) != (det.dtype, det.channels_last):
        det = Detector(det.model, det.labelmap, dev, dtype=numerics.dtype, channels_last=numerics.channels_last,
                       fold_bn=native)
    if not quiet:  # the demo-model warning is said even with --quiet: its rows are not real-world objects
        notes.append(f"numerics: {numerics.dtype} {'NHWC' if numerics.channels_last else 'NCHW'} ({numerics.reason})")
        hint = faster_mode_hint(torch.device(dev), numerics.dtype)
        if hint:
            notes.append(hint)
    if rank == 0:
        for note in notes:
            typer.echo(note, err=True)
    if labelmap_path is None and rank == 0:
        typer.echo("note: no label map: classes are written as their indices", err=True)
    opts = ExtractOptions(
        subset=subset, image_size_in_rows=sized, attribute_slots=not native, skip=frozenset(skip or ()), workers=workers,
        bucket_batches=bucket_batches, exif_transpose=exif_transpose, resume=resume, overwrite=overwrite, quiet=quiet,
        rank=rank, world_size=world, boxes=given, aspect_ratio_grouping=not native and run.aspect_ratio_grouping,
        extra_manifest={
            "form": "original" if config_file is not None else "native",
            "dtype": numerics.dtype,
            "numerics": numerics.reason,
            "command": ["vinvl", "extract", *sys.argv[2:]] if sys.argv[1:2] == ["extract"] else None,
            "model": model_name,
            "weights": str(weights_path),
            "weights_sha256": file_sha256(weights_path),
            "labelmap": str(labelmap_path) if labelmap_path else None,
            "labelmap_sha256": file_sha256(labelmap_path) if labelmap_path else None,
            "inputs": [str(i) for i in inputs],
            "key_rule": {"key_from": key_from, "key_regex": key_regex, "key_map": str(key_map) if key_map else None},
            "boxes": (str(boxes) if boxes is not None else "dataset label files" if given is not None else None),
            "boxes_sha256": boxes_sha256,
            "boxes_missing": boxes_missing if boxes is not None else None,
        },
    )
    try:
        stats = run_extract(items, det, out_dir, opts)
    except BaseException as e:
        if world > 1:
            mark_failed(out_dir, rank, world, f"{type(e).__name__}: {e}")
        raise
    if not stats.finished:
        typer.echo(f"{out_dir}: rank {rank} done: {stats.images} images in {stats.seconds:.1f} s", err=True)
        return
    typer.echo(
        f"{out_dir}: {stats.images} images, {stats.boxes} boxes, {stats.failed} failed in {stats.seconds:.1f} s "
        f"({stats.images / max(stats.seconds, 1e-9):.2f} images/s)"
    )
    if stats.failed:
        typer.echo(f"{stats.failed} input(s) could not be read: see {Path(out_dir) / 'errors.tsv'}", err=True)
        raise typer.Exit(3)


def _with_options(cfg, overrides: dict):  # type: ignore[no-untyped-def]
    """``cfg`` with --min-size/--max-size/--batch-size applied; a conflict names the options."""
    if not overrides:
        return cfg
    try:
        return cfg.replace(**overrides)
    except VinvlError as e:
        given = ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in overrides.items())
        raise VinvlError(f"{given}: {e}") from None


def _agree_across_ranks(items: list, rank: int, world: int) -> None:
    """Under torchrun: check once, at the start, that every rank sees the same inputs (the shards are cut from them)."""
    import hashlib

    import torch.distributed as dist

    digest = hashlib.sha256("\n".join(f"{i.key}\t{i.where}" for i in items).encode()).hexdigest()
    if not dist.is_available():
        return
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        seen: list = [None] * world
        dist.all_gather_object(seen, digest)
    finally:
        dist.destroy_process_group()
    if len(set(seen)) != 1:
        raise VinvlError(f"the {world} ranks see different inputs (rank {rank}: {len(items)} images); give every rank the same")


def _check_device(device: str) -> None:
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise VinvlError(f"device {device!r} requested but no CUDA device is available (use cpu)")


def _config_path(path: Path) -> Path:
    """The given config, or the shipped copy of the seed's config when its path is named but absent."""
    from ..config.original import seed_config_path

    if not path.exists() and path.name == seed_config_path().name:
        typer.echo(f"note: {path} not found; using the shipped {seed_config_path().name}", err=True)
        return seed_config_path()
    return path
