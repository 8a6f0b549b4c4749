"""GQA: the original's file names (train on all, evaluate on bal), cross-entropy training on synthetic data
with a .pt feature dict (accuracy far above chance), eval and end-to-end predict through the CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from tests.oscar.classify_synth import COLOURS, DEMO_IMAGES, EXTRA_ANSWERS, config_file, demo_checkpoint, demo_regions_dir, qa_data, run_cli
from vinvl.errors import VinvlError
from vinvl.oscar import OscarForSequenceClassification
from vinvl.oscar.data.qa import AnswerVocab
from vinvl.oscar.data.regions import FeatureDict, RegionStore
from vinvl.oscar.options import GQAOptions
from vinvl.oscar.tasks import gqa
from vinvl.oscar.tensorize import ClassificationTensorizer, load_tokenizer


def test_gqa_split_names() -> None:
    assert gqa.split_file("/d", "train", "all").name == "gqa_all_qla_train.json"
    assert gqa.split_file("/d", "val", "bal").name == "gqa_bal_qla_val.json"
    assert gqa.split_file("/d", "testdev", "bal").name == "gqa_bal_qla_testdev.json"
    assert gqa.split_file("/d", "submission", "bal").name == "gqa_all_qla_submission.json"  # always all
    with pytest.raises(VinvlError, match="data type"):
        gqa.split_file("/d", "val", "some")


def test_gqa_targets_are_the_first_answer(tmp_path: Path) -> None:
    p = qa_data(tmp_path, n_train=5, n_val=0, as_pt=True)
    ds = gqa.load_split(p["train"], p["features"], AnswerVocab.from_files(p["ans2label"]),
                        load_tokenizer(p["vocab"]), GQAOptions())
    items = json.loads(p["train"].read_text())
    assert [int(ds.example(i)["labels"]) for i in range(5)] == [it["an"][0] for it in items]
    assert isinstance(ds.regions, FeatureDict) and ds.regions.regions(str(items[0]["img_id"])).shape[1] == 48
    with pytest.raises(VinvlError, match="no features for image"):
        ds.regions.regions("nope")


def test_gqa_train_eval(tmp_path: Path, tmp_path_factory) -> None:
    """600 CPU steps (about 6 s) from the data folder with the original's names and defaults
    (train all, evaluate bal): accuracy from chance (0.25) to > 0.6; eval through the CLI."""
    torch.set_num_threads(1)
    src = qa_data(tmp_path / "src", n_train=400, n_val=100, as_pt=True, partial=False)
    data = tmp_path / "gqa"
    data.mkdir()
    for name, to in (("train", "gqa_all_qla_train.json"), ("val", "gqa_bal_qla_val.json"),
                     ("ans2label", gqa.LABEL_FILE), ("label2ans", gqa.LABEL2ANS_FILE), ("features", gqa.FEATURES_FILE)):
        shutil.copy(src[name], data / to)
    run = tmp_path / "run"
    assert run_cli("oscar", "gqa", "train", data, "-o", run, "--config", config_file(tmp_path), "--vocab", src["vocab"],
                   "--max-seq-length", 12, "--max-img-seq-length", 3, "--batch-size", 16, "--learning-rate", 2e-3,
                   "--max-steps", 600, "--warmup-steps", 20, "--drop-out", 0, "--weight-decay", 0,
                   "--save-steps", 600, "--log-steps", 100, "--eval-batch-size", 100) == 0
    logs = json.loads((run / "eval_logs.json").read_text())
    assert logs[-1]["step"] == 600 and logs[-1]["eval_score"] > 0.6, logs
    train_log = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    assert train_log[-1]["loss"] < 0.6 * train_log[0]["loss"] and train_log[-1]["loss"] < 0.2, train_log  # chance: ln 6

    ev = tmp_path / "eval"
    assert run_cli("oscar", "gqa", "eval", run / "checkpoint-600", data, "--split", "val", "-o", ev) == 0
    metrics = json.loads((ev / "metrics.json").read_text())
    assert metrics["accuracy"] == pytest.approx(logs[-1]["eval_score"]) and metrics["num_questions"] == 100
    results = json.loads((ev / "val_results.json").read_text())
    assert all(set(r) == {"questionId", "prediction"} and isinstance(r["questionId"], str) for r in results)
    truth = {str(it["q_id"]): (COLOURS + EXTRA_ANSWERS)[it["an"][0]] for it in json.loads(src["val"].read_text())}
    assert sorted(r["questionId"] for r in results) == sorted(truth)  # every question, answered by its id
    right = sum(r["prediction"] == truth[r["questionId"]] for r in results) / len(results)
    assert right == pytest.approx(metrics["accuracy"])


def test_gqa_predict_answers_are_the_models(tmp_path: Path, tmp_path_factory) -> None:
    """`vinvl oscar gqa predict` on two photos: one row per image and question, in order; each row's top answers
    and probabilities are the checkpoint's softmax for that image's regions and tags and that question
    (computed here from the model itself), so they differ between rows."""
    ck = demo_checkpoint(tmp_path / "ck", OscarForSequenceClassification, 6, loss_type="xe")
    regions, out = demo_regions_dir(tmp_path_factory), tmp_path / "out"
    questions = ["what colour is the star?", "is there a ring?"]
    assert run_cli("oscar", "gqa", "predict", ck, *DEMO_IMAGES, "-q", questions[0], "-q", questions[1], "-o", out,
                   "--regions-dir", regions, "--max-seq-length", 16) == 0
    rows = json.loads((out / "answers.json").read_text())
    assert [(r["image"], r["question"]) for r in rows] == [(k, q) for k in ("shapes_a", "shapes_b") for q in questions]
    model, store = OscarForSequenceClassification.from_original(ck).eval(), RegionStore(regions)
    tz = ClassificationTensorizer(load_tokenizer(ck), 16, GQAOptions().max_img_seq_length)
    answers = COLOURS + EXTRA_ANSWERS
    for r in rows:
        x = tz(r["question"], store.tags(r["image"]), store.regions(r["image"]))
        with torch.no_grad():
            probs = dict(zip(answers, model(**{k: v[None] for k, v in x.items()}).logits[0].softmax(-1).tolist()))
        best = sorted(probs, key=probs.get, reverse=True)
        assert r["tags"] == store.tags(r["image"]) and len(r["top"]) == 5
        assert [s for _, s in r["top"]] == pytest.approx(sorted(probs.values(), reverse=True)[:5], abs=1e-5)
        assert all(s == pytest.approx(probs[a], abs=1e-5) for a, s in r["top"])
        assert r["answer"] == r["top"][0][0] and probs[r["answer"]] == pytest.approx(probs[best[0]], abs=1e-5)
    assert len({tuple(s for _, s in r["top"]) for r in rows}) == len(rows)
