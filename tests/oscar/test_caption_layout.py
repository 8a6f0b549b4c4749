"""Captioning's files both ways: a split in the original ``run_captioning.py`` layout (yaml, caption-format
feature TSV, row-aligned label TSV, caption json) is read by vinvl; vinvl writes one from extraction outputs
that a reader of the original's documented format takes; feature TSVs convert between the two layouts;
an image without tags decodes in a batch of tagged ones as it does alone."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml

from tests.oscar.model_tester import tiny_config
from vinvl.errors import FormatError
from vinvl.features import FeatureTSV, Prediction, convert_features, format_features_row, format_label_row
from vinvl.tsv import TSVWriter, write_key_index

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "dog", "cat", "man", "on", "the", "grass", "red"]


def original_split(folder: Path, rng: np.random.Generator, dim: int = 16) -> tuple[Path, dict[str, np.ndarray]]:
    """Files as the original's data holds them, written here by hand: ``train.yaml``, ``train.feature.tsv``
    (``key \\t {"num_boxes": n, "features": base64}``), ``train.label.tsv`` (``key \\t [{"class", "conf", "rect"}]``),
    ``train_caption.json`` (image_id = the TSV key)."""
    folder.mkdir(parents=True)
    feats, caps = {}, []
    with open(folder / "train.feature.tsv", "w") as f, open(folder / "train.label.tsv", "w") as lab:
        for i, (key, classes) in enumerate([("1001", ["dog", "grass"]), ("1002", ["man"]), ("1003", [])]):
            x = rng.standard_normal((max(len(classes), 1) + i, dim)).astype(np.float32)
            feats[key] = x
            blob = base64.b64encode(x.tobytes()).decode()
            f.write(f"{key}\t{json.dumps({'num_boxes': len(x), 'features': blob})}\n")
            objs = [{"class": c, "conf": 0.9, "rect": [0.0, 0.0, 5.0, 5.0]} for c in classes]
            lab.write(f"{key}\t{json.dumps(objs)}\n")
            caps += [{"image_id": key, "caption": f"a {w} on the grass", "id": 2 * i + j} for j, w in enumerate(["dog", "cat"])]
    for name in ("train.feature.tsv", "train.label.tsv"):  # the original reads rows through a .lineidx
        from vinvl.tsv import build_lineidx

        build_lineidx(folder / name)
    (folder / "train_caption.json").write_text(json.dumps(caps))
    (folder / "train.yaml").write_text("feature: train.feature.tsv\nlabel: train.label.tsv\ncaption: train_caption.json\n")
    return folder / "train.yaml", feats


def test_the_original_split_is_read(tmp_path: Path, rng) -> None:
    from vinvl.oscar.data.captions import CaptionData

    split, feats = original_split(tmp_path / "data", rng)
    d = CaptionData(split)
    assert d.keys == ["1001", "1002", "1003"] and d.dim == 16
    for k, x in feats.items():
        np.testing.assert_array_equal(d.regions(k), x)
    assert [d.tags(k) for k in d.keys] == ["dog grass", "man", ""]
    assert len(d.captions) == 6 and d.refs["1002"] == ["a dog on the grass", "a cat on the grass"]


def extraction_folder(folder: Path, rng, keys: list[str], dim: int = 22) -> dict[str, np.ndarray]:
    """`vinvl extract`'s Oscar files: features.tsv (3 columns), label.tsv, imageid2idx.json."""
    out = {}
    with TSVWriter(folder / "features.tsv") as fw, TSVWriter(folder / "label.tsv") as lw:
        for i, k in enumerate(keys):
            n = i % 3  # an image with no boxes too
            x = rng.standard_normal((n, dim)).astype(np.float32)
            out[k] = x
            fw.write(format_features_row(k, x, dim=dim))
            lw.write(format_label_row(Prediction(k, np.tile([[1, 2, 30, 40]], (n, 1)), ["man", "dog", "cat"][:n],
                                                 np.full(n, 0.5), attributes=[["red"]] * n)))
    write_key_index(folder / "imageid2idx.json", ((k, i) for i, k in enumerate(keys)))
    return out


