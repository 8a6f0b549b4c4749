"""Region-feature codecs and the row formats of VinVL/Oscar files (formats.md).

The 2054-d layout, the base64 float32 codec and every row format live here, once.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence, Union

import numpy as np
import pybase64

from .atomic import atomic_write_text, check_writable, commit, naming, remove_stale_temporaries, temporary_name
from .errors import FormatError
from .tsv import PathLike, TSVFile, TSVWriter, iter_tsv, read_key_index, write_key_index

REGION_DIM = 2048
GEOMETRY_DIM = 6
OSCAR_DIM = REGION_DIM + GEOMETRY_DIM  # 2054
DEFAULT_SAVE_SUBSET = ("rect", "class", "conf", "feature")
NATIVE_SUBSET = ("rect", "class", "conf", "feature", "attr_labels", "attr_scores")  # vinvl extract's native rows

_F32 = np.dtype("<f4")


# -- base64 float32 ---------------------------------------------------------------
def encode_floats(array: Any) -> str:
    """Base64 of an array's values as little-endian float32 (C order), as the original writes."""
    arr = np.ascontiguousarray(array, dtype=_F32)
    return pybase64.b64encode(arr.reshape(-1).view(np.uint8)).decode("ascii")


def decode_floats(
    data: Union[str, bytes, memoryview],
    dim: Optional[int] = None,
    *,
    path: Optional[PathLike] = None,
    line: Optional[int] = None,
    key: Optional[str] = None,
) -> np.ndarray:
    """Decode base64 little-endian float32 into a read-only array, ``(n, dim)`` if ``dim`` is given."""
    try:
        raw = pybase64.b64decode(data, validate=True)
    except (ValueError, TypeError) as e:
        raise FormatError(f"invalid base64 feature data ({e})", path, line=line, key=key) from None
    unit = 4 * (dim or 1)
    if len(raw) % unit:
        what = f"4 x {dim}" if dim else "4"
        raise FormatError(
            f"feature blob of {len(raw)} bytes is not a multiple of {what} bytes", path, line=line, key=key
        )
    arr = np.frombuffer(raw, dtype=_F32)
    return arr.reshape(-1, dim) if dim else arr


# -- the 2054-d layout --------------------------------------------------------------
def box_geometry(boxes: Any, image_w: float, image_h: float) -> np.ndarray:
    """The 6-d box geometry ``[x1/W, y1/H, x2/W, y2/H, (x2-x1)/W, (y2-y1)/H]`` as float32 ``(N, 6)``.

    ``boxes`` are xyxy in original-image pixels and ``W, H`` the original image size; the
    maths is done in float64 and rounded once to float32 (the community converters' numpy path).
    """
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if not (image_w > 0 and image_h > 0):
        raise ValueError(f"image size must be positive, got {image_w} x {image_h}")
    w, h = float(image_w), float(image_h)
    geo = np.stack(
        [b[:, 0] / w, b[:, 1] / h, b[:, 2] / w, b[:, 3] / h, (b[:, 2] - b[:, 0]) / w, (b[:, 3] - b[:, 1]) / h],
        axis=1,
    )
    return geo.astype(np.float32)


def oscar_region_features(features: Any, boxes: Any, image_w: float, image_h: float) -> np.ndarray:
    """Oscar's 2054-d region input: ``concat(2048-d feature, box_geometry(boxes, W, H))`` as float32 ``(N, 2054)``.

    A 2-D ``features`` of another width (a small test model) gives ``(N, width + 6)``.
    """
    f = np.asarray(features, dtype=np.float32)
    f = f if f.ndim == 2 else f.reshape(-1, REGION_DIM)
    g = box_geometry(boxes, image_w, image_h)
    if len(f) != len(g):
        raise ValueError(f"{len(f)} feature rows but {len(g)} boxes")
    return np.concatenate([f, g], axis=1)


def split_oscar_region_features(x: Any) -> tuple[np.ndarray, np.ndarray]:
    """Split ``(N, D + 6)`` Oscar inputs (2054-d for the released detectors) into the D-d features and the 6-d geometry."""
    a = np.asarray(x)
    a = a.reshape(-1, a.shape[-1] if a.ndim == 2 else OSCAR_DIM)
    if a.shape[1] <= GEOMETRY_DIM:
        raise ValueError(f"Oscar region inputs need more than {GEOMETRY_DIM} columns, got {a.shape[1]}")
    return a[:, :-GEOMETRY_DIM], a[:, -GEOMETRY_DIM:]


