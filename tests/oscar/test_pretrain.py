"""Oscar+ pretraining on a tiny synthetic corpus: both losses go down; a resumed run continues exactly."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from tests.oscar.model_tester import tiny_config
from vinvl.corpus.build import synthetic_corpus
from vinvl.errors import VinvlError
from vinvl.oscar import OscarConfig, OscarForPretraining
from vinvl.oscar.data.corpus import CorpusDataset
from vinvl.oscar.options import PretrainOptions
from vinvl.oscar.tasks.pretrain import pretrain
from vinvl.oscar.tensorize import load_tokenizer


def tiny() -> OscarConfig:
    # 5x BERT-base's initial weight spread: the tiny model learns fast from scratch
    return tiny_config(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                       max_position_embeddings=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                       initializer_range=0.1)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return synthetic_corpus(tmp_path_factory.mktemp("corpus"), num_images=160, seed=0)


def test_examples(corpus: Path) -> None:
    tok = load_tokenizer(corpus.parent)
    ds = CorpusDataset(corpus, tok, PretrainOptions(max_seq_length=24, max_img_seq_length=6))
    labels = [int(ds.example(i, 0)["next_sentence_label"]) for i in range(len(ds))]
    assert 0.4 < labels.count(0) / len(labels) < 0.6 and labels.count(1) > 20 and labels.count(2) > 20
    e = ds.example(3, 0)
    assert e["input_ids"].shape == (24,) and e["img_feats"].shape == (6, 2054) and e["masked_lm_labels"].shape == (30,)
    assert torch.equal(e["input_ids"], ds.example(3, 0)["input_ids"])  # seeded by (seed, epoch, row)
    real = e["attention_mask"][:24].sum()
    assert (e["masked_lm_labels"][real:] == -1).all()
    assert ds.qa_rows and all(ds.text_b(i) in ("red", "green", "blue", "yellow", "black", "white") for i in ds.qa_rows)


@pytest.mark.slow
def test_losses_go_down(corpus: Path, tmp_path: Path) -> None:
    """1500 CPU steps (about 25 s): MLM falls to about a quarter of its first 100 steps' mean; the 3-way
    contrastive loss falls well below the 1.04 of always answering the class frequencies (it needs the regions)."""
    torch.set_num_threads(2)
    cfg = PretrainOptions(max_seq_length=24, max_img_seq_length=6, batch_size=16, learning_rate=1e-3, warmup_steps=50,
                         scheduler="constant", max_steps=1500, log_steps=100, save_steps=1500, seed=1, drop_out=0.0)
    pretrain(corpus, corpus.parent, tmp_path / "run", tiny(), cfg, log=lambda m: None)
    log = [json.loads(x) for x in (tmp_path / "run/log.jsonl").read_text().splitlines()]
    assert len(log) == 15
    first, last = log[0], log[-2:]
    assert max(r["mlm"] for r in last) < 0.35 * first["mlm"], log
    assert max(r["contrastive"] for r in last) < min(0.95, first["contrastive"] - 0.08), log
    m = OscarForPretraining.from_original(tmp_path / "run")  # the newest checkpoint-N, original layout
    assert (tmp_path / "run/checkpoint-1500/vocab.txt").is_file() and m.config.num_contrast_classes == 3


def test_resume_continues_the_same_run(corpus: Path, tmp_path: Path) -> None:
    torch.set_num_threads(1)
    cfg = PretrainOptions(max_seq_length=24, max_img_seq_length=6, batch_size=8, learning_rate=1e-3, warmup_steps=5,
                         max_steps=40, log_steps=10, save_steps=20, seed=2, gradient_accumulation_steps=2)
    pretrain(corpus, corpus.parent, tmp_path / "a", tiny(), cfg, log=lambda m: None)
    (tmp_path / "b").mkdir()
    shutil.copytree(tmp_path / "a/checkpoint-20", tmp_path / "b/checkpoint-20")
    pretrain(corpus, corpus.parent, tmp_path / "b", tiny(), cfg, resume=True, log=lambda m: None)
    a = [json.loads(x) for x in (tmp_path / "a/log.jsonl").read_text().splitlines()]
    b = [json.loads(x) for x in (tmp_path / "b/log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in b] == [30, 40]
    for ra, rb in zip(a[2:], b):
        assert ra["step"] == rb["step"]
        assert ra["loss"] == pytest.approx(rb["loss"], rel=1e-4, abs=1e-5)


def drawn_texts(ds: CorpusDataset, i: int, epoch: int) -> tuple[list[int], list[int], int]:
    """An example's text_a and text_b ids as drawn (masked positions restored from the MLM labels), and its label."""
    e = ds.example(i, epoch)
    n = int(e["input_ids"].shape[0])
    ids = torch.where(e["masked_lm_labels"][:n] >= 0, e["masked_lm_labels"][:n], e["input_ids"]).tolist()
    types, real = e["token_type_ids"].tolist(), int(e["attention_mask"][:n].sum())
    a = [t for t, s in zip(ids[1:real], types[1:real]) if s == 0][:-1]  # without [SEP]
    b = [t for t, s in zip(ids[:real], types[:real]) if s == 1][:-1]
    return a, b, int(e["next_sentence_label"])


