"""AttrRCNN's one forward pass: with targets it gives exactly the losses (and gradients) of the training
forward train.py had before, without them exactly the detections of the old inference forward.

The two old paths are kept here, verbatim but for their inputs, as the reference; the recorded numbers
pin them to what the old code computed on this batch."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vinvl.config import TrainConfig, detector_preset
from vinvl.datasets.shapes import generate_shapes
from vinvl.detection import AttrRCNN, Detector, Target
from vinvl.detection.attributes import select_attributes
from vinvl.detection.box_coder import BoxCoder
from vinvl.detection.dataset import DetectionDataset, collate
from vinvl.detection.losses import attribute_loss, box_loss, rpn_loss, sample_rois
from vinvl.detection.model import RawDetections
from vinvl.detection.postprocess import select_detections
from vinvl.detection.preprocess import pad_batch
from vinvl.detection.rpn import flatten_head_output
from vinvl.detection.train import use_trainable_bn


def old_training_losses(model, samples, tc: TrainConfig, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """train.py's ``training_losses`` before the model had one forward (its loss settings now one TrainConfig)."""
    coder = BoxCoder(model.cfg.box_head.bbox_reg_weights)
    x = pad_batch([s.image for s in samples])
    sizes = [s.size for s in samples]
    gt_boxes = [s.target.boxes for s in samples]
    gt_labels = [s.target.labels for s in samples]
    gt_attrs = [s.target.attributes for s in samples]
    c4 = model.backbone(x)
    objectness, deltas = model.rpn.head(c4)
    n, _, h, w = objectness.shape
    anchors = model.rpn.anchor_generator.grid_anchors(h, w)
    obj_flat = flatten_head_output(objectness, 1).view(n, -1)
    del_flat = flatten_head_output(deltas, 4)
    loss_obj, loss_rpn_box = rpn_loss(obj_flat, del_flat, anchors, gt_boxes, sizes, tc, gen)
    with torch.no_grad():
        proposals = [p for p, _ in model.rpn.select(objectness.detach(), deltas.detach(), sizes, tc.rpn_pre_nms_top_n, tc.rpn_post_nms_top_n)]
    rois = sample_rois(proposals, gt_boxes, gt_labels, gt_attrs, coder, tc, gen)
    extractor = model.roi_heads.box.feature_extractor
    pooled = extractor(c4, rois.boxes)
    logits, box_deltas = model.roi_heads.box.predictor(pooled)
    loss_cls, loss_box = box_loss(logits, box_deltas, rois, tc)
    out = {"loss_objectness": loss_obj, "loss_rpn_box_reg": loss_rpn_box, "loss_classifier": loss_cls, "loss_box_reg": loss_box}
    if model.attribute is not None:
        pos = torch.nonzero(rois.positive).squeeze(1)
        attr_logits = model.attribute.predictor(pooled[pos], rois.labels[pos])
        out["loss_attribute"] = tc.attribute_loss_weight * attribute_loss(attr_logits, rois.attributes[pos])
    return out


@torch.no_grad()
def old_forward(self, images, image_sizes, trace=False) -> list[RawDetections]:
    """``AttrRCNN.forward`` before it took targets."""
    c4 = self.backbone(images)
    proposals = self.rpn(c4, list(image_sizes))
    boxes = [p[0] for p in proposals]
    extractor = self.roi_heads.box.feature_extractor
    pooled = extractor(c4, boxes)
    logits, deltas = self.roi_heads.box.predictor(pooled)
    logits, deltas = logits.float(), deltas.float()
    probs = F.softmax(logits, -1)
    counts = [len(b) for b in boxes]
    results = []
    for i, (pool_i, prob_i, delta_i, logit_i) in enumerate(
        zip(pooled.split(counts), probs.split(counts), deltas.split(counts), logits.split(counts))
    ):
        hw = image_sizes[i]
        cls_boxes = self.class_boxes(delta_i, boxes[i], hw)
        sel = select_detections(prob_i, cls_boxes, boxes[i], self.cfg.postprocess)
        out = RawDetections(sel.boxes, sel.labels, sel.scores, pool_i[sel.rows], prob_i[sel.rows], sel.rows)
        if self.attribute is not None:
            if self.cfg.postprocess.ignore_box_regression or len(sel.boxes) == 0:
                attr_in = out.features
            else:
                attr_in = extractor(c4[i : i + 1], [sel.boxes])
            a = self.cfg.attributes
            out.attr_logits = self.attribute.predictor(attr_in, sel.labels).float()
            out.attr_labels, out.attr_scores = select_attributes(out.attr_logits, a.threshold, a.max_per_box)
        if trace:
            out.trace = {"c4_feature": c4[i : i + 1], "rpn_proposals": boxes[i], "rpn_objectness": proposals[i][1],
                         "proposal_class_logits": logit_i, "proposal_pool5": pool_i}
        results.append(out)
    return results


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("shapes")
    generate_shapes(d, 4, seed=3, min_size=96, max_size=128)
    return d