# -- detector predictions.tsv ---------------------------------------------------------
@dataclass
class Prediction:
    """One image's detections as a ``predictions.tsv`` row holds them (boxes in original pixels)."""

    key: str
    boxes: np.ndarray
    classes: list[str]
    scores: np.ndarray
    features: Optional[np.ndarray] = None
    attributes: Optional[list[list[str]]] = None
    attr_scores: Optional[list[list[float]]] = None
    image_h: Optional[int] = None
    image_w: Optional[int] = None
    object_extra: Optional[list[dict[str, Any]]] = None
    top_extra: dict[str, Any] = field(default_factory=lambda: {"relations": None})
    scores_all: Optional[np.ndarray] = None  # [N, C] class softmax of each box (TSV_SAVE_SUBSET scores_all)
    boxes_all: Optional[np.ndarray] = None  # [N, C, 4] or [N, 1, 4], resized-image pixels (boxes_all)
    attr_scores_all: Optional[np.ndarray] = None  # [N, A] attribute softmax (attr_scores_all)

    def __post_init__(self) -> None:
        self.boxes = np.asarray(self.boxes, dtype=np.float32).reshape(-1, 4)
        self.scores = np.asarray(self.scores, dtype=np.float32).reshape(-1)
        n = len(self.boxes)
        if len(self.classes) != n or len(self.scores) != n:
            raise ValueError(f"{self.key}: {n} boxes, {len(self.classes)} classes, {len(self.scores)} scores")
        if self.features is not None:
            f = np.asarray(self.features, dtype=np.float32)
            if f.ndim != 2:
                f = f.reshape(n, -1) if n else f.reshape(0, REGION_DIM)
            if len(f) != n:
                raise ValueError(f"{self.key}: {len(f)} feature rows for {n} boxes")
            self.features = f
        for name in ("attributes", "attr_scores", "object_extra", "scores_all", "boxes_all", "attr_scores_all"):
            v = getattr(self, name)
            if v is not None and len(v) != n:
                raise ValueError(f"{self.key}: {len(v)} {name} entries for {n} boxes")

    def __len__(self) -> int:
        return len(self.boxes)

    def tags(self) -> str:
        """Oscar's tag text: the class names joined by spaces."""
        return " ".join(self.classes)

    def region_features(self, image_w: Optional[float] = None, image_h: Optional[float] = None) -> np.ndarray:
        """The ``(N, 2054)`` Oscar inputs, using the row's own image size unless one is given."""
        w = image_w if image_w is not None else self.image_w
        h = image_h if image_h is not None else self.image_h
        if w is None or h is None:
            raise FormatError("no image size in the row: give one (e.g. from hw.tsv)", key=self.key)
        if self.features is None:
            raise FormatError("row has no features", key=self.key)
        return oscar_region_features(self.features, self.boxes, w, h)

    def to_json(self, subset: Sequence[str] = DEFAULT_SAVE_SUBSET) -> str:
        """The row's JSON exactly as the original writes it (key order, bbox_id, json.dumps separators).

        ``subset`` uses the original's TSV_SAVE_SUBSET names, in its order (the original writes an object's
        keys in subset order): rect (with ``bbox_id``), class, conf, feature, attr_labels (writes
        ``attributes``), attr_scores, and the base64 float32 blobs scores_all, boxes_all, attr_scores_all;
        image size keys follow when known.
        """
        objects = []
        for i in range(len(self)):
            obj: dict[str, Any] = {}
            for name in subset:
                if name == "rect":
                    obj["rect"] = [float(v) for v in self.boxes[i]]
                    obj["bbox_id"] = i
                elif name == "class":
                    obj["class"] = self.classes[i]
                elif name == "conf":
                    obj["conf"] = float(self.scores[i])
                elif name == "feature" and self.features is not None:
                    obj["feature"] = encode_floats(self.features[i])
                elif name == "attr_labels" and self.attributes is not None:
                    obj["attributes"] = list(self.attributes[i])
                elif name == "attr_scores" and self.attr_scores is not None:
                    obj["attr_scores"] = [float(np.float32(s)) for s in self.attr_scores[i]]
                elif name in ("scores_all", "boxes_all", "attr_scores_all") and getattr(self, name) is not None:
                    obj[name] = encode_floats(getattr(self, name)[i])
            if self.object_extra is not None:
                for k, v in self.object_extra[i].items():
                    obj.setdefault(k, v)
            objects.append(obj)
        top: dict[str, Any] = {"objects": objects}
        top.update(self.top_extra)
        if self.image_h is not None:
            top["image_h"] = int(self.image_h)
        if self.image_w is not None:
            top["image_w"] = int(self.image_w)
        return json.dumps(top)

    def to_row(self, subset: Sequence[str] = DEFAULT_SAVE_SUBSET) -> list[str]:
        """The ``[key, json]`` fields of this prediction's ``predictions.tsv`` row."""
        return [self.key, self.to_json(subset)]

    @classmethod
    def from_json(
        cls, key: str, text: Union[str, bytes], *, path: Optional[PathLike] = None, line: Optional[int] = None
    ) -> "Prediction":
        """Parse a row's JSON: ``{"objects": [...], ...}`` or a plain list of objects."""
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise FormatError(f"invalid JSON ({e})", path, line=line, key=key) from None
        top_extra: dict[str, Any] = {}
        image_h = image_w = None
        if isinstance(data, dict):
            if "objects" not in data:
                raise FormatError("JSON object without an 'objects' list", path, line=line, key=key)
            objects = data["objects"]
            for k, v in data.items():
                if k == "image_h":
                    image_h = v
                elif k == "image_w":
                    image_w = v
                elif k != "objects":
                    top_extra[k] = v
        else:
            objects = data
        if not isinstance(objects, list) or not all(isinstance(o, dict) for o in objects):
            raise FormatError("'objects' must be a list of JSON objects", path, line=line, key=key)
        known = {"rect", "bbox_id", "class", "conf", "feature", "attributes", "attr_scores", "image_h", "image_w"}
        boxes, classes, scores, feats, attrs, attr_scores, extras = [], [], [], [], [], [], []
        for j, o in enumerate(objects):
            try:
                rect = o["rect"]
                boxes.append([float(v) for v in rect])
                if len(rect) != 4:
                    raise ValueError("rect must have 4 numbers")
                classes.append(str(o["class"]))
                scores.append(float(o.get("conf", 1.0)))
            except (KeyError, TypeError, ValueError) as e:
                raise FormatError(f"object {j}: bad or missing {e}", path, line=line, key=key) from None
            if "feature" in o:
                feats.append(decode_floats(o["feature"], path=path, line=line, key=key))
            attrs.append(o.get("attributes"))
            attr_scores.append(o.get("attr_scores"))
            extras.append({k: v for k, v in o.items() if k not in known})
            image_h = o.get("image_h", image_h)
            image_w = o.get("image_w", image_w)
        if feats and len(feats) != len(objects):
            raise FormatError("some objects have a feature and some do not", path, line=line, key=key)
        if feats and len({len(f) for f in feats}) != 1:
            raise FormatError("objects' features differ in length", path, line=line, key=key)
        if any(a is not None for a in attrs) and any(a is None for a in attrs):
            raise FormatError("some objects have attributes and some do not", path, line=line, key=key)
        return cls(
            key=key,
            boxes=np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
            classes=classes,
            scores=np.asarray(scores, dtype=np.float32),
            features=np.stack(feats) if feats else None,
            attributes=attrs if objects and attrs[0] is not None else None,
            attr_scores=attr_scores if objects and attr_scores[0] is not None else None,
            image_h=image_h,
            image_w=image_w,
            object_extra=extras if any(extras) else None,
            top_extra=top_extra,
        )


