"""The training loop of every Oscar+ task: :class:`Trainer`, the training engine (:class:`vinvl.training.engine.Engine`)
typed for Oscar+ tasks, and the optimiser they share (:func:`make_optimizer`: AdamW + warm-up, then linear decay or
constant).

A task (:class:`vinvl.oscar.task.OscarTask`) gives the data, the model, the loss, and optionally the evaluation
run at each save and the files each checkpoint carries; the engine owns the device, the processes, the data order,
the precision, accumulation, logging, checkpoints and exact resume (see :mod:`vinvl.training.engine`).
"""

from __future__ import annotations

import os
from typing import Any, Callable, Optional, Sequence, Union

import torch
from torch import nn

from ..training.engine import (Engine, capture_rng, epoch_order, micro_batch, restore_rng, rng_untouched,
                               seed_everything, step_examples, total_steps, warmup_schedule)
from ..training.runtime import autocast, resolve_device, stderr_log
from .options import TrainingOptions
from .task import OscarTask

__all__ = ["Trainer", "autocast", "capture_rng", "epoch_order", "make_optimizer", "micro_batch", "resolve_device",
           "restore_rng", "rng_untouched", "seed_everything", "stderr_log", "step_examples", "total_steps"]

PathLike = Union[str, os.PathLike]


def make_optimizer(model: nn.Module, opts: TrainingOptions, total: int,
                   fused: bool = False) -> tuple[torch.optim.Optimizer, Any]:
    """AdamW without decay on biases and LayerNorm weights, and the warm-up + linear/constant schedule to ``total``."""
    no_decay = ("bias", "LayerNorm.weight")
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [
        {"params": [p for n, p in params if not any(x in n for x in no_decay)], "weight_decay": opts.weight_decay},
        {"params": [p for n, p in params if any(x in n for x in no_decay)], "weight_decay": 0.0},
    ]
    opt = torch.optim.AdamW(groups, lr=opts.learning_rate, eps=opts.adam_epsilon, **({"fused": True} if fused else {}))
    return opt, warmup_schedule(opt, total, opts.warmup_steps, opts.scheduler)


class Trainer(Engine):
    """The engine training an Oscar+ task (see :mod:`vinvl.training.engine`); :meth:`train` returns the last
    checkpoint folder."""

    def __init__(self, task: OscarTask, options: TrainingOptions, out_dir: PathLike,
                 log: Optional[Callable[[str], None]] = None,
                 callbacks: Sequence[Callable[[int], None]] = ()) -> None:
        """``callbacks``: called with the number of steps done after each optimizer step (its checkpoint, if
        any, written)."""
        super().__init__(task, options, out_dir, log=log, callbacks=callbacks)
