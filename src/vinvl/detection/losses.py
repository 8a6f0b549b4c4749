"""Training losses of AttrRCNN, as maskrcnn-benchmark / scene_graph_benchmark define them.

- RPN: anchors matched to ground truth at IoU 0.7 / 0.3 (each box also takes its best
  anchors), anchors crossing the image border ignored, 256 sampled per image (half
  positive at most); objectness binary cross-entropy and smooth-L1 (beta 1/9) on the deltas
  of the positives, both divided by the number sampled.
- Box head: proposals plus the ground-truth boxes, matched at IoU 0.5, sampled (a quarter
  positive at most); softmax cross-entropy over classes and class-specific smooth-L1
  (beta 1) of the positives, divided by the number sampled.
- Attributes: for the positive samples, the ground-truth class embedding with the pooled
  feature; softmax cross-entropy against each of the box's ground-truth attributes, each box
  weighted 1 / (its number of attributes); boxes without attributes do not count.

Their settings are the training configuration's (:class:`vinvl.config.TrainConfig`: ``rpn_*``, ``roi_*``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from ..config import TrainConfig
from .box_coder import TO_REMOVE, BoxCoder

BELOW, BETWEEN = -1, -2


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of ``[N, 4]`` x ``[M, 4]`` xyxy boxes in the inclusive-pixel ("+1") convention."""
    area_a = (a[:, 2] - a[:, 0] + TO_REMOVE) * (a[:, 3] - a[:, 1] + TO_REMOVE)
    area_b = (b[:, 2] - b[:, 0] + TO_REMOVE) * (b[:, 3] - b[:, 1] + TO_REMOVE)
    lt = torch.max(a[:, None, :2], b[None, :, :2])
    rb = torch.min(a[:, None, 2:], b[None, :, 2:])
    wh = (rb - lt + TO_REMOVE).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    return inter / (area_a[:, None] + area_b[None, :] - inter)


def match(iou: torch.Tensor, high: float, low: float, allow_low_quality: bool) -> torch.Tensor:
    """For ``iou [G, P]``: per prediction the matched ground-truth index, ``BELOW`` or ``BETWEEN``."""
    if iou.numel() == 0:
        return torch.full((iou.shape[1],), BELOW, dtype=torch.long, device=iou.device)
    best, idx = iou.max(dim=0)
    matches = idx.clone()
    matches[best < low] = BELOW
    matches[(best >= low) & (best < high)] = BETWEEN
    if allow_low_quality:
        # Each ground truth keeps the predictions it overlaps most, even under ``high``.
        top = iou.max(dim=1, keepdim=True).values
        _, pred = torch.nonzero(iou == top, as_tuple=True)
        matches[pred] = idx[pred]
    return matches


def sample(labels: torch.Tensor, per_image: int, positive_fraction: float, generator: Optional[torch.Generator]) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of sampled positives (``labels >= 1``) and negatives (``labels == 0``); -1 is ignored."""
    pos = torch.nonzero(labels >= 1).squeeze(1)
    neg = torch.nonzero(labels == 0).squeeze(1)
    n_pos = min(int(per_image * positive_fraction), pos.numel())
    n_neg = min(per_image - n_pos, neg.numel())
    pos = pos[torch.randperm(pos.numel(), generator=generator, device="cpu")[:n_pos].to(pos.device)]
    neg = neg[torch.randperm(neg.numel(), generator=generator, device="cpu")[:n_neg].to(neg.device)]
    return pos, neg


def rpn_loss(
    objectness: torch.Tensor,
    deltas: torch.Tensor,
    anchors: torch.Tensor,
    gt_boxes: list[torch.Tensor],
    image_sizes: list[tuple[int, int]],
    cfg: TrainConfig,
    generator: Optional[torch.Generator] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(objectness loss, box loss)`` from flattened head outputs ``[N, K]``, ``[N, K, 4]`` and anchors ``[K, 4]``."""
    coder = BoxCoder((1.0, 1.0, 1.0, 1.0))
    obj_logits, obj_targets, reg_pred, reg_targets = [], [], [], []
    n_sampled = 0
    for i, ((h, w), gt) in enumerate(zip(image_sizes, gt_boxes)):
        labels = torch.zeros(len(anchors), device=anchors.device)
        matches = match(box_iou(gt, anchors), cfg.rpn_fg_iou, cfg.rpn_bg_iou, True) if len(gt) else None
        if matches is not None:
            labels = (matches >= 0).float()
            labels[matches == BETWEEN] = -1
        t = cfg.rpn_straddle_thresh
        inside = (anchors[:, 0] >= -t) & (anchors[:, 1] >= -t) & (anchors[:, 2] < w + t) & (anchors[:, 3] < h + t)
        labels[~inside] = -1
        pos, neg = sample(labels, cfg.rpn_batch_per_image, cfg.rpn_positive_fraction, generator)
        idx = torch.cat([pos, neg])
        n_sampled += idx.numel()
        obj_logits.append(objectness[i, idx])
        obj_targets.append(labels[idx])
        if pos.numel():
            reg_pred.append(deltas[i, pos])
            reg_targets.append(coder.encode(gt[matches[pos]], anchors[pos]))
    n = max(n_sampled, 1)
    loss_obj = F.binary_cross_entropy_with_logits(torch.cat(obj_logits), torch.cat(obj_targets), reduction="sum") / n
    if reg_pred:
        loss_box = F.smooth_l1_loss(torch.cat(reg_pred), torch.cat(reg_targets), beta=cfg.rpn_beta, reduction="sum") / n
    else:
        loss_box = deltas.sum() * 0
    return loss_obj, loss_box


