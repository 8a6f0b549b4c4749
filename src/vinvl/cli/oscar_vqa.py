"""``vinvl oscar vqa|gqa|nlvr2 train|eval|predict``: the classification fine-tunings (arguments only; the work is
in :mod:`vinvl.oscar.tasks.vqa`, :mod:`vinvl.oscar.tasks.gqa`, :mod:`vinvl.oscar.tasks.nlvr2`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import typer

from ..atomic import atomic_write_json
from ..errors import VinvlError
from ..oscar.options import GQAOptions, NLVR2Options, VQAOptions
from .oscar_options import fields_of, options_of, takes

vqa_app = typer.Typer(help="VQA 2.0 (run_vqa.py): train, evaluate, answer questions about images.", no_args_is_help=True)
gqa_app = typer.Typer(help="GQA (run_gqa.py): train, evaluate, answer questions about images.", no_args_is_help=True)
nlvr2_app = typer.Typer(help="NLVR2 (run_nlvr.py --use_pair): train, evaluate, judge sentences about image pairs.",
                        no_args_is_help=True)

TRAIN = ("out", "init", "config", "vocab", "features", "train_split", "eval_split", "resume")
LENGTHS = ("max_seq_length", "max_img_seq_length")
DETECTOR = ("detector", "detector_weights", "labelmap", "regions_dir", "boxes")
RUN = ("eval_batch_size", "device", "precision")


# -- shared steps -----------------------------------------------------------------------------------------
def detect(images: list, given: dict, device: Any) -> tuple[list[str], Any]:
    """Images -> the detector's regions and tags in OUT/regions (or --regions-dir): keys in input order, their store."""
    from ..regions import regions_for_images

    work = given.get("regions_dir") or Path(given["out"]) / "regions"
    keys, store = regions_for_images(images, work, model=given.get("detector"), weights=given.get("detector_weights"),
                                     labelmap=given.get("labelmap"), device=str(device), boxes=given.get("boxes"))
    if not keys:
        raise VinvlError(f"no image could be read ({Path(work) / 'errors.tsv'} says why)")
    return keys, store


def _eval_split(value: Optional[str]) -> Optional[str]:
    return value if value not in (None, "none") else None


def _vocab(checkpoint: Optional[Path], data_dir: Optional[Path], given: dict, default_label: str, default_l2a: str) -> Any:
    """The answer vocabulary: the given pickles, else the checkpoint's answers.json, else DATA_DIR's pickles."""
    from ..oscar.data.qa import ANSWERS_FILE, AnswerVocab

    label_file, label2ans = given.get("label_file"), given.get("label2ans")
    if label_file is None and checkpoint is not None and (checkpoint / ANSWERS_FILE).is_file():
        return AnswerVocab.from_checkpoint(checkpoint)
    if label_file is None and data_dir is not None:
        for d in (data_dir, data_dir / "cache"):
            if (d / default_label).is_file():
                label_file = d / default_label
                if label2ans is None and (d / default_l2a).is_file():
                    label2ans = d / default_l2a
                break
    if label_file is None:
        where = f"{checkpoint} has no answers.json; " if checkpoint is not None else ""
        raise VinvlError(f"no answer vocabulary: {where}give --label-file ({default_label})")
    return AnswerVocab.from_files(label_file, label2ans)


def _prepare(options_cls: type, checkpoint: Path, given: dict) -> tuple[Path, Any, Any]:
    """(checkpoint folder, tokenizer, options) of a fine-tuned checkpoint, each restored option given, else the
    value the checkpoint was trained with (vinvl's training_args.json or the original's training_args.bin), else
    the task's: everything but the weights, so the data can be checked before they load."""
    from ..oscar.checkpoint import require_checkpoint, training_settings
    from ..oscar.tensorize import load_tokenizer

    folder = require_checkpoint(checkpoint)
    tok = load_tokenizer(folder)
    saved = training_settings(folder)
    opts = options_of(options_cls, given)
    for name in ("max_seq_length", "max_img_seq_length", "use_label_seq"):
        if hasattr(opts, name):
            trained = saved.typed(name, getattr(opts, name))  # a malformed record is an error even when overridden
            setattr(opts, name, trained if given.get(name) is None else given[name])
    return folder, tok, opts


