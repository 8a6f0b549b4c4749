"""The training loop every Oscar+ task shares: AdamW, warm-up + linear/constant schedule,
gradient accumulation and clipping, jsonl logging, ``checkpoint-N/`` in the original layout
with an exact-resume ``training_state.pt``, and data parallelism under ``torchrun`` (gloo/nccl).

A task gives a model, a batch iterator that can start at any global batch index (so a resumed
run sees the batches the uninterrupted run would have seen) and a step function returning the
loss and the figures to log; pretraining and every downstream task run through :func:`train_loop`.
"""

from __future__ import annotations

import json
import math
import os
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Union

import torch
from torch import nn

from ..atomic import atomic_write
from ..errors import VinvlError

PathLike = Union[str, os.PathLike]
Batch = dict[str, torch.Tensor]


@dataclass
class LoopConfig:
    """Optimiser, schedule and bookkeeping options (the original ``run_*.py`` flags of the same names)."""

    learning_rate: float = 3e-5
    weight_decay: float = 0.05
    adam_epsilon: float = 1e-8
    warmup_steps: int = 0
    scheduler: str = "linear"  # after warm-up: "linear" decay to 0 at max_steps, or "constant"
    max_steps: int = 1000
    gradient_accumulation_steps: int = 1
    max_grad_norm: float = 1.0
    seed: int = 88
    save_steps: int = 500  # <= 0: only the last step
    log_steps: int = 20  # <= 0: only the last step


def loop_config(task_cfg: Any, **overrides: Any) -> LoopConfig:
    """The loop options a task's config holds (its fields of the same names), with ``overrides``."""
    values = {f: getattr(task_cfg, f) for f in LoopConfig.__dataclass_fields__ if hasattr(task_cfg, f)}
    return LoopConfig(**{**values, **overrides})


