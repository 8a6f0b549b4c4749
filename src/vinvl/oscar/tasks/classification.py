"""What the classification fine-tunings (VQA, GQA, NLVR2) share: the task class (a classifier over the pooled
output, the original's config overrides, evaluation at each save, ``answers.json`` in each checkpoint), their
training, evaluation and prediction from a checkpoint, and answering questions about images whose regions a
:class:`~vinvl.oscar.data.regions.RegionSource` holds."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import torch
from torch import nn

from ...atomic import atomic_write_json
from ...errors import VinvlError
from ...training.runtime import as_device, autocast
from ..data.qa import AnswerVocab, QADataset, load_qa_split
from ..data.regions import Key, RegionSource
from ..loading import OscarCheckpoint, check_lengths
from ..modeling import OscarForSequenceClassification
from ..options import ClassificationOptions
from ..tensorize import ClassificationTensorizer
from ..training import Trainer
from .base import Task, accuracy, predict_logits

PathLike = Union[str, os.PathLike]
Detect = Callable[[torch.device], tuple[Sequence[Key], RegionSource]]  # device -> (image keys, their regions)

__all__ = ["AnswerFiles", "AnswerTask", "ClassificationTask", "Detect", "QAFiles", "answer_questions", "check_lengths",
           "check_region_width", "evaluate_checkpoint", "fine_tune", "predict_checkpoint", "top_answers"]


@dataclass
class QAFiles:
    """A fine-tuning's data: the training split and its regions (a path or an open region source), and optionally
    an evaluation split (its regions: the training split's unless given)."""

    train: PathLike
    features: Any
    eval: Optional[PathLike] = None
    eval_features: Any = None


@dataclass
class AnswerFiles:
    """Where the answer vocabulary is (:meth:`vinvl.oscar.data.qa.AnswerVocab.find`): the given pickles, else the
    checkpoint's ``answers.json``, else ``data_dir``'s pickles."""

    label_file: Optional[PathLike] = None
    label2ans: Optional[PathLike] = None
    data_dir: Optional[PathLike] = None


class ClassificationTask(Task):
    """Fine-tuning of a classifier (``model_class``) over the pooled output; subclasses give the number of labels,
    how a split is read (:meth:`load`) and scored (:meth:`score`), and what predicting means."""

    model_class: type = OscarForSequenceClassification
    options: ClassificationOptions
    PREDICTIONS_FILE = "predictions.json"  # what predict_checkpoint writes

    def __init__(self, options: ClassificationOptions, tokenizer: Any, init: Optional[PathLike] = None,
                 model_config: Any = None, log: Optional[Callable[[str], None]] = None) -> None:
        """The splits come later (:meth:`use`): a task evaluating or predicting from a checkpoint has none."""
        super().__init__(options, tokenizer, init, model_config, log)
        self.examples: Any = None
        self.eval_set: Any = None

    @classmethod
    def from_checkpoint(cls, ckpt: OscarCheckpoint, options: ClassificationOptions, answers: Optional[AnswerFiles] = None,
                        log: Optional[Callable[[str], None]] = None) -> "ClassificationTask":
        """The task of a fine-tuned checkpoint: ``options`` merged with its settings by the one rule, its tokenizer."""
        return cls(ckpt.options(options), ckpt.tokenizer(), log=log)

    @property
    def num_labels(self) -> int:
        """The classifier's outputs."""
        raise NotImplementedError

    def load(self, path: PathLike, features: Any, test: Optional[bool] = None) -> Any:
        """A split's dataset (``features``: a path or an open region source; ``test``: see the task's reader)."""
        raise NotImplementedError

    def score(self, model: nn.Module, dataset: Any) -> tuple[dict[str, Any], list[dict]]:
        """(metrics with ``score`` where the items have answers, each item's result) of ``model`` on ``dataset``."""
        raise NotImplementedError

    def use(self, train_set: Any, eval_set: Any = None) -> "ClassificationTask":
        """Train on ``train_set``; score ``eval_set`` (if any) at each save."""
        if len(train_set) == 0:
            raise VinvlError(f"{getattr(train_set, 'source', 'the training split')}: no training examples")
        self.examples, self.eval_set = train_set, eval_set
        return self

    def train_set(self) -> Any:
        if self.examples is None:
            raise VinvlError(f"{type(self).__name__}: no training split")
        return self.examples

    def model_overrides(self) -> dict[str, Any]:
        o = self.options
        return {"num_labels": self.num_labels, "hidden_dropout_prob": o.drop_out, "loss_type": o.loss_type,
                "classifier": o.classifier, "cls_hidden_scale": o.cls_hidden_scale}

    def region_dim(self) -> Optional[int]:
        regions = getattr(self.examples, "regions", None)
        return regions.dim if regions is not None else None

    def prepare_model(self, model: nn.Module) -> nn.Module:
        check_lengths(model, self.options.max_seq_length)
        return model

    def figures(self, out: Any, batch: dict) -> dict:
        return {"acc": accuracy(out.logits, batch["labels"])}

    def evaluate(self, model: nn.Module) -> Optional[dict[str, Any]]:
        if self.eval_set is None:
            return None
        return self.score(model, self.eval_set)[0]


class AnswerTask(ClassificationTask):
    """A question-answering fine-tuning (VQA, GQA): one logit per answer of ``vocab``, saved into every checkpoint."""

    LABEL_FILE = ""  # the answer pickles' names in a data folder
    LABEL2ANS_FILE = ""
    SOFTMAX = True  # the answers' probabilities: softmax, or (False) per-answer sigmoid
    TARGETS = "index"  # what an item's answers become: the first answer's index, or (soft) the soft scores
    PREDICTIONS_FILE = "answers.json"

    def __init__(self, options: ClassificationOptions, tokenizer: Any, vocab: AnswerVocab, init: Optional[PathLike] = None,
                 model_config: Any = None, top: int = 5, log: Optional[Callable[[str], None]] = None) -> None:
        """``top``: how many answers :meth:`predict` lists per question."""
        super().__init__(options, tokenizer, init, model_config, log)
        self.vocab, self.top = vocab, top

    @classmethod
    def from_checkpoint(cls, ckpt: OscarCheckpoint, options: ClassificationOptions, answers: Optional[AnswerFiles] = None,
                        log: Optional[Callable[[str], None]] = None) -> "ClassificationTask":
        a = answers or AnswerFiles()
        opts, tok = ckpt.options(options), ckpt.tokenizer()
        vocab = AnswerVocab.find(a.label_file, a.label2ans, ckpt.path, a.data_dir, cls.LABEL_FILE, cls.LABEL2ANS_FILE)
        return cls(opts, tok, vocab, log=log)

    @property
    def num_labels(self) -> int:
        return len(self.vocab)

    def load(self, path: PathLike, features: Any, test: Optional[bool] = None) -> QADataset:
        return load_qa_split(path, features, self.vocab, self.tokenizer, self.options, self.TARGETS, test)

    def save_files(self, folder: Path) -> None:
        self.vocab.save(folder)

    def predict(self, model: nn.Module, regions: RegionSource, keys: Sequence[Key], texts: Sequence[str]) -> list[dict]:
        """Every question ``texts`` about every image ``keys``: its best answers."""
        o = self.options
        return answer_questions(model, self.tokenizer, self.vocab, regions, keys, texts, o.max_seq_length,
                                o.max_img_seq_length, top_k=self.top, softmax=self.SOFTMAX, batch_size=o.eval_batch_size)


# -- training, evaluation and prediction from a checkpoint ------------------------------------------------------
def fine_tune(task: ClassificationTask, files: QAFiles, out_dir: PathLike, resume: bool = False,
              log: Optional[Callable[[str], None]] = None, callbacks: Sequence[Callable[[int], None]] = ()) -> Path:
    """Read ``files`` and train ``task`` through the Trainer; returns the last ``checkpoint-N``."""
    task.options.check()
    train_set = task.load(files.train, files.features, test=False)
    eval_set = None
    if files.eval is not None:
        features = files.eval_features if files.eval_features is not None else train_set.regions
        eval_set = task.load(files.eval, features, test=False)
    task.use(train_set, eval_set)
    return Trainer(task, task.options, out_dir, log=log, callbacks=callbacks).train(resume=resume)


def evaluate_checkpoint(task_cls: type[ClassificationTask], checkpoint: PathLike, split: PathLike, features: Any,
                        out_dir: PathLike, options: ClassificationOptions, answers: Optional[AnswerFiles] = None,
                        name: Optional[str] = None) -> dict[str, Any]:
    """Score a fine-tuned checkpoint on the split file ``split`` (lengths by the one rule; the data checked before
    the weights load): writes ``out_dir/{name}_results.json`` (``name``: the split's name, default the file's;
    a .json file's stem) and ``out_dir/metrics.json``, returns the metrics."""
    ckpt = OscarCheckpoint.open(checkpoint)
    task = task_cls.from_checkpoint(ckpt, options, answers)
    dataset = task.load(split, features)
    dev = as_device(task.options.device)
    model = ckpt.model(task.model_class, dev, task.options.max_seq_length)
    with autocast(dev, task.options.precision):
        metrics, results = task.score(model, dataset)
    name = name or str(split)
    name = Path(name).stem if name.endswith(".json") else name
    metrics = {**metrics, "split": name, "checkpoint": str(checkpoint), "data": str(split)}
    atomic_write_json(Path(out_dir) / f"{name}_results.json", results)
    atomic_write_json(Path(out_dir) / "metrics.json", metrics, indent=1)
    return metrics


def predict_checkpoint(task_cls: type[ClassificationTask], checkpoint: PathLike, detect: Detect, texts: Sequence[str],
                       out_dir: PathLike, options: ClassificationOptions, answers: Optional[AnswerFiles] = None,
                       top: int = 5) -> list[dict]:
    """What a fine-tuned checkpoint says of new images and ``texts``: the model loads first, then ``detect``
    (device -> image keys and their regions, e.g. through :func:`vinvl.regions.regions_for_images`) runs; the rows
    go to ``out_dir``/the task's ``PREDICTIONS_FILE`` and are returned."""
    ckpt = OscarCheckpoint.open(checkpoint)
    task = task_cls.from_checkpoint(ckpt, options, answers)
    if isinstance(task, AnswerTask):
        task.top = top
    dev = as_device(task.options.device)
    model = ckpt.model(task.model_class, dev, task.options.max_seq_length)
    keys, regions = detect(dev)
    with autocast(dev, task.options.precision):
        rows = task.predict(model, regions, keys, texts)
    atomic_write_json(Path(out_dir) / task.PREDICTIONS_FILE, rows, indent=1)
    return rows  # type: ignore[return-value]


# -- answering questions about images ---------------------------------------------------------------------------
def check_region_width(model: nn.Module, regions: Any, what: str) -> None:
    """A clear error when the regions' width is not the model's ``img_feature_dim``."""
    want = model.config.img_feature_dim
    if getattr(regions, "dim", want) != want:
        raise VinvlError(f"{what}: regions are {regions.dim}-d but the model takes {want}-d (img_feature_dim); "
                         "use the detector the model was trained on")


def top_answers(logits: torch.Tensor, vocab: AnswerVocab, k: int, softmax: bool) -> list[list[tuple[str, float]]]:
    """The ``k`` best answers of each row with their probability (softmax, or per-answer sigmoid for BCE models)."""
    probs = logits.softmax(-1) if softmax else logits.sigmoid()
    val, idx = probs.topk(min(k, probs.shape[-1]), dim=-1)
    return [[(vocab.answers[j], round(float(v), 6)) for v, j in zip(vr, ir)] for vr, ir in zip(val.tolist(), idx.tolist())]


def answer_questions(model: nn.Module, tokenizer: Any, vocab: AnswerVocab, regions: Any, keys: Sequence[Key],
                     questions: Sequence[str], max_seq_length: int, max_img_seq_length: int, top_k: int = 5,
                     softmax: bool = False, batch_size: int = 64) -> list[dict]:
    """Every question about every image ``keys`` of a region source (regions + tags -> answer)."""
    check_region_width(model, regions, "the regions")
    items = [{"q": q, "o": regions.tags(k), "img_id": k, "an": [], "q_id": n}
             for n, (k, q) in enumerate((k, q) for k in keys for q in questions)]
    ds = QADataset(items, regions, vocab, ClassificationTensorizer(tokenizer, max_seq_length, max_img_seq_length), test=True)
    tops = top_answers(predict_logits(model, ds, batch_size), vocab, top_k, softmax)
    return [{"image": it["img_id"], "question": it["q"], "tags": it["o"], "answer": t[0][0], "score": t[0][1],
             "top": [list(a) for a in t]} for it, t in zip(items, tops)]
