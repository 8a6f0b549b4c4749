"""Extraction: images in, the VinVL/Oscar files out (predictions.tsv, features.tsv, label.tsv, hw.tsv, ...).

Two calls do what ``vinvl extract`` does: :func:`plan_extraction` (torch-free: the detector's files, the inputs,
the options, every check) and :func:`run_extraction` (loads the detector once and runs). Names are resolved on
first use (PEP 562) so that importing ``vinvl.extract.sources`` or ``.plan`` (used by torch-free tools and
before the command line imports torch) does not import the detector and torch with ``run``.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ExtractOptions": "plan",
    "ExtractStats": "run",
    "ExtractionJob": "plan",
    "extract": "run",
    "plan_extraction": "plan",
    "run_extraction": "run",
    "ImageItem": "sources",
    "KeyRule": "sources",
    "collect_images": "sources",
    "collect_inputs": "sources",
    "dataset_label_boxes": "sources",
    "match_given_boxes": "sources",
    "image_key": "sources",
    "make_key_rule": "sources",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
