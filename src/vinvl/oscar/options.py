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
from typing import Any, ClassVar, Iterable, Mapping, Optional, TypeVar

from ..errors import VinvlError
from ..training.options import EngineOptions

SCHEDULERS = ("linear", "constant")

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

    RESTORED: ClassVar[tuple[str, ...]] = ("max_seq_length", "max_img_seq_length", "add_od_labels")

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
    """Decoding of captioning evaluation and prediction (``--num_beams --max_gen_length ...``; the model zoo's)."""

    num_beams: int = 5
    max_gen_length: int = 20
    length_penalty: float = 1.0
    repetition_penalty: float = 1.0
    eval_batch_size: int = 16
    use_cache: bool = True


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


@dataclass
class VQAOptions(ClassificationOptions):
    """VQA 2.0, the model zoo's base command: seq 128, 50 regions, batch 32, lr 5e-5, 25 epochs, dropout 0.3,
    weight decay 0.05, BCE, linear classifier."""


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
    """NLVR2 (``--use_pair``), the model zoo's base command: seq 55, 40 regions per image, batch 72, lr 3e-5,
    20 epochs, 10000 warm-up steps, cross-entropy, MLP classifier."""

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

    RESTORED: ClassVar[tuple[str, ...]] = ("max_seq_length", "max_img_seq_length", "use_label_seq")


TASK_OPTIONS: dict[str, type] = {
    "pretrain": PretrainOptions, "retrieval": RetrievalOptions, "caption": CaptionOptions, "vqa": VQAOptions,
    "gqa": GQAOptions, "nlvr2": NLVR2Options,
}
