"""Image-text retrieval data in the original Oscar layout (``oscar/run_retrieval.py``).

A data folder (the released ``coco_ir``) holds ``{split}_captions.pt`` (``{image id: [captions]}``,
the values sometimes JSON strings) and the evaluation key lists ``test_img_keys_1k.tsv`` /
``test_img_keys.tsv`` (one image id per line). Region features come from either

- a feature folder (VinVL's ``--img_feat_file``): ``features.tsv`` + ``imageid2idx.json``, tags
  in ``label.tsv`` or, as VinVL's script reads them, ``predictions.tsv`` beside the features;
- or the first Oscar release's tensors: ``{split}_img_{type}_feats.pt`` (``{image id: [N, 2054]}``)
  with tags in ``{split}_{od_label_type}_labels.pt`` (a string or a list of ``{"class": ...}``);

both through :func:`vinvl.oscar.data.regions.open_regions`. :class:`RetrievalTrainSet` makes the original's
training pairs.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import torch

from ...errors import VinvlError
from ...state_dict import read_torch
from ...textio import display_path, read_text
from ..tensorize import RetrievalTensorizer
from .regions import RegionSource, open_regions

PathLike = Union[str, os.PathLike]
Key = Union[int, str]


def _load_pt(path: Path) -> Any:
    if not path.is_file():
        raise VinvlError(f"{path}: no such file")
    return read_torch(path, str(path), "tensor/dict file")


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
        raise VinvlError(f"{display_path(path)}: no such key list")
    keys: list[Key] = []
    for n, line in enumerate(read_text(path, "key list").splitlines(), 1):
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


def read_captions_file(path: PathLike) -> list[str]:
    """The captions of a text file, one per line (blank lines skipped); a missing file or one that is not UTF-8 is
    one error naming it (and the line)."""
    path = Path(path)
    if not path.is_file():
        raise VinvlError(f"{display_path(path)}: no such captions file")
    return [t.strip() for t in read_text(path, "captions file").splitlines() if t.strip()]


def open_images(
    features: Optional[PathLike], data_dir: Optional[PathLike] = None, split: str = "test",
    img_feature_type: str = "frcnn", od_label_type: str = "vg",
) -> RegionSource:
    """The image source: a feature folder or its ``features.tsv`` (``--img_feat_file``), a ``.pt`` file (tags from
    ``{split}_{od_label_type}_labels.pt`` beside it), or by default ``data_dir``'s ``features.tsv`` or
    ``{split}_img_{type}_feats.pt``."""
    if features is None:
        if data_dir is None:
            raise VinvlError("give the region features (a feature folder, features.tsv or a .pt file)")
        d = Path(data_dir)
        if (d / "features.tsv").is_file():
            return open_regions(d)
        features = d / f"{split}_img_{img_feature_type}_feats.pt"
        if not features.is_file():
            raise VinvlError(f"{d}: neither features.tsv nor {features.name}; give the features with --features")
    path = Path(features)
    labels = path.parent / f"{split}_{od_label_type}_labels.pt"
    return open_regions(path, labels if path.suffix == ".pt" and labels.is_file() else None)


@dataclass
class RetrievalSplit:
    """One split: image ids in order, each image's captions (the first ``captions_per_image``), the image source."""

    keys: list[Key]
    captions: dict[Key, list[str]]
    images: RegionSource

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


class RetrievalTrainSet:
    """The original's ``RetrievalDataset`` for training: items are (image, caption) pairs, each
    giving a matched and an unmatched example; random choices are seeded by (seed, epoch, item)."""

    def __init__(self, split: RetrievalSplit, builder: RetrievalTensorizer, seed: int = 88) -> None:
        if len(split.keys) < 2:
            raise VinvlError("retrieval training needs at least 2 images (negatives come from other images)")
        self.split, self.builder, self.seed = split, builder, seed
        self.items = [(i, c) for i, k in enumerate(split.keys) for c in range(len(split.captions[k]))]
        self._cap_ids: dict[tuple[int, int], list[int]] = {}
        self._tag_ids: dict[int, list[int]] = {}

    def __len__(self) -> int:
        return len(self.items)

    def _caption(self, i: int, c: int) -> list[int]:
        if (i, c) not in self._cap_ids:
            self._cap_ids[i, c] = self.builder.ids(self.split.captions[self.split.keys[i]][c])
        return self._cap_ids[i, c]

    def _image(self, i: int) -> tuple[Any, list[int]]:
        key = self.split.keys[i]
        if i not in self._tag_ids:
            self._tag_ids[i] = self.builder.ids(self.split.images.tags(key)) if self.builder.add_od_labels else []
        return self.split.images.regions(key), self._tag_ids[i]

    def example(self, index: int, epoch: int) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Item ``index``'s matched and unmatched inputs."""
        rng = random.Random(f"{self.seed}/{epoch}/{index}")
        i, c = self.items[index]
        regions, tags = self._image(i)
        cap = self._caption(i, c)
        pos = self.builder.pair(cap, tags, regions)
        j = rng.randrange(len(self.split.keys) - 1)
        j += j >= i  # another image, uniformly
        if rng.random() <= 0.5:
            neg = self.builder.pair(self._caption(j, rng.randrange(len(self.split.captions[self.split.keys[j]]))), tags, regions)
        else:
            r2, t2 = self._image(j)
            neg = self.builder.pair(cap, t2, r2)
        return pos, neg

    def collate(self, pairs: Sequence[tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]],
                num_labels: int = 2) -> dict[str, torch.Tensor]:
        """A micro-batch as the original stacks it: the matched examples, then the unmatched, with labels 1 / 0."""
        ex = [p for p, _ in pairs] + [n for _, n in pairs]
        batch = {k: torch.stack([e[k] for e in ex]) for k in ex[0]}
        labels = torch.tensor([1] * len(pairs) + [0] * len(pairs))
        batch["labels"] = labels if num_labels == 2 else labels.float()
        return batch
