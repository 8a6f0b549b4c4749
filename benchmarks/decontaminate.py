"""Corpus decontamination: speed of the all-pairs near-duplicate search and of the signatures; threshold calibration.

Speed (default): ``near_duplicates`` on synthetic signatures (random unit vectors, which never
match, so the time is the search itself) for N corpus x M test images at D dimensions, reported
as pairs/s and the projected time for 100k x 5k; then ``image_signature`` on generated JPEGs.

Calibration (``--calibrate``): distances between generated (and, if scikit-image is installed,
``skimage.data``) images and their planted duplicates (exact, 0.5x, 2x, JPEG q=30, 4% border
crop, one-sided 5% crop, brightness +10%, 0.5x + JPEG q=50) versus distinct pairs (different
images of the same kind, the same scene shifted by 20%, a stereo pair); the default threshold
must lie between the largest duplicate distance and the smallest distinct one.

    python benchmarks/decontaminate.py [--corpus 100000] [--test 5000] [--dim 1024] [--images 40]
    python benchmarks/decontaminate.py --calibrate [--count 40] [--size 32] [--border 0.05]
"""

from __future__ import annotations

import argparse
import io
import itertools
import os
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance

from vinvl.corpus.decontaminate import (
    DEFAULT_BORDER,
    DEFAULT_CANDIDATE_THRESHOLD,
    DEFAULT_SIZE,
    DEFAULT_THRESHOLD,
    DEFAULT_BLUR,
    aligned_distance,
    image_signature,
    near_duplicates,
)

# ------------------------------------------------------------------------------------ images


