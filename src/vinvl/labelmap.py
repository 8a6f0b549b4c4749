"""Label maps of the VinVL detectors and the vocabulary maps between them.

Index-0 conventions live here and only here: class 0 is ``__background__`` and attribute 0
is ``__no_attribute__``; every real class/attribute index is >= 1.

Formats read:
- VG json (``VG-SGG-dicts-vgoi6-clipped.json``): ``label_to_idx`` (required),
  ``attribute_to_idx`` (optional), ``idx_to_label`` / ``idx_to_attribute`` (optional, checked).
- A flat ``name -> index`` json (the merged 1848-class ``vgcocooiobjects_v1_class2ind.json``).
- A ``labelmap.tsv`` (Objects365): ``name \\t index`` per line, or one name per line.

Index bases: 1-based maps are used as they are; a 0-based map whose index 0 is the
background name is used as it is; a 0-based map of real classes is shifted by one (the
detector's index 0 is background). The released files' base is not documented anywhere we
could check (spec/detector.md), hence this rule, applied to every format alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Union

from .atomic import atomic_write_json
from .errors import FormatError
from .textio import read_json
from .tsv import PathLike

BACKGROUND = "__background__"
NO_ATTRIBUTE = "__no_attribute__"


def _names_from_index(mapping: Mapping[str, Any], zero_name: str, path: Path, what: str) -> tuple[str, ...]:
    """Turn ``name -> index`` into a tuple whose position is the index, with ``zero_name`` at 0."""
    items = []
    for name, idx in mapping.items():
        if isinstance(idx, bool) or not isinstance(idx, int):
            raise FormatError(f"{what}: index of {name!r} is not an integer: {idx!r}", path)
        items.append((idx, str(name)))
    if not items:
        raise FormatError(f"{what} is empty", path)
    items.sort()
    indices = [i for i, _ in items]
    lo = indices[0]
    if lo == 0 and items[0][1] != zero_name:
        items = [(i + 1, n) for i, n in items]
        indices = [i + 1 for i in indices]
        lo = 1
    if lo not in (0, 1):
        raise FormatError(f"{what}: indices must start at 0 or 1, the smallest is {lo}", path)
    for expect, got in enumerate(indices, start=lo):
        if got != expect:
            dup = got == expect - 1
            raise FormatError(
                f"{what}: {'duplicate' if dup else 'non-contiguous'} index {got} (expected {expect})", path
            )
    names = [n for _, n in items]
    if lo == 1:
        names.insert(0, zero_name)
    if len(set(names)) != len(names):
        seen: set[str] = set()
        dup_name = next(n for n in names if n in seen or seen.add(n))  # type: ignore[func-returns-value]
        raise FormatError(f"{what}: name {dup_name!r} appears twice", path)
    return tuple(names)


@dataclass(frozen=True)
class LabelMap:
    """Class (and optional attribute) vocabularies, position = model output index, 0 = background."""

    classes: tuple[str, ...]
    attributes: Optional[tuple[str, ...]] = None
    source: Optional[str] = None

    def __post_init__(self) -> None:
        if not self.classes or self.classes[0] != BACKGROUND:
            raise ValueError(f"class 0 must be {BACKGROUND!r}")
        if self.attributes is not None and (not self.attributes or self.attributes[0] != NO_ATTRIBUTE):
            raise ValueError(f"attribute 0 must be {NO_ATTRIBUTE!r}")
        object.__setattr__(self, "_class_idx", {n: i for i, n in enumerate(self.classes)})
        object.__setattr__(
            self, "_attr_idx", {n: i for i, n in enumerate(self.attributes)} if self.attributes else {}
        )

    @property
    def num_classes(self) -> int:
        """Number of classifier outputs, background included (1595 for VG)."""
        return len(self.classes)

    @property
    def num_attributes(self) -> int:
        """Number of attribute outputs, ``__no_attribute__`` included (525 for VG); 0 if none."""
        return len(self.attributes) if self.attributes else 0

    def class_name(self, index: int) -> str:
        """Name of class ``index``."""
        if not 0 <= index < len(self.classes):
            raise KeyError(f"class index {index} out of range 0..{len(self.classes) - 1}")
        return self.classes[index]

    def class_index(self, name: str) -> int:
        """Index of class ``name``."""
        try:
            return self._class_idx[name]  # type: ignore[attr-defined]
        except KeyError:
            raise KeyError(f"no class named {name!r} in {self.source or 'the label map'}") from None

    def attribute_name(self, index: int) -> str:
        """Name of attribute ``index``."""
        if not self.attributes or not 0 <= index < len(self.attributes):
            raise KeyError(f"attribute index {index} out of range")
        return self.attributes[index]

    def attribute_index(self, name: str) -> int:
        """Index of attribute ``name``."""
        try:
            return self._attr_idx[name]  # type: ignore[attr-defined]
        except KeyError:
            raise KeyError(f"no attribute named {name!r} in {self.source or 'the label map'}") from None

    def to_vg_dict(self) -> dict[str, Any]:
        """The VG json layout (``label_to_idx``, ``idx_to_label``, and the attribute pair if any)."""
        out: dict[str, Any] = {
            "label_to_idx": {n: i for i, n in enumerate(self.classes) if i},
            "idx_to_label": {str(i): n for i, n in enumerate(self.classes) if i},
        }
        if self.attributes:
            out["attribute_to_idx"] = {n: i for i, n in enumerate(self.attributes) if i}
            out["idx_to_attribute"] = {str(i): n for i, n in enumerate(self.attributes) if i}
        return out

    def save_vg_json(self, path: PathLike) -> Path:
        """Write the VG json layout, atomically."""
        return atomic_write_json(path, self.to_vg_dict())

    @classmethod
    def load(cls, path: PathLike) -> "LabelMap":
        """Load any supported label map, chosen by content: VG json, flat class2ind json, or labelmap TSV."""
        path = Path(path)
        if not path.is_file():
            raise FormatError("no such file", path)
        if path.suffix.lower() == ".json":
            data = read_json(path)
            if isinstance(data, dict) and ("label_to_idx" in data or "attribute_to_idx" in data or "idx_to_label" in data):
                return load_vg_labelmap(path, data)
            return load_class2ind(path, data)
        return load_labelmap_tsv(path)


def _check_inverse(data: dict, forward: tuple[str, ...], key: str, path: Path) -> None:
    inv = data.get(key)
    if inv is None:
        return
    if not isinstance(inv, dict):
        raise FormatError(f"'{key}' must be a JSON object", path)
    for k, name in inv.items():
        try:
            i = int(k)
        except ValueError:
            raise FormatError(f"'{key}' has a non-integer index {k!r}", path) from None
        if not 0 <= i < len(forward) or forward[i] != name:
            raise FormatError(f"'{key}' says {i} is {name!r}, which disagrees with the forward map", path)


def load_vg_labelmap(path: PathLike, data: Optional[dict] = None) -> LabelMap:
    """Load a VG json label map (``label_to_idx`` required; ``attribute_to_idx`` optional)."""
    path = Path(path)
    data = read_json(path) if data is None else data
    if not isinstance(data, dict) or "label_to_idx" not in data:
        raise FormatError("missing required key 'label_to_idx'", path)
    if not isinstance(data["label_to_idx"], dict):
        raise FormatError("'label_to_idx' must be a JSON object (name -> index)", path)
    classes = _names_from_index(data["label_to_idx"], BACKGROUND, path, "label_to_idx")
    _check_inverse(data, classes, "idx_to_label", path)
    attributes = None
    if data.get("attribute_to_idx") is not None:
        if not isinstance(data["attribute_to_idx"], dict):
            raise FormatError("'attribute_to_idx' must be a JSON object (name -> index)", path)
        attributes = _names_from_index(data["attribute_to_idx"], NO_ATTRIBUTE, path, "attribute_to_idx")
        _check_inverse(data, attributes, "idx_to_attribute", path)
    return LabelMap(classes, attributes, source=str(path))


def load_class2ind(path: PathLike, data: Optional[Any] = None) -> LabelMap:
    """Load a flat ``name -> index`` json (e.g. the merged 1848-class map)."""
    path = Path(path)
    data = read_json(path) if data is None else data
    if not isinstance(data, dict):
        raise FormatError("expected a JSON object mapping class name -> index", path)
    return LabelMap(_names_from_index(data, BACKGROUND, path, "class map"), None, source=str(path))


def load_labelmap_tsv(path: PathLike) -> LabelMap:
    """Load a ``labelmap.tsv``: ``name \\t index`` per line, or one name per line (index = line order)."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise FormatError(f"invalid UTF-8 at byte {e.start}", path) from None
    mapping: dict[str, int] = {}
    ncols = None
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split("\t")
        if ncols is None:
            ncols = len(parts)
        if len(parts) != ncols or ncols > 2:
            want = "name<TAB>index" if ncols == 2 else "one name"
            raise FormatError(f"expected {want} per line, got {len(parts)} columns", path, line=n)
        name = parts[0]
        if name in mapping:
            raise FormatError(f"class {name!r} appears twice", path, line=n)
        if ncols == 2:
            try:
                mapping[name] = int(parts[1])
            except ValueError:
                raise FormatError(f"index is not an integer: {parts[1]!r}", path, line=n) from None
        else:
            mapping[name] = len(mapping) + 1
    return LabelMap(_names_from_index(mapping, BACKGROUND, path, "labelmap"), None, source=str(path))


