"""The one loader of Oscar+ checkpoints, for inference and for training.

A checkpoint folder, a run folder (its newest ``checkpoint-N/``), a released ``.zip`` or a registry name
(:func:`vinvl.oscar.checkpoint.resolve_checkpoint`) opens as an :class:`OscarCheckpoint`: where it is and the
settings it was trained with, checked before anything heavy (so a command can check its data before the weights
load). From it come the tokenizer, the options merged by the one rule (:func:`vinvl.oscar.options.restore`:
the caller's explicit value, else the checkpoint's, else the default) and the model of a task head: strictly
for inference (:meth:`OscarCheckpoint.model`), or as the start of a training run (:meth:`OscarCheckpoint.start`:
the encoder required, the head's weights where they fit). :func:`from_pretrained` does all three at once.
A plain BERT checkpoint (``bert-base-uncased``) opens the same way and starts a training run as the original's
``from_pretrained`` starts one (:mod:`vinvl.oscar.bert_start`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Generic, Optional, TypeVar, Union

from torch import nn

from ..errors import VinvlError
from ..training.runtime import Device, as_device, stderr_log
from .bert_start import is_bert_folder, start_from_bert
from .checkpoint import load_for_task, require_checkpoint, training_settings
from .options import TrainingOptions, TrainingSettings, restore
from .tensorize import load_tokenizer

PathLike = Union[str, os.PathLike]
O = TypeVar("O", bound=TrainingOptions)
M = TypeVar("M", bound=nn.Module)


def check_lengths(model: nn.Module, max_seq_length: int) -> None:
    """A clear error when the text is longer than the model's position table."""
    if max_seq_length > model.config.max_position_embeddings:
        raise VinvlError(f"--max-seq-length {max_seq_length} exceeds the model's "
                         f"{model.config.max_position_embeddings} positions")


class OscarCheckpoint:
    """An opened checkpoint: its folder (or zip) and the settings it recorded (:attr:`settings`)."""

    def __init__(self, path: Path) -> None:
        """``path``: a resolved checkpoint (see :meth:`open`)."""
        self.path = path
        self._settings: Optional[TrainingSettings] = None

    @classmethod
    def open(cls, source: PathLike, what: str = "checkpoint") -> "OscarCheckpoint":
        """Resolve and check ``source`` (one error naming it, as ``what``)."""
        return cls(require_checkpoint(source, what))

    @property
    def settings(self) -> TrainingSettings:
        """The options the checkpoint was trained with (empty when it records none), read when first asked for:
        a run that only starts from its weights never depends on them."""
        if self._settings is None:
            self._settings = training_settings(self.path)
        return self._settings

    def options(self, options: O) -> O:
        """``options`` merged with what the checkpoint recorded, by the one rule (:func:`restore`)."""
        return restore(options, self.settings)

    def tokenizer(self, do_lower_case: Optional[bool] = None) -> Any:
        """The checkpoint's tokenizer (its ``vocab.txt``), lower-casing as given, else as it was trained, else on."""
        lower = self.settings.typed("do_lower_case", True) if do_lower_case is None else do_lower_case
        return load_tokenizer(self.path, do_lower_case=lower)

    @property
    def is_bert(self) -> bool:
        """Whether this is a plain BERT checkpoint (a folder whose config.json has no Oscar+ field)."""
        return is_bert_folder(self.path)

    def model(self, head: type[M], device: Device = "cpu", max_seq_length: Optional[int] = None) -> M:
        """The ``head`` model (an Oscar+ model class) with every weight of the checkpoint (strict), in eval mode on
        ``device``; ``max_seq_length`` is checked against its position table."""
        try:
            model = head.from_original(self.path).to(as_device(device)).eval()  # type: ignore[attr-defined]
        except VinvlError:
            if self.is_bert:
                raise VinvlError(f"{self.path} is a plain BERT checkpoint, not a trained Oscar+ model: train one "
                                 "from it (--init)") from None
            raise
        if max_seq_length is not None:
            check_lengths(model, max_seq_length)
        return model

    def start(self, head: type[M], overrides: Optional[dict[str, Any]] = None,
              log: Callable[[str], None] = stderr_log, bert: Optional[dict[str, Any]] = None) -> M:
        """The ``head`` model a training run starts from: the encoder required, head weights kept where their name
        and shape fit, ``overrides`` (num_labels, dropout, ...) set on the config first
        (:func:`vinvl.oscar.checkpoint.load_for_task`). From a plain BERT checkpoint: ``bert`` (the Oscar+ fields
        a BERT config lacks: region width, image LayerNorm, ...) and ``overrides`` set on its config, its weights
        where they fit, the rest newly initialised, and one line saying which
        (:func:`vinvl.oscar.bert_start.start_from_bert`)."""
        if self.is_bert:
            started = start_from_bert(head, self.path, {**(bert or {}), **(overrides or {})})
            if started is not None:
                log(started.line())
                return started.model  # type: ignore[return-value]
        return load_for_task(head, self.path, None, overrides, log)  # type: ignore[return-value]


@dataclass
class Pretrained(Generic[M, O]):
    """What :func:`from_pretrained` loads: the model, its tokenizer, the merged options and the checkpoint."""

    model: M
    tokenizer: Any
    options: O
    checkpoint: OscarCheckpoint


def from_pretrained(source: PathLike, head: type[M], options: O, device: Device = "cpu",
                    log: Optional[Callable[[str], None]] = None) -> Pretrained[M, O]:
    """A checkpoint's ``head`` model on ``device`` (eval mode), its tokenizer and ``options`` merged with the
    settings it recorded (the caller's explicit values win, then the checkpoint's, then the defaults); ``log``
    (if given) says each setting the checkpoint's value replaced."""
    ckpt = OscarCheckpoint.open(source)
    opts = ckpt.options(options)
    for name in type(options).RESTORED if log is not None else ():
        if getattr(opts, name) != getattr(options, name):
            log(f"override {name} with the training value: {getattr(options, name)} -> {getattr(opts, name)}")
    tok = ckpt.tokenizer(getattr(opts, "do_lower_case", None))
    model = ckpt.model(head, device, getattr(opts, "max_seq_length", None))
    return Pretrained(model, tok, opts, ckpt)


__all__ = ["OscarCheckpoint", "Pretrained", "check_lengths", "from_pretrained"]
