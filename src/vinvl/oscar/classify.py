"""What the classification fine-tunings (VQA, GQA, NLVR2) share: options, answer vocabularies,
region sources, the question-answering dataset, model set-up from a pretrained checkpoint,
training through :func:`vinvl.oscar.finetune.train_loop`, batched inference and end-to-end
answering of questions about new images.

The data files are the original's (microsoft/Oscar ``run_vqa.py`` / ``run_gqa.py`` /
``run_nlvr.py``): json lists of ``{q, o, an, s, img_id, q_id}`` (``o`` the tags, ``;``-separated
in places, ``an`` answer labels, ``s`` their soft scores), an ``ans2label`` pickle whose values
are the labels in logit order (read through :mod:`vinvl.safe_pickle`, never plain pickle), and
region features either as a ``vinvl extract`` / released features folder (``features.tsv`` +
``label.tsv``) or as the original's ``*_img_frcnn_feats.pt`` (a dict image id -> ``[N, 2054]``
tensor, read with ``torch.load(weights_only=True)``).
"""

from __future__ import annotations

import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import torch
from torch import nn

from ..atomic import atomic_write_json
from ..errors import VinvlError
from .checkpoint import read_original
from .finetune import dist_info, latest_checkpoint, loop_config, stacked_batches, total_steps, train_loop
from .inputs import ClassificationTensorizer
from .modeling import OscarConfig

PathLike = Union[str, os.PathLike]
Batch = dict[str, torch.Tensor]
ANSWERS_FILE = "answers.json"  # the answer of each logit, written into every checkpoint


@dataclass
class TaskConfig:
    """The fine-tuning options the original scripts share (their flags of the same names)."""

    max_seq_length: int = 128
    max_img_seq_length: int = 50
    batch_size: int = 32  # per process (--per_gpu_train_batch_size)
    eval_batch_size: int = 256
    gradient_accumulation_steps: int = 1
    learning_rate: float = 5e-5
    weight_decay: float = 0.05
    adam_epsilon: float = 1e-8
    warmup_steps: int = 0
    scheduler: str = "linear"
    num_train_epochs: float = 25.0
    max_steps: int = -1  # > 0 overrides num_train_epochs, as in the original
    max_grad_norm: float = 1.0
    drop_out: float = 0.3
    classifier: str = "linear"
    cls_hidden_scale: int = 3
    loss_type: str = "bce"
    seed: int = 88
    save_steps: int = -1  # <= 0: once per epoch (the original saves per epoch)
    log_steps: int = 50
    extra: dict = field(default_factory=dict)  # task options recorded with the run


def write_json(path: PathLike, obj: Any, indent: Optional[int] = None) -> Path:
    """Write ``obj`` as JSON atomically (temp name + rename)."""
    return atomic_write_json(path, obj, indent)


def read_json_list(path: PathLike, required: Sequence[str]) -> list[dict]:
    """A task file: a JSON list of objects, each with the ``required`` keys."""
    from .checkpoint import read_json

    path = Path(path)
    if not path.is_file():
        raise VinvlError(f"{path}: no such data file")
    items = read_json(path, list)
    if not items:
        raise VinvlError(f"{path}: no items (an empty split)")
    for i, it in enumerate(items):
        missing = [k for k in required if not isinstance(it, dict) or k not in it]
        if missing:
            raise VinvlError(f"{path}: item {i} lacks {', '.join(missing)}")
    return items


