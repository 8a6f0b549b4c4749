"""VQA: the score and loss by hand, training on synthetic data whose answers are only in the regions
(the score rises far above chance), eval and end-to-end predict through the CLI."""

from __future__ import annotations

import json
import math
import pickle
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from tests.oscar.classify_synth import (COLOURS, DEMO_IMAGES, EXTRA_ANSWERS, config_file, demo_checkpoint, demo_regions_dir,
                                        qa_data, run_cli)
from tests.oscar.model_tester import tiny_config
from vinvl.errors import VinvlError
from vinvl.oscar import OscarConfig, OscarForSequenceClassification
from vinvl.oscar.data.qa import AnswerVocab, QADataset
from vinvl.oscar.data.regions import open_regions
from vinvl.oscar.options import VQAOptions
from vinvl.oscar.tasks import vqa
from vinvl.oscar.tensorize import ClassificationTensorizer, load_tokenizer


def test_vqa_score_gives_partial_credit() -> None:
    """The score of a question is the soft score of its arg-max answer, whatever the other answers score."""
    logits = torch.tensor([
        [0.0, 5.0, 0.0, 0.0],  # picks 1: its soft score is 0.3
        [0.0, 0.0, 2.0, 1.0],  # picks 2: 0.6 (answer 3's 0.9 does not count)
        [9.0, 0.0, 0.0, 0.0],  # picks 0: 0.9
        [0.0, 0.0, 0.0, 3.0],  # picks 3: 1.0
        [0.0, 0.0, 0.0, 3.0],  # picks 3, not among its answers: 0
    ])
    targets = torch.tensor([
        [1.0, 0.3, 0.0, 0.0],
        [0.0, 0.0, 0.6, 0.9],
        [0.9, 0.0, 0.0, 0.3],
        [0.0, 0.6, 0.0, 1.0],
        [0.3, 0.0, 0.0, 0.0],
    ])
    assert vqa.vqa_score(logits, targets).tolist() == pytest.approx([0.3, 0.6, 0.9, 1.0, 0.0])
    assert float(vqa.vqa_score(logits, targets).mean()) == pytest.approx((0.3 + 0.6 + 0.9 + 1.0 + 0.0) / 5)