def _model(cls: Any, folder: Path, opts: Any, device: Any) -> Any:
    """The fine-tuned model on ``device``; a clear error when the text is longer than its position table."""
    from ..oscar.tasks.classification import check_lengths

    model = cls.from_original(folder).to(device)
    check_lengths(model, opts.max_seq_length)
    return model


def _write_eval(out: Path, name: str, metrics: dict, results: list, checkpoint: Path, data: Path) -> None:
    metrics = {**metrics, "split": name, "checkpoint": str(checkpoint), "data": str(data)}
    atomic_write_json(Path(out) / f"{name}_results.json", results)
    atomic_write_json(Path(out) / "metrics.json", metrics, indent=1)
    typer.echo(json.dumps(metrics))


def _split_name(split: str) -> str:
    return Path(split).stem if split.endswith(".json") else split


def _evaluate(task: Any, cls: Any, options_cls: type, checkpoint: Path, load: Any, given: dict) -> None:
    """Load a split (``load(folder, tokenizer, options)`` -> (dataset, question file)), the model, score, write."""
    from ..oscar.training import autocast, resolve_device

    folder, tok, opts = _prepare(options_cls, checkpoint, given)
    ds, path = load(folder, tok, opts)
    dev = resolve_device(given["device"])
    model = _model(cls, folder, opts, dev)
    with autocast(dev, given["precision"]):
        metrics, results = task.evaluate(model, ds, given["eval_batch_size"])
    _write_eval(given["out"], _split_name(given["split"]), metrics, results, checkpoint, path)


def _train(run: Any, options_cls: type, given: dict, **files: Any) -> None:
    from ..oscar.checkpoint import config_file
    from ..oscar.tasks.base import task_tokenizer

    opts = options_of(options_cls, given).check()
    last = run(**files, options=opts, tokenizer=task_tokenizer(given["vocab"], given["init"]), init=given["init"],
               model_config=config_file(given["config"]), resume=given["resume"])
    typer.echo(str(last))


def _predict_qa(task: Any, options_cls: type, checkpoint: Path, images: list[Path], given: dict) -> None:
    from ..oscar import OscarForSequenceClassification
    from ..oscar.tasks.classification import answer_questions
    from ..oscar.training import autocast, resolve_device

    folder, tok, opts = _prepare(options_cls, checkpoint, given)
    answers = _vocab(folder, None, given, task.LABEL_FILE, task.LABEL2ANS_FILE)
    dev = resolve_device(given["device"])
    model = _model(OscarForSequenceClassification, folder, opts, dev)
    keys, store = detect(images, given, dev)
    with autocast(dev, given["precision"]):
        rows = answer_questions(model, tok, answers, store, keys, given["question"], opts.max_seq_length,
                                opts.max_img_seq_length, top_k=given["top"], softmax=task.SOFTMAX,
                                batch_size=given["eval_batch_size"])
    atomic_write_json(Path(given["out"]) / "answers.json", rows, indent=1)
    for r in rows:
        typer.echo(f"{r['image']}\t{r['question']}\t{r['answer']}\t{r['score']:.4f}")


# -- VQA ------------------------------------------------------------------------------------------
@vqa_app.command("train")
@takes(*TRAIN, "txt_data_dir", "label_file", "label2ans", "data_label_type", *fields_of(VQAOptions),
       defaults=VQAOptions, eval_split="val")
