"""What a task of the training engine is: one :class:`TrainingTask` protocol (data, model, optimiser, loss,
evaluation, checkpoint files), the same for the detector (:class:`vinvl.detection.train.DetectorTask`) and every
Oscar+ task (:class:`vinvl.oscar.task.OscarTask`, which adds prediction); the engine knows nothing else of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Protocol, Sequence

import torch
from torch import nn

from .runtime import Runtime

# A micro-batch: the engine moves its tensors to the device; anything else (lists of targets) the task's loss moves.
Batch = dict[str, Any]
Figures = dict[str, torch.Tensor]


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


class TrainingTask(Protocol):
    """A task of the engine: its data, its model and optimiser, its loss, its evaluation and its checkpoint files."""

    ddp_forward: bool  # the loss runs the model through its forward (so DDP can average the gradients)
    unused_parameters: bool  # some weights get no gradient (DDP must look for them)

    # -- data
    def train_set(self) -> ExampleSet:
        """The training examples."""
        ...

    def collate(self, examples: Sequence[Any]) -> Batch:
        """A micro-batch of examples."""
        ...

    def extra_set(self) -> Optional[ExampleSet]:
        """A second example set drawn beside the first (None: none): each micro-batch also takes ``batch_size`` of
        its examples, in its own seeded order, collated into ``batch["extra"]``."""
        ...

    # -- model and optimiser
    def build_model(self, resume_from: Optional[Path]) -> nn.Module:
        """The model to train: ``resume_from``'s when resuming, else from the starting checkpoint or a config."""
        ...

    def optimizer(self, model: nn.Module, total: int, fused: bool) -> tuple[torch.optim.Optimizer, Any]:
        """The optimiser of ``model`` and its learning-rate schedule over ``total`` steps (``fused``: on CUDA)."""
        ...

    # -- loss
    def loss(self, module: nn.Module, batch: Batch, ctx: StepContext) -> tuple[torch.Tensor, Figures]:
        """(loss, figures to log) of a micro-batch; ``module`` may be the data-parallel wrapper."""
        ...

    # -- evaluate
    def evaluate(self, model: nn.Module) -> Optional[dict[str, Any]]:
        """Scores of ``model`` on the task's evaluation set (a dict with ``score``), or None without one."""
        ...

    # -- what a checkpoint carries
    def save_checkpoint(self, model: nn.Module, folder: Path, args: dict[str, Any]) -> None:
        """The model's files and the run's recorded ``args`` (options, settings, step count) in a checkpoint folder."""
        ...

    def settings(self) -> dict[str, Any]:
        """What ``training_args`` records besides the options."""
        ...
