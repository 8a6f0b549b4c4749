"""``Detector``, the detector's user-facing API: images (files, PIL images, arrays) in, ``Detections``
(boxes in original pixels, class and attribute names from a label map, features, ``predictions.tsv``
rows) out, around the :class:`~vinvl.detection.model.AttrRCNN` model."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any, Iterator, Optional, Sequence, Union

import numpy as np
import torch

from ..config import DTYPES, DetectorConfig, detector_preset
from ..config.pretrained import PretrainedFiles, resolve_pretrained
from ..errors import VinvlError
from ..features import DEFAULT_SAVE_SUBSET, Prediction, box_geometry, oscar_region_features
from ..images import ImageInput, load_image
from ..labelmap import LabelMap
from ..state_dict import CheckpointError, unwrap
from .box_coder import clip_boxes, scale_boxes
from .checkpoint import load_into, read_checkpoint
from .model import AttrRCNN, RawDetections
from .numerics import choose, choose_device, faster_mode_hint
from .preprocess import pad_batch, to_input_tensor
from .resnext import fold_frozen_bn, unfold_frozen_bn

__all__ = ["AttrRCNN", "Detections", "Detector", "RawDetections", "load_model"]


@dataclass
class Detections:
    """One image's detections in original-image pixels, as numpy arrays."""

    image_hw: tuple[int, int]
    resized_hw: tuple[int, int]
    boxes: np.ndarray
    labels: np.ndarray
    names: list[str]
    scores: np.ndarray
    features: np.ndarray
    attr_labels: list[np.ndarray]
    attr_names: list[list[str]]
    attr_scores: list[np.ndarray]
    scores_all: Optional[np.ndarray] = None
    boxes_all: Optional[np.ndarray] = None  # [N, C, 4] (given boxes: [N, 1, 4]) in RESIZED pixels, as the original's field
    attr_scores_all: Optional[np.ndarray] = None  # [N, A] attribute softmax of each box
    attr_slots: Optional[tuple[np.ndarray, np.ndarray]] = None  # [N, k] labels and scores, 0-score slots included

    def __len__(self) -> int:
        return len(self.boxes)

    @property
    def geometry(self) -> np.ndarray:
        """The 6-d box geometry ``[N, 6]`` (see :func:`vinvl.features.box_geometry`)."""
        return box_geometry(self.boxes, self.image_hw[1], self.image_hw[0])

    def region_features(self) -> np.ndarray:
        """Oscar's ``[N, 2054]`` region inputs: features + geometry."""
        return oscar_region_features(self.features, self.boxes, self.image_hw[1], self.image_hw[0])

    def to_prediction(self, key: str, image_size: bool = True, attribute_slots: bool = False,
                      attribute_names: Optional[Sequence[str]] = None) -> Prediction:
        """This image as a ``predictions.tsv`` record (``image_size`` adds ``image_h``/``image_w``;
        ``attribute_slots`` writes every top-k slot, 0-score ones included, as the original's rows do,
        naming them from ``attribute_names``)."""
        attributes, attr_scores = self.attr_names, [s.tolist() for s in self.attr_scores]
        if attribute_slots and self.attr_slots is not None:
            labels, scores = self.attr_slots
            name = (lambda a: attribute_names[a]) if attribute_names is not None else str  # noqa: E731
            attributes = [[name(int(a)) for a in row] for row in labels]
            attr_scores = [row.tolist() for row in scores]
        return Prediction(
            key=key,
            boxes=self.boxes,
            classes=list(self.names),
            scores=self.scores,
            features=self.features,
            attributes=attributes,
            attr_scores=attr_scores,
            image_h=self.image_hw[0] if image_size else None,
            image_w=self.image_hw[1] if image_size else None,
            scores_all=self.scores_all,
            boxes_all=self.boxes_all,
            attr_scores_all=self.attr_scores_all,
        )

    def to_row(self, key: str, subset: Sequence[str] = DEFAULT_SAVE_SUBSET, image_size: bool = False) -> list[str]:
        """The original's ``predictions.tsv`` row ``[key, json]`` (default TSV_SAVE_SUBSET, no image size)."""
        return self.to_prediction(key, image_size).to_row(subset)


_DTYPES = dict(zip(DTYPES, (torch.float32, torch.bfloat16, torch.float16)))


