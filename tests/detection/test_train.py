"""Detector training through the training engine: matching and sampling, the losses, BN folding into the checkpoint
layout, the schedule, a short run whose loss goes down (checkpoints, a longer resume), fine-tuning with a new class
set (evaluation at each save, then `vinvl detector eval`), and the engine's guarantees for the detector: 2 gloo
processes under torchrun equal 1 process with the same global batch, and a run SIGKILLed mid-epoch then resumed
equals the uninterrupted run, bit for bit."""

from __future__ import annotations

import inspect
import json
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.processes import run_module
from vinvl.cli import main
from vinvl.config import TrainConfig, detector_preset
from vinvl.datasets.shapes import generate_shapes
from vinvl.detection import Detector
from vinvl.detection.detector import AttrRCNN
from vinvl.detection.losses import BELOW, BETWEEN, attribute_loss, box_iou, match, sample
from vinvl.detection.train import DetectorTask, export_state_dict, train, use_trainable_bn
from vinvl.training.task import TrainingTask

def test_iou_match_and_sample() -> None:
    a = torch.tensor([[0.0, 0, 9, 9], [0, 0, 4, 9]])
    b = torch.tensor([[0.0, 0, 9, 9], [5, 0, 14, 9], [20, 20, 29, 29]])
    iou = box_iou(a, b)
    np.testing.assert_allclose(iou.numpy(), [[1, 50 / 150, 0], [0.5, 0, 0]], rtol=1e-6)  # "+1" areas
    m = match(iou, 0.7, 0.3, allow_low_quality=False)
    assert m.tolist() == [0, BETWEEN, BELOW]
    m = match(torch.tensor([[0.5, 0.1]]), 0.7, 0.3, allow_low_quality=True)
    assert m.tolist() == [0, BELOW]  # the ground truth keeps its best prediction under 0.7
    labels = torch.tensor([1] * 10 + [0] * 100 + [-1] * 5)
    pos, neg = sample(labels, 32, 0.25, torch.Generator().manual_seed(0))
    assert len(pos) == 8 and len(neg) == 24 and (labels[pos] == 1).all() and (labels[neg] == 0).all()


def test_attribute_loss_weights_each_box_once() -> None:
    logits = torch.zeros(2, 5)
    logits[0, 1] = logits[0, 2] = 10.0
    one = attribute_loss(logits[:1], torch.tensor([[1, 2]]))
    assert one.item() == pytest.approx(-torch.log_softmax(logits[0], 0)[1].item(), rel=1e-6)
    both = attribute_loss(logits, torch.tensor([[1, 2], [0, 0]]))  # a box without attributes does not count
    assert both.item() == pytest.approx(one.item())


def test_trained_bn_folds_into_the_frozen_layout() -> None:
    """A model trained with ordinary BNs, exported, loads strictly and gives the same detections."""
    torch.manual_seed(0)
    cfg = detector_preset("tiny")
    model = use_trainable_bn(AttrRCNN(cfg))
    with torch.no_grad():  # give the BNs non-trivial statistics
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
    model.eval()
    sd = export_state_dict(model)
    assert any(k.startswith("attribute.feature_extractor.") for k in sd)
    det = Detector.from_checkpoint({"model": sd}, preset=cfg)
    x = torch.rand(1, 3, 96, 128) * 100
    with torch.no_grad():
        ref = model(x, [(96, 128)])[0][0]
        ours = det.model(x, [(96, 128)])[0][0]
    assert torch.equal(ref.labels, ours.labels)
    torch.testing.assert_close(ours.features, ref.features, rtol=1e-4, atol=1e-4)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("shapes")
    generate_shapes(d, 6, seed=3, min_size=96, max_size=128)
    return d


