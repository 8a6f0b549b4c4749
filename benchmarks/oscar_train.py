"""Oscar+ training throughput through the Trainer: samples/s of BERT-base-size training steps (pretraining:
MLM + contrastive over 35 text tokens + 50 regions; captioning cross-entropy: 70 text tokens + 50 regions under
the 3-D caption mask, 3 masked tokens), in fp32 and bf16, on the CPU or a GPU; with the model FLOPs of a step
(counted once by ``torch.utils.flop_counter``) and, against a matmul peak measured in the same run on the same
device and dtype, the MFU.

Each (task, precision) trains a fresh BERT-base Oscar+ (hidden 768, 12 layers, vocabulary 30522, 2054-d regions)
on synthetic examples built by the real tensorizers in the Trainer's data thread; the first ``--warmup`` steps are
not timed (allocator, kernels), the next ``--steps`` are, with the device synchronised only at both ends.

    python benchmarks/oscar_train.py                       # CPU: batch 2, 1 + 1 steps per run (a few minutes)
    python benchmarks/oscar_train.py --device cuda         # GPU: batch 64, 5 + 20 steps per run
    python benchmarks/oscar_train.py --tasks pretrain --dtypes bf16 --batch-size 128 --steps 50
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from vinvl.oscar import OscarConfig, OscarForCaptioning, OscarForPretraining
from vinvl.oscar.options import CaptionOptions, PretrainOptions
from vinvl.oscar.tasks.base import Task
from vinvl.oscar.tasks.captioning import CaptionTask
from vinvl.oscar.tasks.pretrain import PretrainTask
from vinvl.oscar.tensorize import CaptionTensorizer, PretrainTensorizer, load_tokenizer
from vinvl.oscar.training import Trainer, resolve_device

WORDS = 30522 - 5


def bert_base() -> OscarConfig:
    """BERT-base with Oscar's region path (2054-d regions)."""
    return OscarConfig(vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                       intermediate_size=3072, max_position_embeddings=512, img_feature_dim=2054)


def tiny() -> OscarConfig:
    """A 2-layer, 64-wide model with the same vocabulary and regions: the steps of a run, in seconds (--size tiny,
    for gpu_check.sh --dry-run); its figures say nothing of BERT-base's."""
    return OscarConfig(vocab_size=30522, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                       intermediate_size=128, max_position_embeddings=512, img_feature_dim=2054)


SIZES = {"base": bert_base, "tiny": tiny}


class _Synthetic:
    """Random texts of the task's lengths through the real tensorizer; random 2054-d regions (50 per image)."""

    def __init__(self, n: int, make: Any) -> None:
        self.n, self.make = n, make

    def __len__(self) -> int:
        return self.n

    def example(self, i: int, epoch: int) -> dict[str, torch.Tensor]:
        rng = random.Random(f"{epoch}/{i}")
        g = torch.Generator().manual_seed(i)
        return self.make(rng, torch.randn(50, 2054, generator=g))


def _text(rng: random.Random, n: int) -> str:
    return " ".join(f"w{rng.randrange(WORDS)}" for _ in range(n))


class BenchPretrain(Task):
    """Pretraining's loss (:class:`PretrainTask`) on synthetic examples."""

    model_class = OscarForPretraining
    loss = PretrainTask.loss

    def __init__(self, options: PretrainOptions, tok: Any, n: int, config: OscarConfig) -> None:
        super().__init__(options, tok, model_config=config, log=lambda m: None)
        t = PretrainTensorizer(tok, 35, 50)
        self.data = _Synthetic(n, lambda rng, r: t(_text(rng, 12), _text(rng, 15), r, rng.randrange(3), rng))

    def train_set(self) -> _Synthetic:
        return self.data


class BenchCaption(Task):
    """Captioning cross-entropy (:class:`CaptionTask`'s loss) on synthetic examples."""

    model_class = OscarForCaptioning
    unused_parameters = False

    def __init__(self, options: CaptionOptions, tok: Any, n: int, config: OscarConfig) -> None:
        super().__init__(options, tok, model_config=config, log=lambda m: None)
        t = CaptionTensorizer(tok, 50, 70, 40)
        self.data = _Synthetic(n, lambda rng, r: t(_text(rng, 12), _text(rng, 15), r, rng=rng))

    def train_set(self) -> _Synthetic:
        return self.data

    collate = CaptionTask.collate

    def loss(self, module: torch.nn.Module, batch: dict, ctx: Any) -> Any:
        return CaptionTask._xe(self, module, batch, ctx)


def matmul_peak(device: torch.device, dtype: torch.dtype, seconds: float = 1.0) -> float:
    """FLOP/s of a large square matmul on ``device`` in ``dtype`` (the MFU's denominator, measured here)."""
    n = 8192 if device.type == "cuda" else 1024
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(3):
        a @ b
    sync()
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        reps += 1
        if device.type == "cuda" and reps % 10:
            continue
        sync()
    sync()
    return 2 * n**3 * reps / (time.perf_counter() - t0)


