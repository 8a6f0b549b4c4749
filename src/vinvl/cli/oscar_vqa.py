"""``vinvl oscar vqa|gqa|nlvr2 train|eval|predict``: the classification fine-tunings (arguments only;
the work is in :mod:`vinvl.oscar.vqa`, :mod:`vinvl.oscar.gqa`, :mod:`vinvl.oscar.nlvr2`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import typer

vqa_app = typer.Typer(help="VQA 2.0 (run_vqa.py): train, evaluate, answer questions about images.", no_args_is_help=True)
gqa_app = typer.Typer(help="GQA (run_gqa.py): train, evaluate, answer questions about images.", no_args_is_help=True)
nlvr2_app = typer.Typer(help="NLVR2 (run_nlvr.py --use_pair): train, evaluate, judge sentences about image pairs.",
                        no_args_is_help=True)

# Options every task shares; None keeps the task's model-zoo default.
OUT = typer.Option(..., "-o", "--out", help="Output folder.")
INIT = typer.Option(None, "--init", help="Checkpoint to start from (folder, run folder or .zip; e.g. vqa_base_pretrained).")
CONFIG = typer.Option(None, "--config", help="config.json of a fresh model (without --init).")
VOCAB = typer.Option(None, "--vocab", help="vocab.txt (default: --init's).")
FEATURES = typer.Option(None, "--features", help="Regions of every split: a features folder or a .pt feature dict "
                        "(default: the split's *_img_frcnn_feats.pt in DATA_DIR).")
MAX_SEQ = typer.Option(None, "--max-seq-length")
MAX_IMG = typer.Option(None, "--max-img-seq-length")
BATCH = typer.Option(None, "--batch-size", help="Training examples per step per process (--per_gpu_train_batch_size).")
EVAL_BATCH = typer.Option(None, "--eval-batch-size")
ACCUM = typer.Option(None, "--gradient-accumulation-steps")
LR = typer.Option(None, "--learning-rate")
WD = typer.Option(None, "--weight-decay")
WARMUP = typer.Option(None, "--warmup-steps")
SCHED = typer.Option(None, "--scheduler", help="linear or constant after warm-up.")
EPOCHS = typer.Option(None, "--num-train-epochs")
MAX_STEPS = typer.Option(None, "--max-steps", help="> 0 overrides --num-train-epochs.")
DROP = typer.Option(None, "--drop-out")
CLS = typer.Option(None, "--classifier", help="linear or mlp.")
SCALE = typer.Option(None, "--cls-hidden-scale")
LOSS = typer.Option(None, "--loss-type", help="bce (VQA), xe (GQA, NLVR2), kl.")
SEED = typer.Option(None, "--seed")
SAVE = typer.Option(None, "--save-steps", help="Default: once per epoch.")
LOG = typer.Option(None, "--log-steps")
RESUME = typer.Option(False, "--resume", help="Continue from OUT's newest checkpoint-N.")
DEVICE = typer.Option("cpu", "--device", help="cpu, cuda, cuda:1 ...")
DETECTOR = typer.Option(None, "--detector", help="Registry detector name (default: the released VG model if cached, "
                        "else the shipped demo model).")
DET_WEIGHTS = typer.Option(None, "--detector-weights", help="Detector weights file (X152-C4 preset).")
LABELMAP = typer.Option(None, "--labelmap", help="The detector's label map.")
REGIONS_DIR = typer.Option(None, "--regions-dir", help="Where the detector's outputs go (default OUT/regions; reused "
                           "when complete).")


def _config(defaults: Any, **given: Any) -> Any:
    """The task defaults with every option the user gave."""
    for k, v in given.items():
        if v is not None:
            setattr(defaults, k, v)
    return defaults


def _model_config(path: Optional[Path]) -> Any:
    from ..oscar.checkpoint import config_file

    return config_file(path)


def _checkpoint(checkpoint: Path) -> Path:
    """The fine-tuned checkpoint's folder (or zip), checked before anything else is read."""
    from ..oscar.checkpoint import require_checkpoint

    return require_checkpoint(checkpoint)


def _lengths(checkpoint: Path, cfg: Any, max_seq: Optional[int], max_img: Optional[int]) -> Any:
    """Sequence lengths: given, else those the checkpoint was trained with (vinvl's training_args.json or
    the original's training_args.bin), else the task's."""
    from ..oscar.checkpoint import training_settings

    saved = training_settings(checkpoint)
    trained = saved.typed("max_seq_length", cfg.max_seq_length), saved.typed("max_img_seq_length", cfg.max_img_seq_length)
    cfg.max_seq_length, cfg.max_img_seq_length = max_seq or trained[0], max_img or trained[1]
    return cfg


