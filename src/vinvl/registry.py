"""The one registry of released VinVL models and data, and the one resolver from a name to local files.

An :class:`Entry` is a name (``vinvl_vg_x152c4``, ``vinvl-base-image-captioning``, ``coco2014_test``)
grouping the :class:`Asset` s one job needs: its detector preset where it is a detector, and for each
file, folder or zip the ordered :class:`Source` s it can come from, tried in that order. A source's kind
is a key of :data:`SOURCE_KINDS`, whose :class:`SourceKind` names, fetches and probes it and says what to
do when it fails:

- ``hf``: a Hugging Face Hub repo file at a revision pinned to a commit (``main`` only where no
  commit id is publicly known), fetched through ``huggingface_hub`` (its cache, resume, ETag,
  ``HF_ENDPOINT`` mirrors, ``HF_HUB_OFFLINE``, tokens) and checked against the hub's ETag (the
  sha256 of an LFS file, the git blob hash of a small one);
- ``azure``: a blob, folder or zip of the original release, fetched by :mod:`vinvl.download`
  (a read SAS from ``--sas`` or ``VINVL_AZURE_SAS`` is added to the URL);
- ``https``: any other plain file URL, through the same engine.

:func:`download` is ``vinvl download`` as one call: a registry name, or a URL (a registry one gets its
entry's place, file name and excludes). The engine knows no registry: everything that needs both lives here.

Files land in ``VINVL_HOME`` (``$VINVL_HOME``, else ``~/.cache/vinvl``) whatever their source:
detectors in ``models/NAME/``, captioners and Oscar+ checkpoints in ``checkpoints/NAME/``,
features in ``features/NAME/``, corpora in ``corpora/NAME/``. A file already there (complete files
only ever get their final name) is used without any network access. Sizes are those the release
notes or the hub's file listing state; exact byte counts and sha256 digests are given only where
they are publicly known (never guessed): otherwise the hub's ETag is the check.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import re
import shutil
import sys
import threading
from abc import ABC, abstractmethod
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence
from urllib.parse import quote, urljoin, urlsplit

from .atomic import commit, make_folders
from .download import (
    ACCESS_DENIED,
    HUB_ACCESS_HINT,
    Downloader,
    RemoteError,
    RemoteFile,
    Result,
    Transient,
    VerificationError,
    network_reason,
    file_digest,
    unpack_zip,
)
from .errors import VinvlError, single_spaced

ASSET_KINDS = ("file", "folder", "zip")
ENTRY_KINDS = ("detector", "captioner", "checkpoint", "bert", "features", "corpus")
CHECKPOINT_KINDS = ("captioner", "checkpoint", "bert")  # what the Oscar+ loader opens by name
HF_DEFAULT_ENDPOINT = "https://huggingface.co"
_COMMIT = re.compile(r"[0-9a-f]{40}")


@dataclass(frozen=True)
class Source:
    """One place an asset can come from: ``hf`` (repo, revision, path), ``azure`` or ``https`` (url)."""

    kind: str  # a key of SOURCE_KINDS
    url: str = ""
    repo: str = ""
    revision: str = ""
    path: str = ""
    size: Optional[int] = None  # exact bytes, where publicly known
    sha256: Optional[str] = None  # hex digest, where publicly known

    @property
    def pinned(self) -> bool:
        """True when an hf source's revision is a full commit id (not a moving branch)."""
        return bool(_COMMIT.fullmatch(self.revision))

    @property
    def handler(self) -> "SourceKind":
        """The :class:`SourceKind` registered in :data:`SOURCE_KINDS` under this source's kind."""
        try:
            return SOURCE_KINDS[self.kind]
        except KeyError:
            raise VinvlError(f"unknown source kind {self.kind!r}; known: {', '.join(SOURCE_KINDS)}") from None

    def address(self, endpoint: Optional[str] = None) -> str:
        """The URL this source is read from (an hf source's ``resolve`` URL on ``endpoint``)."""
        return self.handler.address(self, endpoint)

    def label(self) -> str:
        """A short name for messages and tables: ``hf REPO@REV/PATH`` or ``azure URL``."""
        return self.handler.label(self)


def hf(repo: str, revision: str, path: str, *, size: Optional[int] = None, sha256: Optional[str] = None) -> Source:
    """An ``hf`` source: file ``path`` of hub repo ``repo`` at ``revision``."""
    return Source("hf", repo=repo, revision=revision, path=path, size=size, sha256=sha256)


def azure(url: str) -> Source:
    """An ``azure`` source: a blob (file or zip) or folder (URL ending in ``/``) of the original release."""
    return Source("azure", url=url)


@dataclass(frozen=True)
class Asset:
    """One file, folder or zip of an entry: its local name, where it may come from, and what it is."""

    name: str  # the entry it belongs to
    kind: str  # file, folder (every blob under a prefix) or zip (unpacked after download)
    filename: str  # the local file name (file, zip); "" for a folder
    sources: tuple[Source, ...]
    size: str  # as the release or the hub lists it; "unknown" where neither does
    description: str
    target: str  # its folder under VINVL_HOME ("" for files shipped in the package)
    exclude: tuple[str, ...] = ()

    def destination(self, out: Optional[Path] = None) -> Path:
        """The folder this asset is written into: ``out`` when given, else its place in ``VINVL_HOME``."""
        if out is not None:
            return Path(out)
        return shipped_model_dir() if not self.target else vinvl_home() / self.target

    def local_path(self, out: Optional[Path] = None) -> Path:
        """The file, the unpacked folder of a zip, or the folder, once fetched."""
        dest = self.destination(out)
        if self.kind == "file":
            return dest / self.filename
        if self.kind == "zip":
            return dest / Path(self.filename).stem
        return dest

    def present(self, out: Optional[Path] = None) -> bool:
        """Whether the asset is complete locally (only verified files ever get their final name).

        A folder is never taken as complete: the engine lists it and skips the files it already has.
        """
        if self.kind == "folder":
            return False
        p = self.local_path(out)
        return p.is_file() if self.kind == "file" else p.is_dir()

    @property
    def urls(self) -> list[str]:
        """The URL of every source, in order (hf sources on the public hub)."""
        return [s.address(HF_DEFAULT_ENDPOINT) for s in self.sources]


@dataclass(frozen=True)
class Entry:
    """A registry name: its kind, its detector preset (detectors) and the assets it groups."""

    name: str
    kind: str
    description: str
    assets: tuple[Asset, ...]
    preset: Optional[str] = None
    weights: str = ""  # detectors: the weights file name
    labelmap: str = ""  # detectors: the label map file name
    shipped: bool = False  # inside the package (the demo detector)

    def asset(self, filename: str) -> Asset:
        """The asset whose local file name is ``filename``."""
        for a in self.assets:
            if a.filename == filename:
                return a
        raise VinvlError(f"{self.name}: no file {filename!r} in the registry entry")

    def folder(self) -> Path:
        """Where the entry's files live (the package folder for a shipped entry)."""
        return self.assets[0].destination()


