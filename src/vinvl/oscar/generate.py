"""Caption decoding with Oscar+ captioning models: greedy and beam search, as the original decodes.

Each step feeds ``[CLS] + prefix + [MASK]`` (position ids ``0..L-1``, token type 0) with the
decode mask cut to those ``L`` text rows/columns plus the region rows/columns, and reads the
``[MASK]`` position. At the last step the chosen token is written as ``[SEP]`` while its
log-probability still counts; a hypothesis scores ``sum(log p) / length ** length_penalty``
(``length`` = generated tokens). Beam search starts from one live beam (the others at
``-1e9``), takes the top candidates over ``beams x vocab`` and keeps hypotheses that end in
``[SEP]`` early as finished (the original's ``BeamHypotheses``).

``use_cache=True`` keeps every layer's keys and values of the generated tokens and of the
regions, feeding only ``[last token, MASK]`` per step, and reorders the whole history by beam
each step, so it gives the uncached result (the original's cached beam search reordered only
the newest entries and drifts; see ../shared/reference/oscar/README.md).

:func:`generate_constrained` is the original's constrained beam search (NoCaps; :mod:`vinvl.oscar.cbs`) through
the same step, cached or not, with ``beams x FSM states`` rows per image.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from . import cbs
from . import transformers_adapter as hf
from .modeling import OscarForCaptioning, additive_mask


@dataclass
class DecodeOutput:
    """Decoded ids ``[B, num_return, max_length]`` (``[CLS] ... [SEP]``, PAD after), their scores, and per-step
    inputs and logits when asked for."""

    token_ids: torch.Tensor
    logprobs: torch.Tensor
    steps: list[dict[str, torch.Tensor]] = field(default_factory=list)


@dataclass
class ConstrainedOutput(DecodeOutput):
    """:class:`DecodeOutput` of constrained beam search, with the state each caption ended in and every state's beams."""

    states: list[int] = field(default_factory=list)
    beams: Optional[cbs.CBSOutput] = None


def _cut_mask(mask: torch.Tensor, length: int, text_len: int) -> torch.Tensor:
    """The decode mask ``[B, T+R, T+R]`` cut to the first ``length`` text rows/columns plus the regions."""
    idx = torch.cat([torch.arange(length), torch.arange(text_len, mask.shape[-1])]).to(mask.device)
    return mask[:, idx][:, :, idx]


def _penalise(logits: torch.Tensor, prefix: torch.Tensor, penalty: float) -> torch.Tensor:
    if penalty == 1.0:
        return logits
    seen = torch.zeros_like(logits, dtype=torch.bool).scatter_(1, prefix, True)
    return torch.where(seen, torch.where(logits > 0, logits / penalty, logits * penalty), logits)


