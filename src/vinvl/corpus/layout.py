"""The original's pretraining corpus layout (microsoft/Oscar ``oscar/datasets/oscar_tsv.py``,
``OscarTSVDataset``), read and written here only.

- The yaml (read by :mod:`vinvl.dataset_spec`): ``corpus`` (the datasets used, joined by ``_``),
  ``corpus_file`` (relative to the yaml), ``image_label_path`` (dataset -> label folder, relative to the
  yaml) and ``image_feature_path`` (dataset -> feature folder, relative to ``--data_dir``; vinvl: to the
  yaml's folder when no data dir is given, where the original takes the working directory).
- Corpus rows: ``image id \\t label id \\t text_a``. Ids split on ``_``: the first field is the
  dataset (``cc`` reads as ``googlecc``), the last of the image id is the image key, the one before it
  the chunk of a chunked dataset (googlecc, sbu, oi, objects365, tagoi). A label id containing a ``qa``
  field is a question row: ``<dataset>_qa_<image key>_<qa id>``, its text_b the answer; otherwise its
  last field is the image key and text_b the image's tags.
- A label folder: ``predictions_gt.tsv`` (``key \\t {"objects": [{"class", ...}], "image_h", "image_w"
  (, "gt_objects")}``) with ``imageid2idx.json``; questions' answers in ``QA_fileB.tsv``
  (``qa id \\t {"labels": [answer, ...]}``, joined by spaces) with ``QA_qaid2idx.json``.
- A feature folder: ``features.tsv`` + ``imageid2idx.json`` (chunked datasets: one such pair per
  ``<chunk>/`` subfolder).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

from ..dataset_spec import DatasetSpec
from ..errors import VinvlError
from ..tsv import TSVFile, read_key_index

PathLike = Union[str, os.PathLike]

CHUNKED = ("googlecc", "sbu", "oi", "objects365", "tagoi")  # the original's datasets_with_splits
ONE_SPLIT = ("coco", "flickr30k", "gqa")  # its datasets_with_onesplit
ALIASES = {"cc": "googlecc"}
LABEL_FILE, LABEL_INDEX = "predictions_gt.tsv", "imageid2idx.json"
QA_FILE, QA_INDEX = "QA_fileB.tsv", "QA_qaid2idx.json"
FEATURE_FILE, FEATURE_INDEX = "features.tsv", "imageid2idx.json"


@dataclass(frozen=True)
class RowIds:
    """What a corpus row's image id and label id say, as the original splits them."""

    dataset: str  # aliases resolved (cc -> googlecc)
    chunk: Optional[str]
    key: str  # the image key in its feature (and label) folder
    label_key: str  # the row key in the label file: the image key, or a question row's qa id
    qa: bool


def parse_ids(image_id: str, label_id: str, chunked: bool) -> RowIds:
    """Split a row's ids as ``OscarTSVDataset`` does; a ``ValueError`` says which of its checks fails."""
    img, lab = image_id.split("_"), label_id.split("_")
    if img[0] != lab[0]:
        raise ValueError(f"dataset names of image id {image_id!r} and label id {label_id!r} differ")
    if len(img) < (3 if chunked else 2):
        raise ValueError(f"image id {image_id!r} is not <dataset>_{'<chunk>_' if chunked else ''}<image key>")
    qa = "qa" in lab
    if qa:
        if len(lab) < 4 or lab[-2] != img[-1]:
            raise ValueError(f"question label id {label_id!r} is not <dataset>_qa_<image key {img[-1]}>_<qa id>")
    elif len(lab) < 2 or lab[-1] != img[-1]:
        raise ValueError(f"label id {label_id!r} does not end in the image key {img[-1]!r} of {image_id!r}")
    return RowIds(ALIASES.get(lab[0], lab[0]), img[-2] if chunked else None, img[-1], lab[-1], qa)


def image_id(dataset: str, key: str, chunk: Optional[str] = None) -> str:
    """A corpus image id: ``<dataset>_<key>`` or ``<dataset>_<chunk>_<key>``."""
    return "_".join([dataset] + ([chunk] if chunk is not None else []) + [key])


def qa_label_id(dataset: str, key: str, qa_id: str) -> str:
    """A question row's label id ``<dataset>_qa_<key>_<qa id>``."""
    return f"{dataset}_qa_{key}_{qa_id}"


def check_id_part(value: str, what: str) -> str:
    """A dataset name, chunk, image key or qa id as the ids can carry it (no ``_``, TAB or newline)."""
    if not value or any(c in value for c in "_\t\n\r"):
        raise VinvlError(f"{what} {value!r}: the original's corpus ids split on '_', so it must be non-empty "
                         "without '_' (extract with --key-regex/--key-map to get plain keys)")
    return value


def is_chunked(dataset: str, feature_dir: Path) -> bool:
    """Chunked as the original decides by name; another dataset by its folder (chunk subfolders, no features.tsv)."""
    if dataset in CHUNKED or dataset in ONE_SPLIT:
        return dataset in CHUNKED
    return not (feature_dir / FEATURE_FILE).is_file() and any(feature_dir.glob(f"*/{FEATURE_FILE}"))


