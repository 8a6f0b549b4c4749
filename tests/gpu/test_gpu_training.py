"""GPU check of the Trainer (skipped without CUDA): every task trains a few dozen steps on CUDA in fp32 and in bf16;
the model and every batch are on the GPU, and the loss falls (SCST: its reward is finite; a policy-gradient loss
centred on the baseline has no falling trend).

    pytest tests/gpu -m gpu -q          # on a machine with a GPU (the README names this check)
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from tests.oscar.trainer_runs import TASKS, make_data, run


pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")]
STEPS = 40


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_data(tmp_path_factory.mktemp("gpu_data"))


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("task", TASKS)
def test_task_trains_on_the_gpu(data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, task: str,
                                precision: str) -> None:
    from vinvl.oscar import training
    from vinvl.training import engine

    seen: dict[str, set] = {"batches": set(), "models": set()}
    to_device = engine._to_device

    def watched(batch: dict, device: torch.device) -> dict:
        out = to_device(batch, device)
        seen["batches"] |= {v.device.type for v in out.values() if isinstance(v, torch.Tensor)}
        return out

    monkeypatch.setattr(engine, "_to_device", watched)
    trainers: list = []
    real_train = training.Trainer.train

    def keep(self, resume: bool = False):  # type: ignore[no-untyped-def]
        trainers.append(self)
        return real_train(self, resume)

    monkeypatch.setattr(training.Trainer, "train", keep)
    last = run(task, data, tmp_path / task, batch_size=8, dropout=0.0, device="cuda", precision=precision,
               max_steps=STEPS, save_steps=-1, log_steps=10)
    model = trainers[0].model
    assert {p.device.type for p in model.parameters()} == {"cuda"} and seen["batches"] == {"cuda"}
    assert trainers[0].runtime.device.type == "cuda"
    log = [json.loads(x) for x in (tmp_path / task / "log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log] == [10, 20, 30, 40]
    assert all(math.isfinite(e["loss"]) for e in log), log
    if task == "scst":
        assert all(math.isfinite(e["reward"]) for e in log), log
    else:
        assert log[-1]["loss"] < log[0]["loss"], log
    assert (last / "pytorch_model.bin").is_file()
    args = json.loads((last / "training_args.json").read_text())
    assert args["precision"] == precision and args["device"] == "cuda"
