"""Retrieval metrics from a score matrix ``[images, captions]``: ranks both ways, R@K (the original's
``evaluate`` layout) and their mean over image folds (COCO 1K = 5 folds of the 5K test); and image->text R@K over
each image's own candidates (the original's ``--eval_caption_index_file`` evaluation)."""

from __future__ import annotations

import math
from typing import Sequence

import torch

from ...errors import VinvlError


def retrieval_ranks(scores: torch.Tensor, caption_to_image: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """0-based ranks: per image, of its best-scored caption among all captions; per caption, of its image.

    Ties count against the right answer (a wrong item scoring equal is ranked first), so a constant
    scorer gets nothing right; missing scores (NaN) rank last.
    """
    s = torch.nan_to_num(scores.float(), nan=-math.inf)
    n_img, n_cap = s.shape
    owner = torch.as_tensor(list(caption_to_image), dtype=torch.long)
    if owner.shape != (n_cap,) or (n_cap and (owner.min() < 0 or owner.max() >= n_img)):
        raise VinvlError(f"caption_to_image must give one image index in 0..{n_img - 1} per caption ({n_cap})")
    own = s[owner, torch.arange(n_cap)]
    i2t = torch.empty(n_img, dtype=torch.long)
    t2i = torch.zeros(n_cap, dtype=torch.long)
    for a in range(0, n_img, 256):  # row blocks: a 5K x 25K matrix needs no 125M-entry masks
        blk = s[a : a + 256]
        right = owner[None] == torch.arange(a, a + len(blk))[:, None]
        best = torch.where(right, blk, torch.tensor(-math.inf)).amax(1)
        wrong_ahead = (blk >= best[:, None]) & ~right
        i2t[a : a + len(blk)] = wrong_ahead.sum(1)
        t2i += ((blk >= own[None]) & ~right).sum(0)
    return i2t, t2i


def recall_at_k(scores: torch.Tensor, caption_to_image: Sequence[int], ks: Sequence[int] = (1, 5, 10)) -> dict[str, dict[str, float]]:
    """R@k image->text and text->image, the original's ``evaluate`` output layout."""
    i2t, t2i = retrieval_ranks(scores, caption_to_image)
    return {
        "i2t_retrieval": {f"R@{k}": float((i2t < k).float().mean()) for k in ks},
        "t2i_retrieval": {f"R@{k}": float((t2i < k).float().mean()) for k in ks},
    }


def fold_recall(scores: torch.Tensor, caption_to_image: Sequence[int], folds: int = 5) -> dict[str, dict[str, float]]:
    """R@k averaged over ``folds`` consecutive image blocks (COCO 1K = 5 folds of the 5K test)."""
    owner = torch.as_tensor(list(caption_to_image))
    n = scores.shape[0]
    if folds < 1 or n % folds:
        raise VinvlError(f"{n} images do not split into {folds} equal folds")
    size = n // folds
    parts = []
    for f in range(folds):
        cols = torch.nonzero((owner >= f * size) & (owner < (f + 1) * size)).flatten()
        parts.append(recall_at_k(scores[f * size : (f + 1) * size][:, cols], (owner[cols] - f * size).tolist()))
    return {d: {k: sum(p[d][k] for p in parts) / folds for k in parts[0][d]} for d in parts[0]}


def candidate_ranks(scores: torch.Tensor, caption_to_image: Sequence[int], candidates: Sequence[Sequence[int]]
                    ) -> torch.Tensor:
    """0-based rank of each image's best-scored own caption among its ``candidates`` (caption indices, a caption
    listed twice counted twice, as the original scores each entry); the number of candidates when none is its own
    (the original's ``compute_ranks``). Ties count against the right answer, NaN scores rank last."""
    s = torch.nan_to_num(scores.float(), nan=-math.inf)
    owner = torch.as_tensor(list(caption_to_image), dtype=torch.long)
    if len(candidates) != s.shape[0]:
        raise VinvlError(f"{len(candidates)} candidate lists for {s.shape[0]} images")
    ranks = torch.empty(len(candidates), dtype=torch.long)
    for i, cand in enumerate(candidates):
        idx = torch.as_tensor(list(cand), dtype=torch.long)
        right = owner[idx] == i
        if not right.any():
            ranks[i] = len(idx)
            continue
        row = s[i, idx]
        ranks[i] = ((row >= row[right].max()) & ~right).sum()
    return ranks


def candidate_recall(scores: torch.Tensor, caption_to_image: Sequence[int], candidates: Sequence[Sequence[int]],
                     ks: Sequence[int] = (1, 5, 10)) -> dict[str, dict[str, float]]:
    """R@k image->text over each image's candidates (:func:`candidate_ranks`); the original reports no
    text->image recall there (its lists are per image)."""
    ranks = candidate_ranks(scores, caption_to_image, candidates)
    return {"i2t_retrieval": {f"R@{k}": float((ranks < k).float().mean()) for k in ks}}
