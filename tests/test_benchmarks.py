"""The end-to-end extraction benchmark runs (tiny preset, a few images) and reports every figure it promises, so
it cannot rot between the sessions that time it on a GPU."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_extract_benchmark_reports_throughput_timeline_mfu_and_drift(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    r = subprocess.run([sys.executable, str(REPO / "benchmarks" / "extract.py"), "--preset", "tiny", "--images", "6",
                        "--min-size", "96", "--max-size", "160", "--batch-size", "2", "--dtype", "bf16",
                        "--drift-images", "2", "--threads", "1", "--json", str(out)],
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
    assert got["drift_vs_fp32"]["images"] == 2 and 0.99 < got["drift_vs_fp32"]["cosine_mean"] <= 1.0
    assert "images/s end to end" in r.stdout and got["capability"] in r.stdout
