"""`vinvl extract`: both grammars, outputs, errors; the seed's own command line on the reference weights."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vinvl import features as F
from vinvl import tsv as T
from vinvl.cli import main
from vinvl.config.original import load_original
from vinvl.detection import AttrRCNN, Detector
from vinvl.detection.preprocess import target_size
from vinvl.labelmap import LabelMap

SMALL_R50 = """\
MODEL:
  META_ARCHITECTURE: "AttrRCNN"
  BACKBONE: {CONV_BODY: "R-50-C4"}
  RESNETS: {STEM_OUT_CHANNELS: 8, RES2_OUT_CHANNELS: 16, NUM_GROUPS: 2, WIDTH_PER_GROUP: 8,
            BACKBONE_OUT_CHANNELS: 64, STRIDE_IN_1X1: False}
  RPN: {PRE_NMS_TOP_N_TEST: 200, POST_NMS_TOP_N_TEST: 30}
  ROI_HEADS: {NMS_FILTER: 1, SCORE_THRESH: 0.2, MIN_DETECTIONS_PER_IMG: 3, DETECTIONS_PER_IMG: 20}
  ROI_BOX_HEAD: {NUM_CLASSES: 11}
  ROI_ATTRIBUTE_HEAD: {NUM_ATTRIBUTES: 7, POSTPROCESS_ATTRIBUTES_THRESHOLD: 0.05}
  ATTRIBUTE_ON: True
  DEVICE: cpu