class VocabularyMap:
    """Maps classes of a source vocabulary (COCO, Objects365, OpenImages) into a target label map.

    Built from a ``*_class2ind.json`` giving ``source class name -> target index`` (or target name).
    """

    def __init__(self, mapping: Mapping[str, Union[int, str]], target: LabelMap, source: Optional[str] = None) -> None:
        """Check every mapped index/name exists in ``target``."""
        self.target = target
        self.source = source
        self._to_target: dict[str, int] = {}
        where = Path(source) if source else None
        for name, value in mapping.items():
            if isinstance(value, str):
                try:
                    idx = target.class_index(value)
                except KeyError:
                    raise FormatError(f"{name!r} maps to {value!r}, which the target label map lacks", where) from None
            elif isinstance(value, int) and not isinstance(value, bool) and 0 < value < target.num_classes:
                idx = value
            else:
                raise FormatError(
                    f"{name!r} maps to {value!r}, not a class index 1..{target.num_classes - 1}", where
                )
            self._to_target[str(name)] = idx

    @classmethod
    def load(cls, path: PathLike, target: LabelMap) -> "VocabularyMap":
        """Load a ``source name -> target index`` json map."""
        path = Path(path)
        if not path.is_file():
            raise FormatError("no such file", path)
        data = read_json(path)
        if not isinstance(data, dict):
            raise FormatError("expected a JSON object mapping source class -> target index", path)
        return cls(data, target, source=str(path))

    def __len__(self) -> int:
        return len(self._to_target)

    def __contains__(self, name: object) -> bool:
        return name in self._to_target

    def map_name(self, name: str) -> int:
        """Target index of source class ``name``."""
        try:
            return self._to_target[name]
        except KeyError:
            raise KeyError(f"source class {name!r} is not in {self.source or 'the vocabulary map'}") from None

    def map_index(self, index: int, source: LabelMap) -> int:
        """Target index of the source class at ``index`` of the ``source`` label map."""
        return self.map_name(source.class_name(index))

    def target_name(self, name: str) -> str:
        """Target class name of source class ``name``."""
        return self.target.class_name(self.map_name(name))

    def source_names(self) -> dict[str, str]:
        """Each target class some source class maps to -> that source class's name (where several map to one, the
        one spelled as the target class, ignoring case, else the first in the map's order)."""
        out: dict[str, str] = {}
        for name, idx in self._to_target.items():
            target = self.target.class_name(idx)
            if target not in out or (name.lower() == target.lower() and out[target].lower() != target.lower()):
                out[target] = name
        return out
