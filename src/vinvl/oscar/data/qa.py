"""The classification fine-tunings' files (the original's ``run_vqa.py`` / ``run_gqa.py`` / ``run_nlvr.py``).

JSON lists of ``{q, o, an, s, img_id, q_id}`` (``o`` the tags, ``;``-separated in places, ``an`` answer labels,
``s`` their soft scores; NLVR2: ``{q, label, img_id: {left, right}, o}``), an ``ans2label`` pickle whose values
are the labels in logit order (read through :mod:`vinvl.safe_pickle`, never plain pickle), and region features
from any :class:`~vinvl.oscar.data.regions.RegionSource`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch

from ...atomic import atomic_write_json
from ...errors import VinvlError
from ...safe_pickle import safe_load
from ...textio import read_json
from ..options import ClassificationOptions
from ..tensorize import ClassificationTensorizer, truncate_pair
from .regions import open_regions

PathLike = Union[str, os.PathLike]
ANSWERS_FILE = "answers.json"  # the answer of each logit, written into every checkpoint


def read_json_list(path: PathLike, required: Sequence[str]) -> list[dict]:
    """A task file: a JSON list of objects, each with the ``required`` keys."""
    path = Path(path)
    if not path.is_file():
        raise VinvlError(f"{path}: no such data file")
    items = read_json(path, list)
    if not items:
        raise VinvlError(f"{path}: no items (an empty split)")
    for i, it in enumerate(items):
        missing = [k for k in required if not isinstance(it, dict) or k not in it]
        if missing:
            raise VinvlError(f"{path}: item {i} lacks {', '.join(missing)}")
    return items


class AnswerVocab:
    """The answers in logit order and the map from the data's answer labels to logit indices.

    As the original: the labels are ``list(ans2label.values())`` and logit ``i`` answers
    ``label2ans[labels[i]]`` (``label2ans`` the released list, else ``ans2label`` inverted).
    """

    def __init__(self, answers: Sequence[str], labels: Optional[Sequence[Any]] = None) -> None:
        """``answers[i]`` is logit ``i``'s answer; ``labels[i]`` the label the data files use for it."""
        self.answers = [str(a) for a in answers]
        self.labels = list(labels) if labels is not None else list(range(len(self.answers)))
        self.index = {lab: i for i, lab in enumerate(self.labels)}

    def __len__(self) -> int:
        return len(self.answers)

    @classmethod
    def from_files(cls, label_file: PathLike, label2ans_file: Optional[PathLike] = None) -> "AnswerVocab":
        """``ans2label`` pickle (+ optional ``label2ans`` pickle: a list, or a dict label -> answer)."""
        ans2label = safe_load(label_file)
        if not isinstance(ans2label, dict) or not ans2label:
            raise VinvlError(f"{label_file}: expected a non-empty dict answer -> label")
        labels = list(ans2label.values())
        if label2ans_file is not None:
            l2a = safe_load(label2ans_file)
            try:
                answers = [l2a[lab] for lab in labels]
            except (KeyError, IndexError, TypeError):
                raise VinvlError(f"{label2ans_file}: does not cover the labels of {label_file}") from None
        else:
            inverse = {lab: ans for ans, lab in ans2label.items()}
            answers = [inverse[lab] for lab in labels]
        return cls(answers, labels)

    @classmethod
    def from_checkpoint(cls, folder: PathLike) -> "AnswerVocab":
        """The ``answers.json`` a training run writes into its checkpoints."""
        path = Path(folder) / ANSWERS_FILE
        if not path.is_file():
            raise VinvlError(f"{path}: no answer list; give the answer vocabulary (--label-file, --label2ans)")
        data = read_json(path, dict)
        answers, labels = data.get("answers"), data.get("labels")
        if not isinstance(answers, list) or not answers or not all(isinstance(a, str) for a in answers):
            raise VinvlError(f"{path}: 'answers' must be a non-empty list of strings (the answer of each logit)")
        if labels is not None and (not isinstance(labels, list) or len(labels) != len(answers)):
            raise VinvlError(f"{path}: 'labels' must be a list as long as 'answers' ({len(answers)})")
        return cls(answers, labels)

    @classmethod
    def find(cls, label_file: Optional[PathLike], label2ans: Optional[PathLike], checkpoint: Optional[PathLike],
             data_dir: Optional[PathLike], default_label: str, default_label2ans: str) -> "AnswerVocab":
        """The answer vocabulary a command uses: the given pickles, else the checkpoint's ``answers.json``, else
        ``data_dir``'s (or ``data_dir/cache``'s) ``default_label`` pickle (with its ``default_label2ans``)."""
        if label_file is None and checkpoint is not None and (Path(checkpoint) / ANSWERS_FILE).is_file():
            return cls.from_checkpoint(checkpoint)
        if label_file is None and data_dir is not None:
            for d in (Path(data_dir), Path(data_dir) / "cache"):
                if (d / default_label).is_file():
                    label_file = d / default_label
                    if label2ans is None and (d / default_label2ans).is_file():
                        label2ans = d / default_label2ans
                    break
        if label_file is None:
            where = f"{checkpoint} has no answers.json; " if checkpoint is not None else ""
            raise VinvlError(f"no answer vocabulary: {where}give --label-file ({default_label})")
        return cls.from_files(label_file, label2ans)

    def save(self, folder: PathLike) -> Path:
        """Write ``answers.json`` (answers and labels in logit order) into ``folder``."""
        return atomic_write_json(Path(folder) / ANSWERS_FILE, {"answers": self.answers, "labels": self.labels})

    def label_index(self, label: Any, where: str) -> int:
        """The logit index of a data file's answer label."""
        try:
            return self.index[label]
        except KeyError:
            raise VinvlError(f"{where}: answer label {label!r} is not in the answer vocabulary") from None


