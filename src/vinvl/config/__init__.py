"""Typed configuration of vinvl's models, the presets built from it, and the detector's training settings."""

from ..dtypes import DTYPE_CHOICES, DTYPES  # the number formats' one vocabulary, re-exported for the detector
from .detector import (
    AttributeConfig,
    BackboneConfig,
    BoxHeadConfig,
    DetectorConfig,
    InputConfig,
    PostprocessConfig,
    RPNConfig,
)
from .presets import DETECTOR_PRESETS, detector_preset
from .training import TrainConfig

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
    "TrainConfig",
    "DETECTOR_PRESETS",
    "detector_preset",
]
