"""Tiny-preset detector: every post-processing mode, batching, bounds, attributes, checkpoint errors."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.ops import nms

from vinvl.detection import CheckpointError, Detector, target_size
from vinvl.detection.anchors import generate_cell_anchors
from vinvl.detection.postprocess import per_class_nms_mask
from vinvl.errors import VinvlError
from vinvl.labelmap import LabelMap


def smooth_image(seed: int, h: int, w: int) -> np.ndarray:
    """A deterministic RGB image of smooth blobs (structure for the RPN to respond to)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.zeros((h, w, 3))
    for _ in range(6):
        cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(8, 40)
        img += np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))[..., None] * rng.uniform(0, 255, 3)
    return np.clip(img + rng.normal(0, 4, img.shape), 0, 255).astype(np.uint8)


IMAGES = [smooth_image(0, 120, 200), smooth_image(1, 200, 120), smooth_image(2, 120, 200), smooth_image(3, 150, 151)]


def tiny(**overrides) -> Detector:
    """A tiny detector with random weights scaled so scores spread over the threshold."""
    det = Detector.from_config("tiny", seed=0, **overrides)
    with torch.no_grad():
        det.model.roi_heads.box.predictor.cls_score.weight.mul_(40)
        det.model.roi_heads.box.predictor.bbox_pred.weight.mul_(5)
        if det.model.attribute is not None:
            det.model.attribute.predictor.attr_score.weight.mul_(20)
    return det


def same(a, b, box_tol=1e-2, score_tol=1e-4) -> None:
    assert len(a) == len(b)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_allclose(a.boxes, b.boxes, atol=box_tol, rtol=0)
    np.testing.assert_allclose(a.scores, b.scores, atol=score_tol, rtol=0)
    np.testing.assert_allclose(a.features, b.features, atol=1e-4, rtol=1e-4)
    assert [x.tolist() for x in a.attr_labels] == [x.tolist() for x in b.attr_labels]


def test_target_size_examples() -> None:
    # spec/detector.md: (w x h) -> (w x h)
    assert target_size(640, 480, 320, 480) == (320, 426)
    assert target_size(427, 640, 320, 480) == (479, 320)
    assert target_size(640, 427, 600, 1000) == (600, 899)
    assert target_size(451, 300, 600, 1000) == (600, 902)
    assert target_size(1400, 260, 600, 1000) == (186, 1001)
    assert target_size(800, 600, 600, 1000) == (600, 800)


def test_cell_anchors_match_the_checkpoint_layout(shared_dir: Path) -> None:
    from tests.detection.reference import read_checksums, tensor_sha256

    sums = read_checksums(shared_dir / "reference/detector/state_dict_checksums.tsv")
    a = generate_cell_anchors(16, (32, 64, 128, 256, 512), (0.5, 1.0, 2.0))
    assert a.shape == (15, 4) and tensor_sha256(a) == sums["rpn.anchor_generator.cell_anchors.0"]
    w, h = a[:, 2] - a[:, 0] + 1, a[:, 3] - a[:, 1] + 1
    assert torch.allclose(h[:5] / w[:5], torch.full((5,), 0.5), rtol=0.05)  # ratio-major: ratio 0.5 first
    assert (w[1:5] > w[:4]).all() and torch.allclose((a[:, :2] + a[:, 2:]) / 2, torch.full((15, 2), 7.5))


@pytest.mark.parametrize("parallel", [False, True])  # True: the fixed-point form CUDA uses
@pytest.mark.parametrize("shared", [True, False])
def test_vectorised_class_nms_equals_torchvision(shared: bool, parallel: bool) -> None:
    g = torch.Generator().manual_seed(0)
    r, k = 60, 23
    xy = torch.rand((r, k if not shared else 1, 2), generator=g) * 100
    wh = torch.rand((r, k if not shared else 1, 2), generator=g) * 40 + 1
    boxes = torch.cat([xy, xy + wh], dim=2)
    boxes = boxes[:, 0] if shared else boxes
    scores = (torch.rand((r, k), generator=g) * 8).round() / 8  # many ties
    mask = per_class_nms_mask(boxes, scores, 0.3, parallel=parallel)
    for j in range(k):
        b = boxes if shared else boxes[:, j]
        expect = torch.zeros(r, dtype=torch.bool)
        expect[nms(b, scores[:, j], 0.3)] = True
        assert torch.equal(mask[:, j], expect), j


