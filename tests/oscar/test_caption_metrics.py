"""Caption metrics: BLEU checked against a hand computation, the identical/disjoint extremes of every
metric, SPICE reported unavailable rather than faked (and scored where its models are present), and
CIDEr-D (the SCST reward) by hand."""

from __future__ import annotations

import math
import pickle
import shutil
from pathlib import Path

import pytest

from vinvl.errors import VinvlError
from vinvl.oscar.metrics import caption as C
from vinvl.oscar.metrics.caption import UNAVAILABLE, CiderD, coco_caption_metrics, spice_available, wrap_for_reward

needs_java = pytest.mark.skipif(shutil.which("java") is None, reason="PTB tokenizer and METEOR need Java (no java on PATH)")


@needs_java
def test_bleu_by_hand() -> None:
    # candidate 6 words, reference 7: unigram precision 6/6 ("a" twice, both clipped in), bigrams 4/5
    # ("a square" is not in the reference); brevity penalty exp(1 - 7/6).
    m = coco_caption_metrics({"1": ["a red circle and a blue square"]}, {"1": "a red circle and a square"}, spice=False)
    bp = math.exp(1 - 7 / 6)
    assert m["Bleu_1"] == pytest.approx(1.0 * bp, abs=1e-6)
    assert m["Bleu_2"] == pytest.approx(math.sqrt(1.0 * 4 / 5) * bp, abs=1e-6)
    assert "SPICE" not in m


@pytest.mark.slow
@needs_java
def test_identical_and_disjoint() -> None:
    refs = {"7": ["A red circle and a blue square.", "a red circle next to a blue square"], "8": ["two green triangles"]}
    same = coco_caption_metrics(refs, {"7": "a red circle and a blue square", "8": "two green triangles"}, spice=False)
    for k in ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "ROUGE_L", "METEOR"):
        assert same[k] == pytest.approx(1.0, abs=1e-6), k  # case and the final '.' go in PTB tokenisation
    assert same["CIDEr"] > 1.0
    other = coco_caption_metrics(refs, {"7": "zebras grazing", "8": "yellow hat on chairs"}, spice=False)
    for k in ("Bleu_1", "Bleu_4", "ROUGE_L", "METEOR", "CIDEr"):
        assert other[k] == pytest.approx(0.0, abs=1e-6), k


@needs_java
def test_spice_without_its_models_is_reported_not_faked(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the CoreNLP jars SPICE is the string "unavailable" (never a number), and asking for it is an
    error naming what is missing; every other metric is still computed."""
    monkeypatch.setattr(C, "spice_available", lambda: False)
    refs, preds = {"1": ["a red circle and a blue square"]}, {"1": "a red circle and a blue square"}
    m = coco_caption_metrics(refs, preds)
    assert m["SPICE"] == UNAVAILABLE and m["Bleu_1"] == pytest.approx(1.0)
    with pytest.raises(VinvlError, match="SPICE needs stanford-corenlp-3.6.0.jar"):
        coco_caption_metrics(refs, preds, spice=True)
    assert "SPICE" not in coco_caption_metrics(refs, preds, spice=False)


@pytest.mark.skipif(not (shutil.which("java") and spice_available()),
                    reason="SPICE's Stanford CoreNLP 3.6.0 jars are not in pycocoevalcap/spice/lib (a download)")
def test_spice_scores_when_its_models_are_present() -> None:
    refs = {"7": ["a red circle and a blue square"], "8": ["two green triangles"]}
    same = coco_caption_metrics(refs, {"7": "a red circle and a blue square", "8": "two green triangles"})
    other = coco_caption_metrics(refs, {"7": "zebras grazing", "8": "yellow hat on chairs"})
    assert same["SPICE"] == pytest.approx(1.0, abs=1e-6) and other["SPICE"] == pytest.approx(0.0, abs=1e-6)


def test_cider_d_by_hand(tmp_path: Path) -> None:
    refs = [["a b"], ["c d"]]
    # corpus frequencies: every n-gram is in one of the 2 images, idf = log 2 for all; "a b" vs "a b":
    # cosine 1 for 1- and 2-grams, nothing of 3 and 4 -> mean 0.5, times 10.
    assert CiderD().scores(["a b", "c d"], refs).tolist() == pytest.approx([5.0, 5.0])
    # "a x": one of two unigrams shared (0.5), no bigram -> 0.125 * 10; a disjoint caption scores 0
    assert CiderD().scores(["a x", "e f"], refs).tolist() == pytest.approx([1.25, 0.0])
    # a length gap of 3 words (bigram counts 1 vs 4) costs exp(-9 / 72)
    assert CiderD().scores(["a b a b a", "c d"], [["a b"], ["c d"]])[0] < 5.0
    # cached document frequencies (coco-train-words.p layout), through the restricted unpickler
    df = {"document_frequency": {("a",): 1.0, ("b",): 1.0, ("a", "b"): 1.0}, "ref_len": 2.0}
    (tmp_path / "words.p").write_bytes(pickle.dumps(df, protocol=2))
    cached = CiderD(tmp_path / "words.p").scores(["a b"], [["a b"]])
    assert cached.tolist() == pytest.approx([5.0]) and CiderD(df).scores(["a b"], [["a b"]]).tolist() == cached.tolist()
    assert wrap_for_reward(" a red circle. ") == "a red circle <eos>"
