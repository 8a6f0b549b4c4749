"""Region features and tags by image key: the one interface (:class:`RegionSource`) every task reads them through.

Two stores implement it: :class:`RegionStore` over a feature TSV (``vinvl extract`` output, a released
feature folder, a captioning split's feature file; either row layout) with its tags in a label TSV (or
``predictions.tsv``), and :class:`FeatureDict` over the original's ``*_img_frcnn_feats.pt`` dicts (tags from
a ``*_labels.pt`` dict, or none). :func:`open_regions` opens either from a path. The detector never appears
here: images become regions in :mod:`vinvl.regions`, which writes the files these stores read.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional, Protocol, Union, runtime_checkable

import numpy as np

from ...errors import FormatError, VinvlError
from ...features import FeatureTSV, parse_label_row, tags_text
from ...state_dict import read_torch
from ...tsv import TSVFile

PathLike = Union[str, os.PathLike]
Key = Union[int, str]


@runtime_checkable
class RegionSource(Protocol):
    """What the tasks ask of region features: width, each image's ``[N, dim]`` regions and its tags text."""

    dim: int

    def regions(self, key: Key) -> np.ndarray:
        """``[N, dim]`` float32 region features of image ``key``; one error naming the source if it has none."""
        ...

    def tags(self, key: Key) -> str:
        """The image's tags (class names joined by spaces); '' when the source has no tags."""
        ...

    def keys(self) -> list:
        """Every image key, in the source's order."""
        ...


class RegionStore:
    """Region features and tags of a feature folder (``vinvl extract`` output or a released folder):
    ``features.tsv`` (``key, num_boxes, base64`` or captioning's ``key, {"num_boxes", "features"}``) and
    ``label.tsv`` (tags; ``predictions.tsv`` when there is no label.tsv), looked up by image key."""

    def __init__(
        self, folder: PathLike, features: str = "features.tsv", labels: Optional[str] = "label.tsv",
        dim: Optional[int] = None, label_folder: Optional[PathLike] = None,
    ) -> None:
        """Open ``folder``'s feature and label TSVs (names, or paths; ``imageid2idx.json`` used when present);
        ``dim`` (2054 for the released detectors, 518 for the demo one) is read off the first row when not given;
        ``labels=None``: no tags. ``label_folder``: the tags live in another folder, which must hold them."""
        self.folder = Path(folder)
        fpath = self.folder / features
        if not fpath.is_file():
            raise VinvlError(f"{fpath}: no such features file")
        # FeatureTSV's own width rule (manifest, else the first row with boxes) and its imageid2idx.json beside
        self.features = FeatureTSV(fpath, dim=dim)
        self.dim = self.features.dim  # now, so that a file of unreadable rows fails here
        self.labels = None
        if labels is not None:
            lpath = (Path(label_folder) if label_folder is not None else self.folder) / labels
            if label_folder is not None and not lpath.is_file():
                raise VinvlError(f"{lpath}: no such label file")
            if not lpath.is_file() and labels == "label.tsv" and (lpath.parent / "predictions.tsv").is_file():
                lpath = lpath.parent / "predictions.tsv"  # VinVL's retrieval reads the tags there
            self.labels = TSVFile(lpath, build_index=True) if lpath.is_file() else None

    def __contains__(self, key: object) -> bool:
        return str(key) in self.features.tsv

    def keys(self) -> list[str]:
        """Every image key, in feature-file order."""
        return self.features.tsv.keys()

    def regions(self, key: Key) -> np.ndarray:
        """``[num_boxes, dim]`` float32 region features of image ``key`` (either feature row layout)."""
        try:
            i = self.features.tsv.index_of(str(key))
        except KeyError:
            raise VinvlError(f"{self.features.tsv.path}: no features for image {key!r}") from None
        found, arr = self.features[i]
        if found != str(key):  # an imageid2idx.json that does not fit the TSV
            raise FormatError(f"the key index points at row {i + 1}, whose key is {found!r}", self.features.tsv.path,
                              key=str(key))
        return arr

    def objects(self, key: Key) -> list[dict[str, Any]]:
        """The image's label objects (``{"class", "conf", "rect", ...}``); [] without a label file."""
        if self.labels is None:
            return []
        try:
            fields = self.labels.get(str(key))
        except KeyError:
            raise VinvlError(f"{self.labels.path}: no tags for image {key!r}") from None
        return parse_label_row(fields, path=self.labels.path)[1]

    def tags(self, key: Key) -> str:
        """The image's tags (class names joined by spaces), or '' without a label file."""
        return tags_text(self.objects(key))


class FeatureDict:
    """The original's ``*_img_frcnn_feats.pt``: a dict image id -> ``[N, dim]`` tensor (read weights-only:
    tensors and plain containers, no code), with tags from a ``*_labels.pt`` dict (a string or a list of
    ``{"class": ...}`` per image) when given."""

    def __init__(self, path: PathLike, labels: Optional[PathLike] = None) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise VinvlError(f"{self.path}: no such file")
        self.data = read_torch(self.path, str(self.path), "feature dict")
        if not isinstance(self.data, dict):
            raise VinvlError(f"{self.path}: expected a dict image id -> region features")
        first = next(iter(self.data.values()), None)
        self.dim = int(first.shape[-1]) if first is not None else 2054
        self.labels_path = Path(labels) if labels else None
        self.labels: Optional[dict] = None
        if self.labels_path is not None:
            found = read_torch(self.labels_path, str(self.labels_path), "label dict")
            if not isinstance(found, dict):
                raise VinvlError(f"{self.labels_path}: expected a dict image id -> tags")
            self.labels = found

    @staticmethod
    def _get(table: dict, key: Key) -> Any:
        text = str(key)
        for k in (key, text, int(text) if text.lstrip("-").isdigit() else None):
            if k is not None and k in table:
                return table[k]
        raise KeyError(key)

    def __contains__(self, key: object) -> bool:
        try:
            self._get(self.data, key)  # type: ignore[arg-type]
            return True
        except KeyError:
            return False

    def keys(self) -> list:
        """Every image id, in the dict's order."""
        return list(self.data)

    def regions(self, key: Key) -> np.ndarray:
        """The image's ``[N, dim]`` float32 regions (its key as given, as a string or as an integer)."""
        try:
            x = self._get(self.data, key)
        except KeyError:
            raise VinvlError(f"{self.path}: no features for image {key!r}") from None
        return np.asarray(x.numpy() if hasattr(x, "numpy") else x, dtype=np.float32)

    def tags(self, key: Key) -> str:
        """The image's tags text ('' without a label dict)."""
        if self.labels is None:
            return ""
        try:
            v = self._get(self.labels, key)
        except KeyError:
            raise VinvlError(f"{self.labels_path}: no tags for image {key!r}") from None
        return v if isinstance(v, str) else " ".join(str(o["class"]) for o in v)


def open_regions(path: PathLike, labels: Optional[PathLike] = None) -> Union[RegionStore, FeatureDict]:
    """A region source from a path: a features folder, a feature TSV of either layout (its folder's label.tsv
    for tags), or a ``.pt`` feature dict (``labels``: its ``*_labels.pt``)."""
    p = Path(path)
    if p.is_dir():
        return RegionStore(p)
    if p.suffix == ".pt" and p.is_file():
        return FeatureDict(p, labels)
    if p.is_file():
        return RegionStore(p.parent, features=p.name)
    if not p.exists():
        raise VinvlError(f"{p}: no such feature folder or file")
    raise VinvlError(f"{p}: not a features folder (features.tsv), a feature TSV nor a .pt feature dict")
