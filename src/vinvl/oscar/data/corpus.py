"""The pretraining corpus in the original's layout (:mod:`vinvl.corpus.layout`) as Oscar+ examples.

Examples are ``[CLS] text_a [SEP] text_b [SEP]`` + regions, text_b being the image's tags, or a question
row's answer. The contrastive label follows the original's code (``oscar_tsv.py``, ``random_sent``), not the
VinVL paper's wording: with probability 0.5 the triple is kept (label 0); else, with probability
``0.5 - texta_false_prob``, text_b is replaced (label 1) by ``textb_sample_mode`` 0: a random text (text_a
or text_b) of a row of another image, 1: another image's row's text_b, 2: a random question row's answer;
else text_a is replaced by another image's text_a (label ``num_contrast_classes - 1``: 2 for Oscar+, 1 for
vanilla Oscar with ``texta_false_prob`` 0.5). Vanilla Oscar (2 classes, ``texta_false_prob`` 0) replaces
only text_b (label 1). Other images are drawn up to 10 times, as the original, to avoid the row's own image.
MLM masks 15% of the text tokens (:class:`~vinvl.oscar.tensorize.PretrainTensorizer`); with
``mask_loss_for_unmatched`` off (the original's ``--mask_loss_for_unmatched 0``) not a replacement text_b that
comes from another image. Every random choice of an example comes from a generator seeded by
``(seed, epoch, row)``.

Without text_b (``use_b`` off, the original's ``--use_b 0``) the input is ``[CLS] text_a [SEP]`` + regions and,
as the original's ``get_corpus_line``, a caption row has no text_b to replace: its unmatched examples all have
text_a replaced; a question row keeps its answer as the text_b that may be replaced (label 1), though the
input never shows it. ``chunk_start``/``chunk_end`` keep only the rows of chunks ``chunk_start .. chunk_end - 1``
of the chunked datasets (the original's ``--chunk_start_id``/``--chunk_end_id``); every such chunk must be
there.
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


def contrast_classes(texta_false_prob: float, use_b: bool = True) -> int:
    """The original's number of contrastive classes: 3 when ``texta_false_prob < 0.5`` and (``texta_false_prob > 0``
    or no text_b), else 2."""
    return 3 if texta_false_prob < 0.5 and (texta_false_prob > 0 or not use_b) else 2


def chunk_names(cfg: PretrainOptions) -> Optional[frozenset[str]]:
    """The chunks read of a chunked dataset (the original's ``str(i)`` for ``chunk_start <= i < chunk_end``), None: all."""
    if cfg.chunk_start is None or cfg.chunk_end is None:
        return None
    return frozenset(str(c) for c in range(cfg.chunk_start, cfg.chunk_end))


def check_options(cfg: PretrainOptions) -> None:
    """The sampling options as the original allows them; one error naming the option otherwise."""
    if not 0 <= cfg.texta_false_prob <= 0.5:
        raise VinvlError(f"--texta-false-prob {cfg.texta_false_prob}: must be in [0, 0.5]")
    if cfg.num_contrast_classes != contrast_classes(cfg.texta_false_prob, cfg.use_b):
        raise VinvlError(f"--num-contrast-classes {cfg.num_contrast_classes} with --texta-false-prob {cfg.texta_false_prob}"
                         f"{'' if cfg.use_b else ' --no-use-b'}: the original uses 3 classes when texta_false_prob < 0.5 "
                         "and (texta_false_prob > 0 or no text_b), else 2")
    for flag, mode in (("--textb-sample-mode", cfg.textb_sample_mode), ("--extra-textb-sample-mode", cfg.extra_textb_sample_mode)):
        if mode not in (0, 1, 2):
            raise VinvlError(f"{flag} {mode}: 0 (any text of another image), 1 (another image's text_b) or 2 (a question's answer)")
    if not 0 <= cfg.extra_loss_weight <= 1:
        raise VinvlError(f"--extra-loss-weight {cfg.extra_loss_weight}: must be in [0, 1] (the main corpus's weight is 1 - it)")
    start, end = cfg.chunk_start, cfg.chunk_end
    if (start is None) != (end is None):
        given, value, missing = ("--chunk-start", start, "--chunk-end") if end is None else ("--chunk-end", end, "--chunk-start")
        raise VinvlError(f"{given} {value} without {missing}: give both (chunks start .. end - 1) or neither (every chunk)")
    if start is not None and not 0 <= start < end:  # type: ignore[operator]
        raise VinvlError(f"--chunk-start {start} --chunk-end {end}: reads no chunk (chunks start .. end - 1, 0 <= start < end)")


class Pair(NamedTuple):
    """An example's texts and contrastive label as drawn; ``unmatched_b``: its text_b was replaced by another
    image's (the original's ``is_next_type`` 1, whose text_b ``--mask_loss_for_unmatched 0`` leaves unmasked)."""

    text_a: str
    text_b: str  # "" when the row has none (no text_b: a caption row)
    label: int
    unmatched_b: bool


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

    def __init__(self, corpus_yaml: PathLike, tokenizer: Any, cfg: PretrainOptions, data_dir: Optional[PathLike] = None,
                 textb_sample_mode: Optional[int] = None, stream: str = "") -> None:
        """``data_dir``: where relative ``image_feature_path`` folders are (the original's ``--data_dir``;
        default: the yaml's folder); ``textb_sample_mode``: instead of ``cfg``'s (the extra corpus's
        ``extra_textb_sample_mode``); ``stream``: a name keeping this set's random choices apart from another's
        of the same run (the extra corpus's)."""
        check_options(cfg)
        self.spec = L.read_spec(corpus_yaml, data_dir)
        self.path, self.tok, self.cfg = self.spec.path, tokenizer, cfg
        self.textb_sample_mode = cfg.textb_sample_mode if textb_sample_mode is None else textb_sample_mode
        self.mode_flag = "--textb-sample-mode" if textb_sample_mode is None else "--extra-textb-sample-mode"
        self.seed_prefix = f"{cfg.seed}/{stream + '/' if stream else ''}"
        self.tensorizer = PretrainTensorizer(tokenizer, cfg.max_seq_length, cfg.max_img_seq_length, cfg.mask_prob)
        self._labels: dict[str, L.LabelFolder] = {}
        self._stores: dict[tuple[str, Optional[str]], RegionStore] = {}
        self.chunked = {d: L.is_chunked(d, self.spec.feature_dirs[d]) for d in self.spec.datasets}
        self.chunks = chunk_names(cfg)
        self._check_chunks()
        self.rows: list[Row] = []
        self.skipped = 0  # rows of datasets the yaml's 'corpus' does not name, left out as by the original
        self.outside_chunks = 0  # rows of chunks outside chunk_start .. chunk_end - 1, left out as by the original
        if not self.spec.corpus_file.is_file():
            raise VinvlError(f"{self.path}: corpus file {self.spec.corpus_file} does not exist")
        corpus = TSVFile(self.spec.corpus_file, build_index=True)
        for i, fields in enumerate(corpus.iter_bytes()):
            self._add(fields, f"{corpus.path}:{i + 1}")
        corpus.close()
        if not self.rows:
            within = f" in chunks {cfg.chunk_start} .. {cfg.chunk_end - 1}" if self.outside_chunks else ""  # type: ignore[operator]
            raise VinvlError(f"{corpus.path}: no rows of the datasets {', '.join(self.spec.datasets)}{within}: nothing to train on")
        self.qa_rows = [i for i, r in enumerate(self.rows) if r.qa]
        if self.textb_sample_mode == 2 and not self.qa_rows and cfg.use_b:  # without text_b no caption row draws one
            raise VinvlError(f"{corpus.path}: {self.mode_flag} 2 draws question answers, but the corpus has no question rows")

    def _check_chunks(self) -> None:
        """Every chunk read is there for every chunked dataset (the original asserts each chunk's files)."""
        if self.chunks is None:
            return
        for dataset, chunked in self.chunked.items():
            for chunk in sorted(self.chunks, key=int) if chunked else ():
                path = self._feature_dir(dataset, chunk) / L.FEATURE_FILE
                if not path.is_file():
                    raise VinvlError(f"{path}: no such features file: --chunk-start {self.cfg.chunk_start} --chunk-end "
                                     f"{self.cfg.chunk_end} reads chunk {chunk} of every chunked dataset ({dataset})")

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
        if ids.chunk is not None and self.chunks is not None and ids.chunk not in self.chunks:
            self.outside_chunks += 1
            return
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

    def pair(self, i: int, rng: random.Random) -> Pair:
        """Row ``i``'s texts and contrastive label drawn as the original's ``random_sent``."""
        cfg, row = self.cfg, self.rows[i]
        # get_corpus_line: without text_b only a question row keeps its answer (which may then be replaced)
        text_a, text_b = row.text_a, (row.text_b if cfg.use_b or row.qa else "")
        r = rng.random()
        if r > 0.5:
            label, other = 0, row
        elif r > cfg.texta_false_prob and text_b:  # a wrong text_b
            label = 1
            if self.textb_sample_mode == 2:
                for _ in range(10):  # the original: another question row, of any image
                    j = self.qa_rows[rng.randrange(len(self.qa_rows))]
                    if j != i:
                        break
                other = self.rows[j]
                text_b = other.text_b
            else:
                other = self.rows[self._other_image(i, rng)]
                text_b = other.text_b if self.textb_sample_mode == 1 else (other.text_a, other.text_b)[rng.randrange(2)]
        else:  # a wrong text_a
            label, other = cfg.num_contrast_classes - 1, self.rows[self._other_image(i, rng)]
            text_a = other.text_a
        # convert_example_to_features: is_next_type = label x (another image), 1 -> 2 where label 1 means text_a
        kind = label * (other.image_id != row.image_id)
        if cfg.num_contrast_classes == 2 and cfg.texta_false_prob == 0.5 and kind == 1:
            kind = 2
        return Pair(text_a, text_b, label, kind == 1)

    def example(self, i: int, epoch: int) -> dict[str, torch.Tensor]:
        """Row ``i`` as model inputs with MLM and contrastive labels, random choices seeded by ``(seed, epoch, i)``."""
        rng = random.Random(f"{self.seed_prefix}{epoch}/{i}")
        p = self.pair(i, rng)
        mask_b = self.cfg.mask_loss_for_unmatched or not p.unmatched_b
        return self.tensorizer(p.text_a, p.text_b if self.cfg.use_b else None, self.regions(i), p.label, rng, mask_b)
