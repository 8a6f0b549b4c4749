"""Oscar+ image captioning (the original's ``oscar/run_captioning.py``): data, cross-entropy and
self-critical (SCST) training, beam-search evaluation with the COCO metrics, and captions for images.

Data is a split yaml in the original layout (``feature``: the feature TSV, captioning's
``key \\t {"num_boxes", "features"}`` rows or the standard three columns; ``label``: the label TSV
whose classes are the tags; ``caption``: a json list of ``{image_id, caption, id}``), or a feature
folder (``features.tsv`` + ``label.tsv``, e.g. ``vinvl extract`` output) with a caption json.

Cross-entropy training masks caption tokens as :class:`~vinvl.oscar.inputs.CaptionTensorizer` does
and scores them with the original's ``BertCaptioningLoss``: targets smoothed to ``1 - eps`` on the
word and ``eps / (V - 1)`` elsewhere, per-token KL divergence, and after ``drop_worst_after`` loss
calls the ``drop_worst_ratio`` largest token losses of each batch dropped. SCST samples
``sc_train_sample_n`` captions per image (:func:`~vinvl.oscar.generate.sample`), rewards them with
CIDEr-D against the image's captions and takes ``-(reward - baseline) * mean log p``, the baseline
being the greedy (or ``sc_beam_size``-beam) caption's reward or the mean of the other samples'.
Both run through :func:`vinvl.oscar.finetune.train_loop`.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from ..atomic import atomic_write_json
from ..errors import VinvlError
from ..yamlio import read_yaml
from .inputs import CaptionTensorizer, RegionStore, load_tokenizer
from .modeling import OscarConfig, OscarForCaptioning

PathLike = Union[str, os.PathLike]


@dataclass
class CaptionConfig:
    """The original's ``run_captioning.py`` options (same names and defaults unless noted)."""

    max_seq_length: int = 70
    max_seq_a_length: int = 40
    max_img_seq_length: int = 50
    mask_prob: float = 0.15
    max_masked_tokens: int = 3
    add_od_labels: bool = True  # the original's default is off; every released recipe turns it on
    do_lower_case: bool = True
    drop_out: float = 0.1
    tie_weights: bool = False
    freeze_embedding: bool = False
    label_smoothing: float = 0.0
    drop_worst_ratio: float = 0.0
    drop_worst_after: int = 0
    batch_size: int = 64
    learning_rate: float = 3e-5
    weight_decay: float = 0.05
    adam_epsilon: float = 1e-8
    warmup_steps: int = 0
    scheduler: str = "linear"
    num_train_epochs: int = 40
    max_steps: int = -1  # > 0 overrides num_train_epochs
    gradient_accumulation_steps: int = 1
    max_grad_norm: float = 1.0
    seed: int = 88
    save_steps: int = -1  # <= 0: only the last step
    log_steps: int = 20
    scst: bool = False
    sc_train_sample_n: int = 5
    sc_baseline_type: str = "greedy"
    sc_beam_size: int = 1
    cider_cached_tokens: Optional[str] = None  # None: document frequencies of each batch ("corpus")
    max_gen_length: int = 20
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0


@dataclass
class DecodeConfig:
    """Decoding options of evaluation and prediction (``--num_beams --max_gen_length ...``)."""

    num_beams: int = 5
    max_gen_length: int = 20
    length_penalty: float = 1.0
    repetition_penalty: float = 1.0
    batch_size: int = 16
    use_cache: bool = True


# -- data ------------------------------------------------------------------------------------
def read_captions(path: PathLike) -> list[dict[str, Any]]:
    """A caption json: a list of ``{image_id, caption}`` or COCO's ``{"annotations": [...]}``."""
    from .checkpoint import read_json

    path = Path(path)
    data = read_json(path)
    if isinstance(data, dict):
        data = data.get("annotations")
    if not isinstance(data, list):
        raise VinvlError(f"{path}: expected a list of {{image_id, caption}} (or a COCO dict with 'annotations')")
    for i, c in enumerate(data):
        if not isinstance(c, dict) or "image_id" not in c or not isinstance(c.get("caption"), str):
            raise VinvlError(f"{path}: entry {i} is not {{image_id, caption}}: {str(c)[:80]}")
    return data