class Detector:
    """VinVL's object-attribute detector: images in, boxes, classes, attributes and 2048-d features out."""

    def __init__(
        self,
        model: AttrRCNN,
        labelmap: Optional[LabelMap] = None,
        device: Union[str, torch.device] = "cpu",
        tf32: bool = False,
        channels_last: bool = True,
        dtype: str = "fp32",
        fold_bn: Optional[bool] = None,
    ) -> None:
        """Wrap a built (and loaded) model; ``labelmap`` gives class and attribute names.

        ``channels_last`` runs the convolutions in NHWC with res5's frozen BNs folded into its convs
        (``fold_bn``, default: with ``channels_last``; the weights and state dict are unchanged) —
        faster on CPU, the same numbers within float32 rounding; ``False`` gives the original's
        NCHW arithmetic, op for op; ``dtype`` ``bf16``/``fp16`` folds every BN into 16-bit conv
        weights and runs convolutions and linear layers under autocast with pooling, boxes and
        scores kept in fp32 (faster, drift measured by ``benchmarks/detector.py``); ``tf32`` lets
        CUDA use TensorFloat-32. A model passed in is set up anew (earlier folding is dropped).
        :meth:`from_pretrained` chooses these settings itself (and records why in :attr:`numerics_reason`).
        """
        if dtype not in _DTYPES:
            raise VinvlError(f"dtype must be one of {', '.join(_DTYPES)}, got {dtype!r}")
        self.model = model.eval().to(device)
        self.tf32 = tf32
        self.dtype = dtype
        self.channels_last = channels_last
        self.fold_bn = fold_bn
        self.numerics_reason = "set by the caller"  # from_pretrained records its choice and why
        self.source: Optional[PretrainedFiles] = None  # the files from_pretrained loaded
        # Both ways: a model set up earlier in the other layout (a Detector re-wrapping it) is converted back.
        self.model.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        unfold_frozen_bn(self.model)
        if dtype != "fp32" and fold_bn is not False:
            # 16-bit modes: every BN folded and the folded weights stored in 16 bits, so activations stay
            # 16-bit from conv to conv (an unfolded fp32 BN would promote each one back to fp32).
            fold_frozen_bn(self.model, _DTYPES[dtype])
        elif channels_last if fold_bn is None else fold_bn:
            # res5 over the 300 proposals only: that is where the BN passes cost (big activations),
            # and the backbone's arithmetic stays as is, so near-tied RPN scores keep their order.
            fold_frozen_bn(self.model.roi_heads)
        self.model.roi_heads.box.feature_extractor.channels_last = channels_last
        self.config = model.cfg
        self.device = torch.device(device)
        self.labelmap = labelmap
        if labelmap is not None:
            if labelmap.num_classes != self.config.box_head.num_classes:
                raise CheckpointError(
                    f"label map {labelmap.source} has {labelmap.num_classes} classes (with background), "
                    f"the model {self.config.box_head.num_classes}"
                )
            if self.config.attributes.enabled and labelmap.attributes is not None:
                if labelmap.num_attributes != self.config.attributes.num_attributes:
                    raise CheckpointError(
                        f"label map {labelmap.source} has {labelmap.num_attributes} attributes, "
                        f"the model {self.config.attributes.num_attributes}"
                    )

    @property
    def numerics(self) -> dict[str, Any]:
        """The settings besides config and weights that change output bits (device, dtype, layout, folding)."""
        return {"device": self.device.type, "dtype": self.dtype, "channels_last": self.channels_last,
                "fold_bn": self.fold_bn, "tf32": self.tf32}

    @property
    def numerics_line(self) -> str:
        """The one line that says the numerics and why (``numerics: fp32 NHWC (fp32: the original's numbers)``)."""
        return f"numerics: {self.dtype} {'NHWC' if self.channels_last else 'NCHW'} ({self.numerics_reason})"

    def notes(self) -> list[str]:
        """What a command says about this detector before it runs: its numerics and, where fp32 runs on a device
        with native bf16, the faster mode (:func:`vinvl.detection.numerics.faster_mode_hint`)."""
        hint = faster_mode_hint(self.device, self.dtype)
        return [self.numerics_line, *([hint] if hint else [])]

    @property
    def feature_dim(self) -> int:
        """Width of a region's feature vector (2048 for X152-C4), without the 6 geometry columns."""
        return int(self.model.roi_heads.box.feature_extractor.out_channels)

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: Union[None, str, os.PathLike, PretrainedFiles] = None,
        *,
        device: Union[None, str, torch.device] = "cpu",
        dtype: str = "fp32",
        preset: Union[None, str, DetectorConfig] = None,
        labelmap: Union[None, str, os.PathLike, LabelMap] = None,
        original_arithmetic: bool = False,
        download: bool = True,
        sas: Optional[str] = None,
        quiet: bool = False,
        **overrides: Any,
    ) -> "Detector":
        """A ready detector from a registry name, a checkpoint file, or files already resolved.

        ``name_or_path`` is resolved by :func:`~vinvl.config.pretrained.resolve_pretrained` (a registry name,
        fetched when missing if ``download``; a checkpoint file, with ``preset`` as its architecture, default the
        released X152-C4; None: the released VG detector when cached, else the shipped demo), or is a
        :class:`~vinvl.config.pretrained.PretrainedFiles` from it (then ``overrides`` still apply).
        ``device``: ``cpu``, ``cuda[:N]`` or ``auto``/None (CUDA when present). The numerics are chosen here, once
        (:func:`vinvl.detection.numerics.choose`): ``dtype`` ``fp32`` (the original's numbers), ``auto`` (bf16
        where the device has it natively) or ``bf16``/``fp16``, convolutions in NHWC with res5's frozen BNs
        folded; ``original_arithmetic`` keeps the original's NCHW, unfolded arithmetic op for op (fp32).
        The choice and its reason are on the detector (:attr:`numerics`, :attr:`numerics_reason`).
        """
        if isinstance(name_or_path, PretrainedFiles):
            if preset is not None or labelmap is not None:
                raise VinvlError("from_pretrained: preset and labelmap belong to resolve_pretrained when files are given")
            files = name_or_path.configured(**overrides)
        else:
            files = resolve_pretrained(name_or_path, preset=preset, labelmap=labelmap, download=download, sas=sas,
                                       quiet=quiet, **overrides)
        dev = choose_device(device)
        chosen = choose(dev, dtype, original_arithmetic)
        det = cls(load_model(files.config, files.weights), _labelmap(files.labelmap), dev, dtype=chosen.dtype,
                  channels_last=chosen.channels_last, fold_bn=chosen.fold_bn)
        det.numerics_reason, det.source = chosen.reason, files
        return det

    @classmethod
    def from_config(
        cls,
        config: Union[str, DetectorConfig],
        labelmap: Union[None, str, os.PathLike, LabelMap] = None,
        device: Union[str, torch.device] = "cpu",
        seed: Optional[int] = None,
        channels_last: bool = True,
        dtype: str = "fp32",
        fold_bn: Optional[bool] = None,
        **overrides: Any,
    ) -> "Detector":
        """A detector with freshly initialised weights (for tests and training)."""
        cfg = _configured(config, overrides)
        if seed is not None:
            torch.manual_seed(seed)
        return cls(AttrRCNN(cfg), _labelmap(labelmap), device, channels_last=channels_last, dtype=dtype, fold_bn=fold_bn)

    @classmethod
    def from_checkpoint(
        cls,
        path: Union[str, os.PathLike, dict],
        preset: Union[str, DetectorConfig] = "vinvl_vg_x152c4",
        labelmap: Union[None, str, os.PathLike, LabelMap] = None,
        device: Union[str, torch.device] = "cpu",
        channels_last: bool = True,
        dtype: str = "fp32",
        fold_bn: Optional[bool] = None,
        **overrides: Any,
    ) -> "Detector":
        """Load a maskrcnn-benchmark checkpoint (``{'model': sd}`` or bare, ``module.`` prefixes allowed) in exactly
        the numerics given (:meth:`from_pretrained` chooses them itself)."""
        model = load_model(_configured(preset, overrides), path)
        return cls(model, _labelmap(labelmap), device, channels_last=channels_last, dtype=dtype, fold_bn=fold_bn)

    def compile(self, **options: Any) -> "Detector":
        """``torch.compile`` the backbone and res5 in place (state dict unchanged); ``options`` go to torch.compile.
        The first image of each new size compiles (minutes for X152); drift is measured by benchmarks/detector.py."""
        self.model.backbone.compile(**options)
        self.model.roi_heads.box.feature_extractor.head.compile(**options)
        return self

    # -- inference -------------------------------------------------------------------
    def prepare(self, image: ImageInput) -> tuple[torch.Tensor, tuple[int, int]]:
        """``(input tensor [3, h, w], original (H, W))`` of one image."""
        pil = load_image(image)
        return to_input_tensor(pil, self.config.input), (pil.height, pil.width)

    def batches(self, shapes: Sequence[tuple[int, int]], batch_size: int) -> list[list[int]]:
        """Deterministic batches of image indices: equal resized shapes only ("same_size"), or consecutive
        images zero-padded together ("padded": the original's IMS_PER_BATCH without aspect-ratio grouping;
        ``vinvl extract`` plans the grouped batches itself and passes them to :meth:`detect_prepared`)."""
        if self.config.batching == "padded":
            return [list(range(i, min(i + batch_size, len(shapes)))) for i in range(0, len(shapes), batch_size)]
        groups: dict[tuple[int, int], list[int]] = {}
        out: list[list[int]] = []
        for i, s in enumerate(shapes):
            g = groups.setdefault(s, [])
            g.append(i)
            if len(g) == batch_size:
                out.append(g)
                groups[s] = []
        out.extend(g for g in groups.values() if g)
        return sorted(out, key=lambda b: b[0])

    def detect_raw(
        self, images: Sequence[ImageInput], batch_size: Optional[int] = None, trace: bool = False,
        boxes: Optional[Sequence[Any]] = None,
    ) -> list[tuple[RawDetections, tuple[int, int], tuple[int, int]]]:
        """``(raw detections, resized (h, w), original (H, W))`` per image, in input order (``boxes``: see ``__call__``)."""
        return self.detect_prepared([self.prepare(im) for im in images], batch_size, trace, boxes)

    def detect_prepared(
        self,
        prepared: Sequence[tuple[torch.Tensor, tuple[int, int]]],
        batch_size: Optional[int] = None,
        trace: bool = False,
        boxes: Optional[Sequence[Any]] = None,
        batches: Optional[Sequence[Sequence[int]]] = None,
    ) -> list[tuple[RawDetections, tuple[int, int], tuple[int, int]]]:
        """Like ``detect_raw`` for images already through ``prepare`` (e.g. in DataLoader workers); ``batches``
        (indices into ``prepared``, each image once) are the forward passes instead of :meth:`batches`' own."""
        shapes = [tuple(t.shape[1:]) for t, _ in prepared]
        if boxes is not None:
            if len(boxes) != len(prepared):
                raise ValueError(f"{len(prepared)} images but {len(boxes)} box lists")
            proposals = [given_boxes_to_proposals(b, orig, shapes[i]) for i, (b, (_, orig)) in enumerate(zip(boxes, prepared))]
        if batches is None:
            batches = self.batches(shapes, batch_size or self.config.batch_size)
        elif sorted(i for b in batches for i in b) != list(range(len(prepared))) or not all(batches):
            raise ValueError(f"batches must hold each of the {len(prepared)} images once, got {[list(b) for b in batches]}")
        results: list[Any] = [None] * len(prepared)
        for batch in batches:
            tensors = [prepared[i][0] for i in batch]
            cuda = self.device.type == "cuda"
            x = pad_batch(tensors, pin=cuda).to(self.device, non_blocking=cuda)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            given = [proposals[i].to(self.device) for i in batch] if boxes is not None else None
            with self._numerics():
                raws, _ = self.model(x, [shapes[i] for i in batch], boxes=given, trace=trace)
            for i, raw in zip(batch, raws):
                results[i] = (raw, shapes[i], prepared[i][1])
        return results

    @contextlib.contextmanager
    def _numerics(self) -> Iterator[None]:
        """Full float32 on CUDA unless ``tf32``: cuDNN's TF32 default would change every feature."""
        if self.dtype != "fp32":
            with torch.autocast(self.device.type, dtype=_DTYPES[self.dtype]):
                yield
            return
        if self.device.type != "cuda":
            yield
            return
        cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
        saved = matmul.allow_tf32
        matmul.allow_tf32 = self.tf32
        try:
            with cudnn.flags(
                enabled=cudnn.enabled, benchmark=cudnn.benchmark, deterministic=cudnn.deterministic, allow_tf32=self.tf32
            ):
                yield
        finally:
            matmul.allow_tf32 = saved

    def __call__(
        self, images: Union[ImageInput, Sequence[ImageInput]], batch_size: Optional[int] = None,
        boxes: Optional[Any] = None,
    ) -> Union[Detections, list[Detections]]:
        """Detect in one image (returns ``Detections``) or a list of images (returns a list).

        ``boxes`` (one ``[N, 4]`` x1 y1 x2 y2 array in original-image pixels per image; for one image, the
        array itself) replaces the RPN's proposals, as the original's FORCE_BOXES: each box is clipped to the
        image, resized with it, and returned in the given order with its best class, features and attributes.
        """
        single = not isinstance(images, (list, tuple))
        items = [images] if single else list(images)
        if boxes is not None and single:
            boxes = [boxes]
        raws = self.detect_raw(items, batch_size, boxes=boxes)
        out = [self.finish(raw, resized, orig) for raw, resized, orig in raws]
        return out[0] if single else out

    def finish(self, raw: RawDetections, resized_hw: tuple[int, int], image_hw: tuple[int, int]) -> Detections:
        """Raw detections -> original pixels, names and padding-free attributes."""
        boxes = scale_boxes(raw.boxes, resized_hw, image_hw).cpu().numpy()
        labels = raw.labels.cpu().numpy()
        lm = self.labelmap
        names = [lm.class_name(int(c)) if lm else str(int(c)) for c in labels]
        attr_labels, attr_scores, attr_names = [], [], []
        slots = attr_all = None
        if raw.attr_labels is not None:
            slots = (raw.attr_labels.cpu().numpy(), raw.attr_scores.cpu().numpy())
            attr_all = torch.softmax(raw.attr_logits, dim=-1).cpu().numpy()
            for lab, sc in zip(raw.attr_labels.cpu().numpy(), raw.attr_scores.cpu().numpy()):
                keep = sc > 0
                attr_labels.append(lab[keep])
                attr_scores.append(sc[keep])
                attr_names.append(
                    [lm.attribute_name(int(a)) if lm and lm.attributes else str(int(a)) for a in lab[keep]]
                )
        else:
            attr_labels = [np.zeros(0, np.int64) for _ in labels]
            attr_scores = [np.zeros(0, np.float32) for _ in labels]
            attr_names = [[] for _ in labels]
        return Detections(
            image_hw=tuple(image_hw),
            resized_hw=tuple(resized_hw),
            boxes=boxes,
            labels=labels,
            names=names,
            scores=raw.scores.cpu().numpy(),
            features=raw.features.cpu().numpy(),
            attr_labels=attr_labels,
            attr_names=attr_names,
            attr_scores=attr_scores,
            scores_all=raw.scores_all.cpu().numpy() if self.config.postprocess.output_scores_all else None,
            boxes_all=raw.boxes_all.cpu().numpy() if raw.boxes_all is not None else None,
            attr_scores_all=attr_all,
            attr_slots=slots,
        )