def read_like_the_original(split_yaml: Path) -> dict:
    """A reader of the original's documented captioning layout (not its code): the yaml names the files
    relative to itself; feature row i and label row i are the same image (rows paired by index, keys from
    the label TSV); features are ``np.frombuffer(b64decode(features), float32).reshape(num_boxes, -1)``;
    tags are the label objects' classes; captions are looked up by ``image_id`` among the keys; the
    ``_coco_format.json`` beside the caption file lists every key as an image."""
    cfg = yaml.safe_load(split_yaml.read_text())
    root = split_yaml.parent

    def rows(name: str) -> list[list[str]]:
        text = (root / name).read_text()
        offsets = [int(x) for x in (root / name).with_suffix(".lineidx").read_text().split()]
        raw = text.encode()
        return [raw[o:].split(b"\n", 1)[0].decode().split("\t") for o in offsets]

    feats = rows(cfg["feature"])
    labels = rows(cfg["label"]) if cfg["label"] else None
    keys = [r[0] for r in (labels or feats)]
    images = {}
    for i, key in enumerate(keys):
        info = json.loads(feats[i][1])
        x = np.frombuffer(base64.b64decode(info["features"]), np.float32).reshape((info["num_boxes"], -1))
        tags = " ".join(o["class"] for o in json.loads(labels[i][1])) if labels else None
        images[key] = (x, tags)
    key2captions = {k: [] for k in keys}
    for c in json.loads((root / cfg["caption"]).read_text()):
        key2captions[c["image_id"]].append(c["caption"])  # a KeyError here is the original's failure
    coco = json.loads((root / (Path(cfg["caption"]).stem + "_coco_format.json")).read_text())
    assert {im["id"] for im in coco["images"]} == set(keys)
    assert all(a["image_id"] in key2captions for a in coco["annotations"])
    return {"images": images, "captions": key2captions, "keys": keys}


def test_split_written_from_extraction_outputs(tmp_path: Path, rng) -> None:
    from typer.testing import CliRunner

    from vinvl.cli import app
    from vinvl.oscar.data.captions import CaptionData

    keys = ["img_b", "img_a", "img_c", "img_d"]
    feats = extraction_folder(tmp_path / "extract", rng, keys)
    caps = [{"image_id": "img_c", "caption": "a dog and a cat", "id": 5}, {"image_id": "img_a", "caption": "a man", "id": 9},
            {"image_id": "img_c", "caption": "two animals", "id": 6}]
    (tmp_path / "caps.json").write_text(json.dumps(caps))
    res = CliRunner().invoke(app, ["oscar", "caption", "split", str(tmp_path / "extract"), "--captions",
                                   str(tmp_path / "caps.json"), "-o", str(tmp_path / "split"), "--name", "val"])
    assert res.exit_code == 0, res.output
    split = tmp_path / "split" / "val.yaml"
    assert res.output.strip() == str(split)
    orig = read_like_the_original(split)
    assert orig["keys"] == ["img_a", "img_c"]  # the captioned images, in the folder's order
    for k in orig["keys"]:
        np.testing.assert_array_equal(orig["images"][k][0], feats[k])
    assert orig["images"]["img_c"][1] == "man dog" and orig["images"]["img_a"][1] == "man"
    assert orig["captions"] == {"img_a": ["a man"], "img_c": ["a dog and a cat", "two animals"]}
    back = CaptionData(split)  # and vinvl reads what it wrote
    assert back.keys == orig["keys"] and back.refs == orig["captions"] and back.tags("img_c") == "man dog"
    # without captions: every image, as a test split; without labels: `label: null`
    (tmp_path / "extract" / "label.tsv").unlink()
    (tmp_path / "extract" / "label.lineidx").unlink()
    res = CliRunner().invoke(app, ["oscar", "caption", "split", str(tmp_path / "extract"), "-o", str(tmp_path / "t"),
                                   "--name", "test"])
    assert res.exit_code == 0, res.output
    cfg = yaml.safe_load((tmp_path / "t" / "test.yaml").read_text())
    assert cfg == {"feature": "test.feature.tsv", "label": None}
    assert CaptionData(tmp_path / "t" / "test.yaml").keys == keys


