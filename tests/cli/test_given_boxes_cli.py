"""`vinvl extract --boxes` (native form) and FORCE_BOXES (original form): layouts, one-line reports before any
work, zero-box rows, resume and torchrun; the ORIGINAL's forced-boxes rows reproduced by both forms."""

from __future__ import annotations

import hashlib
import json
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vinvl import features as F
from vinvl import tsv as T


def _keys(tiny: Path) -> list[str]:
    return sorted(p.relative_to(tiny / "imgs").with_suffix("").as_posix() for p in (tiny / "imgs").rglob("*.jpg"))


def _boxes_for(tiny: Path, seed: int = 0) -> dict[str, list[list[float]]]:
    """1-3 boxes per image (one partly outside, some duplicated), in original pixels."""
    rng = np.random.default_rng(seed)
    out = {}
    for key in _keys(tiny):
        w, h = Image.open(tiny / "imgs" / f"{key}.jpg").size
        n = int(rng.integers(1, 4))
        b = [[float(rng.uniform(-10, w / 2)), float(rng.uniform(0, h / 2)), float(rng.uniform(w / 2, w + 20)),
              float(rng.uniform(h / 2, h))] for _ in range(n)]
        out[key] = b + b[:1] if n == 3 else b
    return out


@pytest.fixture(scope="module")
def boxes_json(tiny: Path, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("boxes") / "boxes.json"
    path.write_text(json.dumps(_boxes_for(tiny)))
    return path


@pytest.fixture(scope="module")
def boxes_run(ex, boxes_json: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("given") / "out"
    r = ex.run(ex.args(out, "--boxes", str(boxes_json)))
    assert r.returncode == 0, r.stderr
    return out


def test_every_given_box_is_described(ex, tiny: Path, boxes_json: Path, boxes_run: Path) -> None:
    given = json.loads(boxes_json.read_text())
    feats = F.FeatureTSV(boxes_run / "features.tsv")
    for key, text in T.TSVFile(boxes_run / "predictions.tsv"):
        p = F.Prediction.from_json(key, text)
        b = np.float32(given[key])
        assert len(p) == len(b) and len(p.attributes) == len(b)
        W, H = p.image_w, p.image_h
        inside = (b[:, 0] >= 0) & (b[:, 2] <= W - 5) & (b[:, 3] <= H - 5)  # not touched by either clip
        np.testing.assert_allclose(p.boxes[inside], b[inside], atol=1e-3)
        tol = 1e-3  # the scale back to original pixels rounds (e.g. 89.00001)
        assert (p.boxes[:, [0, 2]] <= W - 1 + tol).all() and (p.boxes[:, [1, 3]] <= H - 1 + tol).all()
        assert (p.boxes >= 0).all()
        assert feats.get(key).shape == (len(b), feats.dim)
        _, objs = F.parse_label_row(T.TSVFile(boxes_run / "label.tsv").get(key))
        assert [o["class"] for o in objs] == p.classes
    m = json.loads((boxes_run / "manifest.json").read_text())
    assert m["boxes_sha256"] == hashlib.sha256(boxes_json.read_bytes()).hexdigest() and m["boxes"] == str(boxes_json)
    assert m["settings"]["boxes"] and m["counts"]["boxes"] == sum(len(v) for v in given.values())


def test_the_three_layouts_give_the_same_rows(ex, tiny: Path, boxes_json: Path, boxes_run: Path, tmp_path: Path) -> None:
    given = json.loads(boxes_json.read_text())
    label = tmp_path / "boxes.label.tsv"
    label.write_text("".join(f"{k}\t{json.dumps({'objects': [{'rect': r, 'class': 'c1'} for r in v]})}\n"
                             for k, v in reversed(given.items())))
    images = [{"id": i, "file_name": f"{Path(k).name}.jpg"} for i, k in enumerate(given)]
    anns = [{"id": len(images) + j, "image_id": i, "bbox": [r[0], r[1], r[2] - r[0] + 1, r[3] - r[1] + 1], "iscrowd": 0}
            for i, v in enumerate(given.values()) for j, r in enumerate(v)]
    coco = tmp_path / "instances.json"
    coco.write_text(json.dumps({"images": images, "annotations": anns, "categories": []}))
    for f in (label, coco):
        out = tmp_path / f.stem
        code = ex.run(ex.args(out, "--boxes", str(f)))
        assert code.returncode == 0, code.stderr
        ours = {k: F.Prediction.from_json(k, t) for k, t in T.TSVFile(out / "predictions.tsv")}
        for k, t in T.TSVFile(boxes_run / "predictions.tsv"):
            p = F.Prediction.from_json(k, t)
            assert ours[k].classes == p.classes
            np.testing.assert_allclose(ours[k].boxes, p.boxes, atol=1e-3)  # COCO's xywh round trip: float rounding
            assert F.Prediction.from_json(k, t).key == k


def test_unmatched_keys_are_one_line_before_any_work(ex, tiny: Path, boxes_json: Path, tmp_path: Path, capsys) -> None:
    given = json.loads(boxes_json.read_text())
    fewer = tmp_path / "fewer.json"
    fewer.write_text(json.dumps({k: v for k, v in list(given.items())[2:]}))
    out = tmp_path / "o"
    code, _, err = ex.cli(capsys, *ex.args(out, "--boxes", str(fewer)))
    assert code == 2 and err.count("\n") == 1 and "2 image(s) have no entry (first: 'im01'" in err
    assert not out.exists()
    more = tmp_path / "more.json"
    more.write_text(json.dumps({**given, "nowhere": [[0, 0, 1, 1]]}))
    code, _, err = ex.cli(capsys, *ex.args(out, "--boxes", str(more)))
    assert code == 2 and "1 entry match no image (first: 'nowhere'" in err and not out.exists()
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**given, "im01": [[0, 0, 1]]}))
    code, _, err = ex.cli(capsys, *ex.args(out, "--boxes", str(bad)))
    assert code == 2 and "key 'im01': box 0 must be 4 finite numbers" in err and not out.exists()
    code, _, err = ex.cli(capsys, *ex.args(out, "--boxes", str(more), "--boxes-unused", "ignore", "--boxes-missing",
                                           "empty"))
    assert code == 0, err


