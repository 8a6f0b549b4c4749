"""The tensorizers build the reference's inputs (../shared/reference/oscar/inputs.npz) from text, tags and features."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from vinvl.errors import VinvlError
from vinvl.oscar.tensorize import CaptionTensorizer, ClassificationTensorizer, load_tokenizer

# The reference's ids as words of a generated vocabulary: id k is the word "w<k>".
TEXT = ["w17 w25 w33 w41 w49 w57 w65 w73", "w12 w24 w36 w48 w60 w72 w84 w96"]
TAGS = ["w81 w89 w97 w105 w113", "w108 w15"]
REGIONS = [10, 7]


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    d = tmp_path_factory.mktemp("vocab")
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{k}" for k in range(5, 120)]
    (d / "vocab.txt").write_text("\n".join(words) + "\n")
    return load_tokenizer(d)


@pytest.fixture(scope="module")
def ref(shared_dir: Path) -> dict:
    i = np.load(shared_dir / "reference" / "oscar" / "inputs.npz")
    return {k: i[k] for k in i.files}


def test_classification_inputs(tok, ref) -> None:
    t = ClassificationTensorizer(tok, max_seq_length=16, max_img_seq_length=10)
    for r in range(2):
        x = t(TEXT[r], TAGS[r], ref["img_feats"][r][: REGIONS[r]])
        np.testing.assert_array_equal(x["input_ids"].numpy(), ref["input_ids"][r])
        np.testing.assert_array_equal(x["attention_mask"].numpy(), ref["attention_mask"][r])
        real = ref["input_ids"][r] != 0  # the reference gives its padding segment 1; the original's scripts 0
        np.testing.assert_array_equal(x["token_type_ids"].numpy()[real], ref["token_type_ids"][r][real])
        np.testing.assert_array_equal(x["img_feats"][: REGIONS[r]].numpy(), ref["img_feats"][r][: REGIONS[r]])
        assert (x["img_feats"][REGIONS[r]:] == 0).all()
    long = t(" ".join(["w9"] * 30), " ".join(["w8"] * 4), np.zeros((60, 2054)))
    assert long["input_ids"].tolist() == [2] + [9] * 9 + [3] + [8] * 4 + [3]  # the longer side is cut first
    assert long["img_feats"].shape == (10, 2054) and long["attention_mask"].sum() == 26


def test_caption_training_inputs(tok, ref) -> None:
    t = CaptionTensorizer(tok, max_img_seq_length=10, max_seq_length=16, max_seq_a_length=10)
    for r, pos in enumerate([(2, 5), (3, 7)]):
        x = t(TEXT[r], TAGS[r], ref["img_feats"][r][: REGIONS[r]], masked_positions=pos)
        np.testing.assert_array_equal(x["input_ids"].numpy(), ref["cap_input_ids"][r])
        np.testing.assert_array_equal(x["masked_pos"].numpy(), ref["cap_masked_pos"][r])
        np.testing.assert_array_equal(x["masked_ids"].numpy(), ref["cap_masked_ids"][r])
        np.testing.assert_array_equal(x["attention_mask"].numpy(), ref["cap_attention_mask"][r])
    x = t(TEXT[0], TAGS[0], ref["img_feats"][0], rng=random.Random(0))  # the original's random masking
    assert 1 <= int(x["masked_pos"].sum()) <= 3 and x["masked_pos"][0] == 0
    with pytest.raises(VinvlError, match="masked positions"):
        t(TEXT[0], TAGS[0], ref["img_feats"][0], masked_positions=[0])


@pytest.mark.parametrize("od", [False, True])
def test_decode_inputs(tok, ref, od: bool) -> None:
    key = "dec_od" if od else "dec_nood"
    t = CaptionTensorizer(tok, max_img_seq_length=10, max_seq_length=14 if od else 8, max_seq_a_length=8)
    for r in range(2):
        x = t.decode_inputs(TAGS[r] if od else None, ref["img_feats"][r][: REGIONS[r]])
        for name in ("input_ids", "token_type_ids", "masked_pos", "attention_mask"):
            np.testing.assert_array_equal(x[name].numpy(), ref[f"{key}_{name}"][r], err_msg=f"{key} {name} row {r}")


def test_vocab_sources(tok, tmp_path: Path) -> None:
    import zipfile

    with pytest.raises(VinvlError, match="no such vocabulary file"):
        load_tokenizer(tmp_path)
    words = "\n".join(sorted(tok.get_vocab(), key=tok.get_vocab().get)) + "\n"
    with zipfile.ZipFile(tmp_path / "ckpt.zip", "w") as z:
        z.writestr("base/checkpoint-1/vocab.txt", words)
    assert load_tokenizer(tmp_path / "ckpt.zip").convert_tokens_to_ids(["w81"]) == [81]


def test_region_store_reads_extraction_outputs(tok, tmp_path: Path) -> None:
    """Features and tags of `vinvl features to-oscar` output feed the tensorizer."""
    from vinvl.features import to_oscar
    from vinvl.oscar.data.regions import RegionStore

    repo = Path(__file__).resolve().parents[2]
    to_oscar(repo / "examples" / "predictions.tsv", tmp_path / "o", hw=repo / "examples" / "hw.tsv")
    store = RegionStore(tmp_path / "o")
    key = "COCO_val2014_000000391895"
    assert store.regions(key).shape == (3, 2054) and store.tags(key) == "man motorcycle road"
    x = ClassificationTensorizer(tok, 16, 10)("w17", store.tags(key), store.regions(key))
    assert x["attention_mask"].sum() == 7 + 3  # [CLS] w17 [SEP] + 3 tags ([UNK] in this vocab) [SEP] + 3 regions
    with pytest.raises(VinvlError, match="no such features file"):
        RegionStore(tmp_path)
