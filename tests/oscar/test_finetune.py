"""The shared training loop: schedule, save/log cadence (<= 0: only the last step), exact resume state."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from vinvl.oscar import OscarConfig, OscarForSequenceClassification
from vinvl.oscar.finetune import LoopConfig, epoch_chunks, latest_checkpoint, make_optimizer, train_loop


def tiny() -> OscarForSequenceClassification:
    torch.manual_seed(0)
    return OscarForSequenceClassification(OscarConfig(
        vocab_size=30, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
        max_position_embeddings=16, img_feature_dim=6, num_labels=2, hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0))


def batches(start: int):
    g = torch.Generator().manual_seed(start)
    while True:
        yield {"input_ids": torch.randint(1, 30, (4, 8), generator=g), "img_feats": torch.randn(4, 3, 6, generator=g),
               "attention_mask": torch.ones(4, 11, dtype=torch.long), "labels": torch.randint(0, 2, (4,), generator=g)}


def step(module, batch):
    out = module(**batch)
    return out.loss, {"acc": float((out.logits.argmax(1) == batch["labels"]).float().mean())}


def test_schedule_and_last_step_only_saving(tmp_path: Path) -> None:
    cfg = LoopConfig(learning_rate=1.0, warmup_steps=2, max_steps=6, save_steps=0, log_steps=0)
    _, sched = make_optimizer(tiny(), cfg)
    lrs = []
    for _ in range(6):
        lrs.append(sched.get_last_lr()[0])
        sched.optimizer.step()
        sched.step()
    assert lrs == [0.0, 0.5, 1.0, 0.75, 0.5, 0.25]
    last = train_loop(tiny(), batches, step, cfg, tmp_path / "run", log=lambda m: None, training_args={"x": 1})
    assert last.name == "checkpoint-6" and latest_checkpoint(tmp_path / "run") == last
    assert [p.name for p in (tmp_path / "run").glob("checkpoint-*")] == ["checkpoint-6"]
    log = [json.loads(x) for x in (tmp_path / "run/log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log] == [6] and "acc" in log[0]
    assert json.loads((last / "training_args.json").read_text()) == {"x": 1}
    state = torch.load(last / "training_state.pt", weights_only=True)
    assert state["step"] == 6


def test_epoch_chunks_split_global_batches_over_ranks() -> None:
    from itertools import islice

    one = list(islice(epoch_chunks(10, 4, seed=1, start=0), 5))
    r0 = list(islice(epoch_chunks(10, 2, 1, 0, 0, 2), 5))
    r1 = list(islice(epoch_chunks(10, 2, 1, 0, 1, 2), 5))
    assert [e for e, _ in one] == [0, 0, 1, 1, 2]  # 2 whole batches of 4 per epoch of 10
    assert [sorted(c) for _, c in one] == [sorted(a + b) for (_, a), (_, b) in zip(r0, r1)]  # ranks split each batch
    assert len(set(one[0][1] + one[1][1])) == 8  # no repeats within an epoch
    assert list(islice(epoch_chunks(10, 4, 1, 3), 2)) == one[3:5]  # resumable from any global batch
