"""Oscar+ pretraining as a Trainer task: masked language modelling + the 3-way (or vanilla Oscar 2-way)
contrastive loss over a corpus in the original's layout (:class:`vinvl.oscar.data.corpus.CorpusDataset`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Optional, Union

import torch

from ...errors import VinvlError
from ..data.corpus import CorpusDataset
from ..modeling import OscarForPretraining
from ..options import PretrainOptions
from ..training import Trainer
from .base import Task, accuracy, task_tokenizer

PathLike = Union[str, os.PathLike]


class PretrainTask(Task):
    """MLM + contrastive pretraining of :class:`OscarForPretraining`."""

    model_class = OscarForPretraining

    def __init__(self, corpus_yaml: PathLike, options: PretrainOptions, tokenizer: Any, init: Optional[PathLike] = None,
                 model_config: Any = None, data_dir: Optional[PathLike] = None,
                 log: Optional[Callable[[str], None]] = None) -> None:
        """``data_dir``: where relative ``image_feature_path`` folders are (default: the yaml's folder)."""
        super().__init__(options, tokenizer, init, model_config, log)
        self.corpus = CorpusDataset(corpus_yaml, tokenizer, options, data_dir=data_dir)

    def train_set(self) -> CorpusDataset:
        return self.corpus

    def model_overrides(self) -> dict[str, Any]:
        return {} if self.init is not None else {"num_contrast_classes": self.options.num_contrast_classes}

    def region_dim(self) -> Optional[int]:
        return self.corpus.dim

    def bert_overrides(self) -> dict[str, Any]:
        # run_oscarplus_pretrain.py: the model zoo's command passes --use_img_layernorm 1 (its default 0) and the
        # default --img_layer_norm_eps 1e-12; the contrastive head's classes follow --texta_false_prob
        return {**super().bert_overrides(), "use_img_layernorm": 1, "img_layer_norm_eps": 1e-12,
                "num_contrast_classes": self.options.num_contrast_classes}

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        source = self.init or "the model"
        if model.config.num_contrast_classes != self.options.num_contrast_classes:
            raise VinvlError(f"{source}: its contrastive head has {model.config.num_contrast_classes} classes, the run "
                             f"{self.options.num_contrast_classes} (--num-contrast-classes, --texta-false-prob)")
        if model.config.vocab_size < len(self.tokenizer):
            raise VinvlError(f"the vocabulary has {len(self.tokenizer)} words, more than the model's {model.config.vocab_size}")
        return model

    def loss(self, module: torch.nn.Module, batch: dict[str, torch.Tensor], ctx: Any) -> tuple[torch.Tensor, dict]:
        o = module(**batch)
        return o.loss, {"mlm": o.masked_lm_loss, "contrastive": o.loss - o.masked_lm_loss,
                        "contrastive_acc": accuracy(o.seq_relationship_scores, batch["next_sentence_label"])}


def pretrain(corpus_yaml: PathLike, vocab: Optional[PathLike], out_dir: PathLike, model_config: Any = None,
             options: Optional[PretrainOptions] = None, init: Optional[PathLike] = None, resume: bool = False,
             log: Optional[Callable[[str], None]] = None, data_dir: Optional[PathLike] = None,
             callbacks: tuple = ()) -> Path:
    """Pretrain (or continue) an :class:`OscarForPretraining`; checkpoints ``out_dir/checkpoint-N/`` in the original
    layout. ``vocab``: a vocab.txt (default: ``init``'s); returns the last checkpoint folder."""
    options = (options or PretrainOptions()).check()
    tok = task_tokenizer(vocab, init)
    task = PretrainTask(corpus_yaml, options, tok, init=init, model_config=model_config, data_dir=data_dir, log=log)
    return Trainer(task, options, out_dir, log=log, callbacks=callbacks).train(resume=resume)
