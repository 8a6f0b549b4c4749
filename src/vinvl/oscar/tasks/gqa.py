"""GQA (the original's ``run_gqa.py``): split names, accuracy, evaluation and training.

Data: ``gqa_{all|bal}_qla_{train|val|testdev|submission}.json`` items ``{q, o, an, img_id, q_id}``
(the model zoo trains on ``all`` and evaluates on ``bal``), the answer vocabulary
``trainval_testdev_all_ans2label.pkl`` (``..._label2ans.pkl`` names them), regions from
``gqa_img_frcnn_feats.pt`` (one file for every split) or any region source. Model:
:class:`OscarForSequenceClassification`, softmax cross-entropy (``--loss_type xe``) on the first
answer; accuracy = arg-max equals it. Submission results: ``[{"questionId": str, "prediction": str}]``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Optional, Union

import torch
from torch import nn

from ...errors import VinvlError
from ..data.qa import AnswerVocab, QADataset, load_qa_split
from ..options import GQAOptions
from .base import predict_logits
from .classification import AnswerTask, QAFiles, fine_tune

PathLike = Union[str, os.PathLike]

SPLITS = ("train", "val", "testdev", "submission")
DATA_TYPES = ("all", "bal")
LABEL_FILE = "trainval_testdev_all_ans2label.pkl"
LABEL2ANS_FILE = "trainval_testdev_all_label2ans.pkl"
FEATURES_FILE = "gqa_img_frcnn_feats.pt"
SOFTMAX = True  # answers' probabilities: softmax (cross-entropy)


def split_file(data_dir: PathLike, split: str, data_type: str = "bal") -> Path:
    """A split's question file as ``run_gqa.py`` names it (the submission set is always ``all``);
    ``split`` may also be a .json path."""
    if split.endswith(".json"):
        return Path(split)
    if split not in SPLITS:
        raise VinvlError(f"GQA split {split!r}: expected one of {', '.join(SPLITS)} or a .json file")
    if data_type not in DATA_TYPES:
        raise VinvlError(f"GQA data type {data_type!r}: expected all or bal")
    return Path(data_dir) / f"gqa_{'all' if split == 'submission' else data_type}_qla_{split}.json"


def load_split(qa_file: PathLike, features: Any, vocab: AnswerVocab, tokenizer: Any, options: GQAOptions,
               test: Optional[bool] = None) -> QADataset:
    """A split's dataset with answer-index targets (see :func:`vinvl.oscar.data.qa.load_qa_split`)."""
    return load_qa_split(qa_file, features, vocab, tokenizer, options, GQATask.TARGETS, test)


def evaluate(model: torch.nn.Module, ds: QADataset, batch_size: int = 256) -> tuple[dict[str, Any], list[dict]]:
    """(metrics, results): accuracy (``score``) over the questions, and the submission list."""
    logits = predict_logits(model, ds, batch_size)
    pred = logits.argmax(1) if len(ds) else torch.zeros(0, dtype=torch.long)
    results = [{"questionId": str(ds.question_id(i)), "prediction": ds.vocab.answers[j]} for i, j in enumerate(pred.tolist())]
    metrics: dict[str, Any] = {"task": "gqa", "num_questions": len(ds)}
    if not ds.test and len(ds):
        gold = torch.stack([ds.targets(i) for i in range(len(ds))])
        metrics["score"] = metrics["accuracy"] = float((pred == gold).float().mean())
    return metrics, results


class GQATask(AnswerTask):
    """GQA fine-tuning: cross-entropy over the answers."""

    LABEL_FILE, LABEL2ANS_FILE, SOFTMAX, TARGETS = LABEL_FILE, LABEL2ANS_FILE, SOFTMAX, "index"
    options: GQAOptions

    def score(self, model: nn.Module, dataset: QADataset) -> tuple[dict[str, Any], list[dict]]:
        return evaluate(model, dataset, self.options.eval_batch_size)


def train(train_file: PathLike, train_features: Any, vocab: AnswerVocab, out_dir: PathLike, options: GQAOptions,
          tokenizer: Any, init: Optional[PathLike] = None, model_config: Any = None, eval_file: Optional[PathLike] = None,
          eval_features: Any = None, resume: bool = False, log: Optional[Callable[[str], None]] = None,
          callbacks: tuple = ()) -> Path:
    """Fine-tune for GQA; returns the last ``checkpoint-N``."""
    task = GQATask(options, tokenizer, vocab, init=init, model_config=model_config, log=log)
    return fine_tune(task, QAFiles(train_file, train_features, eval_file, eval_features), out_dir, resume, log, callbacks)
