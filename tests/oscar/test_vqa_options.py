"""run_vqa.py's VG data and schedule options, each against what the original's code does: --use_vg / --use_vg_dev
(which files), --adjust_dp (which dropouts, from which epoch, to what), --adjust_loss (bce from an epoch) and
--save_after_epoch (no checkpoint before it); unit checks by hand, then short CLI runs (tiny model, CPU, seconds)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from tests.oscar.classify_synth import COLOURS, EXTRA_ANSWERS, config_file, qa_data, run_cli
from tests.oscar.model_tester import tiny_config
from tests.oscar.trainer_runs import weights
from vinvl.errors import VinvlError
from vinvl.oscar import OscarForSequenceClassification
from vinvl.oscar.data.qa import AnswerVocab
from vinvl.oscar.options import VQAOptions
from vinvl.oscar.task import StepContext
from vinvl.oscar.tasks import vqa


# -- which files (run_vqa.py's _load_dataset and VQADataset) ----------------------------------------------------
def test_vg_files_are_the_originals() -> None:
    """--use_vg: the train questions are train2014_vg_qla_mrcnn.json (txt_data_dir), features unchanged;
    --use_vg_dev: the val questions are vg_qla_mrcnn.json and every split's features train+val_img_frcnn_feats.pt."""
    q, f = vqa.split_files("/d", "train", txt_data_dir="/t", use_vg=True)
    assert (str(q), str(f)) == ("/t/train2014_vg_qla_mrcnn.json", "/d/train_img_frcnn_feats.pt")
    q, f = vqa.split_files("/d", "val", txt_data_dir="/t", use_vg_dev=True)
    assert (str(q), str(f)) == ("/t/vg_qla_mrcnn.json", "/d/train+val_img_frcnn_feats.pt")
    q, f = vqa.split_files("/d", "train", txt_data_dir="/t", use_vg=True, use_vg_dev=True)
    assert (str(q), str(f)) == ("/t/train2014_vg_qla_mrcnn.json", "/d/train+val_img_frcnn_feats.pt")
    q, f = vqa.split_files("/d", "test2015", use_vg_dev=True)  # test questions as ever, the train+val features
    assert (str(q), str(f)) == ("/d/test2015_qla_mrcnn.json", "/d/train+val_img_frcnn_feats.pt")
    # what the original ignores silently is refused: the flags without mask files, --use_vg for another split
    with pytest.raises(VinvlError, match="--use-vg reads the VG files .* only with --data-label-type mask"):
        vqa.split_files("/d", "train", "faster", use_vg=True)
    with pytest.raises(VinvlError, match="--use-vg-dev .* only with --data-label-type mask"):
        vqa.split_files("/d", "val", "faster", use_vg_dev=True)
    with pytest.raises(VinvlError, match="--use-vg replaces the train split's questions"):
        vqa.split_files("/d", "train+val", use_vg=True)


# -- the schedule options, by hand --------------------------------------------------------------------------------
def test_adjust_dp_and_adjust_loss_by_epoch() -> None:
    """run_vqa.py, at the start of each epoch: `if args.adjust_dp and epoch>=3`: model.dropout, model.bert.dropout and
    model.bert.embeddings.dropout get p 0.3; `if args.adjust_loss and epoch>=args.adjust_loss_epoch`: model.loss_type
    'bce' (instance_bce_with_logits: BCE-with-logits mean x the number of answers), 'kl' before (KLDivLoss batchmean
    of log_softmax). The encoder layers' dropout keeps --drop_out."""
    o = VQAOptions(adjust_dp=True, drop_out=0.1, adjust_loss_epoch=2, loss_type="kl")
    assert [o.dropout_at(e) for e in range(6)] == [0.1, 0.1, 0.1, 0.3, 0.3, 0.3]
    assert [o.loss_type_at(e) for e in range(4)] == ["kl", "kl", "bce", "bce"]
    assert VQAOptions(drop_out=0.1).dropout_at(5) == 0.1 and VQAOptions(loss_type="kl").loss_type_at(9) == "kl"
    assert VQAOptions(adjust_loss_epoch=0, loss_type="kl").loss_type_at(0) == "bce"  # the original's default -1
    with pytest.raises(VinvlError, match="--adjust-loss-epoch -1"):
        VQAOptions(adjust_loss_epoch=-1).check()

    torch.manual_seed(0)
    n = 6
    model = OscarForSequenceClassification(tiny_config(vocab_size=30, img_feature_dim=8, num_labels=n, loss_type="kl",
                                                       hidden_dropout_prob=0.1))
    task = vqa.VQATask(o, None, AnswerVocab(COLOURS + EXTRA_ANSWERS))
    batch = {"input_ids": torch.tensor([[2, 5, 3, 0], [2, 6, 7, 3]]), "attention_mask": torch.ones(2, 7, dtype=torch.long),
             "img_feats": torch.randn(2, 3, 8), "labels": torch.tensor([[1.0, 0.3, 0, 0, 0, 0], [0, 0, 0.9, 0, 0, 0.6]])}
    y = batch["labels"]
    model.eval()  # the same logits at every call: the loss alone changes
    with torch.no_grad():
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
    p = torch.sigmoid(logits)
    bce = -(y * p.log() + (1 - y) * (1 - p).log()).mean() * n
    logp = logits.log_softmax(-1)
    kl = (torch.where(y > 0, y * (y.clamp_min(1e-30).log() - logp), torch.zeros_like(y))).sum() / len(y)
    for epoch in range(5):
        ctx = StepContext(epoch * 2, 0, epoch * 2, epoch, model, torch.device("cpu"), None)  # type: ignore[arg-type]
        with torch.no_grad():
            loss, figures = task.loss(model, batch, ctx)
        assert loss.item() == pytest.approx((kl if epoch < 2 else bce).item(), rel=1e-5), epoch
        want = 0.3 if epoch >= 3 else 0.1
        assert [model.dropout.p, model.bert.dropout.p, model.bert.embeddings.dropout.p] == [want] * 3, epoch
        assert {m.p for name, m in model.bert.encoder.named_modules() if isinstance(m, torch.nn.Dropout)} == {0.1}
        assert "score" in figures
    assert model.config.loss_type == "kl" and model.config.hidden_dropout_prob == 0.1  # what it saves: unchanged


