"""Model inputs exactly as the original Oscar scripts build them, from text, tags and region features.

- :class:`ClassificationTensorizer` (VQA, GQA, retrieval, NLVR2 halves): ``[CLS] a [SEP] b [SEP]``
  with the pair truncated to ``max_seq_length - 3`` (longer side first), segment 0 then 1,
  PAD (segment 0) to ``max_seq_length``; regions cut to ``max_img_seq_length`` or padded
  with zeros; a 2-D mask over text and regions.
- :class:`CaptionTensorizer`: the caption in ``max_seq_a_length`` (``[CLS] ... [SEP]`` then PAD),
  tags after it up to ``max_seq_length``, and the 3-D mask: causal inside the caption, the
  caption sees tags and regions, tags and regions see each other only, padding rows empty.
  Training masks caption tokens (positions ``1..len-1``, so ``[SEP]`` too) as the original does,
  or at given positions; decoding inputs are ``[CLS] [MASK]... [SEP]`` with every caption
  position masked.

Tokens come from a fast BERT word-piece tokenizer built on the checkpoint's ``vocab.txt``.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch

from ..errors import VinvlError

PathLike = Union[str, os.PathLike]


def load_tokenizer(vocab: PathLike, do_lower_case: bool = True):
    """A fast BERT tokenizer (``transformers.BertTokenizerFast``) on a checkpoint's ``vocab.txt`` (file, folder or zip)."""
    from transformers import BertTokenizerFast

    path = Path(vocab)
    try:
        if path.suffix == ".zip" and path.is_file():
            import zipfile

            with zipfile.ZipFile(path) as z:
                members = sorted(n for n in z.namelist() if n.endswith("vocab.txt"))
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


def _regions(img_feats: Union[np.ndarray, torch.Tensor], max_regions: int) -> tuple[torch.Tensor, int]:
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


def _truncate_pair(a: list[str], b: list[str], max_len: int) -> None:
    while len(a) + len(b) > max_len:
        (a if len(a) > len(b) else b).pop()


class ClassificationTensorizer:
    """Inputs of the classification tasks (the original's ``run_vqa``/``run_gqa``/``run_retrieval`` layout)."""

    def __init__(self, tokenizer, max_seq_length: int = 128, max_img_seq_length: int = 50) -> None:
        """``tokenizer``: from :func:`load_tokenizer`."""
        self.tok = tokenizer
        self.max_seq_length = max_seq_length
        self.max_img_seq_length = max_img_seq_length

    def __call__(self, text_a: str, text_b: Optional[str], img_feats) -> dict[str, torch.Tensor]:
        """``input_ids``, ``token_type_ids``, ``attention_mask`` (text + regions) and ``img_feats``."""
        t = self.tok
        a = t.tokenize(text_a)
        b = t.tokenize(text_b) if text_b else []
        if b:
            _truncate_pair(a, b, self.max_seq_length - 3)
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
        feats, n_img = _regions(img_feats, self.max_img_seq_length)
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
        feats, n_img = _regions(img_feats, self.max_img)
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
        feats, n_img = _regions(img_feats, self.max_img)
        return {
            "input_ids": torch.tensor(ids),
            "token_type_ids": torch.tensor(types),
            "attention_mask": self._mask3d(a_len, seq_len, n_img),
            "img_feats": feats,
            "masked_pos": torch.ones(self.max_seq, dtype=torch.long),
        }


