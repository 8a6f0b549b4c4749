"""``vinvl oscar caption train|eval|predict``: Oscar+ image captioning (the original's run_captioning.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(help="Oscar+ image captioning: XE/SCST training, COCO-metric evaluation, captions for images.",
                  no_args_is_help=True)

_SPLIT = typer.Argument(..., help="Split yaml (feature, label, caption; the original layout) or a feature folder.")
_CAPTIONS = typer.Option(None, "--captions", help="Caption json ([{image_id, caption}]); overrides the yaml's.")


def _decode_config(num_beams: int, max_gen_length: int, length_penalty: float, repetition_penalty: float,
                   batch_size: int):
    from ..oscar.captioning import DecodeConfig

    return DecodeConfig(num_beams=num_beams, max_gen_length=max_gen_length, length_penalty=length_penalty,
                        repetition_penalty=repetition_penalty, batch_size=batch_size)


@app.command("train")
def train(
    split: Path = _SPLIT,
    out: Path = typer.Option(..., "-o", "--out", help="Run folder: checkpoint-N/ (original layout), log.jsonl."),
    captions: Optional[Path] = _CAPTIONS,
    init: Optional[Path] = typer.Option(None, "--init", help="Checkpoint to start from (captioning or pretraining; folder or zip)."),
    vocab: Optional[Path] = typer.Option(None, "--vocab", help="vocab.txt (default: --init's)."),
    config: Optional[Path] = typer.Option(None, "--config", help="config.json of a fresh model (without --init)."),
    scst: bool = typer.Option(False, "--scst", help="Self-critical training with a CIDEr-D reward (start from an XE checkpoint)."),
    max_steps: int = typer.Option(-1, "--max-steps", help="> 0 overrides --num-train-epochs."),
    epochs: int = typer.Option(40, "--num-train-epochs"),
    batch_size: int = typer.Option(64, "--batch-size", help="Captions (SCST: images) per step per process."),
    accumulation: int = typer.Option(1, "--gradient-accumulation-steps"),
    lr: float = typer.Option(3e-5, "--learning-rate"),
    weight_decay: float = typer.Option(0.05, "--weight-decay"),
    warmup: int = typer.Option(0, "--warmup-steps"),
    scheduler: str = typer.Option("linear", "--scheduler", help="linear or constant after warm-up."),
    max_grad_norm: float = typer.Option(1.0, "--max-grad-norm"),
    max_seq_length: int = typer.Option(70, "--max-seq-length"),
    max_seq_a_length: int = typer.Option(40, "--max-seq-a-length"),
    max_img_seq_length: int = typer.Option(50, "--max-img-seq-length"),
    mask_prob: float = typer.Option(0.15, "--mask-prob"),
    max_masked_tokens: int = typer.Option(3, "--max-masked-tokens"),
    od_labels: bool = typer.Option(True, "--od-labels/--no-od-labels", help="Tags after the caption (--add_od_labels)."),
    drop_out: float = typer.Option(0.1, "--drop-out"),
    tie_weights: bool = typer.Option(False, "--tie-weights"),
    freeze_embedding: bool = typer.Option(False, "--freeze-embedding"),
    label_smoothing: float = typer.Option(0.0, "--label-smoothing"),
    drop_worst_ratio: float = typer.Option(0.0, "--drop-worst-ratio"),
    drop_worst_after: int = typer.Option(0, "--drop-worst-after"),
    sc_train_sample_n: int = typer.Option(5, "--sc-train-sample-n"),
    sc_baseline_type: str = typer.Option("greedy", "--sc-baseline-type", help="greedy or sample."),
    sc_beam_size: int = typer.Option(1, "--sc-beam-size"),
    cider_cached_tokens: Optional[Path] = typer.Option(None, "--cider-cached-tokens",
                                                       help="Document frequencies for CIDEr-D (coco-train-words.p); default: each batch's."),
    max_gen_length: int = typer.Option(20, "--max-gen-length", help="SCST sampling length."),
    temperature: float = typer.Option(1.0, "--temperature"),
    top_k: int = typer.Option(0, "--top-k"),
    top_p: float = typer.Option(1.0, "--top-p"),
    save_steps: int = typer.Option(-1, "--save-steps", help="<= 0: only the last step."),
    log_steps: int = typer.Option(20, "--log-steps"),
    seed: int = typer.Option(88, "--seed"),
    lower_case: bool = typer.Option(True, "--do-lower-case/--no-lower-case"),
    resume: bool = typer.Option(False, "--resume", help="Continue from OUT's newest checkpoint-N."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda, cuda:1 (default: cuda if present)."),
) -> None:
    """Train a captioner: masked-caption cross-entropy (label smoothing, drop-worst) or SCST."""
    from ..oscar.captioning import CaptionConfig, CaptionData, train as run

    from ..oscar.checkpoint import config_file

    mc = config_file(config)
    cfg = CaptionConfig(
        max_seq_length=max_seq_length, max_seq_a_length=max_seq_a_length, max_img_seq_length=max_img_seq_length,
        mask_prob=mask_prob, max_masked_tokens=max_masked_tokens, add_od_labels=od_labels, do_lower_case=lower_case,
        drop_out=drop_out, tie_weights=tie_weights, freeze_embedding=freeze_embedding, label_smoothing=label_smoothing,
        drop_worst_ratio=drop_worst_ratio, drop_worst_after=drop_worst_after, batch_size=batch_size, learning_rate=lr,
        weight_decay=weight_decay, warmup_steps=warmup, scheduler=scheduler, num_train_epochs=epochs, max_steps=max_steps,
        gradient_accumulation_steps=accumulation, max_grad_norm=max_grad_norm, seed=seed, save_steps=save_steps,
        log_steps=log_steps, scst=scst, sc_train_sample_n=sc_train_sample_n, sc_baseline_type=sc_baseline_type,
        sc_beam_size=sc_beam_size, cider_cached_tokens=str(cider_cached_tokens) if cider_cached_tokens else None,
        max_gen_length=max_gen_length, temperature=temperature, top_k=top_k, top_p=top_p,
    )
    final = run(CaptionData(split, captions), out, cfg, init=init, vocab=vocab, model_config=mc, resume=resume, device=device)
    typer.echo(str(final))


@app.command("eval")
def evaluate(
    checkpoint: Path = typer.Argument(..., help="Captioning checkpoint (folder, run folder or released zip)."),
    split: Path = _SPLIT,
    out: Path = typer.Option(..., "-o", "--out", help="Folder for results.json and metrics.json."),
    captions: Optional[Path] = _CAPTIONS,
    num_beams: int = typer.Option(5, "--num-beams"),
    max_gen_length: int = typer.Option(20, "--max-gen-length"),
    length_penalty: float = typer.Option(1.0, "--length-penalty"),
    repetition_penalty: float = typer.Option(1.0, "--repetition-penalty"),
    batch_size: int = typer.Option(16, "--batch-size", help="Images per decoding batch."),
    spice: Optional[bool] = typer.Option(None, "--spice/--no-spice", help="Default: SPICE when its CoreNLP jars are installed, else reported 'unavailable'."),
    metrics: bool = typer.Option(True, "--metrics/--no-metrics", help="Score against the split's captions."),
    device: Optional[str] = typer.Option(None, "--device"),
) -> None:
    """Beam-search captions for a split and the COCO metrics (BLEU-1..4, METEOR, ROUGE-L, CIDEr, SPICE)."""
    from ..oscar.captioning import CaptionData, evaluate as run

    dcfg = _decode_config(num_beams, max_gen_length, length_penalty, repetition_penalty, batch_size)
    report = run(checkpoint, CaptionData(split, captions), out, dcfg, device=device, spice=spice, metrics=metrics)
    typer.echo(json.dumps(report, indent=1))


@app.command("predict")
def predict(
    checkpoint: Path = typer.Argument(..., help="Captioning checkpoint (folder, run folder or released zip)."),
    images: list[Path] = typer.Argument(..., help="Image files, folders or lists (what `vinvl extract` takes)."),
    out: Path = typer.Option(..., "-o", "--out", help="Folder for regions/ (detector output) and results.json."),
    model: Optional[str] = typer.Option(None, "--model", help="Detector registry name (default: released VG one if cached, else the demo)."),
    weights: Optional[Path] = typer.Option(None, "--weights", help="Detector weights file (X152-C4 preset)."),
    labelmap: Optional[Path] = typer.Option(None, "--labelmap", help="Label map for --weights."),
    num_beams: int = typer.Option(5, "--num-beams"),
    max_gen_length: int = typer.Option(20, "--max-gen-length"),
    length_penalty: float = typer.Option(1.0, "--length-penalty"),
    repetition_penalty: float = typer.Option(1.0, "--repetition-penalty"),
    batch_size: int = typer.Option(16, "--batch-size"),
    device: Optional[str] = typer.Option(None, "--device"),
) -> None:
    """Captions for images end to end: detector regions and tags, then beam search; writes results.json."""
    from ..oscar.captioning import predict as run

    dcfg = _decode_config(num_beams, max_gen_length, length_penalty, repetition_penalty, batch_size)
    path = run(checkpoint, images, out, dcfg, model=model, weights=weights, labelmap=labelmap, device=device)
    typer.echo(str(path))


@app.command("split")
def split(
    source: Path = typer.Argument(..., help="Feature folder (e.g. `vinvl extract` output: features.tsv + label.tsv) or a split yaml."),
    out: Path = typer.Option(..., "-o", "--out", help="Folder for NAME.yaml and its files."),
    name: str = typer.Option(..., "--name", help="Split name: NAME.yaml, NAME.feature.tsv, NAME.label.tsv, NAME_caption.json."),
    captions: Optional[Path] = _CAPTIONS,
) -> None:
    """Write a split in the original run_captioning.py layout (caption-format feature TSV, row-aligned label TSV,
    caption json + its _coco_format.json references), readable by the original's CaptionTSVDataset and by vinvl."""
    from ..oscar.captioning import CaptionData, write_caption_split

    typer.echo(str(write_caption_split(CaptionData(source, captions), out, name)))
