"""Typed configuration of the AttrRCNN (X152-C4) detector.

The original's yaml keys (e.g. ``MODEL.ROI_HEADS.NMS_FILTER``) are an input format mapped
onto these dataclasses at the edge; inside, the detector reads only these fields.
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

from ..errors import VinvlError



@dataclass(frozen=True)
class BackboneConfig:
    """The backbone: ``name`` picks its builder (``vinvl.detection.backbone.BACKBONES``); the other fields are
    ResNeXt C4's (``resnext_c4``: stem + layer1-3 for the image, layer4 as the box head's res5)."""

    name: str = "resnext_c4"
    stem_out_channels: int = 64
    res2_out_channels: int = 256
    num_groups: int = 32
    width_per_group: int = 8
    blocks: tuple[int, int, int, int] = (3, 8, 36, 3)
    stride_in_1x1: bool = False

    def stage_channels(self, stage: int) -> tuple[int, int]:
        """``(inner, out)`` channels of layer ``stage`` (1..4): both double at every stage."""
        factor = 2 ** (stage - 1)
        return self.num_groups * self.width_per_group * factor, self.res2_out_channels * factor

    @property
    def region_channels(self) -> int:
        """The width of a region's pooled feature (res5's output: 2048 for X152-C4), known without building."""
        return self.stage_channels(4)[1]


@dataclass(frozen=True)
class RPNConfig:
    """Single-level RPN with legacy Detectron anchors."""

    anchor_sizes: tuple[float, ...] = (32, 64, 128, 256, 512)
    aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    anchor_stride: int = 16
    pre_nms_top_n: int = 6000
    post_nms_top_n: int = 300
    nms_thresh: float = 0.7
    min_box_size: float = 0.0

    @property
    def num_anchors(self) -> int:
        """Anchors per feature-map cell."""
        return len(self.anchor_sizes) * len(self.aspect_ratios)


@dataclass(frozen=True)
class BoxHeadConfig:
    """ROIAlign pooler, res5 head and box predictor."""

    num_classes: int = 1595
    pooler_resolution: int = 14
    pooler_scale: float = 1.0 / 16
    sampling_ratio: int = 0
    bbox_reg_weights: tuple[float, float, float, float] = (10.0, 10.0, 5.0, 5.0)
    cls_agnostic_bbox_reg: bool = False


@dataclass(frozen=True)
class AttributeConfig:
    """The attribute head: ``cat(feature, class embedding)`` -> MLP -> softmax over attributes."""

    enabled: bool = True
    num_attributes: int = 525
    cls_embed_dim: int = 256
    hidden_dim: int = 512
    threshold: float = 0.05
    max_per_box: int = 16


@dataclass(frozen=True)
class PostprocessConfig:
    """Test-time ROI post-processing (the original's ROI_HEADS and TEST settings)."""

    nms_filter: Literal[0, 1, 2] = 1
    score_thresh: float = 0.2
    nms_thresh: float = 0.5
    filter1_nms_thresh: float = 0.3
    detections_per_img: int = 100
    min_detections_per_img: int = 10
    ignore_box_regression: bool = True
    nms_filter2_original_boxes: bool = False
    # The original's ROI_BOX_HEAD.FORCE_BOXES: every proposal kept unfiltered (label = best non-background
    # class, no regression). "given": exactly when boxes are given to the forward (RPN.FORCE_BOXES).
    force_boxes: Literal["given", "on", "off"] = "given"
    output_scores_all: bool = False
    output_boxes_all: bool = False


@dataclass(frozen=True)
class InputConfig:
    """Test-time resize and normalisation."""

    min_size: int = 600
    max_size: int = 1000
    pixel_mean: tuple[float, float, float] = (103.530, 116.280, 123.675)
    pixel_std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    to_bgr255: bool = True


@dataclass(frozen=True)
class DetectorConfig:
    """Everything that defines an AttrRCNN detector and how it runs at test time."""

    name: str = "custom"
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    rpn: RPNConfig = field(default_factory=RPNConfig)
    box_head: BoxHeadConfig = field(default_factory=BoxHeadConfig)
    attributes: AttributeConfig = field(default_factory=AttributeConfig)
    postprocess: PostprocessConfig = field(default_factory=PostprocessConfig)
    input: InputConfig = field(default_factory=InputConfig)
    batching: Literal["same_size", "padded"] = "same_size"
    batch_size: int = 1

    _SECTIONS = ("backbone", "rpn", "box_head", "attributes", "postprocess", "input")

    def replace(self, **overrides: Any) -> "DetectorConfig":
        """A copy with fields changed: ``nms_filter=2`` (unique field name) or ``postprocess__nms_filter=2``."""
        top: dict[str, Any] = {}
        sections: dict[str, dict[str, Any]] = {}
        for key, value in overrides.items():
            section, _, name = key.rpartition("__")
            if not section:
                if key in {f.name for f in dataclasses.fields(self)} and key not in self._SECTIONS:
                    top[key] = value
                    continue
                owners = [s for s in self._SECTIONS if name in _field_names(getattr(self, s))]
                if len(owners) != 1:
                    raise VinvlError(
                        f"unknown detector setting {key!r}" if not owners else f"ambiguous setting {key!r}: use one of "
                        + ", ".join(f"{o}__{name}" for o in owners)
                    )
                section = owners[0]
            if section not in self._SECTIONS or name not in _field_names(getattr(self, section)):
                raise VinvlError(f"unknown detector setting {key!r}")
            sections.setdefault(section, {})[name] = value
        changed = {}
        for s, kv in sections.items():
            part = getattr(self, s)
            hints = _hints(type(part))
            changed[s] = dataclasses.replace(part, **{k: _typed(v, hints[k], k) for k, v in kv.items()})
        hints = _hints(type(self))
        out = dataclasses.replace(self, **{k: _typed(v, hints[k], k) for k, v in top.items()}, **changed)
        out.validate()
        return out

    def validate(self) -> None:
        """Raise a clear error naming the setting for a value of the wrong type or range, or one the detector cannot honour."""
        for part in [self, *(getattr(self, s) for s in self._SECTIONS)]:
            hints = _hints(type(part))
            for f in dataclasses.fields(part):
                if f.name not in self._SECTIONS:
                    _typed(getattr(part, f.name), hints[f.name], f.name)
        b, r, h, a, p, i = self.backbone, self.rpn, self.box_head, self.attributes, self.postprocess, self.input
        if not b.name:
            raise VinvlError("backbone__name must name a backbone, got ''")
        for name, value in [
            ("stem_out_channels", b.stem_out_channels), ("res2_out_channels", b.res2_out_channels),
            ("num_groups", b.num_groups), ("width_per_group", b.width_per_group), ("anchor_stride", r.anchor_stride),
            ("pre_nms_top_n", r.pre_nms_top_n), ("post_nms_top_n", r.post_nms_top_n),
            ("pooler_resolution", h.pooler_resolution), ("cls_embed_dim", a.cls_embed_dim), ("hidden_dim", a.hidden_dim),
            ("num_attributes", a.num_attributes), ("detections_per_img", p.detections_per_img), ("min_size", i.min_size),
            ("batch_size", self.batch_size),
        ]:
            if value < 1:
                raise VinvlError(f"{name} must be >= 1, got {value!r}")
        if not h.pooler_scale > 0:
            raise VinvlError(f"pooler_scale must be positive, got {h.pooler_scale!r}")
        if h.num_classes < 2:
            raise VinvlError(f"num_classes must be >= 2 (background and one class), got {h.num_classes!r}")
        for name, value in [("sampling_ratio", h.sampling_ratio), ("min_box_size", r.min_box_size),
                            ("max_per_box", a.max_per_box), ("min_detections_per_img", p.min_detections_per_img)]:
            if value < 0:
                raise VinvlError(f"{name} must be >= 0, got {value!r}")
        for name, value in [("score_thresh", p.score_thresh), ("nms_thresh", p.nms_thresh),
                            ("filter1_nms_thresh", p.filter1_nms_thresh), ("rpn__nms_thresh", r.nms_thresh),
                            ("attributes__threshold", a.threshold)]:
            if not 0.0 <= value <= 1.0:
                raise VinvlError(f"{name} must lie in 0..1, got {value!r}")
        for name, values in [("blocks", b.blocks), ("anchor_sizes", r.anchor_sizes), ("aspect_ratios", r.aspect_ratios),
                             ("bbox_reg_weights", h.bbox_reg_weights),
                             ("pixel_std", i.pixel_std)]:
            if not values or any(not v > 0 for v in values):
                raise VinvlError(f"{name} must be positive, got {values!r}")
        if p.nms_filter not in (0, 1, 2):
            raise VinvlError(f"nms_filter must be 0, 1 or 2, got {p.nms_filter!r}")
        if self.batching not in ("same_size", "padded"):
            raise VinvlError(f"batching must be 'same_size' or 'padded', got {self.batching!r}")
        if not 0 < p.min_detections_per_img <= p.detections_per_img and p.min_detections_per_img != 0:
            raise VinvlError("min_detections_per_img must lie in 0..detections_per_img")
        if i.max_size < i.min_size:
            raise VinvlError(f"max_size ({i.max_size}) must not be below min_size ({i.min_size})")


@functools.lru_cache(maxsize=None)
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _describe(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {_describe(args[0]).removeprefix('a ').removeprefix('an ')}s"
        return f"a list of {len(args)} {_describe(args[0]).removeprefix('a ').removeprefix('an ')}s"
    return {bool: "True or False", int: "an integer", float: "a number", str: "a string"}.get(hint, str(hint))


def _typed(value: Any, hint: Any, name: str) -> Any:
    """``value`` checked against a field's annotation (an int is taken for a float, a list for a tuple)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    ok = True
    if hint is bool:
        ok = isinstance(value, bool)
    elif hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif hint is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif hint is str:
        ok = isinstance(value, str)
    elif origin is Literal:
        ok = any(value == a and type(value) is type(a) for a in args)
    elif origin is tuple:
        ok = isinstance(value, (list, tuple))
        if ok:
            item_hints = [args[0]] * len(value) if len(args) == 2 and args[1] is Ellipsis else list(args)
            ok = len(item_hints) == len(value)
            if ok:
                try:
                    value = tuple(_typed(v, t, name) for v, t in zip(value, item_hints))
                except VinvlError:
                    ok = False
    if not ok:
        raise VinvlError(f"{name} must be {_describe(hint)}, got {value!r}")
    return value


def _field_names(obj: Any) -> set[str]:
    return {f.name for f in dataclasses.fields(obj)}