@pytest.mark.parametrize("nms_filter", [0, 1, 2])
@pytest.mark.parametrize("ignore_reg", [True, False])
@pytest.mark.parametrize("attributes", [True, False])
def test_modes_and_bounds(nms_filter: int, ignore_reg: bool, attributes: bool) -> None:
    det = tiny(nms_filter=nms_filter, ignore_box_regression=ignore_reg, attributes__enabled=attributes)
    cfg = det.config.postprocess
    results = det(IMAGES)
    for img, d in zip(IMAGES, results):
        h, w = img.shape[:2]
        assert d.image_hw == (h, w)
        assert cfg.min_detections_per_img <= len(d) <= cfg.detections_per_img or nms_filter == 0
        assert d.boxes.shape == (len(d), 4) and d.features.shape == (len(d), 128)
        assert (d.boxes[:, 0] >= 0).all() and (d.boxes[:, 2] <= w + 1e-3).all()
        assert ((d.labels >= 1) & (d.labels < 11)).all()
        if nms_filter != 0:
            assert (np.diff(d.scores) <= 0).all(), "sorted by score"
            assert (d.scores >= cfg.score_thresh).sum() >= min(len(d), len(d) - cfg.min_detections_per_img)
        if attributes:
            assert all(len(a) <= 4 and (s > 0.05).all() and (a > 0).all() for a, s in zip(d.attr_labels, d.attr_scores))
        else:
            assert all(len(a) == 0 for a in d.attr_labels)
        assert d.geometry.shape == (len(d), 6) and d.region_features().shape == (len(d), 134)
        if ignore_reg and nms_filter != 0:  # one box per proposal, each a proposal
            assert len({tuple(b) for b in d.boxes.tolist()}) == len(d)


def test_min_fill_and_threshold_retry() -> None:
    # threshold above every score: NMS_FILTER 1 fills to the minimum, NMS_FILTER 0 halves its threshold
    flat = Detector.from_config("tiny", seed=0, score_thresh=0.5)  # unscaled: every score is near 1/11
    d1 = flat(IMAGES[0])
    assert len(d1) == 3 and (d1.scores < 0.5).all()
    d0 = Detector.from_config("tiny", seed=0, score_thresh=0.5, nms_filter=0, ignore_box_regression=False)(IMAGES[0])
    assert len(d0) >= 3 and d0.scores.max() < 0.5 and d0.scores.min() > 0.25  # one halving sufficed
    few = tiny(detections_per_img=5, min_detections_per_img=2, score_thresh=0.0)(IMAGES[0])
    assert len(few) == 5


def test_filter1_picks_best_surviving_class() -> None:
    """NMS_FILTER 1 against a direct per-class loop over torchvision nms."""
    det = Detector.from_config("tiny", seed=0, score_thresh=0.15)
    with torch.no_grad():  # spread scores without saturating them (no ties)
        det.model.roi_heads.box.predictor.cls_score.weight.mul_(4)
    ((raw, rhw, _),) = det.detect_raw([IMAGES[0]], trace=True)
    logits = raw.trace["proposal_class_logits"]
    probs = torch.softmax(logits, -1)
    props = raw.trace["rpn_proposals"]
    best = torch.zeros(len(props))
    label = torch.zeros(len(props), dtype=torch.long)
    for j in range(1, probs.shape[1]):
        keep = nms(props, probs[:, j], 0.3)
        better = probs[keep, j] > best[keep]
        best[keep[better]] = probs[keep[better], j]
        label[keep[better]] = j
    order = torch.argsort(best, descending=True)
    top = order[: len(raw.labels)]
    assert len(set(best[top].tolist())) == len(top)
    assert raw.rows.tolist() == top.tolist()
    assert torch.equal(raw.labels, label[top]) and torch.equal(raw.scores, best[top])
    assert torch.equal(raw.boxes, props[top])


