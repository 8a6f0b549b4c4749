"""Registry of released detector models and the local cache they are looked up in (``VINVL_HOME``).

This module only knows names, files and where they belong, and says so clearly when a file is
missing; ``vinvl.assets`` builds the full download registry on top of :data:`MODELS` and
``vinvl.download`` fetches it (``vinvl download NAME``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .errors import VinvlError


@dataclass(frozen=True)
class ModelEntry:
    """A released detector: its preset, and the file names and URLs of its weights and label map."""

    name: str
    preset: str
    weights: str
    labelmap: str
    weights_url: str
    labelmap_url: str
    description: str
    shipped: bool = False


_OD = "https://biglmdiag.blob.core.windows.net/vinvl/model_ckpts/od_models"
MODELS: dict[str, ModelEntry] = {
    "vinvl_vg_x152c4": ModelEntry(
        "vinvl_vg_x152c4",
        "vinvl_vg_x152c4",
        "vinvl_vg_x152c4.pth",
        "VG-SGG-dicts-vgoi6-clipped.json",
        "https://penzhanwu2.blob.core.windows.net/results/vinvl/od_models/vinvl_vg_x152c4.pth",
        "https://penzhanwu2.blob.core.windows.net/sgg/sgg_benchmark/vinvl_model_zoo/VG-SGG-dicts-vgoi6-clipped.json",
        "VinVL X152-C4 on Visual Genome: 1594 classes, 524 attributes (the features of Oscar+)",
    ),
    "vinvl_foursets_x152c4": ModelEntry(
        "vinvl_foursets_x152c4",
        "vinvl_foursets_x152c4",
        "model_final.pth",
        "vgcocooiobjects_v1_class2ind.json",
        f"{_OD}/FourSets/model_final.pth",
        f"{_OD}/FourSets/vgcocooiobjects_v1_class2ind.json",
        "X152-C4 on COCO-stuff + VG + Objects365 + OpenImages: 1848 merged classes",
    ),
    "vinvl_objects365_x152c4": ModelEntry(
        "vinvl_objects365_x152c4",
        "vinvl_objects365_x152c4",
        "model_0740000.pth",
        "train.labelmap.tsv",
        f"{_OD}/objects365/model_0740000.pth",
        f"{_OD}/objects365/train.labelmap.tsv",
        "X152-C4 on Objects365: 365 classes",
    ),
    "shapes_demo": ModelEntry(
        "shapes_demo",
        "shapes_demo",
        "shapes_demo.pth",
        "shapes_demo_labelmap.json",
        "",
        "",
        "Demo detector shipped with vinvl: 5 shapes, 8 attributes on the synthetic shapes dataset (docs/models.md)",
        shipped=True,
    ),
}
DEFAULT_MODEL = "vinvl_vg_x152c4"
DEMO_MODEL = "shapes_demo"


def shipped_model_dir() -> Path:
    """The package folder holding the shipped demo model."""
    from importlib import resources

    return Path(str(resources.files("vinvl").joinpath("models")))


def vinvl_home() -> Path:
    """The cache folder: ``$VINVL_HOME``, else ``~/.cache/vinvl``."""
    return Path(os.environ.get("VINVL_HOME", Path.home() / ".cache" / "vinvl"))


def model_dir(name: str) -> Path:
    """Where the files of model ``name`` live in the cache."""
    return vinvl_home() / "models" / name


def model_entry(name: str) -> ModelEntry:
    """The registry entry of ``name``; a clear error listing the known models otherwise."""
    try:
        return MODELS[name]
    except KeyError:
        raise VinvlError(f"unknown model {name!r}; known: {', '.join(MODELS)}") from None


def resolve_model(name: str) -> tuple[ModelEntry, Path, Path]:
    """``(entry, weights path, label map path)`` of a cached model, or one message saying what to fetch."""
    entry = model_entry(name)
    folder = shipped_model_dir() if entry.shipped else model_dir(name)
    weights, labelmap = folder / entry.weights, folder / entry.labelmap
    missing = [(p, url) for p, url in ((weights, entry.weights_url), (labelmap, entry.labelmap_url)) if not p.is_file()]
    if missing:
        files = "; ".join(f"{p} (from {url})" for p, url in missing)
        raise VinvlError(
            f"model {name} is not in the cache: missing {files}. Put the files there, run "
            f"`vinvl download {name}`, or pass --weights and --labelmap"
        )
    return entry, weights, labelmap


def default_model() -> tuple[str, str]:
    """``(name, why)``: the released VG detector when it is in the cache, else the shipped demo model."""
    try:
        resolve_model(DEFAULT_MODEL)
        return DEFAULT_MODEL, f"the released {DEFAULT_MODEL} from {model_dir(DEFAULT_MODEL)}"
    except VinvlError:
        pass
    try:
        resolve_model(DEMO_MODEL)
    except VinvlError:
        resolve_model(DEFAULT_MODEL)  # neither: say what to fetch for the released model
    return DEMO_MODEL, (
        f"the shipped demo model {DEMO_MODEL} (5 shapes, not real-world objects): {DEFAULT_MODEL} is not in "
        f"{model_dir(DEFAULT_MODEL)}; run `vinvl download {DEFAULT_MODEL}` or pass --model/--weights"
    )
