"""Detector evaluation on a labelled TSV dataset: COCO-style box AP (pycocotools) and attribute accuracy.

Attribute accuracy is measured on correctly detected objects: each ground-truth object is
paired with the highest-scoring detection of its class at IoU >= 0.5 (each detection used
once); the object counts as right when the detection's top attribute is one of its
ground-truth attributes. Per attribute group (when the label map's attributes fall into the
groups given) the top attribute within the group must equal the object's attribute of that group.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch

from ..errors import VinvlError
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


def evaluate(
    detector: Detector,
    dataset: PathLike,
    attribute_groups: Optional[dict[str, Sequence[str]]] = None,
    score_thresh: float = 0.05,
    limit: Optional[int] = None,
) -> dict[str, Any]:
    """Box AP / AP50 / AP75 over the dataset and attribute top-1 accuracy on correctly detected objects."""
    ds = DetectionDataset(dataset, labelmap=detector.labelmap)
    if detector.labelmap is None:
        detector.labelmap = ds.labelmap
    lm = ds.labelmap
    saved = detector.model.cfg.postprocess
    # AP needs the low-scoring detections too; the extraction threshold is restored afterwards.
    detector.model.cfg = detector.model.cfg.replace(score_thresh=score_thresh, min_detections_per_img=0)
    gt_json, det_json, images = [], [], []
    attr_right = attr_total = 0
    group_right = {g: 0 for g in attribute_groups or {}}
    n = len(ds) if limit is None else min(limit, len(ds))
    try:
        for i in range(n):
            img = ds.image(i)
            boxes, labels, attrs = ds.targets(i)
            d = detector(img)
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
    finally:
        detector.model.cfg = detector.model.cfg.replace(
            score_thresh=saved.score_thresh, min_detections_per_img=saved.min_detections_per_img
        )
    categories = [{"id": c, "name": lm.class_name(c)} for c in range(1, lm.num_classes)]
    out: dict[str, Any] = {"images": n, "objects": len(gt_json), "detections": len(det_json)}
    out.update(_coco_ap(gt_json, det_json, images, categories))
    out["attribute_objects"] = attr_total
    out["attribute_top1"] = attr_right / attr_total if attr_total else 0.0
    for g, r in group_right.items():
        out[f"attribute_{g}_accuracy"] = r / attr_total if attr_total else 0.0
    return out


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
