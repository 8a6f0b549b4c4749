"""Oscar+ pretraining: masked language modelling + the 3-way (or vanilla Oscar 2-way) contrastive loss.

Examples come from a corpus in the original's layout (:mod:`vinvl.corpus.layout`): ``[CLS] text_a
[SEP] text_b [SEP]`` + regions, text_b being the image's tags, or a question row's answer. The
contrastive label follows the original's code (``oscar_tsv.py``, ``random_sent``), not the VinVL
paper's wording: with probability 0.5 the triple is kept (label 0); else, with probability
``0.5 - texta_false_prob``, text_b is replaced (label 1) by ``textb_sample_mode`` 0: a random text
(text_a or text_b) of a row of another image, 1: another image's row's text_b, 2: a random question
row's answer; else text_a is replaced by another image's text_a (label ``num_contrast_classes - 1``:
2 for Oscar+, 1 for vanilla Oscar with ``texta_false_prob`` 0.5). Vanilla Oscar (2 classes,
``texta_false_prob`` 0) replaces only text_b (label 1). Other images are drawn up to 10 times, as the
original, to avoid the row's own image. MLM masks 15% of the text tokens: 80% ``[MASK]``, 10% a random
token, 10% unchanged (replaced texts too: the original's ``--mask_loss_for_unmatched 1``).

Every random choice of an example comes from a generator seeded by ``(seed, epoch, row)``, and
the row order of an epoch from ``(seed, epoch)``, so a resumed run sees exactly the examples the
uninterrupted run would have seen.
"""

from __future__ import annotations

import os
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple, Optional, Union

import torch

from ..atomic import atomic_write_json
from ..corpus import layout as L
from ..errors import VinvlError
from ..tsv import TSVFile, read_key_index
from .data.regions import row_dim as _row_dim
from .tensorize import pad_regions as _regions, truncate_pair as _truncate_pair
from .modeling import OscarConfig, OscarForPretraining

PathLike = Union[str, os.PathLike]


@dataclass
class PretrainConfig:
    """The original's pretraining options (``run_oscarplus_pretrain.py``)."""

    max_seq_length: int = 35
    max_img_seq_length: int = 50
    mask_prob: float = 0.15
    texta_false_prob: float = 0.25
    textb_sample_mode: int = 0
    num_contrast_classes: int = 3
    use_gtlabels: bool = True  # text_b from a label row's gt_objects when it has them (--use_gtlabels 1)
    batch_size: int = 8
    gradient_accumulation_steps: int = 1
    learning_rate: float = 1e-4
    weight_decay: float = 0.01
    adam_epsilon: float = 1e-8
    warmup_steps: int = 0
    scheduler: str = "linear"  # after warm-up: "linear" decay to 0 at max_steps, or "constant"
    max_steps: int = 1000
    max_grad_norm: float = 10.0
    seed: int = 88
    save_steps: int = 500
    log_steps: int = 20


def contrast_classes(texta_false_prob: float) -> int:
    """The original's number of contrastive classes: 3 when ``0 < texta_false_prob < 0.5``, else 2."""
    return 3 if 0 < texta_false_prob < 0.5 else 2


