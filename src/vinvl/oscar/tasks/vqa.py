"""VQA 2.0 (the original's ``run_vqa.py``): split names, the VQA score, evaluation and training.

Data: ``{split}_qla_mrcnn.json`` (``--data_label_type mask``; ``{split}_qla.json`` otherwise) items
``{q, o, an, s, img_id, q_id}``, the answer vocabulary ``trainval_ans2label.pkl`` (3129 answers;
``trainval_label2ans.pkl`` names them), regions from ``{name}_img_frcnn_feats.pt`` or any region source.
Model: :class:`OscarForSequenceClassification` over the pooled output, loss ``bce`` =
``binary_cross_entropy_with_logits`` (mean) x the number of answers, against the soft scores. Score: the soft
score of the arg-max answer (``compute_score_with_logits``), averaged over the questions. Results:
``[{"question_id": int, "answer": str}]``, the evaluation server's format.

``run_vqa.py``'s other training options, with its semantics (:class:`~vinvl.oscar.options.VQAOptions`): the VG QA
files (``--use_vg``, ``--use_vg_dev``: :func:`split_files`), the loss switched to ``bce`` from an epoch
(``--adjust_loss``), the head's and embeddings' dropout set to 0.3 from epoch 3 (``--adjust_dp``) and no checkpoint
before an epoch (``--save_after_epoch``); its ``--hard_label`` is declared and never read, so it has no counterpart.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Optional, Union

import torch
from torch import nn

from ...errors import VinvlError
from ..data.qa import AnswerVocab, QADataset, load_qa_split
from ..metrics.qa import vqa_score
from ..options import VQAOptions
from ..task import StepContext
from .base import predict_logits
from .classification import AnswerTask, QAFiles, fine_tune

PathLike = Union[str, os.PathLike]

# split -> (question file stem, feature file stem), as run_vqa.py's _load_dataset and VQADataset name them
SPLITS = {
    "train": ("train2014", "train"),
    "val": ("val2014", "val"),
    "train+val": ("train+val2014", "train+val"),
    "test2015": ("test2015", "test2015"),
    "test-dev2015": ("test-dev2015", "test-dev2015"),
}
# run_vqa.py's VG QA files (--data_label_type mask): --use_vg's training questions (train2014_qla_mrcnn.json's
# place), --use_vg_dev's validation questions (val2014_qla_mrcnn.json's place) and its features of every split
VG_TRAIN, VG_VAL, VG_FEATURES = "train2014_vg_qla_mrcnn.json", "vg_qla_mrcnn.json", "train+val_img_frcnn_feats.pt"
LABEL_FILE = "trainval_ans2label.pkl"
LABEL2ANS_FILE = "trainval_label2ans.pkl"
SOFTMAX = False  # answers' probabilities: per-answer sigmoid (BCE)


def split_files(data_dir: PathLike, split: str, label_type: str = "mask", txt_data_dir: Optional[PathLike] = None,
                use_vg: bool = False, use_vg_dev: bool = False) -> tuple[Path, Path]:
    """(question file, feature dict) of a split as the original names them; ``split`` may also be a .json path
    (its features then default to ``{stem}_img_frcnn_feats.pt`` beside it). As ``run_vqa.py``: ``use_vg`` reads the
    train split's questions from ``train2014_vg_qla_mrcnn.json`` (VQA train + Visual Genome QA, one file);
    ``use_vg_dev`` the val split's from ``vg_qla_mrcnn.json`` and every split's features from
    ``train+val_img_frcnn_feats.pt``; both only with ``label_type`` mask and ``use_vg`` only for the train split (the
    original ignores them otherwise; here that is one error)."""
    if (use_vg or use_vg_dev) and label_type != "mask":
        flag = "--use-vg" if use_vg else "--use-vg-dev"
        raise VinvlError(f"{flag} reads the VG files *_qla_mrcnn.json: only with --data-label-type mask, "
                         f"not {label_type!r}")
    if use_vg and split != "train":
        raise VinvlError(f"--use-vg replaces the train split's questions ({VG_TRAIN}): the training split is {split!r}, "
                         "not train")
    if split.endswith(".json"):
        p = Path(split)
        beside = p.with_name(p.stem.split("_qla")[0] + "_img_frcnn_feats.pt")
        return p, (Path(data_dir) / VG_FEATURES if use_vg_dev else beside)
    if split not in SPLITS:
        raise VinvlError(f"VQA split {split!r}: expected one of {', '.join(SPLITS)} or a .json file")
    if label_type not in ("mask", "faster"):
        raise VinvlError(f"data label type {label_type!r}: expected mask or faster")
    qstem, fstem = SPLITS[split]
    test = split.startswith("test")
    # The original reads train/val questions from --txt_data_dir and test questions from --data_dir.
    qdir = Path(data_dir) if (test or txt_data_dir is None) else Path(txt_data_dir)
    if label_type == "mask":
        name = VG_TRAIN if use_vg else VG_VAL if (use_vg_dev and split == "val") else f"{qstem}_qla_mrcnn.json"
        qfile = qdir / name
    else:
        qfile = qdir / ("test2014_qla.json" if test else f"{qstem}_qla.json")
    return qfile, Path(data_dir) / (VG_FEATURES if use_vg_dev else f"{fstem}_img_frcnn_feats.pt")


def load_split(qa_file: PathLike, features: Any, vocab: AnswerVocab, tokenizer: Any, options: VQAOptions,
               test: Optional[bool] = None) -> QADataset:
    """A split's dataset with soft-score targets (see :func:`vinvl.oscar.data.qa.load_qa_split`)."""
    return load_qa_split(qa_file, features, vocab, tokenizer, options, VQATask.TARGETS, test)


