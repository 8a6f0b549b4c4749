"""``vinvl detector train|eval``: train AttrRCNN on a TSV dataset; COCO-style AP, attribute accuracy, the original's VG mAP."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from ..atomic import atomic_write_text
from ..config import TrainConfig
from ..errors import VinvlError
from .options import device_option, dtype_option, given_on_command_line, output_file, output_folder

app = typer.Typer(help="Train and evaluate the detector on TSV datasets (image TSV + label TSV + label map).",
                  no_args_is_help=True)


_T = TrainConfig  # the defaults below are the training configuration's, so they are stated once


BOTH_FORMS = ("args", "config_file", "out", "threads", "device", "resume")  # every other option is the native form's


@app.command("train")
def train(
    ctx: typer.Context,
    args: Optional[List[str]] = typer.Argument(None, metavar="DATA.yaml | KEY VALUE ...", help="Dataset yaml naming img, label and labelmap; with --config-file, the original's KEY VALUE pairs."),
    config_file: Optional[Path] = typer.Option(None, "--config-file", help="The original's yaml, as tools/train_sg_net.py takes it (SOLVER.*, INPUT.*_TRAIN, DATASETS.TRAIN, ...: each key honoured or refused by name, docs/original-config.md)."),
    out: Optional[Path] = typer.Option(None, "-o", "--out", help="Output folder: checkpoint-N/, model_final.pth, labelmap.json, logs (the original form: OUTPUT_DIR unless given).", callback=output_folder),
    preset: str = typer.Option("shapes_demo", "--preset", help="Architecture preset (classes/attributes follow the label map)."),
    init: Optional[Path] = typer.Option(None, "--init", help="Checkpoint to fine-tune (predictors of other shapes re-initialised)."),
    iterations: int = typer.Option(_T.max_steps, "--iterations", min=1, help="Optimizer steps (SGD iterations)."),
    batch_size: int = typer.Option(_T.batch_size, "--batch-size", min=1, help="Images per micro-batch per process (a step takes batch x processes x accumulation)."),
    accumulation: int = typer.Option(_T.gradient_accumulation_steps, "--gradient-accumulation-steps", min=1, help="Micro-batches per optimizer step."),
    lr: float = typer.Option(_T.learning_rate, "--lr", min=0.0, help="Base learning rate (warm-up, then x0.1 at 75% and 92%)."),
    warmup: int = typer.Option(_T.warmup_steps, "--warmup", min=0, help="Warm-up iterations."),
    rois: int = typer.Option(_T.roi_batch_per_image, "--rois-per-image", min=1, help="Sampled proposals per image for the box head."),
    positive_fraction: float = typer.Option(_T.roi_positive_fraction, "--roi-positive-fraction", min=0.0, max=1.0, help="Largest share of positives among them."),
    set_: Optional[List[str]] = typer.Option(None, "--set", help="Detector setting KEY=VALUE (e.g. pooler_resolution=10)."),
    trainable_bn: bool = typer.Option(_T.trainable_bn, "--trainable-bn", help="Train the BNs (from scratch); folded into frozen BN on save."),
    seed: int = typer.Option(_T.seed, "--seed", min=0, help="Seed of initialisation, data order, flips and sampling."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="torch CPU threads."),
    device: Optional[str] = device_option(" (under torchrun each process takes cuda:LOCAL_RANK; the original form: MODEL.DEVICE unless given)"),
    precision: str = dtype_option(detector=False),
    resume: bool = typer.Option(False, "--resume", help="Continue from OUT's newest complete checkpoint-N, exactly as the uninterrupted run."),
    checkpoint_every: int = typer.Option(_T.save_steps, "--checkpoint-every", min=1, help="Iterations between checkpoints (and the last)."),
    log_every: int = typer.Option(_T.log_steps, "--log-every", min=1, help="Iterations between log lines (and the last)."),
    eval_data: Optional[Path] = typer.Option(None, "--eval", help="Dataset yaml to evaluate at each checkpoint (eval_logs.json: COCO AP50 as the score)."),
) -> None:
    """Train (or fine-tune) AttrRCNN through the training engine (torchrun for several processes); writes
    OUT/model_final.pth in the released checkpoints' layout. The original form (--config-file F.yaml KEY VALUE ...)
    trains as tools/train_sg_net.py configures it."""
    if threads:
        import torch

        torch.set_num_threads(threads)
    if config_file is not None:
        native = [p.name for p in ctx.command.params if p.name not in BOTH_FORMS]
        given = [n for n in native if n in given_on_command_line(ctx, native)]
        if given:
            flags = next(o.opts[-1] for o in ctx.command.params if o.name == given[0])
            raise VinvlError(f"{flags}: the original form takes its settings from --config-file and KEY VALUE pairs")
        from ..config.original import load_original_training

        run = load_original_training(config_file, list(args or []))  # every refusal before torch is imported
        from ..detection.train import train_original

        typer.echo(f"{train_original(run, out_dir=out, device=device, resume=resume)}")
        return
    if len(args or []) != 1 or out is None:
        raise VinvlError("give one DATA.yaml and -o OUT (or the original form: --config-file F.yaml [KEY VALUE ...])")
    from ..detection.train import train as run_train

    options = TrainConfig(max_steps=iterations, batch_size=batch_size, gradient_accumulation_steps=accumulation,
                          learning_rate=lr, warmup_steps=warmup, roi_batch_per_image=rois,
                          roi_positive_fraction=positive_fraction, trainable_bn=trainable_bn, seed=seed,
                          device=device or "auto", precision=precision, save_steps=checkpoint_every,
                          log_steps=log_every)
    path = run_train(preset, Path(args[0]), out, options, init=init, resume=resume, eval_dataset=eval_data,
                     settings=set_ or [])
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
