"""Training AttrRCNN on a TSV dataset (image TSV + label TSV), from scratch or fine-tuning a checkpoint.

The data layout is the original's: a dataset yaml naming ``img`` (``key \\t base64``),
``label`` (``key \\t [{"rect", "class", "attributes"}]``) and ``labelmap``. Inputs are resized
as at test time and flipped horizontally at random. The model is the inference model; from
scratch its frozen BNs can be trained as ordinary batch norms (``trainable_bn``) and are folded
back into frozen statistics in every checkpoint, so checkpoints always have the layout
``Detector.from_checkpoint`` (and the original) reads.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional, Union

import torch
from PIL import Image
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from ..atomic import atomic_write
from ..config import DetectorConfig
from ..errors import VinvlError, torch_load_problem
from ..labelmap import LabelMap
from ..tsv import TSVFile
from ..yamlio import read_yaml
from .box_coder import BoxCoder
from .checkpoint import CheckpointError, load_into, read_checkpoint
from .detector import AttrRCNN
from .losses import BoxLossConfig, RPNLossConfig, attribute_loss, box_loss, rpn_loss, sample_rois
from .preprocess import pad_batch, to_input_tensor
from .rpn import flatten_head_output

PathLike = Union[str, os.PathLike]


@dataclass
class TrainConfig:
    """Solver and sampling settings (the original's SOLVER.* and training-time RPN/ROI settings)."""

    iterations: int = 3000
    images_per_batch: int = 2
    base_lr: float = 0.02
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_iters: int = 200
    warmup_factor: float = 1.0 / 3
    steps: tuple[float, ...] = (0.75, 0.92)
    gamma: float = 0.1
    rpn_pre_nms_top_n: int = 2000
    rpn_post_nms_top_n: int = 300
    rpn_batch_per_image: int = 256
    roi_batch_per_image: int = 128
    roi_positive_fraction: float = 0.25
    attribute_loss_weight: float = 0.5
    hflip: float = 0.5
    trainable_bn: bool = False
    checkpoint_every: int = 500
    log_every: int = 20
    seed: int = 0
    max_grad_norm: Optional[float] = 10.0


class DetectionDataset:
    """Images, boxes, classes and attributes of a dataset yaml (``img``, ``label``, ``labelmap``)."""

    def __init__(self, yaml_path: PathLike, labelmap: Optional[LabelMap] = None) -> None:
        self.path = Path(yaml_path)
        spec = read_yaml(self.path)
        for k in ("img", "label"):
            if not isinstance(spec, dict) or k not in spec:
                raise VinvlError(f"{self.path}: a training dataset yaml needs '{k}'")
        base = self.path.parent
        self.img = TSVFile(base / spec["img"], build_index=True)
        label = TSVFile(base / spec["label"], build_index=True)
        if labelmap is None:
            if "labelmap" not in spec:
                raise VinvlError(f"{self.path}: no 'labelmap' entry; pass a label map")
            labelmap = LabelMap.load(base / spec["labelmap"])
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
        """Image ``i`` as RGB."""
        from ..extract.sources import ImageLoadError, decode_image, image_bytes, ImageItem

        try:
            return decode_image(image_bytes(ImageItem(self.keys[i], self.img.path, i), {self.img.path: self.img}))
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


def _sample(ds: DetectionDataset, i: int, cfg: DetectorConfig, flip: bool) -> tuple[torch.Tensor, tuple[int, int], torch.Tensor, torch.Tensor, torch.Tensor]:
    img = ds.image(i)
    boxes, labels, attrs = ds.targets(i)
    W, H = img.size
    if flip:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        boxes = torch.stack([W - 1 - boxes[:, 2], boxes[:, 1], W - 1 - boxes[:, 0], boxes[:, 3]], dim=1)
    x = to_input_tensor(img, cfg.input)
    h, w = x.shape[1:]
    boxes = boxes * torch.tensor([w / W, h / H, w / W, h / H])
    return x, (h, w), boxes, labels, attrs


def use_trainable_bn(model: nn.Module) -> nn.Module:
    """Replace every FrozenBatchNorm2d by a BatchNorm2d with the same statistics (for training from scratch)."""
    for name, child in list(model.named_children()):
        if isinstance(child, FrozenBatchNorm2d):
            bn = nn.BatchNorm2d(child.weight.numel(), eps=1e-5, momentum=0.1)
            with torch.no_grad():
                bn.weight.copy_(child.weight)
                bn.bias.copy_(child.bias)
                bn.running_mean.copy_(child.running_mean)
                bn.running_var.copy_(child.running_var)
            setattr(model, name, bn)
        else:
            use_trainable_bn(child)
    return model


def export_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The inference layout: BatchNorm2d folded into frozen-BN buffers (eps 0), plus the attribute head's
    copy of the res5 weights, as the original's checkpoints hold them."""
    sd: dict[str, torch.Tensor] = {}
    bn_eps = {n: m.eps for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)}
    for k, v in model.state_dict().items():
        if k.endswith("num_batches_tracked"):
            continue
        owner, _, leaf = k.rpartition(".")
        v = v.detach().clone().cpu()
        if owner in bn_eps and leaf == "running_var":
            v = v + bn_eps[owner]  # the frozen BN has no epsilon: fold it into the variance
        sd[k] = v
    for k in [k for k in sd if k.startswith("roi_heads.box.feature_extractor.")]:
        sd["attribute.feature_extractor." + k[len("roi_heads.box.feature_extractor."):]] = sd[k].clone()
    return sd


