"""Original Oscar/Oscar+ checkpoints: ``pytorch_model.bin`` (pytorch-transformers 1.x names) + ``config.json``,
their side files (``training_args``, ``training_state.pt``), and a task model built from any of them.

Takes model classes as arguments and never imports :mod:`vinvl.oscar.modeling` (which imports this module)."""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import sys
import zipfile
from pathlib import Path
from typing import Any, Callable, Optional, Union

import torch
from torch import nn

from ..atomic import atomic_write, atomic_write_text
from ..errors import VinvlError
from ..registry import checkpoint_path, is_checkpoint_name
from ..safe_pickle import load_training_args, safe_loads
from ..state_dict import key_list, load_strict, read_torch, read_weights
from ..textio import read_json
from ..training.checkpoints import natural_key
from .configuration import OscarConfig
from .options import TrainingSettings

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


def _config(path: str, data: dict, config_cls: Any) -> Any:
    try:
        return config_cls(**data)
    except (TypeError, ValueError) as e:
        raise VinvlError(f"{path}: not a model config ({e})") from None


# The original's discrete region codes (BertImgModel's code_embeddings): no released checkpoint uses them.
DISCRETE_CODES = ("dis_code", "dis_code_t", "dis_code_scale")


def _checkpoint_config(path: str, data: dict, config_cls: Any) -> Any:
    """A checkpoint's config. One without ``use_img_layernorm`` is one the original built no image LayerNorm for
    (``BertImgModel`` asks ``hasattr(config, 'use_img_layernorm')``): every Oscar (v1) checkpoint, whose code had no
    such field, and a model the captioning, VQA, GQA or NLVR2 script trained from plain BERT, such as the released
    NoCaps captioners; OscarConfig's default (1) is for new models. Other fields of old configs (``code_voc``,
    ``finetuning_task``, ...) are kept and unused; discrete region codes are refused by name."""
    if data.get("img_feature_type") in DISCRETE_CODES:
        raise VinvlError(f"{path}: img_feature_type {data['img_feature_type']!r} (the original's discrete region "
                         "codes) is not supported: vinvl's models take region feature vectors")
    return _config(path, data if "use_img_layernorm" in data else {**data, "use_img_layernorm": 0}, config_cls)


def read_config(folder: Path, config_cls: Any) -> Any:
    """The folder's ``config.json`` as ``config_cls`` (an OscarConfig)."""
    path = folder / "config.json"
    if not path.is_file():
        raise VinvlError(f"{folder}: no config.json; pass config=")
    return _checkpoint_config(str(path), read_json(path, dict), config_cls)


def _from_zip(path: Path, config: Optional[Any], config_cls: Any) -> tuple[dict, Any]:
    """A released ``.zip``: the folder inside holding ``pytorch_model.bin`` (the newest ``checkpoint-N`` if several)."""
    with zipfile.ZipFile(path) as z:
        bins = [n for n in z.namelist() if n.endswith("pytorch_model.bin")]
        if not bins:
            raise VinvlError(f"{path}: no pytorch_model.bin inside")
        bins.sort(key=natural_key)
        member = bins[-1]
        folder = member[: -len("pytorch_model.bin")]
        if config is None:
            if folder + "config.json" not in z.namelist():
                raise VinvlError(f"{path}: no config.json beside {member}")
            name = f"{path}:{folder}config.json"
            config = _checkpoint_config(name, read_json(name, dict, z.read(folder + "config.json")), config_cls)
        return read_torch(io.BytesIO(z.read(member)), f"{path}:{member}"), config


