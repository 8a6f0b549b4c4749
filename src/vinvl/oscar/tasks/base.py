"""The base of every task (:class:`Task`, implementing :class:`vinvl.oscar.task.OscarTask`) and the pieces
every task shares.

A task is data + loss + evaluate + predict: :meth:`Task.train_set` (``len`` and ``example(i, epoch)``,
random choices seeded by the example's own ``(seed, epoch, i)``), :meth:`Task.collate`, :meth:`Task.loss`,
:meth:`Task.evaluate` (run at each save; a dict with ``score``), :meth:`Task.predict` (what the model says of
images and texts), :meth:`Task.save_files` (its files in each checkpoint) and :meth:`Task.settings` (what
``training_args`` records besides the options). The model is built once, the same way for every task, through
the one loader (:class:`vinvl.oscar.loading.OscarCheckpoint`); the optimiser (:meth:`Task.optimizer`) and the
checkpoint's layout (:meth:`Task.save_checkpoint`: the original's) are the same for every task.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import torch
from torch import nn

from ...errors import VinvlError
from ...training.runtime import stderr_log
from ..checkpoint import load_for_task, write_training_args
from ..data.regions import Key, RegionSource
from ..loading import OscarCheckpoint
from ..metrics.qa import accuracy
from ..options import TrainingOptions
from ..task import Batch, ExampleSet, Figures, Result, StepContext
from ..tensorize import load_tokenizer
from ..training import make_optimizer

__all__ = ["ExampleSet", "Task", "accuracy", "predict_logits", "stack", "stderr_log", "task_tokenizer"]

PathLike = Union[str, os.PathLike]
DEFAULT_REGION_DIM = 2054  # the original's --img_feature_dim default: the VinVL detector's region width


def stack(examples: Sequence[dict[str, torch.Tensor]]) -> Batch:
    """Examples (dicts of tensors) stacked key by key."""
    return {k: torch.stack([e[k] for e in examples]) for k in examples[0]}


def task_tokenizer(vocab: Optional[PathLike], init: Optional[PathLike], do_lower_case: bool = True) -> Any:
    """The tokenizer on ``vocab`` (a vocab.txt or folder), else on the starting checkpoint's vocab.txt; the
    checkpoint is checked first (one error naming it)."""
    if vocab is None and init is None:
        raise VinvlError("give a vocabulary (--vocab) or a checkpoint to start from (--init) holding one")
    start = OscarCheckpoint.open(init, "initial checkpoint (--init)") if init is not None else None
    if vocab is not None:
        return load_tokenizer(vocab, do_lower_case=do_lower_case)
    return start.tokenizer(do_lower_case)  # type: ignore[union-attr]


class Task:
    """A task (:class:`vinvl.oscar.task.OscarTask`); subclasses set ``model_class`` and implement :meth:`train_set`
    (and usually more)."""

    model_class: type = nn.Module
    ddp_forward: bool = True  # the loss runs the model through its forward (so DDP can average gradients)
    unused_parameters: bool = False  # some weights get no gradient (DDP must look for them)

    def __init__(self, options: TrainingOptions, tokenizer: Any, init: Optional[PathLike] = None,
                 model_config: Any = None, log: Optional[Callable[[str], None]] = None) -> None:
        """``init``: the checkpoint to start from; ``model_config``: an OscarConfig for a fresh model."""
        self.options, self.tokenizer, self.init, self.model_config = options, tokenizer, init, model_config
        self.log = log or stderr_log

    def train_set(self) -> ExampleSet:
        """The training examples."""
        raise NotImplementedError

    def collate(self, examples: Sequence[Any]) -> Batch:
        """A micro-batch of examples."""
        return stack(examples)

    def extra_set(self) -> Optional[ExampleSet]:
        """A second example set each micro-batch also draws from, into ``batch["extra"]`` (None: none)."""
        return None

    def model_overrides(self) -> dict[str, Any]:
        """Config fields the task's options set on the model (num_labels, dropout, classifier, ...)."""
        return {}

    def region_dim(self) -> Optional[int]:
        """The width of the training split's regions, where the task has one (None: it has none yet)."""
        return None

    def bert_overrides(self) -> dict[str, Any]:
        """The Oscar+ fields a plain BERT checkpoint's config lacks, as the original's script sets them before
        ``from_pretrained`` (on top of them, :meth:`model_overrides`): the region width (its ``--img_feature_dim``:
        the training regions' width here, its default 2054 where the task has none) and no image LayerNorm
        (``run_captioning.py``, ``run_vqa.py``, ``run_gqa.py`` and ``run_nlvr.py`` set no ``use_img_layernorm``, so
        their ``BertImgModel`` has none)."""
        return {"img_feature_dim": self.region_dim() or DEFAULT_REGION_DIM, "use_img_layernorm": 0}

    def build_model(self, resume_from: Optional[Path]) -> nn.Module:
        """The model to train: the newest checkpoint's when resuming, else the starting checkpoint's (through the
        one loader: an Oscar+ checkpoint, or a plain BERT one with :meth:`bert_overrides`), else a fresh one from
        the config."""
        overrides = self.model_overrides()
        if resume_from is not None:
            model = OscarCheckpoint.open(resume_from).model(self.model_class)
        elif self.init is not None:
            model = OscarCheckpoint.open(self.init, "initial checkpoint (--init)").start(
                self.model_class, overrides, self.log, bert=self.bert_overrides())
        else:
            if self.tokenizer is not None:  # a fresh model: the vocabulary's size
                overrides = {"vocab_size": len(self.tokenizer), **overrides}
            model = load_for_task(self.model_class, None, self.model_config, overrides, self.log)
        return self.prepare_model(model)

    def prepare_model(self, model: nn.Module) -> nn.Module:
        """Checks and adjustments after the weights are in (a fresh model, a starting or a resumed checkpoint)."""
        return model

    def optimizer(self, model: nn.Module, total: int, fused: bool) -> tuple[torch.optim.Optimizer, Any]:
        """AdamW and its warm-up schedule (:func:`vinvl.oscar.training.make_optimizer`) over ``total`` steps."""
        return make_optimizer(model, self.options, total, fused)

    def loss(self, module: nn.Module, batch: Batch, ctx: StepContext) -> tuple[torch.Tensor, Figures]:
        """(loss, figures to log) of a micro-batch; ``module`` may be the data-parallel wrapper."""
        out = module(**batch)
        return out.loss, self.figures(out, batch)

    def figures(self, out: Any, batch: Batch) -> Figures:
        """Figures logged beside the loss (tensors: read once per logging step)."""
        return {}

    def evaluate(self, model: nn.Module) -> Optional[dict[str, Any]]:
        """Scores of the model at a save (a dict with ``score``), or None when the task has no evaluation set."""
        return None

    def predict(self, model: nn.Module, regions: RegionSource, keys: Sequence[Key], texts: Sequence[str]) -> Result:
        """What ``model`` says of images ``keys`` of ``regions`` and of ``texts``."""
        raise VinvlError(f"{type(self).__name__} predicts nothing")

    def save_checkpoint(self, model: nn.Module, folder: Path, args: dict[str, Any]) -> None:
        """The original's layout (weights, config, vocabulary), ``training_args`` and the task's own files."""
        model.save_original(folder, tokenizer=self.tokenizer)
        write_training_args(folder, args)
        self.save_files(folder)

    def save_files(self, folder: Path) -> None:
        """The task's own files in a checkpoint folder (e.g. ``answers.json``)."""

    def settings(self) -> dict[str, Any]:
        """What ``training_args`` records besides the options."""
        return {}


@torch.no_grad()
def predict_logits(model: nn.Module, dataset: Any, batch_size: int = 256, collate: Callable = stack) -> torch.Tensor:
    """The model's logits over every example of ``dataset`` (``[len, ...]``, float32 on the CPU, in order)."""
    was_training = model.training
    model.eval()
    dev = next(model.parameters()).device
    out = []
    try:
        for s in range(0, len(dataset), batch_size):
            batch = collate([dataset.example(i, 0) for i in range(s, min(s + batch_size, len(dataset)))])
            x = {k: v.to(dev) for k, v in batch.items() if k != "labels"}
            out.append(model(**x).logits.float().cpu())
    finally:
        model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0)
