"""Test-time ROI post-processing: the original's NMS_FILTER 0/1/2 semantics, each in one function.

Every filter works on one image: ``probs [R, C]`` (softmax over classes, 0 = background) and
``class_boxes [R, C, 4]`` (per-class boxes in resized-image pixels: the decoded, clipped
regression, or the proposal repeated when regression is ignored). They return which proposal
rows are kept, with labels, scores and the output box of each detection.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from torchvision.ops import nms

from ..config import PostprocessConfig

_NMS_CHUNK_ELEMS = 1 << 24  # bound the [classes, R, R] IoU block of the vectorised NMS


@dataclass
class Selection:
    """The detections of one image: proposal row, label, score and output box of each."""

    rows: torch.Tensor
    labels: torch.Tensor
    scores: torch.Tensor
    boxes: torch.Tensor


def pairwise_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of every box of ``a [..., N, 4]`` with every box of ``b [..., M, 4]``, with torchvision NMS's exact
    float operations (areas without +1, ``inter / (area_a + area_b - inter)``)."""
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    lt_x = torch.maximum(a[..., :, None, 0], b[..., None, :, 0])
    lt_y = torch.maximum(a[..., :, None, 1], b[..., None, :, 1])
    rb_x = torch.minimum(a[..., :, None, 2], b[..., None, :, 2])
    rb_y = torch.minimum(a[..., :, None, 3], b[..., None, :, 3])
    inter = (rb_x - lt_x).clamp(min=0) * (rb_y - lt_y).clamp(min=0)
    return inter / (area_a[..., :, None] + area_b[..., None, :] - inter)


