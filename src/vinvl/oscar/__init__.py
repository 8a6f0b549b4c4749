"""Oscar+: the vision-language model over region features and tags (transformers BERT blocks).

Layout: :mod:`.configuration`, :mod:`.modeling`, :mod:`.checkpoint`, :mod:`.generate`, :mod:`.tensorize`
(the model family), :mod:`.transformers_adapter` (the one place that knows transformers' internals),
:mod:`.training` (the :class:`~vinvl.oscar.training.Trainer`), :mod:`.options` (every task's options and
defaults), :mod:`.data`, :mod:`.tasks` (pretrain, retrieval, captioning, vqa, gqa, nlvr2) and :mod:`.metrics`.
The model names below load on first use, so ``vinvl.oscar.options`` is importable without torch.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "OscarConfig",
    "OscarForCaptioning",
    "OscarForMultipleChoice",
    "OscarForPretraining",
    "OscarForSequenceClassification",
    "OscarModel",
    "OscarOutput",
]


def __getattr__(name: str) -> Any:
    if name == "OscarConfig":
        from .configuration import OscarConfig

        return OscarConfig
    if name in __all__:
        from . import modeling

        return getattr(modeling, name)
    raise AttributeError(f"module 'vinvl.oscar' has no attribute {name!r}")