def given_boxes_to_proposals(boxes: Any, image_hw: tuple[int, int], resized_hw: tuple[int, int]) -> torch.Tensor:
    """Given boxes (x1 y1 x2 y2, original pixels) as the original's loader makes them proposals: float32, clipped
    to ``[0, W-1] x [0, H-1]`` (nothing dropped, order kept), then scaled with the image's resize."""
    b = torch.as_tensor(np.asarray(boxes, dtype=np.float32).reshape(-1, 4))
    b = clip_boxes(b, image_hw[0], image_hw[1])
    return scale_boxes(b, image_hw, resized_hw)


def load_model(cfg: DetectorConfig, checkpoint: Union[str, os.PathLike, dict]) -> AttrRCNN:
    """The :class:`AttrRCNN` of ``cfg`` with a checkpoint's weights (a file, or a state dict), strictly loaded on the CPU."""
    if isinstance(checkpoint, dict):
        sd, source = unwrap(checkpoint), "<state dict>"
    else:
        sd, source = read_checkpoint(checkpoint), os.fspath(checkpoint)
    with torch.device("meta"):  # no memory or random initialisation for weights about to be replaced
        model = AttrRCNN(cfg)
    model = model.to_empty(device="cpu")
    # Buffers the checkpoint carries (anchors) are overwritten by load; the rest must all be present.
    load_into(model, sd, source)
    return model


def _configured(config: Union[str, DetectorConfig], overrides: dict[str, Any]) -> DetectorConfig:
    cfg = detector_preset(config) if isinstance(config, str) else config
    return cfg.replace(**overrides) if overrides else cfg


def _labelmap(labelmap: Union[None, str, os.PathLike, LabelMap]) -> Optional[LabelMap]:
    if labelmap is None or isinstance(labelmap, LabelMap):
        return labelmap
    return LabelMap.load(labelmap)