class CaptionData:
    """A captioning split: image keys, their regions and tags, and their captions."""

    def __init__(self, source: PathLike, captions: Optional[PathLike] = None) -> None:
        """``source``: a split yaml (``feature``, ``label``, ``caption``) or a feature folder;
        ``captions`` (a caption json) overrides the yaml's or goes with a folder."""
        from ..features import FeatureTSV
        from ..tsv import TSVFile
        from .data.regions import row_dim as _row_dim

        src = Path(source)
        self.name = str(src)
        caption_file: Optional[Path] = Path(captions) if captions else None
        self._store: Optional[RegionStore] = None
        self._feats: Optional[FeatureTSV] = None
        self._labels: Optional[TSVFile] = None
        if src.is_dir():
            self._store = RegionStore(src)
            self.dim = self._store.dim
            self.keys = self._store.features.tsv.keys()
        elif src.is_file():
            spec = read_yaml(src, "captioning yaml")
            if not isinstance(spec, dict) or "feature" not in spec:
                raise VinvlError(f"{src}: a captioning yaml needs 'feature' (and 'label', 'caption')")
            res = lambda p: Path(p) if Path(p).is_absolute() else src.parent / p  # noqa: E731
            feat = res(spec["feature"])
            if not feat.is_file():
                raise VinvlError(f"{src}: feature file {feat} does not exist")
            self.dim = _row_dim(feat)
            self._feats = FeatureTSV(feat, dim=self.dim)
            if spec.get("label"):
                label = res(spec["label"])
                if not label.is_file():
                    raise VinvlError(f"{src}: label file {label} does not exist")
                self._labels = TSVFile(label, build_index=True)
            if caption_file is None and spec.get("caption"):
                caption_file = res(spec["caption"])
                if not caption_file.is_file():  # the eval references may only exist in COCO format
                    coco = caption_file.with_name(caption_file.stem + "_coco_format.json")
                    caption_file = coco if coco.is_file() else None
            # the original numbers images by the label TSV's rows when there is one
            self.keys = (self._labels or self._feats.tsv).keys()
        else:
            raise VinvlError(f"{src}: no such split yaml or feature folder")
        self.captions: list[tuple[str, str]] = []
        self.image_ids: dict[str, Any] = {}
        if caption_file is not None:
            known = set(self.keys)
            for c in read_captions(caption_file):
                key = str(c["image_id"])
                if key not in known:
                    raise VinvlError(f"{caption_file}: image {key!r} has no row in {self.name}")
                self.captions.append((key, c["caption"]))
                self.image_ids.setdefault(key, c["image_id"])
        self.refs: dict[str, list[str]] = {}
        for key, cap in self.captions:
            self.refs.setdefault(key, []).append(cap)
        self.caption_file = caption_file

    def regions(self, key: str) -> np.ndarray:
        """The image's ``[num_boxes, dim]`` region features."""
        if self._store is not None:
            return self._store.regions(key)
        return self._feats.get(key)  # type: ignore[union-attr]

    def _label_tsv(self) -> Any:
        return self._store.labels if self._store is not None else self._labels

    def objects(self, key: str) -> list[dict[str, Any]]:
        """The image's label objects (``{"class", "conf", "rect", ...}``), [] without labels."""
        from ..features import parse_label_row

        labels = self._label_tsv()
        return [] if labels is None else parse_label_row(labels.get(key), path=labels.path)[1]

    def tags(self, key: str) -> str:
        """The image's tags (label classes joined by spaces), '' without labels."""
        from ..features import tags_text

        return tags_text(self.objects(key))

    def captioned_keys(self) -> list[str]:
        """Keys of the images with captions, in the split's order."""
        return [k for k in self.keys if k in self.refs]


