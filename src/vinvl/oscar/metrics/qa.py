"""The classification tasks' scores."""

from __future__ import annotations

import torch


def vqa_score(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Each question's VQA score: the soft score (``s``) of the arg-max answer (0 if it is not among ``an``)."""
    return targets.gather(1, logits.argmax(1, keepdim=True)).squeeze(1)


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Share of rows whose arg-max is the label (a tensor on the logits' device: no host read)."""
    return (logits.detach().argmax(-1) == labels).float().mean()