INPUT: {MIN_SIZE_TEST: 96, MAX_SIZE_TEST: 160}
DATASETS: {LABELMAP_FILE: "labelmap.json"}
TEST: {IMS_PER_BATCH: 2, IGNORE_BOX_REGRESSION: True, OUTPUT_FEATURE: True, TSV_SAVE_SUBSET: ['rect', 'class', 'conf', 'feature']}
"""


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    """A folder with a small R-50-C4 AttrRCNN: yaml, weights, label map and three images."""
    d = tmp_path_factory.mktemp("small")
    (d / "small.yaml").write_text(SMALL_R50)
    _, orig = load_original(d / "small.yaml")
    torch.manual_seed(0)
    model = AttrRCNN(orig.detector)
    with torch.no_grad():
        model.roi_heads.box.predictor.cls_score.weight.mul_(20)
    torch.save({"model": model.state_dict()}, d / "weights.pth")
    LabelMap(("__background__",) + tuple(f"c{i}" for i in range(1, 11)),
             ("__no_attribute__",) + tuple(f"a{i}" for i in range(1, 7))).save_vg_json(d / "labelmap.json")
    rng = np.random.default_rng(0)
    (d / "imgs" / "sub").mkdir(parents=True)
    for name, (h, w) in {"x.jpg": (120, 200), "sub/y.png": (200, 120), "z.png": (90, 90)}.items():
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(d / "imgs" / name)
    return d


def test_native_form(small: Path, tmp_path: Path, capsys) -> None:
    code, out, err = run(capsys, "extract", small / "imgs", "-o", tmp_path / "o", "--weights", small / "weights.pth",
                         "--preset", "tiny", "--labelmap", small / "labelmap.json", "--quiet")
    assert code == 2 and "does not fit the model" in err  # the tiny preset is not this R-50-C4
    code, out, err = run(capsys, "extract", small / "imgs", "-o", tmp_path / "o", "--weights", small / "weights.pth",
                         "--labelmap", small / "labelmap.json", "--quiet")
    assert code == 2 and "does not fit the model" in err  # nor is the default X152 preset


def _small_native(small: Path, out: Path, capsys, *extra: str) -> tuple[int, str, str]:
    cfg = small / "small.yaml"
    return run(capsys, "extract", "--config-file", cfg, "--images", small / "imgs", "-o", out, "--quiet", *extra)


def test_original_form_outputs(small: Path, tmp_path: Path, capsys) -> None:
    code, out, err = run(capsys, "extract", "--config-file", small / "small.yaml", "MODEL.WEIGHT", small / "weights.pth",
                         "DATA_DIR", small, "--images", small / "imgs", "-o", tmp_path / "o", "--quiet")
    assert code == 0, err
    assert "3 images" in out
    preds = T.TSVFile(tmp_path / "o/predictions.tsv")
    feats = F.FeatureTSV(tmp_path / "o/features.tsv", dim=134)
    assert preds.keys() == ["sub/y", "x", "z"] == [feats[i][0] for i in range(3)]
    for i in range(3):
        key, text = preds[i]
        row = json.loads(text)
        assert list(row) == ["objects", "relations"]
        assert list(row["objects"][0]) == ["rect", "bbox_id", "class", "conf", "feature"]
        p = F.Prediction.from_json(key, text)
        h, w = Image.open(small / "imgs" / {"sub/y": "sub/y.png", "x": "x.jpg", "z": "z.png"}[key]).size[::-1]
        np.testing.assert_array_equal(feats.get(key), F.oscar_region_features(p.features, p.boxes, w, h))
    for name in ("predictions", "features"):
        assert T.lineidx_path(tmp_path / f"o/{name}.tsv").read_text() == "".join(
            f"{o}\n" for o in T.scan_offsets(tmp_path / f"o/{name}.tsv").tolist())


def test_original_form_matches_library_and_subset(small: Path, tmp_path: Path, capsys) -> None:
    base = ["MODEL.WEIGHT", small / "weights.pth", "DATA_DIR", small]
    code, _, err = run(capsys, "extract", "--config-file", small / "small.yaml", *base, "TEST.TSV_SAVE_SUBSET",
                       "['rect','class','conf','attr_labels','attr_scores']", "TEST.IMS_PER_BATCH", "1",
                       "--images", small / "imgs", "-o", tmp_path / "o", "--quiet")
    assert code == 0, err
    _, orig = load_original(small / "small.yaml", ["TEST.IMS_PER_BATCH", "1"])
    det = Detector.from_checkpoint(small / "weights.pth", preset=orig.detector, labelmap=small / "labelmap.json")
    d = det(small / "imgs/x.jpg")
    row = json.loads(T.TSVFile(tmp_path / "o/predictions.tsv").get("x")[1])
    assert list(row["objects"][0]) == ["rect", "bbox_id", "class", "conf", "attributes", "attr_scores"]
    assert [o["class"] for o in row["objects"]] == d.names
    # every top-k slot as the original writes it (0-score slots too); the scored ones are the library's attributes
    k = min(orig.detector.attributes.max_per_box, orig.detector.attributes.num_attributes)
    assert all(len(o["attributes"]) == len(o["attr_scores"]) == k for o in row["objects"])
    assert [[a for a, s in zip(o["attributes"], o["attr_scores"]) if s > 0] for o in row["objects"]] == d.attr_names
    for o, want in zip(row["objects"], d.attr_scores):
        np.testing.assert_allclose([s for s in o["attr_scores"] if s > 0], want, rtol=1e-5)


@pytest.mark.parametrize("regression", ["True", "False"])
def test_subset_blobs_in_the_originals_layout(small: Path, tmp_path: Path, capsys, regression: str) -> None:
    """scores_all (class softmax), boxes_all (per-class boxes, resized pixels) and attr_scores_all (attribute softmax),
    in the subset's order, as base64 float32."""
    subset = "['class', 'rect', 'conf', 'scores_all', 'boxes_all', 'attr_labels', 'attr_scores', 'attr_scores_all']"
    code, _, err = run(capsys, "extract", "--config-file", small / "small.yaml", "MODEL.WEIGHT", small / "weights.pth",
                       "DATA_DIR", small, "TEST.TSV_SAVE_SUBSET", subset, "TEST.IMS_PER_BATCH", "1",
                       "TEST.IGNORE_BOX_REGRESSION", regression, "--images", small / "imgs", "-o", tmp_path / "o",
                       "--quiet")
    assert code == 0, err
    hw = {r[0]: F.parse_hw_row(r)[1:] for r in T.TSVFile(tmp_path / "o/hw.tsv")}
    lm = json.loads((small / "labelmap.json").read_text())
    for key, text in T.TSVFile(tmp_path / "o/predictions.tsv"):
        objs = json.loads(text)["objects"]
        assert objs and list(objs[0]) == ["class", "rect", "bbox_id", "conf", "scores_all", "boxes_all", "attributes",
                                          "attr_scores", "attr_scores_all"]
        (H, W) = hw[key]
        for o in objs:
            probs = F.decode_floats(o["scores_all"])
            assert probs.shape == (11,) and abs(probs.sum() - 1) < 1e-5
            label = lm["label_to_idx"][o["class"]]
            assert probs[label] == np.float32(o["conf"])
            boxes = F.decode_floats(o["boxes_all"]).reshape(11, 4)  # resized pixels, as the original leaves them
            h, w = target_size(W, H, 96, 160)
            np.testing.assert_allclose(boxes[label] * np.float32([W / w, H / h, W / w, H / h]), o["rect"], rtol=1e-5)
            if regression == "True":
                assert (boxes == boxes[0]).all()  # the proposal, repeated per class
            attrs = F.decode_floats(o["attr_scores_all"])
            assert attrs.shape == (7,) and abs(attrs.sum() - 1) < 1e-5
            scored = [s for s in o["attr_scores"] if s > 0]
            if scored:
                np.testing.assert_allclose(scored[0], attrs[1:].max(), rtol=1e-5)


