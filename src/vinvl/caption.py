"""Photo to caption in one call: the released detector's regions and tags, then the Oscar+ captioner.

Both models are registry names (or a captioner folder) resolved by :mod:`vinvl.registry`, which
fetches whatever is missing into ``VINVL_HOME`` first; decoding follows the checkpoint's recorded
training options, else the VinVL captioning recipe (:data:`vinvl.oscar.tasks.captioning.VINVL_CAPTION_RECIPE`).

Everything that can refuse the call (the inputs, a boxes file, the models' names, their files and whether
they fit each other) is checked before torch and transformers are imported (several seconds), so a call that
fails, offline without the models say, fails in well under a second: this module imports them only inside
:func:`caption`, once the checks are done.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Optional, Sequence, Union

from .config import DetectorConfig, detector_preset
from .config.pretrained import resolve_pretrained
from .errors import VinvlError
from .given_boxes import read_given_boxes
from .oscar.options import CBSOptions, DecodeOptions
from .registry import DEFAULT_CAPTIONER, DEFAULT_DETECTOR, checkpoint_path, is_checkpoint_name, names
from .textio import read_json

PathLike = Union[str, os.PathLike]


def captioner_path(model: str, *, sas: Optional[str] = None, quiet: bool = False) -> Path:
    """A captioner folder: ``model`` as a path when it exists, else a registry name fetched when missing."""
    if Path(model).exists():
        return Path(model)
    if not is_checkpoint_name(model) or model in names("bert"):
        what = "a plain BERT, not a captioner" if model in names("bert") else "no such checkpoint folder or registry name"
        raise VinvlError(f"--model {model!r}: {what}; captioners: {', '.join(names('captioner'))}")
    return checkpoint_path(model, sas=sas, quiet=quiet)


def region_dim(preset: Union[str, DetectorConfig]) -> int:
    """The width of the Oscar+ region rows a detector preset (or config) gives: its region channels + 6 box geometry
    values."""
    cfg = detector_preset(preset) if isinstance(preset, str) else preset
    return cfg.backbone.region_channels + 6


def check_captioner_files(folder: Path) -> None:
    """Refuse, in one line naming ``folder``, a captioner folder without weights or, beside them, a vocabulary."""
    folder = Path(folder)
    weights = [n for n in ("pytorch_model.bin", "model.safetensors") if (folder / n).is_file()]
    if not weights and not any(folder.glob("checkpoint-*/pytorch_model.bin")):  # a run folder: its checkpoint-N/
        raise VinvlError(f"{folder}: not a captioner folder: no pytorch_model.bin or model.safetensors")
    if weights and not (folder / "vocab.txt").is_file():
        raise VinvlError(f"{folder}: not a captioner folder: no vocab.txt beside {weights[0]}")


def captioner_region_dim(folder: Path) -> int:
    """The region width a captioner folder takes: its ``config.json``'s ``img_feature_dim`` (read without torch)."""
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise VinvlError(f"{folder}: no config.json: not a captioner folder")
    config = read_json(path, dict)
    if "img_feature_dim" not in config:
        from .oscar.configuration import OscarConfig  # only for a config that leaves the width to the model's default

        return int(OscarConfig().img_feature_dim)
    dim = config["img_feature_dim"]
    if isinstance(dim, bool) or not isinstance(dim, int) or dim <= 0:
        raise VinvlError(f"{path}: img_feature_dim {dim!r} is not a positive integer")
    return dim