def check_config(cfg: PretrainConfig) -> None:
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

    def __init__(self, corpus_yaml: PathLike, tokenizer: Any, cfg: PretrainConfig, data_dir: Optional[PathLike] = None) -> None:
        """``data_dir``: where relative ``image_feature_path`` folders are (the original's ``--data_dir``;
        default: the yaml's folder)."""
        check_config(cfg)
        self.spec = L.read_spec(corpus_yaml, data_dir)
        self.path, self.tok, self.cfg = self.spec.path, tokenizer, cfg
        self._labels: dict[str, L.LabelFolder] = {}
        self._feature_keys: dict[tuple[str, Optional[str]], dict[str, int]] = {}
        self._features: dict[tuple[str, Optional[str]], Any] = {}
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
        keys = self._keys(ids.dataset, ids.chunk, where)
        if ids.key not in keys:
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

    def _keys(self, dataset: str, chunk: Optional[str], where: str) -> dict[str, int]:
        slot = (dataset, chunk)
        if slot not in self._feature_keys:
            folder = self._feature_dir(dataset, chunk)
            if not (folder / L.FEATURE_FILE).is_file():
                raise VinvlError(f"{where}: {folder / L.FEATURE_FILE}: no such features file")
            index = folder / L.FEATURE_INDEX
            self._feature_keys[slot] = (read_key_index(index) if index.is_file() else
                                        {k: i for i, k in enumerate(TSVFile(folder / L.FEATURE_FILE, build_index=True).keys())})
        return self._feature_keys[slot]

    def _label_folder(self, dataset: str) -> L.LabelFolder:
        if dataset not in self._labels:
            self._labels[dataset] = L.LabelFolder(self.spec.label_dirs[dataset])
        return self._labels[dataset]

    def __len__(self) -> int:
        return len(self.rows)

    def regions(self, i: int) -> torch.Tensor:
        """Row ``i``'s image's ``[N, dim]`` region features."""
        from ..features import FeatureTSV

        dataset, chunk, key = self.rows[i].feature
        slot = (dataset, chunk)
        if slot not in self._features:
            path = self._feature_dir(dataset, chunk) / L.FEATURE_FILE
            self._features[slot] = FeatureTSV(path, dim=_row_dim(path))
        return torch.from_numpy(self._features[slot][self._keys(dataset, chunk, "")[key]][1].copy())

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
        cfg, tok = self.cfg, self.tok
        rng = random.Random(f"{cfg.seed}/{epoch}/{i}")
        text_a, text_b, label = self.pair(i, rng)
        a, b = tok.tokenize(text_a), tok.tokenize(text_b)
        _truncate_pair(a, b, cfg.max_seq_length - 3)
        tokens = [tok.cls_token] + a + [tok.sep_token] + b + [tok.sep_token]
        types = [0] * (len(a) + 2) + [1] * (len(b) + 1)
        ids = tok.convert_tokens_to_ids(tokens)
        lm = [-1] * len(ids)
        special = {tok.cls_token_id, tok.sep_token_id}
        for p, t in enumerate(ids):
            if t in special or rng.random() >= cfg.mask_prob:
                continue
            lm[p] = t
            u = rng.random()
            ids[p] = tok.mask_token_id if u < 0.8 else (rng.randrange(tok.vocab_size) if u < 0.9 else t)
        pad = cfg.max_seq_length - len(ids)
        img, n_img = _regions(self.regions(i), cfg.max_img_seq_length)
        return {
            "input_ids": torch.tensor(ids + [tok.pad_token_id] * pad),
            "token_type_ids": torch.tensor(types + [0] * pad),
            "attention_mask": torch.tensor([1] * len(ids) + [0] * pad + [1] * n_img + [0] * (cfg.max_img_seq_length - n_img)),
            "img_feats": img,
            "masked_lm_labels": torch.tensor(lm + [-1] * (pad + cfg.max_img_seq_length)),
            "next_sentence_label": torch.tensor(label),
        }


def pretrain(
    corpus_yaml: PathLike,
    vocab: Optional[PathLike],
    out_dir: PathLike,
    model_config: Optional[OscarConfig] = None,
    cfg: PretrainConfig = PretrainConfig(),
    init: Optional[PathLike] = None,
    resume: bool = False,
    log: Any = None,
    data_dir: Optional[PathLike] = None,
) -> Path:
    """Pretrain (or continue) an :class:`OscarForPretraining`; checkpoints ``out_dir/checkpoint-N/`` in the original layout.
    ``vocab``: a vocab.txt (default: ``init``'s); ``data_dir``: the folder relative ``image_feature_path`` entries
    are in (default: the yaml's)."""
    from .checkpoint import require_checkpoint
    from .finetune import dist_info, latest_checkpoint, loop_config, stacked_batches, train_loop
    from .inputs import load_tokenizer

    rank, world = dist_info()
    if vocab is None and init is None:
        raise VinvlError("give a vocabulary (--vocab) or a checkpoint to start from (--init) holding one")
    if init is not None:
        init = require_checkpoint(init, "initial checkpoint (--init)")
    tok = load_tokenizer(vocab if vocab is not None else init)  # type: ignore[arg-type]
    ds = CorpusDataset(corpus_yaml, tok, cfg, data_dir=data_dir)
    torch.manual_seed(cfg.seed)
    last = latest_checkpoint(out_dir) if resume else None
    if last is not None:
        model = OscarForPretraining.from_original(last)
    elif init is not None:
        model = OscarForPretraining.from_original(init)
    else:
        mc = model_config or OscarConfig()
        mc.vocab_size = tok.vocab_size
        mc.num_contrast_classes = cfg.num_contrast_classes
        model = OscarForPretraining(mc)
    if model.config.num_contrast_classes != cfg.num_contrast_classes:
        raise VinvlError(f"{last or init}: its contrastive head has {model.config.num_contrast_classes} classes, the run "
                         f"{cfg.num_contrast_classes} (--num-contrast-classes, --texta-false-prob)")
    if model.config.vocab_size < tok.vocab_size:
        raise VinvlError(f"{vocab}: {tok.vocab_size} words, more than the model's {model.config.vocab_size}")
    loop = loop_config(cfg)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "pretrain_config.json", asdict(cfg), indent=1)

    def step_fn(module: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        o = module(**batch)
        acc = (o.seq_relationship_scores.argmax(-1) == batch["next_sentence_label"]).float().mean().item()
        return o.loss, {"mlm": o.masked_lm_loss.item(), "contrastive": (o.loss - o.masked_lm_loss).item(), "contrastive_acc": acc}

    return train_loop(
        model, lambda start: stacked_batches(ds, cfg.batch_size, cfg.seed, start, rank, world), step_fn, loop, out, tokenizer=tok,
        resume_from=last, log=log, training_args=asdict(cfg),
    )
