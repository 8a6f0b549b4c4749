"""Detector presets: typed data naming which parts and settings a released model uses."""

from __future__ import annotations

from .detector import (
    AttributeConfig,
    BackboneConfig,
    BoxHeadConfig,
    DetectorConfig,
    InputConfig,
    PostprocessConfig,
    RPNConfig,
)
from ..errors import VinvlError

# The seed's extraction settings (NMS_FILTER 1, SCORE_THRESH 0.2, IGNORE_BOX_REGRESSION True).
_EXTRACTION = PostprocessConfig(nms_filter=1, score_thresh=0.2, ignore_box_regression=True)

DETECTOR_PRESETS: dict[str, DetectorConfig] = {
    "vinvl_vg_x152c4": DetectorConfig(
        name="vinvl_vg_x152c4",
        box_head=BoxHeadConfig(num_classes=1595),
        attributes=AttributeConfig(enabled=True, num_attributes=525),
        postprocess=_EXTRACTION,
    ),
    # FourSets: 1848 merged classes + background; its released config is said to leave
    # attributes off (spec/detector.md), so the attribute head is not expected in the weights.
    "vinvl_foursets_x152c4": DetectorConfig(
        name="vinvl_foursets_x152c4",
        box_head=BoxHeadConfig(num_classes=1849),
        attributes=AttributeConfig(enabled=False),
        postprocess=_EXTRACTION,
    ),
    "vinvl_objects365_x152c4": DetectorConfig(
        name="vinvl_objects365_x152c4",
        box_head=BoxHeadConfig(num_classes=366),
        attributes=AttributeConfig(enabled=False),
        postprocess=_EXTRACTION,
    ),
    # The shipped demo model (docs/models.md): a small C4 detector for the synthetic shapes
    # dataset (5 classes, 8 attributes), trained by `vinvl detector train`.
    "shapes_demo": DetectorConfig(
        name="shapes_demo",
        backbone=BackboneConfig(
            stem_out_channels=32, res2_out_channels=64, num_groups=1, width_per_group=16, blocks=(1, 1, 2, 1)
        ),
        rpn=RPNConfig(anchor_sizes=(16, 32, 64, 128), pre_nms_top_n=1000, post_nms_top_n=100),
        box_head=BoxHeadConfig(num_classes=6, pooler_resolution=8),
        attributes=AttributeConfig(enabled=True, num_attributes=9, cls_embed_dim=32, hidden_dim=128, max_per_box=4),
        # Score threshold 0.2 as the released extraction settings: box AP50 of `vinvl extract`'s rows on
        # unseen shapes seeds 0.91-0.93 (0.82 at 0.8, which dropped a fifth of the objects; docs/models.md).
        postprocess=PostprocessConfig(
            nms_filter=1, score_thresh=0.2, detections_per_img=30, min_detections_per_img=0, ignore_box_regression=False
        ),
        input=InputConfig(min_size=256, max_size=416),
    ),
    # A few-MB C4 detector of the same shape family, for fast tests.
    "tiny": DetectorConfig(
        name="tiny",
        backbone=BackboneConfig(
            stem_out_channels=8, res2_out_channels=16, num_groups=2, width_per_group=8, blocks=(1, 1, 1, 1)
        ),
        rpn=RPNConfig(anchor_sizes=(16, 32, 64), pre_nms_top_n=300, post_nms_top_n=40),
        box_head=BoxHeadConfig(num_classes=11),
        attributes=AttributeConfig(enabled=True, num_attributes=7, cls_embed_dim=8, hidden_dim=16, max_per_box=4),
        postprocess=PostprocessConfig(nms_filter=1, score_thresh=0.2, detections_per_img=20, min_detections_per_img=3),
        input=InputConfig(min_size=96, max_size=160),
    ),
}


def detector_preset(name: str) -> DetectorConfig:
    """The preset called ``name``; a clear error listing the known ones otherwise."""
    try:
        return DETECTOR_PRESETS[name]
    except KeyError:
        raise VinvlError(f"unknown detector preset {name!r}; known: {', '.join(DETECTOR_PRESETS)}") from None
