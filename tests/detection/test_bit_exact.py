"""Bit-for-bit equality with the ORIGINAL's arithmetic, op by op.

The reference machine's MKL computed ``exp`` with its compatible (pre-AVX2) VML code and
float32 GEMM with its AVX2 kernels; on this machine's CPU no single MKL setting gives both,
and MKL fixes its branch once per process. So each check runs in a child process with the
MKL branch of the step it checks (docs/detector.md):

- ``MKL_CBWR=COMPATIBLE``: from the image to the pooled 2048-d features (preprocessing,
  backbone with real-looking frozen BN, RPN, anchors, box decoding, NMS, ROIAlign, res5, mean
  pool) every value equals the original's, including the final detections' features;
- ``MKL_CBWR=AVX2,STRICT``: from the original's pooled features, the class logits and the
  softmax scores of every detection equal the original's.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.detection.reference import reference_checkpoint

pytestmark = pytest.mark.slow

_CHILD = r"""
import sys
from pathlib import Path
import numpy as np, torch
from vinvl.detection import Detector

mode, ref, weights, case, lo, hi = sys.argv[1], Path(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5]), int(sys.argv[6])
npz, prefix, image = case.split(":")
z = np.load(ref / npz)
exp = {k[len(prefix):]: z[k] for k in z.files if k.startswith(prefix)}
det = Detector.from_checkpoint(weights, min_size=lo, max_size=hi, channels_last=False)  # the original NCHW arithmetic
bad = []
if mode == "pipeline":
    ((raw, rhw, ohw),) = det.detect_raw([ref / image], trace=True)
    d = det.finish(raw, rhw, ohw)
    t = raw.trace
    pairs = [("c4_feature", t["c4_feature"]), ("rpn_proposals_xyxy_resized", t["rpn_proposals"]),
             ("rpn_objectness", t["rpn_objectness"]), ("proposal_pool5", t["proposal_pool5"]),
             ("box_features", d.features), ("labels", d.labels)]
else:
    m = det.model.roi_heads.box.predictor.cls_score
    with torch.no_grad():
        logits = m(torch.from_numpy(exp["proposal_pool5"]))
        probs = torch.softmax(logits, -1).numpy()
    rows = [bool((probs == r).all(1).any()) for r in exp["scores_all"]]
    pairs = [("proposal_class_logits", logits)]
    if not all(rows):
        bad.append(f"scores_all: {rows.count(False)} of {len(rows)} rows not found bit-exactly")
checked = [(n, o) for n, o in pairs if n in exp]  # img1 of v2/A has no C4 or pool5 arrays
if len(checked) < min(4, len(pairs)):
    bad.append(f"only {[n for n, _ in checked]} found in {npz}")
for name, ours in checked:
    ours = ours.numpy() if hasattr(ours, "numpy") else np.asarray(ours)
    theirs = exp[name]
    if ours.shape != theirs.shape or not np.array_equal(ours, theirs):
        n = (ours != theirs).sum() if ours.shape == theirs.shape else "shape"
        bad.append(f"{name}: {n} values differ")
print("\n".join(bad) or "OK")
sys.exit(1 if bad else 0)
"""


def _child(mode: str, cbwr: str, ref: Path, weights: Path, case: str, lo: int, hi: int) -> None:
    env = {**os.environ, "MKL_CBWR": cbwr}
    r = subprocess.run(
        [sys.executable, "-c", _CHILD, mode, str(ref), str(weights), case, str(lo), str(hi)],
        env=env, capture_output=True, text=True,
    )
    assert r.returncode == 0 and r.stdout.strip() == "OK", r.stdout + r.stderr[-2000:]


@pytest.fixture(scope="module")
def ref(shared_dir: Path) -> Path:
    return shared_dir / "reference" / "detector"


@pytest.mark.parametrize("version, case, lo, hi", [
    (1, "img0_320x480.npz::images/img0.jpg", 320, 480),
    (2, "v2/A.npz:img1_:v2/images/wide.jpg", 600, 1000),  # real-looking BN statistics and biases; the MAX_SIZE branch
])
def test_pipeline_to_pooled_features_is_bit_exact(ref: Path, version: int, case: str, lo: int, hi: int) -> None:
    if not __import__("torch").backends.mkl.is_available():
        pytest.skip("the reference's MKL branches need a torch built with MKL")
    _child("pipeline", "COMPATIBLE", ref, reference_checkpoint(ref, version), case, lo, hi)


def test_logits_and_scores_are_bit_exact(ref: Path) -> None:
    if not __import__("torch").backends.mkl.is_available():
        pytest.skip("the reference's MKL branches need a torch built with MKL")
    _child("predictor", "AVX2,STRICT", ref, reference_checkpoint(ref, 1), "img0_320x480.npz::images/img0.jpg", 320, 480)