def _vocab(checkpoint: Optional[Path], data_dir: Optional[Path], label_file: Optional[Path],
           label2ans: Optional[Path], default_label: str, default_l2a: str) -> Any:
    """The answer vocabulary: the given pickles, else the checkpoint's answers.json, else DATA_DIR's pickles."""
    from ..errors import VinvlError
    from ..oscar.classify import AnswerVocab

    if label_file is None and checkpoint is not None:
        folder = _checkpoint(checkpoint)
        if (folder / "answers.json").is_file():
            return AnswerVocab.from_checkpoint(folder)
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


def _prepare(task: Any, checkpoint: Path, max_seq: Optional[int], max_img: Optional[int]) -> tuple[Path, Any, Any]:
    """(checkpoint folder, tokenizer, task config) of a fine-tuned checkpoint, the sequence lengths as
    :func:`_lengths` picks them: everything but the weights, so the data can be checked before they load."""
    from ..oscar.inputs import load_tokenizer

    folder = _checkpoint(checkpoint)
    return folder, load_tokenizer(folder), _lengths(folder, task.default_config(), max_seq, max_img)


def _model(cls: Any, folder: Path, cfg: Any, device: str) -> Any:
    """The fine-tuned model on ``device``; a clear error when the text is longer than its position table."""
    from ..errors import VinvlError

    model = cls.from_original(folder).to(device)
    if cfg.max_seq_length > model.config.max_position_embeddings:
        raise VinvlError(f"--max-seq-length {cfg.max_seq_length} exceeds the model's "
                         f"{model.config.max_position_embeddings} positions")
    return model


def _write_eval(out: Path, name: str, metrics: dict, results: list, checkpoint: Path, data: Path) -> None:
    from ..oscar.classify import write_json

    metrics = {**metrics, "split": name, "checkpoint": str(checkpoint), "data": str(data)}
    write_json(out / f"{name}_results.json", results)
    write_json(out / "metrics.json", metrics, indent=1)
    typer.echo(json.dumps(metrics))


def _split_name(split: str) -> str:
    return Path(split).stem if split.endswith(".json") else split


# -- VQA ------------------------------------------------------------------------------------------
@vqa_app.command("train")
def vqa_train(
    data_dir: Path = typer.Argument(..., help="The VQA data folder (questions *_qla_mrcnn.json, features *.pt, answer pickles)."),
    out: Path = OUT, init: Optional[Path] = INIT, config: Optional[Path] = CONFIG, vocab: Optional[Path] = VOCAB,
    txt_data_dir: Optional[Path] = typer.Option(None, "--txt-data-dir", help="Where the train/val questions are (default DATA_DIR)."),
    label_file: Optional[Path] = typer.Option(None, "--label-file", help="trainval_ans2label.pkl (default: DATA_DIR's or DATA_DIR/cache's)."),
    label2ans: Optional[Path] = typer.Option(None, "--label2ans", help="trainval_label2ans.pkl."),
    train_split: str = typer.Option("train", "--train-split", help="train, train+val or a .json file."),
    eval_split: Optional[str] = typer.Option("val", "--eval-split", help="Scored at every save (val, a .json, or 'none')."),
    data_label_type: str = typer.Option("mask", "--data-label-type", help="mask (*_qla_mrcnn.json) or faster (*_qla.json)."),
    features: Optional[Path] = FEATURES,
    max_seq_length: Optional[int] = MAX_SEQ, max_img_seq_length: Optional[int] = MAX_IMG, batch_size: Optional[int] = BATCH,
    eval_batch_size: Optional[int] = EVAL_BATCH, gradient_accumulation_steps: Optional[int] = ACCUM,
    learning_rate: Optional[float] = LR, weight_decay: Optional[float] = WD, warmup_steps: Optional[int] = WARMUP,
    scheduler: Optional[str] = SCHED, num_train_epochs: Optional[float] = EPOCHS, max_steps: Optional[int] = MAX_STEPS,
    drop_out: Optional[float] = DROP, classifier: Optional[str] = CLS, cls_hidden_scale: Optional[int] = SCALE,
    loss_type: Optional[str] = LOSS, seed: Optional[int] = SEED, save_steps: Optional[int] = SAVE,
    log_steps: Optional[int] = LOG, resume: bool = RESUME, device: str = DEVICE,
) -> None:
    """Fine-tune Oscar+ for VQA (soft-score BCE); checkpoint-N/ in the original layout + answers.json."""
    from ..oscar import vqa
    from ..oscar.classify import task_tokenizer

    cfg = _config(vqa.default_config(), **{k: v for k, v in locals().items() if k in vqa.TaskConfig.__dataclass_fields__})
    answers = _vocab(None, data_dir, label_file, label2ans, vqa.LABEL_FILE, vqa.LABEL2ANS_FILE)
    tq, tf = vqa.split_files(data_dir, train_split, data_label_type, txt_data_dir)
    eq = ef = None
    if eval_split and eval_split != "none":
        eq, ef = vqa.split_files(data_dir, eval_split, data_label_type, txt_data_dir)
    tok = task_tokenizer(vocab, init)
    last = vqa.train(tq, features or tf, answers, out, cfg, tok, init=init, config=_model_config(config), eval_file=eq,
                     eval_features=features or ef, resume=resume, device=device)
    typer.echo(str(last))