def resolve_checkpoint(source: PathLike) -> Path:
    """A checkpoint folder or zip as given; a run folder (no ``pytorch_model.bin`` of its own): its newest
    ``checkpoint-N/``; a registry name (``vinvl-base-image-captioning``, ``vqa_base``; ``NAME/FOLDER`` for one
    checkpoint folder of a zip holding several: ``oscar_base_vg_labels/ep_67_588997``) where no such path
    exists: its folder in ``VINVL_HOME``, fetched when missing (:func:`vinvl.registry.checkpoint_path`)."""
    path = Path(source)
    # NAME/FOLDER is a registry name only where no local NAME exists (a missing checkpoint-N of a local run folder
    # of that name is no reason to download anything).
    if not path.exists() and is_checkpoint_name(str(source)) and not Path(str(source).split("/", 1)[0]).exists():
        path = checkpoint_path(str(source))
    if path.is_dir() and not (path / "pytorch_model.bin").exists():
        ckpts = sorted(path.glob("checkpoint-*/pytorch_model.bin"), key=lambda p: int(re.sub(r"\D", "", p.parent.name) or 0))
        if ckpts:
            return ckpts[-1].parent
    return path


def require_checkpoint(source: PathLike, what: str = "checkpoint") -> Path:
    """:func:`resolve_checkpoint`, checked before any work: a folder with ``pytorch_model.bin`` (or a run folder
    with a ``checkpoint-N/`` holding one) or a ``.zip``; otherwise one error naming ``source``."""
    path = resolve_checkpoint(source)
    if path.suffix == ".zip" and path.is_file():
        return path
    if path.is_dir() and ((path / "pytorch_model.bin").is_file() or (path / "model.safetensors").is_file()):
        return path
    if path.is_file() and path.name == "pytorch_model.bin":
        return path.parent
    if not path.exists():
        raise VinvlError(f"{source}: no such {what}")
    raise VinvlError(f"{source}: not a {what} (a folder with pytorch_model.bin or model.safetensors, a run folder "
                     "with checkpoint-N/, or a .zip)")


def read_original(source: PathLike, config: Optional[Any] = None) -> tuple[dict, Any]:
    """``(state dict, config)`` of an original checkpoint: ``pytorch_model.bin``, its folder, a run folder or a released zip."""
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
    return read_weights(path), config


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
    _alias_decoder_bias(sd, model.state_dict())
    load_strict(model, sd, name, target=cls.__name__, side="file", limit=10)
    return model.eval()


def _alias_decoder_bias(sd: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    """transformers' MLM decoder has its own bias name; the original keeps it only as ``cls.predictions.bias``."""
    for prefix in ("cls.predictions.",):
        if prefix + "decoder.bias" in expected and prefix + "decoder.bias" not in sd and prefix + "bias" in sd:
            sd[prefix + "decoder.bias"] = sd[prefix + "bias"]


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def load_for_task(cls: type, init: Optional[PathLike] = None, config: Optional[OscarConfig] = None,
                  overrides: Optional[dict[str, Any]] = None, log: Callable[[str], None] = _log) -> nn.Module:
    """A task model, as the original's ``from_pretrained``: from ``init`` (any Oscar checkpoint: folder, run folder
    or zip) or fresh from ``config``; ``overrides`` (num_labels, dropout, classifier, ...) set config fields first.

    From a checkpoint, every encoder (``bert.*``) weight must be there with its shape; a head weight is taken
    when its name and shape fit, else it keeps the BERT initialisation every new model gets; the checkpoint's
    other heads (pretraining's ``cls.seq_relationship``) are dropped. Tied weights take the word embeddings.
    """
    sd: dict[str, torch.Tensor] = {}
    if init is not None:
        sd, config = read_original(init)
        sd = rename_legacy(dict(sd))
    elif config is None:
        raise VinvlError("give a checkpoint to start from (--init) or a model config (--config)")
    config = OscarConfig(**config.to_dict())  # a copy: the caller's config is left as given
    for k, v in (overrides or {}).items():
        setattr(config, k, v)
    model = cls(config)
    if init is None:
        return model
    expected = model.state_dict()
    _alias_decoder_bias(sd, expected)
    missing = [k for k in expected if k.startswith("bert.") and k not in sd]
    if missing:
        raise VinvlError(f"{init}: not an Oscar checkpoint for {cls.__name__}; missing keys: {key_list(missing, 10)}")
    misfit = [f"{k} (file {tuple(sd[k].shape)}, model {tuple(v.shape)})" for k, v in expected.items()
              if k.startswith("bert.") and sd[k].shape != v.shape]
    if misfit:
        raise VinvlError(f"{init} does not fit the model: shape mismatches: {key_list(misfit, 10)}")
    seen: set[int] = set()
    take, fresh = {}, []
    for k, v in expected.items():  # a tied weight is loaded once, under its first (the embeddings') name
        if v.data_ptr() in seen:
            continue
        seen.add(v.data_ptr())
        if k in sd and sd[k].shape == v.shape:
            take[k] = sd[k]
        else:
            fresh.append(k)
    model.load_state_dict(take, strict=False)
    if fresh:
        log(f"{init}: newly initialised: {key_list(fresh, 10)}")
    return model


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
    atomic_write_text(out / "config.json", model.config.to_json_string())
    if tokenizer is not None:
        vocab = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
        atomic_write_text(out / "vocab.txt", "".join(w + "\n" for w, _ in vocab))
    return out


def save_pretrained(model: nn.Module, folder: PathLike) -> Path:
    """The HF layout: ``model.safetensors`` (tied weights stored once) + ``config.json``."""
    from safetensors.torch import save_model

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "model.safetensors", lambda tmp: save_model(model, str(tmp)))
    atomic_write_text(out / "config.json", model.config.to_json_string())
    return out


