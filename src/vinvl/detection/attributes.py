"""Attribute head: ``cat(pooled feature, class embedding)`` -> Linear + ReLU -> Linear, softmax."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import AttributeConfig


class AttributePredictor(nn.Module):
    """Attribute logits for boxes given their pooled feature and (predicted or true) class."""

    def __init__(self, cfg: AttributeConfig, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.cls_embedding = nn.Embedding(num_classes, cfg.cls_embed_dim)
        self.fc_attr = nn.Linear(in_channels + cfg.cls_embed_dim, cfg.hidden_dim)
        self.attr_score = nn.Linear(cfg.hidden_dim, cfg.num_attributes)

    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        x = torch.cat([features, self.cls_embedding(labels)], dim=1)
        return self.attr_score(F.relu(self.fc_attr(x)))


class AttributeHead(nn.Module):
    """``attribute.*`` in checkpoints; it shares the box head's res5 extractor, so holds only the predictor."""

    def __init__(self, cfg: AttributeConfig, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.predictor = AttributePredictor(cfg, in_channels, num_classes)


def select_attributes(logits: torch.Tensor, threshold: float, max_per_box: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax, drop ``__no_attribute__`` (0) and probabilities <= ``threshold``, keep the top ``max_per_box``.

    Returns ``(labels, scores)`` of shape ``[N, k]``; a slot whose score is 0 is padding. No
    per-image cap is applied: the original's MAX_NUM_ATTR_PER_IMG never removes anything.
    """
    probs = F.softmax(logits, dim=-1)
    probs[:, 0] = 0
    probs[probs <= threshold] = 0
    k = min(max_per_box, probs.shape[1])
    scores, labels = probs.topk(k, dim=1)
    return labels, scores
