"""Single-level region proposal network: head, anchors, proposal selection and its training loss."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import nms

from ..config import RPNConfig, TrainConfig
from .anchors import AnchorGenerator
from .box_coder import BoxCoder, box_sizes, clip_boxes
from .losses import rpn_loss


class RPNHead(nn.Module):
    """3x3 conv + ReLU, then 1x1 objectness (A channels) and 1x1 deltas (4A, anchor-major)."""

    def __init__(self, in_channels: int, num_anchors: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, in_channels, 3, padding=1)
        self.cls_logits = nn.Conv2d(in_channels, num_anchors, 1)
        self.bbox_pred = nn.Conv2d(in_channels, num_anchors * 4, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = F.relu(self.conv(x))
        return self.cls_logits(t), self.bbox_pred(t)


def flatten_head_output(x: torch.Tensor, channels: int) -> torch.Tensor:
    """``[N, A*C, H, W] -> [N, H*W*A, C]``: the (y, x, anchor) order of the grid anchors."""
    n, _, h, w = x.shape
    x = x.contiguous().float()  # channels-last or reduced-precision head outputs: select in fp32, NCHW order
    return x.view(n, -1, channels, h, w).permute(0, 3, 4, 1, 2).reshape(n, -1, channels)


class RPN(nn.Module):
    """Proposals per image: top-k objectness, decode, clip, drop small, NMS, keep the best."""

    def __init__(self, cfg: RPNConfig, in_channels: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.anchor_generator = AnchorGenerator(cfg.anchor_sizes, cfg.aspect_ratios, cfg.anchor_stride)
        self.head = RPNHead(in_channels, cfg.num_anchors)
        self.box_coder = BoxCoder((1.0, 1.0, 1.0, 1.0))

    def forward(
        self, features: torch.Tensor, image_sizes: list[tuple[int, int]]
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """``(boxes [K, 4], objectness [K])`` per image, in NMS keep order (descending objectness)."""
        objectness, deltas = self.head(features)
        return self.select(objectness, deltas, image_sizes)

    def loss(
        self,
        objectness: torch.Tensor,
        deltas: torch.Tensor,
        gt_boxes: list[torch.Tensor],
        image_sizes: list[tuple[int, int]],
        cfg: TrainConfig,
        generator: Optional[torch.Generator] = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(objectness loss, box loss)`` of the head's outputs against each image's ground-truth boxes."""
        n, _, h, w = objectness.shape
        anchors = self.anchor_generator.grid_anchors(h, w)
        obj_flat = flatten_head_output(objectness, 1).view(n, -1)
        return rpn_loss(obj_flat, flatten_head_output(deltas, 4), anchors, gt_boxes, image_sizes, cfg, generator)

    def select(
        self,
        objectness: torch.Tensor,
        deltas: torch.Tensor,
        image_sizes: list[tuple[int, int]],
        pre_nms_top_n: Optional[int] = None,
        post_nms_top_n: Optional[int] = None,
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Proposals from the head's outputs ``[N, A, H, W]`` / ``[N, 4A, H, W]`` (training passes its own top-n)."""
        n, _, h, w = objectness.shape
        anchors = self.anchor_generator.grid_anchors(h, w)
        scores = flatten_head_output(objectness, 1).view(n, -1).sigmoid()
        deltas = flatten_head_output(deltas, 4)
        k = min(pre_nms_top_n or self.cfg.pre_nms_top_n, scores.shape[1])
        post = post_nms_top_n or self.cfg.post_nms_top_n
        scores, idx = scores.topk(k, dim=1, sorted=True)
        out = []
        for i, (height, width) in enumerate(image_sizes):
            boxes = self.box_coder.decode(deltas[i, idx[i]], anchors[idx[i]])
            boxes = clip_boxes(boxes, height, width)
            s = scores[i]
            if self.cfg.min_box_size > 0:
                ws, hs = box_sizes(boxes)
                small = ((ws >= self.cfg.min_box_size) & (hs >= self.cfg.min_box_size)).nonzero().squeeze(1)
                boxes, s = boxes[small], s[small]
            keep = nms(boxes, s, self.cfg.nms_thresh)[:post]
            out.append((boxes[keep], s[keep]))
        return out
