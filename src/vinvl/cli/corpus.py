"""``vinvl corpus``: pretraining corpus tools (decontamination against downstream test images)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from ..corpus.decontaminate import (
    DEFAULT_CANDIDATE_THRESHOLD,
    DEFAULT_SIZE,
    DEFAULT_THRESHOLD,
    decontaminate as _decontaminate,
)
from ..errors import VinvlError
from ..images import IMAGE_EXTENSIONS
from .options import output_file, output_folder, write_faults

app = typer.Typer(help="Pretraining corpus tools.", no_args_is_help=True)


def _expand_images(items: List[Path]) -> list[Path]:
    """Files as given, folders as their images (recursively, sorted)."""

    out: list[Path] = []
    for p in items:
        if p.is_dir():
            out += sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS)
        elif p.is_file():
            out.append(p)
        else:
            raise VinvlError(f"{p}: no such file or folder")
    return out


@app.command("decontaminate")
def decontaminate(
    corpus: Path = typer.Argument(..., help="Corpus TSV: one row per (image, text), the image key in the first column."),
    out: Path = typer.Option(..., "-o", "--out", help="Filtered corpus TSV (+ its .lineidx).", callback=output_file),
    report: Optional[Path] = typer.Option(None, "--report", callback=output_file, help="Removed keys: key, reason, match, distance [OUT.removed.tsv]."),
    corpus_images: Optional[Path] = typer.Option(None, "--corpus-images", help="Folder of corpus images: KEY + .jpg/.png/...; '/' in a key = subfolder."),
    test_images: Optional[List[Path]] = typer.Option(None, "--test-images", help="Test images: files or folders (repeatable)."),
    id_mapping: Optional[Path] = typer.Option(None, "--id-mapping", help="corpus_id<TAB>mapped_id TSV (or JSON object), e.g. VG id -> COCO id."),
    test_ids: Optional[Path] = typer.Option(None, "--test-ids", help="Test ids (in the mapped namespace), one per line."),
    threshold: float = typer.Option(DEFAULT_THRESHOLD, "--threshold", min=0.0, help="Aligned signature distance below which an image is a duplicate."),
    candidate_threshold: float = typer.Option(DEFAULT_CANDIDATE_THRESHOLD, "--candidate-threshold", min=0.0, help="Blurred signature distance below which a pair is checked."),
    size: int = typer.Option(DEFAULT_SIZE, "--size", min=2, help="Signature side (pixels)."),
    workers: int = typer.Option(0, "--workers", min=0, help="Processes for decoding and checking images (0: this one)."),
) -> None:
    """Remove corpus rows whose image is a test image: by id mapping and/or near-duplicate search."""
    report_path = report if report is not None else out.with_suffix(".removed.tsv")
    tests = _expand_images(list(test_images or []))
    if test_images and not tests:
        raise VinvlError("--test-images: no images found")
    res = _decontaminate(
        corpus,
        out,
        report_path,
        corpus_images=corpus_images,
        test_images=tests,
        id_mapping=id_mapping,
        test_ids=test_ids,
        threshold=threshold,
        candidate_threshold=candidate_threshold,
        size=size,
        workers=workers,
    )
    for kind, fails in (("corpus", res.corpus_failures), ("test", res.test_failures)):
        for f in fails[:5]:
            typer.echo(f"warning: {kind} image {f.path}: {f.error}", err=True)
        if len(fails) > 5:
            typer.echo(f"warning: ... and {len(fails) - 5} more unreadable {kind} images", err=True)
    typer.echo(
        f"{out}: kept {res.rows_kept} of {res.rows_read} rows; removed {res.rows_removed_id_map} by id-map, "
        f"{res.rows_removed_near_duplicate} as near-duplicates ({res.keys_removed_id_map + res.keys_removed_near_duplicate} images, "
        f"{res.candidate_pairs} candidate pairs checked); unreadable: {len(res.corpus_failures)} corpus, "
        f"{len(res.test_failures)} test images; report {report_path}"
    )


@app.command("build")
def build(
    out: Path = typer.Argument(..., help="Output folder for NAME.tsv (+ .lineidx), NAME.yaml and NAME_report.json.",
                               callback=output_folder),
    captions: List[str] = typer.Option([], "--captions", help="DATASET=FILE: a COCO-style caption json (repeatable)."),
    questions: List[str] = typer.Option([], "--questions", help="DATASET=FILE: GQA questions (with answers: question rows) or VQA "
                                   "questions (no answers: rows with the tags as text_b) (repeatable)."),
    features: List[str] = typer.Option(..., "--features", help="DATASET=FOLDER with features.tsv + imageid2idx.json "
                                        "(vinvl extract output; chunked datasets: one such folder per chunk inside)."),
    labels: List[str] = typer.Option([], "--labels", help="DATASET=FOLDER with the tags and sizes: label.tsv + hw.tsv, "
                                      "predictions.tsv or predictions_gt.tsv (default: the features folder)."),
    name: str = typer.Option("corpus", "--name", help="Base name of the corpus files."),
) -> None:
    """Build a pretraining corpus in the original layout (corpus TSV, label folders, yaml) from caption and question
    files and feature folders; the original's OscarTSVDataset and `vinvl oscar pretrain` read it."""
    from ..corpus.build import TextSource, build_corpus

    def pairs(items: List[str], what: str) -> list[tuple[str, Path]]:
        out_pairs = []
        for item in items:
            ds, sep, path = item.partition("=")
            if not sep or not ds or not path:
                raise VinvlError(f"--{what} {item!r}: expected DATASET=PATH")
            out_pairs.append((ds, Path(path)))
        return out_pairs

    sources = [TextSource(d, p, "caption") for d, p in pairs(captions, "captions")]
    sources += [TextSource(d, p, "qa") for d, p in pairs(questions, "questions")]
    if not sources:
        raise VinvlError("give at least one --captions or --questions DATASET=FILE")
    feats = dict(pairs(features, "features"))
    labs = dict(pairs(labels, "labels"))
    labs = {d: labs.get(d, feats[d]) for d in feats}
    with write_faults(f"{out / (name + '.yaml')} (which marks a complete corpus) is not written"):
        report = build_corpus(sources, feats, labs, out, name=name)
    for w in report["warnings"]:
        typer.echo(f"warning: {w}", err=True)
    typer.echo(f"{out / (name + '.yaml')}: {report['total']} rows {report['rows']}; skipped {report['skipped']}")
