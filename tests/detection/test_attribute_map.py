"""The original's VG evaluation (scene_graph_benchmark's vg_eval.py, run by tools/test_sg_net.py): VOC-style object
mAP and attribute mAP on ground-truth boxes. Expectations are worked out by hand from the original's code path."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from vinvl.cli import main
from vinvl.config import detector_preset
from vinvl.datasets.shapes import generate_shapes, shapes_labelmap
from vinvl.detection import Detector
from vinvl.detection.dataset import DetectionDataset
from vinvl.detection.detector import Detections
from vinvl.detection.evaluate import clip_to_image, evaluate, voc_ap, voc_map
from vinvl.detection.model import AttrRCNN


def _f(*rows: list[float]) -> np.ndarray:
    return np.array(rows, dtype=np.float32).reshape(-1, 4)


def _obj(boxes: np.ndarray, labels: list[int], scores: list[float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return boxes, np.array(labels, dtype=np.int64), np.array(scores, dtype=np.float32)


NONE = _obj(_f(), [], [])


# --- voc_ap -------------------------------------------------------------------------------------------------------
def test_voc_ap_is_the_area_under_the_precision_envelope() -> None:
    # envelope over (rec, prec) = (.5, 1), (.5, .5), (1, 2/3): 1 up to recall .5, then 2/3 up to 1
    assert voc_ap(np.array([0.5, 0.5, 1.0]), np.array([1.0, 0.5, 2 / 3])) == pytest.approx(0.5 + 0.5 * 2 / 3)
    assert voc_ap(np.array([0.0, 1.0]), np.array([0.0, 0.5])) == pytest.approx(0.5)  # FP then TP
    assert voc_ap(np.array([0.5]), np.array([1.0])) == pytest.approx(0.5)  # recall never passes .5
    assert voc_ap(np.array([]), np.array([])) == 0.0


# --- objects ------------------------------------------------------------------------------------------------------
def test_duplicate_is_a_false_positive_and_classes_without_ground_truth_count_zero() -> None:
    gt = (_f([0, 0, 9, 9], [20, 20, 29, 29], [40, 40, 49, 49]), np.array([1, 1, 2]))
    # the second box overlaps the first ground truth at 81/119 = .68, already taken: a duplicate
    pred = _obj(_f([0, 0, 9, 9], [1, 1, 10, 10], [20, 20, 29, 29]), [1, 1, 1], [0.9, 0.8, 0.7])
    r = voc_map([pred], [gt], num_labels=4)
    # class 1: TP FP TP over npos 2 -> rec .5 .5 1, prec 1 .5 2/3 -> AP 1*.5 + 2/3*.5 = 5/6
    assert r["ap"] == pytest.approx({1: 5 / 6, 2: 0.0, 3: 0.0})
    assert r["npos"] == {1: 2, 2: 1, 3: 0}
    assert r["map"] == pytest.approx((5 / 6) / 3)  # class 3 (no ground truth) still counts, as 0
    assert r["weighted map"] == pytest.approx((5 / 6 * 2 + 0 * 1) / 3)
    assert r["images"] == 1


def test_iou_must_exceed_one_half_with_plus_one_areas() -> None:
    gt = (_f([0, 0, 9, 9]), np.array([1]))
    # 10x5 inside 10x10 ("+1" areas): IoU exactly .5 -> FP; then 10x6: .6 -> TP. FP, TP -> AP .5 (1.0 with >=)
    r = voc_map([_obj(_f([0, 0, 9, 4], [0, 0, 9, 5]), [1, 1], [0.9, 0.8])], [gt], num_labels=2)
    assert r["ap"][1] == pytest.approx(0.5)
    # 11x6 in 11x11: 66/121 = .545 with "+1" areas (TP) but 50/100 = .5 without (FP)
    r = voc_map([_obj(_f([0, 0, 10, 5]), [1], [0.9])], [(_f([0, 0, 10, 10]), np.array([1]))], num_labels=2)
    assert r["ap"][1] == pytest.approx(1.0)


def test_only_the_best_overlapping_box_can_be_matched() -> None:
    # two identical ground-truth boxes: both detections pick the first (argmax), the second is a duplicate
    # although the other box is free: TP FP over npos 2 -> rec .5 .5, prec 1 .5 -> AP .5
    gt = (_f([0, 0, 9, 9], [0, 0, 9, 9]), np.array([1, 1]))
    r = voc_map([_obj(_f([0, 0, 9, 9], [0, 0, 9, 9]), [1, 1], [0.9, 0.8])], [gt], num_labels=2)
    assert r["ap"][1] == pytest.approx(0.5)


def test_images_without_predictions_are_left_out_with_their_ground_truth() -> None:
    box = _f([0, 0, 9, 9])
    hit = _obj(box, [1], [0.9])
    # image 1's object is not counted: no prediction at all there
    r = voc_map([hit, NONE], [(box, np.array([1])), (box, np.array([1]))], num_labels=2)
    assert (r["npos"], r["ap"], r["images"]) == ({1: 1}, {1: 1.0}, 1)
    # a prediction of another class keeps image 2 in: npos 2, one TP -> AP .5; class 2 has no gt -> 0
    other = _obj(_f([50, 50, 59, 59]), [2], [0.5])
    r = voc_map([hit, NONE, other], [(box, np.array([1]))] * 3, num_labels=3)
    assert r["npos"] == {1: 2, 2: 0} and r["images"] == 2
    assert r["ap"] == pytest.approx({1: 0.5, 2: 0.0})
    assert (r["map"], r["weighted map"]) == pytest.approx((0.25, 0.5))


def test_equal_scores_keep_image_order() -> None:
    box = _f([0, 0, 9, 9])
    miss = _obj(_f([30, 30, 39, 39]), [1], [0.5])
    hit = _obj(box, [1], [0.5])
    # FP (image 0) before TP (image 1): rec 0 .5, prec 0 .5 -> AP .25 (.5 the other way round)
    r = voc_map([miss, hit], [(box, np.array([1]))] * 2, num_labels=2)
    assert r["ap"][1] == pytest.approx(0.25)


def test_no_ground_truth_at_all_gives_a_nan_weighted_map() -> None:
    # the original divides the npos weights by their sum, 0: NaN weights, NaN weighted mAP; the mean is 0
    r = voc_map([_obj(_f([0, 0, 9, 9]), [1], [0.9])], [(_f(), np.array([], dtype=np.int64))], num_labels=3)
    assert r["map"] == 0.0 and math.isnan(r["weighted map"]) and r["npos"] == {1: 0, 2: 0}
    r = voc_map([NONE], [(_f([0, 0, 9, 9]), np.array([1]))], num_labels=3)  # its only image skipped
    assert r["map"] == 0.0 and math.isnan(r["weighted map"]) and r["images"] == 0


# --- attributes ---------------------------------------------------------------------------------------------------
def test_attribute_map_counts_every_scored_slot() -> None:
    gt_attrs = np.zeros((2, 16), dtype=np.int64)  # the original's 16 zero-padded slots
    gt_attrs[0, :2] = [1, 2]
    gt_attrs[1, :3] = [2, 2, 4]  # attribute 2 twice on a box is one object
    gt = (_f([0, 0, 9, 9], [20, 20, 29, 29]), gt_attrs)
    boxes = _f([0, 0, 9, 9], [20, 20, 29, 29], [40, 40, 49, 49])
    labels = np.array([[2, 1, 3], [2, 3, 4], [1, 0, 0]])
    scores = np.array([[0.9, 0.6, 0.3], [0.8, 0.4, 0.0], [0.7, 0.0, 0.0]], dtype=np.float32)
    r = voc_map([(boxes, labels, scores)], [gt], num_labels=5, attributes=True)
    # 1: box 3 (.7, no overlap: FP) then box 1 (.6, TP) over npos 1 -> AP .5
    # 2: on both ground-truth boxes, both found -> 1;  3: no ground truth -> 0
    # 4: on box 2, but its slot scores 0, so it is no detection -> 0
    assert r["ap"] == pytest.approx({1: 0.5, 2: 1.0, 3: 0.0, 4: 0.0})
    assert r["npos"] == {1: 1, 2: 2, 3: 0, 4: 1}
    assert r["map"] == pytest.approx(1.5 / 4)
    assert r["weighted map"] == pytest.approx((0.5 * 1 + 1.0 * 2) / 4)


def test_malformed_inputs_are_one_line_errors() -> None:
    with pytest.raises(ValueError, match="1 prediction lists but 2 ground-truth lists"):
        voc_map([NONE], [(_f(), np.array([]))] * 2, num_labels=2)
    with pytest.raises(ValueError, match=r"image 0: 1 boxes but 2 labels"):
        voc_map([_obj(_f([0, 0, 1, 1]), [1, 1], [0.5])], [(_f(), np.array([]))], num_labels=2)


def test_ground_truth_is_clipped_like_the_original_loader() -> None:
    out = clip_to_image(np.array([[-5, -5, 300, 300], [10, 20, 30, 40]]), height=100, width=200)
    np.testing.assert_array_equal(out, [[0, 0, 199, 99], [10, 20, 30, 40]])


# --- evaluate: passes and their settings --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("shapes")
    generate_shapes(d, 4, seed=5, min_size=96, max_size=128)
    return d


class Oracle(Detector):
    """Answers from the ground truth: the normal passes find every object; given boxes get their attributes
    (``attrs=False``: none). Records each call's post-processing settings and whether boxes were given."""

    def __init__(self, dataset: Path, attrs: bool = True, **cfg: Any) -> None:
        lm = shapes_labelmap()
        super().__init__(AttrRCNN(detector_preset("tiny").replace(num_classes=lm.num_classes,
                                                                  num_attributes=lm.num_attributes, **cfg)), lm)
        self.ds = DetectionDataset(dataset)
        self.index = {hashlib.sha1(self.ds.image(i).tobytes()).hexdigest(): i for i in range(len(self.ds))}
        self.attrs = attrs
        self.calls: list[tuple[float, int, bool]] = []
        self.force_modes: list[str] = []

    def __call__(self, images: Any, batch_size: Any = None, boxes: Any = None) -> Any:
        single = not isinstance(images, list)
        img = images if single else images[0]
        pp = self.model.cfg.postprocess
        self.calls.append((pp.score_thresh, pp.min_detections_per_img, boxes is not None))
        self.force_modes.append(pp.force_boxes)
        gb, gl, ga = (t.numpy() for t in self.ds.targets(self.index[hashlib.sha1(img.tobytes()).hexdigest()]))
        if boxes is not None:
            np.testing.assert_array_equal(boxes[0], gb)  # the raw ground truth, in original pixels
        rows = [r[r > 0] if self.attrs else r[:0] for r in ga]
        d = Detections(image_hw=(img.height, img.width), resized_hw=(img.height, img.width), boxes=gb, labels=gl,
                       names=[""] * len(gl), scores=np.full(len(gl), 0.9, np.float32), features=np.zeros((len(gl), 1)),
                       attr_labels=rows, attr_names=[[] for _ in rows],
                       attr_scores=[np.full(len(r), 0.8, np.float32) for r in rows])
        return d if single else [d]


