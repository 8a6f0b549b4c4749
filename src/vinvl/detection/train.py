"""Training AttrRCNN on a TSV dataset (image TSV + label TSV), from scratch or fine-tuning a checkpoint: the
detector as a task of the training engine (:class:`DetectorTask`, run by :class:`vinvl.training.engine.Engine`).

The data layout is the original's (:mod:`.dataset`): a dataset yaml naming ``img`` (``key \\t base64``), ``label``
(``key \\t [{"rect", "class", "attributes"}]``) and ``labelmap``. Inputs are resized as at test time and flipped
horizontally at random (each image's flip seeded by seed, epoch and index; each micro-batch's proposal sampling by
seed and the micro-batch's number in the run, so any split over processes samples the same and a resumed run
repeats it). The model is the inference model and its one forward pass gives the losses; its settings are one
:class:`~vinvl.config.TrainConfig`. From scratch its frozen BNs can be trained as ordinary batch norms
(``trainable_bn``), folded back into frozen statistics in every checkpoint's weights, so the weights always have
the layout ``Detector.from_pretrained`` (and the original) reads.

A run folder: ``checkpoint-N/`` (``model.pth`` = ``{'model': state_dict}`` in the released layout, ``labelmap.json``,
``training_args.json``, with ``trainable_bn`` the unfolded ``training_model.pth``, and the engine's
``training_state.pt``), ``log.jsonl``, and at the end ``model_final.pth`` (the last checkpoint's ``model.pth``) and
``labelmap.json``.
"""

from __future__ import annotations

import dataclasses
import os
import random
import shutil
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import torch
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from ..atomic import atomic_write, atomic_write_json
from ..config import DetectorConfig, InputConfig, TrainConfig, detector_preset
from ..config.original import OriginalTraining, apply_set_options, load_original_training
from ..errors import VinvlError
from ..training.checkpoints import latest_checkpoint
from ..training.engine import Engine, warmup_schedule
from ..training.runtime import stderr_log
from ..training.task import Batch, Figures, StepContext
from .checkpoint import load_into, read_checkpoint
from .dataset import DetectionDataset, Sample, collate
from .model import AttrRCNN

__all__ = ["DetectionDataset", "DetectionExamples", "DetectorTask", "TrainConfig", "export_state_dict",
           "freeze_stages", "load_for_finetuning", "train", "train_original", "use_trainable_bn"]

PathLike = Union[str, os.PathLike]
WEIGHTS = "model.pth"  # a checkpoint's weights, released layout
TRAINING_WEIGHTS = "training_model.pth"  # with trainable BNs: the unfolded model, for an exact resume
FINAL = "model_final.pth"


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


def freeze_stages(model: nn.Module, freeze_at: int) -> None:
    """No gradient for the backbone's stem (``freeze_at`` >= 1) and its layer1 .. layer{freeze_at - 1}, as
    maskrcnn-benchmark's MODEL.BACKBONE.FREEZE_CONV_BODY_AT."""
    body = model.backbone.body if hasattr(model.backbone, "body") else model.backbone
    for k in range(freeze_at):
        stage = getattr(body, "stem" if k == 0 else f"layer{k}", None)
        if stage is None:
            raise VinvlError(f"freeze_at {freeze_at}: the backbone has no {'stem' if k == 0 else f'layer{k}'}")
        for p in stage.parameters():
            p.requires_grad_(False)


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


