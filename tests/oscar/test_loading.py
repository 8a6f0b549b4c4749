"""The one Oscar+ loader and the one merge rule, for every task: each setting of the inputs a model was trained on
is the caller's explicit value, else the one the checkpoint recorded, else the default. Checked on the rule itself
for every options class, and end to end through every `eval` command that takes the lengths (retrieval's
`--max-seq-length` included: it used to lose to the checkpoint's). Also: the task classes share one signature
per member of the OscarTask protocol, and users' text files are read through vinvl.textio."""

from __future__ import annotations

import copy
import dataclasses
import inspect
import json
import pickle
from pathlib import Path
from typing import Protocol

import pytest
import torch

from tests.oscar.classify_synth import COLOURS, EXTRA_ANSWERS, learner_config, nlvr2_data, qa_data, run_cli
from tests.oscar.model_tester import tiny_config
from tests.oscar.retrieval_synth import DIM as IR_DIM
from tests.oscar.retrieval_synth import synthetic_retrieval
from vinvl.errors import FormatError, VinvlError
from vinvl.oscar import OscarForMultipleChoice, OscarForSequenceClassification
from vinvl.oscar import options as O
from vinvl.oscar.options import TrainingSettings, restore

RECORDED = TrainingSettings({"max_seq_length": 24, "max_img_seq_length": 3, "add_od_labels": False,
                             "use_label_seq": True, "use_pair": False, "max_seq_a_length": 11, "do_lower_case": False,
                             "od_label_type": "oid", "att_mask_type": "CL"}, "args.json")
TASKS = [O.PretrainOptions, O.RetrievalOptions, O.CaptionOptions, O.VQAOptions, O.GQAOptions, O.NLVR2Options]


def _other(value: object) -> object:
    """A value of the same type that is neither ``value`` nor RECORDED's."""
    if isinstance(value, str):
        return value + "x"
    return (not value) if isinstance(value, bool) else value + 7


@pytest.mark.parametrize("cls", TASKS, ids=[c.__name__ for c in TASKS])
def test_the_merge_rule_for_every_task(cls: type) -> None:
    default = cls()
    assert set(cls.RESTORED) <= {f.name for f in dataclasses.fields(cls)} and set(cls.RESTORED) <= set(RECORDED)
    # nothing given: the checkpoint's value for each restored setting, the default for everything else
    merged = restore(cls(), RECORDED)
    for f in dataclasses.fields(cls):
        want = RECORDED[f.name] if f.name in cls.RESTORED else getattr(default, f.name)
        assert getattr(merged, f.name) == want, f.name
    # given: the caller's value wins, also when it is the default (an explicit value is no default)
    for name in cls.RESTORED:
        for mine in (_other(getattr(default, name)), getattr(default, name)):
            assert getattr(restore(cls(**{name: mine}), RECORDED), name) == mine, name
    # nothing recorded: the defaults
    assert restore(cls(), {}) == default
    # a malformed record is an error naming its file, even where the caller's value wins
    for name in cls.RESTORED:
        bad = TrainingSettings({name: 7 if isinstance(getattr(default, name), str) else "many"},
                               "ckpt/training_args.json")
        with pytest.raises(VinvlError, match=f"ckpt/training_args.json: {name} must be"):
            restore(cls(**{name: getattr(default, name)}), bad)


def test_pretraining_restores_nothing() -> None:
    """A pretraining run's checkpoint to start from may be any Oscar+ checkpoint: its lengths never replace the run's."""
    assert O.PretrainOptions.RESTORED == () and restore(O.PretrainOptions(), RECORDED).max_seq_length == 35


def test_options_remember_what_the_caller_set() -> None:
    o = O.RetrievalOptions(max_seq_length=40)
    assert o.explicit() == {"max_seq_length"} and O.RetrievalOptions().explicit() == set()
    o.add_od_labels = False
    assert o.explicit() == {"max_seq_length", "add_od_labels"}
    c = copy.copy(o)
    c.max_img_seq_length = 9
    assert "max_img_seq_length" in c.explicit() and "max_img_seq_length" not in o.explicit()
    assert pickle.loads(pickle.dumps(o)).explicit() == o.explicit() and o == O.RetrievalOptions(max_seq_length=40,
                                                                                                 add_od_labels=False)
    assert "_explicit" not in o.to_dict()  # never recorded in training_args
    made = O.make_options(O.VQAOptions, {"max_seq_length": 9, "eval_batch_size": 3}, ["max_seq_length", "device"])
    assert made.explicit() == {"max_seq_length"} and made.eval_batch_size == 3


