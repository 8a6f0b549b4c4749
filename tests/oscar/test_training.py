"""The Trainer: one data order for any number of processes, one step count, the save/log cadence, a run killed
mid-epoch (SIGKILL) and resumed equals the uninterrupted run bit for bit with dropout on, and 2 gloo processes
equal 1 process with the same micro-batches, for every task."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import pytest
import torch

from tests.oscar.trainer_runs import DATA_PARALLEL_TASKS, MAX_STEPS, MEAN_OVER_EXAMPLES, SAVE_STEPS, TASKS, make_data, weights
from tests.oscar.model_tester import tiny_config
from tests.processes import run_module
from vinvl.errors import VinvlError
from vinvl.oscar import OscarForSequenceClassification
from vinvl.oscar.options import TrainingOptions
from vinvl.oscar.tasks.base import Task
from vinvl.oscar.training import Trainer, micro_batch, step_examples, total_steps


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_data(tmp_path_factory.mktemp("trainer_data"))


def script(data: Path, out: Path, mode: str, tasks: str, *more: str, world: int = 1) -> subprocess.CompletedProcess:
    """tests.oscar.trainer_runs in a fresh interpreter (one thread, like every run compared), or under torchrun."""
    return run_module("tests.oscar.trainer_runs", str(data), str(out), mode, tasks, *more, world=world)


# -- data order and step count ------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [32, 37, 101])
def test_one_data_order_for_any_split_over_processes(n: int) -> None:
    """N processes x k accumulation steps see exactly the micro-batches of 1 process x N*k; an epoch never repeats
    an example; the order of any step is known without the steps before it (resume)."""
    bs = 4
    for step in range(3 * (n // 8)):
        epoch, idx = step_examples(n, 8, seed=5, step=step)
        assert epoch == step // (n // 8) and len(idx) == 8
        one = [micro_batch(idx, bs, 1, 0, j) for j in range(2)]  # 1 process, 2 micro-batches
        two = [micro_batch(idx, bs, 2, r, 0) for r in range(2)]  # 2 processes, 1 each
        assert one == two and sorted(sum(one, [])) == sorted(idx)
    for epoch in range(3):
        seen = sum((step_examples(n, 8, 5, epoch * (n // 8) + s)[1] for s in range(n // 8)), [])
        assert len(seen) == len(set(seen)) == (n // 8) * 8
    assert step_examples(n, 8, 5, 7) == step_examples(n, 8, 5, 7) and step_examples(n, 8, 6, 0) != step_examples(n, 8, 5, 0)


def test_one_step_count() -> None:
    o = TrainingOptions(batch_size=4, gradient_accumulation_steps=2, num_train_epochs=2.5)
    assert total_steps(100, o, world=1) == (30, 12)  # 100 // 8 = 12 steps per epoch, 2.5 epochs
    assert total_steps(100, o, world=2) == (15, 6)
    assert total_steps(100, TrainingOptions(batch_size=4, max_steps=7), 1) == (7, 25)
    with pytest.raises(VinvlError, match="7 training examples, fewer than one optimizer step takes"):
        total_steps(7, o, world=1)


# -- cadence, on a minimal task ---------------------------------------------------------------------------
class _Examples:
    def __init__(self, n: int) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = [(torch.randint(1, 30, (8,), generator=g), torch.randn(3, 6, generator=g), int(torch.randint(0, 2, (1,))))
                  for _ in range(n)]

    def __len__(self) -> int:
        return len(self.x)

    def example(self, i: int, epoch: int) -> dict:
        ids, feats, label = self.x[i]
        return {"input_ids": ids, "img_feats": feats, "attention_mask": torch.ones(11, dtype=torch.long),
                "labels": torch.tensor(label)}


class _Tiny(Task):
    model_class = OscarForSequenceClassification

    def __init__(self, options: TrainingOptions, n: int = 20) -> None:
        config = tiny_config(vocab_size=30, max_position_embeddings=16, img_feature_dim=6, num_labels=2)
        super().__init__(options, None, model_config=config, log=lambda m: None)
        self.examples = _Examples(n)
        self.evaluated: list[int] = []

    def train_set(self) -> _Examples:
        return self.examples

    def evaluate(self, model: torch.nn.Module) -> dict:
        self.evaluated.append(len(self.evaluated))
        return {"score": 0.5 + 0.1 * len(self.evaluated)}


@pytest.mark.parametrize("save_steps, saved", [(0, [5, 10, 12]), (-1, [12]), (4, [4, 8, 12])])
def test_save_and_log_cadence(tmp_path: Path, save_steps: int, saved: list[int]) -> None:
    """save_steps N > 0 every N steps, 0 every epoch (5 steps of 4 here), -1 the last only; the last step always;
    each save evaluates (eval_logs.json); log_steps 0 logs the last step only."""
    torch.set_num_threads(1)
    opts = TrainingOptions(batch_size=4, max_steps=12, save_steps=save_steps, log_steps=0, learning_rate=1.0,
                           warmup_steps=2, device="cpu")
    task = _Tiny(opts)
    last = Trainer(task, opts, tmp_path, log=lambda m: None).train()
    assert last.name == "checkpoint-12"
    assert sorted(int(p.name.split("-")[1]) for p in tmp_path.glob("checkpoint-*")) == saved
    log = [json.loads(x) for x in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log] == [12] and log[0]["lr"] == pytest.approx(0.1) and "samples_per_second" in log[0]
    evals = json.loads((tmp_path / "eval_logs.json").read_text())
    assert [e["step"] for e in evals] == saved and evals[-1]["best_score"] == pytest.approx(0.5 + 0.1 * len(saved))
    state = torch.load(last / "training_state.pt", weights_only=True)
    assert state["step"] == 12 and len(state["rng"]) == 1 and set(state["rng"][0]) == {"torch", "python", "numpy"}
    args = json.loads((last / "training_args.json").read_text())
    assert args["max_steps"] == 12 and args["steps_per_epoch"] == 5 and args["world_size"] == 1


def test_schedule(tmp_path: Path) -> None:
    from vinvl.oscar.training import make_optimizer

    opts = TrainingOptions(learning_rate=1.0, warmup_steps=2)
    _, sched = make_optimizer(_Tiny(opts).build_model(None), opts, total=6)
    lrs = []
    for _ in range(6):
        lrs.append(sched.get_last_lr()[0])
        sched.optimizer.step()
        sched.step()
    assert lrs == [0.0, 0.5, 1.0, 0.75, 0.5, 0.25]


# -- exact resume after a kill --------------------------------------------------------------------------
@pytest.mark.parametrize("task", [t if t in ("pretrain", "vqa") else pytest.param(t, marks=pytest.mark.slow) for t in TASKS])
def test_killed_mid_epoch_and_resumed_equals_the_uninterrupted_run(data: Path, tmp_path: Path, task: str) -> None:
    """Dropout on (0.1): SIGKILL right after step 5 (checkpoint-3 written, the epoch not over), resume: the
    weights, the optimizer's moments and the logged figures equal the uninterrupted run's exactly."""
    full = script(data, tmp_path / "full", "full", task)
    assert full.returncode == 0, full.stderr[-3000:]
    cut = script(data, tmp_path / "cut", "kill", task, "--kill-at", "5")
    assert cut.returncode == -signal.SIGKILL, cut.stderr[-3000:]
    run = tmp_path / "cut" / task
    assert (run / f"checkpoint-{SAVE_STEPS}/training_state.pt").is_file() and not (run / f"checkpoint-{MAX_STEPS}").exists()
    assert [json.loads(x)["step"] for x in (run / "log.jsonl").read_text().splitlines()] == [2, 4]  # logged past it
    again = script(data, tmp_path / "cut", "resume", task)
    assert again.returncode == 0, again.stderr[-3000:]
    a, b = tmp_path / "full" / task, run
    wa, wb = weights(a / f"checkpoint-{MAX_STEPS}"), weights(b / f"checkpoint-{MAX_STEPS}")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa), task
    sa = torch.load(a / f"checkpoint-{MAX_STEPS}/training_state.pt", weights_only=True)
    sb = torch.load(b / f"checkpoint-{MAX_STEPS}/training_state.pt", weights_only=True)
    for i, st in sa["optimizer"]["state"].items():
        assert torch.equal(st["exp_avg"], sb["optimizer"]["state"][i]["exp_avg"])
    la, lb = ((d / "log.jsonl").read_text() for d in (a, b))
    strip = lambda text: [{k: v for k, v in json.loads(x).items() if k not in ("seconds", "samples_per_second")}  # noqa: E731
                          for x in text.splitlines()]
    assert strip(la) == strip(lb)
    if (a / "eval_logs.json").is_file():
        assert json.loads((a / "eval_logs.json").read_text()) == json.loads((b / "eval_logs.json").read_text())


# -- data parallel ----------------------------------------------------------------------------------------
@pytest.mark.slow
def test_two_gloo_processes_equal_one(data: Path, tmp_path: Path) -> None:
    """Every task, dropout off: 2 processes x batch 4 equal 1 process x batch 4 x 2 accumulation steps bit for bit
    (the same micro-batches; the original's per-process loss means; halving is exact in floating point); for the
    losses that are means over examples also 1 process x batch 8, to 5e-4 (float sums in another order, which AdamW's
    division by the root of the second moment magnifies where a gradient entry is near zero: measured up to 1.2e-4 on
    an AVX-512/AMX CPU, 1e-4 on an AVX-512 one; 8 AdamW steps of lr 1e-3 move the weights by up to 8e-3)."""
    tasks = ",".join(DATA_PARALLEL_TASKS)
    ddp = script(data, tmp_path / "ddp", "full", tasks, "--dropout", "0", world=2)
    assert ddp.returncode == 0, ddp.stderr[-5000:]
    acc = script(data, tmp_path / "acc", "full", tasks, "--dropout", "0", "--accumulation", "2")
    assert acc.returncode == 0, acc.stderr[-3000:]
    big = script(data, tmp_path / "big", "full", ",".join(MEAN_OVER_EXAMPLES), "--dropout", "0", "--batch-size", "8")
    assert big.returncode == 0, big.stderr[-3000:]
    worst: dict[tuple[str, str], float] = {}
    for task in DATA_PARALLEL_TASKS:
        wd = weights(tmp_path / "ddp" / task / f"checkpoint-{MAX_STEPS}")
        w0 = weights(tmp_path / "ddp" / task / f"checkpoint-{SAVE_STEPS}")
        assert max(float((wd[k] - w0[k]).abs().max()) for k in wd) > 1e-3  # the runs did move the weights
        others = [tmp_path / "acc"] + ([tmp_path / "big"] if task in MEAN_OVER_EXAMPLES else [])
        for other in others:
            wo = weights(other / task / f"checkpoint-{MAX_STEPS}")
            worst[task, other.name] = max(float((wd[k] - wo[k]).abs().max()) for k in wd)
        args = json.loads((tmp_path / "ddp" / task / f"checkpoint-{MAX_STEPS}/training_args.json").read_text())
        assert args["world_size"] == 2
        state = torch.load(tmp_path / "ddp" / task / f"checkpoint-{MAX_STEPS}/training_state.pt", weights_only=True)
        assert len(state["rng"]) == 2  # each process's random states
        ld = [json.loads(x) for x in (tmp_path / "ddp" / task / "log.jsonl").read_text().splitlines()]
        la = [json.loads(x) for x in (tmp_path / "acc" / task / "log.jsonl").read_text().splitlines()]
        assert [e["step"] for e in ld] == [e["step"] for e in la]
        assert all(abs(x["loss"] - y["loss"]) < 1e-4 for x, y in zip(ld, la)), (task, ld, la)
    print("largest weight differences:", worst)
    assert all(v == 0 for (_, other), v in worst.items() if other == "acc"), worst
    assert all(v < 5e-4 for v in worst.values()), worst
