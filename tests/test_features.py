"""vinvl.features: the float32 codec, the 2054 layout and every row format, against the original's bytes."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import make_prediction

from vinvl import features as F
from vinvl import tsv as T
from vinvl.errors import FormatError


def test_codec_matches_stdlib(rng: np.random.Generator) -> None:
    a = rng.standard_normal((5, 2054)).astype(np.float32)
    text = F.encode_floats(a)
    assert text == base64.b64encode(a.astype("<f4").tobytes()).decode()
    back = F.decode_floats(text, 2054)
    assert back.dtype == np.dtype("<f4") and back.shape == (5, 2054)
    np.testing.assert_array_equal(back, a)
    assert F.decode_floats(text.encode()).shape == (5 * 2054,)
    assert F.encode_floats(np.zeros((0, 2054), np.float32)) == ""
    assert F.decode_floats("", 2054).shape == (0, 2054)
    # non-contiguous and float64 input are written as float32 C order
    b = rng.standard_normal((4, 6))
    assert F.encode_floats(b.T) == F.encode_floats(np.ascontiguousarray(b.T, dtype=np.float32))


def test_codec_errors() -> None:
    with pytest.raises(FormatError, match=r"f.tsv:7 \(key 'k'\): invalid base64"):
        F.decode_floats("abc$", path="f.tsv", line=7, key="k")
    with pytest.raises(FormatError, match="not a multiple of 4 x 2054"):
        F.decode_floats(base64.b64encode(b"\0" * 8), 2054)
    with pytest.raises(FormatError, match="not a multiple of 4 bytes"):
        F.decode_floats(base64.b64encode(b"\0" * 6))


def test_box_geometry() -> None:
    boxes = np.array([[10, 20, 110, 70], [0, 0, 639, 479]], np.float32)
    g = F.box_geometry(boxes, 640, 480)
    w, h = 640.0, 480.0
    expect = np.array(
        [[10 / w, 20 / h, 110 / w, 70 / h, 100 / w, 50 / h], [0, 0, 639 / w, 479 / h, 639 / w, 479 / h]], np.float64
    ).astype(np.float32)
    np.testing.assert_array_equal(g, expect)
    assert F.box_geometry(np.zeros((0, 4)), 5, 5).shape == (0, 6)
    feats = np.ones((2, 2048), np.float32)
    x = F.oscar_region_features(feats, boxes, 640, 480)
    assert x.shape == (2, 2054) and x.dtype == np.float32
    f2, g2 = F.split_oscar_region_features(x)
    np.testing.assert_array_equal(f2, feats)
    np.testing.assert_array_equal(g2, g)
    with pytest.raises(ValueError):
        F.box_geometry(boxes, 0, 480)


def test_reference_prediction_rows_reserialise_byte_identical(shared_dir: Path) -> None:
    """The original's predictions.tsv rows parse and write back to the same bytes."""
    for name in ("img0_320x480_predictions.tsv", "img0_600x1000_predictions.tsv"):
        path = shared_dir / "reference/detector" / name
        raw = path.read_bytes()
        preds = list(F.read_predictions(path))
        assert len(preds) == 1
        p = preds[0]
        assert p.key == "img0.jpg" and p.features is not None and p.features.shape[1] == 2048
        assert (p.key + "\t" + p.to_json() + "\n").encode() == raw
        ref = np.load(path.with_name(name.replace("_predictions.tsv", ".npz")))
        np.testing.assert_array_equal(p.features, ref["box_features"])
        np.testing.assert_array_equal(p.boxes, ref["boxes_xyxy_orig"])
        np.testing.assert_array_equal(p.scores, ref["scores"])
        assert p.classes == [f"class{int(c):04d}" for c in ref["labels"]]


