"""The original's config format at the edge: yaml files and ``KEY VALUE`` options -> typed config.

Values are decoded and type-checked as yacs (the original's config library) does: strings
through ``ast.literal_eval`` when they parse (``True``, ``0.2``, ``(1, 2)``, ``"['rect']"``),
a replacement must have its default's type, lists and tuples convert into each other (and,
leniently, an int is accepted where a float is expected). Every key must exist in the
original's schema (``data/original_defaults.yaml``); settings vinvl cannot honour (FPN bodies,
masks, test-time augmentation, ...) are refused with the key and the reason.
"""

from __future__ import annotations

import ast
import dataclasses
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Optional, Sequence, Union

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

# ResNet C4 bodies: blocks of layer1-3 and of the res5 head.
_BODIES = {"R-50-C4": (3, 4, 6, 3), "R-101-C4": (3, 4, 23, 3), "R-152-C4": (3, 8, 36, 3)}
# TSV_SAVE_SUBSET names the writers know.
SAVE_SUBSET_NAMES = ("rect", "class", "conf", "feature", "attr_labels", "attr_scores")


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


# Settings whose other values vinvl cannot honour: key -> (allowed values, reason).
_MUST = {
    "MODEL.RPN_ONLY": ((False,), "RPN-only models"),
    "MODEL.MASK_ON": ((False,), "mask heads"),
    "MODEL.KEYPOINT_ON": ((False,), "keypoint heads"),
    "MODEL.RETINANET_ON": ((False,), "RetinaNet"),
    "MODEL.RELATION_ON": ((False,), "relation heads"),
    "MODEL.META_ARCHITECTURE": (("AttrRCNN", "GeneralizedRCNN"), "other meta-architectures"),
    "MODEL.RPN.USE_FPN": ((False,), "FPN"),
    "MODEL.ROI_HEADS.USE_FPN": ((False,), "FPN"),
    "MODEL.RPN.RPN_HEAD": (("SingleConvRPNHead",), "other RPN heads"),
    "MODEL.RESNETS.RES5_DILATION": ((1,), "dilated res5"),
    "MODEL.RESNETS.WITH_MODULATED_DCN": ((False,), "deformable convolutions"),
    "MODEL.RESNETS.TRANS_FUNC": (("BottleneckWithFixedBatchNorm",), "other residual blocks"),
    "MODEL.RESNETS.STEM_FUNC": (("StemWithFixedBatchNorm",), "other stems"),
    "MODEL.ROI_BOX_HEAD.FEATURE_EXTRACTOR": (("ResNet50Conv5ROIFeatureExtractor",), "other box heads"),
    "MODEL.ROI_BOX_HEAD.PREDICTOR": (("FastRCNNPredictor",), "other box predictors"),
    "MODEL.ROI_BOX_HEAD.DILATION": ((1,), "dilated box heads"),
    "MODEL.ROI_ATTRIBUTE_HEAD.SHARE_BOX_FEATURE_EXTRACTOR": ((True,), "a separate attribute extractor"),
    "MODEL.ROI_ATTRIBUTE_HEAD.PREDICTOR": (("AttributeRCNNPredictor",), "other attribute predictors"),
    "TEST.BBOX_AUG.ENABLED": ((False,), "test-time augmentation"),
    "DTYPE": (("float32",), "other precisions"),
}


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


def _check_supported(cfg: dict[str, Any], source: str) -> None:
    for key, (allowed, what) in _MUST.items():
        value = get(cfg, key)
        if value not in allowed:
            raise ConfigError(f"{source}: {key} {value!r} is not supported (vinvl does not implement {what})")
    body = get(cfg, "MODEL.BACKBONE.CONV_BODY")
    if body not in _BODIES:
        raise ConfigError(
            f"{source}: MODEL.BACKBONE.CONV_BODY {body!r} is not supported (C4 bodies only: {', '.join(_BODIES)})"
        )
    if any(get(cfg, "MODEL.RESNETS.STAGE_WITH_DCN")):
        raise ConfigError(f"{source}: MODEL.RESNETS.STAGE_WITH_DCN is not supported (deformable convolutions)")
    for key in ("MODEL.RPN.ANCHOR_STRIDE", "MODEL.ROI_BOX_HEAD.POOLER_SCALES"):
        if len(get(cfg, key)) != 1:
            raise ConfigError(f"{source}: {key} must have one level (no FPN), got {get(cfg, key)!r}")
    subset = get(cfg, "TEST.TSV_SAVE_SUBSET")
    unknown = [s for s in subset if s not in SAVE_SUBSET_NAMES]
    if unknown:
        raise ConfigError(
            f"{source}: TEST.TSV_SAVE_SUBSET names {unknown}; vinvl writes {', '.join(SAVE_SUBSET_NAMES)}"
        )
    if get(cfg, "MODEL.ROI_HEADS.NMS_FILTER") not in (0, 1, 2):
        raise ConfigError(f"{source}: MODEL.ROI_HEADS.NMS_FILTER must be 0, 1 or 2")


