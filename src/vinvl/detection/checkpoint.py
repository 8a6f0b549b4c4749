"""Loading maskrcnn-benchmark checkpoints of the AttrRCNN detector, strictly and safely (on
:mod:`vinvl.state_dict`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Union

import torch
from torch import nn

from ..state_dict import CheckpointError, load_strict, read_weights, unwrap

__all__ = ["CheckpointError", "load_into", "read_checkpoint"]  # CheckpointError: re-exported for the detector's users

# The attribute head shares the box head's res5 extractor; checkpoints store a copy under this prefix.
_SHARED_COPY = "attribute.feature_extractor."
_SHARED_WITH = "roi_heads.box.feature_extractor."

def read_checkpoint(path: Union[str, os.PathLike]) -> dict[str, torch.Tensor]:
    """Read a checkpoint file (weights-only ``torch.load``, memory-mapped, or safetensors); returns its bare state dict."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    return unwrap(read_weights(path, mmap=True), str(path))


def load_into(model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str = "<checkpoint>") -> None:
    """Strictly load ``state_dict`` into ``model``: shared-extractor copies verified and dropped; every
    missing key, unexpected key and shape mismatch listed in one error."""
    sd = dict(state_dict)
    for key in [k for k in sd if k.startswith(_SHARED_COPY)]:
        twin = _SHARED_WITH + key[len(_SHARED_COPY) :]
        if twin not in sd:
            raise CheckpointError(f"{source}: {key} has no twin {twin} in the box head")
        if sd[key].shape != sd[twin].shape or not torch.equal(sd[key], sd[twin]):
            raise CheckpointError(
                f"{source}: {key} differs from {twin}: the attribute head must share the box head's res5 weights"
            )
        del sd[key]
    for key in [k for k in sd if k.endswith("num_batches_tracked")]:
        del sd[key]
    expected = model.state_dict()
    attr_head = any(k.startswith("attribute.") and k not in expected for k in sd)
    hint = " (the checkpoint has an attribute head: enable attributes)" if attr_head else ""
    load_strict(model, sd, source, unexpected_hint=hint)
