"""Given boxes: the files that say which boxes to describe in each image, read and matched to images.

Three layouts, told apart by their content: the original's label TSV (``key \\t {"objects": [{"rect":
[x1, y1, x2, y2], ...}]}`` or a plain list of objects), a JSON object ``{key: [[x1, y1, x2, y2], ...]}``
(or lists of ``{"rect": ...}`` objects), and a COCO instances json (``bbox`` ``[x, y, w, h]`` converted
as the original's COCO reader does: ``x2 = x + w - 1``, crowd annotations left out). Boxes are x1 y1 x2 y2
in original-image pixels, kept in file order; degenerate, inverted and outside boxes are kept (the
detector clips them as the original does). Every entry is checked when the file is read, so a bad value is
one line naming the file and the line (or key) before any work starts.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence, Union

import numpy as np

from .errors import FormatError, VinvlError
from .textio import display_path, read_bytes
from .tsv import TSVFile, iter_tsv

PathLike = Union[str, os.PathLike]
FORMATS = ("label-tsv", "json", "coco")
MISSING = ("error", "empty")
UNUSED = ("error", "ignore")


@dataclass(frozen=True)
class BoxEntry:
    """One image's boxes in a boxes file: the names it answers to, ``[N, 4]`` float32 boxes, where it is."""

    names: tuple[str, ...]
    boxes: np.ndarray
    where: str


@dataclass(frozen=True)
class GivenBoxes:
    """The entries of a boxes file, its layout and its content hash."""

    path: Path
    format: str
    entries: tuple[BoxEntry, ...]
    sha256: str

    @classmethod
    def from_mapping(cls, boxes: Mapping[str, Any], name: str = "<boxes>") -> "GivenBoxes":
        """Boxes given in memory: image key -> ``[N, 4]`` x1 y1 x2 y2 (checked as a file's would be)."""
        entries = tuple(BoxEntry((str(k),), _boxes(np.asarray(v, np.float64).reshape(-1, 4).tolist(), name, f"key {k!r}"),
                                 f"key {k!r}") for k, v in boxes.items())
        return cls(Path(name), "json", entries, "")

    def match(self, images: Sequence[tuple[str, Sequence[str]]], missing: str = "error",
              unused: str = "error") -> dict[str, np.ndarray]:
        """Boxes per image key for ``(key, other names)`` pairs (an image answers to its key first, then to
        the other names, e.g. its file name); images without an entry and entries that match no image are one
        error line, unless ``missing="empty"`` (zero boxes) / ``unused="ignore"``."""
        if missing not in MISSING or unused not in UNUSED:
            raise VinvlError(f"boxes: missing must be one of {MISSING}, unused one of {UNUSED}")
        index: dict[str, int] = {}
        for i, e in enumerate(self.entries):
            for n in e.names:
                j = index.setdefault(n, i)
                if j != i:
                    raise FormatError(f"{n!r} names two entries ({self.entries[j].where} and {e.where})",
                                      display_path(self.path))
        out: dict[str, np.ndarray] = {}
        used: set[int] = set()
        lacking: list[str] = []
        for key, others in images:
            found = next((index[n] for n in (key, *others) if n in index), None)
            if found is None:
                lacking.append(key)
                out[key] = np.zeros((0, 4), np.float32)
                continue
            used.add(found)
            out[key] = self.entries[found].boxes
        stray = [e for i, e in enumerate(self.entries) if i not in used]
        problems = []
        if lacking and missing == "error":
            problems.append(f"{len(lacking)} image(s) have no entry (first: {lacking[0]!r}; --boxes-missing empty "
                            "gives them zero-box rows)")
        if stray and unused == "error":
            problems.append(f"{len(stray)} entr{'y' if len(stray) == 1 else 'ies'} match no image (first: "
                            f"{stray[0].names[0]!r} at {stray[0].where}; --boxes-unused ignore skips them)")
        if problems:
            raise VinvlError(f"{display_path(self.path)}: " + "; ".join(problems))
        return out


