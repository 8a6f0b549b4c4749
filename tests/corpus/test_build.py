"""`vinvl.corpus.build`: a pretraining corpus from caption and question files plus feature/label folders."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from vinvl.corpus.build import TextSource, build_corpus
from vinvl.errors import VinvlError
from vinvl.features import Prediction, format_features_row, format_label_row
from vinvl.oscar.pretrain import CorpusDataset, PretrainConfig
from vinvl.tsv import TSVFile, TSVWriter, write_key_index


def folders(tmp: Path, name: str, keys: list[str]) -> tuple[Path, Path]:
    f, l = tmp / "features" / name, tmp / "labels" / name
    with TSVWriter(f / "features.tsv") as fw, TSVWriter(l / "label.tsv") as lw:
        for k in keys:
            fw.write(format_features_row(k, np.ones((2, 2054), np.float32)))
            lw.write(format_label_row(Prediction(k, np.zeros((2, 4), np.float32), ["man", "dog"], np.ones(2))))
    write_key_index(f / "imageid2idx.json", ((k, i) for i, k in enumerate(keys)))
    return f, l


def test_build_from_coco_and_vqa(tmp_path: Path) -> None:
    coco_f, coco_l = folders(tmp_path, "coco", ["1", "2"])
    caps = {"images": [], "annotations": [{"image_id": 1, "id": 10, "caption": "A man  with a dog."},
                                          {"image_id": 3, "id": 11, "caption": "no features for this one"}]}
    (tmp_path / "caps.json").write_text(json.dumps(caps))
    vqa = {"questions": [{"image_id": 2, "question": "What animal?", "question_id": 7}]}
    (tmp_path / "q.json").write_text(json.dumps(vqa))
    gqa = {"g1": {"imageId": "1", "question": "Is it a dog?", "answer": "yes"}}
    (tmp_path / "gqa.json").write_text(json.dumps(gqa))
    report = build_corpus(
        [TextSource("coco", tmp_path / "caps.json", "caption"), TextSource("coco", tmp_path / "q.json", "qa"),
         TextSource("coco", tmp_path / "gqa.json", "qa")],
        {"coco": coco_f}, {"coco": coco_l}, tmp_path / "out", name="mini")
    assert report == {"rows": {"coco/caption": 1, "coco/qa": 2}, "skipped_no_features": {"coco/caption": 1}, "total": 3}
    rows = list(TSVFile(tmp_path / "out/mini.tsv"))
    assert rows[0] == ["coco_1", "coco_cap_10", "A man with a dog."]
    assert rows[1] == ["coco_2", "coco_qa_7", "What animal?"] and rows[2][-1] == "yes"
    spec = yaml.safe_load((tmp_path / "out/mini.yaml").read_text())
    assert spec["corpus_file"] == "mini.tsv" and set(spec["image_feature_path"]) == {"coco"}

    class Tok:  # the dataset only needs the ids; a whitespace tokenizer is enough here
        cls_token, sep_token, pad_token_id, cls_token_id, sep_token_id, mask_token_id, vocab_size = "[CLS]", "[SEP]", 0, 2, 3, 4, 50

        def tokenize(self, t):
            return t.lower().split()

        def convert_tokens_to_ids(self, toks):
            return [hash(t) % 40 + 5 for t in toks]

    ds = CorpusDataset(tmp_path / "out/mini.yaml", Tok(), PretrainConfig(max_seq_length=16, max_img_seq_length=4))
    assert ds.tags("coco_1") == "man dog" and ds.text_b(2) == "yes" and ds.regions("coco_2").shape == (2, 2054)
    with pytest.raises(VinvlError, match="names no dataset"):
        ds.regions("flickr_5")


def test_bad_sources(tmp_path: Path) -> None:
    f, l = folders(tmp_path, "coco", ["1"])
    (tmp_path / "bad.json").write_text(json.dumps({"images": []}))
    with pytest.raises(VinvlError, match="needs an 'annotations' list"):
        build_corpus([TextSource("coco", tmp_path / "bad.json", "caption")], {"coco": f}, {"coco": l}, tmp_path / "o")
    with pytest.raises(VinvlError, match="has no feature folder"):
        build_corpus([TextSource("vg", tmp_path / "bad.json", "caption")], {"coco": f}, {"coco": l}, tmp_path / "o")


def test_cli(tmp_path: Path, capsys) -> None:
    from vinvl.cli import main

    f, _ = folders(tmp_path, "coco", ["1"])
    (tmp_path / "caps.json").write_text(json.dumps({"annotations": [{"image_id": 1, "id": 1, "caption": "a dog"}]}))
    code = main(["corpus", "build", str(tmp_path / "out"), "--captions", f"coco={tmp_path / 'caps.json'}",
                 "--features", f"coco={f}", "--labels", f"coco={tmp_path / 'labels' / 'coco'}"])
    assert code == 0, capsys.readouterr().err
    assert list(TSVFile(tmp_path / "out/corpus.tsv")) == [["coco_1", "coco_cap_1", "a dog"]]
    assert main(["corpus", "build", str(tmp_path / "o2"), "--features", f"coco={f}"]) == 2
    assert "at least one --captions" in capsys.readouterr().err


def test_chunked_dataset_ids_find_their_chunk_folder(tmp_path: Path) -> None:
    """``<dataset>_<chunk>_<key>`` ids (the large corpora's chunked datasets) read regions and tags from
    the chunk's feature and label folders; a label folder without label.tsv is one clear error."""
    import yaml

    folders(tmp_path, "cc/0", ["a"])
    _, l1 = folders(tmp_path, "cc/1", ["b"])
    with TSVWriter(tmp_path / "corpus.tsv") as w:
        w.write(["cc_0_a", "cap", "a man and a dog"])
        w.write(["cc_1_b", "cap", "a dog"])
    spec = {"corpus_file": "corpus.tsv", "image_feature_path": {"cc": "features/cc"}, "image_label_path": {"cc": "labels/cc"}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(spec))

    class Tok:
        def tokenize(self, text):
            return text.split()

    ds = CorpusDataset(tmp_path / "c.yaml", Tok(), PretrainConfig())
    assert ds.regions("cc_1_b").shape == (2, 2054) and ds.tags("cc_0_a") == "man dog"
    (l1 / "label.tsv").unlink()
    ds = CorpusDataset(tmp_path / "c.yaml", Tok(), PretrainConfig())
    with pytest.raises(VinvlError, match="no such label file"):
        ds.tags("cc_1_b")
