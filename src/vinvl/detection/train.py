"""Training AttrRCNN on a TSV dataset (image TSV + label TSV), from scratch or fine-tuning a checkpoint.

The data layout is the original's (:mod:`.dataset`): a dataset yaml naming ``img``
(``key \\t base64``), ``label`` (``key \\t [{"rect", "class", "attributes"}]``) and ``labelmap``.
Inputs are resized as at test time and flipped horizontally at random. The model is the inference
model and its one forward pass gives the losses; from scratch its frozen BNs can be trained as
ordinary batch norms (``trainable_bn``) and are folded back into frozen statistics in every
checkpoint, so checkpoints always have the layout ``Detector.from_checkpoint`` (and the original)
reads.
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
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from ..atomic import atomic_write, atomic_write_json
from ..config import DetectorConfig
from ..errors import VinvlError
from ..state_dict import read_torch
from .checkpoint import load_into, read_checkpoint
from .dataset import DetectionDataset, collate
from .losses import BoxLossConfig, LossConfig, RPNLossConfig
from .model import AttrRCNN

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

    def loss_config(self) -> LossConfig:
        """The model's training-time settings (sampling, training proposals, attribute weight) of these."""
        return LossConfig(
            rpn=RPNLossConfig(batch_per_image=self.rpn_batch_per_image),
            box=BoxLossConfig(batch_per_image=self.roi_batch_per_image, positive_fraction=self.roi_positive_fraction),
            pre_nms_top_n=self.rpn_pre_nms_top_n,
            post_nms_top_n=self.rpn_post_nms_top_n,
            attribute_weight=self.attribute_loss_weight,
        )


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
    model = AttrRCNN(cfg, tc.loss_config())
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
        st = read_torch(state_path, str(state_path), map_location=device)
        model.load_state_dict(st["training_model"])
        opt.load_state_dict(st["optimizer"])
        start = int(st["iteration"])
        log(f"resumed at iteration {start}")
    ds.labelmap.save_vg_json(out / "labelmap.json")
    atomic_write_json(out / "config.json", {"detector": dataclasses.asdict(cfg), "train": dataclasses.asdict(tc)}, indent=1)
    gen = torch.Generator().manual_seed(tc.seed + start)
    rng = random.Random(tc.seed + start)
    batches = _batches(len(ds), min(tc.images_per_batch, len(ds)), tc.seed, start_epoch=start * tc.images_per_batch // max(len(ds), 1))
    history: list[dict[str, float]] = []
    t0 = time.perf_counter()
    for it in range(start, tc.iterations):
        for g in opt.param_groups:
            g["lr"] = tc.base_lr * _lr_factor(it, tc)
        samples = [ds.sample(i, cfg.input, rng.random() < tc.hflip) for i in next(batches)]
        images, sizes, targets = collate(samples, device)
        _, losses = model(images, sizes, targets, generator=gen)
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


def _save(model: nn.Module, opt: torch.optim.Optimizer, iteration: int, out: Path, final: bool) -> None:
    def atomic(obj: Any, path: Path) -> None:
        atomic_write(path, lambda tmp: torch.save(obj, tmp))

    exported = {"model": export_state_dict(model), "iteration": iteration}
    atomic(exported, out / ("model_final.pth" if final else f"model_{iteration:07d}.pth"))
    atomic({"training_model": model.state_dict(), "optimizer": opt.state_dict(), "iteration": iteration}, out / "last_checkpoint.pth")
