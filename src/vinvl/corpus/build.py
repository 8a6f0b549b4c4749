"""Pretraining corpora in the original's layout (:mod:`vinvl.corpus.layout`), built from caption and
question files and feature/label folders.

:func:`build_corpus` writes the corpus TSV (``image id \\t label id \\t text_a``), a label folder per
dataset (``predictions_gt.tsv`` with the tags and image sizes of the images used, ``QA_fileB.tsv`` with
the answers of its questions, and their index jsons) and the yaml (``corpus``, ``corpus_file``,
``image_label_path``, ``image_feature_path``), which the original's ``OscarTSVDataset`` and
:class:`vinvl.oscar.data.corpus.CorpusDataset` both read. The tags and sizes come from each dataset's
label folder: ``vinvl extract`` / ``vinvl features to-oscar`` output (``label.tsv`` + ``hw.tsv``), a
``predictions.tsv``, or a ``predictions_gt.tsv``. :func:`synthetic_corpus` makes a small corpus whose
region features really relate to its texts and tags, for tests and demonstrations.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, NamedTuple, Optional, Sequence, Union

import numpy as np

from ..atomic import atomic_write_json, atomic_write_text, check_writable, remove_stale_temporaries
from ..errors import VinvlError, single_spaced
from ..features import Prediction, format_features_row, format_hw_row, format_label_row, parse_hw_row
from ..textio import read_json
from ..tsv import TSVFile, TSVWriter, read_key_index, write_key_index
from ..yamlio import write_yaml
from . import layout as L

PathLike = Union[str, os.PathLike]


@dataclass(frozen=True)
class TextSource:
    """One caption or question file of a dataset: ``kind`` is ``caption`` or ``qa``."""

    dataset: str
    path: Path
    kind: str


class Text(NamedTuple):
    """One text of a source: the image key, the caption or question, and a question's id and answer."""

    key: str
    text: str
    qa_id: Optional[str] = None
    answer: Optional[str] = None


def read_texts(src: TextSource) -> Iterable[Text]:
    """The texts of a COCO caption json, a VQA question json (no answers), a GQA question dict (with
    answers) or an Oscar ``*_qla*.json`` list (``q``, ``img_id``, ``q_id``; no answer words).

    A caption, question or answer must be a JSON string and an id a string or an integer: anything else
    (a number as a caption, null, a list) is refused in one line naming the file and the entry, never
    written as its Python spelling."""
    data = read_json(src.path)
    if src.kind == "caption":
        anns = data.get("annotations") if isinstance(data, dict) else None
        if not isinstance(anns, list):
            raise VinvlError(f"{src.path}: a caption file needs an 'annotations' list (COCO style)")
        for i, a in enumerate(anns):
            e = _Entry(src, f"annotations[{i}]", a)
            yield Text(e.id("image_id"), e.text("caption"))
    elif src.kind == "qa":
        if isinstance(data, dict) and "questions" in data:  # VQA v2
            if not isinstance(data["questions"], list):
                raise VinvlError(f"{src.path}: 'questions' must be a list (VQA style)")
            for i, q in enumerate(data["questions"]):
                e = _Entry(src, f"questions[{i}]", q)
                yield Text(e.id("image_id"), e.text("question"), e.id("question_id"))
        elif isinstance(data, dict):  # GQA: {qid: {"imageId", "question", "answer"}}
            for qid, q in data.items():
                e = _Entry(src, f"question {qid!r}", q)
                yield Text(e.id("imageId"), e.text("question"), str(qid), e.text("answer", optional=True))
        elif isinstance(data, list):  # Oscar's qla files: [{"q", "img_id", "q_id", ...}]
            for i, q in enumerate(data):
                e = _Entry(src, f"entry {i}", q)
                yield Text(e.id("img_id"), e.text("q"), e.id("q_id", optional=True) or "")
        else:
            raise VinvlError(f"{src.path}: not a VQA/GQA question file")
    else:
        raise VinvlError(f"{src.path}: kind must be caption or qa, got {src.kind!r}")


