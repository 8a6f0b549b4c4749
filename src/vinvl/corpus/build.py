"""Pretraining corpora in the original layout: a corpus TSV and a yaml naming the feature and label folders.

Corpus TSV rows: ``image id \\t label id \\t text_a`` where the image id is
``<dataset>_<image key>`` (chunked datasets: ``<dataset>_<chunk>_<image key>``) and the label id
contains ``qa`` for question rows (their answer, when known, is a fourth column). The yaml
names ``corpus_file``, ``image_label_path`` (dataset -> folder with ``label.tsv``) and
``image_feature_path`` (dataset -> folder with ``features.tsv`` + ``imageid2idx.json``), the
layout ``vinvl extract`` writes. :func:`build_corpus` makes one from COCO-style caption files
and VQA/GQA-style question files; :func:`synthetic_corpus` makes a small one whose region
features really relate to its texts and tags, for tests and demonstrations.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence, Union

import numpy as np
import yaml

from ..errors import VinvlError
from ..features import format_features_row, format_label_row, Prediction
from ..tsv import TSVFile, TSVWriter, write_key_index

PathLike = Union[str, os.PathLike]


@dataclass(frozen=True)
class TextSource:
    """One caption or question file of a dataset: ``kind`` is ``caption`` or ``qa``."""

    dataset: str
    path: Path
    kind: str


def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise VinvlError(f"{path}: cannot read JSON ({e})") from None


def read_texts(src: TextSource) -> Iterable[tuple[str, str, str, Optional[str]]]:
    """``(image key, label id, text, answer)`` of a COCO caption json, a VQA question json or a GQA dict."""
    data = _load_json(src.path)
    if src.kind == "caption":
        anns = data.get("annotations") if isinstance(data, dict) else None
        if anns is None:
            raise VinvlError(f"{src.path}: a caption file needs an 'annotations' list (COCO style)")
        for a in anns:
            yield str(a["image_id"]), f"{src.dataset}_cap_{a.get('id', '')}", str(a["caption"]).strip(), None
    elif src.kind == "qa":
        if isinstance(data, dict) and "questions" in data:  # VQA v2
            for q in data["questions"]:
                yield str(q["image_id"]), f"{src.dataset}_qa_{q['question_id']}", str(q["question"]).strip(), None
        elif isinstance(data, dict):  # GQA: {qid: {"imageId", "question", "answer"}}
            for qid, q in data.items():
                yield str(q["imageId"]), f"{src.dataset}_qa_{qid}", str(q["question"]).strip(), q.get("answer")
        elif isinstance(data, list):  # Oscar's qla files: [{"q", "img_id", "q_id", ...}]
            for q in data:
                yield str(q["img_id"]), f"{src.dataset}_qa_{q.get('q_id', '')}", str(q["q"]).strip(), None
        else:
            raise VinvlError(f"{src.path}: not a VQA/GQA question file")
    else:
        raise VinvlError(f"{src.path}: kind must be caption or qa, got {src.kind!r}")


def build_corpus(
    sources: Sequence[TextSource],
    feature_folders: dict[str, PathLike],
    label_folders: dict[str, PathLike],
    out_dir: PathLike,
    name: str = "corpus",
) -> dict[str, Any]:
    """Write ``out_dir/<name>.tsv`` (+ ``.lineidx``), ``<name>.yaml`` and ``<name>_report.json``; rows whose
    image has no features are counted, not written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    keys: dict[str, set[str]] = {}
    for ds, folder in feature_folders.items():
        f = Path(folder) / "features.tsv"
        if not f.is_file():
            raise VinvlError(f"{f}: no features.tsv for dataset {ds!r}")
        keys[ds] = set(TSVFile(f, build_index=True).keys())
    counts: Counter = Counter()
    missing: Counter = Counter()
    with TSVWriter(out / f"{name}.tsv") as w:
        for src in sources:
            if src.dataset not in keys:
                raise VinvlError(f"{src.path}: dataset {src.dataset!r} has no feature folder")
            for key, label_id, text, answer in read_texts(src):
                if key not in keys[src.dataset]:
                    missing[f"{src.dataset}/{src.kind}"] += 1
                    continue
                text = " ".join(text.split())
                row = [f"{src.dataset}_{key}", label_id, text] + ([" ".join(str(answer).split())] if answer else [])
                w.write(row)
                counts[f"{src.dataset}/{src.kind}"] += 1
    spec = {
        "corpus_file": f"{name}.tsv",
        "image_feature_path": {ds: str(Path(p).resolve()) for ds, p in feature_folders.items()},
        "image_label_path": {ds: str(Path(p).resolve()) for ds, p in label_folders.items()},
    }
    (out / f"{name}.yaml").write_text(yaml.safe_dump(spec, sort_keys=True))
    report = {"rows": dict(counts), "skipped_no_features": dict(missing), "total": sum(counts.values())}
    (out / f"{name}_report.json").write_text(json.dumps(report, indent=1) + "\n")
    return report


