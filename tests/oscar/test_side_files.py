"""A checkpoint's side files and a task's splits, of every kind the tasks read: the options a checkpoint was
trained with come from vinvl's training_args.json or the original's training_args.bin (safe unpickler, also
inside a released zip) and set the evaluation's sequence lengths; a missing checkpoint, a malformed side
file (training_args, answers, config, vocab, training state, eval log) or an empty or missing split is one
``error:`` line naming the file, option or split (exit 2), before any work."""

from __future__ import annotations

import argparse
import io
import json
import shutil
import zipfile
from pathlib import Path

import pytest
import torch

from tests.oscar.classify_synth import learner_config, qa_data, run_cli, write_vocab
from vinvl.errors import VinvlError
from vinvl.oscar import OscarForSequenceClassification
from vinvl.oscar.checkpoint import TrainingSettings, training_settings
from vinvl.oscar.data.qa import AnswerVocab
from vinvl.oscar.tensorize import load_tokenizer


def original_args(**over) -> argparse.Namespace:
    """run_vqa.py's saved arguments (a subset of its fields, with the torch.device it stores)."""
    ns = argparse.Namespace(data_dir="vinvl/datasets/vqa", model_type="bert", model_name_or_path="pretrained_base",
                            task_name="vqa_text", output_dir="output", max_seq_length=128, max_img_seq_length=50,
                            img_feature_dim=2054, img_feature_type="faster_r-cnn", do_lower_case=True, drop_out=0.3,
                            classifier="linear", cls_hidden_scale=3, loss_type="bce", learning_rate=5e-5,
                            per_gpu_train_batch_size=32, num_train_epochs=25, seed=88, n_gpu=1,
                            device=torch.device("cuda", 0))
    for k, v in over.items():
        setattr(ns, k, v)
    return ns


def saved(obj, legacy: bool = False) -> bytes:
    """``torch.save`` bytes, as the original writes ``training_args.bin`` (zip format, or the pre-1.6 one)."""
    buf = io.BytesIO()
    torch.save(obj, buf, _use_new_zipfile_serialization=not legacy)
    return buf.getvalue()


@pytest.mark.parametrize("legacy", [False, True])
def test_training_settings_of_every_kind(tmp_path: Path, legacy: bool) -> None:
    (tmp_path / "orig").mkdir()
    (tmp_path / "orig/training_args.bin").write_bytes(saved(original_args(max_seq_length=40), legacy))
    s = training_settings(tmp_path / "orig")
    assert s["max_seq_length"] == 40 and s["device"] == "cuda:0" and s.source.endswith("training_args.bin")
    with zipfile.ZipFile(tmp_path / "best.zip", "w") as z:  # a released zip: its newest checkpoint's args
        z.writestr("vqa_base/checkpoint-9/training_args.bin", saved(original_args(max_seq_length=9), legacy))
        z.writestr("vqa_base/checkpoint-10/training_args.bin", saved(original_args(max_seq_length=10), legacy))
    assert training_settings(tmp_path / "best.zip")["max_seq_length"] == 10
    (tmp_path / "ours").mkdir()
    (tmp_path / "ours/training_args.json").write_text(json.dumps({"max_seq_length": 33, "add_od_labels": True}))
    s = training_settings(tmp_path / "ours")
    assert s.typed("max_seq_length", 128) == 33 and s.typed("add_od_labels", False) is True and s.typed("x", 5) == 5
    run = tmp_path / "run"  # a run folder: its newest checkpoint-N
    (run / "checkpoint-2").mkdir(parents=True)
    (run / "checkpoint-2/pytorch_model.bin").write_bytes(b"")
    (run / "checkpoint-2/training_args.json").write_text('{"max_img_seq_length": 7}')
    assert training_settings(run)["max_img_seq_length"] == 7
    assert training_settings(tmp_path / "nothing") == {}


@pytest.mark.parametrize("content, why", [
    ("{", "not valid JSON"),
    ("[1, 2]", "expected a JSON object"),
    ('{"max_seq_length": "long"}', "max_seq_length must be int"),
    ('{"max_seq_length": true}', "max_seq_length must be int"),
])
def test_malformed_training_args_json(tmp_path: Path, content: str, why: str) -> None:
    (tmp_path / "training_args.json").write_text(content)
    with pytest.raises(VinvlError, match=why) as e:
        training_settings(tmp_path).typed("max_seq_length", 128)
    assert str(tmp_path / "training_args.json") in str(e.value)


