"""Image-text retrieval data in the original Oscar layout (``oscar/run_retrieval.py``).

A data folder (the released ``coco_ir``) holds ``{split}_captions.pt`` (``{image id: [captions]}``,
the values sometimes JSON strings) and the evaluation key lists ``test_img_keys_1k.tsv`` /
``test_img_keys.tsv`` (one image id per line). Region features come from either

- a feature folder (VinVL's ``--img_feat_file``): ``features.tsv`` + ``imageid2idx.json``, tags
  in ``label.tsv`` or, as VinVL's script reads them, ``predictions.tsv`` beside the features;
- or the first Oscar release's tensors: ``{split}_img_{type}_feats.pt`` (``{image id: [N, 2054]}``)
  with tags in ``{split}_{od_label_type}_labels.pt`` (a string or a list of ``{"class": ...}``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch

from ..errors import VinvlError
from .inputs import RegionStore

PathLike = Union[str, os.PathLike]
Key = Union[int, str]


def _load_pt(path: Path) -> Any:
    from .checkpoint import load_tensors

    if not path.is_file():
        raise VinvlError(f"{path}: no such file")
    return load_tensors(path, str(path), "tensor/dict file")


def load_captions(path: PathLike) -> dict[Key, list[str]]:
    """``{image id: [captions]}`` of a ``{split}_captions.pt`` (JSON-string values decoded, as the original does)."""
    path = Path(path)
    data = _load_pt(path)
    if not isinstance(data, dict) or not data:
        raise VinvlError(f"{path}: expected a non-empty dict image id -> captions")
    out: dict[Key, list[str]] = {}
    for k, v in data.items():
        if isinstance(v, str):
            try:
                v = json.loads(v)
            except json.JSONDecodeError:
                raise VinvlError(f"{path}: image {k!r}: captions are neither a list nor a JSON list") from None
        if not isinstance(v, (list, tuple)) or not v or not all(isinstance(c, str) for c in v):
            raise VinvlError(f"{path}: image {k!r}: expected a non-empty list of caption strings")
        out[k] = list(v)
    return out


def read_image_keys(path: PathLike, like: Optional[Key] = None) -> list[Key]:
    """The image ids of a key list (one per line); ints when ``like`` (a caption-file key) is an int."""
    path = Path(path)
    if not path.is_file():
        raise VinvlError(f"{path}: no such key list")
    keys: list[Key] = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        k = line.strip().split("\t")[0]
        if not k:
            continue
        if isinstance(like, int):
            try:
                keys.append(int(k))
            except ValueError:
                raise VinvlError(f"{path}:{n}: image id {k!r} is not an integer like the caption file's") from None
        else:
            keys.append(k)
    if not keys:
        raise VinvlError(f"{path}: no image ids")
    return keys


class TensorImages:
    """Regions and tags of the first Oscar release's ``.pt`` files, by image id."""

    def __init__(self, features: PathLike, labels: Optional[PathLike] = None) -> None:
        """``features``: ``{image id: [N, dim] tensor}``; ``labels``: ``{image id: tags str | [{"class": ...}]}``."""
        self.path = Path(features)
        self.features = _load_pt(self.path)
        if not isinstance(self.features, dict):
            raise VinvlError(f"{self.path}: expected a dict image id -> region features")
        self.labels_path = Path(labels) if labels else None
        self.labels = _load_pt(self.labels_path) if self.labels_path else None

    def _get(self, table: dict, key: Key, path: Path) -> Any:
        for k in (key, str(key)) + ((int(key),) if str(key).isdigit() else ()):
            if k in table:
                return table[k]
        raise VinvlError(f"{path}: no image {key!r}")

    def regions(self, key: Key) -> np.ndarray:
        """``[N, dim]`` float32 region features of image ``key``."""
        x = self._get(self.features, key, self.path)
        return np.asarray(x.numpy() if isinstance(x, torch.Tensor) else x, dtype=np.float32)

    def tags(self, key: Key) -> str:
        """The image's tags text ('' without a label file)."""
        if self.labels is None:
            return ""
        v = self._get(self.labels, key, self.labels_path)
        return v if isinstance(v, str) else " ".join(str(o["class"]) for o in v)