def test_attribute_reuse_equals_repooling() -> None:
    """With regression ignored the output boxes are proposals: reusing their pooled features equals
    re-running ROIAlign + res5 on them, as the original does."""
    det = tiny()
    x, _ = det.prepare(IMAGES[0])
    ((raw, rhw, _),) = det.detect_raw([IMAGES[0]])
    with torch.no_grad():
        c4 = det.model.backbone(x[None])
        repooled = det.model.roi_heads.box.feature_extractor(c4, [raw.boxes])
        logits = det.model.attribute.predictor(repooled, raw.labels)
    np.testing.assert_allclose(repooled.numpy(), raw.features.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(logits.numpy(), raw.attr_logits.numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("ignore_reg", [True, False])
def test_batched_equals_one_by_one(ignore_reg: bool) -> None:
    det = tiny(ignore_box_regression=ignore_reg)
    batched = det(IMAGES, batch_size=4)
    for img, b in zip(IMAGES, batched):
        same(det(img), b)
    assert det.batches([(1, 2), (2, 1), (1, 2), (3, 3), (1, 2)], 2) == [[0, 2], [1], [3], [4]]


def test_result_independent_of_batch_company() -> None:
    det = tiny()
    alone = det([IMAGES[0], IMAGES[2]], batch_size=2)
    mixed = det([IMAGES[1], IMAGES[0], IMAGES[3], IMAGES[2]], batch_size=4)
    same(alone[0], mixed[1])
    same(alone[1], mixed[3])


def test_padded_batch_option() -> None:
    """The original's mixed-size padded batches: the first (largest) image is unaffected, a padded one
    is processed on the padded canvas (its result may differ), results come back in order."""
    det = tiny(batching="padded")
    assert det.batches([(1, 2), (2, 1), (1, 2)], 2) == [[0, 1], [2]]
    one = tiny()
    padded = det([IMAGES[0], IMAGES[3]], batch_size=2)  # 96x160 and 96x96 after resizing
    same(padded[0], one(IMAGES[0]))
    assert padded[1].image_hw == (150, 151) and padded[1].resized_hw == (96, 96)
    assert (padded[1].boxes[:, 2] <= 151).all()  # clipped to its own image, not the canvas


def test_deterministic() -> None:
    det = tiny()
    a, b = det(IMAGES[1]), det(IMAGES[1])
    np.testing.assert_array_equal(a.boxes, b.boxes)
    np.testing.assert_array_equal(a.features, b.features)


def test_inputs_paths_pil_arrays(tmp_path: Path) -> None:
    from PIL import Image

    det = tiny()
    Image.fromarray(IMAGES[0]).save(tmp_path / "a.png")
    from_path, from_pil, from_array = det([tmp_path / "a.png", Image.fromarray(IMAGES[0]), IMAGES[0]])
    same(from_path, from_array)
    same(from_pil, from_array)
    with pytest.raises(VinvlError, match="no such file"):
        det(tmp_path / "missing.png")
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    with pytest.raises(VinvlError, match="bad.jpg: cannot read image"):
        det(tmp_path / "bad.jpg")


def test_names_and_rows(tmp_path: Path) -> None:
    import json

    lm = LabelMap(("__background__",) + tuple(f"c{i}" for i in range(1, 11)), ("__no_attribute__",) + tuple(f"a{i}" for i in range(1, 7)))
    det = Detector(tiny().model, labelmap=lm)
    d = det(IMAGES[0])
    assert d.names == [f"c{int(c)}" for c in d.labels]
    assert all(n == [f"a{int(a)}" for a in ids] for n, ids in zip(d.attr_names, d.attr_labels))
    row = json.loads(d.to_row("k")[1])
    assert list(row) == ["objects", "relations"] and list(row["objects"][0]) == ["rect", "bbox_id", "class", "conf", "feature"]
    full = json.loads(d.to_prediction("k").to_json(("rect", "class", "conf", "feature", "attr_labels", "attr_scores")))
    assert full["image_h"] == 120 and full["objects"][0]["attributes"] == d.attr_names[0]
    with pytest.raises(CheckpointError, match="classes"):
        Detector(tiny().model, labelmap=LabelMap(("__background__", "x")))


# -- checkpoints -------------------------------------------------------------------------
def _tiny_checkpoint() -> dict[str, torch.Tensor]:
    """A tiny model's state dict in the original layout, with the attribute head's res5 copy."""
    sd = dict(tiny().model.state_dict())
    for k in [k for k in sd if k.startswith("roi_heads.box.feature_extractor.")]:
        sd["attribute.feature_extractor." + k[len("roi_heads.box.feature_extractor.") :]] = sd[k].clone()
    return sd


def test_checkpoint_layouts(tmp_path: Path) -> None:
    sd = _tiny_checkpoint()
    torch.save({"model": sd, "iteration": 5}, tmp_path / "wrapped.pth")
    torch.save({f"module.{k}": v for k, v in sd.items()}, tmp_path / "bare_module.pth")
    ref = tiny()(IMAGES[0])
    for f in ("wrapped.pth", "bare_module.pth"):
        same(Detector.from_checkpoint(tmp_path / f, preset="tiny")(IMAGES[0]), ref)
    same(Detector.from_checkpoint(sd, preset="tiny")(IMAGES[0]), ref)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda sd: sd.pop("rpn.head.conv.weight"), "missing keys: rpn.head.conv.weight"),
        (lambda sd: sd.__setitem__("extra.weight", torch.zeros(1)), "unexpected keys: extra.weight"),
        (lambda sd: sd.__setitem__("rpn.head.conv.bias", torch.zeros(3)), r"shape mismatches: rpn.head.conv.bias \(checkpoint \(3,\), model \(64,\)\)"),
        (lambda sd: sd["attribute.feature_extractor.head.layer4.0.conv1.weight"].add_(1), "differs from roi_heads.box"),
        (lambda sd: sd.__setitem__("attribute.feature_extractor.head.layer9.weight", torch.zeros(1)), "has no twin"),
        (lambda sd: sd.__setitem__("note", "text"), "non-tensor entries"),
    ],
)
def test_checkpoint_errors(tmp_path: Path, mutate, message: str) -> None:
    sd = _tiny_checkpoint()
    mutate(sd)
    with pytest.raises(CheckpointError, match=message):
        Detector.from_checkpoint(sd, preset="tiny")


