"""Oscar+ image-text retrieval (the original ``oscar/run_retrieval.py``): a cross-encoder that reads
``[CLS] caption [SEP] tags [SEP]`` + regions and says whether they match.

- Inputs as the original builds them: the caption cut to ``max_seq_length - 2`` tokens first, the
  tags fill what is left; the full (``CLR``) 2-D mask over text and regions.
- Training (:func:`train`): every (image, caption) item gives a matched pair (label 1) and an
  unmatched one (label 0): with probability 1/2 the caption of another image, else the caption
  with another image's regions and tags; a binary classifier (``num_labels 2``, softmax
  cross-entropy: the original's defaults), through :func:`vinvl.oscar.finetune.train_loop`.
- Scores: the original ranks by the softmax probability of "matched"; here the score is its logit
  ``l1 - l0`` (``sigmoid`` of it is that probability, so the order is the same, without the ties of
  probabilities that round to 1.0 in float32); ``num_labels 1`` ranks by the logit, as the original.
- :class:`FastScorer` computes the full score matrix with the same numbers as one pair at a time
  through the model (to float rounding): each image's regions go through ``img_embedding`` once and
  are shared by a batch of captions, captions are sorted by length so padding is short, regions
  are not padded, and the last layer runs only the ``[CLS]`` query (the classifier reads nothing else).
- :func:`recall_at_k`: R@1/5/10 both ways from a score matrix; :func:`two_stage_scores`: a cheap
  first stage (mean-pooled embeddings) and the full model on the top candidates.
"""

from __future__ import annotations

import math
import os
import random
import sys
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence, Union

import torch
import torch.nn.functional as F

from ..errors import VinvlError
from .tensorize import load_tokenizer, pad_regions as _regions
from .modeling import OscarConfig, OscarForPretraining, OscarForSequenceClassification, additive_mask
from .retrieval_data import Key, RetrievalSplit, load_split

PathLike = Union[str, os.PathLike]
Image = tuple[Any, list[int]]  # (region features [N, dim], tag token ids)


@dataclass
class RetrievalConfig:
    """The original ``run_retrieval.py`` options (names in ``docs/reproduce.md``)."""

    max_seq_length: int = 70
    max_img_seq_length: int = 50
    add_od_labels: bool = True
    captions_per_image_train: int = 5
    captions_per_image_eval: int = 5
    num_labels: int = 2
    loss_type: str = "sfmx"
    drop_out: float = 0.1
    batch_size: int = 32  # matched pairs per step per process; each adds an unmatched one
    gradient_accumulation_steps: int = 1
    learning_rate: float = 2e-5
    weight_decay: float = 0.05
    adam_epsilon: float = 1e-8
    warmup_steps: int = 0
    scheduler: str = "linear"
    max_steps: int = 0  # 0: num_train_epochs decide
    num_train_epochs: int = 20
    max_grad_norm: float = 1.0
    seed: int = 88
    save_steps: int = 5000
    log_steps: int = 20


# -- inputs -------------------------------------------------------------------------------------
class PairBuilder:
    """Token ids of captions and tags, and the model inputs of a pair as the original builds them."""

    def __init__(self, tokenizer: Any, max_seq_length: int = 70, max_img_seq_length: int = 50,
                 add_od_labels: bool = True) -> None:
        """``tokenizer``: from :func:`vinvl.oscar.inputs.load_tokenizer`."""
        self.tok = tokenizer
        self.max_seq = max_seq_length
        self.max_img = max_img_seq_length
        self.add_od_labels = add_od_labels

    def ids(self, text: str) -> list[int]:
        """Word-piece ids of ``text`` (no special tokens)."""
        return self.tok.convert_tokens_to_ids(self.tok.tokenize(text)) if text else []

    def compose(self, caption: Sequence[int], tags: Sequence[int]) -> tuple[list[int], list[int]]:
        """``[CLS] caption [SEP] tags [SEP]`` ids and token types: the caption first cut to
        ``max_seq_length - 2``, the tags to what is left (none, not even their ``[SEP]``, when no room)."""
        t = self.tok
        ids = [t.cls_token_id] + list(caption[: self.max_seq - 2]) + [t.sep_token_id]
        types = [0] * len(ids)
        room = self.max_seq - len(ids) - 1
        if self.add_od_labels and tags and room >= 0:
            b = list(tags[:room])
            ids += b + [t.sep_token_id]
            types += [1] * (len(b) + 1)
        return ids, types

    def pair(self, caption: Sequence[int], tags: Sequence[int], regions: Any) -> dict[str, torch.Tensor]:
        """One pair's padded inputs: ``input_ids``, ``token_type_ids``, ``attention_mask``, ``img_feats``."""
        ids, types = self.compose(caption, tags)
        pad = self.max_seq - len(ids)
        feats, n_img = _regions(regions, self.max_img)
        return {
            "input_ids": torch.tensor(ids + [self.tok.pad_token_id] * pad),
            "token_type_ids": torch.tensor(types + [0] * pad),
            "attention_mask": torch.tensor([1] * len(ids) + [0] * pad + [1] * n_img + [0] * (self.max_img - n_img)),
            "img_feats": feats,
        }