class _Entry:
    """One entry of a caption or question file, whose fields are read with their JSON types checked."""

    def __init__(self, src: TextSource, where: str, value: Any) -> None:
        self.src, self.where, self.value = src, where, value
        if not isinstance(value, dict):
            self._fail(f"is {_json_type(value)}, not an object (not a {src.kind} file of a known kind)")

    def _fail(self, why: str) -> None:
        raise VinvlError(f"{self.src.path}: {self.where}{self._id()}: {why}")

    def _id(self) -> str:
        for k in ("image_id", "imageId", "img_id"):
            v = self.value.get(k) if isinstance(self.value, dict) else None
            if isinstance(v, (str, int)) and not isinstance(v, bool):
                return f" (image {v!r})"
        return ""

    def _get(self, field: str, optional: bool) -> Any:
        if field not in self.value:
            if optional:
                return None
            self._fail(f"lacks '{field}' (not a {self.src.kind} file of a known kind)")
        return self.value[field]

    def text(self, field: str, optional: bool = False) -> Optional[str]:  # type: ignore[return]
        """Field ``field`` as text: a JSON string (or, ``optional``, missing or null)."""
        v = self._get(field, optional)
        if isinstance(v, str) or (optional and v is None):
            return v
        self._fail(f"'{field}' is {_json_type(v)}, not a string")

    def id(self, field: str, optional: bool = False) -> Optional[str]:  # type: ignore[return]
        """Field ``field`` as an id: a JSON string or integer (or, ``optional``, missing or null)."""
        v = self._get(field, optional)
        if isinstance(v, str) or (isinstance(v, int) and not isinstance(v, bool)):
            return str(v)
        if optional and v is None:
            return None
        self._fail(f"'{field}' is {_json_type(v)}, not a string or an integer")


def _json_type(value: Any) -> str:
    """``value``'s JSON type and a short spelling of it, for messages (``a number (123)``, ``null``)."""
    if value is None:
        return "null"
    kind = {bool: "a boolean", int: "a number", float: "a number", list: "a list", dict: "an object",
            str: "a string"}.get(type(value), type(value).__name__)
    text = json.dumps(value, default=str)
    return f"{kind} ({text if len(text) <= 40 else text[:37] + '...'})"


class _Images:
    """A dataset's feature keys (and chunks) and, from its label folder, each image's objects and size."""

    TAG_FILES = ("label.tsv", "predictions.tsv", L.LABEL_FILE)

    def __init__(self, dataset: str, feature_dir: Path, label_dir: Path) -> None:
        self.dataset, self.feature_dir, self.label_dir = dataset, feature_dir, label_dir
        self.chunked = L.is_chunked(dataset, feature_dir)
        folders = sorted(p.parent for p in feature_dir.glob(f"*/{L.FEATURE_FILE}")) if self.chunked else [feature_dir]
        if not folders or not (folders[0] / L.FEATURE_FILE).is_file():
            raise VinvlError(f"{feature_dir / L.FEATURE_FILE}: no features for dataset {dataset!r}"
                             + (" (nor chunk folders holding them)" if dataset not in L.ONE_SPLIT else ""))
        self.chunk_of: dict[str, Optional[str]] = {}
        self.ambiguous: dict[str, tuple[str, str]] = {}
        for folder in folders:
            chunk = L.check_id_part(folder.name, f"{feature_dir}: chunk folder") if self.chunked else None
            index = folder / L.FEATURE_INDEX
            keys = read_key_index(index) if index.is_file() else TSVFile(folder / L.FEATURE_FILE, build_index=True).keys()
            for k in keys:
                if k in self.chunk_of:
                    self.ambiguous[k] = (str(self.chunk_of[k]), str(chunk))
                self.chunk_of[k] = chunk
        self._tsv: dict[tuple[Optional[str], str], Optional[TSVFile]] = {}
        self._seen: dict[str, Optional[tuple[list[dict[str, Any]], int, int]]] = {}

    def _dirs(self, root: Path, chunk: Optional[str]) -> list[Path]:
        return [root / chunk, root] if chunk is not None else [root]

    def _open(self, chunk: Optional[str], names: Sequence[str], roots: Sequence[Path]) -> Optional[TSVFile]:
        slot = (chunk, names[0])
        if slot not in self._tsv:
            found = next((d / n for r in roots for d in self._dirs(r, chunk) for n in names if (d / n).is_file()), None)
            self._tsv[slot] = TSVFile(found, build_index=True) if found else None
        return self._tsv[slot]

    def objects(self, key: str) -> Optional[tuple[list[dict[str, Any]], int, int]]:
        """``(objects, image_h, image_w)`` of an image, None when its label folder has no row for it."""
        if key not in self._seen:
            self._seen[key] = self._objects(key)
        return self._seen[key]

    def _objects(self, key: str) -> Optional[tuple[list[dict[str, Any]], int, int]]:
        chunk = self.chunk_of[key]
        tags = self._open(chunk, self.TAG_FILES, [self.label_dir])
        if tags is None:
            raise VinvlError(f"{self.label_dir}: no {', '.join(self.TAG_FILES)} with the tags of dataset {self.dataset!r}")
        if key not in tags:
            return None
        fields = tags.get(key)
        try:
            data = json.loads(fields[1])
        except (IndexError, json.JSONDecodeError) as e:
            raise VinvlError(f"{tags.path}: row {key!r}: not a label row ({e})") from None
        h = w = None
        if isinstance(data, dict):
            h, w, data = data.get("image_h"), data.get("image_w"), data.get("objects")
        if not isinstance(data, list) or not all(isinstance(o, dict) and "class" in o for o in data):
            raise VinvlError(f"{tags.path}: row {key!r}: expected a list of objects with a 'class'")
        keep = ("class", "conf", "rect", "attributes")
        objects = [{k: o[k] for k in keep if k in o} for o in data]
        if h is None or w is None:
            hw = self._open(chunk, ("hw.tsv",), [self.label_dir, self.feature_dir])
            if hw is None or key not in hw:
                raise VinvlError(f"{tags.path}: no image size for {key!r} (the original's predictions_gt.tsv needs "
                                 "image_h/image_w: give a label folder with hw.tsv, as `vinvl extract` writes)")
            _, h, w = parse_hw_row(hw.fields_bytes(hw.index_of(key)), path=hw.path)
        return objects, int(h), int(w)


