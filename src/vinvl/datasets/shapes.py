"""A deterministic synthetic "shapes" detection dataset: coloured shapes with attributes on busy backgrounds.

Every object has a class (:data:`SHAPE_CLASSES`) and exactly one attribute from each group, in
the order colour (:data:`COLOURS`), size (:data:`SIZES`), fill (:data:`FILLS`), so a small
VinVL-style object+attribute detector can be trained and tested on it without downloads.

Image ``index`` of ``seed`` is drawn from ``numpy.random.default_rng([seed, index])`` alone, so
it is the same however many images are generated, and the same (seed, index) gives a
byte-identical PNG (for the same Pillow/zlib).

Boxes are ``[x1, y1, x2, y2]`` floats in the inclusive-pixel convention (``x2`` is the last
column covered, width = ``x2 - x1 + 1``), taken from each shape's own drawn mask, so they are
tight whatever the rotation. Objects drawn later are on top; a box is still the full extent.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Union

import numpy as np
import pybase64
from PIL import Image, ImageDraw, ImageFilter

from ..atomic import atomic_write_bytes
from ..errors import VinvlError
from ..features import format_hw_row
from ..labelmap import BACKGROUND, NO_ATTRIBUTE, LabelMap
from ..tsv import TSVWriter
from ..yamlio import write_yaml

PathLike = Union[str, os.PathLike]

SHAPE_CLASSES = ("circle", "square", "triangle", "star", "diamond")
COLOURS = ("red", "green", "blue", "yellow")
SIZES = ("small", "large")
FILLS = ("solid", "hollow")
ATTRIBUTES = COLOURS + SIZES + FILLS

# Saturated, far apart in RGB; the background only uses low-saturation colours (see _muted),
# so a pixel's colour alone tells object from background.
COLOUR_RGB = {
    "red": (215, 35, 35),
    "green": (35, 170, 55),
    "blue": (35, 75, 215),
    "yellow": (235, 205, 30),
}
COLOUR_JITTER = 12
# Longest side of the object's tight box, in pixels; the gap between the ranges keeps
# "small" and "large" unambiguous.
SIZE_RANGE = {"small": (18, 32), "large": (48, 90)}
STROKE_RANGE = {"small": (3, 3), "large": (3, 5)}  # hollow outline width; small shapes have no room for more
MIN_OBJECTS, MAX_OBJECTS = 2, 8
MAX_IOU = 0.3
MAX_COVER = 0.4  # at most this share of an earlier object's box may lie under a later one
PLACE_TRIES = 40
MIN_IMAGE_SIDE = 64  # a large shape (>= 48 px) plus a margin must fit
NOISE_SIGMA = 3.0  # over the finished image, objects included


def check_args(num: int = 1, min_size: int = 160, max_size: int = 320) -> None:
    """Raise :class:`VinvlError` unless ``num`` >= 1 and ``MIN_IMAGE_SIDE`` <= ``min_size`` <= ``max_size``."""
    if num < 1:
        raise VinvlError(f"--num must be at least 1, got {num}")
    if min_size < MIN_IMAGE_SIDE:
        raise VinvlError(f"--min-size must be at least {MIN_IMAGE_SIDE} (room for a large shape), got {min_size}")
    if min_size > max_size:
        raise VinvlError(f"--min-size ({min_size}) must not exceed --max-size ({max_size})")


# -- background ------------------------------------------------------------------------------
def _muted(rng: np.random.Generator, lo: int = 70, hi: int = 200, tint: int = 16) -> np.ndarray:
    """A greyish colour: one level plus a small per-channel tint, so it never has a saturated hue."""
    return np.clip(rng.integers(lo, hi + 1) + rng.integers(-tint, tint + 1, 3), 0, 255).astype(np.float32)


def _background(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    """A linear gradient between two muted colours, soft blobs, thin lines and gaussian noise."""
    c1, c2 = _muted(rng), _muted(rng)
    angle = rng.uniform(0, 2 * math.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    t = xx * math.cos(angle) + yy * math.sin(angle)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1.0)
    arr = c1 + (c2 - c1) * t[..., None]
    arr += rng.normal(0.0, 6.0, arr.shape).astype(np.float32)
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")

    # Soft blobs: clutter with no edges, so the detector must not fire on any texture.
    for _ in range(int(rng.integers(1, 4))):
        alpha = Image.new("L", (w, h), 0)
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        rx, ry = rng.uniform(10, w / 3), rng.uniform(10, h / 3)
        ImageDraw.Draw(alpha).ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=int(rng.integers(60, 140)))
        alpha = alpha.filter(ImageFilter.GaussianBlur(float(rng.uniform(4, 10))))
        img = Image.composite(Image.new("RGB", (w, h), tuple(int(v) for v in _muted(rng, 50, 220))), img, alpha)

    # Thin straight lines: hard edges that belong to no object.
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(2, 6))):
        pts = [(float(rng.uniform(-20, w + 20)), float(rng.uniform(-20, h + 20))) for _ in range(2)]
        draw.line(pts, fill=tuple(int(v) for v in _muted(rng, 40, 230)), width=int(rng.integers(1, 3)))
    return img


# -- shapes ----------------------------------------------------------------------------------
def _unit_polygon(cls: str) -> np.ndarray:
    """The shape's vertices around the origin (any scale; it is normalised after rotation)."""
    if cls == "square":
        return np.array([(-1, -1), (1, -1), (1, 1), (-1, 1)], dtype=np.float64)
    if cls == "triangle":
        a = np.deg2rad([-90, 30, 150])
        return np.stack([np.cos(a), np.sin(a)], 1)
    if cls == "diamond":
        # Taller than wide, so it is not a square turned by 45 degrees.
        return np.array([(0, -1), (0.6, 0), (0, 1), (-0.6, 0)], dtype=np.float64)
    if cls == "star":
        a = np.deg2rad(np.arange(10) * 36 - 90)
        r = np.where(np.arange(10) % 2 == 0, 1.0, 0.5)  # a fat star keeps its arms visible when hollow
        return np.stack([r * np.cos(a), r * np.sin(a)], 1)
    raise ValueError(f"no polygon for {cls!r}")


