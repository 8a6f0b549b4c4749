"""Original Oscar/Oscar+ checkpoints: ``pytorch_model.bin`` (pytorch-transformers 1.x names) + ``config.json``."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Optional, Union

import torch
from torch import nn

from ..errors import VinvlError

PathLike = Union[str, os.PathLike]


def _names(keys: list[str], limit: int = 10) -> str:
    return ", ".join(keys[:limit]) + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


def rename_legacy(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Old LayerNorm names (``gamma``/``beta``) -> ``weight``/``bias``, as the original loader renames them."""
    out = {}
    for k, v in sd.items():
        if k.endswith(".gamma"):
            k = k[: -len("gamma")] + "weight"
        elif k.endswith(".beta"):
            k = k[: -len("beta")] + "bias"
        out[k] = v
    return out


def read_config(folder: Path, config_cls: Any) -> Any:
    """The folder's ``config.json`` as ``config_cls`` (an OscarConfig)."""
    path = folder / "config.json"
    if not path.is_file():
        raise VinvlError(f"{folder}: no config.json; pass config=")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise VinvlError(f"{path}: invalid JSON ({e})") from None
    return config_cls(**data)


def load_original(cls: type, source: Union[PathLike, dict], config: Optional[Any] = None) -> nn.Module:
    """Build ``cls`` and load an original state dict strictly, reporting every missing, unexpected or misshapen key."""
    from .modeling import OscarConfig

    name = "<state dict>"
    if isinstance(source, dict):
        sd = source
    else:
        path = Path(source)
        name = str(path)
        if path.is_dir():
            if config is None:
                config = read_config(path, OscarConfig)
            path = path / "pytorch_model.bin"
        if not path.is_file():
            raise VinvlError(f"{path}: no such checkpoint")
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - any unreadable file is one clear error
            raise VinvlError(f"{path}: not a readable PyTorch checkpoint ({type(e).__name__}: {e})") from None
    if config is None:
        raise VinvlError(f"{name}: a state dict needs config=OscarConfig(...)")
    sd = rename_legacy(dict(sd))
    model = cls(config)
    expected = model.state_dict()
    # transformers' MLM decoder has its own bias; the original keeps it only as cls.predictions.bias.
    for prefix in ("cls.predictions.",):
        if prefix + "decoder.bias" in expected and prefix + "decoder.bias" not in sd and prefix + "bias" in sd:
            sd[prefix + "decoder.bias"] = sd[prefix + "bias"]
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    shapes = [f"{k} (file {tuple(sd[k].shape)}, model {tuple(expected[k].shape)})"
              for k in expected if k in sd and sd[k].shape != expected[k].shape]
    problems = []
    if missing:
        problems.append(f"missing keys: {_names(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_names(unexpected)}")
    if shapes:
        problems.append(f"shape mismatches: {_names(shapes)}")
    if problems:
        raise VinvlError(f"{name} does not fit {cls.__name__}: " + "; ".join(problems))
    model.load_state_dict(sd, strict=True)
    if hasattr(model, "cls") and hasattr(model.cls, "predictions"):
        # keep the decoder bias and the head bias one tensor, as in the original
        model.cls.predictions.decoder.bias = model.cls.predictions.bias
    return model.eval()