def build_corpus(
    sources: Sequence[TextSource],
    feature_folders: dict[str, PathLike],
    label_folders: dict[str, PathLike],
    out_dir: PathLike,
    name: str = "corpus",
) -> dict[str, Any]:
    """Write the corpus ``out_dir/<name>.tsv`` (+ ``.lineidx``), its label folders ``<name>_labels/<dataset>/``,
    ``<name>.yaml`` (last: its presence marks a complete corpus) and ``<name>_report.json``.

    Caption rows get the image's tags as text_b; a question with an answer (GQA) becomes a question
    row (its answer in ``QA_fileB.tsv``), one without (VQA questions) a row with the tags as text_b.
    Texts whose image has no features or no tag row, empty texts, and captions of images without tags
    (the original refuses an empty text_b) are counted and left out.
    """
    out = Path(out_dir)
    for ds in feature_folders:
        L.check_id_part(ds, "dataset name")
        if ds in L.ALIASES:
            raise VinvlError(f"dataset name {ds!r}: the original reads it as {L.ALIASES[ds]!r}; use that name")
    images = {ds: _Images(ds, Path(folder), Path(label_folders.get(ds, folder))) for ds, folder in feature_folders.items()}
    check_writable(out)  # a read-only or unreachable output folder is named before any text is read
    remove_stale_temporaries(out, [f"{name}_report.json", f"{name}.yaml"])  # the TSV writers clean their own
    counts: Counter = Counter()
    skipped: Counter = Counter()
    used: dict[str, dict[str, tuple[list, int, int]]] = {ds: {} for ds in images}
    answers: dict[str, dict[str, str]] = {ds: {} for ds in images}
    label_dir = lambda ds: out / f"{name}_labels" / ds  # noqa: E731
    with TSVWriter(out / f"{name}.tsv", columns=3) as w:
        for src in sources:
            if src.dataset not in images:
                raise VinvlError(f"{src.path}: dataset {src.dataset!r} has no feature folder")
            imgs, kind = images[src.dataset], f"{src.dataset}/{src.kind}"
            for t in read_texts(src):
                text, key = single_spaced(t.text), t.key
                if key not in imgs.chunk_of:
                    skipped[f"{kind}/no_features"] += 1
                    continue
                if not text:
                    skipped[f"{kind}/empty_text"] += 1
                    continue
                L.check_id_part(key, f"{src.path}: image key")
                if key in imgs.ambiguous:
                    raise VinvlError(f"{imgs.feature_dir}: image key {key!r} is in chunks {' and '.join(imgs.ambiguous[key])}")
                info = imgs.objects(key)
                if info is None:
                    skipped[f"{kind}/no_tags"] += 1
                    continue
                img_id = L.image_id(src.dataset, key, imgs.chunk_of[key])
                answer = single_spaced(str(t.answer or ""))
                if t.qa_id is not None and answer:
                    qa_id = L.check_id_part(t.qa_id, f"{src.path}: question id")
                    if qa_id in answers[src.dataset]:
                        raise VinvlError(f"{src.path}: question id {qa_id!r} twice in dataset {src.dataset!r}")
                    answers[src.dataset][qa_id] = answer
                    w.write([img_id, L.qa_label_id(src.dataset, key, qa_id), text])
                    counts[f"{kind}"] += 1
                elif info[0]:
                    w.write([img_id, img_id, text])
                    counts[f"{kind}" if t.qa_id is None else f"{kind}/without_answer"] += 1
                else:
                    skipped[f"{kind}/image_without_tags"] += 1
                    continue
                used[src.dataset][key] = info
        datasets = [ds for ds in images if used[ds]]
        if not datasets:
            raise VinvlError("no corpus rows: no text has an image with features and tags")
        for ds in datasets:
            with TSVWriter(label_dir(ds) / L.LABEL_FILE, columns=2) as lw:
                for key, (objects, h, wd) in used[ds].items():
                    lw.write(L.tags_row(key, objects, h, wd))
            write_key_index(label_dir(ds) / L.LABEL_INDEX, ((k, i) for i, k in enumerate(used[ds])))
            if answers[ds]:
                with TSVWriter(label_dir(ds) / L.QA_FILE, columns=2) as qw:
                    for qa_id, answer in answers[ds].items():
                        qw.write(L.answer_row(qa_id, answer))
                write_key_index(label_dir(ds) / L.QA_INDEX, ((q, i) for i, q in enumerate(answers[ds])))
    spec = {
        "corpus": "_".join(datasets),
        "corpus_file": f"{name}.tsv",
        "image_label_path": {ds: f"{name}_labels/{ds}" for ds in datasets},
        "image_feature_path": {ds: str(Path(feature_folders[ds]).resolve()) for ds in datasets},
    }
    unknown = [ds for ds in datasets if ds not in L.CHUNKED + L.ONE_SPLIT]
    report = {"rows": dict(counts), "skipped": dict(skipped), "total": sum(counts.values()),
              "warnings": [f"the original reads only the datasets {', '.join(L.ONE_SPLIT + L.CHUNKED)}; "
                           f"{', '.join(unknown)} is read by vinvl only"] if unknown else []}
    atomic_write_text(out / f"{name}_report.json", json.dumps(report, indent=1) + "\n")
    write_yaml(out / f"{name}.yaml", spec)
    return report


