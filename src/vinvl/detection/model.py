"""AttrRCNN, VinVL's X152-C4 object-attribute detector, assembled from its parts (:func:`build_parts`, or parts
passed in, as torchvision's ``GeneralizedRCNN``): one forward pass for inference and training
(``(detections, losses)``)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..config import DetectorConfig, TrainConfig
from .attributes import AttributeHead, select_attributes
from .backbone import Backbone, backbone_builder
from .box_coder import BoxCoder, clip_boxes
from .losses import SampledROIs, attribute_loss, box_loss, sample_rois
from .postprocess import keep_every_box, select_detections
from .roi_heads import BoxHead, BoxPredictor, Res5FeatureExtractor, ROIHeads
from .rpn import RPN


@dataclass
class Target:
    """One image's ground truth in resized-image pixels: boxes ``[G, 4]`` (xyxy), class indices ``[G]``,
    attribute indices ``[G, A]`` (0 pads)."""

    boxes: torch.Tensor
    labels: torch.Tensor
    attributes: torch.Tensor

    def to(self, device: torch.device | str) -> "Target":
        """This target on ``device``."""
        return Target(self.boxes.to(device), self.labels.to(device), self.attributes.to(device))


@dataclass
class RawDetections:
    """One image's detections in resized-image coordinates (tensors), with optional intermediates."""

    boxes: torch.Tensor
    labels: torch.Tensor
    scores: torch.Tensor
    features: torch.Tensor
    scores_all: torch.Tensor
    rows: Optional[torch.Tensor] = None
    attr_logits: Optional[torch.Tensor] = None
    attr_labels: Optional[torch.Tensor] = None
    attr_scores: Optional[torch.Tensor] = None
    boxes_all: Optional[torch.Tensor] = None  # [N, C, 4] per-class boxes ([N, 1, 4] for forced boxes), when asked
    trace: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class DetectorParts:
    """The modules an :class:`AttrRCNN` is assembled from (the attribute head: None without attributes)."""

    backbone: Backbone
    rpn: RPN
    roi_heads: ROIHeads
    attribute: Optional[AttributeHead]


def build_parts(cfg: DetectorConfig) -> DetectorParts:
    """The parts ``cfg`` describes: the backbone registered as ``cfg.backbone.name``
    (:data:`vinvl.detection.backbone.BACKBONES`), an RPN on its feature map, a box head running its ROI head,
    and the attribute head when ``cfg.attributes.enabled``."""
    builder = backbone_builder(cfg.backbone)
    # Built in this order (body, RPN, ROI head, predictors): a seeded initialisation draws in this order.
    backbone = Backbone(builder.body(cfg.backbone))
    rpn = RPN(cfg.rpn, backbone.out_channels)
    extractor = Res5FeatureExtractor(builder.roi_head(cfg.backbone), cfg.box_head)
    h = cfg.box_head
    roi_heads = ROIHeads(BoxHead(extractor, BoxPredictor(extractor.out_channels, h.num_classes, h.cls_agnostic_bbox_reg)))
    a = cfg.attributes
    attribute = AttributeHead(a, extractor.out_channels, h.num_classes) if a.enabled else None
    return DetectorParts(backbone, rpn, roi_heads, attribute)


