"""Scoring a predictions.tsv (what `vinvl extract` writes) against a labelled dataset: `vinvl detector eval --predictions`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vinvl.cli import main
from vinvl.datasets.shapes import generate_shapes
from vinvl.detection.evaluate import evaluate_predictions
from vinvl.detection.train import DetectionDataset
from vinvl.errors import VinvlError
from vinvl.tsv import write_tsv


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("shapes")
    generate_shapes(out, 6, seed=21)
    return out / "dataset.yaml"


def _predictions(path: Path, data: Path, keep) -> Path:
    ds = DetectionDataset(data)
    rows = []
    for i, key in enumerate(ds.keys):
        objs = [{"rect": o["rect"], "class": o["class"], "conf": 0.9} for j, o in enumerate(ds.annotations[i]) if keep(i, j)]
        rows.append([key, json.dumps({"objects": objs, "image_h": 1, "image_w": 1})])
    return write_tsv(path, rows)


def test_perfect_and_partial_predictions(data: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    perfect = _predictions(tmp_path / "all.tsv", data, lambda i, j: True)
    m = evaluate_predictions(perfect, data)
    assert m["AP50"] == pytest.approx(1.0) and m["detections"] == m["objects"] > 10
    half = _predictions(tmp_path / "half.tsv", data, lambda i, j: j % 2 == 0)
    assert 0.3 < evaluate_predictions(half, data)["AP50"] < 0.7  # recall about one half
    assert main(["detector", "eval", str(data), "--predictions", str(perfect)]) == 0
    assert json.loads(capsys.readouterr().out)["AP50"] == pytest.approx(1.0)
    assert main(["detector", "eval", str(data)]) == 2  # neither --weights nor --predictions
    assert "give --weights" in capsys.readouterr().err


def test_missing_rows_and_foreign_classes_are_one_line(data: Path, tmp_path: Path) -> None:
    some = _predictions(tmp_path / "p.tsv", data, lambda i, j: True)
    lines = some.read_text().splitlines()
    write_tsv(tmp_path / "short.tsv", [line.split("\t") for line in lines[1:]])
    with pytest.raises(VinvlError, match=r"short\.tsv: no row for image '.*' of "):
        evaluate_predictions(tmp_path / "short.tsv", data)
    key = lines[0].split("\t")[0]
    write_tsv(tmp_path / "alien.tsv", [[key, json.dumps({"objects": [{"rect": [0, 0, 1, 1], "class": "zebra", "conf": 1}]})]]
              + [line.split("\t") for line in lines[1:]])
    with pytest.raises(VinvlError, match=r"class 'zebra' is not in the dataset's label map"):
        evaluate_predictions(tmp_path / "alien.tsv", data)