class _FixedLogits(torch.nn.Module):
    """A stand-in model answering with given logits, one row per example in order."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits, self.seen = logits, 0
        self.w = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, **kw):
        n = input_ids.shape[0]
        out = self.logits[self.seen : self.seen + n]
        self.seen += n
        return SimpleNamespace(logits=out)


def test_vqa_evaluate_scores_and_writes_server_results(tmp_path: Path) -> None:
    """evaluate(): the mean soft score over the answered questions, and [{question_id, answer}] in order."""
    p = qa_data(tmp_path, n_train=4, n_val=0, partial=False)
    vocab = AnswerVocab.from_files(p["ans2label"], p["label2ans"])
    items = json.loads(p["train"].read_text())
    items[0].update(an=[0, 1], s=[0.3, 1.0])   # red 0.3, green 1.0
    items[1].update(an=[2], s=[0.6])           # blue 0.6
    items[2].update(an=[3, 2], s=[0.9, 0.3])   # yellow 0.9
    items[3].update(an=[], s=[])               # unanswered: left out of a scored split, as the original
    p["train"].write_text(json.dumps(items))
    tok = load_tokenizer(p["vocab"])
    ds = vqa.load_split(p["train"], p["features"], vocab, tok, VQAOptions(), test=False)
    assert len(ds) == 3
    picks = [0, 2, 3]  # red (0.3), blue (0.6), yellow (0.9)
    logits = torch.nn.functional.one_hot(torch.tensor(picks), len(vocab)).float()
    metrics, results = vqa.evaluate(_FixedLogits(logits), ds, batch_size=2)
    assert metrics["score"] == pytest.approx((0.3 + 0.6 + 0.9) / 3)
    assert metrics["upper_bound"] == pytest.approx((1.0 + 0.6 + 0.9) / 3)
    assert results == [{"question_id": items[i]["q_id"], "answer": a} for i, a in enumerate(["red", "blue", "yellow"])]


def test_bce_loss_is_scaled_by_the_number_of_answers() -> None:
    """loss_type bce: binary_cross_entropy_with_logits (mean over every entry) x num answers; at zero
    logits every entry costs log 2 whatever its target, so the loss is num_answers * log 2."""
    cfg = tiny_config(vocab_size=30, img_feature_dim=8, num_labels=6, loss_type="bce")
    model = OscarForSequenceClassification(cfg)
    torch.nn.init.zeros_(model.classifier.weight)
    torch.nn.init.zeros_(model.classifier.bias)
    targets = torch.tensor([[1.0, 0.3, 0, 0, 0, 0], [0, 0, 0.9, 0, 0, 0.6]])
    out = model(torch.tensor([[2, 5, 3], [2, 6, 3]]), img_feats=torch.randn(2, 2, 8), labels=targets)
    assert out.loss.item() == pytest.approx(6 * math.log(2), rel=1e-6)


def test_answer_vocab_reads_the_original_pickles_safely(tmp_path: Path) -> None:
    p = qa_data(tmp_path, n_train=2, n_val=0)
    v = AnswerVocab.from_files(p["ans2label"], p["label2ans"])
    assert v.answers == COLOURS + EXTRA_ANSWERS and v.labels == list(range(6))
    assert AnswerVocab.from_files(p["ans2label"]).answers == v.answers  # ans2label inverted without label2ans

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    bad = tmp_path / "evil.pkl"
    bad.write_bytes(pickle.dumps({"a": Evil()}))
    with pytest.raises(VinvlError):
        AnswerVocab.from_files(bad)


def test_dataset_inputs_and_split_names(tmp_path: Path) -> None:
    p = qa_data(tmp_path, n_train=3, n_val=0)
    tok = load_tokenizer(p["vocab"])
    ds = QADataset(json.loads(p["train"].read_text()), open_regions(p["features"]), AnswerVocab(COLOURS + EXTRA_ANSWERS),
                   ClassificationTensorizer(tok, 12, 3))
    x = ds.example(0)
    it = ds.items[0]
    words = tok.convert_ids_to_tokens(x["input_ids"][x["attention_mask"][:12] == 1].tolist())
    # [CLS] question [SEP] tags (';' read as spaces) [SEP], tags with token type 1, then the 2 regions
    assert words == ["[CLS]"] + tok.tokenize(it["q"]) + ["[SEP]"] + it["o"].split(";") + ["[SEP]"]
    assert x["attention_mask"][12:].tolist() == [1, 1, 0] and x["img_feats"].shape == (3, 48)
    assert x["labels"].sum() == pytest.approx(sum(it["s"]))
    q, f = vqa.split_files("/d", "val")
    assert (str(q), str(f)) == ("/d/val2014_qla_mrcnn.json", "/d/val_img_frcnn_feats.pt")
    q, f = vqa.split_files("/d", "train", "faster", txt_data_dir="/t")
    assert (str(q), str(f)) == ("/t/train2014_qla.json", "/d/train_img_frcnn_feats.pt")
    assert str(vqa.split_files("/d", "test-dev2015", txt_data_dir="/t")[0]) == "/d/test-dev2015_qla_mrcnn.json"
    with pytest.raises(VinvlError, match="VQA split"):
        vqa.split_files("/d", "minival")


def test_vqa_train_eval_predict(tmp_path: Path, tmp_path_factory) -> None:
    """400 CPU steps (about 8 s): the validation VQA score rises from chance (~0.3) to > 0.6; the saved
    checkpoint scores the same through `vinvl oscar vqa eval`, which also writes the server's results."""
    torch.set_num_threads(1)
    p = qa_data(tmp_path / "data", n_train=400, n_val=100)
    run = tmp_path / "run"
    code = run_cli("oscar", "vqa", "train", tmp_path / "data", "-o", run, "--config", config_file(tmp_path),
                   "--vocab", p["vocab"], "--label-file", p["ans2label"], "--label2ans", p["label2ans"],
                   "--train-split", p["train"], "--eval-split", p["val"], "--features", p["features"],
                   "--max-seq-length", 12, "--max-img-seq-length", 3, "--batch-size", 16, "--learning-rate", 2e-3,
                   "--max-steps", 400, "--warmup-steps", 20, "--drop-out", 0, "--weight-decay", 0,
                   "--save-steps", 200, "--log-steps", 50, "--eval-batch-size", 100)
    assert code == 0
    ck = run / "checkpoint-400"
    for name in ("pytorch_model.bin", "config.json", "vocab.txt", "answers.json", "training_state.pt", "eval_results.json"):
        assert (ck / name).is_file(), name
    logs = json.loads((run / "eval_logs.json").read_text())
    assert [e["step"] for e in logs] == [200, 400]
    assert logs[-1]["eval_score"] > 0.6, logs
    assert OscarConfig(**json.loads((ck / "config.json").read_text())).num_labels == 6

    ev = tmp_path / "eval"
    assert run_cli("oscar", "vqa", "eval", run, tmp_path / "data", "--split", p["val"], "--features", p["features"],
                   "-o", ev) == 0  # the run folder: its newest checkpoint, lengths from its training args
    metrics = json.loads((ev / "metrics.json").read_text())
    assert metrics["score"] == pytest.approx(logs[-1]["eval_score"], abs=1e-6) and metrics["num_questions"] == 100
    results = json.loads((ev / "val_results.json").read_text())
    assert len(results) == 100 and all(set(r) == {"question_id", "answer"} and isinstance(r["question_id"], int)
                                       and r["answer"] in COLOURS + EXTRA_ANSWERS for r in results)

    test = tmp_path / "data" / "test.json"  # a test split: no answers, results only
    test.write_text(json.dumps([{**it, "an": [], "s": []} for it in json.loads(p["val"].read_text())[:10]]))
    assert run_cli("oscar", "vqa", "eval", ck, tmp_path / "data", "--split", test, "--features", p["features"],
                   "-o", tmp_path / "test") == 0
    m = json.loads((tmp_path / "test" / "metrics.json").read_text())
    assert "score" not in m and len(json.loads((tmp_path / "test" / "test_results.json").read_text())) == 10


