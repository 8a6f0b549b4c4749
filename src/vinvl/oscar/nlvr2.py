"""NLVR2 fine-tuning, evaluation and prediction (the original's ``run_nlvr.py --use_pair``).

Data: ``nlvr2_{train,dev,test1}.json`` (``nlvr2_{balanced,unbalanced}_{dev,test1}.json`` for the
``bal``/``unbal`` evaluation types) items ``{q, label, img_id: {left, right}, o: {left, right}}``,
regions from ``nlvr2_img_frcnn_feats.pt`` or a features folder. The pair model
(:class:`OscarForMultipleChoice`, ``num_choice`` 2): each image makes one sequence
``[CLS] sentence [SEP] (its tags [SEP] with --use_label_seq)`` + its regions; the two pooled outputs
are concatenated into the classifier (the model zoo's ``mlp``, ``cls_hidden_scale`` 3 base / 2 large);
softmax cross-entropy over {0: false, 1: true}; accuracy. As the original, the sentence's tokens are
truncated in place, so the second image's sequence sees the sentence as the first one's truncation left it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import torch

from ..errors import VinvlError
from .classify import TaskConfig, model_overrides, open_regions, predict_logits, read_json_list
from .tensorize import ClassificationTensorizer, truncate_pair as _truncate_pair
from .modeling import OscarConfig, OscarForMultipleChoice

PathLike = Union[str, os.PathLike]

# split -> evaluation type -> file, as run_nlvr.py's _load_dataset names them
SPLITS = {
    "train": {"all": "nlvr2_train.json"},
    "val": {"all": "nlvr2_dev.json", "bal": "nlvr2_balanced_dev.json", "unbal": "nlvr2_unbalanced_dev.json"},
    "test1": {"all": "nlvr2_test1.json", "bal": "nlvr2_balanced_test1.json", "unbal": "nlvr2_unbalanced_test1.json"},
}
FEATURES_FILE = "nlvr2_img_frcnn_feats.pt"


def default_config() -> TaskConfig:
    """The model zoo's base command: seq 55, 40 regions per image, batch 72, lr 3e-5, 20 epochs, dropout 0.3,
    weight decay 0.05, 10000 warm-up steps, cross-entropy, MLP classifier (cls_hidden_scale 3), seed 88."""
    return TaskConfig(max_seq_length=55, max_img_seq_length=40, batch_size=72, eval_batch_size=64, learning_rate=3e-5,
                      num_train_epochs=20, drop_out=0.3, weight_decay=0.05, warmup_steps=10000, loss_type="xe",
                      classifier="mlp", cls_hidden_scale=3, seed=88)


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


class PairDataset:
    """NLVR2 examples: ``[2, ...]`` inputs (one sequence per image) and the 0/1 label."""

    def __init__(self, items: Sequence[dict], regions: Any, tokenizer: Any, cfg: TaskConfig,
                 use_label_seq: bool = False, source: str = "<items>") -> None:
        """``use_label_seq``: put each image's tags (``o[side]``) after the sentence (off in the model zoo commands)."""
        self.items, self.regions, self.tok = list(items), regions, tokenizer
        self.tz = ClassificationTensorizer(tokenizer, cfg.max_seq_length, cfg.max_img_seq_length)
        self.use_label_seq, self.source = use_label_seq, source
        for i, it in enumerate(self.items):
            if not isinstance(it.get("img_id"), dict) or len(it["img_id"]) != 2:
                raise VinvlError(f"{source}: item {i}: img_id must be {{'left': id, 'right': id}}")

    def __len__(self) -> int:
        return len(self.items)

    def label(self, i: int) -> int:
        """Item ``i``'s label (1 true, 0 false)."""
        lab = self.items[i].get("label")
        if isinstance(lab, str):
            lab = {"true": 1, "false": 0}.get(lab.lower(), lab)
        return int(lab) if lab is not None else 0

    def example(self, i: int, epoch: int = 0) -> dict[str, torch.Tensor]:
        """Both images' sequences stacked on a choice axis, with ``labels``."""
        it = self.items[i]
        text, n = str(it["q"]), self.tz.max_seq_length
        choices = []
        for side, key in it["img_id"].items():
            tags = str((it.get("o") or {}).get(side) or "") if self.use_label_seq else ""
            choices.append(self.tz(text, tags or None, self.regions.regions(key)))
            a = self.tok.tokenize(text)
            b = self.tok.tokenize(tags) if tags else []
            if b:
                _truncate_pair(a, b, n - 3)
            else:
                a = a[: n - 2]
            if len(a) < len(self.tok.tokenize(text)):  # the original keeps the truncated sentence for the next image
                text = self.tok.convert_tokens_to_string(a)
        x = {k: torch.stack([c[k] for c in choices]) for k in choices[0]}
        x["labels"] = torch.tensor(self.label(i))
        return x


