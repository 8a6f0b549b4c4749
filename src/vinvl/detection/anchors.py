"""Legacy Detectron anchors: 15 cell anchors (ratio-major) shifted over the stride-16 grid."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import nn


def generate_cell_anchors(stride: int, sizes: Sequence[float], aspect_ratios: Sequence[float]) -> torch.Tensor:
    """The cell anchors of Detectron's ``generate_anchors``: base box ``[0, 0, stride-1, stride-1]``,
    rounded widths/heights per ratio, then scaled; ratio-major order, float32 ``[R*S, 4]``."""
    base = np.array([1, 1, stride, stride], dtype=np.float64) - 1
    scales = np.array(sizes, dtype=np.float64) / stride
    ratios = np.array(aspect_ratios, dtype=np.float64)

    def whctr(a: np.ndarray) -> tuple[float, float, float, float]:
        w, h = a[2] - a[0] + 1, a[3] - a[1] + 1
        return w, h, a[0] + 0.5 * (w - 1), a[1] + 0.5 * (h - 1)

    def make(ws: np.ndarray, hs: np.ndarray, cx: float, cy: float) -> np.ndarray:
        ws, hs = ws[:, None], hs[:, None]
        return np.hstack((cx - 0.5 * (ws - 1), cy - 0.5 * (hs - 1), cx + 0.5 * (ws - 1), cy + 0.5 * (hs - 1)))

    w, h, cx, cy = whctr(base)
    ws = np.round(np.sqrt(w * h / ratios))
    by_ratio = make(ws, np.round(ws * ratios), cx, cy)
    out = []
    for a in by_ratio:
        w, h, cx, cy = whctr(a)
        out.append(make(w * scales, h * scales, cx, cy))
    return torch.from_numpy(np.vstack(out)).to(torch.float32)


class BufferList(nn.Module):
    """Buffers addressed as ``name.0``, ``name.1``... (the checkpoint's ``cell_anchors.0``)."""

    def __init__(self, buffers: Sequence[torch.Tensor]) -> None:
        super().__init__()
        for i, b in enumerate(buffers):
            self.register_buffer(str(i), b)

    def __getitem__(self, i: int) -> torch.Tensor:
        return getattr(self, str(i))


class AnchorGenerator(nn.Module):
    """Anchors for one feature level, in (y, x, anchor) order to match the flattened head outputs."""

    def __init__(self, sizes: Sequence[float], aspect_ratios: Sequence[float], stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.cell_anchors = BufferList([generate_cell_anchors(stride, sizes, aspect_ratios)])

    @property
    def num_anchors(self) -> int:
        """Anchors per cell."""
        return len(self.cell_anchors[0])

    def grid_anchors(self, height: int, width: int) -> torch.Tensor:
        """All anchors over an ``height x width`` feature map: ``[height * width * A, 4]``."""
        base = self.cell_anchors[0]
        device = base.device
        shifts_x = torch.arange(0, width * self.stride, step=self.stride, dtype=torch.float32, device=device)
        shifts_y = torch.arange(0, height * self.stride, step=self.stride, dtype=torch.float32, device=device)
        shift_y, shift_x = torch.meshgrid(shifts_y, shifts_x, indexing="ij")
        shift_x, shift_y = shift_x.reshape(-1), shift_y.reshape(-1)
        shifts = torch.stack((shift_x, shift_y, shift_x, shift_y), dim=1)
        return (shifts.view(-1, 1, 4) + base.view(1, -1, 4)).reshape(-1, 4)