@vqa_app.command("eval")
def vqa_eval(
    checkpoint: Path = typer.Argument(..., help="Fine-tuned checkpoint (folder, run folder or best.zip)."),
    data_dir: Path = typer.Argument(..., help="The VQA data folder."),
    out: Path = OUT,
    split: str = typer.Option("val", "--split", help="val, test-dev2015, test2015 or a .json file (test splits: "
                              "results for the evaluation server, no score)."),
    txt_data_dir: Optional[Path] = typer.Option(None, "--txt-data-dir"),
    data_label_type: str = typer.Option("mask", "--data-label-type"),
    label_file: Optional[Path] = typer.Option(None, "--label-file", help="Default: the checkpoint's answers.json, else DATA_DIR's pickles."),
    label2ans: Optional[Path] = typer.Option(None, "--label2ans"),
    features: Optional[Path] = FEATURES, max_seq_length: Optional[int] = MAX_SEQ, max_img_seq_length: Optional[int] = MAX_IMG,
    batch_size: int = typer.Option(256, "--batch-size"), device: str = DEVICE,
) -> None:
    """VQA score (soft score of the arg-max answer) + {split}_results.json [{question_id, answer}] + metrics.json."""
    from ..oscar import OscarForSequenceClassification, vqa

    folder, tok, cfg = _prepare(vqa, checkpoint, max_seq_length, max_img_seq_length)
    answers = _vocab(folder, data_dir, label_file, label2ans, vqa.LABEL_FILE, vqa.LABEL2ANS_FILE)
    qfile, ffile = vqa.split_files(data_dir, split, data_label_type, txt_data_dir)
    ds = vqa.load_split(qfile, features or ffile, answers, tok, cfg)
    model = _model(OscarForSequenceClassification, folder, cfg, device)
    metrics, results = vqa.evaluate(model, ds, batch_size)
    _write_eval(out, _split_name(split), metrics, results, checkpoint, qfile)


@vqa_app.command("predict")
def vqa_predict(
    checkpoint: Path = typer.Argument(..., help="Fine-tuned checkpoint."),
    images: list[Path] = typer.Argument(..., help="Images (files, folders, lists: as vinvl extract takes)."),
    question: list[str] = typer.Option(..., "-q", "--question", help="A question (repeatable); each image gets each."),
    out: Path = OUT,
    label_file: Optional[Path] = typer.Option(None, "--label-file", help="Default: the checkpoint's answers.json."),
    label2ans: Optional[Path] = typer.Option(None, "--label2ans"),
    top_k: int = typer.Option(5, "--top-k"), max_seq_length: Optional[int] = MAX_SEQ,
    max_img_seq_length: Optional[int] = MAX_IMG, detector: Optional[str] = DETECTOR,
    detector_weights: Optional[Path] = DET_WEIGHTS, labelmap: Optional[Path] = LABELMAP,
    regions_dir: Optional[Path] = REGIONS_DIR, device: str = DEVICE,
) -> None:
    """Answer questions about new images end to end (detector -> regions + tags -> answer): OUT/answers.json."""
    from ..oscar import OscarForSequenceClassification, vqa

    _predict_qa(OscarForSequenceClassification, vqa, checkpoint, images, question, out, label_file, label2ans, top_k,
                max_seq_length, max_img_seq_length, detector, detector_weights, labelmap, regions_dir, device, softmax=False)