class DetectionExamples:
    """The training images of a dataset as the engine reads them: ``example(i, epoch)`` is image ``i`` resized (its
    shorter side one of ``min_sizes``, drawn per image as the original's RandomResize), flipped with probability
    ``hflip``; both draws seeded by ``(seed, epoch, i)``."""

    def __init__(self, data: DetectionDataset, input_cfg: InputConfig, seed: int, hflip: float,
                 min_sizes: Sequence[int] = (), max_size: int = 0) -> None:
        """``min_sizes`` () and ``max_size`` 0: ``input_cfg``'s (the test sizes)."""
        self.data, self.input_cfg, self.seed, self.hflip = data, input_cfg, seed, hflip
        self.min_sizes = tuple(min_sizes) or (input_cfg.min_size,)
        self.max_size = max_size or input_cfg.max_size

    def __len__(self) -> int:
        return len(self.data)

    def example(self, i: int, epoch: int) -> Sample:
        """Image ``i`` of ``epoch``, as the model trains on it."""
        flip = random.Random(f"{self.seed}/flip/{epoch}/{i}").random() < self.hflip
        size = self.min_sizes[0] if len(self.min_sizes) == 1 else \
            random.Random(f"{self.seed}/size/{epoch}/{i}").choice(self.min_sizes)
        cfg = self.input_cfg
        if (size, self.max_size) != (cfg.min_size, cfg.max_size):
            cfg = dataclasses.replace(cfg, min_size=size, max_size=self.max_size)
        return self.data.sample(i, cfg, flip)


