"""The detector's training and evaluation data: a dataset yaml naming an image TSV (``key \\t base64``), a
label TSV (``key \\t [{"rect", "class", "attributes"}]``) and a label map, as the original lays it out (paths
by :mod:`vinvl.dataset_spec`'s rule).

:meth:`DetectionDataset.sample` gives an image as the model trains on it (resized as at test time,
optionally flipped, its boxes in resized pixels); :func:`collate` batches samples for
``AttrRCNN.forward``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, NamedTuple, Optional, Sequence, Union

import torch
from PIL import Image

from ..config import InputConfig
from ..dataset_spec import DatasetSpec
from ..errors import VinvlError
from ..images import ImageLoadError, decode_image, tsv_image_bytes
from ..labelmap import LabelMap
from ..tsv import TSVFile
from .model import Target
from .preprocess import pad_batch, to_input_tensor

PathLike = Union[str, os.PathLike]


class Sample(NamedTuple):
    """One training image: its input tensor ``[3, h, w]``, its resized ``(h, w)`` and its ground truth there."""

    image: torch.Tensor
    size: tuple[int, int]
    target: Target


class DetectionDataset:
    """Images, boxes, classes and attributes of a dataset yaml (``img``, ``label``, ``labelmap``)."""

    def __init__(self, yaml_path: PathLike, labelmap: Optional[LabelMap] = None) -> None:
        self.path = Path(yaml_path)
        spec = DatasetSpec(self.path, "detection dataset yaml", needs=("img", "label"))
        self.img = TSVFile(spec.file("img"), build_index=True)
        label = TSVFile(spec.file("label"), build_index=True)
        if labelmap is None:
            if "labelmap" not in spec:
                raise VinvlError(f"{self.path}: no 'labelmap' entry; pass a label map")
            labelmap = LabelMap.load(spec.file("labelmap"))
        self.labelmap = labelmap
        self.class_index = {n: i for i, n in enumerate(labelmap.classes)}
        self.attribute_index = {n: i for i, n in enumerate(labelmap.attributes or ())}
        self.keys = self.img.keys()
        self.annotations: list[list[dict[str, Any]]] = []
        for i, key in enumerate(self.keys):
            if key not in label:
                raise VinvlError(f"{label.path}: no row for image {key!r} of {self.img.path}")
            try:
                objs = json.loads(label.get(key)[1])
            except (json.JSONDecodeError, IndexError) as e:
                raise VinvlError(f"{label.path}: key {key!r}: bad label row ({e})") from None
            for o in objs:
                if o.get("class") not in self.class_index:
                    raise VinvlError(f"{label.path}: key {key!r}: class {o.get('class')!r} is not in the label map")
            self.annotations.append(objs)
        label.close()

    def __len__(self) -> int:
        return len(self.keys)

    def image(self, i: int) -> Image.Image:
        """Image ``i`` as RGB, decoded as ``vinvl extract`` decodes it."""
        try:
            return decode_image(tsv_image_bytes(self.img.fields_bytes(i)))
        except ImageLoadError as e:
            raise VinvlError(f"{self.img.path}: row {i} ({self.keys[i]}): {e}") from None

    def targets(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(boxes [G, 4] in original pixels, class indices [G], attribute indices [G, A] 0-padded)``."""
        objs = self.annotations[i]
        boxes = torch.tensor([o["rect"] for o in objs], dtype=torch.float32).reshape(-1, 4)
        labels = torch.tensor([self.class_index[o["class"]] for o in objs], dtype=torch.long)
        attrs = [[self.attribute_index[a] for a in o.get("attributes", []) if a in self.attribute_index] for o in objs]
        width = max([len(a) for a in attrs] + [1])
        at = torch.zeros(len(objs), width, dtype=torch.long)
        for r, a in enumerate(attrs):
            at[r, : len(a)] = torch.tensor(a, dtype=torch.long)
        return boxes, labels, at

    def sample(self, i: int, cfg: InputConfig, flip: bool = False) -> Sample:
        """Image ``i`` resized as at test time (mirrored left-right with ``flip``), its boxes in resized pixels."""
        img = self.image(i)
        boxes, labels, attrs = self.targets(i)
        W, H = img.size
        if flip:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            boxes = torch.stack([W - 1 - boxes[:, 2], boxes[:, 1], W - 1 - boxes[:, 0], boxes[:, 3]], dim=1)
        x = to_input_tensor(img, cfg)
        h, w = x.shape[1:]
        boxes = boxes * torch.tensor([w / W, h / H, w / W, h / H])
        return Sample(x, (h, w), Target(boxes, labels, attrs))


def collate(
    samples: Sequence[Sample], device: Union[str, torch.device] = "cpu"
) -> tuple[torch.Tensor, list[tuple[int, int]], list[Target]]:
    """``(images [B, 3, H, W] zero-padded, sizes, targets)`` on ``device``: the arguments of ``AttrRCNN.forward``."""
    x = pad_batch([s.image for s in samples]).to(device)
    return x, [s.size for s in samples], [s.target.to(device) for s in samples]
