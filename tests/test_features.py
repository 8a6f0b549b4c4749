"""vinvl.features: the float32 codec, the 2054 layout and every row format, against the original's bytes."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import pytest

from tests.rows import make_prediction
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


# -- any region width (issue 16, item 7) and CR line endings (item 9) ---------------------------
WIDTHS = [1, 7, 512, 2048]  # region widths: the features rows are 6 wider


def _preds(rng: np.random.Generator, width: int, counts: list[int]) -> list[F.Prediction]:
    out = []
    for i, n in enumerate(counts):
        p = make_prediction(rng, f"img{i}", n)
        p.features = np.maximum(rng.standard_normal((n, width)), 0).astype(np.float32)
        out.append(p)
    return out


@pytest.mark.parametrize("width", WIDTHS)
def test_readers_take_any_width_from_the_rows(tmp_path: Path, width: int) -> None:
    rng = np.random.default_rng(width)
    counts = [0, *rng.integers(0, 6, 5).tolist(), 3]  # an empty first row says nothing of the width
    preds = _preds(rng, width, counts)
    src = T.write_tsv(tmp_path / "predictions.tsv", [p.to_row() for p in preds])
    assert [p.features.shape[1] for p in F.read_predictions(src) if len(p)] == [width] * sum(c > 0 for c in counts)
    stats = F.to_oscar(src, tmp_path / "o")
    assert stats["feature_dim"] == width + 6
    assert json.loads((tmp_path / "o" / "manifest.json").read_text())["feature_dim"] == width + 6
    feats = tmp_path / "o" / "features.tsv"
    (tmp_path / "o" / "manifest.json").unlink()  # the rows alone must do
    ft = F.FeatureTSV(feats)
    assert ft.dim == F.feature_dim(feats) == width + 6
    for p in preds:
        x = ft.get(p.key)
        assert x.shape == (len(p), width + 6)
        if len(p):
            np.testing.assert_array_equal(x, p.region_features())
            f, g = F.split_oscar_region_features(x)
            np.testing.assert_array_equal(f, p.features)
            assert g.shape == (len(p), 6)
    assert [k for k, _ in ft] == [p.key for p in preds]
    for kind, path in (("features", feats), ("predictions", src)):
        rows, problems = T.check_tsv(path, row_check=F.row_checker(kind, path))
        assert rows == len(preds) and problems == []
    cap = T.write_tsv(tmp_path / "cap.tsv", [F.format_caption_features_row(p.key, p.region_features()) if len(p)
                                             else F.format_caption_features_row(p.key, np.zeros((0, width + 6))) for p in preds])
    assert F.FeatureTSV(cap).dim == width + 6
    assert T.check_tsv(cap, row_check=F.row_checker("caption-features", cap))[1] == []


@pytest.mark.parametrize("width", WIDTHS)
def test_a_row_of_another_width_is_named(tmp_path: Path, width: int) -> None:
    rng = np.random.default_rng(100 + width)
    other = width + int(rng.integers(1, 9))
    rows = [F.format_features_row(f"k{i}", rng.standard_normal((int(rng.integers(1, 4)), width + 6))) for i in range(4)]
    bad_at = int(rng.integers(1, 4))
    rows[bad_at] = F.format_features_row(f"k{bad_at}", rng.standard_normal((2, other + 6)))
    path = T.write_tsv(tmp_path / "features.tsv", rows)
    _, problems = T.check_tsv(path, row_check=F.row_checker("features", path))
    assert [p.line for p in problems] == [bad_at + 1]
    assert f"{other + 6}-d but the file's width is {width + 6} (at line 1)" in str(problems[0])
    with pytest.raises(FormatError, match=rf"features.tsv:{bad_at + 1} \(key 'k{bad_at}'\)"):
        F.FeatureTSV(path)[bad_at]
    with pytest.raises(FormatError, match=rf":{bad_at + 1} "):
        list(F.FeatureTSV(path))
    # predictions: every row's regions one width, in the reader, the checker and the converter
    preds = _preds(rng, width, [2, 1, 3])
    preds[2].features = rng.standard_normal((3, other)).astype(np.float32)
    src = T.write_tsv(tmp_path / "predictions.tsv", [p.to_row() for p in preds])
    for run in (lambda: list(F.read_predictions(src)), lambda: F.to_oscar(src, tmp_path / "o")):
        with pytest.raises(FormatError, match=rf"predictions.tsv:3 \(key 'img2'\): region features are {other}-d here "
                                              rf"but {width}-d at line 1"):
            run()
    assert not (tmp_path / "o" / "features.tsv").exists()
    _, problems = T.check_tsv(src, row_check=F.row_checker("predictions", src))
    assert [p.line for p in problems] == [3]


@pytest.mark.parametrize("width", WIDTHS)
def test_explicit_width_and_manifest(tmp_path: Path, width: int) -> None:
    rng = np.random.default_rng(200 + width)
    preds = _preds(rng, width, [2, 0, 4])
    src = T.write_tsv(tmp_path / "predictions.tsv", [p.to_row() for p in preds])
    F.to_oscar(src, tmp_path)  # writes features.tsv and manifest.json beside predictions.tsv
    feats = tmp_path / "features.tsv"
    assert F.manifest_feature_dim(feats) == width + 6 and F.manifest_feature_dim(src) == width
    assert F.row_checker("features", feats) is not None and T.check_tsv(feats, row_check=F.row_checker("features", feats))[1] == []
    assert T.check_tsv(src, row_check=F.row_checker("predictions", src))[1] == []
    wrong = width + 6 + 3
    _, problems = T.check_tsv(feats, row_check=F.row_checker("features", feats, dim=wrong))
    assert [p.line for p in problems] == [1, 3] and all("as given" in str(p) for p in problems)
    with pytest.raises(FormatError, match=r"features.tsv:1 \(key 'img0'\)"):
        F.FeatureTSV(feats, dim=wrong).get("img0")
    assert F.FeatureTSV(feats, dim=width + 6).get("img1").shape == (0, width + 6)
    # the manifest is believed over the rows, and says so when they disagree
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"feature_dim": wrong, "other": 1}))
    _, problems = T.check_tsv(feats, row_check=F.row_checker("features", feats))
    assert len(problems) == 2 and "manifest.json says" in str(problems[0])
    _, problems = T.check_tsv(src, row_check=F.row_checker("predictions", src))
    assert len(problems) == 2 and f"{width}-d here but {wrong - 6}-d as" in str(problems[0])
    F.to_oscar(src, tmp_path)  # a later conversion corrects the width and keeps the other keys
    assert json.loads(manifest.read_text()) == {"feature_dim": width + 6, "other": 1}
    for bad in ("{", json.dumps({"feature_dim": "x"}), json.dumps({"feature_dim": 3})):
        manifest.write_text(bad)
        with pytest.raises(FormatError, match="manifest.json"):
            F.FeatureTSV(feats).dim
    manifest.write_text(json.dumps({"model": "m"}))  # no feature_dim: the rows decide
    assert F.FeatureTSV(feats).dim == width + 6


def test_width_of_files_without_boxes(tmp_path: Path) -> None:
    path = T.write_tsv(tmp_path / "f.tsv", [F.format_features_row(f"k{i}", np.zeros((0, 9))) for i in range(3)])
    assert F.feature_dim(path) == F.OSCAR_DIM and F.FeatureTSV(path).get("k1").shape == (0, F.OSCAR_DIM)
    assert F.feature_dim(path, 9) == 9 and F.FeatureTSV(path, dim=9).get("k2").shape == (0, 9)
    with pytest.raises(FormatError, match="positive"):
        F.feature_dim(path, 0)


_KINDS = {
    "features": lambda rng, k: F.format_features_row(k, rng.standard_normal((2, 13))),
    "caption-features": lambda rng, k: F.format_caption_features_row(k, rng.standard_normal((1, 13))),
    "predictions": lambda rng, k: make_prediction(rng, k, 2).to_row(),
    "label": lambda rng, k: F.format_label_row(make_prediction(rng, k, 2)),
    "hw": lambda rng, k: F.format_hw_row(k, 10, 20),
    "plain": lambda rng, k: [k, "some text"],
}


@pytest.mark.parametrize("kind", list(_KINDS))
@pytest.mark.parametrize("all_lines", [True, False])
def test_cr_line_endings_are_named(tmp_path: Path, kind: str, all_lines: bool) -> None:
    rng = np.random.default_rng(len(kind))
    path = T.write_tsv(tmp_path / "in.tsv", [_KINDS[kind](rng, f"k{i}") for i in range(4)])
    lines = path.read_bytes().split(b"\n")[:-1]
    crs = list(range(4)) if all_lines else [int(rng.integers(0, 4))]
    path.write_bytes(b"".join(ln + (b"\r\n" if i in crs else b"\n") for i, ln in enumerate(lines)))
    T.build_lineidx(path)
    assert F.detect_row_kind(lines[0].split(b"\t")) == kind
    _, problems = T.check_tsv(path, row_check=F.row_checker(kind, path))
    assert [p.line for p in problems] == [i + 1 for i in crs]
    assert all("CR line endings" in str(p) and str(p).startswith(f"{path}:") for p in problems)
    readers = {
        "features": lambda: list(F.FeatureTSV(path, dim=13)) + [F.FeatureTSV(path, dim=13)[i] for i in range(4)],
        "caption-features": lambda: list(F.FeatureTSV(path, dim=13)),
        "predictions": lambda: list(F.read_predictions(path)),
        "label": lambda: [F.parse_label_row(r, path=path, line=n) for n, r in T.iter_tsv(path)],
        "hw": lambda: [F.parse_hw_row(r, path=path, line=n) for n, r in T.iter_tsv(path)],
    }
    if kind in readers:
        with pytest.raises(FormatError, match=rf"in.tsv:{crs[0] + 1}: .*CR line endings"):
            readers[kind]()
    if kind == "predictions":
        with pytest.raises(FormatError, match="CR line endings"):
            F.to_oscar(path, tmp_path / "o")
