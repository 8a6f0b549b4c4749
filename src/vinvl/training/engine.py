"""The one training engine: :class:`Engine` trains any :class:`~vinvl.training.task.TrainingTask`, the detector
(:class:`vinvl.detection.train.DetectorTask`) and every Oscar+ task (through :class:`vinvl.oscar.training.Trainer`).

A task gives the data, the model, its optimiser and schedule, the loss, and optionally the evaluation run at each
save; it writes the model's files into each checkpoint. The engine owns everything else:

- **device** (:mod:`vinvl.training.runtime`): ``auto`` (CUDA when present), ``cpu``, ``cuda``, ``cuda:N``; under
  ``torchrun`` each process takes ``cuda:LOCAL_RANK`` (``torch.cuda.set_device``), nccl on GPUs and gloo on
  CPUs, DDP with ``device_ids``;
- **data order**: one deterministic order for any number of processes. An epoch's order is seeded by
  ``(seed, epoch)``; optimizer step ``s`` takes the next ``batch_size x processes x accumulation`` examples,
  micro-batch ``j`` of process ``r`` being the ``(j x processes + r)``-th ``batch_size`` of them, so
  N processes with accumulation k see exactly the micro-batches of one process with accumulation N x k;
  each example's random choices are seeded by ``(seed, epoch, index)`` (the tasks' ``example``); a task's
  **extra set** (:meth:`~vinvl.training.task.TrainingTask.extra_set`, Oscar+ pretraining's second corpus) is drawn
  beside it the same way in its own order (its own epochs, seeded by ``(seed, "extra", epoch)``), each micro-batch
  taking as many of its examples, handed to the loss as ``batch["extra"]``;
- **precision**: ``fp32``, ``bf16`` or ``fp16`` autocast (fp16 with a gradient scaler);
- gradient accumulation and clipping, one step count (:func:`total_steps`), the schedule's step, and the
  warm-up schedules the tasks' optimisers take (:func:`warmup_schedule`);
- **logging**: ``log.jsonl`` and a progress bar on rank 0; the figures a task reports stay on the device
  and are read once per logging step (no host synchronisation per step);
- **checkpoints** ``checkpoint-N/``: the task's files (the weights, ``training_args``), evaluation at each save
  (``eval_results.json``, ``eval_logs.json``), and ``training_state.pt`` last (its presence marks the checkpoint
  complete): optimizer, schedule, scaler, step and every process's random states (CPU, CUDA, Python, numpy), so
  ``resume`` continues bit for bit as the uninterrupted run, dropout and sampling included. A save the options
  hold back (``EngineOptions.writes_checkpoint``: VQA's ``save_after_epoch``) evaluates and writes nothing else.
"""

from __future__ import annotations

import bisect
import contextlib
import functools
import json
import math
import os
import random
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from queue import Queue
from typing import Any, Callable, Iterator, Optional, Sequence, Union

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from ..atomic import atomic_write, atomic_write_json, make_folders
from ..errors import VinvlError
from ..textio import read_json
from .checkpoints import STATE, latest_checkpoint, load_training_state
from .options import EngineOptions
from .runtime import Runtime, autocast, stderr_log
from .task import Batch, ExampleSet, StepContext, TrainingTask

__all__ = ["DECAYS", "Engine", "capture_rng", "epoch_order", "micro_batch", "restore_rng", "rng_untouched",
           "seed_everything", "step_examples", "total_steps", "warmup_schedule"]

PathLike = Union[str, os.PathLike]


# -- data order ---------------------------------------------------------------------------------------------
def epoch_order(n: int, seed: int, epoch: int, stream: str = "order") -> list[int]:
    """The example order of an epoch (seeded by ``(seed, epoch)``, so a resumed run repeats it); ``stream``: another
    name for an order independent of the first (the extra set's)."""
    order = list(range(n))
    random.Random(f"{seed}/{stream}/{epoch}").shuffle(order)
    return order


def total_steps(n: int, opts: EngineOptions, world: int = 1) -> tuple[int, int]:
    """(optimizer steps of the run, steps per epoch) for ``n`` examples: ``max_steps`` when > 0, else
    ``num_train_epochs`` epochs of ``n // (batch_size x processes x accumulation)`` steps (the last partial
    step of an epoch is dropped)."""
    per_step = opts.batch_size * world * opts.gradient_accumulation_steps
    per_epoch = n // per_step
    if per_epoch < 1:
        raise VinvlError(f"{n} training examples, fewer than one optimizer step takes (batch size {opts.batch_size} x "
                         f"{world} process(es) x {opts.gradient_accumulation_steps} accumulation step(s))")
    if opts.max_steps > 0:
        return opts.max_steps, per_epoch
    return max(int(math.ceil(per_epoch * opts.num_train_epochs)), 1), per_epoch