# -- a tiny corpus whose features carry its texts' meaning ---------------------------------------
COLOURS = ("red", "green", "blue", "yellow", "black", "white")
THINGS = ("dog", "cat", "car", "tree", "house", "bike", "ball", "chair")
VERBS = ("near", "behind", "on", "under")


def synthetic_corpus(out_dir: PathLike, num_images: int = 200, seed: int = 0, dim: int = 2054,
                     qa_fraction: float = 0.2) -> Path:
    """A corpus of ``num_images`` images of 2-4 coloured things each: each region's feature is the
    sum of its colour's and thing's fixed random vectors plus noise, tags are the things, captions
    and questions name them. Writes features/label folders, a WordPiece ``vocab.txt`` trained with
    ``tokenizers``, the corpus TSV and yaml; returns the yaml path."""
    from tokenizers import BertWordPieceTokenizer

    out = Path(out_dir)
    rng = np.random.default_rng(seed)
    basis = {w: rng.standard_normal(dim).astype(np.float32) for w in COLOURS + THINGS}
    feat_dir, label_dir = out / "features" / "synth", out / "labels" / "synth"
    texts: list[str] = []
    rows = []
    with TSVWriter(feat_dir / "features.tsv") as fw, TSVWriter(label_dir / "label.tsv") as lw:
        for i in range(num_images):
            key = f"{i:06d}"
            n = int(rng.integers(2, 5))
            things = rng.choice(len(THINGS), n, replace=False)
            colours = rng.integers(0, len(COLOURS), n)
            objs = [(COLOURS[c], THINGS[t]) for c, t in zip(colours, things)]
            feats = np.stack([basis[c] + basis[t] + 0.3 * rng.standard_normal(dim).astype(np.float32) for c, t in objs])
            fw.write(format_features_row(key, feats, dim=dim))
            pred = Prediction(key, np.tile(np.array([[0, 0, 9, 9]], np.float32), (n, 1)), [t for _, t in objs],
                              np.ones(n, np.float32))
            lw.write(format_label_row(pred))
            (c1, t1), (c2, t2) = objs[0], objs[1]
            if rng.random() < qa_fraction:
                text, label = f"what color is the {t1}?", f"synth_qa_{i}"
                rows.append([f"synth_{key}", label, text, c1])
                texts += [text, c1]
            else:
                text = f"a {c1} {t1} {VERBS[int(rng.integers(len(VERBS)))]} a {c2} {t2}"
                rows.append([f"synth_{key}", f"synth_cap_{i}", text])
                texts.append(text)
            texts.append(" ".join(t for _, t in objs))
    write_key_index(feat_dir / "imageid2idx.json", ((f"{i:06d}", i) for i in range(num_images)))
    with TSVWriter(out / "corpus.tsv") as w:
        for r in rows:
            w.write(r)
    tok = BertWordPieceTokenizer(lowercase=True)
    tok.train_from_iterator(texts, vocab_size=200, min_frequency=1,
                            special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
    tok.save_model(str(out))
    spec = {"corpus_file": "corpus.tsv", "image_feature_path": {"synth": "features/synth"},
            "image_label_path": {"synth": "labels/synth"}}
    (out / "corpus.yaml").write_text(yaml.safe_dump(spec, sort_keys=True))
    return out / "corpus.yaml"