# -- a tiny corpus whose features carry its texts' meaning ---------------------------------------
COLOURS = ("red", "green", "blue", "yellow", "black", "white")
THINGS = ("dog", "cat", "car", "tree", "house", "bike", "ball", "chair")
VERBS = ("near", "behind", "on", "under")


def synthetic_corpus(out_dir: PathLike, num_images: int = 200, seed: int = 0, dim: int = 2054,
                     qa_fraction: float = 0.2) -> Path:
    """A corpus of ``num_images`` images of 2-4 coloured things each: each region's feature is the
    sum of its colour's and thing's fixed random vectors plus noise, tags are the things, captions
    and questions (answered by a colour) name them. Writes a feature folder as ``vinvl extract`` does
    (dataset ``coco``, so that the original reads the corpus too), a COCO caption json and a GQA-style
    question json, a WordPiece ``vocab.txt`` trained with ``tokenizers``, and the corpus through
    :func:`build_corpus`; returns the yaml path."""
    from tokenizers import BertWordPieceTokenizer

    out = Path(out_dir)
    rng = np.random.default_rng(seed)
    basis = {w: rng.standard_normal(dim).astype(np.float32) for w in COLOURS + THINGS}
    feat_dir = out / "features" / "coco"
    texts: list[str] = []
    captions, questions = [], {}
    with TSVWriter(feat_dir / "features.tsv") as fw, TSVWriter(feat_dir / "label.tsv") as lw, \
            TSVWriter(feat_dir / "hw.tsv") as hw:
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
            hw.write(format_hw_row(key, 10, 10))
            (c1, t1), (c2, t2) = objs[0], objs[1]
            if rng.random() < qa_fraction:
                text = f"what color is the {t1}?"
                questions[f"q{i}"] = {"imageId": key, "question": text, "answer": c1}
                texts += [text, c1]
            else:
                text = f"a {c1} {t1} {VERBS[int(rng.integers(len(VERBS)))]} a {c2} {t2}"
                captions.append({"image_id": key, "id": i, "caption": text})
                texts.append(text)
            texts.append(" ".join(t for _, t in objs))
    write_key_index(feat_dir / "imageid2idx.json", ((f"{i:06d}", i) for i in range(num_images)))
    atomic_write_json(out / "captions.json", {"annotations": captions})
    atomic_write_json(out / "questions.json", questions)
    sources = [TextSource("coco", out / "captions.json", "caption"), TextSource("coco", out / "questions.json", "qa")]
    build_corpus(sources, {"coco": feat_dir}, {"coco": feat_dir}, out, name="corpus")
    tok = BertWordPieceTokenizer(lowercase=True)
    tok.train_from_iterator(texts, vocab_size=200, min_frequency=1,
                            special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
    vocab = sorted(tok.get_vocab().items(), key=lambda kv: kv[1])  # what tok.save_model writes, atomically
    atomic_write_text(out / "vocab.txt", "".join(w + "\n" for w, _ in vocab))
    return out / "corpus.yaml"