def step_examples(n: int, per_step: int, seed: int, step: int, stream: str = "order") -> tuple[int, list[int]]:
    """``(epoch, example indices)`` of optimizer step ``step`` (0-based) when each step takes ``per_step``
    (``stream``: as :func:`epoch_order`'s)."""
    epoch, within = divmod(step, n // per_step)
    return epoch, epoch_order(n, seed, epoch, stream)[within * per_step : (within + 1) * per_step]


EXTRA = "extra"  # the extra set's order stream, and its micro-batch's key in the batch


def micro_batch(indices: Sequence[int], batch_size: int, world: int, rank: int, j: int) -> list[int]:
    """Micro-batch ``j`` of process ``rank`` within a step's examples."""
    start = (j * world + rank) * batch_size
    return list(indices[start : start + batch_size])


# -- random states ------------------------------------------------------------------------------------------
def seed_everything(seed: int) -> None:
    """Python's, numpy's and torch's (every device's) generators from ``seed``, as the original's ``set_seed``."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def capture_rng(device: torch.device) -> dict[str, Any]:
    """This process's random states (CPU, the device's CUDA, Python, numpy) as tensors and plain values."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(), "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore_rng(state: dict[str, Any], device: torch.device) -> None:
    """Set this process's random states to what :func:`capture_rng` returned."""
    torch.set_rng_state(state["torch"])
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


@contextlib.contextmanager
def rng_untouched(device: torch.device) -> Iterator[None]:
    """Whatever runs inside (an evaluation) leaves every random state as it found it."""
    saved = capture_rng(device)
    try:
        yield
    finally:
        restore_rng(saved, device)


# -- schedule ----------------------------------------------------------------------------------------------
DECAYS = ("linear", "constant", "steps")


def warmup_schedule(optimizer: torch.optim.Optimizer, total: int, warmup_steps: int, decay: str = "linear",
                    warmup_factor: float = 0.0, milestones: Sequence[int] = (), gamma: float = 0.1,
                    warmup_method: str = "linear") -> Any:
    """The learning rate of step ``s`` (0-based) as a factor of each group's base rate: a warm-up from
    ``warmup_factor`` over ``warmup_steps`` (``linear``: rising to 1; ``constant``: staying), then ``linear`` decay to
    0 at step ``total``, ``constant``, or ``steps``: x ``gamma`` for each milestone <= s (maskrcnn-benchmark's
    WarmupMultiStepLR, whose warm-up factor multiplies the decay's, where the other two replace it)."""
    if decay not in DECAYS:
        raise VinvlError(f"learning-rate decay {decay!r}: expected one of {', '.join(DECAYS)}")
    drops_at = sorted(int(m) for m in milestones)

    def factor(s: int) -> float:
        if s < warmup_steps:
            warm = warmup_factor if warmup_method == "constant" else \
                warmup_factor * (1 - s / warmup_steps) + s / warmup_steps
        else:
            warm = 1.0
        if decay == "steps":
            return warm * gamma ** bisect.bisect_right(drops_at, s)
        if s < warmup_steps:
            return warm
        if decay == "constant":
            return 1.0
        return max(0.0, (total - s) / max(1, total - warmup_steps))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


# -- the engine -----------------------------------------------------------------------------------------------
class _Prefetch:
    """Builds a step's micro-batches in a thread while the device computes the previous step; the examples'
    randomness is their own (seeded by seed, epoch and index), so the thread changes nothing in the numbers."""

    def __init__(self, make: Callable[[int], Any], start: int, stop: int, lock: threading.Lock, depth: int = 2) -> None:
        """``lock`` is held while a step is made (the training thread holds it to read data itself)."""
        self.queue: "Queue[Any]" = Queue(maxsize=depth)
        self.stopped = threading.Event()

        def work() -> None:
            for s in range(start, stop):
                if self.stopped.is_set():
                    return
                try:
                    with lock:
                        item: Any = ("ok", make(s))
                except BaseException as e:  # noqa: BLE001 - handed to the training thread, raised there
                    item = ("error", e)
                while not self.stopped.is_set():
                    try:
                        self.queue.put(item, timeout=0.1)
                        break
                    except Exception:  # queue full: look at `stopped` again
                        continue
                if item[0] == "error":
                    return

        self.thread = threading.Thread(target=work, daemon=True)
        self.thread.start()

    def next(self) -> Any:
        kind, value = self.queue.get()
        if kind == "error":
            raise value
        return value

    def close(self) -> None:
        self.stopped.set()
        self.thread.join(timeout=5)