def load_for_finetuning(model: AttrRCNN, path: PathLike) -> list[str]:
    """Load a checkpoint's weights, leaving freshly initialised every predictor whose shape differs
    (a new class or attribute set); returns the keys re-initialised."""
    sd = read_checkpoint(path)
    sd = {k: v for k, v in sd.items() if not k.startswith("attribute.feature_extractor.")}
    own = model.state_dict()
    fresh = [k for k in own if k in sd and sd[k].shape != own[k].shape]
    fresh += [k for k in own if k not in sd and ("predictor" in k)]
    for k in fresh:
        sd[k] = own[k]
    load_into(model, sd, str(path))
    return fresh


def _lr_factor(it: int, tc: TrainConfig) -> float:
    warm = tc.warmup_factor + (1 - tc.warmup_factor) * it / tc.warmup_iters if it < tc.warmup_iters else 1.0
    drops = sum(1 for s in tc.steps if it >= int(s * tc.iterations))
    return warm * tc.gamma**drops


def _batches(n: int, per_batch: int, seed: int, start_epoch: int = 0) -> Iterator[list[int]]:
    epoch = start_epoch
    while True:
        order = list(range(n))
        random.Random(seed * 100003 + epoch).shuffle(order)
        for i in range(0, n - per_batch + 1 if n >= per_batch else 1, per_batch):
            yield order[i : i + per_batch]
        epoch += 1


