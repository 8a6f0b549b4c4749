"""Images in: the one decoder behind every reader (``vinvl extract``, ``Detector``, detector training and
evaluation, ``vinvl draw``, corpus decontamination), so a file decodes to the same pixels everywhere.

The rules, the original's where it has one:

- **decode**: PIL, fully loaded; every way an input can be broken is an :class:`ImageLoadError` whose
  message is the reason ``errors.tsv`` records: ``empty file (0 bytes)``, ``not an image (PIL cannot
  identify it)``, ``corrupt or truncated image: ...``, ``decompression bomb: ...``, ``cannot read: ...``;
- **limits**: PIL's ``Image.MAX_IMAGE_PIXELS``; its warning zone (between the limit and twice it) is
  refused like a bomb, not decoded;
- **EXIF**: the stored pixel grid, no rotation, unless a caller asks (``exif_transpose``): the
  original's boxes are in the stored grid;
- **damaged metadata** (a corrupt EXIF block, a malformed MPO) is no failure and no warning: the pixels
  decode, a damaged EXIF tag is skipped;
- **mode**: :func:`to_rgb` is the original's ``.convert('RGB')`` (16-bit values clip), with integer
  modes PIL cannot convert scaled to 8 bits instead of failing.
"""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from pathlib import Path
from typing import Iterator, Optional, Sequence, Union

import numpy as np
import pybase64
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import VinvlError
from .textio import display_path

# Looked up in this order where a key names a file without its extension (``vinvl draw``).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")

PathLike = Union[str, os.PathLike]
ImageInput = Union[str, os.PathLike, Image.Image, np.ndarray]
Draft = tuple[str, tuple[int, int]]


class ImageLoadError(Exception):
    """An input that cannot be used as an image; the message is the reason written to errors.tsv."""


@contextlib.contextmanager
def _reasons() -> Iterator[None]:
    """Turn PIL's failures inside the block into :class:`ImageLoadError` reasons."""
    try:
        with warnings.catch_warnings():
            # PIL only warns between MAX_IMAGE_PIXELS and twice that; treat both as a bomb.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            # Damaged metadata ('Corrupt EXIF data', 'Tag data larger than file', a malformed MPO) is not a
            # damaged image: the stored pixels decode, and a damaged EXIF tag is skipped (vinvl.errors.QUIET_WARNINGS).
            # Silenced here, not only in the CLI, because decoding also runs in DataLoader workers and in the library.
            warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.")
            yield
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageLoadError(f"decompression bomb: {e}") from None
    except UnidentifiedImageError:
        raise ImageLoadError("not an image (PIL cannot identify it)") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageLoadError(f"corrupt or truncated image: {e}") from None


def _open(data: Union[bytes, Image.Image], exif_transpose: bool, draft: Optional[Draft]) -> Image.Image:
    if isinstance(data, Image.Image):
        img = data
    else:
        if not data:
            raise ImageLoadError("empty file (0 bytes)")
        img = Image.open(io.BytesIO(data))
        if draft is not None:
            img.draft(*draft)
    img.load()
    return ImageOps.exif_transpose(img) if exif_transpose else img


def to_8bit_gray(img: Image.Image) -> Image.Image:
    """An integer-mode image (``I``, ``I;16``, ...) scaled to 8-bit ``L`` (value / 256) rather than clipped."""
    return img.convert("I").point(lambda v: v / 256).convert("L")


def to_rgb(img: Image.Image) -> Image.Image:
    """The original's ``img.convert('RGB')`` (16-bit values clip); an integer mode PIL cannot convert is scaled."""
    try:
        return img.convert("RGB")
    except ValueError:
        if not img.mode.startswith("I"):
            raise
        return to_8bit_gray(img).convert("RGB")


def open_image(
    data: Union[bytes, Image.Image], exif_transpose: bool = False, draft: Optional[Draft] = None
) -> Image.Image:
    """Encoded bytes (or a PIL image) decoded in their own mode under the limits; ``draft`` is PIL's
    ``Image.draft(mode, size)`` (JPEG decodes reduced). Failures are :class:`ImageLoadError` reasons."""
    with _reasons():
        return _open(data, exif_transpose, draft)


def decode_image(data: bytes, exif_transpose: bool = False) -> Image.Image:
    """Encoded bytes decoded to RGB as the original does (:func:`to_rgb`, no EXIF rotation unless asked)."""
    with _reasons():
        return to_rgb(_open(data, exif_transpose, None))


# EXIF orientations that turn the stored grid by 90 degrees (width and height swap under exif_transpose).
_TURNED = frozenset({5, 6, 7, 8})


def header_size(source: Union[bytes, PathLike], exif_transpose: bool = False) -> Optional[tuple[int, int]]:
    """An image's ``(height, width)`` from its header alone (no pixels decoded; turned as ``exif_transpose``
    would turn it), or None where the header cannot be read: then the decoder says why, in errors.tsv."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the decoder refuses it, with the reason
            warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.")
            with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as img:
                w, h = img.size
                if exif_transpose and img.getexif().get(0x0112) in _TURNED:
                    w, h = h, w
    except Exception:  # any header PIL cannot read (its plugins raise many kinds)
        return None
    return (h, w) if h > 0 and w > 0 else None


def read_image_file(path: PathLike) -> bytes:
    """The encoded bytes of an image file; an unreadable file is an :class:`ImageLoadError`."""
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise ImageLoadError(f"cannot read: {e.strerror or e}") from None


def tsv_image_bytes(fields: Sequence[bytes]) -> bytes:
    """The encoded image of an image-TSV row (``key \\t base64``: the base64 is the last column)."""
    if len(fields) < 2:
        raise ImageLoadError(f"expected 'key<TAB>base64 image', found {len(fields)} column(s)")
    try:
        return pybase64.b64decode(fields[-1], validate=True)
    except ValueError:
        raise ImageLoadError("the image column is not valid base64") from None


def read_image(path: PathLike, exif_transpose: bool = False) -> Image.Image:
    """An image file decoded to RGB (:func:`decode_image`); failures are :class:`ImageLoadError` reasons."""
    return decode_image(read_image_file(path), exif_transpose)


def load_image(image: ImageInput, exif_transpose: bool = False) -> Image.Image:
    """RGB from a file path, a PIL image or an ``H x W x 3`` (or ``x 4``, or 2-d) uint8 array; an unusable
    input is a one-line :class:`VinvlError` naming the file."""
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (3, 4)):
            raise VinvlError(f"expected an H x W x 3 uint8 RGB array, got {image.dtype} {image.shape}")
        image = Image.fromarray(image)
    if isinstance(image, Image.Image):
        try:
            return to_rgb(_open(image, exif_transpose, None))
        except (OSError, ValueError) as e:
            raise VinvlError(f"cannot use the {image.mode} image ({e})") from None
    path = Path(image)
    if not path.exists():
        raise VinvlError(f"{display_path(path)}: no such file")
    try:
        return read_image(path, exif_transpose)
    except ImageLoadError as e:
        raise VinvlError(f"{display_path(path)}: cannot read image ({e})") from None
