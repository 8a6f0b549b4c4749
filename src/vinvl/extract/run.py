"""The extraction loop: detect in batches and stream rows to predictions.tsv and features.tsv."""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence, Union

from tqdm import tqdm

from ..detection import Detector
from ..features import format_features_row
from ..tsv import TSVWriter
from .sources import ImageItem

NATIVE_SUBSET = ("rect", "class", "conf", "feature", "attr_labels", "attr_scores")


@dataclass
class ExtractStats:
    """What a run did."""

    images: int
    boxes: int
    seconds: float


def extract(
    items: Sequence[ImageItem],
    detector: Detector,
    out_dir: Union[str, os.PathLike],
    *,
    subset: Sequence[str] = NATIVE_SUBSET,
    image_size_in_rows: bool = True,
    quiet: bool = False,
) -> ExtractStats:
    """Run ``detector`` over ``items`` in input order, writing ``predictions.tsv`` (``subset`` keys) and
    ``features.tsv`` (Oscar's 2054-d rows) with their indexes into ``out_dir``; both appear only on success."""
    out = Path(out_dir)
    cfg = detector.config
    # Padded batches are consecutive images (the original's meaning); same-size batching may
    # regroup within a window of a few batches without changing any image's result.
    window = cfg.batch_size if cfg.batching == "padded" else cfg.batch_size * 4
    t0 = time.perf_counter()
    boxes = 0
    bar = tqdm(total=len(items), unit="img", disable=quiet, file=sys.stderr, mininterval=1.0)
    with TSVWriter(out / "predictions.tsv", columns=2) as pw, TSVWriter(out / "features.tsv", columns=3) as fw:
        for start in range(0, len(items), window):
            chunk = items[start : start + window]
            for item, det in zip(chunk, detector([it.path for it in chunk])):
                pw.write(det.to_prediction(item.key, image_size_in_rows).to_row(subset))
                fw.write(format_features_row(item.key, det.region_features(), dim=det.features.shape[1] + 6))
                boxes += len(det)
            bar.update(len(chunk))
    bar.close()
    return ExtractStats(len(items), boxes, time.perf_counter() - t0)