def step_flops(task: Task, batch_size: int, device: torch.device, precision: str) -> float:
    """Model FLOPs of one training step (forward + backward) of ``batch_size`` examples, counted once."""
    from torch.utils.flop_counter import FlopCounterMode

    from vinvl.oscar.training import autocast

    model = task.build_model(None).to(device).train()
    batch = {k: v.to(device) for k, v in task.collate([task.train_set().example(i, 0) for i in range(batch_size)]).items()}
    counter = FlopCounterMode(display=False)
    with counter:
        with autocast(device, precision):
            loss, _ = task.loss(model, batch, type("Ctx", (), {"step": 0, "micro": 0})())
        loss.backward()
    return float(counter.get_total_flops())


def run(kind: str, precision: str, device: torch.device, tok: Any, a: argparse.Namespace) -> dict[str, Any]:
    common = dict(batch_size=a.batch_size, max_steps=a.warmup + a.steps, save_steps=-1, log_steps=0, learning_rate=1e-4,
                  device=str(device), precision=precision, seed=1)
    n = a.batch_size * (a.warmup + a.steps)
    config = SIZES[a.size]()
    task = (BenchPretrain(PretrainOptions(**common), tok, n, config) if kind == "pretrain" else
            BenchCaption(CaptionOptions(**common), tok, n, config))
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    marks: dict[int, float] = {}

    def mark(step: int) -> None:  # the device synchronised at the window's two ends only
        if step in (a.warmup, a.warmup + a.steps):
            sync()
            marks[step] = time.perf_counter()

    with tempfile.TemporaryDirectory() as out:
        Trainer(task, task.options, out, log=lambda m: None, callbacks=[mark]).train()
    seconds = marks[a.warmup + a.steps] - marks[a.warmup]
    flops = step_flops(task, a.batch_size, device, precision)
    result = {"task": kind, "dtype": precision, "size": a.size, "device": str(device), "batch_size": a.batch_size,
              "steps_timed": a.steps, "samples_per_second": round(a.batch_size * a.steps / seconds, 2),
              "step_seconds": round(seconds / a.steps, 4), "step_tflop": round(flops / 1e12, 3),
              "achieved_tflops": round(flops * a.steps / seconds / 1e12, 3)}
    if device.type == "cuda":
        result["max_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
        torch.cuda.reset_peak_memory_stats(device)
    return result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N")
    p.add_argument("--tasks", default="pretrain,caption", help="pretrain and/or caption (default both)")
    p.add_argument("--dtypes", default="fp32,bf16", help="fp32 and/or bf16 (default both)")
    p.add_argument("--size", default="base", choices=sorted(SIZES), help="the model: BERT-base (default) or tiny")
    p.add_argument("--batch-size", type=int, help="examples per step (default 64 on a GPU, 2 on the CPU)")
    p.add_argument("--steps", type=int, help="timed steps (default 20 on a GPU, 1 on the CPU)")
    p.add_argument("--warmup", type=int, help="untimed first steps (default 5 on a GPU, 1 on the CPU)")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--no-mfu", action="store_true", help="skip the matmul peak (MFU)")
    p.add_argument("--json", type=Path, help="also write the results here")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    device = resolve_device(a.device)
    gpu = device.type == "cuda"
    a.batch_size = a.batch_size or (64 if gpu else 2)
    a.steps = a.steps or (20 if gpu else 1)
    a.warmup = a.warmup if a.warmup is not None else (5 if gpu else 1)
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] +
                                                    [f"w{i}" for i in range(WORDS)]) + "\n")
        tok = load_tokenizer(d)
    name = torch.cuda.get_device_name(device) if gpu else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {device} ({name}); batch {a.batch_size}, {a.warmup} + {a.steps} steps; torch {torch.__version__}",
          file=sys.stderr)
    peaks: dict[str, float] = {}
    results = []
    for precision in a.dtypes.split(","):
        if not a.no_mfu:
            dtype = torch.bfloat16 if precision == "bf16" else torch.float32
            peaks[precision] = matmul_peak(device, dtype)
        for kind in a.tasks.split(","):
            r = run(kind, precision, device, tok, a)
            if precision in peaks:
                r["matmul_peak_tflops"] = round(peaks[precision] / 1e12, 2)
                r["mfu"] = round(r["achieved_tflops"] * 1e12 / peaks[precision], 3)
            results.append(r)
            print(json.dumps(r), flush=True)
    for kind in a.tasks.split(","):
        by = {r["dtype"]: r for r in results if r["task"] == kind}
        if "fp32" in by and "bf16" in by:
            ratio = by["bf16"]["samples_per_second"] / by["fp32"]["samples_per_second"]
            print(f"{kind}: bf16 / fp32 = {ratio:.2f}x samples/s", file=sys.stderr)
    if a.json:
        a.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