@pytest.mark.parametrize("n", [0, 1, 100])
def test_prediction_roundtrip(tmp_path: Path, rng: np.random.Generator, n: int) -> None:
    p = make_prediction(rng, f"dir/img {n}", n)
    subset = ("rect", "class", "conf", "feature", "attr_labels", "attr_scores")
    path = T.write_tsv(tmp_path / "predictions.tsv", [p.to_row(subset)])
    raw = path.read_bytes()
    obj = json.loads(raw.split(b"\t", 1)[1])
    assert list(obj) == ["objects", "relations", "image_h", "image_w"]
    if n:
        assert list(obj["objects"][0]) == ["rect", "bbox_id", "class", "conf", "feature", "attributes", "attr_scores"]
        assert [o["bbox_id"] for o in obj["objects"]] == list(range(n))
    (q,) = list(F.read_predictions(path))
    np.testing.assert_array_equal(q.boxes, p.boxes)
    np.testing.assert_array_equal(q.scores, p.scores)
    np.testing.assert_array_equal(q.features if n else np.zeros((0, 2048)), p.features if n else np.zeros((0, 2048)))
    assert q.classes == p.classes and (q.image_h, q.image_w) == (p.image_h, p.image_w)
    if n:
        assert q.attributes == p.attributes
    assert (q.key + "\t" + q.to_json(subset) + "\n").encode() == raw
    assert T.TSVFile(path).offsets.tolist() == T.scan_offsets(path).tolist()


def test_prediction_default_subset_has_no_attributes(rng: np.random.Generator) -> None:
    p = make_prediction(rng, "k", 3, size=False)
    obj = json.loads(p.to_json())
    assert list(obj) == ["objects", "relations"]
    assert list(obj["objects"][0]) == ["rect", "bbox_id", "class", "conf", "feature"]


def test_prediction_plain_list_and_extra_keys() -> None:
    feat = F.encode_floats(np.arange(4, dtype=np.float32))
    text = json.dumps([{"rect": [1, 2, 3, 4], "class": "dog", "conf": 0.5, "feature": feat, "scores_all": "AAAA"}])
    p = F.Prediction.from_json("k", text)
    assert p.classes == ["dog"] and p.features.shape == (1, 4) and p.object_extra == [{"scores_all": "AAAA"}]
    assert json.loads(p.to_json())["objects"][0]["scores_all"] == "AAAA"


@pytest.mark.parametrize(
    "text, message",
    [
        ("{not json", "invalid JSON"),
        ('{"boxes": []}', "without an 'objects' list"),
        ('{"objects": [{"class": "a"}]}', "object 0: bad or missing 'rect'"),
        ('{"objects": [{"rect": [1, 2, 3], "class": "a"}]}', "rect must have 4"),
        ('{"objects": [{"rect": [1,2,3,4], "class": "a", "feature": "!!"}]}', "invalid base64"),
    ],
)
def test_prediction_errors(text: str, message: str) -> None:
    with pytest.raises(FormatError, match=rf"p.tsv:3 \(key 'k'\): .*{message}"):
        F.Prediction.from_json("k", text, path="p.tsv", line=3)


@pytest.mark.parametrize("n", [0, 1, 100])
def test_features_rows_roundtrip(tmp_path: Path, rng: np.random.Generator, n: int) -> None:
    a = rng.standard_normal((n, 2054)).astype(np.float32)
    path = T.write_tsv(tmp_path / "features.tsv", [F.format_features_row("k", a)])
    raw = path.read_bytes()
    assert raw.startswith(f"k\t{n}\t".encode())
    ft = F.FeatureTSV(path)
    np.testing.assert_array_equal(ft.get("k"), a)
    assert T.write_tsv(tmp_path / "again.tsv", [F.format_features_row(*ft[0])]).read_bytes() == raw
    cap = T.write_tsv(tmp_path / "cap.tsv", [F.format_caption_features_row("k", a)])
    assert json.loads(cap.read_bytes().split(b"\t", 1)[1]) == {"num_boxes": n, "features": F.encode_floats(a)}
    np.testing.assert_array_equal(F.FeatureTSV(cap).get("k"), a)
    assert T.write_tsv(tmp_path / "cap2.tsv", [F.format_caption_features_row(*F.FeatureTSV(cap)[0])]).read_bytes() == cap.read_bytes()