# ---------------------------------------------------------------------------------------------
# The entries


_OD = "https://biglmdiag.blob.core.windows.net/vinvl/model_ckpts/od_models"
_PZ = "https://penzhanwu2.blob.core.windows.net"
_P = "https://biglmdiag.blob.core.windows.net/vinvl/image_features/"
_S = "X152C4_frcnnbig2_exp168model_0060000model.roi_heads.nm_filter_2_model.roi_heads.score_thresh_0.2"
_C = "https://biglmdiag.blob.core.windows.net/vinvl/pretrain_corpus/"
_M = "https://biglmdiag.blob.core.windows.net/vinvl/model_ckpts/"

# Hub mirrors (michelecafagna26). Commit ids are those the hub's public file listings show holding the
# files; hl-actions shows only abbreviated ids publicly, so it follows "main".
_HF_VG = ("michelecafagna26/vinvl_vg_x152c4", "6491424f0b13085e733300fef2ee0e24ea2258df")
HF_CAPTIONERS: dict[str, tuple[str, str, str]] = {
    "vinvl-base-image-captioning": (
        "2671765543d4fa0560a19abba1bcb75e130c71dc",
        "Oscar+ base fine-tuned for COCO captioning (cross-entropy), the original's layout; decodes on "
        "vinvl_vg_x152c4 regions and tags",
        "447 MB"),
    "vinvl-base-finetuned-hl-scenes-image-captioning": (
        "99aa060ea4f2661be3dfc29dee04eb8d845d357b",
        "Oscar+ base fine-tuned on the HL dataset for scene descriptions", "447 MB"),
    "vinvl-base-finetuned-hl-actions-image-captioning": (
        "main", "Oscar+ base fine-tuned on the HL dataset for action descriptions", "447 MB"),
    "vinvl-base-finetuned-hl-rationales-image-captioning": (
        "e78573eb7fd955e64f8d37355eb4c8188d8b49eb",
        "Oscar+ base fine-tuned on the HL dataset for rationales", "447 MB"),
}
# The files of a captioning checkpoint as the original saves it (no training_args.bin on the hub).
CAPTIONER_FILES = ("pytorch_model.bin", "config.json", "vocab.txt", "special_tokens_map.json", "added_tokens.json")


def _detector(name: str, weights: tuple[str, tuple[Source, ...], str], labelmap: tuple[str, tuple[Source, ...], str],
              description: str, extras: Sequence[tuple[str, tuple[Source, ...], str]] = ()) -> Entry:
    t = f"models/{name}"
    assets = [
        Asset(name, "file", weights[0], weights[1], weights[2], f"weights: {description}", t),
        Asset(name, "file", labelmap[0], labelmap[1], labelmap[2], f"label map of {name}", t),
    ]
    assets += [Asset(name, "file", f, s, "small", d, t) for f, s, d in extras]
    return Entry(name, "detector", description, tuple(assets), preset=name, weights=weights[0], labelmap=labelmap[0])


def _detectors() -> list[Entry]:
    vg_w, vg_l = "vinvl_vg_x152c4.pth", "VG-SGG-dicts-vgoi6-clipped.json"
    fs, o365 = f"{_OD}/FourSets", f"{_OD}/objects365"
    return [
        _detector(
            "vinvl_vg_x152c4",
            (vg_w, (hf(*_HF_VG, vg_w), azure(f"{_PZ}/results/vinvl/od_models/{vg_w}"),
                    azure(f"{_PZ}/sgg/sgg_benchmark/vinvl_model_zoo/{vg_w}")), "593 MB"),
            (vg_l, (hf(*_HF_VG, vg_l), azure(f"{_PZ}/sgg/sgg_benchmark/vinvl_model_zoo/{vg_l}")), "109 kB"),
            "VinVL X152-C4 on Visual Genome: 1594 classes, 524 attributes (the features of Oscar+)",
        ),
        _detector(
            "vinvl_foursets_x152c4",
            ("model_final.pth", (azure(f"{fs}/model_final.pth"),), "unknown"),
            ("vgcocooiobjects_v1_class2ind.json", (azure(f"{fs}/vgcocooiobjects_v1_class2ind.json"),), "small"),
            "X152-C4 on COCO-stuff + VG + Objects365 + OpenImages: 1848 merged classes",
            [("config.yaml", (azure(f"{fs}/config.yaml"),), "config of the FourSets detector"),
             ("coco_vgoiv6_class2ind.json", (azure(f"{fs}/coco_vgoiv6_class2ind.json"),),
              "vocabulary map COCO -> the 1848 merged classes"),
             ("object365_vgoiv6_class2ind.json", (azure(f"{fs}/object365_vgoiv6_class2ind.json"),),
              "vocabulary map Objects365 -> the 1848 merged classes"),
             ("oi_vgoiv6_class2ind.json", (azure(f"{fs}/oi_vgoiv6_class2ind.json"),),
              "vocabulary map OpenImages V5 -> the 1848 merged classes")],
        ),
        _detector(
            "vinvl_objects365_x152c4",
            ("model_0740000.pth", (azure(f"{o365}/model_0740000.pth"),), "unknown"),
            ("train.labelmap.tsv", (azure(f"{o365}/train.labelmap.tsv"),), "small"),
            "X152-C4 on Objects365: 365 classes",
            [("attr_frcnn_X152C4.yaml", (azure(f"{o365}/attr_frcnn_X152C4.yaml"),), "config of the Objects365 detector")],
        ),
        Entry("shapes_demo", "detector",
              "Demo detector shipped with vinvl: 5 shapes, 8 attributes on the synthetic shapes dataset (docs/models.md)",
              (Asset("shapes_demo", "file", "shapes_demo.pth", (), "6.4 MB", "weights of the demo detector", ""),
               Asset("shapes_demo", "file", "shapes_demo_labelmap.json", (), "small", "label map of shapes_demo", "")),
              preset="shapes_demo", weights="shapes_demo.pth", labelmap="shapes_demo_labelmap.json", shipped=True),
    ]


def _captioners() -> list[Entry]:
    out = []
    for name, (rev, what, size) in HF_CAPTIONERS.items():
        repo, t = f"michelecafagna26/{name}", f"checkpoints/{name}"
        assets = tuple(Asset(name, "file", f, (hf(repo, rev, f),), size if f == "pytorch_model.bin" else "small",
                             f"{f} of {name}", t) for f in CAPTIONER_FILES)
        out.append(Entry(name, "captioner", what, assets))
    return out


def _features() -> list[Entry]:
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
    return [Entry(n, "features", d, (Asset(n, "folder", "", (azure(_P + p),), s, d, f"features/{n}", x),))
            for n, p, s, d, x in rows]