# -- answers ------------------------------------------------------------------------------
class AnswerVocab:
    """The answers in logit order and the map from the data's answer labels to logit indices.

    As the original: the labels are ``list(ans2label.values())`` and logit ``i`` answers
    ``label2ans[labels[i]]`` (``label2ans`` the released list, else ``ans2label`` inverted).
    """

    def __init__(self, answers: Sequence[str], labels: Optional[Sequence[Any]] = None) -> None:
        """``answers[i]`` is logit ``i``'s answer; ``labels[i]`` the label the data files use for it."""
        self.answers = [str(a) for a in answers]
        self.labels = list(labels) if labels is not None else list(range(len(self.answers)))
        self.index = {lab: i for i, lab in enumerate(self.labels)}

    def __len__(self) -> int:
        return len(self.answers)

    @classmethod
    def from_files(cls, label_file: PathLike, label2ans_file: Optional[PathLike] = None) -> "AnswerVocab":
        """``ans2label`` pickle (+ optional ``label2ans`` pickle: a list, or a dict label -> answer)."""
        from ..safe_pickle import safe_load

        ans2label = safe_load(label_file)
        if not isinstance(ans2label, dict) or not ans2label:
            raise VinvlError(f"{label_file}: expected a non-empty dict answer -> label")
        labels = list(ans2label.values())
        if label2ans_file is not None:
            l2a = safe_load(label2ans_file)
            try:
                answers = [l2a[lab] for lab in labels]
            except (KeyError, IndexError, TypeError):
                raise VinvlError(f"{label2ans_file}: does not cover the labels of {label_file}") from None
        else:
            inverse = {lab: ans for ans, lab in ans2label.items()}
            answers = [inverse[lab] for lab in labels]
        return cls(answers, labels)

    @classmethod
    def from_checkpoint(cls, folder: PathLike) -> "AnswerVocab":
        """The ``answers.json`` a training run writes into its checkpoints."""
        from .checkpoint import read_json

        path = Path(folder) / ANSWERS_FILE
        if not path.is_file():
            raise VinvlError(f"{path}: no answer list; give the answer vocabulary (--label-file, --label2ans)")
        data = read_json(path, dict)
        answers, labels = data.get("answers"), data.get("labels")
        if not isinstance(answers, list) or not answers or not all(isinstance(a, str) for a in answers):
            raise VinvlError(f"{path}: 'answers' must be a non-empty list of strings (the answer of each logit)")
        if labels is not None and (not isinstance(labels, list) or len(labels) != len(answers)):
            raise VinvlError(f"{path}: 'labels' must be a list as long as 'answers' ({len(answers)})")
        return cls(answers, labels)

    def save(self, folder: PathLike) -> Path:
        """Write ``answers.json`` (answers and labels in logit order) into ``folder``."""
        return write_json(Path(folder) / ANSWERS_FILE, {"answers": self.answers, "labels": self.labels})

    def label_index(self, label: Any, where: str) -> int:
        """The logit index of a data file's answer label."""
        try:
            return self.index[label]
        except KeyError:
            raise VinvlError(f"{where}: answer label {label!r} is not in the answer vocabulary") from None


# -- regions -------------------------------------------------------------------------------
class TensorDictRegions:
    """The original's ``*_img_frcnn_feats.pt``: a dict image id -> ``[N, dim]`` tensor (tensors only, no code)."""

    def __init__(self, path: PathLike) -> None:
        self.path = Path(path)
        from .checkpoint import load_tensors

        data = load_tensors(self.path, str(self.path), "feature dict")
        if not isinstance(data, dict):
            raise VinvlError(f"{self.path}: expected a dict image id -> region features")
        self.data = data
        first = next(iter(data.values()), None)
        self.dim = int(first.shape[-1]) if first is not None else 2054

    def regions(self, key: Any) -> torch.Tensor:
        """The image's region features (its key as given, as a string or as an integer)."""
        for k in (key, str(key), int(key) if str(key).lstrip("-").isdigit() else None):
            if k is not None and k in self.data:
                return self.data[k]
        raise VinvlError(f"{self.path}: no features for image {key!r}")

    def tags(self, key: Any) -> str:
        """No tags in a feature dict (the task files carry them)."""
        return ""


def open_regions(path: PathLike) -> Any:
    """Region features by image id: a features folder or feature TSV (:class:`RegionStore`) or a ``.pt`` feature dict."""
    from .inputs import RegionStore

    p = Path(path)
    if p.is_dir():
        return RegionStore(p)
    if p.suffix == ".pt" and p.is_file():
        return TensorDictRegions(p)
    if p.suffix == ".tsv" and p.is_file():  # a feature TSV of either layout (e.g. captioning's *.feature.tsv)
        return RegionStore(p.parent, features=p.name)
    raise VinvlError(f"{p}: not a features folder (features.tsv), a feature TSV nor a .pt feature dict")


# -- datasets --------------------------------------------------------------------------------
def tags_of(item: dict) -> str:
    """The tags text of a QA item: ``o`` with ``;`` separators as spaces (the original's text_b)."""
    return str(item.get("o") or "").replace(";", " ").strip()