def test_features_row_errors() -> None:
    blob = F.encode_floats(np.zeros((2, 2054), np.float32))
    with pytest.raises(FormatError, match=r"f:4 \(key 'k'\): num_boxes says 3 but the blob holds 2"):
        F.parse_features_row(["k", "3", blob], path="f", line=4)
    with pytest.raises(FormatError, match="num_boxes is not a non-negative integer"):
        F.parse_features_row(["k", "x", blob])
    with pytest.raises(FormatError, match="expected 3 columns"):
        F.parse_features_row(["k", blob])
    with pytest.raises(FormatError, match="the row's 1 boxes are 2053-d but the file's width is 2054"):
        F.parse_features_row(["k", "1", F.encode_floats(np.zeros(2053, np.float32))])
    with pytest.raises(FormatError, match="not a multiple of 4 x 2054"):
        F.parse_features_row(["k", "2", F.encode_floats(np.zeros(2053, np.float32))])
    with pytest.raises(FormatError, match="num_boxes says 1 but"):
        F.parse_caption_features_row(["k", json.dumps({"num_boxes": 1, "features": blob})])
    with pytest.raises(FormatError, match="expected"):
        F.parse_caption_features_row(["k", '{"num_boxes": 1}'])


def test_label_and_hw_rows(rng: np.random.Generator) -> None:
    p = make_prediction(rng, "k", 4)
    key, objs = F.parse_label_row(F.format_label_row(p))
    assert key == "k" and [o["class"] for o in objs] == p.classes
    assert F.tags_text(objs) == p.tags() == " ".join(p.classes)
    assert F.parse_label_row(["k", json.dumps({"objects": objs})])[1] == objs
    assert F.format_hw_row("k", 480, 640) == ["k", '[{"height": 480, "width": 640}]']
    assert F.parse_hw_row(F.format_hw_row("k", 480, 640)) == ("k", 480, 640)
    assert F.parse_hw_row(["k", '{"height": 3, "width": 4}']) == ("k", 3, 4)
    with pytest.raises(FormatError, match=r"hw:2 \(key 'k'\)"):
        F.parse_hw_row(["k", '[{"height": 0, "width": 4}]'], path="hw", line=2)
    with pytest.raises(FormatError, match="list of objects with a 'class'"):
        F.parse_label_row(["k", '[{"conf": 1}]'])


def test_to_oscar_own_rows(tmp_path: Path, rng: np.random.Generator) -> None:
    preds = [make_prediction(rng, f"img{i}", n) for i, n in enumerate([3, 0, 100, 7])]
    src = T.write_tsv(tmp_path / "predictions.tsv", [p.to_row() for p in preds])
    stats = F.to_oscar(src, tmp_path / "out")
    assert stats["images"] == 4 and stats["boxes"] == 110
    out = tmp_path / "out"
    assert json.loads((out / "imageid2idx.json").read_text()) == {f"img{i}": i for i in range(4)}
    ft = F.FeatureTSV(out / "features.tsv")
    lab = T.TSVFile(out / "label.tsv")
    for p in preds:
        x = ft.get(p.key)
        assert x.shape == (len(p), 2054)
        if len(p):
            np.testing.assert_array_equal(x, p.region_features())
        assert F.tags_text(F.parse_label_row(lab.get(p.key))[1]) == p.tags()
    for name in ("features", "label"):
        assert T.lineidx_path(out / f"{name}.tsv").read_bytes() == "".join(
            f"{o}\n" for o in T.scan_offsets(out / f"{name}.tsv").tolist()
        ).encode()


