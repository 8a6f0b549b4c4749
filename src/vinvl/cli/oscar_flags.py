"""Every option of the ``vinvl oscar`` commands, defined once: its flag, type, range and help (:data:`OPTIONS`),
and how a command takes them (:func:`takes`), plus the images -> regions step the predict commands share.

A command names the options it takes with :func:`takes`; their defaults come from the task's options class
(:mod:`vinvl.oscar.options`, where every default lives) or, for the options that are no training setting,
from :data:`OPTIONS`. So the same option has the same name, range and help in every command. The command
modules import this one and nothing imports them but :mod:`vinvl.cli.oscar` (the ``oscar`` group), whose
option table :mod:`vinvl.cli.oscar_options` prints: a tree, no circle. Nothing here imports torch.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Callable, Iterable, Optional, Sequence

import typer

from ..errors import VinvlError
from ..oscar import options as O
from ..dtypes import DTYPE_HELP, DTYPES
from .options import DEVICE_POLICY, device_or_auto, given_on_command_line, one_of, output_folder

REQUIRED = object()  # no default: the option must be given
RESTORED = object()  # default: the value the checkpoint was trained with, else the task's


@dataclass(frozen=True)
class Opt:
    """One option: its flags, value type, help, range or choices, and its default when no options class has it."""

    flags: tuple[str, ...]
    type: Any
    help: str
    default: Any = None
    min: Optional[float] = None
    max: Optional[float] = None
    choices: tuple[str, ...] = ()
    callback: Optional[Callable[[Any], Any]] = None

    def parameter_info(self, restored: bool = False) -> Any:
        """The typer option of this definition."""
        callback = self.callback or (one_of(*self.choices) if self.choices else None)
        help = self.help + (" [default: the checkpoint's training value, else the task's]" if restored else "")
        kw: dict[str, Any] = {"help": help}
        if self.min is not None:
            kw["min"] = self.min
        if self.max is not None:
            kw["max"] = self.max
        if callback is not None:
            kw["callback"] = callback
        if self.choices:
            kw["metavar"] = "|".join(self.choices)
        return typer.Option(*self.flags, **kw)


def _o(*flags: str, type: Any = int, help: str, **kw: Any) -> Opt:
    return Opt(tuple(flags), type, help, **kw)


OPTIONAL_PATH = Optional[Path]

OPTIONS: dict[str, Opt] = {
    # -- files -------------------------------------------------------------------------------------------
    "out": _o("-o", "--out", type=Path, default=REQUIRED, callback=output_folder,
              help="Output folder (made if needed; an existing file is refused)."),
    "init": _o("--init", type=OPTIONAL_PATH, help="Checkpoint to start from: a folder, a run folder (its newest "
               "checkpoint-N) or a .zip of a pretrained or fine-tuned Oscar+ (its encoder is required; head weights "
               "that fit are kept, the others get BERT's initialisation); or a plain BERT folder (config.json, "
               "pytorch_model.bin or model.safetensors, vocab.txt) or bert-base-uncased: its weights, the image "
               "embedding and heads newly initialised as the original does (one line names them)."),
    "vocab": _o("--vocab", type=OPTIONAL_PATH, help="vocab.txt (or a folder holding one); default: --init's."),
    "config": _o("--config", type=OPTIONAL_PATH, help="config.json of a fresh model (without --init; default: BERT-base)."),
    "features": _o("--features", type=OPTIONAL_PATH, help="Region features of every split read: a features folder "
                   "(features.tsv, tags in label.tsv or predictions.tsv), a feature TSV of either layout, or a .pt "
                   "feature dict (default: the task's feature file in DATA_DIR)."),
    "resume": _o("--resume", type=bool, default=False, help="Continue from OUT's newest complete checkpoint-N, "
                 "exactly as the uninterrupted run (random states and data position included)."),
    "data_dir": _o("--data-dir", type=OPTIONAL_PATH, help="Where relative image_feature_path folders are (the "
                   "original's --data_dir; default: the yaml's folder)."),
    "captions": _o("--captions", type=OPTIONAL_PATH, help="Caption json ([{image_id, caption}] or COCO's); overrides "
                   "the split yaml's."),
    "label_file": _o("--label-file", type=OPTIONAL_PATH, help="The ans2label pickle (default: the checkpoint's "
                     "answers.json, else DATA_DIR's or DATA_DIR/cache's pickle)."),
    "label2ans": _o("--label2ans", type=OPTIONAL_PATH, help="The label2ans pickle naming the answers."),
    "txt_data_dir": _o("--txt-data-dir", type=OPTIONAL_PATH, help="Where the train/val questions are (the original's "
                       "--txt_data_dir; default: DATA_DIR)."),
    # -- splits ------------------------------------------------------------------------------------------
    "train_split": _o("--train-split", type=str, default="train", help="The training split: a split name of the "
                      "task or a .json file."),
    "eval_split": _o("--eval-split", type=Optional[str], help="Scored at every save into eval_logs.json: a split name "
                     "of the task, a file, or 'none'."),
    "split": _o("--split", type=str, help="The split to read: a split name of the task (DATA_DIR's files) or a .json file."),
    "data_label_type": _o("--data-label-type", type=str, default="mask", choices=("mask", "faster"),
                          help="VQA question files: mask (*_qla_mrcnn.json) or faster (*_qla.json)."),
    "train_data_type": _o("--train-data-type", type=str, default="all", choices=("all", "bal"),
                          help="GQA training questions: all or bal (the model zoo trains on all)."),
    "eval_data_type": _o("--eval-data-type", type=str, choices=("all", "bal", "unbal"),
                         help="The evaluation split's type: all, bal or unbal (NLVR2)."),
    "use_vg": _o("--use-vg", type=bool, default=False, help="Read the training questions from "
                 "train2014_vg_qla_mrcnn.json (VQA train with Visual Genome's QA in one file, as the original reads it) "
                 "instead of train2014_qla_mrcnn.json: the original's --use_vg (with --train-split train, "
                 "--data-label-type mask)."),
    "use_vg_dev": _o("--use-vg-dev", type=bool, default=False, help="The val split is Visual Genome's QA "
                     "(vg_qla_mrcnn.json) and every split's features are train+val_img_frcnn_feats.pt: the original's "
                     "--use_vg_dev (with --data-label-type mask)."),
    "keys": _o("--keys", type=OPTIONAL_PATH, help="Image ids to evaluate on, e.g. test_img_keys.tsv (COCO 5K) or "
               "test_img_keys_1k.tsv (in DATA_DIR or a path); default: every image of the split."),
    "name": _o("--name", type=str, default=REQUIRED, help="Split name: NAME.yaml, NAME.feature.tsv, NAME.label.tsv, "
               "NAME_caption.json."),
    # -- the run -----------------------------------------------------------------------------------------
    "device": _o("--device", type=str, default="auto", callback=device_or_auto,
                 help=f"{DEVICE_POLICY}; under torchrun each process takes cuda:LOCAL_RANK."),
    "precision": _o("--dtype", type=str, default="fp32", choices=DTYPES, help=DTYPE_HELP),
    "batch_size": _o("--batch-size", min=1, help="Training examples per micro-batch per process "
                     "(--per_gpu_train_batch_size; retrieval: matched pairs, each adding an unmatched one; SCST: images)."),
    "gradient_accumulation_steps": _o("--gradient-accumulation-steps", min=1, help="Micro-batches per optimizer step."),
    "eval_batch_size": _o("--eval-batch-size", min=1, help="Examples per inference batch (evaluation, prediction)."),
    "learning_rate": _o("--learning-rate", type=float, min=0, help="Peak learning rate (AdamW)."),
    "weight_decay": _o("--weight-decay", type=float, min=0, help="AdamW weight decay (none on biases and LayerNorm weights)."),
    "adam_epsilon": _o("--adam-epsilon", type=float, min=0, help="AdamW epsilon."),
    "warmup_steps": _o("--warmup-steps", min=0, help="Linear warm-up steps."),
    "scheduler": _o("--scheduler", type=str, choices=O.SCHEDULERS, help="After warm-up: linear decay to 0, or constant."),
    "num_train_epochs": _o("--num-train-epochs", type=float, min=0, help="Epochs (when --max-steps is 0)."),
    "max_steps": _o("--max-steps", min=0, help="Optimizer steps; 0: --num-train-epochs decide."),
    "max_grad_norm": _o("--max-grad-norm", type=float, min=0, help="Gradient clipping norm (0: none)."),
    "seed": _o("--seed", min=0, help="Seed of the initialisation, the data order and every example's random choices."),
    "save_steps": _o("--save-steps", min=-1, help="Save (and evaluate) every N steps; 0: every epoch; -1: only the last "
                     "step (the last step is always saved)."),
    "save_after_epoch": _o("--save-after-epoch", min=-1, help="The saves of epochs 0..N (0-based) write no checkpoint "
                           "(they still evaluate into eval_logs.json; the last step's is written): the original's "
                           "--save_after_epoch; -1: every save writes one."),
    "log_steps": _o("--log-steps", min=0, help="Log the mean figures every N steps (0: only the last step)."),
    # -- inputs and model --------------------------------------------------------------------------------
    "max_seq_length": _o("--max-seq-length", min=4, max=4096, help="Text tokens, special tokens included (padded)."),
    "max_img_seq_length": _o("--max-img-seq-length", min=1, max=4096, help="Regions per image (cut or zero-padded)."),
    "add_od_labels": _o("--add-od-labels/--no-add-od-labels", type=bool, help="The image's tags after the text."),
    "drop_out": _o("--drop-out", type=float, min=0, max=1, help="Hidden dropout (the original's --drop_out; attention "
                   "dropout keeps the config's)."),
    "adjust_dp": _o("--adjust-dp", type=bool, help="From epoch 3 (0-based) the dropout of the classifier's input, "
                    "the image embedding and the word embeddings is 0.3 (the original's --adjust_dp; the encoder "
                    "layers keep --drop-out)."),
    "adjust_loss_epoch": _o("--adjust-loss-epoch", type=Optional[int], min=0, help="From this epoch (0-based) the loss "
                            "is bce whatever --loss-type (the original's --adjust_loss --adjust_loss_epoch N; its -1 is "
                            "0 here); default: never."),
    "classifier": _o("--classifier", type=str, choices=("linear", "mlp"), help="The classifier over the pooled output."),
    "cls_hidden_scale": _o("--cls-hidden-scale", min=1, max=64, help="MLP classifier width, in hidden sizes."),
    "loss_type": _o("--loss-type", type=str, choices=("bce", "xe", "sfmx", "kl"), help="bce (VQA's soft scores), "
                    "xe / sfmx (softmax cross-entropy), kl."),
    "num_labels": _o("--num-labels", min=1, max=2, help="2: softmax classifier (the original's default); 1: regression."),
    "captions_per_image": _o("--captions-per-image", min=1, help="Captions read per image "
                             "(--num_captions_per_img_train / _val)."),
    "od_label_type": _o("--od-label-type", type=str, choices=O.OD_LABEL_TYPES, help="The tags of .pt features: the "
                        "{split}_{type}_labels.pt beside them; a features folder's tags are its label.tsv or "
                        "predictions.tsv, taken with vg only."),
    "att_mask_type": _o("--att-mask-type", type=str, choices=O.ATT_MASK_TYPES, help="Attention over caption (C), "
                        "tags (L) and regions (R): CLR all; CL, CR, LR: each part attends to itself and only the two "
                        "named to each other."),
    "use_label_seq": _o("--use-label-seq/--no-label-seq", type=bool, help="Each image's tags after the sentence "
                        "(off in the model zoo)."),
    "use_pair": _o("--use-pair/--no-pair", type=bool, help="The pair model (the original's --use_pair, the model "
                   "zoo's: each image its own sequence, the two pooled outputs concatenated into the classifier), or "
                   "one sequence over both images' regions (its default without --use_pair)."),
    # -- pretraining -------------------------------------------------------------------------------------
    "mask_prob": _o("--mask-prob", type=float, min=0, max=1, help="Share of text tokens masked for MLM."),
    "texta_false_prob": _o("--texta-false-prob", type=float, min=0, max=0.5, help="Share of examples whose text_a is "
                           "replaced (label num_contrast_classes - 1); 0.5 - it have text_b replaced (label 1)."),
    "textb_sample_mode": _o("--textb-sample-mode", min=0, max=2, help="Replacement text_b: 0 any text of another "
                            "image's row, 1 its text_b, 2 a question's answer."),
    "num_contrast_classes": _o("--num-contrast-classes", min=2, max=3, help="3 (Oscar+: 0 < texta-false-prob < 0.5) "
                               "or 2 (vanilla Oscar: texta-false-prob 0 or 0.5)."),
    "use_gtlabels": _o("--use-gtlabels/--no-gtlabels", type=bool, help="text_b from a label row's gt_objects when present."),
    "use_b": _o("--use-b/--no-use-b", type=bool, help="text_b in the input; without it [CLS] text_a [SEP] + regions, "
                "and a caption row's unmatched examples all replace text_a (the original's --use_b 0; 3 contrastive "
                "classes unless --texta-false-prob 0.5)."),
    "mask_loss_for_unmatched": _o("--mask-loss-for-unmatched/--no-mask-loss-for-unmatched", type=bool, help="MLM on a "
                                  "replacement text_b of another image too (off: it is neither masked nor predicted; "
                                  "the original's --mask_loss_for_unmatched 0)."),
    "chunk_start": _o("--chunk-start", min=0, help="With --chunk-end: read only chunks chunk-start .. chunk-end - 1 of "
                      "the chunked datasets (googlecc, sbu, oi, objects365, tagoi; every such chunk must be there); the "
                      "original's --chunk_start_id."),
    "chunk_end": _o("--chunk-end", min=1, help="The end (exclusive) of --chunk-start's chunks; the original's --chunk_end_id."),
    "extra_corpus": _o("--extra-corpus", type=OPTIONAL_PATH, help="A second corpus yaml (the original's "
                       "--extra_dataset_file): each micro-batch also takes --batch-size of its examples, in its own "
                       "seeded order; the loss is (1 - w) x the corpus batch's + w x its (w: --extra-loss-weight)."),
    "extra_textb_sample_mode": _o("--extra-textb-sample-mode", min=0, max=2, help="--textb-sample-mode of the extra "
                                  "corpus (the original's --extra_textb_sample_mode)."),
    "extra_loss_weight": _o("--extra-loss-weight", type=float, min=0, max=1, help="w: the extra corpus's loss weight, "
                            "the corpus's 1 - w (the original's --extra_loss_weight; 0: the extra batches do not train)."),
    # -- captioning --------------------------------------------------------------------------------------
    "max_seq_a_length": _o("--max-seq-a-length", min=3, max=4096, help="Caption tokens, [CLS] and [SEP] included."),
    "max_masked_tokens": _o("--max-masked-tokens", min=1, help="At most this many caption tokens masked."),
    "do_lower_case": _o("--do-lower-case/--no-lower-case", type=bool, help="Lower-case text before word pieces."),
    "tie_weights": _o("--tie-weights/--no-tie-weights", type=bool, help="Tie the MLM decoder to the word embeddings."),
    "freeze_embedding": _o("--freeze-embedding/--no-freeze-embedding", type=bool, help="Keep the word embeddings fixed."),
    "label_smoothing": _o("--label-smoothing", type=float, min=0, max=1, help="Label smoothing of the caption loss."),
    "drop_worst_ratio": _o("--drop-worst-ratio", type=float, min=0, max=1, help="Share of each batch's largest token "
                           "losses dropped."),
    "drop_worst_after": _o("--drop-worst-after", min=0, help="Loss calls before --drop-worst-ratio applies."),
    "scst": _o("--scst/--xe", type=bool, help="Self-critical training with a CIDEr-D reward (start from an XE "
               "checkpoint), or cross-entropy."),
    "sc_train_sample_n": _o("--sc-train-sample-n", min=1, help="SCST samples per image."),
    "sc_baseline_type": _o("--sc-baseline-type", type=str, choices=("greedy", "sample"), help="SCST baseline: the greedy "
                           "caption's reward, or the other samples' mean."),
    "sc_beam_size": _o("--sc-beam-size", min=1, help="Beams of the SCST greedy baseline."),
    "cider_cached_tokens": _o("--cider-cached-tokens", type=Optional[str], help="Document frequencies for CIDEr-D "
                              "(coco-train-words.p); default: each batch's."),
    "max_gen_length": _o("--max-gen-length", min=2, max=4096, help="Caption length decoded or sampled, [CLS] and "
                         "[SEP] included."),
    "temperature": _o("--temperature", type=float, min=1e-6, help="SCST sampling temperature."),
    "top_k": _o("--top-k", min=0, help="SCST sampling: keep the k most likely tokens (0: all)."),
    "top_p": _o("--top-p", type=float, min=0, max=1, help="SCST nucleus sampling threshold."),
    "num_beams": _o("--num-beams", min=1, help="Beam search width."),
    "num_keep_best": _o("--num-keep-best", min=1, help="Keep each image's K best finished beams (at most --num-beams): "
                        "OUT/predictions.tsv lists them with their conf, best first (the original's prediction file); "
                        "results.json and the metrics take the first."),
    "length_penalty": _o("--length-penalty", type=float, min=0, help="Hypotheses score sum(log p) / length ** this."),
    "repetition_penalty": _o("--repetition-penalty", type=float, min=1, help="Logits of tokens already generated "
                             "divided (positive) or multiplied (negative) by this."),
    "spice": _o("--spice/--no-spice", type=Optional[bool], help="SPICE too (default: when its CoreNLP jars are "
                "installed, else reported 'unavailable')."),
    "metrics": _o("--metrics/--no-metrics", type=bool, default=True, help="Score against the split's captions."),
    # -- constrained beam search (NoCaps) ----------------------------------------------------------------
    "cbs": _o("--cbs", type=bool, default=False, help="Constrained beam search (the original's --use_cbs, NoCaps): "
              "each image's detected classes become words the caption must contain; also writes OUT/predictions.tsv "
              "(the original's prediction file) and OUT/constraints.tsv."),
    "min_constraints": _o("--min-constraints", min=0, help="With --cbs: captions hold at least this many of the image's "
                          "constraints (all when it has fewer; --min_constraints_to_satisfy)."),
    "cbs_group": _o("--cbs-group", min=1, help="With --cbs: the original scores the first word of every image of a "
                    "batch with the batch's first image, so its captions depend on --per_gpu_eval_batch_size (2 in its "
                    "NoCaps command): images go this many at a time to match (1: each image its own)."),
    "cbs_box": _o("--cbs-box", type=OPTIONAL_PATH, help="With --cbs: boxes per image (key TAB [{class, conf, rect}]); "
                  "default: the split yaml's cbs_box."),
    "cbs_constraint": _o("--cbs-constraint", type=OPTIONAL_PATH, help="With --cbs: each word's word pieces (word TAB "
                         "piece1,piece2); default: the split yaml's cbs_constraint."),
    "cbs_tokenforms": _o("--cbs-tokenforms", type=OPTIONAL_PATH, help="With --cbs: each word piece's forms (piece TAB "
                         "form1,form2); default: the split yaml's cbs_tokenforms."),
    "cbs_hierarchy": _o("--cbs-hierarchy", type=OPTIONAL_PATH, help="With --cbs: the Open Images class hierarchy json; "
                        "default: the split yaml's cbs_hierarchy."),
    "cbs_class_map": _o("--cbs-class-map", type=OPTIONAL_PATH, help="With --cbs and no --cbs-box (the detector's own "
                        "boxes): a map of the hierarchy's classes to the detector's (e.g. the FourSets release's "
                        "oi_vgoiv6_class2ind.json): only the boxes of mapped classes, renamed, become constraints."),
    "nocaps_image_info": _o("--nocaps-image-info", type=OPTIONAL_PATH, help="nocaps_val_image_info.json (or test's): "
                            "also write OUT/nocaps_submission.json for EvalAI ([{image_id, caption}], the ids by image "
                            "file name)."),
    # -- retrieval ---------------------------------------------------------------------------------------
    "folds": _o("--folds", min=1, default=1, help="Also average R@K over this many image folds (5 on the 5K keys: COCO 1K)."),
    "two_stage": _o("--two-stage", min=0, default=0, help="k > 0: the full model scores only each image's and each "
                    "caption's top-k candidates of a cheap first stage (--first-stage)."),
    "first_stage": _o("--first-stage", type=str, default="tags", choices=("tags", "embed"), help="tags: the model "
                      "without the regions; embed: cosine of mean-pooled caption and image embeddings (cheaper, weaker)."),
    "compare_full": _o("--compare-full", type=bool, default=False, help="With --two-stage: also the full matrix, and "
                       "the recall lost."),
    "caption_index": _o("--caption-index", type=OPTIONAL_PATH, help="Score only each image's candidates listed "
                        "in this file (--eval_caption_index_file, e.g. minival_caption_indexs_top20.pt; in DATA_DIR or a "
                        "path; train: of --eval-split): image->text R@K among them."),
    "save_scores": _o("--save-scores", type=bool, default=False, help="Also write OUT/scores.pt (scores, image_keys, "
                      "caption_to_image)."),
    "image": _o("--image", type=Optional[list[str]], help="Image key (repeatable; default: every image)."),
    "top": _o("--top", min=1, default=5, help="How many results to list per query (answers per question; captions "
              "per image and images per caption)."),
    # -- prediction on images ----------------------------------------------------------------------------
    "question": _o("-q", "--question", type=list[str], default=REQUIRED, help="A question (repeatable); each image gets each."),
    "sentence": _o("-s", "--sentence", type=list[str], default=REQUIRED, help="A statement about the pair (repeatable)."),
    "detector": _o("--detector", type=Optional[str], help="Registry detector name (default: the released VG model if "
                   "cached, else the shipped demo model)."),
    "detector_weights": _o("--detector-weights", type=OPTIONAL_PATH, help="Detector weights file (X152-C4 preset)."),
    "labelmap": _o("--labelmap", type=OPTIONAL_PATH, help="The detector's label map (with --detector-weights)."),
    "regions_dir": _o("--regions-dir", type=OPTIONAL_PATH, help="Where the detector's outputs go (default OUT/regions; "
                      "reused when complete)."),
    "boxes": _o("--boxes", type=OPTIONAL_PATH, help="Given boxes per image (as `vinvl extract --boxes`): the regions "
                "and tags of these boxes instead of detected ones."),
}

def _field_defaults(source: Any) -> dict[str, Any]:
    if source is None:
        return {}
    if isinstance(source, dict):
        return source
    return O.option_defaults(source if isinstance(source, type) else type(source))


def takes(*names: str, defaults: Any = None, restored: Sequence[str] = (), **fixed: Any) -> Callable:
    """Give a command the options ``names``; it receives their values as ``given`` (a dict). Defaults: ``fixed``
    (per command), else the field of the ``defaults`` options class, else :data:`OPTIONS`'; ``restored`` names
    default to None (the checkpoint's training value, else the task's)."""
    field_defaults = _field_defaults(defaults)

    def deco(fn: Callable) -> Callable:
        sig = inspect.signature(fn)
        hints = typing.get_type_hints(fn, include_extras=True)
        own = [p.replace(annotation=hints.get(p.name, p.annotation)) for p in sig.parameters.values() if p.name != "given"]
        params, ann = list(own), {p.name: p.annotation for p in own}
        for name in names:
            opt = OPTIONS[name]
            is_restored = name in restored
            default = fixed.get(name, None if is_restored else field_defaults.get(name, opt.default))
            kind = opt.type
            if (default is None or is_restored) and typing.get_origin(kind) is not typing.Union:
                kind = Optional[kind]
            annotation = Annotated[kind, opt.parameter_info(is_restored)]
            p = inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation,
                                  **({} if default is REQUIRED else {"default": default}))
            params.append(p)
            ann[name] = annotation
        # typer hands the running command's context to a parameter of this type: it tells what the line gave
        params.append(inspect.Parameter(CONTEXT, inspect.Parameter.KEYWORD_ONLY, annotation=typer.Context))
        ann[CONTEXT] = typer.Context

        @functools.wraps(fn)
        def wrapper(**kw: Any) -> Any:
            ctx = kw.pop(CONTEXT, None)
            given = Given({n: kw.pop(n) for n in names if n in kw}, explicit=given_on_command_line(ctx, names))
            return fn(**kw, given=given)

        wrapper.__signature__ = inspect.Signature([p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in params])
        wrapper.__annotations__ = ann
        del wrapper.__wrapped__
        wrapper.oscar_options = {n: (fixed.get(n, None if n in restored else field_defaults.get(n, OPTIONS[n].default)))
                                 for n in names}
        return wrapper

    return deco


def options_of(cls: type, given: dict[str, Any]) -> Any:
    """An options object of ``cls`` from its defaults and the values ``given`` (None: keep the default); its
    explicit options (the ones a checkpoint's recorded value never replaces) are those the command line gave."""
    names = {f.name for f in dataclasses.fields(cls)}
    values = {k: v for k, v in given.items() if k in names and v is not None}
    return O.make_options(cls, values, getattr(given, "explicit", values))


def fields_of(cls: type, exclude: Sequence[str] = ()) -> list[str]:
    """The option names of an options class's fields (all of them :data:`OPTIONS`), less ``exclude``."""
    return [f.name for f in dataclasses.fields(cls) if f.name not in exclude]


CBS = ("cbs", "min_constraints", "cbs_group", "cbs_box", "cbs_constraint", "cbs_tokenforms", "cbs_hierarchy")


def cbs_options(given: dict[str, Any]) -> Optional[O.CBSOptions]:
    """The constrained beam search options with ``--cbs``, else None; a CBS option without ``--cbs`` is an error."""
    if not given.get("cbs"):
        defaults = O.option_defaults(O.CBSOptions)
        stray = [n for n in CBS[1:] if given.get(n, defaults[n]) != defaults[n]]
        if stray:
            raise VinvlError(f"{OPTIONS[stray[0]].flags[0]} applies only with --cbs")
        return None
    return options_of(O.CBSOptions, given)


def cbs_classes(given: dict[str, Any]) -> Optional[dict[str, str]]:
    """``--cbs-class-map`` resolved against the detector's label map (the detector's class -> the hierarchy's), or
    None; the map without --cbs, or with a box file, is an error."""
    path = given.get("cbs_class_map")
    if path is None:
        return None
    if not given.get("cbs") or given.get("cbs_box") is not None:
        raise VinvlError("--cbs-class-map applies only with --cbs and the detector's own boxes (no --cbs-box)")
    from ..regions import constraint_classes

    return constraint_classes(path, model=given.get("detector"), weights=given.get("detector_weights"),
                              labelmap=given.get("labelmap"))


def eval_split(value: Optional[str]) -> Optional[str]:
    """``--eval-split``'s value, None for 'none'."""
    return value if value not in (None, "none") else None


# -- images -> regions for the predict commands (the detector side, reached only through vinvl.regions) ----------
def detect(images: list, given: dict, device: Any) -> tuple[list[str], Any]:
    """Images -> the detector's regions and tags in OUT/regions (or --regions-dir): keys in input order, their store."""
    from ..regions import regions_for_images

    work = given.get("regions_dir") or Path(given["out"]) / "regions"
    keys, store = regions_for_images(images, work, model=given.get("detector"), weights=given.get("detector_weights"),
                                     labelmap=given.get("labelmap"), device=str(device), boxes=given.get("boxes"))
    if not keys:
        raise VinvlError(f"no image could be read ({Path(work) / 'errors.tsv'} says why)")
    return keys, store


def detector(images: list, given: dict) -> Callable[[Any], tuple[list[str], Any]]:
    """:func:`detect` of ``images`` as the library's predict functions call it, once the model has loaded."""
    return functools.partial(detect, images, given)


class Given(dict):
    """A command's option values by name (:func:`takes`), and which of them the command line gave."""

    def __init__(self, values: dict[str, Any], explicit: Iterable[str]) -> None:
        super().__init__(values)
        self.explicit = frozenset(explicit)


CONTEXT = "vinvl_context"  # the parameter of every `takes` command that receives typer's context


# the option groups several commands take
TRAIN_FILES = ("out", "init", "config", "vocab", "features", "train_split", "eval_split", "resume")
LENGTHS = ("max_seq_length", "max_img_seq_length")
DETECTOR = ("detector", "detector_weights", "labelmap", "regions_dir", "boxes")
RUN = ("eval_batch_size", "device", "precision")
