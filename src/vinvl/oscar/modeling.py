"""Oscar+ models on HuggingFace ``transformers`` BERT blocks, loading the original checkpoints unchanged.

The original (microsoft/Oscar ``modeling_bert.py`` on pytorch-transformers 1.x) differs from a
plain ``BertModel`` in three ways that decide its numbers (../shared/reference/oscar/README.md):
regions enter through ``img_embedding`` (Linear 2054 -> hidden) and an optional LayerNorm with
no position or token-type embedding; one mask covers ``[text ; regions]`` and may be 3-D (one
row per query); and masks become ``(1 - m) * -10000`` added to the scores, not ``finfo.min``.
So the word embeddings, encoder layers, pooler and heads are transformers' modules, composed
here with that region path and mask rule; attention itself is transformers' (SDPA, or eager
when attention weights are asked for).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any, Iterator, Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import VinvlError
from . import checkpoint as _ckpt
from . import transformers_adapter as hf
from .configuration import OscarConfig

PathLike = Union[str, os.PathLike]
MASK_VALUE = -10000.0  # the original's additive mask value; finfo.min differs at fully masked rows
_SKIP_INIT = [False]


@contextlib.contextmanager
def no_init() -> Iterator[None]:
    """Build models without the BERT initialisation (their weights are about to be loaded)."""
    before = _SKIP_INIT[0]
    _SKIP_INIT[0] = True
    try:
        yield
    finally:
        _SKIP_INIT[0] = before


def additive_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``[B, N]`` (keys) or ``[B, N, N]`` (per query) 0/1 mask -> ``[B, 1, 1|N, N]`` additive mask."""
    m = mask[:, None, None, :] if mask.dim() == 2 else mask[:, None, :, :]
    return (1.0 - m.to(dtype)) * MASK_VALUE


@dataclass
class OscarOutput:
    """What every Oscar model returns (fields a head does not produce stay ``None``)."""

    sequence_output: Optional[torch.Tensor] = None
    pooled_output: Optional[torch.Tensor] = None
    hidden_states: Optional[tuple[torch.Tensor, ...]] = None
    attentions: Optional[tuple[torch.Tensor, ...]] = None
    logits: Optional[torch.Tensor] = None
    loss: Optional[torch.Tensor] = None
    prediction_scores: Optional[torch.Tensor] = None
    seq_relationship_scores: Optional[torch.Tensor] = None
    masked_lm_loss: Optional[torch.Tensor] = None
    text_embedding_output: Optional[torch.Tensor] = None
    img_embedding_output: Optional[torch.Tensor] = None


class _Saving:
    """Writing the original and the HF layouts, reading them back, and the original's weight initialisation."""

    def post_init(self) -> None:
        """BERT's initialisation of every weight (the original's ``init_weights``), unless about to be loaded."""
        if not _SKIP_INIT[0]:
            self.apply(lambda m: hf.init_bert_weights(m, self.config.initializer_range))

    def save_original(self, folder: PathLike, tokenizer: Any = None):
        """``pytorch_model.bin`` + ``config.json`` (+ ``vocab.txt``), as the original writes them."""
        return _ckpt.save_original(self, folder, tokenizer)

    def save_pretrained(self, folder: PathLike):
        """``model.safetensors`` + ``config.json``."""
        return _ckpt.save_pretrained(self, folder)

    @classmethod
    def from_pretrained(cls, folder: PathLike):
        """Load what ``save_pretrained`` wrote."""
        with no_init():
            return _ckpt.load_pretrained(cls, folder)

    @classmethod
    def from_original(cls, source: Union[PathLike, dict], config: Optional[OscarConfig] = None):
        """Load the original layout strictly: a folder (``pytorch_model.bin`` + ``config.json``), a run folder
        (its newest ``checkpoint-N/``), a released zip or a state dict (with ``config``)."""
        with no_init():
            return _ckpt.load_original(cls, source, config)