@dataclass
class CorpusSpec:
    """A corpus yaml, its paths resolved."""

    path: Path
    datasets: list[str]
    corpus_file: Path
    label_dirs: dict[str, Path]
    feature_dirs: dict[str, Path]


def read_spec(path: PathLike, data_dir: Optional[PathLike] = None) -> CorpusSpec:
    """Read a corpus yaml (:class:`vinvl.dataset_spec.DatasetSpec`): ``corpus_file`` and label folders relative
    to its folder, feature folders to ``data_dir`` (the original's ``--data_dir``; default: the yaml's folder)."""
    path = Path(path)
    spec = DatasetSpec(path, "corpus yaml", needs=("corpus", "corpus_file", "image_label_path", "image_feature_path"),
                       hint=" (corpus: the datasets used, joined by '_'; `vinvl corpus build` writes it)")
    datasets = [ALIASES.get(d, d) for d in str(spec.get("corpus")).split("_") if d]
    labels = spec.folders("image_label_path", datasets)
    features = spec.folders("image_feature_path", datasets, root=data_dir if data_dir is not None else path.parent)
    return CorpusSpec(path=path, datasets=datasets, corpus_file=spec.resolve(str(spec.get("corpus_file"))),
                      label_dirs=labels, feature_dirs=features)


def _indexed(folder: Path, name: str, index: str) -> Optional[TSVFile]:
    """A label-folder TSV looked up by its key index json (or, without one, by its keys); None if absent."""
    path = folder / name
    if not path.is_file():
        return None
    keys = read_key_index(folder / index) if (folder / index).is_file() else None
    return TSVFile(path, build_index=True, key_index=keys)


def _row(tsv: TSVFile, key: str) -> dict[str, Any]:
    try:
        i = tsv.index_of(key)
    except KeyError:
        raise VinvlError(f"{tsv.path}: no row for {key!r}") from None
    fields = tsv[i]
    if len(fields) != 2 or fields[0] != key:  # the original asserts the row is the key's
        raise VinvlError(f"{tsv.path}:{i + 1}: expected the row of {key!r} (key, JSON), found key {fields[0]!r}")
    try:
        obj = json.loads(fields[1])
    except json.JSONDecodeError as e:
        raise VinvlError(f"{tsv.path}:{i + 1}: invalid JSON ({e})") from None
    if not isinstance(obj, dict):
        raise VinvlError(f"{tsv.path}:{i + 1}: expected a JSON object")
    return obj


class LabelFolder:
    """A dataset's label folder: the tags (``predictions_gt.tsv``) and answers (``QA_fileB.tsv``) by key."""

    def __init__(self, folder: PathLike) -> None:
        self.folder = Path(folder)
        tags = _indexed(self.folder, LABEL_FILE, LABEL_INDEX)
        if tags is None:
            raise VinvlError(f"{self.folder / LABEL_FILE}: no such label file")
        self.tag_rows = tags
        self.qa_rows = _indexed(self.folder, QA_FILE, QA_INDEX)

    def tags(self, key: str, use_gt: bool = True) -> str:
        """The image's tags: its objects' classes (``gt_objects``' when ``use_gt`` and present, as ``--use_gtlabels``)."""
        obj = _row(self.tag_rows, key)
        objects = obj.get("gt_objects") if use_gt and "gt_objects" in obj else obj.get("objects")
        if not isinstance(objects, list) or not all(isinstance(o, dict) and "class" in o for o in objects):
            raise VinvlError(f"{self.tag_rows.path}: row {key!r}: 'objects' must be a list of {{'class', ...}}")
        return " ".join(str(o["class"]) for o in objects)

    def answer(self, qa_id: str) -> str:
        """A question's answer words (``labels`` joined by spaces)."""
        if self.qa_rows is None:
            raise VinvlError(f"{self.folder / QA_FILE}: no such answer file (the corpus has question rows)")
        labels = _row(self.qa_rows, qa_id).get("labels")
        if not isinstance(labels, list):
            raise VinvlError(f"{self.qa_rows.path}: row {qa_id!r}: 'labels' must be a list of answer words")
        return " ".join(str(w) for w in labels)


def tags_row(key: str, objects: list[dict[str, Any]], image_h: int, image_w: int) -> list[str]:
    """A ``predictions_gt.tsv`` row ``[key, {"objects": [...], "image_h": h, "image_w": w}]``."""
    return [key, json.dumps({"objects": objects, "image_h": int(image_h), "image_w": int(image_w)})]


def answer_row(qa_id: str, answer: str) -> list[str]:
    """A ``QA_fileB.tsv`` row ``[qa id, {"labels": [answer]}]`` (the original joins ``labels`` with spaces)."""
    return [qa_id, json.dumps({"labels": [answer]})]
