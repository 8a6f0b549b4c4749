"""Registry of every released VinVL asset (``vinvl download``): detectors, features, corpora, checkpoints.

A *name* groups the assets one job needs: ``vinvl_foursets_x152c4`` is its weights, label map,
config and the three vocabulary maps; ``corpus_small`` is a TSV and its dataset yaml. Each asset
has a URL, a kind (``file``, ``folder`` = every blob under a prefix, ``zip`` = a file unpacked
after download), an approximate size, a one-line description and the sub-folder of
``VINVL_HOME`` it belongs in (``models/<name>``, ``features/<name>``, ``corpora/<name>``,
``checkpoints/<name>``). Model files keep the names :func:`vinvl.zoo.resolve_model` expects.
Sizes are those the release notes give; ``unknown`` where they give none.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional
from urllib.parse import urlsplit

from .errors import VinvlError
from .zoo import MODELS, vinvl_home

KINDS = ("file", "folder", "zip")


@dataclass(frozen=True)
class Asset:
    """One released URL: what it is, how big, and where it goes under ``VINVL_HOME``."""

    name: str
    url: str
    kind: str
    size: str
    description: str
    target: str
    filename: str = ""
    mirrors: tuple[str, ...] = ()
    exclude: tuple[str, ...] = field(default=())

    @property
    def file_name(self) -> str:
        """The local file name of a file or zip asset (the URL's last segment unless set)."""
        return self.filename or urlsplit(self.url).path.rstrip("/").rsplit("/", 1)[-1]

    def destination(self, out: Optional[Path] = None) -> Path:
        """The folder this asset is written into: ``out`` when given, else its place in ``VINVL_HOME``."""
        return Path(out) if out is not None else vinvl_home() / self.target


_OD = "https://biglmdiag.blob.core.windows.net/vinvl/model_ckpts/od_models"
_VG_MIRROR = "https://penzhanwu2.blob.core.windows.net/sgg/sgg_benchmark/vinvl_model_zoo/vinvl_vg_x152c4.pth"
_P = "https://biglmdiag.blob.core.windows.net/vinvl/image_features/"
_S = "X152C4_frcnnbig2_exp168model_0060000model.roi_heads.nm_filter_2_model.roi_heads.score_thresh_0.2"
_C = "https://biglmdiag.blob.core.windows.net/vinvl/pretrain_corpus/"
_M = "https://biglmdiag.blob.core.windows.net/vinvl/model_ckpts/"


def _model_assets() -> list[Asset]:
    # Weights and label map come from zoo.MODELS so that the two registries cannot disagree.
    sizes = {"vinvl_vg_x152c4": "~0.7 GB"}  # the 709 MB synthetic copies of the tests have its shapes
    mirrors = {"vinvl_vg_x152c4": (_VG_MIRROR,)}
    extras = {
        "vinvl_foursets_x152c4": [
            ("config.yaml", "config of the FourSets detector"),
            ("coco_vgoiv6_class2ind.json", "vocabulary map COCO -> the 1848 merged classes"),
            ("object365_vgoiv6_class2ind.json", "vocabulary map Objects365 -> the 1848 merged classes"),
            ("oi_vgoiv6_class2ind.json", "vocabulary map OpenImages V5 -> the 1848 merged classes"),
        ],
        "vinvl_objects365_x152c4": [("attr_frcnn_X152C4.yaml", "config of the Objects365 detector")],
    }
    out: list[Asset] = []
    for name, e in MODELS.items():
        if e.shipped:
            continue
        t = f"models/{name}"
        out.append(Asset(name, e.weights_url, "file", sizes.get(name, "unknown"), f"weights: {e.description}", t,
                         e.weights, mirrors.get(name, ())))
        out.append(Asset(name, e.labelmap_url, "file", "small", f"label map of {name}", t, e.labelmap))
        folder = e.weights_url.rsplit("/", 1)[0]
        out += [Asset(name, f"{folder}/{f}", "file", "small", d, t) for f, d in extras.get(name, [])]
    return out


def _feature_assets() -> list[Asset]:
    rows = [
        ("coco2014_trainval", f"coco_{_S}/model_0060000/", "~50 GB", "COCO 2014 train/val region features",
         ("coco2014test/", "coco2015test/")),  # the two test folders live below this prefix
        ("coco2014_test", f"coco_{_S}/model_0060000/coco2014test/", "~16 GB", "COCO 2014 test region features", ()),
        ("coco2015_test", f"coco_{_S}/model_0060000/coco2015test/", "~32 GB", "COCO 2015 test region features", ()),
        ("gqa", f"gqa_{_S}/model_0060000/", "~62 GB", "GQA region features (all splits)", ()),
        ("nlvr2", f"nlvr2_{_S}/", "~28 GB", "NLVR2 train/dev/test region features", ()),
        ("flickr30k", f"flickr30k_{_S}/model_0060000/", "~14 GB", "Flickr30k region features (all)", ()),
        ("googlecc", f"googlecc_{_S}/", "~960 GB", "Conceptual Captions region features, 12 chunks", ()),
        ("sbu", f"sbu_{_S}/model_0060000/", "~280 GB", "SBU region features, 4 chunks", ()),
        ("oi", f"oi_{_S}/model_0060000/", "~530 GB", "Open Images detection region features, 8 chunks", ()),
    ]
    return [Asset(n, _P + p, "folder", s, d, f"features/{n}", exclude=x) for n, p, s, d, x in rows]


def _corpus_assets() -> list[Asset]:
    out = []
    for name, stem, what in (
        ("corpus_small", "coco_flickr30k_gqa", "COCO + Flickr30k + GQA"),
        ("corpus_medium", "coco_flickr30k_gqa_oi", "COCO + Flickr30k + GQA + OpenImages"),
        ("corpus_large", "coco_flickr30k_googlecc_gqa_sbu_oi", "COCO + Flickr30k + CC + GQA + SBU + OpenImages"),
    ):
        t = f"corpora/{name}"
        out.append(Asset(name, f"{_C}{stem}.tsv", "file", "unknown", f"Oscar+ pretraining corpus ({what})", t))
        out.append(Asset(name, f"{_C}{stem}_x152c4big2exp168.yaml", "file", "small",
                         f"dataset yaml of {stem}.tsv", t))
    return out


def _checkpoint_assets() -> list[Asset]:
    rows = [
        ("vqa_base", "vqa/base/best.zip", "zip", "Oscar+ base fine-tuned on VQA 2.0"),
        ("vqa_large", "vqa/large/best.zip", "zip", "Oscar+ large fine-tuned on VQA 2.0"),
        ("vqa_base_pretrained", "vqa/base/checkpoint-2000000/", "folder",
         "Oscar+ base pretrained, the starting point of the VQA training commands"),
        ("vqa_large_pretrained", "vqa/large/checkpoint-2000000/", "folder",
         "Oscar+ large pretrained, the starting point of the VQA training commands"),
        ("gqa_base", "gqa/base/best.zip", "zip", "Oscar+ base fine-tuned on GQA"),
        ("nlvr2_base", "nlvr2/base/best.zip", "zip", "Oscar+ base fine-tuned on NLVR2"),
        ("nlvr2_large", "nlvr2/large/best.zip", "zip", "Oscar+ large fine-tuned on NLVR2"),
        ("coco_ir_base", "coco_ir/base/checkpoint-0132780/", "folder", "Oscar+ base for COCO image-text retrieval"),
        ("coco_ir_large", "coco_ir/large/checkpoint-0132780/", "folder", "Oscar+ large for COCO image-text retrieval"),
    ]
    for stem, what in (
        ("pretrained_base", "Oscar+ base pretrained for captioning"),
        ("pretrained_large", "Oscar+ large pretrained for captioning"),
        ("coco_captioning_base_xe", "COCO captioning, base, cross-entropy"),
        ("coco_captioning_base_scst", "COCO captioning, base, SCST (CIDEr optimisation)"),
        ("coco_captioning_large_xe", "COCO captioning, large, cross-entropy"),
        ("coco_captioning_large_scst", "COCO captioning, large, SCST (CIDEr optimisation)"),
        ("nocaps_base_xe", "NoCaps captioning, base, cross-entropy"),
        ("nocaps_base_scst", "NoCaps captioning, base, SCST"),
    ):
        name = stem if stem.startswith(("coco", "nocaps")) else f"captioning_{stem}"
        rows.append((name, f"image_captioning/{stem}.zip", "zip", what))
    return [Asset(n, _M + p, k, "unknown", d, f"checkpoints/{n}") for n, p, k, d in rows]


ASSETS: tuple[Asset, ...] = tuple(_model_assets() + _feature_assets() + _corpus_assets() + _checkpoint_assets())


def asset_names() -> list[str]:
    """Every name ``vinvl download NAME`` accepts, in registry order."""
    return list(dict.fromkeys(a.name for a in ASSETS))


def assets_of(name: str) -> list[Asset]:
    """The assets grouped under ``name``; a clear error listing the known names otherwise."""
    found = [a for a in ASSETS if a.name == name]
    if not found:
        raise VinvlError(f"unknown asset {name!r}; known: {', '.join(asset_names())} (or give a URL)")
    return found


def _bare(url: str) -> str:
    return url.split("?", 1)[0]


def find_by_url(url: str) -> Optional[Asset]:
    """The registry asset whose URL (or mirror) is ``url`` ignoring any query string (a SAS), else None."""
    bare = _bare(url)
    for a in ASSETS:
        if bare in (a.url, *a.mirrors):
            return a
    return None


def list_entries() -> list[dict[str, str]]:
    """One record per released URL (mirrors included): name, kind, url, size, description, target."""
    rows = []
    for a in ASSETS:
        base = {"name": a.name, "kind": a.kind, "size": a.size, "target": a.target}
        rows.append({**base, "url": a.url, "description": a.description})
        for m in a.mirrors:
            rows.append({**base, "url": m, "description": f"mirror: {a.description}"})
    return rows