def natural_image(rng: np.random.Generator, h: int = 240, w: int = 320) -> Image.Image:
    """An RGB image with natural-image statistics: 1/f colour noise plus a few flat shapes."""
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    f = np.sqrt(fx**2 + fy**2)
    f[0, 0] = 1.0
    spec = (rng.standard_normal((3, h, w // 2 + 1)) + 1j * rng.standard_normal((3, h, w // 2 + 1))) / f
    spec[:, 0, 0] = 0
    x = np.fft.irfft2(spec, s=(h, w))
    x = (x - x.min()) / (np.ptp(x) + 1e-9) * 255
    img = Image.fromarray(x.transpose(1, 2, 0).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(2, 6))):
        x0, y0 = rng.uniform(0, w * 0.8), rng.uniform(0, h * 0.8)
        x1, y1 = x0 + rng.uniform(w * 0.1, w * 0.4), y0 + rng.uniform(h * 0.1, h * 0.4)
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)([x0, y0, x1, y1], fill=colour)
    return img


def jpeg(img: Image.Image, quality: int) -> Image.Image:
    """Encode and decode as JPEG at ``quality``."""
    buf = io.BytesIO()
    img.convert("RGB").save(buf, "JPEG", quality=quality)
    buf.seek(0)
    return Image.open(buf).convert("RGB")


def crop(img: Image.Image, left: float, top: float, right: float, bottom: float) -> Image.Image:
    """Crop the given fractions off each side."""
    w, h = img.size
    return img.crop((round(left * w), round(top * h), round(w - right * w), round(h - bottom * h)))


def scale(img: Image.Image, s: float) -> Image.Image:
    """Resize by ``s`` with PIL's default filter (what a web pipeline would do)."""
    w, h = img.size
    return img.resize((max(1, round(w * s)), max(1, round(h * s))))


DUPLICATES: dict[str, Callable[[Image.Image], Image.Image]] = {
    "exact": lambda im: im,
    "resize 0.5x": lambda im: scale(im, 0.5),
    "resize 2x": lambda im: scale(im, 2.0),
    "jpeg q=30": lambda im: jpeg(im, 30),
    "crop 4% each side": lambda im: crop(im, 0.04, 0.04, 0.04, 0.04),
    "crop 5% left+top": lambda im: crop(im, 0.05, 0.05, 0, 0),
    "brightness +10%": lambda im: ImageEnhance.Brightness(im).enhance(1.1),
    "0.5x + jpeg q=50": lambda im: jpeg(scale(im, 0.5), 50),
}


def skimage_photos() -> dict[str, Image.Image]:
    """The bundled scikit-image photos (empty if scikit-image is missing); ``cat`` is ``chelsea``, left out."""
    try:
        import skimage.data as data
    except ImportError:
        return {}
    out = {}
    for name in ("astronaut", "camera", "coffee", "chelsea", "rocket", "coins", "moon", "page", "text",
                 "hubble_deep_field", "immunohistochemistry", "retina", "grass", "gravel", "brick",
                 "clock", "horse", "cell", "microaneurysms", "shepp_logan_phantom"):
        try:
            a = np.asarray(getattr(data, name)())
        except Exception:  # noqa: BLE001 -- some photos need a download; skip them
            continue
        if a.dtype == bool:
            a = a.astype(np.uint8) * 255
        elif a.dtype != np.uint8:
            a = (255 * (a - a.min()) / (np.ptp(a) + 1e-9)).astype(np.uint8)
        out[name] = Image.fromarray(a[..., :3] if a.ndim == 3 else a).convert("RGB")
    return out


# ------------------------------------------------------------------------------- calibration


def calibrate(count: int, size: int, border: float, seed: int) -> None:
    """Print stage-1 and stage-2 distances of planted duplicates vs distinct pairs, and where the thresholds sit."""
    rng = np.random.default_rng(seed)
    sig = lambda im: image_signature(im, size, border)  # noqa: E731
    originals: dict[str, Image.Image] = {f"gen{i}": jpeg(natural_image(rng), 90) for i in range(count)}
    photos = skimage_photos()
    originals.update(photos)
    base = {k: sig(v) for k, v in originals.items()}
    t_align = [0.0, 0]

    def both(c: Image.Image, t: Image.Image, c_sig: np.ndarray | None = None) -> tuple[float, float]:
        """(stage-1 distance, stage-2 aligned distance or inf when stage 1 already rejects)."""
        d1 = float(np.linalg.norm((sig(c) if c_sig is None else c_sig) - sig(t)))
        if d1 >= DEFAULT_CANDIDATE_THRESHOLD:
            return d1, float("inf")
        t0 = time.perf_counter()
        d2 = aligned_distance(c, t, size, border)
        t_align[0] += time.perf_counter() - t0
        t_align[1] += 1
        return d1, d2

    # Each duplicate both ways: the copy in the corpus and the original in the test set, and back.
    dup: dict[str, list[tuple[float, float]]] = {}
    for name, fn in DUPLICATES.items():
        dup[name] = []
        for im in originals.values():
            copy = fn(im)
            dup[name] += [both(copy, im), both(im, copy)]

    distinct: dict[str, list[tuple[float, float]]] = {}
    keys = list(originals)
    distinct["different images"] = [both(originals[a], originals[b], base[a]) for a, b in itertools.permutations(keys, 2)]
    shifted, shifted10 = [], []
    for _ in range(count):
        big = natural_image(rng, 240, 400)  # two 320-wide windows 64 px (20%) apart
        l, r = big.crop((0, 0, 320, 240)), big.crop((64, 0, 384, 240))
        shifted += [both(l, r), both(r, l)]
        big = natural_image(rng, 240, 352)
        l, r = big.crop((0, 0, 320, 240)), big.crop((32, 0, 352, 240))
        shifted10 += [both(l, r), both(r, l)]
    distinct["same scene shifted 20%"] = shifted
    if photos:
        try:
            import skimage.data as data

            left, right, _ = data.stereo_motorcycle()
            L, R = Image.fromarray(left), Image.fromarray(right)
            distinct["stereo pair (motorcycle L/R)"] = [both(L, R), both(R, L)]
            faces = [Image.fromarray((255 * f).astype(np.uint8)) for f in data.lfw_subset()[:50]]
            fs = [sig(f) for f in faces]
            distinct["faces (50 of lfw_subset, 25x25)"] = [both(faces[a], faces[b], fs[a]) for a, b in itertools.permutations(range(len(faces)), 2)]
        except Exception:  # noqa: BLE001
            pass
    in_between = {"same scene shifted 10% (either)": shifted10}

    fmt = lambda x: "   -   " if x == float("inf") else f"{x:7.4f}"  # noqa: E731
    print(f"size {size}, border {border}, blur {DEFAULT_BLUR}; {count} generated + {len(photos)} skimage photos; "
          f"candidate threshold {DEFAULT_CANDIDATE_THRESHOLD}, threshold {DEFAULT_THRESHOLD}")
    print(f"{'planted duplicates (both ways)':36s} {'max s1':>7s} {'max s2':>7s} {'p50 s2':>7s} {'pairs':>6s}")
    for name, d in dup.items():
        s1, s2 = [x for x, _ in d], [y for _, y in d]
        print(f"  {name:34s} {max(s1):7.4f} {fmt(max(s2))} {fmt(float(np.median(s2)))} {len(d):6d}")
    print(f"{'distinct pairs (ordered)':36s} {'min s1':>7s} {'min s2':>7s} {'<cand':>7s} {'pairs':>6s}")
    for name, d in {**distinct, **in_between}.items():
        s1, s2 = [x for x, _ in d], [y for _, y in d]
        print(f"  {name:34s} {min(s1):7.4f} {fmt(min(s2))} {sum(y < float('inf') for y in s2):7d} {len(d):6d}")
    hi1 = max(x for d in dup.values() for x, _ in d)
    hi2 = max(y for d in dup.values() for _, y in d)
    lo2 = min(y for d in distinct.values() for _, y in d)
    ok = hi1 < DEFAULT_CANDIDATE_THRESHOLD and hi2 < DEFAULT_THRESHOLD < lo2
    print(f"stage 1: max duplicate {hi1:.4f} < candidate threshold {DEFAULT_CANDIDATE_THRESHOLD}; "
          f"stage 2: max duplicate {hi2:.4f} < threshold {DEFAULT_THRESHOLD} < min distinct {lo2:.4f}: {'OK' if ok else 'NOT SEPARATED'}")
    if t_align[1]:
        print(f"aligned_distance: {1000 * t_align[0] / t_align[1]:.1f} ms/pair over {t_align[1]} pairs")


# ------------------------------------------------------------------------------------- speed


def bench_search(n: int, m: int, dim: int, block: int, seed: int) -> None:
    """Time near_duplicates on random unit vectors and project to 100k x 5k."""
    import torch

    rng = np.random.default_rng(seed)
    a = rng.standard_normal((n, dim), dtype=np.float32)
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    b = rng.standard_normal((m, dim), dtype=np.float32)
    b /= np.linalg.norm(b, axis=1, keepdims=True)
    b[:3] = a[[5, 17, n - 1]] + 0.001  # three planted matches: the search must find them
    near_duplicates(a[:256], b[:256], DEFAULT_THRESHOLD, block)  # warm-up (thread pool, allocator)
    t0 = time.perf_counter()
    found = near_duplicates(a, b, DEFAULT_THRESHOLD, block)
    dt = time.perf_counter() - t0
    rate = n * m / dt
    print(f"near_duplicates: {n} x {m} at D={dim}, block {block}, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads): {dt:.2f} s, {rate:.3g} pairs/s, "
          f"{2 * n * m * dim / dt / 1e9:.0f} GFLOP/s; {len(found)} matches {[(i, j) for i, j, _ in found]}")
    print(f"  projected 100000 x 5000 at D={dim}: {100000 * 5000 / rate:.1f} s; "
          f"1M x 50k: {1e6 * 5e4 / rate / 60:.1f} min")


def bench_signatures(count: int, size: int, seed: int) -> None:
    """Time image_signature on generated JPEGs (640x480 q=90, like COCO) read from disk."""
    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for i in range(count):
            p = Path(tmp) / f"{i}.jpg"
            natural_image(rng, 480, 640).save(p, quality=90)
            paths.append(p)
        image_signature(paths[0], size)
        for label, fn in (("jpeg (draft decode)", lambda p: image_signature(p, size)),
                          ("decoded PIL image", None)):
            if fn is None:
                ims = [Image.open(p).convert("RGB") for p in paths]
                t0 = time.perf_counter()
                for im in ims:
                    image_signature(im, size)
            else:
                t0 = time.perf_counter()
                for p in paths:
                    fn(p)
            dt = time.perf_counter() - t0
            print(f"image_signature, {label}, 640x480, size {size}: {count / dt:.0f} images/s ({1000 * dt / count:.2f} ms/image, 1 process)")
        pairs = min(count - 1, 20)
        t0 = time.perf_counter()
        for i in range(pairs):
            aligned_distance(paths[i], paths[i + 1], size)
        dt = time.perf_counter() - t0
        print(f"aligned_distance (stage 2, distinct 640x480 JPEG pairs, the slow case): {1000 * dt / pairs:.1f} ms/pair (1 process)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", type=int, default=100000, help="corpus signatures (N)")
    ap.add_argument("--test", type=int, default=5000, help="test signatures (M)")
    ap.add_argument("--dim", type=int, default=DEFAULT_SIZE * DEFAULT_SIZE, help="signature dimension (D)")
    ap.add_argument("--block", type=int, default=4096, help="block size of near_duplicates")
    ap.add_argument("--images", type=int, default=40, help="generated JPEGs for the signature timing")
    ap.add_argument("--calibrate", action="store_true", help="print the threshold calibration instead")
    ap.add_argument("--count", type=int, default=40, help="generated images for --calibrate")
    ap.add_argument("--size", type=int, default=DEFAULT_SIZE, help="signature size")
    ap.add_argument("--border", type=float, default=DEFAULT_BORDER, help="border fraction dropped per side")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.calibrate:
        calibrate(args.count, args.size, args.border, args.seed)
        return
    print(f"machine: {os.cpu_count()} CPUs")
    bench_search(args.corpus, args.test, args.dim, args.block, args.seed)
    bench_signatures(args.images, args.size, args.seed)


if __name__ == "__main__":
    main()