def test_save_after_epoch_holds_back_the_checkpoints_of_the_first_epochs() -> None:
    """run_vqa.py saves at the end of epoch e only if e > --save_after_epoch; a save after step s is in epoch
    (s - 1) // steps_per_epoch."""
    o = VQAOptions(save_after_epoch=1)
    assert [o.writes_checkpoint(s, 2) for s in range(1, 9)] == [False] * 4 + [True] * 4
    assert all(VQAOptions().writes_checkpoint(s, 2) for s in range(1, 9))
    with pytest.raises(VinvlError, match="--save-after-epoch -2"):
        VQAOptions(save_after_epoch=-2).check()


# -- short CLI runs -------------------------------------------------------------------------------------------------
def _data(root: Path) -> dict[str, Path]:
    """A VQA folder with the original's names: 16 VQA train questions, the VG train file (those 16 and 8 more),
    6 val questions, 10 VG val ones; the features of train and train+val only (no val file)."""
    p = qa_data(root / "src", n_train=24, n_val=16, as_pt=True)
    train, val = json.loads(p["train"].read_text()), json.loads(p["val"].read_text())
    d = root / "vqa"
    d.mkdir()
    for name, items in (("train2014_qla_mrcnn.json", train[:16]), ("train2014_vg_qla_mrcnn.json", train),
                        ("val2014_qla_mrcnn.json", val[:6]), ("vg_qla_mrcnn.json", val[6:])):
        (d / name).write_text(json.dumps(items))
    for name in ("train_img_frcnn_feats.pt", "train+val_img_frcnn_feats.pt"):
        shutil.copy(p["features"], d / name)
    return {**p, "dir": d, "config": config_file(root)}


def _train(p: dict[str, Path], out: Path, *more: object) -> None:
    assert run_cli("oscar", "vqa", "train", p["dir"], "-o", out, "--config", p["config"], "--vocab", p["vocab"],
                   "--label-file", p["ans2label"], "--label2ans", p["label2ans"], "--max-seq-length", 12,
                   "--max-img-seq-length", 3, "--batch-size", 8, "--learning-rate", 1e-3, "--log-steps", 1,
                   "--device", "cpu", *more) == 0


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:  # type: ignore[no-untyped-def]
    torch.set_num_threads(1)
    return _data(tmp_path_factory.mktemp("vqa_options"))