def test_the_detector_is_a_task_of_the_engine(shapes: Path) -> None:
    """DetectorTask has every member of the engine's protocol with its signature; its optimiser is the recipe's:
    SGD (momentum 0.9, weight decay 1e-4), warm-up from 1/3 of the rate, then x0.1 at 75% and at 92% of the steps."""
    members = [n for n, v in vars(TrainingTask).items() if inspect.isfunction(v) and not n.startswith("_")]
    assert {"train_set", "collate", "build_model", "optimizer", "loss", "evaluate", "save_checkpoint"} <= set(members)
    for name in members:
        want = list(inspect.signature(getattr(TrainingTask, name)).parameters)
        assert list(inspect.signature(getattr(DetectorTask, name)).parameters) == want, name
    assert isinstance(DetectorTask.ddp_forward, bool) and isinstance(DetectorTask.unused_parameters, bool)
    task = DetectorTask(detector_preset("tiny"), shapes / "dataset.yaml", TrainConfig(warmup_steps=10))
    opt, schedule = task.optimizer(torch.nn.Linear(2, 2), total=100, fused=False)
    assert isinstance(opt, torch.optim.SGD)
    weights, biases = opt.param_groups
    assert weights["momentum"] == biases["momentum"] == 0.9 and weights["weight_decay"] == biases["weight_decay"] == 1e-4
    assert weights["initial_lr"] == biases["initial_lr"] == 0.02  # the recipe: biases as the weights
    lrs = []
    for _ in range(100):
        lrs.append(schedule.get_last_lr()[0])
        opt.step()
        schedule.step()
    assert lrs[0] == pytest.approx(0.02 / 3) and lrs[5] == pytest.approx(0.02 * (1 / 3 + 2 / 3 * 0.5))
    assert all(lr == pytest.approx(0.02) for lr in lrs[10:75]) and all(lr == pytest.approx(0.002) for lr in lrs[75:92])
    assert all(lr == pytest.approx(0.0002) for lr in lrs[92:])


def test_loss_goes_down_checkpoints_and_a_longer_resume(shapes: Path, tmp_path: Path) -> None:
    torch.set_num_threads(1)
    tc = TrainConfig(max_steps=30, batch_size=2, learning_rate=0.01, warmup_steps=5, roi_batch_per_image=32,
                     trainable_bn=True, log_steps=5, save_steps=15, rpn_post_nms_top_n=50, device="cpu")
    cfg = detector_preset("tiny").replace(min_size=96, max_size=128)
    run = tmp_path / "run"
    final = train(cfg, shapes / "dataset.yaml", run, tc, log=lambda m: None)
    assert final == run / "model_final.pth"
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [5, 10, 15, 20, 25, 30]
    assert log[-1]["loss"] < 0.7 * log[0]["loss"], log
    for n in (15, 30):
        for name in ("model.pth", "labelmap.json", "training_args.json", "training_model.pth", "training_state.pt"):
            assert (run / f"checkpoint-{n}" / name).is_file(), (n, name)
    assert (run / "labelmap.json").is_file()
    # the released layout, the last checkpoint's weights
    assert final.read_bytes() == (run / "checkpoint-30/model.pth").read_bytes()
    assert set(torch.load(final, weights_only=True)) == {"model"}
    det = Detector.from_checkpoint(final, preset=cfg.replace(num_classes=6, num_attributes=9),
                                   labelmap=run / "labelmap.json")
    assert det(shapes / "images" / "shapes_000000.png").features.shape[1] == det.model.roi_heads.box.feature_extractor.out_channels
    # resume from step 30 to 35 continues the log instead of starting again
    tc2 = TrainConfig(**{**tc.to_dict(), "max_steps": 35})
    train(cfg, shapes / "dataset.yaml", run, tc2, resume=True, log=lambda m: None)
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log][-3:] == [25, 30, 35]
    assert json.loads((run / "checkpoint-35/training_args.json").read_text())["max_steps"] == 35