def write_caption_split(data: CaptionData, out_dir: PathLike, name: str) -> Path:
    """Write ``data`` as the original's captioning split (``run_captioning.py``'s ``CaptionTSVDataset``):
    ``{name}.yaml`` naming ``{name}.feature.tsv`` (``key \\t {"num_boxes", "features"}``), ``{name}.label.tsv``
    (``key \\t [{"class", ...}]``, rows aligned with the features: the original pairs them by row), and, with
    captions, ``{name}_caption.json`` (``[{image_id: key, caption, id}]``) + ``{name}_caption_coco_format.json``
    (its evaluation references); only captioned images when there are captions. Returns the yaml."""
    from ..atomic import atomic_write_text
    from ..features import format_caption_features_row
    from ..tsv import TSVWriter

    if not name or any(c in name for c in "/\\\t\n"):
        raise VinvlError(f"split name {name!r}: give a plain file name stem")
    out = Path(out_dir)
    keys = data.captioned_keys() if data.captions else list(data.keys)
    if not keys:
        raise VinvlError(f"{data.name}: no images to write")
    labelled = data._label_tsv() is not None
    with TSVWriter(out / f"{name}.feature.tsv", columns=2) as fw:
        for k in keys:
            fw.write(format_caption_features_row(k, data.regions(k), dim=data.dim))
    spec: dict[str, Any] = {"feature": f"{name}.feature.tsv", "label": None}
    if labelled:
        with TSVWriter(out / f"{name}.label.tsv", columns=2) as lw:
            for k in keys:
                lw.write([k, json.dumps(data.objects(k))])
        spec["label"] = f"{name}.label.tsv"
    if data.captions:
        # image_id is the TSV key (a string): the original maps captions to rows and results to references by it
        caps = [{"image_id": k, "caption": c, "id": i} for i, (k, c) in enumerate(data.captions)]
        atomic_write_json(out / f"{name}_caption.json", caps)
        coco = {"info": {}, "licenses": [], "type": "captions", "images": [{"id": k, "file_name": k} for k in keys],
                "annotations": caps}
        atomic_write_json(out / f"{name}_caption_coco_format.json", coco)
        spec["caption"] = f"{name}_caption.json"
    return atomic_write_text(out / f"{name}.yaml", yaml.safe_dump(spec, sort_keys=False))