class QADataset:
    """VQA / GQA examples: ``[CLS] q [SEP] tags [SEP]`` + the image's regions, with the target.

    ``target="soft"`` (VQA): a ``[num_answers]`` vector holding each answer's soft score ``s``;
    ``target="index"`` (GQA): the logit index of the first answer. Items without answers are
    left out unless ``test`` (as the original); test items get an all-zero / 0 target.
    """

    def __init__(
        self, items: Sequence[dict], regions: Any, vocab: AnswerVocab, tensorizer: ClassificationTensorizer,
        target: str = "soft", test: bool = False, source: str = "<items>",
    ) -> None:
        if target not in ("soft", "index"):
            raise VinvlError(f"target must be soft or index, got {target!r}")
        self.items = [it for it in items if test or len(it.get("an") or []) > 0]
        self.regions, self.vocab, self.tensorizer = regions, vocab, tensorizer
        self.target, self.test, self.source = target, test, source

    def __len__(self) -> int:
        return len(self.items)

    def question_id(self, i: int) -> Any:
        """Item ``i``'s question id (its index when the item has none)."""
        return self.items[i].get("q_id", i)

    def targets(self, i: int) -> torch.Tensor:
        """Item ``i``'s training/evaluation target."""
        it, n = self.items[i], len(self.vocab)
        where = f"{self.source}: item {i}"
        if self.target == "index":
            an = it.get("an") or []
            return torch.tensor(self.vocab.label_index(an[0], where) if an else 0)
        t = torch.zeros(n)
        scores = it.get("s") or []
        for j, lab in enumerate(it.get("an") or []):
            t[self.vocab.label_index(lab, where)] = float(scores[j]) if j < len(scores) else 0.0
        return t

    def example(self, i: int, epoch: int = 0) -> Batch:
        """Model inputs of item ``i`` with ``labels`` (``epoch`` unused: no random choices)."""
        it = self.items[i]
        x = self.tensorizer(str(it["q"]), tags_of(it), self.regions.regions(it["img_id"]))
        x["labels"] = self.targets(i)
        return x


def load_qa_split(
    qa_file: PathLike, features: Any, vocab: AnswerVocab, tokenizer: Any, cfg: TaskConfig, target: str,
    test: Optional[bool] = None,
) -> QADataset:
    """A QA split's dataset; ``features`` a path (folder or .pt) or an open region source. ``test``
    (default: no item has answers) keeps unanswered items and scores nothing."""
    items = read_json_list(qa_file, ("q", "img_id"))
    if test is None:
        test = not any(it.get("an") for it in items)
    elif not test and not any(it.get("an") for it in items):
        raise VinvlError(f"{qa_file}: no item has an answer ('an'): nothing to train on or score")
    regions = open_regions(features) if isinstance(features, (str, os.PathLike)) else features
    tz = ClassificationTensorizer(tokenizer, cfg.max_seq_length, cfg.max_img_seq_length)
    return QADataset(items, regions, vocab, tz, target=target, test=test, source=str(qa_file))


# -- model set-up ---------------------------------------------------------------------------
def read_checkpoint(source: PathLike) -> tuple[dict[str, torch.Tensor], OscarConfig]:
    """State dict and config of an original checkpoint: a folder, a run folder (newest ``checkpoint-N``) or a zip."""
    return read_original(source)


def init_model(
    cls: type, init: Optional[PathLike], overrides: dict[str, Any], config: Optional[OscarConfig] = None,
    log: Callable[[str], None] = lambda m: print(m, file=sys.stderr, flush=True),
) -> nn.Module:
    """A task model from a pretrained (or fine-tuned) checkpoint, as the original's ``from_pretrained``:
    the config takes the task's ``overrides`` (num_labels, dropout, classifier, ...); every encoder
    (``bert.*``) weight must be in the checkpoint; head weights are taken when their shapes fit, else
    freshly initialised; other heads of the checkpoint (pretraining's ``cls.*``) are dropped."""
    from .checkpoint import rename_legacy

    sd: dict[str, torch.Tensor] = {}
    if init is not None:
        sd, config = read_checkpoint(init)
        sd = rename_legacy(dict(sd))
    elif config is None:
        raise VinvlError("give a checkpoint to start from (--init) or a model config (--config)")
    for k, v in overrides.items():
        setattr(config, k, v)
    model = cls(config)
    if init is None:
        return model
    expected = model.state_dict()
    missing = [k for k in expected if k.startswith("bert.") and k not in sd]
    if missing:
        from ..detection.checkpoint import key_list

        raise VinvlError(f"{init}: not an Oscar checkpoint for {cls.__name__}; missing keys: {key_list(missing, 10)}")
    take = {k: v for k, v in sd.items() if k in expected and v.shape == expected[k].shape}
    fresh = [k for k in expected if k not in take]
    model.load_state_dict({**expected, **take})
    if fresh:
        log(f"{init}: newly initialised: {', '.join(fresh)}")
    return model


