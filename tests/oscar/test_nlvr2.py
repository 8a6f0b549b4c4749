"""NLVR2: the pair model's inputs (the original's in-place sentence truncation included), training on
synthetic pairs where "there is a red thing" is true iff either image has a red region (accuracy far
above chance), eval and end-to-end predict through the CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from tests.oscar.classify_synth import DEMO_IMAGES, config_file, demo_checkpoint, demo_regions_dir, nlvr2_data, run_cli
from tests.oscar.model_tester import tiny_config
from vinvl.oscar import OscarConfig, OscarForMultipleChoice
from vinvl.oscar.data.qa import PairDataset
from vinvl.oscar.data.regions import RegionStore, open_regions
from vinvl.oscar.options import NLVR2Options
from vinvl.oscar.tasks import nlvr2
from vinvl.oscar.tensorize import ClassificationTensorizer, load_tokenizer


def test_pair_inputs_and_sentence_truncation(tmp_path: Path) -> None:
    p = nlvr2_data(tmp_path, n_train=3, n_val=0)
    tok = load_tokenizer(p["vocab"])
    regions = open_regions(p["features"])
    keys = list(json.loads(p["train"].read_text())[0]["img_id"].values())
    item = {"q": "there is a red thing ?", "label": 1, "img_id": {"left": keys[0], "right": keys[1]},
            "o": {"left": "ball", "right": ""}}
    cfg = NLVR2Options(max_seq_length=7, max_img_seq_length=3)
    x = PairDataset([item], regions, tok, cfg, use_label_seq=True).example(0)
    assert x["input_ids"].shape == (2, 7) and x["img_feats"].shape == (2, 3, 48) and x["attention_mask"].shape == (2, 10)
    assert int(x["labels"]) == 1
    words = [tok.convert_ids_to_tokens(ids.tolist()) for ids in x["input_ids"]]
    # left: 6 + 1 tokens into 4: the sentence loses 3; right (no tags): the original keeps the truncated sentence
    # (3 words) although 5 would fit on their own.
    assert words[0] == ["[CLS]", "there", "is", "a", "[SEP]", "ball", "[SEP]"]
    assert words[1][:5] == ["[CLS]", "there", "is", "a", "[SEP]"] and words[1][5:] == ["[PAD]", "[PAD]"]
    no_tags = PairDataset([item], regions, tok, cfg).example(0)  # the model zoo: no --use_label_seq
    assert tok.convert_ids_to_tokens(no_tags["input_ids"][0].tolist()) == ["[CLS]", "there", "is", "a", "red", "thing", "[SEP]"]
    assert nlvr2.split_file("/d", "val", "bal").name == "nlvr2_balanced_dev.json"
    assert nlvr2.split_file("/d", "test1").name == "nlvr2_test1.json"


def test_pair_model_is_the_original_mlp_over_both_pooled_outputs() -> None:
    """ImageBertForMultipleChoice with classifier mlp: Linear(2H -> H*scale), ReLU, LayerNorm (with the image
    LayerNorm on), Linear(-> 2), over the two choices' pooled outputs concatenated."""
    cfg = tiny_config(vocab_size=30, img_feature_dim=8, num_labels=2, num_choice=2, classifier="mlp", cls_hidden_scale=3, loss_type="xe")
    m = OscarForMultipleChoice(cfg).eval()
    shapes = [tuple(v.shape) for v in m.classifier.state_dict().values()]
    assert shapes == [(48, 32), (48,), (48,), (48,), (2, 48), (2,)]
    ids, feats = torch.randint(5, 30, (3, 2, 6)), torch.randn(3, 2, 4, 8)
    out = m(ids, img_feats=feats, labels=torch.tensor([0, 1, 1]))
    pooled = m.bert(ids.view(6, 6), img_feats=feats.view(6, 4, 8)).pooled_output.view(3, 32)
    assert torch.allclose(out.logits, m.classifier(pooled), atol=1e-6)
    assert out.loss.item() == pytest.approx(torch.nn.functional.cross_entropy(out.logits, torch.tensor([0, 1, 1])).item())


