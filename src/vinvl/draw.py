"""Draw a ``predictions.tsv``'s boxes, classes, scores and attributes onto their images."""

from __future__ import annotations

import colorsys
import html as _html
import math
from pathlib import Path, PurePosixPath
from typing import Callable, NamedTuple, Optional, Sequence, Union
from urllib.parse import quote

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .atomic import atomic_write, check_writable, naming, remove_stale_temporaries
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


def _score(value: object) -> float:
    """A score as a number to sort by: anything that is not a finite number (NaN, a string) sorts last."""
    try:
        v = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return -math.inf
    return v if math.isfinite(v) else -math.inf


def selected_boxes(pred: Prediction, *, min_score: float = 0.0, max_boxes: Optional[int] = None) -> list[int]:
    """Indices of the boxes to draw, best score first: score >= ``min_score``, at most ``max_boxes``."""
    # A stable sort keeps file order among equal scores, so the output is reproducible; a NaN score would
    # make the order depend on where it stands, so it sorts (and is dropped) as the lowest.
    order = sorted(range(len(pred)), key=lambda i: -_score(pred.scores[i]))
    order = [i for i in order if _score(pred.scores[i]) >= min_score]
    if max_boxes is not None:
        order = order[: max(0, max_boxes)]
    return order


def box_label(pred: Prediction, i: int, top_attributes: int = 2) -> str:
    """The label of box ``i``: up to ``top_attributes`` attributes, best first, the class, the score (``red shirt 0.93``)."""
    words = [name for name, _ in ranked_attributes(pred, i)[: max(0, top_attributes)]]
    words.append(pred.classes[i])
    words.append(f"{float(pred.scores[i]):.2f}")
    return " ".join(words)


def ranked_attributes(pred: Prediction, i: int) -> list[tuple[str, Optional[float]]]:
    """Box ``i``'s attributes with their scores, best score first (file order among equal scores and when the
    row has no scores), each once; an attribute scored 0 (the detector's padding) or not a number is left out."""
    if pred.attributes is None:
        return []
    names = [str(a) for a in pred.attributes[i]]
    given = pred.attr_scores[i] if pred.attr_scores is not None else None
    scores: list[Optional[float]] = [None] * len(names)
    if given is not None and len(given) == len(names):
        scores = [_score(s) for s in given]
    pairs = [(n, s) for n, s in zip(names, scores) if n and (s is None or s > 0)]
    pairs.sort(key=lambda t: -(t[1] if t[1] is not None else 0.0))  # stable
    out: list[tuple[str, Optional[float]]] = []
    for n, sc in pairs:
        # The detector may repeat an attribute with several scores; it is shown once, with its best.
        if all(n != m for m, _ in out):
            out.append((n, sc))
    return out


_Font = Union[ImageFont.ImageFont, ImageFont.FreeTypeFont]
_MIN_FONT = 8  # the smallest label text still readable


def _font(size: int) -> _Font:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow < 10.1 or no FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _overlaps(a: _BoxXY, b: _BoxXY) -> bool:
    return a[0] <= b[2] and b[0] <= a[2] and a[1] <= b[3] and b[1] <= a[3]  # inclusive pixel rectangles


class Label(NamedTuple):
    """One box's label as drawn: the box's index in the row, the text, its font, and the label's and the box's
    rectangles (inclusive pixel corners ``x1, y1, x2, y2``)."""

    index: int
    text: str
    font: _Font
    rect: _BoxXY
    box: _BoxXY


def visible_boxes(
    pred: Prediction, size: tuple[int, int], *, min_score: float = 0.0, max_boxes: Optional[int] = None
) -> list[tuple[int, _BoxXY]]:
    """``(index, box)`` of every box drawn on a ``(width, height)`` image, best score first, clipped to it."""
    w, h = size
    out: list[tuple[int, _BoxXY]] = []
    for i in selected_boxes(pred, min_score=min_score, max_boxes=max_boxes):
        x1, y1, x2, y2 = (float(v) for v in pred.boxes[i])
        if not all(np.isfinite([x1, y1, x2, y2])):
            continue
        # Clip to the image; a box wholly outside it has nothing to show.
        bx1, by1 = max(0, round(min(x1, x2))), max(0, round(min(y1, y2)))
        bx2, by2 = min(w - 1, round(max(x1, x2))), min(h - 1, round(max(y1, y2)))
        if bx1 > bx2 or by1 > by2:
            continue
        out.append((i, (bx1, by1, bx2, by2)))
    return out