def test_scst_starts_in_the_layout_of_its_checkpoint_unless_told() -> None:
    from vinvl.oscar.tasks.captioning import VINVL_CAPTION_RECIPE, trained_layout

    assert {n: getattr(O.CaptionOptions(), n) for n in O.CaptionOptions.RESTORED} == VINVL_CAPTION_RECIPE
    assert trained_layout({}) == VINVL_CAPTION_RECIPE
    start = {"max_seq_length": 50, "max_seq_a_length": 30, "scst": False}
    assert trained_layout(start, O.CaptionOptions(scst=True))["max_seq_length"] == 50
    told = trained_layout(start, O.CaptionOptions(scst=True, max_seq_length=60))
    assert told["max_seq_length"] == 60 and told["max_seq_a_length"] == 30 and told["scst"] is False


# -- the loader -------------------------------------------------------------------------------------------------
def test_the_loader_reads_settings_only_when_asked(tmp_path: Path) -> None:
    """A run that starts from a checkpoint's weights does not depend on its settings file; inference does."""
    from vinvl.oscar.loading import OscarCheckpoint, from_pretrained
    from vinvl.oscar.tensorize import load_tokenizer

    p = qa_data(tmp_path / "data", n_train=2, n_val=0)
    cfg = learner_config()
    cfg.num_labels = 6
    OscarForSequenceClassification(cfg).save_original(tmp_path / "ckpt", tokenizer=load_tokenizer(p["vocab"]))
    (tmp_path / "ckpt/training_args.json").write_text('{"max_seq_length": "long"}')
    ckpt = OscarCheckpoint.open(tmp_path / "ckpt")
    assert ckpt.start(OscarForSequenceClassification, {"num_labels": 6}, log=lambda m: None).config.num_labels == 6
    with pytest.raises(VinvlError, match="training_args.json: max_seq_length must be int"):
        from_pretrained(tmp_path / "ckpt", OscarForSequenceClassification, O.VQAOptions())
    (tmp_path / "ckpt/training_args.json").write_text('{"max_seq_length": 20, "do_lower_case": false}')
    loaded = from_pretrained(tmp_path / "ckpt", OscarForSequenceClassification, O.VQAOptions(), "cpu")
    assert loaded.options.max_seq_length == 20 and not loaded.model.training
    assert loaded.tokenizer.tokenize("Red") == ["[UNK]"]  # cased, as it was trained (the vocabulary is lower-case)
    with pytest.raises(VinvlError, match="--max-seq-length 33 exceeds the model's 32 positions"):
        from_pretrained(tmp_path / "ckpt", OscarForSequenceClassification, O.VQAOptions(max_seq_length=33))


# -- end to end: each eval command, its lengths by the rule -----------------------------------------------------
@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, dict]:
    """Untrained tiny checkpoints of 32 positions, each recording lengths that fit (24 text tokens, 3 regions)."""
    from vinvl.oscar.data.qa import AnswerVocab
    from vinvl.oscar.tensorize import load_tokenizer

    root = tmp_path_factory.mktemp("merge_rule")
    torch.manual_seed(0)
    qa, pairs = qa_data(root / "qa", n_train=2, n_val=4), nlvr2_data(root / "nlvr2", n_train=2, n_val=3)
    ir = synthetic_retrieval(root / "ir", train_images=3, test_images=3)
    out = {}
    for task, data, cls, more in (("vqa", qa, OscarForSequenceClassification, {"num_labels": 6}),
                                  ("gqa", qa, OscarForSequenceClassification, {"num_labels": 6}),
                                  ("nlvr2", pairs, OscarForMultipleChoice, {"num_labels": 2, "num_choice": 2})):
        cfg = learner_config()
        for k, v in more.items():
            setattr(cfg, k, v)
        folder = root / task
        cls(cfg).save_original(folder, tokenizer=load_tokenizer(data["vocab"]))
        if task != "nlvr2":
            AnswerVocab(COLOURS + EXTRA_ANSWERS).save(folder)
        out[task] = {"ckpt": folder, "data": data, "argv": ["--split", data["val"], "--features", data["features"]]}
    tok = load_tokenizer(ir / "vocab.txt")
    cfg = tiny_config(vocab_size=len(tok), max_position_embeddings=32, img_feature_dim=IR_DIM, num_labels=2)
    OscarForSequenceClassification(cfg).save_original(root / "retrieval", tokenizer=tok)
    out["retrieval"] = {"ckpt": root / "retrieval", "data": {"root": ir}, "argv": ["--split", "test"]}
    for task, entry in out.items():
        (entry["ckpt"] / "training_args.json").write_text(json.dumps({"max_seq_length": 24, "max_img_seq_length": 3}))
    return out