def test_vqa_predict_end_to_end(tmp_path: Path, tmp_path_factory) -> None:
    """Images -> the shipped demo detector (518-d regions) -> tags + regions -> answers.json."""
    torch.set_num_threads(1)
    ck = demo_checkpoint(tmp_path / "ck", OscarForSequenceClassification, 6, loss_type="bce")
    out = tmp_path / "out"
    assert run_cli("oscar", "vqa", "predict", ck, *DEMO_IMAGES, "-q", "what colour is the thing?", "-q", "what is it?",
                   "-o", out, "--regions-dir", demo_regions_dir(tmp_path_factory), "--top", 3,
                   "--max-seq-length", 16, "--max-img-seq-length", 10) == 0
    rows = json.loads((out / "answers.json").read_text())
    assert [(r["image"], r["question"]) for r in rows] == [
        (k, q) for k in ("shapes_a", "shapes_b") for q in ("what colour is the thing?", "what is it?")]
    for r in rows:
        assert r["answer"] in COLOURS + EXTRA_ANSWERS and 0 <= r["score"] <= 1 and len(r["top"]) == 3
        assert r["top"][0] == [r["answer"], r["score"]] and r["tags"]  # the demo detector's shape names
    wrong = demo_checkpoint(tmp_path / "ck2048", OscarForSequenceClassification, 6, img_feature_dim=2054)
    assert run_cli("oscar", "vqa", "predict", wrong, *DEMO_IMAGES, "-q", "what?", "-o", tmp_path / "o2",
                   "--regions-dir", demo_regions_dir(tmp_path_factory)) == 2  # 518-d regions, 2054-d model: a clear error


def test_vqa_predict_on_given_boxes(tmp_path: Path) -> None:
    """--boxes: the answers are about the given regions (their classes are the tags: one per box)."""
    torch.set_num_threads(1)
    ck = demo_checkpoint(tmp_path / "ck", OscarForSequenceClassification, 6, loss_type="bce")
    boxes = tmp_path / "boxes.json"
    boxes.write_text(json.dumps({"shapes_a": [[10, 20, 200, 180], [0, 0, 50, 50], [60, 60, 90, 90]],
                                 "shapes_b": [[30, 40, 120, 90]]}))
    out = tmp_path / "out"
    assert run_cli("oscar", "vqa", "predict", ck, *DEMO_IMAGES, "-q", "what is it?", "-o", out, "--boxes", boxes,
                   "--max-seq-length", 16, "--max-img-seq-length", 10) == 0
    rows = {r["image"]: r for r in json.loads((out / "answers.json").read_text())}
    assert len(rows["shapes_a"]["tags"].split()) == 3 and len(rows["shapes_b"]["tags"].split()) == 1
    manifest = json.loads((out / "regions" / "manifest.json").read_text())
    assert manifest["counts"]["boxes"] == 4 and manifest["settings"]["boxes"]
    assert run_cli("oscar", "vqa", "predict", ck, *DEMO_IMAGES, "-q", "what?", "-o", tmp_path / "o2", "--boxes",
                   tmp_path / "none.json") == 2  # a missing boxes file: one line, before any model runs