def setup(shapes: Path, overrides: dict, train: dict, seed: int = 0):
    cfg = detector_preset("tiny").replace(min_size=96, max_size=128, num_classes=6, num_attributes=9, **overrides)
    tc = TrainConfig(**({"roi_batch_per_image": 32, "rpn_post_nms_top_n": 50} | train))
    torch.manual_seed(seed)
    model = AttrRCNN(cfg, tc)
    if tc.trainable_bn:
        use_trainable_bn(model)
    return cfg, tc, model.train(), DetectionDataset(shapes / "dataset.yaml")


def step(model, tc, samples, gen, old: bool) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    if old:
        losses = old_training_losses(model, samples, tc, gen)
    else:
        detections, losses = model(*collate(samples), generator=gen)
        assert detections == []
    model.zero_grad()
    sum(losses.values()).backward()
    grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
    with torch.no_grad():  # a plain SGD step, so the second batch runs on moved weights
        for p in model.parameters():
            if p.grad is not None:
                p -= 0.01 * p.grad
    return {k: v.detach() for k, v in losses.items()}, grads


# Recorded from the old training forward (before the refactor) on the first batch of `setup`.
RECORDED = {
    "frozen": {"loss_objectness": 0.810338020324707, "loss_rpn_box_reg": 0.025787800550460815,
               "loss_classifier": 2.1057043075561523, "loss_box_reg": 0.08663669228553772,
               "loss_attribute": 1.1596827507019043},
    "trainable_bn": {"loss_objectness": 0.7714856266975403, "loss_rpn_box_reg": 0.025584552437067032,
                     "loss_classifier": 2.13899564743042, "loss_box_reg": 0.10812408477067947,
                     "loss_attribute": 1.1668795347213745},
    "no_attributes": {"loss_objectness": 0.810338020324707, "loss_rpn_box_reg": 0.025787800550460815,
                      "loss_classifier": 2.1057043075561523, "loss_box_reg": 0.08663669228553772},
    "class_agnostic": {"loss_objectness": 0.810338020324707, "loss_rpn_box_reg": 0.025787800550460815,
                       "loss_classifier": 2.1073851585388184, "loss_box_reg": 0.067175954580307,
                       "loss_attribute": 1.065895438194275},
}
CASES = {
    "frozen": ({}, {}),
    "trainable_bn": ({}, {"trainable_bn": True}),
    "no_attributes": ({"attributes__enabled": False}, {}),
    "class_agnostic": ({"cls_agnostic_bbox_reg": True}, {"roi_batch_per_image": 16, "rpn_post_nms_top_n": 20}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_training_losses_and_gradients_equal_the_old_training_forward(shapes: Path, case: str) -> None:
    torch.set_num_threads(1)
    overrides, train = CASES[case]
    runs = []
    for old in (True, False):
        cfg, tc, model, ds = setup(shapes, overrides, train)
        flips, gen = random.Random(1), torch.Generator().manual_seed(5)
        run = []
        for batch in ([0, 1], [2, 3]):
            samples = [ds.sample(i, cfg.input, flips.random() < 0.5) for i in batch]
            run.append(step(model, tc, samples, gen, old))
        runs.append(run)
    for (old_losses, old_grads), (new_losses, new_grads) in zip(*runs):
        assert list(new_losses) == list(old_losses)  # same order, so the same total
        for k in old_losses:
            assert torch.equal(new_losses[k], old_losses[k]), k
        assert new_grads.keys() == old_grads.keys() and len(new_grads) > 10
        for k in old_grads:
            assert torch.equal(new_grads[k], old_grads[k]), k
    first = {k: v.item() for k, v in runs[0][0][0].items()}
    assert first.keys() == RECORDED[case].keys()
    np.testing.assert_allclose(list(first.values()), list(RECORDED[case].values()), rtol=1e-4)


def test_loss_settings_come_from_the_model(shapes: Path) -> None:
    torch.set_num_threads(1)
    cfg, tc, model, ds = setup(shapes, {}, {})
    samples = [ds.sample(i, cfg.input) for i in (0, 1)]
    a = model(*collate(samples), generator=torch.Generator().manual_seed(0))[1]
    model.train_config.attribute_loss_weight *= 2
    b = model(*collate(samples), generator=torch.Generator().manual_seed(0))[1]
    assert torch.equal(b["loss_classifier"], a["loss_classifier"])
    torch.testing.assert_close(b["loss_attribute"], 2 * a["loss_attribute"])
    # Losses also in eval mode (a validation loss), with gradients; detections never carry them.
    model.eval()
    _, c = model(*collate(samples), generator=torch.Generator().manual_seed(0))
    assert c["loss_objectness"].requires_grad
    raws, none = model(*collate(samples)[:2])
    assert none == {} and len(raws) == 2 and not raws[0].features.requires_grad


def test_empty_ground_truth_gives_finite_losses(shapes: Path) -> None:
    cfg, tc, model, ds = setup(shapes, {}, {})
    s = ds.sample(0, cfg.input)
    empty = Target(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long), torch.zeros(0, 1, dtype=torch.long))
    _, losses = model(s.image[None], [s.size], [empty], generator=torch.Generator().manual_seed(0))
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["loss_box_reg"].item() == 0 and losses["loss_attribute"].item() == 0
    with pytest.raises(ValueError, match="1 images but 2 targets"):
        model(s.image[None], [s.size], [empty, empty])
    with pytest.raises(ValueError, match="1 images but 2 sizes"):
        model(s.image[None], [s.size, s.size])


@pytest.mark.parametrize("overrides", [
    {}, {"nms_filter": 0}, {"nms_filter": 2}, {"ignore_box_regression": False},
    {"ignore_box_regression": False, "nms_filter": 2}, {"ignore_box_regression": False, "cls_agnostic_bbox_reg": True},
    {"attributes__enabled": False}, {"batching": "padded"},
])
@pytest.mark.parametrize("numerics", [{}, {"channels_last": False}, {"dtype": "bf16"}])
def test_detections_equal_the_old_forward(shapes: Path, overrides: dict, numerics: dict) -> None:
    det = Detector.from_config("tiny", seed=0, **numerics, **overrides)
    with torch.no_grad():  # spread the scores over the threshold, so every mode keeps boxes
        det.model.roi_heads.box.predictor.cls_score.weight.mul_(40)
        det.model.roi_heads.box.predictor.bbox_pred.weight.mul_(5)
        if det.model.attribute is not None:
            det.model.attribute.predictor.attr_score.weight.mul_(20)
    ds = DetectionDataset(shapes / "dataset.yaml")
    images = [np.asarray(ds.image(i)) for i in range(len(ds))]
    images.insert(2, images[0][:, ::-1].copy())  # a second image of one size: "same_size" batches it with the first
    new = det.detect_raw(images, batch_size=2, trace=True)
    model = det.model
    try:
        # The same Detector batching and numerics around the old forward.
        model.forward = lambda images, sizes, boxes=None, trace=False: (old_forward(model, images, sizes, trace), {})
        old = det.detect_raw(images, batch_size=2, trace=True)
    finally:
        del model.forward
    assert sum(len(r.boxes) for r, _, _ in new) > 0
    for (a, ahw, aohw), (b, bhw, bohw) in zip(new, old):
        assert (ahw, aohw) == (bhw, bohw)
        for name in ("boxes", "labels", "scores", "features", "scores_all", "rows", "attr_logits", "attr_labels", "attr_scores"):
            x, y = getattr(a, name), getattr(b, name)
            assert (x is None and y is None) or torch.equal(x, y), name
        assert a.trace.keys() == b.trace.keys() and all(torch.equal(a.trace[k], b.trace[k]) for k in a.trace)