def read_predictions(path: PathLike) -> Iterator[Prediction]:
    """Stream the rows of a ``predictions.tsv`` (no index needed); every row's features must have one width."""
    width = _Width(None, "")
    for n, fields in iter_tsv(path, columns=2):
        check_no_cr(fields, path, n)
        key = _text(fields[0], path, n)
        pred = Prediction.from_json(key, fields[1], path=path, line=n)
        if pred.features is not None and len(pred):
            width.check(pred.features.shape[1], path, n, key, "region features")
        yield pred


# -- line endings and the width of feature rows ----------------------------------------------
CR_PROBLEM = "the row ends with a CR: the file has CR line endings (Windows CRLF); convert it, e.g. with dos2unix"


def check_no_cr(fields: Sequence[Union[str, bytes, memoryview]], path: Optional[PathLike] = None,
                line: Optional[int] = None) -> None:
    """Raise a :class:`FormatError` saying "CR line endings" when a row's last field ends with a carriage return."""
    if not fields:
        return
    last = fields[-1]
    end = last[-1:] if not isinstance(last, memoryview) else bytes(last[-1:])
    if end in (b"\r", "\r"):
        raise FormatError(CR_PROBLEM, path, line=line)


MANIFEST_NAME = "manifest.json"


# Files of an output folder whose width its manifest's feature_dim (features.tsv's row width) gives, and how.
_MANIFEST_WIDTHS = {"features.tsv": 0, "predictions.tsv": -GEOMETRY_DIM}


def manifest_feature_dim(path: PathLike) -> Optional[int]:
    """The width of ``path``'s vectors by the ``manifest.json`` beside it (its ``feature_dim`` is features.tsv's
    row width; a predictions.tsv's regions lack the 6 geometry columns), or None when it records none."""
    path = Path(path)
    manifest = path.parent / MANIFEST_NAME
    if path.name not in _MANIFEST_WIDTHS or not manifest.is_file():
        return None
    try:
        data = json.loads(manifest.read_bytes())
    except (OSError, ValueError) as e:
        raise FormatError(f"not valid JSON ({e}); pass the width explicitly (--dim)", manifest) from None
    value = data.get("feature_dim") if isinstance(data, dict) else None
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value <= GEOMETRY_DIM:
        raise FormatError(f"feature_dim must be an integer > {GEOMETRY_DIM}, got {value!r}", manifest, key="feature_dim")
    return value + _MANIFEST_WIDTHS[path.name]


def row_width(fields: Sequence[Union[str, bytes, memoryview]], *, path: Optional[PathLike] = None,
              line: Optional[int] = None) -> Optional[int]:
    """The width of a features row (either variant) read off its data, or None for a row without boxes."""
    parse = parse_caption_features_row if len(fields) == 2 else parse_features_row
    _, arr = parse(fields, None, path=path, line=line)
    return arr.shape[1] if len(arr) else None


def feature_dim(path: PathLike, dim: Optional[int] = None) -> int:
    """The row width of a features file: ``dim`` if given, else its manifest's, else its first row with boxes (2054 if none)."""
    return _resolve_width(path, dim).dim


class _Width:
    """A file's vector width and where it was learnt, to name both when a row disagrees."""

    def __init__(self, dim: Optional[int], origin: str) -> None:
        self.dim, self.origin = dim, origin

    def check(self, width: int, path: Optional[PathLike], line: int, key: Optional[str], what: str = "rows") -> None:
        if self.dim is None:
            self.dim, self.origin = width, f"at line {line}"
        elif width != self.dim:
            same = ": one file, one width" if self.origin.startswith("at line") else ""
            raise FormatError(f"{what} are {width}-d here but {self.dim}-d {self.origin}{same}", path, line=line, key=key)


