"""``vinvl oscar <task>``: Oscar+ pretraining (downstream tasks join this group)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .oscar_caption import app as caption_app
from .oscar_retrieval import retrieval_app
from .oscar_vqa import gqa_app, nlvr2_app, vqa_app

app = typer.Typer(help="Oscar+ pretraining and downstream tasks.", no_args_is_help=True)


@app.command("pretrain")
def pretrain(
    corpus: Path = typer.Argument(..., help="Corpus yaml in the original layout (corpus, corpus_file, image_label_path, "
                                  "image_feature_path), e.g. from `vinvl corpus build`."),
    out: Path = typer.Option(..., "-o", "--out", help="Output folder: checkpoint-N/ (original layout), log.jsonl."),
    vocab: Optional[Path] = typer.Option(None, "--vocab", help="vocab.txt (or a checkpoint folder); default: --init's."),
    init: Optional[Path] = typer.Option(None, "--init", help="Checkpoint to start from (folder, zip or run folder)."),
    config: Optional[Path] = typer.Option(None, "--config", help="config.json of a fresh model (default: BERT-base)."),
    max_steps: int = typer.Option(1000, "--max-steps"),
    batch_size: int = typer.Option(8, "--batch-size", help="Examples per step per process."),
    accumulation: int = typer.Option(1, "--gradient-accumulation-steps"),
    lr: float = typer.Option(1e-4, "--learning-rate"),
    warmup: int = typer.Option(0, "--warmup-steps"),
    scheduler: str = typer.Option("linear", "--scheduler", help="linear or constant after warm-up."),
    max_seq_length: int = typer.Option(35, "--max-seq-length"),
    max_img_seq_length: int = typer.Option(50, "--max-img-seq-length"),
    texta_false_prob: float = typer.Option(0.25, "--texta-false-prob", help="Share of examples whose text_a is replaced "
                                           "(label num_contrast_classes - 1); 0.5 - it have text_b replaced (label 1)."),
    textb_sample_mode: int = typer.Option(0, "--textb-sample-mode", help="Replacement text_b: 0 any text of another "
                                          "image's row, 1 its text_b, 2 a question's answer."),
    contrast_classes: int = typer.Option(3, "--num-contrast-classes", help="3 (Oscar+: 0 < texta-false-prob < 0.5) or 2 "
                                         "(vanilla Oscar: texta-false-prob 0 or 0.5)."),
    gtlabels: bool = typer.Option(True, "--use-gtlabels/--no-gtlabels", help="text_b from a label row's gt_objects when present."),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="Where relative image_feature_path folders are "
                                            "(the original's --data_dir; default: the yaml's folder)."),
    save_steps: int = typer.Option(500, "--save-steps"),
    log_steps: int = typer.Option(20, "--log-steps"),
    seed: int = typer.Option(88, "--seed"),
    resume: bool = typer.Option(False, "--resume", help="Continue from OUT's newest checkpoint-N."),
) -> None:
    """MLM + contrastive pretraining; `torchrun --nproc_per_node N -m vinvl oscar pretrain ...` for data parallel."""
    from ..oscar.checkpoint import config_file
    from ..oscar.pretrain import PretrainConfig, pretrain as run

    mc = config_file(config)
    cfg = PretrainConfig(
        max_seq_length=max_seq_length, max_img_seq_length=max_img_seq_length, texta_false_prob=texta_false_prob,
        textb_sample_mode=textb_sample_mode, num_contrast_classes=contrast_classes, use_gtlabels=gtlabels, batch_size=batch_size,
        gradient_accumulation_steps=accumulation, learning_rate=lr, warmup_steps=warmup, scheduler=scheduler,
        max_steps=max_steps, save_steps=save_steps, log_steps=log_steps, seed=seed,
    )
    final = run(corpus, vocab, out, mc, cfg, init=init, resume=resume, data_dir=data_dir)
    typer.echo(str(final))


app.add_typer(vqa_app, name="vqa")
app.add_typer(gqa_app, name="gqa")
app.add_typer(nlvr2_app, name="nlvr2")
app.add_typer(caption_app, name="caption")
app.add_typer(retrieval_app, name="retrieval")
