"""Inputs of ``vinvl extract``: image files, folders, lists, image TSVs and dataset yamls, and their keys.

Every input becomes an :class:`ImageItem` (its key and where its bytes are) before any work
starts, in a deterministic order, so a run is a function of its inputs and a duplicate or
unmappable key is an error up front. Decoding happens later, in :func:`load_image_item`, with
:mod:`vinvl.images`'s decoder, which turns every way an image can be broken into an
:class:`~vinvl.images.ImageLoadError` with a reason.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np
from PIL import Image

from ..dataset_spec import DatasetSpec
from ..errors import FormatError, VinvlError
from ..given_boxes import GivenBoxes, label_boxes_for_rows, read_given_boxes
from ..images import IMAGE_EXTENSIONS, ImageLoadError, decode_image, header_size, read_image_file, tsv_image_bytes
from ..textio import display_path, is_control, read_text
from ..tsv import TSVFile

LIST_EXTENSIONS = frozenset({".txt", ".lst", ".list"})
YAML_EXTENSIONS = frozenset({".yaml", ".yml"})
KEY_FROM = ("relpath", "name", "stem")

PathLike = Union[str, os.PathLike]


@dataclass(frozen=True)
class ImageItem:
    """One image to process: its key, the file holding it and, for an image TSV, its row."""

    key: str
    path: Path
    row: Optional[int] = None
    # A dataset yaml's image: the yaml (the original batches each dataset apart) and its `hw` TSV (the
    # original's image sizes for aspect-ratio grouping). Where an image comes from, not what it is.
    dataset: Optional[Path] = field(default=None, compare=False, repr=False)
    hw: Optional[Path] = field(default=None, compare=False, repr=False)
    # Why a folder entry cannot be read at all (a dangling link, a FIFO): it goes to errors.tsv unopened.
    problem: Optional[str] = None

    @property
    def where(self) -> str:
        """The image's location for messages and errors.tsv: the path (odd bytes escaped), or ``path:row N``."""
        return display_path(self.path) if self.row is None else f"{display_path(self.path)}:row {self.row}"


def key_problem(key: str) -> Optional[str]:
    """Why ``key`` cannot be an image key, or None: keys are the first column of every TSV, and the
    original's readers strip fields and split lines, so a key is non-empty UTF-8 text without control
    characters (TAB, CR, LF, ...), line separators, or leading/trailing white space."""
    if not key:
        return "is empty"
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:
        return "is not valid UTF-8 (the file name has bytes of another encoding)"
    for ch in key:
        if is_control(ch):
            return f"contains the control character {ch!r}"
    if key != key.strip():
        return "begins or ends with white space"
    return None


def check_keys(items: Sequence[ImageItem]) -> None:
    """Refuse, before any work, an image whose key a TSV cannot hold, and duplicate keys."""
    seen: dict[str, ImageItem] = {}
    for it in items:
        problem = key_problem(it.key)
        if problem is not None:
            shown = it.key.encode("utf-8", "backslashreplace").decode("utf-8")
            fix = "fix the TSV's key" if it.row is not None else "rename the file or choose keys with --key-map/--key-regex"
            raise VinvlError(f"{it.where}: its key {shown!r} {problem}; {fix}")
        if it.key in seen:
            raise VinvlError(f"duplicate image key {it.key!r}: {seen[it.key].where} and {it.where}")
        seen[it.key] = it


