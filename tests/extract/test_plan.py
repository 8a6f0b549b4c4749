"""`vinvl extract` is two library calls (issue 27): plan_extraction (torch-free: files, inputs, options, checks)
and run_extraction (the detector loaded once, by Detector.from_pretrained); a script making them writes what the
command writes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vinvl.cli import main
from vinvl.errors import VinvlError
from vinvl.extract import plan_extraction, run_extraction

REPO = Path(__file__).resolve().parents[2]
IMAGES = REPO / "examples" / "images"
OUTPUTS = ["predictions.tsv", "features.tsv", "label.tsv", "hw.tsv", "imageid2idx.json", "errors.tsv"]


def test_two_calls_write_what_the_command_writes(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["extract", str(IMAGES), "-o", str(tmp_path / "cli"), "--model", "shapes_demo", "--quiet"]) == 0
    said: list[str] = []
    job = plan_extraction([IMAGES], tmp_path / "lib", model="shapes_demo", quiet=True)
    assert job.model.name == "shapes_demo" and job.device == "auto" and [i.key for i in job.items][:1] == ["shapes_a"]
    stats = run_extraction(job, say=said.append)
    assert stats.images == 3 and said == []  # quiet: no numerics line; the model was named: no default note
    for name in OUTPUTS:
        assert (tmp_path / "lib" / name).read_bytes() == (tmp_path / "cli" / name).read_bytes(), name
    cli, lib = (json.loads((tmp_path / d / "manifest.json").read_text()) for d in ("cli", "lib"))
    assert lib["settings"] == cli["settings"]
    for key in ("model", "weights", "weights_sha256", "labelmap_sha256", "dtype", "numerics", "form", "key_rule"):
        assert lib[key] == cli[key], key


def test_the_notes_come_once_the_detector_has_loaded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VINVL_HOME", str(tmp_path / "home"))  # the released detector is not cached: the demo is used
    job = plan_extraction([IMAGES / "shapes_a.jpg"], tmp_path / "o", quiet=False)
    assert job.notes and job.notes[0].startswith("using the shipped demo model")
    said: list[str] = []
    run_extraction(job, say=said.append)
    assert said[0] == job.notes[0] and said[1] == "numerics: fp32 NHWC (fp32: the original's numbers)"


def test_the_plan_refuses_before_any_work(tmp_path: Path) -> None:
    with pytest.raises(VinvlError, match="-o/--out is required"):
        plan_extraction([IMAGES])
    with pytest.raises(VinvlError, match="missing.pth: no such checkpoint file"):
        plan_extraction([IMAGES], tmp_path / "o", weights=tmp_path / "missing.pth")
    with pytest.raises(VinvlError, match="--min-size 300, --max-size 200"):
        plan_extraction([IMAGES], tmp_path / "o", model="shapes_demo", min_size=300, max_size=200)
    with pytest.raises(VinvlError, match="device must be auto, cpu or cuda"):
        plan_extraction([IMAGES], tmp_path / "o", model="shapes_demo", device="tpu")
    with pytest.raises(VinvlError, match="--set is for the native form"):
        plan_extraction([IMAGES], tmp_path / "o", config_file=tmp_path / "c.yaml", settings=["nms_filter=2"])
    assert not (tmp_path / "o").exists()