def _resolve_width(path: PathLike, dim: Optional[int]) -> _Width:
    if dim is not None:
        if dim <= 0:
            raise FormatError(f"the feature width must be positive, got {dim}", path)
        return _Width(dim, "as given")
    from_manifest = manifest_feature_dim(path)
    if from_manifest is not None:
        return _Width(from_manifest, f"as {Path(path).parent / MANIFEST_NAME} says")
    for n, fields in iter_tsv(path):
        width = row_width(fields, path=path, line=n)
        if width is not None:
            return _Width(width, f"at line {n}")
    return _Width(OSCAR_DIM, "the released width, as no row has boxes")


# -- Oscar features.tsv ---------------------------------------------------------------
def _rows(features: Any, dim: Optional[int]) -> np.ndarray:
    arr = np.asarray(features, dtype=np.float32)
    width = dim if dim is not None else (arr.shape[-1] if arr.ndim == 2 else OSCAR_DIM)
    return arr.reshape(0, width) if arr.size == 0 else arr.reshape(-1, width)


def format_features_row(key: str, features: Any, dim: Optional[int] = None) -> list[str]:
    """Oscar's ``features.tsv`` row ``[key, num_boxes, base64(float32[num_boxes * dim])]`` (``dim``: a 2-D array's width)."""
    arr = _rows(features, dim)
    return [key, str(len(arr)), encode_floats(arr)]


def parse_features_row(
    fields: Sequence[Union[str, bytes, memoryview]], dim: Optional[int] = OSCAR_DIM, *, path: Optional[PathLike] = None,
    line: Optional[int] = None, dim_origin: str = "",
) -> tuple[str, np.ndarray]:
    """Parse ``[key, num_boxes, base64]`` into ``(key, (num_boxes, dim) float32)``; ``dim=None``: the row's own width."""
    if len(fields) != 3:
        check_no_cr(fields, path, line)
        raise FormatError(f"expected 3 columns (key, num_boxes, features), found {len(fields)}", path, line=line)
    check_no_cr(fields, path, line)
    key = _text(fields[0], path, line)
    try:
        n = int(fields[1])
        if n < 0:
            raise ValueError
    except ValueError:
        raise FormatError(f"num_boxes is not a non-negative integer: {_head(fields[1])!r}", path, line=line, key=key) from None
    return key, _shaped(fields[2], n, dim, path, line, key, dim_origin)


def _shaped(blob: Any, n: int, dim: Optional[int], path: Optional[PathLike], line: Optional[int], key: str,
            dim_origin: str) -> np.ndarray:
    """Decode a row's blob into ``(n, dim)``, naming what disagrees: the count, the width or the byte length."""
    arr = decode_floats(blob, path=path, line=line, key=key)
    size = arr.size
    if dim is None:
        if n == 0 and size == 0:
            return arr.reshape(0, 0)
        if n == 0 or size % n:
            raise FormatError(f"num_boxes says {n} but the blob holds {size} floats, not a whole number of rows per box",
                              path, line=line, key=key)
        return arr.reshape(n, -1)
    if size == n * dim:
        return arr.reshape(n, dim)
    origin = f" ({dim_origin})" if dim_origin else ""
    if size % dim == 0:
        raise FormatError(f"num_boxes says {n} but the blob holds {size // dim} rows of {dim}", path, line=line, key=key)
    if n > 0 and size % n == 0:
        raise FormatError(f"the row's {n} boxes are {size // n}-d but the file's width is {dim}{origin}",
                          path, line=line, key=key)
    raise FormatError(f"feature blob of {size * 4} bytes is not a multiple of 4 x {dim} bytes{origin}",
                      path, line=line, key=key)


def format_caption_features_row(key: str, features: Any, dim: Optional[int] = None) -> list[str]:
    """Captioning's feature row ``[key, {"num_boxes": n, "features": base64}]`` (``dim``: a 2-D array's width)."""
    arr = _rows(features, dim)
    return [key, json.dumps({"num_boxes": len(arr), "features": encode_floats(arr)})]


def parse_caption_features_row(
    fields: Sequence[Union[str, bytes]], dim: Optional[int] = OSCAR_DIM, *, path: Optional[PathLike] = None,
    line: Optional[int] = None, dim_origin: str = "",
) -> tuple[str, np.ndarray]:
    """Parse captioning's ``[key, {"num_boxes", "features"}]`` row into ``(key, (n, dim))``; ``dim=None``: its own width."""
    check_no_cr(fields, path, line)
    if len(fields) != 2:
        raise FormatError(f"expected 2 columns (key, JSON), found {len(fields)}", path, line=line)
    key = _text(fields[0], path, line)
    try:
        obj = json.loads(fields[1])
        n, blob = int(obj["num_boxes"]), obj["features"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError) as e:
        raise FormatError(f"expected {{'num_boxes', 'features'}} JSON ({e})", path, line=line, key=key) from None
    if n < 0:
        raise FormatError(f"num_boxes is not a non-negative integer: {n}", path, line=line, key=key)
    return key, _shaped(blob, n, dim, path, line, key, dim_origin)


FEATURE_LAYOUTS = ("plain", "caption")  # key, num_boxes, base64 | key, {"num_boxes", "features"} (run_captioning.py)
_B64 = re.compile(rb"[A-Za-z0-9+/]*={0,2}")