def test_feature_layouts_convert_both_ways(tmp_path: Path, rng) -> None:
    keys = [f"k{i}" for i in range(5)]
    feats = extraction_folder(tmp_path / "x", rng, keys, dim=2054)
    stats = convert_features(tmp_path / "x/features.tsv", tmp_path / "caption.tsv", "caption")
    assert stats["rows"] == 5 and stats["boxes"] == sum(len(v) for v in feats.values())
    for line, k in zip((tmp_path / "caption.tsv").read_text().splitlines(), keys):
        key, info = line.split("\t")
        obj = json.loads(info)
        assert key == k and list(obj) == ["num_boxes", "features"] and obj["num_boxes"] == len(feats[k])
        assert info == json.dumps({"num_boxes": len(feats[k]), "features": obj["features"]})  # the original's bytes
    ft = FeatureTSV(tmp_path / "caption.tsv")  # vinvl reads the caption layout wherever it reads features
    for k in keys:
        np.testing.assert_array_equal(ft.get(k), feats[k])
    convert_features(tmp_path / "caption.tsv", tmp_path / "plain.tsv", "plain")
    assert (tmp_path / "plain.tsv").read_bytes() == (tmp_path / "x/features.tsv").read_bytes()
    assert (tmp_path / "plain.lineidx").read_bytes() == (tmp_path / "x/features.lineidx").read_bytes()


@pytest.mark.parametrize("row, why", [
    ("k\t3\tAAAA", "do not split into 3 boxes"),
    ("k\t{\"num_boxes\": 1}", "'num_boxes', 'features'"),
    ("k\tx\tAAAA", "num_boxes is not"),
    ("k\t1\tA*AA", "not base64"),
    ("k", "found 1"),
])
def test_bad_feature_rows_are_one_clear_error(tmp_path: Path, row: str, why: str) -> None:
    src = tmp_path / "f.tsv"
    src.write_text("ok\t1\t" + base64.b64encode(np.zeros(2, np.float32).tobytes()).decode() + "\n" + row + "\n")
    with pytest.raises(FormatError, match=why) as e:
        convert_features(src, tmp_path / "out.tsv", "caption")
    assert f"{src}:2" in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "out.tsv").exists() and not list(tmp_path.glob(".*tmp*"))
    with pytest.raises(FormatError, match="unknown feature layout"):
        convert_features(src, tmp_path / "out.tsv", "json")


def test_an_image_without_tags_decodes_in_a_tagged_batch(tmp_path: Path, rng) -> None:
    """The original pads every decoding input to the full text length (PAD in the tag slots, masked out):
    a tagless image stacks with tagged ones and gets the caption it gets alone."""
    from vinvl.oscar import OscarForCaptioning
    from vinvl.oscar.options import DecodeOptions
    from vinvl.oscar.tasks.captioning import caption_images
    from vinvl.oscar.tensorize import CaptionTensorizer, load_tokenizer

    (tmp_path / "vocab.txt").write_text("\n".join(WORDS) + "\n")
    tok = load_tokenizer(tmp_path)
    t = CaptionTensorizer(tok, max_img_seq_length=5, max_seq_length=14, max_seq_a_length=8)
    regions = rng.standard_normal((3, 16)).astype(np.float32)
    tagged, bare = t.decode_inputs("dog grass", regions), t.decode_inputs(None, regions)
    for name in tagged:
        assert tagged[name].shape == bare[name].shape, name
    assert (bare["input_ids"][8:] == tok.pad_token_id).all() and (bare["attention_mask"][:, 8:14] == 0).all()
    torch.manual_seed(0)
    model = OscarForCaptioning(tiny_config(vocab_size=len(WORDS), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                           intermediate_size=64, max_position_embeddings=32, img_feature_dim=16)).eval()
    feats = {k: rng.standard_normal((2 + i, 16)).astype(np.float32) for i, k in enumerate("abc")}
    tags = {"a": "dog grass", "b": "", "c": "man"}
    settings = {"max_seq_length": 14, "max_seq_a_length": 8, "max_img_seq_length": 5, "add_od_labels": True}
    source = SimpleNamespace(regions=feats.get, tags=tags.get)  # a region source
    together = caption_images(model, tok, list("abc"), source, settings, DecodeOptions(num_beams=2, max_gen_length=8))
    alone = [caption_images(model, tok, [k], source, settings, DecodeOptions(num_beams=2, max_gen_length=8))[0]
             for k in "abc"]
    assert together == alone