# Random rotation range in degrees; square and diamond stay near upright so they cannot be
# mistaken for each other.
_ROTATION = {"square": 20.0, "diamond": 15.0, "triangle": 180.0, "star": 36.0}


def _erode(m: np.ndarray, radius: int) -> np.ndarray:
    """Pixels of ``m`` whose whole disk of ``radius`` lies in ``m`` (outside the array counts as empty)."""
    h, w = m.shape
    p = np.pad(m, radius)
    out = np.ones_like(m)
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            if dx * dx + dy * dy <= radius * radius:
                out &= p[radius + dy : radius + dy + h, radius + dx : radius + dx + w]
    return out


def _shape_mask(rng: np.random.Generator, cls: str, side: int, fill: str, stroke: int) -> np.ndarray:
    """The shape drawn into its own tight "L" mask (bool array) whose longest side is about ``side``."""
    pad = 3
    size = side + 2 * pad
    mask = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(mask)
    if cls == "circle":
        box = [pad, pad, pad + side - 1, pad + side - 1]
        draw.ellipse(box, fill=255)
    else:
        pts = _unit_polygon(cls)
        a = math.radians(rng.uniform(-_ROTATION[cls], _ROTATION[cls]))
        rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
        pts = pts @ rot.T
        pts -= pts.min(0)
        pts *= (side - 1) / pts.max()  # the longest side of the rotated shape spans `side` pixels
        pts += pad
        poly = [(float(x), float(y)) for x, y in pts]
        draw.polygon(poly, fill=255)
    m = np.asarray(mask) > 0
    if fill == "hollow":
        # The stroke lies inside the filled shape, so a hollow shape has the same outline and
        # box as its solid twin; eroding with a disk keeps it even at corners and star tips.
        m = m & ~_erode(m, stroke)
    rows, cols = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
    return m[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]


def _box_overlap_ok(box: tuple[int, int, int, int], placed: list[tuple[int, int, int, int]]) -> bool:
    """Whether ``box`` keeps every earlier box mostly visible (IoU and covered share both small)."""
    x1, y1, x2, y2 = box
    area = (x2 - x1 + 1) * (y2 - y1 + 1)
    for px1, py1, px2, py2 in placed:
        iw = min(x2, px2) - max(x1, px1) + 1
        ih = min(y2, py2) - max(y1, py1) + 1
        if iw <= 0 or ih <= 0:
            continue
        inter = iw * ih
        parea = (px2 - px1 + 1) * (py2 - py1 + 1)
        if inter / (area + parea - inter) > MAX_IOU or inter / parea > MAX_COVER:
            return False
    return True


def _sample_object(rng: np.random.Generator, w: int, h: int, force_small: bool = False) -> tuple[dict, np.ndarray]:
    """A random object's annotation (without its rect) and its tight mask."""
    cls = SHAPE_CLASSES[int(rng.integers(len(SHAPE_CLASSES)))]
    colour = COLOURS[int(rng.integers(len(COLOURS)))]
    size = "small" if force_small else SIZES[int(rng.integers(len(SIZES)))]
    fill = FILLS[int(rng.integers(len(FILLS)))]
    lo, hi = SIZE_RANGE[size]
    hi = min(hi, min(w, h) - 4)  # clip to fit; check_args keeps hi >= lo
    side = int(rng.integers(lo, hi + 1))
    stroke = int(rng.integers(STROKE_RANGE[size][0], STROKE_RANGE[size][1] + 1))
    rgb = np.clip(np.array(COLOUR_RGB[colour]) + rng.integers(-COLOUR_JITTER, COLOUR_JITTER + 1, 3), 0, 255)
    ann = {"class": cls, "attributes": [colour, size, fill], "_rgb": tuple(int(v) for v in rgb)}
    return ann, _shape_mask(rng, cls, side, fill, stroke)


