"""NLVR2 (the original's ``run_nlvr.py``): split names, accuracy, evaluation, training and judging sentences about
image pairs, with either of its models.

Data: ``nlvr2_{train,dev,test1}.json`` (``nlvr2_{balanced,unbalanced}_{dev,test1}.json`` for the
``bal``/``unbal`` evaluation types) items ``{q, label, img_id: {left, right}, o: {left, right}}``,
regions from ``nlvr2_img_frcnn_feats.pt`` or any region source. The pair model (``--use_pair``, the model zoo's
and the released checkpoints': :class:`OscarForMultipleChoice`, ``num_choice`` 2): each image makes one sequence
``[CLS] sentence [SEP] (its tags [SEP] with --use_label_seq)`` + its regions; the two pooled outputs
are concatenated into the classifier (the model zoo's ``mlp``, ``cls_hidden_scale`` 3 base / 2 large). As the
original, the sentence's tokens are truncated in place, so the second image's sequence sees the sentence as the
first one's truncation left it. The non-pair model (``--no-pair``, the original's default without ``--use_pair``:
:class:`OscarForSequenceClassification`): one sequence ``[CLS] sentence [SEP] (left tags + ' ' + right tags [SEP])``
+ both images' regions, ``2 x max_img_seq_length`` in all (:class:`~vinvl.oscar.data.qa.JointPairDataset`), its
pooled output into the classifier. Both: softmax cross-entropy over {0: false, 1: true}; accuracy.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import torch
from torch import nn

from ...errors import VinvlError
from ..data.qa import JointPairDataset, PairDataset, load_pair_split
from ..data.regions import Key, RegionSource
from ..modeling import OscarForMultipleChoice, OscarForSequenceClassification
from ..options import NLVR2Options
from .base import predict_logits
from .classification import ClassificationTask, QAFiles, check_region_width, fine_tune

PathLike = Union[str, os.PathLike]

# split -> evaluation type -> file, as run_nlvr.py's _load_dataset names them
SPLITS = {
    "train": {"all": "nlvr2_train.json"},
    "val": {"all": "nlvr2_dev.json", "bal": "nlvr2_balanced_dev.json", "unbal": "nlvr2_unbalanced_dev.json"},
    "test1": {"all": "nlvr2_test1.json", "bal": "nlvr2_balanced_test1.json", "unbal": "nlvr2_unbalanced_test1.json"},
}
FEATURES_FILE = "nlvr2_img_frcnn_feats.pt"


def split_file(data_dir: PathLike, split: str, data_type: str = "all") -> Path:
    """A split's file as ``run_nlvr.py`` names it; ``split`` may also be a .json path."""
    if split.endswith(".json"):
        return Path(split)
    if split not in SPLITS:
        raise VinvlError(f"NLVR2 split {split!r}: expected one of {', '.join(SPLITS)} or a .json file")
    names = SPLITS[split]
    if data_type not in names:
        data_type = "all" if split == "train" else data_type
        if data_type not in names:
            raise VinvlError(f"NLVR2 data type {data_type!r}: expected all, bal or unbal")
    return Path(data_dir) / names[data_type]


def load_split(path: PathLike, features: Any, tokenizer: Any, options: NLVR2Options) -> PairDataset:
    """A split's dataset for the model ``options.use_pair`` names; ``features`` a path (folder, TSV or .pt) or an open
    region source."""
    return load_pair_split(path, features, tokenizer, options, options.use_label_seq, options.use_pair)


