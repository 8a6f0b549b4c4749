"""The one module that knows ``transformers``' BERT internals.

Everything else in :mod:`vinvl.oscar` composes BERT blocks through these names, so a change of
``transformers`` (attribute names such as ``attention_head_size`` and ``scaling``, the attention
function registry, ``config._attn_implementation``) is fixed here alone.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn
from transformers import BertConfig
from transformers.models.bert.modeling_bert import (
    ALL_ATTENTION_FUNCTIONS,
    BertEmbeddings,
    BertEncoder,
    BertLMPredictionHead,
    BertOnlyMLMHead,
    BertPooler,
    eager_attention_forward,
)

__all__ = [
    "BertConfig", "BertEmbeddings", "BertEncoder", "BertLMPredictionHead", "BertOnlyMLMHead", "BertPooler",
    "use_attention", "attention_kind", "heads", "query", "keys_values", "attend", "finish_layer", "run_layer",
    "init_bert_weights",
]


def use_attention(config: Any, kind: str) -> None:
    """Select the attention implementation the BERT layers run: ``"sdpa"`` or ``"eager"`` (attention weights)."""
    config._attn_implementation = kind


def attention_kind(config: Any) -> str:
    """The attention implementation the layers will run (SDPA unless eager was chosen)."""
    return getattr(config, "_attn_implementation", None) or "sdpa"


def heads(layer: nn.Module) -> tuple[int, int, float]:
    """``(number of heads, head size, score scaling)`` of a BERT layer's self-attention."""
    att = layer.attention.self
    return att.num_attention_heads, att.attention_head_size, att.scaling


def _split(layer: nn.Module, x: torch.Tensor) -> tuple[int, ...]:
    return (*x.shape[:-1], -1, layer.attention.self.attention_head_size)


def query(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The layer's queries of ``x [B, N, H]`` as ``[B, heads, N, head size]``."""
    return layer.attention.self.query(x).view(_split(layer, x)).transpose(1, 2)


def keys_values(layer: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The layer's keys and values of ``x [B, N, H]``, each ``[B, heads, N, head size]``."""
    att, shape = layer.attention.self, _split(layer, x)
    return att.key(x).view(shape).transpose(1, 2), att.value(x).view(shape).transpose(1, 2)


def attend(layer: nn.Module, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Optional[torch.Tensor],
           config: Any) -> torch.Tensor:
    """Attention of ``q`` over ``k``/``v`` with an additive ``mask`` through the configured implementation
    (attention dropout in training mode, as the layer's own forward): ``[B, Nq, H]``."""
    att = layer.attention.self
    fn = ALL_ATTENTION_FUNCTIONS.get_interface(attention_kind(config), eager_attention_forward)
    ctx, _ = fn(att, q, k, v, mask, dropout=att.dropout.p if att.training else 0.0, scaling=att.scaling)
    return ctx.reshape(*q.shape[:1], q.shape[2], -1).contiguous()


def finish_layer(layer: nn.Module, ctx: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The rest of a BERT layer after attention: output projection + residual LayerNorm, then the feed-forward."""
    h = layer.attention.output(ctx, x)
    return layer.output(layer.intermediate(h), h)


def run_layer(layer: nn.Module, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """A whole BERT layer on ``x`` with an additive mask (its own forward)."""
    out = layer(x, attention_mask=mask)
    return out[0] if isinstance(out, tuple) else out


@torch.no_grad()
def init_bert_weights(module: nn.Module, initializer_range: float) -> None:
    """The original's ``BertPreTrainedModel.init_weights``: linear and embedding weights normal(0, range),
    biases zero, LayerNorm weight 1 and bias 0 (``module.apply`` it)."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        module.weight.normal_(mean=0.0, std=initializer_range)
    elif isinstance(module, nn.LayerNorm):
        module.weight.fill_(1.0)
        module.bias.zero_()
    if isinstance(module, nn.Linear) and module.bias is not None:
        module.bias.zero_()
