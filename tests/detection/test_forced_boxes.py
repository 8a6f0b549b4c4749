"""Given boxes (the original's FORCE_BOXES) in the library: the semantics on the tiny model (order, duplicates,
outside, degenerate and whole-image boxes, zero boxes, batching, the two force flags apart), and the ORIGINAL's
outputs in ../shared/reference/detector/forced_boxes reproduced by the full X152-C4."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.detection.reference import reference_checkpoint
from tests.detection.test_reference import cosine_rows
from vinvl.detection import Detector
from vinvl.detection.detector import given_boxes_to_proposals


@pytest.fixture(scope="module")
def det(tiny: Path) -> Detector:
    return Detector.from_checkpoint(tiny / "tiny.pth", preset="tiny", labelmap=tiny / "labelmap.json",
                                    output_scores_all=True)


@pytest.fixture(scope="module")
def image() -> Image.Image:
    return Image.fromarray(np.random.default_rng(3).integers(0, 255, (150, 200, 3), dtype=np.uint8))


def test_every_box_in_order_with_its_best_class(det: Detector, image: Image.Image) -> None:
    boxes = np.float32([[10, 20, 120, 90], [0, 0, 199, 149], [50.5, 60.25, 51.5, 61.25], [30, 30, 30, 80],
                        [10, 20, 120, 90], [150, 100, 260, 170], [-40, -5, 20, 40]])
    d = det(image, boxes=boxes)
    assert len(d) == len(boxes) and d.features.shape == (len(boxes), det.feature_dim)
    # duplicates give bit-identical results; order is the given order
    assert np.array_equal(d.features[0], d.features[4]) and d.labels[0] == d.labels[4] and d.scores[0] == d.scores[4]
    # label = best non-background class, score = its probability (scores_all: the softmax row, background included)
    assert np.array_equal(d.labels, d.scores_all[:, 1:].argmax(1) + 1)
    assert np.array_equal(d.scores, d.scores_all[np.arange(len(d)), d.labels])
    # boxes come back clipped to the image, in original pixels and again in resized pixels (so a border coordinate
    # moves: the original's quirk), and otherwise as given up to the resize round trip
    (h, w), (H, W) = d.resized_hw, d.image_hw
    r = np.float32([w / W, h / H, w / W, h / H])
    want = np.clip(np.clip(boxes, 0, [W - 1, H - 1, W - 1, H - 1]) * r, 0, [w - 1, h - 1, w - 1, h - 1]) / r
    np.testing.assert_allclose(d.boxes, want, atol=1e-3)
    assert (w, h) != (W, H) and d.boxes[1, 2] < W - 1.4  # the whole-image box's x2 came back moved
    reversed_ = det(image, boxes=boxes[::-1].copy())
    assert np.array_equal(reversed_.features, d.features[::-1]) and np.array_equal(reversed_.labels, d.labels[::-1])


def test_boxes_all_of_given_boxes_is_the_clipped_resized_box(tiny: Path, image: Image.Image) -> None:
    """The original's `boxes_all` field for forced boxes: one [1, 4] box per row, in resized pixels (not scaled back)."""
    det = Detector.from_checkpoint(tiny / "tiny.pth", preset="tiny", output_boxes_all=True)
    boxes = np.float32([[10, 20, 120, 90], [150, -30, 260, 170]])
    ((raw, rhw, ohw),) = det.detect_raw([image], boxes=[boxes])
    d = det.finish(raw, rhw, ohw)
    assert d.boxes_all.shape == (2, 1, 4) and np.array_equal(d.boxes_all[:, 0], raw.boxes.numpy())
    assert (d.boxes_all[:, 0, 2] <= rhw[1] - 1).all() and d.attr_scores_all.shape == (2, det.config.attributes.num_attributes)


def test_an_outside_box_is_its_clipped_box(det: Detector, image: Image.Image) -> None:
    outside = det(image, boxes=np.float32([[150, -30, 260, 170]]))
    clipped = det(image, boxes=np.float32([[150, 0, 199, 149]]))
    assert np.array_equal(outside.features, clipped.features) and np.array_equal(outside.boxes, clipped.boxes)


def test_proposals_as_the_original_loader_makes_them() -> None:
    """Clipped in original pixels (nothing dropped), then one float32 multiply by the resize ratio."""
    p = given_boxes_to_proposals([[-3, 5, 700, 479], [639, 479, 639, 479]], (480, 640), (320, 426))
    assert p.dtype == torch.float32
    ratio = torch.tensor([426 / 640, 320 / 480, 426 / 640, 320 / 480], dtype=torch.float32)
    assert torch.equal(p, torch.tensor([[0, 5, 639, 479], [639, 479, 639, 479]], dtype=torch.float32) * ratio)