class AttrRCNN(nn.Module):
    """Backbone -> RPN -> box head (the backbone's ROI head over ROIs) -> post-processing -> attribute head.

    Module names follow maskrcnn-benchmark's, so released checkpoints load without renaming. One
    :meth:`forward` serves inference (detections) and training (losses, given targets): backbone, RPN
    head, proposal selection, pooling and predictors run the same code in both.
    """

    def __init__(self, cfg: DetectorConfig, train_config: Optional[TrainConfig] = None, *,
                 parts: Optional[DetectorParts] = None) -> None:
        """The detector of ``cfg`` from ``parts`` (default: :func:`build_parts` of ``cfg``); ``train_config`` holds the
        training-time settings of :meth:`forward` with targets (sampling, proposals, losses; default: the defaults)."""
        super().__init__()
        parts = parts if parts is not None else build_parts(cfg)
        if (parts.attribute is not None) != cfg.attributes.enabled:
            raise ValueError(f"attributes.enabled is {cfg.attributes.enabled} but the parts "
                             f"{'have' if parts.attribute is not None else 'lack'} an attribute head")
        self.cfg = cfg
        self.train_config = train_config if train_config is not None else TrainConfig()
        self.backbone = parts.backbone
        self.rpn = parts.rpn
        self.roi_heads = parts.roi_heads
        self.attribute = parts.attribute
        self.box_coder = BoxCoder(cfg.box_head.bbox_reg_weights)

    def class_boxes(self, deltas: torch.Tensor, proposals: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        """``[R, C, 4]`` per-class boxes: the clipped proposal repeated (regression ignored) or decoded and clipped."""
        num_classes = self.cfg.box_head.num_classes
        if self.cfg.postprocess.ignore_box_regression:
            # RPN proposals are inside the image already; given boxes may not be (the original clips both).
            return clip_boxes(proposals, hw[0], hw[1])[:, None, :].expand(-1, num_classes, 4)
        if self.cfg.box_head.cls_agnostic_bbox_reg:
            decoded = self.box_coder.decode(deltas[:, -4:], proposals).repeat(1, num_classes)
        else:
            decoded = self.box_coder.decode(deltas, proposals)
        return clip_boxes(decoded, hw[0], hw[1]).view(len(proposals), num_classes, 4)

    def forward(
        self,
        images: torch.Tensor,
        image_sizes: Sequence[tuple[int, int]],
        targets: Optional[Sequence[Target]] = None,
        *,
        boxes: Optional[Sequence[torch.Tensor]] = None,
        generator: Optional[torch.Generator] = None,
        trace: bool = False,
    ) -> tuple[list[RawDetections], dict[str, torch.Tensor]]:
        """``(detections, losses)`` of a ``[B, 3, H, W]`` batch whose images have the given (resized)
        ``(h, w)`` sizes. Without ``targets``: detections (under no-grad), no losses; with one
        :class:`Target` per image: the training losses (``train_config``; sampling draws from
        ``generator``), no detections. ``boxes`` (inference only: ``[N_i, 4]`` xyxy per image in
        resized-image pixels) are the proposals instead of the RPN's (the original's RPN.FORCE_BOXES)."""
        training = targets is not None
        sizes = list(image_sizes)
        checks = [("sizes", len(sizes))] + ([("targets", len(targets))] if training else [])
        for what, n in checks + ([("box lists", len(boxes))] if boxes is not None else []):
            if n != len(images):
                raise ValueError(f"{len(images)} images but {n} {what}")
        if training and boxes is not None:
            raise ValueError("given boxes are for inference; training samples its proposals from the RPN")
        tc = self.train_config
        with contextlib.nullcontext() if training else torch.no_grad():
            c4 = self.backbone(images)
            losses: dict[str, torch.Tensor] = {}
            if training:
                gt_boxes = [t.boxes for t in targets]
                objectness, rpn_deltas = self.rpn.head(c4)
                losses["loss_objectness"], losses["loss_rpn_box_reg"] = self.rpn.loss(
                    objectness, rpn_deltas, gt_boxes, sizes, tc, generator
                )
                with torch.no_grad():  # proposals are not differentiated through
                    proposals = self.rpn.select(
                        objectness.detach(), rpn_deltas.detach(), sizes, tc.rpn_pre_nms_top_n, tc.rpn_post_nms_top_n
                    )
            elif boxes is not None:
                # The original skips the RPN entirely; the given boxes carry no objectness.
                proposals = [(b.to(device=c4.device, dtype=torch.float32).reshape(-1, 4), None) for b in boxes]
            else:
                # RPN.forward is the same head and selection, called as a module so that hooks see it.
                proposals = self.rpn(c4, sizes)
            boxes = [p[0] for p in proposals]
            if training:
                rois = sample_rois(
                    boxes, gt_boxes, [t.labels for t in targets], [t.attributes for t in targets],
                    self.box_coder, tc, generator,
                )
                boxes = rois.boxes
            pooled = self._pool(c4, boxes)
            logits, deltas = self.roi_heads.box.predictor(pooled)
            if training:
                losses.update(self._head_losses(pooled, logits, deltas, rois))
                return [], losses
            return self._detections(c4, proposals, pooled, logits, deltas, sizes, trace), losses

    def _pool(self, c4: torch.Tensor, boxes: list[torch.Tensor]) -> torch.Tensor:
        """The box head's pooled features of ``boxes``; ``[0, D]`` without running res5 when there are none
        (an image with zero given boxes)."""
        if sum(len(b) for b in boxes) == 0:
            extractor = self.roi_heads.box.feature_extractor
            return c4.new_zeros((0, extractor.out_channels), dtype=torch.float32)
        return self.roi_heads.box.feature_extractor(c4, boxes)

    def _head_losses(
        self, pooled: torch.Tensor, logits: torch.Tensor, deltas: torch.Tensor, rois: SampledROIs
    ) -> dict[str, torch.Tensor]:
        tc = self.train_config
        out = dict(zip(("loss_classifier", "loss_box_reg"), box_loss(logits, deltas, rois, tc)))
        if self.attribute is not None:
            # Trained on the positive samples with their true class, as the original does.
            pos = torch.nonzero(rois.positive).squeeze(1)
            attr_logits = self.attribute.predictor(pooled[pos], rois.labels[pos])
            out["loss_attribute"] = tc.attribute_loss_weight * attribute_loss(attr_logits, rois.attributes[pos])
        return out

    def _detections(
        self,
        c4: torch.Tensor,
        proposals: list[tuple[torch.Tensor, torch.Tensor]],
        pooled: torch.Tensor,
        logits: torch.Tensor,
        deltas: torch.Tensor,
        image_sizes: list[tuple[int, int]],
        trace: bool,
    ) -> list[RawDetections]:
        boxes = [p[0] for p in proposals]
        extractor = self.roi_heads.box.feature_extractor
        logits, deltas = logits.float(), deltas.float()  # post-processing always in fp32
        probs = F.softmax(logits, -1)
        counts = [len(b) for b in boxes]
        results = []
        pp = self.cfg.postprocess
        given = proposals[0][1] is None if proposals else False
        keep_all = pp.force_boxes == "on" or (pp.force_boxes == "given" and given)
        for i, (pool_i, prob_i, delta_i, logit_i) in enumerate(
            zip(pooled.split(counts), probs.split(counts), deltas.split(counts), logits.split(counts))
        ):
            hw = image_sizes[i]
            if keep_all:
                sel = keep_every_box(prob_i, clip_boxes(boxes[i], hw[0], hw[1]))
                boxes_all = sel.boxes[:, None, :] if pp.output_boxes_all else None
            else:
                cls_boxes = self.class_boxes(delta_i, boxes[i], hw)
                # Post-processing sees the proposals clipped, as the original's (given boxes may lie outside).
                sel = select_detections(prob_i, cls_boxes, clip_boxes(boxes[i], hw[0], hw[1]), pp)
                boxes_all = cls_boxes[sel.rows] if pp.output_boxes_all else None
            out = RawDetections(sel.boxes, sel.labels, sel.scores, pool_i[sel.rows], prob_i[sel.rows], sel.rows,
                                boxes_all=boxes_all)
            if self.attribute is not None:
                # The original re-pools the output boxes (all of them, as one batch); where they are exactly the
                # pooled proposals the features are identical, so they are reused.
                if len(sel.boxes) == 0 or torch.equal(sel.boxes, boxes[i][sel.rows]):
                    attr_in = out.features
                else:
                    attr_in = extractor(c4[i : i + 1], [sel.boxes])
                a = self.cfg.attributes
                out.attr_logits = self.attribute.predictor(attr_in, sel.labels).float()
                out.attr_labels, out.attr_scores = select_attributes(out.attr_logits, a.threshold, a.max_per_box)
            if trace:
                out.trace = {
                    "c4_feature": c4[i : i + 1],
                    "rpn_proposals": boxes[i],
                    "rpn_objectness": proposals[i][1],
                    "proposal_class_logits": logit_i,
                    "proposal_pool5": pool_i,
                }
            results.append(out)
        return results