@dataclass
class SampledROIs:
    """The proposals the box head trains on, per image, with their targets."""

    boxes: list[torch.Tensor]
    labels: torch.Tensor
    regression: torch.Tensor
    positive: torch.Tensor
    attributes: torch.Tensor


def sample_rois(
    proposals: list[torch.Tensor],
    gt_boxes: list[torch.Tensor],
    gt_labels: list[torch.Tensor],
    gt_attributes: list[torch.Tensor],
    coder: BoxCoder,
    cfg: TrainConfig,
    generator: Optional[torch.Generator] = None,
) -> SampledROIs:
    """Add the ground truth to the proposals, match, sample, and compute the targets."""
    boxes, labels, regs, attrs = [], [], [], []
    for props, gt, gl, ga in zip(proposals, gt_boxes, gt_labels, gt_attributes):
        cand = torch.cat([props, gt]) if len(gt) else props
        if len(gt):
            m = match(box_iou(gt, cand), cfg.roi_fg_iou, cfg.roi_bg_iou, False)
            lab = torch.where(m >= 0, gl[m.clamp(min=0)], torch.zeros_like(m))
            lab[m == BETWEEN] = -1
        else:
            m = torch.full((len(cand),), BELOW, dtype=torch.long, device=cand.device)
            lab = torch.zeros_like(m)
        pos, neg = sample(lab, cfg.roi_batch_per_image, cfg.roi_positive_fraction, generator)
        idx = torch.cat([pos, neg])
        b = cand[idx]
        boxes.append(b)
        l = lab[idx].clone()
        l[len(pos):] = 0
        labels.append(l)
        reg = torch.zeros(len(idx), 4, device=cand.device)
        at = torch.zeros(len(idx), ga.shape[1] if ga.ndim == 2 else 1, dtype=torch.long, device=cand.device)
        if len(pos):
            reg[: len(pos)] = coder.encode(gt[m[pos]], cand[pos])
            if ga.numel():
                at[: len(pos)] = ga[m[pos]]
        regs.append(reg)
        attrs.append(at)
    labels_t = torch.cat(labels)
    width = max(a.shape[1] for a in attrs)
    attrs = [F.pad(a, (0, width - a.shape[1])) for a in attrs]
    return SampledROIs(boxes, labels_t, torch.cat(regs), labels_t > 0, torch.cat(attrs))


def box_loss(class_logits: torch.Tensor, box_deltas: torch.Tensor, rois: SampledROIs, cfg: TrainConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """``(classification loss, box regression loss)`` of the sampled proposals."""
    loss_cls = F.cross_entropy(class_logits, rois.labels)
    pos = torch.nonzero(rois.positive).squeeze(1)
    if pos.numel() == 0:
        return loss_cls, box_deltas.sum() * 0
    per_class = box_deltas.view(len(box_deltas), -1, 4)
    if per_class.shape[1] == 2:  # class-agnostic regression: the foreground slot
        pred = per_class[pos, 1]
    else:
        pred = per_class[pos, rois.labels[pos]]
    loss_box = F.smooth_l1_loss(pred, rois.regression[pos], beta=cfg.roi_beta, reduction="sum") / rois.labels.numel()
    return loss_cls, loss_box


def attribute_loss(attr_logits: torch.Tensor, attributes: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against each ground-truth attribute (``attributes [P, k]``, 0 = padding), 1/k per box."""
    valid = attributes > 0
    counts = valid.sum(1)
    keep = counts > 0
    if not keep.any():
        return attr_logits.sum() * 0
    logp = F.log_softmax(attr_logits[keep], dim=1)
    a, v, c = attributes[keep], valid[keep], counts[keep]
    picked = logp.gather(1, a) * v
    return -(picked.sum(1) / c).mean()
