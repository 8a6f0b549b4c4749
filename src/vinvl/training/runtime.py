"""Where a training run or an Oscar+ command runs: the device (:func:`resolve_device`, one rule for every command),
the processes of a ``torchrun`` run (:class:`Runtime`), the precision (:func:`autocast`) and the progress log
(:func:`stderr_log`).

The device rule: ``auto`` (every command's default, training and inference alike) is CUDA when present, else the
CPU; ``cpu``, ``cuda``, ``cuda:N`` as named (a CUDA device on a machine without one is one error naming
``--device``); under ``torchrun`` each process takes ``cuda:LOCAL_RANK``. The precision vocabulary is
:data:`vinvl.dtypes.DTYPES`: ``fp32`` (the default: the original's numbers), ``bf16``, ``fp16``.
"""

from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass
from typing import Any, Union

import torch
import torch.distributed as dist

from ..errors import VinvlError
from .options import check_device

Device = Union[str, torch.device]


def resolve_device(name: str = "auto") -> torch.device:
    """The device a command runs on: ``auto`` is CUDA when present, else the CPU; a CUDA device asked for on a
    machine without one is one error naming ``--device``."""
    check_device(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise VinvlError(f"--device {name}: no CUDA device here (use --device auto or cpu)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise VinvlError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return dev


@dataclass
class Runtime:
    """This process's place in a run: rank, number of processes, its device, and the process group."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    owns_group: bool = False

    @classmethod
    def start(cls, device: str = "auto") -> "Runtime":
        """From torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``): one process per device, the
        process group started (nccl on CUDA, gloo on CPU) unless the caller started it."""
        rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
        local = int(os.environ.get("LOCAL_RANK", "0"))
        dev = resolve_device(device)
        if world > 1 and dev.type == "cuda":
            if local >= torch.cuda.device_count():
                raise VinvlError(f"LOCAL_RANK {local}: this machine has {torch.cuda.device_count()} CUDA device(s)")
            dev = torch.device("cuda", local)  # each process its own GPU, whatever index --device named
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        owns = False
        if world > 1:
            if not dist.is_initialized():
                dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", rank=rank, world_size=world)
                owns = True
        return cls(rank, world, local, dev, owns)

    def barrier(self) -> None:
        """Wait for every process (nothing with one)."""
        if self.world > 1:
            dist.barrier()

    def gather(self, obj: Any) -> list[Any]:
        """Every process's ``obj``, in rank order (a collective: all processes call it)."""
        if self.world == 1:
            return [obj]
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def mean_(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` averaged over the processes, in place."""
        if self.world > 1:
            dist.all_reduce(t)
            t /= self.world
        return t

    def close(self, wait: bool = True) -> None:
        """End the process group if this runtime started it (``wait``: for every process first; not after an
        error, which the other processes may never reach)."""
        if self.owns_group:
            if wait:
                dist.barrier()
            dist.destroy_process_group()
            self.owns_group = False


def autocast(device: torch.device, precision: str = "fp32") -> Any:
    """Autocast to ``precision`` (fp32: nothing, bf16, fp16) on ``device``."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def as_device(device: Device) -> torch.device:
    """A device given by name (:func:`resolve_device`'s rule) or already resolved."""
    return device if isinstance(device, torch.device) else resolve_device(device)


def stderr_log(message: str) -> None:
    """The default progress log of training and of the tasks: one line on stderr."""
    print(message, file=sys.stderr, flush=True)