def _feature_fields(fields: Sequence[bytes], path: Path, line: int) -> tuple[bytes, int, bytes]:
    """``(key, num_boxes, base64 blob)`` of a feature row of either layout, its blob left encoded."""
    check_no_cr(fields, path, line)
    if len(fields) == 3:
        key, count, blob = fields
    elif len(fields) == 2:
        key = fields[0]
        try:
            obj = json.loads(fields[1])
            count, blob = obj["num_boxes"], obj["features"].encode("ascii")
        except (json.JSONDecodeError, UnicodeError, KeyError, TypeError, AttributeError) as e:
            raise FormatError(f"expected {{'num_boxes', 'features'}} JSON ({e})", path, line=line) from None
    else:
        raise FormatError(f"expected 3 columns (key, num_boxes, features) or 2 (key, JSON), found {len(fields)}",
                          path, line=line)
    k = _text(key, path, line)
    try:
        n = int(count)
        if n < 0 or isinstance(count, bool):
            raise ValueError
    except (TypeError, ValueError):
        raise FormatError(f"num_boxes is not a non-negative integer: {count!r}", path, line=line, key=k) from None
    if len(blob) % 4 or not _B64.fullmatch(blob):
        raise FormatError("features are not base64", path, line=line, key=k)
    size = len(blob) // 4 * 3 - (len(blob) - len(blob.rstrip(b"=")))
    if (n == 0 and size) or (n and size % (4 * n)):
        raise FormatError(f"{size} feature bytes do not split into {n} boxes of float32", path, line=line, key=k)
    return key, n, blob


def convert_features(src: PathLike, dst: PathLike, layout: str = "caption") -> dict[str, Any]:
    """Rewrite a feature TSV of either layout in ``layout`` (``caption``: captioning's ``key, {"num_boxes",
    "features"}``; ``plain``: ``key, num_boxes, base64``), streaming, rows and blobs unchanged; writes ``dst``
    and its ``.lineidx`` only when every row converted (row order is kept, so an ``imageid2idx.json`` still fits)."""
    if layout not in FEATURE_LAYOUTS:
        raise FormatError(f"unknown feature layout {layout!r}; one of {', '.join(FEATURE_LAYOUTS)}")
    src, dst = Path(src), Path(dst)
    if src.resolve() == dst.resolve():
        raise FormatError("the output would overwrite the input; give another name", dst)
    rows = boxes = 0
    with TSVWriter(dst, columns=3 if layout == "plain" else 2) as w:
        for n, fields in iter_tsv(src):
            key, count, blob = _feature_fields(fields, src, n)
            if layout == "plain":
                w.write((key, str(count).encode(), blob))
            else:  # byte-identical to json.dumps({"num_boxes": n, "features": blob}): base64 needs no escaping
                w.write((key, b'{"num_boxes": %d, "features": "%s"}' % (count, blob)))
            rows += 1
            boxes += count
        if not rows:
            raise FormatError("file is empty (no rows)", src)
    return {"rows": rows, "boxes": boxes, "layout": layout, "out": os.fspath(dst)}


class FeatureTSV:
    """Random access to an Oscar feature TSV (either row variant) by row or image key, at its own width."""

    def __init__(self, path: PathLike, dim: Optional[int] = None, key_index: Optional[PathLike] = None) -> None:
        """Open ``path``; ``dim`` defaults to the width its manifest records or its first row with boxes shows;
        ``key_index`` is an ``imageid2idx.json`` (default: the one beside it, if any)."""
        path = Path(path)
        if key_index is None and (path.parent / "imageid2idx.json").is_file():
            key_index = path.parent / "imageid2idx.json"
        self.tsv = TSVFile(path, build_index=True, key_index=read_key_index(key_index) if key_index else None)
        self._width: Optional[_Width] = _resolve_width(path, dim) if dim is not None else None

    @property
    def dim(self) -> int:
        """Width of every row (found on first use when not given)."""
        if self._width is None:
            self._width = _resolve_width(self.tsv.path, None)
        return int(self._width.dim)  # type: ignore[arg-type]

    def __len__(self) -> int:
        return len(self.tsv)

    def __getitem__(self, i: int) -> tuple[str, np.ndarray]:
        data = self.tsv.raw_row(i)  # an IndexError naming the file when out of range
        line = (i % len(self.tsv)) + 1
        dim, origin = self.dim, self._width.origin  # type: ignore[union-attr]
        if data.endswith(b"\r\n"):
            raise FormatError(CR_PROBLEM, self.tsv.path, line=line)
        # Hot path: locate the two TABs and decode the blob in place, with no copy of the row.
        t1 = data.find(b"\t", 0, 4096)
        t2 = data.find(b"\t", t1 + 1, t1 + 32) if t1 >= 0 else -1
        if t2 < 0 or data.find(b"\t", t2 + 1) >= 0:
            fields = data[:-1].split(b"\t")
            parse = parse_caption_features_row if len(fields) == 2 else parse_features_row
            return parse(fields, dim, path=self.tsv.path, line=line, dim_origin=origin)
        view = memoryview(data)
        return parse_features_row(
            (data[:t1], data[t1 + 1 : t2], view[t2 + 1 : len(data) - 1]), dim, path=self.tsv.path, line=line,
            dim_origin=origin,
        )

    def get(self, key: str) -> np.ndarray:
        """The ``(num_boxes, dim)`` features of image ``key``."""
        return self[self.tsv.index_of(key)][1]

    def __iter__(self) -> Iterator[tuple[str, np.ndarray]]:
        dim, origin = self.dim, self._width.origin  # type: ignore[union-attr]
        for i, fields in enumerate(self.tsv.iter_bytes()):
            parse = parse_caption_features_row if len(fields) == 2 else parse_features_row
            yield parse(fields, dim, path=self.tsv.path, line=i + 1, dim_origin=origin)