def train(
    cfg: DetectorConfig,
    dataset: PathLike,
    out_dir: PathLike,
    tc: TrainConfig = TrainConfig(),
    init: Optional[PathLike] = None,
    resume: bool = False,
    device: str = "cpu",
    log: Any = None,
) -> Path:
    """Train and write ``out_dir/model_final.pth`` (+ periodic ``model_NNNNNNN.pth``, ``labelmap.json``, log)."""
    out = Path(out_dir)
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    ds = DetectionDataset(dataset)
    if ds.labelmap.num_classes != cfg.box_head.num_classes:
        cfg = cfg.replace(num_classes=ds.labelmap.num_classes)
    if cfg.attributes.enabled and ds.labelmap.attributes is not None and ds.labelmap.num_attributes != cfg.attributes.num_attributes:
        cfg = cfg.replace(num_attributes=ds.labelmap.num_attributes)
    torch.manual_seed(tc.seed)
    model = AttrRCNN(cfg)
    if init is not None:
        fresh = load_for_finetuning(model, init)
        log(f"fine-tuning from {init}; re-initialised: {', '.join(fresh) or 'nothing'}")
    if tc.trainable_bn:
        use_trainable_bn(model)
    model.to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=tc.base_lr, momentum=tc.momentum, weight_decay=tc.weight_decay)
    out.mkdir(parents=True, exist_ok=True)  # only once the dataset, settings and --init have been read
    start = 0
    state_path = out / "last_checkpoint.pth"
    if resume and state_path.exists():
        try:
            st = torch.load(state_path, map_location=device, weights_only=True)
        except Exception as e:  # torch.load raises many types on a torn or foreign file
            raise CheckpointError(f"{state_path}: {torch_load_problem(e)}") from None
        model.load_state_dict(st["training_model"])
        opt.load_state_dict(st["optimizer"])
        start = int(st["iteration"])
        log(f"resumed at iteration {start}")
    ds.labelmap.save_vg_json(out / "labelmap.json")
    (out / "config.json").write_text(json.dumps({"detector": dataclasses.asdict(cfg), "train": dataclasses.asdict(tc)}, indent=1))
    gen = torch.Generator().manual_seed(tc.seed + start)
    rng = random.Random(tc.seed + start)
    batches = _batches(len(ds), min(tc.images_per_batch, len(ds)), tc.seed, start_epoch=start * tc.images_per_batch // max(len(ds), 1))
    rpn_cfg = RPNLossConfig(batch_per_image=tc.rpn_batch_per_image)
    box_cfg = BoxLossConfig(batch_per_image=tc.roi_batch_per_image, positive_fraction=tc.roi_positive_fraction)
    coder = BoxCoder(cfg.box_head.bbox_reg_weights)
    history: list[dict[str, float]] = []
    t0 = time.perf_counter()
    for it in range(start, tc.iterations):
        for g in opt.param_groups:
            g["lr"] = tc.base_lr * _lr_factor(it, tc)
        samples = [_sample(ds, i, cfg, rng.random() < tc.hflip) for i in next(batches)]
        losses = training_losses(model, samples, rpn_cfg, box_cfg, coder, tc, gen, device)
        total = sum(losses.values())
        if not torch.isfinite(total):
            raise VinvlError(f"iteration {it}: the loss is {total.item()}; lower the learning rate")
        opt.zero_grad(set_to_none=True)
        total.backward()
        if tc.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(params, tc.max_grad_norm)
        opt.step()
        row = {k: v.item() for k, v in losses.items()} | {"loss": total.item(), "iteration": it + 1}
        history.append(row)
        if (it + 1) % tc.log_every == 0 or it + 1 == tc.iterations:
            recent = history[-tc.log_every :]
            mean = {k: sum(r[k] for r in recent) / len(recent) for k in row if k != "iteration"}
            el = time.perf_counter() - t0
            log(f"iter {it + 1}/{tc.iterations}  loss {mean['loss']:.3f}  " +
                "  ".join(f"{k} {v:.3f}" for k, v in mean.items() if k != "loss") +
                f"  lr {opt.param_groups[0]['lr']:.4f}  {el / (it + 1 - start):.2f} s/it")
            with open(out / "log.jsonl", "a") as f:
                f.write(json.dumps(mean | {"iteration": it + 1, "seconds": round(el, 1)}) + "\n")
        if (it + 1) % tc.checkpoint_every == 0 or it + 1 == tc.iterations:
            _save(model, opt, it + 1, out, final=it + 1 == tc.iterations)
    return out / "model_final.pth"


def training_losses(
    model: AttrRCNN,
    samples: list,
    rpn_cfg: RPNLossConfig,
    box_cfg: BoxLossConfig,
    coder: BoxCoder,
    tc: TrainConfig,
    gen: torch.Generator,
    device: str = "cpu",
) -> dict[str, torch.Tensor]:
    """All AttrRCNN losses for one batch of ``(tensor, (h, w), boxes, labels, attributes)`` samples."""
    x = pad_batch([s[0] for s in samples]).to(device)
    sizes = [s[1] for s in samples]
    gt_boxes = [s[2].to(device) for s in samples]
    gt_labels = [s[3].to(device) for s in samples]
    gt_attrs = [s[4].to(device) for s in samples]
    c4 = model.backbone(x)
    objectness, deltas = model.rpn.head(c4)
    n, _, h, w = objectness.shape
    anchors = model.rpn.anchor_generator.grid_anchors(h, w)
    obj_flat = flatten_head_output(objectness, 1).view(n, -1)
    del_flat = flatten_head_output(deltas, 4)
    loss_obj, loss_rpn_box = rpn_loss(obj_flat, del_flat, anchors, gt_boxes, sizes, rpn_cfg, gen)
    with torch.no_grad():
        proposals = [p for p, _ in model.rpn.select(objectness.detach(), deltas.detach(), sizes, tc.rpn_pre_nms_top_n, tc.rpn_post_nms_top_n)]
    rois = sample_rois(proposals, gt_boxes, gt_labels, gt_attrs, coder, box_cfg, gen)
    extractor = model.roi_heads.box.feature_extractor
    pooled = extractor(c4, rois.boxes)
    logits, box_deltas = model.roi_heads.box.predictor(pooled)
    loss_cls, loss_box = box_loss(logits, box_deltas, rois, box_cfg)
    out = {"loss_objectness": loss_obj, "loss_rpn_box_reg": loss_rpn_box, "loss_classifier": loss_cls, "loss_box_reg": loss_box}
    if model.attribute is not None:
        pos = torch.nonzero(rois.positive).squeeze(1)
        attr_logits = model.attribute.predictor(pooled[pos], rois.labels[pos])
        out["loss_attribute"] = tc.attribute_loss_weight * attribute_loss(attr_logits, rois.attributes[pos])
    return out


def _save(model: nn.Module, opt: torch.optim.Optimizer, iteration: int, out: Path, final: bool) -> None:
    def atomic(obj: Any, path: Path) -> None:
        atomic_write(path, lambda tmp: torch.save(obj, tmp))

    exported = {"model": export_state_dict(model), "iteration": iteration}
    atomic(exported, out / ("model_final.pth" if final else f"model_{iteration:07d}.pth"))
    atomic({"training_model": model.state_dict(), "optimizer": opt.state_dict(), "iteration": iteration}, out / "last_checkpoint.pth")