@pytest.mark.slow
def test_nlvr2_train_eval(tmp_path: Path, tmp_path_factory) -> None:
    """1000 CPU steps (about 22 s; the OR over two images is learnt late): dev accuracy from chance (0.5)
    to > 0.75 (0.85 at the default seed 88); eval through the CLI."""
    torch.set_num_threads(1)
    src = nlvr2_data(tmp_path / "src", n_train=400, n_val=100)
    data = tmp_path / "nlvr2"
    data.mkdir()
    shutil.copy(src["train"], data / "nlvr2_train.json")
    shutil.copy(src["val"], data / "nlvr2_dev.json")
    run = tmp_path / "run"
    assert run_cli("oscar", "nlvr2", "train", data, "-o", run, "--config", config_file(tmp_path), "--vocab", src["vocab"],
                   "--features", src["features"], "--max-seq-length", 10, "--max-img-seq-length", 2,
                   "--batch-size", 16, "--learning-rate", 2e-3, "--max-steps", 1000, "--warmup-steps", 20,
                   "--drop-out", 0, "--weight-decay", 0, "--save-steps", 500, "--log-steps", 100,
                   "--eval-batch-size", 100) == 0
    logs = json.loads((run / "eval_logs.json").read_text())
    assert [e["step"] for e in logs] == [500, 1000] and logs[-1]["eval_score"] > 0.75, logs
    cfg = OscarConfig(**json.loads((run / "checkpoint-1000" / "config.json").read_text()))
    assert (cfg.classifier, cfg.cls_hidden_scale, cfg.num_choice, cfg.loss_type) == ("mlp", 3, 2, "xe")

    ev = tmp_path / "eval"
    assert run_cli("oscar", "nlvr2", "eval", run, data, "--split", "val", "--features", src["features"], "-o", ev) == 0
    metrics = json.loads((ev / "metrics.json").read_text())
    assert metrics["accuracy"] == pytest.approx(logs[-1]["eval_score"]) and metrics["num_examples"] == 100
    results = json.loads((ev / "val_results.json").read_text())
    labels = {it["identifier"]: it["label"] for it in json.loads(src["val"].read_text())}
    assert [r["identifier"] for r in results] == list(labels)  # every pair, in the file's order
    right = sum(r["prediction"] == labels[r["identifier"]] for r in results) / len(results)
    assert right == pytest.approx(metrics["accuracy"])


def _judge(ck: Path, left: Path, right: Path, sentences: list[str], out: Path, regions: Path) -> list[dict]:
    args = [a for s in sentences for a in ("-s", s)]
    assert run_cli("oscar", "nlvr2", "predict", ck, left, right, *args, "-o", out, "--regions-dir", regions,
                   "--max-img-seq-length", 10, "--max-seq-length", 16) == 0
    return json.loads((out / "predictions.json").read_text())


def test_nlvr2_predict_judgements_are_the_models(tmp_path: Path, tmp_path_factory) -> None:
    """`vinvl oscar nlvr2 predict` on a photo pair: one row per sentence, in order; each prob_true is the
    checkpoint's softmax over (left, right) regions with that sentence (computed here from the model itself) and
    the prediction its arg-max; the pair swapped gives other numbers (the sides reach the model in order)."""
    ck = demo_checkpoint(tmp_path / "ck", OscarForMultipleChoice, 2, answers=False, num_choice=2, classifier="mlp")
    regions = demo_regions_dir(tmp_path_factory)
    sentences = ["there is a red thing", "there are two stars"]
    rows = _judge(ck, *DEMO_IMAGES, sentences, tmp_path / "out", regions)
    assert [(r["left"], r["right"], r["sentence"]) for r in rows] == [("shapes_a", "shapes_b", s) for s in sentences]
    model, store = OscarForMultipleChoice.from_original(ck).eval(), RegionStore(regions)
    tz = ClassificationTensorizer(load_tokenizer(ck), 16, 10)
    for r in rows:  # no tags: use_label_seq is off, as in the model zoo
        sides = [tz(r["sentence"], None, store.regions(k)) for k in (r["left"], r["right"])]
        with torch.no_grad():
            p = model(**{k: torch.stack([c[k] for c in sides])[None] for k in sides[0]}).logits[0].softmax(-1)
        assert r["prob_true"] == pytest.approx(p[1].item(), abs=1e-5) and r["prediction"] == bool(p[1] > p[0])
    assert rows[0]["prob_true"] != pytest.approx(rows[1]["prob_true"], abs=1e-6)
    # (a regions folder is reused only for the same inputs in the same order)
    swapped = _judge(ck, DEMO_IMAGES[1], DEMO_IMAGES[0], sentences, tmp_path / "swapped", tmp_path / "regions_ba")
    assert [(r["left"], r["right"]) for r in swapped] == [("shapes_b", "shapes_a")] * 2
    assert all(a["prob_true"] != pytest.approx(b["prob_true"], abs=1e-6) for a, b in zip(rows, swapped))
