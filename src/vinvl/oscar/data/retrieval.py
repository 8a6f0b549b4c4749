"""Image-text retrieval data in the original Oscar layout (``oscar/run_retrieval.py``).

A data folder (the released ``coco_ir``) holds ``{split}_captions.pt`` (``{image id: [captions]}``,
the values sometimes JSON strings) and the evaluation key lists ``test_img_keys_1k.tsv`` /
``test_img_keys.tsv`` (one image id per line). Region features come from either

- a feature folder (VinVL's ``--img_feat_file``): ``features.tsv`` + ``imageid2idx.json``, tags
  in ``label.tsv`` or, as VinVL's script reads them, ``predictions.tsv`` beside the features;
- or the first Oscar release's tensors: ``{split}_img_{type}_feats.pt`` (``{image id: [N, 2054]}``)
  with tags in ``{split}_{od_label_type}_labels.pt`` (a string or a list of ``{"class": ...}``);

both through :func:`vinvl.oscar.data.regions.open_regions`. An evaluation may be restricted to the candidates of a
caption index (the original's ``--eval_caption_index_file``, e.g. ``minival_caption_indexs_top20.pt``): a
``torch.save``d dict ``{image id: [[image id, caption index], ...]}`` (the values sometimes JSON strings), per image
the captions to rank for it, each named by its image and its position in that image's caption list.
:class:`RetrievalTrainSet` makes the original's training pairs.
"""

from __future__ import annotations

import json
import operator
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
    img_feature_type: str = "frcnn", od_label_type: str = "vg", tags: bool = False,
) -> RegionSource:
    """The image source: a feature folder or its ``features.tsv`` (``--img_feat_file``), a ``.pt`` file (tags from
    ``{split}_{od_label_type}_labels.pt`` beside it), or by default ``data_dir``'s ``features.tsv`` or
    ``{split}_img_{type}_feats.pt``. ``tags`` (the tags are read: ``add_od_labels``): a ``.pt`` source without its
    labels file, or a feature folder with an ``od_label_type`` other than vg, is one error naming the option."""
    if features is None:
        if data_dir is None:
            raise VinvlError("give the region features (a feature folder, features.tsv or a .pt file)")
        d = Path(data_dir)
        features = d / f"{split}_img_{img_feature_type}_feats.pt"
        if (d / "features.tsv").is_file():
            features = d
        elif not features.is_file():
            raise VinvlError(f"{d}: neither features.tsv nor {features.name}; give the features with --features")
    path = Path(features)
    labels = path.parent / f"{split}_{od_label_type}_labels.pt"
    if tags and path.suffix == ".pt" and not labels.is_file():
        raise VinvlError(f"{display_path(labels)}: no such labels file (the tags of {path.name} for --od-label-type "
                         f"{od_label_type}; --no-add-od-labels to go without)")
    if tags and path.suffix != ".pt" and od_label_type != "vg":
        # VinVL's script reads a feature folder's predictions.tsv whatever the type; refused rather than ignored
        raise VinvlError(f"--od-label-type {od_label_type}: only .pt features have a labels file per type "
                         f"({split}_{od_label_type}_labels.pt); the tags of {display_path(path)} are its label.tsv or "
                         "predictions.tsv (--od-label-type vg)")
    return open_regions(path, labels if path.suffix == ".pt" and labels.is_file() else None)


@dataclass
class RetrievalSplit:
    """One split: image ids in order, each image's captions (the first ``captions_per_image``; all of them with a
    caption index), the image source, and with a caption index each image's candidates (indices into
    :meth:`flat_captions`, in the file's order)."""

    keys: list[Key]
    captions: dict[Key, list[str]]
    images: RegionSource
    candidates: Optional[list[list[int]]] = None

    def flat_captions(self) -> tuple[list[str], list[int]]:
        """Every caption in image order, and the index (into ``keys``) of the image each describes."""
        texts, owner = [], []
        for i, k in enumerate(self.keys):
            texts += self.captions[k]
            owner += [i] * len(self.captions[k])
        return texts, owner


