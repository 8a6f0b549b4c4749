"""Draw a ``predictions.tsv``'s boxes, classes, scores and attributes onto their images."""

from __future__ import annotations

import colorsys
import html as _html
from pathlib import Path, PurePosixPath
from typing import Optional, Sequence
from urllib.parse import quote

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .atomic import atomic_write
from .errors import VinvlError
from .features import Prediction
from .images import IMAGE_EXTENSIONS, ImageLoadError, read_image
from .tsv import PathLike, TSVFile

_GOLDEN = 0.6180339887498949
_BoxXY = tuple[int, int, int, int]


# Vivid colours that stay apart from each other (after Sasha Trubetskoy's list of 20 distinct
# colours); the classes of one image rarely outnumber them, so those get the clearest contrast.
_DISTINCT = (
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
    (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (220, 190, 255),
    (170, 110, 40), (128, 0, 0), (170, 255, 195), (128, 128, 0), (255, 215, 180), (0, 0, 128),
)


class Palette:
    """Class name -> RGB colour, handed out in order of first request: a fixed list of distinct
    colours, then golden-ratio hues (each as far as possible from the ones before).

    Sharing one palette keeps a class's colour across the images of a run.
    """

    def __init__(self) -> None:
        """An empty palette: the first class asked for gets the first colour."""
        self._colors: dict[str, tuple[int, int, int]] = {}

    def color(self, name: str) -> tuple[int, int, int]:
        """The colour of class ``name``, assigning the next free one on first use."""
        c = self._colors.get(name)
        if c is None:
            n = len(self._colors)
            if n < len(_DISTINCT):
                c = _DISTINCT[n]
            else:
                k = n - len(_DISTINCT)
                # Alternate brightness too, so hues that come round again still differ.
                value = (0.95, 0.75)[k % 2]
                r, g, b = colorsys.hsv_to_rgb((0.05 + _GOLDEN * k) % 1.0, 0.85, value)
                c = (round(r * 255), round(g * 255), round(b * 255))
            self._colors[name] = c
        return c


def text_color(background: tuple[int, int, int]) -> tuple[int, int, int]:
    """Black or white, whichever reads better on ``background`` (by perceived luminance)."""
    r, g, b = background
    return (0, 0, 0) if 0.299 * r + 0.587 * g + 0.114 * b > 150 else (255, 255, 255)


def selected_boxes(pred: Prediction, *, min_score: float = 0.0, max_boxes: Optional[int] = None) -> list[int]:
    """Indices of the boxes to draw, best score first: score >= ``min_score``, at most ``max_boxes``."""
    # A stable sort keeps file order among equal scores, so the output is reproducible.
    order = sorted(range(len(pred)), key=lambda i: -float(pred.scores[i]))
    order = [i for i in order if float(pred.scores[i]) >= min_score]
    if max_boxes is not None:
        order = order[: max(0, max_boxes)]
    return order


def box_label(pred: Prediction, i: int, top_attributes: int = 2) -> str:
    """The label of box ``i``: up to ``top_attributes`` attributes, the class, the score (``red shirt 0.93``)."""
    words = _top_attributes(pred, i, top_attributes)
    words.append(pred.classes[i])
    words.append(f"{float(pred.scores[i]):.2f}")
    return " ".join(words)


def _top_attributes(pred: Prediction, i: int, k: int) -> list[str]:
    if k <= 0 or pred.attributes is None:
        return []
    names = [str(a) for a in pred.attributes[i]]
    if pred.attr_scores is not None and len(pred.attr_scores[i]) == len(names):
        ranked = sorted(zip(names, pred.attr_scores[i]), key=lambda t: -float(t[1]))
        names = [n for n, _ in ranked]
    out: list[str] = []
    for n in names:
        # The detector may repeat an attribute with several scores; the label needs it once.
        if n and n not in out:
            out.append(n)
        if len(out) == k:
            break
    return out


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow < 10.1 or no FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _overlaps(a: _BoxXY, b: _BoxXY) -> bool:
    return a[0] <= b[2] and b[0] <= a[2] and a[1] <= b[3] and b[1] <= a[3]  # inclusive pixel rectangles


def draw_prediction(
    image: Image.Image,
    pred: Prediction,
    *,
    top_attributes: int = 2,
    min_score: float = 0.0,
    max_boxes: Optional[int] = None,
    palette: Optional[Palette] = None,
) -> Image.Image:
    """An RGB copy of ``image`` with ``pred``'s boxes and labels drawn on it."""
    out = image.convert("RGB")
    if out is image:
        out = image.copy()
    w, h = out.size
    short = min(w, h)
    line = 2 if short < 400 else 3
    font = _font(max(12, short // 40))
    pad = max(2, short // 250)
    palette = palette if palette is not None else Palette()
    draw = ImageDraw.Draw(out)

    drawn: list[tuple[int, _BoxXY, tuple[int, int, int]]] = []
    for i in selected_boxes(pred, min_score=min_score, max_boxes=max_boxes):
        x1, y1, x2, y2 = (float(v) for v in pred.boxes[i])
        if not all(np.isfinite([x1, y1, x2, y2])):
            continue
        # Clip to the image; a box wholly outside it has nothing to show.
        bx1, by1 = max(0, round(min(x1, x2))), max(0, round(min(y1, y2)))
        bx2, by2 = min(w - 1, round(max(x1, x2))), min(h - 1, round(max(y1, y2)))
        if bx1 > bx2 or by1 > by2:
            continue
        # Colours are handed out best box first, so the image's main classes get the most distinct hues.
        drawn.append((i, (bx1, by1, bx2, by2), palette.color(pred.classes[i])))

    # Outlines lowest score first so the best boxes end on top; labels after all outlines so none is crossed.
    for _, box, color in reversed(drawn):
        draw.rectangle(box, outline=color, width=line)

    placed: list[_BoxXY] = []
    labels: list[tuple[str, _BoxXY, tuple[int, int, int]]] = []
    for i, box, color in drawn:
        text = box_label(pred, i, top_attributes)
        rect = _place_label(draw, text, font, pad, box, (w, h), placed)
        placed.append(rect)
        labels.append((text, rect, color))
    for text, rect, color in reversed(labels):
        left, top, _, _ = _text_extent(draw, text, font)
        draw.rectangle(rect, fill=color)
        # Offset by the glyphs' own bearing so the padding is even on all sides.
        draw.text((rect[0] + pad - left, rect[1] + pad - top), text, fill=text_color(color), font=font)
    return out


def _text_extent(
    draw: ImageDraw.ImageDraw, text: str, font: ImageFont.ImageFont | ImageFont.FreeTypeFont
) -> tuple[int, int, int, int]:
    """``(left, top, width, height)`` of ``text``; the height is the font's, so all labels are equally tall."""
    left, _, right, _ = draw.textbbox((0, 0), text, font=font)
    _, top, _, bottom = draw.textbbox((0, 0), "Hgjy" + text, font=font)
    return int(left), int(top), int(right - left), int(bottom - top)


def _place_label(
    draw: ImageDraw.ImageDraw,
    text: str,
    font: ImageFont.ImageFont | ImageFont.FreeTypeFont,
    pad: int,
    box: _BoxXY,
    size: tuple[int, int],
    placed: Sequence[_BoxXY],
) -> _BoxXY:
    """Where a box's label goes: above its top edge, else inside it, else below it (left-aligned, then
    right-aligned), the first spot that misses the labels of better boxes."""
    w, h = size
    _, _, tw, th = _text_extent(draw, text, font)
    lw, lh = tw + 2 * pad, th + 2 * pad
    x1, y1, x2, y2 = box
    # Shifted left at the right edge; cut only if wider than the image.
    xs = dict.fromkeys(max(0, min(x, w - lw)) for x in (x1, x2 + 1 - lw))
    ys = [y for y in (y1 - lh, y1, y2 + 1, y2 + 1 - lh) if 0 <= y and y + lh <= h] or [max(0, min(y1, h - lh))]
    spots = [(x, y, x + lw - 1, y + lh - 1) for y in ys for x in xs]
    for rect in spots:
        if not any(_overlaps(rect, p) for p in placed):
            return rect
    return spots[0]


def find_image(images_dir: Path, key: str) -> Path:
    """The image file of ``key`` in ``images_dir``: ``key`` plus a common image extension (any case)."""
    images_dir = Path(images_dir)
    base = images_dir / key
    for ext in IMAGE_EXTENSIONS:
        for e in (ext, ext.upper()):
            p = base.with_name(base.name + e)
            if p.is_file():
                return p
    # Mixed-case extensions (".Jpg") need a look at the folder; done only when the quick tries fail.
    folder, stem = base.parent, base.name
    if folder.is_dir():
        for p in sorted(folder.iterdir()):
            name = p.name
            if name.startswith(stem) and name[len(stem) :].lower() in IMAGE_EXTENSIONS and p.is_file():
                return p
    if base.suffix.lower() in IMAGE_EXTENSIONS and base.is_file():
        return base  # keys that keep their extension
    raise VinvlError(
        f"no image for key {key!r} in {images_dir} (tried {key}{{{','.join(IMAGE_EXTENSIONS)}}})"
    )


def _check_key(key: str) -> None:
    p = PurePosixPath(key)
    # The key becomes a path under the output folder: it must stay inside it.
    if not key or p.is_absolute() or ".." in p.parts or "\\" in key or "\0" in key:
        raise VinvlError(f"key {key!r} cannot be used as a file name under the output folder")


def _load_image(path: Path, pred: Prediction) -> Image.Image:
    try:
        # No EXIF transpose: the detector's boxes are in the file's stored pixel grid.
        image = read_image(path)
    except ImageLoadError as e:
        raise VinvlError(f"{path}: cannot read image for key {pred.key!r} ({e})") from None
    if pred.image_w is not None and pred.image_h is not None and image.size != (pred.image_w, pred.image_h):
        raise VinvlError(
            f"{path}: image is {image.width} x {image.height} but the row of key {pred.key!r} "
            f"says {pred.image_w} x {pred.image_h}: wrong image folder?"
        )
    return image


def _html_page(entries: Sequence[tuple[Prediction, list[int], str]], title: str) -> str:
    esc = _html.escape
    parts = [
        "<!DOCTYPE html>",
        '<html><head><meta charset="utf-8">',
        f"<title>{esc(title)}</title>",
        "<style>body{font-family:sans-serif;margin:1em}img{max-width:100%;display:block}"
        "table{border-collapse:collapse;margin:.5em 0 2em;font-size:90%}"
        "td,th{border:1px solid #ccc;padding:2px 6px;text-align:left}td.n{text-align:right}</style>",
        f"</head><body><h1>{esc(title)}</h1>",
    ]
    for pred, idx, src in entries:
        parts.append(f'<h2 id="{esc(pred.key)}">{esc(pred.key)}</h2>')
        parts.append(f'<a href="{esc(src)}"><img src="{esc(src)}" alt="{esc(pred.key)}"></a>')
        parts.append(
            "<table><tr><th>#</th><th>class</th><th>score</th><th>attributes</th><th>box (x1, y1, x2, y2)</th></tr>"
        )
        for i in idx:
            attrs = ""
            if pred.attributes is not None:
                names = pred.attributes[i]
                scores = pred.attr_scores[i] if pred.attr_scores is not None else None
                if scores is not None and len(scores) == len(names):
                    attrs = ", ".join(f"{a} ({float(s):.2f})" for a, s in zip(names, scores))
                else:
                    attrs = ", ".join(str(a) for a in names)
            box = ", ".join(f"{float(v):.1f}" for v in pred.boxes[i])
            parts.append(
                f'<tr><td class="n">{i}</td><td>{esc(pred.classes[i])}</td>'
                f'<td class="n">{float(pred.scores[i]):.2f}</td><td>{esc(attrs)}</td><td>{box}</td></tr>'
            )
        parts.append("</table>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


def draw_predictions(
    predictions: PathLike,
    images_dir: PathLike,
    out_dir: PathLike,
    *,
    keys: Optional[Sequence[str]] = None,
    html: bool = False,
    top_attributes: int = 2,
    min_score: float = 0.0,
    max_boxes: Optional[int] = None,
) -> list[Path]:
    """Draw each row (or the rows of ``keys``) onto its image as ``out_dir/<key>.png``; returns the PNG paths.

    With ``html`` an ``out_dir/index.html`` shows every picture and a table of its boxes.
    """
    predictions, images_dir, out_dir = Path(predictions), Path(images_dir), Path(out_dir)
    if not images_dir.is_dir():
        raise VinvlError(f"{images_dir}: no such image folder")
    tsv = TSVFile(predictions, build_index=True, columns=2)
    if keys is not None:
        rows: list[int] = []
        for k in dict.fromkeys(keys):  # repeated keys drawn once, in the order given
            try:
                rows.append(tsv.index_of(k))
            except KeyError:
                raise VinvlError(f"{predictions}: no row with key {k!r}") from None
        row_iter = ((i + 1, tsv[i]) for i in rows)
    else:
        row_iter = ((n + 1, fields) for n, fields in enumerate(tsv))

    palette = Palette()
    written: list[Path] = []
    entries: list[tuple[Prediction, list[int], str]] = []
    for line, fields in row_iter:
        pred = Prediction.from_json(fields[0], fields[1], path=predictions, line=line)
        _check_key(pred.key)
        image = _load_image(find_image(images_dir, pred.key), pred)
        drawn = draw_prediction(
            image, pred, top_attributes=top_attributes, min_score=min_score, max_boxes=max_boxes, palette=palette
        )
        out_path = out_dir / (pred.key + ".png")
        atomic_write(out_path, lambda p: drawn.save(p, format="PNG"))
        written.append(out_path)
        if html:
            idx = selected_boxes(pred, min_score=min_score, max_boxes=max_boxes)
            entries.append((pred, idx, quote(pred.key + ".png")))
    if html:
        page = _html_page(entries, f"{predictions.name}: {len(entries)} image{'' if len(entries) == 1 else 's'}")
        atomic_write(out_dir / "index.html", lambda p: p.write_text(page, encoding="utf-8"))
    return written
