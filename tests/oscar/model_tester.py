"""The Oscar+ model family's shared tester (transformers' ``ModelTesterMixin``, for this family): the one tiny
config of the Oscar+ tests, each model class with the config variants it has, inputs of the right shapes
for it, and the shapes its outputs must have. ``tests/oscar/test_modeling.py`` runs every check on every case."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from vinvl.oscar import (
    OscarConfig,
    OscarForCaptioning,
    OscarForMultipleChoice,
    OscarForPretraining,
    OscarForSequenceClassification,
    OscarModel,
)

TINY = dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)


def tiny_config(**overrides: Any) -> OscarConfig:
    """A 1-layer, 16-wide Oscar+ config (BERT's structure, small); ``overrides`` set any field."""
    return OscarConfig(**{**TINY, **overrides})


@dataclass(frozen=True)
class ModelCase:
    """One model class with one config variant."""

    cls: type
    overrides: dict = field(default_factory=dict)
    text: int = 6  # text positions
    regions: int = 3
    batch: int = 2

    @property
    def name(self) -> str:
        extra = ",".join(f"{k}={v}" for k, v in self.overrides.items())
        return self.cls.__name__ + (f"[{extra}]" if extra else "")

    def config(self, **more: Any) -> OscarConfig:
        return tiny_config(vocab_size=40, img_feature_dim=10, max_position_embeddings=32, **{**self.overrides, **more})

    def inputs(self, config: OscarConfig, seed: int = 0, labels: bool = False) -> dict[str, torch.Tensor]:
        """A batch for ``forward`` (multiple choice: a choice axis after the batch's); ``labels``: with the class's targets."""
        g = torch.Generator().manual_seed(seed)
        lead = (self.batch, config.num_choice) if self.cls is OscarForMultipleChoice else (self.batch,)
        ids = torch.randint(5, config.vocab_size, (*lead, self.text), generator=g)
        x = {"input_ids": ids, "token_type_ids": torch.zeros_like(ids),
             "attention_mask": torch.ones(*lead, self.text + self.regions),
             "img_feats": torch.randn(*lead, self.regions, config.img_feature_dim, generator=g)}
        if not labels:
            return x
        if self.cls in (OscarForSequenceClassification, OscarForMultipleChoice):
            x["labels"] = torch.randint(0, config.num_labels, (self.batch,), generator=g)
        elif self.cls is OscarForCaptioning:
            x["masked_pos"] = torch.zeros_like(ids)
            x["masked_pos"][:, 1] = 1
            x["masked_ids"] = ids[:, 1:2].clone()
        elif self.cls is OscarForPretraining:
            mlm = torch.full((self.batch, self.text + self.regions), -1)
            mlm[:, 2] = ids[:, 2]
            x["masked_lm_labels"] = mlm
            x["next_sentence_label"] = torch.randint(0, config.num_contrast_classes, (self.batch,), generator=g)
        return x

    def outputs(self, out: Any) -> dict[str, torch.Tensor]:
        """The tensors a forward returns that the checks compare."""
        names = ("sequence_output", "pooled_output", "logits", "prediction_scores", "seq_relationship_scores")
        return {n: getattr(out, n) for n in names if getattr(out, n, None) is not None}

    def expected_shapes(self, config: OscarConfig) -> dict[str, tuple[int, ...]]:
        """What :meth:`outputs` must hold, by name (labels-free forward)."""
        b, t, n, h, v = self.batch, self.text, self.text + self.regions, config.hidden_size, config.vocab_size
        if self.cls is OscarModel:
            return {"sequence_output": (b, n, h), "pooled_output": (b, h)}
        if self.cls is OscarForSequenceClassification:
            return {"sequence_output": (b, n, h), "pooled_output": (b, h), "logits": (b, config.num_labels)}
        if self.cls is OscarForMultipleChoice:
            c = config.num_choice
            return {"sequence_output": (b * c, n, h), "pooled_output": (b * c, h), "logits": (b, config.num_labels)}
        if self.cls is OscarForCaptioning:
            return {"sequence_output": (b, n, h), "pooled_output": (b, h), "logits": (b, t, v)}
        return {"sequence_output": (b, n, h), "pooled_output": (b, h), "prediction_scores": (b, n, v),
                "seq_relationship_scores": (b, config.num_contrast_classes)}


CASES = [
    ModelCase(OscarModel),
    ModelCase(OscarForSequenceClassification, {"num_labels": 3}),
    ModelCase(OscarForSequenceClassification, {"num_labels": 3, "classifier": "mlp", "cls_hidden_scale": 2}),
    ModelCase(OscarForMultipleChoice, {"num_labels": 2, "num_choice": 2, "classifier": "mlp", "cls_hidden_scale": 3,
                                       "loss_type": "xe"}),
    ModelCase(OscarForCaptioning),
    ModelCase(OscarForCaptioning, {"tie_weights": True}),
    ModelCase(OscarForPretraining, {"num_contrast_classes": 3}),
]