def test_images_without_boxes_get_zero_box_rows(ex, tiny: Path, boxes_json: Path, tmp_path: Path, capsys) -> None:
    given = json.loads(boxes_json.read_text())
    some = tmp_path / "some.json"
    some.write_text(json.dumps({**{k: v for k, v in list(given.items())[1:]}, "im02": []}))
    out = tmp_path / "o"
    code, _, err = ex.cli(capsys, *ex.args(out, "--boxes", str(some), "--boxes-missing", "empty"))
    assert code == 0, err
    for key in ("im01", "im02"):
        row = json.loads(T.TSVFile(out / "predictions.tsv").get(key)[1])
        assert row["objects"] == [] and row["image_h"] > 0
        assert T.TSVFile(out / "features.tsv").get(key)[1] == "0"
        assert F.FeatureTSV(out / "features.tsv").get(key).shape[0] == 0
        assert F.parse_label_row(T.TSVFile(out / "label.tsv").get(key))[1] == []
    assert json.loads((out / "manifest.json").read_text())["boxes_missing"] == "empty"


def test_resume_checks_the_boxes(ex, tiny: Path, boxes_json: Path, boxes_run: Path, tmp_path: Path, capsys,
                                 monkeypatch) -> None:
    from tests.extract.test_faults import interrupted

    given = tmp_path / "boxes.json"
    given.write_bytes(boxes_json.read_bytes())
    out = tmp_path / "o"
    interrupted(ex, out, capsys, monkeypatch, "--boxes", str(given))
    other = json.loads(given.read_text())
    other["im03"] = [[1, 1, 20, 20]]
    given.write_text(json.dumps(other))
    code, _, err = ex.cli(capsys, *ex.args(out, "--boxes", str(given), "--resume"))
    assert code == 2 and "other settings" in err and "boxes" in err
    given.write_bytes(boxes_json.read_bytes())
    code, _, err = ex.cli(capsys, *ex.args(out, "--boxes", str(given), "--resume"))
    assert code == 0, err
    assert ex.digest(out) == ex.digest(boxes_run)