def test_padded_batches_follow_ims_per_batch(small: Path, tmp_path: Path, capsys) -> None:
    """TEST.IMS_PER_BATCH 2 pads consecutive images together, as the original does without aspect-ratio grouping
    (tests/extract/test_grouped_batches.py: with it): the padded image's rows may change, the batch's largest one
    does not."""
    base = ["MODEL.WEIGHT", small / "weights.pth", "DATA_DIR", small, "DATALOADER.ASPECT_RATIO_GROUPING", "False",
            "--quiet"]
    files = [small / "imgs/x.jpg", small / "imgs/z.png"]
    outs = {}
    for ims in ("1", "2"):
        code, _, err = run(capsys, "extract", "--config-file", small / "small.yaml", *base, "TEST.IMS_PER_BATCH", ims,
                           "--images", *[a for f in files for a in ("--images", f)][1:], "-o", tmp_path / ims)
        assert code == 0, err
        outs[ims] = T.TSVFile(tmp_path / ims / "predictions.tsv")
    a, b = (F.Prediction.from_json("x", outs[k].get("x")[1]) for k in ("1", "2"))
    assert a.classes == b.classes and len(outs["2"]) == 2
    np.testing.assert_allclose(a.boxes, b.boxes, atol=1e-2, rtol=0)
    np.testing.assert_allclose(a.scores, b.scores, atol=1e-4, rtol=0)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["MODEL.ROI_HEADS.NOPE", "1"], "MODEL.ROI_HEADS.NOPE is not a key of the original config"),
        (["MODEL.BACKBONE.CONV_BODY", "R-101-FPN"], "is not supported"),
        (["MODEL.ROI_HEADS.SCORE_THRESH", "abc"], "expects a float"),
        (["MODEL.ROI_HEADS.NMS_FILTER"], "come in pairs"),
        (["MODEL.DEVICE", "cuda:0"] if not torch.cuda.is_available() else ["MODEL.DEVICE", "tpu"], "device"),
        (["MODEL.WEIGHT", "/no/such.pth"], "no such checkpoint"),
        (["DATASETS.LABELMAP_FILE", "nope.json"], "no such label map"),
    ],
)
def test_original_form_errors(small: Path, tmp_path: Path, capsys, extra: list[str], message: str) -> None:
    code, _, err = run(capsys, "extract", "--config-file", small / "small.yaml", "MODEL.WEIGHT", small / "weights.pth",
                       "DATA_DIR", small, *extra, "--images", small / "imgs", "-o", tmp_path / "o", "--quiet")
    assert code == 2 and message in err and err.count("error:") == 1 and "Traceback" not in err, err
    assert not (tmp_path / "o" / "predictions.tsv").exists()


