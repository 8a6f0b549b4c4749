"""The end-to-end extraction benchmark runs (tiny preset, a few images) and reports every figure it promises, so
it cannot rot between the sessions that time it on a GPU; its box matching is one-to-one."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from detector import compare, match_boxes  # noqa: E402


def test_extract_benchmark_reports_throughput_timeline_mfu_and_drift(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    r = subprocess.run([sys.executable, str(REPO / "benchmarks" / "extract.py"), "--preset", "tiny", "--images", "6",
                        "--min-size", "96", "--max-size", "160", "--batch-size", "2", "--dtype", "bf16", "--vs", "fp32",
                        "--vs", "original", "--passes", "1", "--drift-images", "2", "--threads", "1", "--json", str(out)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    got = json.loads(out.read_text())
    assert got["images"] == 6 and got["images_per_second"] > 0 and got["boxes"] > 0
    assert got["capability"].startswith("cpu ") and got["dtype"] == "bf16" and got["image_source"]
    assert 0 < got["mfu"] < 1 and got["gmac_per_image"] > 0
    steps = got["timeline"]["seconds_per_image"]
    for step in ("model: backbone", "model: rpn", "model: res5", "nms (post-process)", "decode", "resize",
                 "device -> host (finish)", "rows + base64 + write", "host -> device + glue"):
        assert step in steps and steps[step] >= 0, step
    d = got["drift_vs_fp32"]
    assert d["images"] == 2 and d["boxes_fp32"] > 0 and 0 < d["matched"] <= min(d["boxes_fp32"], d["boxes_fast"])
    assert d["kept"] == d["matched"] / d["boxes_fp32"] and 0 <= d["class_agreement"] <= 1
    assert 0 <= d["top_attribute_agreement"] <= 1 and d["attribute_pairs"] <= d["matched"]
    assert 0.99 < d["cosine_mean"] <= 1.0 and d["cosine_min"] <= d["cosine_mean"]
    assert got["drift_by_mode"] == {"bf16": d}  # fp32 and the original's emulation are not fast modes
    modes = got["modes"]
    assert set(modes) == {"bf16", "fp32", "original"} and modes["fp32"]["vs_fp32"] == 1.0
    assert abs(modes["bf16"]["vs_fp32"] - got["same_run"]["fp32"]["speedup"]) < 1e-9
    assert "images/s end to end" in r.stdout and got["capability"] in r.stdout
    assert "kept" in r.stdout and "at IoU 0.9" in r.stdout and "top attribute agrees" in r.stdout
    assert "original in the same run (an EMULATION of the original's arithmetic" in r.stdout


class _Dets:
    def __init__(self, boxes, labels, attrs, features) -> None:
        self.boxes = np.asarray(boxes, np.float32)
        self.labels = np.asarray(labels)
        self.attr_labels = [np.asarray(a[0], np.int64) for a in attrs]
        self.attr_scores = [np.asarray(a[1], np.float32) for a in attrs]
        self.features = np.asarray(features, np.float32)

    def __len__(self) -> int:
        return len(self.boxes)


def test_box_matching_is_one_to_one_by_highest_iou() -> None:
    # fp32 has two near-identical boxes, the fast mode one box between them, nearer fp32's box 1 (IoU 0.998 vs
    # 0.992): it matches box 1 only, and box 0 counts as lost (a best match per fp32 box would count it kept).
    a = [[0, 0, 100, 100], [0, 0, 100, 99], [200, 200, 300, 300]]
    b = [[0, 0, 100, 99.2], [200, 200, 300, 300], [500, 500, 510, 510]]
    ia, ib, iou = match_boxes(np.array(a, np.float32), np.array(b, np.float32))
    assert sorted(zip(ia.tolist(), ib.tolist())) == [(1, 0), (2, 1)] and (iou >= 0.9).all()
    fa = _Dets(a, [1, 2, 3], [([5], [0.2]), ([7, 6], [0.3, 0.6]), ([], [])], np.eye(3, 4) + 1)
    fb = _Dets(b, [2, 4, 1], [([6], [0.8]), ([8], [0.4]), ([], [])], [[1, 2, 1, 1], [1, 1, 1, 1], [0, 0, 0, 1]])
    c = compare(fa, fb)
    # Pair (1, 0): classes 2 = 2, top attributes (by score) 6 = 6, sets {6, 7} != {6}, features equal.
    # Pair (2, 1): classes 3 != 4, no attributes in fp32 (no top-attribute pair), sets {} != {8}.
    assert (c["boxes_fp32"], c["boxes_fast"], c["matched"]) == (3, 3, 2) and c["kept"] == 2 / 3
    assert c["class_agreement"] == 0.5 and c["attribute_pairs"] == 1 and c["top_attribute_agreement"] == 1.0
    assert c["attribute_set_agreement"] == 0.0
    cos = 5 / (2 * np.sqrt(7))  # (1, 1, 2, 1) . (1, 1, 1, 1)
    assert np.isclose(c["cosine_min"], cos) and np.isclose(c["cosine_mean"], (1 + cos) / 2)
    none = compare(fa, _Dets(np.zeros((0, 4)), [], [], np.zeros((0, 4))))
    assert none["matched"] == 0 and none["kept"] == 0 and none["class_agreement"] is None


def test_the_gpu_check_script_dry_run(tmp_path: Path) -> None:
    """benchmarks/gpu_check.sh --dry-run (the GPU check's steps on the CPU at tiny sizes) runs every step and writes
    gpu_report.json with each step's exit code, the device and versions, and the figures of every run; an unknown
    argument is refused (exit 2) and, without CUDA, so is the real run."""
    import os

    env = {**os.environ, "OUT": str(tmp_path / "out"), "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(["bash", str(REPO / "benchmarks/gpu_check.sh"), "--dry-run"], env=env, capture_output=True,
                       text=True, timeout=900)
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]
    report = json.loads((tmp_path / "out/gpu_report.json").read_text())
    want = ["gpu_tests", "extract_fp32_b1", "extract_fp32_b2", "extract_bf16_b1", "extract_bf16_b2", "oscar_train"]
    assert list(report["steps"]) == want and report["passed"] and report["dry_run"]
    assert all(s["exit"] == 0 and (tmp_path / "out" / s["log"]).is_file() for s in report["steps"].values())
    assert report["torch"] and report["device"].startswith("CPU")
    for name in want[1:5]:
        fig = report["figures"][name]
        assert fig["images_per_second"] > 0 and fig["dtype"] == name.split("_")[1]
    assert "drift" in json.dumps(report["figures"]["extract_bf16_b1"])
    runs = report["figures"]["oscar_train"]
    assert {(x["task"], x["dtype"]) for x in runs} == {(t, d) for t in ("pretrain", "caption") for d in ("fp32", "bf16")}
    bad = subprocess.run(["bash", str(REPO / "benchmarks/gpu_check.sh"), "--fast"], env=env, capture_output=True,
                         text=True, timeout=60)
    assert bad.returncode == 2 and "unknown argument --fast" in bad.stderr
    import torch

    if not torch.cuda.is_available():
        real = subprocess.run(["bash", str(REPO / "benchmarks/gpu_check.sh")], env=env, capture_output=True,
                              text=True, timeout=120)
        assert real.returncode == 2 and "no CUDA device" in real.stderr