def _corpora() -> list[Entry]:
    out = []
    for name, stem, what in (
        ("corpus_small", "coco_flickr30k_gqa", "COCO + Flickr30k + GQA"),
        ("corpus_medium", "coco_flickr30k_gqa_oi", "COCO + Flickr30k + GQA + OpenImages"),
        ("corpus_large", "coco_flickr30k_googlecc_gqa_sbu_oi", "COCO + Flickr30k + CC + GQA + SBU + OpenImages"),
    ):
        t, desc = f"corpora/{name}", f"Oscar+ pretraining corpus ({what})"
        out.append(Entry(name, "corpus", desc, (
            Asset(name, "file", f"{stem}.tsv", (azure(f"{_C}{stem}.tsv"),), "unknown", desc, t),
            Asset(name, "file", f"{stem}_x152c4big2exp168.yaml", (azure(f"{_C}{stem}_x152c4big2exp168.yaml"),),
                  "small", f"dataset yaml of {stem}.tsv", t),
        )))
    return out


def _checkpoints() -> list[Entry]:
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
    return _checkpoint_entries(_M, rows)


def _checkpoint_entries(base: str, rows: Sequence[tuple[str, str, str, str]]) -> list[Entry]:
    """One checkpoint entry per ``(name, path under base, zip or folder, description)``, fetched into
    ``checkpoints/NAME/`` from Azure."""
    out = []
    for n, p, k, d in rows:
        fname = p.rstrip("/").rsplit("/", 1)[-1] if k == "zip" else ""
        out.append(Entry(n, "checkpoint", d, (Asset(n, k, fname, (azure(base + p),), "unknown", d, f"checkpoints/{n}"),)))
    return out


# Oscar (v1), microsoft/Oscar's first release: the pretrained models of its DOWNLOAD.md ("Pre-trained Models":
# pretrained_models/$MODEL_NAME.zip) and the fine-tuned checkpoints of its MODEL_ZOO.md (exp/TASK/...zip), all in
# the `oscar` container, the one the read SAS posted at the top of both files opens. A pretrained zip may hold
# several checkpoint folders (MODEL_ZOO.md starts its commands from base-vg-labels/ep_67_588997 and /ep_107_1192087,
# large-vg-labels/ep_7_816000, /ep_20_590000 and /ep_55_1617000): NAME/FOLDER picks one (checkpoint_path).
_O = "https://biglmdiag.blob.core.windows.net/oscar/"
OSCAR_V1_PRETRAINED: dict[str, str] = {
    "base-vg-labels": "Oscar (v1) base pretrained, object tags of the Visual Genome detector",
    "large-vg-labels": "Oscar (v1) large pretrained, object tags of the Visual Genome detector",
    "base-oid-labels": "Oscar (v1) base pretrained, object tags of an Open Images V5 detector",
    "base-no-labels": "Oscar (v1) base pretrained without object tags (the paper's baseline)",
}
OSCAR_V1_FINETUNED: tuple[tuple[str, str, str], ...] = (
    ("oscar_vqa_base", "exp/vqa/base/vqa_base_best.zip", "Oscar (v1) base fine-tuned on VQA 2.0 (train split)"),
    ("oscar_vqa_large", "exp/vqa/large/vqa_large_best.zip", "Oscar (v1) large fine-tuned on VQA 2.0 (train+val)"),
    ("oscar_gqa_base", "exp/gqa/base/gqa_base_best.zip", "Oscar (v1) base fine-tuned on GQA"),
    ("oscar_coco_ir_base", "exp/retrieval/base/checkpoint.zip", "Oscar (v1) base for COCO image-text retrieval"),
    ("oscar_coco_ir_large", "exp/retrieval/large/checkpoint.zip", "Oscar (v1) large for COCO image-text retrieval"),
    ("oscar_coco_captioning_base", "exp/coco_caption/base/checkpoint.zip",
     "Oscar (v1) base for COCO captioning (the zoo does not say: cross-entropy or CIDEr stage)"),
)


def _oscar_v1() -> list[Entry]:
    rows = [(f"oscar_{m.replace('-', '_')}", f"pretrained_models/{m}.zip", d) for m, d in OSCAR_V1_PRETRAINED.items()]
    return _checkpoint_entries(_O, [(n, p, "zip", d) for n, p, d in rows + list(OSCAR_V1_FINETUNED)])


# Plain BERT, where the original's recipes start from it (--model_name_or_path bert-base-uncased: NoCaps captioning,
# which allows no image-caption data but COCO's, and Oscar+ pretraining). The commit is the hub repo's (formerly
# "bert-base-uncased") that its public listings and cache snapshots show holding these files; pytorch_model.bin is
# the file the original's from_pretrained reads (its old LayerNorm names gamma/beta included).
_HF_BERT = ("google-bert/bert-base-uncased", "86b5e0934494bd15c9632b12f734a8a67f723594")
BERT_FILES = (("pytorch_model.bin", "440 MB"), ("config.json", "small"), ("vocab.txt", "232 kB"))


def _berts() -> list[Entry]:
    name, t = "bert-base-uncased", "checkpoints/bert-base-uncased"
    what = "BERT-base uncased, the plain BERT the NoCaps captioning recipe and Oscar+ pretraining start from (--init)"
    return [Entry(name, "bert", what, tuple(Asset(name, "file", f, (hf(*_HF_BERT, f),), size, f"{f} of {name}", t)
                                            for f, size in BERT_FILES))]


REGISTRY: dict[str, Entry] = {e.name: e for e in _detectors() + _captioners() + _features() + _corpora() + _checkpoints()
                              + _oscar_v1() + _berts()}
DEFAULT_DETECTOR = "vinvl_vg_x152c4"
DEMO_DETECTOR = "shapes_demo"
DEFAULT_CAPTIONER = "vinvl-base-image-captioning"


# ---------------------------------------------------------------------------------------------
# Places


def vinvl_home() -> Path:
    """The cache folder: ``$VINVL_HOME``, else ``~/.cache/vinvl``."""
    return Path(os.environ.get("VINVL_HOME") or Path.home() / ".cache" / "vinvl")


def shipped_model_dir() -> Path:
    """The package folder holding the shipped demo model."""
    return Path(str(resources.files("vinvl").joinpath("models")))


def hf_endpoint() -> str:
    """The hub endpoint: ``$HF_ENDPOINT`` (a mirror), else huggingface.co; read at each call."""
    return (os.environ.get("HF_ENDPOINT") or HF_DEFAULT_ENDPOINT).rstrip("/")


def hf_offline() -> bool:
    """``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) set: the hub is never asked."""
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.strip().upper() in ("1", "ON", "YES", "TRUE")


def _hf_cache_dir() -> Path:
    # huggingface_hub reads these at import; read them per call so tests and callers may set them late.
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "huggingface"
    return Path(home) / "hub"


def azure_sas(sas: Optional[str] = None) -> Optional[str]:
    """The read SAS to add to Azure URLs: ``sas``, else ``$VINVL_AZURE_SAS``; without a leading ``?``."""
    value = (sas if sas is not None else os.environ.get("VINVL_AZURE_SAS", "")).strip().lstrip("?")
    return value or None


def _with_sas(url: str, sas: Optional[str]) -> str:
    if not sas or urlsplit(url).query:
        return url  # a URL given with its own query keeps it
    return f"{url}?{sas}"


