"""Former home of the Oscar+ inputs, kept so existing code keeps working: the tensorizers and the tokenizer
are in :mod:`vinvl.oscar.tensorize`, :class:`RegionStore` in :mod:`vinvl.oscar.data.regions`, and
``regions_for_images`` (the detector's side) in :mod:`vinvl.regions`."""

from __future__ import annotations

from typing import Any

from .data.regions import RegionStore
from .tensorize import CaptionTensorizer, ClassificationTensorizer, load_tokenizer

__all__ = ["CaptionTensorizer", "ClassificationTensorizer", "RegionStore", "load_tokenizer", "regions_for_images"]


def __getattr__(name: str) -> Any:
    if name == "regions_for_images":  # resolved on use: Oscar+ itself never imports the detector
        from ..regions import regions_for_images

        return regions_for_images
    raise AttributeError(name)
