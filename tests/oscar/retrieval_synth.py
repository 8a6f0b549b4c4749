"""A tiny synthetic retrieval task: images of two or three distinct things (each region: the thing's fixed random
vector + noise, tags: the things), five captions each naming two of them, in the original's file layout."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from vinvl.features import Prediction, format_features_row, format_label_row
from vinvl.tsv import TSVWriter, write_key_index

THINGS = ["cat", "dog", "car", "tree", "boat", "bird", "cup", "lamp", "book", "ball", "chair", "horse"]
TEMPLATES = ["a {0} and a {1}", "the {1} next to the {0}", "{0} with {1}", "a photo of a {0} and a {1}",
             "there is a {1} near a {0}"]
DIM = 32


def synthetic_retrieval(folder: Path, seed: int = 0, train_images: int = 60, test_images: int = 30) -> Path:
    """Images of two or three distinct things (each region: the thing's fixed random vector + noise,
    tags: the things), five captions naming two of them; train and test images share no thing set."""
    rng = np.random.default_rng(seed)
    basis = {t: rng.standard_normal(DIM).astype(np.float32) for t in THINGS}
    sets: list[tuple[str, ...]] = []
    while len(sets) < train_images + test_images:
        s = tuple(sorted(rng.choice(THINGS, int(rng.integers(2, 4)), replace=False)))
        if s not in sets:
            sets.append(s)
    folder.mkdir(parents=True, exist_ok=True)
    captions: dict[str, dict[int, list[str]]] = {"train": {}, "test": {}}
    with TSVWriter(folder / "features.tsv") as fw, TSVWriter(folder / "label.tsv") as lw:
        for i, things in enumerate(sets):
            key = 1000 + i
            feats = np.stack([basis[t] + 0.3 * rng.standard_normal(DIM).astype(np.float32) for t in things])
            fw.write(format_features_row(str(key), feats, dim=DIM))
            lw.write(format_label_row(Prediction(str(key), np.zeros((len(things), 4), np.float32), list(things),
                                                 np.ones(len(things), np.float32))))
            caps = []
            for tmpl in TEMPLATES:
                a, b = rng.choice(len(things), 2, replace=False)
                caps.append(tmpl.format(things[a], things[b]))
            captions["train" if i < train_images else "test"][key] = caps
    write_key_index(folder / "imageid2idx.json", ((str(1000 + i), i) for i in range(len(sets))))
    torch.save(captions["train"], folder / "train_captions.pt")
    # the original's files sometimes hold JSON strings: one split keeps that form
    torch.save({k: json.dumps(v) for k, v in captions["test"].items()}, folder / "test_captions.pt")
    (folder / "test_img_keys.tsv").write_text("".join(f"{k}\n" for k in captions["test"]))
    words = sorted({w for caps in captions["train"].values() for c in caps for w in c.split()} | set(THINGS)
                   | {w for t in TEMPLATES for w in t.split() if "{" not in w})
    (folder / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + words) + "\n")
    return folder