@dataclass(frozen=True)
class KeyRule:
    """How a file input's key is made: ``key_from``, or ``key_regex``'s first group, or ``key_map``."""

    key_from: str = "relpath"
    key_regex: Optional[str] = None
    key_map: Optional[dict[str, str]] = None
    key_map_root: Optional[Path] = None

    def key(self, path: Path, root: Path) -> str:
        """The key of image ``path`` found under input ``root``."""
        rel = path.relative_to(root).as_posix() if path.is_relative_to(root) else path.name
        if self.key_map is not None:
            # A map names images relative to the input root or to the map's own folder, absolutely or by name.
            candidates = [rel, str(path), path.name]
            if self.key_map_root is not None and path.resolve().is_relative_to(self.key_map_root):
                candidates.insert(1, path.resolve().relative_to(self.key_map_root).as_posix())
            # A name that is not UTF-8 (or holds control characters) is written in the map as errors show it.
            candidates += [shown for c in candidates if (shown := display_path(c)) != c]
            for candidate in candidates:
                if candidate in self.key_map:
                    return self.key_map[candidate]
            raise VinvlError(
                f"{display_path(path)}: not in the --key-map file (looked up as "
                f"{', '.join(repr(display_path(c)) for c in candidates)})")
        if self.key_regex is not None:
            m = re.search(self.key_regex, rel)
            if m is None or not m.groups() or m.group(1) is None:
                raise VinvlError(f"{display_path(path)}: --key-regex {self.key_regex!r} does not match {rel!r} with a group")
            return m.group(1)
        if self.key_from == "name":
            return Path(rel).name
        if self.key_from == "stem":
            return Path(rel).stem
        return image_key(path, root)


def image_key(path: PathLike, root: PathLike) -> str:
    """The default key of ``path``: its path relative to the input ``root``, without extension, ``/``-separated."""
    rel = Path(path).relative_to(Path(root))
    return rel.with_suffix("").as_posix() if rel.suffix else rel.as_posix()


def read_key_map(path: PathLike) -> dict[str, str]:
    """A path -> key map from a JSON object or a two-column TSV (``path \\t key``)."""
    path = Path(path)
    text = read_text(path, "key map file")
    if path.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise VinvlError(f"{path}: invalid JSON ({e})") from None
        if not isinstance(data, dict):
            raise VinvlError(f"{path}: expected a JSON object mapping path -> key")
        return {str(k): str(v) for k, v in data.items()}
    out: dict[str, str] = {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) != 2 or not parts[1]:
            raise VinvlError(f"{path}:{n}: expected 'path<TAB>key'")
        out[parts[0]] = parts[1]
    return out


def make_key_rule(key_from: str = "relpath", key_regex: Optional[str] = None, key_map: Optional[PathLike] = None) -> KeyRule:
    """Validate the key options (one of them at a time) into a :class:`KeyRule`."""
    if key_from not in KEY_FROM:
        raise VinvlError(f"--key-from must be one of {', '.join(KEY_FROM)}, got {key_from!r}")
    if key_regex is not None and key_map is not None:
        raise VinvlError("--key-regex and --key-map exclude each other")
    if key_regex is not None:
        try:
            if re.compile(key_regex).groups < 1:
                raise VinvlError(f"--key-regex {key_regex!r} needs a group: the key is its first group")
        except re.error as e:
            raise VinvlError(f"--key-regex {key_regex!r}: {e}") from None
    if key_map is None:
        return KeyRule(key_from, key_regex)
    return KeyRule(key_from, key_regex, read_key_map(key_map), Path(key_map).resolve().parent)


def folder_entries(folder: Path) -> list[tuple[Path, Optional[str]]]:
    """The images under ``folder``, sorted by relative path, with sub-folder links followed (each real folder
    once: a link loop ends), and the entries that cannot be read with why: dangling links (to a file or a
    folder) and image-named entries that are not regular files (FIFOs, sockets, devices: never opened)."""
    found: list[tuple[Path, Optional[str]]] = []
    seen: set[tuple[int, int]] = set()

    def unlistable(e: OSError) -> None:
        if e.filename is not None and Path(e.filename) != folder:
            found.append((Path(e.filename), f"cannot list the folder: {e.strerror or e}"))

    for root, dirs, files in os.walk(folder, followlinks=True, onerror=unlistable):
        st = os.stat(root)
        if (st.st_dev, st.st_ino) in seen:
            dirs[:] = []  # a link back to a folder already walked
            continue
        seen.add((st.st_dev, st.st_ino))
        dirs.sort()
        for name in files:
            f = Path(root) / name
            image_named = f.suffix.lower() in IMAGE_EXTENSIONS
            if f.is_file():
                if image_named:
                    found.append((f, None))
            elif f.is_symlink() and not f.exists():
                found.append((f, f"dangling link to {display_path(os.readlink(f))}"))
            elif image_named:
                found.append((f, "not a regular file (a FIFO, socket or device): not read"))
    return sorted(found, key=lambda e: e[0].relative_to(folder).as_posix())