def caption(
    images: Sequence[PathLike],
    *,
    model: str = DEFAULT_CAPTIONER,
    detector: str = DEFAULT_DETECTOR,
    num_beams: int = 5,
    max_gen_length: int = 20,
    batch_size: int = 16,
    device: Optional[str] = None,
    work_dir: Optional[PathLike] = None,
    sas: Optional[str] = None,
    quiet: bool = False,
    boxes: Optional[PathLike] = None,
    dtype: str = "fp32",
    cbs: Optional[CBSOptions] = None,
    cbs_class_map: Optional[PathLike] = None,
) -> list[tuple[str, str]]:
    """``(image key, caption)`` for every readable image of ``images`` (files, folders, lists), in input order.

    The detector runs into ``work_dir`` (kept, and reused when complete) or a temporary folder, in ``dtype``
    (fp32: the original's numbers); ``boxes`` (a boxes file) gives the regions instead of the detector's. ``cbs``:
    constrained beam search (novel-object captions, as NoCaps'), its constraints from the detector's own boxes
    (``cbs_class_map``, e.g. ``oi_vgoiv6_class2ind.json``, maps the hierarchy's classes to the detector's) and the
    Open Images class hierarchy ``cbs.cbs_hierarchy``; word pieces from the captioner's tokenizer unless
    ``cbs.cbs_constraint`` names a table, word forms from ``cbs.cbs_tokenforms`` when given.
    """
    if not images:
        raise VinvlError("no images given")
    missing = [str(p) for p in images if not Path(p).exists()]
    if missing:
        raise VinvlError(f"{missing[0]}: no such image file or folder")
    if cbs is not None:
        if cbs.cbs_hierarchy is None:
            raise VinvlError("--cbs needs --cbs-hierarchy (the Open Images class hierarchy json)")
        if cbs.cbs_box is not None:
            raise VinvlError("--cbs-box: vinvl caption takes the detector's own boxes (caption predict takes a box file)")
        for flag, path in (("--cbs-hierarchy", cbs.cbs_hierarchy), ("--cbs-class-map", cbs_class_map),
                           ("--cbs-constraint", cbs.cbs_constraint), ("--cbs-tokenforms", cbs.cbs_tokenforms)):
            if path is not None and not Path(path).is_file():
                raise VinvlError(f"{flag} {path}: no such file")
    elif cbs_class_map is not None:
        raise VinvlError("--cbs-class-map applies only with --cbs")
    if boxes is not None:
        read_given_boxes(boxes)  # a bad boxes file stops before any model is fetched
    # Both models are fetched (and their fit checked) before any image is processed, and before torch is imported.
    ckpt = captioner_path(model, sas=sas, quiet=quiet)
    found = resolve_pretrained(detector, sas=sas, quiet=quiet)
    want = captioner_region_dim(ckpt)
    got = region_dim(found.config)
    if want != got:
        raise VinvlError(f"{detector} gives {got}-d regions but {model} takes {want}-d: use the detector the "
                         f"captioner was trained on (the released captioners: vinvl_vg_x152c4)")
    check_captioner_files(ckpt)  # else the detector would run over every image before the captioner fails
    dcfg = DecodeOptions(num_beams=num_beams, max_gen_length=max_gen_length, eval_batch_size=batch_size)

    from .oscar.checkpoint import read_config  # torch and transformers: only now that nothing above refused
    from .oscar.configuration import OscarConfig
    from .oscar.tasks.captioning import predict
    from .training.runtime import resolve_device
    from .regions import constraint_classes, regions_for_images

    read_config(ckpt, OscarConfig)  # the whole config.json is a model config (one line naming it if not)
    classes = constraint_classes(cbs_class_map, found) if cbs_class_map is not None else None
    dev = resolve_device(device or "auto")
    with tempfile.TemporaryDirectory(prefix="vinvl-caption-") as tmp:
        out = Path(work_dir) if work_dir is not None else Path(tmp)
        keys, store = regions_for_images(list(images), out / "regions", model=found, device=str(dev), quiet=quiet,
                                         boxes=boxes, dtype=dtype)
        path = predict(ckpt, store, keys, out, dcfg, device=dev, cbs=cbs, cbs_classes=classes)
        rows = json.loads(path.read_text(encoding="utf-8"))
    return [(str(r["image_id"]), str(r["caption"])) for r in rows]