def _present(shapes: Path, what: str) -> int:
    return sum(1 for n in json.loads((shapes / "summary.json").read_text())[what].values() if n > 0)


def test_evaluate_runs_the_original_passes(shapes: Path) -> None:
    det = Oracle(shapes / "dataset.yaml")
    configured = det.model.cfg
    m = evaluate(det, shapes / "dataset.yaml")
    assert det.model.cfg is configured  # settings restored
    # per image: COCO pass at 0.05 / no minimum, obj pass at the tiny preset's 0.2 / 3, forced pass
    assert det.calls == [(0.05, 0, False), (0.2, 3, False), (0.2, 3, True)] * 4
    vg = m["original_vg_eval"]
    # every object found: AP 1 for each label with ground truth, 0 for the others (5 classes, 8 attributes)
    assert vg["obj_map"] == pytest.approx(_present(shapes, "classes") / 5)
    assert vg["attr_map"] == pytest.approx(_present(shapes, "attributes") / 8)
    assert vg["obj_weighted_map"] == pytest.approx(1.0) and vg["attr_weighted_map"] == pytest.approx(1.0)
    assert vg["obj_images"] == vg["attr_images"] == 4 and m["AP50"] == pytest.approx(1.0)


def test_evaluate_reuses_the_detections_when_the_settings_agree(shapes: Path) -> None:
    det = Oracle(shapes / "dataset.yaml", attrs=False, min_detections_per_img=0, force_boxes="off")
    m = evaluate(det, shapes / "dataset.yaml", score_thresh=0.2, limit=2)
    assert det.calls == [(0.2, 0, False), (0.2, 0, True)] * 2
    assert det.force_modes == ["off", "given"] * 2  # given boxes are kept whatever the user set
    # attributes never output: AP 0 everywhere
    assert m["original_vg_eval"]["attr_map"] == 0.0 and m["original_vg_eval"]["attr_weighted_map"] == 0.0
    det = Oracle(shapes / "dataset.yaml")
    assert "original_vg_eval" not in evaluate(det, shapes / "dataset.yaml", limit=1, original=False)
    assert det.calls == [(0.05, 0, False)]