def test_finetune_with_a_new_class_set_and_eval(shapes: Path, tmp_path: Path, capsys) -> None:
    torch.set_num_threads(1)
    base = tmp_path / "base.pth"
    torch.manual_seed(0)
    torch.save({"model": export_state_dict(AttrRCNN(detector_preset("tiny")))}, base)  # 11 classes, 7 attributes
    code = main(["detector", "train", str(shapes / "dataset.yaml"), "-o", str(tmp_path / "ft"), "--preset", "tiny",
                 "--init", str(base), "--iterations", "3", "--warmup", "1", "--rois-per-image", "16",
                 "--set", "min_size=96", "--set", "max_size=128", "--eval", str(shapes / "dataset.yaml"),
                 "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "re-initialised: roi_heads.box.predictor.cls_score.weight" in err and "attribute.predictor.attr_score.weight" in err
    evals = json.loads((tmp_path / "ft/eval_logs.json").read_text())  # evaluated at the save
    result = json.loads((tmp_path / "ft/checkpoint-3/eval_results.json").read_text())
    assert [e["step"] for e in evals] == [3] and evals[0]["eval_score"] == result["score"] == result["AP50"]
    assert result["images"] == 6 and 0 <= result["score"] <= 1
    args = json.loads((tmp_path / "ft/checkpoint-3/training_args.json").read_text())
    assert args["init"] == str(base) and args["detector"]["box_head"]["num_classes"] == 6
    code = main(["detector", "eval", str(shapes / "dataset.yaml"), "--weights", str(tmp_path / "ft/model_final.pth"),
                 "--preset", "tiny", "--set", "min_size=96", "--set", "max_size=128", "--json", str(tmp_path / "m.json"),
                 "--attribute-group", "colour=red,green,blue,yellow"])
    assert code == 0, capsys.readouterr().err
    m = json.loads((tmp_path / "m.json").read_text())
    assert m["images"] == 6 and m["objects"] > 6 and 0 <= m["AP50"] <= 1 and "attribute_colour_accuracy" in m


# -- the engine's guarantees, on `vinvl detector train` itself -------------------------------------------------------
TINY_RUN = ["--preset", "tiny", "--set", "min_size=96", "--set", "max_size=128", "--batch-size", "1", "--warmup", "1",
            "--rois-per-image", "16", "--device", "cpu", "--threads", "1", "--log-every", "2"]


def detector_train(data: Path, out: Path, *more: str, world: int = 1, kill_at: int = 0) -> subprocess.CompletedProcess:
    """`vinvl detector train` in a fresh interpreter (one thread, like every run compared), under torchrun with
    ``world`` > 1, or SIGKILLed right after step ``kill_at`` (tests.detection.train_runs)."""
    args = [str(data / "dataset.yaml"), "-o", str(out), *TINY_RUN, *more]
    if kill_at:
        return run_module("tests.detection.train_runs", str(kill_at), *args)
    return run_module("vinvl", "detector", "train", *args, world=world, timeout=600)


def weights(path: Path) -> dict[str, torch.Tensor]:
    """A checkpoint file's state dict (``{'model': sd}`` unwrapped)."""
    sd = torch.load(path, map_location="cpu", weights_only=True)
    return sd.get("model", sd)


def log_figures(run: Path) -> list[dict]:
    """``log.jsonl`` without its timings."""
    return [{k: v for k, v in json.loads(x).items() if k not in ("seconds", "samples_per_second")}
            for x in (run / "log.jsonl").read_text().splitlines()]


BN_STATISTICS = ("running_mean", "running_var", "num_batches_tracked")


@pytest.mark.parametrize("bn", ["frozen", "trainable"])
def test_two_gloo_processes_equal_one_process_with_the_same_global_batch(shapes: Path, tmp_path: Path, bn: str) -> None:
    """`torchrun --nproc_per_node 2 -m vinvl detector train` with --batch-size 1 equals one process with --batch-size 1
    --gradient-accumulation-steps 2 (2 images a step either way), bit for bit: the same micro-batches, each sampled
    from the same seed; each process's loss is its own images', and DDP's halving of the gradients is exact in
    floating point. One process with --batch-size 2 is another computation, as in maskrcnn-benchmark (each GPU's loss
    is over its own images): the RPN's and the box head's losses are normalised by the samples of the whole batch,
    the images are padded to the batch's largest, and the two images' proposals are sampled from one generator.
    With trainable BNs every trained weight is equal; the BNs' running statistics are not (DDP hands rank 0's to
    every process at each forward, so they follow rank 0's images only)."""
    more = ["--iterations", "4", "--checkpoint-every", "2"] + (["--trainable-bn"] if bn == "trainable" else [])
    ddp = detector_train(shapes, tmp_path / "ddp", *more, world=2)
    assert ddp.returncode == 0, ddp.stderr[-5000:]
    acc = detector_train(shapes, tmp_path / "acc", *more, "--gradient-accumulation-steps", "2")
    assert acc.returncode == 0, acc.stderr[-3000:]
    name = "training_model.pth" if bn == "trainable" else "model.pth"
    wd, wa = (weights(tmp_path / run / "checkpoint-4" / name) for run in ("ddp", "acc"))
    w2 = weights(tmp_path / "ddp/checkpoint-2" / name)
    trained = [k for k in wd if not k.endswith(BN_STATISTICS)]
    assert len(trained) > 50 and max(float((wd[k] - w2[k]).abs().max()) for k in trained) > 1e-3  # it learnt
    compared = trained if bn == "trainable" else list(wd)
    assert wd.keys() == wa.keys() and [k for k in compared if not torch.equal(wd[k], wa[k])] == []
    if bn == "frozen":  # and what the run hands on, in the released layout
        fd, fa = (weights(tmp_path / run / "model_final.pth") for run in ("ddp", "acc"))
        assert fd.keys() == fa.keys() and all(torch.equal(fd[k], fa[k]) for k in fd)
    state = torch.load(tmp_path / "ddp/checkpoint-4/training_state.pt", weights_only=True)
    assert state["world_size"] == 2 and len(state["rng"]) == 2 and state["examples_per_step"] == 2
    args = json.loads((tmp_path / "ddp/checkpoint-4/training_args.json").read_text())
    assert args["world_size"] == 2 and args["steps_per_epoch"] == 3
    ld, la = log_figures(tmp_path / "ddp"), log_figures(tmp_path / "acc")
    assert [e["step"] for e in ld] == [e["step"] for e in la] == [2, 4]
    assert all(abs(x[k] - y[k]) < 1e-5 for x, y in zip(ld, la) for k in x), (ld, la)


@pytest.mark.parametrize("bn", ["frozen", "trainable"])
def test_killed_mid_epoch_and_resumed_equals_the_uninterrupted_run(shapes: Path, tmp_path: Path, bn: str) -> None:
    """8 steps of 1 image (6 steps an epoch), a checkpoint every 3: SIGKILL right after step 5 (checkpoint-3 written,
    the epoch not over), then `--resume`: the weights (with trainable BNs also their unfolded statistics), the
    momentum buffers and the logged figures equal the uninterrupted run's exactly."""
    more = ["--iterations", "8", "--checkpoint-every", "3"] + (["--trainable-bn"] if bn == "trainable" else [])
    full = detector_train(shapes, tmp_path / "full", *more)
    assert full.returncode == 0, full.stderr[-3000:]
    cut = detector_train(shapes, tmp_path / "cut", *more, kill_at=5)
    assert cut.returncode == -signal.SIGKILL, cut.stderr[-3000:]
    run = tmp_path / "cut"
    assert (run / "checkpoint-3/training_state.pt").is_file() and not (run / "checkpoint-6").exists()
    assert not (run / "model_final.pth").exists() and [e["step"] for e in log_figures(run)] == [2, 4]
    again = detector_train(shapes, tmp_path / "cut", *more, "--resume")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resumed from" in again.stderr and "(step 3)" in again.stderr
    a, b = tmp_path / "full", run
    names = ["model_final.pth", "checkpoint-8/model.pth"] + (["checkpoint-8/training_model.pth"] if bn == "trainable" else [])
    for name in names:
        wa, wb = weights(a / name), weights(b / name)
        assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa), name
    sa, sb = (torch.load(d / "checkpoint-8/training_state.pt", weights_only=True) for d in (a, b))
    assert sa["optimizer"]["state"].keys() == sb["optimizer"]["state"].keys()
    for i, st in sa["optimizer"]["state"].items():
        assert torch.equal(st["momentum_buffer"], sb["optimizer"]["state"][i]["momentum_buffer"])
    assert log_figures(a) == log_figures(b)


def test_a_run_folder_of_the_old_loop_is_refused_on_resume(tmp_path: Path) -> None:
    """`--resume` on a folder the detector's own loop wrote (last_checkpoint.pth, no checkpoint-N/) is one line
    naming the file and the way on, before any data is read (that loop's state cannot resume exactly)."""
    from vinvl.detection.train import train
    from vinvl.errors import VinvlError

    (tmp_path / "last_checkpoint.pth").write_bytes(b"old")
    with pytest.raises(VinvlError, match=r"last_checkpoint\.pth: a run of vinvl detector train before .* --init"):
        train("tiny", tmp_path / "missing.yaml", tmp_path, resume=True)


def _original_lr(base: float, s: int, milestones: list, gamma: float, factor: float, warmup: int, method: str) -> float:
    """maskrcnn-benchmark's WarmupMultiStepLR.get_lr at last_epoch ``s``, written out from its code."""
    import bisect

    warm = 1.0
    if s < warmup:
        warm = factor if method == "constant" else factor * (1 - s / warmup) + s / warmup
    return base * warm * gamma ** bisect.bisect_right(milestones, s)


@pytest.mark.parametrize("method", ["linear", "constant"])
def test_the_original_solver_schedule_and_bias_groups(shapes: Path, method: str) -> None:
    """SOLVER.STEPS (absolute, a step from which the rate drops: bisect_right), WARMUP_FACTOR/ITERS/METHOD, GAMMA,
    BIAS_LR_FACTOR and WEIGHT_DECAY_BIAS give, at every step, the rates the original's make_optimizer +
    WarmupMultiStepLR give (its formulas written out above), for weights and biases apart."""
    o = TrainConfig(learning_rate=0.01, warmup_steps=7, warmup_factor=0.25, warmup_method=method, lr_steps=(5, 20, 20, 31),
                    gamma=0.5, bias_lr_factor=2.0, weight_decay=5e-4, weight_decay_bias=0.0, max_steps=40)
    task = DetectorTask(detector_preset("tiny"), shapes / "dataset.yaml", o)
    opt, schedule = task.optimizer(torch.nn.Linear(2, 2), total=40, fused=False)
    weights, biases = opt.param_groups
    assert (weights["weight_decay"], biases["weight_decay"]) == (5e-4, 0.0)
    for s in range(40):
        w, b = schedule.get_last_lr()
        assert w == pytest.approx(_original_lr(0.01, s, [5, 20, 20, 31], 0.5, 0.25, 7, method), rel=1e-12), s
        assert b == pytest.approx(_original_lr(0.02, s, [5, 20, 20, 31], 0.5, 0.25, 7, method), rel=1e-12), s
        opt.step()
        schedule.step()
    assert TrainConfig().milestones(3000) == (2250, 2760)  # vinvl's recipe: 75% and 92%


def test_frozen_stages_and_training_sizes(shapes: Path) -> None:
    """FREEZE_CONV_BODY_AT k: the stem and layer1 .. layer{k-1} get no gradient (the rest does); MIN_SIZE_TRAIN with
    several sizes draws one per image and epoch (seeded, so a resumed run draws the same), MAX_SIZE_TRAIN caps."""
    from vinvl.detection.train import freeze_stages
    from vinvl.detection.model import AttrRCNN

    model = AttrRCNN(detector_preset("tiny"))
    freeze_stages(model, 2)
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen and all(n.startswith(("backbone.body.stem.", "backbone.body.layer1.")) for n in frozen)
    assert any(n.startswith("backbone.body.layer1.") for n in frozen)
    assert all(p.requires_grad for n, p in model.named_parameters() if n.startswith("backbone.body.layer2."))
    o = TrainConfig(min_size_train=(64, 96, 128), max_size_train=150)
    task = DetectorTask(detector_preset("tiny"), shapes / "dataset.yaml", o)
    data = task.train_set()
    sizes = [data.example(i, e).size for i in range(len(data)) for e in range(3)]
    assert all(min(s) in (64, 96, 128) or max(s) >= 149 for s in sizes), sizes  # a shorter side drawn, or capped
    assert len({min(s) for s in sizes if min(s) in (64, 96, 128)}) > 1
    assert data.example(2, 1).size == data.example(2, 1).size
    assert max(max(data.example(i, 0).size) for i in range(len(data))) <= 150


ORIGINAL_TRAINING = """\
MODEL:
  META_ARCHITECTURE: "AttrRCNN"
  BACKBONE: {{CONV_BODY: "R-50-C4", FREEZE_CONV_BODY_AT: 2}}
  RESNETS: {{STEM_OUT_CHANNELS: 8, RES2_OUT_CHANNELS: 16, NUM_GROUPS: 2, WIDTH_PER_GROUP: 8,
            BACKBONE_OUT_CHANNELS: 64, STRIDE_IN_1X1: False}}
  RPN: {{PRE_NMS_TOP_N_TRAIN: 200, POST_NMS_TOP_N_TRAIN: 30, BATCH_SIZE_PER_IMAGE: 64}}
  ROI_HEADS: {{BATCH_SIZE_PER_IMAGE: 16}}
  ROI_BOX_HEAD: {{NUM_CLASSES: {classes}}}
  ROI_ATTRIBUTE_HEAD: {{NUM_ATTRIBUTES: {attributes}}}
  ATTRIBUTE_ON: True
  DEVICE: cpu
INPUT: {{MIN_SIZE_TRAIN: [80, 96], MAX_SIZE_TRAIN: 128, MIN_SIZE_TEST: 96, MAX_SIZE_TEST: 128}}
DATA_DIR: "{data}"
DATASETS: {{TRAIN: ["dataset.yaml"]}}
SOLVER: {{BASE_LR: 0.005, MAX_ITER: 4, STEPS: [3], WARMUP_ITERS: 2, IMS_PER_BATCH: 1, CHECKPOINT_PERIOD: 2}}
OUTPUT_DIR: "{out}"
"""


def _original_yaml(shapes: Path, tmp_path: Path, **change: int) -> Path:
    from vinvl.labelmap import LabelMap

    lm = LabelMap.load(shapes / "labelmap.json")
    values = {"classes": lm.num_classes, "attributes": lm.num_attributes, "data": shapes, "out": tmp_path / "run",
              **change}
    path = tmp_path / "train.yaml"
    path.write_text(ORIGINAL_TRAINING.format(**values))
    return path


def test_the_original_form_trains_as_train_sg_net(shapes: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """`vinvl detector train --config-file F.yaml KEY VALUE` (tools/train_sg_net.py's form): the yaml's SOLVER keys, the
    training sizes, the frozen stages and the sampling keys become the run's settings (recorded), OUTPUT_DIR is the
    run folder, CHECKPOINT_PERIOD the checkpoints; the stem and layer1 (FREEZE_CONV_BODY_AT 2) do not move while
    layer2 does; no gradient clipping, as make_optimizer."""
    yaml_path = _original_yaml(shapes, tmp_path)
    code = main(["detector", "train", "--config-file", str(yaml_path), "SOLVER.BIAS_LR_FACTOR", "3", "--threads", "1"])
    assert code == 0, capsys.readouterr().err
    run = tmp_path / "run"
    assert (run / "model_final.pth").is_file() and (run / "checkpoint-2").is_dir() and (run / "checkpoint-4").is_dir()
    args = json.loads((run / "checkpoint-4/training_args.json").read_text())
    want = {"learning_rate": 0.005, "lr_steps": [3], "warmup_steps": 2, "bias_lr_factor": 3, "weight_decay": 5e-4,
            "weight_decay_bias": 0, "max_steps": 4, "save_steps": 2, "freeze_at": 2, "max_grad_norm": 0.0,
            "min_size_train": [80, 96], "max_size_train": 128, "rpn_post_nms_top_n": 30, "rpn_batch_per_image": 64,
            "roi_batch_per_image": 16, "batch_size": 1, "ims_per_batch": 1, "momentum": 0.9, "seed": 1000}
    assert {k: args[k] for k in want} == want
    w2, w4 = weights(run / "checkpoint-2/model.pth"), weights(run / "checkpoint-4/model.pth")
    stem = [k for k in w2 if k.startswith(("backbone.body.stem.", "backbone.body.layer1.")) and k.endswith("weight")]
    layer2 = [k for k in w2 if k.startswith("backbone.body.layer2.") and "conv" in k]
    assert stem and all(torch.equal(w2[k], w4[k]) for k in stem)
    assert layer2 and any(not torch.equal(w2[k], w4[k]) for k in layer2)


@pytest.mark.parametrize("extra, named", [
    (["INPUT.BRIGHTNESS", "0.2"], "INPUT.BRIGHTNESS 0.2 is not supported for training"),
    (["DATASETS.TRAIN", "('a.yaml', 'b.yaml')"], "DATASETS.TRAIN"),
    (["DATASETS.TRAIN", "()"], "DATASETS.TRAIN names no training dataset yaml"),
    (["SOLVER.TEST_PERIOD", "3"], "SOLVER.TEST_PERIOD 3"),
    (["SOLVER.IMS_PER_BATCH", "2"], "DATALOADER.ASPECT_RATIO_GROUPING True"),
    (["SOLVER.WARMUP_METHOD", "'cosine'"], "warmup_method 'cosine'"),
    (["MODEL.ROI_BOX_HEAD.NUM_CLASSES", "9"], "MODEL.ROI_BOX_HEAD.NUM_CLASSES 9: the label map"),
    (["--lr", "0.1"], "--lr: the original form takes its settings"),
])
def test_the_original_form_refuses_by_name(shapes: Path, tmp_path: Path, capsys: pytest.CaptureFixture, extra: list,
                                           named: str) -> None:
    """What vinvl cannot honour is one line naming the key (or the native option), exit 2, before any step."""
    yaml_path = _original_yaml(shapes, tmp_path)
    assert main(["detector", "train", "--config-file", str(yaml_path), *extra]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and named in err, err
    assert not (tmp_path / "run" / "checkpoint-2").exists()