def _style(size: tuple[int, int]) -> tuple[int, _Font, int]:
    """Outline width, label font and label padding for an image of ``size``."""
    short = min(size)
    return (2 if short < 400 else 3), _font(max(12, short // 40)), max(2, short // 250)


def layout_labels(
    pred: Prediction,
    size: tuple[int, int],
    *,
    top_attributes: int = 2,
    min_score: float = 0.0,
    max_boxes: Optional[int] = None,
) -> list[Label]:
    """Where the labels of ``pred``'s boxes go on a ``(width, height)`` image, best box first.

    Every label lies wholly inside the image and misses every other label: a label too wide loses its
    attributes (worst first), then shrinks, then its class name is shortened; it sits at its box (above,
    inside, below) or, when those spots are taken, at the free spot nearest to it. A label that fits
    nowhere is left out (its box is still drawn; the HTML table lists every box).
    """
    _, font, pad = _style(size)
    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))  # text measurement only
    placed: list[_BoxXY] = []
    labels: list[Label] = []
    for i, box in visible_boxes(pred, size, min_score=min_score, max_boxes=max_boxes):
        fitted = _fit_label(draw, pred, i, top_attributes, font, pad, size)
        if fitted is None:
            continue
        text, label_font, extent = fitted
        rect = _place_label(extent, box, size, placed)
        if rect is None:
            continue
        placed.append(rect)
        labels.append(Label(i, text, label_font, rect, box))
    return labels


def draw_prediction(
    image: Image.Image,
    pred: Prediction,
    *,
    top_attributes: int = 2,
    min_score: float = 0.0,
    max_boxes: Optional[int] = None,
    palette: Optional[Palette] = None,
) -> Image.Image:
    """An RGB copy of ``image`` with ``pred``'s boxes and labels (:func:`layout_labels`) drawn on it."""
    out = image.convert("RGB")
    if out is image:
        out = image.copy()
    line, _, pad = _style(out.size)
    palette = palette if palette is not None else Palette()
    draw = ImageDraw.Draw(out)
    # Colours are handed out best box first, so the image's main classes get the most distinct hues.
    drawn = [(i, box, palette.color(pred.classes[i]))
             for i, box in visible_boxes(pred, out.size, min_score=min_score, max_boxes=max_boxes)]
    # Outlines lowest score first so the best boxes end on top; labels after all outlines so none is crossed.
    for _, box, color in reversed(drawn):
        draw.rectangle(box, outline=color, width=line)
    colors = {i: color for i, _, color in drawn}
    labels = layout_labels(pred, out.size, top_attributes=top_attributes, min_score=min_score, max_boxes=max_boxes)
    for lab in labels:
        if not _touches(lab.rect, lab.box):  # moved away from its box: a leader line says whose label it is
            draw.line([_nearest_corner(lab.rect, lab.box), _nearest_corner(lab.box, lab.rect)], fill=colors[lab.index])
    for lab in labels:
        color = colors[lab.index]
        left, top, _, _ = _text_extent(draw, lab.text, lab.font)
        draw.rectangle(lab.rect, fill=color)
        # Offset by the glyphs' own bearing so the padding is even on all sides.
        draw.text((lab.rect[0] + pad - left, lab.rect[1] + pad - top), lab.text, fill=text_color(color), font=lab.font)
    return out


def _fit_label(
    draw: ImageDraw.ImageDraw, pred: Prediction, i: int, top_attributes: int, font: _Font, pad: int,
    size: tuple[int, int],
) -> Optional[tuple[str, _Font, tuple[int, int]]]:
    """Box ``i``'s label text, font and ``(width, height)`` that fit inside the image: the attributes are dropped
    worst first, then the font shrinks, then the class name is shortened with "..."; None if nothing fits."""
    w, h = size
    attrs = [name for name, _ in ranked_attributes(pred, i)[: max(0, top_attributes)]]
    cls, score = pred.classes[i], f"{float(pred.scores[i]):.2f}"

    def extent(text: str, f: _Font) -> tuple[int, int]:
        _, _, tw, th = _text_extent(draw, text, f)
        return tw + 2 * pad, th + 2 * pad

    for k in range(len(attrs), -1, -1):
        text = " ".join([*attrs[:k], cls, score])
        lw, lh = extent(text, font)
        if lw <= w and lh <= h:
            return text, font, (lw, lh)
    text = f"{cls} {score}"
    start = getattr(font, "size", _MIN_FONT)
    for px in range(int(start) - 1, _MIN_FONT - 1, -1):
        smaller = _font(px)
        if getattr(smaller, "size", None) != px:
            break  # a bitmap font: one size only
        font = smaller
        lw, lh = extent(text, font)
        if lw <= w and lh <= h:
            return text, font, (lw, lh)
    for cut in range(len(cls) - 1, -1, -1):
        text = f"{cls[:cut]}... {score}" if cut else f"... {score}"
        lw, lh = extent(text, font)
        if lw <= w and lh <= h:
            return text, font, (lw, lh)
    return None


def _touches(a: _BoxXY, b: _BoxXY) -> bool:
    """Whether rectangles ``a`` and ``b`` overlap or share an edge."""
    return a[0] <= b[2] + 1 and b[0] <= a[2] + 1 and a[1] <= b[3] + 1 and b[1] <= a[3] + 1


