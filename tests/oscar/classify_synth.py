"""Tiny synthetic VQA / GQA / NLVR2 data whose answers live only in the region features.

Each image holds 2 things (ball, cube, cone, ring) of random colours; a region's feature is its
colour's fixed random vector + its thing's + noise, and its tag is the thing alone, so
"what colour is the cube?" can only be answered by finding the cube's region and reading its
colour. NLVR2: "there is a red thing" is true iff the left or the right image has a red region.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import torch

from tests.oscar.model_tester import tiny_config
from vinvl.features import Prediction, format_features_row, format_label_row
from vinvl.oscar import OscarConfig
from vinvl.tsv import TSVWriter, write_key_index

COLOURS = ["red", "green", "blue", "yellow"]
THINGS = ["ball", "cube", "cone", "ring"]
EXTRA_ANSWERS = ["yes", "no"]  # never right here: the vocabulary is bigger than the colours
WORDS = ["what", "colour", "is", "the", "there", "a", "thing", "?"] + COLOURS + THINGS + EXTRA_ANSWERS
DIM = 48


def learner_config(dim: int = DIM) -> OscarConfig:
    """A 2-layer, 32-wide Oscar (no dropout and 10x BERT-base's initial weight spread, so it learns in a few
    hundred steps from scratch)."""
    return tiny_config(vocab_size=len(WORDS) + 5, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                       intermediate_size=64, max_position_embeddings=32, hidden_dropout_prob=0.0,
                       attention_probs_dropout_prob=0.0, img_feature_dim=dim, initializer_range=0.2)


def write_vocab(folder: Path) -> Path:
    """A whole-word vocab.txt (BERT specials first)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "vocab.txt"
    path.write_text("".join(w + "\n" for w in ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS))
    return path


def _images(rng: np.random.Generator, n: int, dim: int) -> dict[str, list[tuple[str, str]]]:
    return {f"{i:05d}": [(COLOURS[int(rng.integers(4))], t) for t in rng.choice(THINGS, 2, replace=False)] for i in range(n)}


def _write_regions(out: Path, images: dict[str, list[tuple[str, str]]], dim: int, rng: np.random.Generator,
                   as_pt: bool) -> Path:
    """Regions as a features folder (features.tsv + label.tsv) or as the original's .pt feature dict."""
    basis = {w: np.random.default_rng(sum(map(ord, w))).standard_normal(dim).astype(np.float32) for w in COLOURS + THINGS}
    feats = {k: np.stack([basis[c] + basis[t] + 0.3 * rng.standard_normal(dim).astype(np.float32) for c, t in objs])
             for k, objs in images.items()}
    if as_pt:
        path = out / "feats_img_frcnn_feats.pt"
        torch.save({int(k): torch.from_numpy(v) for k, v in feats.items()}, path)  # int keys, as VQA's image ids
        return path
    folder = out / "features"
    with TSVWriter(folder / "features.tsv") as fw, TSVWriter(folder / "label.tsv") as lw:
        for k, objs in images.items():
            fw.write(format_features_row(k, feats[k], dim=dim))
            n = len(objs)
            lw.write(format_label_row(Prediction(k, np.tile(np.array([[0, 0, 9, 9]], np.float32), (n, 1)),
                                                 [t for _, t in objs], np.ones(n, np.float32))))
    write_key_index(folder / "imageid2idx.json", ((k, i) for i, k in enumerate(images)))
    return folder