def test_native_form_errors(small: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    import dataclasses
    import socket

    from vinvl import registry

    monkeypatch.setenv("VINVL_HOME", str(tmp_path / "home"))
    # An explicit --model is fetched when missing: here from a source where nothing listens.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}/acct/c"
    e = registry.entry("vinvl_vg_x152c4")
    monkeypatch.setitem(registry.REGISTRY, e.name, dataclasses.replace(e, assets=tuple(
        dataclasses.replace(a, sources=(registry.azure(f"{dead}/{a.filename}"),)) for a in e.assets)))
    code, _, err = run(capsys, "extract", small / "imgs", "-o", tmp_path / "o", "--model", "vinvl_vg_x152c4", "--quiet")
    assert code == 2 and err.count("error:") == 1
    assert "vinvl_vg_x152c4: vinvl_vg_x152c4.pth: no source worked" in err and f"azure {dead}/" in err
    assert str(tmp_path / "home" / "models" / "vinvl_vg_x152c4") in err
    code, _, err = run(capsys, "extract", small / "imgs", "--weights", small / "weights.pth")
    assert code == 2 and "-o/--out is required" in err
    code, _, err = run(capsys, "extract", small / "imgs", "-o", tmp_path / "o", "--weights", small / "weights.pth",
                       "--set", "nms_filter")
    assert code == 2 and "expected KEY=VALUE" in err
    code, _, err = run(capsys, "extract", small / "imgs", "-o", tmp_path / "o", "--weights", small / "weights.pth",
                       "--set", "MODEL.ROI_HEADS.NMS_FILTER=2")
    assert code == 2 and "original keys need the original form" in err
    code, _, err = run(capsys, "extract", small / "imgs", "-o", tmp_path / "o", "--model", "nope")
    assert code == 2 and "unknown model 'nope'" in err
    code, _, err = run(capsys, "extract", "--config-file", small / "small.yaml", "-o", tmp_path / "o")
    assert code == 2 and "needs --images" in err


# -- the full X152-C4 on the reference weights ------------------------------------------------
SEED = ["TEST.IMS_PER_BATCH", "2", "MODEL.ROI_HEADS.NMS_FILTER", "1", "MODEL.ROI_HEADS.SCORE_THRESH", "0.2",
        "TEST.IGNORE_BOX_REGRESSION", "True", "MODEL.ATTRIBUTE_ON", "True", "TEST.OUTPUT_FEATURE", "True"]


def _seed_command(ref: Path, weights: Path, out: Path, *extra: str) -> list[str]:
    return ["extract", "--config-file", "sgg_configs/vgattr/vinvl_x152c4.yaml", *SEED, "MODEL.WEIGHT", str(weights),
            "DATA_DIR", str(ref), "DATASETS.LABELMAP_FILE", "synthetic_labelmap.json", "MODEL.DEVICE", "cpu", *extra,
            "--images", str(ref / "images/img0.jpg"), "-o", str(out), "--quiet"]


@pytest.mark.slow
def test_seed_command_line_reproduces_the_reference_row(shared_dir: Path, tmp_path: Path, capsys) -> None:
    from tests.detection.reference import reference_checkpoint

    ref = shared_dir / "reference/detector"
    code, _, err = run(capsys, *_seed_command(ref, reference_checkpoint(ref, 1), tmp_path / "o",
                                              "INPUT.MIN_SIZE_TEST", "320", "INPUT.MAX_SIZE_TEST", "480"))
    assert code == 0, err
    ((key, ours),) = list(T.TSVFile(tmp_path / "o/predictions.tsv"))
    theirs = (ref / "img0_320x480_predictions.tsv").read_text().rstrip("\n").split("\t")[1]
    assert key == "img0"
    a, b = json.loads(ours), json.loads(theirs)
    assert len(a["objects"]) == len(b["objects"])
    confs = np.array([o["conf"] for o in a["objects"]]), np.array([o["conf"] for o in b["objects"]])
    np.testing.assert_allclose(*confs, atol=1e-4, rtol=0)
    # Every byte but conf's last digits: in one process this CPU's MKL branches are not both the
    # reference machine's (docs/detector.md; test_bit_exact.py checks the two halves exactly).
    if ours != theirs:
        assert not np.array_equal(*confs)
    for oa, ob in zip(a["objects"], b["objects"]):
        oa["conf"] = ob["conf"]
    assert json.dumps(a) == theirs


@pytest.mark.slow
def test_native_form_matches_reference(shared_dir: Path, tmp_path: Path, capsys) -> None:
    from tests.detection.reference import reference_checkpoint

    ref = shared_dir / "reference/detector"
    code, _, err = run(capsys, "extract", ref / "images/img0.jpg", "-o", tmp_path / "o", "--weights",
                       reference_checkpoint(ref, 1), "--labelmap", ref / "synthetic_labelmap.json", "--min-size", "320",
                       "--max-size", "480", "--quiet")  # the default command line: fp32, the original's numbers
    assert code == 0, err
    exp = np.load(ref / "img0_320x480.npz")
    ((key, text),) = list(T.TSVFile(tmp_path / "o/predictions.tsv"))
    p = F.Prediction.from_json(key, text)
    assert (p.image_h, p.image_w) == (480, 640) and p.attributes is not None
    assert p.classes == [f"class{int(c):04d}" for c in exp["labels"]]
    np.testing.assert_allclose(p.boxes, exp["boxes_xyxy_orig"], atol=1e-2, rtol=0)
    np.testing.assert_allclose(p.scores, exp["scores"], atol=1e-4, rtol=0)
    x = F.FeatureTSV(tmp_path / "o/features.tsv").get("img0")
    np.testing.assert_array_equal(x[:, :2048], p.features)
    np.testing.assert_array_equal(x[:, 2048:], F.box_geometry(p.boxes, 640, 480))
    cos = (x[:, :2048] * exp["box_features"]).sum(1) / np.linalg.norm(x[:, :2048], axis=1) / np.linalg.norm(exp["box_features"], axis=1)
    assert cos.min() >= 0.9999
    sure = exp["attr_scores"] > 0.06
    lm = LabelMap.load(ref / "synthetic_labelmap.json")
    for i, attrs in enumerate(p.attributes):
        assert attrs[: int(sure[i].sum())] == [lm.attribute_name(int(a)) for a in exp["attr_labels"][i][sure[i]]]


@pytest.mark.slow
def test_seed_command_line_over_a_data_dir_dataset(shared_dir: Path, tmp_path: Path, capsys) -> None:
    """DATASETS.TEST names a dataset yaml under DATA_DIR (an image TSV + linelist), as the seed's runs do."""
    import pybase64

    from tests.detection.reference import reference_checkpoint

    ref = shared_dir / "reference/detector"
    data = tmp_path / "datasets1"
    (data / "vinvl").mkdir(parents=True)
    T.write_tsv(data / "vinvl/test.img.tsv", [["other", "bm90IGFuIGltYWdl"],
                                             ["img0", pybase64.b64encode((ref / "images/img0.jpg").read_bytes()).decode()]])
    (data / "vinvl/test.linelist.tsv").write_text("1\n")
    (data / "vinvl/test.yaml").write_text("img: test.img.tsv\nlinelist: test.linelist.tsv\n")
    (data / "synthetic_labelmap.json").write_bytes((ref / "synthetic_labelmap.json").read_bytes())
    cmd = _seed_command(ref, reference_checkpoint(ref, 1), tmp_path / "o", "INPUT.MIN_SIZE_TEST", "320",
                        "INPUT.MAX_SIZE_TEST", "480", "DATASETS.TEST", "('vinvl/test.yaml',)")
    cmd[cmd.index("DATA_DIR") + 1] = str(data)
    i = cmd.index("--images")
    del cmd[i : i + 2]
    code, _, err = run(capsys, *cmd)
    assert code == 0, err
    ((key, ours),) = list(T.TSVFile(tmp_path / "o/predictions.tsv"))
    theirs = (ref / "img0_320x480_predictions.tsv").read_text().rstrip("\n").split("\t")[1]
    a, b = json.loads(ours), json.loads(theirs)
    assert key == "img0" and len(a["objects"]) == len(b["objects"])
    np.testing.assert_allclose([o["conf"] for o in a["objects"]], [o["conf"] for o in b["objects"]], atol=1e-4, rtol=0)
    for oa, ob in zip(a["objects"], b["objects"]):
        oa["conf"] = ob["conf"]
    assert json.dumps(a) == theirs
