"""State dicts shared by the detector and Oscar+: reading weight files safely (torch's weights-only reader,
safetensors), unwrapping what training scripts save around the weights, and one strict-load report that
lists every missing, unexpected and misshapen key.

:mod:`vinvl.detection.checkpoint` (maskrcnn-benchmark checkpoints) and :mod:`vinvl.oscar.checkpoint`
(Oscar checkpoints) build on this module; it knows neither model.
"""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path
from typing import Any, Mapping, Sequence, Union

import torch

from .errors import VinvlError, torch_load_problem

PathLike = Union[str, os.PathLike]


class CheckpointError(VinvlError):
    """A weight file that cannot be read safely, or a state dict that does not fit its model."""


def key_list(keys: Sequence[str], limit: int = 12) -> str:
    """The first ``limit`` of ``keys`` for an error message, with how many there are in all when cut."""
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


def read_torch(data: Union[PathLike, io.BytesIO], name: str, what: str = "PyTorch checkpoint",
               map_location: Any = "cpu", mmap: bool = False) -> Any:
    """``torch.load(weights_only=True)``: tensors and plain containers only (no code runs); ``mmap``: map a
    zip-format file instead of reading it. A missing, damaged or refused file is one error naming ``name``."""
    try:
        use_mmap = mmap and not isinstance(data, io.BytesIO) and zipfile.is_zipfile(data)
        return torch.load(data, map_location=map_location, weights_only=True, mmap=use_mmap)
    except FileNotFoundError:
        raise CheckpointError(f"{name}: no such file") from None
    except Exception as e:  # noqa: BLE001 - torch.load raises many types (UnpicklingError, struct.error, ...) on junk
        raise CheckpointError(f"{name}: {torch_load_problem(e, what)}") from None


def read_safetensors(path: PathLike) -> dict[str, torch.Tensor]:
    """A ``.safetensors`` file's tensors (no pickle involved); one clear error when it is not one."""
    # safetensors comes with transformers (the Oscar+ side); the detector's .pth reading does not need it
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from None


def read_weights(path: PathLike, mmap: bool = False) -> Any:
    """A weight file as stored: ``.safetensors`` by its reader, anything else by :func:`read_torch`."""
    path = Path(path)
    if path.suffix == ".safetensors":
        return read_safetensors(path)
    return read_torch(path, str(path), mmap=mmap)


def unwrap(obj: Any, source: str = "<checkpoint>") -> dict[str, torch.Tensor]:
    """The state dict inside ``{'model': sd, ...}`` (training state such as ``optimizer``, ``scheduler`` and
    ``iteration`` beside it ignored) or a bare one, a ``module.`` prefix (DataParallel) removed, 16-bit
    floats cast to fp32 (models compute in fp32; callers cast per their dtype)."""
    if isinstance(obj, Mapping) and "model" in obj and isinstance(obj["model"], Mapping):
        obj = obj["model"]
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError(f"{source}: expected a state dict or {{'model': state_dict}}")
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{source}: non-tensor entries in the state dict: {', '.join(map(str, bad[:5]))}")
    out = {k: v.float() if v.dtype in (torch.float16, torch.bfloat16) else v for k, v in obj.items()}
    if all(k.startswith("module.") for k in out):
        return {k[len("module.") :]: v for k, v in out.items()}
    return out


def fit_problems(expected: Mapping[str, torch.Tensor], given: Mapping[str, torch.Tensor], side: str = "checkpoint",
                 limit: int = 12, unexpected_hint: str = "") -> list[str]:
    """Why ``given`` does not load strictly where ``expected`` (a model's state dict) is: its missing keys,
    unexpected keys (followed by ``unexpected_hint``) and shape mismatches (``KEY (SIDE (shape), model
    (shape))``), each a list cut at ``limit``; empty when it fits."""
    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    shapes = [f"{k} ({side} {tuple(given[k].shape)}, model {tuple(expected[k].shape)})"
              for k in expected if k in given and given[k].shape != expected[k].shape]
    problems = []
    if missing:
        problems.append(f"missing keys: {key_list(missing, limit)}")
    if unexpected:
        problems.append(f"unexpected keys{unexpected_hint}: {key_list(unexpected, limit)}")
    if shapes:
        problems.append(f"shape mismatches: {key_list(shapes, limit)}")
    return problems


def load_strict(model: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], source: str, target: str = "the model",
                side: str = "checkpoint", limit: int = 12, unexpected_hint: str = "") -> None:
    """``model.load_state_dict(state_dict, strict=True)`` after :func:`fit_problems`: a state dict that does not
    fit is one :class:`CheckpointError` ``SOURCE does not fit TARGET: <every problem>``."""
    problems = fit_problems(model.state_dict(), state_dict, side, limit, unexpected_hint)
    if problems:
        raise CheckpointError(f"{source} does not fit {target}: " + "; ".join(problems))
    model.load_state_dict(state_dict, strict=True)
