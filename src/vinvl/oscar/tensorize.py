"""Model inputs exactly as the original Oscar scripts build them, from text, tags and region features.

- :class:`ClassificationTensorizer` (VQA, GQA, NLVR2 halves): ``[CLS] a [SEP] b [SEP]``
  with the pair truncated to ``max_seq_length - 3`` (longer side first), segment 0 then 1,
  PAD (segment 0) to ``max_seq_length``; regions cut to ``max_img_seq_length`` or padded
  with zeros; a 2-D mask over text and regions.
- :class:`CaptionTensorizer`: the caption in ``max_seq_a_length`` (``[CLS] ... [SEP]`` then PAD),
  tags after it up to ``max_seq_length``, and the 3-D mask: causal inside the caption, the
  caption sees tags and regions, tags and regions see each other only, padding rows empty.
  Training masks caption tokens (positions ``1..len-1``, so ``[SEP]`` too) as the original does,
  or at given positions; decoding inputs are ``[CLS] [MASK]... [SEP]`` with every caption
  position masked.
- :class:`RetrievalTensorizer` (``run_retrieval.py``): the caption cut to ``max_seq_length - 2`` first, the
  tags fill what is left; the mask of ``--att_mask_type`` (:func:`block_mask`): CLR a 1-D mask, CL/CR/LR 2-D.
- :class:`PretrainTensorizer` (``oscar_tsv.py``): ``[CLS] text_a [SEP] text_b [SEP]`` (or ``[CLS] text_a [SEP]``) with
  BERT's MLM masking.

Tokens come from a fast BERT word-piece tokenizer built on the checkpoint's ``vocab.txt``.
"""

from __future__ import annotations

import os
import random
import zipfile
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch

from ..errors import VinvlError
from ..training.checkpoints import natural_key
from .options import check_att_mask_type

PathLike = Union[str, os.PathLike]


def load_tokenizer(vocab: PathLike, do_lower_case: bool = True):
    """A fast BERT tokenizer (``transformers.BertTokenizerFast``) on a checkpoint's ``vocab.txt`` (file, folder or zip)."""
    from transformers import BertTokenizerFast

    path = Path(vocab)
    try:
        if path.suffix == ".zip" and path.is_file():
            with zipfile.ZipFile(path) as z:
                # the newest checkpoint folder's, as the weights (ep_107_1192087 after ep_67_588997)
                members = sorted((n for n in z.namelist() if n.endswith("vocab.txt")), key=natural_key)
                if not members:
                    raise VinvlError(f"{path}: no vocab.txt inside")
                name = f"{path}:{members[-1]}"
                words = z.read(members[-1]).decode("utf-8").splitlines()
        else:
            if path.is_dir():
                path = path / "vocab.txt"
            if not path.is_file():
                raise VinvlError(f"{path}: no such vocabulary file")
            name = str(path)
            words = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise VinvlError(f"{path}: cannot read the vocabulary ({e})") from None
    vocab = {w: i for i, w in enumerate(words)}  # the file's line order is the id order
    missing = [t for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]") if t not in vocab]
    if missing:
        raise VinvlError(f"{name}: not a BERT vocabulary (no {', '.join(missing)})")
    return BertTokenizerFast(vocab=vocab, do_lower_case=do_lower_case)


def pad_regions(img_feats: Union[np.ndarray, torch.Tensor], max_regions: int) -> tuple[torch.Tensor, int]:
    """``[max_regions, dim]`` float32 regions (cut, or zero-padded) and how many are real."""
    if isinstance(img_feats, torch.Tensor):
        x = img_feats.detach().to(torch.float32)
    else:
        x = torch.from_numpy(np.array(img_feats, dtype=np.float32))  # a copy: feature rows may be read-only views
    if x.ndim != 2:
        raise VinvlError(f"region features must be 2-D (regions x dim), got shape {tuple(x.shape)}")
    n = min(len(x), max_regions)
    out = torch.zeros(max_regions, x.shape[1])
    out[:n] = x[:n]
    return out, n


def truncate_pair(a: list, b: list, max_len: int) -> None:
    """Cut two token lists in place to ``max_len`` together, the longer one first (BERT's rule)."""
    while len(a) + len(b) > max_len:
        (a if len(a) > len(b) else b).pop()


