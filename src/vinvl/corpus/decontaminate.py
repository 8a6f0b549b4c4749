"""Remove downstream test images from a pretraining corpus: by id mapping and by near-duplicate search.

Two independent checks, as in the VinVL/Oscar+ papers:

* **id mapping** -- a corpus image (e.g. Visual Genome or Flickr30k) whose mapped id (its COCO
  id, from a ``corpus_id<TAB>mapped_id`` file) is a test id is removed;
* **near duplicates** -- stage 1 compares every corpus image with every test image by the L2
  distance between small, blurred, grayscale, per-image normalised thumbnails
  (:func:`image_signature`, :func:`near_duplicates`); stage 2 re-checks each candidate pair
  with the sharp thumbnail, minimised over small crops of the test image
  (:func:`aligned_distance`); a corpus image closer than ``threshold`` is removed.

See docs/decontamination.md for the signature, the threshold calibration and the speed.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, NamedTuple, Optional, Sequence, Union

import numpy as np
from PIL import Image

from ..errors import FormatError, VinvlError
from ..images import IMAGE_EXTENSIONS, ImageLoadError, open_image, read_image_file, to_8bit_gray
from ..tsv import TSVWriter, iter_tsv

PathLike = Union[str, os.PathLike]
ImageLike = Union[PathLike, Image.Image]

DEFAULT_SIZE = 32
# Gaussian blur (in thumbnail pixels) of the search signature: pixel-exact 32x32 thumbnails are
# far apart after a 4% crop (a 1.3-pixel misalignment), a blurred one much less.
DEFAULT_BLUR = 2.0
# Fraction dropped on each side of the corpus image: it lets the stage-2 crop search on the test
# side move both ways (a test image that is itself a crop of the corpus image needs borders
# below this). On its own it does not make crops match (measured: see the docs).
DEFAULT_BORDER = 0.05
# Both calibrated in docs/decontamination.md (`python benchmarks/decontaminate.py --calibrate`).
# Stage 1 keeps pairs whose blurred signatures are closer than this (planted duplicates <= 0.75)...
DEFAULT_CANDIDATE_THRESHOLD = 0.9
# ...stage 2 removes those whose aligned sharp distance is below this (planted duplicates
# <= 0.34, distinct images >= 0.51, a stereo pair being the closest).
DEFAULT_THRESHOLD = 0.42
# Test-side crop search of stage 2: each side's border moves within [0, _MAX_BORDER].
_MAX_BORDER = 0.15
# Below this pixel standard deviation (grey levels, 0..255) an image is flat: normalising it
# would only amplify JPEG noise, so its signature is the zero vector (flat images match each other).
_FLAT_STD = 0.5
REASON_ID_MAP = "id-map"
REASON_NEAR_DUPLICATE = "near-duplicate"


class Failure(NamedTuple):
    """An image that could not be read: its position in the input, its path (or key) and why."""

    index: int
    path: str
    error: str


class Match(NamedTuple):
    """A corpus image (row ``i``) whose nearest test image (row ``j``) is closer than the threshold."""

    i: int
    j: int
    dist: float


# ----------------------------------------------------------------------------------- signatures


def _open(image: ImageLike, size: int) -> Image.Image:
    # JPEG only: decode at 1/2..1/8 scale in the DCT (an area average, so still robust), keeping at
    # least 4x the signature size; a large photo decodes ~10x faster.
    data = image if isinstance(image, Image.Image) else read_image_file(image)
    return open_image(data, exif_transpose=True, draft=("L", (4 * size, 4 * size)))  # compare images as they are shown


def _to_gray(img: Image.Image) -> Image.Image:
    if img.mode in ("L", "F"):
        return img
    if img.mode.startswith("I"):  # 16-bit PNG/TIFF: scale to 0..255 rather than clip
        return to_8bit_gray(img)
    return img.convert("L")


def _blur_matrix(size: int, sigma: float) -> Optional[np.ndarray]:
    if not sigma:
        return None
    x = np.arange(size)
    g = np.exp(-((x[:, None] - x[None, :]) ** 2) / (2 * sigma**2))
    return (g / g.sum(1, keepdims=True)).astype(np.float32)  # rows renormalised: no dark borders


def _gray_float(image: ImageLike, size: int) -> Image.Image:
    """Grayscale 'F' image, box-reduced to 4..8x size on the short side (all later crops sample it)."""
    img = _to_gray(_open(image, size))
    w, h = img.size
    if w < 1 or h < 1:
        raise ValueError(f"empty image ({w}x{h})")
    img = img.convert("F")
    f = min(w, h) // (4 * size)  # 2*size is 2x faster but loses the alignment of fine textures
    return img.reduce(f) if f > 1 else img


def _thumb(img: Image.Image, sides: Sequence[float], size: int, g: Optional[np.ndarray]) -> np.ndarray:
    w, h = img.size
    l, t, r, b = sides
    # BOX = area average (a 0.5x or 2x copy lands on the same thumbnail); box= crops in the same pass.
    small = img.resize((size, size), Image.Resampling.BOX, box=(l * w, t * h, (1 - r) * w, (1 - b) * h))
    a = np.frombuffer(small.tobytes(), dtype=np.float32).reshape(size, size)
    if g is not None:
        a = g @ a @ g.T
    v = a.reshape(-1) - a.mean()
    n = math.sqrt(float(v @ v))
    if n < _FLAT_STD * size:  # std = n / size
        return np.zeros(size * size, dtype=np.float32)
    # Mean and norm removed: brightness and contrast changes (gamma aside) move nothing.
    return v * np.float32(1.0 / n)


def image_signature(
    image: ImageLike, size: int = DEFAULT_SIZE, border: float = DEFAULT_BORDER, blur: float = DEFAULT_BLUR
) -> np.ndarray:
    """The search signature: grayscale, ``border`` cropped, box-resized to size x size, blurred, zero mean, unit L2."""
    # Grayscale: a JPEG re-encode changes chroma far more than luma (4:2:0 subsampling), and
    # colour adds little to telling images apart at 32x32.
    return _thumb(_gray_float(image, size), (border,) * 4, size, _blur_matrix(size, blur))


# One step of the crop search: move one side, shift (two opposite sides), or zoom (all four).
_MOVES = np.array(
    [m for i in range(4) for m in ([1.0 if j == i else 0.0 for j in range(4)], [-1.0 if j == i else 0.0 for j in range(4)])]
    + [[1, 0, -1, 0], [-1, 0, 1, 0], [0, 1, 0, -1], [0, -1, 0, 1], [1, 1, 1, 1], [-1, -1, -1, -1]],
    dtype=np.float64,
)


class _Landscape:
    """Distance from a target thumbnail to the test image cropped by borders p (memoised: descents revisit points)."""

    def __init__(self, img: Image.Image, target: np.ndarray, size: int, g: Optional[np.ndarray]) -> None:
        self.img, self.target, self.size, self.g = img, target, size, g
        self.seen: dict[tuple, float] = {}

    def __call__(self, p: np.ndarray) -> float:
        key = tuple(np.round(p, 5))
        d = self.seen.get(key)
        if d is None:
            d = self.seen[key] = float(np.linalg.norm(_thumb(self.img, p, self.size, self.g) - self.target))
        return d


def _descend(f: _Landscape, p: np.ndarray, steps: Sequence[float]) -> tuple[float, np.ndarray]:
    best = f(p)
    for step in steps:
        improved = True
        while improved:
            improved = False
            for m in _MOVES:
                q = np.clip(p + step * m, 0.0, _MAX_BORDER)
                d = f(q)
                if d < best - 1e-7:
                    best, p, improved = d, q, True
    return best, p


def aligned_distance(
    corpus_image: ImageLike, test_image: ImageLike, size: int = DEFAULT_SIZE, border: float = DEFAULT_BORDER
) -> float:
    """Stage 2: the sharp (unblurred) signature distance, minimised over crops of the test image (a few % per side)."""
    c, t = _gray_float(corpus_image, size), _gray_float(test_image, size)
    p0 = np.full(4, border)
    g = _blur_matrix(size, DEFAULT_BLUR)
    coarse = _Landscape(t, _thumb(c, p0, size, g), size, g)
    sharp = _Landscape(t, _thumb(c, p0, size, None), size, None)
    # Coarse to fine: the blurred landscape is smooth enough to find the alignment, the sharp one
    # measures it. It still has local minima (periodic textures such as brick walls are flat at
    # coarse scale), so descend from 7 starts and refine the 3 best distinct end points sharply.
    ends: dict[tuple, tuple[float, np.ndarray]] = {}
    for m in [np.zeros(4)] + list(_MOVES[8:]):
        d, p = _descend(coarse, np.clip(p0 + 0.04 * m, 0.0, _MAX_BORDER), (0.02, 0.01, 0.005))
        ends.setdefault(tuple(np.round(p, 5)), (d, p))
    return min(_descend(sharp, p, (0.005, 0.0025))[0] for _, p in sorted(ends.values(), key=lambda e: e[0])[:3])


def _signature_or_error(args: tuple[int, str, int, float, float]) -> tuple[int, Optional[np.ndarray], str]:
    i, path, size, border, blur = args
    try:
        return i, image_signature(path, size, border, blur), ""
    except ImageLoadError as e:
        return i, None, str(e)
    except Exception as e:  # noqa: BLE001 -- any other error while decoding means "unreadable", reported per file
        msg = str(e).splitlines()[0] if str(e) else ""
        return i, None, f"{type(e).__name__}: {msg}" if msg else type(e).__name__


def signatures(
    paths: Sequence[PathLike],
    size: int = DEFAULT_SIZE,
    workers: int = 0,
    border: float = DEFAULT_BORDER,
    blur: float = DEFAULT_BLUR,
) -> tuple[np.ndarray, list[Failure]]:
    """Signatures of many images ([N, size*size] float32; an unreadable image gets a NaN row and a Failure)."""
    n, d = len(paths), size * size
    out = np.full((n, d), np.nan, dtype=np.float32)  # NaN rows never match (near_duplicates skips them)
    failures: list[Failure] = []
    jobs = [(i, os.fspath(p), size, border, blur) for i, p in enumerate(paths)]
    if workers and workers > 1 and n > 1:
        import multiprocessing as mp

        with mp.get_context().Pool(workers) as pool:
            results = pool.imap_unordered(_signature_or_error, jobs, chunksize=max(1, min(64, n // (4 * workers))))
            for i, vec, err in results:
                if vec is None:
                    failures.append(Failure(i, jobs[i][1], err))
                else:
                    out[i] = vec
        failures.sort()
    else:
        for job in jobs:
            i, vec, err = _signature_or_error(job)
            if vec is None:
                failures.append(Failure(i, job[1], err))
            else:
                out[i] = vec
    return out, failures


# ------------------------------------------------------------------------------- near duplicates


def near_duplicates(
    corpus_sig: np.ndarray, test_sig: np.ndarray, threshold: float, block: int = 4096, k: int = 1
) -> list[Match]:
    """For each corpus row, its ``k`` nearest test rows closer than ``threshold`` (L2), as (i, j, dist) sorted by i, dist."""
    import torch

    a_np = np.asarray(corpus_sig, dtype=np.float32)
    b_np = np.asarray(test_sig, dtype=np.float32)
    if a_np.ndim != 2 or b_np.ndim != 2 or a_np.shape[1] != b_np.shape[1]:
        raise ValueError(f"signatures must be [N, D] and [M, D], got {a_np.shape} and {b_np.shape}")
    if block < 1 or k < 1:
        raise ValueError("block and k must be >= 1")
    # Rows of unreadable images are NaN: drop them here, as one NaN test row would poison every min.
    a_ok = np.flatnonzero(np.isfinite(a_np).all(axis=1))
    b_ok = np.flatnonzero(np.isfinite(b_np).all(axis=1))
    if len(a_ok) == 0 or len(b_ok) == 0 or threshold <= 0:
        return []
    a = torch.from_numpy(np.ascontiguousarray(a_np[a_ok]))
    b = torch.from_numpy(np.ascontiguousarray(b_np[b_ok]))
    b2 = (b * b).sum(1)
    # ||a-b||^2 = |a|^2 + |b|^2 - 2a.b loses ~1e-6 to cancellation in float32: select candidates
    # with a margin, then decide on the exact float64 distance.
    cand = (threshold + 1e-3) ** 2
    found: list[Match] = []
    with torch.inference_mode():
        for s in range(0, len(a), block):
            ab = a[s : s + block]
            best = torch.full((len(ab), k), math.inf)
            best_j = torch.zeros((len(ab), k), dtype=torch.long)
            for t in range(0, len(b), block):
                # |b|^2 - 2 a.b in one fused GEMM; |a|^2 is constant along the row, added after the min.
                d = torch.addmm(b2[t : t + block].unsqueeze(0), ab, b[t : t + block].T, alpha=-2.0)
                if k == 1:
                    v, j = d.min(1, keepdim=True)
                else:
                    v, j = d.topk(min(k, d.shape[1]), dim=1, largest=False)
                # Merge the running k best with this block's k best.
                v, pick = torch.cat([best, v], 1).topk(k, dim=1, largest=False)
                best_j = torch.cat([best_j, j + t], 1).gather(1, pick)
                best = v
            d2 = best + (ab * ab).sum(1, keepdim=True)
            for r, c in torch.nonzero(d2 < cand).tolist():
                i, j = int(a_ok[s + r]), int(b_ok[int(best_j[r, c])])
                dist = float(np.linalg.norm(a_np[i].astype(np.float64) - b_np[j].astype(np.float64)))
                if dist < threshold:
                    found.append(Match(i, j, dist))
    found.sort(key=lambda m: (m.i, m.dist))
    return found


# ---------------------------------------------------------------------------------- id mapping


def read_id_mapping(path: PathLike) -> dict[str, str]:
    """Read ``corpus_id<TAB>mapped_id`` lines (or a JSON object id -> id; null values are skipped)."""
    path = Path(path)
    if not path.is_file():
        raise FormatError("no such file", path)
    raw = path.read_bytes()
    if raw.lstrip()[:1] == b"{" or path.suffix.lower() == ".json":
        try:
            obj = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise FormatError(f"not valid JSON: {e}", path, line=getattr(e, "lineno", None)) from None
        if not isinstance(obj, dict):
            raise FormatError(f"expected a JSON object corpus_id -> mapped_id, found a {type(obj).__name__}", path)
        out: dict[str, str] = {}
        for k, v in obj.items():
            if v is None:  # e.g. a VG image with no COCO id
                continue
            if not isinstance(v, (str, int)) or isinstance(v, bool):
                raise FormatError(f"mapped id must be a string or an integer, found {json.dumps(v)[:40]}", path, key=k)
            out[str(k)] = str(v)
        return out
    mapping: dict[str, str] = {}
    for n, line in enumerate(raw.split(b"\n"), start=1):
        line = line.rstrip(b"\r")
        if not line.strip() or line.startswith(b"#"):
            continue
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            raise FormatError("not UTF-8", path, line=n) from None
        cols = text.split("\t")
        if len(cols) != 2 or not cols[0].strip() or not cols[1].strip():
            raise FormatError(f"expected 'corpus_id<TAB>mapped_id', found {text[:60]!r}", path, line=n)
        k, v = cols[0].strip(), cols[1].strip()
        if mapping.get(k, v) != v:
            raise FormatError(f"corpus id {k!r} is mapped twice ({mapping[k]!r} and {v!r})", path, line=n)
        mapping[k] = v
    return mapping


def read_id_list(path: PathLike) -> set[str]:
    """Read one id per line (blank lines and ``#`` comments skipped)."""
    path = Path(path)
    if not path.is_file():
        raise FormatError("no such file", path)
    ids: set[str] = set()
    for n, line in enumerate(path.read_bytes().split(b"\n"), start=1):
        try:
            s = line.decode("utf-8").strip()
        except UnicodeDecodeError:
            raise FormatError("not UTF-8", path, line=n) from None
        if s and not s.startswith("#"):
            if "\t" in s or " " in s:
                raise FormatError(f"expected one id per line, found {s[:60]!r}", path, line=n)
            ids.add(s)
    return ids


def id_mapping_matches(
    corpus_ids: Iterable[str], mapping: Mapping[str, str], test_ids: Iterable[str]
) -> list[tuple[str, str]]:
    """``(corpus_id, mapped_id)`` for each corpus id whose mapped id is a test id, in input order, once each."""
    tests = test_ids if isinstance(test_ids, (set, frozenset)) else set(test_ids)
    out, seen = [], set()
    for cid in corpus_ids:
        m = mapping.get(cid)
        if m is not None and m in tests and cid not in seen:
            seen.add(cid)
            out.append((cid, m))
    return out


# --------------------------------------------------------------------------- image resolution


def index_image_folder(folder: PathLike) -> dict[str, Path]:
    """Map every image under ``folder`` to a key: its relative POSIX path with and without the extension."""

    root = Path(folder)
    if not root.is_dir():
        raise VinvlError(f"{root}: image folder not found")
    exact: dict[str, Path] = {}
    stems: dict[str, list[Path]] = {}
    for dirpath, _dirs, files in os.walk(root):
        rel_dir = Path(dirpath).relative_to(root).as_posix()
        prefix = "" if rel_dir == "." else rel_dir + "/"
        for name in files:
            stem, ext = os.path.splitext(name)
            if ext.lower() not in IMAGE_EXTENSIONS:
                continue
            p = Path(dirpath) / name
            exact[prefix + name] = p
            stems.setdefault(prefix + stem, []).append(p)
    index = dict(exact)
    for key, paths in stems.items():
        if key in index:
            continue
        # Two files for one key (a.jpg and a.png) may be different images: refuse to guess.
        index[key] = paths[0] if len(paths) == 1 else _Ambiguous(paths)  # type: ignore[assignment]
    return index


class _Ambiguous(list):
    """Several files for one key (kept in the index so the error names them when the key is used)."""


def _resolve(key: str, images: Mapping[str, PathLike], where: str) -> Path:
    p = images.get(key)
    if p is None:
        raise KeyError(key)
    if isinstance(p, _Ambiguous):
        raise VinvlError(f"{where}: key {key!r} matches several images: {', '.join(map(str, p))}")
    return Path(p)


# ----------------------------------------------------------------------------------- the filter


@dataclass
class DecontaminationResult:
    """Counts of a :func:`decontaminate` run (rows of the corpus TSV; images = distinct keys)."""

    rows_read: int = 0
    rows_kept: int = 0
    rows_removed_id_map: int = 0
    rows_removed_near_duplicate: int = 0
    keys: int = 0
    keys_removed_id_map: int = 0
    keys_removed_near_duplicate: int = 0
    test_images: int = 0
    candidate_pairs: int = 0
    corpus_failures: list[Failure] = field(default_factory=list)
    test_failures: list[Failure] = field(default_factory=list)

    @property
    def rows_removed(self) -> int:
        """Rows removed for any reason."""
        return self.rows_removed_id_map + self.rows_removed_near_duplicate


def _aligned_or_inf(args: tuple[int, int, str, str, int, float]) -> tuple[int, int, float]:
    i, j, cpath, tpath, size, border = args
    try:
        return i, j, aligned_distance(cpath, tpath, size, border)
    except Exception:  # noqa: BLE001 -- both images decoded in stage 1; a failure now only means "no match"
        return i, j, math.inf


def _verify(
    cands: Sequence[Match], corpus_paths: Sequence[Path], test_paths: Sequence[Path], size: int, border: float, workers: int
) -> list[tuple[int, int, float]]:
    """Stage 2 on each candidate pair: ``(i, j, aligned distance)``."""
    jobs = [(m.i, m.j, os.fspath(corpus_paths[m.i]), os.fspath(test_paths[m.j]), size, border) for m in cands]
    if workers and workers > 1 and len(jobs) > 1:
        import multiprocessing as mp

        with mp.get_context().Pool(workers) as pool:
            return list(pool.imap(_aligned_or_inf, jobs, chunksize=4))
    return [_aligned_or_inf(j) for j in jobs]


def _read_keys(corpus_tsv: Path, column: int) -> tuple[list[str], int]:
    keys: dict[str, None] = {}
    rows = 0
    for n, fields in iter_tsv(corpus_tsv):
        rows += 1
        keys.setdefault(_key_of(fields, column, corpus_tsv, n))
    return list(keys), rows


def _key_of(fields: list[bytes], column: int, path: Path, line: int) -> str:
    if column >= len(fields):
        raise FormatError(f"no column {column} (the row has {len(fields)})", path, line=line)
    try:
        return fields[column].decode("utf-8")
    except UnicodeDecodeError:
        raise FormatError(f"column {column} is not UTF-8", path, line=line) from None


def decontaminate(
    corpus_tsv: PathLike,
    out_tsv: PathLike,
    report_tsv: PathLike,
    *,
    image_key_column: int = 0,
    corpus_images: Optional[Union[Mapping[str, PathLike], PathLike]] = None,
    test_images: Sequence[PathLike] = (),
    id_mapping: Optional[Union[Mapping[str, str], PathLike]] = None,
    test_ids: Optional[Union[Iterable[str], PathLike]] = None,
    threshold: float = DEFAULT_THRESHOLD,
    candidate_threshold: float = DEFAULT_CANDIDATE_THRESHOLD,
    size: int = DEFAULT_SIZE,
    workers: int = 0,
    border: float = DEFAULT_BORDER,
    candidates_per_image: int = 3,
) -> DecontaminationResult:
    """Write ``out_tsv`` = the corpus rows whose image is neither id-mapped to a test id nor a near duplicate of a test image.

    ``corpus_images`` is a dict key -> image path or a folder (image = KEY + an image extension;
    a ``/`` in a key is a subfolder). ``report_tsv`` gets one line per removed key:
    ``key<TAB>reason<TAB>matched test image or id<TAB>distance`` (reason ``id-map`` or
    ``near-duplicate``; empty distance for id-map). Near duplicates are found in two stages:
    all pairs by blurred signature (< ``candidate_threshold``, the ``candidates_per_image``
    nearest test images of each corpus image), then each candidate pair by
    :func:`aligned_distance` (< ``threshold``). Unreadable images are kept and reported in the
    result's ``corpus_failures`` / ``test_failures``. Both outputs appear atomically.
    """
    corpus_tsv, out_tsv, report_tsv = Path(corpus_tsv), Path(out_tsv), Path(report_tsv)
    use_ids = id_mapping is not None or test_ids is not None
    use_images = bool(test_images)
    if use_ids and (id_mapping is None or test_ids is None):
        raise VinvlError("the id check needs both an id mapping and the test ids")
    if use_images and corpus_images is None:
        raise VinvlError("the near-duplicate check needs the corpus images (a folder or key -> path)")
    if not use_ids and not use_images:
        raise VinvlError("nothing to check against: give test images and/or an id mapping with test ids")
    if not 0 <= border < 0.5:
        raise VinvlError(f"border must be in [0, 0.5), got {border}")
    if size < 2:
        raise VinvlError(f"size must be >= 2, got {size}")
    if out_tsv.resolve() == corpus_tsv.resolve() or report_tsv.resolve() in (corpus_tsv.resolve(), out_tsv.resolve()):
        raise VinvlError(f"{out_tsv}: the output and report must differ from the corpus and from each other")

    result = DecontaminationResult()
    keys, result.rows_read = _read_keys(corpus_tsv, image_key_column)
    result.keys = len(keys)
    removed: dict[str, tuple[str, str, str]] = {}  # key -> (reason, matched, distance)

    if use_ids:
        mapping = id_mapping if isinstance(id_mapping, Mapping) else read_id_mapping(id_mapping)  # type: ignore[arg-type]
        tests = read_id_list(test_ids) if isinstance(test_ids, (str, os.PathLike)) else set(map(str, test_ids))  # type: ignore[arg-type]
        for key, mapped in id_mapping_matches(keys, mapping, tests):
            removed[key] = (REASON_ID_MAP, mapped, "")

    if use_images:
        if isinstance(corpus_images, Mapping):
            images, where = corpus_images, "corpus images"
        else:
            images, where = index_image_folder(corpus_images), os.fspath(corpus_images)  # type: ignore[arg-type]
        todo_rows, todo_keys, todo_paths = [], [], []
        for i, key in enumerate(keys):
            if key in removed:
                continue  # already out by id: no need to decode it
            try:
                todo_paths.append(_resolve(key, images, where))
                todo_keys.append(key)
                todo_rows.append(i)
            except KeyError:
                result.corpus_failures.append(Failure(i, key, f"no image for key {key!r} in {where}"))
        test_paths = [Path(p) for p in test_images]
        result.test_images = len(test_paths)
        test_sig, result.test_failures = signatures(test_paths, size, workers, border)
        corpus_sig, failures = signatures(todo_paths, size, workers, border)
        result.corpus_failures += [Failure(todo_rows[f.index], f.path, f.error) for f in failures]
        result.corpus_failures.sort()
        cands = near_duplicates(corpus_sig, test_sig, candidate_threshold, k=candidates_per_image)
        result.candidate_pairs = len(cands)
        for i, j, dist in _verify(cands, todo_paths, test_paths, size, border, workers):
            key = todo_keys[i]
            if dist < threshold and (key not in removed or dist < float(removed[key][2])):
                removed[key] = (REASON_NEAR_DUPLICATE, os.fspath(test_paths[j]), f"{dist:.4f}")

    # Second pass: rows are copied byte for byte, so kept rows are exactly as they were.
    with TSVWriter(report_tsv) as report:
        for key in keys:
            if key in removed:
                reason, matched, dist = removed[key]
                report.write([key, reason, matched, dist])
                if reason == REASON_ID_MAP:
                    result.keys_removed_id_map += 1
                else:
                    result.keys_removed_near_duplicate += 1
        with TSVWriter(out_tsv) as out:
            for n, fields in iter_tsv(corpus_tsv):
                hit = removed.get(_key_of(fields, image_key_column, corpus_tsv, n))
                if hit is None:
                    out.write(fields)
                    result.rows_kept += 1
                elif hit[0] == REASON_ID_MAP:
                    result.rows_removed_id_map += 1
                else:
                    result.rows_removed_near_duplicate += 1
    return result