def _stack(examples: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {k: torch.stack([e[k] for e in examples]) for k in examples[0]}


class _XEExamples:
    """Caption rows as masked training examples, random choices seeded by (seed, epoch, row)."""

    def __init__(self, data: CaptionData, tensorizer: CaptionTensorizer, cfg: CaptionConfig) -> None:
        self.data, self.t, self.cfg = data, tensorizer, cfg

    def __len__(self) -> int:
        return len(self.data.captions)

    def example(self, i: int, epoch: int) -> dict[str, torch.Tensor]:
        key, caption = self.data.captions[i]
        rng = random.Random(f"{self.cfg.seed}/{epoch}/{i}")
        tags = self.data.tags(key) if self.cfg.add_od_labels else None
        return self.t(caption, tags, self.data.regions(key), rng=rng)


class _ImageExamples:
    """Captioned images as decoding inputs (SCST), with their row index."""

    def __init__(self, data: CaptionData, tensorizer: CaptionTensorizer, add_od_labels: bool) -> None:
        self.data, self.t, self.add_od_labels = data, tensorizer, add_od_labels
        self.keys = data.captioned_keys()

    def __len__(self) -> int:
        return len(self.keys)

    def example(self, i: int, epoch: int) -> dict[str, torch.Tensor]:
        key = self.keys[i]
        x = self.t.decode_inputs(self.data.tags(key) if self.add_od_labels else None, self.data.regions(key))
        return {**x, "index": torch.tensor(i)}


def _batches(ds: Any, cfg: CaptionConfig, start: int, rank: int, world: int) -> Iterator[dict[str, torch.Tensor]]:
    from .finetune import stacked_batches

    return stacked_batches(ds, cfg.batch_size, cfg.seed, start, rank, world)


# -- loss ------------------------------------------------------------------------------------
def caption_loss(logits: torch.Tensor, target: torch.Tensor, label_smoothing: float = 0.0, drop_worst_ratio: float = 0.0) -> torch.Tensor:
    """The original's ``BertCaptioningLoss`` on ``[M, V]`` logits of the masked tokens: smoothed targets,
    per-token KL, the ``drop_worst_ratio`` largest dropped, mean."""
    eps, V = label_smoothing, logits.shape[1]
    one_hot = torch.zeros_like(logits).scatter(1, target.view(-1, 1), 1.0)
    soft = one_hot * (1 - eps) + (1 - one_hot) * eps / (V - 1)
    loss = F.kl_div(F.log_softmax(logits, dim=1), soft, reduction="none").sum(1)
    if drop_worst_ratio > 0:
        loss = loss.topk(int(loss.shape[0] * (1 - drop_worst_ratio)), largest=False).values
    return loss.mean()


# -- settings a checkpoint was trained with --------------------------------------------------
def checkpoint_folder(checkpoint: PathLike) -> Path:
    """A checkpoint folder, or a run folder's newest ``checkpoint-N/`` (as the model loader picks it)."""
    from .checkpoint import resolve_checkpoint

    return resolve_checkpoint(checkpoint)


def trained_settings(checkpoint: PathLike) -> dict[str, Any]:
    """The training options a checkpoint records (:func:`vinvl.oscar.checkpoint.training_settings`)."""
    from .checkpoint import training_settings

    return training_settings(checkpoint)


@dataclass
class _Layout:
    """Decoding layout: caption slots, tag slots, regions, where tag positions start, tags on or off."""

    max_gen_length: int
    od_len: int
    max_img: int
    od_start: int
    add_od_labels: bool
    do_lower_case: bool


def _layout(settings: dict[str, Any], max_gen_length: int, fallback: CaptionConfig) -> _Layout:
    """As the original's ``restore_training_settings``: the tag room the model was trained with after
    ``max_gen_length`` caption slots; tag position ids from ``max(max_seq_a_length, max_gen_length)``."""
    from .checkpoint import TrainingSettings

    s = settings if isinstance(settings, TrainingSettings) else TrainingSettings(settings)
    get = lambda k: s.typed(k, getattr(fallback, k))  # noqa: E731
    a_len = get("max_gen_length") if s.typed("scst", False) else get("max_seq_a_length")
    lay = _Layout(
        max_gen_length=max_gen_length,
        od_len=get("max_seq_length") - a_len,
        max_img=get("max_img_seq_length"),
        od_start=max(get("max_seq_a_length"), max_gen_length),
        add_od_labels=get("add_od_labels"),
        do_lower_case=get("do_lower_case"),
    )
    if lay.od_len < 0:
        raise VinvlError(f"{s.source}: max_seq_length {get('max_seq_length')} is shorter than the caption room {a_len}")
    return lay


def _decode_tensorizer(tok: Any, lay: _Layout) -> CaptionTensorizer:
    od = lay.od_len if lay.add_od_labels else 0
    return CaptionTensorizer(tok, lay.max_img, lay.max_gen_length + od, lay.max_gen_length)


def _special(tok: Any) -> dict[str, int]:
    return {"bos_token_id": tok.cls_token_id, "eos_token_id": tok.sep_token_id, "mask_token_id": tok.mask_token_id,
            "pad_token_id": tok.pad_token_id}


def _texts(tok: Any, ids: torch.Tensor) -> list[str]:
    return [tok.decode(row.tolist(), skip_special_tokens=True, clean_up_tokenization_spaces=True).strip() for row in ids]


def _decode_kwargs(batch: dict[str, torch.Tensor], lay: _Layout, device: torch.device) -> dict[str, Any]:
    kw: dict[str, Any] = {"img_feats": batch["img_feats"].to(device), "attention_mask": batch["attention_mask"].to(device),
                          "max_length": lay.max_gen_length}
    if lay.add_od_labels:
        kw["od_label_ids"] = batch["input_ids"][:, lay.max_gen_length :].to(device)
        kw["od_position_start"] = lay.od_start
    return kw


# -- training --------------------------------------------------------------------------------
def _initial_model(init: Optional[PathLike], model_config: Optional[OscarConfig], cfg: CaptionConfig, vocab_size: int) -> OscarForCaptioning:
    if init is None:
        mc = model_config or OscarConfig()
        mc.vocab_size = vocab_size
        mc.tie_weights = cfg.tie_weights
        model = OscarForCaptioning(mc)
    else:
        try:
            model = OscarForCaptioning.from_original(init)
        except VinvlError as first:  # a pretraining checkpoint: its BERT and MLM head, not its contrastive head
            from .modeling import OscarForPretraining

            try:
                pre = OscarForPretraining.from_original(init)
            except VinvlError:
                raise first from None
            model = OscarForCaptioning(pre.config)
            missing, _ = model.load_state_dict(pre.state_dict(), strict=False)
            if missing:
                raise first from None
        if cfg.tie_weights:  # the original's _tie_or_clone_weights: the word embeddings win
            model.cls.predictions.decoder.weight = model.bert.embeddings.word_embeddings.weight
            model.config.tie_weights = True
    model.config.hidden_dropout_prob = cfg.drop_out
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Dropout) and not name.endswith("attention.self.dropout"):
            mod.p = cfg.drop_out  # --drop_out sets hidden_dropout_prob, not the attention dropout
    if cfg.freeze_embedding:
        model.bert.embeddings.word_embeddings.weight.requires_grad = False
    return model


