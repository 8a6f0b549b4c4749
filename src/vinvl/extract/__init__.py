"""Extraction: images in, the VinVL/Oscar files out (predictions.tsv, features.tsv, ...)."""

from .run import ExtractStats, extract
from .sources import ImageItem, collect_images, image_key

__all__ = ["ExtractStats", "ImageItem", "collect_images", "extract", "image_key"]