def _predict_qa(cls: Any, task: Any, checkpoint: Path, images: list[Path], questions: list[str], out: Path,
                label_file: Optional[Path], label2ans: Optional[Path], top_k: int, max_seq: Optional[int],
                max_img: Optional[int], detector: Optional[str], weights: Optional[Path], labelmap: Optional[Path],
                regions_dir: Optional[Path], device: str, softmax: bool) -> None:
    from ..oscar.classify import answer_questions, write_json

    folder, tok, cfg = _prepare(task, checkpoint, max_seq, max_img)
    answers = _vocab(folder, None, label_file, label2ans, task.LABEL_FILE, task.LABEL2ANS_FILE)
    model = _model(cls, folder, cfg, device)
    rows = answer_questions(model, tok, answers, images, questions, regions_dir or out / "regions", cfg.max_seq_length,
                            cfg.max_img_seq_length, top_k=top_k, softmax=softmax, detector=detector, weights=weights,
                            labelmap=labelmap, device=device)
    write_json(out / "answers.json", rows, indent=1)
    for r in rows:
        typer.echo(f"{r['image']}\t{r['question']}\t{r['answer']}\t{r['score']:.4f}")


# -- GQA ------------------------------------------------------------------------------------------
@gqa_app.command("train")
def gqa_train(
    data_dir: Path = typer.Argument(..., help="The GQA data folder (gqa_*_qla_*.json, gqa_img_frcnn_feats.pt, answer pickles)."),
    out: Path = OUT, init: Optional[Path] = INIT, config: Optional[Path] = CONFIG, vocab: Optional[Path] = VOCAB,
    label_file: Optional[Path] = typer.Option(None, "--label-file", help="trainval_testdev_all_ans2label.pkl (default: DATA_DIR's)."),
    label2ans: Optional[Path] = typer.Option(None, "--label2ans"),
    train_data_type: str = typer.Option("all", "--train-data-type", help="all or bal (the model zoo trains on all)."),
    eval_data_type: str = typer.Option("bal", "--eval-data-type", help="all or bal (the model zoo evaluates on bal)."),
    train_split: str = typer.Option("train", "--train-split", help="train or a .json file."),
    eval_split: Optional[str] = typer.Option("val", "--eval-split", help="val, testdev, a .json, or 'none'."),
    features: Optional[Path] = FEATURES,
    max_seq_length: Optional[int] = MAX_SEQ, max_img_seq_length: Optional[int] = MAX_IMG, batch_size: Optional[int] = BATCH,
    eval_batch_size: Optional[int] = EVAL_BATCH, gradient_accumulation_steps: Optional[int] = ACCUM,
    learning_rate: Optional[float] = LR, weight_decay: Optional[float] = WD, warmup_steps: Optional[int] = WARMUP,
    scheduler: Optional[str] = SCHED, num_train_epochs: Optional[float] = EPOCHS, max_steps: Optional[int] = MAX_STEPS,
    drop_out: Optional[float] = DROP, classifier: Optional[str] = CLS, cls_hidden_scale: Optional[int] = SCALE,
    loss_type: Optional[str] = LOSS, seed: Optional[int] = SEED, save_steps: Optional[int] = SAVE,
    log_steps: Optional[int] = LOG, resume: bool = RESUME, device: str = DEVICE,
) -> None:
    """Fine-tune Oscar+ for GQA (cross-entropy over the answers); checkpoint-N/ + answers.json."""
    from ..oscar import gqa
    from ..oscar.classify import task_tokenizer

    cfg = _config(gqa.default_config(), **{k: v for k, v in locals().items() if k in gqa.TaskConfig.__dataclass_fields__})
    answers = _vocab(None, data_dir, label_file, label2ans, gqa.LABEL_FILE, gqa.LABEL2ANS_FILE)
    feats = features or data_dir / gqa.FEATURES_FILE
    eval_file = gqa.split_file(data_dir, eval_split, eval_data_type) if eval_split and eval_split != "none" else None
    last = gqa.train(gqa.split_file(data_dir, train_split, train_data_type), feats, answers, out, cfg,
                     task_tokenizer(vocab, init), init=init, config=_model_config(config), eval_file=eval_file,
                     resume=resume, device=device)
    typer.echo(str(last))