def _row_dim(path: Path) -> int:
    """The region width of a feature TSV, from its first row (``key, n, base64`` or the caption variant)."""
    import json

    with open(path, "rb") as f:
        for line, raw in enumerate(f, 1):
            fields = raw.rstrip(b"\r\n").split(b"\t")
            try:
                if len(fields) == 2:
                    info = json.loads(fields[1])
                    n, blob = int(info["num_boxes"]), info["features"].encode()
                else:
                    n, blob = int(fields[1]), fields[2]
                floats = (len(blob.rstrip(b"=")) * 3 // 4) // 4
            except (ValueError, KeyError, IndexError, TypeError):
                raise VinvlError(f"{path}:{line}: not a feature row (key, num_boxes, base64 floats)") from None
            if n > 0:  # rows of images without boxes say nothing of the width
                if floats % n:
                    raise VinvlError(f"{path}:{line}: {floats} floats do not split into {n} boxes")
                return floats // n
    return 2054  # no boxes anywhere: the released width


class RegionStore:
    """Region features and tags of a feature folder (``vinvl extract`` output or a released folder):
    ``features.tsv`` (``key, num_boxes, base64``) and ``label.tsv`` (tags), looked up by image key."""

    def __init__(
        self, folder: PathLike, features: str = "features.tsv", labels: str = "label.tsv", dim: Optional[int] = None,
        label_folder: Optional[PathLike] = None,
    ) -> None:
        """Open ``folder``'s feature and label TSVs (``imageid2idx.json`` used when present); ``dim``
        (2054 for the released detectors, 518 for the demo one) is read off the first row when not given.
        ``label_folder``: the tags live in another folder (as in pretraining corpora), which must hold them."""
        from ..features import FeatureTSV
        from ..tsv import TSVFile

        self.folder = Path(folder)
        fpath = self.folder / features
        if not fpath.is_file():
            raise VinvlError(f"{fpath}: no such features file")
        if dim is None:
            dim = _row_dim(fpath)
        self.dim = dim
        index = self.folder / "imageid2idx.json"
        self.features = FeatureTSV(fpath, dim=dim, key_index=index if index.is_file() else None)
        lpath = (Path(label_folder) if label_folder is not None else self.folder) / labels
        if label_folder is not None and not lpath.is_file():
            raise VinvlError(f"{lpath}: no such label file")
        self.labels = TSVFile(lpath, build_index=True) if lpath.is_file() else None

    def regions(self, key: str) -> np.ndarray:
        """``[num_boxes, 2054]`` float32 region features of image ``key`` (either feature row layout)."""
        from ..errors import FormatError

        i = self.features.tsv.index_of(str(key))
        found, arr = self.features[i]
        if found != str(key):  # an imageid2idx.json that does not fit the TSV
            raise FormatError(f"the key index points at row {i + 1}, whose key is {found!r}", self.features.tsv.path, key=str(key))
        return arr

    def tags(self, key: str) -> str:
        """The image's tags (class names joined by spaces), or '' without a label file."""
        from ..features import parse_label_row, tags_text

        if self.labels is None:
            return ""
        _, objects = parse_label_row(self.labels.get(str(key)), path=self.labels.path)
        return tags_text(objects)


def regions_for_images(
    images: Sequence[PathLike],
    out_dir: PathLike,
    model: Optional[str] = None,
    weights: Optional[PathLike] = None,
    labelmap: Optional[PathLike] = None,
    device: str = "cpu",
    dtype: str = "fp32",
    quiet: bool = True,
) -> tuple[list[str], RegionStore]:
    """Run the detector over ``images`` (files, folders, lists: whatever ``vinvl extract`` takes) into
    ``out_dir`` and return the image keys in input order and a :class:`RegionStore` over the result.

    The model is ``weights`` (+ ``labelmap``, with the released X152-C4 preset), a registry
    ``model`` name (fetched when missing, :func:`vinvl.registry.resolve_detector`), or by default the
    released VG detector when cached, else the shipped demo detector. Images that fail to decode are left out of the keys (``out_dir/errors.tsv`` says why).
    An ``out_dir`` already complete for the same inputs is reused.
    """
    from ..config import detector_preset
    from ..detection import Detector
    from ..extract import collect_inputs, extract
    from ..registry import default_detector, resolve_detector

    if weights is not None:
        cfg, weights_path, labelmap_path = detector_preset("vinvl_vg_x152c4"), Path(weights), labelmap
    else:
        # A name given explicitly is fetched when missing; the implicit default never downloads.
        found = resolve_detector(model or default_detector()[0], download=model is not None, quiet=quiet)
        cfg, weights_path, labelmap_path = detector_preset(found.preset), found.weights, labelmap or found.labelmap
    items = collect_inputs(list(images))
    det = Detector.from_checkpoint(weights_path, preset=cfg, labelmap=labelmap_path, device=device, dtype=dtype)
    out = Path(out_dir)
    complete = (out / "manifest.json").is_file() and (out / "features.tsv").is_file()
    extract(items, det, out, quiet=quiet, resume=complete, overwrite=not complete)
    store = RegionStore(out)
    import json

    done = set(json.loads((out / "imageid2idx.json").read_text()))
    return [it.key for it in items if it.key in done], store
