"""Detector evaluation on a labelled TSV dataset: COCO-style box AP (pycocotools), attribute accuracy, and the
original's VG evaluation (VOC-style object and attribute mAP, ``vg_eval.py`` of scene_graph_benchmark).

Attribute accuracy is measured on correctly detected objects: each ground-truth object is
paired with the highest-scoring detection of its class at IoU >= 0.5 (each detection used
once); the object counts as right when the detection's top attribute is one of its
ground-truth attributes. Per attribute group (when the label map's attributes fall into the
groups given) the top attribute within the group must equal the object's attribute of that group.

The original's VG evaluation (:func:`voc_map`; ``tools/test_sg_net.py`` with ATTRIBUTE_ON runs it twice):
``obj`` on the detections at the model's configured post-processing, ``attr`` on a second pass that is
given the ground-truth boxes (forced boxes) and scores every attribute the model outputs for them.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch

from ..config.pretrained import resolve_pretrained
from ..errors import VinvlError
from ..labelmap import LabelMap
from ..tsv import TSVFile
from .dataset import DetectionDataset
from .detector import Detector
from .losses import box_iou

PathLike = Union[str, os.PathLike]


def _coco_ap(gt: list[dict], dets: list[dict], images: list[dict], categories: list[dict]) -> dict[str, float]:
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError:
        raise VinvlError("box AP needs pycocotools: pip install 'vinvl[train]'") from None
    coco = COCO()
    coco.dataset = {"images": images, "annotations": gt, "categories": categories}
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
        if not dets:
            return {"AP": 0.0, "AP50": 0.0, "AP75": 0.0}
        res = coco.loadRes(dets)
        ev = COCOeval(coco, res, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {"AP": float(ev.stats[0]), "AP50": float(ev.stats[1]), "AP75": float(ev.stats[2])}


def voc_ap(rec: np.ndarray, prec: np.ndarray) -> float:
    """Area under the precision envelope over recall (VOC "all points", the original's ``voc_ap`` without the 07 metric)."""
    mrec = np.concatenate(([0.0], np.asarray(rec, dtype=np.float64), [1.0]))
    mpre = np.concatenate(([0.0], np.asarray(prec, dtype=np.float64), [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    i = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


def _overlaps(box: np.ndarray, gts: np.ndarray) -> np.ndarray:
    """IoU of one box with ``[G, 4]`` boxes, "+1" pixel areas, in the original's operation order (same float64 bits)."""
    iw = np.maximum(np.minimum(gts[:, 2], box[2]) - np.maximum(gts[:, 0], box[0]) + 1.0, 0.0)
    ih = np.maximum(np.minimum(gts[:, 3], box[3]) - np.maximum(gts[:, 1], box[1]) + 1.0, 0.0)
    inters = iw * ih
    uni = ((box[2] - box[0] + 1.0) * (box[3] - box[1] + 1.0)
           + (gts[:, 2] - gts[:, 0] + 1.0) * (gts[:, 3] - gts[:, 1] + 1.0) - inters)
    return inters / uni


def _label_ap(
    det_img: np.ndarray, det_score: np.ndarray, det_box: np.ndarray, gts: dict[int, np.ndarray], npos: int,
    iou_thresh: float,
) -> float:
    """One label's AP: detections matched greedily by score to its ground-truth boxes (``gts``: image -> [G, 4])."""
    if npos == 0 or len(det_score) == 0:
        return 0.0
    # Ties keep the collection order (image, box, slot). The original's np.argsort(-confidence) did so on the numpy
    # it needs (< 1.24: np.int) up to 17 detections of a label (insertion sort); beyond, and on numpy >= 2's SIMD
    # sorts, tie order is numpy's, not the data's.
    order = np.argsort(-det_score, kind="stable")
    used = {img: np.zeros(len(b), dtype=bool) for img, b in gts.items()}
    tp = np.zeros(len(order))
    fp = np.zeros(len(order))
    for k, d in enumerate(order):
        img = int(det_img[d])
        if img not in gts:
            fp[k] = 1.0
            continue
        ov = _overlaps(det_box[d], gts[img])
        j = int(np.argmax(ov))  # the first best box only: a taken best box makes a duplicate even if another is free
        if ov[j] > iou_thresh and not used[img][j]:
            tp[k] = 1.0
            used[img][j] = True
        else:
            fp[k] = 1.0
    tp = np.cumsum(tp)
    fp = np.cumsum(fp)
    rec = tp / float(npos)
    prec = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    return voc_ap(rec, prec)


def _rows(a: np.ndarray, n: int, what: str) -> np.ndarray:
    """``a`` as ``n`` rows of any width (0 included), or a one-line error naming ``what``."""
    a = np.asarray(a)
    if a.size % n if n else a.size:
        raise ValueError(f"{what}: {a.size} values do not make {n} rows")
    return a.reshape(n, a.size // n if n else 0)


def voc_map(
    predictions: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
    ground_truth: Sequence[tuple[np.ndarray, np.ndarray]],
    num_labels: int,
    attributes: bool = False,
    iou_thresh: float = 0.5,
) -> dict[str, Any]:
    """The original's VG evaluation (``eval_detection_voc``): ``{"map", "weighted map", "ap", "npos", "images"}``.

    Over labels 1..num_labels-1, from per-image ``(boxes [N, 4], labels, scores)`` and ``(gt boxes [G, 4], gt labels)``.
    Objects: ``labels``/``scores`` are ``[N]``, gt labels ``[G]``. Attributes (``attributes=True``): ``labels``/``scores``
    are ``[N, K]`` slots, every slot with a non-zero score is a detection of its label at its box, and gt labels are
    ``[G, A]`` 0-padded rows, a box being ground truth of every label in its row. As in the original: boxes in
    original-image pixels with "+1" areas; a match needs IoU > ``iou_thresh`` (strictly) with the detection's best
    box of that label in its image, which must still be free (else a false positive); images without any
    predicted box are left out, ground truth included; labels without ground truth count as AP 0 in ``map``
    (``ap`` maps each label to its AP, ``npos`` to its number of ground-truth boxes); ``weighted map`` weights
    the APs by npos and is NaN when no label has ground truth; ``images`` counts the images evaluated.
    """
    if len(predictions) != len(ground_truth):
        raise ValueError(f"{len(predictions)} prediction lists but {len(ground_truth)} ground-truth lists")
    det_img, det_lab, det_score, det_box = [], [], [], []
    gts: dict[int, dict[int, list[int]]] = {}  # label -> image -> gt box indices (in box order)
    gt_boxes: dict[int, np.ndarray] = {}
    images = 0
    for i, ((pb, pl, ps), (gb, gl)) in enumerate(zip(predictions, ground_truth)):
        pb = np.asarray(pb, dtype=np.float64).reshape(-1, 4)
        if len(pb) == 0:
            continue  # the original's do_vg_evaluation: `if len(prediction) == 0: continue`
        images += 1
        pl, ps = np.asarray(pl), np.asarray(ps, dtype=np.float64)
        if attributes:
            pl = _rows(pl, len(pb), f"image {i}: attribute labels")
            ps = _rows(ps, len(pb), f"image {i}: attribute scores")
            if pl.shape != ps.shape:
                raise ValueError(f"image {i}: attribute labels {pl.shape} and scores {ps.shape} differ in shape")
            rows, slots = np.nonzero(ps != 0)  # row-major: box by box, slot by slot, as the original collects them
            labels, scores, boxes = pl[rows, slots], ps[rows, slots], pb[rows]
        else:
            labels, scores, boxes = pl.reshape(-1), ps.reshape(-1), pb
            if len(labels) != len(pb) or len(scores) != len(pb):
                raise ValueError(f"image {i}: {len(pb)} boxes but {len(labels)} labels and {len(scores)} scores")
        det_img.append(np.full(len(labels), i))
        det_lab.append(labels.astype(np.int64))
        det_score.append(scores)
        det_box.append(boxes)
        gb = np.asarray(gb, dtype=np.float64).reshape(-1, 4)
        if attributes:
            gl = _rows(gl, len(gb), f"image {i}: ground-truth attributes")
        else:
            gl = np.asarray(gl).reshape(-1, 1)
            if len(gl) != len(gb):
                raise ValueError(f"image {i}: {len(gb)} ground-truth boxes but {len(gl)} labels")
        gt_boxes[i] = gb
        for g, row in enumerate(gl.tolist()):
            for c in dict.fromkeys(row):  # membership (`c in row`): a label repeated in a row is one box
                gts.setdefault(int(c), {}).setdefault(i, []).append(g)
    if det_img:
        d_img, d_lab = np.concatenate(det_img), np.concatenate(det_lab)
        d_score, d_box = np.concatenate(det_score), np.concatenate(det_box)
    else:
        d_img, d_lab, d_score, d_box = np.zeros(0, int), np.zeros(0, int), np.zeros(0), np.zeros((0, 4))
    by_label = np.argsort(d_lab, kind="stable")  # keeps each label's detections in collection order
    starts = np.searchsorted(d_lab[by_label], np.arange(num_labels + 1))
    aps: list[float] = []
    nposs: list[float] = []
    ap: dict[int, float] = {}
    npos: dict[int, int] = {}
    for c in range(1, num_labels):  # 0 is __background__ / __no_attribute__, which the original skips
        sel = by_label[starts[c] : starts[c + 1]]
        label_gts = {img: gt_boxes[img][idx] for img, idx in gts.get(c, {}).items()}
        n = sum(len(idx) for idx in gts.get(c, {}).values())
        ap[c] = _label_ap(d_img[sel], d_score[sel], d_box[sel], label_gts, n, iou_thresh)
        npos[c] = n
        aps.append(ap[c])
        nposs.append(float(n))
    weights = np.array(nposs)
    total = weights.sum()
    return {
        "map": float(np.mean(aps)) if aps else float("nan"),
        # The original divides by the npos total: NaN weights (and a NaN result) when it is 0.
        "weighted map": float(np.average(aps, weights=weights / total)) if total > 0 else float("nan"),
        "ap": ap,
        "npos": npos,
        "images": images,
    }


def clip_to_image(boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    """``[G, 4]`` xyxy boxes clamped to ``[0, width-1] x [0, height-1]``, as the original's ground truth (clip_to_image)."""
    out = np.array(boxes, dtype=np.float32).reshape(-1, 4)
    out[:, 0::2] = out[:, 0::2].clip(0, width - 1)
    out[:, 1::2] = out[:, 1::2].clip(0, height - 1)
    return out


def _padded(rows: Sequence[np.ndarray], dtype: Any) -> np.ndarray:
    """Ragged per-box attribute lists as one ``[N, K]`` array, 0-padded (a 0 score is no detection)."""
    out = np.zeros((len(rows), max([len(r) for r in rows] + [0])), dtype=dtype)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out


@contextlib.contextmanager
def _settings(detector: Detector, **overrides: Any) -> Any:
    """The detector's model with other post-processing settings for the duration (restored afterwards)."""
    saved = detector.model.cfg
    detector.model.cfg = saved.replace(**overrides) if overrides else saved
    try:
        yield
    finally:
        detector.model.cfg = saved


def _json_number(x: float) -> Optional[float]:
    """NaN (the original's weighted mAP without any ground truth) as JSON null."""
    return None if np.isnan(x) else float(x)


def evaluate(
    detector: Detector,
    dataset: PathLike,
    attribute_groups: Optional[dict[str, Sequence[str]]] = None,
    score_thresh: float = 0.05,
    limit: Optional[int] = None,
    original: bool = True,
) -> dict[str, Any]:
    """COCO box AP and attribute top-1 at ``score_thresh``; with ``original`` the original's VG mAPs (``original_vg_eval``).

    ``obj_map``/``obj_weighted_map`` are on the detections at the model's configured post-processing (the
    original's normal test pass), ``attr_map``/``attr_weighted_map`` on a pass given the ground-truth boxes."""
    ds = DetectionDataset(dataset, labelmap=detector.labelmap)
    if detector.labelmap is None:
        detector.labelmap = ds.labelmap
    lm = ds.labelmap
    configured = detector.model.cfg
    # AP needs the low-scoring detections too; the original's obj mAP is at the configured settings, so that
    # pass is run separately unless the settings are the same.
    coco_cfg = configured.replace(score_thresh=score_thresh, min_detections_per_img=0)
    reuse = coco_cfg == configured
    with_attrs = bool(detector.config.attributes.enabled and lm.attributes)
    # Given boxes must all come back (the original's FORCE_BOXES), whatever the user set for detection passes.
    forced = {"force_boxes": "given"} if configured.postprocess.force_boxes == "off" else {}
    gt_json, det_json, images = [], [], []
    obj_pred, obj_gt, attr_pred, attr_gt = [], [], [], []
    attr_right = attr_total = 0
    group_right = {g: 0 for g in attribute_groups or {}}
    n = len(ds) if limit is None else min(limit, len(ds))
    for i in range(n):
        img = ds.image(i)
        boxes, labels, attrs = ds.targets(i)
        with _settings(detector, score_thresh=score_thresh, min_detections_per_img=0):
            d = detector(img)
        if original:
            gt = clip_to_image(boxes.numpy(), img.height, img.width)
            o = d if reuse else detector(img)
            obj_pred.append((o.boxes, o.labels, o.scores))
            obj_gt.append((gt, labels.numpy()))
            if with_attrs:
                if len(boxes):
                    with _settings(detector, **forced):
                        f = detector([img], boxes=[boxes.numpy()])[0]
                    if len(f) != len(boxes):
                        raise VinvlError(f"{dataset}: image {ds.keys[i]!r}: the forced-box pass returned {len(f)} "
                                         f"boxes for {len(boxes)} given")
                    attr_pred.append((f.boxes, _padded(f.attr_labels, np.int64), _padded(f.attr_scores, np.float32)))
                else:
                    # The original's pass would output no box here, and an image without boxes is not evaluated.
                    attr_pred.append((np.zeros((0, 4), np.float32), np.zeros((0, 0), np.int64), np.zeros((0, 0), np.float32)))
                attr_gt.append((gt, attrs.numpy()))
        images.append({"id": i, "width": img.width, "height": img.height})
        for b, c in zip(boxes.tolist(), labels.tolist()):
            gt_json.append({"id": len(gt_json) + 1, "image_id": i, "category_id": c, "iscrowd": 0,
                            "bbox": [b[0], b[1], b[2] - b[0] + 1, b[3] - b[1] + 1],
                            "area": (b[2] - b[0] + 1) * (b[3] - b[1] + 1)})
        for b, c, s in zip(d.boxes.tolist(), d.labels.tolist(), d.scores.tolist()):
            det_json.append({"image_id": i, "category_id": int(c), "score": float(s),
                             "bbox": [b[0], b[1], b[2] - b[0] + 1, b[3] - b[1] + 1]})
        if len(boxes) == 0 or len(d) == 0 or not detector.config.attributes.enabled:
            continue
        iou = box_iou(boxes, torch.from_numpy(np.asarray(d.boxes, dtype=np.float32)))
        used: set[int] = set()
        for g in range(len(boxes)):
            cands = [j for j in np.argsort(-d.scores) if int(d.labels[j]) == int(labels[g]) and iou[g, j] >= 0.5 and j not in used]
            if not cands:
                continue
            j = int(cands[0])
            used.add(j)
            truth = {lm.attribute_name(int(a)) for a in attrs[g].tolist() if a > 0}
            if not truth:
                continue
            attr_total += 1
            pred = d.attr_names[j]
            attr_right += bool(pred) and pred[0] in truth
            for gname, members in (attribute_groups or {}).items():
                in_group = [a for a in pred if a in members]
                want = [a for a in truth if a in members]
                group_right[gname] += bool(in_group) and bool(want) and in_group[0] == want[0]
    categories = [{"id": c, "name": lm.class_name(c)} for c in range(1, lm.num_classes)]
    out: dict[str, Any] = {"images": n, "objects": len(gt_json), "detections": len(det_json)}
    out.update(_coco_ap(gt_json, det_json, images, categories))
    out["attribute_objects"] = attr_total
    out["attribute_top1"] = attr_right / attr_total if attr_total else 0.0
    for g, r in group_right.items():
        out[f"attribute_{g}_accuracy"] = r / attr_total if attr_total else 0.0
    if original:
        obj = voc_map(obj_pred, obj_gt, lm.num_classes)
        vg: dict[str, Any] = {
            "obj_map": _json_number(obj["map"]),
            "obj_weighted_map": _json_number(obj["weighted map"]),
            "obj_images": obj["images"],
            "obj_detections": int(sum(len(p[0]) for p in obj_pred)),
        }
        if with_attrs:
            attr = voc_map(attr_pred, attr_gt, lm.num_attributes, attributes=True)
            vg.update({
                "attr_map": _json_number(attr["map"]),
                "attr_weighted_map": _json_number(attr["weighted map"]),
                "attr_images": attr["images"],
            })
        out["original_vg_eval"] = vg
    return out


def evaluate_weights(
    dataset: PathLike,
    weights: PathLike,
    *,
    preset: str = "shapes_demo",
    labelmap: Optional[PathLike] = None,
    settings: Sequence[str] = (),
    device: Optional[str] = None,
    attribute_groups: Optional[dict[str, Sequence[str]]] = None,
    limit: Optional[int] = None,
    original: bool = True,
) -> dict[str, Any]:
    """:func:`evaluate` a checkpoint trained on ``dataset``'s label map (or ``labelmap``): ``preset`` is its
    architecture, its class and attribute counts follow the label map, ``settings`` are ``--set`` strings;
    ``device`` None is ``auto`` (CUDA when present)."""
    lm = LabelMap.load(labelmap) if labelmap is not None else DetectionDataset(dataset).labelmap
    files = resolve_pretrained(Path(weights), preset=preset, labelmap=lm, settings=settings, classes_from_labelmap=True)
    detector = Detector.from_pretrained(files, device=device)
    return evaluate(detector, dataset, attribute_groups, limit=limit, original=original)


def evaluate_predictions(predictions: PathLike, dataset: PathLike) -> dict[str, Any]:
    """COCO-style box AP / AP50 / AP75 of a ``predictions.tsv`` (``vinvl extract`` rows, as written, with the
    score threshold they were extracted with) against a labelled dataset yaml; every dataset image must have a row."""
    ds = DetectionDataset(dataset)
    lm = ds.labelmap
    rows = TSVFile(predictions, build_index=True)
    gt_json, det_json, images = [], [], []
    for i, key in enumerate(ds.keys):
        if key not in rows:
            raise VinvlError(f"{predictions}: no row for image {key!r} of {dataset}")
        boxes, labels, _ = ds.targets(i)
        images.append({"id": i, "width": 1, "height": 1})  # only the boxes matter to COCOeval
        for b, c in zip(boxes.tolist(), labels.tolist()):
            gt_json.append({"id": len(gt_json) + 1, "image_id": i, "category_id": c, "iscrowd": 0,
                            "bbox": [b[0], b[1], b[2] - b[0] + 1, b[3] - b[1] + 1],
                            "area": (b[2] - b[0] + 1) * (b[3] - b[1] + 1)})
        try:
            row = json.loads(rows.get(key)[1])
            objects = row["objects"] if isinstance(row, dict) else row
            for o in objects:
                b = [float(v) for v in o["rect"]]
                if o["class"] not in ds.class_index:
                    raise VinvlError(f"{predictions}: key {key!r}: class {o['class']!r} is not in the dataset's label map")
                det_json.append({"image_id": i, "category_id": ds.class_index[o["class"]], "score": float(o["conf"]),
                                 "bbox": [b[0], b[1], b[2] - b[0] + 1, b[3] - b[1] + 1]})
        except (json.JSONDecodeError, IndexError, KeyError, TypeError, ValueError) as e:
            raise VinvlError(f"{predictions}: key {key!r}: not a predictions row ({e})") from None
    categories = [{"id": c, "name": lm.class_name(c)} for c in range(1, lm.num_classes)]
    out: dict[str, Any] = {"images": len(images), "objects": len(gt_json), "detections": len(det_json)}
    out.update(_coco_ap(gt_json, det_json, images, categories))
    return out