def per_class_nms_mask(
    boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float, parallel: Optional[bool] = None
) -> torch.Tensor:
    """Which rows survive a separate greedy NMS in every column, all columns at once.

    ``boxes`` is ``[R, 4]`` (shared by all classes) or ``[R, K, 4]``; ``scores`` is ``[R, K]``.
    Equal to calling torchvision's ``nms`` once per column (stable descending order,
    suppression when IoU > threshold compared in double), without K separate calls.
    ``parallel`` (default: on CUDA) solves it as a fixed point in a few batched steps instead of
    R sequential ones (the same result; far fewer kernel launches, more arithmetic).
    """
    if parallel if parallel is not None else scores.is_cuda:
        return _nms_mask_fixed_point(boxes, scores, iou_threshold)
    r, k = scores.shape
    keep = np.zeros((k, r), dtype=bool)
    if r == 0 or k == 0:
        return torch.from_numpy(keep.T.copy()).to(scores.device)
    order = torch.sort(scores, dim=0, descending=True, stable=True).indices.T.contiguous().cpu().numpy()  # [K, R]
    shared = boxes.dim() == 2
    if shared:
        over_all = _pack_bits((pairwise_iou(boxes, boxes).double() > iou_threshold).cpu().numpy())  # [R, W]
    step = max(1, _NMS_CHUNK_ELEMS // (r * r)) if not shared else k
    for c0 in range(0, k, step):
        c1 = min(k, c0 + step)
        if shared:
            over = over_all
        else:
            cb = boxes[:, c0:c1].transpose(0, 1)  # [n, R, 4]
            over = _pack_bits((pairwise_iou(cb, cb).double() > iou_threshold).cpu().numpy())  # [n, R, W]
        keep[c0:c1] = _greedy_sweep(order[c0:c1], over, shared)
    return torch.from_numpy(keep.T.copy()).to(scores.device)


def _pack_bits(mask: np.ndarray) -> np.ndarray:
    """``[..., R]`` booleans as ``[..., ceil(R / 64)]`` uint64 words (bit ``i % 64`` of word ``i // 64``)."""
    packed = np.packbits(mask, axis=-1, bitorder="little")
    pad = (-packed.shape[-1]) % 8
    if pad:
        packed = np.concatenate([packed, np.zeros((*packed.shape[:-1], pad), np.uint8)], axis=-1)
    return np.ascontiguousarray(packed).view("<u8")


def _greedy_sweep(order: np.ndarray, over: np.ndarray, shared: bool) -> np.ndarray:
    """Greedy NMS of every class at once: rank by rank, a row is kept unless a kept row suppressed it. The
    suppressed sets are 64-bit words (n x W words a step instead of n x R booleans), and the sweep runs in
    numpy: its ~1500 small operations would each wake torch's thread pool, which costs more than the work
    (and far more when other processes share the cores)."""
    n, r = order.shape
    suppressed = np.zeros((n, over.shape[-1]), dtype=np.uint64)
    kept = np.zeros((n, r), dtype=bool)
    cls = np.arange(n)
    for t in range(r):
        idx = order[:, t]
        alive = (suppressed[cls, idx >> 6] >> (idx & 63).astype(np.uint64)) & np.uint64(1) == 0
        kept[cls, idx] = alive
        rows = over[idx] if shared else over[cls, idx]  # [n, W]
        suppressed |= np.where(alive[:, None], rows, np.uint64(0))
    return kept


def _nms_mask_fixed_point(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy NMS per column as the fixed point of ``keep[i] = not any(keep[j] and j suppresses i)`` over
    the rows ``j`` ranked before ``i``: iterated from all-kept, the first ``t`` ranks are final after ``t``
    steps and the fixed point is unique, so stopping when nothing changes gives exactly greedy NMS."""
    r, k = scores.shape
    keep = torch.ones((k, r), dtype=torch.bool, device=scores.device)
    if r == 0 or k == 0:
        return keep.T
    order = torch.sort(scores, dim=0, descending=True, stable=True).indices  # [R, K]
    rank = torch.empty_like(order)
    rank.scatter_(0, order, torch.arange(r, device=scores.device)[:, None].expand(r, k).contiguous())
    rank = rank.T  # [K, R]
    shared = boxes.dim() == 2
    if shared:
        over_all = pairwise_iou(boxes, boxes).double() > iou_threshold
    step = max(1, _NMS_CHUNK_ELEMS // (r * r))
    # 0/1 counts up to R are exact in float16; float32 on CPU (no fast half matmul there)
    acc = torch.float16 if scores.is_cuda else torch.float32
    for c0 in range(0, k, step):
        c1 = min(k, c0 + step)
        if shared:
            over = over_all[None]
        else:
            cb = boxes[:, c0:c1].transpose(0, 1)
            over = pairwise_iou(cb, cb).double() > iou_threshold  # [n, R(j), R(i)]
        rk = rank[c0:c1]
        sup = (over & (rk[:, :, None] < rk[:, None, :])).to(acc)  # j ranked before i and overlapping
        kc = torch.ones((c1 - c0, 1, r), dtype=acc, device=scores.device)
        for _ in range(r + 1):
            new = (torch.bmm(kc, sup) == 0).to(acc)
            if torch.equal(new, kc):
                break
            kc = new
        keep[c0:c1] = kc[:, 0].bool()
    return keep.T


def _clamp_count(n: int, available: int, cfg: PostprocessConfig) -> int:
    """At least ``min_detections_per_img`` (when available) and at most ``detections_per_img``."""
    return min(max(n, min(cfg.min_detections_per_img, available)), cfg.detections_per_img, available)


def filter_bottom_up(probs: torch.Tensor, class_boxes: torch.Tensor, shared: Optional[torch.Tensor], cfg: PostprocessConfig) -> Selection:
    """NMS_FILTER 1: per-class NMS (IoU 0.3) over all proposals for every foreground class; each proposal
    keeps its best surviving class; sorted by score; >= threshold, but 10..100 detections."""
    fg_boxes = shared if shared is not None else class_boxes[:, 1:]
    mask = torch.zeros_like(probs, dtype=torch.bool)
    mask[:, 1:] = per_class_nms_mask(fg_boxes, probs[:, 1:], cfg.filter1_nms_thresh)
    best, labels = (probs * mask.to(probs.dtype)).max(dim=1)
    rows = best.nonzero().squeeze(1)
    best, labels = best[rows], labels[rows]
    # torch.sort's default (unstable) order over the non-zero subset is the original's tie order.
    values, order = torch.sort(best, dim=0, descending=True)
    n = _clamp_count(int((values >= cfg.score_thresh).sum()), len(values), cfg)
    order = order[:n]
    rows, labels = rows[order], labels[order]
    return Selection(rows, labels, best[order], class_boxes[rows, labels])


def _filter_per_class(probs: torch.Tensor, class_boxes: torch.Tensor, cfg: PostprocessConfig, thresh: float) -> Selection:
    rows, labels, scores = [], [], []
    candidates = (probs[:, 1:] > thresh).any(dim=0).nonzero().squeeze(1) + 1
    for j in candidates.tolist():
        inds = (probs[:, j] > thresh).nonzero().squeeze(1)
        keep = nms(class_boxes[inds, j], probs[inds, j], cfg.nms_thresh)
        rows.append(inds[keep])
        labels.append(torch.full((len(keep),), j, dtype=torch.long, device=probs.device))
        scores.append(probs[inds[keep], j])
    if not rows:
        empty = torch.zeros(0, dtype=torch.long, device=probs.device)
        return Selection(empty, empty, probs.new_zeros(0), probs.new_zeros((0, 4)))
    r, lab, s = torch.cat(rows), torch.cat(labels), torch.cat(scores)
    n = len(s)
    if n > cfg.detections_per_img > 0:
        kth, _ = torch.kthvalue(s.cpu(), n - cfg.detections_per_img + 1)
        keep = (s >= kth.item()).nonzero().squeeze(1)
        r, lab, s = r[keep], lab[keep], s[keep]
    return Selection(r, lab, s, class_boxes[r, lab])


def filter_per_class(probs: torch.Tensor, class_boxes: torch.Tensor, cfg: PostprocessConfig) -> Selection:
    """NMS_FILTER 0: per class (ascending), scores > threshold, NMS 0.5, concatenated; capped at the
    k-th score; with fewer than the minimum, the threshold is halved and the filter rerun (10 times at most)."""
    thresh = cfg.score_thresh
    sel = _filter_per_class(probs, class_boxes, cfg, thresh)
    for _ in range(10):
        if len(sel.rows) >= cfg.min_detections_per_img:
            break
        thresh /= 2
        sel = _filter_per_class(probs, class_boxes, cfg, thresh)
    return sel


def filter_class_agnostic(
    probs: torch.Tensor, class_boxes: torch.Tensor, proposals: torch.Tensor, cfg: PostprocessConfig
) -> Selection:
    """NMS_FILTER 2: best foreground class per proposal, one class-agnostic NMS 0.5 on the proposal
    (regression ignored) or the mean of all classes' boxes; keep 10..100 by the threshold."""
    scores, labels = probs[:, 1:].max(dim=1)
    labels = labels + 1
    nms_boxes = proposals if cfg.ignore_box_regression else class_boxes.mean(dim=1)
    cand = (scores > 0.01 * cfg.score_thresh).nonzero().squeeze(1)
    keep = cand[nms(nms_boxes[cand], scores[cand], cfg.nms_thresh)]
    n = _clamp_count(int((scores[keep] >= cfg.score_thresh).sum()), len(keep), cfg)
    rows = keep[:n]
    if cfg.nms_filter2_original_boxes and not cfg.ignore_box_regression:
        boxes = class_boxes.reshape(-1, 4)[rows]  # the original's indexing bug, kept as an opt-in
    else:
        boxes = nms_boxes[rows]
    return Selection(rows, labels[rows], scores[rows], boxes)


def keep_every_box(probs: torch.Tensor, boxes: torch.Tensor) -> Selection:
    """The original's ROI_BOX_HEAD.FORCE_BOXES: every box kept in its order (no threshold, NMS or count limit),
    labelled with its best non-background class and that probability; ``boxes`` are the clipped proposals."""
    scores, labels = torch.max(probs[:, 1:], dim=1)
    return Selection(torch.arange(len(probs), device=probs.device), labels + 1, scores, boxes)


def select_detections(
    probs: torch.Tensor, class_boxes: torch.Tensor, proposals: torch.Tensor, cfg: PostprocessConfig
) -> Selection:
    """Apply the configured NMS_FILTER to one image."""
    if cfg.nms_filter == 1:
        return filter_bottom_up(probs, class_boxes, proposals if cfg.ignore_box_regression else None, cfg)
    if cfg.nms_filter == 0:
        return filter_per_class(probs, class_boxes, cfg)
    return filter_class_agnostic(probs, class_boxes, proposals, cfg)