# ---------------------------------------------------------------------------------------------
# Look-ups


def entry(name: str) -> Entry:
    """The registry entry ``name``; a clear error listing the known names otherwise."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise VinvlError(f"unknown name {name!r}; known: {', '.join(REGISTRY)}") from None


def names(kind: Optional[str] = None) -> list[str]:
    """Every registry name (of ``kind`` when given), in registry order."""
    return [n for n, e in REGISTRY.items() if kind is None or e.kind == kind]


def find_by_url(url: str) -> Optional[tuple[Asset, Source]]:
    """The asset and source whose URL is ``url`` ignoring any query string (a SAS), else None."""
    bare = url.split("?", 1)[0]
    for e in REGISTRY.values():
        for a in e.assets:
            for s in a.sources:
                if s.url and s.url == bare:  # an hf source has no url: it is found by name
                    return a, s
    return None


def list_entries() -> list[dict[str, Any]]:
    """One record per source of every asset: name, kind (file/folder/zip), source, url, size, description, target."""
    rows = []
    for e in REGISTRY.values():
        for a in e.assets:
            for k, s in enumerate(a.sources):
                rows.append({"name": e.name, "entry": e.kind, "kind": a.kind, "source": s.kind,
                             "url": s.address(HF_DEFAULT_ENDPOINT), "revision": s.revision or None,
                             "file": a.filename, "size": a.size, "target": a.target,
                             "description": a.description if k == 0 else f"alternative source: {a.description}"})
    return rows


# ---------------------------------------------------------------------------------------------
# Fetching


@dataclass
class Fetched:
    """What fetching one asset did: the source that served it (None: already present) and the engine's result."""

    asset: Asset
    source: Optional[Source]
    result: Any  # vinvl.download.Result


_HUB_LOG_LOCK = threading.Lock()
_hub_log_quiet = [0, 0]  # how many quiet calls are running, and the level to restore after the last one


@contextmanager
def _hub_logs(quiet: bool) -> Iterator[None]:
    """With ``quiet``, nothing the hub client logs (retry and resume notes, fallbacks) reaches the terminal."""
    if not quiet:
        yield
        return
    import logging

    hub_logger = logging.getLogger("huggingface_hub")  # its modules log through children of this one
    with _HUB_LOG_LOCK:
        if _hub_log_quiet[0] == 0:
            _hub_log_quiet[1] = hub_logger.level
            hub_logger.setLevel(logging.ERROR)
        _hub_log_quiet[0] += 1
    try:
        yield
    finally:
        with _HUB_LOG_LOCK:
            _hub_log_quiet[0] -= 1
            if _hub_log_quiet[0] == 0:
                hub_logger.setLevel(_hub_log_quiet[1])


def _one_line(e: BaseException) -> str:
    # Hub errors carry several lines (status, URL, request id): keep the message on one line.
    text = single_spaced(str(e))
    return text or type(e).__name__


def _git_blob_sha1(path: Path) -> str:
    return file_digest(path, hashlib.sha1(f"blob {path.stat().st_size}\0".encode())).hexdigest()


def file_sha256(path: "os.PathLike | str") -> str:
    """Hex sha256 of a file's bytes."""
    return file_digest(path, hashlib.sha256()).hexdigest()


def _problem(path: Path, *, etag: Optional[str], sha256: Optional[str], size: Optional[int],
             what: str) -> Optional[str]:
    """Why a fetched file differs from what its source states (size, registry sha256, hub ETag); None if it matches."""
    got_size = path.stat().st_size
    if size is not None and got_size != size:
        return f"size {got_size} bytes, expected {size}"
    digest = None
    if sha256:
        digest = file_sha256(path)
        if digest != sha256.lower():
            return f"sha256 mismatch (registry {sha256}, got {digest})"
    tag = (etag or "").strip('"').lower().removeprefix("w/").strip('"')
    if re.fullmatch(r"[0-9a-f]{64}", tag):  # an LFS file: its ETag is its sha256
        digest = digest or file_sha256(path)
        if digest != tag:
            return f"sha256 mismatch ({what} says {tag}, got {digest})"
    elif re.fullmatch(r"[0-9a-f]{40}", tag):  # a small file: its git blob hash
        got = _git_blob_sha1(path)
        if got != tag:
            return f"git blob hash mismatch ({what} says {tag}, got {got})"
    return None


def _verify(path: Path, *, etag: Optional[str], sha256: Optional[str], size: Optional[int], what: str,
            name: Optional[Path] = None) -> None:
    """Check a fetched file against what its source states; a mismatch deletes it (``name``: its final name)."""
    bad = _problem(path, etag=etag, sha256=sha256, size=size, what=what)
    if bad:
        path.unlink(missing_ok=True)
        raise VerificationError(f"{name or path}: {bad}; the file was deleted", name or path)


def _retry_after(headers: Any) -> Optional[float]:
    value = headers.get("Retry-After") if headers is not None else None
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None


def _hub_url(src: Source) -> str:
    from huggingface_hub import hf_hub_url

    return hf_hub_url(src.repo, src.path, revision=src.revision, endpoint=hf_endpoint())


def _hub_transport_errors() -> tuple[type[BaseException], ...]:
    # The hub client's network errors: httpx2's in huggingface_hub 2.x, httpx's in 1.x (pyproject allows both).
    found = []
    for name in ("httpx2", "httpx"):
        try:
            found.append(importlib.import_module(name).TransportError)
        except (ImportError, AttributeError):
            pass
    return tuple(found)


def hub_metadata(src: Source, dl: Downloader, *, quiet: bool = False) -> Any:
    """The hub's metadata of an ``hf`` source (size, ETag, where to GET it): one HEAD, retried like every transfer.

    huggingface_hub's own HEAD does not retry, so :meth:`Downloader.retry` does: 408, 429 and 5xx
    answers and connections reset after connecting are retried with back-off; a hub that cannot be
    reached at all fails at once. Errors are :class:`RemoteError` s carrying the HTTP status.
    """
    from huggingface_hub import get_hf_file_metadata
    from huggingface_hub.errors import HfHubHTTPError

    endpoint = hf_endpoint()
    url = _hub_url(src)
    etag_timeout = float(os.environ.get("HF_HUB_ETAG_TIMEOUT") or 10)
    what = f"HEAD {src.path}"

    def once(timeout: float) -> Any:
        try:
            with _hub_logs(quiet):
                return get_hf_file_metadata(url, timeout=min(timeout, etag_timeout), endpoint=endpoint)
        except HfHubHTTPError as e:
            resp = getattr(e, "response", None)
            code = getattr(resp, "status_code", None)
            if code is None:
                raise RemoteError(f"{what}: {_one_line(e)}", fault=True) from None
            if code in (408, 429) or code >= 500:
                raise Transient(f"HTTP {code}", status=code, delay=_retry_after(resp.headers)) from None
            err = resp.headers.get("X-Error-Code")
            hint = f": {HUB_ACCESS_HINT}" if code in ACCESS_DENIED else ""
            raise RemoteError(f"{what}: HTTP {code}{' ' + err if err else ''}{hint}", code) from None
        except _hub_transport_errors() as e:
            reason, contact, final = network_reason(e)
            raise Transient(reason, contact=contact, final=final, short=reason.split(" (")[0]) from None

    return dl.retry(urlsplit(url).netloc, what, once)