def _in_data_dir(data_dir: Path, name: PathLike) -> Path:
    """A file given by name in ``data_dir`` (as the original joins it) or by its own path."""
    path = Path(name)
    return data_dir / path if not path.is_file() and (data_dir / path).is_file() else path


def _candidate(c: Any, position: dict[str, int]) -> tuple[Optional[int], Optional[int]]:
    """A candidate ``[image id, caption index]``'s image position in the split and caption index (None: not one)."""
    if not isinstance(c, (list, tuple)) or len(c) != 2 or isinstance(c[1], bool):
        return None, None
    try:
        cap = operator.index(c[1])  # an int, or a numpy integer
    except TypeError:
        return None, None
    return position.get(str(c[0])), cap


def read_caption_index(path: PathLike, keys: Sequence[Key], captions: dict[Key, list[str]]) -> list[list[int]]:
    """Each image's candidates of a caption index file (``--eval_caption_index_file``) as indices into the captions
    of ``keys`` in order (every caption of each image); an image without candidates, or a candidate whose image is
    not among ``keys`` or whose caption index is past that image's captions, is one error naming the file."""
    path = Path(path)
    data = _load_pt(path)
    if not isinstance(data, dict):
        raise VinvlError(f"{display_path(path)}: expected a dict image id -> [[image id, caption index], ...]")
    by_name = {str(k): v for k, v in data.items()}  # the ids may be ints in one file and strings in the other
    position = {str(k): i for i, k in enumerate(keys)}
    start = [0]
    for k in keys:
        start.append(start[-1] + len(captions[k]))
    out = []
    for k in keys:
        if str(k) not in by_name:
            raise VinvlError(f"{display_path(path)}: no candidates for image {k!r}")
        cands = by_name[str(k)]
        if isinstance(cands, str):
            try:
                cands = json.loads(cands)
            except json.JSONDecodeError:
                raise VinvlError(f"{display_path(path)}: image {k!r}: candidates are neither a list nor a JSON list") from None
        if not isinstance(cands, (list, tuple)) or not cands:
            raise VinvlError(f"{display_path(path)}: image {k!r}: expected a non-empty list of [image id, caption index]")
        row = []
        for c in cands:
            j, cap = _candidate(c, position)
            if j is None or cap is None or not 0 <= cap < len(captions[keys[j]]):
                raise VinvlError(f"{display_path(path)}: image {k!r}: candidate {c!r} is not [image id, caption index] "
                                 "of an image of the split (and of --keys) and one of its captions")
            row.append(start[j] + cap)
        out.append(row)
    return out


def load_split(
    data_dir: PathLike, split: str, features: Optional[PathLike] = None, keys_file: Optional[PathLike] = None,
    captions_per_image: int = 5, img_feature_type: str = "frcnn", od_label_type: str = "vg",
    caption_index: Optional[PathLike] = None, tags: bool = False,
) -> RetrievalSplit:
    """``{split}_captions.pt`` of ``data_dir``, restricted to ``keys_file`` when given, with the candidates of
    ``caption_index`` when given (each a name in ``data_dir`` or a path); ``tags``: see :func:`open_images`."""
    d = Path(data_dir)
    captions = load_captions(d / f"{split}_captions.pt")
    keys = list(captions)
    if keys_file is not None:
        kf = _in_data_dir(d, keys_file)
        keys = read_image_keys(kf, like=keys[0])
        missing = [k for k in keys if k not in captions]
        if missing:
            raise VinvlError(f"{kf}: image ids without captions in {split}_captions.pt: {missing[:5]}")
    images = open_images(features, d, split, img_feature_type, od_label_type, tags)
    if caption_index is not None:
        # the candidates name captions by their place in each image's whole list, which the original never cuts
        caps = {k: captions[k] for k in keys}
        return RetrievalSplit(keys, caps, images, read_caption_index(_in_data_dir(d, caption_index), keys, caps))
    caps = {k: captions[k][:captions_per_image] for k in keys}
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