def test_checkpoint_error_lists_everything() -> None:
    sd = _tiny_checkpoint()
    sd.pop("rpn.head.conv.weight")
    sd["x.y"] = torch.zeros(1)
    sd["rpn.head.conv.bias"] = torch.zeros(3)
    with pytest.raises(CheckpointError) as e:
        Detector.from_checkpoint(sd, preset="tiny")
    msg = str(e.value)
    assert "missing keys" in msg and "unexpected keys" in msg and "shape mismatches" in msg


def test_attribute_head_hint_and_disabled() -> None:
    sd = _tiny_checkpoint()
    with pytest.raises(CheckpointError, match="checkpoint has an attribute head"):
        Detector.from_checkpoint(sd, preset="tiny", attributes__enabled=False)
    no_attr = {k: v for k, v in sd.items() if not k.startswith("attribute.")}
    d = Detector.from_checkpoint(no_attr, preset="tiny", attributes__enabled=False)(IMAGES[0])
    assert all(len(a) == 0 for a in d.attr_labels)


class _Payload:
    def __reduce__(self):  # pragma: no cover - never executed by the loader
        return (print, ("pwned",))


def test_checkpoint_files_refused(tmp_path: Path) -> None:
    torch.save({"model": _tiny_checkpoint(), "cfg": _Payload()}, tmp_path / "unsafe.pth")
    with pytest.raises(CheckpointError, match="unsafe.pth: refusing to load: the file needs unsafe unpickling"):
        Detector.from_checkpoint(tmp_path / "unsafe.pth", preset="tiny")
    (tmp_path / "junk.pth").write_bytes(b"junk")
    with pytest.raises(CheckpointError, match="junk.pth"):
        Detector.from_checkpoint(tmp_path / "junk.pth", preset="tiny")
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        Detector.from_checkpoint(tmp_path / "none.pth", preset="tiny")
    torch.save([1, 2], tmp_path / "list.pth")
    with pytest.raises(CheckpointError, match="expected a state dict"):
        Detector.from_checkpoint(tmp_path / "list.pth", preset="tiny")


