"""Oscar+ image captioning (the original's ``oscar/run_captioning.py``): cross-entropy and self-critical (SCST)
training as a Trainer task, beam-search evaluation with the COCO metrics, and captions for images.

Cross-entropy training masks caption tokens as :class:`~vinvl.oscar.tensorize.CaptionTensorizer` does and
scores them with the original's ``BertCaptioningLoss`` (:func:`caption_loss`): targets smoothed to ``1 - eps``
on the word and ``eps / (V - 1)`` elsewhere, per-token KL divergence, and after ``drop_worst_after`` loss
calls (of the process: ``steps x accumulation + micro-batch``) the ``drop_worst_ratio`` largest token losses
of each micro-batch dropped. SCST samples ``sc_train_sample_n`` captions per image
(:func:`~vinvl.oscar.generate.sample`, from a generator seeded by the run's seed and the micro-batch's global
number), rewards them with CIDEr-D against the image's captions and takes ``-(reward - baseline) * mean log p``,
the baseline being the greedy (or ``sc_beam_size``-beam) caption's reward or the mean of the other samples'.
Evaluation decodes in the layout the checkpoint was trained with (:func:`decoding_layout`, the original's
``restore_training_settings``), its settings merged by the one rule (:func:`trained_layout`).
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import torch
import torch.nn.functional as F

from ...atomic import atomic_write_json
from ...errors import VinvlError
from ...tsv import write_tsv
from ...training.checkpoints import latest_checkpoint
from ...training.runtime import Device, autocast
from .. import transformers_adapter as hf
from ..checkpoint import training_settings
from ..cbs import CBSData, build_fsm, detected_boxes, fsm_size
from ..data.captions import CaptionData, nocaps_image_ids
from ..data.regions import Key, RegionSource
from ..generate import generate, generate_constrained, sample
from ..loading import OscarCheckpoint
from ..metrics.caption import CiderD, coco_caption_metrics, wrap_for_reward
from ..modeling import OscarForCaptioning
from ..options import CaptionOptions, CBSOptions, DecodeOptions, TrainingSettings, restore
from ..tensorize import CaptionTensorizer
from ..training import Trainer
from .base import Task, stack, task_tokenizer

PathLike = Union[str, os.PathLike]


# -- loss ------------------------------------------------------------------------------------
def caption_loss(logits: torch.Tensor, target: torch.Tensor, label_smoothing: float = 0.0,
                 drop_worst_ratio: float = 0.0, reduce: bool = True) -> torch.Tensor:
    """The original's ``BertCaptioningLoss`` on ``[M, V]`` logits of the masked tokens: smoothed targets,
    per-token KL, the ``drop_worst_ratio`` largest dropped, mean (``reduce=False``: each token's loss)."""
    eps, V = label_smoothing, logits.shape[1]
    one_hot = torch.zeros_like(logits).scatter(1, target.view(-1, 1), 1.0)
    soft = one_hot * (1 - eps) + (1 - one_hot) * eps / (V - 1)
    loss = F.kl_div(F.log_softmax(logits, dim=1), soft, reduction="none").sum(1)
    if not reduce:
        return loss
    if drop_worst_ratio > 0:
        loss = loss.topk(int(loss.shape[0] * (1 - drop_worst_ratio)), largest=False).values
    return loss.mean()


# -- the decoding layout a checkpoint was trained with ------------------------------------------
@dataclass
class DecodingLayout:
    """Decoding layout: caption slots, tag slots, regions, where tag positions start, tags on or off."""

    max_gen_length: int
    od_len: int
    max_img: int
    od_start: int
    add_od_labels: bool
    do_lower_case: bool


def decoding_layout(settings: dict[str, Any], max_gen_length: int, fallback: CaptionOptions = CaptionOptions()
                    ) -> DecodingLayout:
    """As the original's ``restore_training_settings``: the tag room the model was trained with after
    ``max_gen_length`` caption slots; tag position ids from ``max(max_seq_a_length, max_gen_length)``."""
    s = settings if isinstance(settings, TrainingSettings) else TrainingSettings(settings)
    get = lambda k: s.typed(k, getattr(fallback, k))  # noqa: E731
    a_len = get("max_gen_length") if s.typed("scst", False) else get("max_seq_a_length")
    lay = DecodingLayout(
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


def decode_tensorizer(tok: Any, lay: DecodingLayout) -> CaptionTensorizer:
    """The tensorizer of decoding inputs in layout ``lay``."""
    od = lay.od_len if lay.add_od_labels else 0
    return CaptionTensorizer(tok, lay.max_img, lay.max_gen_length + od, lay.max_gen_length)


def special_ids(tok: Any) -> dict[str, int]:
    """The token ids decoding needs, by the names :func:`~vinvl.oscar.generate.generate` takes."""
    return {"bos_token_id": tok.cls_token_id, "eos_token_id": tok.sep_token_id, "mask_token_id": tok.mask_token_id,
            "pad_token_id": tok.pad_token_id}


def texts(tok: Any, ids: torch.Tensor) -> list[str]:
    """Decoded captions of ``[B, T]`` token ids."""
    return [tok.decode(row.tolist(), skip_special_tokens=True, clean_up_tokenization_spaces=True).strip() for row in ids]


def decode_kwargs(batch: dict[str, torch.Tensor], lay: DecodingLayout, device: torch.device) -> dict[str, Any]:
    """:func:`~vinvl.oscar.generate.generate`'s inputs of a batch of decoding inputs."""
    kw: dict[str, Any] = {"img_feats": batch["img_feats"].to(device), "attention_mask": batch["attention_mask"].to(device),
                          "max_length": lay.max_gen_length}
    if lay.add_od_labels:
        kw["od_label_ids"] = batch["input_ids"][:, lay.max_gen_length :].to(device)
        kw["od_position_start"] = lay.od_start
    return kw


# -- training ---------------------------------------------------------------------------------
class _XEExamples:
    """Caption rows as masked training examples, random choices seeded by (seed, epoch, row)."""

    def __init__(self, data: CaptionData, tensorizer: CaptionTensorizer, options: CaptionOptions) -> None:
        self.data, self.t, self.options = data, tensorizer, options

    def __len__(self) -> int:
        return len(self.data.captions)

    def example(self, i: int, epoch: int) -> dict[str, torch.Tensor]:
        key, caption = self.data.captions[i]
        rng = random.Random(f"{self.options.seed}/{epoch}/{i}")
        tags = self.data.tags(key) if self.options.add_od_labels else None
        return self.t(caption, tags, self.data.regions(key), rng=rng)


class _ImageExamples:
    """Captioned images as decoding inputs (SCST), with their row index."""

    def __init__(self, data: CaptionData, tensorizer: CaptionTensorizer, add_od_labels: bool) -> None:
        self.data, self.t, self.add_od_labels = data, tensorizer, add_od_labels
        self.keys = data.captioned_keys()

    def __len__(self) -> int:
        return len(self.keys)

    def example(self, i: int, epoch: int = 0) -> dict[str, torch.Tensor]:
        key = self.keys[i]
        x = self.t.decode_inputs(self.data.tags(key) if self.add_od_labels else None, self.data.regions(key))
        return {**x, "index": torch.tensor(i)}


class CaptionTask(Task):
    """Cross-entropy (or, with ``options.scst``, self-critical) training of :class:`OscarForCaptioning`;
    with ``eval_data``, CIDEr-D of its greedy captions at each save."""

    model_class = OscarForCaptioning

    def __init__(self, data: Optional[CaptionData], options: CaptionOptions, tokenizer: Any,
                 init: Optional[PathLike] = None, model_config: Any = None, eval_data: Optional[CaptionData] = None,
                 start_settings: Optional[dict] = None, log: Optional[Callable[[str], None]] = None,
                 trained: Optional[Mapping[str, Any]] = None, decode: DecodeOptions = DecodeOptions(),
                 cbs: Optional[CBSData] = None) -> None:
        """``data``: the training split (None: a task that only predicts); ``start_settings``: the layout SCST's
        starting checkpoint decodes in (:func:`trained_layout`); ``trained``: the settings a loaded model was
        trained with (:func:`load_captioner`), which :meth:`predict` decodes in with ``decode``, constrained by
        ``cbs`` when given (:func:`constrained_captions`)."""
        super().__init__(options, tokenizer, init, model_config, log)
        self.cbs = cbs
        if options.sc_baseline_type not in ("greedy", "sample"):
            raise VinvlError(f"--sc-baseline-type {options.sc_baseline_type!r}: expected greedy or sample")
        if options.scst and options.sc_baseline_type == "sample" and options.sc_train_sample_n < 2:
            raise VinvlError("the sample baseline needs --sc-train-sample-n >= 2")
        self.data, self.eval_data, self.trained, self.decode = data, eval_data, trained, decode
        self.ddp_forward = not options.scst  # SCST decodes outside forward: gradients are averaged by hand
        self._settings: dict[str, Any] = {}
        if data is None:
            return
        if not data.captions:
            raise VinvlError(f"{data.name}: no captions to train on")
        self._settings["img_feature_dim"] = data.dim
        if options.scst:
            # decoding inputs keep the tag room the initial model was trained with (restore_training_settings)
            before = start_settings or {}
            self.layout = decoding_layout(before, options.max_gen_length, options)
            self._settings.update(max_seq_length=options.max_gen_length + self.layout.od_len,
                                  add_od_labels=self.layout.add_od_labels, max_img_seq_length=self.layout.max_img,
                                  max_seq_a_length=before.get("max_seq_a_length", options.max_seq_a_length))
            self.examples: Any = _ImageExamples(data, decode_tensorizer(tokenizer, self.layout), self.layout.add_od_labels)
            self.cider = CiderD(options.cider_cached_tokens or "corpus")
        else:
            self.examples = _XEExamples(data, CaptionTensorizer(tokenizer, options.max_img_seq_length, options.max_seq_length,
                                                                options.max_seq_a_length, options.mask_prob,
                                                                options.max_masked_tokens), options)

    def train_set(self) -> Any:
        if self.data is None:
            raise VinvlError("CaptionTask: no training split")
        return self.examples

    def model_overrides(self) -> dict[str, Any]:
        # --drop_out sets hidden_dropout_prob, not the attention dropout
        return {"hidden_dropout_prob": self.options.drop_out, "tie_weights": self.options.tie_weights}

    def region_dim(self) -> Optional[int]:
        return self.data.dim if self.data is not None else None

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        if model.config.img_feature_dim != self.data.dim:
            raise VinvlError(f"{self.data.name}: regions are {self.data.dim}-d but the model takes "
                             f"{model.config.img_feature_dim}-d")
        if self.options.freeze_embedding:
            model.bert.embeddings.word_embeddings.weight.requires_grad = False
        # the pooler takes no part in the captioning losses: it never gets a gradient (as in the original), and
        # data parallelism need not look for it
        model.bert.pooler.requires_grad_(False)
        hf.use_attention(model.config, "sdpa")  # SCST decodes before any forward has chosen it
        return model

    def settings(self) -> dict[str, Any]:
        return dict(self._settings)

    def loss(self, module: torch.nn.Module, batch: dict[str, torch.Tensor], ctx: Any) -> tuple[torch.Tensor, dict]:
        return self._scst(batch, ctx) if self.options.scst else self._xe(module, batch, ctx)

    def collate(self, examples: Sequence[Any]) -> dict[str, torch.Tensor]:
        batch = stack(examples)
        if not self.options.scst:  # the masked positions in a fixed shape (computed here, in the data thread)
            n = batch["masked_ids"].shape[1]
            batch["masked_index"] = torch.stack([torch.nn.functional.pad(row.nonzero().flatten(), (0, n - int(row.sum())))
                                                 for row in batch["masked_pos"]])
        return batch

    def _xe(self, module: torch.nn.Module, b: dict[str, torch.Tensor], ctx: Any) -> tuple[torch.Tensor, dict]:
        o = self.options
        calls = ctx.step * o.gradient_accumulation_steps + ctx.micro + 1  # the original counts loss calls
        drop = o.drop_worst_ratio if calls > o.drop_worst_after else 0.0
        inputs = (b["input_ids"], b["token_type_ids"], b["attention_mask"], b["img_feats"])
        if drop > 0 or "masked_index" not in b:  # the masked tokens as one list (their number decides what is dropped)
            out = module(*inputs, masked_pos=b["masked_pos"])
            target = b["masked_ids"][b["masked_ids"] != 0]
            logits = out.logits.float()
            loss = caption_loss(logits, target, o.label_smoothing, drop)
            acc = (logits.detach().argmax(-1) == target).float().sum() / b["masked_pos"].sum()
            return loss, {"acc": acc}
        # the same mean over the masked tokens, in fixed shapes: no host synchronisation per step
        out = module(*inputs, masked_index=b["masked_index"])
        logits, target = out.logits.float(), b["masked_ids"]
        real = (target != 0).float()
        per_token = caption_loss(logits.flatten(0, 1), target.flatten(), o.label_smoothing, reduce=False).view_as(real)
        count = real.sum().clamp(min=1)
        acc = ((logits.detach().argmax(-1) == target).float() * real).sum() / count
        return (per_token * real).sum() / count, {"acc": acc}

    def _scst(self, batch: dict[str, torch.Tensor], ctx: Any) -> tuple[torch.Tensor, dict]:
        o, model, tok, dev, lay = self.options, ctx.model, self.tokenizer, ctx.device, self.layout
        keys = [self.examples.keys[i] for i in batch["index"].tolist()]
        refs = [[wrap_for_reward(c) for c in self.data.refs[k]] for k in keys]
        kw = decode_kwargs(batch, lay, dev)
        n, B = o.sc_train_sample_n, len(keys)
        greedy: list[str] = []
        if o.sc_baseline_type == "greedy":
            g = generate(model, **kw, num_beams=o.sc_beam_size, use_cache=True, **special_ids(tok))
            greedy = [wrap_for_reward(c) for c in texts(tok, g.token_ids[:, 0])]
        model.train()
        gen = torch.Generator(device=dev).manual_seed((o.seed * 1_000_003 + ctx.micro_index) % 2**63)
        s = sample(model, **kw, num_samples=n, temperature=o.temperature, top_k=o.top_k, top_p=o.top_p,
                   generator=gen, **special_ids(tok))
        sampled = [wrap_for_reward(c) for c in texts(tok, s.token_ids.reshape(B * n, -1))]
        # the original scores samples and greedy captions in one call (document frequencies of all of them)
        scores = self.cider.scores(sampled + greedy, [refs[i // n] for i in range(B * n)] + refs[: len(greedy)])
        reward = scores[: B * n].reshape(B, n)
        baseline = scores[B * n :][:, None] if greedy else (reward.sum(1, keepdims=True) - reward) / (n - 1)
        adv = torch.as_tensor(reward - baseline, dtype=torch.float32, device=dev)
        loss = -(s.logprobs.float() * adv).mean()
        figures = {"reward": torch.tensor(float(reward.mean()))}
        if greedy:
            figures["greedy_reward"] = torch.tensor(float(scores[B * n :].mean()))
        return loss, figures

    def evaluate(self, model: torch.nn.Module) -> Optional[dict[str, Any]]:
        if self.eval_data is None:
            return None
        keys = self.eval_data.captioned_keys()
        dcfg = DecodeOptions(num_beams=1, max_gen_length=self.options.max_gen_length,
                             eval_batch_size=self.options.eval_batch_size)
        caps = caption_images(model, self.tokenizer, keys, self.eval_data, self.layout_settings(), dcfg)
        refs = [[wrap_for_reward(c) for c in self.eval_data.refs[k]] for k in keys]
        cider = float(CiderD("corpus").scores([wrap_for_reward(c) for c in caps], refs).mean())
        return {"score": cider, "CIDEr-D": cider, "images": len(keys), "decoding": "greedy"}

    def layout_settings(self) -> Mapping[str, Any]:
        """The settings the model decodes in: a loaded model's training settings, else this run's."""
        return self.trained if self.trained is not None else {**self.options.to_dict(), **self._settings}

    def predict(self, model: torch.nn.Module, regions: RegionSource, keys: Sequence[Key], texts: Sequence[str] = ()
                ) -> list[dict[str, Any]]:
        """``[{image_id, caption, conf}]`` of images ``keys`` (beam search with ``decode``; ``texts`` unused), with
        ``kept``: the ``decode.num_keep_best`` best ``[{caption, conf}]`` (:func:`ranked_captions`); with CBS the
        image's ``constraints`` instead."""
        if regions.dim != model.config.img_feature_dim:
            raise VinvlError(f"the regions are {regions.dim}-d but the captioner takes {model.config.img_feature_dim}-d: "
                             "use the detector it was trained on")
        if self.cbs is not None:
            return constrained_captions(model, self.tokenizer, list(keys), regions, self.layout_settings(), self.decode,
                                        self.cbs)
        ranked = ranked_captions(model, self.tokenizer, list(keys), regions, self.layout_settings(), self.decode)
        return [{"image_id": k, **best[0], "kept": best} for k, best in zip(keys, ranked)]


def train(data: CaptionData, out_dir: PathLike, options: Optional[CaptionOptions] = None, init: Optional[PathLike] = None,
          vocab: Optional[PathLike] = None, model_config: Any = None, eval_data: Optional[CaptionData] = None,
          resume: bool = False, log: Optional[Callable[[str], None]] = None, callbacks: tuple = ()) -> Path:
    """Cross-entropy (or, with ``options.scst``, self-critical) training; returns the last ``checkpoint-N/``.

    The model starts from ``init`` (a captioning or pretraining checkpoint) or fresh from ``model_config`` with
    ``vocab``'s tokenizer; ``resume`` continues ``out_dir``'s newest checkpoint.
    """
    options = (options or CaptionOptions()).check()
    if not data.captions:
        raise VinvlError(f"{data.name}: no captions to train on")
    tok = task_tokenizer(vocab, init, do_lower_case=options.do_lower_case)
    start = None
    if options.scst:  # the layout of the model it starts from: a resumed run's as it recorded it, else by the rule
        last = latest_checkpoint(out_dir) if resume else None
        if last is not None:
            start = training_settings(last)
        elif init is not None:
            start = trained_layout(OscarCheckpoint.open(init, "initial checkpoint (--init)").settings, options)
        else:
            start = {}
    task = CaptionTask(data, options, tok, init=init, model_config=model_config, eval_data=eval_data,
                       start_settings=start, log=log)
    return Trainer(task, options, out_dir, log=log, callbacks=callbacks).train(resume=resume)


# -- decoding, evaluation, prediction ----------------------------------------------------------
# A checkpoint that records no training options decodes as the original's VinVL COCO-captioning recipe trained
# it: run_captioning.py's default lengths with --do_lower_case --add_od_labels (VinVL_MODEL_ZOO.md, "Image
# Captioning on COCO"); its evaluation command is DecodeOptions' defaults (--num_beams 5 --max_gen_length 20).
VINVL_CAPTION_RECIPE: dict[str, Any] = {
    "max_seq_length": 70, "max_seq_a_length": 40, "max_img_seq_length": 50, "add_od_labels": True,
    "do_lower_case": True,
}


def trained_layout(recorded: Mapping[str, Any], options: Optional[CaptionOptions] = None) -> TrainingSettings:
    """The settings a captioner decodes in: what it ``recorded``, its layout (``CaptionOptions.RESTORED``) merged by
    the one rule: ``options``' explicit values, else the recorded ones, else the defaults (which are
    :data:`VINVL_CAPTION_RECIPE`)."""
    rec = recorded if isinstance(recorded, TrainingSettings) else TrainingSettings(recorded)
    opts = restore(options if options is not None else CaptionOptions(), rec)
    layout = {name: getattr(opts, name) for name in CaptionOptions.RESTORED}
    return TrainingSettings({**rec, **layout}, rec.source if rec else "the VinVL captioning recipe")


def decoding_settings(checkpoint: PathLike) -> dict[str, Any]:
    """The training options decoding follows: those ``checkpoint`` records, its layout completed with
    :data:`VINVL_CAPTION_RECIPE` (:func:`trained_layout`)."""
    return trained_layout(training_settings(checkpoint))


def load_captioner(checkpoint: Union[PathLike, OscarCheckpoint], device: Device = "cpu"
                   ) -> tuple[OscarForCaptioning, Any, dict[str, Any]]:
    """(model on ``device`` in eval mode, tokenizer, training settings) of a captioning checkpoint (folder, run
    folder, released zip, registry name, or one already opened); a malformed settings record stops before the
    weights load."""
    ckpt = checkpoint if isinstance(checkpoint, OscarCheckpoint) else OscarCheckpoint.open(checkpoint)
    settings = trained_layout(ckpt.settings)
    decoding_layout(settings, DecodeOptions.max_gen_length)
    tok = ckpt.tokenizer(settings.typed("do_lower_case", True))
    return ckpt.model(OscarForCaptioning, device), tok, settings


def caption_images(model: OscarForCaptioning, tok: Any, keys: Sequence[str], regions: Any, settings: Mapping[str, Any],
                   dcfg: DecodeOptions = DecodeOptions()) -> list[str]:
    """Beam-search captions of images ``keys`` of a region source, decoded in the layout the model was trained
    with (``settings``: its training settings)."""
    return [best[0]["caption"] for best in ranked_captions(model, tok, keys, regions, settings, dcfg)]


def check_keep_best(dcfg: DecodeOptions, constrained: bool = False) -> None:
    """``num_keep_best`` the decoding can honour: 1..num_beams, and 1 with constrained beam search (the original
    asserts both: its greedy search and its CBS keep one caption)."""
    k = dcfg.num_keep_best
    if not 1 <= k <= dcfg.num_beams:
        raise VinvlError(f"--num-keep-best {k}: 1 to --num-beams ({dcfg.num_beams}), the best finished beams kept")
    if constrained and k != 1:
        raise VinvlError(f"--num-keep-best {k}: constrained beam search (--cbs) keeps one caption per image")


def ranked_captions(model: OscarForCaptioning, tok: Any, keys: Sequence[str], regions: Any,
                    settings: Mapping[str, Any], dcfg: DecodeOptions = DecodeOptions()) -> list[list[dict[str, Any]]]:
    """Each image's ``dcfg.num_keep_best`` best beam-search captions, best first: ``[{caption, conf}]`` with ``conf``
    = exp(score) (the length-normalised log-probability), the original's prediction-file row; decoded as
    :func:`caption_images`."""
    check_keep_best(dcfg)
    lay = decoding_layout(settings, dcfg.max_gen_length)
    t = decode_tensorizer(tok, lay)
    hf.use_attention(model.config, "sdpa")  # the decoding cache asks before any forward has chosen it
    dev = next(model.parameters()).device
    out: list[list[dict[str, Any]]] = []
    for s in range(0, len(keys), dcfg.eval_batch_size):
        chunk = keys[s : s + dcfg.eval_batch_size]
        batch = stack([t.decode_inputs(regions.tags(k) if lay.add_od_labels else None, regions.regions(k)) for k in chunk])
        res = generate(model, **decode_kwargs(batch, lay, dev), num_beams=dcfg.num_beams,
                       length_penalty=dcfg.length_penalty, repetition_penalty=dcfg.repetition_penalty,
                       num_return_sequences=dcfg.num_keep_best, use_cache=dcfg.use_cache, **special_ids(tok))
        confs = res.logprobs.float().exp().tolist()
        out += [[{"caption": c, "conf": p} for c, p in zip(texts(tok, ids), conf)] for ids, conf in zip(res.token_ids, confs)]
    return out


def check_constrained(dcfg: DecodeOptions, cbs: CBSOptions) -> None:
    """Decoding options CBS cannot take are errors (the original's CBS applies no length or repetition penalty)."""
    for name in ("length_penalty", "repetition_penalty"):
        if getattr(dcfg, name) != 1.0:
            raise VinvlError(f"--{name.replace('_', '-')}: constrained beam search (--cbs) applies none")
    if cbs.min_constraints < 0 or cbs.cbs_group < 1 or not 0 < cbs.max_constraints <= 8:
        raise VinvlError(f"CBS options out of range: --min-constraints {cbs.min_constraints} (>= 0), --cbs-group "
                         f"{cbs.cbs_group} (>= 1), max_constraints {cbs.max_constraints} (1..8)")


def constrained_captions(model: OscarForCaptioning, tok: Any, keys: Sequence[Key], regions: Any,
                         settings: Mapping[str, Any], dcfg: DecodeOptions, cbs: CBSData) -> list[dict[str, Any]]:
    """Constrained-beam-search captions (:mod:`vinvl.oscar.cbs`) of images ``keys``, in the layout the model was trained
    with: ``[{image_id, caption, conf, constraints}]``, ``conf`` = exp(score) as the original's prediction file.
    Images go ``cbs.options.cbs_group`` at a time as the original's batches; ``dcfg.eval_batch_size`` (rounded up to
    whole groups) only sets how many decode together."""
    check_constrained(dcfg, cbs.options)
    images = [cbs.image(k, tok) for k in keys]
    lay = decoding_layout(settings, dcfg.max_gen_length)
    t = decode_tensorizer(tok, lay)
    hf.use_attention(model.config, "sdpa")
    dev = next(model.parameters()).device
    V, group = model.config.vocab_size, cbs.options.cbs_group
    S = max([fsm_size(im.token_forms, cbs.options.max_constraints) for im in images], default=0)
    size = -(-dcfg.eval_batch_size // group) * group
    out: list[dict[str, Any]] = []
    for s in range(0, len(keys), size):
        chunk, ims = keys[s : s + size], images[s : s + size]
        batch = stack([t.decode_inputs(regions.tags(k) if lay.add_od_labels else None, regions.regions(k)) for k in chunk])
        fsm = torch.stack([build_fsm(im.token_forms, V, S, cbs.options.max_constraints)[0] for im in ims])
        res = generate_constrained(model, **decode_kwargs(batch, lay, dev), fsm=fsm, num_constraints=[len(im.names) for im in ims],
                                   num_beams=dcfg.num_beams, min_constraints=cbs.options.min_constraints,
                                   use_cache=dcfg.use_cache, first_step_group=group, **special_ids(tok))
        confs = res.logprobs[:, 0].float().exp().tolist()
        for k, cap, conf, im in zip(chunk, texts(tok, res.token_ids[:, 0]), confs, ims):
            out.append({"image_id": k, "caption": cap, "conf": conf, "constraints": im.names})
    return out


def write_predictions(out_dir: PathLike, rows: Sequence[Mapping[str, Any]]) -> Path:
    """``out_dir/predictions.tsv``, the original's prediction file: ``key \t [{"caption", "conf"}, ...]``, each
    image's kept captions best first (one without ``--num-keep-best``)."""
    return write_tsv(Path(out_dir) / "predictions.tsv",
                     [(str(r["image_id"]), json.dumps(r.get("kept") or [{"caption": r["caption"], "conf": r["conf"]}]))
                      for r in rows], columns=2)


def write_constrained(out_dir: PathLike, rows: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """CBS outputs beside results.json: ``predictions.tsv`` (:func:`write_predictions`) and ``constraints.tsv``
    (``key \t ["class", ...]``, each image's constraints)."""
    preds = write_predictions(out_dir, rows)
    cons = write_tsv(Path(out_dir) / "constraints.tsv", [(str(r["image_id"]), json.dumps(r["constraints"])) for r in rows],
                     columns=2)
    return {"predictions": str(preds), "constraints": str(cons)}


def write_nocaps_submission(path: PathLike, rows: Sequence[Mapping[str, Any]], ids: Mapping[Any, int]) -> Path:
    """The EvalAI NoCaps submission ``[{"image_id": int, "caption": str}]``, ids by image key (:func:`nocaps_image_ids`)."""
    return atomic_write_json(path, [{"image_id": ids[r["image_id"]], "caption": r["caption"]} for r in rows], indent=1)


def evaluate(checkpoint: PathLike, data: Union[CaptionData, PathLike], out_dir: PathLike,
             dcfg: DecodeOptions = DecodeOptions(), device: Device = "cpu", spice: Optional[bool] = None,
             metrics: bool = True, precision: str = "fp32", captions: Optional[PathLike] = None,
             cbs: Optional[CBSOptions] = None, nocaps_image_info: Optional[PathLike] = None) -> dict[str, Any]:
    """Caption the split's images (those with captions, else all) and score them: writes
    ``out_dir/results.json`` ([{image_id, caption}]) and, with references, ``out_dir/metrics.json``. ``data``: a
    split, or what :class:`CaptionData` opens (with ``captions``), read once the checkpoint is found. ``cbs``:
    constrained beam search (the split yaml's CBS files unless ``cbs`` names them), which also writes
    ``predictions.tsv`` and ``constraints.tsv`` (:func:`write_constrained`); ``dcfg.num_keep_best`` > 1: also
    ``predictions.tsv`` with each image's kept captions (:func:`write_predictions`; results.json and the metrics take
    the first, the best); ``nocaps_image_info``: also the EvalAI submission ``out_dir/nocaps_submission.json``
    (:func:`write_nocaps_submission`). Every file is checked before decoding starts."""
    ckpt = OscarCheckpoint.open(checkpoint)
    data = data if isinstance(data, CaptionData) else CaptionData(data, captions)
    keys = data.captioned_keys() or list(data.keys)
    if not keys:
        raise VinvlError(f"{data.name}: no images to caption")
    cbs_data = None
    check_keep_best(dcfg, cbs is not None)
    if cbs is not None:
        check_constrained(dcfg, cbs)
        cbs_data = CBSData.open(cbs, data.spec)
        cbs_data.check(keys)
    nocaps_ids = nocaps_image_ids(nocaps_image_info, keys) if nocaps_image_info is not None else None
    model, tok, settings = load_captioner(ckpt, device)
    if model.config.img_feature_dim != data.dim:
        raise VinvlError(f"{data.name}: regions are {data.dim}-d but {checkpoint} takes {model.config.img_feature_dim}-d")
    task = CaptionTask(None, CaptionOptions(), tok, trained=settings, decode=dcfg, cbs=cbs_data)
    with autocast(next(model.parameters()).device, precision):
        rows = task.predict(model, data, keys)
    caps = [r["caption"] for r in rows]
    out = Path(out_dir)
    results = [{"image_id": data.image_ids.get(k, k), "caption": c} for k, c in zip(keys, caps)]
    atomic_write_json(out / "results.json", results, indent=1)
    report: dict[str, Any] = {"results": str(out / "results.json"), "images": len(keys)}
    if cbs_data is not None:
        report.update(write_constrained(out, rows))
    elif dcfg.num_keep_best > 1:
        report["predictions"] = str(write_predictions(out, rows))
    if nocaps_ids is not None:
        report["nocaps_submission"] = str(write_nocaps_submission(out / "nocaps_submission.json", rows, nocaps_ids))
    if metrics and data.refs:
        scores = coco_caption_metrics(data.refs, dict(zip(keys, caps)), spice=spice)
        atomic_write_json(out / "metrics.json", scores, indent=1)
        report.update(scores)
    return report


def predict(checkpoint: PathLike, regions: Any, keys: Sequence[str], out_dir: PathLike,
            dcfg: DecodeOptions = DecodeOptions(), device: Device = "cpu", precision: str = "fp32",
            cbs: Optional[CBSOptions] = None, cbs_classes: Optional[Mapping[str, str]] = None) -> Path:
    """Captions of images ``keys`` of a region source (e.g. what :func:`vinvl.regions.regions_for_images` made);
    writes ``out_dir/results.json`` ([{image_id, caption}], image_id = the image key) and returns it."""
    return predict_images(checkpoint, lambda dev: (keys, regions), out_dir, dcfg, device, precision, cbs, cbs_classes)


def predict_images(checkpoint: PathLike, detect: Callable[[Any], tuple[Sequence[Key], RegionSource]],
                   out_dir: PathLike, dcfg: DecodeOptions = DecodeOptions(), device: Device = "cpu",
                   precision: str = "fp32", cbs: Optional[CBSOptions] = None,
                   cbs_classes: Optional[Mapping[str, str]] = None) -> Path:
    """:meth:`CaptionTask.predict` of a checkpoint: the captioner loads first, then ``detect`` (device -> image
    keys and their regions) runs; writes ``out_dir/results.json`` and returns it. ``cbs``: constrained beam search,
    which also writes ``predictions.tsv`` and ``constraints.tsv``, with the boxes of its box file (keyed by the image
    keys) or, without one, the detector's own (:func:`vinvl.oscar.cbs.detected_boxes`; ``cbs_classes`` maps their
    classes to the hierarchy's vocabulary, e.g. Open Images'); without a constraint2tokens file a word's pieces are
    the captioner's tokenizer's. ``dcfg.num_keep_best`` > 1: also ``predictions.tsv`` (:func:`write_predictions`)."""
    cbs_data = None
    check_keep_best(dcfg, cbs is not None)
    own_boxes = cbs is not None and cbs.cbs_box is None
    if cbs is not None:
        check_constrained(dcfg, cbs)
        cbs_data = CBSData.open(cbs, boxes={} if own_boxes else None)
    model, tok, settings = load_captioner(checkpoint, device)
    dev = next(model.parameters()).device
    if cbs_data is not None and cbs.cbs_constraint is None:
        cbs_data.forms.split = tok.tokenize
    keys, regions = detect(dev)
    if cbs_data is not None:
        if own_boxes:
            cbs_data.boxes = detected_boxes(regions, keys, cbs_classes)
            cbs_data.box_source = "the detector's boxes"
        cbs_data.check(keys)
    task = CaptionTask(None, CaptionOptions(), tok, trained=settings, decode=dcfg, cbs=cbs_data)
    with autocast(dev, precision):
        rows = task.predict(model, regions, keys)
    path = Path(out_dir) / "results.json"
    atomic_write_json(path, [{"image_id": r["image_id"], "caption": r["caption"]} for r in rows], indent=1)
    if cbs_data is not None:
        write_constrained(out_dir, rows)
    elif dcfg.num_keep_best > 1:
        write_predictions(out_dir, rows)
    return path


__all__ = [
    "CaptionData", "CaptionTask", "DecodingLayout", "VINVL_CAPTION_RECIPE", "caption_images", "caption_loss",
    "check_constrained", "check_keep_best", "constrained_captions", "decoding_layout", "decoding_settings", "evaluate",
    "load_captioner", "predict", "predict_images", "ranked_captions", "train", "trained_layout", "write_constrained",
    "write_nocaps_submission", "write_predictions",
]