def positive_score(logits: torch.Tensor) -> torch.Tensor:
    """The "matched" score of each row of logits: ``l1 - l0`` (two classes) or the logit (one)."""
    logits = logits.float()
    return logits[:, 1] - logits[:, 0] if logits.shape[1] == 2 else logits[:, 0]


# -- scoring ------------------------------------------------------------------------------------
@torch.no_grad()
def naive_scores(model: OscarForSequenceClassification, builder: PairBuilder, images: Sequence[Image],
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


def _cls_only_layer(layer: torch.nn.Module, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """A BERT layer's output at position 0 only: keys and values from every position, the query,
    output projection and feed-forward for ``[CLS]`` alone (the pooler reads nothing else)."""
    att = layer.attention.self
    b, n, h = x.shape
    heads, dh = att.num_attention_heads, att.attention_head_size
    first = x[:, :1]
    q = att.query(first).view(b, 1, heads, dh).transpose(1, 2)
    k = att.key(x).view(b, n, heads, dh).transpose(1, 2)
    v = att.value(x).view(b, n, heads, dh).transpose(1, 2)
    o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask.to(q.dtype), scale=att.scaling)
    a = layer.attention.output(o.transpose(1, 2).reshape(b, 1, h), first)
    return layer.output(layer.intermediate(a), a)


class FastScorer:
    """The full cross-encoder score matrix, fast and with the scores of :func:`naive_scores`.

    ``amp`` (default: on for CUDA) runs the encoder under bf16 autocast; on CPU it stays float32.
    ``pad_multiple`` (default: 8 on CUDA, 1 on CPU) rounds each batch's text length up (masked
    padding, so the scores do not change): fewer distinct shapes for the attention kernels.
    """

    def __init__(self, model: OscarForSequenceClassification, builder: PairBuilder, batch_size: int = 256,
                 amp: Optional[bool] = None, pad_multiple: Optional[int] = None) -> None:
        self.model = model.eval()
        self.builder = builder
        self.batch_size = batch_size
        self.device = next(model.parameters()).device
        self.amp = (self.device.type == "cuda") if amp is None else amp
        self.pad_multiple = pad_multiple or (8 if self.device.type == "cuda" else 1)
        if self.amp and self.device.type != "cuda":
            raise VinvlError("bf16 autocast scoring is for CUDA devices only (CPU scores stay float32)")
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
        bert.config._attn_implementation = "sdpa"
        feats, n_img = _regions(regions, self.builder.max_img)
        order = self._order.to(self.device)
        if subset is not None:
            keep = torch.zeros(len(self._lens), dtype=torch.bool, device=self.device)
            keep[subset.to(self.device)] = True
            order = order[keep[order]]
        out = torch.full((len(self._lens),), float("nan"), device=self.device)
        amp = torch.autocast("cuda", dtype=torch.bfloat16) if self.amp else nullcontext()
        with amp:
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
                keys = torch.cat([pos < n_text[:, None], torch.ones(b, n_img, dtype=torch.bool, device=self.device)], 1)
                mask = additive_mask(keys, torch.bfloat16 if self.amp else x.dtype)
                layers = bert.encoder.layer
                for layer in layers[:-1]:
                    y = layer(x, attention_mask=mask)
                    x = y[0] if isinstance(y, tuple) else y
                x = _cls_only_layer(layers[-1], x, mask)
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


# -- ranking ------------------------------------------------------------------------------------
def retrieval_ranks(scores: torch.Tensor, caption_to_image: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """0-based ranks: per image, of its best-scored caption among all captions; per caption, of its image.

    Ties count against the right answer (a wrong item scoring equal is ranked first), so a constant
    scorer gets nothing right; missing scores (NaN) rank last.
    """
    s = torch.nan_to_num(scores.float(), nan=-math.inf)
    n_img, n_cap = s.shape
    owner = torch.as_tensor(list(caption_to_image), dtype=torch.long)
    if owner.shape != (n_cap,) or (n_cap and (owner.min() < 0 or owner.max() >= n_img)):
        raise VinvlError(f"caption_to_image must give one image index in 0..{n_img - 1} per caption ({n_cap})")
    own = s[owner, torch.arange(n_cap)]
    i2t = torch.empty(n_img, dtype=torch.long)
    t2i = torch.zeros(n_cap, dtype=torch.long)
    for a in range(0, n_img, 256):  # row blocks: a 5K x 25K matrix needs no 125M-entry masks
        blk = s[a : a + 256]
        right = owner[None] == torch.arange(a, a + len(blk))[:, None]
        best = torch.where(right, blk, torch.tensor(-math.inf)).amax(1)
        wrong_ahead = (blk >= best[:, None]) & ~right
        i2t[a : a + len(blk)] = wrong_ahead.sum(1)
        t2i += ((blk >= own[None]) & ~right).sum(0)
    return i2t, t2i


def recall_at_k(scores: torch.Tensor, caption_to_image: Sequence[int], ks: Sequence[int] = (1, 5, 10)) -> dict[str, dict[str, float]]:
    """R@k image->text and text->image, the original's ``evaluate`` output layout."""
    i2t, t2i = retrieval_ranks(scores, caption_to_image)
    return {
        "i2t_retrieval": {f"R@{k}": float((i2t < k).float().mean()) for k in ks},
        "t2i_retrieval": {f"R@{k}": float((t2i < k).float().mean()) for k in ks},
    }


def fold_recall(scores: torch.Tensor, caption_to_image: Sequence[int], folds: int = 5) -> dict[str, dict[str, float]]:
    """R@k averaged over ``folds`` consecutive image blocks (COCO 1K = 5 folds of the 5K test)."""
    owner = torch.as_tensor(list(caption_to_image))
    n = scores.shape[0]
    if folds < 1 or n % folds:
        raise VinvlError(f"{n} images do not split into {folds} equal folds")
    size = n // folds
    parts = []
    for f in range(folds):
        cols = torch.nonzero((owner >= f * size) & (owner < (f + 1) * size)).flatten()
        parts.append(recall_at_k(scores[f * size : (f + 1) * size][:, cols], (owner[cols] - f * size).tolist()))
    return {d: {k: sum(p[d][k] for p in parts) / folds for k in parts[0][d]} for d in parts[0]}


# -- two-stage --------------------------------------------------------------------------------
@torch.no_grad()
def embed(model: OscarForSequenceClassification, builder: PairBuilder, images: Sequence[Image],
          captions: Sequence[Sequence[int]], batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """First-stage embeddings: the model's last hidden states mean-pooled over a caption alone
    (``[CLS] caption [SEP]``) and over an image alone (``[CLS] [SEP] tags [SEP]`` + regions), L2-normalised."""
    model.eval()
    bert, dev = model.bert, next(model.parameters()).device

    def pool(items: list[dict[str, torch.Tensor]], with_img: bool) -> torch.Tensor:
        x = {k: torch.stack([it[k] for it in items]).to(dev) for k in items[0]}
        o = bert(x["input_ids"], x["token_type_ids"], x["attention_mask"], x["img_feats"] if with_img else None)
        m = x["attention_mask"][:, : o.sequence_output.shape[1]].unsqueeze(-1).float()
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


# -- model --------------------------------------------------------------------------------------
def _fresh_classifier(model: OscarForSequenceClassification) -> None:
    """BERT's initialisation for a new head (normal(0, initializer_range), zero bias)."""
    for m in model.classifier.modules():
        if isinstance(m, torch.nn.Linear):
            m.weight.data.normal_(0.0, model.config.initializer_range)
            m.bias.data.zero_()


def model_for_training(init: Optional[PathLike], cfg: RetrievalConfig, config: Optional[OscarConfig] = None,
                       vocab_size: Optional[int] = None) -> OscarForSequenceClassification:
    """A retrieval classifier from a checkpoint (a classification one, or a pretraining one whose
    ``bert`` is taken with a new head), or a fresh one of ``config``; the original's config overrides."""
    if init is None:
        mc = config or OscarConfig()
        if vocab_size is not None:
            mc.vocab_size = vocab_size
        src = None
    else:
        try:
            src = OscarForSequenceClassification.from_original(init)
        except VinvlError as first:
            try:
                src = OscarForPretraining.from_original(init)
            except VinvlError:
                raise first from None
        mc = OscarConfig(**src.config.to_dict())
    keep_head = isinstance(src, OscarForSequenceClassification) and src.config.num_labels == cfg.num_labels
    mc.num_labels, mc.loss_type, mc.hidden_dropout_prob = cfg.num_labels, cfg.loss_type, cfg.drop_out
    model = OscarForSequenceClassification(mc)
    if src is not None:
        model.bert.load_state_dict(src.bert.state_dict())
        if keep_head:
            model.classifier.load_state_dict(src.classifier.state_dict())
        else:
            _fresh_classifier(model)
    return model


def restore_settings(checkpoint: PathLike, cfg: RetrievalConfig, log: Callable[[str], None]) -> RetrievalConfig:
    """The input settings a checkpoint was trained with (``training_args.json`` of vinvl, or the
    original's ``training_args.bin``) override ``cfg``'s, as the original's ``restore_training_settings``."""
    from .checkpoint import training_settings

    args = training_settings(checkpoint)
    for name in ("max_seq_length", "max_img_seq_length", "add_od_labels"):
        value = args.typed(name, getattr(cfg, name))
        if value != getattr(cfg, name):
            log(f"override {name} with the training value: {getattr(cfg, name)} -> {value}")
            setattr(cfg, name, value)
    return cfg


# -- training -----------------------------------------------------------------------------------
class RetrievalTrainSet:
    """The original's ``RetrievalDataset`` for training: items are (image, caption) pairs, each
    giving a matched and an unmatched example; random choices are seeded by (seed, epoch, item)."""

    def __init__(self, split: RetrievalSplit, builder: PairBuilder, seed: int = 88) -> None:
        if len(split.keys) < 2:
            raise VinvlError("retrieval training needs at least 2 images (negatives come from other images)")
        self.split, self.builder, self.seed = split, builder, seed
        self.items = [(i, c) for i, k in enumerate(split.keys) for c in range(len(split.captions[k]))]
        self._cap_ids: dict[tuple[int, int], list[int]] = {}
        self._tag_ids: dict[int, list[int]] = {}

    def __len__(self) -> int:
        return len(self.items)

    def _caption(self, i: int, c: int) -> list[int]:
        if (i, c) not in self._cap_ids:
            self._cap_ids[i, c] = self.builder.ids(self.split.captions[self.split.keys[i]][c])
        return self._cap_ids[i, c]

    def _image(self, i: int) -> tuple[Any, list[int]]:
        key = self.split.keys[i]
        if i not in self._tag_ids:
            self._tag_ids[i] = self.builder.ids(self.split.images.tags(key)) if self.builder.add_od_labels else []
        return self.split.images.regions(key), self._tag_ids[i]

    def example(self, index: int, epoch: int) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Item ``index``'s matched and unmatched inputs."""
        rng = random.Random(f"{self.seed}/{epoch}/{index}")
        i, c = self.items[index]
        regions, tags = self._image(i)
        cap = self._caption(i, c)
        pos = self.builder.pair(cap, tags, regions)
        j = rng.randrange(len(self.split.keys) - 1)
        j += j >= i  # another image, uniformly
        if rng.random() <= 0.5:
            neg = self.builder.pair(self._caption(j, rng.randrange(len(self.split.captions[self.split.keys[j]]))), tags, regions)
        else:
            r2, t2 = self._image(j)
            neg = self.builder.pair(cap, t2, r2)
        return pos, neg

    def batches(self, cfg: RetrievalConfig, start: int, rank: int = 0, world: int = 1) -> Iterator[dict[str, torch.Tensor]]:
        """Rank ``rank``'s batches from global batch ``start`` on: the matched examples, then the unmatched."""
        from .finetune import epoch_chunks

        for epoch, chunk in epoch_chunks(len(self), cfg.batch_size, cfg.seed, start, rank, world):
            pairs = [self.example(k, epoch) for k in chunk]
            ex = [p for p, _ in pairs] + [n for _, n in pairs]
            batch = {k: torch.stack([e[k] for e in ex]) for k in ex[0]}
            labels = torch.tensor([1] * len(pairs) + [0] * len(pairs))
            batch["labels"] = labels if cfg.num_labels == 2 else labels.float()
            yield batch


def train(data_dir: PathLike, out_dir: PathLike, cfg: RetrievalConfig = RetrievalConfig(),
          init: Optional[PathLike] = None, vocab: Optional[PathLike] = None, model_config: Optional[OscarConfig] = None,
          features: Optional[PathLike] = None, split: str = "train", resume: bool = False,
          log: Optional[Callable[[str], None]] = None) -> Path:
    """Fine-tune a retrieval classifier on ``data_dir``'s ``{split}_captions.pt`` + features;
    checkpoints ``out_dir/checkpoint-N/`` (original layout, ``training_args.json``); returns the last."""
    from .finetune import dist_info, latest_checkpoint, loop_config, train_loop

    log = log or (lambda m: print(m, file=sys.stderr, flush=True))
    if vocab is None and init is None:
        raise VinvlError("give a vocabulary (vocab.txt) or a checkpoint to start from (it holds one)")
    if init is not None:
        from .checkpoint import require_checkpoint

        folder = require_checkpoint(init, "initial checkpoint (--init)")
        vocab = vocab or folder  # a run folder: its newest checkpoint's vocab.txt
    tok = load_tokenizer(vocab)
    rank, world = dist_info()
    data = load_split(data_dir, split, features, captions_per_image=cfg.captions_per_image_train)
    builder = PairBuilder(tok, cfg.max_seq_length, cfg.max_img_seq_length, cfg.add_od_labels)
    ds = RetrievalTrainSet(data, builder, cfg.seed)
    torch.manual_seed(cfg.seed)
    model = model_for_training(init, cfg, model_config, tok.vocab_size)
    last = latest_checkpoint(out_dir) if resume else None
    if last is not None:
        model = OscarForSequenceClassification.from_original(last)
    steps = cfg.max_steps or cfg.num_train_epochs * max(len(ds) // (cfg.batch_size * world), 1) // cfg.gradient_accumulation_steps
    loop = loop_config(cfg, max_steps=steps)
    log(f"retrieval training: {len(data.keys)} images, {len(ds)} captions, {steps} steps of {cfg.batch_size} pairs")

    def step_fn(module: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        o = module(**batch)
        pred = o.logits.argmax(-1) if o.logits.shape[1] > 1 else (o.logits[:, 0] >= 0).long()
        return o.loss, {"acc": (pred == batch["labels"].long()).float().mean().item()}

    return train_loop(model, lambda s: ds.batches(cfg, s, rank, world), step_fn, loop, out_dir, tokenizer=tok,
                      resume_from=last, log=log, training_args=asdict(cfg))


def load_checkpoint(checkpoint: PathLike, device: str = "cpu") -> tuple[OscarForSequenceClassification, Any, Path]:
    """A retrieval checkpoint (folder or run folder: its newest ``checkpoint-N/``), its tokenizer, its folder."""
    from .checkpoint import require_checkpoint

    folder = require_checkpoint(checkpoint)
    model = OscarForSequenceClassification.from_original(folder).to(device).eval()
    return model, load_tokenizer(folder), folder


# -- evaluation ---------------------------------------------------------------------------------
def split_inputs(data: RetrievalSplit, builder: PairBuilder) -> tuple[list[Image], list[list[int]], list[int]]:
    """Images (regions, tag ids), caption ids and the caption -> image index map of a split."""
    images = [(data.images.regions(k), builder.ids(data.images.tags(k)) if builder.add_od_labels else []) for k in data.keys]
    texts, owner = data.flat_captions()
    return images, [builder.ids(t) for t in texts], owner


def evaluate(checkpoint: PathLike, data_dir: PathLike, split: str = "test", keys_file: Optional[PathLike] = None,
             features: Optional[PathLike] = None, cfg: Optional[RetrievalConfig] = None, folds: int = 1,
             batch_size: int = 256, device: str = "cpu", amp: Optional[bool] = None, two_stage: int = 0,
             first_stage: str = "tags", compare_full: bool = False, scores_out: Optional[PathLike] = None,
             log: Optional[Callable[[str], None]] = None) -> dict[str, Any]:
    """R@1/5/10 both ways on ``split`` (``keys_file``: e.g. ``test_img_keys.tsv`` for COCO 5K), from
    the full score matrix; ``folds``: also the mean over that many image folds (5: COCO 1K);
    ``two_stage`` k > 0: the full model only on each side's top-k ``first_stage`` candidates
    (:func:`first_stage_scores`; ``compare_full``: also the full matrix, and the recall lost)."""
    log = log or (lambda m: print(m, file=sys.stderr, flush=True))
    model, tok, folder = load_checkpoint(checkpoint, device)
    cfg = restore_settings(folder, cfg or RetrievalConfig(), log)
    data = load_split(data_dir, split, features, keys_file, cfg.captions_per_image_eval)
    builder = PairBuilder(tok, cfg.max_seq_length, cfg.max_img_seq_length, cfg.add_od_labels)
    images, captions, owner = split_inputs(data, builder)
    scorer = FastScorer(model, builder, batch_size=batch_size, amp=amp)
    step = max(len(images) // 20, 1)
    progress = lambda i, n: log(f"scored {i}/{n} images") if i % step == 0 or i == n else None  # noqa: E731
    import time

    result: dict[str, Any] = {"checkpoint": str(folder), "split": split, "images": len(images), "captions": len(captions)}
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
        torch.save({"scores": full if full is not None else two, "image_keys": list(data.keys),
                    "caption_to_image": owner}, scores_out)
    return result


# -- ranking new inputs -------------------------------------------------------------------------
def rank(checkpoint: PathLike, features: PathLike, captions: Sequence[str], image_keys: Optional[Sequence[Key]] = None,
         top: int = 5, batch_size: int = 256, device: str = "cpu", log: Optional[Callable[[str], None]] = None) -> dict[str, Any]:
    """For each image of a feature folder (or ``image_keys`` of it), its ``top`` captions; for each
    caption, its ``top`` images; every entry ``{"caption"|"image": ..., "score": ...}``."""
    from .retrieval_data import open_images

    log = log or (lambda m: print(m, file=sys.stderr, flush=True))
    model, tok, folder = load_checkpoint(checkpoint, device)
    cfg = restore_settings(folder, RetrievalConfig(), log)
    builder = PairBuilder(tok, cfg.max_seq_length, cfg.max_img_seq_length, cfg.add_od_labels)
    src = open_images(features)
    if image_keys is None:
        store = getattr(src, "store", None)
        image_keys = store.features.tsv.keys() if store is not None else list(src.features)
    keys = list(image_keys)
    if not keys or not captions:
        raise VinvlError("rank needs at least one image and one caption")
    images = [(src.regions(k), builder.ids(src.tags(k)) if cfg.add_od_labels else []) for k in keys]
    s = FastScorer(model, builder, batch_size=batch_size).score_matrix(images, [builder.ids(c) for c in captions])
    kc, ki = min(top, len(captions)), min(top, len(keys))
    by_image = {str(k): [{"caption": captions[j], "score": float(s[i, j])} for j in s[i].topk(kc).indices.tolist()]
                for i, k in enumerate(keys)}
    by_caption = {c: [{"image": str(keys[i]), "score": float(s[i, j])} for i in s[:, j].topk(ki).indices.tolist()]
                  for j, c in enumerate(captions)}
    return {"images": by_image, "captions": by_caption}


def naive_vs_fast(model: OscarForSequenceClassification, builder: PairBuilder, images: Sequence[Image],
                  captions: Sequence[Sequence[int]]) -> float:
    """Largest |fast - naive| score difference (a self-check used by the tests and the benchmark)."""
    a = naive_scores(model, builder, images, captions)
    b = FastScorer(model, builder).score_matrix(images, captions)
    return float((a - b).abs().max())


__all__ = [
    "RetrievalConfig", "PairBuilder", "positive_score", "naive_scores", "FastScorer", "retrieval_ranks",
    "recall_at_k", "fold_recall", "embed", "first_stage_scores", "two_stage_scores", "model_for_training", "restore_settings",
    "RetrievalTrainSet", "train", "load_checkpoint", "split_inputs", "evaluate", "rank", "naive_vs_fast",
]