def test_config_overrides() -> None:
    det = tiny(nms_filter=2, postprocess__score_thresh=0.5, min_size=64, batch_size=3)
    c = det.config
    assert (c.postprocess.nms_filter, c.postprocess.score_thresh, c.input.min_size, c.batch_size) == (2, 0.5, 64, 3)
    with pytest.raises(VinvlError, match="unknown detector setting 'nope'"):
        tiny(nope=1)
    with pytest.raises(VinvlError, match="nms_filter must be"):
        tiny(nms_filter=3)
    with pytest.raises(VinvlError, match="unknown detector preset"):
        Detector.from_config("x152")
    assert pickle.loads(pickle.dumps(c)) == c


def test_folded_bn_is_the_same_function_and_keeps_the_checkpoint_layout() -> None:
    """The default (channels-last) detector folds res5's frozen BNs into its convs: same detections and
    features as the unfolded NCHW path within float32 rounding, the state dict untouched, and loading
    new weights drops the folded copies (never stale)."""
    from vinvl.detection.backbone import Bottleneck

    weights = dict(tiny().model.state_dict())
    plain = Detector.from_checkpoint(weights, preset="tiny", channels_last=False)
    folded = Detector(Detector.from_checkpoint(weights, preset="tiny", channels_last=False).model)
    blocks = [m for m in folded.model.roi_heads.modules() if isinstance(m, Bottleneck)]
    assert blocks and all(b.folded is not None for b in blocks)
    assert all(m.folded is None for m in folded.model.backbone.modules() if isinstance(m, Bottleneck))
    assert all(m.folded is None for m in plain.model.modules() if isinstance(m, Bottleneck))
    for im in IMAGES[:2]:
        a, b = plain(im), folded(im)
        assert len(a) == len(b) > 0
        np.testing.assert_allclose(b.features, a.features, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(b.scores, a.scores, atol=1e-5)
    sd = folded.model.state_dict()
    assert sd.keys() == plain.model.state_dict().keys()
    assert all(torch.equal(v, plain.model.state_dict()[k]) for k, v in sd.items())
    folded.model.load_state_dict(sd)
    assert all(b.folded is None for b in blocks)


def test_bf16_mode_folds_every_bn_in_16_bits_and_stays_close() -> None:
    """bf16: every block folded with bf16 weights (the state dict untouched), boxes and scores in fp32,
    pooled features of the fp32 detections within a cosine of 0.999; a model handed to a new fp32
    Detector runs unfolded fp32 again."""
    from vinvl.detection.backbone import Bottleneck, Stem

    weights = dict(tiny().model.state_dict())
    ref = Detector.from_checkpoint(weights, preset="tiny")
    fast = Detector.from_checkpoint(weights, preset="tiny", dtype="bf16")
    blocks = [m for m in fast.model.modules() if isinstance(m, (Bottleneck, Stem))]
    assert blocks and all(b.folded is not None and b.folded.params[0][0].dtype == torch.bfloat16 for b in blocks)
    assert all(torch.equal(v, weights[k]) for k, v in fast.model.state_dict().items())
    a, b = ref(IMAGES[0]), fast(IMAGES[0])
    assert len(a) > 0 and len(b) > 0 and b.scores.dtype == np.float32 and b.boxes.dtype == np.float32
    x, _ = ref.prepare(IMAGES[0])
    x = x[None].contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        c4 = ref.model.backbone(x)
        props = [ref.model.rpn(c4, [tuple(x.shape[-2:])])[0][0]]
        f32 = ref.model.roi_heads.box.feature_extractor(c4, props)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            f16 = fast.model.roi_heads.box.feature_extractor(fast.model.backbone(x), props)
    cos = torch.nn.functional.cosine_similarity(f32.double(), f16.double(), dim=1)
    assert cos.min() > 0.999, cos.min()
    again = Detector(fast.model, channels_last=False)
    assert all(m.folded is None for m in again.model.modules() if isinstance(m, (Bottleneck, Stem)))
    np.testing.assert_allclose(again(IMAGES[0]).scores, a.scores, atol=1e-5)
