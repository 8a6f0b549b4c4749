"""A detector name or checkpoint path resolved to its local files and config, without torch.

:func:`resolve_pretrained` is the torch-free half of :meth:`vinvl.detection.Detector.from_pretrained`: the
commands call it first, so that a missing model, file or bad setting is refused in a second, and then hand
its :class:`PretrainedFiles` to ``from_pretrained``, which loads them.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence, Union

from ..errors import VinvlError
from ..labelmap import LabelMap
from ..registry import default_detector, names, resolve_detector
from .detector import DetectorConfig
from .original import apply_set_options
from .presets import detector_preset

PathLike = Union[str, os.PathLike]
# The architecture a bare checkpoint file is taken to have when no preset is named: the released detector's.
DEFAULT_PRESET = "vinvl_vg_x152c4"


@dataclass(frozen=True)
class PretrainedFiles:
    """A detector's local weights, label map and config, and where they came from."""

    weights: Path
    config: DetectorConfig
    labelmap: Union[None, Path, LabelMap] = None
    name: Optional[str] = None  # the registry name; None for a checkpoint file given by path
    note: Optional[str] = None  # which detector was taken when none was named, and why

    def configured(self, **overrides: Any) -> "PretrainedFiles":
        """A copy whose config has ``overrides`` (``DetectorConfig.replace`` names) applied."""
        return dataclasses.replace(self, config=self.config.replace(**overrides)) if overrides else self


def resolve_pretrained(
    name_or_path: Union[None, str, os.PathLike] = None,
    *,
    preset: Union[None, str, DetectorConfig] = None,
    labelmap: Union[None, PathLike, LabelMap] = None,
    settings: Sequence[str] = (),
    classes_from_labelmap: bool = False,
    download: bool = True,
    sas: Optional[str] = None,
    quiet: bool = False,
    **overrides: Any,
) -> PretrainedFiles:
    """Resolve a detector to files and a config, checking that they exist, without importing torch.

    ``name_or_path``: a registry detector name (:func:`vinvl.registry.resolve_detector`; fetched when missing
    if ``download``), a checkpoint file (a path object, or a string that is no registry name), or None for
    :func:`vinvl.registry.default_detector` (the released VG detector when cached, else the shipped demo; never
    fetched). ``preset`` is the architecture (default: the registry entry's, for a file the released X152-C4);
    ``labelmap`` replaces the entry's. Then ``settings`` (``KEY=VALUE`` strings, as ``--set``) and ``overrides``
    (``DetectorConfig.replace`` names) apply, and with ``classes_from_labelmap`` the class and attribute counts
    follow the label map (a checkpoint trained on it by ``vinvl detector train``).
    """
    note = name = None
    if name_or_path is None:
        name, why = default_detector()
        note = f"using {why}"
    elif isinstance(name_or_path, str) and (name_or_path in names("detector") or not _spelled_as_path(name_or_path)):
        name = name_or_path  # an unknown name is refused by the registry, listing the detectors
    if name is not None:
        found = resolve_detector(name, download=download and note is None, sas=sas, quiet=quiet)
        weights, default_preset, default_labelmap = found.weights, found.preset, found.labelmap
    else:
        weights, default_preset, default_labelmap = Path(name_or_path), DEFAULT_PRESET, None
    cfg = preset if isinstance(preset, DetectorConfig) else detector_preset(preset or default_preset)
    cfg = apply_set_options(cfg, settings)
    cfg = cfg.replace(**overrides) if overrides else cfg
    if not weights.is_file():
        raise VinvlError(f"{weights}: no such checkpoint file")
    lm: Union[None, Path, LabelMap] = labelmap if isinstance(labelmap, LabelMap) else (
        Path(labelmap) if labelmap is not None else default_labelmap)
    if isinstance(lm, Path) and not lm.is_file():
        raise VinvlError(f"{lm}: no such label map file")
    if classes_from_labelmap and lm is not None:
        loaded = lm if isinstance(lm, LabelMap) else LabelMap.load(lm)
        cfg, lm = config_for_labelmap(cfg, loaded), loaded
    return PretrainedFiles(weights, cfg, lm, name, note)


def config_for_labelmap(cfg: DetectorConfig, labelmap: LabelMap) -> DetectorConfig:
    """``cfg`` with the label map's class count and, where attributes are on and the map has them, its
    attribute count: the shape of a detector trained on that label map."""
    cfg = cfg.replace(num_classes=labelmap.num_classes) if labelmap.num_classes != cfg.box_head.num_classes else cfg
    if cfg.attributes.enabled and labelmap.attributes is not None \
            and labelmap.num_attributes != cfg.attributes.num_attributes:
        cfg = cfg.replace(num_attributes=labelmap.num_attributes)
    return cfg


def _spelled_as_path(text: str) -> bool:
    """Whether a string that is no registry name means a file: it exists, or it has a folder separator or a
    file suffix (registry names have neither)."""
    return os.path.exists(text) or os.sep in text or "/" in text or bool(Path(text).suffix)


__all__ = ["DEFAULT_PRESET", "PretrainedFiles", "config_for_labelmap", "resolve_pretrained"]
