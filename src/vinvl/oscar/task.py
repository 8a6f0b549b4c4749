"""What an Oscar+ task is, for the :class:`~vinvl.oscar.training.Trainer` and for the commands: one
:class:`OscarTask` protocol, the training engine's :class:`~vinvl.training.task.TrainingTask` (data, model,
optimiser, loss, evaluate, checkpoint files) plus prediction and the task's own checkpoint files; one signature
each, the same for every task.

The tasks (:mod:`vinvl.oscar.tasks`: pretraining, retrieval, captioning, VQA, GQA, NLVR2) implement it by
subclassing :class:`vinvl.oscar.tasks.base.Task`; the Trainer and the inference functions know nothing else of them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol, Sequence, Union

from torch import nn

from ..training.task import Batch, ExampleSet, Figures, StepContext, TrainingTask
from .data.regions import Key, RegionSource
from .options import TrainingOptions

__all__ = ["Batch", "ExampleSet", "Figures", "OscarTask", "Result", "StepContext"]

Result = Union[list[dict[str, Any]], dict[str, Any]]  # what predict returns: rows (or a ranking) to write as JSON


class OscarTask(TrainingTask, Protocol):
    """An Oscar+ task: the engine's task (its data, model, loss, evaluation) with its prediction."""

    options: TrainingOptions
    tokenizer: Any

    # -- predict
    def predict(self, model: nn.Module, regions: RegionSource, keys: Sequence[Key], texts: Sequence[str]) -> Result:
        """What ``model`` says of images ``keys`` of ``regions`` and of ``texts`` (questions, sentences, captions)."""
        ...

    # -- what a checkpoint carries
    def save_files(self, folder: Path) -> None:
        """The task's own files in a checkpoint folder (e.g. ``answers.json``)."""
        ...
