"""An Oscar+ task model started from a plain BERT checkpoint, as the original's ``from_pretrained`` starts one.

The NoCaps captioning recipe and Oscar+ pretraining start from ``bert-base-uncased`` (``--model_name_or_path
bert-base-uncased``: NoCaps allows no image-caption data but COCO's). A BERT checkpoint is a folder in the Hugging
Face layout: ``config.json`` (a BertConfig: no Oscar+ field such as ``img_feature_dim``), ``pytorch_model.bin`` or
``model.safetensors``, ``vocab.txt``. What the original does with one (``run_*.py``, then pytorch-transformers 1.x
``PreTrainedModel.from_pretrained``), and so what :func:`start_from_bert` does:

1. the script sets its Oscar+ fields on the BERT config (``img_feature_dim``, ``hidden_dropout_prob``, the
   classifier, ``num_contrast_classes``; ``use_img_layernorm`` only ``run_retrieval.py`` and
   ``run_oscarplus_pretrain.py`` set: under the other scripts ``BertImgModel`` has no image LayerNorm); here the
   task gives them (:meth:`vinvl.oscar.tasks.base.Task.bert_overrides` and ``model_overrides``);
2. the model is built with every weight initialised as ``init_weights`` does (Linear and Embedding weights
   normal(0, ``initializer_range``), biases 0, LayerNorm 1 and 0), from the run's seeded generator;
3. old LayerNorm names (``gamma``/``beta``, which ``bert-base-uncased`` still uses) become ``weight``/``bias``;
   a file with no ``bert*`` key (a bare ``BertModel``) loads into the model's ``bert``;
4. every key whose name and shape fit is loaded; a model key the file lacks keeps its initialisation (the
   "newly initialised" keys: the image embedding and LayerNorm, the classifier, ...); a file key the model lacks
   is not used (BERT's ``cls.seq_relationship`` for every head but pretraining, ``cls.predictions`` for the
   classifiers). A shape mismatch is an error, except pretraining's contrastive head (BERT's 2-way
   next-sentence head against Oscar+'s 3-way), which keeps its initialisation;
5. the MLM decoder is tied to the word embeddings again (it holds the last of the two the file has).

One line names the newly initialised keys and the unused ones (:meth:`BertStart.line`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence, Union

from torch import nn

from ..errors import VinvlError
from ..state_dict import key_list, read_weights, unwrap
from ..textio import read_json
from .checkpoint import rename_legacy
from .configuration import OscarConfig

PathLike = Union[str, os.PathLike]

__all__ = ["BertStart", "bert_config", "group_keys", "is_bert_folder", "start_from_bert", "weights_file"]

OSCAR_MARK = "img_feature_dim"  # every Oscar+ config (the original's and vinvl's) has it; no BERT config does
HF_ONLY = ("architectures", "model_type", "transformers_version", "_name_or_path")  # not carried into OscarConfig
REQUIRED = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads")
# Pretraining's contrastive head: BERT's is 2-way next-sentence, Oscar+'s 3-way; the original's loader lets exactly
# these two mismatch (ImgPreTrainedModel.from_pretrained) and the head keeps its initialisation.
CONTRASTIVE = ("cls.seq_relationship.weight", "cls.seq_relationship.bias")


def is_bert_folder(path: PathLike) -> bool:
    """Whether ``path`` is a folder whose ``config.json`` has no Oscar+ field (a plain BERT checkpoint)."""
    cfg = Path(path) / "config.json"
    return Path(path).is_dir() and cfg.is_file() and OSCAR_MARK not in read_json(cfg, dict)


def bert_config(folder: PathLike) -> dict[str, Any]:
    """The BERT config of ``folder`` (its ``config.json``, checked to describe a BERT); one error naming it otherwise."""
    path = Path(folder) / "config.json"
    raw = read_json(path, dict)
    kind = raw.get("model_type")
    arch = raw.get("architectures") or []
    if kind not in (None, "bert") or any(not str(a).startswith("Bert") for a in arch):
        what = f"model_type {kind!r}" if kind not in (None, "bert") else f"architectures {arch}"
        raise VinvlError(f"{path}: neither an Oscar+ checkpoint (no {OSCAR_MARK}) nor a BERT one ({what})")
    absent = [k for k in REQUIRED if k not in raw]
    if absent:
        raise VinvlError(f"{path}: neither an Oscar+ checkpoint (no {OSCAR_MARK}) nor a BERT one (no {', '.join(absent)})")
    return {k: v for k, v in raw.items() if k not in HF_ONLY}


def weights_file(folder: PathLike) -> Path:
    """``pytorch_model.bin`` (the file the original reads), else ``model.safetensors``."""
    folder = Path(folder)
    for name in ("pytorch_model.bin", "model.safetensors"):
        if (folder / name).is_file():
            return folder / name
    raise VinvlError(f"{folder}: no pytorch_model.bin or model.safetensors")


def group_keys(keys: Sequence[str], limit: int = 12) -> str:
    """Keys grouped by their module: ``bert.img_embedding.{weight,bias}, classifier.weight`` (cut at ``limit`` groups)."""
    groups: dict[str, list[str]] = {}
    for k in keys:
        head, _, leaf = k.rpartition(".")
        groups.setdefault(head, []).append(leaf)
    parts = [(f"{h}." if h else "") + (leaves[0] if len(leaves) == 1 else "{" + ",".join(leaves) + "}")
             for h, leaves in groups.items()]
    return key_list(parts, limit) if parts else "none"


@dataclass
class BertStart:
    """A model started from a BERT checkpoint: the weights file, the keys left at their initialisation (the
    model's names) and the file's keys not used (its names, old LayerNorm names renamed)."""

    model: nn.Module
    source: Path
    new: list[str]
    unused: list[str]

    def line(self) -> str:
        """The one-line report."""
        return (f"{self.source}: a BERT checkpoint for {type(self.model).__name__}: newly initialised (BERT's "
                f"initialisation, normal(0, {self.model.config.initializer_range})): {group_keys(self.new)}; "
                f"not used: {group_keys(self.unused)}")


def _check_vocab(folder: Path, config: OscarConfig) -> None:
    vocab = folder / "vocab.txt"
    if not vocab.is_file():
        return  # the tokenizer comes from --vocab (checked where it is read)
    try:
        words = len(vocab.read_text(encoding="utf-8").splitlines())
    except (OSError, UnicodeDecodeError) as e:
        raise VinvlError(f"{vocab}: cannot read the vocabulary ({e})") from None
    if words > config.vocab_size:
        raise VinvlError(f"{vocab}: {words} words, more than the {config.vocab_size} word embeddings of "
                         f"{folder / 'config.json'} (vocab_size)")


def start_from_bert(cls: type, folder: PathLike, fields: Optional[dict[str, Any]] = None) -> Optional[BertStart]:
    """Build ``cls`` (an Oscar+ head) on the BERT checkpoint ``folder`` with ``fields`` set on its config, as the
    original's ``from_pretrained`` (see the module); None when the weights turn out to be an Oscar+ model's (a
    config without ``img_feature_dim``: the caller loads it as an Oscar+ checkpoint). Call it after seeding: the
    new weights draw from the global generator."""
    folder = Path(folder)
    raw = bert_config(folder)
    try:
        config = OscarConfig(**{**raw, **(fields or {})})
    except (TypeError, ValueError) as e:
        raise VinvlError(f"{folder / 'config.json'}: not a BERT config ({e})") from None
    _check_vocab(folder, config)
    path = weights_file(folder)
    sd = rename_legacy(unwrap(read_weights(path), str(path)))
    if any(k.endswith("img_embedding.weight") for k in sd):
        return None
    named = {k: k for k in sd}  # the model's name of each file key -> the file's name (after the renaming)
    if not any(k.startswith("bert") for k in sd):  # a bare BertModel: loaded into the model's bert
        named = {f"bert.{k}": k for k in sd}
        sd = {f"bert.{k}": v for k, v in sd.items()}
    model = cls(config)
    expected = model.state_dict()
    core = [k for k in expected if k.startswith(("bert.embeddings.", "bert.encoder.")) and k not in sd]
    if core:
        raise VinvlError(f"{path}: not the BERT encoder {folder / 'config.json'} describes: no {key_list(core, 6)}")
    misfit = [k for k in expected if k in sd and sd[k].shape != expected[k].shape]
    bad = [f"{k} (file {tuple(sd[k].shape)}, model {tuple(expected[k].shape)})" for k in misfit if k not in CONTRASTIVE]
    if bad:
        raise VinvlError(f"{path} does not fit {folder / 'config.json'} and the task's settings: shape mismatches: "
                         f"{key_list(bad, 6)}")
    fits = {k for k in expected if k in sd and k not in misfit}
    groups: dict[int, list[str]] = {}  # tied weights (decoder and word embeddings, the decoder's bias) share storage
    for k, v in expected.items():
        groups.setdefault(v.data_ptr(), []).append(k)
    take, new = {}, []
    for names in groups.values():
        present = [k for k in names if k in fits]
        if present:
            take.update({k: sd[present[-1]] for k in names})
        else:
            new.append(names[0])
    missing, unexpected = model.load_state_dict(take, strict=False)
    assert not unexpected, unexpected
    unused = [named[k] for k in sd if k not in expected or k in misfit]
    return BertStart(model, path, new, unused)
