"""The pretraining corpus in the original's layout (:mod:`vinvl.corpus.layout`) as Oscar+ examples.

Examples are ``[CLS] text_a [SEP] text_b [SEP]`` + regions, text_b being the image's tags, or a question
row's answer. The contrastive label follows the original's code (``oscar_tsv.py``, ``random_sent``), not the
VinVL paper's wording: with probability 0.5 the triple is kept (label 0); else, with probability
``0.5 - texta_false_prob``, text_b is replaced (label 1) by ``textb_sample_mode`` 0: a random text (text_a
or text_b) of a row of another image, 1: another image's row's text_b, 2: a random question row's answer;
else text_a is replaced by another image's text_a (label ``num_contrast_classes - 1``: 2 for Oscar+, 1 for
vanilla Oscar with ``texta_false_prob`` 0.5). Vanilla Oscar (2 classes, ``texta_false_prob`` 0) replaces
only text_b (label 1). Other images are drawn up to 10 times, as the original, to avoid the row's own image.
MLM masks 15% of the text tokens (:class:`~vinvl.oscar.tensorize.PretrainTensorizer`; replaced texts too:
the original's ``--mask_loss_for_unmatched 1``). Every random choice of an example comes from a generator
seeded by ``(seed, epoch, row)``.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any, NamedTuple, Optional, Union

import torch

from ...corpus import layout as L
from ...errors import VinvlError
from ...tsv import TSVFile
from ..options import PretrainOptions
from ..tensorize import PretrainTensorizer
from .regions import RegionStore

PathLike = Union[str, os.PathLike]


def contrast_classes(texta_false_prob: float) -> int:
    """The original's number of contrastive classes: 3 when ``0 < texta_false_prob < 0.5``, else 2."""
    return 3 if 0 < texta_false_prob < 0.5 else 2


def check_options(cfg: PretrainOptions) -> None:
    """The sampling options as the original allows them; one error naming the option otherwise."""
    if not 0 <= cfg.texta_false_prob <= 0.5:
        raise VinvlError(f"--texta-false-prob {cfg.texta_false_prob}: must be in [0, 0.5]")
    if cfg.num_contrast_classes != contrast_classes(cfg.texta_false_prob):
        raise VinvlError(f"--num-contrast-classes {cfg.num_contrast_classes} with --texta-false-prob {cfg.texta_false_prob}: "
                         "the original uses 3 classes when 0 < texta_false_prob < 0.5, else 2")
    if cfg.textb_sample_mode not in (0, 1, 2):
        raise VinvlError(f"--textb-sample-mode {cfg.textb_sample_mode}: 0 (any text of another image), "
                         "1 (another image's text_b) or 2 (a question's answer)")


class Row(NamedTuple):
    """A corpus row as the original holds it: its image, text_a and text_b, and whether it is a question."""

    image_id: str
    text_a: str
    text_b: str
    qa: bool
    feature: tuple[str, Optional[str], str]  # (dataset, chunk, key) of its regions


