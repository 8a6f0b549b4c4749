"""``vinvl oscar retrieval train|eval|rank``: image-text retrieval (arguments only; the work is in
:mod:`vinvl.oscar.tasks.retrieval`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from ..atomic import atomic_write_json
from ..oscar.options import RetrievalOptions
from .oscar_flags import eval_split, fields_of, options_of, takes

retrieval_app = typer.Typer(help="Image-text retrieval (run_retrieval.py): train, evaluate R@K, rank captions and images.",
                            no_args_is_help=True)


def _write(result: dict, out: Path, name: str) -> None:
    text = json.dumps(result, indent=1)
    atomic_write_json(Path(out) / name, result, indent=1)
    typer.echo(text)


@retrieval_app.command("train")
@takes("out", "init", "vocab", "config", "features", "train_split", "eval_split", "keys", "caption_index", "resume",
       *fields_of(RetrievalOptions), defaults=RetrievalOptions)
def train(
    data_dir: Path = typer.Argument(..., help="Folder with {split}_captions.pt (the released coco_ir)."),
    given: Any = None,
) -> None:
    """Fine-tune the matched/unmatched classifier into OUT/checkpoint-N (R@1 of --eval-split at each save);
    `torchrun --nproc_per_node N -m vinvl oscar retrieval train ...` for data parallel."""
    from ..oscar.checkpoint import config_file
    from ..oscar.tasks.retrieval import train as run

    final = run(data_dir, given["out"], options_of(RetrievalOptions, given), init=given["init"], vocab=given["vocab"],
                model_config=config_file(given["config"]), features=given["features"], split=given["train_split"],
                eval_split=eval_split(given["eval_split"]), eval_keys=given["keys"], resume=given["resume"],
                caption_index=given["caption_index"])
    typer.echo(str(final))


@retrieval_app.command("eval")
@takes("out", "split", "keys", "caption_index", "features", "folds", "captions_per_image", *RetrievalOptions.RESTORED,
       "eval_batch_size", "device", "precision", "two_stage", "first_stage", "compare_full", "save_scores",
       defaults=RetrievalOptions, restored=RetrievalOptions.RESTORED, split="test", eval_batch_size=256)
def evaluate(
    checkpoint: Path = typer.Argument(..., help="Retrieval checkpoint folder (or a run folder: its newest checkpoint-N)."),
    data_dir: Path = typer.Argument(..., help="Folder with {split}_captions.pt and the key lists."),
    given: Any = None,
) -> None:
    """R@1/5/10 image->text and text->image from the full cross-encoder score matrix (--cross_image_eval), or
    image->text among each image's --caption-index candidates: OUT/metrics.json (and OUT/scores.pt)."""
    from ..oscar.tasks.retrieval import evaluate as run

    out = Path(given["out"])
    result = run(checkpoint, data_dir, given["split"], given["keys"], given["features"],
                 options_of(RetrievalOptions, given), folds=given["folds"], batch_size=given["eval_batch_size"],
                 device=given["device"], precision=given["precision"], two_stage=given["two_stage"],
                 first_stage=given["first_stage"], compare_full=given["compare_full"],
                 scores_out=out / "scores.pt" if given["save_scores"] else None, caption_index=given["caption_index"])
    _write(result, out, "metrics.json")


@retrieval_app.command("rank")
@takes("out", "image", "top", *RetrievalOptions.RESTORED, "eval_batch_size", "device", "precision",
       defaults=RetrievalOptions, restored=RetrievalOptions.RESTORED, eval_batch_size=256)
def rank(
    checkpoint: Path = typer.Argument(..., help="Retrieval checkpoint folder (or a run folder)."),
    features: Path = typer.Argument(..., help="Region features of the images: a features folder (e.g. `vinvl extract` "
                                    "output) or a feature TSV."),
    captions: Path = typer.Argument(..., help="Text file, one caption per line."),
    given: Any = None,
) -> None:
    """The best captions for each image and the best images for each caption (scores: the matched logit):
    OUT/ranking.json."""
    from ..oscar.data.retrieval import read_captions_file
    from ..oscar.tasks.retrieval import rank as run

    result = run(checkpoint, features, read_captions_file(captions), image_keys=given["image"] or None,
                 top=given["top"], batch_size=given["eval_batch_size"], device=given["device"],
                 precision=given["precision"], options=options_of(RetrievalOptions, given))
    _write(result, Path(given["out"]), "ranking.json")