# --- the real detector through the CLI ----------------------------------------------------------------------------
def test_cli_eval_with_forced_boxes(shapes: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    torch.set_num_threads(1)
    lm = shapes_labelmap()
    det = Detector.from_config("tiny", labelmap=lm, seed=0, num_classes=lm.num_classes, num_attributes=lm.num_attributes)
    torch.save({"model": det.model.state_dict()}, tmp_path / "w.pth")
    ds = DetectionDataset(shapes / "dataset.yaml")
    img, gt = ds.image(0), ds.targets(0)[0].numpy()
    forced = det([img], boxes=[gt])[0]
    # every given box back, in order, where it was given (ground truth clipped, resized there and back)
    assert len(forced) == len(gt)
    np.testing.assert_allclose(forced.boxes, clip_to_image(gt, img.height, img.width), atol=0.05)
    args = ["detector", "eval", str(shapes / "dataset.yaml"), "--weights", str(tmp_path / "w.pth"), "--preset", "tiny"]
    assert main(args + ["--json", str(tmp_path / "m.json")]) == 0, capsys.readouterr().err
    vg = json.loads((tmp_path / "m.json").read_text())["original_vg_eval"]
    assert set(vg) == {"obj_map", "obj_weighted_map", "obj_images", "obj_detections", "attr_map",
                       "attr_weighted_map", "attr_images"}
    assert vg["attr_images"] == 4  # every image has ground truth, so boxes to score attributes on
    assert all(0.0 <= vg[k] <= 1.0 for k in ("obj_map", "attr_map", "attr_weighted_map"))
    capsys.readouterr()
    assert main(args + ["--no-vg-eval", "--limit", "1"]) == 0
    assert "original_vg_eval" not in json.loads(capsys.readouterr().out)