def read_given_boxes(path: PathLike, fmt: Optional[str] = None) -> GivenBoxes:
    """Read a boxes file (``fmt``: one of FORMATS, else told from the content); every value checked."""
    path = Path(path)
    if fmt is not None and fmt not in FORMATS:
        raise VinvlError(f"boxes format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    data = read_bytes(path, "boxes file")
    digest = hashlib.sha256(data).hexdigest()
    if fmt is None:
        fmt = "json" if data.lstrip()[:1] in (b"{", b"[") else "label-tsv"
    if fmt == "label-tsv":
        entries = _label_tsv_entries(path)
    else:
        try:
            obj = json.loads(data)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise FormatError(f"not valid JSON ({e})", display_path(path)) from None
        if not isinstance(obj, dict):
            raise FormatError("expected a JSON object (key -> boxes, or a COCO instances file)", display_path(path))
        if fmt == "coco" or (fmt == "json" and "images" in obj and "annotations" in obj):
            fmt, entries = "coco", _coco_entries(obj, path)
        else:
            entries = [BoxEntry((str(k),), _boxes(v, path, f"key {k!r}"), f"key {k!r}") for k, v in obj.items()]
    return GivenBoxes(path, fmt, tuple(entries), digest)


def label_row_boxes(text: Union[str, bytes], path: PathLike, where: str) -> np.ndarray:
    """The boxes of one label-TSV row's JSON (``{"objects": [...]}`` or a plain list of objects with ``rect``)."""
    try:
        obj = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise FormatError(f"{where}: not valid JSON ({e})", display_path(path)) from None
    if isinstance(obj, dict):
        if "objects" not in obj:
            raise FormatError(f"{where}: a JSON object without an 'objects' list", display_path(path))
        obj = obj["objects"]
    return _boxes(obj, path, where)


def label_boxes_for_rows(label_tsv: PathLike, rows: Iterable[int], keys: Sequence[str]) -> list[np.ndarray]:
    """The boxes of the label TSV's ``rows``, paired with the image rows by line number as the original's
    dataset pairs them; a row whose key is not the image's is an error naming both."""
    f = TSVFile(label_tsv, build_index=True)
    try:
        out = []
        for r, key in zip(rows, keys):
            if not 0 <= r < len(f):
                raise FormatError(f"no row {r} (the image TSV's row for {key!r}; the file has {len(f)} rows)",
                                  display_path(label_tsv))
            fields = f.fields_bytes(r)
            got = bytes(fields[0]).decode("utf-8", "replace")
            if got != key or len(fields) < 2:
                raise FormatError(f"row {r} is {got!r}, but the image TSV's row {r} is {key!r} (the rows of img and "
                                  "label must be aligned)", display_path(label_tsv), line=r + 1)
            out.append(label_row_boxes(bytes(fields[-1]), label_tsv, f"row {r} ({key!r})"))
        return out
    finally:
        f.close()


def _label_tsv_entries(path: Path) -> list[BoxEntry]:
    entries = []
    for n, fields in iter_tsv(path):
        if fields == [b""]:
            continue
        if len(fields) < 2:
            raise FormatError("expected 'key<TAB>JSON'", display_path(path), line=n)
        try:
            key = fields[0].decode("utf-8")
        except UnicodeDecodeError:
            raise FormatError("the key is not UTF-8", display_path(path), line=n) from None
        where = f"{display_path(path)}:{n}"
        entries.append(BoxEntry((key,), label_row_boxes(fields[-1], path, f"line {n} ({key!r})"), where))
    return entries


def _coco_entries(obj: dict[str, Any], path: Path) -> list[BoxEntry]:
    images, anns = obj.get("images"), obj.get("annotations")
    if not isinstance(images, list) or not isinstance(anns, list):
        raise FormatError("a COCO file needs 'images' and 'annotations' lists", display_path(path))
    per_image: dict[Any, list[list[float]]] = {}
    names: dict[Any, tuple[str, ...]] = {}
    for i, im in enumerate(images):
        if not isinstance(im, dict) or "id" not in im or not isinstance(im.get("file_name"), str):
            raise FormatError(f"images[{i}] needs an 'id' and a 'file_name'", display_path(path))
        if im["id"] in per_image:
            raise FormatError(f"images[{i}]: image id {im['id']!r} appears twice", display_path(path))
        per_image[im["id"]] = []
        names[im["id"]] = (im["file_name"], str(im["id"]))
    for i, a in enumerate(anns):
        if not isinstance(a, dict) or a.get("image_id") not in per_image:
            raise FormatError(f"annotations[{i}]: 'image_id' names no image of 'images'", display_path(path))
        if a.get("iscrowd", 0):
            continue  # the original's COCO reader leaves crowd regions out
        bbox = a.get("bbox")
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(_finite(v) for v in bbox)):
            raise FormatError(f"annotations[{i}]: 'bbox' must be 4 finite numbers [x, y, w, h], got {bbox!r}",
                              display_path(path))
        x, y, w, h = (float(v) for v in bbox)
        per_image[a["image_id"]].append([x, y, x + w - 1, y + h - 1])
    return [BoxEntry(names[i], np.asarray(b, np.float32).reshape(-1, 4), f"image id {i!r}") for i, b in per_image.items()]


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _boxes(value: Any, path: PathLike, where: str) -> np.ndarray:
    """``[N, 4]`` float32 of a list of boxes: 4-number lists or objects with a ``rect``."""
    if not isinstance(value, list):
        raise FormatError(f"{where}: expected a list of boxes, got {type(value).__name__}", display_path(path))
    rows = []
    for j, b in enumerate(value):
        rect = b.get("rect") if isinstance(b, dict) else b
        if not (isinstance(rect, list) and len(rect) == 4 and all(_finite(v) for v in rect)):
            raise FormatError(f"{where}: box {j} must be 4 finite numbers x1 y1 x2 y2 (or {{\"rect\": [...]}}), "
                              f"got {rect!r}", display_path(path))
        rows.append([float(v) for v in rect])
    return np.asarray(rows, np.float32).reshape(-1, 4)


__all__ = ["BoxEntry", "FORMATS", "GivenBoxes", "MISSING", "UNUSED", "label_boxes_for_rows", "label_row_boxes",
           "read_given_boxes"]