def tags_of(item: dict) -> str:
    """The tags text of a QA item: ``o`` with ``;`` separators as spaces (the original's text_b)."""
    return str(item.get("o") or "").replace(";", " ").strip()


class QADataset:
    """VQA / GQA examples: ``[CLS] q [SEP] tags [SEP]`` + the image's regions, with the target.

    ``target="soft"`` (VQA): a ``[num_answers]`` vector holding each answer's soft score ``s``;
    ``target="index"`` (GQA): the logit index of the first answer. Items without answers are
    left out unless ``test`` (as the original); test items get an all-zero / 0 target.
    """

    def __init__(
        self, items: Sequence[dict], regions: Any, vocab: AnswerVocab, tensorizer: ClassificationTensorizer,
        target: str = "soft", test: bool = False, source: str = "<items>",
    ) -> None:
        if target not in ("soft", "index"):
            raise VinvlError(f"target must be soft or index, got {target!r}")
        self.items = [it for it in items if test or len(it.get("an") or []) > 0]
        self.regions, self.vocab, self.tensorizer = regions, vocab, tensorizer
        self.target, self.test, self.source = target, test, source

    def __len__(self) -> int:
        return len(self.items)

    def question_id(self, i: int) -> Any:
        """Item ``i``'s question id (its index when the item has none)."""
        return self.items[i].get("q_id", i)

    def targets(self, i: int) -> torch.Tensor:
        """Item ``i``'s training/evaluation target."""
        it, n = self.items[i], len(self.vocab)
        where = f"{self.source}: item {i}"
        if self.target == "index":
            an = it.get("an") or []
            return torch.tensor(self.vocab.label_index(an[0], where) if an else 0)
        t = torch.zeros(n)
        scores = it.get("s") or []
        for j, lab in enumerate(it.get("an") or []):
            t[self.vocab.label_index(lab, where)] = float(scores[j]) if j < len(scores) else 0.0
        return t

    def example(self, i: int, epoch: int = 0) -> dict[str, torch.Tensor]:
        """Model inputs of item ``i`` with ``labels`` (``epoch`` unused: no random choices)."""
        it = self.items[i]
        x = self.tensorizer(str(it["q"]), tags_of(it), self.regions.regions(it["img_id"]))
        x["labels"] = self.targets(i)
        return x


def load_qa_split(
    qa_file: PathLike, features: Any, vocab: AnswerVocab, tokenizer: Any, cfg: ClassificationOptions, target: str,
    test: Optional[bool] = None,
) -> QADataset:
    """A QA split's dataset; ``features`` a path (folder or .pt) or an open region source. ``test``
    (default: no item has answers) keeps unanswered items and scores nothing."""
    items = read_json_list(qa_file, ("q", "img_id"))
    if test is None:
        test = not any(it.get("an") for it in items)
    elif not test and not any(it.get("an") for it in items):
        raise VinvlError(f"{qa_file}: no item has an answer ('an'): nothing to train on or score")
    regions = open_regions(features) if isinstance(features, (str, os.PathLike)) else features
    tz = ClassificationTensorizer(tokenizer, cfg.max_seq_length, cfg.max_img_seq_length)
    return QADataset(items, regions, vocab, tz, target=target, test=test, source=str(qa_file))


