"""Pretraining corpora in the original's layout, both ways: `vinvl corpus build` writes what a reader of the
original's documented layout (``OscarTSVDataset``: the yaml's ``corpus`` key, ids split on ``_``,
``predictions_gt.tsv`` / ``QA_fileB.tsv`` by key, features by ``imageid2idx.json``) takes, and vinvl reads a
corpus written by hand in that layout (chunked datasets, the ``cc`` alias, ``gt_objects``, a feature
``--data_dir``, datasets left out of ``corpus``), with one-line errors for every check the original asserts."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from vinvl.corpus.build import TextSource, build_corpus
from vinvl.errors import VinvlError
from vinvl.features import Prediction, format_features_row, format_hw_row, format_label_row
from vinvl.oscar.data.corpus import CorpusDataset
from vinvl.oscar.options import PretrainOptions
from vinvl.tsv import TSVFile, TSVWriter, write_key_index


class Tok:  # the dataset only needs ids; a whitespace tokenizer is enough here
    cls_token, sep_token, pad_token_id, cls_token_id, sep_token_id, mask_token_id, vocab_size = "[CLS]", "[SEP]", 0, 2, 3, 4, 50

    def tokenize(self, t):
        return t.lower().split()

    def convert_tokens_to_ids(self, toks):
        return [hash(t) % 40 + 5 for t in toks]


def extracted(tmp: Path, name: str, objects: dict[str, list[str]], dim: int = 2054, hw: bool = True) -> Path:
    """A `vinvl extract`-like folder: features.tsv, imageid2idx.json, label.tsv, hw.tsv."""
    f = tmp / "features" / name
    rng = np.random.default_rng(len(objects))
    with TSVWriter(f / "features.tsv") as fw, TSVWriter(f / "label.tsv") as lw, TSVWriter(f / "hw.tsv") as hw_w:
        for k, classes in objects.items():
            n = len(classes)
            fw.write(format_features_row(k, rng.standard_normal((max(n, 1), dim)).astype(np.float32), dim=dim))
            lw.write(format_label_row(Prediction(k, np.tile([[1, 2, 3, 4]], (n, 1)), classes, np.full(n, 0.5))))
            hw_w.write(format_hw_row(k, 480, 640))
    if not hw:
        (f / "hw.tsv").unlink()
    write_key_index(f / "imageid2idx.json", ((k, i) for i, k in enumerate(objects)))
    return f


# -- a reader of the original's documented layout (not its code) ----------------------------------
CHUNKED, ONE_SPLIT = ("googlecc", "sbu", "oi", "objects365", "tagoi"), ("coco", "flickr30k", "gqa")


def _seek(tsv: Path, row: int) -> list[str]:
    offsets = [int(x) for x in tsv.with_suffix(".lineidx").read_text().split()]
    with open(tsv, "rb") as f:
        f.seek(offsets[row])
        return f.readline().decode().rstrip("\n").split("\t")


def original_reader(yaml_file: Path, data_dir: Path) -> list[tuple[str, str, str]]:
    """(image id, text_a, text_b) of every row as OscarTSVDataset loads them: datasets from ``corpus``
    (split on '_'); label folders relative to the yaml, feature folders joined to ``data_dir``; row ids
    split on '_' (dataset first; chunk second to last for chunked datasets; image key last); question rows
    (a 'qa' field) take ``' '.join(labels)`` of their QA_fileB.tsv row and need their image's tag row
    (image_h, image_w); other rows the classes of predictions_gt.tsv's objects; every lookup through the
    index jsons and the .lineidx files; the features decode to (num_boxes, 2054)."""
    cfg = yaml.safe_load(yaml_file.read_text())
    root = yaml_file.parent
    datasets = cfg["corpus"].split("_")
    out = []
    corpus = root / cfg["corpus_file"]
    for line in range(len(corpus.with_suffix(".lineidx").read_text().split())):
        row = _seek(corpus, line)
        img, lab = row[0].split("_"), row[1].split("_")
        assert img[0] == lab[0], "Dataset names for image and label do not match!"
        ds = "googlecc" if lab[0] == "cc" else lab[0]
        if ds not in datasets:
            continue
        assert ds in CHUNKED + ONE_SPLIT, f"Not supported dataset: {ds}"
        feat_dir = data_dir / cfg["image_feature_path"][ds]
        if ds in CHUNKED:
            feat_dir = feat_dir / img[-2]
        feat_index = json.loads((feat_dir / "imageid2idx.json").read_text())
        assert img[-1] in feat_index
        num_boxes, blob = _seek(feat_dir / "features.tsv", feat_index[img[-1]])[1:]
        assert np.frombuffer(base64.b64decode(blob), np.float32).reshape(int(num_boxes), 2054).shape[0] == int(num_boxes)
        label_dir = root / cfg["image_label_path"][ds]
        tags_index = json.loads((label_dir / "imageid2idx.json").read_text())
        assert len(row[2]) != 0, "Text_a is empty"
        if "qa" in lab:
            assert img[-1] == lab[-2], "Image ids for image and qa do not match!"
            qa = _seek(label_dir / "QA_fileB.tsv", json.loads((label_dir / "QA_qaid2idx.json").read_text())[lab[-1]])
            assert qa[0] == lab[-1]
            text_b = " ".join(json.loads(qa[1])["labels"])
            tag_row = json.loads(_seek(label_dir / "predictions_gt.tsv", tags_index[img[-1]])[1])
        else:
            assert img[-1] == lab[-1], "Image ids for image and label do not match!"
            rowb = _seek(label_dir / "predictions_gt.tsv", tags_index[lab[-1]])
            assert rowb[0] == lab[-1]
            tag_row = json.loads(rowb[1])
            text_b = " ".join(o["class"] for o in tag_row.get("gt_objects", tag_row["objects"]))
        assert tag_row["image_h"] > 0 and tag_row["image_w"] > 0
        assert len(text_b) != 0, "Text_b is empty"
        out.append((row[0], row[2], text_b))
    return out


def test_build_writes_what_the_original_reads(tmp_path: Path) -> None:
    coco = extracted(tmp_path, "coco", {"1": ["man", "dog"], "2": ["cat"], "4": []})
    caps = {"images": [], "annotations": [{"image_id": 1, "id": 10, "caption": "A man  with a dog."},
                                          {"image_id": 3, "id": 11, "caption": "no features for this one"},
                                          {"image_id": 4, "id": 12, "caption": "nothing detected: no tags"},
                                          {"image_id": 2, "id": 13, "caption": " "}]}
    (tmp_path / "caps.json").write_text(json.dumps(caps))
    vqa = {"questions": [{"image_id": 2, "question": "What animal?", "question_id": 7}]}  # no answer: a tags row
    (tmp_path / "q.json").write_text(json.dumps(vqa))
    gqa = {"g1": {"imageId": "1", "question": "Is it a dog?", "answer": "yes"},
           "g2": {"imageId": "4", "question": "Is it empty?", "answer": "yes"}}  # a question needs no tags
    (tmp_path / "gqa.json").write_text(json.dumps(gqa))
    report = build_corpus(
        [TextSource("coco", tmp_path / "caps.json", "caption"), TextSource("coco", tmp_path / "q.json", "qa"),
         TextSource("coco", tmp_path / "gqa.json", "qa")],
        {"coco": coco}, {"coco": coco}, tmp_path / "out", name="mini")
    assert report["rows"] == {"coco/caption": 1, "coco/qa/without_answer": 1, "coco/qa": 2} and report["total"] == 4
    assert report["skipped"] == {"coco/caption/no_features": 1, "coco/caption/image_without_tags": 1,
                                 "coco/caption/empty_text": 1}
    assert list(TSVFile(tmp_path / "out/mini.tsv")) == [
        ["coco_1", "coco_1", "A man with a dog."], ["coco_2", "coco_2", "What animal?"],
        ["coco_1", "coco_qa_1_g1", "Is it a dog?"], ["coco_4", "coco_qa_4_g2", "Is it empty?"]]
    spec = yaml.safe_load((tmp_path / "out/mini.yaml").read_text())
    assert spec["corpus"] == "coco" and spec["corpus_file"] == "mini.tsv" and spec["image_label_path"] == {"coco": "mini_labels/coco"}
    labels = tmp_path / "out/mini_labels/coco"
    assert json.loads(TSVFile(labels / "predictions_gt.tsv").get("1")[1]) == {
        "objects": [{"class": "man", "conf": 0.5, "rect": [1.0, 2.0, 3.0, 4.0]}, {"class": "dog", "conf": 0.5, "rect": [1.0, 2.0, 3.0, 4.0]}],
        "image_h": 480, "image_w": 640}
    triples = original_reader(tmp_path / "out/mini.yaml", Path("/"))
    assert triples == [("coco_1", "A man with a dog.", "man dog"), ("coco_2", "What animal?", "cat"),
                       ("coco_1", "Is it a dog?", "yes"), ("coco_4", "Is it empty?", "yes")]
    ds = CorpusDataset(tmp_path / "out/mini.yaml", Tok(), PretrainOptions(max_seq_length=16, max_img_seq_length=4))
    assert [(r.image_id, r.text_a, r.text_b) for r in ds.rows] == triples and ds.qa_rows == [2, 3]
    assert ds.regions(0).shape == (2, 2054) and ds.regions(3).shape == (1, 2054)


def test_build_refuses_what_the_original_cannot_hold(tmp_path: Path) -> None:
    coco = extracted(tmp_path, "coco", {"a_b": ["man"], "1": ["dog"]})
    (tmp_path / "caps.json").write_text(json.dumps({"annotations": [{"image_id": "a_b", "caption": "a man"}]}))
    with pytest.raises(VinvlError, match=r"image key 'a_b': the original's corpus ids split on '_'"):
        build_corpus([TextSource("coco", tmp_path / "caps.json", "caption")], {"coco": coco}, {"coco": coco}, tmp_path / "o")
    with pytest.raises(VinvlError, match=r"dataset name 'my_set'"):
        build_corpus([], {"my_set": coco}, {}, tmp_path / "o")
    with pytest.raises(VinvlError, match="use that name"):
        build_corpus([], {"cc": coco}, {}, tmp_path / "o")
    (tmp_path / "bad.json").write_text(json.dumps({"images": []}))
    with pytest.raises(VinvlError, match="needs an 'annotations' list"):
        build_corpus([TextSource("coco", tmp_path / "bad.json", "caption")], {"coco": coco}, {"coco": coco}, tmp_path / "o")
    with pytest.raises(VinvlError, match="has no feature folder"):
        build_corpus([TextSource("vg", tmp_path / "bad.json", "caption")], {"coco": coco}, {"coco": coco}, tmp_path / "o")
    nosize = extracted(tmp_path, "flickr30k", {"5": ["dog"]}, hw=False)
    (tmp_path / "c5.json").write_text(json.dumps({"annotations": [{"image_id": 5, "caption": "a dog"}]}))
    with pytest.raises(VinvlError, match="no image size for '5'"):
        build_corpus([TextSource("flickr30k", tmp_path / "c5.json", "caption")], {"flickr30k": nosize}, {}, tmp_path / "o")
    assert not (tmp_path / "o" / "corpus.tsv").exists() and not (tmp_path / "o" / "corpus.yaml").exists()


def test_cli(tmp_path: Path, capsys) -> None:
    from vinvl.cli import main

    f = extracted(tmp_path, "coco", {"1": ["dog"]})
    (tmp_path / "caps.json").write_text(json.dumps({"annotations": [{"image_id": 1, "id": 1, "caption": "a dog"}]}))
    code = main(["corpus", "build", str(tmp_path / "out"), "--captions", f"coco={tmp_path / 'caps.json'}",
                 "--features", f"coco={f}"])
    assert code == 0, capsys.readouterr().err
    assert list(TSVFile(tmp_path / "out/corpus.tsv")) == [["coco_1", "coco_1", "a dog"]]
    assert original_reader(tmp_path / "out/corpus.yaml", Path("/")) == [("coco_1", "a dog", "dog")]
    assert main(["corpus", "build", str(tmp_path / "o2"), "--features", f"coco={f}"]) == 2
    assert "at least one --captions" in capsys.readouterr().err


def hand_written(tmp: Path) -> Path:
    """A corpus as the original's data holds it, written here by hand: coco (one split), googlecc in chunk
    folders (rows say ``cc``), gqa with questions, and flickr30k rows that the yaml's ``corpus`` leaves out.
    Features live under a separate data dir; label folders beside the yaml."""
    data, root = tmp / "data", tmp / "pretrain"

    def features(folder: Path, keys: list[str], n: int) -> None:
        with TSVWriter(folder / "features.tsv") as w:
            for k in keys:
                w.write(format_features_row(k, np.full((n, 2054), float(len(k)), np.float32)))
        write_key_index(folder / "imageid2idx.json", ((k, i) for i, k in enumerate(keys)))

    def labels(folder: Path, rows: dict[str, dict], qa: dict[str, list[str]] = {}) -> None:
        with TSVWriter(folder / "predictions_gt.tsv") as w:
            for k, obj in rows.items():
                w.write([k, json.dumps({**obj, "image_h": 100, "image_w": 200})])
        write_key_index(folder / "imageid2idx.json", ((k, i) for i, k in enumerate(rows)))
        if qa:
            with TSVWriter(folder / "QA_fileB.tsv") as w:
                for q, answer in qa.items():
                    w.write([q, json.dumps({"labels": answer})])
            write_key_index(folder / "QA_qaid2idx.json", ((q, i) for i, q in enumerate(qa)))

    objs = lambda *c: {"objects": [{"class": x, "conf": 0.9, "rect": [0, 0, 1, 1]} for x in c]}  # noqa: E731
    features(data / "coco", ["11", "12"], 3)
    features(data / "cc" / "0", ["a"], 2)
    features(data / "cc" / "1", ["b", "c"], 4)
    features(data / "gqa", ["g7"], 5)
    labels(root / "labels/coco", {"11": objs("man", "horse"), "12": {**objs("dog"), "gt_objects": [{"class": "puppy"}]}})
    labels(root / "labels/googlecc", {"a": objs("tree"), "b": objs("sky", "sun"), "c": objs("car")})
    labels(root / "labels/gqa", {"g7": objs("bus")}, qa={"q1": ["red"], "q2": ["two", "buses"]})
    with TSVWriter(root / "corpus.tsv") as w:
        for r in (["coco_11", "coco_11", "a man rides a horse"], ["cc_0_a", "cc_0_a", "a tall tree"],
                  ["cc_1_b", "cc_1_b", "sunny sky"], ["flickr30k_9", "flickr30k_9", "left out"],
                  ["gqa_g7", "gqa_qa_g7_q1", "what color is the bus?"], ["coco_12", "coco_12", "a dog"],
                  ["gqa_g7", "gqa_qa_g7_q2", "how many buses?"], ["cc_1_c", "cc_1_c", "a car"]):
            w.write(r)
    spec = {"corpus": "coco_googlecc_gqa", "corpus_file": "corpus.tsv",
            "image_label_path": {"coco": "labels/coco", "googlecc": "labels/googlecc", "gqa": "labels/gqa",
                                 "flickr30k": "labels/flickr30k"},
            "image_feature_path": {"coco": "coco", "googlecc": "cc", "gqa": "gqa", "flickr30k": "flickr30k"}}
    (root / "corpus.yaml").write_text(yaml.safe_dump(spec))
    return root / "corpus.yaml"


def test_the_originals_layout_is_read(tmp_path: Path) -> None:
    corpus = hand_written(tmp_path)
    expected = [("coco_11", "a man rides a horse", "man horse"), ("cc_0_a", "a tall tree", "tree"),
                ("cc_1_b", "sunny sky", "sky sun"), ("gqa_g7", "what color is the bus?", "red"),
                ("coco_12", "a dog", "puppy"), ("gqa_g7", "how many buses?", "two buses"), ("cc_1_c", "a car", "car")]
    assert original_reader(corpus, tmp_path / "data") == expected  # the test's reader agrees with the layout
    ds = CorpusDataset(corpus, Tok(), PretrainOptions(), data_dir=tmp_path / "data")
    assert [(r.image_id, r.text_a, r.text_b) for r in ds.rows] == expected and ds.skipped == 1
    assert [tuple(ds.regions(i).shape) for i in range(len(ds))] == [(3, 2054), (2, 2054), (4, 2054), (5, 2054),
                                                                   (3, 2054), (5, 2054), (4, 2054)]
    assert float(ds.regions(1)[0, 0]) == 1.0 and float(ds.regions(2)[0, 0]) == 1.0 and ds.qa_rows == [3, 5]
    no_gt = CorpusDataset(corpus, Tok(), PretrainOptions(use_gtlabels=False), data_dir=tmp_path / "data")
    assert no_gt.rows[4].text_b == "dog"
    with pytest.raises(VinvlError, match="features.tsv: no such features file"):
        CorpusDataset(corpus, Tok(), PretrainOptions())  # the features are not beside the yaml


@pytest.mark.parametrize("row, why", [
    (["coco_11", "cc_11", "x"], "dataset names of image id 'coco_11' and label id 'cc_11' differ"),
    (["flickr30k_9", "coco_9", "x"], "dataset names of image id 'flickr30k_9' and label id 'coco_9' differ"),
    (["coco_11", "coco_12", "x"], "label id 'coco_12' does not end in the image key '11'"),
    (["gqa_g7", "gqa_qa_g8_q1", "x"], "question label id 'gqa_qa_g8_q1' is not <dataset>_qa_<image key g7>_<qa id>"),
    (["gqa_g7", "gqa_qa_g7_q9", "x"], "QA_fileB.tsv: no row for 'q9'"),
    (["coco_13", "coco_13", "x"], "image '13' of 'coco_13' is not in"),
    (["cc_2_a", "cc_2_a", "x"], "cc/2/features.tsv: no such features file"),
    (["cc_a", "cc_a", "x"], "image id 'cc_a' is not <dataset>_<chunk>_<image key>"),
    (["coco_11", "coco_11", " "], "text_a is empty"),
    (["coco_11", "coco_11"], "expected image id, label id, text_a"),
])
def test_every_check_the_original_asserts_is_one_error(tmp_path: Path, row: list[str], why: str) -> None:
    corpus = hand_written(tmp_path)
    with open(corpus.parent / "corpus.tsv", "a") as f:
        f.write("\t".join(row) + "\n")
    (corpus.parent / "corpus.lineidx").unlink()
    with pytest.raises(VinvlError, match=why.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")) as e:
        CorpusDataset(corpus, Tok(), PretrainOptions(), data_dir=tmp_path / "data")
    assert "corpus.tsv:9" in str(e.value) and "\n" not in str(e.value)


def test_label_folders_and_yaml_keys(tmp_path: Path) -> None:
    corpus = hand_written(tmp_path)
    (corpus.parent / "labels/gqa/QA_fileB.tsv").unlink()
    with pytest.raises(VinvlError, match=r"corpus.tsv:5: .*QA_fileB.tsv: no such answer file"):
        CorpusDataset(corpus, Tok(), PretrainOptions(), data_dir=tmp_path / "data")
    (corpus.parent / "labels/coco/predictions_gt.tsv").unlink()
    with pytest.raises(VinvlError, match=r"labels/coco/predictions_gt.tsv: no such label file"):
        CorpusDataset(corpus, Tok(), PretrainOptions(), data_dir=tmp_path / "data")
    spec = yaml.safe_load(corpus.read_text())
    del spec["corpus"]
    corpus.write_text(yaml.safe_dump(spec))
    with pytest.raises(VinvlError, match="a corpus yaml needs 'corpus'"):
        CorpusDataset(corpus, Tok(), PretrainOptions())
    corpus.write_text(yaml.safe_dump({**spec, "corpus": "coco_vg"}))
    with pytest.raises(VinvlError, match="dataset 'vg' of 'corpus' has no folder in 'image_label_path'"):
        CorpusDataset(corpus, Tok(), PretrainOptions())


def test_chunked_dataset_built_from_chunk_folders(tmp_path: Path) -> None:
    """A chunked dataset's extraction in chunk folders (each with its label.tsv and hw.tsv) gives
    ``<dataset>_<chunk>_<key>`` ids and one label folder for the dataset; a key in two chunks is refused."""
    root = tmp_path / "features" / "sbu"
    extracted(tmp_path, "sbu/0", {"x1": ["boat"]})
    extracted(tmp_path, "sbu/1", {"x2": ["sea", "boat"], "x3": ["sky"]})
    (tmp_path / "c.json").write_text(json.dumps({"annotations": [{"image_id": "x2", "caption": "a boat at sea"},
                                                                 {"image_id": "x1", "caption": "a boat"}]}))
    build_corpus([TextSource("sbu", tmp_path / "c.json", "caption")], {"sbu": root}, {}, tmp_path / "out")
    assert list(TSVFile(tmp_path / "out/corpus.tsv")) == [["sbu_1_x2", "sbu_1_x2", "a boat at sea"], ["sbu_0_x1", "sbu_0_x1", "a boat"]]
    assert original_reader(tmp_path / "out/corpus.yaml", Path("/")) == [("sbu_1_x2", "a boat at sea", "sea boat"),
                                                                        ("sbu_0_x1", "a boat", "boat")]
    ds = CorpusDataset(tmp_path / "out/corpus.yaml", Tok(), PretrainOptions())
    assert [r.feature for r in ds.rows] == [("sbu", "1", "x2"), ("sbu", "0", "x1")]
    extracted(tmp_path, "sbu/2", {"x1": ["boat"]})
    with pytest.raises(VinvlError, match="image key 'x1' is in chunks 0 and 2"):
        build_corpus([TextSource("sbu", tmp_path / "c.json", "caption")], {"sbu": root}, {}, tmp_path / "out2")