def qa_data(out: Path, n_train: int = 400, n_val: int = 100, dim: int = DIM, seed: int = 0, as_pt: bool = False,
            partial: bool = True) -> dict[str, Path]:
    """VQA/GQA files: train.json / val.json items {q, o, an, s, img_id, q_id}, ans2label.pkl,
    label2ans.pkl, regions and vocab.txt. With ``partial``, a third of the questions also give another
    colour 0.3 (a soft-score partial credit)."""
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    answers = COLOURS + EXTRA_ANSWERS
    ans2label = {a: i for i, a in enumerate(answers)}
    images = _images(rng, n_train + n_val, dim)
    items = []
    for n, (k, objs) in enumerate(images.items()):
        colour, thing = objs[int(rng.integers(2))]
        an, s = [ans2label[colour]], [1.0]
        if partial and rng.random() < 1 / 3:
            other = [c for c in COLOURS if c != colour][int(rng.integers(3))]
            an, s = an + [ans2label[other]], s + [0.3]
        items.append({"q": f"what colour is the {thing}?", "o": ";".join(t for _, t in objs), "an": an, "s": s,
                      "img_id": int(k) if as_pt else k, "q_id": 1000 + n})
    paths = {"train": out / "train.json", "val": out / "val.json", "ans2label": out / "ans2label.pkl",
             "label2ans": out / "label2ans.pkl", "vocab": write_vocab(out)}
    paths["train"].write_text(json.dumps(items[:n_train]))
    paths["val"].write_text(json.dumps(items[n_train:]))
    paths["ans2label"].write_bytes(pickle.dumps(ans2label))
    paths["label2ans"].write_bytes(pickle.dumps(answers))
    paths["features"] = _write_regions(out, images, dim, rng, as_pt)
    return paths


def nlvr2_data(out: Path, n_train: int = 400, n_val: int = 100, dim: int = DIM, seed: int = 0) -> dict[str, Path]:
    """NLVR2 files: train.json / val.json items {q, o: {left, right}, label, img_id: {left, right}}, regions, vocab."""
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    images = _images(rng, 2 * (n_train + n_val), dim)
    keys = list(images)
    items = []
    for n in range(n_train + n_val):
        kl, kr = keys[2 * n], keys[2 * n + 1]
        present = {c for c, _ in images[kl] + images[kr]}
        absent = [c for c in COLOURS if c not in present]
        truth = bool(rng.random() < 0.5 or not absent)
        colour = sorted(present)[int(rng.integers(len(present)))] if truth else absent[int(rng.integers(len(absent)))]
        items.append({"q": f"there is a {colour} thing", "label": int(truth), "identifier": f"pair-{n}",
                      "img_id": {"left": kl, "right": kr},
                      "o": {"left": " ".join(t for _, t in images[kl]), "right": " ".join(t for _, t in images[kr])}})
    paths = {"train": out / "train.json", "val": out / "val.json", "vocab": write_vocab(out)}
    paths["train"].write_text(json.dumps(items[:n_train]))
    paths["val"].write_text(json.dumps(items[n_train:]))
    paths["features"] = _write_regions(out, images, dim, rng, as_pt=False)
    return paths


IMAGES = Path(__file__).resolve().parents[2] / "examples" / "images"
DEMO_IMAGES = [IMAGES / "shapes_a.jpg", IMAGES / "shapes_b.jpg"]  # the same pair everywhere: one extraction


def run_cli(*argv: object) -> int:
    """``vinvl ...`` in-process; the exit code."""
    from vinvl.cli import main

    return main([str(a) for a in argv])


def config_file(folder: Path, dim: int = DIM) -> Path:
    """The tiny model's config.json for ``--config``."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "tiny_config.json"
    path.write_text(learner_config(dim).to_json_string())
    return path


def demo_checkpoint(folder: Path, cls: type, num_labels: int, answers: bool = True, **overrides: object) -> Path:
    """An untrained tiny model over the demo detector's 518-d regions, saved in the original layout."""
    from vinvl.oscar.data.qa import AnswerVocab
    from vinvl.oscar.tensorize import load_tokenizer

    torch.manual_seed(0)
    cfg = learner_config(518)
    cfg.num_labels = num_labels
    for k, v in overrides.items():
        setattr(cfg, k, v)
    tok = load_tokenizer(write_vocab(folder / "vocab"))
    cls(cfg).save_original(folder, tokenizer=tok)
    if answers:
        AnswerVocab(COLOURS + EXTRA_ANSWERS).save(folder)
    return folder


def demo_regions_dir(tmp_path_factory) -> Path:
    """One regions folder per test session: regions_for_images reuses it once complete."""
    return tmp_path_factory.getbasetemp() / "classify_demo_regions"
