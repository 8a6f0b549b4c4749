"""Test-time preprocessing exactly as the original: PIL resize, BGR x255, mean subtraction, padding."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from ..config import InputConfig


def target_size(width: int, height: int, min_size: int, max_size: int) -> tuple[int, int]:
    """``(out_h, out_w)`` of maskrcnn-benchmark's test resize: short side ``min_size`` unless the long
    side would pass ``max_size``; the long side is truncated, not rounded.

    An image so elongated that the rule gives a short side of 0 pixels (the original fails on it, e.g.
    1 x 3000 at 600/1000) is clamped: short side 1 pixel, long side ``max_size``."""
    size = min_size
    lo, hi = float(min(width, height)), float(max(width, height))
    if hi / lo * size > max_size:
        size = int(round(max_size * lo / hi))
        if size < 1:
            return (max_size, 1) if height > width else (1, max_size)
    if (width <= height and width == size) or (height <= width and height == size):
        return height, width
    if width < height:
        return int(size * height / width), size
    return size, int(size * width / height)


def to_input_tensor(image: Image.Image, cfg: InputConfig) -> torch.Tensor:
    """Resize with PIL (antialiased bilinear), then ``[3, h, w]`` float32 BGR x255 minus the pixel mean."""
    oh, ow = target_size(image.width, image.height, cfg.min_size, cfg.max_size)
    if (ow, oh) != image.size:
        image = image.resize((ow, oh), Image.BILINEAR)
    x = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).contiguous()
    x = x.to(torch.float32).div(255)
    if cfg.to_bgr255:
        x = x[[2, 1, 0]] * 255
    mean = torch.tensor(cfg.pixel_mean, dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(cfg.pixel_std, dtype=torch.float32).view(3, 1, 1)
    return (x - mean) / std


def pad_batch(tensors: list[torch.Tensor], pin: bool = False) -> torch.Tensor:
    """Zero-pad ``[3, h, w]`` tensors at the bottom/right to the largest size and stack them (in pinned
    memory with ``pin``, for an asynchronous copy to the GPU)."""
    h = max(t.shape[1] for t in tensors)
    w = max(t.shape[2] for t in tensors)
    out = tensors[0].new_zeros((len(tensors), 3, h, w), pin_memory=pin)
    for i, t in enumerate(tensors):
        out[i, :, : t.shape[1], : t.shape[2]].copy_(t)
    return out
