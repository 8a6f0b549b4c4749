"""Oscar+ image-text retrieval (the original ``oscar/run_retrieval.py``): a cross-encoder that reads
``[CLS] caption [SEP] tags [SEP]`` + regions and says whether they match.

- Training (:class:`RetrievalTask`, :func:`train`): every (image, caption) item gives a matched pair (label 1)
  and an unmatched one (label 0): with probability 1/2 the caption of another image, else the caption
  with another image's regions and tags; a binary classifier (``num_labels 2``, softmax
  cross-entropy: the original's defaults); R@1 on an evaluation split at each save when one is given.
- Scores: the original ranks by the softmax probability of "matched"; here the score is its logit
  ``l1 - l0`` (``sigmoid`` of it is that probability, so the order is the same, without the ties of
  probabilities that round to 1.0 in float32); ``num_labels 1`` ranks by the logit, as the original.
- :class:`FastScorer` computes the full score matrix with the same numbers as one pair at a time
  through the model (to float rounding): each image's regions go through ``img_embedding`` once and
  are shared by a batch of captions, captions are sorted by length so padding is short, regions
  are not padded, and the last layer runs only the ``[CLS]`` query (the classifier reads nothing else).
  The CL/CR/LR attention masks (``--att_mask_type``) too: a padding position attends to nothing and nothing
  attends to it, so leaving padding out changes no real position's output.
- :func:`two_stage_scores`: a cheap first stage and the full model on the top candidates; R@K and folds in
  :mod:`vinvl.oscar.metrics.retrieval`.
- A caption index (``--eval_caption_index_file``; :attr:`RetrievalSplit.candidates`): only each image's listed
  candidates are scored, and image->text R@K is computed among them (:func:`candidate_scores`), as the original's
  re-rank evaluation (its ``--evaluate_during_training`` on ``minival`` in the model zoo's commands).
"""

from __future__ import annotations

import copy
import os
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import torch
import torch.nn.functional as F

from ...atomic import atomic_write
from ...errors import VinvlError
from ...training.runtime import Device, autocast, stderr_log
from .. import transformers_adapter as hf
from ..data.regions import RegionSource
from ..data.retrieval import Key, RetrievalSplit, RetrievalTrainSet, load_split, open_images
from ..loading import from_pretrained
from ..metrics.retrieval import candidate_recall, fold_recall, recall_at_k
from ..modeling import OscarForSequenceClassification, additive_mask
from ..options import RetrievalOptions
from ..tensorize import PADDING, REGIONS, RetrievalTensorizer, block_mask, pad_regions
from ..training import Trainer
from .base import Task, task_tokenizer

PathLike = Union[str, os.PathLike]
Image = tuple[Any, list[int]]  # (region features [N, dim], tag token ids)


def positive_score(logits: torch.Tensor) -> torch.Tensor:
    """The "matched" score of each row of logits: ``l1 - l0`` (two classes) or the logit (one)."""
    logits = logits.float()
    return logits[:, 1] - logits[:, 0] if logits.shape[1] == 2 else logits[:, 0]


# -- scoring ------------------------------------------------------------------------------------
@torch.no_grad()
def naive_scores(model: OscarForSequenceClassification, builder: RetrievalTensorizer, images: Sequence[Image],
                 captions: Sequence[Sequence[int]]) -> torch.Tensor:
    """``[n_img, n_cap]`` scores, one padded pair at a time through the model (the original's arithmetic)."""
    model.eval()
    dev = next(model.parameters()).device
    out = torch.empty(len(images), len(captions))
    for i, (regions, tags) in enumerate(images):
        for j, cap in enumerate(captions):
            x = {k: v[None].to(dev) for k, v in builder.pair(cap, tags, regions).items()}
            out[i, j] = positive_score(model(**x).logits)[0]
    return out


def _cls_only_layer(layer: torch.nn.Module, x: torch.Tensor, mask: torch.Tensor, config: Any) -> torch.Tensor:
    """A BERT layer's output at position 0 only: keys and values from every position, the query,
    output projection and feed-forward for ``[CLS]`` alone (the pooler reads nothing else)."""
    first = x[:, :1]
    k, v = hf.keys_values(layer, x)
    q = hf.query(layer, first)
    return hf.finish_layer(layer, hf.attend(layer, q, k, v, mask.to(q.dtype), config), first)