class PairDataset:
    """NLVR2 examples of the pair model (``--use_pair``): ``[2, ...]`` inputs (one sequence per image) and the 0/1
    label."""

    def __init__(self, items: Sequence[dict], regions: Any, tokenizer: Any, cfg: ClassificationOptions,
                 use_label_seq: bool = False, source: str = "<items>") -> None:
        """``use_label_seq``: put each image's tags (``o[side]``) after the sentence (off in the model zoo)."""
        self.items, self.regions, self.tok = list(items), regions, tokenizer
        self.tz = ClassificationTensorizer(tokenizer, cfg.max_seq_length, cfg.max_img_seq_length)
        self.use_label_seq, self.source = use_label_seq, source
        for i, it in enumerate(self.items):
            if not isinstance(it.get("img_id"), dict) or len(it["img_id"]) != 2:
                raise VinvlError(f"{source}: item {i}: img_id must be {{'left': id, 'right': id}}")

    def __len__(self) -> int:
        return len(self.items)

    def label(self, i: int) -> int:
        """Item ``i``'s label (1 true, 0 false)."""
        lab = self.items[i].get("label")
        if isinstance(lab, str):
            lab = {"true": 1, "false": 0}.get(lab.lower(), lab)
        return int(lab) if lab is not None else 0

    def with_tags(self, i: int) -> bool:
        """Whether item ``i`` takes the original's text_b branch: ``--use_label_seq`` and a tag dict ``o``."""
        return self.use_label_seq and bool(self.items[i].get("o"))

    def example(self, i: int, epoch: int = 0) -> dict[str, torch.Tensor]:
        """Both images' sequences stacked on a choice axis, with ``labels``."""
        it = self.items[i]
        text, n, with_b = str(it["q"]), self.tz.max_seq_length, self.with_tags(i)
        choices = []
        for side, key in it["img_id"].items():
            tags = str((it.get("o") or {}).get(side) or "") if with_b else ""
            choices.append(self.tz(text, tags, self.regions.regions(key), with_b=with_b))
            a = self.tok.tokenize(text)
            b = self.tok.tokenize(tags) if tags else []
            if with_b:
                truncate_pair(a, b, n - 3)
            else:
                a = a[: n - 2]
            if len(a) < len(self.tok.tokenize(text)):  # the original keeps the truncated sentence for the next image
                text = self.tok.convert_tokens_to_string(a)
        x = {k: torch.stack([c[k] for c in choices]) for k in choices[0]}
        x["labels"] = torch.tensor(self.label(i))
        return x


class JointPairDataset(PairDataset):
    """NLVR2 examples of the original's non-pair model (``run_nlvr.py`` without ``--use_pair``, its
    ``tensorize_example``): one sequence ``[CLS] sentence [SEP]`` (+ ``left tags + ' ' + right tags [SEP]`` with
    ``--use_label_seq``) + the left image's regions then the right's, cut to ``2 x max_img_seq_length`` together (a
    left image with more regions than that takes the right's room) and zero-padded to it; the 0/1 label."""

    def __init__(self, items: Sequence[dict], regions: Any, tokenizer: Any, cfg: ClassificationOptions,
                 use_label_seq: bool = False, source: str = "<items>") -> None:
        """As :class:`PairDataset`; the two images' regions share ``2 x max_img_seq_length`` slots."""
        super().__init__(items, regions, tokenizer, cfg, use_label_seq, source)
        self.tz = ClassificationTensorizer(tokenizer, cfg.max_seq_length, 2 * cfg.max_img_seq_length)
        for i, it in enumerate(self.items):
            if set(it["img_id"]) != {"left", "right"}:
                raise VinvlError(f"{source}: item {i}: img_id must be {{'left': id, 'right': id}}")

    def example(self, i: int, epoch: int = 0) -> dict[str, torch.Tensor]:
        """The one sequence over both images, with ``labels``."""
        it = self.items[i]
        o, with_b = it.get("o") or {}, self.with_tags(i)
        tags = f"{o.get('left') or ''} {o.get('right') or ''}" if with_b else None
        both = np.concatenate([np.asarray(self.regions.regions(it["img_id"][side])) for side in ("left", "right")])
        x = self.tz(str(it["q"]), tags, both, with_b=with_b)
        x["labels"] = torch.tensor(self.label(i))
        return x


def load_pair_split(path: PathLike, features: Any, tokenizer: Any, cfg: ClassificationOptions,
                    use_label_seq: bool = False, use_pair: bool = True) -> PairDataset:
    """An NLVR2 split's dataset (``use_pair``: the pair model's, else the non-pair model's); ``features`` a path
    (folder, TSV or .pt) or an open region source."""
    items = read_json_list(path, ("q", "img_id"))
    regions = open_regions(features) if isinstance(features, (str, os.PathLike)) else features
    cls = PairDataset if use_pair else JointPairDataset
    return cls(items, regions, tokenizer, cfg, use_label_seq, source=str(path))