def _hub_file(src: Source, meta: Any, final: Path) -> RemoteFile:
    """What the engine GETs for a hub file: where the hub's HEAD points, its token only for the hub itself."""
    url = _hub_url(src)
    location = urljoin(url, meta.location) if meta.location else url
    headers: dict[str, str] = {}
    origin = urlsplit(location)[:2]
    if origin in (urlsplit(url)[:2], urlsplit(HF_DEFAULT_ENDPOINT)[:2]):
        # The hub serves small files itself and needs the token for gated or private repos; a CDN's signed
        # link must not get it (huggingface_hub drops it there too).
        from huggingface_hub.utils import build_hf_headers

        token = build_hf_headers().get("authorization")
        if token:
            headers["Authorization"] = token
    size = src.size if src.size is not None else meta.size

    def verify(part: Path) -> Optional[str]:
        return _problem(part, etag=meta.etag, sha256=src.sha256, size=size, what=src.label())

    return RemoteFile(location, final.name, meta.size, None, etag=meta.etag, headers=headers, service="hf",
                      verify=verify)


def _hub_cached(src: Source) -> Optional[Path]:
    """The hub cache's copy of a pinned hub file (``HF_HUB_CACHE`` / ``HF_HOME``), if it has one."""
    if not src.pinned:
        return None
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(src.repo, src.path, cache_dir=str(_hf_cache_dir()), revision=src.revision)
    return Path(cached) if isinstance(cached, str) and Path(cached).is_file() else None


def _blob_etag(cached: Path) -> Optional[str]:
    # The hub cache names each blob by its ETag (sha256 or git blob hash): the copy can be checked offline.
    blob = Path(os.path.realpath(cached))
    return blob.name if blob.parent.name == "blobs" and re.fullmatch(r"[0-9a-f]{40}|[0-9a-f]{64}", blob.name) else None


def _fetch_hf(src: Source, asset: Asset, dest: Path, dl: Downloader, *, quiet: bool, dry_run: bool) -> Result:
    """One hub file into ``dest/filename``: the hub cache's copy when it holds it, else HEAD, then the engine's GETs.

    The engine (not ``hf_hub_download``) moves the bytes so that every promise of :mod:`vinvl.download`
    holds for the hub too: retries, a resumable ``NAME.part``, Ctrl-C, and the final name only after
    the ETag (and registry sha256) check.
    """
    final = dest / asset.filename
    cached = _hub_cached(src)
    if cached is not None:
        if dry_run:
            return Result(dest, [final], [cached.stat().st_size])
        make_folders(dest)
        part = final.with_name(final.name + ".part")
        shutil.copyfile(cached, part)
        try:
            _verify(part, etag=_blob_etag(cached), sha256=src.sha256, size=src.size, what=f"the hub cache ({cached})",
                    name=final)
            commit(part, final)
            return Result(dest, [final], [final.stat().st_size], present=1)
        except VerificationError:
            if hf_offline():
                raise
            # The cache's copy is damaged: fetch the file from the hub instead.
    if hf_offline():
        raise RemoteError("HF_HUB_OFFLINE is set and the file is not in the hub cache")
    meta = hub_metadata(src, dl, quiet=quiet)
    if dry_run:
        return Result(dest, [final], [meta.size])
    make_folders(dest)
    for again in (True, False):
        rf = _hub_file(src, meta, final)
        try:
            return dl.fetch([(rf, final)], dest, asset.name)
        except RemoteError as e:
            # A signed CDN link may expire during a long transfer: ask the hub for a fresh one, once.
            if not (again and e.status in (401, 403) and not rf.headers):
                raise
            meta = hub_metadata(src, dl, quiet=quiet)
        except OSError as e:  # network errors are RemoteErrors by now: this is the local disk
            raise VinvlError(f"cannot write {e.filename or dest}: {e.strerror or e}") from None
    raise AssertionError("unreachable")


def _registry_check(src: Source, asset: Asset) -> Optional[Callable[[Path], Optional[str]]]:
    """The registry's own size and sha256 check of a file from ``src``; None where it states neither (or a folder).

    The engine runs it before the final name, like the server's MD5.
    """
    if asset.kind == "folder" or not (src.sha256 or src.size is not None):
        return None

    def registry_check(part: Path) -> Optional[str]:
        return _problem(part, etag=None, sha256=src.sha256, size=src.size, what=src.label())

    return registry_check


# ---------------------------------------------------------------------------------------------
# Source kinds: a kind is one SourceKind class and one entry in SOURCE_KINDS; nothing else names a kind.


class SourceKind(ABC):
    """What one kind of :class:`Source` does: its address and label, how it is fetched and probed, what to advise.

    The defaults serve a source read from its plain ``url``; a kind overrides what differs.
    """

    unreachable_advice = "check the network (vinvl download --check shows every source)"
    # What a refusal means for the release's storage (no SAS); https sources have always been told the same.
    denied_advice = "a read SAS from the authors is needed (--sas or VINVL_AZURE_SAS)"

    def address(self, src: Source, endpoint: Optional[str] = None) -> str:
        """The URL ``src`` is read from (``endpoint``: the hub's, for a kind served by one)."""
        return src.url

    def label(self, src: Source) -> str:
        """A short name of ``src`` for messages and tables: ``KIND URL``."""
        return f"{src.kind} {src.url}"

    def account(self, url: str) -> str:
        """What tells this kind's sources apart in ``vinvl download --list`` (the host's first label), or ""."""
        return (urlsplit(url).hostname or "").split(".")[0]

    @abstractmethod
    def fetch(self, src: Source, asset: Asset, dest: Path, dl: Downloader, *, sas: Optional[str], quiet: bool,
              dry_run: bool, exclude: Sequence[str]) -> Result:
        """``asset`` from ``src`` into ``dest`` (``dry_run``: only what would come); a failure the next source may
        mend raises :class:`RemoteError` or :class:`VerificationError`, one it cannot a :class:`VinvlError`."""

    @abstractmethod
    def probe(self, src: Source, asset: Asset, dl: Downloader, *, sas: Optional[str]) -> Optional[int]:
        """Ask ``src`` for ``asset`` without downloading it: its size in bytes where stated; a refusal raises."""

    def offline(self) -> Optional[str]:
        """The setting that forbids asking this kind now (``--check`` reports ``offline`` naming it), else None."""
        return None

    def advice(self, src: Source, e: BaseException) -> str:
        """What to do about ``src``'s failure ``e``, from what happened (never "check the network" after an answer)."""
        if isinstance(e, VerificationError):
            return "its copy did not match its checksum and was deleted: run the command again"
        if not isinstance(e, RemoteError):
            return f"it failed ({type(e).__name__}): run the command again"
        if e.unreachable:
            return self.unreachable_advice
        if e.status in ACCESS_DENIED:
            return self.denied_advice
        if e.status == 404:
            return self.missing_advice(src)
        if e.fault or e.status is not None:
            return f"it answered but the transfer failed ({e.reason}): run the command again later (it resumes)"
        return self.unanswered_advice(src)

    def missing_advice(self, src: Source) -> str:
        """The advice after an HTTP 404 from ``src``."""
        return "it answered HTTP 404: the file is not there"

    def unanswered_advice(self, src: Source) -> str:
        """The advice after a failure of ``src`` with neither an answer nor a network error."""
        return "run the command again"

    def way_out(self, failed: Sequence[tuple[Source, BaseException]]) -> Optional[str]:
        """Where else to turn once every source failed, from this kind's failures (never none); None: nothing to add."""
        return None