def _nearest_corner(a: _BoxXY, b: _BoxXY) -> tuple[int, int]:
    """The point of rectangle ``a`` nearest to rectangle ``b``'s centre."""
    cx, cy = (b[0] + b[2]) / 2, (b[1] + b[3]) / 2
    return int(min(max(cx, a[0]), a[2])), int(min(max(cy, a[1]), a[3]))


def _text_extent(draw: ImageDraw.ImageDraw, text: str, font: _Font) -> tuple[int, int, int, int]:
    """``(left, top, width, height)`` of ``text``; the height is the font's, so all labels are equally tall."""
    left, _, right, _ = draw.textbbox((0, 0), text, font=font)
    _, top, _, bottom = draw.textbbox((0, 0), "Hgjy" + text, font=font)
    return int(left), int(top), int(right - left), int(bottom - top)


def _place_label(size: tuple[int, int], box: _BoxXY, image: tuple[int, int], placed: Sequence[_BoxXY]) -> Optional[_BoxXY]:
    """Where a ``(width, height)`` label of ``box`` goes, wholly inside the image and missing every label in
    ``placed``: above the box's top edge, else inside it, else below it (left-aligned, then right-aligned);
    when all those are taken, the free spot nearest to the box among the edges of the labels placed; None if
    there is none."""
    (lw, lh), (w, h) = size, image
    if lw > w or lh > h:
        return None
    x1, y1, x2, y2 = box
    xs = list(dict.fromkeys(max(0, min(x, w - lw)) for x in (x1, x2 + 1 - lw)))
    ys = list(dict.fromkeys(max(0, min(y, h - lh)) for y in (y1 - lh, y1, y2 + 1, y2 + 1 - lh)))
    for y in ys:
        for x in xs:
            rect = (x, y, x + lw - 1, y + lh - 1)
            if not any(_overlaps(rect, p) for p in placed):
                return rect
    if not placed:
        return None
    # Every spot at the box is taken: try the spots that touch a placed label or the image's edges.
    taken = np.asarray(placed, dtype=np.int64)
    cx = np.concatenate([xs, [0, w - lw], taken[:, 2] + 1, taken[:, 0] - lw])
    cy = np.concatenate([ys, [0, h - lh], taken[:, 3] + 1, taken[:, 1] - lh])
    cx = np.unique(cx[(cx >= 0) & (cx <= w - lw)])
    cy = np.unique(cy[(cy >= 0) & (cy <= h - lh)])
    gx, gy = (g.reshape(-1) for g in np.meshgrid(cx, cy))
    free = np.ones(len(gx), dtype=bool)
    for p in taken:  # inclusive pixel rectangles, as _overlaps
        free &= ~((gx <= p[2]) & (p[0] <= gx + lw - 1) & (gy <= p[3]) & (p[1] <= gy + lh - 1))
    if not free.any():
        return None
    gx, gy = gx[free], gy[free]
    # Nearest to where the label would sit above the box, by the gap between the label and the box.
    dx = np.maximum(0, np.maximum(x1 - (gx + lw - 1), gx - x2))
    dy = np.maximum(0, np.maximum(y1 - (gy + lh - 1), gy - y2))
    k = int(np.lexsort((gx, gy, np.hypot(dx, dy)))[0])
    x, y = int(gx[k]), int(gy[k])
    return (x, y, x + lw - 1, y + lh - 1)


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
            # The label's order (best score first, padding left out), so every row reads alike.
            attrs = ", ".join(a if sc is None else f"{a} ({sc:.2f})" for a, sc in ranked_attributes(pred, i))
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

    With ``html`` an ``out_dir/index.html`` shows every picture and a table of its boxes. Each file appears
    whole or not at all; a failed write (an OSError naming the file) keeps the pictures finished before it.
    """
    predictions, images_dir, out_dir = Path(predictions), Path(images_dir), Path(out_dir)
    if not images_dir.is_dir():
        raise VinvlError(f"{images_dir}: no such image folder")
    tsv = TSVFile(predictions, build_index=True, columns=2)
    check_writable(out_dir)  # a read-only or unreachable -o is named before any image is drawn
    cleaned: set[Path] = set()
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
        _write(out_path, lambda p: drawn.save(p, format="PNG"), cleaned)
        written.append(out_path)
        if html:
            idx = selected_boxes(pred, min_score=min_score, max_boxes=max_boxes)
            entries.append((pred, idx, quote(pred.key + ".png")))
    if html:
        page = _html_page(entries, f"{predictions.name}: {len(entries)} image{'' if len(entries) == 1 else 's'}")
        _write(out_dir / "index.html", lambda p: p.write_text(page, encoding="utf-8"), cleaned)
    return written


def _write(path: Path, write: Callable[[Path], object], cleaned: set[Path]) -> None:
    """``atomic_write`` that first removes what killed runs left in the folder (once per folder) and names
    ``path`` in an OSError, never its temporary."""
    if path.parent not in cleaned:
        remove_stale_temporaries(path.parent, lambda name: name.endswith(".png") or name == "index.html")
        cleaned.add(path.parent)
    try:
        atomic_write(path, write)
    except OSError as e:
        raise naming(e, path) from e