def test_use_vg_and_use_vg_dev_read_the_vg_files(data: dict[str, Path], tmp_path: Path) -> None:
    """`train --use-vg` trains on the 24 questions of train2014_vg_qla_mrcnn.json (3 steps of 8 an epoch, not 2);
    `eval --use-vg-dev` scores the 10 of vg_qla_mrcnn.json on train+val's features (there is no val feature file)."""
    run = tmp_path / "vg"
    _train(data, run, "--use-vg", "--eval-split", "none", "--max-steps", 1)
    assert json.loads((run / "checkpoint-1" / "training_args.json").read_text())["steps_per_epoch"] == 3
    plain = tmp_path / "plain"
    _train(data, plain, "--eval-split", "none", "--max-steps", 1)
    assert json.loads((plain / "checkpoint-1" / "training_args.json").read_text())["steps_per_epoch"] == 2
    ev = tmp_path / "ev"
    assert run_cli("oscar", "vqa", "eval", run, data["dir"], "--use-vg-dev", "-o", ev, "--device", "cpu") == 0
    m = json.loads((ev / "metrics.json").read_text())
    assert m["num_questions"] == 10 and m["data"].endswith("vg_qla_mrcnn.json") and "score" in m
    assert run_cli("oscar", "vqa", "eval", run, data["dir"], "-o", tmp_path / "ev2", "--device", "cpu") == 2  # no val feats
    assert run_cli("oscar", "vqa", "train", data["dir"], "-o", tmp_path / "x", "--use-vg", "--train-split", "train+val",
                   "--label-file", data["ans2label"]) == 2


def test_adjust_dp_and_adjust_loss_change_training_from_their_epoch(data: dict[str, Path], tmp_path: Path) -> None:
    """2 steps an epoch, kl loss, dropout 0.1: --adjust-dp leaves epochs 0-2 as the plain run's (checkpoint-6 equal)
    and changes epoch 3 (checkpoint-8 differs); --adjust-loss-epoch 2 leaves epochs 0-1 (checkpoint-4) and changes
    epoch 2. The saved config keeps --loss-type and --drop-out, as the original's."""
    common = ("--eval-split", "none", "--max-steps", 8, "--save-steps", 2, "--drop-out", 0.1, "--loss-type", "kl")
    runs = {name: tmp_path / name for name in ("plain", "dp", "loss")}
    _train(data, runs["plain"], *common)
    _train(data, runs["dp"], *common, "--adjust-dp")
    _train(data, runs["loss"], *common, "--adjust-loss-epoch", 2)

    def same(a: str, b: str, step: int) -> bool:
        wa, wb = weights(runs[a] / f"checkpoint-{step}"), weights(runs[b] / f"checkpoint-{step}")
        return all(torch.equal(wa[k], wb[k]) for k in wa)

    assert same("plain", "dp", 6) and not same("plain", "dp", 8)
    assert same("plain", "loss", 4) and not same("plain", "loss", 6)
    cfg = json.loads((runs["loss"] / "checkpoint-8" / "config.json").read_text())
    assert (cfg["loss_type"], cfg["hidden_dropout_prob"]) == ("kl", 0.1)
    args = json.loads((runs["dp"] / "checkpoint-8" / "training_args.json").read_text())
    assert args["adjust_dp"] is True and args["adjust_loss_epoch"] is None and args["save_after_epoch"] == -1


def test_adjusted_run_resumed_inside_epoch_3_equals_the_uninterrupted_one(data: dict[str, Path], tmp_path: Path) -> None:
    """Both options follow from the step's epoch alone: a run resumed from checkpoint-7 (inside epoch 3, the
    dropouts and the loss already switched) ends with the uninterrupted run's weights, bit for bit."""
    args = ("--eval-split", "none", "--max-steps", 10, "--save-steps", 7, "--drop-out", 0.1, "--loss-type", "kl",
            "--adjust-dp", "--adjust-loss-epoch", 2)
    full, cut = tmp_path / "full", tmp_path / "cut"
    _train(data, full, *args)
    shutil.copytree(full, cut)
    shutil.rmtree(cut / "checkpoint-10")
    _train(data, cut, *args, "--resume")
    wa, wb = weights(full / "checkpoint-10"), weights(cut / "checkpoint-10")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_save_after_epoch_run(data: dict[str, Path], tmp_path: Path) -> None:
    """--save-steps 0 (each epoch, 2 steps) --save-after-epoch 1 over 4 epochs: checkpoints of epochs 2 and 3 only,
    every epoch evaluated into eval_logs.json (the original evaluates each epoch, saved or not)."""
    run = tmp_path / "run"
    _train(data, run, "--eval-split", "val", "--features", data["dir"] / "train+val_img_frcnn_feats.pt",
           "--max-steps", 8, "--save-steps", 0, "--save-after-epoch", 1, "--eval-batch-size", 16)
    assert sorted(int(c.name.split("-")[1]) for c in run.glob("checkpoint-*")) == [6, 8]
    assert [e["step"] for e in json.loads((run / "eval_logs.json").read_text())] == [2, 4, 6, 8]
    assert (run / "checkpoint-6" / "eval_results.json").is_file()
