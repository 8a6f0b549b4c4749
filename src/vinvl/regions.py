"""Images to region features and tags: the detector's side of the seam with Oscar+.

:func:`regions_for_images` runs a detector over images into a feature folder (``vinvl extract``'s outputs,
through its two library calls :func:`~vinvl.extract.plan_extraction` and :func:`~vinvl.extract.run_extraction`)
and opens it as a :class:`vinvl.oscar.data.regions.RegionStore`; Oscar+ reads regions only through such stores,
never the detector.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

from .config.pretrained import resolve_pretrained
from .detection import PretrainedFiles
from .errors import FormatError, VinvlError
from .extract import collect_inputs, plan_extraction, run_extraction
from .labelmap import LabelMap, VocabularyMap
from .oscar.data.regions import RegionStore
from .tsv import read_key_index

PathLike = Union[str, os.PathLike]


def regions_for_images(
    images: Sequence[PathLike],
    out_dir: PathLike,
    model: Union[None, str, PretrainedFiles] = None,
    weights: Optional[PathLike] = None,
    labelmap: Optional[PathLike] = None,
    device: Optional[str] = "cpu",
    dtype: str = "fp32",
    quiet: bool = True,
    boxes: Union[None, PathLike, Mapping[str, Any]] = None,
    boxes_missing: str = "error",
    preset: Optional[str] = None,
) -> tuple[list[str], RegionStore]:
    """Run the detector over ``images`` (files, folders, lists: whatever ``vinvl extract`` takes) into
    ``out_dir`` and return the image keys in input order and a ``RegionStore`` over the result.

    ``boxes`` (a boxes file, as ``vinvl extract --boxes`` reads, or a mapping image key -> ``[N, 4]`` x1 y1 x2 y2
    in original pixels) gives each image's regions instead of the detector's: every box, in order, with its
    best class as the tag (the original's FORCE_BOXES); ``boxes_missing="empty"`` gives images without boxes none.

    The model is ``weights`` (+ ``labelmap``; ``preset`` its architecture, default the released X152-C4), a
    registry ``model`` name (fetched when missing, :func:`vinvl.registry.resolve_detector`) or the files
    :func:`vinvl.config.pretrained.resolve_pretrained` resolved, or by default the released VG detector when cached,
    else the shipped demo detector; it is loaded by :meth:`vinvl.detection.Detector.from_pretrained` in ``dtype``
    on ``device`` (None: CUDA when present). Images that fail to decode are left out of the keys
    (``out_dir/errors.tsv`` says why). An ``out_dir`` already complete for the same inputs and settings is
    reused: the detector runs on none of the images again.
    """
    out = Path(out_dir)
    complete = (out / "manifest.json").is_file() and (out / "features.tsv").is_file()
    # One process: a caller under torchrun (an Oscar+ command) has its own process group; its regions are not sharded.
    job = plan_extraction(list(images), out, model=model, weights=weights, labelmap=labelmap, preset=preset,
                          device=device or "auto", dtype=dtype, boxes=boxes, boxes_missing=boxes_missing,
                          boxes_unused="ignore", resume=complete, overwrite=not complete, quiet=quiet, ranks=(0, 1, 0))
    run_extraction(job)
    store = RegionStore(out)
    done = set(read_key_index(out / "imageid2idx.json"))
    return [it.key for it in job.items if it.key in done], store


def image_keys(images: Sequence[PathLike]) -> dict[str, str]:
    """The key ``vinvl extract`` gives each image path (as :func:`regions_for_images` names them)."""
    return {str(p): collect_inputs([p])[0].key for p in images}


def constraint_classes(class_map: PathLike, model: Union[None, str, PretrainedFiles] = None,
                       weights: Optional[PathLike] = None, labelmap: Optional[PathLike] = None) -> dict[str, str]:
    """For constrained beam search on new photos: the detector's class name -> the constraint vocabulary's (Open
    Images', whose hierarchy CBS reads), from a ``source class -> detector class`` map such as the FourSets release's
    ``oi_vgoiv6_class2ind.json``. The detector is resolved as :func:`regions_for_images` resolves it; a label map that
    does not cover the map's classes is one error naming both."""
    found = model if isinstance(model, PretrainedFiles) else resolve_pretrained(
        weights if weights is not None else model, labelmap=labelmap)
    lm = found.labelmap
    if lm is None:
        raise VinvlError(f"{class_map}: the detector has no label map to map its classes with")
    lm = lm if isinstance(lm, LabelMap) else LabelMap.load(lm)
    try:
        return VocabularyMap.load(class_map, lm).source_names()
    except FormatError as e:
        raise VinvlError(f"the detector's label map ({lm.source or 'given'}, {lm.num_classes - 1} classes) does not "
                         f"cover the class map: {e}") from None

