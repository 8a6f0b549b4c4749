"""Oscar+ pretraining as a Trainer task: masked language modelling + the 3-way (or vanilla Oscar 2-way)
contrastive loss over a corpus in the original's layout (:class:`vinvl.oscar.data.corpus.CorpusDataset`).

With an extra corpus (the original's ``--extra_dataset_file``, the model zoo's split of its large corpus) each
step also takes as many examples of it, in its own order, their text_b drawn by ``extra_textb_sample_mode``;
the step's loss is ``(1 - extra_loss_weight) x`` the main batch's + ``extra_loss_weight x`` the extra batch's,
each the model's loss over its own batch, as ``run_oscarplus_pretrain.py`` weighs its two loaders' batches."""

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
from .classification import check_region_width

PathLike = Union[str, os.PathLike]


def _figures(o: Any, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The figures logged of a batch's outputs: its MLM and contrastive losses, the contrastive accuracy."""
    return {"mlm": o.masked_lm_loss, "contrastive": o.loss - o.masked_lm_loss,
            "contrastive_acc": accuracy(o.seq_relationship_scores, batch["next_sentence_label"])}


class PretrainTask(Task):
    """MLM + contrastive pretraining of :class:`OscarForPretraining`."""

    model_class = OscarForPretraining

    def __init__(self, corpus_yaml: PathLike, options: PretrainOptions, tokenizer: Any, init: Optional[PathLike] = None,
                 model_config: Any = None, data_dir: Optional[PathLike] = None,
                 log: Optional[Callable[[str], None]] = None, extra_corpus: Optional[PathLike] = None) -> None:
        """``data_dir``: where relative ``image_feature_path`` folders are (default: the yaml's folder), for the
        extra corpus too (``extra_corpus``: a second corpus yaml, as the original's ``--extra_dataset_file``)."""
        super().__init__(options, tokenizer, init, model_config, log)
        if extra_corpus is None and options.extra_loss_weight:
            # the original then weighs the main batch's loss by 1 - it, alone: a smaller step, surely not what is meant
            raise VinvlError(f"--extra-loss-weight {options.extra_loss_weight} without --extra-corpus: it weighs the "
                             "extra corpus's batches (the main corpus's: 1 - it)")
        if extra_corpus is None and "extra_textb_sample_mode" in options.explicit():
            raise VinvlError("--extra-textb-sample-mode without --extra-corpus: it draws the extra corpus's text_b")
        self.corpus = CorpusDataset(corpus_yaml, tokenizer, options, data_dir=data_dir)
        self.extra: Optional[CorpusDataset] = None
        if extra_corpus is not None:
            self.extra = CorpusDataset(extra_corpus, tokenizer, options, data_dir=data_dir,
                                       textb_sample_mode=options.extra_textb_sample_mode, stream="extra")
            if self.extra.dim != self.corpus.dim:
                raise VinvlError(f"{extra_corpus}: regions of width {self.extra.dim}, the corpus's {self.corpus.dim}")
            if options.extra_loss_weight == 0:
                self.log(f"{extra_corpus}: --extra-loss-weight 0 (the original's default): its batches are computed "
                         "and logged (extra_*) but do not train")

    def train_set(self) -> CorpusDataset:
        return self.corpus

    def extra_set(self) -> Optional[CorpusDataset]:
        return self.extra

    def model_overrides(self) -> dict[str, Any]:
        # run_oscarplus_pretrain.py sets --drop_out on whatever config it starts from; the head's classes are the
        # starting checkpoint's (checked in prepare_model)
        dropout = {"hidden_dropout_prob": self.options.drop_out}
        return dropout if self.init is not None else {**dropout, "num_contrast_classes": self.options.num_contrast_classes}

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
        check_region_width(model, self.corpus, str(self.corpus.path))  # (the extra corpus's width is the corpus's)
        return model

    def loss(self, module: torch.nn.Module, batch: dict[str, Any], ctx: Any) -> tuple[torch.Tensor, dict]:
        main = {k: v for k, v in batch.items() if k != "extra"}
        o = module(**main)
        figures = _figures(o, main)
        if "extra" not in batch:
            return o.loss, figures
        # run_oscarplus_pretrain.py: each batch's loss, weighed 1 - w and w, one backward (here: of their sum)
        e, w = module(**batch["extra"]), self.options.extra_loss_weight
        figures.update({f"extra_{k}": v for k, v in _figures(e, batch["extra"]).items()})
        return (1 - w) * o.loss + w * e.loss, figures

    def settings(self) -> dict[str, Any]:
        return {"extra_corpus": str(self.extra.path)} if self.extra is not None else {}


def pretrain(corpus_yaml: PathLike, vocab: Optional[PathLike], out_dir: PathLike, model_config: Any = None,
             options: Optional[PretrainOptions] = None, init: Optional[PathLike] = None, resume: bool = False,
             log: Optional[Callable[[str], None]] = None, data_dir: Optional[PathLike] = None,
             callbacks: tuple = (), extra_corpus: Optional[PathLike] = None) -> Path:
    """Pretrain (or continue) an :class:`OscarForPretraining`; checkpoints ``out_dir/checkpoint-N/`` in the original
    layout. ``vocab``: a vocab.txt (default: ``init``'s); ``extra_corpus``: a second corpus yaml each step also
    draws from (see the module); returns the last checkpoint folder."""
    options = (options or PretrainOptions()).check()
    tok = task_tokenizer(vocab, init, do_lower_case=options.do_lower_case)
    task = PretrainTask(corpus_yaml, options, tok, init=init, model_config=model_config, data_dir=data_dir, log=log,
                        extra_corpus=extra_corpus)
    return Trainer(task, options, out_dir, log=log, callbacks=callbacks).train(resume=resume)
