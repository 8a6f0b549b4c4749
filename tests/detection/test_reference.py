"""The full X152-C4 in the library against the ORIGINAL's intermediates and outputs (../shared/reference/detector:
v1 at both sizes, v2 A's first image); every case's outputs through the command line: tests/cli/test_reference_cli.py.

Tolerances (issue #3): same number and order of detections, classes identical, boxes within
1e-2 px, scores within 1e-4, feature cosine >= 0.9999, attributes identical where the
reference score > 0.06. This machine's float32 GEMM and exp differ from the reference
machine's in the last bits (see docs/detector.md), so exact equality is asserted only where
it holds: the preprocessed input tensor.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.detection.reference import approx_keys, build_state_dict, checksum_file, reference_checkpoint, verify
from vinvl.detection import Detector

pytestmark = pytest.mark.slow

BOX_TOL, SCORE_TOL, COS_MIN, ATTR_MIN = 1e-2, 1e-4, 0.9999, 0.06
# VINVL_TEST_DEVICE=cuda runs the same cases on a GPU (full float32: TF32 off).
DEVICE = os.environ.get("VINVL_TEST_DEVICE", "cpu")


@pytest.fixture(scope="module")
def ref(shared_dir: Path) -> Path:
    return shared_dir / "reference" / "detector"


@pytest.fixture(scope="module")
def v1(ref: Path) -> Path:
    return reference_checkpoint(ref, 1)


@pytest.fixture(scope="module")
def v2(ref: Path) -> Path:
    return reference_checkpoint(ref, 2)


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-30)


def check_outputs(det, raw, exp: dict, *, boxes: bool = True, attributes: bool = True) -> None:
    """Compare one image's outputs with the reference arrays ``exp`` (keys without the image prefix)."""
    n = len(exp["labels"])
    assert len(det) == n, f"{len(det)} detections, reference {n}"
    np.testing.assert_array_equal(det.labels, exp["labels"])
    np.testing.assert_allclose(det.scores, exp["scores"], atol=SCORE_TOL, rtol=0)
    assert n == 0 or cosine_rows(det.features, exp["box_features"]).min() >= COS_MIN
    if boxes:
        np.testing.assert_allclose(raw.boxes.cpu().numpy(), exp["boxes_xyxy_resized"], atol=BOX_TOL, rtol=0)
        np.testing.assert_allclose(det.boxes, exp["boxes_xyxy_orig"], atol=BOX_TOL, rtol=0)
    if exp.get("scores_all") is not None and exp["scores_all"].size:
        np.testing.assert_allclose(raw.scores_all.cpu().numpy(), exp["scores_all"], atol=SCORE_TOL, rtol=0)
    if attributes:
        sure = exp["attr_scores"] > ATTR_MIN
        np.testing.assert_array_equal(raw.attr_labels.cpu().numpy()[sure], exp["attr_labels"][sure])
        np.testing.assert_allclose(raw.attr_scores.cpu().numpy(), exp["attr_scores"], atol=SCORE_TOL, rtol=0)
        # padding removed in the public result: exactly the non-zero reference slots remain
        assert [len(a) for a in det.attr_labels] == (exp["attr_scores"] > 0).sum(1).tolist()


def check_intermediates(detector: Detector, raw, exp: dict, image: Path) -> None:
    """Input tensor exact; C4 features, proposals, logits and pooled features within tolerance."""
    x, hw = detector.prepare(image)
    np.testing.assert_array_equal(x.cpu().numpy(), exp["input_tensor"])
    assert list(hw) == exp["orig_hw"].tolist()
    t = raw.trace
    # float32 accumulation over 47 blocks: compare at the scale of the feature map
    c4 = exp["c4_feature"]
    np.testing.assert_allclose(t["c4_feature"].cpu().numpy(), c4, rtol=1e-4, atol=1e-5 * float(np.abs(c4).max()))
    np.testing.assert_allclose(t["rpn_proposals"].cpu().numpy(), exp["rpn_proposals_xyxy_resized"], atol=BOX_TOL, rtol=0)
    np.testing.assert_allclose(t["rpn_objectness"].cpu().numpy(), exp["rpn_objectness"], atol=SCORE_TOL, rtol=0)
    np.testing.assert_allclose(t["proposal_class_logits"].cpu().numpy(), exp["proposal_class_logits"], atol=1e-3, rtol=0)
    assert cosine_rows(t["proposal_pool5"].cpu().numpy(), exp["proposal_pool5"]).min() >= COS_MIN


