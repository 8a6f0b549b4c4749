"""``vinvl oscar <task>``: Oscar+ pretraining and the downstream tasks (arguments only; every option is defined
once in :mod:`vinvl.cli.oscar_flags`, every default in :mod:`vinvl.oscar.options`). The task groups are imported
from their modules, which import only :mod:`vinvl.cli.oscar_flags`: the ``vinvl oscar`` modules form a tree."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from ..oscar.options import PretrainOptions
from .oscar_caption import app as caption_app
from .oscar_flags import fields_of, options_of, takes
from .oscar_retrieval import retrieval_app
from .oscar_vqa import gqa_app, nlvr2_app, vqa_app

app = typer.Typer(help="Oscar+ pretraining and downstream tasks.", no_args_is_help=True)


@app.command("pretrain")
@takes("out", "vocab", "init", "config", "data_dir", "resume", "extra_corpus",
       *fields_of(PretrainOptions, exclude=("eval_batch_size",)),
       defaults=PretrainOptions)
def pretrain(
    corpus: Path = typer.Argument(..., help="Corpus yaml in the original layout (corpus, corpus_file, image_label_path, "
                                  "image_feature_path), e.g. from `vinvl corpus build`."),
    given: Any = None,
) -> None:
    """MLM + contrastive pretraining into OUT/checkpoint-N (original layout) and OUT/log.jsonl;
    `torchrun --nproc_per_node N -m vinvl oscar pretrain ...` for data parallel."""
    from ..oscar.checkpoint import config_file
    from ..oscar.tasks.pretrain import pretrain as run

    opts = options_of(PretrainOptions, given)
    final = run(corpus, given["vocab"], given["out"], config_file(given["config"]), opts, init=given["init"],
                resume=given["resume"], data_dir=given["data_dir"], extra_corpus=given["extra_corpus"])
    typer.echo(str(final))


app.add_typer(vqa_app, name="vqa")
app.add_typer(gqa_app, name="gqa")
app.add_typer(nlvr2_app, name="nlvr2")
app.add_typer(caption_app, name="caption")
app.add_typer(retrieval_app, name="retrieval")