class DetectorTask:
    """The detector as a task of the training engine (:class:`vinvl.training.task.TrainingTask`): the dataset's
    images, AttrRCNN (fresh, fine-tuned from ``init`` or resumed), SGD with the warm-up multi-step schedule, the
    forward's losses, and COCO AP50 on ``eval_dataset`` at each save."""

    ddp_forward = True  # the losses come out of the model's forward
    unused_parameters = False  # every loss reaches every head, with zero weight when it has no sample

    def __init__(self, cfg: DetectorConfig, dataset: PathLike, options: TrainConfig, init: Optional[PathLike] = None,
                 eval_dataset: Optional[PathLike] = None, log: Optional[Callable[[str], None]] = None,
                 fit_labelmap: bool = True) -> None:
        """``cfg``: the architecture (``fit_labelmap``: its class and attribute counts follow the dataset's label map;
        otherwise they must equal it)."""
        self.options, self.init, self.eval_dataset = options.check(), init, eval_dataset
        rank0 = int(os.environ.get("RANK", "0")) == 0  # the other processes of a torchrun run say nothing
        self.log = (log or stderr_log) if rank0 else (lambda m: None)
        self.data = DetectionDataset(dataset)
        lm = self.data.labelmap
        classes = lm.num_classes != cfg.box_head.num_classes
        attributes = (cfg.attributes.enabled and lm.attributes is not None
                      and lm.num_attributes != cfg.attributes.num_attributes)
        if not fit_labelmap and (classes or attributes):  # the original's config fixes the heads' sizes
            key, have, want = (("MODEL.ROI_BOX_HEAD.NUM_CLASSES", cfg.box_head.num_classes, lm.num_classes) if classes
                               else ("MODEL.ROI_ATTRIBUTE_HEAD.NUM_ATTRIBUTES", cfg.attributes.num_attributes,
                                     lm.num_attributes))
            raise VinvlError(f"{key} {have}: the label map of {dataset} has {want - 1} (+ background): set {key} {want}")
        if classes:
            cfg = cfg.replace(num_classes=lm.num_classes)
        if attributes:
            cfg = cfg.replace(num_attributes=lm.num_attributes)
        self.cfg = cfg

    # -- data
    def train_set(self) -> DetectionExamples:
        """The dataset's images, flipped at random."""
        o = self.options
        return DetectionExamples(self.data, self.cfg.input, o.seed, o.hflip, o.min_size_train, o.max_size_train)

    def collate(self, examples: Sequence[Sample]) -> Batch:
        """Images zero-padded into one tensor, their sizes and targets (moved to the device by :meth:`loss`)."""
        images, sizes, targets = collate(examples)
        return {"images": images, "sizes": sizes, "targets": targets}

    def extra_set(self) -> None:
        """No second example set."""
        return None

    # -- model and optimiser
    def build_model(self, resume_from: Optional[Path]) -> nn.Module:
        """AttrRCNN of the configuration: fresh, with ``init``'s weights where their shapes fit, or ``resume_from``'s."""
        model = AttrRCNN(self.cfg, self.options)
        if self.init is not None and resume_from is None:
            fresh = load_for_finetuning(model, self.init)
            self.log(f"fine-tuning from {self.init}; re-initialised: {', '.join(fresh) or 'nothing'}")
        if self.options.trainable_bn:
            use_trainable_bn(model)
        freeze_stages(model, self.options.freeze_at)
        if resume_from is not None:
            if self.options.trainable_bn:  # the folded weights cannot give back the BNs' own statistics exactly
                model.load_state_dict(read_checkpoint(resume_from / TRAINING_WEIGHTS))
            else:
                load_into(model, read_checkpoint(resume_from / WEIGHTS), str(resume_from / WEIGHTS))
        return model

    def optimizer(self, model: nn.Module, total: int, fused: bool) -> tuple[torch.optim.Optimizer, Any]:
        """SGD with momentum and weight decay, biases at their own rate and decay (maskrcnn-benchmark's
        make_optimizer); warm-up from ``warmup_factor``, then x ``gamma`` at each of the milestones."""
        o = self.options
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        bias_decay = o.weight_decay if o.weight_decay_bias is None else o.weight_decay_bias
        groups = [{"params": [p for n, p in named if "bias" not in n], "lr": o.learning_rate,
                   "weight_decay": o.weight_decay},
                  {"params": [p for n, p in named if "bias" in n], "lr": o.learning_rate * o.bias_lr_factor,
                   "weight_decay": bias_decay}]
        sgd = torch.optim.SGD([g for g in groups if g["params"]], lr=o.learning_rate, momentum=o.momentum)
        return sgd, warmup_schedule(sgd, total, o.warmup_steps, "steps", o.warmup_factor, o.milestones(total), o.gamma,
                                    o.warmup_method)

    # -- loss
    def loss(self, module: nn.Module, batch: Batch, ctx: StepContext) -> tuple[torch.Tensor, Figures]:
        """The sum of the forward's losses (each one logged); non-finite is one error."""
        # Seeded by the micro-batch's number in the run: the same samples for any split over processes, on resume too.
        seed = random.Random(f"{self.options.seed}/sample/{ctx.micro_index}").getrandbits(63)
        targets = [t.to(ctx.device) for t in batch["targets"]]
        _, losses = module(batch["images"], batch["sizes"], targets, generator=torch.Generator().manual_seed(seed))
        total = sum(losses.values())
        if not torch.isfinite(total):
            raise VinvlError(f"step {ctx.step + 1}: the loss is {total.item()}; lower the learning rate")
        return total, losses

    # -- evaluate
    def evaluate(self, model: nn.Module) -> Optional[dict[str, Any]]:
        """COCO box AP (``score``: AP50) and attribute accuracy on ``eval_dataset``, or None without one."""
        if self.eval_dataset is None:
            return None
        from .detector import Detector
        from .evaluate import evaluate

        device = next(model.parameters()).device
        detector = Detector.from_checkpoint({"model": export_state_dict(model)}, preset=self.cfg,
                                            labelmap=self.data.labelmap, device=device)
        metrics = evaluate(detector, self.eval_dataset, original=False)
        return {"score": metrics["AP50"], **metrics}

    # -- what a checkpoint carries
    def save_checkpoint(self, model: nn.Module, folder: Path, args: dict[str, Any]) -> None:
        """``model.pth`` (released layout), ``labelmap.json``, ``training_args.json`` (and the unfolded model with
        trainable BNs)."""
        weights = {"model": export_state_dict(model)}
        atomic_write(folder / WEIGHTS, lambda tmp: torch.save(weights, tmp))
        if self.options.trainable_bn:
            state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
            atomic_write(folder / TRAINING_WEIGHTS, lambda tmp: torch.save(state, tmp))
        self.data.labelmap.save_vg_json(folder / "labelmap.json")
        atomic_write_json(folder / "training_args.json", args, indent=1)

    def settings(self) -> dict[str, Any]:
        """The architecture, the data and the starting checkpoint."""
        return {"detector": dataclasses.asdict(self.cfg), "dataset": str(self.data.path),
                "init": None if self.init is None else str(self.init),
                "eval_dataset": None if self.eval_dataset is None else str(self.eval_dataset)}


