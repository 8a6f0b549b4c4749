"""VinVL's AttrRCNN object-attribute detector (X152-C4) in pure PyTorch over torchvision ops."""

from ..config.pretrained import PretrainedFiles, resolve_pretrained
from .checkpoint import CheckpointError, load_into, read_checkpoint
from .detector import Detections, Detector
from .model import AttrRCNN, DetectorParts, RawDetections, Target, build_parts
from .preprocess import target_size

__all__ = [
    "AttrRCNN",
    "CheckpointError",
    "Detections",
    "Detector",
    "DetectorParts",
    "PretrainedFiles",
    "RawDetections",
    "Target",
    "build_parts",
    "load_into",
    "read_checkpoint",
    "resolve_pretrained",
    "target_size",
]
