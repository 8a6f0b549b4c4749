"""Box head: ROIAlign pooler (legacy alignment), the backbone's ROI head (res5), global average pool, box predictor."""

from __future__ import annotations

import torch
from torch import nn
from torchvision.ops import roi_align

from ..config import BoxHeadConfig


class Pooler(nn.Module):
    """ROIAlign over the single C4 level with ``aligned=False`` (maskrcnn-benchmark's legacy ROIAlign)."""

    def __init__(self, resolution: int, scale: float, sampling_ratio: int) -> None:
        super().__init__()
        self.resolution = resolution
        self.scale = scale
        self.sampling_ratio = sampling_ratio

    def forward(self, features: torch.Tensor, boxes: list[torch.Tensor]) -> torch.Tensor:
        """Pool ``[sum(R_i), C, res, res]`` for each image's boxes (resized-image coordinates)."""
        # Box coordinates stay float32 (bf16 would move them by pixels), so the map is pooled in fp32.
        features = features.float()
        ids = torch.cat(
            [torch.full((len(b), 1), i, dtype=features.dtype, device=features.device) for i, b in enumerate(boxes)]
        )
        rois = torch.cat([ids, torch.cat(boxes).to(features.dtype)], dim=1)
        return roi_align(
            features, rois, (self.resolution, self.resolution), self.scale, self.sampling_ratio, aligned=False
        )


class Res5FeatureExtractor(nn.Module):
    """Pooler + the backbone's ROI head (res5) + mean over its positions: one vector per box (2048-d for X152)."""

    def __init__(self, head: nn.Module, cfg: BoxHeadConfig) -> None:
        super().__init__()
        self.pooler = Pooler(cfg.pooler_resolution, cfg.pooler_scale, cfg.sampling_ratio)
        self.head = head
        self.out_channels = int(head.out_channels)
        self.channels_last = False  # set by Detector: res5 over the ROIs in NHWC (oneDNN's faster path)

    def forward(self, features: torch.Tensor, boxes: list[torch.Tensor]) -> torch.Tensor:
        x = self.pooler(features, boxes)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        x = self.head(x)
        return torch.nn.functional.adaptive_avg_pool2d(x, 1).flatten(1).float()


class BoxPredictor(nn.Module):
    """Class logits and class-specific (or agnostic) box deltas from the pooled feature."""

    def __init__(self, in_channels: int, num_classes: int, cls_agnostic: bool) -> None:
        super().__init__()
        self.cls_score = nn.Linear(in_channels, num_classes)
        self.bbox_pred = nn.Linear(in_channels, 4 * (2 if cls_agnostic else num_classes))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.cls_score(x), self.bbox_pred(x)


class BoxHead(nn.Module):
    """``roi_heads.box``: feature extractor + predictor."""

    def __init__(self, feature_extractor: Res5FeatureExtractor, predictor: BoxPredictor) -> None:
        super().__init__()
        self.feature_extractor = feature_extractor
        self.predictor = predictor


class ROIHeads(nn.Module):
    """Container matching the checkpoint's ``roi_heads.box.*`` names."""

    def __init__(self, box: BoxHead) -> None:
        super().__init__()
        self.box = box
