"""Regenerate the tiny example files README uses (synthetic features, 2 images): python examples/make_examples.py"""

from pathlib import Path

import numpy as np

from vinvl.features import Prediction, format_hw_row
from vinvl.tsv import write_tsv

HERE = Path(__file__).resolve().parent
rng = np.random.default_rng(0)
images = {"COCO_val2014_000000391895": (360, 640), "COCO_val2014_000000060623": (427, 640)}
rows, hw = [], []
for key, (h, w) in images.items():
    boxes = np.array([[12.5, 30.0, 300.25, 340.0], [320.0, 15.0, 630.0, 200.5], [100.0, 200.0, 420.0, 355.0]], np.float32)
    pred = Prediction(
        key=key,
        boxes=boxes,
        classes=["man", "motorcycle", "road"],
        scores=np.array([0.93, 0.88, 0.41], np.float32),
        features=np.maximum(rng.standard_normal((3, 2048)), 0).astype(np.float32),
    )
    rows.append(pred.to_row())  # the original's layout: no image size, so hw.tsv is needed
    hw.append(format_hw_row(key, h, w))
write_tsv(HERE / "predictions.tsv", rows)
write_tsv(HERE / "hw.tsv", hw)

# Three synthetic shapes photos for the README's demo (`vinvl extract examples/images`): JPEG keeps them small.
from vinvl.datasets.shapes import generate_image  # noqa: E402

(HERE / "images").mkdir(exist_ok=True)
for i, name in enumerate(("shapes_a", "shapes_b", "shapes_c")):
    image, _ = generate_image(7, i)
    image.save(HERE / "images" / f"{name}.jpg", quality=92)