class OscarModel(_Saving, nn.Module):
    """BertImgModel: text embeddings + the region path, the encoder over both, the pooler."""

    def __init__(self, config: OscarConfig) -> None:
        super().__init__()
        self.config = config
        self.embeddings = hf.BertEmbeddings(config)
        self.img_embedding = nn.Linear(config.img_feature_dim, config.hidden_size)
        if config.use_img_layernorm:
            self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.img_layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.encoder = hf.BertEncoder(config)
        self.pooler = hf.BertPooler(config)
        self.post_init()

    def forward(
        self,
        input_ids: torch.Tensor,
        token_type_ids: Optional[torch.Tensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        img_feats: Optional[torch.Tensor] = None,
        position_ids: Optional[torch.Tensor] = None,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
    ) -> OscarOutput:
        """Encode ``[text ; regions]``; ``attention_mask`` is 2-D ``[B, N]`` or 3-D ``[B, N, N]`` over both."""
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        if position_ids is None:
            position_ids = torch.arange(input_ids.shape[1], device=input_ids.device)[None].expand_as(input_ids)
        text = self.embeddings(input_ids=input_ids, token_type_ids=token_type_ids, position_ids=position_ids)
        x, img = text, None
        if img_feats is not None:
            img = self.img_embedding(img_feats)
            if self.config.use_img_layernorm:
                img = self.LayerNorm(img)
            img = self.dropout(img)
            x = torch.cat([text, img], dim=1)
        if attention_mask is None:
            attention_mask = torch.ones(x.shape[:2], device=x.device)
        mask = additive_mask(attention_mask, x.dtype)
        # Attention weights exist only on the eager path; SDPA otherwise (same numbers to ~1e-7).
        hf.use_attention(self.config, "eager" if output_attentions else "sdpa")
        hidden, attentions = [x], []
        hooks = []
        if output_attentions:
            for layer in self.encoder.layer:
                hooks.append(layer.attention.self.register_forward_hook(lambda m, i, o: attentions.append(o[1])))
        try:
            for layer in self.encoder.layer:
                x = hf.run_layer(layer, x, mask)
                hidden.append(x)
        finally:
            for h in hooks:
                h.remove()
        return OscarOutput(
            sequence_output=x,
            pooled_output=self.pooler(x),
            hidden_states=tuple(hidden) if output_hidden_states else None,
            attentions=tuple(attentions) if output_attentions else None,
            text_embedding_output=text,
            img_embedding_output=img,
        )


class _OscarHead(_Saving, nn.Module):
    """A head model holding an ``OscarModel`` as ``bert`` (the original's attribute name)."""

    def __init__(self, config: OscarConfig) -> None:
        super().__init__()
        self.config = config
        with no_init():  # the head initialises every weight once, its own and the encoder's
            self.bert = OscarModel(config)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)


def _classifier(config: OscarConfig, in_dim: int, multiple_choice: bool = False) -> nn.Module:
    labels = config.num_labels
    if config.classifier == "linear":
        return nn.Linear(in_dim, labels)
    if config.classifier != "mlp":
        raise VinvlError(f"classifier {config.classifier!r}: expected 'linear' or 'mlp'")
    hidden = config.hidden_size * config.cls_hidden_scale
    layers: list[nn.Module] = [nn.Linear(in_dim, hidden), nn.ReLU()]
    if multiple_choice and config.use_img_layernorm:
        layers.append(nn.LayerNorm(hidden, eps=config.layer_norm_eps))
    layers.append(nn.Linear(hidden, labels))
    return nn.Sequential(*layers)


def _classification_loss(logits: torch.Tensor, labels: torch.Tensor, config: OscarConfig,
                         loss_type: Optional[str] = None) -> torch.Tensor:
    """The original's ImageBert* losses; ``loss_type`` (default the config's) as its ``model.loss_type``."""
    loss_type = loss_type or config.loss_type
    if config.num_labels == 1:
        return F.mse_loss(logits.view(-1), labels.view(-1).to(logits.dtype))
    if loss_type == "bce":
        return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype)) * labels.shape[1]
    if loss_type == "kl":
        return F.kl_div(F.log_softmax(logits, dim=-1), labels.to(logits.dtype), reduction="batchmean")
    return F.cross_entropy(logits.view(-1, config.num_labels), labels.view(-1))


class OscarForSequenceClassification(_OscarHead):
    """ImageBertForSequenceClassification: pooled output -> linear or MLP classifier (VQA, GQA, retrieval)."""

    def __init__(self, config: OscarConfig) -> None:
        super().__init__(config)
        self.classifier = _classifier(config, config.hidden_size)
        self.post_init()

    def forward(self, input_ids, token_type_ids=None, attention_mask=None, img_feats=None, labels=None,
                loss_type: Optional[str] = None, **kw) -> OscarOutput:
        """Logits over the labels, and with ``labels`` the loss: ``loss_type`` (bce, kl, xe), default the config's
        (``run_vqa.py --adjust_loss`` switches it during training, as its ``model.loss_type``)."""
        out = self.bert(input_ids, token_type_ids, attention_mask, img_feats, **kw)
        out.logits = self.classifier(self.dropout(out.pooled_output))
        if labels is not None:
            out.loss = _classification_loss(out.logits, labels, self.config, loss_type)
        return out