def model_overrides(cfg: TaskConfig, num_labels: int, **more: Any) -> dict[str, Any]:
    """The config fields the original scripts set from their flags."""
    return {
        "num_labels": num_labels, "hidden_dropout_prob": cfg.drop_out, "loss_type": cfg.loss_type,
        "classifier": cfg.classifier, "cls_hidden_scale": cfg.cls_hidden_scale, **more,
    }


# -- training ---------------------------------------------------------------------------------
def accuracy_figures(out: Any, batch: Batch) -> dict[str, float]:
    """The batch's accuracy of the arg-max class, for the training log."""
    return {"acc": float((out.logits.detach().cpu().argmax(1) == batch["labels"]).float().mean())}


def to_device(batch: Batch, module: nn.Module) -> Batch:
    """The batch on the module's device."""
    dev = next(module.parameters()).device
    return {k: v.to(dev) for k, v in batch.items()}


def fine_tune(
    model: nn.Module,
    dataset: Any,
    cfg: TaskConfig,
    out_dir: PathLike,
    tokenizer: Any,
    step_figures: Callable[[Any, Batch], dict[str, float]],
    evaluate: Optional[Callable[[nn.Module], dict[str, Any]]] = None,
    save_extra: Optional[Callable[[Path], None]] = None,
    resume: bool = False,
    log: Optional[Callable[[str], None]] = None,
) -> Path:
    """Train ``model`` on ``dataset`` (``example(i, epoch)``, ``len``) through the shared loop.

    Batches come in a per-epoch order seeded by (seed, epoch) so a resumed run sees what the
    uninterrupted one would have. At each save (default: every epoch, as the original)
    ``evaluate(model)`` (if given) scores the checkpoint: ``checkpoint-N/eval_results.json`` and
    the original's ``eval_logs.json`` (score and best score so far). Returns the last checkpoint.
    ``resume`` continues from the newest ``checkpoint-N`` (whose weights ``model`` must hold).
    """

    rank, world = dist_info()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    steps, per_epoch = total_steps(len(dataset), cfg, world)
    loop = loop_config(cfg, max_steps=steps, save_steps=cfg.save_steps if cfg.save_steps > 0 else per_epoch)
    last = latest_checkpoint(out) if resume else None
    torch.manual_seed(cfg.seed)
    eval_log_path = out / "eval_logs.json"
    eval_log: list[dict] = []
    if last and eval_log_path.is_file():
        from .checkpoint import read_json

        eval_log = read_json(eval_log_path, list)
        if not all(isinstance(e, dict) and isinstance(e.get("eval_score"), (int, float)) for e in eval_log):
            raise VinvlError(f"{eval_log_path}: expected a list of {{step, eval_score, ...}} entries")

    def step_fn(module: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        o = module(**to_device(batch, module))
        return o.loss, step_figures(o, batch)

    def on_save(folder: Path, step: int) -> None:
        if save_extra is not None:
            save_extra(folder)
        if evaluate is None:
            return
        was_training = model.training
        result = evaluate(model)
        model.train(was_training)
        write_json(folder / "eval_results.json", result, indent=1)
        best = max([e["eval_score"] for e in eval_log] + [result["score"]])
        eval_log.append({"step": step, "epoch": step / per_epoch, "eval_score": result["score"], "best_score": best})
        write_json(eval_log_path, eval_log, indent=1)

    args = {**asdict(cfg), "max_steps": steps, "steps_per_epoch": per_epoch, "world_size": world}
    return train_loop(
        model, lambda start: stacked_batches(dataset, cfg.batch_size, cfg.seed, start, rank, world), step_fn, loop, out, tokenizer=tokenizer,
        resume_from=last, log=log, on_save=on_save, training_args=args,
    )


# -- inference ----------------------------------------------------------------------------------
@torch.no_grad()
def predict_logits(model: nn.Module, dataset: Any, batch_size: int = 256) -> torch.Tensor:
    """The model's logits over every example of ``dataset`` (``[len, ...]``, on the CPU, in order)."""
    was_training = model.training
    model.eval()
    out = []
    try:
        for s in range(0, len(dataset), batch_size):
            ex = [dataset.example(i) for i in range(s, min(s + batch_size, len(dataset)))]
            batch = {k: torch.stack([e[k] for e in ex]) for k in ex[0] if k != "labels"}
            out.append(model(**to_device(batch, model)).logits.float().cpu())
    finally:
        model.train(was_training)
    if not out:
        return torch.zeros(0)
    return torch.cat(out)


def image_regions(
    images: Sequence[PathLike], work_dir: PathLike, detector: Optional[str] = None,
    weights: Optional[PathLike] = None, labelmap: Optional[PathLike] = None, device: str = "cpu",
) -> tuple[list[str], Any]:
    """Run the detector over new images (``vinvl.oscar.inputs.regions_for_images``): keys in input order + their store."""
    from ..regions import regions_for_images

    keys, store = regions_for_images(images, work_dir, model=detector, weights=weights, labelmap=labelmap, device=device)
    if not keys:
        raise VinvlError(f"no image could be read ({Path(work_dir) / 'errors.tsv'} says why)")
    return keys, store


def check_region_width(model: nn.Module, store: Any, what: str) -> None:
    """A clear error when the regions' width is not the model's ``img_feature_dim``."""
    want = model.config.img_feature_dim
    if getattr(store, "dim", want) != want:
        raise VinvlError(f"{what}: regions are {store.dim}-d but the model takes {want}-d (img_feature_dim); "
                         "use the detector the model was trained on")


def top_answers(logits: torch.Tensor, vocab: AnswerVocab, k: int, softmax: bool) -> list[list[tuple[str, float]]]:
    """The ``k`` best answers of each row with their probability (softmax, or per-answer sigmoid for BCE models)."""
    probs = logits.softmax(-1) if softmax else logits.sigmoid()
    val, idx = probs.topk(min(k, probs.shape[-1]), dim=-1)
    return [[(vocab.answers[j], round(float(v), 6)) for v, j in zip(vr, ir)] for vr, ir in zip(val.tolist(), idx.tolist())]


def answer_questions(
    model: nn.Module, tokenizer: Any, vocab: AnswerVocab, images: Sequence[PathLike], questions: Sequence[str],
    work_dir: PathLike, max_seq_length: int, max_img_seq_length: int, top_k: int = 5, softmax: bool = False,
    **detector: Any,
) -> list[dict]:
    """Every question about every image, end to end (detector -> regions + tags -> answer)."""
    keys, store = image_regions(images, work_dir, **detector)
    check_region_width(model, store, str(work_dir))
    items = [{"q": q, "o": store.tags(k), "img_id": k, "an": [], "q_id": n}
             for n, (k, q) in enumerate((k, q) for k in keys for q in questions)]
    ds = QADataset(items, store, vocab, ClassificationTensorizer(tokenizer, max_seq_length, max_img_seq_length), test=True)
    logits = predict_logits(model, ds, batch_size=64)
    tops = top_answers(logits, vocab, top_k, softmax)
    return [{"image": it["img_id"], "question": it["q"], "tags": it["o"], "answer": t[0][0], "score": t[0][1],
             "top": [list(a) for a in t]} for it, t in zip(items, tops)]


def run_training(
    cls: type, train_set: Any, cfg: TaskConfig, out_dir: PathLike, tokenizer: Any, overrides: dict[str, Any],
    step_figures: Callable[[Any, Batch], dict[str, float]], init: Optional[PathLike] = None,
    config: Optional[OscarConfig] = None, evaluate: Optional[Callable[[nn.Module], dict[str, Any]]] = None,
    save_extra: Optional[Callable[[Path], None]] = None, resume: bool = False, device: str = "cpu",
    log: Optional[Callable[[str], None]] = None,
) -> Path:
    """Set up the task model (``init`` + ``overrides``, or the newest checkpoint when resuming) and fine-tune it."""
    if len(train_set) == 0:
        raise VinvlError(f"{getattr(train_set, 'source', 'the training split')}: no training examples")
    last = latest_checkpoint(out_dir) if resume else None
    torch.manual_seed(cfg.seed)  # the head's initialisation too comes from the seed, as the original's set_seed
    if last is not None:
        model = cls.from_original(last)
    else:
        model = init_model(cls, init, overrides, config, **({"log": log} if log else {}))
    model.to(device)
    return fine_tune(model, train_set, cfg, out_dir, tokenizer, step_figures, evaluate, save_extra, resume=resume, log=log)


def task_tokenizer(vocab: Optional[PathLike], init: Optional[PathLike]) -> Any:
    """The tokenizer on ``vocab`` (a vocab.txt or folder), else on the starting checkpoint's vocab.txt."""
    from .inputs import load_tokenizer

    from .checkpoint import require_checkpoint

    if vocab is None and init is None:
        raise VinvlError("give --vocab (a vocab.txt) or --init (a checkpoint with one)")
    folder = require_checkpoint(init, "initial checkpoint (--init)") if init is not None else None
    return load_tokenizer(vocab if vocab is not None else folder)