def generate_image(seed: int, index: int, min_size: int = 160, max_size: int = 320) -> tuple[Image.Image, list[dict]]:
    """Image ``index`` of dataset ``seed`` and its annotations ``[{"rect", "class", "attributes"}, ...]``."""
    check_args(1, min_size, max_size)
    rng = np.random.default_rng([seed, index])
    w, h = (int(v) for v in rng.integers(min_size, max_size + 1, 2))
    img = _background(rng, w, h)
    target = int(rng.integers(MIN_OBJECTS, MAX_OBJECTS + 1))
    placed: list[tuple[int, int, int, int]] = []
    anns: list[dict[str, Any]] = []
    for k in range(target):
        # The first MIN_OBJECTS must be placed: after the normal tries, fall back to small shapes
        # (two small ones always fit in a MIN_IMAGE_SIDE square).
        tries = PLACE_TRIES if k >= MIN_OBJECTS else 10 * PLACE_TRIES
        for t in range(tries):
            if t % PLACE_TRIES == 0:
                ann, mask = _sample_object(rng, w, h, force_small=t >= PLACE_TRIES)
            bh, bw = mask.shape
            x1, y1 = int(rng.integers(0, w - bw + 1)), int(rng.integers(0, h - bh + 1))
            box = (x1, y1, x1 + bw - 1, y1 + bh - 1)
            if _box_overlap_ok(box, placed):
                break
        else:
            if k < MIN_OBJECTS:
                raise RuntimeError(f"could not place {MIN_OBJECTS} objects in a {w}x{h} image")  # pragma: no cover
            continue
        rgb = ann.pop("_rgb")
        img.paste(rgb, (x1, y1), Image.fromarray(mask.astype(np.uint8) * 255, "L"))
        placed.append(box)
        anns.append({"rect": [float(v) for v in box], **ann})
    arr = np.asarray(img).astype(np.float32) + rng.normal(0.0, NOISE_SIGMA, (h, w, 3)).astype(np.float32)
    return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), "RGB"), anns


# -- dataset on disk -------------------------------------------------------------------------
def png_bytes(img: Image.Image) -> bytes:
    """``img`` encoded as PNG with fixed settings (no metadata), so equal pixels give equal bytes."""
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def shapes_labelmap() -> LabelMap:
    """The dataset's label map: background + :data:`SHAPE_CLASSES`, no-attribute + :data:`ATTRIBUTES`."""
    return LabelMap((BACKGROUND,) + SHAPE_CLASSES, (NO_ATTRIBUTE,) + ATTRIBUTES, source="shapes")


def generate_shapes(
    out_dir: PathLike,
    num: int,
    seed: int = 0,
    min_size: int = 160,
    max_size: int = 320,
    prefix: str = "shapes",
) -> dict[str, Any]:
    """Write ``num`` images with images/, img/hw/label TSVs, labelmap.json, dataset.yaml, summary.json."""
    check_args(num, min_size, max_size)
    out = Path(out_dir)
    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)
    keys = [f"{prefix}_{i:06d}" for i in range(num)]
    # Leftovers of an earlier, larger run would add keys to `vinvl extract out/images`.
    pattern = re.compile(re.escape(prefix) + r"_\d{6}\.png")
    wanted = {f"{k}.png" for k in keys}
    for f in images.iterdir():
        if pattern.fullmatch(f.name) and f.name not in wanted:
            f.unlink()

    class_counts = {c: 0 for c in SHAPE_CLASSES}
    attr_counts = {a: 0 for a in ATTRIBUTES}
    n_objects = 0
    with ExitStack() as stack:
        img_w = stack.enter_context(TSVWriter(out / "img.tsv", columns=2))
        hw_w = stack.enter_context(TSVWriter(out / "hw.tsv", columns=2))
        label_w = stack.enter_context(TSVWriter(out / "label.tsv", columns=2))
        for i, key in enumerate(keys):
            img, anns = generate_image(seed, i, min_size, max_size)
            data = png_bytes(img)
            atomic_write_bytes(images / f"{key}.png", data)
            img_w.write([key, pybase64.b64encode(data).decode()])
            hw_w.write(format_hw_row(key, img.height, img.width))
            label_w.write([key, json.dumps(anns)])
            n_objects += len(anns)
            for a in anns:
                class_counts[a["class"]] += 1
                for name in a["attributes"]:
                    attr_counts[name] += 1

    shapes_labelmap().save_vg_json(out / "labelmap.json")
    spec = {"img": "img.tsv", "hw": "hw.tsv", "label": "label.tsv", "labelmap": "labelmap.json"}
    write_yaml(out / "dataset.yaml", spec)

    summary = {
        "images": num,
        "objects": n_objects,
        "seed": seed,
        "min_size": min_size,
        "max_size": max_size,
        "classes": class_counts,
        "attributes": attr_counts,
    }
    atomic_write_bytes(out / "summary.json", (json.dumps(summary, indent=2) + "\n").encode("utf-8"))
    return summary