def train(
    cfg: Union[str, DetectorConfig],
    dataset: PathLike,
    out_dir: PathLike,
    options: Optional[TrainConfig] = None,
    init: Optional[PathLike] = None,
    resume: bool = False,
    eval_dataset: Optional[PathLike] = None,
    settings: Sequence[str] = (),
    log: Optional[Callable[[str], None]] = None,
    callbacks: Sequence[Callable[[int], None]] = (),
    fit_labelmap: bool = True,
) -> Path:
    """Train ``cfg`` (a configuration or a preset's name, with ``settings``: ``--set KEY=VALUE`` strings) on
    ``dataset`` (``resume``: from ``out_dir``'s newest complete checkpoint, exactly) and return
    ``out_dir/model_final.pth``, the last checkpoint's weights in the released layout (``labelmap.json`` beside it).
    ``callbacks`` are the engine's (called with the steps done after each step); ``fit_labelmap``: the heads'
    sizes follow the dataset's label map (else they must equal it)."""
    options = options if options is not None else TrainConfig()
    old = Path(out_dir) / "last_checkpoint.pth"  # what the detector's own loop wrote before the training engine
    if resume and old.is_file() and latest_checkpoint(out_dir) is None:
        raise VinvlError(f"{old}: a run of vinvl detector train before 2026-12-07, which cannot be resumed exactly; "
                         f"train again into another folder, or start from its weights with --init {old}")
    cfg = apply_set_options(detector_preset(cfg) if isinstance(cfg, str) else cfg, settings)
    if options.ims_per_batch:  # the original's global batch, split over torchrun's processes
        world = int(os.environ.get("WORLD_SIZE", "1"))
        options = dataclasses.replace(options, batch_size=options.images_per_process(world))
    task = DetectorTask(cfg, dataset, options, init=init, eval_dataset=eval_dataset, log=log, fit_labelmap=fit_labelmap)
    engine = Engine(task, options, out_dir, log=log, callbacks=callbacks)
    last = engine.train(resume=resume)
    out = Path(out_dir)
    if engine.runtime.rank == 0:
        atomic_write(out / FINAL, lambda tmp: shutil.copyfile(last / WEIGHTS, tmp))
        task.data.labelmap.save_vg_json(out / "labelmap.json")
    return out / FINAL


def train_original(run: Union[OriginalTraining, PathLike], opts: Sequence[str] = (), out_dir: Optional[PathLike] = None,
                   device: Optional[str] = None, resume: bool = False, log: Optional[Callable[[str], None]] = None,
                   callbacks: Sequence[Callable[[int], None]] = ()) -> Path:
    """``tools/train_sg_net.py --config-file F KEY VALUE ...`` in vinvl: the original's yaml and ``opts`` read by
    :func:`vinvl.config.original.load_original_training` (every key honoured or refused by name; torch-free, so a
    caller can refuse before importing torch and pass the result), then :func:`train` (``out_dir`` and ``device``,
    when given, win over OUTPUT_DIR and MODEL.DEVICE)."""
    if not isinstance(run, OriginalTraining):
        run = load_original_training(run, opts)
    options = run.options if device is None else dataclasses.replace(run.options, device=device)
    out = Path(out_dir) if out_dir is not None else Path(run.output_dir)
    return train(run.detector, run.dataset, out, options, init=run.init, resume=resume, eval_dataset=run.eval_dataset,
                 log=log, callbacks=callbacks, fit_labelmap=False)