def test_unsafe_or_broken_training_args_bin(tmp_path: Path) -> None:
    import pickle

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    (tmp_path / "training_args.bin").write_bytes(pickle.dumps(Evil()))
    with pytest.raises(VinvlError, match="refusing to load builtins.print"):
        training_settings(tmp_path)
    (tmp_path / "training_args.bin").write_bytes(b"\x80\x04garbage")
    with pytest.raises(VinvlError, match="training_args.bin: not a readable pickle"):
        training_settings(tmp_path)


# -- through the CLI: one error line, exit 2 ------------------------------------------------------
@pytest.fixture(scope="module")
def vqa(tmp_path_factory) -> dict[str, Path]:
    """Tiny VQA data and an untrained fine-tuned checkpoint (32 positions; no training_args of its own)."""
    root = tmp_path_factory.mktemp("vqa")
    p = qa_data(root / "data", n_train=6, n_val=4)
    torch.manual_seed(0)
    cfg = learner_config()
    cfg.num_labels = 6
    ckpt = root / "ckpt"
    OscarForSequenceClassification(cfg).save_original(ckpt, tokenizer=load_tokenizer(p["vocab"]))
    AnswerVocab.from_files(p["ans2label"], p["label2ans"]).save(ckpt)
    return {**p, "ckpt": ckpt, "root": root}


def vqa_eval(p: dict, ckpt: Path, out: Path, *more: object) -> int:
    return run_cli("oscar", "vqa", "eval", ckpt, p["root"] / "data", "--split", p["val"], "--features", p["features"],
                   "-o", out, *more)


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    return err


def test_vqa_eval_takes_the_lengths_of_the_original_training_args(vqa, tmp_path: Path, capsys) -> None:
    """The task default (128 tokens) does not fit the 32 positions; the original's training_args.bin says 24."""
    ckpt = tmp_path / "ckpt"
    shutil.copytree(vqa["ckpt"], ckpt)
    assert vqa_eval(vqa, ckpt, tmp_path / "a") == 2
    assert "--max-seq-length 128 exceeds the model's 32 positions" in one_error_line(capsys)
    (ckpt / "training_args.bin").write_bytes(saved(original_args(max_seq_length=24, max_img_seq_length=3)))
    assert vqa_eval(vqa, ckpt, tmp_path / "b") == 0, capsys.readouterr().err
    assert json.loads((tmp_path / "b/metrics.json").read_text())["num_questions"] == 4
    # vinvl's own training_args.json wins over the original's file
    (ckpt / "training_args.json").write_text(json.dumps({"max_seq_length": 200}))
    assert vqa_eval(vqa, ckpt, tmp_path / "c") == 2
    assert "200 exceeds" in one_error_line(capsys)


def break_file(folder: Path, name: str, content: bytes) -> Path:
    (folder / name).write_bytes(content)
    return folder / name


@pytest.mark.parametrize("name, content, why", [
    ("answers.json", b"{", "answers.json: not valid JSON"),
    ("answers.json", b'{"answers": 3}', "answers.json: 'answers' must be a non-empty list"),
    ("answers.json", b'{"answers": ["a", "b"], "labels": [1]}', "answers.json: 'labels' must be a list as long"),
    ("training_args.json", b"nonsense", "training_args.json: not valid JSON"),
    ("training_args.json", b'{"max_img_seq_length": "many"}', "training_args.json: max_img_seq_length must be int"),
    ("training_args.bin", b"PK\x03\x04broken", "training_args.bin: damaged zip"),
    ("config.json", b'{"hidden_size": 32,', "config.json: not valid JSON"),
    ("config.json", b"[]", "config.json: expected a JSON object"),
    ("vocab.txt", b"a\nb\n", "vocab.txt: not a BERT vocabulary (no [PAD], [UNK], [CLS], [SEP], [MASK])"),
    ("vocab.txt", b"\xff\xfe\x00", "vocab.txt: cannot read the vocabulary"),
])
def test_malformed_side_files_of_a_checkpoint(vqa, tmp_path: Path, capsys, name: str, content: bytes, why: str) -> None:
    ckpt = tmp_path / "ckpt"
    shutil.copytree(vqa["ckpt"], ckpt)
    broken = break_file(ckpt, name, content)
    assert vqa_eval(vqa, ckpt, tmp_path / "out", "--max-seq-length", 24, "--max-img-seq-length", 3) == 2
    err = one_error_line(capsys)
    assert why in err and str(broken) in err, err
    assert not (tmp_path / "out").exists()  # checked before any work