class OscarForMultipleChoice(_OscarHead):
    """ImageBertForMultipleChoice (NLVR2): the choices' pooled outputs concatenated -> classifier."""

    def __init__(self, config: OscarConfig) -> None:
        super().__init__(config)
        self.classifier = _classifier(config, config.num_choice * config.hidden_size, multiple_choice=True)
        self.post_init()

    def forward(self, input_ids, token_type_ids=None, attention_mask=None, img_feats=None, labels=None, **kw) -> OscarOutput:
        b, c = input_ids.shape[:2]
        flat = lambda t: None if t is None else t.reshape(b * c, *t.shape[2:])  # noqa: E731
        out = self.bert(flat(input_ids), flat(token_type_ids), flat(attention_mask), flat(img_feats), **kw)
        pooled = self.dropout(out.pooled_output).reshape(b, c * self.config.hidden_size)
        out.logits = self.classifier(pooled)
        if labels is not None:
            out.loss = _classification_loss(out.logits, labels, self.config)
        return out


class OscarForCaptioning(_OscarHead):
    """BertForImageCaptioning: an MLM head over the text positions (tied to the word embeddings or not)."""

    def __init__(self, config: OscarConfig) -> None:
        super().__init__(config)
        self.cls = hf.BertOnlyMLMHead(config)
        self.cls.predictions.decoder.bias = self.cls.predictions.bias  # one bias, as in the original
        if config.tie_weights:
            self.cls.predictions.decoder.weight = self.bert.embeddings.word_embeddings.weight
        self.post_init()

    def forward(
        self, input_ids, token_type_ids=None, attention_mask=None, img_feats=None, masked_pos=None, masked_ids=None,
        position_ids=None, masked_index=None, **kw,
    ) -> OscarOutput:
        """Training (``masked_pos``/``masked_ids``): logits and loss at the masked text positions; ``masked_index``
        ``[B, M]`` (the masked positions, padded): logits ``[B, M, V]`` at those positions, a fixed shape (no host
        synchronisation); else all text logits."""
        out = self.bert(input_ids, token_type_ids, attention_mask, img_feats, position_ids=position_ids, **kw)
        text = out.sequence_output[:, : input_ids.shape[1]]
        if masked_index is not None:
            out.logits = self.cls(text.gather(1, masked_index[..., None].expand(-1, -1, text.shape[-1])))
        elif masked_pos is not None:
            picked = text[masked_pos == 1]
            out.logits = self.cls(picked)
            if masked_ids is not None:
                target = masked_ids[masked_ids != 0]
                out.loss = F.cross_entropy(out.logits.float(), target)
        else:
            out.logits = self.cls(text)
        return out


class PretrainingHeads(nn.Module):
    """``cls.predictions`` (MLM) and ``cls.seq_relationship`` (N-way contrastive, not BERT's 2-way)."""

    def __init__(self, config: OscarConfig) -> None:
        super().__init__()
        self.predictions = hf.BertLMPredictionHead(config)
        self.seq_relationship = nn.Linear(config.hidden_size, config.num_contrast_classes)

    def forward(self, sequence_output: torch.Tensor, pooled_output: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.predictions(sequence_output), self.seq_relationship(pooled_output)


class OscarForPretraining(_OscarHead):
    """BertImgForPreTraining: MLM over every position + the N-way contrastive (image-text) head."""

    def __init__(self, config: OscarConfig) -> None:
        config.num_labels = config.num_contrast_classes
        super().__init__(config)
        self.cls = PretrainingHeads(config)
        self.cls.predictions.decoder.bias = self.cls.predictions.bias  # one bias, as in the original
        self.cls.predictions.decoder.weight = self.bert.embeddings.word_embeddings.weight  # always tied
        self.post_init()

    def forward(
        self, input_ids, token_type_ids=None, attention_mask=None, img_feats=None, masked_lm_labels=None,
        next_sentence_label=None, **kw,
    ) -> OscarOutput:
        out = self.bert(input_ids, token_type_ids, attention_mask, img_feats, **kw)
        out.prediction_scores, out.seq_relationship_scores = self.cls(out.sequence_output, out.pooled_output)
        if masked_lm_labels is not None and next_sentence_label is not None:
            v = self.config.vocab_size
            labels = masked_lm_labels.view(-1)
            # the mean over masked tokens, 0 when nothing is masked (cross-entropy's mean would be nan); no host sync
            total = F.cross_entropy(out.prediction_scores.view(-1, v), labels, ignore_index=-1, reduction="sum")
            out.masked_lm_loss = total / (labels != -1).sum().clamp(min=1)
            nsp = F.cross_entropy(out.seq_relationship_scores.view(-1, self.config.num_contrast_classes), next_sentence_label.view(-1))
            out.loss = out.masked_lm_loss + nsp
        return out
