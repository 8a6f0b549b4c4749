"""Oscar+ pretraining: masked language modelling + the 3-way (or vanilla Oscar 2-way) contrastive loss.

Examples are built from a corpus yaml (:mod:`vinvl.corpus.build`): ``[CLS] text_a [SEP] text_b
[SEP]`` + regions, where text_b is the image's tags (or, for QA rows with an answer, the
answer). Contrastive sampling as Oscar+: with probability ``texta_false_prob`` text_a is
replaced by another row's (label 1); with probability 0.5 - that, text_b is replaced (label
2, drawn as ``textb_sample_mode`` says); else matched (label 0). Vanilla Oscar
(``num_contrast_classes 2``, ``texta_false_prob 0``): text_b replaced half the time (label 1).
MLM masks 15% of the text tokens: 80% ``[MASK]``, 10% a random token, 10% unchanged.

Every random choice of an example comes from a generator seeded by ``(seed, epoch, row)``, and
the row order of an epoch from ``(seed, epoch)``, so a resumed run sees exactly the examples the
uninterrupted run would have seen.
"""

from __future__ import annotations

import json
import os
import random
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional, Union

import torch
import yaml

from ..errors import VinvlError
from ..tsv import TSVFile
from .inputs import RegionStore, _regions, _truncate_pair
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