def _list_items(listing: Path, rule: KeyRule) -> list[ImageItem]:
    root = listing.parent
    items = []
    for n, line in enumerate(read_text(listing, "image list").splitlines(), 1):
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        p = Path(entry)
        p = p if p.is_absolute() else root / p
        if not p.is_file():
            raise VinvlError(f"{display_path(listing)}:{n}: no such image {entry!r}")
        items.append(ImageItem(rule.key(p, root if p.is_relative_to(root) else p.parent), p))
    return items


def _tsv_items(tsv: Path, rows: Optional[Sequence[int]] = None, dataset: Optional[Path] = None,
               hw: Optional[Path] = None) -> list[ImageItem]:
    f = TSVFile(tsv, build_index=True)
    n = len(f)
    if rows is None:
        rows = range(n)
    items = []
    for r in rows:
        if not 0 <= r < n:
            raise VinvlError(f"{tsv}: row {r} out of range (the file has {n} rows)")
        items.append(ImageItem(f.key(r), tsv, r, dataset, hw))
    f.close()
    return items


def read_linelist(path: Path) -> list[int]:
    """Row indices of a ``linelist.tsv`` (the first column of each line)."""
    rows = []
    for n, line in enumerate(read_text(path, "linelist").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(int(line.split("\t")[0]))
        except ValueError:
            raise VinvlError(f"{path}:{n}: expected a row index, got {line!r}") from None
    return rows


def dataset_yaml_items(path: Path, data_dir: Optional[Path] = None) -> list[ImageItem]:
    """Images of a dataset yaml (``img``: an image TSV; ``linelist``: the rows to take), its paths by
    :mod:`vinvl.dataset_spec`'s rule (beside the yaml, then under ``data_dir``)."""
    spec = DatasetSpec(path, data_dir=data_dir)
    if "img" not in spec:
        raise VinvlError(f"{path}: a dataset yaml needs an 'img' entry (the image TSV)")
    img = spec.file("img")
    ll = spec.file("linelist")
    # Only aspect-ratio grouping reads the hw file: its absence is an error there, not here.
    hw = spec.resolve(str(spec.get("hw"))) if "hw" in spec else None
    return _tsv_items(img, read_linelist(ll) if ll is not None else None, Path(path), hw)


def _entry_key(rule: KeyRule, path: Path, root: Path, problem: Optional[str]) -> str:
    """An entry's key; one that cannot be read is keyed by its relative path when the rule has no key for it
    (so that it reaches errors.tsv instead of stopping the run)."""
    if problem is None:
        return rule.key(path, root)
    try:
        return rule.key(path, root)
    except VinvlError:
        return image_key(path, root)


def collect_inputs(
    paths: Sequence[PathLike], rule: KeyRule = KeyRule(), data_dir: Optional[PathLike] = None
) -> list[ImageItem]:
    """Every image named by ``paths`` in a deterministic order; duplicate keys are an error before any work.

    A folder gives its images recursively (sorted by relative path), an image file itself, a
    ``.txt`` list its lines (paths relative to the list), a ``.tsv`` its rows (``key \\t base64``,
    keys as they are), a dataset ``.yaml`` its ``img`` TSV's rows (``linelist`` subset).
    """
    items: list[ImageItem] = []
    ddir = Path(data_dir) if data_dir is not None else None
    for p in map(Path, paths):
        suffix = p.suffix.lower()
        if p.is_dir():
            items += [ImageItem(_entry_key(rule, f, p, why), f, problem=why) for f, why in folder_entries(p)]
        elif not p.is_file():
            raise VinvlError(f"{display_path(p)}: no such file or folder")
        elif suffix in YAML_EXTENSIONS:
            items += dataset_yaml_items(p, ddir)
        elif suffix == ".tsv":
            items += _tsv_items(p)
        elif suffix in LIST_EXTENSIONS:
            items += _list_items(p, rule)
        else:
            # Any other file is taken as an image; if it is not one, it lands in errors.tsv.
            items.append(ImageItem(rule.key(p, p.parent), p))
    check_keys(items)
    if not items:
        raise VinvlError(f"no images found in {', '.join(map(str, paths))}")
    return items


def match_given_boxes(items: Sequence[ImageItem], boxes: Union[PathLike, Mapping[str, Any]], missing: str = "error",
                      unused: str = "error") -> tuple[dict[str, np.ndarray], GivenBoxes]:
    """Each input's boxes from a boxes file (see :mod:`vinvl.given_boxes`) or a mapping image key -> ``[N, 4]``: an
    image is matched by its key, then (by a file's entries) by its file name or path; what matches nothing is one
    error line before any work."""
    if isinstance(boxes, Mapping):
        given = GivenBoxes.from_mapping(boxes)
        names = [(it.key, ()) for it in items]
    else:
        given = read_given_boxes(boxes)
        names = [(it.key, (it.path.name, str(it.path)) if it.row is None else ()) for it in items]
    return given.match(names, missing, unused), given


def dataset_label_boxes(inputs: Sequence[PathLike], items: Sequence[ImageItem],
                        data_dir: Optional[PathLike] = None) -> dict[str, np.ndarray]:
    """Each input's boxes from its dataset yaml's ``label`` TSV, the row of the same line number as its image row
    (the original's MODEL.RPN.FORCE_BOXES reads its targets so); inputs must all be such yamls."""
    ddir = Path(data_dir) if data_dir is not None else None
    out: dict[str, np.ndarray] = {}
    for p in map(Path, inputs):
        if p.suffix.lower() not in YAML_EXTENSIONS or not p.is_file():
            raise VinvlError(f"{display_path(p)}: MODEL.RPN.FORCE_BOXES takes the boxes from a dataset yaml's 'label' "
                             "file; this input is not a dataset yaml (give the boxes with --boxes FILE)")
        spec = DatasetSpec(p, data_dir=ddir)
        label = spec.file("label")
        if label is None:
            raise VinvlError(f"{display_path(p)}: MODEL.RPN.FORCE_BOXES needs the yaml's 'label' entry (the given boxes)")
        mine = dataset_yaml_items(p, ddir)
        rows = [it.row if it.row is not None else -1 for it in mine]
        for it, b in zip(mine, label_boxes_for_rows(label, rows, [it.key for it in mine])):
            out[it.key] = b
    missing = [it.key for it in items if it.key not in out]
    if missing:
        raise VinvlError(f"image {missing[0]!r}: no boxes (MODEL.RPN.FORCE_BOXES reads them from the dataset yamls' "
                         "'label' files)")
    return out


def input_identities(items: Sequence[ImageItem]) -> list[bytes]:
    """One line per input naming what decides its bytes, however its path was spelled: key, resolved path, row,
    size and modification time of the file (a resumed run must see the same inputs)."""
    stats: dict[Path, bytes] = {}
    out = []
    for it in items:
        ident = stats.get(it.path)
        if ident is None:
            try:
                st = it.path.stat()
                ident = b"%s\t%d\t%d" % (os.fsencode(it.path.resolve()), st.st_size, st.st_mtime_ns)
            except OSError:  # unreadable: it lands in errors.tsv; its identity is its absolute path and why
                ident = os.fsencode(it.path.absolute()) + b"\t-\t-"
            stats[it.path] = ident
        row = b"" if it.row is None else str(it.row).encode()
        problem = (it.problem or "").encode("utf-8", "backslashreplace")
        out.append(b"\t".join([it.key.encode("utf-8", "backslashreplace"), row, ident, problem]))
    return out


def first_input_difference(before: Sequence[bytes], now: Sequence[bytes]) -> Optional[str]:
    """The first input whose identity differs between two runs' :func:`input_identities`, said in words."""
    for i, (a, b) in enumerate(zip(before, now)):
        if a != b:
            ka, kb = a.split(b"\t", 1)[0].decode("utf-8", "replace"), b.split(b"\t", 1)[0].decode("utf-8", "replace")
            if ka != kb:
                return f"input {i + 1} is {kb!r} where the interrupted run had {ka!r}"
            pa, pb = a.split(b"\t")[2], b.split(b"\t")[2]
            if pa != pb:
                return f"image {kb!r} is another file ({display_path(os.fsdecode(pb))}, was {display_path(os.fsdecode(pa))})"
            return f"image {kb!r} changed since the interrupted run (size or modification time)"
    if len(before) != len(now):
        return f"the interrupted run had {len(before)} inputs, this one {len(now)}"
    return None


def collect_images(paths: Sequence[PathLike]) -> list[ImageItem]:
    """``collect_inputs`` with the default key rule."""
    return collect_inputs(paths)


def image_bytes(item: ImageItem, tsv_cache: Optional[dict[Path, TSVFile]] = None) -> bytes:
    """The encoded bytes of ``item`` (a file's content, or an image TSV row's base64 last column)."""
    if item.row is None:
        return read_image_file(item.path)
    cache = tsv_cache if tsv_cache is not None else {}
    f = cache.get(item.path)
    if f is None:
        f = cache[item.path] = TSVFile(item.path, build_index=True)
    return tsv_image_bytes(f.fields_bytes(item.row))


def load_image_item(
    item: ImageItem, exif_transpose: bool = False, tsv_cache: Optional[dict[Path, TSVFile]] = None
) -> Image.Image:
    """Read and decode one input; every failure is an :class:`ImageLoadError` with its reason."""
    if item.problem is not None:
        raise ImageLoadError(item.problem)
    return decode_image(image_bytes(item, tsv_cache), exif_transpose)


def image_sizes(items: Sequence[ImageItem], exif_transpose: bool = False) -> list[Optional[tuple[float, float]]]:
    """Each input's (height, width) as the original groups by aspect ratio: its dataset yaml's ``hw`` row, else its header.

    The original's sampler reads the dataset's ``hw`` TSV (``TSVDataset.get_img_info``: the row of the image's
    line number, ``[{"height": h, "width": w}]``, ``{...}`` or ``h w``); without one, vinvl reads the image's own
    header (PIL opens lazily: no pixels are decoded). An image whose header cannot be read is None (it will
    fail to decode and land in errors.tsv); a malformed ``hw`` row is an error naming the file and row.
    """
    tsv_cache: dict[Path, TSVFile] = {}
    hw_cache: dict[Path, TSVFile] = {}
    try:
        return [_hw_row_size(it, hw_cache) if it.hw is not None else _header_size(it, exif_transpose, tsv_cache)
                for it in items]
    finally:
        for f in [*tsv_cache.values(), *hw_cache.values()]:
            f.close()


def _hw_row_size(item: ImageItem, cache: dict[Path, TSVFile]) -> tuple[float, float]:
    assert item.hw is not None and item.row is not None
    f = cache.get(item.hw)
    if f is None:
        if not item.hw.is_file():
            raise VinvlError(f"{display_path(item.dataset or item.hw)}: hw {display_path(item.hw)}: no such file "
                             "(the image sizes that aspect-ratio grouping reads)")
        f = cache[item.hw] = TSVFile(item.hw, build_index=True)
    line = item.row + 1
    if item.row >= len(f):
        raise FormatError(f"no size for image row {item.row} of {display_path(item.path)} (the hw file has {len(f)} rows)",
                          item.hw, line=line)
    fields = f.fields_bytes(item.row)
    try:
        text = fields[1].decode("utf-8")
        try:
            data = json.loads(text)
            data = data[0] if isinstance(data, list) else data
            h, w = float(data["height"]), float(data["width"])
        except ValueError:  # the original's other form: "h w"
            parts = text.split(" ")
            h, w = float(int(parts[0])), float(int(parts[1]))
        if not (h > 0 and w > 0):
            raise ValueError("the size must be positive")
    except (IndexError, KeyError, TypeError, ValueError) as e:
        raise FormatError(f'expected key<TAB>[{{"height": h, "width": w}}] or key<TAB>h w ({e})', item.hw,
                          line=line) from None
    return h, w


def _header_size(item: ImageItem, exif_transpose: bool, tsv_cache: dict[Path, TSVFile]) -> Optional[tuple[float, float]]:
    if item.problem is not None:
        return None
    try:
        source = image_bytes(item, tsv_cache) if item.row is not None else item.path
    except ImageLoadError:
        return None
    hw = header_size(source, exif_transpose)
    return None if hw is None else (float(hw[0]), float(hw[1]))
