"""VinVL's AttrRCNN object-attribute detector (X152-C4) in pure PyTorch over torchvision ops."""

from .checkpoint import CheckpointError, load_into, read_checkpoint
from .detector import Detections, Detector
from .model import AttrRCNN, RawDetections, Target
from .preprocess import target_size

__all__ = [
    "AttrRCNN",
    "CheckpointError",
    "Detections",
    "Detector",
    "RawDetections",
    "Target",
    "load_into",
    "read_checkpoint",
    "target_size",
]