class _Cache:
    """Per-layer keys/values of the generated text tokens; the regions' are computed once (once per image with
    ``rows_per_image``: the inputs are per image, and each image's rows stay its own when reordered)."""

    def __init__(
        self,
        model: OscarForCaptioning,
        img_feats: torch.Tensor,
        region_mask: torch.Tensor,
        tags: Optional[tuple[torch.Tensor, torch.Tensor]] = None,
        rows_per_image: int = 1,
    ) -> None:
        self.model = model
        self.rows_per_image = rows_per_image
        bert = model.bert
        img = bert.img_embedding(img_feats)
        if bert.config.use_img_layernorm:
            img = bert.LayerNorm(img)
        if tags is not None:
            ids, pos = tags
            emb = bert.embeddings(input_ids=ids, token_type_ids=torch.ones_like(ids), position_ids=pos)
            img = torch.cat([emb, img], dim=1)
        self.region_kv: list[tuple[torch.Tensor, torch.Tensor]] = []
        x = img
        # Tags and regions attend only to tags and regions in the decode mask, so their states do not
        # depend on the caption: their keys and values are computed once.
        for layer in bert.encoder.layer:
            k, v = self._kv(layer, x)
            self.region_kv.append((k, v))
            x = self._layer(layer, x, k, v, additive_mask(region_mask, x.dtype))
        self.text_kv: list[Optional[tuple[torch.Tensor, torch.Tensor]]] = [None] * len(bert.encoder.layer)

    @staticmethod
    def _kv(layer, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return hf.keys_values(layer, x)

    def _layer(self, layer, x: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        ctx = hf.attend(layer, hf.query(layer, x), k, v, mask, self.model.config)
        return hf.finish_layer(layer, ctx, x)

    def step(self, tokens: torch.Tensor, positions: torch.Tensor, mask_rows: torch.Tensor) -> torch.Tensor:
        """Hidden states of ``tokens`` ``[N, 2]`` (last real token, MASK); keeps only the real token's K/V."""
        bert = self.model.bert
        x = bert.embeddings(input_ids=tokens, token_type_ids=torch.zeros_like(tokens), position_ids=positions)
        add = additive_mask(mask_rows, x.dtype)
        for i, layer in enumerate(bert.encoder.layer):
            k_new, v_new = self._kv(layer, x)
            hist = self.text_kv[i]
            k_hist = k_new[:, :, :1] if hist is None else torch.cat([hist[0], k_new[:, :, :1]], dim=2)
            v_hist = v_new[:, :, :1] if hist is None else torch.cat([hist[1], v_new[:, :, :1]], dim=2)
            rk, rv = self.region_kv[i]
            if self.rows_per_image > 1:
                rk, rv = rk.repeat_interleave(self.rows_per_image, 0), rv.repeat_interleave(self.rows_per_image, 0)
            rk = rk.expand(len(x), -1, -1, -1) if rk.shape[0] != len(x) else rk
            rv = rv.expand(len(x), -1, -1, -1) if rv.shape[0] != len(x) else rv
            k = torch.cat([k_hist, k_new[:, :, 1:], rk], dim=2)
            v = torch.cat([v_hist, v_new[:, :, 1:], rv], dim=2)
            self.text_kv[i] = (k_hist, v_hist)
            x = self._layer(layer, x, k, v, add)
        return x

    def reorder(self, index: torch.Tensor) -> None:
        """Follow the beams: the whole history, not only the newest entries."""
        self.text_kv = [None if kv is None else (kv[0][index], kv[1][index]) for kv in self.text_kv]
        if self.rows_per_image > 1:
            return
        self.region_kv = [(k[index] if k.shape[0] > 1 else k, v[index] if v.shape[0] > 1 else v) for k, v in self.region_kv]


class _Stepper:
    """One decoding step for rows of prefixes (``[CLS]`` + tokens so far): ``prefix + [MASK]`` (+ the tags) through the
    model, or through the cache; returns the input and its text logits. ``rows_per_image``: the inputs are per image,
    each the source of that many consecutive rows."""

    def __init__(self, model: OscarForCaptioning, feats: torch.Tensor, mask: torch.Tensor, max_length: int,
                 mask_token_id: int, tag_ids: Optional[torch.Tensor], tag_pos: Optional[torch.Tensor], use_cache: bool,
                 rows_per_image: int = 1) -> None:
        self.model, self.T, self.mask_token_id, self.n = model, max_length, mask_token_id, rows_per_image
        self.cache = None
        if use_cache:
            self.cache = _Cache(model, feats, mask[:, max_length:, max_length:],
                                None if tag_ids is None else (tag_ids, tag_pos), rows_per_image)
        elif rows_per_image > 1:  # the model runs on every row
            feats, mask = feats.repeat_interleave(rows_per_image, 0), mask.repeat_interleave(rows_per_image, 0)
            if tag_ids is not None:
                tag_ids, tag_pos = tag_ids.repeat_interleave(rows_per_image, 0), tag_pos.repeat_interleave(rows_per_image, 0)
        self.feats, self.mask, self.tag_ids, self.tag_pos = feats, mask, tag_ids, tag_pos

    def __call__(self, seqs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        N, L, dev = seqs.shape[0], seqs.shape[1] + 1, seqs.device
        inp = torch.cat([seqs, torch.full((N, 1), self.mask_token_id, dtype=torch.long, device=dev)], dim=1)
        cut = _cut_mask(self.mask, L, self.T)
        if self.cache is None:
            pos = torch.arange(L, device=dev)[None].expand(N, L)
            types = torch.zeros_like(inp)
            full = inp
            if self.tag_ids is not None:
                full = torch.cat([inp, self.tag_ids], dim=1)
                pos = torch.cat([pos, self.tag_pos], dim=1)
                types = torch.cat([types, torch.ones_like(self.tag_ids)], dim=1)
            out = self.model(full, types, cut, self.feats, position_ids=pos)
            return inp, out.logits[:, :L]
        rows = cut[:, L - 2 : L] if L >= 2 else cut[:, :L]
        if self.n > 1:
            rows = rows.repeat_interleave(self.n, 0)
        hidden = self.cache.step(inp[:, -2:], torch.arange(L - 2, L, device=dev)[None].expand(N, 2), rows)
        return inp, self.model.cls(hidden)

    def next_logits(self, seqs: torch.Tensor) -> torch.Tensor:
        """The next token's logits ``[N, V]`` after each row's prefix."""
        return self(seqs)[1][:, -1]

    def reorder(self, rows: torch.Tensor) -> None:
        """Row ``i`` continues row ``rows[i]``."""
        if self.cache is not None:
            self.cache.reorder(rows)


@torch.no_grad()
def generate(
    model: OscarForCaptioning,
    img_feats: torch.Tensor,
    attention_mask: torch.Tensor,
    max_length: int,
    num_beams: int = 1,
    bos_token_id: int = 2,
    eos_token_id: int = 3,
    mask_token_id: int = 4,
    pad_token_id: int = 0,
    length_penalty: float = 1.0,
    repetition_penalty: float = 1.0,
    num_return_sequences: int = 1,
    use_cache: bool = False,
    record_steps: bool = False,
    od_label_ids: Optional[torch.Tensor] = None,
    od_position_start: Optional[int] = None,
) -> DecodeOutput:
    """Decode captions for ``img_feats [B, R, D]`` with the decode mask ``attention_mask [B, N, N]``.

    ``N = max_length (+ tags) + R``: with ``od_label_ids [B, Lt]`` (the image's tags, ``[SEP]``
    and padding, as :meth:`CaptionTensorizer.decode_inputs` builds them) the tags follow the caption
    with token type 1 and position ids from ``od_position_start`` (default ``max_length``; the original
    passes ``max(max_seq_a_length, max_length)``).
    """
    if num_return_sequences > num_beams:
        raise ValueError(f"num_return_sequences {num_return_sequences} > num_beams {num_beams}")
    model.eval()
    B, R = img_feats.shape[:2]
    K, T, dev = num_beams, max_length, img_feats.device
    feats = img_feats.repeat_interleave(K, dim=0)
    mask = attention_mask.repeat_interleave(K, dim=0).to(dev)
    Lt = 0 if od_label_ids is None else od_label_ids.shape[1]
    tag_ids = None if od_label_ids is None else od_label_ids.repeat_interleave(K, dim=0).to(dev)
    start = max_length if od_position_start is None else od_position_start
    tag_pos = torch.arange(start, start + Lt, device=dev)[None].expand(B * K, Lt)
    seqs = torch.full((B * K, 1), bos_token_id, dtype=torch.long, device=dev)
    scores = torch.zeros(B, K, device=dev)
    scores[:, 1:] = -1e9
    finished: list[list[tuple[float, torch.Tensor]]] = [[] for _ in range(B)]
    done = torch.zeros(B, dtype=torch.bool, device=dev)
    steps: list[dict[str, torch.Tensor]] = []
    stepper = _Stepper(model, feats, mask, T, mask_token_id, tag_ids, tag_pos, use_cache)
    for t in range(T - 1):
        L = t + 2
        inp, logits = stepper(seqs)
        step_logits = logits[:, -1]
        if record_steps:
            steps.append({"input_ids": inp, "class_logits": logits})
        logp = F.log_softmax(_penalise(step_logits, seqs, repetition_penalty), dim=-1)
        V = logp.shape[-1]
        last = t == T - 2
        cand = (scores.view(B * K, 1) + logp).view(B, K * V)
        top, idx = cand.topk(2 * K if not last else K, dim=1)
        new_seqs, new_scores, src_rows = [], torch.full((B, K), -1e9, device=dev), []
        for b in range(B):
            kept = 0
            for s, i in zip(top[b].tolist(), idx[b].tolist()):
                src, tok = divmod(i, V)
                prefix = seqs[b * K + src]
                if done[b]:
                    break
                if last or tok == eos_token_id:
                    ids = torch.cat([prefix, prefix.new_tensor([eos_token_id])])
                    finished[b].append((s / (len(ids) - 1) ** length_penalty, ids))
                    if last and kept < K:
                        kept += 1
                        src_rows.append(b * K + src)
                        new_seqs.append(prefix.new_tensor(tok))
                        new_scores[b, kept - 1] = s
                    continue
                src_rows.append(b * K + src)
                new_seqs.append(prefix.new_tensor(tok))
                new_scores[b, kept] = s
                kept += 1
                if kept == K:
                    break
            while kept < K:  # a finished row keeps dummy beams
                src_rows.append(b * K)
                new_seqs.append(seqs.new_tensor(pad_token_id))
                kept += 1
            if len(finished[b]) >= K and not last:
                # BeamHypotheses.is_done: no live beam can beat the K-th best finished one any more.
                kth = sorted((f[0] for f in finished[b]), reverse=True)[K - 1]
                best_live = new_scores[b].max().item() / (L - 1) ** length_penalty
                done[b] = done[b] or kth >= best_live
        rows = torch.tensor(src_rows, device=dev)
        seqs = torch.cat([seqs[rows], torch.stack(new_seqs)[:, None]], dim=1)
        scores = new_scores
        stepper.reorder(rows)
        if bool(done.all()):
            break
    ids = torch.full((B, num_return_sequences, T), pad_token_id, dtype=torch.long, device=dev)
    lp = torch.zeros(B, num_return_sequences, device=dev)
    for b in range(B):
        best = sorted(finished[b], key=lambda f: -f[0])[:num_return_sequences]
        for r, (s, seq) in enumerate(best):
            ids[b, r, : len(seq)] = seq
            lp[b, r] = s
    return DecodeOutput(ids, lp, steps)


@torch.no_grad()
def generate_constrained(
    model: OscarForCaptioning,
    img_feats: torch.Tensor,
    attention_mask: torch.Tensor,
    max_length: int,
    fsm: torch.Tensor,
    num_constraints: Sequence[int],
    num_beams: int = 5,
    min_constraints: int = 2,
    bos_token_id: int = 2,
    eos_token_id: int = 3,
    mask_token_id: int = 4,
    pad_token_id: int = 0,
    use_cache: bool = False,
    od_label_ids: Optional[torch.Tensor] = None,
    od_position_start: Optional[int] = None,
    first_step_group: Optional[int] = None,
) -> ConstrainedOutput:
    """Constrained beam search (:mod:`vinvl.oscar.cbs`) over ``fsm [B, S, S, V]`` (each image's constraints), inputs as
    :func:`generate`: the best caption with at least ``min(num_constraints, min_constraints)`` constraints, ``[B, 1,
    max_length]`` (``max_length - 1`` tokens, then ``[SEP]``), its score (sum of log-probs / (tokens + 1)), and the
    state it ended in, the beams of every state. ``first_step_group``: as :func:`~vinvl.oscar.cbs.constrained_beam_search`."""
    model.eval()
    B, dev = img_feats.shape[0], img_feats.device
    S = fsm.shape[1]
    tag_ids = tag_pos = None
    if od_label_ids is not None:
        tag_ids = od_label_ids.to(dev)
        start = max_length if od_position_start is None else od_position_start
        tag_pos = torch.arange(start, start + tag_ids.shape[1], device=dev)[None].expand(B, -1)
    stepper = _Stepper(model, img_feats, attention_mask.to(dev), max_length, mask_token_id, tag_ids, tag_pos, use_cache,
                       rows_per_image=S * num_beams)
    out = cbs.constrained_beam_search(stepper.next_logits, stepper.reorder, fsm.to(dev), num_beams, max_length,
                                      bos_token_id, eos_token_id, first_step_group)
    ids, scores, states = cbs.select_best(out, num_constraints, min_constraints, eos_token_id)
    return ConstrainedOutput(ids[:, None], scores[:, None], states=states, beams=out)


def _filter(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Top-k, then nucleus (top-p) filtering: the rest set to -inf (the original's ``top_k_top_p_filtering``)."""
    if top_k > 0:
        kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        order = logits.sort(dim=-1, descending=True)
        drop = order.values.softmax(-1).cumsum(-1) > top_p
        drop[..., 1:] = drop[..., :-1].clone()  # keep the first token over the threshold too
        drop[..., 0] = False
        logits = logits.masked_fill(drop.scatter(-1, order.indices, drop), float("-inf"))
    return logits


def sample(
    model: OscarForCaptioning,
    img_feats: torch.Tensor,
    attention_mask: torch.Tensor,
    max_length: int,
    num_samples: int = 1,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    bos_token_id: int = 2,
    eos_token_id: int = 3,
    mask_token_id: int = 4,
    pad_token_id: int = 0,
    od_label_ids: Optional[torch.Tensor] = None,
    od_position_start: Optional[int] = None,
    generator: Optional[torch.Generator] = None,
) -> DecodeOutput:
    """Sample ``num_samples`` captions per image with gradients kept (self-critical training).

    As the original's sampling (``do_sample``, no beams): ``max_length - 1`` steps, each token drawn
    from the softmax of the (temperature-scaled, filtered) logits; a finished caption continues with
    PAD; an unfinished one gets ``[SEP]`` as its last token. ``logprobs [B, num_samples]`` is the mean
    log-probability of the caption's tokens up to and including its ``[SEP]``, differentiable; the
    model's mode (train: dropout on) is left as it is. Inputs as :func:`generate`.
    """
    B = img_feats.shape[0]
    N, T, dev = B * num_samples, max_length, img_feats.device
    feats = img_feats.repeat_interleave(num_samples, dim=0)
    mask = attention_mask.repeat_interleave(num_samples, dim=0).to(dev)
    tags = None
    if od_label_ids is not None:
        ids = od_label_ids.repeat_interleave(num_samples, dim=0).to(dev)
        start = max_length if od_position_start is None else od_position_start
        tags = (ids, torch.arange(start, start + ids.shape[1], device=dev)[None].expand(N, ids.shape[1]))
    cache = _Cache(model, feats, mask[:, T:, T:], tags)
    seqs = torch.full((N, 1), bos_token_id, dtype=torch.long, device=dev)
    alive = torch.ones(N, dtype=torch.bool, device=dev)
    logps, alives = [], []
    for t in range(T - 1):
        L = t + 2
        inp = torch.cat([seqs[:, -1:], torch.full((N, 1), mask_token_id, dtype=torch.long, device=dev)], dim=1)
        rows = _cut_mask(mask, L, T)[:, L - 2 : L]
        hidden = cache.step(inp, torch.arange(L - 2, L, device=dev)[None].expand(N, 2), rows)
        logits = _filter(model.cls(hidden)[:, -1].float() / temperature, top_k, top_p)
        with torch.no_grad():
            tok = torch.multinomial(logits.softmax(-1), 1, generator=generator).squeeze(1)
        logps.append(F.log_softmax(logits, dim=-1).gather(1, tok[:, None]).squeeze(1))
        alives.append(alive)
        tok = torch.where(alive, tok, torch.full_like(tok, pad_token_id))
        seqs = torch.cat([seqs, tok[:, None]], dim=1)
        alive = alive & (tok != eos_token_id)
    seqs[:, -1] = torch.where(alive, torch.full_like(seqs[:, -1], eos_token_id), seqs[:, -1])
    counted = torch.stack(alives, dim=1).float()
    mean_logp = (torch.stack(logps, dim=1) * counted).sum(1) / counted.sum(1)
    return DecodeOutput(seqs.view(B, num_samples, T), mean_logp.view(B, num_samples))
