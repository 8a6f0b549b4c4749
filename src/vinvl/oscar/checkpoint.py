"""Original Oscar/Oscar+ checkpoints: ``pytorch_model.bin`` (pytorch-transformers 1.x names) + ``config.json``."""

from __future__ import annotations

import io
import json
import os
import re
import zipfile
from pathlib import Path
from typing import Any, Optional, Union

import torch
from torch import nn

from ..atomic import atomic_write
from ..detection.checkpoint import key_list
from ..errors import VinvlError

PathLike = Union[str, os.PathLike]


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


def _torch_load(data: Union[Path, io.BytesIO], name: str) -> dict:
    try:
        return torch.load(data, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is one clear error
        raise VinvlError(f"{name}: not a readable PyTorch checkpoint ({type(e).__name__}: {e})") from None


def _from_zip(path: Path, config: Optional[Any], config_cls: Any) -> tuple[dict, Any]:
    """A released ``.zip``: the folder inside holding ``pytorch_model.bin`` (the newest ``checkpoint-N`` if several)."""
    with zipfile.ZipFile(path) as z:
        bins = [n for n in z.namelist() if n.endswith("pytorch_model.bin")]
        if not bins:
            raise VinvlError(f"{path}: no pytorch_model.bin inside")
        bins.sort(key=lambda n: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", n)])
        member = bins[-1]
        folder = member[: -len("pytorch_model.bin")]
        if config is None:
            if folder + "config.json" not in z.namelist():
                raise VinvlError(f"{path}: no config.json beside {member}")
            config = config_cls(**json.loads(z.read(folder + "config.json")))
        return _torch_load(io.BytesIO(z.read(member)), f"{path}:{member}"), config


def resolve_checkpoint(source: PathLike) -> Path:
    """A checkpoint folder or zip as given; a run folder (no ``pytorch_model.bin`` of its own): its newest
    ``checkpoint-N/``; a registry name (``vinvl-base-image-captioning``, ``vqa_base``) where no such path
    exists: its folder in ``VINVL_HOME``, fetched when missing (:func:`vinvl.registry.checkpoint_path`)."""
    path = Path(source)
    if not path.exists():
        from ..registry import checkpoint_path, is_checkpoint_name

        if is_checkpoint_name(str(source)):
            path = checkpoint_path(str(source))
    if path.is_dir() and not (path / "pytorch_model.bin").exists():
        ckpts = sorted(path.glob("checkpoint-*/pytorch_model.bin"), key=lambda p: int(re.sub(r"\D", "", p.parent.name) or 0))
        if ckpts:
            return ckpts[-1].parent
    return path


def read_original(source: PathLike, config: Optional[Any] = None) -> tuple[dict, Any]:
    """``(state dict, config)`` of an original checkpoint: ``pytorch_model.bin``, its folder, a run folder or a released zip."""
    from .modeling import OscarConfig

    path = resolve_checkpoint(source)
    if path.suffix == ".zip" and path.is_file():
        return _from_zip(path, config, OscarConfig)
    if path.is_dir():
        if config is None:
            config = read_config(path, OscarConfig)
        bin_, st = path / "pytorch_model.bin", path / "model.safetensors"
        path = st if st.is_file() and not bin_.is_file() else bin_
    if not path.is_file():
        raise VinvlError(f"{path}: no such checkpoint (a pytorch_model.bin, its folder, a run folder or a .zip)")
    if path.suffix == ".safetensors":
        from ..detection.checkpoint import read_safetensors

        return read_safetensors(path), config
    return _torch_load(path, str(path)), config


def load_original(cls: type, source: Union[PathLike, dict], config: Optional[Any] = None) -> nn.Module:
    """Build ``cls`` and load an original checkpoint strictly, reporting every missing, unexpected or misshapen key.

    ``source``: a state dict, a ``pytorch_model.bin``, a folder holding one with ``config.json``
    (a run folder's newest ``checkpoint-N/`` is taken when the folder itself has none), or a
    released ``.zip`` of such a folder.
    """
    name = "<state dict>"
    if isinstance(source, dict):
        sd = source
    else:
        name = str(source)
        sd, config = read_original(source, config)
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
        problems.append(f"missing keys: {key_list(missing, 10)}")
    if unexpected:
        problems.append(f"unexpected keys: {key_list(unexpected, 10)}")
    if shapes:
        problems.append(f"shape mismatches: {key_list(shapes, 10)}")
    if problems:
        raise VinvlError(f"{name} does not fit {cls.__name__}: " + "; ".join(problems))
    model.load_state_dict(sd, strict=True)
    return model.eval()


def original_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's weights under the original's names (without transformers' decoder-bias alias)."""
    sd = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    if "cls.predictions.bias" in sd:
        sd.pop("cls.predictions.decoder.bias", None)
    return sd


def save_original(model: nn.Module, folder: PathLike, tokenizer: Any = None) -> Path:
    """Write the original layout: ``pytorch_model.bin``, ``config.json`` (+ ``vocab.txt``)."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    sd = original_state_dict(model)
    atomic_write(out / "pytorch_model.bin", lambda tmp: torch.save(sd, tmp))
    (out / "config.json").write_text(model.config.to_json_string())
    if tokenizer is not None:
        vocab = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
        (out / "vocab.txt").write_text("".join(w + "\n" for w, _ in vocab), encoding="utf-8")
    return out


def save_pretrained(model: nn.Module, folder: PathLike) -> Path:
    """The HF layout: ``model.safetensors`` (tied weights stored once) + ``config.json``."""
    from safetensors.torch import save_model

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    save_model(model, str(out / "model.safetensors"))
    (out / "config.json").write_text(model.config.to_json_string())
    return out


def load_pretrained(cls: type, folder: PathLike) -> nn.Module:
    """Read back what :func:`save_pretrained` wrote."""
    from safetensors.torch import load_model

    from .modeling import OscarConfig

    folder = Path(folder)
    model = cls(read_config(folder, OscarConfig))
    load_model(model, str(folder / "model.safetensors"))
    return model.eval()


def read_training_args(folder: PathLike) -> Any:
    """A run folder's ``training_args.bin`` through the safe unpickler (no arbitrary code)."""
    from ..safe_pickle import load_training_args

    path = Path(folder)
    return load_training_args(path / "training_args.bin" if path.is_dir() else path)


def config_file(path: Optional[PathLike]) -> Any:
    """An :class:`OscarConfig` from a ``config.json`` (``None`` for ``None``); one clear error if unreadable."""
    if path is None:
        return None
    from .modeling import OscarConfig

    try:
        return OscarConfig(**json.loads(Path(path).read_text()))
    except (OSError, json.JSONDecodeError, TypeError) as e:
        raise VinvlError(f"{path}: cannot read the model config ({e})") from None
