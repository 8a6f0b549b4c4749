"""Typed configuration of vinvl's models and the presets built from it."""

from .detector import (
    DTYPE_CHOICES,
    DTYPES,
    AttributeConfig,
    BackboneConfig,
    BoxHeadConfig,
    DetectorConfig,
    InputConfig,
    PostprocessConfig,
    RPNConfig,
)
from .presets import DETECTOR_PRESETS, detector_preset

__all__ = [
    "DTYPES",
    "DTYPE_CHOICES",
    "AttributeConfig",
    "BackboneConfig",
    "BoxHeadConfig",
    "DetectorConfig",
    "InputConfig",
    "PostprocessConfig",
    "RPNConfig",
    "DETECTOR_PRESETS",
    "detector_preset",
]