@pytest.mark.parametrize("mode", [0, 1, 2])
@pytest.mark.parametrize("classes, texta_false", [(3, 0.25), (2, 0.0), (2, 0.5)])
def test_contrastive_labels_mean_what_the_originals_code_says(corpus: Path, mode: int, classes: int, texta_false: float) -> None:
    """oscar_tsv.py's random_sent: label 0 the row's own texts; label 1 text_b replaced (mode 0: a text_a or text_b
    of a row of another image, 1: another image's text_b, 2: a question's answer, for caption rows too); label
    num_contrast_classes - 1 text_a replaced by another image's. Drawn with fixed randomness over two epochs."""
    tok = load_tokenizer(corpus.parent)
    cfg = PretrainOptions(max_seq_length=64, max_img_seq_length=4, num_contrast_classes=classes, texta_false_prob=texta_false,
                         textb_sample_mode=mode, seed=5)
    ds = CorpusDataset(corpus, tok, cfg)
    enc = lambda t: tok.convert_tokens_to_ids(tok.tokenize(t))  # noqa: E731
    rows = [(r.image_id, enc(r.text_a), enc(r.text_b), r.qa) for r in ds.rows]
    texta_of = lambda img: {tuple(a) for im, a, _, _ in rows if im != img}  # noqa: E731
    textb_of = lambda img: {tuple(b) for im, _, b, _ in rows if im != img}  # noqa: E731
    answers = {tuple(b) for _, _, b, qa in rows if qa}
    seen, b_kinds = [], set()
    for epoch in (0, 1):
        for i, (img, a0, b0, qa) in enumerate(rows):
            a, b, label = drawn_texts(ds, i, epoch)
            seen.append(label)
            if label == 0:
                assert (a, b) == (a0, b0)
            elif label == 1 and not (classes == 2 and texta_false == 0.5):  # a wrong text_b
                assert a == a0
                if mode == 2:
                    assert tuple(b) in answers
                    b_kinds.add("answer for a caption row" if not qa else "answer")
                elif mode == 1:
                    assert tuple(b) in textb_of(img)
                else:
                    assert tuple(b) in texta_of(img) | textb_of(img)
                    b_kinds.add("a caption or question" if tuple(b) in texta_of(img) else "tags or answer")
            else:  # label num_contrast_classes - 1: a wrong text_a
                assert label == classes - 1 and b == b0 and tuple(a) in texta_of(img)
    n = len(seen)
    share = [seen.count(k) / n for k in range(classes)]
    assert set(seen) <= set(range(classes)) and abs(share[0] - 0.5) < 0.07, share
    if classes == 3:
        assert abs(share[1] - 0.25) < 0.07 and abs(share[2] - 0.25) < 0.07, share
    expected_kinds = {0: {"a caption or question", "tags or answer"}, 1: set(), 2: {"answer for a caption row", "answer"}}[mode]
    if not (classes == 2 and texta_false == 0.5):
        assert b_kinds == expected_kinds


def test_sampling_options_as_the_original_allows(corpus: Path) -> None:
    tok = load_tokenizer(corpus.parent)
    for bad, why in ((dict(num_contrast_classes=2, texta_false_prob=0.25), "the original uses 3 classes"),
                     (dict(num_contrast_classes=3, texta_false_prob=0.0), "the original uses 3 classes"),
                     (dict(texta_false_prob=0.7), "must be in"), (dict(textb_sample_mode=3), "--textb-sample-mode 3")):
        with pytest.raises(VinvlError, match=why):
            CorpusDataset(corpus, tok, PretrainOptions(**bad))


def test_vanilla_oscar_two_way(corpus: Path) -> None:
    tok = load_tokenizer(corpus.parent)
    ds = CorpusDataset(corpus, tok, PretrainOptions(num_contrast_classes=2, texta_false_prob=0.0, textb_sample_mode=0))
    labels = {int(ds.example(i, 0)["next_sentence_label"]) for i in range(len(ds))}
    assert labels == {0, 1}


def test_cli_and_two_processes(corpus: Path, tmp_path: Path) -> None:
    """`vinvl oscar pretrain` through torchrun with 2 gloo processes: runs, logs and saves."""
    import os
    import socket
    import subprocess
    import sys

    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps(tiny().to_dict()))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(port), "-m", "vinvl", "oscar", "pretrain", str(corpus), "-o", str(tmp_path / "ddp"),
           "--vocab", str(corpus.parent), "--config", str(cfg), "--max-steps", "6", "--batch-size", "4",
           "--max-seq-length", "24", "--max-img-seq-length", "6", "--save-steps", "3", "--log-steps", "3"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert [json.loads(x)["step"] for x in (tmp_path / "ddp/log.jsonl").read_text().splitlines()] == [3, 6]
    assert (tmp_path / "ddp/checkpoint-6/pytorch_model.bin").is_file()
