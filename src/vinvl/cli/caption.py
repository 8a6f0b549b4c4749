"""``vinvl caption``: photos to captions in one command (released detector + released Oscar+ captioner)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from ..atomic import atomic_write_json
from ..errors import VinvlError
from .options import device_option, dtype_option, output_file, output_folder

HELP = """Caption photos: detect regions and tags, then decode a caption for each.

IMAGE... are image files, folders (recursive) or .txt lists, as for
`vinvl extract`. --model is a captioner (registry name or checkpoint
folder; default vinvl-base-image-captioning), --detector the detector
giving its regions (default vinvl_vg_x152c4); both are fetched into
VINVL_HOME when missing (Hugging Face Hub first; see `vinvl download
--check`). A checkpoint without training_args.bin decodes as the VinVL
COCO recipe: tags on, beam 5, max_gen_length 20, 50 regions, 30 tag
tokens. Prints `key<TAB>caption` per image, or writes the COCO results
json ([{image_id, caption}]) with -o.
"""


def caption(
    images: List[Path] = typer.Argument(..., metavar="IMAGE|FOLDER...", help="Image files, folders or lists."),
    model: str = typer.Option("vinvl-base-image-captioning", "--model", help="Captioner: registry name or folder."),
    detector: str = typer.Option("vinvl_vg_x152c4", "--detector", help="Detector registry name."),
    out: Optional[Path] = typer.Option(None, "-o", "--out", help="Write the COCO results json here instead of printing.",
                                       callback=output_file),
    num_beams: int = typer.Option(5, "--num-beams", min=1),
    max_gen_length: int = typer.Option(20, "--max-gen-length", min=1),
    batch_size: int = typer.Option(16, "--batch-size", min=1, help="Images per decoding batch."),
    device: Optional[str] = device_option(" (the detector's and the captioner's)"),
    regions: Optional[Path] = typer.Option(None, "--regions", help="Keep the detector output in this folder (reused when "
                                           "complete).", callback=output_folder),
    boxes: Optional[Path] = typer.Option(None, "--boxes", help="Given boxes per image (as `vinvl extract --boxes`): "
                                         "caption these regions instead of detected ones."),
    dtype: str = dtype_option(),
    cbs: bool = typer.Option(False, "--cbs", help="Constrained beam search (novel objects, as NoCaps): the detector's "
                             "classes become words the caption must contain (needs --cbs-hierarchy)."),
    cbs_hierarchy: Optional[Path] = typer.Option(None, "--cbs-hierarchy", help="With --cbs: the Open Images class "
                                                 "hierarchy json ({LabelName, Subcategory})."),
    cbs_class_map: Optional[Path] = typer.Option(None, "--cbs-class-map", help="With --cbs: the hierarchy's classes -> "
                                                 "the detector's (e.g. oi_vgoiv6_class2ind.json for the FourSets "
                                                 "detector); only mapped classes become constraints."),
    cbs_constraint: Optional[Path] = typer.Option(None, "--cbs-constraint", help="With --cbs: word TAB pieces (default: "
                                                  "the captioner's tokenizer)."),
    cbs_tokenforms: Optional[Path] = typer.Option(None, "--cbs-tokenforms", help="With --cbs: piece TAB forms (e.g. "
                                                  "dog,dogs; default: each piece itself)."),
    min_constraints: int = typer.Option(2, "--min-constraints", min=0, help="With --cbs: constraints each caption "
                                        "holds at least (all when fewer)."),
    sas: Optional[str] = typer.Option(None, "--sas", help="Read SAS for Azure sources (default: $VINVL_AZURE_SAS)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    """Photos to captions: key<TAB>caption per image, or -o results.json."""
    from ..caption import caption as run
    from ..oscar.options import CBSOptions

    if not cbs and (cbs_hierarchy or cbs_constraint or cbs_tokenforms or min_constraints != 2):
        raise VinvlError("--cbs-hierarchy, --cbs-constraint, --cbs-tokenforms and --min-constraints apply only with --cbs")
    options = CBSOptions(min_constraints=min_constraints, cbs_hierarchy=cbs_hierarchy, cbs_constraint=cbs_constraint,
                         cbs_tokenforms=cbs_tokenforms) if cbs else None
    rows = run(images, model=model, detector=detector, num_beams=num_beams, max_gen_length=max_gen_length,
               batch_size=batch_size, device=device, work_dir=regions, sas=sas, quiet=quiet, boxes=boxes, dtype=dtype,
               cbs=options, cbs_class_map=cbs_class_map)
    if out is not None:
        atomic_write_json(out, [{"image_id": k, "caption": c} for k, c in rows], indent=1)
        typer.echo(f"{out}: {len(rows)} captions", err=True)
        return
    for key, text in rows:
        typer.echo(f"{key}\t{text}")
