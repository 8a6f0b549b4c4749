"""``vinvl oscar retrieval train|eval|rank``: image-text retrieval (arguments only; the work is in
:mod:`vinvl.oscar.retrieval`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

retrieval_app = typer.Typer(help="Image-text retrieval (run_retrieval.py): train, evaluate R@K, rank captions and images.",
                            no_args_is_help=True)

FEATURES = typer.Option(None, "--features", help="Region features: a folder (features.tsv + imageid2idx.json, tags in "
                        "label.tsv or predictions.tsv), its features.tsv (--img_feat_file), or a .pt dict "
                        "(default: DATA_DIR's features.tsv or {split}_img_frcnn_feats.pt).")


def _echo(result: dict, out: Optional[Path]) -> None:
    text = json.dumps(result, indent=1)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
    typer.echo(text)


@retrieval_app.command("train")
def train(
    data_dir: Path = typer.Argument(..., help="Folder with {split}_captions.pt (the released coco_ir)."),
    out: Path = typer.Option(..., "-o", "--out", help="Output folder: checkpoint-N/ (original layout), log.jsonl."),
    init: Optional[Path] = typer.Option(None, "--init", help="Checkpoint to start from (a pretrained Oscar+ or a retrieval one)."),
    vocab: Optional[Path] = typer.Option(None, "--vocab", help="vocab.txt (default: --init's)."),
    config: Optional[Path] = typer.Option(None, "--config", help="config.json of a fresh model (without --init)."),
    features: Optional[Path] = FEATURES,
    split: str = typer.Option("train", "--split"),
    max_steps: int = typer.Option(0, "--max-steps", help="> 0 overrides --num-train-epochs."),
    epochs: int = typer.Option(20, "--num-train-epochs"),
    batch_size: int = typer.Option(32, "--batch-size", help="Matched pairs per step per process (--per_gpu_train_batch_size); "
                                   "each adds an unmatched pair."),
    accumulation: int = typer.Option(1, "--gradient-accumulation-steps"),
    lr: float = typer.Option(2e-5, "--learning-rate"),
    weight_decay: float = typer.Option(0.05, "--weight-decay"),
    warmup: int = typer.Option(0, "--warmup-steps"),
    scheduler: str = typer.Option("linear", "--scheduler", help="linear or constant after warm-up."),
    max_seq_length: int = typer.Option(70, "--max-seq-length"),
    max_img_seq_length: int = typer.Option(50, "--max-img-seq-length"),
    od_labels: bool = typer.Option(True, "--add-od-labels/--no-od-labels", help="Tags after the caption."),
    captions_per_image: int = typer.Option(5, "--captions-per-image", help="--num_captions_per_img_train."),
    num_labels: int = typer.Option(2, "--num-labels", help="2: softmax classifier (the original's default); 1: regression."),
    loss_type: str = typer.Option("sfmx", "--loss-type"),
    drop_out: float = typer.Option(0.1, "--drop-out"),
    save_steps: int = typer.Option(5000, "--save-steps"),
    log_steps: int = typer.Option(20, "--log-steps"),
    seed: int = typer.Option(88, "--seed"),
    resume: bool = typer.Option(False, "--resume", help="Continue from OUT's newest checkpoint-N."),
) -> None:
    """Fine-tune the matched/unmatched classifier; `torchrun --nproc_per_node N -m vinvl oscar retrieval train ...` for data parallel."""
    from ..oscar.retrieval import RetrievalConfig, train as run

    from ..oscar.checkpoint import config_file

    mc = config_file(config)
    cfg = RetrievalConfig(
        max_seq_length=max_seq_length, max_img_seq_length=max_img_seq_length, add_od_labels=od_labels,
        captions_per_image_train=captions_per_image, num_labels=num_labels, loss_type=loss_type, drop_out=drop_out,
        batch_size=batch_size, gradient_accumulation_steps=accumulation, learning_rate=lr, weight_decay=weight_decay,
        warmup_steps=warmup, scheduler=scheduler, max_steps=max_steps, num_train_epochs=epochs, save_steps=save_steps,
        log_steps=log_steps, seed=seed,
    )
    typer.echo(str(run(data_dir, out, cfg, init=init, vocab=vocab, model_config=mc, features=features, split=split,
                       resume=resume)))


@retrieval_app.command("eval")
def evaluate(
    checkpoint: Path = typer.Argument(..., help="Retrieval checkpoint folder (or a run folder: its newest checkpoint-N)."),
    data_dir: Path = typer.Option(..., "--data", help="Folder with {split}_captions.pt and the key lists."),
    split: str = typer.Option("test", "--split"),
    keys: Optional[Path] = typer.Option(None, "--keys", help="Image ids to evaluate on, e.g. test_img_keys.tsv (COCO 5K) or "
                                        "test_img_keys_1k.tsv (in DATA_DIR or a path); default: every image of the split."),
    features: Optional[Path] = FEATURES,
    folds: int = typer.Option(1, "--folds", help="Also average R@K over this many image folds (5 on the 5K keys: COCO 1K)."),
    captions_per_image: int = typer.Option(5, "--captions-per-image", help="--num_captions_per_img_val."),
    max_seq_length: int = typer.Option(70, "--max-seq-length", help="Used when the checkpoint has no training args."),
    max_img_seq_length: int = typer.Option(50, "--max-img-seq-length", help="Used when the checkpoint has no training args."),
    od_labels: bool = typer.Option(True, "--add-od-labels/--no-od-labels", help="Used when the checkpoint has no training args."),
    batch_size: int = typer.Option(256, "--batch-size", help="Captions per forward pass."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda, cuda:1 ..."),
    amp: Optional[bool] = typer.Option(None, "--amp/--no-amp", help="bf16 autocast (default: on for CUDA; CPU is float32)."),
    two_stage: int = typer.Option(0, "--two-stage", help="k > 0: the full model scores only each image's and each caption's "
                                  "top-k candidates of a cheap first stage (--first-stage)."),
    first_stage: str = typer.Option("tags", "--first-stage", help="tags: the model without the regions; embed: cosine "
                                    "of mean-pooled caption and image embeddings (cheaper, weaker)."),
    compare_full: bool = typer.Option(False, "--compare-full", help="With --two-stage: also the full matrix, and the recall lost."),
    scores: Optional[Path] = typer.Option(None, "--scores", help="Save the score matrix (torch .pt: scores, image_keys, caption_to_image)."),
    out: Optional[Path] = typer.Option(None, "-o", "--out", help="Also write the result JSON here."),
) -> None:
    """R@1/5/10 image->text and text->image from the full cross-encoder score matrix (--cross_image_eval)."""
    from ..oscar.retrieval import RetrievalConfig, evaluate as run

    cfg = RetrievalConfig(max_seq_length=max_seq_length, max_img_seq_length=max_img_seq_length, add_od_labels=od_labels,
                          captions_per_image_eval=captions_per_image)
    _echo(run(checkpoint, data_dir, split, keys, features, cfg, folds=folds, batch_size=batch_size, device=device,
              amp=amp, two_stage=two_stage, first_stage=first_stage, compare_full=compare_full, scores_out=scores), out)


@retrieval_app.command("rank")
def rank(
    checkpoint: Path = typer.Argument(..., help="Retrieval checkpoint folder (or a run folder)."),
    features: Path = typer.Option(..., "--features", help="Feature folder of the images (e.g. `vinvl extract` output)."),
    captions: Path = typer.Option(..., "--captions", help="Text file, one caption per line."),
    image: Optional[list[str]] = typer.Option(None, "--image", help="Image key to rank for (repeatable; default: every image)."),
    top: int = typer.Option(5, "--top", help="How many captions per image and images per caption."),
    batch_size: int = typer.Option(256, "--batch-size"),
    device: str = typer.Option("cpu", "--device"),
    out: Optional[Path] = typer.Option(None, "-o", "--out", help="Also write the result JSON here."),
) -> None:
    """The best captions for each image and the best images for each caption (scores: the matched logit)."""
    from ..errors import VinvlError
    from ..oscar.retrieval import rank as run

    if not captions.is_file():
        raise VinvlError(f"{captions}: no such captions file")
    texts = [t.strip() for t in captions.read_text(encoding="utf-8").splitlines() if t.strip()]
    _echo(run(checkpoint, features, texts, image_keys=image or None, top=top, batch_size=batch_size, device=device), out)