def total_steps(n: int, task_cfg: Any, world: int = 1) -> tuple[int, int]:
    """(optimizer steps of the run, optimizer steps per epoch) of ``n`` examples: ``max_steps`` when > 0,
    else ``num_train_epochs`` epochs (``batch_size`` per process, ``gradient_accumulation_steps``)."""
    per_epoch = max(max(n // (task_cfg.batch_size * world), 1) // task_cfg.gradient_accumulation_steps, 1)
    if task_cfg.max_steps > 0:
        return task_cfg.max_steps, per_epoch
    return max(int(math.ceil(per_epoch * task_cfg.num_train_epochs)), 1), per_epoch


def dist_info() -> tuple[int, int]:
    """(rank, world size) from torchrun's environment; (0, 1) for a plain process."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The example order of an epoch (seeded by ``(seed, epoch)``, so a resumed run repeats it)."""
    order = list(range(n))
    random.Random(f"{seed}/order/{epoch}").shuffle(order)
    return order


def epoch_chunks(n: int, batch_size: int, seed: int, start: int, rank: int = 0, world: int = 1) -> Iterator[tuple[int, list[int]]]:
    """``(epoch, this rank's example indices)`` of every global batch from global batch ``start`` on
    (a global batch is ``batch_size`` examples per rank; an epoch's last partial batch is dropped)."""
    if n < world:  # an empty rank would stack nothing
        raise VinvlError(f"{n} training examples for {world} processes: the training split is empty or too small")
    per_global = batch_size * world
    per_epoch = max(n // per_global, 1)
    b = start
    while True:
        epoch, within = divmod(b, per_epoch)
        order = epoch_order(n, seed, epoch)
        yield epoch, order[within * per_global : (within + 1) * per_global][rank::world]
        b += 1


def stacked_batches(ds: Any, batch_size: int, seed: int, start: int, rank: int = 0, world: int = 1) -> Iterator[Batch]:
    """Batches of ``ds.example(index, epoch)`` dicts stacked key by key, in :func:`epoch_chunks` order."""
    for epoch, chunk in epoch_chunks(len(ds), batch_size, seed, start, rank, world):
        ex = [ds.example(i, epoch) for i in chunk]
        yield {k: torch.stack([e[k] for e in ex]) for k in ex[0]}


def latest_checkpoint(out_dir: PathLike) -> Optional[Path]:
    """The newest ``checkpoint-N/`` of a run folder that has a training state (``None`` if there is none)."""
    done = sorted(Path(out_dir).glob("checkpoint-*/training_state.pt"), key=lambda p: int(p.parent.name.split("-")[1]))
    return done[-1].parent if done else None


def write_training_args(folder: PathLike, args: dict[str, Any]) -> None:
    """``training_args.json`` (vinvl reads it first) and ``training_args.bin``, the pickled ``argparse.Namespace``
    the original's scripts save and read back (its captioning evaluation needs it), of plain values only."""
    import argparse

    plain = json.loads(json.dumps(args, default=str))
    folder = Path(folder)
    atomic_write(folder / "training_args.bin", lambda tmp: torch.save(argparse.Namespace(**plain), tmp))
    atomic_write(folder / "training_args.json", lambda tmp: tmp.write_text(json.dumps(plain, indent=1)))


def make_optimizer(model: nn.Module, cfg: LoopConfig) -> tuple[torch.optim.Optimizer, Any]:
    """AdamW without decay on biases and LayerNorm weights, and the warm-up + linear/constant schedule."""
    if cfg.scheduler not in ("linear", "constant"):
        raise VinvlError(f"scheduler must be linear or constant, got {cfg.scheduler!r}")
    no_decay = ("bias", "LayerNorm.weight")
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [
        {"params": [p for n, p in params if not any(x in n for x in no_decay)], "weight_decay": cfg.weight_decay},
        {"params": [p for n, p in params if any(x in n for x in no_decay)], "weight_decay": 0.0},
    ]
    opt = torch.optim.AdamW(groups, lr=cfg.learning_rate, eps=cfg.adam_epsilon)

    def lr_at(s: int) -> float:
        if s < cfg.warmup_steps:
            return s / max(1, cfg.warmup_steps)
        if cfg.scheduler == "constant":
            return 1.0
        return max(0.0, (cfg.max_steps - s) / max(1, cfg.max_steps - cfg.warmup_steps))

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lr_at)


def train_loop(
    model: nn.Module,
    batches: Callable[[int], Iterator[Batch]],
    step_fn: Callable[[nn.Module, Batch], tuple[torch.Tensor, dict[str, float]]],
    cfg: LoopConfig,
    out_dir: PathLike,
    tokenizer: Any = None,
    resume_from: Optional[PathLike] = None,
    log: Optional[Callable[[str], None]] = None,
    on_save: Optional[Callable[[Path, int], None]] = None,
    training_args: Optional[dict] = None,
) -> Path:
    """Train ``model`` to ``cfg.max_steps``; returns the last ``checkpoint-N/`` folder.

    ``batches(start)`` yields this process's batches from global batch index ``start`` on;
    ``step_fn(module, batch)`` returns (loss, figures to log) and is given the DDP wrapper when
    there are several processes. ``resume_from`` (a checkpoint folder whose weights ``model``
    already holds) restores the optimiser, schedule and step. ``on_save(folder, step)`` adds
    task files to each checkpoint; ``training_args`` is written into each one (:func:`write_training_args`).
    """
    out = Path(out_dir)
    rank, world = dist_info()
    log = log or (lambda m: print(m, file=sys.stderr, flush=True))
    step = 0
    opt, sched = make_optimizer(model, cfg)
    if resume_from is not None:
        from .checkpoint import load_training_state

        state = load_training_state(resume_from)
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        step = int(state["step"])
        log(f"resumed from {resume_from} (step {step})")
    model.train()
    module: nn.Module = model
    if world > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo", rank=rank, world_size=world)
        module = torch.nn.parallel.DistributedDataParallel(model)
    out.mkdir(parents=True, exist_ok=True)
    it = batches(step * cfg.gradient_accumulation_steps)
    t0 = time.perf_counter()
    window: list[dict[str, float]] = []
    k = cfg.gradient_accumulation_steps
    folder = out / f"checkpoint-{step}"
    while step < cfg.max_steps:
        opt.zero_grad(set_to_none=True)
        totals: dict[str, float] = {}
        for _ in range(k):
            loss, figures = step_fn(module, next(it))
            (loss / k).backward()
            for name, v in {"loss": loss.item(), **figures}.items():
                totals[name] = totals.get(name, 0.0) + float(v) / k
        if cfg.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
        opt.step()
        sched.step()
        step += 1
        window.append(totals)
        if rank == 0 and ((cfg.log_steps > 0 and step % cfg.log_steps == 0) or step == cfg.max_steps):
            mean = {n: sum(w[n] for w in window) / len(window) for n in totals}
            window = []
            shown = "  ".join(f"{n} {v:.4f}" for n, v in mean.items())
            log(f"step {step}/{cfg.max_steps}  {shown}  lr {sched.get_last_lr()[0]:.2e}")
            with open(out / "log.jsonl", "a") as f:
                entry = {"step": step, **{n: round(v, 6) for n, v in mean.items()}}
                f.write(json.dumps(entry | {"seconds": round(time.perf_counter() - t0, 1)}) + "\n")
        if (cfg.save_steps > 0 and step % cfg.save_steps == 0) or step == cfg.max_steps:
            folder = out / f"checkpoint-{step}"
            if rank == 0:
                model.save_original(folder, tokenizer=tokenizer)
                if training_args is not None:
                    write_training_args(folder, training_args)
                if on_save is not None:
                    on_save(folder, step)
                state = {"optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "step": step}
                # last: its presence marks a complete checkpoint
                atomic_write(folder / "training_state.pt", lambda tmp: torch.save(state, tmp))
    if world > 1:
        import torch.distributed as dist

        dist.barrier()
        dist.destroy_process_group()
    return folder
