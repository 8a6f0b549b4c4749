"""``vinvl oscar vqa|gqa|nlvr2 train|eval|predict``: the classification fine-tunings (arguments only; the work is
in :mod:`vinvl.oscar.tasks.vqa`, :mod:`vinvl.oscar.tasks.gqa`, :mod:`vinvl.oscar.tasks.nlvr2` and, for evaluating
and predicting from a checkpoint, :mod:`vinvl.oscar.tasks.classification`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from ..errors import VinvlError
from ..oscar.options import GQAOptions, NLVR2Options, VQAOptions
from .oscar_flags import DETECTOR, LENGTHS, RUN, TRAIN_FILES, detect, detector, eval_split, fields_of, options_of, takes

vqa_app = typer.Typer(help="VQA 2.0 (run_vqa.py): train, evaluate, answer questions about images.", no_args_is_help=True)
gqa_app = typer.Typer(help="GQA (run_gqa.py): train, evaluate, answer questions about images.", no_args_is_help=True)
nlvr2_app = typer.Typer(help="NLVR2 (run_nlvr.py, the pair model or the non-pair one): train, evaluate, judge "
                        "sentences about image pairs.", no_args_is_help=True)


# -- what the commands share: turning their arguments into the library's ----------------------------------------
def _answers(given: dict, data_dir: Any = None) -> Any:
    """Where the answer vocabulary is (the library picks: --label-file, else the checkpoint's, else DATA_DIR's)."""
    from ..oscar.tasks.classification import AnswerFiles

    return AnswerFiles(given.get("label_file"), given.get("label2ans"), data_dir)


def _vocab(task: Any, given: dict, data_dir: Path) -> Any:
    """A training run's answer vocabulary: --label-file, else DATA_DIR's pickles."""
    from ..oscar.data.qa import AnswerVocab

    return AnswerVocab.find(given["label_file"], given["label2ans"], None, data_dir, task.LABEL_FILE, task.LABEL2ANS_FILE)


def _train(run: Any, options_cls: type, given: dict, **files: Any) -> None:
    from ..oscar.checkpoint import config_file
    from ..oscar.tasks.base import task_tokenizer

    opts = options_of(options_cls, given).check()
    last = run(**files, options=opts, tokenizer=task_tokenizer(given["vocab"], given["init"]), init=given["init"],
               model_config=config_file(given["config"]), resume=given["resume"])
    typer.echo(str(last))


def _evaluate(task_cls: Any, options_cls: type, checkpoint: Path, split: Path, features: Any, given: dict,
              data_dir: Path) -> None:
    from ..oscar.tasks.classification import evaluate_checkpoint

    metrics = evaluate_checkpoint(task_cls, checkpoint, split, features, given["out"], options_of(options_cls, given),
                                  _answers(given, data_dir), name=given["split"])
    typer.echo(json.dumps(metrics))


def _predict(task_cls: Any, options_cls: type, checkpoint: Path, find: Any, texts: list[str], given: dict) -> list:
    from ..oscar.tasks.classification import predict_checkpoint

    return predict_checkpoint(task_cls, checkpoint, find, texts, given["out"], options_of(options_cls, given),
                              _answers(given), top=given.get("top", 5))


def _answer(task_cls: Any, options_cls: type, checkpoint: Path, images: list[Path], given: dict) -> None:
    rows = _predict(task_cls, options_cls, checkpoint, detector(images, given), given["question"], given)
    for r in rows:
        typer.echo(f"{r['image']}\t{r['question']}\t{r['answer']}\t{r['score']:.4f}")


# -- VQA ------------------------------------------------------------------------------------------
@vqa_app.command("train")
@takes(*TRAIN_FILES, "txt_data_dir", "label_file", "label2ans", "data_label_type", "use_vg", "use_vg_dev",
       *fields_of(VQAOptions), defaults=VQAOptions, eval_split="val")
def vqa_train(data_dir: Path = typer.Argument(..., help="The VQA data folder (questions *_qla_mrcnn.json, features "
                                              "*.pt, answer pickles)."), given: Any = None) -> None:
    """Fine-tune Oscar+ for VQA (soft-score BCE) into OUT/checkpoint-N (original layout + answers.json)."""
    from ..oscar.tasks import vqa

    answers = _vocab(vqa.VQATask, given, data_dir)
    files = dict(label_type=given["data_label_type"], txt_data_dir=given["txt_data_dir"], use_vg_dev=given["use_vg_dev"])
    tq, tf = vqa.split_files(data_dir, given["train_split"], use_vg=given["use_vg"], **files)
    eq = ef = None
    if eval_split(given["eval_split"]):
        eq, ef = vqa.split_files(data_dir, given["eval_split"], **files)
    features = given["features"]
    _train(vqa.train, VQAOptions, given, train_file=tq, train_features=features or tf, vocab=answers, out_dir=given["out"],
           eval_file=eq, eval_features=features or ef)


@vqa_app.command("eval")
@takes("out", "split", "txt_data_dir", "data_label_type", "use_vg_dev", "label_file", "label2ans", "features",
       *LENGTHS, *RUN, defaults=VQAOptions, restored=LENGTHS, split="val")
def vqa_eval(
    checkpoint: Path = typer.Argument(..., help="Fine-tuned checkpoint (folder, run folder or best.zip)."),
    data_dir: Path = typer.Argument(..., help="The VQA data folder."),
    given: Any = None,
) -> None:
    """VQA score (soft score of the arg-max answer; test splits: results only) into OUT/metrics.json and
    OUT/{split}_results.json ([{question_id, answer}], the evaluation server's format)."""
    from ..oscar.tasks import vqa

    qfile, ffile = vqa.split_files(data_dir, given["split"], given["data_label_type"], given["txt_data_dir"],
                                   use_vg_dev=given["use_vg_dev"])
    _evaluate(vqa.VQATask, VQAOptions, checkpoint, qfile, given["features"] or ffile, given, data_dir)


@vqa_app.command("predict")
@takes("question", "out", "label_file", "label2ans", "top", *LENGTHS, *DETECTOR, *RUN, defaults=VQAOptions,
       restored=LENGTHS)
def vqa_predict(
    checkpoint: Path = typer.Argument(..., help="Fine-tuned checkpoint."),
    images: list[Path] = typer.Argument(..., help="Images (files, folders, lists: as vinvl extract takes)."),
    given: Any = None,
) -> None:
    """Answer questions about new images end to end (detector -> regions + tags -> answer): OUT/answers.json."""
    from ..oscar.tasks import vqa

    _answer(vqa.VQATask, VQAOptions, checkpoint, images, given)


# -- GQA ------------------------------------------------------------------------------------------
@gqa_app.command("train")
@takes(*TRAIN_FILES, "label_file", "label2ans", "train_data_type", "eval_data_type", *fields_of(GQAOptions),
       defaults=GQAOptions, eval_split="val", eval_data_type="bal")
def gqa_train(data_dir: Path = typer.Argument(..., help="The GQA data folder (gqa_*_qla_*.json, gqa_img_frcnn_feats.pt, "
                                              "answer pickles)."), given: Any = None) -> None:
    """Fine-tune Oscar+ for GQA (cross-entropy over the answers) into OUT/checkpoint-N (+ answers.json)."""
    from ..oscar.tasks import gqa

    answers = _vocab(gqa.GQATask, given, data_dir)
    features = given["features"] or data_dir / gqa.FEATURES_FILE
    split = eval_split(given["eval_split"])
    eval_file = gqa.split_file(data_dir, split, given["eval_data_type"]) if split else None
    _train(gqa.train, GQAOptions, given, train_file=gqa.split_file(data_dir, given["train_split"], given["train_data_type"]),
           train_features=features, vocab=answers, out_dir=given["out"], eval_file=eval_file)


@gqa_app.command("eval")
@takes("out", "split", "eval_data_type", "label_file", "label2ans", "features", *LENGTHS, *RUN, defaults=GQAOptions,
       restored=LENGTHS, split="testdev", eval_data_type="bal")
def gqa_eval(
    checkpoint: Path = typer.Argument(..., help="Fine-tuned checkpoint (folder, run folder or best.zip)."),
    data_dir: Path = typer.Argument(..., help="The GQA data folder."),
    given: Any = None,
) -> None:
    """Accuracy (submission: results only) into OUT/metrics.json and OUT/{split}_results.json
    ([{questionId, prediction}])."""
    from ..oscar.tasks import gqa

    qfile = gqa.split_file(data_dir, given["split"], given["eval_data_type"])
    _evaluate(gqa.GQATask, GQAOptions, checkpoint, qfile, given["features"] or data_dir / gqa.FEATURES_FILE, given,
              data_dir)


@gqa_app.command("predict")
@takes("question", "out", "label_file", "label2ans", "top", *LENGTHS, *DETECTOR, *RUN, defaults=GQAOptions,
       restored=LENGTHS)
def gqa_predict(
    checkpoint: Path = typer.Argument(..., help="Fine-tuned checkpoint."),
    images: list[Path] = typer.Argument(..., help="Images (files, folders, lists)."),
    given: Any = None,
) -> None:
    """Answer questions about new images end to end: OUT/answers.json."""
    from ..oscar.tasks import gqa

    _answer(gqa.GQATask, GQAOptions, checkpoint, images, given)


# -- NLVR2 ----------------------------------------------------------------------------------------
@nlvr2_app.command("train")
@takes(*TRAIN_FILES, "eval_data_type", *fields_of(NLVR2Options), defaults=NLVR2Options, eval_split="val",
       eval_data_type="all")
def nlvr2_train(data_dir: Path = typer.Argument(..., help="The NLVR2 data folder (nlvr2_*.json, "
                                                "nlvr2_img_frcnn_feats.pt)."), given: Any = None) -> None:
    """Fine-tune the pair model (OscarForMultipleChoice, 2 choices, MLP classifier; --no-pair: one sequence over both
    images) for NLVR2 into OUT/checkpoint-N."""
    from ..oscar.tasks import nlvr2

    features = given["features"] or data_dir / nlvr2.FEATURES_FILE
    split = eval_split(given["eval_split"])
    eval_file = nlvr2.split_file(data_dir, split, given["eval_data_type"]) if split else None
    _train(nlvr2.train, NLVR2Options, given, train_file=nlvr2.split_file(data_dir, given["train_split"]),
           train_features=features, out_dir=given["out"], eval_file=eval_file)


@nlvr2_app.command("eval")
@takes("out", "split", "eval_data_type", "use_label_seq", "use_pair", "features", *LENGTHS, *RUN, defaults=NLVR2Options,
       restored=(*LENGTHS, "use_label_seq", "use_pair"), split="test1", eval_data_type="all")
def nlvr2_eval(
    checkpoint: Path = typer.Argument(..., help="Fine-tuned checkpoint (folder, run folder or best.zip)."),
    data_dir: Path = typer.Argument(..., help="The NLVR2 data folder."),
    given: Any = None,
) -> None:
    """Accuracy into OUT/metrics.json and each item's prediction into OUT/{split}_results.json."""
    from ..oscar.tasks import nlvr2

    path = nlvr2.split_file(data_dir, given["split"], given["eval_data_type"])
    _evaluate(nlvr2.NLVR2Task, NLVR2Options, checkpoint, path, given["features"] or data_dir / nlvr2.FEATURES_FILE,
              given, data_dir)


@nlvr2_app.command("predict")
@takes("sentence", "out", "use_label_seq", "use_pair", *LENGTHS, *DETECTOR, *RUN, defaults=NLVR2Options,
       restored=(*LENGTHS, "use_label_seq", "use_pair"))
def nlvr2_predict(
    checkpoint: Path = typer.Argument(..., help="Fine-tuned checkpoint."),
    left: Path = typer.Argument(..., help="Left image."),
    right: Path = typer.Argument(..., help="Right image."),
    given: Any = None,
) -> None:
    """Is each sentence true of the image pair? End to end: OUT/predictions.json."""
    from ..oscar.tasks import nlvr2

    def pair(device: Any) -> tuple[list[str], Any]:
        """The pair's keys, left then right (each image must have been read)."""
        from ..regions import image_keys

        keys, store = detect([left, right], given, device)
        key_of = image_keys([left, right])
        for path in (left, right):
            if key_of[str(path)] not in keys:
                raise VinvlError(f"{path}: the detector could not read this image")
        return [key_of[str(left)], key_of[str(right)]], store

    rows = _predict(nlvr2.NLVR2Task, NLVR2Options, checkpoint, pair, given["sentence"], given)
    for r in rows:
        typer.echo(f"{r['sentence']}\t{r['prediction']}\t{r['prob_true']:.4f}")
