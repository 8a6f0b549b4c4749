"""Captioning splits: the original's split yaml (``run_captioning.py``'s ``CaptionTSVDataset``) or a feature
folder with a caption json, read as a :class:`~vinvl.oscar.data.regions.RegionStore` + captions, and written
back in the original's layout.

A split yaml names ``feature`` (the feature TSV: captioning's ``key \\t {"num_boxes", "features"}`` rows or the
standard three columns), ``label`` (the label TSV whose classes are the tags) and ``caption`` (a json list of
``{image_id, caption, id}``), paths by :mod:`vinvl.dataset_spec`'s rule; a feature folder is ``features.tsv`` +
``label.tsv`` (e.g. ``vinvl extract`` output).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Optional, Sequence, Union

from ...atomic import atomic_write_json
from ...dataset_spec import DatasetSpec
from ...errors import VinvlError
from ...features import format_caption_features_row
from ...textio import display_path, read_json
from ...tsv import TSVWriter
from ...yamlio import write_yaml
from .regions import RegionStore

PathLike = Union[str, os.PathLike]


def read_captions(path: PathLike) -> list[dict[str, Any]]:
    """A caption json: a list of ``{image_id, caption}`` or COCO's ``{"annotations": [...]}``."""
    path = Path(path)
    data = read_json(path)
    if isinstance(data, dict):
        data = data.get("annotations")
    if not isinstance(data, list):
        raise VinvlError(f"{path}: expected a list of {{image_id, caption}} (or a COCO dict with 'annotations')")
    for i, c in enumerate(data):
        if not isinstance(c, dict) or "image_id" not in c or not isinstance(c.get("caption"), str):
            raise VinvlError(f"{path}: entry {i} is not {{image_id, caption}}: {str(c)[:80]}")
    return data


class CaptionData:
    """A captioning split: image keys, their regions and tags (a :class:`RegionStore`), and their captions."""

    def __init__(self, source: PathLike, captions: Optional[PathLike] = None) -> None:
        """``source``: a split yaml (``feature``, ``label``, ``caption``) or a feature folder;
        ``captions`` (a caption json) overrides the yaml's or goes with a folder."""
        src = Path(source)
        self.name = str(src)
        caption_file: Optional[Path] = Path(captions) if captions else None
        self.spec: Optional[DatasetSpec] = None  # the split yaml, read (None: a feature folder)
        if src.is_dir():
            self.store = RegionStore(src)
            self.keys = self.store.keys()
        elif src.is_file():
            spec = self.spec = DatasetSpec(src, "captioning yaml", needs=("feature",), hint=" (and 'label', 'caption')")
            feat, label = spec.file("feature"), spec.file("label")
            self.store = RegionStore(feat.parent, features=feat.name, labels=str(label) if label else None)
            if caption_file is None and "caption" in spec:
                caption_file = spec.resolve(spec.get("caption"))
                if not caption_file.is_file():  # the eval references may only exist in COCO format
                    coco = caption_file.with_name(caption_file.stem + "_coco_format.json")
                    caption_file = coco if coco.is_file() else None
            # the original numbers images by the label TSV's rows when there is one
            self.keys = self.store.labels.keys() if self.store.labels is not None else self.store.keys()
        else:
            raise VinvlError(f"{src}: no such split yaml or feature folder")
        self.dim = self.store.dim
        self.captions: list[tuple[str, str]] = []
        self.image_ids: dict[str, Any] = {}
        if caption_file is not None:
            known = set(self.keys)
            for c in read_captions(caption_file):
                key = str(c["image_id"])
                if key not in known:
                    raise VinvlError(f"{caption_file}: image {key!r} has no row in {self.name}")
                self.captions.append((key, c["caption"]))
                self.image_ids.setdefault(key, c["image_id"])
        self.refs: dict[str, list[str]] = {}
        for key, cap in self.captions:
            self.refs.setdefault(key, []).append(cap)
        self.caption_file = caption_file

    def regions(self, key: str) -> Any:
        """The image's ``[num_boxes, dim]`` region features."""
        return self.store.regions(key)

    def objects(self, key: str) -> list[dict[str, Any]]:
        """The image's label objects (``{"class", "conf", "rect", ...}``), [] without labels."""
        return self.store.objects(key)

    def tags(self, key: str) -> str:
        """The image's tags (label classes joined by spaces), '' without labels."""
        return self.store.tags(key)

    def captioned_keys(self) -> list[str]:
        """Keys of the images with captions, in the split's order."""
        return [k for k in self.keys if k in self.refs]


