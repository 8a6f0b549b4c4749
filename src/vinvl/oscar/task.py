"""What an Oscar+ task is, for the :class:`~vinvl.oscar.training.Trainer` and for the commands: one
:class:`OscarTask` protocol (data, loss, evaluate, predict; one signature each, the same for every task).

The tasks (:mod:`vinvl.oscar.tasks`: pretraining, retrieval, captioning, VQA, GQA, NLVR2) implement it by
subclassing :class:`vinvl.oscar.tasks.base.Task`; the Trainer and the inference functions know nothing else of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Protocol, Sequence, Union

import torch
from torch import nn

from .data.regions import Key, RegionSource
from .options import TrainingOptions
from .runtime import Runtime

Batch = dict[str, torch.Tensor]
Figures = dict[str, torch.Tensor]
Result = Union[list[dict[str, Any]], dict[str, Any]]  # what predict returns: rows (or a ranking) to write as JSON


class ExampleSet(Protocol):
    """Training examples by index; ``example(i, epoch)`` draws its random choices from ``(seed, epoch, i)``."""

    def __len__(self) -> int: ...

    def example(self, i: int, epoch: int) -> Any: ...


@dataclass
class StepContext:
    """What a task's loss may need about the micro-batch being computed."""

    step: int  # optimizer steps done before this one
    micro: int  # this process's micro-batch within the step (0 .. accumulation - 1)
    micro_index: int  # the run's global micro-batch number: the same for any split over processes
    epoch: int
    model: nn.Module  # the model itself (not the data-parallel wrapper)
    device: torch.device
    runtime: Runtime


class OscarTask(Protocol):
    """An Oscar+ task: its data, its model, its loss, its evaluation and its prediction."""

    options: TrainingOptions
    tokenizer: Any
    ddp_forward: bool  # the loss runs the model through its forward (so DDP can average the gradients)
    unused_parameters: bool  # some weights get no gradient (DDP must look for them)

    # -- data
    def train_set(self) -> ExampleSet:
        """The training examples."""
        ...

    def collate(self, examples: Sequence[Any]) -> Batch:
        """A micro-batch of examples."""
        ...

    # -- model
    def build_model(self, resume_from: Optional[Path]) -> nn.Module:
        """The model to train: ``resume_from``'s when resuming, else from the starting checkpoint or a config."""
        ...

    # -- loss
    def loss(self, module: nn.Module, batch: Batch, ctx: StepContext) -> tuple[torch.Tensor, Figures]:
        """(loss, figures to log) of a micro-batch; ``module`` may be the data-parallel wrapper."""
        ...

    # -- evaluate
    def evaluate(self, model: nn.Module) -> Optional[dict[str, Any]]:
        """Scores of ``model`` on the task's evaluation set (a dict with ``score``), or None without one."""
        ...

    # -- predict
    def predict(self, model: nn.Module, regions: RegionSource, keys: Sequence[Key], texts: Sequence[str]) -> Result:
        """What ``model`` says of images ``keys`` of ``regions`` and of ``texts`` (questions, sentences, captions)."""
        ...

    # -- what a checkpoint carries
    def save_files(self, folder: Path) -> None:
        """The task's own files in a checkpoint folder (e.g. ``answers.json``)."""
        ...

    def settings(self) -> dict[str, Any]:
        """What ``training_args`` records besides the options."""
        ...
