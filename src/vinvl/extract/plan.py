"""What an extraction will run, resolved and checked before torch is imported: :func:`plan_extraction`.

Both grammars of ``vinvl extract`` end here: the native one (images, ``--model``/``--weights``, ``--set``)
and the original's (``--config-file`` and KEY VALUE pairs, mapped by :mod:`vinvl.config.original`). The
plan names the detector's files and config, the inputs and their keys, the given boxes and every run
option; everything that can refuse the run does so here, in a second. :func:`vinvl.extract.run.run_extraction`
then loads the detector once and runs the plan::

    job = plan_extraction(["photos/"], "out", model="vinvl_vg_x152c4")
    stats = run_extraction(job)
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

from ..atomic import check_writable
from ..config import DetectorConfig
from ..config.original import ConfigError, load_original, seed_config_path
from ..config.pretrained import PretrainedFiles, resolve_pretrained
from ..errors import VinvlError
from ..features import NATIVE_SUBSET
from .sources import ImageItem, collect_inputs, dataset_label_boxes, make_key_rule, match_given_boxes

PathLike = Union[str, os.PathLike]


@dataclass
class ExtractOptions:
    """Everything about a run besides the detector and the inputs."""

    subset: Sequence[str] = NATIVE_SUBSET
    image_size_in_rows: bool = True
    attribute_slots: bool = False  # every top-k attribute slot in rows, 0-score ones too (the original's rows)
    skip: frozenset = frozenset()
    workers: int = 0
    bucket_batches: int = 8  # batches per bucketing window (batch size > 1, same-size batching)
    # Padded batches (batch size > 1) as the original's DATALOADER.ASPECT_RATIO_GROUPING: h >= w apart from h < w.
    aspect_ratio_grouping: bool = False
    exif_transpose: bool = False
    resume: bool = False
    overwrite: bool = False
    quiet: bool = False
    rank: int = 0
    world_size: int = 1
    poll_seconds: float = 2.0
    # Given boxes per image key (x1 y1 x2 y2, original pixels): the proposals instead of the RPN's.
    boxes: Optional[dict[str, Any]] = None
    extra_manifest: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ExtractionJob:
    """A checked extraction: the detector's files, how to load them, the inputs, the output folder, the options."""

    model: PretrainedFiles
    device: str  # auto, cpu or cuda[:N]; an unnumbered cuda is each torchrun rank's own GPU
    dtype: str  # as Detector.from_pretrained takes it (auto is decided on the device)
    original_arithmetic: bool  # the original form: its NCHW, BN-unfolded arithmetic
    items: list[ImageItem]
    out_dir: Path
    options: ExtractOptions  # extra_manifest: what the manifest records besides the numerics and the checksums
    notes: tuple[str, ...] = ()  # said once the detector has loaded (an error stays the only line)
    local_rank: Optional[int] = None  # under torchrun with several processes


def torchrun_ranks() -> tuple[int, int, int]:
    """``(rank, world size, local rank)`` of this process as torchrun sets them (0, 1, 0 otherwise)."""
    env = os.environ
    return int(env.get("RANK", "0")), int(env.get("WORLD_SIZE", "1")), int(env.get("LOCAL_RANK", "0"))