def _to_device(batch: Batch, device: torch.device) -> Batch:
    """The batch's tensors on ``device`` (pinned first on CUDA, so the copy overlaps), the extra set's micro-batch
    too; other values as they are."""
    pin = device.type == "cuda"

    def move(k: str, v: Any) -> Any:
        if isinstance(v, torch.Tensor):
            return v.pin_memory().to(device, non_blocking=True) if pin else v.to(device)
        return _to_device(v, device) if k == EXTRA and isinstance(v, dict) else v

    return {k: move(k, v) for k, v in batch.items()}


@dataclass
class _Run:
    """A run between steps: what the named steps of :class:`Engine` hand each other."""

    rt: Runtime
    data: ExampleSet
    n: int  # training examples
    per_step: int  # examples per optimizer step over every process
    total: int  # optimizer steps of the run
    per_epoch: int
    model: nn.Module
    optimizer: torch.optim.Optimizer
    schedule: Any
    scaler: Optional[Any]  # fp16's gradient scaler
    extra: Optional[ExampleSet] = None  # the task's extra set, drawn beside the first
    step: int = 0  # optimizer steps done
    state: Optional[dict] = None  # the training state resumed from
    module: Optional[nn.Module] = None  # the model, or its data-parallel wrapper
    manual_sync: bool = False  # gradients averaged by hand (the task runs the model outside forward)
    args: dict[str, Any] = field(default_factory=dict)  # what training_args records
    window: dict[str, torch.Tensor] = field(default_factory=dict)  # the open logging window's sums
    window_steps: int = 0
    seen: int = 0  # examples since this process started (samples/s)
    t0: float = 0.0