def load_split(path: PathLike, features: Any, tokenizer: Any, cfg: TaskConfig, use_label_seq: bool = False) -> PairDataset:
    """A split's pair dataset; ``features`` a path (folder or .pt) or an open region source."""
    items = read_json_list(path, ("q", "img_id"))
    regions = open_regions(features) if isinstance(features, (str, os.PathLike)) else features
    return PairDataset(items, regions, tokenizer, cfg, use_label_seq, source=str(path))


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


def train(
    train_file: PathLike, train_features: Any, out_dir: PathLike, cfg: TaskConfig, tokenizer: Any,
    init: Optional[PathLike] = None, config: Optional[OscarConfig] = None, eval_file: Optional[PathLike] = None,
    eval_features: Any = None, use_label_seq: bool = False, resume: bool = False, device: str = "cpu",
    log: Optional[Callable[[str], None]] = None,
) -> Path:
    """Fine-tune the pair model for NLVR2; returns the last ``checkpoint-N``."""
    from .classify import accuracy_figures, run_training

    train_set = load_split(train_file, train_features, tokenizer, cfg, use_label_seq)
    evaluate_fn = None
    if eval_file is not None:
        eval_set = load_split(eval_file, eval_features if eval_features is not None else train_set.regions,
                              tokenizer, cfg, use_label_seq)
        evaluate_fn = lambda m: evaluate(m, eval_set, cfg.eval_batch_size)[0]  # noqa: E731

    overrides = model_overrides(cfg, 2, num_choice=2)
    return run_training(OscarForMultipleChoice, train_set, cfg, out_dir, tokenizer, overrides, accuracy_figures, init=init,
                        config=config, evaluate=evaluate_fn, resume=resume, device=device, log=log)


def predict(
    model: torch.nn.Module, tokenizer: Any, pairs: Sequence[tuple[PathLike, PathLike]], sentences: Sequence[str],
    work_dir: PathLike, cfg: TaskConfig, use_label_seq: bool = False, **detector: Any,
) -> list[dict]:
    """Is each sentence true of each (left, right) image pair? End to end: detector -> regions + tags -> answer."""
    from ..extract import collect_inputs
    from .classify import check_region_width, image_regions

    images = list(dict.fromkeys(str(p) for pair in pairs for p in pair))
    keys, store = image_regions(images, work_dir, **detector)
    check_region_width(model, store, str(work_dir))
    key_of = {p: collect_inputs([p])[0].key for p in images}
    items = []
    for left, right in pairs:
        kl, kr = key_of[str(left)], key_of[str(right)]
        if kl not in keys or kr not in keys:
            raise VinvlError(f"{left if kl not in keys else right}: the detector could not read this image")
        for s in sentences:
            items.append({"q": s, "img_id": {"left": kl, "right": kr}, "o": {"left": store.tags(kl), "right": store.tags(kr)}})
    ds = PairDataset(items, store, tokenizer, cfg, use_label_seq, source=str(work_dir))
    _, results = evaluate(model, ds, 64)
    return [{"left": it["img_id"]["left"], "right": it["img_id"]["right"], "sentence": it["q"],
             "prediction": bool(r["prediction"]), "prob_true": r["prob_true"]} for it, r in zip(items, results)]
