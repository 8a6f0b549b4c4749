"""The options of any training run through the engine (:class:`EngineOptions`), and the grammar of its device (the precision's
vocabulary is vinvl.dtypes); importable without torch (the CLI and the configurations of both halves read them).

The "not set" values are one rule for every task: ``max_steps`` 0 lets ``num_train_epochs`` decide; ``save_steps``
N > 0 saves every N steps, 0 at the end of every epoch, -1 only at the last step (the last step is always saved);
``log_steps`` 0 logs only the last step; ``max_grad_norm`` <= 0 does not clip.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from ..dtypes import DTYPES
from ..errors import VinvlError


def check_device(name: str) -> str:
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N``; one error naming ``--device`` otherwise."""
    if name in ("auto", "cpu", "cuda") or (name.startswith("cuda:") and name[5:].isdigit()):
        return name
    raise VinvlError(f"--device {name!r}: expected auto, cpu, cuda or cuda:N")


@dataclass
class EngineOptions:
    """What the engine reads of a run's options: batching, step count, learning rate and its warm-up, clipping,
    seed, saving, logging, device and precision. A task's options class adds its own fields and overrides the
    defaults that differ (these are Oscar+'s, the engine's first task)."""

    batch_size: int = 32  # examples per micro-batch per process (--per_gpu_train_batch_size)
    gradient_accumulation_steps: int = 1
    learning_rate: float = 5e-5
    weight_decay: float = 0.05
    warmup_steps: int = 0
    num_train_epochs: float = 1.0
    max_steps: int = 0  # > 0 overrides num_train_epochs
    max_grad_norm: float = 1.0  # <= 0: no clipping
    seed: int = 88
    save_steps: int = 0  # > 0 every N steps, 0 every epoch, -1 only the last step
    log_steps: int = 20  # 0: only the last step
    device: str = "auto"  # auto (CUDA when present), cpu, cuda, cuda:N
    precision: str = "fp32"  # fp32, bf16 or fp16 (autocast; fp16 with a gradient scaler)

    def check(self) -> "EngineOptions":
        """One error naming the option for a value no run can use (the CLI checks these ranges while parsing)."""
        for name in ("batch_size", "gradient_accumulation_steps"):
            if getattr(self, name) < 1:
                raise VinvlError(f"--{name.replace('_', '-')} {getattr(self, name)}: must be at least 1")
        for name in ("learning_rate", "weight_decay", "warmup_steps", "max_steps", "log_steps"):
            if getattr(self, name) < 0:
                raise VinvlError(f"--{name.replace('_', '-')} {getattr(self, name)}: must not be negative")
        if self.save_steps < -1:
            raise VinvlError(f"--save-steps {self.save_steps}: N > 0 (every N steps), 0 (every epoch) or -1 (last only)")
        if self.max_steps == 0 and not self.num_train_epochs > 0:
            raise VinvlError(f"--num-train-epochs {self.num_train_epochs}: must be > 0 when --max-steps is 0")
        if self.precision not in DTYPES:
            raise VinvlError(f"--dtype {self.precision!r}: expected one of {', '.join(DTYPES)}")
        check_device(self.device)
        return self

    def writes_checkpoint(self, step: int, per_epoch: int) -> bool:
        """Whether a save after optimizer step ``step`` (``per_epoch`` steps an epoch) writes its checkpoint; where it
        does not, the save only evaluates. Always, unless a task's options hold checkpoints back (VQA's
        ``save_after_epoch``); the last step's checkpoint is written whatever this says."""
        return True

    def to_dict(self) -> dict[str, Any]:
        """Every option by name (what a checkpoint's ``training_args`` records)."""
        return asdict(self)