class ClassificationTensorizer:
    """Inputs of the classification tasks (the original's ``run_vqa``/``run_gqa``/``run_retrieval`` layout)."""

    def __init__(self, tokenizer, max_seq_length: int = 128, max_img_seq_length: int = 50) -> None:
        """``tokenizer``: from :func:`load_tokenizer`."""
        self.tok = tokenizer
        self.max_seq_length = max_seq_length
        self.max_img_seq_length = max_img_seq_length

    def __call__(self, text_a: str, text_b: Optional[str], img_feats, with_b: Optional[bool] = None
                 ) -> dict[str, torch.Tensor]:
        """``input_ids``, ``token_type_ids``, ``attention_mask`` (text + regions) and ``img_feats``. ``with_b``:
        whether the original takes its text_b branch (``if example.text_b``), which cuts the pair to
        ``max_seq_length - 3`` even where text_b yields no token (NLVR2's tag dict); default: ``text_b`` is non-empty."""
        t = self.tok
        a = t.tokenize(text_a)
        b = t.tokenize(text_b) if text_b else []
        if bool(text_b) if with_b is None else with_b:
            truncate_pair(a, b, self.max_seq_length - 3)
        else:
            a = a[: self.max_seq_length - 2]
        tokens = [t.cls_token] + a + [t.sep_token]
        types = [0] * len(tokens)
        if b:
            tokens += b + [t.sep_token]
            types += [1] * (len(b) + 1)
        n_text = len(tokens)
        pad = self.max_seq_length - n_text
        ids = t.convert_tokens_to_ids(tokens) + [t.pad_token_id] * pad
        types += [0] * pad
        feats, n_img = pad_regions(img_feats, self.max_img_seq_length)
        mask = [1] * n_text + [0] * pad + [1] * n_img + [0] * (self.max_img_seq_length - n_img)
        return {
            "input_ids": torch.tensor(ids),
            "token_type_ids": torch.tensor(types),
            "attention_mask": torch.tensor(mask),
            "img_feats": feats,
        }


