"""Synthetic detector rows for the format tests."""

from __future__ import annotations

import numpy as np

from vinvl.features import Prediction


def make_prediction(rng: np.random.Generator, key: str, n: int, *, attrs: bool = True, size: bool = True) -> Prediction:
    """A random but realistic detector row with ``n`` boxes inside a random image."""
    h, w = int(rng.integers(50, 900)), int(rng.integers(50, 900))
    xy = rng.uniform(0, [w - 1, h - 1], size=(n, 2))
    wh = rng.uniform(1, 200, size=(n, 2))
    boxes = np.concatenate([xy, np.minimum(xy + wh, [w - 1, h - 1])], axis=1).astype(np.float32)
    na = rng.integers(0, 4, n)
    return Prediction(
        key=key,
        boxes=boxes,
        classes=[f"class{int(c):04d}" for c in rng.integers(1, 1595, n)],
        scores=rng.uniform(0.2, 1, n).astype(np.float32),
        features=np.maximum(rng.standard_normal((n, 2048)), 0).astype(np.float32),
        attributes=[[f"attr{int(a):03d}" for a in rng.integers(1, 525, k)] for k in na] if attrs else None,
        attr_scores=[rng.uniform(0.05, 1, k).astype(np.float32).tolist() for k in na] if attrs else None,
        image_h=h if size else None,
        image_w=w if size else None,
    )
