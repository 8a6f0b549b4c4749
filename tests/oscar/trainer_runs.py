"""Tiny runs of every Oscar+ task through the Trainer, for the exact-resume and multi-process tests.

A module (``make_data``, ``run``) and a script, so runs can be killed or started under torchrun (from the
repository root, or with it on PYTHONPATH)::

    python -m tests.oscar.trainer_runs DATA OUT full|kill|resume TASK[,TASK...] [--batch-size B] [--accumulation K]
                           [--dropout P] [--kill-at N]

``full`` trains each task to the last step into OUT/TASK, ``kill`` SIGKILLs the process right after step N
(a checkpoint was written before it, and the epoch is not over), ``resume`` continues OUT/TASK.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from tests.oscar.caption_synth import build_split, write_vocab
from tests.oscar.classify_synth import nlvr2_data, qa_data
from tests.oscar.model_tester import tiny_config
from tests.oscar.retrieval_synth import synthetic_retrieval


TASKS = ("pretrain", "vqa", "gqa", "nlvr2", "retrieval", "caption", "scst")
# pretraining with an extra corpus (here the same yaml, drawn in its own order and text_b mode): the engine's extra
# set; its exact resume is tests/oscar/test_pretrain_options.py's, so only the data-parallel test runs it
DATA_PARALLEL_TASKS = TASKS + ("pretrain_extra",)
MEAN_OVER_EXAMPLES = ("vqa", "gqa", "nlvr2", "retrieval")  # losses that are means over a batch's examples
MAX_STEPS, SAVE_STEPS = 8, 3


def make_data(root: Path) -> Path:
    """Every task's tiny data under ``root`` (and SCST's starting checkpoint); returns ``root``."""
    from vinvl.corpus.build import synthetic_corpus
    from vinvl.oscar import OscarForCaptioning
    from vinvl.oscar.tensorize import load_tokenizer

    synthetic_corpus(root / "corpus", num_images=40, seed=0)
    qa_data(root / "qa", n_train=48, n_val=8)
    nlvr2_data(root / "nlvr2", n_train=48, n_val=8)
    synthetic_retrieval(root / "ir", train_images=10, test_images=4)
    build_split(root / "cap", 24, seed=1)
    write_vocab(root / "cap_vocab")
    torch.manual_seed(0)
    start, tok = root / "scst_start", load_tokenizer(root / "cap_vocab")
    cfg = _config(64, 0.0)
    cfg.vocab_size = len(tok)
    OscarForCaptioning(cfg).save_original(start, tokenizer=tok)
    (start / "training_args.json").write_text(json.dumps({"max_seq_length": 16, "max_seq_a_length": 12,
                                                          "max_img_seq_length": 4, "add_od_labels": True}))
    return root


def _config(dim: int, dropout: float):  # type: ignore[no-untyped-def]
    return tiny_config(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                       max_position_embeddings=64, img_feature_dim=dim, hidden_dropout_prob=dropout,
                       attention_probs_dropout_prob=dropout, vocab_size=40, initializer_range=0.1)


def run(task: str, data: Path, out: Path, batch_size: int = 4, accumulation: int = 1, dropout: float = 0.1,
        resume: bool = False, callbacks: tuple = (), device: str = "cpu", precision: str = "fp32",
        max_steps: int = MAX_STEPS, save_steps: int = SAVE_STEPS, log_steps: int = 2, init: Optional[Path] = None,
        log: Optional[Callable[[str], None]] = None, **options: Any) -> Path:
    """Train ``task`` on the tiny data for ``max_steps`` steps, saving every ``save_steps``; returns the last checkpoint.
    ``init``: a checkpoint to start from (its vocabulary) instead of a fresh tiny model; ``options``: more of the
    task's options (or other values of the common ones)."""
    from vinvl.oscar import options as O
    from vinvl.oscar.tasks.base import task_tokenizer

    common = {**dict(batch_size=batch_size, gradient_accumulation_steps=accumulation, learning_rate=1e-3,
                     warmup_steps=2, max_steps=max_steps, save_steps=save_steps, log_steps=log_steps, seed=3,
                     device=device, precision=precision), **options}
    kw = dict(resume=resume, log=log or (lambda m: None), callbacks=callbacks)

    def fresh(dim: int) -> Any:  # the fresh model's config, or none when starting from init
        return _config(dim, dropout) if init is None else None

    if task in ("pretrain", "pretrain_extra"):
        from vinvl.oscar.tasks.pretrain import pretrain

        corpus = data / "corpus/corpus.yaml"
        extra = dict(extra_textb_sample_mode=2, extra_loss_weight=0.3, mask_loss_for_unmatched=False) \
            if task == "pretrain_extra" else {}
        opts = O.PretrainOptions(**{"max_seq_length": 24, "max_img_seq_length": 4, "drop_out": dropout, **common, **extra})
        vocab = data / "corpus" if init is None else None
        return pretrain(corpus, vocab, out, fresh(2054), opts, init=init, extra_corpus=corpus if extra else None, **kw)
    if task in ("vqa", "gqa"):
        from vinvl.oscar.data.qa import AnswerVocab
        from vinvl.oscar.tasks import gqa, vqa

        mod, cls = (vqa, O.VQAOptions) if task == "vqa" else (gqa, O.GQAOptions)
        qa = data / "qa"
        opts = cls(**common, max_seq_length=12, max_img_seq_length=3, drop_out=dropout, eval_batch_size=8)
        vocab = AnswerVocab.from_files(qa / "ans2label.pkl", qa / "label2ans.pkl")
        tok = task_tokenizer(qa if init is None else None, init)
        return mod.train(qa / "train.json", qa / "features", vocab, out, opts, tok, init=init,
                         model_config=fresh(48), eval_file=qa / "val.json", **kw)
    if task == "nlvr2":
        from vinvl.oscar.tasks import nlvr2

        d = data / "nlvr2"
        opts = O.NLVR2Options(**common, max_seq_length=10, max_img_seq_length=2, drop_out=dropout)
        tok = task_tokenizer(d if init is None else None, init)
        return nlvr2.train(d / "train.json", d / "features", out, opts, tok, init=init, model_config=fresh(48),
                           eval_file=d / "val.json", **kw)
    if task == "retrieval":
        from vinvl.oscar.tasks.retrieval import train

        opts = O.RetrievalOptions(**common, max_seq_length=20, max_img_seq_length=4, drop_out=dropout)
        vocab = data / "ir/vocab.txt" if init is None else None
        return train(data / "ir", out, opts, init=init, vocab=vocab, model_config=fresh(32), **kw)
    from vinvl.oscar.data.captions import CaptionData
    from vinvl.oscar.tasks.captioning import train as caption_train

    lengths = dict(max_seq_length=16, max_seq_a_length=12, max_img_seq_length=4, drop_out=dropout)
    if task == "caption":
        opts = O.CaptionOptions(**common, **lengths)
        vocab = data / "cap_vocab" if init is None else None
        return caption_train(CaptionData(data / "cap/split.yaml"), out, opts, init=init, vocab=vocab,
                             model_config=fresh(64), **kw)
    opts = O.CaptionOptions(**common, **lengths, scst=True, max_gen_length=8, sc_train_sample_n=3)
    return caption_train(CaptionData(data / "cap/split.yaml"), out, opts, init=init or data / "scst_start", **kw)


def weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    """A checkpoint's weights."""
    return torch.load(Path(checkpoint) / "pytorch_model.bin", map_location="cpu", weights_only=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("data", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("mode", choices=("full", "kill", "resume"))
    ap.add_argument("tasks")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--accumulation", type=int, default=1)
    ap.add_argument("--dropout", type=float, default=0.1)
    ap.add_argument("--kill-at", type=int, default=5)
    a = ap.parse_args()
    torch.set_num_threads(1)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # one process group for all the tasks run (the Trainer keeps it)
        import torch.distributed as dist

        dist.init_process_group("gloo")
    for task in a.tasks.split(","):
        callbacks: tuple = ()
        if a.mode == "kill":
            callbacks = (lambda step: os.kill(os.getpid(), signal.SIGKILL) if step == a.kill_at else None,)
        run(task, a.data, a.out / task, a.batch_size, a.accumulation, a.dropout, resume=a.mode == "resume",
            callbacks=callbacks)


if __name__ == "__main__":
    main()