# -- label TSV (tags), hw TSV ------------------------------------------------------------
def format_label_row(prediction: Prediction) -> list[str]:
    """Oscar's label row ``[key, [{"class", "conf", "rect"(, "attributes")}...]]`` for a prediction."""
    objs = []
    for i in range(len(prediction)):
        o: dict[str, Any] = {
            "class": prediction.classes[i],
            "conf": float(prediction.scores[i]),
            "rect": [float(v) for v in prediction.boxes[i]],
        }
        if prediction.attributes is not None:
            o["attributes"] = list(prediction.attributes[i])
        objs.append(o)
    return [prediction.key, json.dumps(objs)]


def parse_label_row(
    fields: Sequence[Union[str, bytes]], *, path: Optional[PathLike] = None, line: Optional[int] = None
) -> tuple[str, list[dict[str, Any]]]:
    """Parse a label row ``[key, [{"class": ...}, ...]]`` (also accepts a predictions-style row)."""
    check_no_cr(fields, path, line)
    if len(fields) != 2:
        raise FormatError(f"expected 2 columns (key, JSON list), found {len(fields)}", path, line=line)
    key = _text(fields[0], path, line)
    try:
        data = json.loads(fields[1])
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise FormatError(f"invalid JSON ({e})", path, line=line, key=key) from None
    if isinstance(data, dict) and "objects" in data:
        data = data["objects"]
    if not isinstance(data, list) or not all(isinstance(o, dict) and "class" in o for o in data):
        raise FormatError("expected a JSON list of objects with a 'class'", path, line=line, key=key)
    return key, data


def tags_text(objects: Sequence[dict[str, Any]]) -> str:
    """Oscar's tag text of a label row: class names joined by spaces."""
    return " ".join(str(o["class"]) for o in objects)


def format_hw_row(key: str, height: int, width: int) -> list[str]:
    """An ``hw.tsv`` row ``[key, [{"height": h, "width": w}]]``."""
    return [key, json.dumps([{"height": int(height), "width": int(width)}])]


def parse_hw_row(
    fields: Sequence[Union[str, bytes]], *, path: Optional[PathLike] = None, line: Optional[int] = None
) -> tuple[str, int, int]:
    """Parse an ``hw.tsv`` row into ``(key, height, width)`` (a bare object is accepted too)."""
    check_no_cr(fields, path, line)
    if len(fields) != 2:
        raise FormatError(f"expected 2 columns (key, JSON), found {len(fields)}", path, line=line)
    key = _text(fields[0], path, line)
    try:
        data = json.loads(fields[1])
        if isinstance(data, list):
            data = data[0]
        h, w = int(data["height"]), int(data["width"])
        if h <= 0 or w <= 0:
            raise ValueError("size must be positive")
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, IndexError, TypeError, ValueError) as e:
        raise FormatError(f'expected [{{"height": h, "width": w}}] ({e})', path, line=line, key=key) from None
    return key, h, w


class _ImageSizes:
    """Image sizes from an ``hw.tsv``, fast when rows come in the same order, random access otherwise."""

    def __init__(self, path: PathLike) -> None:
        self.path = Path(path)
        self._stream = iter_tsv(self.path, columns=2)
        self._tsv: Optional[TSVFile] = None

    def get(self, key: str) -> tuple[int, int]:
        if self._stream is not None:
            try:
                n, fields = next(self._stream)
                k, h, w = parse_hw_row(fields, path=self.path, line=n)
                if k == key:
                    return h, w
            except StopIteration:
                pass
            self._stream = None
        if self._tsv is None:
            self._tsv = TSVFile(self.path, build_index=True, columns=2)
        try:
            i = self._tsv.index_of(key)
        except KeyError:
            raise FormatError("no image size for this key", self.path, key=key) from None
        _, h, w = parse_hw_row(self._tsv.fields_bytes(i), path=self.path, line=i + 1)
        return h, w


# What to_oscar writes, renamed from its staging folder in this order: manifest.json last.
_OSCAR_FILES = ("features.lineidx", "features.tsv", "label.lineidx", "label.tsv", "imageid2idx.json", MANIFEST_NAME)
_OSCAR_STAGE = "to-oscar"


def to_oscar(predictions: PathLike, out_dir: PathLike, hw: Optional[PathLike] = None) -> dict[str, Any]:
    """Convert a detector ``predictions.tsv`` into Oscar inputs in ``out_dir``, streaming.

    Writes ``features.tsv`` (the regions' width + 6: 2054-d for the released detectors),
    ``label.tsv`` (tags), ``imageid2idx.json``, the ``.lineidx`` files and the width it wrote as
    ``feature_dim`` in ``manifest.json`` (kept, with that key updated, if one is there). Image
    sizes come from each row's ``image_h``/``image_w`` or from ``hw``. Every row's regions must
    have one width, and boxes and features must be finite. Everything is written into a staging
    folder inside ``out_dir`` and moved to the final names only once the whole conversion succeeded,
    so a failure (bad row, full disk) leaves ``out_dir`` as it was.
    """
    predictions, out = Path(predictions), Path(out_dir)
    for given in (predictions, hw):
        if given is not None and not Path(given).is_file():
            raise FormatError("no such file", given)
    check_writable(out)  # a read-only or unreachable -o is named before any row is read
    remove_stale_temporaries(out, [_OSCAR_STAGE, *_OSCAR_FILES])
    stage = temporary_name(out / _OSCAR_STAGE)
    try:
        stats = _to_oscar(predictions, out, stage, hw)
        for name in _OSCAR_FILES:
            commit(stage / name, out / name)
    except OSError as e:
        raise _unstaged(e, stage, out) from e
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return stats


