"""Oscar+ image-text retrieval: ranks and recall on hand-made score matrices, the fast scorer against one
pair at a time, the original's input rule, data files, and training on a synthetic task through the CLI."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.oscar.retrieval_synth import DIM, THINGS, synthetic_retrieval
from tests.oscar.model_tester import tiny_config
from vinvl.errors import VinvlError
from vinvl.oscar import OscarConfig, OscarForSequenceClassification
from vinvl.oscar.data.retrieval import load_captions, load_split
from vinvl.oscar.metrics.retrieval import fold_recall, recall_at_k, retrieval_ranks
from vinvl.oscar.options import RetrievalOptions
from vinvl.oscar.tasks.retrieval import FastScorer, naive_scores, train
from vinvl.oscar.tensorize import RetrievalTensorizer, load_tokenizer

def tiny(num_labels: int = 2, **kw) -> OscarConfig:
    return tiny_config(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                       max_position_embeddings=64, img_feature_dim=DIM, num_labels=num_labels, **kw)


# -- ranks and recall on hand-made matrices ---------------------------------------------------
def test_ranks_and_recall_on_hand_made_scores() -> None:
    owner = [0, 0, 1, 1, 2, 2]  # captions 0-1 describe image 0, 2-3 image 1, 4-5 image 2
    s = torch.tensor([
        [9.0, 1.0, 5.0, 4.0, 3.0, 2.0],  # image 0: its caption 0 first -> rank 0
        [8.0, 7.0, 1.0, 6.0, 0.0, 0.5],  # image 1: its best (caption 3, 6.0) behind 8.0 and 7.0 -> rank 2
        [2.0, 2.0, 0.0, 0.0, 2.0, 1.0],  # image 2: its best (2.0) ties two wrong ones: ties count against -> rank 2
    ])
    i2t, t2i = retrieval_ranks(s, owner)
    assert i2t.tolist() == [0, 2, 2]
    # caption 0 (image 0: 9) first; caption 1 (image 0: 1) behind 7 and 2; caption 2 (image 1: 1) behind 5;
    # caption 3 (image 1: 6) first; caption 4 (image 2: 2) behind 3; caption 5 (image 2: 1) behind 2.
    assert t2i.tolist() == [0, 2, 1, 0, 1, 1]
    r = recall_at_k(s, owner, ks=(1, 2, 3))
    assert r["i2t_retrieval"] == pytest.approx({"R@1": 1 / 3, "R@2": 1 / 3, "R@3": 1.0})
    assert r["t2i_retrieval"] == pytest.approx({"R@1": 2 / 6, "R@2": 5 / 6, "R@3": 1.0})
    # a constant scorer gets nothing right; a missing (NaN) right score ranks last
    assert recall_at_k(torch.zeros(3, 6), owner)["i2t_retrieval"]["R@1"] == 0.0
    s2 = s.clone()
    s2[0, 0] = s2[0, 1] = math.nan
    assert retrieval_ranks(s2, owner)[0][0] == 4
    with pytest.raises(VinvlError, match="one image index"):
        retrieval_ranks(s, [0, 1])


def test_fold_recall_is_the_mean_of_the_blocks() -> None:
    owner = [0, 1, 2, 3]
    s = torch.eye(4)
    s[1, 1] = -1.0  # image 1 misses its caption inside fold 0; the off-fold entries must not matter
    s[0, 3] = s[3, 0] = 5.0  # cross-fold confusion: hurts the 4-image recall only
    full = recall_at_k(s, owner, ks=(1,))
    folds = fold_recall(s, owner, folds=2)
    assert full["i2t_retrieval"]["R@1"] == pytest.approx(1 / 4)
    assert folds["i2t_retrieval"]["R@1"] == pytest.approx((1 / 2 + 1) / 2)
    assert folds["t2i_retrieval"]["R@1"] == pytest.approx((1 / 2 + 1) / 2)
    with pytest.raises(VinvlError, match="equal folds"):
        fold_recall(s, owner, folds=3)


# -- inputs and scores --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    d = tmp_path_factory.mktemp("vocab")
    (d / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(60)]) + "\n")
    return load_tokenizer(d / "vocab.txt")


def test_pair_inputs_follow_the_original(tok) -> None:
    """The caption is cut to max_seq_length - 2 first; the tags take what is left, then [SEP]."""
    b = RetrievalTensorizer(tok, max_seq_length=10, max_img_seq_length=3)
    cap, tags = b.ids("w1 w2 w3 w4"), b.ids("w10 w11 w12 w13 w14")
    x = b.pair(cap, tags, np.ones((5, DIM), np.float32))
    words = tok.convert_ids_to_tokens(x["input_ids"].tolist())
    assert words == ["[CLS]", "w1", "w2", "w3", "w4", "[SEP]", "w10", "w11", "w12", "[SEP]"]
    assert x["token_type_ids"].tolist() == [0] * 6 + [1] * 4
    assert x["attention_mask"].tolist() == [1] * 13 and x["img_feats"].shape == (3, DIM)
    long = b.pair(b.ids(" ".join(f"w{i}" for i in range(12))), tags, np.ones((1, DIM), np.float32))
    assert tok.convert_ids_to_tokens(long["input_ids"].tolist())[-1] == "[SEP]" and long["token_type_ids"].sum() == 0
    assert long["attention_mask"].tolist() == [1] * 10 + [1, 0, 0]
    short = b.pair(cap, [], np.ones((1, DIM), np.float32))
    assert short["attention_mask"].tolist() == [1] * 6 + [0] * 4 + [1, 0, 0]


@pytest.mark.parametrize("num_labels,layernorm", [(2, 1), (1, 0)])
def test_fast_scorer_equals_one_pair_at_a_time(tok, num_labels: int, layernorm: int) -> None:
    torch.manual_seed(0)
    # weights 10x BERT's initial spread: scores far apart, so the check means something
    model = OscarForSequenceClassification(tiny(num_labels, use_img_layernorm=layernorm, vocab_size=65,
                                                initializer_range=0.2)).eval()
    b = RetrievalTensorizer(tok, max_seq_length=20, max_img_seq_length=6)
    rng = random.Random(0)
    words = lambda n: b.ids(" ".join(f"w{rng.randrange(60)}" for _ in range(n)))  # noqa: E731
    # captions of 1..25 tokens (some cut), images of 0..9 regions (some cut, one empty), tags of 0..8 tokens
    captions = [words(rng.randint(1, 25)) for _ in range(37)]
    images = [(torch.randn(n, DIM), words(rng.randint(0, 8))) for n in (0, 3, 6, 9, 2)]
    naive = naive_scores(model, b, images, captions)
    fast = FastScorer(model, b, batch_size=8).score_matrix(images, captions)
    assert naive.std() > 0.3
    assert float((naive - fast).abs().max()) <= 1e-4
    padded = FastScorer(model, b, batch_size=8, pad_multiple=8).score_matrix(images, captions)  # the CUDA default
    assert float((naive - padded).abs().max()) <= 1e-4
    sub = FastScorer(model, b, batch_size=8)
    sub.set_captions(captions)
    part = sub.score_image(*images[1], subset=torch.tensor([3, 30, 5]))
    assert torch.isnan(part).sum() == len(captions) - 3
    assert torch.allclose(part[[3, 5, 30]], naive[1, [3, 5, 30]], atol=1e-4)


# -- data files ---------------------------------------------------------------------------------
def test_data_files(tmp_path: Path) -> None:
    d = synthetic_retrieval(tmp_path / "d", train_images=4, test_images=3)
    assert load_captions(d / "test_captions.pt")[1004][0].split()[0] in {"a", "the", "there"} | set(THINGS)
    split = load_split(d, "test", keys_file="test_img_keys.tsv")
    assert split.keys == [1004, 1005, 1006] and split.images.regions(1005).shape[1] == DIM
    assert set(split.images.tags(1005).split()) <= set(THINGS)
    texts, owner = split.flat_captions()
    assert len(texts) == 15 and owner == [0] * 5 + [1] * 5 + [2] * 5
    # the first Oscar release's tensor files
    torch.save({1004: torch.ones(2, DIM)}, d / "test_img_frcnn_feats.pt")
    torch.save({1004: [{"class": "cat"}, {"class": "dog"}]}, d / "test_vg_labels.pt")
    (d / "one.tsv").write_text("1004\n")
    t = load_split(d, "test", features=d / "test_img_frcnn_feats.pt", keys_file="one.tsv")
    assert t.images.tags(1004) == "cat dog" and t.images.regions(1004).shape == (2, DIM)
    (d / "bad.tsv").write_text("1004\n77\n")
    with pytest.raises(VinvlError, match="without captions.*77"):
        load_split(d, "test", keys_file="bad.tsv")
    with pytest.raises(VinvlError, match="test_img_frcnn_feats.pt: no features for image 1005"):
        t.images.regions(1005)
    torch.save({1: "not json ["}, d / "x_captions.pt")
    with pytest.raises(VinvlError, match="x_captions.pt: image 1"):
        load_captions(d / "x_captions.pt")


# -- training through the CLI -------------------------------------------------------------------
@pytest.mark.slow
def test_training_learns_and_the_cli_evaluates_and_ranks(tmp_path: Path, capsys) -> None:
    """600 CPU steps (~15 s): held-out R@1 both ways well above chance (1/30 for 30 test images)."""
    from vinvl.cli import main

    torch.set_num_threads(1)
    d = synthetic_retrieval(tmp_path / "data")
    cfg_file = tmp_path / "config.json"
    cfg_file.write_text(json.dumps(tiny(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0).to_dict()))
    code = main(["oscar", "retrieval", "train", str(d), "-o", str(tmp_path / "run"), "--vocab", str(d / "vocab.txt"),
                 "--config", str(cfg_file), "--max-steps", "600", "--batch-size", "16", "--learning-rate", "1e-3",
                 "--warmup-steps", "20", "--max-seq-length", "20", "--max-img-seq-length", "4", "--drop-out", "0",
                 "--save-steps", "300", "--log-steps", "100", "--seed", "1"])
    assert code == 0, capsys.readouterr().err
    ckpt = tmp_path / "run/checkpoint-600"
    assert (ckpt / "pytorch_model.bin").is_file() and (ckpt / "vocab.txt").is_file()
    assert json.loads((ckpt / "training_args.json").read_text())["max_seq_length"] == 20
    log = [json.loads(x) for x in (tmp_path / "run/log.jsonl").read_text().splitlines()]
    assert log[-1]["acc"] > 0.8 and log[-1]["loss"] < log[0]["loss"] - 0.2, log
    capsys.readouterr()

    # the training input settings come back from training_args.json (70/50 given here are overridden)
    code = main(["oscar", "retrieval", "eval", str(tmp_path / "run"), str(d), "--keys", "test_img_keys.tsv",
                 "--folds", "3", "--two-stage", "5", "--compare-full", "-o", str(tmp_path / "eval")])
    out = capsys.readouterr()
    assert code == 0, out.err
    r = json.loads((tmp_path / "eval/metrics.json").read_text())
    assert "max_seq_length with the training value: 70 -> 20" in out.err
    assert r["images"] == 30 and r["captions"] == 150
    chance = 1 / 30
    assert r["i2t_retrieval"]["R@1"] > 3 * chance and r["t2i_retrieval"]["R@1"] > 3 * chance, r
    assert r["i2t_retrieval"]["R@10"] > 0.6 and r["t2i_retrieval"]["R@10"] > 0.6, r
    assert set(r["3_fold"]) == {"i2t_retrieval", "t2i_retrieval"}
    two = r["two_stage"]
    assert two["pairs_scored"] < two["pairs_full"] / 2
    for d_ in ("i2t_retrieval", "t2i_retrieval"):
        assert two["recall_lost"][d_]["R@1"] == pytest.approx(r[d_]["R@1"] - two[d_]["R@1"], abs=1e-5)
    assert two["t2i_retrieval"]["R@1"] > 3 * chance, two

    caps = tmp_path / "caps.txt"
    caps.write_text("a cat and a dog\nthe boat next to the tree\n")
    code = main(["oscar", "retrieval", "rank", str(ckpt), str(d), str(caps), "-o", str(tmp_path / "rank"),
                 "--image", "1000", "--image", "1001", "--top", "2"])
    out = capsys.readouterr()
    assert code == 0, out.err
    ranked = json.loads(out.out)
    assert json.loads((tmp_path / "rank/ranking.json").read_text()) == ranked
    assert set(ranked["images"]) == {"1000", "1001"} and len(ranked["images"]["1000"]) == 2
    assert set(ranked["captions"]) == {"a cat and a dog", "the boat next to the tree"}
    best = ranked["captions"]["a cat and a dog"]
    assert best[0]["score"] >= best[1]["score"]

    assert main(["oscar", "retrieval", "eval", str(ckpt), str(d), "--keys", str(tmp_path / "nope.tsv"), "-o",
                 str(tmp_path / "e2")]) == 2
    assert "nope.tsv: no such key list" in capsys.readouterr().err


def test_training_resumes_exactly(tmp_path: Path) -> None:
    """Dropout on: the resumed run's weights equal the uninterrupted run's bit for bit (random states restored)."""
    import shutil

    from vinvl.oscar.checkpoint import load_for_task

    torch.set_num_threads(1)
    d = synthetic_retrieval(tmp_path / "data", train_images=12, test_images=2)
    cfg = RetrievalOptions(max_seq_length=20, max_img_seq_length=4, batch_size=4, learning_rate=1e-3, max_steps=12,
                           save_steps=6, log_steps=3, seed=3, drop_out=0.1)
    quiet = lambda m: None  # noqa: E731
    train(d, tmp_path / "a", cfg, vocab=d / "vocab.txt", model_config=tiny(), log=quiet)
    (tmp_path / "b").mkdir()
    shutil.copytree(tmp_path / "a/checkpoint-6", tmp_path / "b/checkpoint-6")
    shutil.copy(tmp_path / "a/log.jsonl", tmp_path / "b")  # lines past the checkpoint are dropped on resume
    train(d, tmp_path / "b", cfg, vocab=d / "vocab.txt", model_config=tiny(), resume=True, log=quiet)
    a = [json.loads(x) for x in (tmp_path / "a/log.jsonl").read_text().splitlines()]
    b = [json.loads(x) for x in (tmp_path / "b/log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in b] == [3, 6, 9, 12] and a[:2] == b[:2]
    for ra, rb in zip(a[2:], b[2:]):
        assert ra["loss"] == rb["loss"] and ra["acc"] == rb["acc"]
    wa = torch.load(tmp_path / "a/checkpoint-12/pytorch_model.bin", weights_only=True)
    wb = torch.load(tmp_path / "b/checkpoint-12/pytorch_model.bin", weights_only=True)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    # a retrieval checkpoint as --init keeps its head
    m = OscarForSequenceClassification.from_original(tmp_path / "b/checkpoint-12")
    again = load_for_task(OscarForSequenceClassification, tmp_path / "b/checkpoint-12", overrides={"num_labels": 2},
                          log=quiet)
    assert torch.equal(again.classifier.weight, m.classifier.weight)
