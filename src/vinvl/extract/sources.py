"""Image inputs of ``vinvl extract`` and the one rule that turns a path into an image key."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence, Union

from ..errors import VinvlError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"})


@dataclass(frozen=True)
class ImageItem:
    """One image to process: its key in the output files and where it is."""

    key: str
    path: Path


def image_key(path: Union[str, os.PathLike], root: Union[str, os.PathLike]) -> str:
    """The key of ``path``: its path relative to the input ``root``, without extension, ``/``-separated."""
    rel = Path(path).relative_to(Path(root))
    return rel.with_suffix("").as_posix() if rel.suffix else rel.as_posix()


def collect_images(paths: Sequence[Union[str, os.PathLike]]) -> list[ImageItem]:
    """Images named by ``paths`` in a deterministic order: files as given, folders recursively sorted.

    A file's root is its folder (so its key is its stem); a folder's root is the folder. Keys
    must be unique across all inputs; a duplicate is an error before any work starts.
    """
    items: list[ImageItem] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(
                (f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS),
                key=lambda f: f.relative_to(p).as_posix(),
            )
            items += [ImageItem(image_key(f, p), f) for f in found]
        elif p.is_file():
            items.append(ImageItem(image_key(p, p.parent), p))
        else:
            raise VinvlError(f"{p}: no such file or folder")
    seen: dict[str, Path] = {}
    for it in items:
        if it.key in seen:
            raise VinvlError(f"duplicate image key {it.key!r}: {seen[it.key]} and {it.path}")
        seen[it.key] = it.path
    if not items:
        raise VinvlError(f"no images found in {', '.join(map(str, paths))}")
    return items
