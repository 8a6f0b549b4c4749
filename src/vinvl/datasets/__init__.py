"""Synthetic datasets for training and testing the detector without downloads."""

from .shapes import (
    ATTRIBUTES,
    COLOURS,
    FILLS,
    SHAPE_CLASSES,
    SIZES,
    check_args,
    generate_image,
    generate_shapes,
    shapes_labelmap,
)

__all__ = [
    "ATTRIBUTES",
    "COLOURS",
    "FILLS",
    "SHAPE_CLASSES",
    "SIZES",
    "check_args",
    "generate_image",
    "generate_shapes",
    "shapes_labelmap",
]
