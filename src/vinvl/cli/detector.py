"""``vinvl detector train|eval``: train AttrRCNN on a TSV dataset; COCO-style AP, attribute accuracy, the original's VG mAP."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from ..atomic import atomic_write_text
from ..errors import VinvlError
from .options import device_option, output_file, output_folder

app = typer.Typer(help="Train and evaluate the detector on TSV datasets (image TSV + label TSV + label map).",
                  no_args_is_help=True)


@app.command("train")
def train(
    dataset: Path = typer.Argument(..., help="Dataset yaml naming img, label and labelmap."),
    out: Path = typer.Option(..., "-o", "--out", help="Output folder: checkpoints, labelmap.json, log.", callback=output_folder),
    preset: str = typer.Option("shapes_demo", "--preset", help="Architecture preset (classes/attributes follow the label map)."),
    init: Optional[Path] = typer.Option(None, "--init", help="Checkpoint to fine-tune (predictors of other shapes re-initialised)."),
    iterations: int = typer.Option(3000, "--iterations", min=1, help="SGD iterations."),
    batch_size: int = typer.Option(2, "--batch-size", min=1, help="Images per iteration."),
    lr: float = typer.Option(0.02, "--lr", min=0.0, help="Base learning rate (warm-up, then x0.1 at 75% and 92%)."),
    warmup: int = typer.Option(200, "--warmup", min=0, help="Warm-up iterations."),
    rois: int = typer.Option(128, "--rois-per-image", min=1, help="Sampled proposals per image for the box head."),
    positive_fraction: float = typer.Option(0.25, "--roi-positive-fraction", min=0.0, max=1.0, help="Largest share of positives among them."),
    set_: Optional[List[str]] = typer.Option(None, "--set", help="Detector setting KEY=VALUE (e.g. pooler_resolution=10)."),
    trainable_bn: bool = typer.Option(False, "--trainable-bn", help="Train the BNs (from scratch); folded into frozen BN on save."),
    seed: int = typer.Option(0, "--seed", min=0, help="Seed of initialisation, sampling and flips."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="torch CPU threads."),
    device: Optional[str] = device_option(),
    resume: bool = typer.Option(False, "--resume", help="Continue from OUT/last_checkpoint.pth."),
    checkpoint_every: int = typer.Option(500, "--checkpoint-every", min=1, help="Iterations between checkpoints."),
) -> None:
    """Train (or fine-tune) AttrRCNN; writes OUT/model_final.pth in the released checkpoints' layout."""
    import torch

    from ..config import detector_preset
    from ..config.original import apply_set_options
    from ..detection.numerics import choose_device
    from ..detection.train import TrainConfig, train as run_train

    if threads:
        torch.set_num_threads(threads)
    tc = TrainConfig(iterations=iterations, images_per_batch=batch_size, base_lr=lr, warmup_iters=warmup,
                     roi_batch_per_image=rois, roi_positive_fraction=positive_fraction, trainable_bn=trainable_bn,
                     seed=seed, checkpoint_every=checkpoint_every)
    cfg = detector_preset(preset)
    cfg = apply_set_options(cfg, set_ or [])
    path = run_train(cfg, dataset, out, tc, init=init, resume=resume, device=str(choose_device(device)))
    typer.echo(f"{path}")


@app.command("eval")
def evaluate(
    dataset: Path = typer.Argument(..., help="Dataset yaml naming img, label (and labelmap)."),
    weights: Optional[Path] = typer.Option(None, "--weights", help="Checkpoint."),
    predictions: Optional[Path] = typer.Option(None, "--predictions", help="Score this predictions.tsv (e.g. `vinvl extract`'s rows, at its thresholds) instead of running --weights."),
    labelmap: Optional[Path] = typer.Option(None, "--labelmap", help="Label map (default: the dataset's)."),
    preset: str = typer.Option("shapes_demo", "--preset", help="Architecture preset of the checkpoint."),
    groups: Optional[List[str]] = typer.Option(None, "--attribute-group", help="NAME=a,b,c: also report accuracy within a group."),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="Only the first N images."),
    set_: Optional[List[str]] = typer.Option(None, "--set", help="Detector setting KEY=VALUE, as for training."),
    vg_eval: bool = typer.Option(True, "--vg-eval/--no-vg-eval", help="Also the original's VG evaluation (original_vg_eval: obj_map at the configured settings, attr_map on the ground-truth boxes); up to two more passes."),
    device: Optional[str] = device_option(),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the metrics here.", callback=output_file),
) -> None:
    """COCO-style box AP (AP, AP50, AP75), attribute top-1 accuracy on correctly detected objects and the
    original's VG evaluation (VOC-style obj mAP and, with attributes, attr mAP on the ground-truth boxes)."""
    if (weights is None) == (predictions is None):
        raise VinvlError("give --weights (run the detector, low threshold) or --predictions (score a predictions.tsv)")
    attr_groups = {}
    for g in groups or []:
        name, sep, members = g.partition("=")
        if not sep or not members:
            raise VinvlError(f"--attribute-group {g!r}: expected NAME=a,b,c")
        attr_groups[name] = members.split(",")
    if predictions is not None:
        from ..detection.evaluate import evaluate_predictions

        m = evaluate_predictions(predictions, dataset)
    else:
        from ..detection.evaluate import evaluate_weights

        m = evaluate_weights(dataset, weights, preset=preset, labelmap=labelmap, settings=set_ or [],
                             device=device, attribute_groups=attr_groups, limit=limit, original=vg_eval)
    typer.echo(json.dumps(m, indent=1))
    if json_out:
        atomic_write_text(json_out, json.dumps(m, indent=1) + "\n")