def plan_extraction(
    inputs: Sequence[PathLike],
    out_dir: Optional[PathLike] = None,
    *,
    config_file: Optional[PathLike] = None,
    config_opts: Sequence[str] = (),
    model: Union[None, str, PretrainedFiles] = None,
    weights: Optional[PathLike] = None,
    labelmap: Optional[PathLike] = None,
    preset: Optional[str] = None,
    settings: Sequence[str] = (),
    min_size: Optional[int] = None,
    max_size: Optional[int] = None,
    batch_size: Optional[int] = None,
    device: Optional[str] = None,
    dtype: str = "fp32",
    key_from: str = "relpath",
    key_regex: Optional[str] = None,
    key_map: Optional[PathLike] = None,
    boxes: Union[None, PathLike, Mapping[str, Any]] = None,
    boxes_missing: str = "error",
    boxes_unused: str = "error",
    skip: Sequence[str] = (),
    workers: int = 0,
    bucket_batches: int = 8,
    exif_transpose: bool = False,
    resume: bool = False,
    overwrite: bool = False,
    quiet: bool = False,
    command: Optional[Sequence[str]] = None,
    download: bool = True,
    ranks: Optional[tuple[int, int, int]] = None,
) -> ExtractionJob:
    """Resolve and check an extraction without torch (see the module doc); any problem is one :class:`VinvlError`.

    Native form (no ``config_file``): ``inputs`` are image files, folders, lists, image TSVs or dataset yamls;
    the detector is ``weights`` (a checkpoint, ``preset`` its architecture), else the registry ``model`` (fetched
    when missing if ``download``; or files :func:`~vinvl.config.pretrained.resolve_pretrained` resolved),
    else the released VG detector when cached, else the shipped demo; ``settings``
    are ``--set KEY=VALUE`` strings. Original form: ``config_file`` and its ``config_opts`` (KEY VALUE ...) give
    the detector, weights, label map, device and output folder, ``inputs`` (default: DATASETS.TEST) the images;
    ``weights``, ``labelmap``, ``device`` and ``out_dir`` override them. Both: ``min_size``/``max_size``/
    ``batch_size`` last; ``device`` None is ``auto`` (CUDA when present); ``boxes`` (a boxes file, or a mapping
    key -> ``[N, 4]`` boxes in original pixels) are described instead of detections. ``command`` is recorded in
    the manifest. ``ranks`` (rank, world size, local rank) default to torchrun's (:func:`torchrun_ranks`).
    """
    notes: list[str] = []
    sized = {"min_size": min_size, "max_size": max_size, "batch_size": batch_size}
    overrides = {k: v for k, v in sized.items() if v is not None}
    rank, world, local_rank = ranks if ranks is not None else torchrun_ranks()
    run = None
    if config_file is not None:
        if settings:
            raise VinvlError("--set is for the native form; with --config-file give KEY VALUE pairs")
        config_file = _config_path(Path(config_file), notes)
        _, run = load_original(config_file, config_opts)
        data_dir: Optional[Path] = Path(run.data_dir)
        if not inputs:
            if not run.datasets_test:
                raise VinvlError("the original form needs --images PATH or DATASETS.TEST (dataset yamls under DATA_DIR)")
            inputs = [data_dir / d for d in run.datasets_test]
        checkpoint = weights or (Path(run.weights) if run.weights else None)
        if checkpoint is None:
            raise ConfigError(f"{config_file}: MODEL.WEIGHT is empty; set it or pass --weights")
        files = resolve_pretrained(Path(checkpoint), preset=_with_options(run.detector, overrides),
                                   labelmap=labelmap or run.labelmap)
        dev = device or run.device
        out = Path(out_dir) if out_dir is not None else Path(run.output_dir)
        if boxes is not None and not run.boxes_given:
            raise ConfigError("--boxes in the original form needs MODEL.RPN.FORCE_BOXES True (and, to keep every box, "
                              "MODEL.ROI_BOX_HEAD.FORCE_BOXES True)")
        if run.evaluate:
            notes.append("note: TEST.SKIP_PERFORMANCE_EVAL False: vinvl extract writes the predictions only; the "
                         "original's evaluation is `vinvl detector eval DATA.yaml --weights W` (docs/detector.md)")
    else:
        data_dir = None
        if not inputs:
            raise VinvlError("no images given (native form: vinvl extract PATH... -o OUT)")
        if out_dir is None:
            raise VinvlError("-o/--out is required in the native form")
        if isinstance(model, PretrainedFiles):
            if weights is not None or preset is not None or labelmap is not None or settings:
                raise VinvlError("plan_extraction: with resolved files as the model, weights, preset, labelmap and "
                                 "settings belong to resolve_pretrained")
            files = model
        else:
            files = resolve_pretrained(Path(weights) if weights is not None else model, preset=preset,
                                       labelmap=labelmap, settings=settings, download=download, quiet=quiet)
        files = dataclasses.replace(files, config=_with_options(files.config, overrides))
        notes += [files.note] if files.note else []
        dev, out = device or "auto", Path(out_dir)
    if not (dev in ("auto", "cpu") or dev.startswith("cuda")):
        raise VinvlError(f"device must be auto, cpu or cuda[:N], got {dev!r}")
    rule = make_key_rule(key_from, key_regex, key_map)
    items = collect_inputs(inputs, rule, data_dir)
    given = boxes_sha256 = None
    if boxes is not None:
        given, source = match_given_boxes(items, boxes, boxes_missing, boxes_unused)
        boxes_sha256 = source.sha256 or None
    elif run is not None and run.boxes_given:
        given = dataset_label_boxes(inputs, items, data_dir)
    if rank == 0:
        check_writable(out, create=False)  # an error later (the weights) must not leave an empty folder
    original = run is not None
    manifest = {
        "form": "original" if original else "native",
        "dtype": None, "numerics": None,  # the detector's choice, known once it is loaded (run_extraction)
        "command": list(command) if command is not None else None,
        "model": files.name,
        "weights": str(files.weights), "weights_sha256": None,
        "labelmap": str(files.labelmap) if files.labelmap is not None else None, "labelmap_sha256": None,
        "inputs": [str(i) for i in inputs],
        "key_rule": {"key_from": key_from, "key_regex": key_regex, "key_map": str(key_map) if key_map else None},
        "boxes": (("given in memory" if isinstance(boxes, Mapping) else str(boxes)) if boxes is not None
                  else "dataset label files" if given is not None else None),
        "boxes_sha256": boxes_sha256,
        "boxes_missing": boxes_missing if boxes is not None else None,
    }
    options = ExtractOptions(
        subset=run.save_subset if original else NATIVE_SUBSET, image_size_in_rows=not original,
        attribute_slots=original, skip=frozenset(skip), workers=workers, bucket_batches=bucket_batches,
        exif_transpose=exif_transpose, resume=resume, overwrite=overwrite, quiet=quiet, rank=rank, world_size=world,
        boxes=given, aspect_ratio_grouping=original and run.aspect_ratio_grouping, extra_manifest=manifest)
    return ExtractionJob(files, dev, dtype, original, items, out, options, tuple(notes),
                         local_rank if world > 1 else None)


def _with_options(cfg: DetectorConfig, overrides: dict[str, Any]) -> DetectorConfig:
    """``cfg`` with --min-size/--max-size/--batch-size applied; a conflict names the options."""
    if not overrides:
        return cfg
    try:
        return cfg.replace(**overrides)
    except VinvlError as e:
        given = ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in overrides.items())
        raise VinvlError(f"{given}: {e}") from None


def _config_path(path: Path, notes: list[str]) -> Path:
    """The given config, or the shipped copy of the seed's config when its path is named but absent (said in ``notes``)."""
    if not path.exists() and path.name == seed_config_path().name:
        notes.append(f"note: {path} not found; using the shipped {seed_config_path().name}")
        return seed_config_path()
    return path


__all__ = ["ExtractOptions", "ExtractionJob", "plan_extraction", "torchrun_ranks"]