def vqa_train(data_dir: Path = typer.Argument(..., help="The VQA data folder (questions *_qla_mrcnn.json, features "
                                              "*.pt, answer pickles)."), given: Any = None) -> None:
    """Fine-tune Oscar+ for VQA (soft-score BCE) into OUT/checkpoint-N (original layout + answers.json)."""
    from ..oscar.tasks import vqa

    answers = _vocab(None, data_dir, given, vqa.LABEL_FILE, vqa.LABEL2ANS_FILE)
    tq, tf = vqa.split_files(data_dir, given["train_split"], given["data_label_type"], given["txt_data_dir"])
    eq = ef = None
    if _eval_split(given["eval_split"]):
        eq, ef = vqa.split_files(data_dir, given["eval_split"], given["data_label_type"], given["txt_data_dir"])
    features = given["features"]
    _train(vqa.train, VQAOptions, given, train_file=tq, train_features=features or tf, vocab=answers, out_dir=given["out"],
           eval_file=eq, eval_features=features or ef)


@vqa_app.command("eval")
@takes("out", "split", "txt_data_dir", "data_label_type", "label_file", "label2ans", "features", *LENGTHS, *RUN,
       defaults=VQAOptions, restored=LENGTHS, split="val")
def vqa_eval(
    checkpoint: Path = typer.Argument(..., help="Fine-tuned checkpoint (folder, run folder or best.zip)."),
    data_dir: Path = typer.Argument(..., help="The VQA data folder."),
    given: Any = None,
) -> None:
    """VQA score (soft score of the arg-max answer; test splits: results only) into OUT/metrics.json and
    OUT/{split}_results.json ([{question_id, answer}], the evaluation server's format)."""
    from ..oscar import OscarForSequenceClassification
    from ..oscar.tasks import vqa

    def load(folder: Path, tok: Any, opts: Any) -> Any:
        answers = _vocab(folder, data_dir, given, vqa.LABEL_FILE, vqa.LABEL2ANS_FILE)
        qfile, ffile = vqa.split_files(data_dir, given["split"], given["data_label_type"], given["txt_data_dir"])
        return vqa.load_split(qfile, given["features"] or ffile, answers, tok, opts), qfile

    _evaluate(vqa, OscarForSequenceClassification, VQAOptions, checkpoint, load, given)


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

    _predict_qa(vqa, VQAOptions, checkpoint, images, given)


# -- GQA ------------------------------------------------------------------------------------------
@gqa_app.command("train")
@takes(*TRAIN, "label_file", "label2ans", "train_data_type", "eval_data_type", *fields_of(GQAOptions),
       defaults=GQAOptions, eval_split="val", eval_data_type="bal")
def gqa_train(data_dir: Path = typer.Argument(..., help="The GQA data folder (gqa_*_qla_*.json, gqa_img_frcnn_feats.pt, "
                                              "answer pickles)."), given: Any = None) -> None:
    """Fine-tune Oscar+ for GQA (cross-entropy over the answers) into OUT/checkpoint-N (+ answers.json)."""
    from ..oscar.tasks import gqa

    answers = _vocab(None, data_dir, given, gqa.LABEL_FILE, gqa.LABEL2ANS_FILE)
    features = given["features"] or data_dir / gqa.FEATURES_FILE
    eval_split = _eval_split(given["eval_split"])
    eval_file = gqa.split_file(data_dir, eval_split, given["eval_data_type"]) if eval_split else None
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
    from ..oscar import OscarForSequenceClassification
    from ..oscar.tasks import gqa

    def load(folder: Path, tok: Any, opts: Any) -> Any:
        answers = _vocab(folder, data_dir, given, gqa.LABEL_FILE, gqa.LABEL2ANS_FILE)
        qfile = gqa.split_file(data_dir, given["split"], given["eval_data_type"])
        return gqa.load_split(qfile, given["features"] or data_dir / gqa.FEATURES_FILE, answers, tok, opts), qfile

    _evaluate(gqa, OscarForSequenceClassification, GQAOptions, checkpoint, load, given)


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

    _predict_qa(gqa, GQAOptions, checkpoint, images, given)