class HfKind(SourceKind):
    """``hf``: a Hugging Face Hub repo file at a pinned revision, found through ``huggingface_hub``, moved by the
    engine."""

    unreachable_advice = ("check the network (HF_ENDPOINT for a mirror of the hub; "
                          "vinvl download --check shows every source)")
    denied_advice = "it refused the read: a gated or private repo needs HF_TOKEN (or `hf auth login`)"

    def address(self, src: Source, endpoint: Optional[str] = None) -> str:
        """The file's ``resolve`` URL on ``endpoint`` (default: :func:`hf_endpoint`)."""
        base = (endpoint or hf_endpoint()).rstrip("/")
        return f"{base}/{src.repo}/resolve/{quote(src.revision, safe='')}/{quote(src.path)}"

    def label(self, src: Source) -> str:
        """``hf REPO@REV/PATH``, a pinned commit abbreviated as git does."""
        rev = src.revision[:7] if src.pinned else src.revision
        return f"{src.kind} {src.repo}@{rev}/{src.path}"

    def account(self, url: str) -> str:
        """Nothing: the entry's own line names the hub repo."""
        return ""

    def fetch(self, src: Source, asset: Asset, dest: Path, dl: Downloader, *, sas: Optional[str], quiet: bool,
              dry_run: bool, exclude: Sequence[str]) -> Result:
        """The hub cache's copy, else the hub's file through the engine (:func:`_fetch_hf`)."""
        return _fetch_hf(src, asset, dest, dl, quiet=quiet, dry_run=dry_run)

    def probe(self, src: Source, asset: Asset, dl: Downloader, *, sas: Optional[str]) -> Optional[int]:
        """The hub's metadata HEAD: the file's size."""
        return hub_metadata(src, dl, quiet=True).size

    def offline(self) -> Optional[str]:
        """``HF_HUB_OFFLINE`` when it (or ``TRANSFORMERS_OFFLINE``) is set."""
        return "HF_HUB_OFFLINE" if hf_offline() else None

    def missing_advice(self, src: Source) -> str:
        """A 404 names the revision: a mirror may lack the pinned commit."""
        return f"it answered HTTP 404 at revision {src.revision} (is HF_ENDPOINT a mirror without it?)"

    def unanswered_advice(self, src: Source) -> str:
        """``HF_HUB_OFFLINE`` kept the hub from being asked, or: run again."""
        if hf_offline():
            return "HF_HUB_OFFLINE is set: unset it to let vinvl ask the hub"
        return super().unanswered_advice(src)

    def way_out(self, failed: Sequence[tuple[Source, BaseException]]) -> Optional[str]:
        """The first failed hub mirror has the file: what to do about its failure."""
        s, e = failed[0]
        return f"the Hugging Face mirror {s.repo} has it: {self.advice(s, e)}"


class AzureKind(SourceKind):
    """``azure``: a blob, a folder (every blob under a prefix) or a zip of the original release; a read SAS from
    ``--sas`` or ``VINVL_AZURE_SAS`` is added to the URL."""

    def fetch(self, src: Source, asset: Asset, dest: Path, dl: Downloader, *, sas: Optional[str], quiet: bool,
              dry_run: bool, exclude: Sequence[str]) -> Result:
        """The file, folder or zip through the engine, its listing and its excludes."""
        return dl.download(_with_sas(src.url, sas), dest, kind=asset.kind, filename=asset.filename or None,
                           verify=_registry_check(src, asset), exclude=tuple(asset.exclude) + tuple(exclude),
                           dry_run=dry_run, label=asset.name)

    def probe(self, src: Source, asset: Asset, dl: Downloader, *, sas: Optional[str]) -> Optional[int]:
        """A HEAD of the blob, or one listing entry of the folder."""
        return dl.probe(_with_sas(src.url, sas), asset.kind)

    def way_out(self, failed: Sequence[tuple[Source, BaseException]]) -> Optional[str]:
        """A refused read: no public mirror is known, a SAS is."""
        if any(isinstance(e, RemoteError) and e.status in ACCESS_DENIED for _, e in failed):
            return f"no public mirror is known for it: {self.denied_advice}"
        return None


class HttpsKind(SourceKind):
    """``https``: any other plain file (or zip) URL, through the engine."""

    def fetch(self, src: Source, asset: Asset, dest: Path, dl: Downloader, *, sas: Optional[str], quiet: bool,
              dry_run: bool, exclude: Sequence[str]) -> Result:
        """One file through the engine (a zip unpacked after)."""
        rf = dl.stat_url(src.url, asset.filename)
        rf.verify = _registry_check(src, asset)
        if dry_run:
            return Result(dest, [dest / asset.filename], [rf.size])
        try:
            res = dl.fetch([(rf, dest / asset.filename)], dest, asset.name)
        except OSError as e:  # network errors are RemoteErrors by now: this is the local disk
            raise VinvlError(f"cannot write {e.filename or dest}: {e.strerror or e}") from None
        if asset.kind == "zip":
            res.unpacked = unpack_zip(dest / asset.filename)
        return res

    def probe(self, src: Source, asset: Asset, dl: Downloader, *, sas: Optional[str]) -> Optional[int]:
        """A HEAD of the URL."""
        return dl.stat_url(src.url, asset.filename or "x").size


# The registered kinds; their order is also the order in which a kind is asked for a way out once every source
# failed (the hub mirror's is the most useful).
SOURCE_KINDS: dict[str, SourceKind] = {"hf": HfKind(), "azure": AzureKind(), "https": HttpsKind()}


def _alternatives(asset: Asset, failed: Sequence[tuple[Source, BaseException]]) -> str:
    """Once every source failed: the first way out a kind offers (in SOURCE_KINDS order), else the last advice."""
    where = asset.destination()
    for name, kind in SOURCE_KINDS.items():
        mine = [(s, e) for s, e in failed if s.kind == name]
        way = kind.way_out(mine) if mine else None
        if way:
            return f"{way}, or put the file into {where}"
    s, e = failed[-1]
    return f"{s.handler.advice(s, e)}, or put the file into {where}"


