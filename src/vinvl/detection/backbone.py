"""ResNeXt C4 backbone (stem + layer1-3) and the res5 head (layer4), with frozen BN (eps 0)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from ..config import BackboneConfig


def frozen_bn(channels: int) -> FrozenBatchNorm2d:
    """maskrcnn-benchmark's FrozenBatchNorm2d has no epsilon: ``x * w / sqrt(var) + (b - mean * w / sqrt(var))``."""
    return FrozenBatchNorm2d(channels, eps=0.0)


class Bottleneck(nn.Module):
    """ResNeXt bottleneck: 1x1 -> grouped 3x3 -> 1x1, each followed by frozen BN; bias-free convs."""

    def __init__(
        self, in_channels: int, inner: int, out_channels: int, groups: int, stride: int, stride_in_1x1: bool
    ) -> None:
        super().__init__()
        self.downsample = None
        if in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), frozen_bn(out_channels)
            )
        s1, s3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1 = nn.Conv2d(in_channels, inner, 1, stride=s1, bias=False)
        self.bn1 = frozen_bn(inner)
        self.conv2 = nn.Conv2d(inner, inner, 3, stride=s3, padding=1, groups=groups, bias=False)
        self.bn2 = frozen_bn(inner)
        self.conv3 = nn.Conv2d(inner, out_channels, 1, bias=False)
        self.bn3 = frozen_bn(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu_(self.bn1(self.conv1(x)))
        out = F.relu_(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = self.downsample(x) if self.downsample is not None else x
        out += identity
        return F.relu_(out)


def make_stage(cfg: BackboneConfig, stage: int, in_channels: int, first_stride: int) -> nn.Sequential:
    """Layer ``stage`` (1..4) of the network: ``blocks[stage-1]`` bottlenecks, the first one strided."""
    inner, out = cfg.stage_channels(stage)
    blocks = []
    for i in range(cfg.blocks[stage - 1]):
        blocks.append(
            Bottleneck(in_channels, inner, out, cfg.num_groups, first_stride if i == 0 else 1, cfg.stride_in_1x1)
        )
        in_channels = out
    return nn.Sequential(*blocks)


class Stem(nn.Module):
    """7x7/2 conv + frozen BN + ReLU + 3x3/2 max-pool (floor mode)."""

    def __init__(self, out_channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, out_channels, 7, stride=2, padding=3, bias=False)
        self.bn1 = frozen_bn(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu_(self.bn1(self.conv1(x)))
        return F.max_pool2d(x, kernel_size=3, stride=2, padding=1)


class ResNetC4Body(nn.Module):
    """Stem + layer1 (stride 4) + layer2 (8) + layer3 (16): the C4 feature map."""

    def __init__(self, cfg: BackboneConfig) -> None:
        super().__init__()
        self.stem = Stem(cfg.stem_out_channels)
        self.layer1 = make_stage(cfg, 1, cfg.stem_out_channels, 1)
        self.layer2 = make_stage(cfg, 2, cfg.stage_channels(1)[1], 2)
        self.layer3 = make_stage(cfg, 3, cfg.stage_channels(2)[1], 2)
        self.out_channels = cfg.stage_channels(3)[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer3(self.layer2(self.layer1(self.stem(x))))


class Backbone(nn.Module):
    """The detector's backbone (``backbone.body.*`` in checkpoints)."""

    def __init__(self, cfg: BackboneConfig) -> None:
        super().__init__()
        self.body = ResNetC4Body(cfg)
        self.out_channels = self.body.out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class Res5Head(nn.Module):
    """layer4 (stride 2) applied to pooled ROIs: ``[R, 1024, 14, 14] -> [R, 2048, 7, 7]``."""

    def __init__(self, cfg: BackboneConfig) -> None:
        super().__init__()
        self.layer4 = make_stage(cfg, 4, cfg.stage_channels(3)[1], 2)
        self.out_channels = cfg.stage_channels(4)[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer4(x)
