"""GQA fine-tuning, evaluation and answering (the original's ``run_gqa.py``).

Data: ``gqa_{all|bal}_qla_{train|val|testdev|submission}.json`` items ``{q, o, an, img_id, q_id}``
(the model zoo trains on ``all`` and evaluates on ``bal``), the answer vocabulary
``trainval_testdev_all_ans2label.pkl`` (``..._label2ans.pkl`` names them), regions from
``gqa_img_frcnn_feats.pt`` (one file for every split) or a features folder. Model:
:class:`OscarForSequenceClassification`, softmax cross-entropy (``--loss_type xe``) on the first
answer; accuracy = arg-max equals it. Submission results: ``[{"questionId": str, "prediction": str}]``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Optional, Union

import torch

from ..errors import VinvlError
from .classify import AnswerVocab, QADataset, TaskConfig, load_qa_split, model_overrides, predict_logits
from .modeling import OscarConfig, OscarForSequenceClassification

PathLike = Union[str, os.PathLike]

SPLITS = ("train", "val", "testdev", "submission")
DATA_TYPES = ("all", "bal")
LABEL_FILE = "trainval_testdev_all_ans2label.pkl"
LABEL2ANS_FILE = "trainval_testdev_all_label2ans.pkl"
FEATURES_FILE = "gqa_img_frcnn_feats.pt"


def default_config() -> TaskConfig:
    """The model zoo's base command: seq 165, 45 regions, batch 48, lr 5e-5, 5 epochs, dropout 0.3,
    weight decay 0.05, no warm-up, cross-entropy, linear classifier, seed 88."""
    return TaskConfig(max_seq_length=165, max_img_seq_length=45, batch_size=48, learning_rate=5e-5,
                      num_train_epochs=5, drop_out=0.3, weight_decay=0.05, warmup_steps=0, loss_type="xe",
                      classifier="linear", cls_hidden_scale=2, seed=88)


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


def load_split(
    qa_file: PathLike, features: Any, vocab: AnswerVocab, tokenizer: Any, cfg: TaskConfig, test: Optional[bool] = None,
) -> QADataset:
    """A split's dataset with answer-index targets (see :func:`vinvl.oscar.classify.load_qa_split`)."""
    return load_qa_split(qa_file, features, vocab, tokenizer, cfg, "index", test)


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


def train(
    train_file: PathLike, train_features: Any, vocab: AnswerVocab, out_dir: PathLike, cfg: TaskConfig,
    tokenizer: Any, init: Optional[PathLike] = None, config: Optional[OscarConfig] = None,
    eval_file: Optional[PathLike] = None, eval_features: Any = None, resume: bool = False, device: str = "cpu",
    log: Optional[Callable[[str], None]] = None,
) -> Path:
    """Fine-tune for GQA (cross-entropy over the answers); returns the last ``checkpoint-N``."""
    from .classify import accuracy_figures, run_training

    train_set = load_split(train_file, train_features, vocab, tokenizer, cfg, test=False)
    evaluate_fn = None
    if eval_file is not None:
        eval_set = load_split(eval_file, eval_features if eval_features is not None else train_set.regions,
                              vocab, tokenizer, cfg, test=False)
        evaluate_fn = lambda m: evaluate(m, eval_set, cfg.eval_batch_size)[0]  # noqa: E731

    return run_training(
        OscarForSequenceClassification, train_set, cfg, out_dir, tokenizer, model_overrides(cfg, len(vocab)),
        accuracy_figures, init=init, config=config, evaluate=evaluate_fn, save_extra=vocab.save, resume=resume,
        device=device, log=log,
    )