def test_zero_boxes_and_batches(det: Detector, image: Image.Image, tiny: Path) -> None:
    empty = det(image, boxes=np.zeros((0, 4), np.float32))
    assert len(empty) == 0 and empty.features.shape == (0, det.feature_dim) and empty.attr_names == []
    other = Image.open(sorted((tiny / "imgs").glob("*.jpg"))[1])
    lists = [np.float32([[5, 5, 60, 60]]), np.zeros((0, 4), np.float32), np.float32([[1, 2, 3, 4], [10, 10, 90, 80]])]
    together = det([image, other, image], batch_size=3, boxes=lists)
    for img, b, got in zip([image, other, image], lists, together):
        alone = det(img, boxes=b)
        assert len(got) == len(b) and np.array_equal(got.labels, alone.labels)
        np.testing.assert_allclose(got.features, alone.features, rtol=1e-5, atol=1e-6)


def test_the_two_force_flags_apart(det: Detector, image: Image.Image) -> None:
    """RPN.FORCE_BOXES alone with the RPN's own proposals IS the normal detector; ROI_BOX_HEAD.FORCE_BOXES alone keeps
    every RPN proposal unfiltered."""
    x, hw = det.prepare(image)
    sizes = [tuple(x.shape[1:])]
    model = det.model
    with torch.no_grad():
        normal, _ = model(x[None].contiguous(memory_format=torch.channels_last), sizes)
        proposals = model.rpn(model.backbone(x[None].contiguous(memory_format=torch.channels_last)), sizes)[0][0]
    saved = model.cfg
    try:
        model.cfg = saved.replace(force_boxes="off")
        given, _ = model(x[None].contiguous(memory_format=torch.channels_last), sizes, boxes=[proposals])
        model.cfg = saved.replace(force_boxes="on")
        kept, _ = model(x[None].contiguous(memory_format=torch.channels_last), sizes)
    finally:
        model.cfg = saved
    for k in ("boxes", "labels", "scores", "features", "attr_labels", "attr_scores"):
        assert torch.equal(getattr(normal[0], k), getattr(given[0], k)), k
    assert len(kept[0].boxes) == len(proposals) and torch.equal(kept[0].boxes, proposals)
    assert torch.equal(kept[0].labels, kept[0].scores_all[:, 1:].argmax(1) + 1)


# -- the ORIGINAL's outputs (full X152-C4, synthetic v1 weights) ---------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("ignore_regression", [False, True])
def test_reference_forced_boxes(shared_dir: Path, ignore_regression: bool) -> None:
    """The original with FORCE_BOXES (regression off: its only working setting; on, vinvl gives the same)."""
    ref = shared_dir / "reference/detector"
    z = np.load(ref / "forced_boxes/forced_320x480.npz")
    det = Detector.from_checkpoint(reference_checkpoint(ref, 1), labelmap=ref / "synthetic_labelmap.json", min_size=320,
                                   max_size=480, ignore_box_regression=ignore_regression, output_scores_all=True)
    ((raw, rhw, ohw),) = det.detect_raw([ref / "images/img0.jpg"], boxes=[z["img0_boxes_given"]])
    d = det.finish(raw, rhw, ohw)
    assert tuple(rhw) == tuple(z["img0_resized_hw"]) and tuple(ohw) == tuple(z["img0_orig_hw"])
    prop = given_boxes_to_proposals(z["img0_boxes_given"], ohw, rhw).numpy()
    np.testing.assert_array_equal(prop, z["img0_boxes_proposals_resized"])
    np.testing.assert_allclose(raw.boxes.numpy(), z["img0_boxes_xyxy_resized"], atol=1e-3, rtol=0)
    np.testing.assert_allclose(d.boxes, z["img0_boxes_xyxy_orig"], atol=1e-3, rtol=0)
    np.testing.assert_array_equal(d.labels, z["img0_labels"])
    np.testing.assert_allclose(d.scores, z["img0_scores"], atol=1e-4, rtol=0)
    np.testing.assert_allclose(d.scores_all, z["img0_scores_all"], atol=1e-4, rtol=0)
    assert cosine_rows(d.features, z["img0_box_features"]).min() >= 0.9999
    sure = z["img0_attr_scores"] > 0
    np.testing.assert_array_equal(raw.attr_labels.numpy()[:, 0], z["img0_attr_labels"][:, 0])
    np.testing.assert_array_equal(raw.attr_labels.numpy()[sure], z["img0_attr_labels"][sure])
    np.testing.assert_allclose(raw.attr_scores.numpy(), z["img0_attr_scores"], atol=1e-4, rtol=0)
