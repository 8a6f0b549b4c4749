"""NLVR2's non-pair model (run_nlvr.py without --use_pair: NLVRDataset.tensorize_example and
ImageBertForSequenceClassification): its inputs and logits by hand, judging pairs with it, and a short CLI
train + eval (`--no-pair`, restored from the checkpoint's training args)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.oscar.classify_synth import config_file, nlvr2_data, run_cli, write_vocab
from tests.oscar.model_tester import tiny_config
from tests.oscar.trainer_runs import weights
from vinvl.errors import VinvlError
from vinvl.oscar import OscarForMultipleChoice, OscarForSequenceClassification
from vinvl.oscar.data.qa import JointPairDataset, PairDataset
from vinvl.oscar.options import NLVR2Options
from vinvl.oscar.tasks import nlvr2
from vinvl.oscar.tensorize import load_tokenizer


class _Regions:
    """Given regions by key (a region source's interface)."""

    dim = 4

    def __init__(self, feats: dict[str, np.ndarray]) -> None:
        self.feats = feats

    def regions(self, key: str) -> np.ndarray:
        return self.feats[key]

    def tags(self, key: str) -> str:
        return {"L": "ball cube", "R": "ring"}[key]


REGIONS = _Regions({"L": np.arange(12, dtype=np.float32).reshape(3, 4) + 1, "R": -np.arange(8, dtype=np.float32).reshape(2, 4) - 1})
ITEM = {"q": "there is a red thing", "label": 1, "img_id": {"left": "L", "right": "R"}, "o": {"left": "ball cube", "right": "ring"}}


def _words(tok, x) -> list[str]:  # type: ignore[no-untyped-def]
    return tok.convert_ids_to_tokens(x["input_ids"].tolist())


def test_one_sequence_over_both_images(tmp_path: Path) -> None:
    """tensorize_example: text_b = o['left'] + ' ' + o['right'] (with --use_label_seq), the pair cut to
    max_seq_length - 3 (the longer side first); img_feat = cat(left, right) cut to 2 x max_img_seq_length (here the left
    image's 3 regions and the right's first: the left takes the right's room) or zero-padded to it; one mask."""
    tok = load_tokenizer(write_vocab(tmp_path))
    x = JointPairDataset([ITEM], REGIONS, tok, NLVR2Options(max_seq_length=12, max_img_seq_length=2), True).example(0)
    assert _words(tok, x) == ["[CLS]", "there", "is", "a", "red", "thing", "[SEP]", "ball", "cube", "ring", "[SEP]", "[PAD]"]
    assert x["token_type_ids"].tolist() == [0] * 7 + [1] * 4 + [0]
    both = np.concatenate([REGIONS.feats["L"], REGIONS.feats["R"]])
    assert torch.equal(x["img_feats"], torch.from_numpy(both[:4]))
    assert x["attention_mask"].tolist() == [1] * 11 + [0] + [1] * 4 and int(x["labels"]) == 1

    y = JointPairDataset([ITEM], REGIONS, tok, NLVR2Options(max_seq_length=8, max_img_seq_length=3), True).example(0)
    assert _words(tok, y) == ["[CLS]", "there", "is", "a", "[SEP]", "ball", "cube", "[SEP]"]  # 5 + 3 cut to 5
    assert torch.equal(y["img_feats"][:5], torch.from_numpy(both)) and not y["img_feats"][5].any()
    assert y["attention_mask"].tolist() == [1] * 8 + [1] * 5 + [0]

    plain = JointPairDataset([ITEM], REGIONS, tok, NLVR2Options(max_seq_length=8, max_img_seq_length=2)).example(0)
    assert _words(tok, plain) == ["[CLS]", "there", "is", "a", "red", "thing", "[SEP]", "[PAD]"]  # no --use_label_seq
    # tags that are empty: the original's text_b ' ' is still true, so the sentence is cut to max_seq_length - 3
    empty = {**ITEM, "o": {"left": "", "right": ""}}
    z = JointPairDataset([empty], REGIONS, tok, NLVR2Options(max_seq_length=6, max_img_seq_length=2), True).example(0)
    assert _words(tok, z) == ["[CLS]", "there", "is", "a", "[SEP]", "[PAD]"]
    p = PairDataset([empty], REGIONS, tok, NLVR2Options(max_seq_length=6, max_img_seq_length=2), True).example(0)
    assert _words(tok, {"input_ids": p["input_ids"][0]}) == ["[CLS]", "there", "is", "a", "[SEP]", "[PAD]"]  # the same
    with pytest.raises(VinvlError, match="img_id must be"):
        JointPairDataset([{**ITEM, "img_id": {"a": "L", "b": "R"}}], REGIONS, tok, NLVR2Options())


def test_the_non_pair_model_is_a_sequence_classifier_over_the_joint_sequence(tmp_path: Path) -> None:
    """ImageBertForSequenceClassification with --classifier mlp: Linear(H -> H*scale), ReLU, Linear(-> 2) (no
    LayerNorm) over the one pooled output; logits [B, 2]; CrossEntropyLoss(logits.view(-1, 2), labels.view(-1))."""
    assert nlvr2.NLVR2Task(NLVR2Options(use_pair=False), None).model_class is OscarForSequenceClassification
    assert nlvr2.NLVR2Task(NLVR2Options(), None).model_class is OscarForMultipleChoice
    tok = load_tokenizer(write_vocab(tmp_path))
    torch.manual_seed(0)
    cfg = tiny_config(vocab_size=len(tok), img_feature_dim=4, num_labels=2, num_choice=2, classifier="mlp",
                      cls_hidden_scale=3, loss_type="xe")
    m = OscarForSequenceClassification(cfg).eval()
    assert [tuple(v.shape) for v in m.classifier.state_dict().values()] == [(48, 16), (48,), (2, 48), (2,)]
    items = [ITEM, {**ITEM, "label": 0, "img_id": {"left": "R", "right": "L"}}]
    ds = JointPairDataset(items, REGIONS, tok, NLVR2Options(max_seq_length=12, max_img_seq_length=2, use_pair=False))
    batch = {k: torch.stack([ds.example(i)[k] for i in range(2)]) for k in ds.example(0)}
    with torch.no_grad():
        out = m(**batch)
        pooled = m.bert(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"], batch["img_feats"]).pooled_output
    assert out.logits.shape == (2, 2) and torch.allclose(out.logits, m.classifier(pooled), atol=1e-6)
    assert out.loss.item() == pytest.approx(torch.nn.functional.cross_entropy(out.logits, torch.tensor([1, 0])).item())

    rows = nlvr2.judge(m, tok, REGIONS, [("L", "R")], ["there is a red thing", "there is a ring"],
                       NLVR2Options(max_seq_length=12, max_img_seq_length=2, use_pair=False))
    for r in rows:  # each judgement is the model's softmax on the joint sequence (no tags: --use_label_seq off)
        it = {"q": r["sentence"], "img_id": {"left": "L", "right": "R"}}
        x = JointPairDataset([it], REGIONS, tok, NLVR2Options(max_seq_length=12, max_img_seq_length=2)).example(0)
        with torch.no_grad():
            prob = m(**{k: v[None] for k, v in x.items() if k != "labels"}).logits[0].softmax(-1)
        assert r["prob_true"] == pytest.approx(prob[1].item(), abs=1e-5) and r["prediction"] == bool(prob[1] > prob[0])


def test_no_pair_train_and_eval(tmp_path: Path) -> None:
    """`nlvr2 train --no-pair` (4 CPU steps) saves the sequence classifier (classifier.0 takes H, not 2H) and records
    use_pair false; `nlvr2 eval` restores it from the training args and scores as the run's own evaluation did;
    asking that checkpoint for the pair model is one error."""
    torch.set_num_threads(1)
    src = nlvr2_data(tmp_path / "src", n_train=32, n_val=8)
    data = tmp_path / "nlvr2"
    data.mkdir()
    shutil.copy(src["train"], data / "nlvr2_train.json")
    shutil.copy(src["val"], data / "nlvr2_dev.json")
    run = tmp_path / "run"
    assert run_cli("oscar", "nlvr2", "train", data, "-o", run, "--no-pair", "--config", config_file(tmp_path),
                   "--vocab", src["vocab"], "--features", src["features"], "--max-seq-length", 10,
                   "--max-img-seq-length", 2, "--batch-size", 8, "--max-steps", 4, "--log-steps", 2,
                   "--device", "cpu") == 0
    ck = run / "checkpoint-4"
    assert json.loads((ck / "training_args.json").read_text())["use_pair"] is False
    w = weights(ck)
    assert tuple(w["classifier.0.weight"].shape) == (96, 32) and "classifier.1.weight" not in w  # no LayerNorm
    score = json.loads((run / "eval_logs.json").read_text())[-1]["eval_score"]
    ev = tmp_path / "eval"
    assert run_cli("oscar", "nlvr2", "eval", run, data, "--split", "val", "--features", src["features"], "-o", ev,
                   "--device", "cpu") == 0
    assert json.loads((ev / "metrics.json").read_text())["accuracy"] == pytest.approx(score)
    assert run_cli("oscar", "nlvr2", "eval", run, data, "--split", "val", "--features", src["features"], "-o",
                   tmp_path / "pair", "--use-pair", "--device", "cpu") == 2
