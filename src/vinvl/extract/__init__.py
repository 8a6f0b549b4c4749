"""Extraction: images in, the VinVL/Oscar files out (predictions.tsv, features.tsv, label.tsv, hw.tsv, ...)."""

from .run import ExtractOptions, ExtractStats, extract
from .sources import ImageItem, KeyRule, collect_images, collect_inputs, image_key, make_key_rule

__all__ = [
    "ExtractOptions",
    "ExtractStats",
    "ImageItem",
    "KeyRule",
    "collect_images",
    "collect_inputs",
    "extract",
    "image_key",
    "make_key_rule",
]