def test_torchrun_two_processes_equal_one(ex, tiny: Path, boxes_json: Path, boxes_run: Path, tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "dist"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(port), "-m", "vinvl", *ex.args(out, "--boxes", str(boxes_json))]
    r = subprocess.run(cmd, env=ex.ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert ex.digest(out) == ex.digest(boxes_run)


# -- the ORIGINAL's forced-boxes rows, through both forms of the default command line -------------------------
def _rows_equal_but_conf_digits(ours: str, theirs: str) -> None:
    a, b = json.loads(ours), json.loads(theirs)
    assert len(a["objects"]) == len(b["objects"])
    np.testing.assert_allclose([o["conf"] for o in a["objects"]], [o["conf"] for o in b["objects"]], atol=1e-4, rtol=0)
    for oa, ob in zip(a["objects"], b["objects"]):
        assert list(oa) == list(ob) and oa["class"] == ob["class"]
        np.testing.assert_allclose(oa["rect"], ob["rect"], atol=1e-3, rtol=0)
        fa, fb = F.decode_floats(oa.pop("feature")), F.decode_floats(ob.pop("feature"))
        assert float(fa @ fb / np.linalg.norm(fa) / np.linalg.norm(fb)) >= 0.9999
        if "attributes" in oa:
            sure = np.array(ob["attr_scores"]) > 0
            assert np.array(oa["attributes"])[sure].tolist() == np.array(ob["attributes"])[sure].tolist()
            assert len(oa["attributes"]) == len(ob["attributes"])  # every top-k slot, as the original writes
            np.testing.assert_allclose(oa.pop("attr_scores"), ob.pop("attr_scores"), atol=1e-4, rtol=0)
            oa.pop("attributes"), ob.pop("attributes")
        oa["conf"], oa["rect"] = ob["conf"], ob["rect"]
    assert json.dumps(a) == json.dumps(b)


def _seed_force_command(ref: Path, weights: Path, out: Path, *extra: str) -> list[str]:
    return ["extract", "--config-file", "sgg_configs/vgattr/vinvl_x152c4.yaml", "MODEL.WEIGHT", str(weights),
            "DATA_DIR", str(ref / "forced_boxes/dataset"), "DATASETS.TEST", "('test.yaml',)",
            "DATASETS.LABELMAP_FILE", str(ref / "synthetic_labelmap.json"), "MODEL.DEVICE", "cpu",
            "INPUT.MIN_SIZE_TEST", "320", "INPUT.MAX_SIZE_TEST", "480", "MODEL.ROI_HEADS.NMS_FILTER", "1",
            "MODEL.ROI_HEADS.SCORE_THRESH", "0.2", "MODEL.ATTRIBUTE_ON", "True", "TEST.OUTPUT_FEATURE", "True",
            "TEST.IMS_PER_BATCH", "1", "MODEL.RPN.FORCE_BOXES", "True", "MODEL.ROI_BOX_HEAD.FORCE_BOXES", "True",
            *extra, "-o", str(out), "--quiet"]


@pytest.mark.slow
@pytest.mark.parametrize("regression, subset", [
    ("False", None),  # the reference's own settings (TEST.SKIP_PERFORMANCE_EVAL False loads its labels)
    ("True", "['rect', 'class', 'conf', 'feature', 'attr_labels', 'attr_scores']"),  # the seed's: the original fails
])
def test_original_form_reproduces_the_reference(shared_dir: Path, tmp_path: Path, capsys, regression: str,
                                                subset: str | None) -> None:
    from tests.cli.test_extract_cli import run
    from tests.detection.reference import reference_checkpoint

    ref = shared_dir / "reference/detector"
    extra = ["TEST.IGNORE_BOX_REGRESSION", regression, "TEST.SKIP_PERFORMANCE_EVAL", "False"]
    extra += ["TEST.TSV_SAVE_SUBSET", subset] if subset else []
    code, _, err = run(capsys, *_seed_force_command(ref, reference_checkpoint(ref, 1), tmp_path / "o", *extra))
    assert code == 0, err
    ((key, ours),) = list(T.TSVFile(tmp_path / "o/predictions.tsv"))
    name = "forced_320x480_predictions_attr.tsv" if subset else "forced_320x480_predictions.tsv"
    (theirs_key, theirs), = list(T.TSVFile(ref / "forced_boxes" / name))
    assert key == theirs_key == "img0.jpg"
    _rows_equal_but_conf_digits(ours, theirs)


@pytest.mark.slow
def test_native_form_reproduces_the_reference(shared_dir: Path, tmp_path: Path, capsys) -> None:
    """The default native command line (no --dtype) with --boxes = the dataset's label file."""
    from tests.cli.test_extract_cli import run
    from tests.detection.reference import reference_checkpoint

    ref = shared_dir / "reference/detector"
    data = ref / "forced_boxes/dataset"
    code, _, err = run(capsys, "extract", data / "test.yaml", "-o", tmp_path / "o", "--weights",
                       reference_checkpoint(ref, 1), "--labelmap", ref / "synthetic_labelmap.json", "--min-size", "320",
                       "--max-size", "480", "--boxes", data / "test.label.tsv", "--quiet")
    assert code == 0, err
    ((key, ours),) = list(T.TSVFile(tmp_path / "o/predictions.tsv"))
    (_, theirs), = list(T.TSVFile(ref / "forced_boxes/forced_320x480_predictions_attr.tsv"))
    a = json.loads(ours)
    assert (a.pop("image_h"), a.pop("image_w")) == (480, 640)
    b = json.loads(theirs)
    for o in b["objects"]:  # native rows list the attributes above the threshold only
        keep = [s > 0 for s in o["attr_scores"]]
        o["attributes"] = [n for n, k in zip(o["attributes"], keep) if k]
        o["attr_scores"] = [s for s, k in zip(o["attr_scores"], keep) if k]
    _rows_equal_but_conf_digits(json.dumps(a), json.dumps(b))