def _unstaged(error: OSError, stage: Path, out: Path) -> OSError:
    """``error`` naming the final file in ``out`` rather than its staged copy."""
    name = os.fspath(error.filename) if error.filename is not None else None
    if name is None:
        return naming(error, out)
    staged = os.fspath(stage) + os.sep
    return naming(error, out / name[len(staged):]) if name.startswith(staged) else error


def _to_oscar(predictions: Path, out: Path, stage: Path, hw: Optional[PathLike]) -> dict[str, Any]:
    sizes = _ImageSizes(hw) if hw is not None else None
    keys: list[str] = []
    seen: dict[str, int] = {}
    boxes = 0
    width = _Width(None, "")
    with TSVWriter(stage / "features.tsv", columns=3) as fw, TSVWriter(stage / "label.tsv", columns=2) as lw:
        for n, fields in iter_tsv(predictions, columns=2):
            check_no_cr(fields, predictions, n)
            key = _text(fields[0], predictions, n)
            if key in seen:
                raise FormatError(f"duplicate key (first at line {seen[key]})", predictions, line=n, key=key)
            seen[key] = n
            pred = Prediction.from_json(key, fields[1], path=predictions, line=n)
            if pred.features is None and len(pred):
                raise FormatError("row has no 'feature' for its objects", predictions, line=n, key=key)
            if sizes is not None:
                h, w = sizes.get(key)
            elif pred.image_h is not None and pred.image_w is not None:
                h, w = _image_size(pred, predictions, n)
            else:
                raise FormatError("row has no image_h/image_w: pass the hw.tsv (--hw)", predictions, line=n, key=key)
            _check_finite(pred, predictions, n)
            if len(pred):
                assert pred.features is not None
                width.check(pred.features.shape[1], predictions, n, key, "region features")
                feats = oscar_region_features(pred.features, pred.boxes, w, h)
            else:
                feats = np.zeros((0, 0), np.float32)  # no boxes: an empty blob, whatever the width
            fw.write(format_features_row(key, feats))
            lw.write(format_label_row(pred))
            keys.append(key)
            boxes += len(pred)
        if not keys:
            raise FormatError("file is empty (no rows)", predictions)
    dim = (width.dim + GEOMETRY_DIM) if width.dim is not None else OSCAR_DIM
    write_key_index(stage / "imageid2idx.json", ((k, i) for i, k in enumerate(keys)))
    _record_feature_dim(stage / MANIFEST_NAME, dim, predictions, previous=out / MANIFEST_NAME)
    return {"images": len(keys), "boxes": boxes, "feature_dim": dim, "out_dir": os.fspath(out)}