def to_run(cfg: dict[str, Any], source: str = "config") -> OriginalRun:
    """Map a merged original config onto vinvl's typed detector config and run settings."""
    _check_supported(cfg, source)
    g = lambda key: get(cfg, key)  # noqa: E731
    res2 = g("MODEL.RESNETS.RES2_OUT_CHANNELS")
    backbone = BackboneConfig(
        stem_out_channels=g("MODEL.RESNETS.STEM_OUT_CHANNELS"),
        res2_out_channels=res2,
        num_groups=g("MODEL.RESNETS.NUM_GROUPS"),
        width_per_group=g("MODEL.RESNETS.WIDTH_PER_GROUP"),
        blocks=_BODIES[g("MODEL.BACKBONE.CONV_BODY")],
        stride_in_1x1=g("MODEL.RESNETS.STRIDE_IN_1X1"),
    )
    if g("MODEL.RESNETS.BACKBONE_OUT_CHANNELS") != backbone.stage_channels(3)[1]:
        raise ConfigError(
            f"{source}: MODEL.RESNETS.BACKBONE_OUT_CHANNELS {g('MODEL.RESNETS.BACKBONE_OUT_CHANNELS')} "
            f"disagrees with the C4 body's {backbone.stage_channels(3)[1]} channels"
        )
    attributes_on = bool(g("MODEL.ATTRIBUTE_ON"))
    if g("MODEL.META_ARCHITECTURE") == "GeneralizedRCNN" and attributes_on:
        raise ConfigError(f"{source}: MODEL.ATTRIBUTE_ON needs MODEL.META_ARCHITECTURE AttrRCNN")
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
        ),
        input=InputConfig(
            min_size=g("INPUT.MIN_SIZE_TEST"),
            max_size=g("INPUT.MAX_SIZE_TEST"),
            pixel_mean=tuple(g("INPUT.PIXEL_MEAN")),
            pixel_std=tuple(g("INPUT.PIXEL_STD")),
            to_bgr255=g("INPUT.TO_BGR255"),
        ),
        # TEST.IMS_PER_BATCH keeps the original's meaning: consecutive images, zero-padded together.
        batching="padded",
        batch_size=g("TEST.IMS_PER_BATCH"),
    )
    try:
        detector.validate()
    except VinvlError as e:
        raise ConfigError(f"{source}: {e}") from None
    data_dir = g("DATA_DIR")
    labelmap = g("DATASETS.LABELMAP_FILE") or None
    if labelmap and not os.path.isabs(labelmap):
        labelmap = os.path.join(data_dir, labelmap)
    return OriginalRun(
        detector=detector,
        weights=g("MODEL.WEIGHT") or None,
        labelmap=labelmap,
        device=g("MODEL.DEVICE"),
        output_dir=g("OUTPUT_DIR"),
        save_subset=tuple(g("TEST.TSV_SAVE_SUBSET")),
        data_dir=data_dir,
        datasets_test=tuple(g("DATASETS.TEST")),
    )


def load_original(config_file: Optional[Union[str, os.PathLike]] = None, opts: Sequence[str] = ()) -> tuple[dict, OriginalRun]:
    """Defaults, then ``config_file``, then ``KEY VALUE`` ``opts``, as the original merges them."""
    cfg = original_defaults()
    source = str(config_file) if config_file is not None else "defaults"
    if config_file is not None:
        merge_yaml(cfg, config_file)
    merge_opts(cfg, list(opts))
    return cfg, to_run(cfg, source if not opts else f"{source} + options")


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
    "apply_set_options",
    "OriginalRun",
    "decode_value",
    "detector_fields",
    "load_original",
    "merge_opts",
    "merge_yaml",
    "original_defaults",
    "seed_config_path",
    "to_run",
    "typed_override",
]