class Engine:
    """Trains a task's model (see the module's description); :meth:`train` returns the last checkpoint folder."""

    def __init__(self, task: TrainingTask, options: EngineOptions, out_dir: PathLike,
                 log: Optional[Callable[[str], None]] = None,
                 callbacks: Sequence[Callable[[int], None]] = ()) -> None:
        """``callbacks``: called with the number of steps done after each optimizer step (its checkpoint, if
        any, written)."""
        self.task, self.opts, self.out = task, options.check(), Path(out_dir)
        self.log = log or stderr_log
        self.callbacks = list(callbacks)

    def autocast(self, device: torch.device) -> Any:
        """Autocast to the run's precision on ``device`` (nothing for fp32)."""
        return autocast(device, self.opts.precision)

    def train(self, resume: bool = False) -> Path:
        """Train to the last step (from ``out_dir``'s newest complete checkpoint with ``resume``)."""
        rt = Runtime.start(self.opts.device)
        try:
            folder = self._loop(self._setup(rt, resume))
        except BaseException:
            rt.close(wait=False)
            raise
        rt.close()
        return folder

    # -- the named steps of a run ---------------------------------------------------------------------------
    def _say(self, rt: Runtime) -> Callable[[str], None]:
        return self.log if rt.rank == 0 else (lambda m: None)

    def _setup(self, rt: Runtime, resume: bool) -> _Run:
        """Data, step count, model and optimiser; a resumed run's states; the logs cut back to its step. The order
        of these is part of the numbers: the model's initialisation draws from the seed, before any resumed state."""
        opts, task, say = self.opts, self.task, self._say(rt)
        data = task.train_set()
        n = len(data)
        per_step = opts.batch_size * rt.world * opts.gradient_accumulation_steps
        total, per_epoch = total_steps(n, opts, rt.world)
        extra = task.extra_set()
        if extra is not None and len(extra) < per_step:
            raise VinvlError(f"{len(extra)} extra training examples, fewer than one optimizer step takes ({per_step}: as "
                             "many as of the training examples)")
        last = latest_checkpoint(self.out) if resume else None
        if resume and last is None:
            say(f"--resume: no complete checkpoint-N/ in {self.out} yet; starting at step 0")
        seed_everything(opts.seed)  # fresh heads, dropout and sampling start from the seed, as the original's set_seed
        model = task.build_model(last).to(rt.device)
        self.model, self.runtime = model, rt  # what callbacks may look at
        optimizer, schedule = task.optimizer(model, total, rt.device.type == "cuda")
        scaler = torch.amp.GradScaler(rt.device.type) if opts.precision == "fp16" else None
        run = _Run(rt, data, n, per_step, total, per_epoch, model, optimizer, schedule, scaler, extra)
        if last is not None:
            self._load_state(run, last)
        self.out.mkdir(parents=True, exist_ok=True)
        self._trim_logs(run.step, last is not None)
        if run.state is not None:
            if run.state.get("examples_per_step", per_step) != per_step:
                say(f"{last}: saved with {run.state['examples_per_step']} examples per step, resumed with {per_step}: "
                    "the data order from here differs from the uninterrupted run's")
            say(f"resumed from {last} (step {run.step})")
        self._parallel(run)
        if run.state is not None:
            self._restore_rng(run, last)
        run.args = {**opts.to_dict(), **task.settings(), "max_steps": total, "steps_per_epoch": per_epoch,
                    "world_size": rt.world}
        model.train()
        more = f" (and {per_step} of {len(extra)} extra examples each step)" if extra is not None else ""
        say(f"training {type(task).__name__}: {n} examples{more}, {total} steps of {per_step} ({opts.batch_size} x "
            f"{rt.world} process(es) x {opts.gradient_accumulation_steps}), {per_epoch} steps per epoch, on "
            f"{rt.device} in {opts.precision}")
        return run

    def _load_state(self, run: _Run, last: Path) -> None:
        """The optimizer, schedule, scaler and step of checkpoint ``last``."""
        state = run.state = load_training_state(last)
        run.optimizer.load_state_dict(state["optimizer"])
        run.schedule.load_state_dict(state["scheduler"])
        if run.scaler is not None and state.get("scaler"):
            run.scaler.load_state_dict(state["scaler"])
        run.step = int(state["step"])

    def _parallel(self, run: _Run) -> None:
        """Data parallelism over the processes: DDP, or (for a task that runs the model outside forward, SCST's
        sampling) the same starting weights everywhere and gradients averaged by hand after each step."""
        rt, model, task = run.rt, run.model, self.task
        run.module = model
        run.manual_sync = rt.world > 1 and not task.ddp_forward
        if rt.world > 1:
            if task.ddp_forward:
                run.module = nn.parallel.DistributedDataParallel(
                    model, device_ids=[rt.device.index] if rt.device.type == "cuda" else None,
                    find_unused_parameters=task.unused_parameters)
            else:
                for p in model.state_dict().values():
                    dist.broadcast(p, 0)

    def _restore_rng(self, run: _Run, last: Optional[Path]) -> None:
        """Every process's random states as the checkpoint saved them (another number of processes: warned)."""
        rt, state = run.rt, run.state or {}
        rngs = state.get("rng") or []
        if len(rngs) == rt.world:
            restore_rng(rngs[rt.rank], rt.device)
        elif rngs:
            self._say(rt)(f"{last}: random states of {len(rngs)} process(es), resumed with {rt.world}: "
                          "dropout and sampling differ from the uninterrupted run's")
            restore_rng(rngs[min(rt.rank, len(rngs) - 1)], rt.device)

    def _batches(self, run: _Run, s: int) -> tuple[int, list[Batch]]:
        """Step ``s``'s epoch and this process's micro-batches (made in the prefetch thread), each with the extra
        set's micro-batch at the same place of that set's own order, when the task has one."""
        opts, rt = self.opts, run.rt

        def micro(data: ExampleSet, stream: str) -> tuple[int, list[Batch]]:
            epoch, idx = step_examples(len(data), run.per_step, opts.seed, s, stream)
            return epoch, [self.task.collate([data.example(i, epoch)
                                              for i in micro_batch(idx, opts.batch_size, rt.world, rt.rank, j)])
                           for j in range(opts.gradient_accumulation_steps)]

        epoch, batches = micro(run.data, "order")
        if run.extra is not None:
            for batch, extra in zip(batches, micro(run.extra, EXTRA)[1]):
                batch[EXTRA] = extra
        return epoch, batches

    def _loop(self, run: _Run) -> Path:
        """Steps to the last one; logs, saves and callbacks at their steps; returns the last checkpoint folder."""
        self._data_lock = threading.Lock()  # tokenizers and files are not shared by two threads at once
        prefetch = _Prefetch(functools.partial(self._batches, run), run.step, run.total, self._data_lock)
        bar = self._bar(run.total, run.step, run.rt.rank)
        folder = self.out / f"checkpoint-{run.step}"
        run.t0 = time.perf_counter()
        state = run.state
        if state is not None and len(state.get("log_windows") or []) == run.rt.world:  # the window the run was in
            sums, run.window_steps = state["log_windows"][run.rt.rank]
            run.window = {n: torch.tensor(v, device=run.rt.device) for n, v in sums.items()}
        try:
            while run.step < run.total:
                epoch, micro = prefetch.next()
                lr = self._step(run, epoch, micro)
                if bar is not None:
                    bar.update(1)
                if (self.opts.log_steps > 0 and run.step % self.opts.log_steps == 0) or run.step == run.total:
                    self._log_window(run, lr, bar)
                if self._saves_at(run.step, run.total, run.per_epoch):
                    if run.step == run.total or self.opts.writes_checkpoint(run.step, run.per_epoch):
                        folder = self._save(run)
                    else:  # a save the options hold back: its evaluation only (no resume point)
                        self._evaluate_only(run)
                for cb in self.callbacks:
                    cb(run.step)
        finally:
            prefetch.close()
            if bar is not None:
                bar.close()
        return folder

    def _step(self, run: _Run, epoch: int, micro: list[Batch]) -> float:
        """One optimizer step over this process's micro-batches (forward and backward, gradients averaged,
        clipped, the update); its mean figures join the log window. Returns the step's learning rate."""
        opts, rt, model, module, scaler = self.opts, run.rt, run.model, run.module, run.scaler
        k = opts.gradient_accumulation_steps
        run.optimizer.zero_grad(set_to_none=True)
        figures: dict[str, torch.Tensor] = {}
        for j, batch in enumerate(micro):
            batch = _to_device(batch, rt.device)
            ctx = StepContext(run.step, j, (run.step * k + j) * rt.world + rt.rank, epoch, model, rt.device, rt)
            quiet = module.no_sync() if (module is not model and j < k - 1) else contextlib.nullcontext()
            with quiet:
                with self.autocast(rt.device):
                    loss, more = self.task.loss(module, batch, ctx)
                scaled = loss.float() / k
                (scaler.scale(scaled) if scaler is not None else scaled).backward()
            for name, v in {"loss": loss, **more}.items():
                v = v.detach().float() if isinstance(v, torch.Tensor) else torch.tensor(float(v))
                figures[name] = figures.get(name, 0) + v.to(rt.device) / k
        if run.manual_sync:
            for p in model.parameters():
                if p.grad is not None:
                    dist.all_reduce(p.grad)
                    p.grad /= rt.world
        if scaler is not None:
            scaler.unscale_(run.optimizer)
        if opts.max_grad_norm > 0:
            nn.utils.clip_grad_norm_([p for p in model.parameters() if p.grad is not None], opts.max_grad_norm)
        lr = run.schedule.get_last_lr()[0]  # the rate of this step (logged)
        if scaler is not None:
            scaler.step(run.optimizer)
            scaler.update()
        else:
            run.optimizer.step()
        run.schedule.step()
        run.step += 1
        run.seen += run.per_step
        run.window = {name: run.window.get(name, 0) + v for name, v in figures.items()}
        run.window_steps += 1
        return lr

    def _saves_at(self, step: int, total: int, per_epoch: int) -> bool:
        s = self.opts.save_steps
        return step == total or (s > 0 and step % s == 0) or (s == 0 and step % per_epoch == 0)

    def _bar(self, total: int, start: int, rank: int) -> Any:
        if rank != 0 or not sys.stderr.isatty():
            return None
        return tqdm(total=total, initial=start, desc="training", unit="step", dynamic_ncols=True, leave=False)

    def _log_window(self, run: _Run, lr: float, bar: Any) -> None:
        """The window's mean figures over the processes: a line on the log, one in ``log.jsonl``; a new window."""
        rt, window, steps = run.rt, run.window, run.window_steps
        names = sorted(window, key=lambda x: (x != "loss", x))
        values = torch.stack([window[n] / steps for n in names]) if names else torch.zeros(0)
        rt.mean_(values)  # one collective and one host read per logging step
        run.window, run.window_steps = {}, 0
        if rt.rank != 0:
            return
        mean = dict(zip(names, values.tolist()))
        seconds = time.perf_counter() - run.t0
        shown = "  ".join(f"{n} {v:.4f}" for n, v in mean.items())
        line = f"step {run.step}/{run.total}  {shown}  lr {lr:.2e}"
        (bar.write if bar is not None else self.log)(line)
        entry = {"step": run.step, **{n: round(v, 6) for n, v in mean.items()}, "lr": lr, "seconds": round(seconds, 1),
                 "samples_per_second": round(run.seen / max(seconds, 1e-9), 2)}
        with open(self.out / "log.jsonl", "a") as f:
            f.write(json.dumps(entry) + "\n")

    def _trim_logs(self, step: int, resumed: bool) -> None:
        """A resumed run's logs keep what the uninterrupted run had logged up to its checkpoint."""

        log = self.out / "log.jsonl"
        if log.is_file():
            kept = []
            for line in log.read_text().splitlines() if resumed else []:
                try:
                    if json.loads(line)["step"] <= step:
                        kept.append(line)
                except (ValueError, KeyError, TypeError):
                    pass  # a line cut by a kill
            atomic_write(log, lambda tmp: tmp.write_text("".join(ln + "\n" for ln in kept)))
        path = self.out / "eval_logs.json"
        if path.is_file():
            entries = read_json(path, list) if resumed else []
            if not all(isinstance(e, dict) and isinstance(e.get("eval_score"), (int, float)) for e in entries):
                raise VinvlError(f"{path}: expected a list of {{step, eval_score, ...}} entries")
            atomic_write_json(path, [e for e in entries if e.get("step", 0) <= step], indent=1)

    def _save(self, run: _Run) -> Path:
        """``checkpoint-N/``: the task's files (weights, ``training_args``), the evaluation, and last
        ``training_state.pt`` (every process's random states and open log window)."""
        rt, step = run.rt, run.step
        folder = self.out / f"checkpoint-{step}"
        pending = ({n: float(v) for n, v in run.window.items()}, run.window_steps)  # the log window so far
        mine = rt.gather((capture_rng(rt.device), [pending[0], pending[1]]))
        rngs, windows = [m[0] for m in mine], [m[1] for m in mine]
        if rt.rank == 0:
            make_folders(folder)
            self.task.save_checkpoint(run.model, folder, run.args)
            self._evaluate(run, folder)
            state = {"optimizer": run.optimizer.state_dict(), "scheduler": run.schedule.state_dict(), "step": step,
                     "scaler": run.scaler.state_dict() if run.scaler is not None else None, "rng": rngs,
                     "log_windows": windows, "examples_per_step": run.per_step, "world_size": rt.world}
            # last: its presence marks a complete checkpoint
            atomic_write(folder / STATE, lambda tmp: torch.save(state, tmp))
        rt.barrier()
        return folder

    def _evaluate_only(self, run: _Run) -> None:
        """A save whose checkpoint is held back (:meth:`EngineOptions.writes_checkpoint`): the evaluation into
        ``eval_logs.json`` on rank 0, as at a save, and no checkpoint."""
        if run.rt.rank == 0:
            self._evaluate(run, None)
        run.rt.barrier()

    def _evaluate(self, run: _Run, folder: Optional[Path]) -> None:
        """The task's evaluation at a save (random states untouched): ``eval_results.json`` (in ``folder``, where a
        checkpoint is written), ``eval_logs.json``."""
        model, rt = run.model, run.rt
        was_training = model.training
        model.eval()
        with self._data_lock, rng_untouched(rt.device), torch.no_grad(), self.autocast(rt.device):
            result = self.task.evaluate(model)
        model.train(was_training)
        if result is None:
            return
        if folder is not None:
            atomic_write_json(folder / "eval_results.json", result, indent=1)
        path = self.out / "eval_logs.json"
        logs = read_json(path, list) if path.is_file() else []
        best = max([e["eval_score"] for e in logs] + [result["score"]])
        logs.append({"step": run.step, "epoch": run.step / run.per_epoch, "eval_score": result["score"],
                     "best_score": best})
        atomic_write_json(path, logs, indent=1)
        self.log(f"step {run.step}: evaluation score {result['score']:.4f} (best {best:.4f})")