def run(detector: Detector, images: list[Path], trace: bool = False):
    raws = detector.detect_raw(images, trace=trace)
    return [(detector.finish(raw, rhw, ohw), raw) for raw, rhw, ohw in raws]


def image_case(npz, prefix: str) -> dict:
    return {k[len(prefix) :]: npz[k] for k in npz.files if k.startswith(prefix)}


@pytest.mark.parametrize("size", ["320x480", "600x1000"])
def test_v1_img0(ref: Path, v1: Path, size: str) -> None:
    lo, hi = map(int, size.split("x"))
    det = Detector.from_checkpoint(v1, labelmap=ref / "synthetic_labelmap.json", min_size=lo, max_size=hi, device=DEVICE)
    exp = dict(np.load(ref / f"img0_{size}.npz"))
    ((d, raw),) = run(det, [ref / "images/img0.jpg"], trace=True)
    check_intermediates(det, raw, exp, ref / "images/img0.jpg")
    check_outputs(d, raw, exp)
    # the predictions.tsv row: same keys, names, boxes; values within the tolerances
    import json

    (key, text) = open(ref / f"img0_{size}_predictions.tsv").read().rstrip("\n").split("\t")
    ours = json.loads(d.to_row("img0.jpg")[1])
    theirs = json.loads(text)
    assert list(ours) == list(theirs) and [list(o) for o in ours["objects"]] == [list(o) for o in theirs["objects"]]
    assert [o["class"] for o in ours["objects"]] == [o["class"] for o in theirs["objects"]]


# v2: real-looking BN statistics and biases, and the other branches (README of the reference). Every case's
# outputs are checked through the default command line (tests/cli/test_reference_cli.py); here the library's
# intermediates on case A's first image.
def test_v2_intermediates(ref: Path, v2: Path) -> None:
    npz = np.load(ref / "v2" / "A.npz")
    assert str(npz["names"][0]) == "img0.jpg"
    det = Detector.from_checkpoint(v2, labelmap=ref / "synthetic_labelmap.json", device=DEVICE)
    ((d, raw),) = run(det, [ref / "images/img0.jpg"], trace=True)
    exp = image_case(npz, "img0_")
    check_intermediates(det, raw, exp, ref / "images/img0.jpg")
    assert tuple(d.resized_hw) == tuple(exp["input_tensor_shape"][1:])
    check_outputs(d, raw, exp)


def test_v2_nms_filter2_original_boxes(ref: Path, v2: Path) -> None:
    """The opt-in compatibility flag reproduces the original's (wrong) NMS_FILTER 2 boxes."""
    npz = np.load(ref / "v2" / "C.npz")
    det = Detector.from_checkpoint(
        v2, nms_filter=2, ignore_box_regression=False, nms_filter2_original_boxes=True, device=DEVICE
    )
    ((d, raw),) = run(det, [ref / "images/img0.jpg"])
    exp = image_case(npz, "img0_")
    np.testing.assert_allclose(raw.boxes.cpu().numpy(), exp["boxes_xyxy_resized"], atol=BOX_TOL, rtol=0)
    np.testing.assert_allclose(raw.attr_scores.cpu().numpy(), exp["attr_scores"], atol=SCORE_TOL, rtol=0)


@pytest.mark.parametrize("version", [1, 2])
def test_recipe_regenerates_the_checksummed_weights(ref: Path, version: int) -> None:
    """The README's recipe, run here, gives every checksummed tensor bit for bit (sha256)."""
    sd = build_state_dict(ref, version)
    assert len(sd) == 841
    assert verify(sd, checksum_file(ref, version), approx_keys(version)) == []


def test_checkpoint_variants_load_strictly(v1: Path) -> None:
    """The released layout loads as a file, as a bare dict and with module. prefixes."""
    sd = torch.load(v1, map_location="cpu", weights_only=True, mmap=True)["model"]
    assert len(sd) == 841
    a = Detector.from_checkpoint(v1)
    b = Detector.from_checkpoint(dict(sd))
    c = Detector.from_checkpoint({"model": {f"module.{k}": v for k, v in sd.items()}})
    for k, v in a.model.state_dict().items():
        assert torch.equal(v, b.model.state_dict()[k]) and torch.equal(v, c.model.state_dict()[k])
    assert len(a.model.state_dict()) == 841 - 50  # the attribute head's res5 copy is shared
