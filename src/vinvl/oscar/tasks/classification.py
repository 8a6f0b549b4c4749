"""What the classification fine-tunings (VQA, GQA, NLVR2) share: the Trainer task (a classifier over the
pooled output, the original's config overrides, evaluation at each save, ``answers.json`` in each checkpoint)
and answering questions about images whose regions a :class:`~vinvl.oscar.data.regions.RegionSource` holds."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import torch
from torch import nn

from ...errors import VinvlError
from ..data.qa import AnswerVocab, QADataset
from ..modeling import OscarForSequenceClassification
from ..options import ClassificationOptions
from ..tensorize import ClassificationTensorizer
from ..training import Trainer
from .base import Task, accuracy, predict_logits

PathLike = Union[str, os.PathLike]


class ClassificationTask(Task):
    """Fine-tuning of a classifier (``model_class``) on ``examples``; ``score_fn(model, eval_set, batch_size)``
    gives the metrics (with ``score``) of ``eval_set`` at each save; ``vocab`` is saved into every checkpoint."""

    model_class: type = OscarForSequenceClassification

    def __init__(self, examples: Any, options: ClassificationOptions, tokenizer: Any, num_labels: int,
                 init: Optional[PathLike] = None, model_config: Any = None, eval_set: Any = None,
                 score_fn: Optional[Callable[..., dict]] = None, vocab: Optional[AnswerVocab] = None,
                 figures_fn: Optional[Callable[[Any, dict], dict]] = None, model_class: Optional[type] = None,
                 overrides: Optional[dict[str, Any]] = None, log: Optional[Callable[[str], None]] = None) -> None:
        super().__init__(options, tokenizer, init, model_config, log)
        if len(examples) == 0:
            raise VinvlError(f"{getattr(examples, 'source', 'the training split')}: no training examples")
        self.examples, self.num_labels, self.eval_set, self.score_fn = examples, num_labels, eval_set, score_fn
        self.vocab, self.figures_fn = vocab, figures_fn
        self.model_class = model_class or self.model_class
        self.extra_overrides = overrides or {}

    def train_set(self) -> Any:
        return self.examples

    def model_overrides(self) -> dict[str, Any]:
        o = self.options
        return {"num_labels": self.num_labels, "hidden_dropout_prob": o.drop_out, "loss_type": o.loss_type,
                "classifier": o.classifier, "cls_hidden_scale": o.cls_hidden_scale, **self.extra_overrides}

    def prepare_model(self, model: nn.Module) -> nn.Module:
        check_lengths(model, self.options.max_seq_length)
        return model

    def figures(self, out: Any, batch: dict) -> dict:
        if self.figures_fn is not None:
            return self.figures_fn(out, batch)
        return {"acc": accuracy(out.logits, batch["labels"])}

    def evaluate(self, model: nn.Module) -> Optional[dict[str, Any]]:
        if self.eval_set is None or self.score_fn is None:
            return None
        return self.score_fn(model, self.eval_set, self.options.eval_batch_size)

    def save_files(self, folder: Path) -> None:
        if self.vocab is not None:
            self.vocab.save(folder)


def check_lengths(model: nn.Module, max_seq_length: int) -> None:
    """A clear error when the text is longer than the model's position table."""
    if max_seq_length > model.config.max_position_embeddings:
        raise VinvlError(f"--max-seq-length {max_seq_length} exceeds the model's "
                         f"{model.config.max_position_embeddings} positions")


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


def answer_questions(model: nn.Module, tokenizer: Any, vocab: AnswerVocab, regions: Any, keys: Sequence[str],
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


def train_qa(load_split: Callable[..., QADataset], make_task: Callable[..., ClassificationTask], train_file: PathLike,
             train_features: Any, vocab: AnswerVocab, out_dir: PathLike, options: ClassificationOptions, tokenizer: Any,
             init: Optional[PathLike] = None, model_config: Any = None, eval_file: Optional[PathLike] = None,
             eval_features: Any = None, resume: bool = False, log: Optional[Callable[[str], None]] = None,
             callbacks: tuple = ()) -> Path:
    """A question-answering fine-tuning (VQA, GQA) from its split reader and task builder; returns the last ``checkpoint-N``."""
    options.check()
    train_set = load_split(train_file, train_features, vocab, tokenizer, options, test=False)
    eval_set = None
    if eval_file is not None:
        eval_set = load_split(eval_file, eval_features if eval_features is not None else train_set.regions, vocab,
                              tokenizer, options, test=False)
    t = make_task(train_set, vocab, options, tokenizer, init, model_config, eval_set, log)
    return Trainer(t, options, out_dir, log=log, callbacks=callbacks).train(resume=resume)
