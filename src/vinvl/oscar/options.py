"""Every Oscar+ task's options and their defaults, in one place (importable without torch: the CLI reads them),
and the one rule that merges them with the settings a checkpoint was trained with (:func:`restore`).

:class:`TrainingOptions` are the options of any Oscar+ training run (the training engine's, :mod:`vinvl.training.options`:
batching, step count, saving, logging, device, precision; and AdamW's and the schedule's); each task's class adds its
own fields and overrides only the defaults that differ, which are the original's model-zoo commands.
The "not set" values (``max_steps`` 0, ``save_steps`` 0 and -1, ``log_steps`` 0) are the engine's one rule.

**The merge rule.** Each options class names the settings that describe the inputs its model was trained on
(``RESTORED``: sequence lengths, tags on or off, ...). Wherever a checkpoint's model is fed such inputs
(evaluation, prediction, ranking, SCST's starting model), each of them is the caller's explicit value, else the
value the checkpoint recorded, else the class's default. An options object remembers which values its caller
set (:meth:`TrainingOptions.explicit`: constructor arguments and later assignments), so
``RetrievalOptions(max_seq_length=40)`` keeps 40 and takes the other lengths from the checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, ClassVar, Iterable, Mapping, Optional, TypeVar

from ..errors import VinvlError
from ..training.options import EngineOptions

SCHEDULERS = ("linear", "constant")
# run_retrieval.py's --att_mask_type over [caption | labels (tags) | regions]: CLR full attention; a pair: each part
# attends to itself, and only the two parts named attend to each other
ATT_MASK_TYPES = ("CLR", "CL", "CR", "LR")
OD_LABEL_TYPES = ("vg", "gt", "oid")  # run_retrieval.py's --od_label_type: {split}_{type}_labels.pt of .pt features


def check_att_mask_type(value: str) -> str:
    """``value`` if it is one of :data:`ATT_MASK_TYPES`, else one error naming ``--att-mask-type``."""
    if value not in ATT_MASK_TYPES:
        raise VinvlError(f"--att-mask-type {value!r}: expected one of {', '.join(ATT_MASK_TYPES)}")
    return value

T = TypeVar("T", bound="TrainingOptions")
A = TypeVar("A")


class TrainingSettings(dict):
    """The options a checkpoint was trained with (name -> value) and the file they came from."""

    def __init__(self, values: Optional[Mapping[str, Any]] = None, source: str = "training settings") -> None:
        super().__init__(values or {})
        self.source = source

    def typed(self, name: str, default: Any) -> Any:
        """Setting ``name`` as the type of ``default`` (int, float, bool or str), ``default`` when absent;
        a value of another kind is one error naming the file and the setting."""
        if name not in self or self[name] is None:
            return default
        v, kind = self[name], type(default)
        if kind is bool and (isinstance(v, bool) or v in (0, 1)):
            return bool(v)
        if kind is int and not isinstance(v, bool) and (isinstance(v, int) or (isinstance(v, float) and v.is_integer())):
            return int(v)
        if kind is float and not isinstance(v, bool) and isinstance(v, (int, float)):
            return float(v)
        if kind is str and isinstance(v, str):
            return v
        raise VinvlError(f"{self.source}: {name} must be {kind.__name__}, found {v!r}")


def merge_settings(explicit: Mapping[str, Any], recorded: Mapping[str, Any], defaults: Mapping[str, Any]
                   ) -> dict[str, Any]:
    """The merge rule, for each name of ``defaults``: the ``explicit`` value, else the ``recorded`` one (typed like
    the default), else the default. A malformed recorded value is an error even where the explicit value wins."""
    settings = recorded if isinstance(recorded, TrainingSettings) else TrainingSettings(recorded)
    out = {}
    for name, default in defaults.items():
        trained = settings.typed(name, default)
        out[name] = explicit[name] if name in explicit else trained
    return out


@dataclass
class TrainingOptions(EngineOptions):
    """The options of any Oscar+ training run (the original ``run_*.py`` flags of the same names): the engine's
    (:class:`vinvl.training.options.EngineOptions`, whose defaults are these runs') and AdamW's, the schedule's
    decay and the evaluation's batch."""

    RESTORED: ClassVar[tuple[str, ...]] = ()  # the settings a checkpoint's recorded value fills (see :func:`restore`)

    adam_epsilon: float = 1e-8
    scheduler: str = "linear"  # after warm-up: linear decay to 0 at the last step, or constant
    eval_batch_size: int = 64

    def check(self) -> "TrainingOptions":
        """One error naming the option for a value no run can use (the CLI checks these ranges while parsing)."""
        super().check()
        if self.eval_batch_size < 1:
            raise VinvlError(f"--eval-batch-size {self.eval_batch_size}: must be at least 1")
        if self.adam_epsilon < 0:
            raise VinvlError(f"--adam-epsilon {self.adam_epsilon}: must not be negative")
        if self.scheduler not in SCHEDULERS:
            raise VinvlError(f"--scheduler {self.scheduler!r}: expected one of {', '.join(SCHEDULERS)}")
        return self

    # Which values the caller set is kept beside the fields (not one of them: it is no option and is never
    # recorded). The dataclass __init__ assigning the defaults is not the caller, so tracking starts after it.
    def __new__(cls, *args: Any, **kw: Any) -> Any:
        self = super().__new__(cls)
        names = [f.name for f in fields(cls)]
        object.__setattr__(self, "_explicit", frozenset(names[: len(args)]) | frozenset(kw))
        object.__setattr__(self, "_tracking", False)
        return self

    def __post_init__(self) -> None:
        object.__setattr__(self, "_tracking", True)

    def __setattr__(self, name: str, value: Any) -> None:
        if self.__dict__.get("_tracking"):
            object.__setattr__(self, "_explicit", self._explicit | {name})
        object.__setattr__(self, name, value)

    def explicit(self) -> frozenset[str]:
        """The options the caller set (constructor arguments, later assignments): no checkpoint value replaces them."""
        return self._explicit & {f.name for f in fields(self)}


def option_defaults(cls: type) -> dict[str, Any]:
    """``{field: default}`` of an options class (what the CLI shows and starts from)."""
    inst = cls()
    return {f.name: getattr(inst, f.name) for f in fields(cls)}


def make_options(cls: type[A], values: Mapping[str, Any], explicit: Iterable[str]) -> A:
    """``cls(**values)`` (any options class) whose explicit options, where it keeps them (:class:`TrainingOptions`),
    are only ``explicit`` (the CLI's: the flags given, not the command's own defaults)."""
    opts = cls(**values)
    if isinstance(opts, TrainingOptions):
        object.__setattr__(opts, "_explicit", frozenset(explicit) & frozenset(values))
    return opts


def restore(options: T, recorded: Mapping[str, Any]) -> T:
    """The merge rule (see the module): a copy of ``options`` whose ``RESTORED`` settings are the caller's explicit
    values, else those a checkpoint ``recorded`` (:func:`vinvl.oscar.checkpoint.training_settings`), else the
    defaults."""
    cls = type(options)
    defaults = {name: getattr(cls(), name) for name in cls.RESTORED}
    mine = options.explicit()
    values = {f.name: getattr(options, f.name) for f in fields(cls)}
    values.update(merge_settings({n: values[n] for n in mine if n in defaults}, recorded, defaults))
    return make_options(cls, values, mine)


# -- pretraining -----------------------------------------------------------------------------------------
@dataclass
class PretrainOptions(TrainingOptions):
    """Oscar+ pretraining (``run_oscarplus_pretrain.py``)."""

    batch_size: int = 8
    learning_rate: float = 1e-4
    weight_decay: float = 0.01
    max_steps: int = 1000
    max_grad_norm: float = 10.0
    save_steps: int = 500
    max_seq_length: int = 35
    max_img_seq_length: int = 50
    drop_out: float = 0.1  # hidden dropout, set on the starting model's config as the original's --drop_out
    do_lower_case: bool = True  # the model zoo's --do_lower_case (uncased BERT)
    mask_prob: float = 0.15
    texta_false_prob: float = 0.25
    textb_sample_mode: int = 0
    num_contrast_classes: int = 3
    use_gtlabels: bool = True  # text_b from a label row's gt_objects when it has them (--use_gtlabels 1)
    use_b: bool = True  # text_b in the input (--use_b 0: [CLS] text_a [SEP] + regions)
    mask_loss_for_unmatched: bool = True  # MLM on a replacement text_b of another image too
    chunk_start: Optional[int] = None  # with chunk_end: only chunks chunk_start .. chunk_end - 1 of chunked datasets
    chunk_end: Optional[int] = None
    extra_textb_sample_mode: int = 1  # the extra corpus's textb_sample_mode (the original's default 1)
    extra_loss_weight: float = 0.0  # the extra corpus's loss weight; the main corpus's is 1 - it


# -- retrieval -------------------------------------------------------------------------------------------
@dataclass
class RetrievalOptions(TrainingOptions):
    """Image-text retrieval (``run_retrieval.py``)."""

    # the original restores od_label_type too; att_mask_type it does not (a CL model evaluated without
    # --att_mask_type CL runs with full attention there), but the mask is part of the inputs the model was trained on
    RESTORED: ClassVar[tuple[str, ...]] = ("max_seq_length", "max_img_seq_length", "add_od_labels", "od_label_type",
                                           "att_mask_type")

    learning_rate: float = 2e-5
    num_train_epochs: float = 20.0
    save_steps: int = 5000
    max_seq_length: int = 70
    max_img_seq_length: int = 50
    add_od_labels: bool = True
    captions_per_image: int = 5  # --num_captions_per_img_train / _val
    num_labels: int = 2
    loss_type: str = "sfmx"
    drop_out: float = 0.1
    od_label_type: str = "vg"  # which {split}_{type}_labels.pt holds the tags of .pt features
    att_mask_type: str = "CLR"

    def check(self) -> "RetrievalOptions":
        """One error naming the option for a value no run can use."""
        super().check()
        check_att_mask_type(self.att_mask_type)
        if self.od_label_type not in OD_LABEL_TYPES:
            raise VinvlError(f"--od-label-type {self.od_label_type!r}: expected one of {', '.join(OD_LABEL_TYPES)}")
        return self


# -- captioning ------------------------------------------------------------------------------------------
@dataclass
class CaptionOptions(TrainingOptions):
    """Image captioning, cross-entropy and SCST (``run_captioning.py``; same names and defaults unless noted)."""

    # the decoding layout (the original's restore_training_settings); the defaults are the VinVL COCO recipe's
    RESTORED: ClassVar[tuple[str, ...]] = ("max_seq_length", "max_seq_a_length", "max_img_seq_length", "add_od_labels",
                                           "do_lower_case")

    batch_size: int = 64
    learning_rate: float = 3e-5
    num_train_epochs: float = 40.0
    save_steps: int = -1
    eval_batch_size: int = 16
    max_seq_length: int = 70
    max_seq_a_length: int = 40
    max_img_seq_length: int = 50
    mask_prob: float = 0.15
    max_masked_tokens: int = 3
    add_od_labels: bool = True  # the original's default is off; every released recipe turns it on
    do_lower_case: bool = True
    drop_out: float = 0.1
    tie_weights: bool = False
    freeze_embedding: bool = False
    label_smoothing: float = 0.0
    drop_worst_ratio: float = 0.0
    drop_worst_after: int = 0
    scst: bool = False
    sc_train_sample_n: int = 5
    sc_baseline_type: str = "greedy"
    sc_beam_size: int = 1
    cider_cached_tokens: Optional[str] = None  # None: document frequencies of each batch ("corpus")
    max_gen_length: int = 20
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0


@dataclass
class DecodeOptions:
    """Decoding of captioning evaluation and prediction (``--num_beams --max_gen_length ...``; the model zoo's).
    ``num_keep_best``: each image's K best finished beams, best first (the original's ``--num_keep_best``; at most
    ``num_beams``); the first is the caption."""

    num_beams: int = 5
    max_gen_length: int = 20
    length_penalty: float = 1.0
    repetition_penalty: float = 1.0
    eval_batch_size: int = 16
    num_keep_best: int = 1
    use_cache: bool = True


@dataclass
class CBSOptions:
    """Constrained beam search (the original's ``--use_cbs``, NoCaps; :mod:`vinvl.oscar.cbs`): captions with at least
    ``min_constraints`` of each image's constraints (all of them when it has fewer; the original's
    ``--min_constraints_to_satisfy``), at most ``max_constraints`` given, the hierarchy NMS at ``nms_threshold``.
    ``cbs_group``: the original scores the first step of every image of a batch with the batch's first image, so its
    captions depend on its ``--per_gpu_eval_batch_size`` (2 in its NoCaps command); images are taken ``cbs_group`` at a
    time in the split's order to match it, whatever the batch (1: each image its own). The four files: the boxes,
    constraint2tokens, tokenforms and class hierarchy (None: the split yaml's ``cbs_box``, ``cbs_constraint``,
    ``cbs_tokenforms``, ``cbs_hierarchy``)."""

    min_constraints: int = 2
    cbs_group: int = 2
    max_constraints: int = 3
    nms_threshold: float = 0.85
    cbs_box: Optional[Path] = None
    cbs_constraint: Optional[Path] = None
    cbs_tokenforms: Optional[Path] = None
    cbs_hierarchy: Optional[Path] = None


# -- VQA, GQA, NLVR2 ------------------------------------------------------------------------------------
@dataclass
class ClassificationOptions(TrainingOptions):
    """What the classification fine-tunings share (``run_vqa.py`` / ``run_gqa.py`` / ``run_nlvr.py``)."""

    RESTORED: ClassVar[tuple[str, ...]] = ("max_seq_length", "max_img_seq_length")

    eval_batch_size: int = 256
    num_train_epochs: float = 25.0
    log_steps: int = 50
    max_seq_length: int = 128
    max_img_seq_length: int = 50
    drop_out: float = 0.3
    classifier: str = "linear"
    cls_hidden_scale: int = 3
    loss_type: str = "bce"


ADJUST_DP_EPOCH, ADJUST_DP = 3, 0.3  # run_vqa.py --adjust_dp: from epoch 3 (0-based) these dropouts are 0.3


@dataclass
class VQAOptions(ClassificationOptions):
    """VQA 2.0, the model zoo's base command: seq 128, 50 regions, batch 32, lr 5e-5, 25 epochs, dropout 0.3,
    weight decay 0.05, BCE, linear classifier; and ``run_vqa.py``'s schedule options (off by default, as there)."""

    adjust_dp: bool = False  # --adjust_dp: from epoch ADJUST_DP_EPOCH the head's and embeddings' dropout is ADJUST_DP
    adjust_loss_epoch: Optional[int] = None  # --adjust_loss --adjust_loss_epoch N: bce from epoch N; None: never
    save_after_epoch: int = -1  # --save_after_epoch N: no checkpoint is written in epochs 0..N (the last step's is)

    def check(self) -> "VQAOptions":
        """The common checks, and one error naming the option for a schedule option no run can use."""
        super().check()
        if self.adjust_loss_epoch is not None and self.adjust_loss_epoch < 0:
            raise VinvlError(f"--adjust-loss-epoch {self.adjust_loss_epoch}: must not be negative (0: from the start)")
        if self.save_after_epoch < -1:
            raise VinvlError(f"--save-after-epoch {self.save_after_epoch}: must be -1 (every save) or an epoch")
        return self

    def loss_type_at(self, epoch: int) -> str:
        """The loss of a step in ``epoch`` (0-based): ``bce`` from ``adjust_loss_epoch`` on, else ``loss_type``
        (``run_vqa.py`` sets ``model.loss_type = 'bce'`` at the start of each epoch >= ``--adjust_loss_epoch``)."""
        return "bce" if self.adjust_loss_epoch is not None and epoch >= self.adjust_loss_epoch else self.loss_type

    def dropout_at(self, epoch: int) -> float:
        """The dropout of the classifier's input, the image embedding and the word embeddings in ``epoch``:
        ``ADJUST_DP`` from ``ADJUST_DP_EPOCH`` on with ``adjust_dp``, else ``drop_out`` (the encoder layers keep it)."""
        return ADJUST_DP if self.adjust_dp and epoch >= ADJUST_DP_EPOCH else self.drop_out

    def writes_checkpoint(self, step: int, per_epoch: int) -> bool:
        """``run_vqa.py`` saves at the end of epoch e only if e > ``save_after_epoch``: a save after step ``step``
        (1-based) falls in epoch ``(step - 1) // per_epoch``."""
        return (step - 1) // per_epoch > self.save_after_epoch


@dataclass
class GQAOptions(ClassificationOptions):
    """GQA, the model zoo's base command: seq 165, 45 regions, batch 48, lr 5e-5, 5 epochs, cross-entropy."""

    batch_size: int = 48
    num_train_epochs: float = 5.0
    max_seq_length: int = 165
    max_img_seq_length: int = 45
    cls_hidden_scale: int = 2
    loss_type: str = "xe"


@dataclass
class NLVR2Options(ClassificationOptions):
    """NLVR2, the model zoo's base command (``--use_pair``: the pair model): seq 55, 40 regions per image, batch 72,
    lr 3e-5, 20 epochs, 10000 warm-up steps, cross-entropy, MLP classifier."""

    batch_size: int = 72
    learning_rate: float = 3e-5
    warmup_steps: int = 10000
    num_train_epochs: float = 20.0
    eval_batch_size: int = 64
    max_seq_length: int = 55
    max_img_seq_length: int = 40
    classifier: str = "mlp"
    loss_type: str = "xe"
    use_label_seq: bool = False  # each image's tags after the sentence (off in the model zoo)
    use_pair: bool = True  # --use_pair: the pair model; False: one sequence over both images (the original's default)

    RESTORED: ClassVar[tuple[str, ...]] = ("max_seq_length", "max_img_seq_length", "use_label_seq", "use_pair")


TASK_OPTIONS: dict[str, type] = {
    "pretrain": PretrainOptions, "retrieval": RetrievalOptions, "caption": CaptionOptions, "vqa": VQAOptions,
    "gqa": GQAOptions, "nlvr2": NLVR2Options,
}