class CorpusDataset:
    """The rows of a corpus in the original's layout, with their texts checked at load (as the original's
    on-memory dataset): image ids in the feature index, non-empty texts, label rows and answers present."""

    def __init__(self, corpus_yaml: PathLike, tokenizer: Any, cfg: PretrainOptions, data_dir: Optional[PathLike] = None) -> None:
        """``data_dir``: where relative ``image_feature_path`` folders are (the original's ``--data_dir``;
        default: the yaml's folder)."""
        check_options(cfg)
        self.spec = L.read_spec(corpus_yaml, data_dir)
        self.path, self.tok, self.cfg = self.spec.path, tokenizer, cfg
        self.tensorizer = PretrainTensorizer(tokenizer, cfg.max_seq_length, cfg.max_img_seq_length, cfg.mask_prob)
        self._labels: dict[str, L.LabelFolder] = {}
        self._stores: dict[tuple[str, Optional[str]], RegionStore] = {}
        self.chunked = {d: L.is_chunked(d, self.spec.feature_dirs[d]) for d in self.spec.datasets}
        self.rows: list[Row] = []
        self.skipped = 0  # rows of datasets the yaml's 'corpus' does not name, left out as by the original
        if not self.spec.corpus_file.is_file():
            raise VinvlError(f"{self.path}: corpus file {self.spec.corpus_file} does not exist")
        corpus = TSVFile(self.spec.corpus_file, build_index=True)
        for i, fields in enumerate(corpus.iter_bytes()):
            self._add(fields, f"{corpus.path}:{i + 1}")
        corpus.close()
        if not self.rows:
            raise VinvlError(f"{corpus.path}: no rows of the datasets {', '.join(self.spec.datasets)}: nothing to train on")
        self.qa_rows = [i for i, r in enumerate(self.rows) if r.qa]
        if cfg.textb_sample_mode == 2 and not self.qa_rows:
            raise VinvlError(f"{corpus.path}: --textb-sample-mode 2 draws question answers, but the corpus has no question rows")

    def _add(self, fields: list[bytes], where: str) -> None:
        try:
            image_id, label_id, text_a = (f.decode("utf-8") for f in fields[:3])
        except (ValueError, UnicodeDecodeError):
            raise VinvlError(f"{where}: expected image id, label id, text_a (UTF-8)") from None
        dataset = image_id.split("_")[0]
        if dataset != label_id.split("_")[0]:  # checked before the dataset filter, as the original asserts it
            raise VinvlError(f"{where}: dataset names of image id {image_id!r} and label id {label_id!r} differ")
        dataset = L.ALIASES.get(dataset, dataset)
        if dataset not in self.chunked:
            self.skipped += 1
            return
        try:
            ids = L.parse_ids(image_id, label_id, self.chunked[dataset])
        except ValueError as e:
            raise VinvlError(f"{where}: {e}") from None
        if ids.key not in self._store(ids.dataset, ids.chunk, where):
            raise VinvlError(f"{where}: image {ids.key!r} of {image_id!r} is not in {self._feature_dir(ids.dataset, ids.chunk)}")
        if not text_a.strip():
            raise VinvlError(f"{where}: text_a is empty")
        labels = self._label_folder(ids.dataset)
        try:
            tags = labels.tags(ids.key, self.cfg.use_gtlabels)  # a question row's image needs its tag row too
            text_b = labels.answer(ids.label_key) if ids.qa else tags
        except VinvlError as e:
            raise VinvlError(f"{where}: {e}") from None
        if not text_b.strip():
            raise VinvlError(f"{where}: text_b ({'the answer' if ids.qa else 'the tags'}) is empty")
        self.rows.append(Row(image_id, text_a, text_b, ids.qa, (ids.dataset, ids.chunk, ids.key)))

    def _feature_dir(self, dataset: str, chunk: Optional[str]) -> Path:
        root = self.spec.feature_dirs[dataset]
        return root / chunk if chunk is not None else root

    def _store(self, dataset: str, chunk: Optional[str], where: str) -> RegionStore:
        slot = (dataset, chunk)
        if slot not in self._stores:
            folder = self._feature_dir(dataset, chunk)
            if not (folder / L.FEATURE_FILE).is_file():
                raise VinvlError(f"{where}: {folder / L.FEATURE_FILE}: no such features file")
            self._stores[slot] = RegionStore(folder, features=L.FEATURE_FILE, labels=None)  # tags: the label folders
        return self._stores[slot]

    def _label_folder(self, dataset: str) -> L.LabelFolder:
        if dataset not in self._labels:
            self._labels[dataset] = L.LabelFolder(self.spec.label_dirs[dataset])
        return self._labels[dataset]

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def dim(self) -> int:
        """The regions' width (of the first feature folder read)."""
        return next(iter(self._stores.values())).dim

    def regions(self, i: int) -> Any:
        """Row ``i``'s image's ``[N, dim]`` region features."""
        dataset, chunk, key = self.rows[i].feature
        return self._store(dataset, chunk, "").regions(key)

    def text_b(self, i: int) -> str:
        """Row ``i``'s second text: the answer of a question row, else the image's tags."""
        return self.rows[i].text_b

    def _other_image(self, i: int, rng: random.Random, pool: Optional[list[int]] = None) -> int:
        """A random row (of ``pool``), retried up to 10 times for another image than row ``i``'s, as the original."""
        for _ in range(10):
            j = pool[rng.randrange(len(pool))] if pool is not None else rng.randrange(len(self.rows))
            if self.rows[j].image_id != self.rows[i].image_id:
                break
        return j

    def pair(self, i: int, rng: random.Random) -> tuple[str, str, int]:
        """Row ``i``'s ``(text_a, text_b, contrastive label)`` drawn as the original's ``random_sent``."""
        cfg, row = self.cfg, self.rows[i]
        r = rng.random()
        if r > 0.5:
            return row.text_a, row.text_b, 0
        if r > cfg.texta_false_prob:  # a wrong text_b
            if cfg.textb_sample_mode == 2:
                for _ in range(10):  # the original: another question row, of any image
                    j = self.qa_rows[rng.randrange(len(self.qa_rows))]
                    if j != i:
                        break
                return row.text_a, self.rows[j].text_b, 1
            j = self._other_image(i, rng)
            other = self.rows[j]
            text = other.text_b if cfg.textb_sample_mode == 1 else (other.text_a, other.text_b)[rng.randrange(2)]
            return row.text_a, text, 1
        j = self._other_image(i, rng)  # a wrong text_a
        return self.rows[j].text_a, row.text_b, cfg.num_contrast_classes - 1

    def example(self, i: int, epoch: int) -> dict[str, torch.Tensor]:
        """Row ``i`` as model inputs with MLM and contrastive labels, random choices seeded by ``(seed, epoch, i)``."""
        rng = random.Random(f"{self.cfg.seed}/{epoch}/{i}")
        text_a, text_b, label = self.pair(i, rng)
        return self.tensorizer(text_a, text_b, self.regions(i), label, rng)
