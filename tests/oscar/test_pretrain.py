"""Oscar+ pretraining on a tiny synthetic corpus: both losses go down; a resumed run continues exactly."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from vinvl.corpus.build import synthetic_corpus
from vinvl.oscar import OscarConfig, OscarForPretraining
from vinvl.oscar.inputs import load_tokenizer
from vinvl.oscar.pretrain import CorpusDataset, PretrainConfig, pretrain


def tiny() -> OscarConfig:
    return OscarConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                       max_position_embeddings=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return synthetic_corpus(tmp_path_factory.mktemp("corpus"), num_images=160, seed=0)


def test_examples(corpus: Path) -> None:
    tok = load_tokenizer(corpus.parent)
    ds = CorpusDataset(corpus, tok, PretrainConfig(max_seq_length=24, max_img_seq_length=6))
    labels = [int(ds.example(i, 0)["next_sentence_label"]) for i in range(len(ds))]
    assert 0.4 < labels.count(0) / len(labels) < 0.6 and labels.count(1) > 20 and labels.count(2) > 20
    e = ds.example(3, 0)
    assert e["input_ids"].shape == (24,) and e["img_feats"].shape == (6, 2054) and e["masked_lm_labels"].shape == (30,)
    assert torch.equal(e["input_ids"], ds.example(3, 0)["input_ids"])  # seeded by (seed, epoch, row)
    real = e["attention_mask"][:24].sum()
    assert (e["masked_lm_labels"][real:] == -1).all()
    assert any("qa" in r[1] for r in ds.rows) and ds.text_b(next(i for i, r in enumerate(ds.rows) if "qa" in r[1])) in (
        "red", "green", "blue", "yellow", "black", "white")


@pytest.mark.slow
def test_losses_go_down(corpus: Path, tmp_path: Path) -> None:
    """1500 CPU steps (about 25 s): MLM falls several-fold; the 3-way contrastive loss falls well below
    the 1.04 of always answering the class frequencies (it needs the regions to tell)."""
    torch.set_num_threads(2)
    cfg = PretrainConfig(max_seq_length=24, max_img_seq_length=6, batch_size=16, learning_rate=1e-3, warmup_steps=50,
                         scheduler="constant", max_steps=1500, log_steps=100, save_steps=1500, seed=1)
    pretrain(corpus, corpus.parent, tmp_path / "run", tiny(), cfg, log=lambda m: None)
    log = [json.loads(x) for x in (tmp_path / "run/log.jsonl").read_text().splitlines()]
    assert len(log) == 15
    first, last = log[0], log[-2:]
    assert max(r["mlm"] for r in last) < 0.3 * first["mlm"], log
    assert max(r["contrastive"] for r in last) < min(0.95, first["contrastive"] - 0.08), log
    m = OscarForPretraining.from_original(tmp_path / "run")  # the newest checkpoint-N, original layout
    assert (tmp_path / "run/checkpoint-1500/vocab.txt").is_file() and m.config.num_contrast_classes == 3


def test_resume_continues_the_same_run(corpus: Path, tmp_path: Path) -> None:
    torch.set_num_threads(1)
    cfg = PretrainConfig(max_seq_length=24, max_img_seq_length=6, batch_size=8, learning_rate=1e-3, warmup_steps=5,
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


def test_vanilla_oscar_two_way(corpus: Path) -> None:
    tok = load_tokenizer(corpus.parent)
    ds = CorpusDataset(corpus, tok, PretrainConfig(num_contrast_classes=2, texta_false_prob=0.0, textb_sample_mode=0))
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