@gqa_app.command("eval")
def gqa_eval(
    checkpoint: Path = typer.Argument(..., help="Fine-tuned checkpoint (folder, run folder or best.zip)."),
    data_dir: Path = typer.Argument(..., help="The GQA data folder."),
    out: Path = OUT,
    split: str = typer.Option("testdev", "--split", help="val, testdev, submission or a .json file (submission: "
                              "results for the evaluation server, no score)."),
    data_type: str = typer.Option("bal", "--data-type", help="all or bal (--eval_data_type)."),
    label_file: Optional[Path] = typer.Option(None, "--label-file"), label2ans: Optional[Path] = typer.Option(None, "--label2ans"),
    features: Optional[Path] = FEATURES, max_seq_length: Optional[int] = MAX_SEQ, max_img_seq_length: Optional[int] = MAX_IMG,
    batch_size: int = typer.Option(256, "--batch-size"), device: str = DEVICE,
) -> None:
    """Accuracy + {split}_results.json [{questionId, prediction}] + metrics.json."""
    from ..oscar import OscarForSequenceClassification, gqa

    folder, tok, cfg = _prepare(gqa, checkpoint, max_seq_length, max_img_seq_length)
    answers = _vocab(folder, data_dir, label_file, label2ans, gqa.LABEL_FILE, gqa.LABEL2ANS_FILE)
    qfile = gqa.split_file(data_dir, split, data_type)
    ds = gqa.load_split(qfile, features or data_dir / gqa.FEATURES_FILE, answers, tok, cfg)
    model = _model(OscarForSequenceClassification, folder, cfg, device)
    metrics, results = gqa.evaluate(model, ds, batch_size)
    _write_eval(out, _split_name(split), metrics, results, checkpoint, qfile)


@gqa_app.command("predict")
def gqa_predict(
    checkpoint: Path = typer.Argument(..., help="Fine-tuned checkpoint."),
    images: list[Path] = typer.Argument(..., help="Images (files, folders, lists)."),
    question: list[str] = typer.Option(..., "-q", "--question", help="A question (repeatable)."),
    out: Path = OUT,
    label_file: Optional[Path] = typer.Option(None, "--label-file"), label2ans: Optional[Path] = typer.Option(None, "--label2ans"),
    top_k: int = typer.Option(5, "--top-k"), max_seq_length: Optional[int] = MAX_SEQ,
    max_img_seq_length: Optional[int] = MAX_IMG, detector: Optional[str] = DETECTOR,
    detector_weights: Optional[Path] = DET_WEIGHTS, labelmap: Optional[Path] = LABELMAP,
    regions_dir: Optional[Path] = REGIONS_DIR, device: str = DEVICE,
) -> None:
    """Answer questions about new images end to end: OUT/answers.json."""
    from ..oscar import OscarForSequenceClassification, gqa

    _predict_qa(OscarForSequenceClassification, gqa, checkpoint, images, question, out, label_file, label2ans, top_k,
                max_seq_length, max_img_seq_length, detector, detector_weights, labelmap, regions_dir, device, softmax=True)


# -- NLVR2 ----------------------------------------------------------------------------------------
@nlvr2_app.command("train")
def nlvr2_train(
    data_dir: Path = typer.Argument(..., help="The NLVR2 data folder (nlvr2_*.json, nlvr2_img_frcnn_feats.pt)."),
    out: Path = OUT, init: Optional[Path] = INIT, config: Optional[Path] = CONFIG, vocab: Optional[Path] = VOCAB,
    train_split: str = typer.Option("train", "--train-split", help="train or a .json file."),
    eval_split: Optional[str] = typer.Option("val", "--eval-split", help="val, test1, a .json, or 'none'."),
    eval_data_type: str = typer.Option("all", "--eval-data-type", help="all, bal or unbal."),
    use_label_seq: bool = typer.Option(False, "--use-label-seq", help="Add each image's tags (off in the model zoo)."),
    features: Optional[Path] = FEATURES,
    max_seq_length: Optional[int] = MAX_SEQ, max_img_seq_length: Optional[int] = MAX_IMG, batch_size: Optional[int] = BATCH,
    eval_batch_size: Optional[int] = EVAL_BATCH, gradient_accumulation_steps: Optional[int] = ACCUM,
    learning_rate: Optional[float] = LR, weight_decay: Optional[float] = WD, warmup_steps: Optional[int] = WARMUP,
    scheduler: Optional[str] = SCHED, num_train_epochs: Optional[float] = EPOCHS, max_steps: Optional[int] = MAX_STEPS,
    drop_out: Optional[float] = DROP, classifier: Optional[str] = CLS, cls_hidden_scale: Optional[int] = SCALE,
    loss_type: Optional[str] = LOSS, seed: Optional[int] = SEED, save_steps: Optional[int] = SAVE,
    log_steps: Optional[int] = LOG, resume: bool = RESUME, device: str = DEVICE,
) -> None:
    """Fine-tune the pair model (OscarForMultipleChoice, 2 choices, MLP classifier) for NLVR2."""
    from ..oscar import nlvr2
    from ..oscar.classify import task_tokenizer

    cfg = _config(nlvr2.default_config(), **{k: v for k, v in locals().items() if k in nlvr2.TaskConfig.__dataclass_fields__})
    feats = features or data_dir / nlvr2.FEATURES_FILE
    eval_file = nlvr2.split_file(data_dir, eval_split, eval_data_type) if eval_split and eval_split != "none" else None
    last = nlvr2.train(nlvr2.split_file(data_dir, train_split), feats, out, cfg, task_tokenizer(vocab, init), init=init,
                       config=_model_config(config), eval_file=eval_file, use_label_seq=use_label_seq, resume=resume,
                       device=device)
    typer.echo(str(last))