def evaluate(model: torch.nn.Module, ds: QADataset, batch_size: int = 256) -> tuple[dict[str, Any], list[dict]]:
    """(metrics, results): the mean VQA score and its upper bound (best soft score), and the server's results list."""
    logits = predict_logits(model, ds, batch_size)
    results = [{"question_id": int(ds.question_id(i)), "answer": ds.vocab.answers[j]}
               for i, j in enumerate(logits.argmax(1).tolist())] if len(ds) else []
    metrics: dict[str, Any] = {"task": "vqa", "num_questions": len(ds)}
    if not ds.test and len(ds):
        targets = torch.stack([ds.targets(i) for i in range(len(ds))])
        metrics["score"] = float(vqa_score(logits, targets).sum()) / len(ds)
        metrics["upper_bound"] = float(targets.max(1).values.sum()) / len(ds)
    return metrics, results


class VQATask(AnswerTask):
    """VQA fine-tuning: soft-score BCE over the answers; the training log's ``score`` is the batch's VQA score."""

    LABEL_FILE, LABEL2ANS_FILE, SOFTMAX, TARGETS = LABEL_FILE, LABEL2ANS_FILE, SOFTMAX, "soft"
    options: VQAOptions

    def score(self, model: nn.Module, dataset: QADataset) -> tuple[dict[str, Any], list[dict]]:
        return evaluate(model, dataset, self.options.eval_batch_size)

    def loss(self, module: nn.Module, batch: dict, ctx: StepContext) -> tuple[torch.Tensor, dict]:
        """The loss of the step's epoch (``--adjust-loss-epoch``), with the dropouts of that epoch (``--adjust-dp``):
        both follow from the epoch alone, so a resumed run sets them as the uninterrupted one did."""
        o = self.options
        if o.adjust_dp:  # the three modules run_vqa.py changes: the head's, the image embedding's, the words'
            bert = ctx.model.bert
            for dropout in (ctx.model.dropout, bert.dropout, bert.embeddings.dropout):
                dropout.p = o.dropout_at(ctx.epoch)
        out = module(**batch, loss_type=o.loss_type_at(ctx.epoch))
        return out.loss, self.figures(out, batch)

    def figures(self, out: Any, batch: dict) -> dict:
        return {"score": vqa_score(out.logits.detach(), batch["labels"]).mean()}


def train(train_file: PathLike, train_features: Any, vocab: AnswerVocab, out_dir: PathLike, options: VQAOptions,
          tokenizer: Any, init: Optional[PathLike] = None, model_config: Any = None, eval_file: Optional[PathLike] = None,
          eval_features: Any = None, resume: bool = False, log: Optional[Callable[[str], None]] = None,
          callbacks: tuple = ()) -> Path:
    """Fine-tune for VQA; each checkpoint also holds ``answers.json`` and, with ``eval_file``, its VQA score.
    Returns the last ``checkpoint-N``."""
    task = VQATask(options, tokenizer, vocab, init=init, model_config=model_config, log=log)
    return fine_tune(task, QAFiles(train_file, train_features, eval_file, eval_features), out_dir, resume, log, callbacks)