@pytest.mark.parametrize("task", ["retrieval", "vqa", "gqa", "nlvr2"])
def test_every_eval_command_merges_by_the_rule(checkpoints: dict, tmp_path: Path, capsys, task: str) -> None:
    """No flag: the checkpoint's 24 tokens (every task's default, 55 to 165, exceeds its 32 positions); a flag: the
    user's value, which wins over the checkpoint's (40 does not fit, 20 does)."""
    c = checkpoints[task]
    data = c["data"]["root"] if task == "retrieval" else c["data"]["val"].parent

    def run(out: str, *more: object) -> int:
        return run_cli("oscar", task, "eval", c["ckpt"], data, *c["argv"], "-o", tmp_path / out, "--device", "cpu", *more)

    assert run("recorded") == 0, capsys.readouterr().err
    capsys.readouterr()
    assert run("too_long", "--max-seq-length", 40) == 2
    err = capsys.readouterr().err  # (retrieval says which settings the checkpoint gave first)
    assert err.endswith("\nerror: --max-seq-length 40 exceeds the model's 32 positions\n") or \
        err == "error: --max-seq-length 40 exceeds the model's 32 positions\n", err
    assert "override max_seq_length" not in err and err.count("error") == 1, err
    assert run("shorter", "--max-seq-length", 20) == 0, capsys.readouterr().err
    assert (tmp_path / "shorter/metrics.json").is_file()


# -- one signature per member of the task protocol ---------------------------------------------------------------
def test_every_task_has_the_protocols_signatures() -> None:
    from vinvl.oscar.task import OscarTask
    from vinvl.oscar.tasks.base import Task
    from vinvl.oscar.tasks.captioning import CaptionTask
    from vinvl.oscar.tasks.gqa import GQATask
    from vinvl.oscar.tasks.nlvr2 import NLVR2Task
    from vinvl.oscar.tasks.pretrain import PretrainTask
    from vinvl.oscar.tasks.retrieval import RetrievalTask
    from vinvl.oscar.tasks.vqa import VQATask
    from vinvl.oscar.training import Trainer

    # the protocol's own members and the training engine's it extends
    protocols = [c for c in OscarTask.__mro__ if getattr(c, "_is_protocol", False) and c is not Protocol]
    members = sorted({n for c in protocols for n, v in vars(c).items() if inspect.isfunction(v) and not n.startswith("_")})
    assert {"train_set", "collate", "build_model", "optimizer", "loss", "evaluate", "save_checkpoint", "predict"} <= set(members)
    for cls in (Task, PretrainTask, RetrievalTask, CaptionTask, VQATask, GQATask, NLVR2Task):
        for name in members:
            want = list(inspect.signature(getattr(OscarTask, name)).parameters)
            assert list(inspect.signature(getattr(cls, name)).parameters) == want, (cls.__name__, name)
        for name in ("ddp_forward", "unused_parameters"):
            assert isinstance(getattr(cls, name), bool), (cls.__name__, name)
    assert inspect.signature(Trainer).parameters["task"].annotation in ("OscarTask", OscarTask)


# -- users' text files through vinvl.textio ----------------------------------------------------------------------
def test_text_files_that_are_not_utf8_are_one_line_errors(tmp_path: Path, capsys) -> None:
    from vinvl.oscar.data.retrieval import read_captions_file, read_image_keys

    bad = tmp_path / "captions.txt"
    bad.write_bytes(b"a cat on a mat\n\xff\xfe dog\n")
    with pytest.raises(FormatError, match=r"captions.txt:2: not UTF-8 text \(byte 0xff\)"):
        read_captions_file(bad)
    keys = tmp_path / "keys.tsv"
    keys.write_bytes(b"1\n2\n\xe9\n")
    with pytest.raises(FormatError, match=r"keys.tsv:3: not UTF-8 text"):
        read_image_keys(keys, like=1)
    code = run_cli("oscar", "retrieval", "rank", tmp_path / "no_checkpoint", tmp_path, bad, "-o", tmp_path / "out")
    err = capsys.readouterr().err
    assert code == 2 and err == f"error: {bad}:2: not UTF-8 text (byte 0xff)\n", err
    assert read_captions_file(_write(tmp_path / "ok.txt", "a cat\n\n  a dog  \n")) == ["a cat", "a dog"]


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path
