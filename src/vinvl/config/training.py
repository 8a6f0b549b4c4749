"""The detector's training settings, typed, in one place (:class:`TrainConfig`): the training engine's options with
the detector's defaults (the original's SOLVER.*), its schedule, its data augmentation, and the sampling and loss
settings of ``AttrRCNN.forward`` with targets (maskrcnn-benchmark's, as scene_graph_benchmark trains).
Importable without torch: ``vinvl detector train`` takes its defaults from here.

The test-time proposal counts are the detector's own (:class:`vinvl.config.RPNConfig`); these are training's, as the
original's ``*_TRAIN`` settings are.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ..errors import VinvlError
from ..training.options import EngineOptions


@dataclass
class TrainConfig(EngineOptions):
    """The detector's training run: engine options (batch = images per micro-batch per process), SGD with
    momentum (biases at ``bias_lr_factor`` x the rate, ``weight_decay_bias``), warm-up then x ``gamma`` at each step
    of ``lr_steps``, the training sizes and horizontal flips, the frozen stages, and the RPN's and the box head's
    matching, sampling and losses. The defaults are vinvl's recipe (docs/models.md); the original's yaml maps onto
    the same fields (``vinvl.config.original.to_training``: SOLVER.*, INPUT.*_TRAIN, the sampling keys)."""

    # -- the engine's options, the detector's defaults
    batch_size: int = 2  # images per micro-batch per process
    learning_rate: float = 0.02
    weight_decay: float = 1e-4
    warmup_steps: int = 200
    max_steps: int = 3000
    max_grad_norm: float = 10.0
    seed: int = 0
    save_steps: int = 500
    # -- the schedule (maskrcnn-benchmark's WarmupMultiStepLR) and SGD
    momentum: float = 0.9
    warmup_factor: float = 1.0 / 3  # the learning rate's factor at step 0 (SOLVER.WARMUP_FACTOR)
    warmup_method: str = "linear"  # linear: the factor rises to 1 at warmup_steps; constant: it stays until then
    lr_steps: tuple[int, ...] = ()  # steps from which the rate is x gamma once more (SOLVER.STEPS); (): 75% and 92%
    gamma: float = 0.1
    bias_lr_factor: float = 1.0  # biases' learning rate = learning_rate x this (SOLVER.BIAS_LR_FACTOR)
    weight_decay_bias: Optional[float] = None  # biases' weight decay (SOLVER.WEIGHT_DECAY_BIAS); None: weight_decay
    ims_per_batch: int = 0  # images per step over every process (SOLVER.IMS_PER_BATCH); 0: batch_size x processes
    # -- the data and the model's batch norms
    min_size_train: tuple[int, ...] = ()  # shorter side, one drawn per image (INPUT.MIN_SIZE_TRAIN); (): the test size
    max_size_train: int = 0  # longer side at most (INPUT.MAX_SIZE_TRAIN); 0: the test size
    hflip: float = 0.5  # probability of a horizontal flip
    freeze_at: int = 0  # the stem (1) and the stages below layer k (k > 1) get no gradient (FREEZE_CONV_BODY_AT)
    trainable_bn: bool = False  # frozen BNs trained as batch norms (from scratch), folded back on every save
    # -- RPN: anchors matched at IoU fg/bg (each box also takes its best anchors), anchors crossing the border by
    #    more than straddle_thresh ignored; batch_per_image sampled, at most positive_fraction of them positive;
    #    smooth-L1 with beta; pre/post-NMS proposals kept for the box head
    rpn_fg_iou: float = 0.7
    rpn_bg_iou: float = 0.3
    rpn_batch_per_image: int = 256
    rpn_positive_fraction: float = 0.5
    rpn_straddle_thresh: float = 0.0
    rpn_beta: float = 1.0 / 9
    rpn_pre_nms_top_n: int = 2000
    rpn_post_nms_top_n: int = 300
    # -- box head: proposals + ground truth matched at IoU fg/bg, sampled as the RPN's; smooth-L1 with beta
    roi_fg_iou: float = 0.5
    roi_bg_iou: float = 0.5
    roi_batch_per_image: int = 128
    roi_positive_fraction: float = 0.25
    roi_beta: float = 1.0
    # -- attribute head: its loss's weight in the total
    attribute_loss_weight: float = 0.5

    def check(self) -> "TrainConfig":
        """One error naming the setting for a value no run can use."""
        super().check()
        for name in ("rpn_batch_per_image", "roi_batch_per_image", "rpn_pre_nms_top_n", "rpn_post_nms_top_n"):
            if getattr(self, name) < 1:
                raise VinvlError(f"{name} {getattr(self, name)}: must be at least 1")
        for name in ("rpn_fg_iou", "rpn_bg_iou", "rpn_positive_fraction", "roi_fg_iou", "roi_bg_iou",
                     "roi_positive_fraction", "hflip", "warmup_factor"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise VinvlError(f"{name} {getattr(self, name)}: must lie in 0..1")
        for name in ("momentum", "gamma", "rpn_beta", "roi_beta", "attribute_loss_weight"):
            if getattr(self, name) < 0:
                raise VinvlError(f"{name} {getattr(self, name)}: must not be negative")
        if self.rpn_bg_iou > self.rpn_fg_iou or self.roi_bg_iou > self.roi_fg_iou:
            raise VinvlError("a background IoU threshold above its foreground one (rpn_bg_iou, roi_bg_iou)")
        if list(self.lr_steps) != sorted(self.lr_steps) or any(s < 0 for s in self.lr_steps):
            raise VinvlError(f"lr_steps {self.lr_steps}: increasing step numbers (SOLVER.STEPS)")
        if self.warmup_method not in ("linear", "constant"):
            raise VinvlError(f"warmup_method {self.warmup_method!r}: linear or constant (SOLVER.WARMUP_METHOD)")
        for name in ("bias_lr_factor", "ims_per_batch", "max_size_train", "freeze_at"):
            if getattr(self, name) < 0:
                raise VinvlError(f"{name} {getattr(self, name)}: must not be negative")
        if self.freeze_at > 4:
            raise VinvlError(f"freeze_at {self.freeze_at}: 0 (nothing), 1 (the stem) .. 4 (the stem and layer1-3)")
        if any(m < 1 for m in self.min_size_train):
            raise VinvlError(f"min_size_train {self.min_size_train}: sizes of at least 1")
        return self

    def milestones(self, total: int) -> tuple[int, ...]:
        """The steps from which the rate drops by ``gamma`` once more: ``lr_steps``, else 75% and 92% of the run's
        ``total`` steps."""
        return tuple(self.lr_steps) or (int(0.75 * total), int(0.92 * total))

    def images_per_process(self, world: int) -> int:
        """Images per micro-batch of each of ``world`` processes: ``ims_per_batch`` split evenly (as the original's
        data loader asserts), else ``batch_size``."""
        if not self.ims_per_batch:
            return self.batch_size
        if self.ims_per_batch % (world * self.gradient_accumulation_steps):
            raise VinvlError(f"SOLVER.IMS_PER_BATCH {self.ims_per_batch} is not divisible by the {world} process(es)"
                             f" x {self.gradient_accumulation_steps} accumulation step(s)")
        return self.ims_per_batch // (world * self.gradient_accumulation_steps)
