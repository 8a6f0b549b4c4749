"""Oscar+: the vision-language model over region features and tags (transformers BERT blocks)."""

from .modeling import (
    OscarConfig,
    OscarForCaptioning,
    OscarForMultipleChoice,
    OscarForPretraining,
    OscarForSequenceClassification,
    OscarModel,
    OscarOutput,
)

__all__ = [
    "OscarConfig",
    "OscarForCaptioning",
    "OscarForMultipleChoice",
    "OscarForPretraining",
    "OscarForSequenceClassification",
    "OscarModel",
    "OscarOutput",
]