def _fetch_asset(asset: Asset, out: Optional[Path], dl: Any, *, sas: Optional[str], quiet: bool, dry_run: bool,
                 exclude: Sequence[str]) -> Fetched:
    dest = asset.destination(out)
    if asset.present(out):
        path = asset.local_path(out)
        return Fetched(asset, None, Result(dest, [path], [path.stat().st_size if path.is_file() else None],
                                           present=1, unpacked=path if asset.kind == "zip" else None))
    if not asset.sources:
        raise VinvlError(f"{asset.local_path(out)} is missing: it is shipped with the package; reinstall vinvl")
    failed: list[tuple[Source, BaseException]] = []
    for src in asset.sources:
        try:
            res = src.handler.fetch(src, asset, dest, dl, sas=sas, quiet=quiet, dry_run=dry_run, exclude=exclude)
            return Fetched(asset, src, res)
        except (RemoteError, VerificationError) as e:
            failed.append((src, e))
        except VinvlError:
            raise  # the local disk, a refused name: another source cannot help
        except Exception as e:  # noqa: BLE001 - the hub client's errors (consistency checks)
            failed.append((src, e))
    what = asset.filename or asset.sources[0].url
    tried = "; ".join(f"{s.label()}: {_one_line(e)}" for s, e in failed)
    # A fault mid-run (a source answered, then failed after every retry) makes the whole a fault: rerun resumes.
    fault = any(getattr(e, "fault", False) for _, e in failed)
    raise RemoteError(f"{asset.name}: {what}: no source worked (tried {tried}); {_alternatives(asset, failed)}",
                      getattr(failed[-1][1], "status", None), fault=fault,
                      unreachable=all(getattr(e, "unreachable", False) for _, e in failed))


def fetch(
    name: str,
    out: Optional[Path] = None,
    *,
    sas: Optional[str] = None,
    quiet: bool = False,
    workers: int = 4,
    dry_run: bool = False,
    exclude: Iterable[str] = (),
    downloader: Any = None,
) -> list[Fetched]:
    """Every asset of ``name`` into its place (or ``out``), each from the first source that works."""
    e = entry(name)
    dl = downloader or Downloader(workers=workers, quiet=quiet)
    return [_fetch_asset(a, out, dl, sas=azure_sas(sas), quiet=quiet, dry_run=dry_run, exclude=tuple(exclude))
            for a in e.assets]


def _default_url_dest(url: str, kind: str) -> Path:
    # An unknown URL lands in the current folder, like curl -O / wget; a folder keeps its last name.
    path = urlsplit(url).path.rstrip("/")
    return Path.cwd() / path.rsplit("/", 1)[-1] if kind == "folder" else Path.cwd()


def download(
    source: str,
    out: Optional[Path] = None,
    *,
    exclude: Iterable[str] = (),
    dry_run: bool = False,
    quiet: bool = False,
    workers: int = 4,
    sas: Optional[str] = None,
    downloader: Optional[Downloader] = None,
) -> list[tuple[str, Result]]:
    """Fetch a registry name (each asset from its first working source) or a URL; ``(source, result)`` per asset."""
    dl = downloader or Downloader(workers=workers, quiet=quiet)
    exclude = tuple(exclude)
    if "://" not in source:
        done = fetch(source, out, sas=sas, quiet=quiet, dry_run=dry_run, exclude=exclude, downloader=dl)
        return [(f.source.label() if f.source else f"present: {f.asset.local_path(out)}", f.result) for f in done]
    found = find_by_url(source)
    if found is None:
        path = urlsplit(source).path
        kind = "folder" if path.endswith("/") else "zip" if path.endswith(".zip") else "file"
        dest = Path(out) if out is not None else _default_url_dest(source, kind)
        return [(source, dl.download(source, dest, kind=kind, exclude=exclude, dry_run=dry_run))]
    # A registry URL (perhaps with a SAS appended): its place, file name and excludes.
    asset, _ = found
    res = dl.download(source, asset.destination(out), kind=asset.kind, filename=asset.filename or None,
                      exclude=asset.exclude + exclude, dry_run=dry_run, label=asset.name)
    return [(source, res)]


def ensure(name: str, *, download: bool = True, sas: Optional[str] = None, quiet: bool = False) -> Entry:
    """Make every file of ``name`` present in its place, fetching what lacks (``download``), and return the entry.

    Without ``download`` a missing file is one error naming it and the command that fetches it.
    """
    e = entry(name)
    missing = [a for a in e.assets if not a.present()]
    if not missing:
        return e
    if not download or e.shipped:
        where = "; ".join(f"{a.local_path()} (from {a.sources[0].label() if a.sources else 'the package'})"
                          for a in missing)
        raise VinvlError(f"{name} is not in the cache: missing {where}. Run `vinvl download {name}` or put the files there")
    fetch(name, sas=sas, quiet=quiet)  # its progress bars show the transfer; a failure is the one line
    if not quiet:
        print(f"fetched {name} into {e.folder()}", file=sys.stderr)
    return e


@dataclass(frozen=True)
class DetectorFiles:
    """A resolved detector: its registry name, preset, weights and label map."""

    name: str
    preset: str
    weights: Path
    labelmap: Path


def resolve_detector(name: str, *, download: bool = True, sas: Optional[str] = None, quiet: bool = False) -> DetectorFiles:
    """The local weights and label map of detector ``name``, fetched first when missing (``download``)."""
    if name not in REGISTRY:
        raise VinvlError(f"unknown model {name!r}; detectors: {', '.join(names('detector'))}")
    e = entry(name)
    if e.kind != "detector":
        raise VinvlError(f"{name} is a {e.kind}, not a detector; detectors: {', '.join(names('detector'))}")
    ensure(name, download=download, sas=sas, quiet=quiet)
    folder = e.folder()
    return DetectorFiles(name, e.preset or name, folder / e.weights, folder / e.labelmap)


def default_detector() -> tuple[str, str]:
    """``(name, why)``: the released VG detector when it is in the cache, else the shipped demo; never downloads."""
    if all(a.present() for a in entry(DEFAULT_DETECTOR).assets):
        return DEFAULT_DETECTOR, f"the released {DEFAULT_DETECTOR} from {entry(DEFAULT_DETECTOR).folder()}"
    ensure(DEMO_DETECTOR, download=False)
    return DEMO_DETECTOR, (
        f"the shipped demo model {DEMO_DETECTOR} (5 shapes, not real-world objects): {DEFAULT_DETECTOR} is not in "
        f"{entry(DEFAULT_DETECTOR).folder()}; run `vinvl download {DEFAULT_DETECTOR}` or pass --model/--weights"
    )


def split_checkpoint_name(value: str) -> Optional[tuple[str, str]]:
    """``(name, folder)`` when ``value`` is a captioner, Oscar+ or plain BERT checkpoint's registry name, alone
    (folder ``""``) or followed by ``/FOLDER``, one checkpoint folder among its files
    (``oscar_base_vg_labels/ep_67_588997``); None otherwise."""
    name, _, folder = str(value).partition("/")
    e = REGISTRY.get(name)
    if e is None or e.kind not in CHECKPOINT_KINDS:
        return None
    return name, folder.strip("/")


