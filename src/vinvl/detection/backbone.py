"""The backbone registry: ``BackboneConfig.name`` -> the builders of a backbone's two parts.

A C4 detector's backbone has two parts: the *body* (image -> the feature map the RPN and the ROI pooler
read; ``backbone.body.*`` in checkpoints) and the *ROI head* that the box head runs over each pooled region
(ResNeXt's res5; ``roi_heads.box.feature_extractor.head.*``). A new backbone is one module defining both
(see :mod:`vinvl.detection.resnext`) and one entry in :data:`BACKBONES`; the original's
``MODEL.BACKBONE.CONV_BODY`` is mapped onto a name in :mod:`vinvl.config.original`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from ..config import BackboneConfig
from ..errors import VinvlError
from .resnext import Bottleneck, Res5Head, ResNetC4Body, Stem, fold_frozen_bn, frozen_bn, unfold_frozen_bn


@dataclass(frozen=True)
class BackboneBuilder:
    """How to build a backbone's parts from its config; each part has an ``out_channels`` attribute.

    Two builders, not one: the detector builds the body, then the RPN, then the ROI head, so that a seeded
    initialisation draws its random numbers in the order the released models were made in."""

    body: Callable[[BackboneConfig], nn.Module]
    roi_head: Callable[[BackboneConfig], nn.Module]


BACKBONES: dict[str, BackboneBuilder] = {
    "resnext_c4": BackboneBuilder(body=ResNetC4Body, roi_head=Res5Head),
}


def backbone_builder(cfg: BackboneConfig) -> BackboneBuilder:
    """The builder registered as ``cfg.name``; a clear error listing the known ones otherwise."""
    try:
        return BACKBONES[cfg.name]
    except KeyError:
        raise VinvlError(f"unknown backbone {cfg.name!r}; known: {', '.join(BACKBONES)}") from None


class Backbone(nn.Module):
    """The detector's backbone (``backbone.body.*`` in checkpoints) around a built body."""

    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body
        self.out_channels = int(body.out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


__all__ = ["BACKBONES", "Backbone", "BackboneBuilder", "Bottleneck", "Stem", "backbone_builder", "fold_frozen_bn",
           "frozen_bn", "unfold_frozen_bn"]
