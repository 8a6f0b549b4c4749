"""Images to region features and tags: the detector's side of the seam with Oscar+.

:func:`regions_for_images` runs a detector over images into a feature folder (``vinvl extract``'s outputs)
and opens it as a :class:`vinvl.oscar.data.regions.RegionStore`; Oscar+ reads regions only through such
stores, never the detector.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

import torch

from .config import detector_preset
from .detection import Detector
from .detection.numerics import choose
from .extract import collect_inputs, extract, match_given_boxes
from .given_boxes import GivenBoxes
from .oscar.data.regions import RegionStore
from .registry import default_detector, resolve_detector
from .tsv import read_key_index

PathLike = Union[str, os.PathLike]


def regions_for_images(
    images: Sequence[PathLike],
    out_dir: PathLike,
    model: Optional[str] = None,
    weights: Optional[PathLike] = None,
    labelmap: Optional[PathLike] = None,
    device: str = "cpu",
    dtype: str = "fp32",
    quiet: bool = True,
    boxes: Union[None, PathLike, Mapping[str, Any]] = None,
    boxes_missing: str = "error",
):
    """Run the detector over ``images`` (files, folders, lists: whatever ``vinvl extract`` takes) into
    ``out_dir`` and return the image keys in input order and a ``RegionStore`` over the result.

    ``boxes`` (a boxes file, as ``vinvl extract --boxes`` reads, or a mapping image key -> ``[N, 4]`` x1 y1 x2 y2
    in original pixels) gives each image's regions instead of the detector's: every box, in order, with its
    best class as the tag (the original's FORCE_BOXES); ``boxes_missing="empty"`` gives images without boxes none.

    The model is ``weights`` (+ ``labelmap``, with the released X152-C4 preset), a registry
    ``model`` name (fetched when missing, :func:`vinvl.registry.resolve_detector`), or by default the
    released VG detector when cached, else the shipped demo detector. Images that fail to decode are left out of the keys (``out_dir/errors.tsv`` says why).
    An ``out_dir`` already complete for the same inputs is reused.
    """
    if weights is not None:
        cfg, weights_path, labelmap_path = detector_preset("vinvl_vg_x152c4"), Path(weights), labelmap
    else:
        # A name given explicitly is fetched when missing; the implicit default never downloads.
        found = resolve_detector(model or default_detector()[0], download=model is not None, quiet=quiet)
        cfg, weights_path, labelmap_path = detector_preset(found.preset), found.weights, labelmap or found.labelmap
    items = collect_inputs(list(images))
    given = None
    if boxes is not None and isinstance(boxes, Mapping):
        given = GivenBoxes.from_mapping(boxes).match([(it.key, ()) for it in items], boxes_missing, "ignore")
    elif boxes is not None:
        given, _ = match_given_boxes(items, boxes, boxes_missing, "ignore")
    numerics = choose(torch.device(device), dtype)
    det = Detector.from_checkpoint(weights_path, preset=cfg, labelmap=labelmap_path, device=device,
                                   dtype=numerics.dtype, channels_last=numerics.channels_last)
    out = Path(out_dir)
    complete = (out / "manifest.json").is_file() and (out / "features.tsv").is_file()
    extract(items, det, out, quiet=quiet, resume=complete, overwrite=not complete, boxes=given)
    store = RegionStore(out)
    done = set(read_key_index(out / "imageid2idx.json"))
    return [it.key for it in items if it.key in done], store


def image_keys(images: Sequence[PathLike]) -> dict[str, str]:
    """The key ``vinvl extract`` gives each image path (as :func:`regions_for_images` names them)."""
    return {str(p): collect_inputs([p])[0].key for p in images}