def _natural(path: Path) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(path))]


def checkpoint_path(name: str, *, download: bool = True, sas: Optional[str] = None, quiet: bool = False) -> Path:
    """The local folder (or zip) of a captioner, Oscar+ or plain BERT checkpoint ``name``, fetched first when missing;
    ``NAME/FOLDER``: the checkpoint folder FOLDER (the end of its path) among NAME's files."""
    found = split_checkpoint_name(name)
    if found is None:
        e = entry(name)
        raise VinvlError(f"{name} is a {e.kind}, not an Oscar+ checkpoint")
    name, folder = found
    e = entry(name)
    ensure(name, download=download, sas=sas, quiet=quiet)
    path = e.folder() if e.kind in ("captioner", "bert") else e.assets[0].local_path()
    if folder:
        return _inner_checkpoint(name, path, folder)
    if e.kind in ("captioner", "bert") or (path / "pytorch_model.bin").is_file() or list(path.glob("checkpoint-*")):
        return path
    # A released zip unpacks to a folder holding the checkpoint folder (or several): the newest one.
    found_bins = sorted(path.rglob("pytorch_model.bin"), key=_natural)
    return found_bins[-1].parent if found_bins else path


def _inner_checkpoint(name: str, root: Path, folder: str) -> Path:
    """The one checkpoint folder (holding ``pytorch_model.bin``) under ``root`` whose path ends with ``folder``."""
    folders = sorted({p.parent for p in root.rglob("pytorch_model.bin")}, key=_natural)
    want = Path(folder).parts
    hits = [f for f in folders if f.relative_to(root).parts[-len(want):] == want]
    if len(hits) == 1:
        return hits[0]
    listing = ", ".join(f.relative_to(root).as_posix() for f in (hits or folders)) or "none"
    if not hits:
        raise VinvlError(f"{name}/{folder}: no checkpoint folder {folder!r} in {root}; its checkpoint folders: {listing}")
    raise VinvlError(f"{name}/{folder}: several checkpoint folders end so ({listing}): give more of the path")


def is_checkpoint_name(value: str) -> bool:
    """Whether ``value`` names a captioner, Oscar+ or plain BERT checkpoint in the registry, alone or as
    ``NAME/FOLDER`` (what ``--init`` takes)."""
    return split_checkpoint_name(value) is not None


# ---------------------------------------------------------------------------------------------
# vinvl download --check


CHECK_STATES = ("reachable", "denied", "missing", "error", "unreachable", "offline")


@dataclass
class CheckRow:
    """One source of one asset as ``--check`` found it, in the same words for every backend.

    ``status`` is one of :data:`CHECK_STATES`; ``http`` the status code when the source answered with
    an error; ``reason`` the short cause (``HTTP 409``, ``DNS failure``, ``connection refused``, ...).
    """

    name: str
    file: str
    source: Source
    status: str
    size: Optional[int] = None
    detail: str = ""
    http: Optional[int] = None
    reason: str = ""

    @property
    def state(self) -> str:
        """``reachable``, or the status and its cause: ``denied (HTTP 401)``, ``unreachable (DNS failure)``."""
        return self.status if self.status == "reachable" or not self.reason else f"{self.status} ({self.reason})"


def _classify(row: CheckRow, e: BaseException) -> None:
    """The one mapping from a failure to a state, shared by the hub and Azure/https sources."""
    row.detail = _one_line(e)
    if isinstance(e, RemoteError):
        row.http = e.status
        row.reason = e.reason or ""
        if e.unreachable:
            row.status = "unreachable"
        elif e.status in ACCESS_DENIED:
            row.status = "denied"
        elif e.status == 404:
            row.status = "missing"
        else:
            row.status = "error"
            row.reason = row.reason or "no usable answer"
    else:
        row.status, row.reason = "error", type(e).__name__


def _check_one(asset: Asset, src: Source, *, sas: Optional[str], timeout: float) -> CheckRow:
    row = CheckRow(asset.name, asset.filename or "(folder)", src, "error")
    # One retry with a short back-off: a busy answer (429/5xx) or a reset connection is not a verdict.
    dl = Downloader(attempts=2, connect_timeout=timeout, timeout=timeout, backoff=0.2, max_backoff=1.0, quiet=True)
    try:
        kind = src.handler
        setting = kind.offline()
        if setting:
            row.status, row.reason, row.detail = "offline", setting, f"{setting} is set"
            return row
        row.size = kind.probe(src, asset, dl, sas=sas)
        row.status = "reachable"
    except Exception as e:  # noqa: BLE001 - every failure becomes a row, never a traceback
        _classify(row, e)
    return row


class NoSourceAnswered(VinvlError):
    """``check`` found no source that answered at all (offline); ``rows`` holds what each source said."""

    def __init__(self, message: str, rows: list[CheckRow]) -> None:
        super().__init__(message)
        self.rows = rows


def check(selected: Optional[Sequence[str]] = None, *, sas: Optional[str] = None, timeout: float = 5.0,
          workers: int = 16) -> list[CheckRow]:
    """Ask every source of every asset of ``selected`` (default: all names) whether it answers: HEAD requests
    only (one listing entry for a folder), in parallel. Raises :class:`NoSourceAnswered` (with the rows)
    when no source answers at all."""
    entries = [entry(n) for n in (selected or list(REGISTRY))]
    jobs = [(a, s) for e in entries for a in e.assets for s in a.sources]
    if not jobs:
        return []
    token = azure_sas(sas)
    with ThreadPoolExecutor(min(workers, len(jobs)), thread_name_prefix="vinvl-check") as pool:
        rows = list(pool.map(lambda j: _check_one(j[0], j[1], sas=token, timeout=timeout), jobs))
    if all(r.status in ("unreachable", "offline") for r in rows):
        hosts: dict[str, str] = {}
        for r in rows:
            host = urlsplit(r.source.address()).netloc
            hosts.setdefault(host, r.reason or r.detail)
        why = "; ".join(f"{h}: {d}" for h, d in hosts.items())
        raise NoSourceAnswered(f"offline: no source answered ({why})", rows)
    return rows


__all__ = [
    "ASSET_KINDS", "Asset", "AzureKind", "CHECK_STATES", "CheckRow", "DEFAULT_CAPTIONER", "DEFAULT_DETECTOR",
    "DEMO_DETECTOR", "DetectorFiles", "ENTRY_KINDS", "Entry", "Fetched", "HfKind", "HttpsKind", "NoSourceAnswered",
    "REGISTRY", "SOURCE_KINDS", "Source", "SourceKind", "azure", "azure_sas", "check", "checkpoint_path",
    "default_detector", "download", "ensure", "entry", "fetch", "find_by_url", "hf", "hf_endpoint", "hf_offline",
    "hub_metadata", "is_checkpoint_name", "list_entries", "names", "resolve_detector", "shipped_model_dir",
    "split_checkpoint_name", "vinvl_home",
]
