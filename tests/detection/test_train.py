"""Detector training: matching and sampling, the losses, BN folding into the checkpoint layout, a short
run whose loss goes down, fine-tuning with a new class set, resume, and evaluation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from vinvl.cli import main
from vinvl.config import detector_preset
from vinvl.datasets.shapes import generate_shapes
from vinvl.detection import Detector
from vinvl.detection.detector import AttrRCNN
from vinvl.detection.losses import BELOW, BETWEEN, attribute_loss, box_iou, match, sample
from vinvl.detection.train import TrainConfig, export_state_dict, train, use_trainable_bn


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


def test_loss_goes_down_and_resume(shapes: Path, tmp_path: Path) -> None:
    torch.set_num_threads(1)
    tc = TrainConfig(iterations=30, images_per_batch=2, base_lr=0.01, warmup_iters=5, roi_batch_per_image=32,
                     trainable_bn=True, log_every=5, checkpoint_every=15, rpn_post_nms_top_n=50)
    cfg = detector_preset("tiny").replace(min_size=96, max_size=128)
    train(cfg, shapes / "dataset.yaml", tmp_path / "run", tc, log=lambda m: None)
    log = [json.loads(line) for line in (tmp_path / "run/log.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in log] == [5, 10, 15, 20, 25, 30]
    assert log[-1]["loss"] < 0.7 * log[0]["loss"], log
    for name in ("model_0000015.pth", "model_final.pth", "labelmap.json", "last_checkpoint.pth"):
        assert (tmp_path / "run" / name).is_file()
    det = Detector.from_checkpoint(tmp_path / "run/model_final.pth", preset=cfg.replace(num_classes=6, num_attributes=9),
                                   labelmap=tmp_path / "run/labelmap.json")
    assert det(shapes / "images" / "shapes_000000.png").features.shape[1] == det.model.roi_heads.box.feature_extractor.out_channels
    # resume from iteration 30 to 35 continues the log instead of starting again
    tc2 = TrainConfig(**{**tc.__dict__, "iterations": 35})
    train(cfg, shapes / "dataset.yaml", tmp_path / "run", tc2, resume=True, log=lambda m: None)
    log = [json.loads(line) for line in (tmp_path / "run/log.jsonl").read_text().splitlines()]
    assert log[-1]["iteration"] == 35 and log[-2]["iteration"] == 30


def test_finetune_with_a_new_class_set_and_eval(shapes: Path, tmp_path: Path, capsys) -> None:
    torch.set_num_threads(1)
    base = tmp_path / "base.pth"
    torch.manual_seed(0)
    torch.save({"model": export_state_dict(AttrRCNN(detector_preset("tiny")))}, base)  # 11 classes, 7 attributes
    code = main(["detector", "train", str(shapes / "dataset.yaml"), "-o", str(tmp_path / "ft"), "--preset", "tiny",
                 "--init", str(base), "--iterations", "3", "--warmup", "1", "--rois-per-image", "16",
                 "--set", "min_size=96", "--set", "max_size=128"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "re-initialised: roi_heads.box.predictor.cls_score.weight" in err and "attribute.predictor.attr_score.weight" in err
    code = main(["detector", "eval", str(shapes / "dataset.yaml"), "--weights", str(tmp_path / "ft/model_final.pth"),
                 "--preset", "tiny", "--set", "min_size=96", "--set", "max_size=128", "--json", str(tmp_path / "m.json"),
                 "--attribute-group", "colour=red,green,blue,yellow"])
    assert code == 0, capsys.readouterr().err
    m = json.loads((tmp_path / "m.json").read_text())
    assert m["images"] == 6 and m["objects"] > 6 and 0 <= m["AP50"] <= 1 and "attribute_colour_accuracy" in m