def test_to_oscar_reference_with_hw(tmp_path: Path, shared_dir: Path) -> None:
    src = shared_dir / "reference/detector/img0_600x1000_predictions.tsv"
    hw = T.write_tsv(tmp_path / "hw.tsv", [F.format_hw_row("other", 1, 1), F.format_hw_row("img0.jpg", 480, 640)])
    with pytest.raises(FormatError, match="no image_h/image_w: pass the hw.tsv"):
        F.to_oscar(src, tmp_path / "o1")
    assert not (tmp_path / "o1" / "features.tsv").exists()
    F.to_oscar(src, tmp_path / "o2", hw=hw)
    ref = np.load(shared_dir / "reference/detector/img0_600x1000.npz")
    x = F.FeatureTSV(tmp_path / "o2" / "features.tsv").get("img0.jpg")
    np.testing.assert_array_equal(x[:, :2048], ref["box_features"])
    np.testing.assert_array_equal(x[:, 2048:], F.box_geometry(ref["boxes_xyxy_orig"], 640, 480))


def test_to_oscar_errors_keep_existing_output(tmp_path: Path, rng: np.random.Generator) -> None:
    good = T.write_tsv(tmp_path / "good.tsv", [make_prediction(rng, "a", 2).to_row()])
    F.to_oscar(good, tmp_path / "out")
    before = (tmp_path / "out" / "features.tsv").read_bytes()
    dup = T.write_tsv(tmp_path / "dup.tsv", [make_prediction(rng, k, 1).to_row() for k in "aba"])
    with pytest.raises(FormatError, match=r"dup.tsv:3 \(key 'a'\): duplicate key \(first at line 1\)"):
        F.to_oscar(dup, tmp_path / "out")
    assert (tmp_path / "out" / "features.tsv").read_bytes() == before
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "features.lineidx", "features.tsv", "imageid2idx.json", "label.lineidx", "label.tsv", "manifest.json"
    ]
    (tmp_path / "empty.tsv").write_bytes(b"")
    with pytest.raises(FormatError, match="empty"):
        F.to_oscar(tmp_path / "empty.tsv", tmp_path / "o3")
    hw = T.write_tsv(tmp_path / "hw.tsv", [F.format_hw_row("zzz", 1, 1)])
    with pytest.raises(FormatError, match=r"hw.tsv \(key 'a'\): no image size"):
        F.to_oscar(good, tmp_path / "o4", hw=hw)


def test_detect_kind_and_checker(tmp_path: Path, rng: np.random.Generator) -> None:
    p = make_prediction(rng, "k", 2)
    assert F.detect_row_kind([b"k", b"2", b"AAAA"]) == "features"
    assert F.detect_row_kind([x.encode() for x in p.to_row()]) == "predictions"
    assert F.detect_row_kind([x.encode() for x in F.format_caption_features_row("k", np.zeros((1, 2054)))]) == "caption-features"
    assert F.detect_row_kind([x.encode() for x in F.format_hw_row("k", 1, 2)]) == "hw"
    assert F.detect_row_kind([x.encode() for x in F.format_label_row(p)]) == "label"
    assert F.detect_row_kind([b"a", b"b"]) == "plain"
    check = F.row_checker("features", "f.tsv")
    with pytest.raises(FormatError, match="f.tsv:9"):
        check([b"k", b"1", b"AAAA"], 9)
    with pytest.raises(ValueError):
        F.row_checker("nope")


def test_few_thousand_rows_random_key(tmp_path: Path) -> None:
    """A 3000-row features.tsv (~200 MB) reads back exactly by random key."""
    rng = np.random.default_rng(7)
    counts = rng.integers(0, 14, 3000)
    seeds = rng.integers(0, 2**31, 3000)

    def rows_of(i: int) -> np.ndarray:
        return np.random.default_rng(int(seeds[i])).standard_normal((int(counts[i]), 2054), dtype=np.float32)

    with T.TSVWriter(tmp_path / "features.tsv") as w:
        for i in range(3000):
            w.write(F.format_features_row(f"{i:06d}", rows_of(i)))
    T.write_key_index(tmp_path / "imageid2idx.json", [(f"{i:06d}", i) for i in range(3000)])
    ft = F.FeatureTSV(tmp_path / "features.tsv")
    assert len(ft) == 3000
    for i in rng.permutation(3000)[:300]:
        np.testing.assert_array_equal(ft.get(f"{int(i):06d}"), rows_of(int(i)))
