"""Loading maskrcnn-benchmark checkpoints of the AttrRCNN detector, strictly and safely."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Any, Mapping, Union

import torch
from torch import nn

from ..errors import VinvlError, key_list, torch_load_problem

# The attribute head shares the box head's res5 extractor; checkpoints store a copy under this prefix.
_SHARED_COPY = "attribute.feature_extractor."
_SHARED_WITH = "roi_heads.box.feature_extractor."


class CheckpointError(VinvlError):
    """A checkpoint that does not fit the model (missing/unexpected keys, shapes) or cannot be read safely."""


def read_checkpoint(path: Union[str, os.PathLike]) -> dict[str, torch.Tensor]:
    """Read a checkpoint file with ``torch.load(weights_only=True)``; returns its (bare) state dict."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if path.suffix == ".safetensors":
        return extract_state_dict(read_safetensors(path), str(path))
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except Exception as e:  # torch.load raises many types (UnpicklingError, struct.error, RuntimeError, ...) on junk
        raise CheckpointError(f"{path}: {torch_load_problem(e)}") from None
    return extract_state_dict(obj, str(path))


def read_safetensors(path: Union[str, os.PathLike]) -> dict[str, torch.Tensor]:
    """A ``.safetensors`` file's tensors (no pickle involved); one clear error when it is not one."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from None


def extract_state_dict(obj: Any, source: str = "<checkpoint>") -> dict[str, torch.Tensor]:
    """The state dict inside ``{'model': sd, ...}`` (training state such as ``optimizer``, ``scheduler`` and
    ``iteration`` beside it ignored) or a bare one, a ``module.`` prefix removed, 16-bit floats cast to fp32."""
    if isinstance(obj, Mapping) and "model" in obj and isinstance(obj["model"], Mapping):
        obj = obj["model"]
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError(f"{source}: expected a state dict or {{'model': state_dict}}")
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{source}: non-tensor entries in the state dict: {', '.join(map(str, bad[:5]))}")
    # Mirrors may hold half-precision copies: the model computes in fp32 (extraction casts per --dtype).
    out = {k: v.float() if v.dtype in (torch.float16, torch.bfloat16) else v for k, v in obj.items()}
    if all(k.startswith("module.") for k in out):
        return {k[len("module.") :]: v for k, v in out.items()}
    return out


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
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    mismatched = [
        f"{k} (checkpoint {tuple(sd[k].shape)}, model {tuple(expected[k].shape)})"
        for k in expected
        if k in sd and sd[k].shape != expected[k].shape
    ]
    problems = []
    if missing:
        problems.append(f"missing keys: {key_list(missing)}")
    if unexpected:
        hint = ""
        if any(k.startswith("attribute.") for k in unexpected):
            hint = " (the checkpoint has an attribute head: enable attributes)"
        problems.append(f"unexpected keys{hint}: {key_list(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatches: {key_list(mismatched)}")
    if problems:
        raise CheckpointError(f"{source} does not fit the model: " + "; ".join(problems))
    model.load_state_dict(sd, strict=True)