class CaptionTensorizer:
    """Inputs of captioning (training and decoding), the original's ``CaptionTensorizer``."""

    def __init__(
        self,
        tokenizer,
        max_img_seq_length: int = 50,
        max_seq_length: int = 70,
        max_seq_a_length: int = 40,
        mask_prob: float = 0.15,
        max_masked_tokens: int = 3,
    ) -> None:
        """Lengths as the original's options ``--max_img_seq_length --max_seq_length --max_seq_a_length``."""
        self.tok = tokenizer
        self.max_img = max_img_seq_length
        self.max_seq = max_seq_length
        self.max_a = max_seq_a_length
        self.mask_prob = mask_prob
        self.max_masked = max_masked_tokens

    def _text(self, caption_tokens: list[str], tags: Optional[str]) -> tuple[list[str], list[int], int, int]:
        t = self.tok
        tokens = [t.cls_token] + caption_tokens + [t.sep_token]
        types = [0] * len(tokens)
        a_len = len(tokens)
        if tags:
            pad_a = self.max_a - a_len
            tokens += [t.pad_token] * pad_a
            types += [0] * pad_a
            b = t.tokenize(tags)[: max(self.max_seq - len(tokens) - 1, 0)]
            tokens += b + [t.sep_token]
            types += [1] * (len(b) + 1)
        return tokens, types, a_len, len(tokens)

    def _mask3d(self, a_len: int, seq_len: int, n_img: int) -> torch.Tensor:
        n = self.max_seq + self.max_img
        m = torch.zeros(n, n, dtype=torch.long)
        ls, le = self.max_a, seq_len
        rs, re = self.max_seq, self.max_seq + n_img
        m[:a_len, :a_len] = torch.tril(torch.ones(a_len, a_len, dtype=torch.long))
        m[ls:le, ls:le] = 1
        m[rs:re, rs:re] = 1
        m[:a_len, ls:le] = 1
        m[:a_len, rs:re] = 1
        m[ls:le, rs:re] = 1
        m[rs:re, ls:le] = 1
        return m

    def __call__(
        self,
        caption: str,
        tags: Optional[str],
        img_feats,
        masked_positions: Optional[Sequence[int]] = None,
        rng: Optional[random.Random] = None,
    ) -> dict[str, torch.Tensor]:
        """Training inputs: ``masked_positions`` (into ``[CLS] caption [SEP]``) or the original's random choice."""
        t = self.tok
        cap = t.tokenize(caption)[: self.max_a - 2]
        tokens, types, a_len, seq_len = self._text(cap, tags)
        if masked_positions is None:
            rng = rng or random.Random()
            candidates = list(range(1, a_len))  # [SEP] may be masked too, as in the original
            rng.shuffle(candidates)
            n = min(max(round(self.mask_prob * a_len), 1), self.max_masked)
            positions = sorted(candidates[:n])
            replace = []
            for _ in positions:
                r = rng.random()
                replace.append("mask" if r <= 0.8 else ("random" if r <= 0.9 else "keep"))
        else:
            positions = sorted(masked_positions)
            if any(not 1 <= p < a_len for p in positions) or len(positions) > self.max_masked:
                raise VinvlError(f"masked positions {positions} must be in 1..{a_len - 1}, at most {self.max_masked}")
            replace = ["mask"] * len(positions)
        masked_ids = t.convert_tokens_to_ids([tokens[p] for p in positions])
        for p, how in zip(positions, replace):
            if how == "mask":
                tokens[p] = t.mask_token
            elif how == "random":
                tokens[p] = t.convert_ids_to_tokens((rng or random.Random()).randrange(t.vocab_size))
        pad = self.max_seq - seq_len
        ids = t.convert_tokens_to_ids(tokens) + [t.pad_token_id] * pad
        types += [0] * pad
        masked_pos = torch.zeros(self.max_seq, dtype=torch.long)
        masked_pos[positions] = 1
        feats, n_img = pad_regions(img_feats, self.max_img)
        return {
            "input_ids": torch.tensor(ids),
            "token_type_ids": torch.tensor(types),
            "attention_mask": self._mask3d(a_len, seq_len, n_img),
            "img_feats": feats,
            "masked_pos": masked_pos,
            "masked_ids": torch.tensor(masked_ids + [0] * (self.max_masked - len(masked_ids))),
        }

    def decode_inputs(self, tags: Optional[str], img_feats) -> dict[str, torch.Tensor]:
        """Decoding inputs: ``[CLS] [MASK]*(max_seq_a_length-2) [SEP]`` (+ tags) padded to ``max_seq_length``,
        every position masked; an image without tags gets PAD, masked out, in the tag slots (as the original),
        so it stacks with tagged images."""
        t = self.tok
        tokens, types, a_len, seq_len = self._text([t.mask_token] * (self.max_a - 2), tags)
        pad = self.max_seq - seq_len
        ids = t.convert_tokens_to_ids(tokens) + [t.pad_token_id] * pad
        types += [0] * pad
        feats, n_img = pad_regions(img_feats, self.max_img)
        return {
            "input_ids": torch.tensor(ids),
            "token_type_ids": torch.tensor(types),
            "attention_mask": self._mask3d(a_len, seq_len, n_img),
            "img_feats": feats,
            "masked_pos": torch.ones(self.max_seq, dtype=torch.long),
        }


CAPTION, LABELS, REGIONS, PADDING = 0, 1, 2, -1  # the parts of a retrieval input (block ids of block_mask)


def block_mask(blocks: torch.Tensor, att_mask_type: str) -> torch.Tensor:
    """``[..., N]`` part ids (:data:`CAPTION`, :data:`LABELS`, :data:`REGIONS`, :data:`PADDING`) -> the
    ``[..., N, N]`` 0/1 mask of ``run_retrieval.py``'s 2-D ``att_mask_type``: every part attends to itself, and the
    two parts the type names (``CL``, ``CR``, ``LR``; ``CLR`` all three) to each other; padding rows and columns 0."""
    check_att_mask_type(att_mask_type)
    allowed = torch.eye(3, dtype=torch.bool, device=blocks.device)
    parts = ["CLR".index(c) for c in att_mask_type]
    for a in parts:
        for b in parts:
            allowed[a, b] = True
    q, k = blocks[..., :, None], blocks[..., None, :]
    real = (q >= 0) & (k >= 0)
    return (real & allowed[q.clamp(min=0), k.clamp(min=0)]).long()