class FolderImages:
    """A :class:`RegionStore` over a feature folder whose lookups name the folder and key on failure."""

    def __init__(self, folder: PathLike, features: str = "features.tsv") -> None:
        folder = Path(folder)
        labels = "label.tsv" if (folder / "label.tsv").is_file() else "predictions.tsv"
        self.store = RegionStore(folder, features=features, labels=labels)

    def regions(self, key: Key) -> np.ndarray:
        """``[N, dim]`` float32 region features of image ``key``."""
        try:
            return self.store.regions(str(key))
        except KeyError:
            raise VinvlError(f"{self.store.features.tsv.path}: no image {key!r}") from None

    def tags(self, key: Key) -> str:
        """The image's tags text ('' without label.tsv / predictions.tsv)."""
        try:
            return self.store.tags(str(key))
        except KeyError:
            raise VinvlError(f"{self.store.labels.path}: no image {key!r}") from None


def open_images(
    features: Optional[PathLike], data_dir: Optional[PathLike] = None, split: str = "test",
    img_feature_type: str = "frcnn", od_label_type: str = "vg",
) -> Union[FolderImages, TensorImages]:
    """The image source: a feature folder or its ``features.tsv`` (``--img_feat_file``), a ``.pt`` file,
    or by default ``data_dir``'s ``features.tsv`` or ``{split}_img_{type}_feats.pt``."""
    if features is None:
        if data_dir is None:
            raise VinvlError("give the region features (a feature folder, features.tsv or a .pt file)")
        d = Path(data_dir)
        if (d / "features.tsv").is_file():
            return FolderImages(d)
        features = d / f"{split}_img_{img_feature_type}_feats.pt"
        if not features.is_file():
            raise VinvlError(f"{d}: neither features.tsv nor {features.name}; give the features with --features")
    path = Path(features)
    if path.is_dir():
        return FolderImages(path)
    if path.suffix == ".pt":
        labels = path.parent / f"{split}_{od_label_type}_labels.pt"
        return TensorImages(path, labels if labels.is_file() else None)
    if path.is_file():
        return FolderImages(path.parent, features=path.name)
    raise VinvlError(f"{path}: no such feature folder or file")


@dataclass
class RetrievalSplit:
    """One split: image ids in order, each image's captions (the first ``captions_per_image``), the image source."""

    keys: list[Key]
    captions: dict[Key, list[str]]
    images: Union[FolderImages, TensorImages]

    def flat_captions(self) -> tuple[list[str], list[int]]:
        """Every caption in image order, and the index (into ``keys``) of the image each describes."""
        texts, owner = [], []
        for i, k in enumerate(self.keys):
            texts += self.captions[k]
            owner += [i] * len(self.captions[k])
        return texts, owner


def load_split(
    data_dir: PathLike, split: str, features: Optional[PathLike] = None, keys_file: Optional[PathLike] = None,
    captions_per_image: int = 5, img_feature_type: str = "frcnn", od_label_type: str = "vg",
) -> RetrievalSplit:
    """``{split}_captions.pt`` of ``data_dir``, restricted to ``keys_file`` (a name in ``data_dir`` or a path) when given."""
    d = Path(data_dir)
    captions = load_captions(d / f"{split}_captions.pt")
    keys = list(captions)
    if keys_file is not None:
        kf = Path(keys_file)
        if not kf.is_file() and (d / kf).is_file():
            kf = d / kf
        keys = read_image_keys(kf, like=keys[0])
        missing = [k for k in keys if k not in captions]
        if missing:
            raise VinvlError(f"{kf}: image ids without captions in {split}_captions.pt: {missing[:5]}")
    caps = {k: captions[k][:captions_per_image] for k in keys}
    images = open_images(features, d, split, img_feature_type, od_label_type)
    return RetrievalSplit(keys, caps, images)
