"""A tiny synthetic captioning task whose captions can only come from the regions: each image shows two
objects of distinct shapes and colours; a region's feature is its colour's plus its shape's fixed random
vector plus noise; captions name both objects in shape order."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from vinvl.features import Prediction, format_caption_features_row, format_label_row
from vinvl.tsv import TSVWriter

COLOURS = ["red", "blue", "green", "yellow"]
SHAPES = ["circle", "square", "triangle", "star"]  # also the canonical order objects are named in
LINKS = ["and", "next to"]
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def build_split(folder: Path, n_images: int, seed: int, dim: int = 64, basis_seed: int = 0, prefix: str = "img") -> Path:
    """A split in the original layout: caption-variant feature TSV, label TSV (tags = the shapes),
    caption json, yaml. Each image shows two objects of distinct shapes; a region's feature is its
    colour's plus its shape's fixed random vector plus noise; captions name both objects in
    shape order ("a red circle and a blue square"), two phrasings per image."""
    rng = np.random.default_rng(seed)
    basis = {w: np.random.default_rng([basis_seed, i]).standard_normal(dim).astype(np.float32)
             for i, w in enumerate(COLOURS + SHAPES)}
    folder.mkdir(parents=True, exist_ok=True)
    captions = []
    with TSVWriter(folder / "feature.tsv") as fw, TSVWriter(folder / "label.tsv") as lw:
        for i in range(n_images):
            key = f"{prefix}{i:04d}"
            shapes = sorted(rng.choice(len(SHAPES), 2, replace=False).tolist())
            objs = [(COLOURS[int(rng.integers(len(COLOURS)))], SHAPES[s]) for s in shapes]
            order = rng.permutation(2)  # region order says nothing
            feats = np.stack([basis[objs[j][0]] + basis[objs[j][1]] + 0.3 * rng.standard_normal(dim).astype(np.float32)
                              for j in order])
            fw.write(format_caption_features_row(key, feats, dim=dim))
            pred = Prediction(key, np.tile(np.array([[0, 0, 9, 9]], np.float32), (2, 1)), [objs[j][1] for j in order],
                              np.ones(2, np.float32))
            lw.write(format_label_row(pred))
            for link in LINKS:
                text = f"a {objs[0][0]} {objs[0][1]} {link} a {objs[1][0]} {objs[1][1]}"
                captions.append({"image_id": key, "caption": text, "id": len(captions)})
    (folder / "caption.json").write_text(json.dumps(captions))
    (folder / "split.yaml").write_text("feature: feature.tsv\nlabel: label.tsv\ncaption: caption.json\n")
    return folder / "split.yaml"


def write_vocab(folder: Path) -> Path:
    words = SPECIAL + sorted({"a", "next", "to", "and", *COLOURS, *SHAPES})
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(words) + "\n")
    return folder / "vocab.txt"