class RetrievalTensorizer:
    """Token ids of captions and tags, and the model inputs of a pair as ``run_retrieval.py`` builds them."""

    def __init__(self, tokenizer, max_seq_length: int = 70, max_img_seq_length: int = 50,
                 add_od_labels: bool = True, att_mask_type: str = "CLR") -> None:
        """``tokenizer``: from :func:`load_tokenizer`; ``att_mask_type``: the original's ``--att_mask_type``."""
        self.tok = tokenizer
        self.max_seq = max_seq_length
        self.max_img = max_img_seq_length
        self.add_od_labels = add_od_labels
        self.att_mask_type = check_att_mask_type(att_mask_type)

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

    def pair(self, caption: Sequence[int], tags: Sequence[int], regions) -> dict[str, torch.Tensor]:
        """One pair's padded inputs: ``input_ids``, ``token_type_ids``, ``attention_mask`` (``[max_seq +
        max_img]``, or ``[max_seq + max_img]^2`` for CL/CR/LR), ``img_feats``."""
        ids, types = self.compose(caption, tags)
        pad = self.max_seq - len(ids)
        feats, n_img = pad_regions(regions, self.max_img)
        if self.att_mask_type == "CLR":
            mask = torch.tensor([1] * len(ids) + [0] * pad + [1] * n_img + [0] * (self.max_img - n_img))
        else:
            # the token types are the parts: 0 for [CLS] caption [SEP] (the original's seq_a), 1 for tags [SEP]
            parts = types + [PADDING] * pad + [REGIONS] * n_img + [PADDING] * (self.max_img - n_img)
            mask = block_mask(torch.tensor(parts), self.att_mask_type)
        return {
            "input_ids": torch.tensor(ids + [self.tok.pad_token_id] * pad),
            "token_type_ids": torch.tensor(types + [0] * pad),
            "attention_mask": mask,
            "img_feats": feats,
        }


class PretrainTensorizer:
    """Pretraining inputs (``oscar_tsv.py``): ``[CLS] text_a [SEP] text_b [SEP]`` + regions, the pair cut to
    ``max_seq_length - 3`` (without text_b, the original's ``--use_b 0``: ``[CLS] text_a [SEP]``, text_a cut to
    ``max_seq_length - 2``); MLM masks each text token with ``mask_prob``: 80% ``[MASK]``, 10% a random token,
    10% kept; labels -1 elsewhere (regions included)."""

    def __init__(self, tokenizer, max_seq_length: int = 35, max_img_seq_length: int = 50, mask_prob: float = 0.15) -> None:
        self.tok = tokenizer
        self.max_seq, self.max_img, self.mask_prob = max_seq_length, max_img_seq_length, mask_prob

    def __call__(self, text_a: str, text_b: Optional[str], regions, label: int, rng: random.Random,
                 mask_b: bool = True) -> dict[str, torch.Tensor]:
        """The example's inputs, ``masked_lm_labels`` and ``next_sentence_label``; random choices from ``rng``.
        ``text_b`` None: no second segment; ``mask_b`` False: text_b is neither masked nor predicted (the
        original's ``--mask_loss_for_unmatched 0`` on a text_b of another image)."""
        tok = self.tok
        a, b = tok.tokenize(text_a), tok.tokenize(text_b) if text_b is not None else []
        if b:  # the original's `if tokens_b`: an empty second text is no segment
            truncate_pair(a, b, self.max_seq - 3)
        else:
            del a[self.max_seq - 2 :]
        tokens = [tok.cls_token] + a + [tok.sep_token] + (b + [tok.sep_token] if b else [])
        types = [0] * (len(a) + 2) + [1] * (len(tokens) - len(a) - 2)
        ids = tok.convert_tokens_to_ids(tokens)
        lm = [-1] * len(ids)
        special = {tok.cls_token_id, tok.sep_token_id}
        first_b = len(a) + 2 if not mask_b else len(ids)  # positions from here are not masked
        for p, t in enumerate(ids):
            if t in special or p >= first_b or rng.random() >= self.mask_prob:
                continue
            lm[p] = t
            u = rng.random()
            ids[p] = tok.mask_token_id if u < 0.8 else (rng.randrange(tok.vocab_size) if u < 0.9 else t)
        pad = self.max_seq - len(ids)
        img, n_img = pad_regions(regions, self.max_img)
        return {
            "input_ids": torch.tensor(ids + [tok.pad_token_id] * pad),
            "token_type_ids": torch.tensor(types + [0] * pad),
            "attention_mask": torch.tensor([1] * len(ids) + [0] * pad + [1] * n_img + [0] * (self.max_img - n_img)),
            "img_feats": img,
            "masked_lm_labels": torch.tensor(lm + [-1] * (pad + self.max_img)),
            "next_sentence_label": torch.tensor(label),
        }