def load_pretrained(cls: type, folder: PathLike) -> nn.Module:
    """Read back what :func:`save_pretrained` wrote."""
    from safetensors.torch import load_model

    folder = Path(folder)
    model = cls(read_config(folder, OscarConfig))
    load_model(model, str(folder / "model.safetensors"))
    return model.eval()


def read_training_args(folder: PathLike) -> Any:
    """A run folder's ``training_args.bin`` through the safe unpickler (no arbitrary code)."""
    path = Path(folder)
    return load_training_args(path / "training_args.bin" if path.is_dir() else path)


def training_settings(checkpoint: PathLike) -> TrainingSettings:
    """The options a checkpoint (folder, run folder or released zip) was trained with: vinvl's
    ``training_args.json``, else the original's ``training_args.bin`` (a pickled argparse Namespace, read
    through the safe unpickler; a zip's newest one); empty when it records none. A malformed file is one
    error naming it."""
    path = resolve_checkpoint(checkpoint)
    if path.suffix == ".zip" and path.is_file():
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
            for file in ("training_args.json", "training_args.bin"):
                members = sorted((n for n in names if n.endswith(file)), key=natural_key)
                if members:
                    name = f"{path}:{members[-1]}"
                    if file.endswith(".json"):
                        return TrainingSettings(read_json(name, dict, z.read(members[-1])), name)
                    return TrainingSettings(_namespace_dict(safe_loads(z.read(members[-1]), name), name), name)
        return TrainingSettings(source=str(path))
    folder = path if path.is_dir() else path.parent
    if (folder / "training_args.json").is_file():
        return TrainingSettings(read_json(folder / "training_args.json", dict), str(folder / "training_args.json"))
    if (folder / "training_args.bin").is_file():
        file = folder / "training_args.bin"
        return TrainingSettings(vars(load_training_args(file)), str(file))
    return TrainingSettings(source=str(folder))


def _namespace_dict(obj: Any, name: str) -> dict:
    if isinstance(obj, argparse.Namespace):
        return dict(vars(obj))
    if isinstance(obj, dict):
        return dict(obj)
    raise VinvlError(f"{name}: expected a saved argparse.Namespace, found {type(obj).__name__}")


def write_training_args(folder: PathLike, args: dict[str, Any]) -> None:
    """``training_args.json`` (vinvl reads it first) and ``training_args.bin``, the pickled ``argparse.Namespace``
    the original's scripts save and read back (its captioning evaluation needs it), of plain values only."""
    plain = json.loads(json.dumps(args, default=str))
    folder = Path(folder)
    atomic_write(folder / "training_args.bin", lambda tmp: torch.save(argparse.Namespace(**plain), tmp))
    atomic_write_text(folder / "training_args.json", json.dumps(plain, indent=1))


def config_file(path: Optional[PathLike]) -> Any:
    """An :class:`OscarConfig` from a ``config.json`` (``None`` for ``None``); one clear error if unreadable."""
    if path is None:
        return None
    return _config(str(path), read_json(path, dict), OscarConfig)