def nocaps_image_ids(info: PathLike, keys: Sequence[Any]) -> dict[Any, int]:
    """The NoCaps image id of each image key, from a NoCaps image info json (COCO-style ``{"images": [{"id",
    "file_name", ...}]}``): a key is an image's file name, with or without its extension, or its ``open_images_id`` (the
    original's prediction keys); a key found nowhere is a one-line error naming the file and the key."""
    data = read_json(info, expect=dict, what="NoCaps image info json")
    images = data.get("images")
    if not isinstance(images, list):
        raise VinvlError(f"{display_path(info)}: no 'images' list (a NoCaps image info json has one)")
    ids: dict[str, int] = {}
    for i, im in enumerate(images):
        if not (isinstance(im, dict) and isinstance(im.get("id"), int) and isinstance(im.get("file_name"), str)):
            raise VinvlError(f"{display_path(info)}: images[{i}] is not {{\"id\": int, \"file_name\": str, ...}}")
        names = (im["file_name"], os.path.splitext(im["file_name"])[0], im.get("open_images_id"))
        for name in names:
            if isinstance(name, str):
                ids.setdefault(name, im["id"])
    out = {}
    for key in keys:
        name = str(key)
        found = ids.get(name, ids.get(os.path.splitext(name)[0]))
        if found is None:
            raise VinvlError(f"{display_path(info)}: no image whose file name is {name!r} (with or without extension)")
        out[key] = found
    return out


def write_caption_split(data: CaptionData, out_dir: PathLike, name: str) -> Path:
    """Write ``data`` as the original's captioning split (``run_captioning.py``'s ``CaptionTSVDataset``):
    ``{name}.yaml`` naming ``{name}.feature.tsv`` (``key \\t {"num_boxes", "features"}``), ``{name}.label.tsv``
    (``key \\t [{"class", ...}]``, rows aligned with the features: the original pairs them by row), and, with
    captions, ``{name}_caption.json`` (``[{image_id: key, caption, id}]``) + ``{name}_caption_coco_format.json``
    (its evaluation references); only captioned images when there are captions. Returns the yaml."""
    if not name or any(c in name for c in "/\\\t\n"):
        raise VinvlError(f"split name {name!r}: give a plain file name stem")
    out = Path(out_dir)
    keys = data.captioned_keys() if data.captions else list(data.keys)
    if not keys:
        raise VinvlError(f"{data.name}: no images to write")
    labelled = data.store.labels is not None
    with TSVWriter(out / f"{name}.feature.tsv", columns=2) as fw:
        for k in keys:
            fw.write(format_caption_features_row(k, data.regions(k), dim=data.dim))
    spec: dict[str, Any] = {"feature": f"{name}.feature.tsv", "label": None}
    if labelled:
        with TSVWriter(out / f"{name}.label.tsv", columns=2) as lw:
            for k in keys:
                lw.write([k, json.dumps(data.objects(k))])
        spec["label"] = f"{name}.label.tsv"
    if data.captions:
        # image_id is the TSV key (a string): the original maps captions to rows and results to references by it
        caps = [{"image_id": k, "caption": c, "id": i} for i, (k, c) in enumerate(data.captions)]
        atomic_write_json(out / f"{name}_caption.json", caps)
        coco = {"info": {}, "licenses": [], "type": "captions", "images": [{"id": k, "file_name": k} for k in keys],
                "annotations": caps}
        atomic_write_json(out / f"{name}_caption_coco_format.json", coco)
        spec["caption"] = f"{name}_caption.json"
    return write_yaml(out / f"{name}.yaml", spec)