def evaluate(model: torch.nn.Module, ds: PairDataset, batch_size: int = 64) -> tuple[dict[str, Any], list[dict]]:
    """(metrics, predictions): accuracy (``score``) where items have labels, and each item's prediction."""
    logits = predict_logits(model, ds, batch_size)
    pred = logits.argmax(1).tolist() if len(ds) else []
    prob = logits.softmax(1)[:, 1].tolist() if len(ds) else []
    results = []
    for i, (p, q) in enumerate(zip(pred, prob)):
        it = ds.items[i]
        results.append({"index": i, **({"identifier": it["identifier"]} if "identifier" in it else {}),
                        "prediction": int(p), "prob_true": round(float(q), 6),
                        **({"label": ds.label(i)} if it.get("label") is not None else {})})
    metrics: dict[str, Any] = {"task": "nlvr2", "num_examples": len(ds)}
    labelled = [r for r in results if "label" in r]
    if labelled:
        metrics["score"] = metrics["accuracy"] = sum(r["prediction"] == r["label"] for r in labelled) / len(labelled)
    return metrics, results


class NLVR2Task(ClassificationTask):
    """NLVR2 fine-tuning: the pair model (2 choices) or the non-pair one (``use_pair`` off), cross-entropy over
    false/true; :meth:`predict` takes the image keys in (left, right) pairs."""

    options: NLVR2Options

    @property
    def model_class(self) -> type:  # type: ignore[override]
        """The pair model, or the non-pair one (``run_nlvr.py``'s ``ImageBertForSequenceClassification``)."""
        return OscarForMultipleChoice if self.options.use_pair else OscarForSequenceClassification

    @property
    def num_labels(self) -> int:
        return 2

    def model_overrides(self) -> dict[str, Any]:
        return {**super().model_overrides(), "num_choice": 2}  # both models: run_nlvr.py sets it either way

    def load(self, path: PathLike, features: Any, test: Optional[bool] = None) -> PairDataset:
        return load_split(path, features, self.tokenizer, self.options)

    def score(self, model: nn.Module, dataset: PairDataset) -> tuple[dict[str, Any], list[dict]]:
        return evaluate(model, dataset, self.options.eval_batch_size)

    def predict(self, model: nn.Module, regions: RegionSource, keys: Sequence[Key], texts: Sequence[str]) -> list[dict]:
        if len(keys) % 2:
            raise VinvlError(f"NLVR2 judges image pairs: {len(keys)} image keys given")
        pairs = list(zip(keys[0::2], keys[1::2]))
        return judge(model, self.tokenizer, regions, pairs, texts, self.options, self.options.eval_batch_size)


def train(train_file: PathLike, train_features: Any, out_dir: PathLike, options: NLVR2Options, tokenizer: Any,
          init: Optional[PathLike] = None, model_config: Any = None, eval_file: Optional[PathLike] = None,
          eval_features: Any = None, resume: bool = False, log: Optional[Callable[[str], None]] = None,
          callbacks: tuple = ()) -> Path:
    """Fine-tune the pair model (or with ``options.use_pair`` off the non-pair one) for NLVR2; returns the last
    ``checkpoint-N``."""
    task = NLVR2Task(options, tokenizer, init=init, model_config=model_config, log=log)
    return fine_tune(task, QAFiles(train_file, train_features, eval_file, eval_features), out_dir, resume, log, callbacks)


def judge(model: torch.nn.Module, tokenizer: Any, regions: Any, pairs: Sequence[tuple[str, str]], sentences: Sequence[str],
          options: NLVR2Options, batch_size: int = 64) -> list[dict]:
    """Is each sentence true of each (left key, right key) image pair of a region source?"""
    check_region_width(model, regions, "the regions")
    items = [{"q": s, "img_id": {"left": kl, "right": kr}, "o": {"left": regions.tags(kl), "right": regions.tags(kr)}}
             for kl, kr in pairs for s in sentences]
    cls = PairDataset if options.use_pair else JointPairDataset
    ds = cls(items, regions, tokenizer, options, options.use_label_seq, source="the pairs")
    _, results = evaluate(model, ds, batch_size)
    return [{"left": it["img_id"]["left"], "right": it["img_id"]["right"], "sentence": it["q"],
             "prediction": bool(r["prediction"]), "prob_true": r["prob_true"]} for it, r in zip(items, results)]
