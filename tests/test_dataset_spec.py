"""Dataset yamls: one reader and one rule for relative paths (beside the yaml, then a data folder where a command
takes one, never the working directory), the same for every kind of yaml: extraction inputs, detection data,
captioning splits and pretraining corpora (whose feature folders keep the original's --data_dir root)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from vinvl import features as F
from vinvl.corpus.build import synthetic_corpus
from vinvl.corpus.layout import read_spec
from vinvl.dataset_spec import DatasetSpec, resolve_path
from vinvl.datasets.shapes import generate_shapes
from vinvl.detection.dataset import DetectionDataset
from vinvl.errors import VinvlError
from vinvl.extract.sources import collect_inputs
from vinvl.oscar.data.captions import CaptionData
from vinvl.tsv import write_tsv


def test_the_rule(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "x.tsv").write_text("a")
    (tmp_path / "b" / "x.tsv").write_text("b")
    (tmp_path / "b" / "y.tsv").write_text("b")
    roots = (tmp_path / "a", tmp_path / "b")
    assert resolve_path("x.tsv", roots) == tmp_path / "a" / "x.tsv"  # beside the yaml first
    assert resolve_path("y.tsv", roots) == tmp_path / "b" / "y.tsv"  # then the data folder
    assert resolve_path("z.tsv", roots) == tmp_path / "a" / "z.tsv"  # a missing file is reported beside the yaml
    assert resolve_path(tmp_path / "b" / "x.tsv", roots) == tmp_path / "b" / "x.tsv"
    monkeypatch.chdir(tmp_path / "b")
    assert resolve_path("y.tsv", roots[:1]) == tmp_path / "a" / "y.tsv"  # never the working directory


def test_spec_errors(tmp_path: Path) -> None:
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(VinvlError, match="list.yaml: a dataset yaml is a mapping"):
        DatasetSpec(tmp_path / "list.yaml")
    (tmp_path / "d.yaml").write_text("img: gone.tsv\nlabel:\n")
    with pytest.raises(VinvlError, match=r"d.yaml: a training yaml needs 'x' \(hint\)"):
        DatasetSpec(tmp_path / "d.yaml", "training yaml", needs=("img", "x"), hint=" (hint)")
    spec = DatasetSpec(tmp_path / "d.yaml")
    assert "img" in spec and "label" not in spec and spec.file("label") is None
    with pytest.raises(VinvlError, match=r"d.yaml: img 'gone.tsv': no such file \(.*gone.tsv\)"):
        spec.file("img")
    with pytest.raises(VinvlError, match="d.yaml: a dataset yaml needs 'caption'"):
        spec.file("caption", required=True)
    (tmp_path / "bad.yaml").write_text("img: [unclosed\n")
    with pytest.raises(VinvlError, match="bad.yaml: not valid yaml: line 2"):
        DatasetSpec(tmp_path / "bad.yaml")


# -- every reader follows the rule ---------------------------------------------------------------------------
def _feature_folder(folder: Path, keys: list[str]) -> None:
    rng = np.random.default_rng(0)
    preds = [F.Prediction(key=k, boxes=np.sort(rng.uniform(0, 90, (2, 4)), axis=1), classes=["cat", "dog"],
                          scores=rng.uniform(0, 1, 2), features=rng.standard_normal((2, 8)), image_h=100, image_w=120)
             for k in keys]
    write_tsv(folder / "predictions.tsv", [p.to_row() for p in preds])
    F.to_oscar(folder / "predictions.tsv", folder)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("shapes")
    generate_shapes(d, num=3, seed=0, min_size=64, max_size=96)
    return d


def _decoy(cwd: Path, src: Path, names: list[str]) -> None:
    """The working directory holds files of the same relative names with other content: a reader that
    resolved against it would read them."""
    cwd.mkdir(exist_ok=True)
    for n in names:
        (cwd / n).parent.mkdir(parents=True, exist_ok=True)
        (cwd / n).write_text("decoy\n")


def test_extract_inputs(shapes: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _decoy(tmp_path / "cwd", shapes, ["img.tsv", "ll.tsv"])
    monkeypatch.chdir(tmp_path / "cwd")
    (shapes / "ll.tsv").write_text("2\n0\n")
    (shapes / "sub.yaml").write_text("img: img.tsv\nlinelist: ll.tsv\n")
    items = collect_inputs([shapes / "sub.yaml"])
    assert [(i.path, i.row) for i in items] == [(shapes / "img.tsv", 2), (shapes / "img.tsv", 0)]
    elsewhere = tmp_path / "y"
    elsewhere.mkdir()
    (elsewhere / "t.yaml").write_text(f"img: img.tsv\nlinelist: {shapes / 'll.tsv'}\n")  # relative + absolute
    assert [i.row for i in collect_inputs([elsewhere / "t.yaml"], data_dir=shapes)] == [2, 0]
    with pytest.raises(VinvlError, match=r"t.yaml: img 'img.tsv': no such file"):
        collect_inputs([elsewhere / "t.yaml"])  # not in the working directory's decoy either


def test_detection_dataset(shapes: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _decoy(tmp_path / "cwd", shapes, ["img.tsv", "label.tsv", "labelmap.json"])
    monkeypatch.chdir(tmp_path / "cwd")
    ds = DetectionDataset(shapes / "dataset.yaml")
    assert ds.img.path == shapes / "img.tsv" and len(ds) == 3 and ds.labelmap.classes[0] == "__background__"
    moved = tmp_path / "moved"
    moved.mkdir()
    spec = {"img": str(shapes / "img.tsv"), "label": "../lab/label.tsv", "labelmap": str(shapes / "labelmap.json")}
    (tmp_path / "lab").mkdir()
    shutil.copy(shapes / "label.tsv", tmp_path / "lab" / "label.tsv")
    (moved / "d.yaml").write_text(yaml.safe_dump(spec))
    assert DetectionDataset(moved / "d.yaml").keys == ds.keys
    (moved / "e.yaml").write_text("img: img.tsv\nlabel: label.tsv\n")
    with pytest.raises(VinvlError, match="e.yaml: img 'img.tsv': no such file"):
        DetectionDataset(moved / "e.yaml")


def test_caption_split(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = tmp_path / "data"
    data.mkdir()
    _feature_folder(data, ["a", "b"])
    (data / "caps.json").write_text(json.dumps([{"image_id": "a", "caption": "a cat"}]))
    (data / "split.yaml").write_text("feature: features.tsv\nlabel: label.tsv\ncaption: caps.json\n")
    _decoy(tmp_path / "cwd", data, ["features.tsv", "label.tsv", "caps.json"])
    monkeypatch.chdir(tmp_path / "cwd")
    split = CaptionData(data / "split.yaml")
    assert split.keys == ["a", "b"] and split.captions == [("a", "a cat")] and split.tags("b") == "cat dog"
    (tmp_path / "y.yaml").write_text(f"feature: {data / 'features.tsv'}\nlabel: data/label.tsv\n")
    assert CaptionData(tmp_path / "y.yaml").tags("a") == "cat dog"
    (tmp_path / "z.yaml").write_text("feature: features.tsv\n")
    with pytest.raises(VinvlError, match="z.yaml: feature 'features.tsv': no such file"):
        CaptionData(tmp_path / "z.yaml")


def test_corpus_keeps_the_original_roots(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Corpus file and label folders beside the yaml; feature folders under --data-dir (default: the yaml's folder)."""
    (tmp_path / "c").mkdir()
    spec = {"corpus": "coco_cc", "corpus_file": "corpus.tsv", "image_label_path": {"coco": "lab/coco", "googlecc": "/abs"},
            "image_feature_path": {"coco": "feat/coco", "googlecc": "feat/cc"}}
    (tmp_path / "c" / "corpus.yaml").write_text(yaml.safe_dump(spec))
    monkeypatch.chdir(tmp_path)
    s = read_spec(tmp_path / "c" / "corpus.yaml")
    assert s.datasets == ["coco", "googlecc"] and s.corpus_file == tmp_path / "c" / "corpus.tsv"
    assert s.label_dirs == {"coco": tmp_path / "c" / "lab/coco", "googlecc": Path("/abs")}
    assert s.feature_dirs == {"coco": tmp_path / "c" / "feat/coco", "googlecc": tmp_path / "c" / "feat/cc"}
    (tmp_path / "c" / "feat" / "coco").mkdir(parents=True)  # present beside the yaml: --data-dir still wins
    s = read_spec(tmp_path / "c" / "corpus.yaml", data_dir=tmp_path / "d")
    assert s.feature_dirs["coco"] == tmp_path / "d" / "feat/coco" and s.label_dirs["coco"] == tmp_path / "c" / "lab/coco"
    built = synthetic_corpus(tmp_path / "syn", num_images=4, seed=0, dim=8)
    assert read_spec(built).corpus_file == tmp_path / "syn" / "corpus.tsv"