@pytest.mark.parametrize("task", ["vqa", "gqa", "nlvr2", "caption", "retrieval"])
def test_a_missing_checkpoint_is_named(vqa, tmp_path: Path, capsys, task: str) -> None:
    gone = tmp_path / "no_such_checkpoint"
    argv = {
        "vqa": ["oscar", "vqa", "eval", gone, vqa["root"] / "data", "--split", vqa["val"], "-o", tmp_path / "o"],
        "gqa": ["oscar", "gqa", "eval", gone, vqa["root"] / "data", "--split", vqa["val"], "-o", tmp_path / "o"],
        "nlvr2": ["oscar", "nlvr2", "eval", gone, vqa["root"] / "data", "--split", vqa["val"], "-o", tmp_path / "o"],
        "caption": ["oscar", "caption", "eval", gone, vqa["features"], "-o", tmp_path / "o"],
        "retrieval": ["oscar", "retrieval", "eval", gone, vqa["root"], "-o", tmp_path / "o"],
    }[task]
    assert run_cli(*argv) == 2
    assert one_error_line(capsys) == f"error: {gone}: no such checkpoint"
    (gone / "checkpoint-x").mkdir(parents=True)  # a folder, but no weights in it or in a checkpoint-N
    assert run_cli(*argv) == 2
    assert "not a checkpoint (a folder with pytorch_model.bin" in one_error_line(capsys)


def test_a_missing_initial_checkpoint_is_named(vqa, tmp_path: Path, capsys) -> None:
    gone = tmp_path / "pretrained"
    (tmp_path / "caps.json").write_text(json.dumps([{"image_id": "00000", "caption": "a red ball"}]))
    for argv in (["oscar", "vqa", "train", vqa["root"] / "data", "--train-split", vqa["train"], "--eval-split", "none",
                  "--label-file", vqa["ans2label"], "--features", vqa["features"], "--init", gone],
                 ["oscar", "caption", "train", vqa["features"], "--captions", tmp_path / "caps.json", "--init", gone],
                 ["oscar", "retrieval", "train", vqa["root"], "--init", gone]):
        assert run_cli(*argv, "-o", tmp_path / "run") == 2
        assert one_error_line(capsys) == f"error: {gone}: no such initial checkpoint (--init)"


def qa_train(p: dict, out: Path, train: Path, task: str = "vqa", *more: object) -> int:
    argv = ["oscar", task, "train", p["root"] / "data", "--train-split", train, "--eval-split", "none",
            "--features", p["features"], "--vocab", p["vocab"], "--config", p["root"] / "tiny.json", "--max-steps", 2,
            "--batch-size", 2, "--max-seq-length", 24, "--max-img-seq-length", 3, "-o", out, *more]
    if task != "nlvr2":
        argv += ["--label-file", p["ans2label"]]
    return run_cli(*argv)


@pytest.mark.parametrize("task", ["vqa", "gqa", "nlvr2"])
def test_empty_or_missing_training_splits(vqa, tmp_path: Path, capsys, task: str) -> None:
    (vqa["root"] / "tiny.json").write_text(learner_config().to_json_string())
    empty = tmp_path / "empty.json"
    empty.write_text("[]")
    assert qa_train(vqa, tmp_path / "run", empty, task) == 2
    assert one_error_line(capsys) == f"error: {empty}: no items (an empty split)"
    assert qa_train(vqa, tmp_path / "run", tmp_path / "gone.json", task) == 2
    assert one_error_line(capsys) == f"error: {tmp_path / 'gone.json'}: no such data file"
    if task != "nlvr2":  # questions, but none answered: nothing to train on (the original's IndexError)
        unanswered = tmp_path / "unanswered.json"
        unanswered.write_text(json.dumps([{**it, "an": [], "s": []} for it in json.loads(vqa["train"].read_text())]))
        assert qa_train(vqa, tmp_path / "run", unanswered, task) == 2
        assert one_error_line(capsys) == f"error: {unanswered}: no item has an answer ('an'): nothing to train on or score"
    assert not (tmp_path / "run").exists()