# -- NLVR2 ----------------------------------------------------------------------------------------
@nlvr2_app.command("train")
@takes(*TRAIN, "eval_data_type", *fields_of(NLVR2Options), defaults=NLVR2Options, eval_split="val", eval_data_type="all")
def nlvr2_train(data_dir: Path = typer.Argument(..., help="The NLVR2 data folder (nlvr2_*.json, "
                                                "nlvr2_img_frcnn_feats.pt)."), given: Any = None) -> None:
    """Fine-tune the pair model (OscarForMultipleChoice, 2 choices, MLP classifier) for NLVR2 into OUT/checkpoint-N."""
    from ..oscar.tasks import nlvr2

    features = given["features"] or data_dir / nlvr2.FEATURES_FILE
    eval_split = _eval_split(given["eval_split"])
    eval_file = nlvr2.split_file(data_dir, eval_split, given["eval_data_type"]) if eval_split else None
    _train(nlvr2.train, NLVR2Options, given, train_file=nlvr2.split_file(data_dir, given["train_split"]),
           train_features=features, out_dir=given["out"], eval_file=eval_file)


@nlvr2_app.command("eval")
@takes("out", "split", "eval_data_type", "use_label_seq", "features", *LENGTHS, *RUN, defaults=NLVR2Options,
       restored=(*LENGTHS, "use_label_seq"), split="test1", eval_data_type="all")
def nlvr2_eval(
    checkpoint: Path = typer.Argument(..., help="Fine-tuned checkpoint (folder, run folder or best.zip)."),
    data_dir: Path = typer.Argument(..., help="The NLVR2 data folder."),
    given: Any = None,
) -> None:
    """Accuracy into OUT/metrics.json and each item's prediction into OUT/{split}_results.json."""
    from ..oscar import OscarForMultipleChoice
    from ..oscar.tasks import nlvr2

    def load(folder: Path, tok: Any, opts: Any) -> Any:
        path = nlvr2.split_file(data_dir, given["split"], given["eval_data_type"])
        return nlvr2.load_split(path, given["features"] or data_dir / nlvr2.FEATURES_FILE, tok, opts), path

    _evaluate(nlvr2, OscarForMultipleChoice, NLVR2Options, checkpoint, load, given)


@nlvr2_app.command("predict")
@takes("sentence", "out", "use_label_seq", *LENGTHS, *DETECTOR, *RUN, defaults=NLVR2Options,
       restored=(*LENGTHS, "use_label_seq"))
def nlvr2_predict(
    checkpoint: Path = typer.Argument(..., help="Fine-tuned checkpoint."),
    left: Path = typer.Argument(..., help="Left image."),
    right: Path = typer.Argument(..., help="Right image."),
    given: Any = None,
) -> None:
    """Is each sentence true of the image pair? End to end: OUT/predictions.json."""
    from ..oscar import OscarForMultipleChoice
    from ..oscar.tasks import nlvr2
    from ..oscar.training import autocast, resolve_device
    from ..regions import image_keys

    folder, tok, opts = _prepare(NLVR2Options, checkpoint, given)
    dev = resolve_device(given["device"])
    model = _model(OscarForMultipleChoice, folder, opts, dev)
    keys, store = detect([left, right], given, dev)
    key_of = image_keys([left, right])
    kl, kr = key_of[str(left)], key_of[str(right)]
    for path, k in ((left, kl), (right, kr)):
        if k not in keys:
            raise VinvlError(f"{path}: the detector could not read this image")
    with autocast(dev, given["precision"]):
        rows = nlvr2.judge(model, tok, store, [(kl, kr)], given["sentence"], opts, batch_size=given["eval_batch_size"])
    atomic_write_json(Path(given["out"]) / "predictions.json", rows, indent=1)
    for r in rows:
        typer.echo(f"{r['sentence']}\t{r['prediction']}\t{r['prob_true']:.4f}")
