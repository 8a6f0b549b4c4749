"""The original's config format at the edge: yaml files and ``KEY VALUE`` options -> typed config.

Values are decoded and type-checked as yacs (the original's config library) does: strings
through ``ast.literal_eval`` when they parse (``True``, ``0.2``, ``(1, 2)``, ``"['rect']"``),
a replacement must have its default's type, lists and tuples convert into each other (and,
leniently, an int is accepted where a float is expected). Every key must exist in the
original's schema (``data/original_defaults.yaml``) and is in exactly one class: ``MAPPED``
(read into the typed config), ``NO_EFFECT`` / ``NO_EFFECT_SECTIONS`` (the original's test-time
outputs do not depend on it) or ``REFUSED`` (values vinvl cannot honour are an error naming the
key); ``key_table`` renders them for docs/original-config.md.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import yaml

from ..errors import FormatError, VinvlError
from ..yamlio import read_yaml
from .detector import (
    AttributeConfig,
    BackboneConfig,
    BoxHeadConfig,
    DetectorConfig,
    InputConfig,
    PostprocessConfig,
    RPNConfig,
)
from .training import TrainConfig

# ResNet C4 bodies: blocks of layer1-3 and of the res5 head.
# MODEL.BACKBONE.CONV_BODY -> (vinvl's backbone name, blocks per stage).
_BODIES = {"R-50-C4": ("resnext_c4", (3, 4, 6, 3)), "R-101-C4": ("resnext_c4", (3, 4, 23, 3)),
           "R-152-C4": ("resnext_c4", (3, 8, 36, 3))}


class ConfigError(VinvlError):
    """An original config key or value that is unknown, malformed or cannot be honoured."""


def _data_text(name: str) -> str:
    return resources.files("vinvl.config").joinpath("data", name).read_text(encoding="utf-8")


def seed_config_path() -> Path:
    """Path of the shipped ``vinvl_x152c4.yaml`` (the seed's ``sgg_configs/vgattr`` config)."""
    return Path(str(resources.files("vinvl.config").joinpath("data", "vinvl_x152c4.yaml")))


def original_defaults() -> dict[str, Any]:
    """A fresh copy of the original's full config with its default values."""
    return yaml.safe_load(_data_text("original_defaults.yaml"))


def decode_value(value: Any) -> Any:
    """Decode a yaml/command-line value as yacs does: literal_eval for strings that parse."""
    if isinstance(value, dict):
        return {k: decode_value(v) for k, v in value.items()}
    if not isinstance(value, str):
        return value
    try:
        return ast.literal_eval(value)
    except (ValueError, SyntaxError, MemoryError, RecursionError, TypeError):
        return value


def _coerce(new: Any, old: Any, key: str, source: str) -> Any:
    if type(new) is type(old) or old is None:
        return new
    if isinstance(new, (list, tuple)) and isinstance(old, (list, tuple)):
        return list(new)
    if isinstance(old, float) and isinstance(new, int) and not isinstance(new, bool):
        return float(new)
    raise ConfigError(
        f"{source}: {key} expects a {type(old).__name__} like {old!r}, got {type(new).__name__} {new!r}"
    )


def _merge(into: dict[str, Any], other: dict[str, Any], prefix: str, source: str) -> None:
    for k, v in other.items():
        key = f"{prefix}{k}"
        if k not in into:
            raise ConfigError(f"{source}: {key} is not a key of the original config")
        if isinstance(into[k], dict):
            if not isinstance(v, dict):
                raise ConfigError(f"{source}: {key} is a section, got the value {v!r}")
            _merge(into[k], v, key + ".", source)
        else:
            into[k] = _coerce(decode_value(v), into[k], key, source)


def merge_yaml(cfg: dict[str, Any], path: Union[str, os.PathLike]) -> None:
    """Merge an original yaml file into ``cfg`` (in place)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    try:
        data = read_yaml(path) or {}
    except FormatError as e:
        raise ConfigError(str(e)) from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys")
    _merge(cfg, data, "", str(path))


def merge_opts(cfg: dict[str, Any], opts: Sequence[str], source: str = "command line") -> None:
    """Merge ``KEY VALUE`` pairs (the original's trailing options) into ``cfg`` (in place)."""
    if len(opts) % 2:
        raise ConfigError(f"{source}: KEY VALUE options come in pairs; {opts[-1]!r} has no value")
    for key, raw in zip(opts[0::2], opts[1::2]):
        node = cfg
        parts = key.split(".")
        for i, p in enumerate(parts):
            if not isinstance(node, dict) or p not in node:
                raise ConfigError(f"{source}: {key} is not a key of the original config")
            if i < len(parts) - 1:
                node = node[p]
        if isinstance(node[parts[-1]], dict):
            raise ConfigError(f"{source}: {key} is a section, not a key")
        node[parts[-1]] = _coerce(decode_value(raw), node[parts[-1]], key, source)


def get(cfg: dict[str, Any], key: str) -> Any:
    """The value at a dotted key."""
    node: Any = cfg
    for p in key.split("."):
        node = node[p]
    return node


# -- Every key of the original's schema is in exactly one class (the table: docs/original-config.md) -------------
# MAPPED: to_run reads it into DetectorConfig / OriginalRun. NO_EFFECT: what tools/test_sg_net.py writes with an
# AttrRCNN does not depend on it. REFUSED: vinvl cannot honour it, so only the values its rule accepts pass.


@dataclass(frozen=True)
class Refused:
    """A key vinvl cannot honour: a value ``accepts`` rejects (without one: any but the default) is an error."""

    why: str
    accepted: str = "the default"
    accepts: Optional[Callable[[Any, dict[str, Any]], bool]] = None


# key -> the field it sets.
MAPPED: dict[str, str] = {
    "DATA_DIR": "`OriginalRun.data_dir`: where the DATASETS.TEST yamls (and a relative label map) are",
    "DATASETS.TEST": "`OriginalRun.datasets_test`: the dataset yamls extracted when no --images are given",
    "DATASETS.LABELMAP_FILE": "`OriginalRun.labelmap`: the path as given when that file exists, else under DATA_DIR",
    "DATALOADER.ASPECT_RATIO_GROUPING": "`OriginalRun.aspect_ratio_grouping` (`ExtractOptions.aspect_ratio_grouping`): "
    "with TEST.IMS_PER_BATCH > 1, images with h >= w are batched apart from the others, as the original does",
    "MODEL.DEVICE": "`OriginalRun.device`",
    "MODEL.WEIGHT": "`OriginalRun.weights`",
    "OUTPUT_DIR": "`OriginalRun.output_dir`: vinvl writes into it (the original into OUTPUT_DIR/inference/<weights>/)",
    "MODEL.RPN.FORCE_BOXES": "`OriginalRun.boxes_given`: the dataset yaml's `label` boxes are the proposals (no RPN)",
    "TEST.SKIP_PERFORMANCE_EVAL": "`OriginalRun.evaluate` (its negation); the predictions do not change",
    "TEST.TSV_SAVE_SUBSET": "`OriginalRun.save_subset` (in its order); `scores_all` sets "
    "`postprocess.output_scores_all`, `boxes_all` `postprocess.output_boxes_all`",
    "TEST.IMS_PER_BATCH": "`batch_size`, with `batching` 'padded' (images zero-padded together, in the batches of "
                          "DATALOADER.ASPECT_RATIO_GROUPING)",
    "MODEL.BACKBONE.CONV_BODY": "`backbone.blocks`: R-50-C4, R-101-C4 or R-152-C4",
    "MODEL.RESNETS.STEM_OUT_CHANNELS": "`backbone.stem_out_channels`",
    "MODEL.RESNETS.RES2_OUT_CHANNELS": "`backbone.res2_out_channels`",
    "MODEL.RESNETS.NUM_GROUPS": "`backbone.num_groups`",
    "MODEL.RESNETS.WIDTH_PER_GROUP": "`backbone.width_per_group`",
    "MODEL.RESNETS.STRIDE_IN_1X1": "`backbone.stride_in_1x1`",
    "MODEL.RPN.ANCHOR_SIZES": "`rpn.anchor_sizes`",
    "MODEL.RPN.ASPECT_RATIOS": "`rpn.aspect_ratios`",
    "MODEL.RPN.ANCHOR_STRIDE": "`rpn.anchor_stride` (one level: no FPN)",
    "MODEL.RPN.PRE_NMS_TOP_N_TEST": "`rpn.pre_nms_top_n`",
    "MODEL.RPN.POST_NMS_TOP_N_TEST": "`rpn.post_nms_top_n`",
    "MODEL.RPN.NMS_THRESH": "`rpn.nms_thresh`",
    "MODEL.RPN.MIN_SIZE": "`rpn.min_box_size`",
    "MODEL.ROI_BOX_HEAD.NUM_CLASSES": "`box_head.num_classes`",
    "MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION": "`box_head.pooler_resolution`",
    "MODEL.ROI_BOX_HEAD.POOLER_SCALES": "`box_head.pooler_scale` (one level: no FPN)",
    "MODEL.ROI_BOX_HEAD.POOLER_SAMPLING_RATIO": "`box_head.sampling_ratio`",
    "MODEL.ROI_HEADS.BBOX_REG_WEIGHTS": "`box_head.bbox_reg_weights`",
    "MODEL.CLS_AGNOSTIC_BBOX_REG": "`box_head.cls_agnostic_bbox_reg`",
    "MODEL.ATTRIBUTE_ON": "`attributes.enabled`",
    "MODEL.ROI_ATTRIBUTE_HEAD.NUM_ATTRIBUTES": "`attributes.num_attributes`",
    "MODEL.ROI_ATTRIBUTE_HEAD.CLS_EMD_DIM": "`attributes.cls_embed_dim`",
    "MODEL.ROI_ATTRIBUTE_HEAD.ATTR_EMD_DIM": "`attributes.hidden_dim`",
    "MODEL.ROI_ATTRIBUTE_HEAD.POSTPROCESS_ATTRIBUTES_THRESHOLD": "`attributes.threshold`",
    "MODEL.ROI_ATTRIBUTE_HEAD.MAX_NUM_ATTR_PER_OBJ": "`attributes.max_per_box`",
    "MODEL.ROI_HEADS.NMS_FILTER": "`postprocess.nms_filter` (0, 1 or 2)",
    "MODEL.ROI_HEADS.SCORE_THRESH": "`postprocess.score_thresh`",
    "MODEL.ROI_HEADS.NMS": "`postprocess.nms_thresh`",
    "MODEL.ROI_HEADS.DETECTIONS_PER_IMG": "`postprocess.detections_per_img`",
    "MODEL.ROI_HEADS.MIN_DETECTIONS_PER_IMG": "`postprocess.min_detections_per_img`",
    "MODEL.ROI_BOX_HEAD.FORCE_BOXES": "`postprocess.force_boxes`: 'on' if True else 'off' (every box kept, best class)",
    "TEST.IGNORE_BOX_REGRESSION": "`postprocess.ignore_box_regression`",
    "INPUT.MIN_SIZE_TEST": "`input.min_size`",
    "INPUT.MAX_SIZE_TEST": "`input.max_size`",
    "INPUT.PIXEL_MEAN": "`input.pixel_mean`",
    "INPUT.PIXEL_STD": "`input.pixel_std`",
    "INPUT.TO_BGR255": "`input.to_bgr255`",
}

# Whole sections without effect: key prefix -> why.
NO_EFFECT_SECTIONS: dict[str, str] = {
    "SOLVER.": "training only (optimizer, schedule, checkpoints)",
    "MODEL.FPN.": "FPN only (MODEL.RPN.USE_FPN must be False)",
    "MODEL.GROUP_NORM.": "GroupNorm layers: FPN and GN heads or GN ResNet blocks only, none of which a C4 model with "
    "the required FixedBatchNorm blocks has",
    "MODEL.FBNET.": "the FBNet backbone only (MODEL.BACKBONE.CONV_BODY must be a ResNet C4 body)",
    "MODEL.TRANSFORMER.": "the ViL/ViT backbones and ViT box head only (a ResNet C4 body and the res5 box head are "
    "required)",
    "MODEL.RETINANET.": "RetinaNet only (MODEL.RETINANET_ON must be False)",
    "MODEL.ROI_MASK_HEAD.": "the mask head only (MODEL.MASK_ON must be False)",
    "MODEL.ROI_KEYPOINT_HEAD.": "the keypoint head only (MODEL.KEYPOINT_ON must be False)",
    "MODEL.ROI_RELATION_HEAD.": "the relation head and relation datasets only (MODEL.RELATION_ON must be False)",
    "TEST.BBOX_AUG.": "test-time augmentation only (TEST.BBOX_AUG.ENABLED must be False)",
}

_TRAIN = "training only"
# Single keys without effect: key -> why.
NO_EFFECT: dict[str, str] = {
    "DATALOADER.NUM_WORKERS": "data loader processes: the same images in the same batches",
    "DATASETS.FACTORY_TEST": "the dataset class reading each DATASETS.TEST yaml: every TSV dataset takes the images, "
    "keys and order from the yaml's img/hw/linelist files, which vinvl reads itself",
    "DATASETS.FACTORY_TRAIN": _TRAIN + " (training datasets)",
    "DATASETS.TRAIN": _TRAIN + " (training datasets)",
    "DISTRIBUTED_BACKEND": "multi-GPU communication only",
    "LOG_LOSS_PERIOD": _TRAIN + " (loss logging)",
    "PATHS_CATALOG": "resolves catalog dataset names and catalog:// weights; vinvl takes DATASETS.TEST and "
    "MODEL.WEIGHT as files (a name that is no file is an error)",
    "INPUT.MIN_SIZE_TRAIN": _TRAIN + " (test: INPUT.MIN_SIZE_TEST)",
    "INPUT.MAX_SIZE_TRAIN": _TRAIN + " (test: INPUT.MAX_SIZE_TEST)",
    "INPUT.HORIZONTAL_FLIP_PROB_TRAIN": _TRAIN + " (random flips)",
    "INPUT.VERTICAL_FLIP_PROB_TRAIN": _TRAIN + " (random flips)",
    "INPUT.BRIGHTNESS": _TRAIN + " (colour jitter; 0 at test time)",
    "INPUT.CONTRAST": _TRAIN + " (colour jitter; 0 at test time)",
    "INPUT.SATURATION": _TRAIN + " (colour jitter; 0 at test time)",
    "INPUT.HUE": _TRAIN + " (colour jitter; 0 at test time)",
    "MODEL.BACKBONE.FREEZE_CONV_BODY_AT": _TRAIN + " (which stages get gradients)",
    "MODEL.RESNETS.DEFORMABLE_GROUPS": "deformable convolutions only (MODEL.RESNETS.STAGE_WITH_DCN must be all False)",
    "MODEL.FREQ_PRIOR": "the relation head only (MODEL.RELATION_ON must be False)",
    "MODEL.USE_FREQ_PRIOR": "the relation head only (MODEL.RELATION_ON must be False)",
    "MODEL.RPN.PRE_NMS_TOP_N_TRAIN": _TRAIN,
    "MODEL.RPN.POST_NMS_TOP_N_TRAIN": _TRAIN,
    "MODEL.RPN.FPN_POST_NMS_TOP_N_TRAIN": _TRAIN,
    "MODEL.RPN.FPN_POST_NMS_TOP_N_TEST": "applied only across several feature levels (FPN); the C4 RPN has one level, "
    "capped by MODEL.RPN.POST_NMS_TOP_N_TEST",
    "MODEL.RPN.FPN_POST_NMS_PER_BATCH": "read only when training with several feature levels (FPN)",
    "MODEL.RPN.BATCH_SIZE_PER_IMAGE": _TRAIN + " (RPN loss sampling)",
    "MODEL.RPN.POSITIVE_FRACTION": _TRAIN + " (RPN loss sampling)",
    "MODEL.RPN.FG_IOU_THRESHOLD": _TRAIN + " (RPN loss matching)",
    "MODEL.RPN.BG_IOU_THRESHOLD": _TRAIN + " (RPN loss matching)",
    "MODEL.RPN.STRADDLE_THRESH": _TRAIN + " (anchor visibility, read by the RPN loss only)",
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE": _TRAIN + " (proposal sampling for the box loss)",
    "MODEL.ROI_HEADS.POSITIVE_FRACTION": _TRAIN + " (proposal sampling for the box loss)",
    "MODEL.ROI_HEADS.FG_IOU_THRESHOLD": _TRAIN + " (proposal matching)",
    "MODEL.ROI_HEADS.BG_IOU_THRESHOLD": _TRAIN + " (proposal matching)",
    "MODEL.ROI_BOX_HEAD.MLP_HEAD_DIM": "the FPN box heads only (the res5 head is required)",
    "MODEL.ROI_BOX_HEAD.CONV_HEAD_DIM": "the FPN box heads only (the res5 head is required)",
    "MODEL.ROI_BOX_HEAD.NUM_STACKED_CONVS": "the FPN box heads only (the res5 head is required)",
    "MODEL.ROI_BOX_HEAD.USE_GN": "the FPN box heads only (the res5 head is required)",
    "MODEL.ROI_ATTRIBUTE_HEAD.FEATURE_EXTRACTOR": "the attribute head's own extractor, replaced by the box head's "
    "(SHARE_BOX_FEATURE_EXTRACTOR must be True with attributes on)",
    "MODEL.ROI_ATTRIBUTE_HEAD.LOSS_WEIGHT": _TRAIN + " (attribute loss)",
    "MODEL.ROI_ATTRIBUTE_HEAD.MLP_HEAD_DIM": "never read by the original",
    "MODEL.ROI_ATTRIBUTE_HEAD.POOLER_RESOLUTION": "never read by the original (attributes pool with the box head)",
    "MODEL.ROI_ATTRIBUTE_HEAD.POOLER_SAMPLING_RATIO": "never read by the original (attributes pool with the box head)",
    "MODEL.ROI_ATTRIBUTE_HEAD.POOLER_SCALES": "never read by the original (attributes pool with the box head)",
    "TEST.DETECTIONS_PER_IMG": "read by RetinaNet and relation datasets only; the box head's cap is "
    "MODEL.ROI_HEADS.DETECTIONS_PER_IMG",
    "TEST.EXPECTED_RESULTS": "compared with the evaluation's metrics only",
    "TEST.EXPECTED_RESULTS_SIGMA_TOL": "compared with the evaluation's metrics only",
    "TEST.GATHER_ON_CPU": "how multi-GPU predictions are gathered",
    "TEST.OUTPUT_ATTRIBUTE_FEATURE": "adds an attr_feature field that the TSV writer never writes",
    "TEST.OUTPUT_FEATURE": "keeps pooled box features (and scores_all, boxes_all) for the TSV writer; a "
    "TEST.TSV_SAVE_SUBSET naming feature, scores_all or boxes_all needs it True (refused otherwise)",
    "TEST.OUTPUT_RELATION_FEATURE": "the relation head only (MODEL.RELATION_ON must be False)",
    "TEST.SAVE_PREDICTIONS": "also writes predictions.pth (the same predictions, pickled)",
    "TEST.SAVE_RESULTS_TO_TSV": "whether the original writes predictions.tsv at all: vinvl extract always writes it",
}

_DCN = "vinvl does not implement deformable convolutions"
_FPN = "vinvl does not implement FPN"


def _attributes_off(cfg: dict[str, Any]) -> bool:
    return not get(cfg, "MODEL.ATTRIBUTE_ON")


def _c4_channels(value: Any, cfg: dict[str, Any]) -> bool:
    # The C4 body's output (layer3) has 4 x RES2_OUT_CHANNELS channels; the RPN and box head are built for this many.
    return value == 4 * get(cfg, "MODEL.RESNETS.RES2_OUT_CHANNELS")


def _attr_cap_accepted(value: Any, cfg: dict[str, Any]) -> bool:
    # The original's cap zeroes the scores below the k-th smallest of the image's N x A attribute scores, zeros
    # included, k = n - cap + 1 for the n scores above the threshold: that is 0 (nothing removed) unless n > (N A +
    # cap - 1) / 2, impossible when threshold >= 2 / A (a box has fewer than 1 / threshold above it). vinvl applies
    # no cap; its default is accepted as a documented difference (docs/original-config.md).
    threshold = get(cfg, "MODEL.ROI_ATTRIBUTE_HEAD.POSTPROCESS_ATTRIBUTES_THRESHOLD")
    num = get(cfg, "MODEL.ROI_ATTRIBUTE_HEAD.NUM_ATTRIBUTES")
    return (value == _default("MODEL.ROI_ATTRIBUTE_HEAD.MAX_NUM_ATTR_PER_IMG") or value <= 0
            or _attributes_off(cfg) or threshold * num >= 2)


REFUSED: dict[str, Refused] = {
    "MODEL.RPN_ONLY": Refused("vinvl does not implement RPN-only models"),
    "MODEL.MASK_ON": Refused("vinvl does not implement mask heads"),
    "MODEL.KEYPOINT_ON": Refused("vinvl does not implement keypoint heads"),
    "MODEL.RETINANET_ON": Refused("vinvl does not implement RetinaNet"),
    "MODEL.RELATION_ON": Refused("vinvl does not implement relation heads"),
    "MODEL.META_ARCHITECTURE": Refused(
        "vinvl does not implement other meta-architectures", "AttrRCNN, GeneralizedRCNN (the same without attributes)",
        lambda v, cfg: v in ("AttrRCNN", "GeneralizedRCNN")),
    "MODEL.RPN.USE_FPN": Refused(_FPN),
    "MODEL.ROI_HEADS.USE_FPN": Refused(_FPN),  # never read by the original, but it asks for FPN
    "MODEL.RPN.RPN_HEAD": Refused("vinvl does not implement other RPN heads"),
    "MODEL.RESNETS.RES5_DILATION": Refused("vinvl does not implement dilated res5"),
    "MODEL.RESNETS.WITH_MODULATED_DCN": Refused(_DCN),
    "MODEL.RESNETS.STAGE_WITH_DCN": Refused(_DCN, "no stage with True", lambda v, cfg: not any(v)),
    "MODEL.RESNETS.TRANS_FUNC": Refused("vinvl does not implement other residual blocks"),
    "MODEL.RESNETS.STEM_FUNC": Refused("vinvl does not implement other stems"),
    "MODEL.RESNETS.BACKBONE_OUT_CHANNELS": Refused(
        "the C4 body has 4 x MODEL.RESNETS.RES2_OUT_CHANNELS channels, which the RPN and box head are built for",
        "4 x RES2_OUT_CHANNELS", _c4_channels),
    "MODEL.ROI_BOX_HEAD.FEATURE_EXTRACTOR": Refused("vinvl does not implement other box heads"),
    "MODEL.ROI_BOX_HEAD.PREDICTOR": Refused("vinvl does not implement other box predictors"),
    "MODEL.ROI_BOX_HEAD.DILATION": Refused("vinvl does not implement dilated box heads"),
    "MODEL.ROI_ATTRIBUTE_HEAD.SHARE_BOX_FEATURE_EXTRACTOR": Refused(
        "vinvl does not implement a separate attribute extractor", "the default, or anything with attributes off",
        lambda v, cfg: v is True or _attributes_off(cfg)),
    "MODEL.ROI_ATTRIBUTE_HEAD.PREDICTOR": Refused(
        "vinvl does not implement other attribute predictors", "the default, or anything with attributes off",
        lambda v, cfg: v == "AttributeRCNNPredictor" or _attributes_off(cfg)),
    "MODEL.ROI_ATTRIBUTE_HEAD.MAX_NUM_ATTR_PER_IMG": Refused(
        "vinvl does not implement the per-image attribute cap",
        "the default, <= 0 (no cap), or where the cap cannot act: attributes off or "
        "POSTPROCESS_ATTRIBUTES_THRESHOLD >= 2 / NUM_ATTRIBUTES", _attr_cap_accepted),
    "MODEL.ROI_RELATION_HEAD.DETECTOR_PRE_CALCULATED": Refused(
        "vinvl does not implement pre-computed detections (relation datasets pass them as targets)"),
    "DATALOADER.SIZE_DIVISIBILITY": Refused(
        "vinvl does not pad batches to a multiple of it (padding changes the feature maps and anchors)",
        "<= 0 (no padding to a multiple)", lambda v, cfg: v <= 0),
    "TEST.BBOX_AUG.ENABLED": Refused("vinvl does not implement test-time augmentation"),
    # The original reads DTYPE only when training (mixed precision): refused rather than ignored, so that a
    # float16 config is not taken for a float16 extraction.
    "DTYPE": Refused("the original form extracts in float32; use vinvl extract --dtype for other precisions"),
}

# TEST.TSV_SAVE_SUBSET: the object fields the original's writer knows, and its relation fields.
SAVE_SUBSET_NAMES = ("rect", "class", "conf", "feature", "scores_all", "boxes_all",
                     "attr_labels", "attr_scores", "attr_scores_all")
RELATION_SUBSET_NAMES = ("relations", "relation_scores", "relation_scores_all", "relation_feature")


def flat_items(cfg: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{dotted key: value}`` of a nested config, in its order."""
    out: dict[str, Any] = {}
    for k, v in cfg.items():
        if isinstance(v, dict):
            out.update(flat_items(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


@functools.lru_cache(maxsize=1)
def _defaults_flat() -> dict[str, Any]:
    return flat_items(original_defaults())


def _default(key: str) -> Any:
    return _defaults_flat()[key]


def key_class(key: str) -> tuple[str, str]:
    """``("mapped" | "no effect" | "refused", where it goes or why)`` of an original key; KeyError if in no class."""
    if key in MAPPED:
        return "mapped", MAPPED[key]
    if key in REFUSED:
        rule = REFUSED[key]
        return "refused", f"{rule.why}; accepted: {rule.accepted}"
    if key in NO_EFFECT:
        return "no effect", NO_EFFECT[key]
    for prefix, why in NO_EFFECT_SECTIONS.items():
        if key.startswith(prefix):
            return "no effect", why
    raise KeyError(f"{key} is in no class of vinvl.config.original")


def _show(value: Any) -> str:
    text = repr(value)
    return (text if len(text) <= 40 else text[:37] + "...").replace("|", "\\|")


def _table(column: str, classify: Callable[[str], tuple[str, str]], keys: Callable[[str], bool]) -> str:
    rows = [f"| Key | Default | {column} | Where it goes / why |", "|---|---|---|---|"]
    for key, value in _defaults_flat().items():
        if keys(key):
            kind, why = classify(key)
            rows.append(f"| `{key}` | `{_show(value)}` | {kind} | {why.replace('|', chr(92) + '|')} |")
    return "\n".join(rows) + "\n"


def key_table() -> str:
    """The markdown table of every key of the original's defaults: default, class, and where it goes or why."""
    return _table("Class", key_class, lambda key: True)


@dataclass(frozen=True)
class OriginalRun:
    """What an original config asks of an extraction run, in vinvl's terms."""

    detector: DetectorConfig
    weights: Optional[str]
    labelmap: Optional[str]
    device: str
    output_dir: str
    save_subset: tuple[str, ...]
    data_dir: str
    datasets_test: tuple[str, ...]
    # MODEL.RPN.FORCE_BOXES: the dataset yamls' `label` boxes are the proposals (the RPN is skipped).
    boxes_given: bool = False
    # not TEST.SKIP_PERFORMANCE_EVAL: the original also evaluates against the labels (vinvl: `vinvl detector eval`).
    evaluate: bool = False
    # DATALOADER.ASPECT_RATIO_GROUPING: with batch_size > 1 the original batches images with h >= w apart.
    aspect_ratio_grouping: bool = True


def _check_refused(cfg: dict[str, Any], source: str, rules: dict[str, Refused], what: str = "") -> None:
    for key, rule in rules.items():
        value = get(cfg, key)
        if not (rule.accepts(value, cfg) if rule.accepts else value == _default(key)):
            raise ConfigError(f"{source}: {key} {value!r} is not supported{what} ({rule.why})")


def _check_supported(cfg: dict[str, Any], source: str, skip: Sequence[str] = ()) -> None:
    _check_refused(cfg, source, {k: r for k, r in REFUSED.items() if k not in skip})
    body = get(cfg, "MODEL.BACKBONE.CONV_BODY")
    if body not in _BODIES:
        raise ConfigError(
            f"{source}: MODEL.BACKBONE.CONV_BODY {body!r} is not supported (C4 bodies only: {', '.join(_BODIES)})"
        )
    for key in ("MODEL.RPN.ANCHOR_STRIDE", "MODEL.ROI_BOX_HEAD.POOLER_SCALES"):
        if len(get(cfg, key)) != 1:
            raise ConfigError(f"{source}: {key} must have one level (no FPN), got {get(cfg, key)!r}")
    if get(cfg, "MODEL.ROI_HEADS.NMS_FILTER") not in (0, 1, 2):
        raise ConfigError(f"{source}: MODEL.ROI_HEADS.NMS_FILTER must be 0, 1 or 2")
    _check_subset(cfg, source)


def _check_subset(cfg: dict[str, Any], source: str) -> None:
    subset = list(get(cfg, "TEST.TSV_SAVE_SUBSET"))
    key = "TEST.TSV_SAVE_SUBSET"
    relations = [s for s in subset if s in RELATION_SUBSET_NAMES]
    if relations:
        raise ConfigError(f"{source}: {key} names {relations}, which is not supported (vinvl does not implement "
                          "relation heads)")
    unknown = [s for s in subset if s not in SAVE_SUBSET_NAMES]
    if unknown:
        raise ConfigError(f"{source}: {key} names {unknown}; vinvl writes {', '.join(SAVE_SUBSET_NAMES)}")
    # Each refusal below is a subset the original's TSV writer fails on (KeyError on a field its boxes lack).
    attrs = [s for s in subset if s.startswith("attr_")]
    if attrs and not get(cfg, "MODEL.ATTRIBUTE_ON"):
        raise ConfigError(f"{source}: {key} names {attrs} but MODEL.ATTRIBUTE_ON is False (no attribute head)")
    pooled = [s for s in subset if s in ("feature", "scores_all", "boxes_all")]
    if pooled and not get(cfg, "TEST.OUTPUT_FEATURE"):
        raise ConfigError(f"{source}: {key} names {pooled} but TEST.OUTPUT_FEATURE is False (the original keeps no "
                          "pooled features, scores_all or boxes_all then; set TEST.OUTPUT_FEATURE True)")
    alls = [s for s in subset if s in ("scores_all", "boxes_all")]
    if alls and get(cfg, "MODEL.ROI_HEADS.NMS_FILTER") == 2 and not get(cfg, "MODEL.ROI_BOX_HEAD.FORCE_BOXES"):
        raise ConfigError(f"{source}: {key} names {alls} but MODEL.ROI_HEADS.NMS_FILTER 2 keeps no scores_all or "
                          "boxes_all (the original's filter_results_fast does not)")


def to_run(cfg: dict[str, Any], source: str = "config") -> OriginalRun:
    """Map a merged original config onto vinvl's typed detector config and run settings."""
    _check_supported(cfg, source)
    return _run_of(cfg, source)


def _run_of(cfg: dict[str, Any], source: str) -> OriginalRun:
    g = lambda key: get(cfg, key)  # noqa: E731
    body, blocks = _BODIES[g("MODEL.BACKBONE.CONV_BODY")]
    backbone = BackboneConfig(
        name=body,
        stem_out_channels=g("MODEL.RESNETS.STEM_OUT_CHANNELS"),
        res2_out_channels=g("MODEL.RESNETS.RES2_OUT_CHANNELS"),
        num_groups=g("MODEL.RESNETS.NUM_GROUPS"),
        width_per_group=g("MODEL.RESNETS.WIDTH_PER_GROUP"),
        blocks=blocks,
        stride_in_1x1=g("MODEL.RESNETS.STRIDE_IN_1X1"),
    )
    attributes_on = bool(g("MODEL.ATTRIBUTE_ON"))
    if g("MODEL.META_ARCHITECTURE") == "GeneralizedRCNN" and attributes_on:
        raise ConfigError(f"{source}: MODEL.ATTRIBUTE_ON needs MODEL.META_ARCHITECTURE AttrRCNN")
    subset = tuple(g("TEST.TSV_SAVE_SUBSET"))
    detector = DetectorConfig(
        name="from-original-config",
        backbone=backbone,
        rpn=RPNConfig(
            anchor_sizes=tuple(g("MODEL.RPN.ANCHOR_SIZES")),
            aspect_ratios=tuple(g("MODEL.RPN.ASPECT_RATIOS")),
            anchor_stride=g("MODEL.RPN.ANCHOR_STRIDE")[0],
            pre_nms_top_n=g("MODEL.RPN.PRE_NMS_TOP_N_TEST"),
            post_nms_top_n=g("MODEL.RPN.POST_NMS_TOP_N_TEST"),
            nms_thresh=g("MODEL.RPN.NMS_THRESH"),
            min_box_size=g("MODEL.RPN.MIN_SIZE"),
        ),
        box_head=BoxHeadConfig(
            num_classes=g("MODEL.ROI_BOX_HEAD.NUM_CLASSES"),
            pooler_resolution=g("MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION"),
            pooler_scale=g("MODEL.ROI_BOX_HEAD.POOLER_SCALES")[0],
            sampling_ratio=g("MODEL.ROI_BOX_HEAD.POOLER_SAMPLING_RATIO"),
            bbox_reg_weights=tuple(g("MODEL.ROI_HEADS.BBOX_REG_WEIGHTS")),
            cls_agnostic_bbox_reg=g("MODEL.CLS_AGNOSTIC_BBOX_REG"),
        ),
        attributes=AttributeConfig(
            enabled=attributes_on,
            num_attributes=g("MODEL.ROI_ATTRIBUTE_HEAD.NUM_ATTRIBUTES"),
            cls_embed_dim=g("MODEL.ROI_ATTRIBUTE_HEAD.CLS_EMD_DIM"),
            hidden_dim=g("MODEL.ROI_ATTRIBUTE_HEAD.ATTR_EMD_DIM"),
            threshold=g("MODEL.ROI_ATTRIBUTE_HEAD.POSTPROCESS_ATTRIBUTES_THRESHOLD"),
            max_per_box=g("MODEL.ROI_ATTRIBUTE_HEAD.MAX_NUM_ATTR_PER_OBJ"),
        ),
        postprocess=PostprocessConfig(
            nms_filter=g("MODEL.ROI_HEADS.NMS_FILTER"),
            score_thresh=g("MODEL.ROI_HEADS.SCORE_THRESH"),
            nms_thresh=g("MODEL.ROI_HEADS.NMS"),
            detections_per_img=g("MODEL.ROI_HEADS.DETECTIONS_PER_IMG"),
            min_detections_per_img=g("MODEL.ROI_HEADS.MIN_DETECTIONS_PER_IMG"),
            ignore_box_regression=g("TEST.IGNORE_BOX_REGRESSION"),
            # Explicit in the original form: the original keeps every box exactly when this key says so.
            force_boxes="on" if g("MODEL.ROI_BOX_HEAD.FORCE_BOXES") else "off",
            output_scores_all="scores_all" in subset,
            output_boxes_all="boxes_all" in subset,
        ),
        input=InputConfig(
            min_size=g("INPUT.MIN_SIZE_TEST"),
            max_size=g("INPUT.MAX_SIZE_TEST"),
            pixel_mean=tuple(g("INPUT.PIXEL_MEAN")),
            pixel_std=tuple(g("INPUT.PIXEL_STD")),
            to_bgr255=g("INPUT.TO_BGR255"),
        ),
        # TEST.IMS_PER_BATCH keeps the original's meaning: images zero-padded together (which ones: the grouping).
        batching="padded",
        batch_size=g("TEST.IMS_PER_BATCH"),
    )
    try:
        detector.validate()
    except VinvlError as e:
        raise ConfigError(f"{source}: {e}") from None
    data_dir = g("DATA_DIR")
    labelmap = g("DATASETS.LABELMAP_FILE") or None
    # The original's order (config_dataset_file): the path as given if it is a file, else under DATA_DIR.
    if labelmap and not os.path.isfile(labelmap):
        labelmap = os.path.join(data_dir, labelmap)
    return OriginalRun(
        detector=detector,
        weights=g("MODEL.WEIGHT") or None,
        labelmap=labelmap,
        device=g("MODEL.DEVICE"),
        output_dir=g("OUTPUT_DIR"),
        save_subset=subset,
        data_dir=data_dir,
        datasets_test=tuple(g("DATASETS.TEST")),
        boxes_given=bool(g("MODEL.RPN.FORCE_BOXES")),
        evaluate=not g("TEST.SKIP_PERFORMANCE_EVAL"),
        aspect_ratio_grouping=bool(g("DATALOADER.ASPECT_RATIO_GROUPING")),
    )


def load_original(config_file: Optional[Union[str, os.PathLike]] = None, opts: Sequence[str] = ()) -> tuple[dict, OriginalRun]:
    """Defaults, then ``config_file``, then ``KEY VALUE`` ``opts``, as the original merges them."""
    cfg = original_defaults()
    source = str(config_file) if config_file is not None else "defaults"
    if config_file is not None:
        merge_yaml(cfg, config_file)
    merge_opts(cfg, list(opts))
    return cfg, to_run(cfg, source if not opts else f"{source} + options")


# -- training (`vinvl detector train --config-file`, as tools/train_sg_net.py) ---------------------------------
# How a key acts when training, where that differs from extraction: read into the TrainConfig (or the run), or
# without effect on training; every other key acts as in extraction (the model's architecture and its test-time
# settings, used by the evaluation at each save). train_sg_net.py builds make_optimizer (SGD: SOLVER.OPTIMIZER and
# CLIP_GRADIENTS are make_optimizer_d2's, for ViL backbones only), WarmupMultiStepLR and do_train.
TRAINING: dict[str, str] = {
    "DATASETS.TRAIN": "the training dataset yaml (the path as given when it is a file, else under DATA_DIR); one",
    "DATASETS.FACTORY_TRAIN": "no effect: the dataset class reading the training yaml; every TSV dataset takes the "
    "images, labels and label map from the yaml's img/label/labelmap files, which vinvl reads itself",
    "MODEL.RPN.FPN_POST_NMS_TOP_N_TRAIN": "no effect: FPN only (the C4 RPN keeps MODEL.RPN.POST_NMS_TOP_N_TRAIN per "
    "image)",
    "DATASETS.LABELMAP_FILE": "no effect: the training yaml's `labelmap` is the label map, as in the original's TSV "
    "datasets (LABELMAP_FILE is read by its test step)",
    "DATASETS.TEST": "with SOLVER.TEST_PERIOD: the first one is evaluated at each checkpoint (`--eval`)",
    "MODEL.WEIGHT": "`--init` (a checkpoint file; catalog:// names are refused)",
    "MODEL.DEVICE": "`device` (`--device` wins)",
    "OUTPUT_DIR": "the run folder (`-o` wins)",
    "LOG_LOSS_PERIOD": "`TrainConfig.log_steps`",
    "DTYPE": "no effect: train_sg_net.py never reads it (mixed precision is SOLVER.USE_AMP)",
    "SOLVER.BASE_LR": "`TrainConfig.learning_rate`",
    "SOLVER.BIAS_LR_FACTOR": "`TrainConfig.bias_lr_factor`",
    "SOLVER.WEIGHT_DECAY": "`TrainConfig.weight_decay`",
    "SOLVER.WEIGHT_DECAY_BIAS": "`TrainConfig.weight_decay_bias`",
    "SOLVER.MOMENTUM": "`TrainConfig.momentum`",
    "SOLVER.GAMMA": "`TrainConfig.gamma`",
    "SOLVER.STEPS": "`TrainConfig.lr_steps` (absolute steps)",
    "SOLVER.MAX_ITER": "`TrainConfig.max_steps`",
    "SOLVER.WARMUP_FACTOR": "`TrainConfig.warmup_factor`",
    "SOLVER.WARMUP_ITERS": "`TrainConfig.warmup_steps`",
    "SOLVER.WARMUP_METHOD": "`TrainConfig.warmup_method` (linear or constant)",
    "SOLVER.IMS_PER_BATCH": "`TrainConfig.ims_per_batch`: images per step over every process (each takes its share)",
    "SOLVER.CHECKPOINT_PERIOD": "`TrainConfig.save_steps` (and the last step, as the original's model_final)",
    "SOLVER.TEST_PERIOD": "0: no evaluation while training; CHECKPOINT_PERIOD: DATASETS.TEST[0] at each checkpoint",
    "SOLVER.USE_AMP": "`TrainConfig.precision` fp16 (autocast + gradient scaler, as the original's torch.cuda.amp)",
    "SOLVER.OPTIMIZER": "no effect: make_optimizer (C4 bodies) is SGD whatever it says",
    "SOLVER.CLIP_GRADIENTS.ENABLED": "no effect: make_optimizer (C4 bodies) never clips (`max_grad_norm` 0)",
    "SOLVER.CLIP_GRADIENTS.CLIP_TYPE": "no effect: make_optimizer (C4 bodies) never clips",
    "SOLVER.CLIP_GRADIENTS.CLIP_VALUE": "no effect: make_optimizer (C4 bodies) never clips",
    "SOLVER.CLIP_GRADIENTS.NORM_TYPE": "no effect: make_optimizer (C4 bodies) never clips",
    "INPUT.MIN_SIZE_TRAIN": "`TrainConfig.min_size_train` (one drawn per image)",
    "INPUT.MAX_SIZE_TRAIN": "`TrainConfig.max_size_train`",
    "INPUT.HORIZONTAL_FLIP_PROB_TRAIN": "`TrainConfig.hflip`",
    "MODEL.BACKBONE.FREEZE_CONV_BODY_AT": "`TrainConfig.freeze_at`",
    "MODEL.RPN.PRE_NMS_TOP_N_TRAIN": "`TrainConfig.rpn_pre_nms_top_n`",
    "MODEL.RPN.POST_NMS_TOP_N_TRAIN": "`TrainConfig.rpn_post_nms_top_n`",
    "MODEL.RPN.BATCH_SIZE_PER_IMAGE": "`TrainConfig.rpn_batch_per_image`",
    "MODEL.RPN.POSITIVE_FRACTION": "`TrainConfig.rpn_positive_fraction`",
    "MODEL.RPN.FG_IOU_THRESHOLD": "`TrainConfig.rpn_fg_iou`",
    "MODEL.RPN.BG_IOU_THRESHOLD": "`TrainConfig.rpn_bg_iou`",
    "MODEL.RPN.STRADDLE_THRESH": "`TrainConfig.rpn_straddle_thresh`",
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE": "`TrainConfig.roi_batch_per_image`",
    "MODEL.ROI_HEADS.POSITIVE_FRACTION": "`TrainConfig.roi_positive_fraction`",
    "MODEL.ROI_HEADS.FG_IOU_THRESHOLD": "`TrainConfig.roi_fg_iou`",
    "MODEL.ROI_HEADS.BG_IOU_THRESHOLD": "`TrainConfig.roi_bg_iou`",
    "MODEL.ROI_ATTRIBUTE_HEAD.LOSS_WEIGHT": "`TrainConfig.attribute_loss_weight`",
    "MODEL.ROI_BOX_HEAD.NUM_CLASSES": "`box_head.num_classes`: must be the training label map's classes + 1",
    "MODEL.ROI_ATTRIBUTE_HEAD.NUM_ATTRIBUTES": "`attributes.num_attributes`: must be the label map's attributes + 1",
}
_NO_JITTER = "vinvl does not implement colour jitter"
TRAINING_REFUSED: dict[str, Refused] = {
    "INPUT.VERTICAL_FLIP_PROB_TRAIN": Refused("vinvl does not implement vertical flips", "0", lambda v, cfg: v == 0),
    "INPUT.BRIGHTNESS": Refused(_NO_JITTER, "0", lambda v, cfg: v == 0),
    "INPUT.CONTRAST": Refused(_NO_JITTER, "0", lambda v, cfg: v == 0),
    "INPUT.SATURATION": Refused(_NO_JITTER, "0", lambda v, cfg: v == 0),
    "INPUT.HUE": Refused(_NO_JITTER, "0", lambda v, cfg: v == 0),
    "SOLVER.TEST_PERIOD": Refused("vinvl evaluates at the checkpoints", "0 or SOLVER.CHECKPOINT_PERIOD",
                                  lambda v, cfg: v <= 0 or v == get(cfg, "SOLVER.CHECKPOINT_PERIOD")),
    "DATASETS.TRAIN": Refused("vinvl trains on one dataset yaml (no concatenation)", "one yaml",
                              lambda v, cfg: len(v) == 1),
    "DATALOADER.ASPECT_RATIO_GROUPING": Refused(
        "vinvl does not group training batches by aspect ratio", "False, or SOLVER.IMS_PER_BATCH 1 (nothing to group)",
        lambda v, cfg: not v or get(cfg, "SOLVER.IMS_PER_BATCH") == 1),
}
TRAINING_REFUSED.update({k: REFUSED[k] for k in REFUSED if k != "DTYPE"})  # the architecture's refusals hold too


def training_key_class(key: str) -> tuple[str, str]:
    """How an original key acts in training: ``("mapped" | "no effect" | "refused", where or why)``."""
    if key in TRAINING_REFUSED and key not in REFUSED:
        rule = TRAINING_REFUSED[key]
        extra = f"; {TRAINING[key]}" if key in TRAINING else ""
        return "refused", f"{rule.why}; accepted: {rule.accepted}{extra}"
    if key in TRAINING:
        why = TRAINING[key]
        return ("no effect", why[len("no effect: "):]) if why.startswith("no effect: ") else ("mapped", why)
    return key_class(key)


def training_key_table() -> str:
    """The markdown table of the keys that act otherwise in training than in extraction."""
    return _table("In training", training_key_class,
                  lambda key: key in TRAINING or (key in TRAINING_REFUSED and key not in REFUSED))


@dataclass(frozen=True)
class OriginalTraining:
    """What an original config asks of a training run (tools/train_sg_net.py), in vinvl's terms."""

    detector: DetectorConfig
    options: TrainConfig
    dataset: str  # the training dataset yaml
    init: Optional[str]  # MODEL.WEIGHT
    output_dir: str
    eval_dataset: Optional[str]  # DATASETS.TEST[0] when SOLVER.TEST_PERIOD evaluates


def _dataset_file(data_dir: str, name: str) -> str:
    # The original's config_dataset_file: the path as given when it is a file, else under DATA_DIR.
    return name if os.path.isfile(name) else os.path.join(data_dir, name)


def to_training(cfg: dict[str, Any], source: str = "config") -> OriginalTraining:
    """Map a merged original config onto vinvl's typed detector config and training settings, refusing by name
    what vinvl cannot honour."""
    if not get(cfg, "DATASETS.TRAIN"):
        raise ConfigError(f"{source}: DATASETS.TRAIN names no training dataset yaml")
    _check_refused(cfg, source, TRAINING_REFUSED, " for training")
    _check_supported(cfg, source, skip=("DTYPE",))
    run = _run_of(cfg, source)
    g = lambda key: get(cfg, key)  # noqa: E731
    weight = g("MODEL.WEIGHT") or None
    if weight and weight.startswith("catalog://"):
        raise ConfigError(f"{source}: MODEL.WEIGHT {weight!r}: catalog names are not supported; give the file")
    data_dir = g("DATA_DIR")
    per_step = g("SOLVER.IMS_PER_BATCH")
    options = TrainConfig(
        batch_size=per_step, ims_per_batch=per_step, learning_rate=g("SOLVER.BASE_LR"),
        weight_decay=g("SOLVER.WEIGHT_DECAY"), weight_decay_bias=g("SOLVER.WEIGHT_DECAY_BIAS"),
        bias_lr_factor=g("SOLVER.BIAS_LR_FACTOR"), momentum=g("SOLVER.MOMENTUM"), gamma=g("SOLVER.GAMMA"),
        lr_steps=tuple(g("SOLVER.STEPS")), max_steps=g("SOLVER.MAX_ITER"), warmup_factor=g("SOLVER.WARMUP_FACTOR"),
        warmup_steps=g("SOLVER.WARMUP_ITERS"), warmup_method=g("SOLVER.WARMUP_METHOD"),
        save_steps=g("SOLVER.CHECKPOINT_PERIOD"), log_steps=g("LOG_LOSS_PERIOD"), max_grad_norm=0.0,
        precision="fp16" if g("SOLVER.USE_AMP") else "fp32", seed=1000, device=run.device,
        min_size_train=tuple(g("INPUT.MIN_SIZE_TRAIN")), max_size_train=g("INPUT.MAX_SIZE_TRAIN"),
        hflip=g("INPUT.HORIZONTAL_FLIP_PROB_TRAIN"), freeze_at=max(0, g("MODEL.BACKBONE.FREEZE_CONV_BODY_AT")),
        rpn_pre_nms_top_n=g("MODEL.RPN.PRE_NMS_TOP_N_TRAIN"), rpn_post_nms_top_n=g("MODEL.RPN.POST_NMS_TOP_N_TRAIN"),
        rpn_batch_per_image=g("MODEL.RPN.BATCH_SIZE_PER_IMAGE"), rpn_positive_fraction=g("MODEL.RPN.POSITIVE_FRACTION"),
        rpn_fg_iou=g("MODEL.RPN.FG_IOU_THRESHOLD"), rpn_bg_iou=g("MODEL.RPN.BG_IOU_THRESHOLD"),
        rpn_straddle_thresh=g("MODEL.RPN.STRADDLE_THRESH"),
        roi_batch_per_image=g("MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE"),
        roi_positive_fraction=g("MODEL.ROI_HEADS.POSITIVE_FRACTION"), roi_fg_iou=g("MODEL.ROI_HEADS.FG_IOU_THRESHOLD"),
        roi_bg_iou=g("MODEL.ROI_HEADS.BG_IOU_THRESHOLD"), attribute_loss_weight=g("MODEL.ROI_ATTRIBUTE_HEAD.LOSS_WEIGHT"),
    )
    try:
        options.check()
    except VinvlError as e:
        raise ConfigError(f"{source}: {e}") from None
    tests = list(g("DATASETS.TEST"))
    evaluate = g("SOLVER.TEST_PERIOD") > 0
    if evaluate and not tests:
        raise ConfigError(f"{source}: SOLVER.TEST_PERIOD {g('SOLVER.TEST_PERIOD')} needs DATASETS.TEST")
    return OriginalTraining(
        detector=run.detector, options=options, dataset=_dataset_file(data_dir, g("DATASETS.TRAIN")[0]), init=weight,
        output_dir=g("OUTPUT_DIR"), eval_dataset=_dataset_file(data_dir, tests[0]) if evaluate else None)


def load_original_training(config_file: Union[str, os.PathLike], opts: Sequence[str] = ()) -> OriginalTraining:
    """Defaults, then ``config_file``, then ``KEY VALUE`` ``opts`` (as the original merges them), for training."""
    cfg = original_defaults()
    merge_yaml(cfg, config_file)
    merge_opts(cfg, list(opts))
    return to_training(cfg, f"{config_file} + options" if opts else str(config_file))


def typed_override(cfg: DetectorConfig, key: str, value: str) -> DetectorConfig:
    """Apply one native ``--set`` (``nms_filter=2``) or original key (``MODEL.ROI_HEADS.NMS_FILTER=2``)."""
    if "." in key and key.upper() == key:
        raise ConfigError(f"--set {key}: original keys need the original form (--config-file ... {key} VALUE)")
    parsed = decode_value(value)
    try:
        return cfg.replace(**{key: parsed})
    except (TypeError, VinvlError) as e:
        raise ConfigError(f"--set {key}={value}: {e}") from None


def apply_set_options(cfg: DetectorConfig, items: Sequence[str]) -> DetectorConfig:
    """Apply ``--set KEY=VALUE`` options in order; a malformed one is an error naming it."""
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE")
        cfg = typed_override(cfg, key, value)
    return cfg


def detector_fields() -> list[str]:
    """Every typed setting ``--set`` accepts, as ``section__field``."""
    out = []
    for section in DetectorConfig._SECTIONS:
        f = next(x for x in dataclasses.fields(DetectorConfig) if x.name == section)
        out += [f"{section}__{g.name}" for g in dataclasses.fields(f.default_factory())]  # type: ignore[misc]
    return out


__all__ = [
    "ConfigError",
    "MAPPED",
    "NO_EFFECT",
    "NO_EFFECT_SECTIONS",
    "REFUSED",
    "RELATION_SUBSET_NAMES",
    "Refused",
    "SAVE_SUBSET_NAMES",
    "apply_set_options",
    "OriginalRun",
    "decode_value",
    "detector_fields",
    "flat_items",
    "key_class",
    "key_table",
    "load_original",
    "load_original_training",
    "OriginalTraining",
    "TRAINING",
    "TRAINING_REFUSED",
    "to_training",
    "training_key_class",
    "training_key_table",
    "merge_opts",
    "merge_yaml",
    "original_defaults",
    "seed_config_path",
    "to_run",
    "typed_override",
]