def train(
    data: CaptionData,
    out_dir: PathLike,
    cfg: CaptionConfig = CaptionConfig(),
    init: Optional[PathLike] = None,
    vocab: Optional[PathLike] = None,
    model_config: Optional[OscarConfig] = None,
    resume: bool = False,
    log: Optional[Callable[[str], None]] = None,
    device: Optional[str] = None,
) -> Path:
    """Cross-entropy (or, with ``cfg.scst``, self-critical) training; returns the last ``checkpoint-N/``.

    The model starts from ``init`` (a captioning or pretraining checkpoint) or fresh from
    ``model_config`` with ``vocab``'s tokenizer; ``resume`` continues ``out_dir``'s newest checkpoint.
    """
    from .finetune import dist_info, latest_checkpoint, loop_config, total_steps, train_loop
    from .generate import generate, sample
    from .caption_metrics import CiderD, wrap_for_reward

    if cfg.sc_baseline_type not in ("greedy", "sample"):
        raise VinvlError(f"sc_baseline_type must be greedy or sample, got {cfg.sc_baseline_type!r}")
    if cfg.scst and cfg.sc_baseline_type == "sample" and cfg.sc_train_sample_n < 2:
        raise VinvlError("the sample baseline needs sc_train_sample_n >= 2")
    if not data.captions:
        raise VinvlError(f"{data.name}: no captions to train on")
    rank, world = dist_info()
    if cfg.scst and world > 1:
        raise VinvlError("SCST runs in one process here (its sampling bypasses the data-parallel wrapper)")
    if vocab is None and init is None:
        raise VinvlError("give a vocabulary (vocab.txt) or an initial checkpoint holding one")
    if init is not None:
        from .checkpoint import require_checkpoint

        require_checkpoint(init, "initial checkpoint (--init)")
    tok = load_tokenizer(vocab or checkpoint_folder(init), do_lower_case=cfg.do_lower_case)  # type: ignore[arg-type]
    torch.manual_seed(cfg.seed)
    last = latest_checkpoint(out_dir) if resume else None
    model = _initial_model(last or init, model_config, cfg, len(tok))
    if model.config.img_feature_dim != data.dim:
        raise VinvlError(f"{data.name}: regions are {data.dim}-d but the model takes {model.config.img_feature_dim}-d")
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model.to(dev)
    model.config._attn_implementation = "sdpa"  # SCST decodes before any forward has set it
    settings = {**asdict(cfg), "img_feature_dim": data.dim}
    if cfg.scst:
        # decoding inputs keep the tag room the initial model was trained with (restore_training_settings)
        before = trained_settings(last or init) if (last or init) else {}
        lay = _layout(before, cfg.max_gen_length, cfg)
        settings.update(max_seq_length=cfg.max_gen_length + lay.od_len, add_od_labels=lay.add_od_labels,
                        max_img_seq_length=lay.max_img, max_seq_a_length=before.get("max_seq_a_length", cfg.max_seq_a_length))
        ds: Any = _ImageExamples(data, _decode_tensorizer(tok, lay), lay.add_od_labels)
    else:
        ds = _XEExamples(data, CaptionTensorizer(tok, cfg.max_img_seq_length, cfg.max_seq_length, cfg.max_seq_a_length,
                                                 cfg.mask_prob, cfg.max_masked_tokens), cfg)
    steps, _ = total_steps(len(ds), cfg, world)
    loop = loop_config(cfg, max_steps=steps, save_steps=cfg.save_steps if cfg.save_steps > 0 else steps)
    to_dev = lambda b: {k: v.to(dev) for k, v in b.items()}  # noqa: E731
    state = {"calls": 0}
    if last is not None:
        from .checkpoint import load_training_state

        state["calls"] = int(load_training_state(last)["step"]) * cfg.gradient_accumulation_steps

    def xe_step(module: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        b = to_dev(batch)
        out = module(b["input_ids"], b["token_type_ids"], b["attention_mask"], b["img_feats"], masked_pos=b["masked_pos"])
        target = b["masked_ids"][b["masked_ids"] != 0]
        state["calls"] += 1  # the original counts loss calls, not optimiser steps
        drop = cfg.drop_worst_ratio if state["calls"] > cfg.drop_worst_after else 0.0
        logits = out.logits.float()
        loss = caption_loss(logits, target, cfg.label_smoothing, drop)
        acc = (logits.argmax(-1) == target).float().sum() / b["masked_pos"].sum()
        return loss, {"acc": acc.item()}

    cider = CiderD(cfg.cider_cached_tokens or "corpus")
    special = _special(tok)

    def scst_step(module: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        keys = [ds.keys[i] for i in batch["index"].tolist()]
        refs = [[wrap_for_reward(c) for c in data.refs[k]] for k in keys]
        kw = _decode_kwargs(batch, lay, dev)
        n, B = cfg.sc_train_sample_n, len(keys)
        greedy: list[str] = []
        if cfg.sc_baseline_type == "greedy":
            g = generate(model, **kw, num_beams=cfg.sc_beam_size, use_cache=True, **special)
            greedy = [wrap_for_reward(c) for c in _texts(tok, g.token_ids[:, 0])]
        model.train()
        s = sample(model, **kw, num_samples=n, temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p, **special)
        sampled = [wrap_for_reward(c) for c in _texts(tok, s.token_ids.reshape(B * n, -1))]
        # the original scores samples and greedy captions in one call (document frequencies of all of them)
        scores = cider.scores(sampled + greedy, [refs[i // n] for i in range(B * n)] + refs[: len(greedy)])
        reward = scores[: B * n].reshape(B, n)
        if greedy:
            baseline = scores[B * n :][:, None]
        else:
            baseline = (reward.sum(1, keepdims=True) - reward) / (n - 1)
        adv = torch.as_tensor(reward - baseline, dtype=torch.float32, device=dev)
        loss = -(s.logprobs * adv).mean()
        figures = {"reward": float(reward.mean())}
        if greedy:
            figures["greedy_reward"] = float(scores[B * n :].mean())
        return loss, figures

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "caption_config.json").write_text(json.dumps(settings, indent=1))
    return train_loop(
        model, lambda start: _batches(ds, cfg, start, rank, world), scst_step if cfg.scst else xe_step, loop, out,
        tokenizer=tok, resume_from=last, log=log, training_args=settings,
    )


# -- decoding, evaluation, prediction ----------------------------------------------------------
def _load(checkpoint: PathLike, device: Optional[str]) -> tuple[OscarForCaptioning, Any, dict[str, Any], torch.device]:
    from .checkpoint import require_checkpoint

    checkpoint = require_checkpoint(checkpoint)
    settings = trained_settings(checkpoint)
    _layout(settings, CaptionConfig.max_gen_length, CaptionConfig())  # a malformed record stops before the weights load
    model = OscarForCaptioning.from_original(checkpoint)
    tok = load_tokenizer(checkpoint, do_lower_case=bool(settings.get("do_lower_case", True)))
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    return model.to(dev).eval(), tok, settings, dev


def caption_images(
    model: OscarForCaptioning,
    tok: Any,
    keys: Sequence[str],
    regions: Callable[[str], Any],
    tags: Callable[[str], str],
    settings: dict[str, Any],
    dcfg: DecodeConfig = DecodeConfig(),
    device: Optional[torch.device] = None,
) -> list[str]:
    """Beam-search captions of images ``keys`` (regions and tags given by the two callables), decoded
    in the layout the model was trained with (``settings``, see :func:`trained_settings`)."""
    from .generate import generate

    lay = _layout(settings, dcfg.max_gen_length, CaptionConfig())
    t = _decode_tensorizer(tok, lay)
    model.config._attn_implementation = "sdpa"  # the decoding cache asks before any forward has set it
    dev = device or next(model.parameters()).device
    out: list[str] = []
    for s in range(0, len(keys), dcfg.batch_size):
        chunk = keys[s : s + dcfg.batch_size]
        batch = _stack([t.decode_inputs(tags(k) if lay.add_od_labels else None, regions(k)) for k in chunk])
        res = generate(model, **_decode_kwargs(batch, lay, dev), num_beams=dcfg.num_beams, length_penalty=dcfg.length_penalty,
                       repetition_penalty=dcfg.repetition_penalty, use_cache=dcfg.use_cache, **_special(tok))
        out += _texts(tok, res.token_ids[:, 0])
    return out


def evaluate(
    checkpoint: PathLike,
    data: CaptionData,
    out_dir: PathLike,
    dcfg: DecodeConfig = DecodeConfig(),
    device: Optional[str] = None,
    spice: Optional[bool] = None,
    metrics: bool = True,
) -> dict[str, Any]:
    """Caption the split's images (those with captions, else all) and score them: writes
    ``out_dir/results.json`` ([{image_id, caption}]) and, with references, ``out_dir/metrics.json``."""
    from .caption_metrics import coco_caption_metrics

    keys = data.captioned_keys() or list(data.keys)
    if not keys:
        raise VinvlError(f"{data.name}: no images to caption")
    model, tok, settings, dev = _load(checkpoint, device)
    if model.config.img_feature_dim != data.dim:
        raise VinvlError(f"{data.name}: regions are {data.dim}-d but {checkpoint} takes {model.config.img_feature_dim}-d")
    caps = caption_images(model, tok, keys, data.regions, data.tags, settings, dcfg, dev)
    out = Path(out_dir)
    results = [{"image_id": data.image_ids.get(k, k), "caption": c} for k, c in zip(keys, caps)]
    atomic_write_json(out / "results.json", results, indent=1)
    report: dict[str, Any] = {"results": str(out / "results.json"), "images": len(keys)}
    if metrics and data.refs:
        scores = coco_caption_metrics(data.refs, dict(zip(keys, caps)), spice=spice)
        atomic_write_json(out / "metrics.json", scores, indent=1)
        report.update(scores)
    return report


def predict(
    checkpoint: PathLike,
    images: Sequence[PathLike],
    out_dir: PathLike,
    dcfg: DecodeConfig = DecodeConfig(),
    model: Optional[str] = None,
    weights: Optional[PathLike] = None,
    labelmap: Optional[PathLike] = None,
    device: Optional[str] = None,
) -> Path:
    """Images -> detector regions and tags (:func:`~vinvl.oscar.inputs.regions_for_images`) -> captions;
    writes ``out_dir/results.json`` ([{image_id, caption}], image_id = the image key) and returns it."""
    from ..regions import regions_for_images

    cap_model, tok, settings, dev = _load(checkpoint, device)
    out = Path(out_dir)
    keys, store = regions_for_images(images, out / "regions", model=model, weights=weights, labelmap=labelmap,
                                     device=str(dev))
    if store.dim != cap_model.config.img_feature_dim:
        raise VinvlError(f"the detector gives {store.dim}-d regions but {checkpoint} takes "
                         f"{cap_model.config.img_feature_dim}-d: use the detector the captioner was trained on")
    caps = caption_images(cap_model, tok, keys, store.regions, store.tags, settings, dcfg, dev)
    path = out / "results.json"
    atomic_write_json(path, [{"image_id": k, "caption": c} for k, c in zip(keys, caps)], indent=1)
    return path


__all__ = [
    "CaptionConfig", "CaptionData", "DecodeConfig", "caption_images", "caption_loss", "evaluate", "predict",
    "read_captions", "train", "trained_settings", "write_caption_split",
]