class CorpusDataset:
    """Rows of a pretraining corpus with their regions and tags."""

    def __init__(self, corpus_yaml: PathLike, tokenizer: Any, cfg: PretrainConfig) -> None:
        self.path = Path(corpus_yaml)
        try:
            spec = yaml.safe_load(self.path.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as e:
            raise VinvlError(f"{self.path}: cannot read the corpus yaml ({e})") from None
        for k in ("corpus_file", "image_feature_path"):
            if not isinstance(spec, dict) or k not in spec:
                raise VinvlError(f"{self.path}: a corpus yaml needs '{k}'")
        base = self.path.parent
        res = lambda p: Path(p) if Path(p).is_absolute() else base / p  # noqa: E731
        self.tok, self.cfg = tokenizer, cfg
        self.feature_dirs = {d: res(p) for d, p in spec["image_feature_path"].items()}
        self.label_dirs = {d: res(p) for d, p in (spec.get("image_label_path") or {}).items()}
        corpus = TSVFile(res(spec["corpus_file"]), build_index=True)
        self.rows: list[tuple[str, str, str, Optional[str]]] = []
        for i in range(len(corpus)):
            r = corpus[i]
            if len(r) < 3:
                raise VinvlError(f"{corpus.path}: row {i + 1}: expected image id, label id, text_a")
            self.rows.append((r[0], r[1], r[2], r[3] if len(r) > 3 else None))
        corpus.close()
        self._stores: dict[tuple[str, Optional[str]], RegionStore] = {}
        self._datasets = sorted(self.feature_dirs, key=len, reverse=True)
        self._tags_cache: dict[str, str] = {}

    def __len__(self) -> int:
        return len(self.rows)

    def _locate(self, image_id: str) -> tuple[str, Optional[str], str]:
        for d in self._datasets:
            if image_id.startswith(d + "_"):
                rest = image_id[len(d) + 1 :]
                m = re.match(r"(\d+)_(.+)$", rest)
                if m and (self.feature_dirs[d] / m.group(1) / "features.tsv").is_file():
                    return d, m.group(1), m.group(2)  # a chunked dataset: <dataset>_<chunk>_<key>
                return d, None, rest
        raise VinvlError(f"{self.path}: image id {image_id!r} names no dataset of image_feature_path")

    def _store(self, image_id: str) -> tuple[RegionStore, str]:
        """The feature (+ label) folder of an image id, opened once, and the image's key in it."""
        d, chunk, key = self._locate(image_id)
        store = self._stores.get((d, chunk))
        if store is None:
            within = (lambda p: p / chunk) if chunk else (lambda p: p)
            labels = within(self.label_dirs[d]) if d in self.label_dirs else None
            store = self._stores[(d, chunk)] = RegionStore(within(self.feature_dirs[d]), label_folder=labels)
        return store, key

    def regions(self, image_id: str) -> torch.Tensor:
        """The image's ``[N, 2054]`` region features."""
        store, key = self._store(image_id)
        return torch.from_numpy(store.regions(key).copy())

    def tags(self, image_id: str) -> str:
        """The image's tags text ('' without a label folder)."""
        if image_id not in self._tags_cache:
            store, key = self._store(image_id)
            self._tags_cache[image_id] = store.tags(key)
        return self._tags_cache[image_id]

    def text_b(self, i: int) -> str:
        """Row ``i``'s second text: the answer of a QA row that has one, else the image's tags."""
        image_id, label_id, _, answer = self.rows[i]
        return answer if answer and "qa" in label_id else self.tags(image_id)

    def _replacement_b(self, i: int, rng: random.Random) -> str:
        is_qa = "qa" in self.rows[i][1]
        for _ in range(20):
            j = rng.randrange(len(self.rows))
            if self.rows[j][0] == self.rows[i][0]:
                continue
            mode = self.cfg.textb_sample_mode
            if mode == 0 or not is_qa:  # another image's tags
                return self.tags(self.rows[j][0])
            if mode == 1 or "qa" in self.rows[j][1]:  # another row's text_b (mode 2: only QA rows' answers)
                return self.text_b(j)
        return self.tags(self.rows[(i + 1) % len(self.rows)][0])

    def example(self, i: int, epoch: int) -> dict[str, torch.Tensor]:
        """Row ``i`` as model inputs with MLM and contrastive labels, random choices seeded by ``(seed, epoch, i)``."""
        cfg, tok = self.cfg, self.tok
        rng = random.Random(f"{cfg.seed}/{epoch}/{i}")
        image_id, _, text_a, _ = self.rows[i]
        text_b = self.text_b(i)
        label = 0
        r = rng.random()
        if cfg.num_contrast_classes == 3:
            if r < cfg.texta_false_prob:
                j = rng.randrange(len(self.rows))
                while len(self.rows) > 1 and self.rows[j][0] == image_id:
                    j = rng.randrange(len(self.rows))
                text_a, label = self.rows[j][2], 1
            elif r < 0.5:
                text_b, label = self._replacement_b(i, rng), 2
        elif r < 0.5:
            text_b, label = self._replacement_b(i, rng), 1
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
        img, n_img = _regions(self.regions(image_id), cfg.max_img_seq_length)
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
    vocab: PathLike,
    out_dir: PathLike,
    model_config: Optional[OscarConfig] = None,
    cfg: PretrainConfig = PretrainConfig(),
    init: Optional[PathLike] = None,
    resume: bool = False,
    log: Any = None,
) -> Path:
    """Pretrain (or continue) an :class:`OscarForPretraining`; checkpoints ``out_dir/checkpoint-N/`` in the original layout."""
    from .inputs import load_tokenizer

    from .finetune import dist_info, latest_checkpoint, loop_config, stacked_batches, train_loop

    rank, world = dist_info()
    tok = load_tokenizer(vocab)
    ds = CorpusDataset(corpus_yaml, tok, cfg)
    torch.manual_seed(cfg.seed)
    if init is not None:
        model = OscarForPretraining.from_original(init)
    else:
        mc = model_config or OscarConfig()
        mc.vocab_size = tok.vocab_size
        mc.num_contrast_classes = cfg.num_contrast_classes
        model = OscarForPretraining(mc)
    last = latest_checkpoint(out_dir) if resume else None
    if last is not None:
        model = OscarForPretraining.from_original(last)
    loop = loop_config(cfg)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "pretrain_config.json").write_text(json.dumps(asdict(cfg), indent=1))

    def step_fn(module: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        o = module(**batch)
        acc = (o.seq_relationship_scores.argmax(-1) == batch["next_sentence_label"]).float().mean().item()
        return o.loss, {"mlm": o.masked_lm_loss.item(), "contrastive": (o.loss - o.masked_lm_loss).item(), "contrastive_acc": acc}

    return train_loop(
        model, lambda start: stacked_batches(ds, cfg.batch_size, cfg.seed, start, rank, world), step_fn, loop, out, tokenizer=tok,
        resume_from=last, log=log,
    )
