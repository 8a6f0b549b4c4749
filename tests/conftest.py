"""Shared fixtures: synthetic rows and the reference outputs in ../shared beside the repo."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from vinvl.features import Prediction

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("VINVL_SHARED", REPO.parent / "shared"))


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """../shared (the spec and the original's reference outputs); CI always has it."""
    if not (SHARED / "reference").is_dir():
        pytest.skip(f"reference data not found at {SHARED} (set VINVL_SHARED)")
    return SHARED


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


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    """Tests that pin torch's thread count must not change it for the tests after them: results that are
    byte-compared with the reference depend on it."""
    import torch

    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


def pytest_configure(config: pytest.Config) -> None:
    # tests/detection/reference.py is imported by name from the detection tests
    import sys

    sys.path.insert(0, str(REPO / "tests" / "detection"))