def test_caption_layout_features_feed_every_reader(tmp_path: Path, rng) -> None:
    """The caption layout wherever features are read: a features folder, a VQA/GQA/NLVR2 ``--features`` TSV,
    retrieval's ``--features`` file; an imageid2idx.json that does not fit its TSV is an error, not a wrong row."""
    import shutil

    from vinvl.oscar.data.regions import RegionStore, open_regions
    from vinvl.oscar.data.retrieval import open_images

    keys = ["k0", "k1", "k2", "k3"]
    feats = extraction_folder(tmp_path / "x", rng, keys)
    convert_features(tmp_path / "x/features.tsv", tmp_path / "x/train.feature.tsv", "caption")
    shutil.copytree(tmp_path / "x", tmp_path / "y")
    convert_features(tmp_path / "x/features.tsv", tmp_path / "y/features.tsv", "caption")  # a folder in the caption layout
    for src in (open_regions(tmp_path / "x/train.feature.tsv"), open_images(tmp_path / "x/train.feature.tsv"),
                RegionStore(tmp_path / "y"), open_regions(tmp_path / "y")):
        for k in keys:
            np.testing.assert_array_equal(src.regions(k), feats[k])
        assert src.tags("k2") == "man dog"
    write_key_index(tmp_path / "y/imageid2idx.json", ((k, i) for i, k in enumerate(reversed(keys))))
    with pytest.raises(FormatError, match="the key index points at row 4, whose key is 'k3'"):
        RegionStore(tmp_path / "y").regions("k0")


def test_a_vinvl_captioning_checkpoint_has_the_originals_training_args(tmp_path: Path, rng) -> None:
    """The original's caption evaluation (`restore_training_settings`) torch.loads the checkpoint's
    training_args.bin and reads its lengths and switches by attribute: vinvl writes it beside its json."""
    import argparse

    from vinvl.oscar.data.captions import CaptionData
    from vinvl.oscar.options import CaptionOptions
    from vinvl.oscar.tasks.captioning import train
    from vinvl.oscar.checkpoint import training_settings

    split, _ = original_split(tmp_path / "data", rng)
    (tmp_path / "vocab.txt").write_text("\n".join(WORDS) + "\n")
    cfg = CaptionOptions(max_seq_length=20, max_seq_a_length=12, max_img_seq_length=5, batch_size=2, max_steps=2, log_steps=1,
                         device="cpu")
    ckpt = train(CaptionData(split), tmp_path / "run", cfg, vocab=tmp_path / "vocab.txt", log=lambda m: None,
                 model_config=tiny_config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                                          max_position_embeddings=32, img_feature_dim=16))
    args = torch.load(ckpt / "training_args.bin", weights_only=False)  # as the original reads it (our own file)
    assert isinstance(args, argparse.Namespace)
    assert args.max_seq_length - args.max_seq_a_length == 8  # the tag room it restores
    for name, value in (("max_seq_a_length", 12), ("do_lower_case", True), ("add_od_labels", True),
                        ("max_img_seq_length", 5), ("img_feature_dim", 16)):
        assert getattr(args, name) == value, name
    (ckpt / "training_args.json").unlink()  # and vinvl reads the .bin alone the same way
    assert training_settings(ckpt)["max_seq_a_length"] == 12 and training_settings(ckpt).source.endswith(".bin")