def _image_size(pred: Prediction, path: PathLike, line: int) -> tuple[int, int]:
    """A row's own ``image_h``/``image_w`` as positive integers (a NaN or a string is named, not divided by)."""
    size = []
    for name, v in (("image_h", pred.image_h), ("image_w", pred.image_w)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0 or v != int(v):
            raise FormatError(f"{name} must be a positive integer, got {v!r}", path, line=line, key=pred.key)
        size.append(int(v))
    return size[0], size[1]


def _record_feature_dim(manifest: Path, dim: int, source: PathLike, previous: Optional[Path] = None) -> None:
    """Set ``feature_dim`` in ``manifest``, keeping the other keys of ``previous`` (default: ``manifest`` itself,
    e.g. vinvl extract's)."""
    previous = manifest if previous is None else previous
    data: dict[str, Any] = {}
    if previous.is_file():
        try:
            old = json.loads(previous.read_bytes())
        except (OSError, ValueError):
            old = None  # a torn manifest is replaced by ours rather than stopping a finished conversion
        if isinstance(old, dict):
            data = old
    if not data:
        data = {"tool": "vinvl features to-oscar", "predictions": os.fspath(source)}
    data["feature_dim"] = dim
    atomic_write_text(manifest, json.dumps(data, indent=1, default=str) + "\n")


def _nonfinite(values: Any) -> tuple[int, Optional[tuple[int, ...]]]:
    """How many NaN or infinite numbers ``values`` holds, and where the first is (``(0, None)`` when all are finite)."""
    if isinstance(values, np.ndarray) and values.dtype.kind == "f":
        a = values
    else:
        try:
            a = np.asarray(values, dtype=np.float64)
        except (TypeError, ValueError):
            return 0, None  # not numbers: the parsers name that
    finite = np.isfinite(a)
    if finite.all():
        return 0, None
    bad = ~finite
    return int(bad.sum()), tuple(int(i) for i in np.argwhere(bad)[0])


def _finite_problem(count: int, where: str) -> str:
    return f"{count} NaN or infinite number{'s' if count > 1 else ''} in the row, the first in {where}"


def _check_finite(pred: Prediction, path: Optional[PathLike], line: Optional[int]) -> None:
    """Refuse a NaN or infinite box, score, feature or attribute score (one line naming the object and field)."""
    fields: list[tuple[str, Any]] = [("rect", pred.boxes), ("conf", pred.scores.reshape(-1, 1))]
    if pred.features is not None:
        fields.append(("feature", pred.features))
    for name, values in fields:
        count, at = _nonfinite(values)
        if at is not None:
            where = f"object {at[0]}'s {name}" + (f" (value {at[1]})" if name != "conf" else "")
            raise FormatError(_finite_problem(count, where), path, line=line, key=pred.key)
    for j, scores in enumerate(pred.attr_scores or []):
        count, at = _nonfinite(scores if isinstance(scores, (list, tuple)) else [])
        if at is not None:
            raise FormatError(_finite_problem(count, f"object {j}'s attr_scores (value {at[0]})"), path, line=line,
                              key=pred.key)


def _check_finite_rows(arr: np.ndarray, path: Optional[PathLike], line: Optional[int], key: str) -> None:
    """Refuse NaN or infinite values in a features row's ``(num_boxes, dim)`` array."""
    count, at = _nonfinite(arr)
    if at is not None:
        raise FormatError(_finite_problem(count, f"box {at[0]} (value {at[1]})"), path, line=line, key=key)


def _check_finite_labels(objects: Sequence[dict[str, Any]], path: Optional[PathLike], line: Optional[int],
                         key: str) -> None:
    """Refuse a NaN or infinite ``conf`` or ``rect`` in a label row's objects."""
    for j, o in enumerate(objects):
        for name in ("conf", "rect"):
            if name in o:
                count, at = _nonfinite(o[name])
                if at is not None:
                    raise FormatError(_finite_problem(count, f"object {j}'s {name}"), path, line=line, key=key)


def _head(raw: Union[str, bytes, memoryview], size: int = 40) -> Union[str, bytes]:
    return raw[:size] if isinstance(raw, (str, bytes)) else bytes(raw[:size])


def _text(raw: Union[str, bytes], path: Optional[PathLike], line: Optional[int]) -> str:
    if isinstance(raw, str):
        return raw
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise FormatError(f"invalid UTF-8 at byte {e.start} of the field", path, line=line) from None


ROW_KINDS = ("auto", "plain", "features", "caption-features", "predictions", "label", "hw")


def detect_row_kind(fields: Sequence[bytes]) -> str:
    """Guess which VinVL row format a TSV row is in (for checking files of unknown kind)."""
    if len(fields) == 3 and fields[1].isdigit():
        return "features"
    if len(fields) == 2:
        head = fields[1][:16].lstrip()
        if head.startswith(b'{"objects"'):
            return "predictions"
        if head.startswith(b'{"num_boxes"'):
            return "caption-features"
        if head.startswith(b'[{"height"'):
            return "hw"
        if head.startswith(b"["):
            return "label"
    return "plain"


def row_checker(kind: str, path: Optional[PathLike] = None, dim: Optional[int] = None):
    """A ``(fields, line) -> None`` check that raises :class:`FormatError` for a bad row of ``kind``.

    Feature rows must all have one width: ``dim`` (for predictions, the per-object feature's),
    else the one ``path``'s manifest records, else the first row's with boxes. Every kind
    refuses a row ending in a carriage return (CR line endings); feature, prediction and label
    rows refuse NaN and infinite numbers (features, boxes, scores).
    """
    if kind not in ROW_KINDS or kind == "auto":
        raise ValueError(f"unknown row kind {kind!r}; one of {', '.join(ROW_KINDS[1:])}")
    width = _Width(dim, "as given") if dim is not None else _Width(None, "")
    if dim is None and path is not None and kind in ("features", "caption-features", "predictions"):
        recorded = manifest_feature_dim(path)
        if recorded is not None:
            width = _Width(recorded, f"as {Path(path).parent / MANIFEST_NAME} says")

    def check(fields: list[bytes], line: int) -> None:
        check_no_cr(fields, path, line)
        if kind in ("features", "caption-features"):
            parse = parse_features_row if kind == "features" else parse_caption_features_row
            key, arr = parse(fields, width.dim, path=path, line=line, dim_origin=width.origin)
            if len(arr) and width.dim is None:
                width.check(arr.shape[1], path, line, key)
            _check_finite_rows(arr, path, line, key)
        elif kind == "predictions":
            if len(fields) != 2:
                raise FormatError(f"expected 2 columns (key, JSON), found {len(fields)}", path, line=line)
            key = _text(fields[0], path, line)
            pred = Prediction.from_json(key, fields[1], path=path, line=line)
            if pred.features is not None and len(pred):
                width.check(pred.features.shape[1], path, line, key, "region features")
            _check_finite(pred, path, line)
            if pred.image_h is not None or pred.image_w is not None:
                _image_size(pred, path, line)
        elif kind == "label":
            key, objects = parse_label_row(fields, path=path, line=line)
            _check_finite_labels(objects, path, line, key)
        elif kind == "hw":
            parse_hw_row(fields, path=path, line=line)

    return check


def first_row_kind(path: PathLike) -> str:
    """The detected row kind of a TSV's first row (``plain`` for an empty or unreadable one)."""
    try:
        with open(path, "rb") as f:
            line = f.readline()
    except OSError:
        return "plain"
    return detect_row_kind(line.rstrip(b"\n").split(b"\t")) if line else "plain"
