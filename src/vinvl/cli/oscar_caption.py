"""``vinvl oscar caption train|eval|predict|split``: Oscar+ image captioning (the original's run_captioning.py;
arguments only, the work is in :mod:`vinvl.oscar.tasks.captioning`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from ..oscar.options import CaptionOptions, CBSOptions, DecodeOptions, option_defaults
from .oscar_flags import CBS, DETECTOR, cbs_classes, cbs_options, detector, eval_split, fields_of, options_of, takes

app = typer.Typer(help="Oscar+ image captioning: XE/SCST training, COCO-metric evaluation, captions for images.",
                  no_args_is_help=True)

_SPLIT_HELP = "Split yaml (feature, label, caption; the original layout) or a feature folder."
DECODING = ("num_beams", "num_keep_best", "max_gen_length", "length_penalty", "repetition_penalty",
            "eval_batch_size")


@app.command("train")
@takes("out", "captions", "init", "vocab", "config", "eval_split", "resume", *fields_of(CaptionOptions),
       defaults=CaptionOptions)
def train(split: Path = typer.Argument(..., help=_SPLIT_HELP), given: Any = None) -> None:
    """Train a captioner into OUT/checkpoint-N: masked-caption cross-entropy (label smoothing, drop-worst) or SCST
    (--scst); with --eval-split (a split yaml or feature folder), greedy captions' CIDEr-D at each save."""
    from ..oscar.checkpoint import config_file
    from ..oscar.data.captions import CaptionData
    from ..oscar.tasks.captioning import train as run

    opts = options_of(CaptionOptions, given)
    eval_data = CaptionData(given["eval_split"]) if eval_split(given["eval_split"]) else None
    final = run(CaptionData(split, given["captions"]), given["out"], opts, init=given["init"], vocab=given["vocab"],
                model_config=config_file(given["config"]), eval_data=eval_data, resume=given["resume"])
    typer.echo(str(final))


@app.command("eval")
@takes("out", "captions", *DECODING, "spice", "metrics", "device", "precision", *CBS, "nocaps_image_info",
       defaults={**option_defaults(DecodeOptions), **option_defaults(CBSOptions)})
def evaluate(
    checkpoint: Path = typer.Argument(..., help="Captioning checkpoint (folder, run folder or released zip)."),
    split: Path = typer.Argument(..., help=_SPLIT_HELP),
    given: Any = None,
) -> None:
    """Beam-search captions for a split (OUT/results.json) and the COCO metrics (OUT/metrics.json: BLEU-1..4,
    METEOR, ROUGE-L, CIDEr, SPICE); --cbs: constrained beam search (NoCaps; OUT/predictions.tsv, OUT/constraints.tsv);
    --nocaps-image-info: also OUT/nocaps_submission.json for EvalAI."""
    from ..oscar.tasks.captioning import evaluate as run

    report = run(checkpoint, split, given["out"], options_of(DecodeOptions, given), device=given["device"],
                 spice=given["spice"], metrics=given["metrics"], precision=given["precision"], captions=given["captions"],
                 cbs=cbs_options(given), nocaps_image_info=given["nocaps_image_info"])
    typer.echo(json.dumps(report, indent=1))


@app.command("predict")
@takes("out", *DETECTOR, *DECODING, "device", "precision", *CBS, "cbs_class_map",
       defaults={**option_defaults(DecodeOptions), **option_defaults(CBSOptions)})
def predict(
    checkpoint: Path = typer.Argument(..., help="Captioning checkpoint (folder, run folder or released zip)."),
    images: list[Path] = typer.Argument(..., help="Image files, folders or lists (what `vinvl extract` takes)."),
    given: Any = None,
) -> None:
    """Captions for images end to end: the detector's regions and tags (OUT/regions), then beam search;
    writes OUT/results.json. --cbs: constrained beam search; its boxes are --cbs-box's (keyed by image key), else the
    detector's own (--cbs-class-map: mapped to the hierarchy's classes); only --cbs-hierarchy is then needed."""
    from ..oscar.tasks.captioning import predict_images

    path = predict_images(checkpoint, detector(images, given), given["out"], options_of(DecodeOptions, given),
                          device=given["device"], precision=given["precision"], cbs=cbs_options(given),
                          cbs_classes=cbs_classes(given))
    typer.echo(str(path))


@app.command("split")
@takes("out", "name", "captions")
def split(
    source: Path = typer.Argument(..., help="Feature folder (e.g. `vinvl extract` output: features.tsv + label.tsv) "
                                  "or a split yaml."),
    given: Any = None,
) -> None:
    """Write a split in the original run_captioning.py layout (caption-format feature TSV, row-aligned label TSV,
    caption json + its _coco_format.json references), readable by the original's CaptionTSVDataset and by vinvl."""
    from ..oscar.data.captions import CaptionData, write_caption_split

    typer.echo(str(write_caption_split(CaptionData(source, given["captions"]), given["out"], given["name"])))