def test_an_empty_eval_split(vqa, tmp_path: Path, capsys) -> None:
    empty = tmp_path / "empty.json"
    empty.write_text("[]")
    for task in ("vqa", "gqa", "nlvr2"):
        assert run_cli("oscar", task, "eval", vqa["ckpt"], vqa["root"] / "data", "--split", empty, "-o", tmp_path / "o",
                       "--max-seq-length", 24) == 2
        assert one_error_line(capsys) == f"error: {empty}: no items (an empty split)"


def test_resume_with_a_broken_training_state_or_eval_log(vqa, tmp_path: Path, capsys) -> None:
    (vqa["root"] / "tiny.json").write_text(learner_config().to_json_string())
    run = tmp_path / "run"
    assert qa_train(vqa, run, vqa["train"], "vqa", "--save-steps", 1) == 0, capsys.readouterr().err
    capsys.readouterr()
    state = run / "checkpoint-2/training_state.pt"
    state.write_bytes(b"not a torch file")
    assert qa_train(vqa, run, vqa["train"], "vqa", "--max-steps", 3, "--resume") == 2
    err = one_error_line(capsys)
    assert f"{state}: not a readable PyTorch checkpoint" in err
    torch.save({"step": 2}, state)
    assert qa_train(vqa, run, vqa["train"], "vqa", "--max-steps", 3, "--resume") == 2
    assert one_error_line(capsys) == f"error: {state}: not a training state (optimizer, scheduler, step)"
    shutil.rmtree(run)
    assert qa_train(vqa, run, vqa["train"], "vqa", "--save-steps", 1, "--eval-split", str(vqa["val"])) == 0
    capsys.readouterr()
    (run / "eval_logs.json").write_text('{"step": 1}')
    assert qa_train(vqa, run, vqa["train"], "vqa", "--max-steps", 3, "--resume", "--eval-split", str(vqa["val"])) == 2
    assert one_error_line(capsys) == f"error: {run / 'eval_logs.json'}: expected a JSON list, found dict"


def test_captioning_splits_and_settings(vqa, tmp_path: Path, capsys) -> None:
    """An empty caption split stops training; a captioning checkpoint's malformed training args stop evaluation."""
    from vinvl.oscar import OscarForCaptioning

    (tmp_path / "caps.json").write_text("[]")
    assert run_cli("oscar", "caption", "train", vqa["features"], "--captions", tmp_path / "caps.json", "-o", tmp_path / "r",
                   "--vocab", vqa["vocab"]) == 2
    assert one_error_line(capsys) == f"error: {vqa['features']}: no captions to train on"
    ckpt = tmp_path / "cap"
    OscarForCaptioning(learner_config()).save_original(ckpt, tokenizer=load_tokenizer(vqa["vocab"]))
    (ckpt / "training_args.json").write_text('{"max_seq_length": 10, "max_seq_a_length": 20}')
    (tmp_path / "one.json").write_text(json.dumps([{"image_id": "00000", "caption": "a red ball"}]))
    assert run_cli("oscar", "caption", "eval", ckpt, vqa["features"], "--captions", tmp_path / "one.json", "-o",
                   tmp_path / "e", "--no-metrics", "--device", "cpu") == 2
    assert one_error_line(capsys) == (f"error: {ckpt / 'training_args.json'}: max_seq_length 10 is shorter than "
                                      "the caption room 20")


def test_vocab_in_a_checkpoint_is_checked(tmp_path: Path) -> None:
    write_vocab(tmp_path)
    assert load_tokenizer(tmp_path).cls_token_id == 2
    (tmp_path / "vocab.txt").write_text("[PAD]\n[CLS]\n")
    with pytest.raises(VinvlError, match=r"vocab.txt: not a BERT vocabulary \(no \[UNK\], \[SEP\], \[MASK\]\)"):
        load_tokenizer(tmp_path)


def test_typed_settings() -> None:
    s = TrainingSettings({"a": 3.0, "b": 1, "c": "x", "d": None}, "args.bin")
    assert s.typed("a", 0) == 3 and s.typed("b", False) is True and s.typed("c", "y") == "x" and s.typed("d", 7) == 7
    with pytest.raises(VinvlError, match="args.bin: a must be bool, found 3.0"):
        s.typed("a", True)