class FastScorer:
    """The full cross-encoder score matrix, fast and with the scores of :func:`naive_scores`.

    ``precision`` ``bf16`` or ``fp16`` runs the encoder under autocast (default ``fp32``; ``amp=True``: bf16).
    ``pad_multiple`` (default: 8 on CUDA, 1 on CPU) rounds each batch's text length up (masked
    padding, so the scores do not change): fewer distinct shapes for the attention kernels.
    """

    def __init__(self, model: OscarForSequenceClassification, builder: RetrievalTensorizer, batch_size: int = 256,
                 amp: Optional[bool] = None, pad_multiple: Optional[int] = None, precision: str = "fp32") -> None:
        self.model = model.eval()
        self.builder = builder
        self.batch_size = batch_size
        self.device = next(model.parameters()).device
        self.precision = "bf16" if amp else precision
        self.amp = self.precision != "fp32"
        self.pad_multiple = pad_multiple or (8 if self.device.type == "cuda" else 1)
        self._caps: Optional[torch.Tensor] = None

    def set_captions(self, captions: Sequence[Sequence[int]]) -> None:
        """Caption token ids (cut to ``max_seq_length - 2``), padded once into one tensor on the device."""
        cut = [list(c[: self.builder.max_seq - 2]) for c in captions]
        longest = max((len(c) for c in cut), default=0)
        mat = torch.zeros(len(cut), max(longest, 1), dtype=torch.long)
        for i, c in enumerate(cut):
            mat[i, : len(c)] = torch.tensor(c, dtype=torch.long)
        self._caps = mat.to(self.device)
        self._lens = torch.tensor([len(c) for c in cut], device=self.device)
        self._order = torch.argsort(self._lens.cpu(), stable=True)  # length buckets: little padding per batch

    def _text(self, idx: torch.Tensor, tags: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``compose`` for a batch of captions at once: ids, token types, text lengths."""
        tok, max_seq = self.builder.tok, self.builder.max_seq
        lc = self._lens[idx]
        caps = self._caps[idx, : max(int(lc.max()), 1)]
        n_tags = len(tags) if self.builder.add_od_labels else 0
        room = max_seq - (lc + 2) - 1
        has_b = (room >= 0) & (n_tags > 0)
        nb = torch.clamp(torch.minimum(room, torch.full_like(room, n_tags)), min=0) * has_b
        n_text = lc + 2 + (nb + 1) * has_b
        longest = int(n_text.max())
        m = self.pad_multiple
        t = max(longest, min(-(-longest // m) * m, self.model.config.max_position_embeddings))
        p = torch.arange(t, device=self.device)[None]
        lc_, nb_, hb = lc[:, None], nb[:, None], has_b[:, None]
        ids = torch.full((len(idx), p.shape[1]), tok.pad_token_id, dtype=torch.long, device=self.device)
        ids = torch.where(p == 0, tok.cls_token_id, ids)
        cap_tok = caps.gather(1, torch.clamp(p - 1, 0, caps.shape[1] - 1).expand(len(idx), -1))
        ids = torch.where((p >= 1) & (p <= lc_), cap_tok, ids)
        ids = torch.where(p == lc_ + 1, tok.sep_token_id, ids)
        types = torch.zeros_like(ids)
        if n_tags:
            tag_t = torch.tensor(list(tags), dtype=torch.long, device=self.device)
            tp = p - (lc_ + 2)
            ids = torch.where(hb & (tp >= 0) & (tp < nb_), tag_t[torch.clamp(tp, 0, n_tags - 1)], ids)
            ids = torch.where(hb & (tp == nb_), tok.sep_token_id, ids)
            types = (hb & (tp >= 0) & (tp <= nb_)).long()
        return ids, types, n_text

    @torch.no_grad()
    def score_image(self, regions: Any, tags: Sequence[int], subset: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Scores of one image against every caption (or the caption indices ``subset``), in caption order."""
        if self._caps is None:
            raise VinvlError("FastScorer: call set_captions first")
        bert = self.model.bert
        hf.use_attention(bert.config, "sdpa")
        feats, n_img = pad_regions(regions, self.builder.max_img)
        order = self._order.to(self.device)
        if subset is not None:
            keep = torch.zeros(len(self._lens), dtype=torch.bool, device=self.device)
            keep[subset.to(self.device)] = True
            order = order[keep[order]]
        out = torch.full((len(self._lens),), float("nan"), device=self.device)
        low = torch.bfloat16 if self.precision == "bf16" else torch.float16
        with autocast(self.device, self.precision):
            if n_img:
                img = bert.img_embedding(feats[:n_img].to(self.device))
                if bert.config.use_img_layernorm:
                    img = bert.LayerNorm(img)
            else:  # no regions (an empty image, or the text-only first stage)
                img = torch.zeros(0, bert.config.hidden_size, device=self.device)
            for s in range(0, len(order), self.batch_size):
                idx = order[s : s + self.batch_size]
                ids, types, n_text = self._text(idx, tags)
                b, t = ids.shape
                pos = torch.arange(t, device=self.device)[None].expand(b, t)
                text = bert.embeddings(input_ids=ids, token_type_ids=types, position_ids=pos)
                x = torch.cat([text, img[None].expand(b, -1, -1).to(text.dtype)], dim=1)
                dtype = low if self.amp else x.dtype
                if self.builder.att_mask_type == "CLR":
                    keys = torch.cat([pos < n_text[:, None], torch.ones(b, n_img, dtype=torch.bool, device=self.device)], 1)
                    mask = cls_mask = additive_mask(keys, dtype)
                else:  # the token types are the caption and tag parts, as in RetrievalTensorizer.pair
                    parts = torch.cat([torch.where(pos < n_text[:, None], types, PADDING),
                                       torch.full((b, n_img), REGIONS, device=self.device)], 1)
                    full = block_mask(parts, self.builder.att_mask_type)
                    mask, cls_mask = additive_mask(full, dtype), additive_mask(full[:, 0], dtype)  # [CLS]'s row
                layers = bert.encoder.layer
                for layer in layers[:-1]:
                    x = hf.run_layer(layer, x, mask)
                x = _cls_only_layer(layers[-1], x, cls_mask, bert.config)
                out[idx] = positive_score(self.model.classifier(bert.pooler(x)))
        return out.cpu()

    def score_matrix(self, images: Sequence[Image], captions: Optional[Sequence[Sequence[int]]] = None,
                     subsets: Optional[Sequence[Optional[torch.Tensor]]] = None,
                     progress: Optional[Callable[[int, int], None]] = None) -> torch.Tensor:
        """``[n_img, n_cap]`` scores (NaN where a ``subsets`` row leaves a caption out)."""
        if captions is not None:
            self.set_captions(captions)
        rows = []
        for i, (regions, tags) in enumerate(images):
            rows.append(self.score_image(regions, tags, None if subsets is None else subsets[i]))
            if progress:
                progress(i + 1, len(images))
        return torch.stack(rows)


# -- two-stage --------------------------------------------------------------------------------
@torch.no_grad()
def embed(model: OscarForSequenceClassification, builder: RetrievalTensorizer, images: Sequence[Image],
          captions: Sequence[Sequence[int]], batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """First-stage embeddings: the model's last hidden states mean-pooled over a caption alone
    (``[CLS] caption [SEP]``) and over an image alone (``[CLS] [SEP] tags [SEP]`` + regions), L2-normalised."""
    model.eval()
    bert, dev = model.bert, next(model.parameters()).device

    def pool(items: list[dict[str, torch.Tensor]], with_img: bool) -> torch.Tensor:
        x = {k: torch.stack([it[k] for it in items]).to(dev) for k in items[0]}
        o = bert(x["input_ids"], x["token_type_ids"], x["attention_mask"], x["img_feats"] if with_img else None)
        real = x["attention_mask"]
        if real.dim() == 3:  # a CL/CR/LR mask: a position is real where it attends to itself
            real = real.diagonal(dim1=1, dim2=2)
        m = real[:, : o.sequence_output.shape[1]].unsqueeze(-1).float()
        return F.normalize((o.sequence_output * m).sum(1) / m.sum(1).clamp(min=1), dim=-1).cpu()

    def text_only(cap: Sequence[int]) -> dict[str, torch.Tensor]:
        ids, types = builder.compose(cap, [])
        pad = builder.max_seq - len(ids)
        return {"input_ids": torch.tensor(ids + [builder.tok.pad_token_id] * pad),
                "token_type_ids": torch.tensor(types + [0] * pad),
                "attention_mask": torch.tensor([1] * len(ids) + [0] * pad), "img_feats": torch.zeros(0)}

    caps = []
    for s in range(0, len(captions), batch_size):
        caps.append(pool([text_only(c) for c in captions[s : s + batch_size]], False))
    imgs = []
    for s in range(0, len(images), batch_size):
        imgs.append(pool([builder.pair([], t, r) for r, t in images[s : s + batch_size]], True))
    return torch.cat(imgs), torch.cat(caps)


def first_stage_scores(scorer: FastScorer, images: Sequence[Image], captions: Sequence[Sequence[int]],
                       kind: str = "tags") -> torch.Tensor:
    """Cheap ``[n_img, n_cap]`` scores: ``tags``, the same cross-encoder on caption + tags without the
    regions (a third of the tokens); ``embed``, cosine of mean-pooled embeddings (:func:`embed`; one
    forward per image and per caption, not per pair)."""
    if kind == "tags":
        return scorer.score_matrix([(torch.zeros(0, 1), tags) for _, tags in images], captions)
    if kind == "embed":
        e_img, e_cap = embed(scorer.model, scorer.builder, images, captions, scorer.batch_size)
        return e_img @ e_cap.T
    raise VinvlError(f"first stage {kind!r}: expected 'tags' or 'embed'")


def two_stage_scores(scorer: FastScorer, images: Sequence[Image], captions: Sequence[Sequence[int]],
                     top_captions: int = 20, top_images: int = 20, first_stage: str = "tags",
                     progress: Optional[Callable[[int, int], None]] = None) -> tuple[torch.Tensor, int]:
    """Scores of the full model on each image's ``top_captions`` and each caption's ``top_images``
    candidates of the ``first_stage`` (NaN elsewhere), and how many pairs the full model scored."""
    sim = first_stage_scores(scorer, images, captions, first_stage)
    pick = torch.zeros(sim.shape, dtype=torch.bool)
    kc, ki = min(top_captions, sim.shape[1]), min(top_images, sim.shape[0])
    pick.scatter_(1, sim.topk(kc, dim=1).indices, True)
    pick.scatter_(0, sim.topk(ki, dim=0).indices, True)
    subsets = [torch.nonzero(row).flatten() for row in pick]
    return scorer.score_matrix(images, captions, subsets=subsets, progress=progress), int(pick.sum())


def candidate_scores(scorer: FastScorer, images: Sequence[Image], captions: Sequence[Sequence[int]],
                     candidates: Sequence[Sequence[int]], owner: Sequence[int],
                     progress: Optional[Callable[[int, int], None]] = None) -> tuple[torch.Tensor, dict[str, Any]]:
    """Scores of each image's ``candidates`` only (NaN elsewhere) and the image->text R@K among them, with the
    number of pairs scored (the original's ``--eval_caption_index_file`` evaluation)."""
    subsets = [torch.as_tensor(list(c), dtype=torch.long) for c in candidates]
    scores = scorer.score_matrix(images, captions, subsets=subsets, progress=progress)
    return scores, {**candidate_recall(scores, owner, candidates), "pairs_scored": sum(len(c) for c in candidates)}


def tensorizer(tokenizer: Any, options: RetrievalOptions) -> RetrievalTensorizer:
    """The input builder of ``options`` (lengths, tags, attention mask type)."""
    return RetrievalTensorizer(tokenizer, options.max_seq_length, options.max_img_seq_length, options.add_od_labels,
                               options.att_mask_type)


# -- training -----------------------------------------------------------------------------------
class RetrievalTask(Task):
    """Matched/unmatched classification of (caption, image) pairs; R@1 on ``eval_split`` at each save; the best
    captions of each image and images of each caption (:meth:`predict`)."""

    model_class = OscarForSequenceClassification
    options: RetrievalOptions

    def __init__(self, split: Optional[RetrievalSplit], options: RetrievalOptions, tokenizer: Any,
                 init: Optional[PathLike] = None, model_config: Any = None, eval_split: Optional[RetrievalSplit] = None,
                 log: Optional[Callable[[str], None]] = None, top: int = 5) -> None:
        """``split``: the training split (None: a task that only predicts); ``top``: the results :meth:`predict`
        lists per query."""
        super().__init__(options, tokenizer, init, model_config, log)
        self.builder = tensorizer(tokenizer, options)
        self.examples = RetrievalTrainSet(split, self.builder, options.seed) if split is not None else None
        self.eval_split, self.top = eval_split, top

    def train_set(self) -> RetrievalTrainSet:
        if self.examples is None:
            raise VinvlError("RetrievalTask: no training split")
        return self.examples

    def collate(self, examples: Sequence[Any]) -> dict[str, torch.Tensor]:
        return self.train_set().collate(examples, self.options.num_labels)

    def model_overrides(self) -> dict[str, Any]:
        o = self.options
        return {"num_labels": o.num_labels, "loss_type": o.loss_type, "hidden_dropout_prob": o.drop_out}

    def region_dim(self) -> Optional[int]:
        return self.examples.split.images.dim if self.examples is not None else None

    def bert_overrides(self) -> dict[str, Any]:
        # run_retrieval.py sets --use_img_layernorm (default 1) and --img_layer_norm_eps (1e-12) on every config
        return {**super().bert_overrides(), "use_img_layernorm": 1, "img_layer_norm_eps": 1e-12}

    def figures(self, out: Any, batch: dict) -> dict:
        logits = out.logits.detach()
        pred = logits.argmax(-1) if logits.shape[1] > 1 else (logits[:, 0] >= 0).long()
        return {"acc": (pred == batch["labels"].long()).float().mean()}

    def evaluate(self, model: torch.nn.Module) -> Optional[dict[str, Any]]:
        if self.eval_split is None:
            return None
        images, captions, owner = split_inputs(self.eval_split, self.builder)
        scorer = FastScorer(model, self.builder, batch_size=self.options.eval_batch_size)
        if self.eval_split.candidates is not None:
            result = candidate_scores(scorer, images, captions, self.eval_split.candidates, owner)[1]
            result["score"] = result["i2t_retrieval"]["R@1"]  # the original's best_score: image->text R@1
            return result
        result = recall_at_k(scorer.score_matrix(images, captions), owner)
        result["score"] = (result["i2t_retrieval"]["R@1"] + result["t2i_retrieval"]["R@1"]) / 2
        return result

    def predict(self, model: torch.nn.Module, regions: RegionSource, keys: Sequence[Key], texts: Sequence[str]
                ) -> dict[str, Any]:
        """For each image ``keys``, its ``top`` captions of ``texts``; for each caption, its ``top`` images; every
        entry ``{"caption"|"image": ..., "score": ...}`` (the matched logit)."""
        o, builder = self.options, self.builder
        if not keys or not texts:
            raise VinvlError("rank needs at least one image and one caption")
        images = [(regions.regions(k), builder.ids(regions.tags(k)) if o.add_od_labels else []) for k in keys]
        scorer = FastScorer(model, builder, batch_size=o.eval_batch_size, precision=o.precision)
        s = scorer.score_matrix(images, [builder.ids(c) for c in texts])
        kc, ki = min(self.top, len(texts)), min(self.top, len(keys))
        by_image = {str(k): [{"caption": texts[j], "score": float(s[i, j])} for j in s[i].topk(kc).indices.tolist()]
                    for i, k in enumerate(keys)}
        by_caption = {c: [{"image": str(keys[i]), "score": float(s[i, j])} for i in s[:, j].topk(ki).indices.tolist()]
                      for j, c in enumerate(texts)}
        return {"images": by_image, "captions": by_caption}


def train(data_dir: PathLike, out_dir: PathLike, options: Optional[RetrievalOptions] = None,
          init: Optional[PathLike] = None, vocab: Optional[PathLike] = None, model_config: Any = None,
          features: Optional[PathLike] = None, split: str = "train", eval_split: Optional[str] = None,
          eval_keys: Optional[PathLike] = None, resume: bool = False, log: Optional[Callable[[str], None]] = None,
          callbacks: tuple = (), caption_index: Optional[PathLike] = None) -> Path:
    """Fine-tune a retrieval classifier on ``data_dir``'s ``{split}_captions.pt`` + features (``eval_split``:
    R@1 of that split, ``eval_keys`` its images, ``caption_index`` its candidates, at each save); checkpoints
    ``out_dir/checkpoint-N/``; returns the last."""
    options = (options or RetrievalOptions()).check()
    if caption_index is not None and not eval_split:
        raise VinvlError("--caption-index: it lists the candidates of the evaluation split; give --eval-split too")
    tok = task_tokenizer(vocab, init)
    o = options
    data = load_split(data_dir, split, features, captions_per_image=o.captions_per_image, od_label_type=o.od_label_type,
                      tags=o.add_od_labels)
    held_out = None
    if eval_split:
        held_out = load_split(data_dir, eval_split, features, eval_keys, o.captions_per_image,
                              od_label_type=o.od_label_type, caption_index=caption_index, tags=o.add_od_labels)
    task = RetrievalTask(data, options, tok, init=init, model_config=model_config, eval_split=held_out, log=log)
    return Trainer(task, options, out_dir, log=log, callbacks=callbacks).train(resume=resume)


# -- evaluation ---------------------------------------------------------------------------------
def split_inputs(data: RetrievalSplit, builder: RetrievalTensorizer) -> tuple[list[Image], list[list[int]], list[int]]:
    """Images (regions, tag ids), caption ids and the caption -> image index map of a split."""
    images = [(data.images.regions(k), builder.ids(data.images.tags(k)) if builder.add_od_labels else []) for k in data.keys]
    texts, owner = data.flat_captions()
    return images, [builder.ids(t) for t in texts], owner


def evaluate(checkpoint: PathLike, data_dir: PathLike, split: str = "test", keys_file: Optional[PathLike] = None,
             features: Optional[PathLike] = None, cfg: Optional[RetrievalOptions] = None, folds: int = 1,
             batch_size: int = 256, device: Device = "cpu", precision: str = "fp32", two_stage: int = 0,
             first_stage: str = "tags", compare_full: bool = False, scores_out: Optional[PathLike] = None,
             log: Optional[Callable[[str], None]] = None, caption_index: Optional[PathLike] = None) -> dict[str, Any]:
    """R@1/5/10 both ways on ``split`` (``keys_file``: e.g. ``test_img_keys.tsv`` for COCO 5K), from
    the full score matrix; ``folds``: also the mean over that many image folds (5: COCO 1K);
    ``two_stage`` k > 0: the full model only on each side's top-k ``first_stage`` candidates
    (:func:`first_stage_scores`; ``compare_full``: also the full matrix, and the recall lost); ``caption_index``
    (the original's ``--eval_caption_index_file``): only each image's listed candidates, image->text R@K among them.
    The input layout (``RetrievalOptions.RESTORED``) follows the one rule: ``cfg``'s explicit values, else the
    checkpoint's."""
    log = log or stderr_log
    clash = [flag for flag, on in (("--two-stage", two_stage), ("--folds", folds > 1), ("--compare-full", compare_full))
             if on]
    if caption_index is not None and clash:
        # the original asserts the same against --cross_image_eval: the index replaces the full matrix these read
        raise VinvlError(f"--caption-index: scores only its candidates, so {clash[0]} (over the full score matrix) "
                         "does not apply")
    loaded = from_pretrained(checkpoint, OscarForSequenceClassification, cfg or RetrievalOptions(), device, log)
    model, tok, folder, cfg = loaded.model, loaded.tokenizer, loaded.checkpoint.path, loaded.options
    data = load_split(data_dir, split, features, keys_file, cfg.captions_per_image, od_label_type=cfg.od_label_type,
                      caption_index=caption_index, tags=cfg.add_od_labels)
    builder = tensorizer(tok, cfg)
    images, captions, owner = split_inputs(data, builder)
    scorer = FastScorer(model, builder, batch_size=batch_size, precision=precision)
    step = max(len(images) // 20, 1)
    progress = lambda i, n: log(f"scored {i}/{n} images") if i % step == 0 or i == n else None  # noqa: E731
    result: dict[str, Any] = {"checkpoint": str(folder), "split": split, "images": len(images), "captions": len(captions)}
    if data.candidates is not None:
        t0 = time.perf_counter()
        scores, rec = candidate_scores(scorer, images, captions, data.candidates, owner, progress)
        result.update(caption_index=str(caption_index), seconds=round(time.perf_counter() - t0, 2), **rec)
        if scores_out is not None:
            saved = {"scores": scores, "image_keys": list(data.keys), "caption_to_image": owner,
                     "candidates": data.candidates}
            atomic_write(scores_out, lambda tmp: torch.save(saved, tmp))
        return result
    full = None
    if not two_stage or compare_full:
        t0 = time.perf_counter()
        full = scorer.score_matrix(images, captions, progress=progress)
        result["seconds"] = round(time.perf_counter() - t0, 2)
        result.update(recall_at_k(full, owner))
        if folds > 1:
            result[f"{folds}_fold"] = fold_recall(full, owner, folds)
    if two_stage:
        t0 = time.perf_counter()
        two, pairs = two_stage_scores(scorer, images, captions, two_stage, two_stage, first_stage, progress=progress)
        rec = recall_at_k(two, owner)
        entry: dict[str, Any] = {"top_k": two_stage, "first_stage": first_stage, "pairs_scored": pairs,
                                 "pairs_full": len(images) * len(captions),
                                 "seconds": round(time.perf_counter() - t0, 2), **rec}
        if full is not None:
            entry["recall_lost"] = {d: {k: round(result[d][k] - rec[d][k], 6) for k in rec[d]} for d in rec}
        else:
            result.update(rec)
        if folds > 1:
            entry[f"{folds}_fold"] = fold_recall(two, owner, folds)
        result["two_stage"] = entry
    if scores_out is not None:
        scores = {"scores": full if full is not None else two, "image_keys": list(data.keys), "caption_to_image": owner}
        atomic_write(scores_out, lambda tmp: torch.save(scores, tmp))
    return result


# -- ranking new inputs -------------------------------------------------------------------------
def rank(checkpoint: PathLike, features: PathLike, captions: Sequence[str], image_keys: Optional[Sequence[Key]] = None,
         top: int = 5, batch_size: int = 256, device: Device = "cpu", precision: str = "fp32",
         log: Optional[Callable[[str], None]] = None, options: Optional[RetrievalOptions] = None) -> dict[str, Any]:
    """:meth:`RetrievalTask.predict` of a checkpoint over the images of a feature folder (or ``image_keys`` of it)
    and ``captions`` (the input layout by the one rule: ``options``' explicit values, else the checkpoint's)."""
    opts = copy.copy(options) if options is not None else RetrievalOptions()
    opts.eval_batch_size, opts.precision = batch_size, precision
    loaded = from_pretrained(checkpoint, OscarForSequenceClassification, opts, device, log or stderr_log)
    task = RetrievalTask(None, loaded.options, loaded.tokenizer, log=log, top=top)
    src = open_images(features, od_label_type=loaded.options.od_label_type, tags=loaded.options.add_od_labels)
    keys = list(image_keys) if image_keys is not None else src.keys()
    return task.predict(loaded.model, src, keys, captions)


def naive_vs_fast(model: OscarForSequenceClassification, builder: RetrievalTensorizer, images: Sequence[Image],
                  captions: Sequence[Sequence[int]]) -> float:
    """Largest |fast - naive| score difference (a self-check used by the tests and the benchmark)."""
    a = naive_scores(model, builder, images, captions)
    b = FastScorer(model, builder).score_matrix(images, captions)
    return float((a - b).abs().max())


__all__ = [
    "RetrievalTask", "positive_score", "naive_scores", "FastScorer", "embed", "first_stage_scores", "two_stage_scores",
    "candidate_scores", "tensorizer", "train", "split_inputs", "evaluate", "rank", "naive_vs_fast",
]