@nlvr2_app.command("eval")
def nlvr2_eval(
    checkpoint: Path = typer.Argument(..., help="Fine-tuned checkpoint (folder, run folder or best.zip)."),
    data_dir: Path = typer.Argument(..., help="The NLVR2 data folder."),
    out: Path = OUT,
    split: str = typer.Option("test1", "--split", help="val, test1 (test-P) or a .json file."),
    data_type: str = typer.Option("all", "--data-type", help="all, bal or unbal."),
    use_label_seq: bool = typer.Option(False, "--use-label-seq"),
    features: Optional[Path] = FEATURES, max_seq_length: Optional[int] = MAX_SEQ, max_img_seq_length: Optional[int] = MAX_IMG,
    batch_size: int = typer.Option(64, "--batch-size"), device: str = DEVICE,
) -> None:
    """Accuracy + {split}_results.json (each item's prediction) + metrics.json."""
    from ..oscar import OscarForMultipleChoice, nlvr2

    folder, tok, cfg = _prepare(nlvr2, checkpoint, max_seq_length, max_img_seq_length)
    path = nlvr2.split_file(data_dir, split, data_type)
    ds = nlvr2.load_split(path, features or data_dir / nlvr2.FEATURES_FILE, tok, cfg, use_label_seq)
    model = _model(OscarForMultipleChoice, folder, cfg, device)
    metrics, results = nlvr2.evaluate(model, ds, batch_size)
    _write_eval(out, _split_name(split), metrics, results, checkpoint, path)


@nlvr2_app.command("predict")
def nlvr2_predict(
    checkpoint: Path = typer.Argument(..., help="Fine-tuned checkpoint."),
    left: Path = typer.Argument(..., help="Left image."),
    right: Path = typer.Argument(..., help="Right image."),
    sentence: list[str] = typer.Option(..., "-s", "--sentence", help="A statement about the pair (repeatable)."),
    out: Path = OUT, use_label_seq: bool = typer.Option(False, "--use-label-seq"),
    max_seq_length: Optional[int] = MAX_SEQ, max_img_seq_length: Optional[int] = MAX_IMG,
    detector: Optional[str] = DETECTOR, detector_weights: Optional[Path] = DET_WEIGHTS, labelmap: Optional[Path] = LABELMAP,
    regions_dir: Optional[Path] = REGIONS_DIR, device: str = DEVICE,
) -> None:
    """Is each sentence true of the image pair? End to end: OUT/predictions.json."""
    from ..oscar import OscarForMultipleChoice, nlvr2
    from ..oscar.classify import write_json

    folder, tok, cfg = _prepare(nlvr2, checkpoint, max_seq_length, max_img_seq_length)
    model = _model(OscarForMultipleChoice, folder, cfg, device)
    rows = nlvr2.predict(model, tok, [(left, right)], sentence, regions_dir or out / "regions", cfg, use_label_seq,
                         detector=detector, weights=detector_weights, labelmap=labelmap, device=device)
    write_json(out / "predictions.json", rows, indent=1)
    for r in rows:
        typer.echo(f"{r['sentence']}\t{r['prediction']}\t{r['prob_true']:.4f}")
