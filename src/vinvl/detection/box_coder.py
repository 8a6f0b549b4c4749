"""Box coding in the legacy Detectron "+1" convention, and clipping; the one place for that rule."""

from __future__ import annotations

import math

import torch

# Pixel boxes are inclusive: a box from x1 to x2 is x2 - x1 + 1 pixels wide.
TO_REMOVE = 1.0
DEFAULT_XFORM_CLIP = math.log(1000.0 / 16)


class BoxCoder:
    """Encodes/decodes box deltas ``(dx, dy, dw, dh)`` against reference boxes, as the original does."""

    def __init__(self, weights: tuple[float, float, float, float], bbox_xform_clip: float = DEFAULT_XFORM_CLIP) -> None:
        """``weights`` divide the deltas (RPN: 1,1,1,1; box head: 10,10,5,5)."""
        self.weights = tuple(float(w) for w in weights)
        self.bbox_xform_clip = bbox_xform_clip

    def encode(self, reference_boxes: torch.Tensor, proposals: torch.Tensor) -> torch.Tensor:
        """Deltas that take ``proposals`` onto ``reference_boxes`` (both ``[N, 4]`` xyxy)."""
        ex_w = proposals[:, 2] - proposals[:, 0] + TO_REMOVE
        ex_h = proposals[:, 3] - proposals[:, 1] + TO_REMOVE
        ex_cx = proposals[:, 0] + 0.5 * ex_w
        ex_cy = proposals[:, 1] + 0.5 * ex_h
        gt_w = reference_boxes[:, 2] - reference_boxes[:, 0] + TO_REMOVE
        gt_h = reference_boxes[:, 3] - reference_boxes[:, 1] + TO_REMOVE
        gt_cx = reference_boxes[:, 0] + 0.5 * gt_w
        gt_cy = reference_boxes[:, 1] + 0.5 * gt_h
        wx, wy, ww, wh = self.weights
        return torch.stack(
            (
                wx * (gt_cx - ex_cx) / ex_w,
                wy * (gt_cy - ex_cy) / ex_h,
                ww * torch.log(gt_w / ex_w),
                wh * torch.log(gt_h / ex_h),
            ),
            dim=1,
        )

    def decode(self, rel_codes: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """Apply ``rel_codes`` ``[N, 4k]`` (k boxes per row, e.g. one per class) to ``boxes`` ``[N, 4]``."""
        boxes = boxes.to(rel_codes.dtype)
        widths = boxes[:, 2] - boxes[:, 0] + TO_REMOVE
        heights = boxes[:, 3] - boxes[:, 1] + TO_REMOVE
        ctr_x = boxes[:, 0] + 0.5 * widths
        ctr_y = boxes[:, 1] + 0.5 * heights
        wx, wy, ww, wh = self.weights
        dx = rel_codes[:, 0::4] / wx
        dy = rel_codes[:, 1::4] / wy
        dw = torch.clamp(rel_codes[:, 2::4] / ww, max=self.bbox_xform_clip)
        dh = torch.clamp(rel_codes[:, 3::4] / wh, max=self.bbox_xform_clip)
        pred_ctr_x = dx * widths[:, None] + ctr_x[:, None]
        pred_ctr_y = dy * heights[:, None] + ctr_y[:, None]
        pred_w = torch.exp(dw) * widths[:, None]
        pred_h = torch.exp(dh) * heights[:, None]
        pred = torch.zeros_like(rel_codes)
        pred[:, 0::4] = pred_ctr_x - 0.5 * pred_w
        pred[:, 1::4] = pred_ctr_y - 0.5 * pred_h
        pred[:, 2::4] = pred_ctr_x + 0.5 * pred_w - 1
        pred[:, 3::4] = pred_ctr_y + 0.5 * pred_h - 1
        return pred


def clip_boxes(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Clip ``[..., 4k]`` xyxy boxes to ``[0, width-1] x [0, height-1]`` (inclusive pixels)."""
    out = boxes.clone()
    out[..., 0::4] = out[..., 0::4].clamp(min=0, max=width - TO_REMOVE)
    out[..., 1::4] = out[..., 1::4].clamp(min=0, max=height - TO_REMOVE)
    out[..., 2::4] = out[..., 2::4].clamp(min=0, max=width - TO_REMOVE)
    out[..., 3::4] = out[..., 3::4].clamp(min=0, max=height - TO_REMOVE)
    return out


def box_sizes(boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Inclusive widths and heights of ``[N, 4]`` xyxy boxes."""
    return boxes[:, 2] - boxes[:, 0] + TO_REMOVE, boxes[:, 3] - boxes[:, 1] + TO_REMOVE


def scale_boxes(boxes: torch.Tensor, from_hw: tuple[int, int], to_hw: tuple[int, int]) -> torch.Tensor:
    """Map boxes from a resized image back to the original: one float32 multiply by ratios taken in double."""
    ratio_w = float(to_hw[1]) / float(from_hw[1])
    ratio_h = float(to_hw[0]) / float(from_hw[0])
    scale = torch.tensor([ratio_w, ratio_h, ratio_w, ratio_h], dtype=boxes.dtype, device=boxes.device)
    return boxes * scale
